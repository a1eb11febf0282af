"""tf_keras's half of the engine differences: the statements `lossmap.engine_diff` cites, and the
facts about a model it reads (`Engine.citations`, `Engine.engine_facts`).

    >>> sorted(specs())[:3]
    ['add_n_regularization', 'tf_activity', 'tf_activity_call']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import call_attr
from lossmap.engines.common.helpers import shared_facts
from lossmap.engines.tf_keras.anchors import BACKEND, BASE_LAYER, COMPILE_UTILS


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
    }


def facts(engine, model, sig) -> dict:
    """`Engine.engine_facts`: the compile arguments as the user gave them, the frozen weights tf_keras counts."""
    out = shared_facts(engine, sig)
    container = getattr(model, "compiled_loss", None)
    out["loss_weights"] = getattr(container, "_user_loss_weights", None)
    out["losses"] = getattr(container, "_user_losses", None)
    out["frozen_regularized"] = engine.frozen_regularized_counted(model)
    return out
