"""Keras 3 on PyTorch: the loss arithmetic in NumPy, where the torch backend computes otherwise.

Aggregation (`Loss.__call__`, `reduce_weighted_values`, `CompileLoss`, `Trainer.compute_loss`)
and the loss functions (`keras.src.losses.losses`) are Keras's own backend-agnostic code:
`lossmap.engines.keras3.rules` mirrors them and is reused whole. What differs is
`keras.src.backend.torch.nn`: `keras.activations.softmax`/`sigmoid` attach their logits to
their output (`_keras_logits`) on torch too, but torch's crossentropies never read them
(TensorFlow's `_get_logits` does), so a crossentropy after a softmax/sigmoid is computed from
the probabilities, clipped to [epsilon, 1 - epsilon]; and the sparse crossentropy normalises
and clips the probabilities before its log (`tnn.nll_loss` of `log(clip(p / sum p))`), where
TensorFlow clips, logs and then applies a log-softmax. The categorical crossentropy on
probabilities (normalise, clip, log) is the shared mirror's.

    >>> import numpy as np
    >>> round(float(TORCH.backend_binary_crossentropy(np.ones(1), np.ones(1), np.zeros(1), False, "float32", 1e-7)[0]), 4)
    0.0
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.rules import clip_like_keras, f64, log_softmax
from lossmap.engines.keras3 import rules as k3


def backend_binary_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.torch.nn.binary_crossentropy: `tnn.binary_cross_entropy_with_logits`,
    or `tnn.binary_cross_entropy` of the clipped probabilities (its logs floored at -100); never from
    attached logits (`logits` is ignored: torch's backend does not read them)."""
    if from_logits:
        x = f64(out)
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p = clip_like_keras(out, dtype, eps)
    one_minus = (np.asarray(1.0, np.dtype(dtype)) - np.asarray(p, np.dtype(dtype))).astype(np.float64)
    return -(t * np.maximum(np.log(p), -100.0) + (1 - t) * np.maximum(np.log(one_minus), -100.0))


def backend_sparse_categorical_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.torch.nn.sparse_categorical_crossentropy: `tnn.cross_entropy` of
    the logits, or `tnn.nll_loss` of `log(clip(p / sum p))` (`logits` ignored, as above)."""
    t = np.asarray(t).astype(np.int64)
    if t.ndim == out.ndim and t.shape[-1] == 1:
        t = np.squeeze(t, -1)
    if from_logits:
        lp = log_softmax(out, -1)
    else:
        o = f64(out)
        with np.errstate(invalid="ignore", divide="ignore"):  # ignore_class rows: 0 / 0, then dropped
            lp = np.log(clip_like_keras(o / np.sum(o, axis=-1, keepdims=True), dtype, eps))
    return -np.take_along_axis(lp, t[..., None], axis=-1)[..., 0]


def elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps):
    """`keras3.rules.elementwise_loss` with the torch backend's crossentropies (and no attached logits)."""
    return k3.elementwise_loss(fn, y_true, y_pred, None, kwargs, dtype, eps, rules=TORCH)


class Keras3TorchRules(k3.Keras3Rules):
    """Keras 3's reductions and sums, with the torch backend's crossentropies."""

    name = "keras3"
    reads_attached_logits = False  # keras.activations attaches them on torch too; torch's nn.py never reads them
    elementwise_loss = staticmethod(elementwise_loss)
    backend_binary_crossentropy = staticmethod(backend_binary_crossentropy)
    backend_sparse_categorical_crossentropy = staticmethod(backend_sparse_categorical_crossentropy)


TORCH = Keras3TorchRules()
