"""Keras 3 on the JAX backend: the engine, its capture, stateless train step, state, NumPy rules, anchors
and citations. What does not depend on the backend is the TensorFlow engine's (`lossmap.engines.keras3`)."""
from lossmap.engines.keras3_jax.engine import Keras3JaxEngine

__all__ = ["Keras3JaxEngine"]
