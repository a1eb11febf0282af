"""Keras 3's half of the engine differences: the statements `lossmap.engine_diff` cites, and the
facts about a model it reads (`Engine.citations`, `Engine.engine_facts`).

    >>> sorted(specs())[:3]
    ['k3_activity', 'k3_activity_call', 'k3_aggregate']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import call_attr, self_attr
from lossmap.engines.common.helpers import shared_facts
from lossmap.engines.keras3.anchors import COMPILE_UTILS, LAYER, LOSS, TF_NN, TRAINER


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
    }


def facts(engine, model, sig) -> dict:
    """`Engine.engine_facts`: the compile arguments as the user gave them, the frozen weights Keras 3 leaves out."""
    out = shared_facts(engine, sig)
    compile_loss = getattr(model, "_compile_loss", None)
    out["loss_weights"] = getattr(compile_loss, "_user_loss_weights", None)
    out["losses"] = getattr(compile_loss, "_user_loss", None)
    out["frozen_regularized"] = engine.frozen_regularized_variables(model)
    return out
