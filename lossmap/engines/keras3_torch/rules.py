"""Keras 3 on PyTorch: the loss arithmetic in NumPy, where the torch backend computes otherwise.

Aggregation (`Loss.__call__`, `reduce_weighted_values`, `CompileLoss`, `Trainer.compute_loss`)
is Keras's own backend-agnostic code: `lossmap.engines.keras3.rules` mirrors it and is reused
whole. What differs is `keras.src.backend.torch.nn`: `keras.activations.softmax`/`sigmoid`
attach their logits to their output (`_keras_logits`) on torch too, but torch's crossentropies
never read them (TensorFlow's `_get_logits` does), so a crossentropy after a softmax/sigmoid
is computed from the probabilities, clipped to [epsilon, 1 - epsilon];
and the sparse crossentropy normalises and clips the probabilities before its log
(`tnn.nll_loss` of `log(clip(p / sum p))`), where TensorFlow clips, logs and then applies
a log-softmax.

    >>> import numpy as np
    >>> round(float(TORCH.backend_binary_crossentropy(np.ones(1), np.ones(1), np.zeros(1), False, "float32", 1e-7)[0]), 4)
    0.0
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.rules import clip_like_keras, f64, log_softmax, sigmoid, smooth_binary
from lossmap.engines.keras3 import rules as k3


def backend_binary_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.torch.nn.binary_crossentropy: `tnn.binary_cross_entropy_with_logits`,
    or `tnn.binary_cross_entropy` of the clipped probabilities (its logs floored at -100); never from
    attached logits (`logits` is ignored: the torch backend attaches none)."""
    if from_logits:
        x = f64(out)
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p = clip_like_keras(out, dtype, eps)
    one_minus = (np.asarray(1.0, np.dtype(dtype)) - np.asarray(p, np.dtype(dtype))).astype(np.float64)
    return -(t * np.maximum(np.log(p), -100.0) + (1 - t) * np.maximum(np.log(one_minus), -100.0))


def backend_categorical_crossentropy(t, out, from_logits, axis, dtype, eps):
    """Mirror of keras.src.backend.torch.nn.categorical_crossentropy: `log_softmax`, or the log of the
    probabilities normalised to sum 1 and clipped."""
    if from_logits:
        return -np.sum(t * log_softmax(out, axis), axis=axis)
    o = f64(out)
    with np.errstate(invalid="ignore", divide="ignore"):
        o = clip_like_keras(o / np.sum(o, axis=axis, keepdims=True), dtype, eps)
    return -np.sum(t * np.log(o), axis=axis)


def backend_sparse_categorical_crossentropy(t, out, from_logits, dtype, eps):
    """Mirror of keras.src.backend.torch.nn.sparse_categorical_crossentropy: `tnn.cross_entropy` of
    the logits, or `tnn.nll_loss` of `log(clip(p / sum p))`."""
    t = np.asarray(t).astype(np.int64)
    if t.ndim == out.ndim and t.shape[-1] == 1:
        t = np.squeeze(t, -1)
    if from_logits:
        lp = log_softmax(out, -1)
    else:
        o = f64(out)
        with np.errstate(invalid="ignore", divide="ignore"):
            lp = np.log(clip_like_keras(o / np.sum(o, axis=-1, keepdims=True), dtype, eps))
    return -np.take_along_axis(lp, t[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------- the rows that call the backend
def _binary_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    t = smooth_binary(y_true, kw)
    bce = backend_binary_crossentropy(t, y_pred, None, bool(kw.get("from_logits", False)), dtype, eps)
    return np.mean(bce, axis=kw.get("axis", -1)), None


def _categorical_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    t = k3.smooth_categorical(y_true, kw, axis)
    return backend_categorical_crossentropy(t, y_pred, bool(kw.get("from_logits", False)), axis, dtype, eps), None


def _binary_focal_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    """keras.src.losses.losses.binary_focal_crossentropy: `ops.sigmoid` first with from_logits, then the
    backend's crossentropy on those probabilities (clipped: no logits are attached on torch)."""
    t = smooth_binary(y_true, kw)
    p = sigmoid(y_pred) if kw.get("from_logits", False) else y_pred
    bce = backend_binary_crossentropy(t, p, None, False, dtype, eps)
    p_t = t * p + (1 - t) * (1 - p)
    focal = np.power(1.0 - p_t, float(kw.get("gamma", 2.0))) * bce
    if kw.get("apply_class_balancing", False):
        alpha = float(kw.get("alpha", 0.25))
        focal = (t * alpha + (1 - t) * (1 - alpha)) * focal
    return np.mean(focal, axis=kw.get("axis", -1)), None


def _sparse_categorical_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    ignore = kw.get("ignore_class", None)
    if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
        y_true = np.squeeze(y_true, axis)
    valid = None
    if ignore is not None:
        valid = y_true != ignore
        y_true = np.where(valid, y_true, 0)
        y_pred = np.where(valid[..., None], y_pred, 0.0)
    res = backend_sparse_categorical_crossentropy(y_true, y_pred, bool(kw.get("from_logits", False)), dtype, eps)
    if valid is not None:
        res = np.where(valid, res, 0.0)
    return res, valid


LOSSES = {
    **k3.LOSSES,
    "binary_crossentropy": _binary_crossentropy,
    "categorical_crossentropy": _categorical_crossentropy,
    "binary_focal_crossentropy": _binary_focal_crossentropy,
    "sparse_categorical_crossentropy": _sparse_categorical_crossentropy,
}


def elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps):
    """`keras3.rules.elementwise_loss` with the torch rows (and no attached logits)."""
    return k3.elementwise_loss(fn, y_true, y_pred, None, kwargs, dtype, eps, rules=TORCH)


class Keras3TorchRules(k3.Keras3Rules):
    """Keras 3's reductions and sums, with the torch backend's crossentropies."""

    name = "keras3"
    reads_attached_logits = False  # keras.activations attaches them on torch too; torch's nn.py never reads them
    LOSSES = LOSSES
    elementwise_loss = staticmethod(elementwise_loss)
    backend_binary_crossentropy = staticmethod(backend_binary_crossentropy)


TORCH = Keras3TorchRules()
