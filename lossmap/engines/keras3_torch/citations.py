"""Keras 3 on PyTorch: its half of the engine differences and the surprises' citations, and the facts.

Keras 3's statements (`lossmap.engines.keras3.citations`), with the torch backend's file where
TensorFlow's trainer or nn.py would be cited, and the facts without TensorFlow: no
`tf.distribute` replicas, no TensorFlow name scopes (a traced fit is TensorFlow's alone).

    >>> specs()["k3_scale_loss"][0]
    'keras.src.backend.torch.trainer'
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import assign_to, call_attr, method_call, self_attr, step_loss
from lossmap.engines.keras3 import citations as _k3
from lossmap.engines.keras3.anchors import TRAINER
from lossmap.engines.keras3_torch.anchors import TORCH_NN, TORCH_TRAINER


def specs() -> dict:
    """Keras 3's citations, the TensorFlow-backend ones replaced by torch's statements."""
    out = dict(_k3.specs())
    out.update({
        "k3_bce": (
            TORCH_NN, "binary_crossentropy",
            [(assign_to("output", call_attr("torch", "clip")), "output = torch.clip(output, epsilon, 1 - epsilon)")]),
        "k3_scale_additional": (
            TRAINER, "Trainer._aggregate_additional_loss",
            [(call_attr("ops", "sum"), "return ops.sum(loss)")]),
        "k3_unscale_logs": (
            TORCH_TRAINER, "TorchTrainer.train_step",
            [(method_call(self_attr("_loss_tracker"), "update_state"), "self._loss_tracker.update_state(loss, ...)")]),
        "k3_step_loss": (
            TORCH_TRAINER, "TorchTrainer.train_step", [step_loss()]),
        "k3_scale_loss": (
            TORCH_TRAINER, "TorchTrainer.train_step",
            [(m.Assign(targets=[m.AssignTarget(m.Name("loss"))], value=method_call(self_attr("optimizer"), "scale_loss")),
              "loss = self.optimizer.scale_loss(loss)")]),
    })
    return out


def facts(engine, model, sig) -> dict:
    """`Engine.engine_facts` on torch: Keras 3's, with one replica and no TensorFlow name scopes."""
    out = {"engine": engine.name, "outputs": len(sig.outputs), "output_names": [o.name for o in sig.outputs],
           "replicas": 1}
    compile_loss = getattr(model, "_compile_loss", None)
    out["loss_weights"] = getattr(compile_loss, "_user_loss_weights", None)
    out["losses"] = getattr(compile_loss, "_user_loss", None)
    out["frozen_regularized"] = engine.frozen_regularized_variables(model)
    out.update(_k3.surprise_facts(model, sig))
    out["unused_overrides"] = _k3.unused_overrides(model)
    out.update(model_replicas=1, scoped_names=[])
    return out
