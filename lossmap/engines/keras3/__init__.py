"""Keras 3 (TensorFlow backend): the engine, its capture, train step, state, NumPy rules, anchors and citations."""
from lossmap.engines.keras3.engine import Keras3Engine

__all__ = ["Keras3Engine"]
