"""tf_keras's half of the engine differences: the statements `lossmap.engine_diff` cites, and the
facts about a model it reads (`Engine.citations`, `Engine.engine_facts`).

    >>> sorted(specs())[:3]
    ['add_n_regularization', 'tf_activity', 'tf_activity_call']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common import facts as common_facts
from lossmap.engines.common.anchor_kit import assign_to, call_attr, calls, method_call, self_attr
from lossmap.engines.common.helpers import shared_facts
from lossmap.engines.tf_keras.anchors import BACKEND, BASE_LAYER, COMPILE_UTILS, LOSSES, LOSSES_UTILS, TRAINING

LOSS_SCALE_OPTIMIZER = "tf_keras.src.mixed_precision.loss_scale_optimizer"


def specs() -> dict:
    """key -> (module, qualname, [(matcher, label), ...]): the statements each difference cites."""
    return {
        "add_n_regularization": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(call_attr("tf", "add_n", args=[m.Arg(m.Name("regularization_losses"))]),
              "reg_loss = tf.add_n(regularization_losses)")]),
        "tf_activity": (
            BASE_LAYER, "Layer._handle_activity_regularization",
            [(call_attr(None, "divide_no_nan"), "tf.math.divide_no_nan(activity_loss, batch_size)")]),
        "tf_activity_call": (
            BASE_LAYER, "Layer._handle_activity_regularization",
            [(call_attr("self", "add_loss"), "self.add_loss(mean_activity_loss)")]),
        "tf_metric": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(call_attr("metric_obj", "update_state"), "metric_obj.update_state(total_loss_mean_value, ...)")]),
        "tf_weight": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(m.AugAssign(target=m.Name("loss_value"), operator=m.MultiplyAssign()), "loss_value *= loss_weight")]),
        "tf_zip": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(m.Call(func=m.Name("zip"), args=[m.Arg(star="*")]), "for ... in zip(*zip_args)")]),
        "tf_scale": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(call_attr("losses_utils", "scale_loss_for_distribution", args=[m.Arg(m.Name("loss_value"))]),
              "loss_value = losses_utils.scale_loss_for_distribution(loss_value)")]),
        "tf_sum_replicas": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(m.AugAssign(target=m.Name("total_loss_mean_value"), operator=m.MultiplyAssign(),
                          value=m.Attribute(attr=m.Name("num_replicas_in_sync"))),
              "total_loss_mean_value *= ...num_replicas_in_sync")]),
        "tf_callable_losses": (
            BASE_LAYER, "Layer.losses",
            [(m.For(iter=m.Attribute(value=m.Name("layer"), attr=m.Name("_callable_losses"))),
              "for regularizer in layer._callable_losses")]),
        "tf_bce": (
            BACKEND, "binary_crossentropy",
            [(call_attr(None, "log", args=[m.Arg(m.BinaryOperation(operator=m.Add()))]),
              "bce = target * tf.math.log(output + epsilon())")]),
        **_surprise_specs(),
    }


def _surprise_specs() -> dict:
    """The statements `lossmap.surprises` cites: where tf_keras changes the loss without an error."""
    return {
        "tf_expand_weights": (
            LOSSES_UTILS, "squeeze_or_expand_dimensions",
            [(assign_to("sample_weight", call_attr("tf", "expand_dims")),
              "sample_weight = tf.expand_dims(sample_weight, [-1])")]),
        "tf_divisor_size": (
            LOSSES_UTILS, "reduce_weighted_loss",
            [(assign_to("loss", calls("_safe_mean")), "loss = _safe_mean(loss, _num_elements(weighted_losses))")]),
        "tf_flatten_losses": (
            COMPILE_UTILS, "LossesContainer.build",
            [(m.Assign(targets=[m.AssignTarget(self_attr("_losses"))],
                       value=m.Call(func=m.Attribute(attr=m.Name("flatten")))),
              "self._losses = tf.nest.flatten(self._losses)")]),
        "tf_flatten_loss_weights": (
            COMPILE_UTILS, "LossesContainer.build",
            [(m.Assign(targets=[m.AssignTarget(self_attr("_loss_weights"))],
                       value=m.Call(func=m.Attribute(attr=m.Name("flatten")))),
              "self._loss_weights = tf.nest.flatten(self._loss_weights)")]),
        "tf_regularizer_added": (
            BASE_LAYER, "Layer.add_weight",
            [(call_attr("self", "_handle_weight_regularization"),
              "self._handle_weight_regularization(name, variable, regularizer)")]),
        "tf_scale_regularization": (
            COMPILE_UTILS, "LossesContainer.__call__",
            [(call_attr("losses_utils", "scale_loss_for_distribution", args=[m.Arg(m.Name("reg_loss"))]),
              "losses_utils.scale_loss_for_distribution(reg_loss)")]),
        "tf_wrap_loss_scale": (
            TRAINING, "Model._get_optimizer",
            [(call_attr("lso", "BaseLossScaleOptimizer"), "opt = lso.BaseLossScaleOptimizer(opt)")]),
        "tf_minimize": (
            TRAINING, "Model.train_step",
            [(method_call(self_attr("optimizer"), "minimize"),
              "self.optimizer.minimize(loss, self.trainable_variables, tape=tape)")]),
        "tf_scaled_loss": (
            LOSS_SCALE_OPTIMIZER, "LossScaleOptimizerV3.compute_gradients",
            [(call_attr("self", "get_scaled_loss"), "loss = self.get_scaled_loss(loss)")]),
        "tf_apply_unscaled": (
            LOSS_SCALE_OPTIMIZER, "LossScaleOptimizerV3.apply_gradients",
            [(calls("_maybe_warn_about_scaling"),
              "_maybe_warn_about_scaling(self._loss_has_been_scaled, self._gradients_have_been_unscaled)")]),
        "tf_layer_scope": (
            BASE_LAYER, "Layer.__call__",
            [(method_call(m.Name("namescope_stack"), "enter_context"),
              "namescope_stack.enter_context(tf.name_scope(name_scope))")]),
        "tf_loss_scope": (
            LOSSES, "Loss.__call__",
            [(call_attr("backend", "name_scope"), "with backend.name_scope(self._name_scope), graph_ctx:")]),
    }


def facts(engine, model, sig) -> dict:
    """`Engine.engine_facts`: the compile arguments as the user gave them, the frozen weights tf_keras counts."""
    out = shared_facts(engine, sig)
    container = getattr(model, "compiled_loss", None)
    out["loss_weights"] = getattr(container, "_user_loss_weights", None)
    out["losses"] = getattr(container, "_user_losses", None)
    out["frozen_regularized"] = engine.frozen_regularized_counted(model)
    out.update(surprise_facts(model, sig))
    return out


def surprise_facts(model, sig) -> dict:
    """What `lossmap.surprises` reads about a tf_keras model beyond the analysis."""
    import tensorflow as tf

    struct = getattr(model, "_nested_outputs", None)
    code_order, flat_order = common_facts.output_orders(list(struct) if isinstance(struct, dict) else None,
                                                        tf.nest.flatten)
    return {
        "model_replicas": common_facts.replicas(model),
        "loss_scale": common_facts.loss_scale(model, lambda opt: opt.loss_scale),
        # what a custom step calls to scale its loss for a LossScaleOptimizer (minimize scales by itself)
        "scale_calls": ("get_scaled_loss", "minimize"),
        "output_code_order": code_order,
        "output_flat_order": flat_order,
        "regularizable": common_facts.regularizable_layers(model),
        "scoped_names": _scoped_names(model),
    }


def _scoped_names(model) -> list:
    """(what, name, scope) of each name a traced fit opens a TensorFlow name scope with: tf_keras opens
    the model's, each layer's (Layer.__call__, from the root) and each compiled loss's (Loss.__call__,
    its `_name_scope`) at the root."""
    out = [("model", model.name, "root")]
    out += [("layer", layer.name, "root") for layer in model._flatten_layers(include_self=False)]
    container = getattr(model, "compiled_loss", None)
    for loss in _flatten(getattr(container, "_losses", None)):
        if loss is not None and hasattr(loss, "_name_scope"):
            out.append(("loss", loss._name_scope, "root"))
    return out


def _flatten(obj) -> list:
    import tensorflow as tf

    return [] if obj is None else tf.nest.flatten(obj)
