"""What both engines do the same way: the part of `Engine` they share (each overrides only what differs)."""
from __future__ import annotations

import importlib.util
from typing import Optional

from lossmap.engines.base import Engine


class KerasEngine(Engine):
    """An `Engine` for a Keras on the TensorFlow backend; `package` names its Python package."""

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
