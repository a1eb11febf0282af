"""Keras 3 on PyTorch: the engine, its capture, train step, state, NumPy rules, anchors and citations."""
from lossmap.engines.keras3_torch.engine import Keras3TorchEngine

__all__ = ["Keras3TorchEngine"]
