"""Keras 3's half of the engine differences: the statements `lossmap.engine_diff` cites, and the
facts about a model it reads (`Engine.citations`, `Engine.engine_facts`).

    >>> sorted(specs())[:3]
    ['k3_activity', 'k3_activity_call', 'k3_aggregate']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import assign_to, call_attr, method_call, self_attr, step_loss
from lossmap.engines.common import facts as common_facts
from lossmap.engines.common.helpers import shared_facts
from lossmap.engines.keras3.anchors import COMPILE_UTILS, LAYER, LOSS, TF_NN, TF_TRAINER, TRAINER

LOSS_SCALE_OPTIMIZER = "keras.src.optimizers.loss_scale_optimizer"
TF_OPS = "tensorflow.python.framework.ops"  # the name check both engines meet in a traced fit


def _zip_loop():
    """The loop over outputs that also updates the per-output metrics (not the single-output fast path)."""
    return m.For(iter=m.Call(func=m.Name("zip")))


def specs() -> dict:
    """key -> (module, qualname, [(matcher, label[, within]), ...]): the statements each difference cites."""
    return {
        "k3_aggregate": (
            TRAINER, "Trainer._aggregate_additional_loss",
            [(call_attr("ops", "sum"), "return ops.sum(loss)")]),
        "k3_activity": (
            LAYER, "Layer.__call__",
            [(call_attr("ops", "divide_no_nan"), "ops.divide_no_nan(loss, batch_size)")]),
        "k3_activity_call": (
            LAYER, "Layer.__call__",
            [(m.Call(func=self_attr("activity_regularizer")), "loss = self.activity_regularizer(output)")]),
        "k3_metric": (
            COMPILE_UTILS, "CompileLoss.call",
            [(call_attr("metric", "update_state"), "metric.update_state(...)", _zip_loop())]),
        "k3_weight": (
            COMPILE_UTILS, "CompileLoss.call",
            [(call_attr("ops", "multiply", args=[m.Arg(m.Name("value")), m.Arg(m.Name("loss_weight"))]),
              "value = ops.multiply(value, loss_weight)", _zip_loop())]),
        "k3_weights_check": (
            COMPILE_UTILS, "CompileLoss.build",
            [(call_attr("tree", "assert_same_structure", args=[m.Arg(m.Name("loss")), m.Arg(m.Name("loss_weights"))]),
              "tree.assert_same_structure(loss, loss_weights)")]),
        "k3_scale": (
            LOSS, "reduce_values",
            [(m.Call(func=m.Name("scale_loss_for_distribution")), "loss = scale_loss_for_distribution(loss)")]),
        "k3_trainable_only": (
            LAYER, "Layer._get_regularization_losses",
            [(m.For(iter=self_attr("trainable_weights")), "for variable in self.trainable_weights")]),
        "k3_bce": (
            TF_NN, "binary_crossentropy",
            [(call_attr(None, "log", args=[m.Arg(m.Name("output"))]), "bce = target * tf.math.log(output)")]),
        **_surprise_specs(),
    }


def _surprise_specs() -> dict:
    """The statements `lossmap.surprises` cites: where Keras 3 changes the loss without an error."""
    return {
        "k3_step_loss": (
            TF_TRAINER, "TensorFlowTrainer.train_step", [step_loss()]),
        "k3_weight_multiply": (
            LOSS, "reduce_weighted_values",
            [(assign_to("values", m.BinaryOperation(left=m.Name("values"), operator=m.Multiply())),
              "values = values * sample_weight")]),
        "k3_divisor_size": (
            LOSS, "reduce_values",
            [(assign_to("divisor", m.Call(args=[m.Arg(call_attr("ops", "prod")), m.ZeroOrMore()])),
              "divisor = ops.cast(ops.prod(ops.shape(values)), ...)")]),
        "k3_pack_list_loss": (
            COMPILE_UTILS, "CompileLoss._build_nested",
            [(assign_to("loss", call_attr("tree", "pack_sequence_as", args=[m.Arg(m.Name("y_pred")), m.ZeroOrMore()])),
              "loss = tree.pack_sequence_as(y_pred, loss)")]),
        "k3_pack_list_weights": (
            COMPILE_UTILS, "CompileLoss.build",
            [(assign_to("loss_weights", call_attr("tree", "pack_sequence_as")),
              "loss_weights = tree.pack_sequence_as(loss, flat_loss_weights)")]),
        "k3_regularizer_skip": (
            LAYER, "Layer._get_regularization_losses",
            [(m.Comparison(left=m.Attribute(value=m.Name("variable"), attr=m.Name("regularizer"))),
              "if variable.regularizer is None: continue")]),
        "k3_scale_additional": (
            TF_TRAINER, "TensorFlowTrainer._aggregate_additional_loss",
            [(call_attr("loss_module", "scale_loss_for_distribution"),
              "return loss_module.scale_loss_for_distribution(loss)")]),
        "k3_unscale_logs": (
            TF_TRAINER, "TensorFlowTrainer.train_step",
            [(call_attr("loss_module", "unscale_loss_for_distribution"),
              "self._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss), ...)")]),
        "k3_wrap_loss_scale": (
            TRAINER, "Trainer.compile",
            [(m.Assign(targets=[m.AssignTarget(self_attr("optimizer"))],
                       value=m.Call(func=m.Name("LossScaleOptimizer"))),
              "self.optimizer = LossScaleOptimizer(self.optimizer, ...)")]),
        "k3_scale_loss": (
            TF_TRAINER, "TensorFlowTrainer.train_step",
            [(method_call(self_attr("optimizer"), "scale_loss"), "loss = self.optimizer.scale_loss(loss)")]),
        "k3_unscale_gradients": (
            LOSS_SCALE_OPTIMIZER, "LossScaleOptimizer._stateful_handle_finite_grads",
            [(call_attr("ops", "divide", args=[m.Arg(m.Name("g")), m.Arg(m.Name("scale"))]), "ops.divide(g, scale)")]),
        "k3_layer_scope": (
            LAYER, "Layer._open_name_scope",
            [(call_attr("backend", "name_scope"), "return backend.name_scope(self.name, caller=self)")]),
        "k3_loss_scope": (
            LOSS, "Loss.__call__", [(call_attr("ops", "name_scope"), "with ops.name_scope(self.name):")]),
        "k3_graph_scope_check": (
            TF_OPS, "Graph.name_scope",
            [(method_call(m.Name("_VALID_SCOPE_NAME_REGEX"), "match"), "if not _VALID_SCOPE_NAME_REGEX.match(name)")]),
        "k3_graph_root_scope_check": (
            TF_OPS, "Graph.name_scope",
            [(method_call(m.Name("_VALID_OP_NAME_REGEX"), "match"), "if not _VALID_OP_NAME_REGEX.match(name)")]),
    }


def facts(engine, model, sig) -> dict:
    """`Engine.engine_facts`: the compile arguments as the user gave them, the frozen weights Keras 3 leaves out."""
    out = shared_facts(engine, sig)
    compile_loss = getattr(model, "_compile_loss", None)
    out["loss_weights"] = getattr(compile_loss, "_user_loss_weights", None)
    out["losses"] = getattr(compile_loss, "_user_loss", None)
    out["frozen_regularized"] = engine.frozen_regularized_variables(model)
    out.update(surprise_facts(model, sig))
    out["unused_overrides"] = unused_overrides(model)
    return out


def unused_overrides(model) -> list:
    """The model's overrides of loss methods only another backend's trainer calls (`stateless_compute_loss`:
    JAX's `compute_loss_and_updates`); the TensorFlow and torch trainers take the loss from `_compute_loss`."""
    from keras.src.trainers.trainer import Trainer

    fn = getattr(type(model), "stateless_compute_loss", None)
    return [fn.__qualname__] if fn is not None and fn is not Trainer.stateless_compute_loss else []


def surprise_facts(model, sig) -> dict:
    """What `lossmap.surprises` reads about a Keras 3 model beyond the analysis."""
    from keras import tree

    struct = getattr(model, "_outputs_struct", None)
    code_order = list(struct) if isinstance(struct, dict) else (
        [o.name for o in sig.outputs] if sig.output_structure == "dict" else None)
    code_order, flat_order = common_facts.output_orders(code_order, tree.flatten)
    return {
        "model_replicas": common_facts.replicas(model),
        "loss_scale": common_facts.loss_scale(
            model, lambda opt: opt.dynamic_scale if opt.built else opt.initial_scale),
        "scale_calls": ("scale_loss",),  # what a custom step calls to scale its loss for a LossScaleOptimizer
        "output_code_order": code_order,
        "output_flat_order": flat_order,
        "regularizable": common_facts.regularizable_layers(model),
        "scoped_names": _scoped_names(model),
    }


def _scoped_names(model) -> list:
    """(what, name, scope) of each name a traced fit opens a TensorFlow name scope with: the model's at
    the root; each layer's (Layer._open_name_scope) and each compiled loss's (Loss.__call__) nested."""
    out = [("model", model.name, "root")]
    out += [("layer", layer.name, "nested") for layer in model._flatten_layers(include_self=False)]
    compile_loss = getattr(model, "_compile_loss", None)
    for entry in getattr(compile_loss, "_flat_losses", None) or []:
        out.append(("loss", getattr(entry.loss, "name", ""), "nested"))
    return out
