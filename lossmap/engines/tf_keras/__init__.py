"""tf_keras 2.x (the legacy Keras): the engine, its capture, train step, state, NumPy rules, anchors and citations."""
from lossmap.engines.tf_keras.engine import TfKerasEngine

__all__ = ["TfKerasEngine"]
