"""Keras 3 on JAX: the loss arithmetic in NumPy, where `keras.src.backend.jax.nn` computes otherwise.

Keras's loss functions, reductions and aggregation are the backend-agnostic code the
TensorFlow engine mirrors (`lossmap.engines.keras3.rules`). The crossentropies are the
backend's: a JAX array cannot carry the `_keras_logits` a softmax/sigmoid attaches on
TensorFlow, and JAX's `nn.py` never looks for them, so a crossentropy after a softmax or
sigmoid output is computed from the probabilities, clipped to [epsilon, 1 - epsilon] in the
loss dtype. Sparse categorical crossentropy normalises the probabilities, clips and takes the
log as categorical does (TensorFlow's takes `log_softmax` of the clipped log).

    >>> import numpy as np
    >>> from lossmap.engines.keras3_jax.rules import KERAS3_JAX
    >>> round(float(KERAS3_JAX.elementwise_loss("sparse_categorical_crossentropy", np.array([0]),
    ...       np.array([[1.0, 0.0]]), np.array([[9.0, -9.0]]), {}, "float32", 1e-7)[0][0]), 6)
    0.0
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.rules import clip_like_keras, f64, log_softmax
from lossmap.engines.keras3 import rules as keras3


def backend_binary_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.jax.nn.binary_crossentropy: no cached logits."""
    if from_logits:
        x = f64(out)  # -t log_sigmoid(x) - (1 - t) log_sigmoid(-x)
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    return keras3.backend_binary_crossentropy(t, out, None, False, dtype, eps)


def backend_sparse_categorical_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.jax.nn.sparse_categorical_crossentropy: probabilities normalised,
    clipped in the loss dtype, then the log (no cached logits)."""
    t = np.asarray(t).astype(np.int64)
    if t.ndim == out.ndim and t.shape[-1] == 1:
        t = np.squeeze(t, -1)
    if from_logits:
        ls = log_softmax(out, -1)
    else:
        o = np.asarray(out, np.dtype(dtype))
        o = o / np.sum(o, axis=-1, keepdims=True)  # in the loss dtype, as jnp does
        ls = np.log(clip_like_keras(o, dtype, eps))
    return -np.take_along_axis(ls, t[..., None], axis=-1)[..., 0]


def elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps):
    """`keras3.elementwise_loss` with this backend's rows and no logits (JAX arrays carry none)."""
    return keras3.elementwise_loss(fn, y_true, y_pred, None, kwargs, dtype, eps, rules=KERAS3_JAX)


class Keras3JaxRules(keras3.Keras3Rules):
    """Keras 3's reductions and aggregation, with the JAX backend's crossentropies."""

    name = "keras3"
    elementwise_loss = staticmethod(elementwise_loss)
    backend_binary_crossentropy = staticmethod(backend_binary_crossentropy)
    backend_sparse_categorical_crossentropy = staticmethod(backend_sparse_categorical_crossentropy)


KERAS3_JAX = Keras3JaxRules()
