"""What both engines do the same way: the part of `Engine` they share (each overrides only what differs)."""
from __future__ import annotations

import importlib.util
from typing import Optional

from lossmap.engines.base import Engine


class KerasEngine(Engine):
    """An `Engine` for a Keras on the TensorFlow backend; `package` names its Python package.

    The custom-training-code hooks live in each engine folder's `steps.py` (`steps_module`).
    """

    steps_module = None  # the engine folder's steps.py

    def overrides(self, model) -> dict:
        return self.steps_module.overrides(model)

    def probe(self, model):
        return self.steps_module.probe(self, model)

    def expand_keras_loss(self, model, sig, call, probe):
        return self.steps_module.expand_keras_loss(self, model, sig, call, probe)

    def additional_for(self, model, losses, probe) -> list:
        return self.steps_module.additional_for(self, model, losses, probe)

    def builtin_loss_name(self, obj):
        return self.steps_module.builtin_loss_name(obj)

    def optimizer_classes(self) -> tuple:
        return self.steps_module.optimizer_classes()

    def metric_classes(self) -> tuple:
        return self.steps_module.metric_classes()

    def variable_namer(self, model):
        return self.steps_module.variable_namer(model)

    def dense_gradient(self, gradient):
        return self.steps_module.dense_gradient(gradient)

    def training_layers(self, model) -> list:
        return self.steps_module.training_layers(model)

    def first_update(self, optimizer, gradients, variables) -> dict:
        return self.steps_module.first_update(self, optimizer, gradients, variables)

    def as_tensors(self, structure):
        return self.steps_module.as_tensors(structure)

    @classmethod
    def installed(cls) -> bool:
        return importlib.util.find_spec(cls.package) is not None

    @classmethod
    def owns(cls, obj) -> bool:
        return any((c.__module__ or "").split(".")[0] == cls.package for c in type(obj).__mro__)

    def optimizer_name(self, model) -> Optional[str]:
        """The optimizer's class name; a LossScaleOptimizer's inner optimizer's."""
        opt = getattr(model, "optimizer", None)
        if opt is None:
            return None
        inner = getattr(opt, "inner_optimizer", None)
        return type(inner or opt).__name__

    def seed_random(self, seed: int):
        """`tf.random.set_seed`: TensorFlow's own random ops (no Keras SeedGenerator), tf_keras's default
        random ops and TensorFlow Probability's sampling draw the same in every pass."""
        import tensorflow as tf

        tf.random.set_seed(seed)
