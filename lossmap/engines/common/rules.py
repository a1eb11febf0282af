"""What both engines' NumPy mirrors share: the arithmetic Keras 3 and tf_keras do the same way.

Each engine's `rules.py` is a `Rules` subclass whose `LOSSES` table (built-in
loss function name -> row) extends `LOSSES` here with the rows where its Keras
differs. A row is `row(rules, y_true, y_pred, logits, kw, dtype, eps)` and
returns (per-sample values, the mask the function attaches or None); `rules` is
the engine's `Rules`, for what differs inside a shared row (its backend's
binary crossentropy, its L2 normalisation).

    >>> import numpy as np
    >>> from lossmap.engines.keras3.rules import KERAS3
    >>> KERAS3.elementwise_loss("mean_squared_error", np.zeros((2, 1)), np.ones((2, 1)), None, {}, "float32", 1e-7)
    (array([1., 1.]), None)
"""
from __future__ import annotations

import numpy as np

# Labels a built-in loss expects, for synthetic batches.
LABEL_KIND = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "onehot",
    "categorical_focal_crossentropy": "onehot",
    "categorical_hinge": "onehot",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
    "hinge": "binary",
    "squared_hinge": "binary",
    "kl_divergence": "distribution",
    "poisson": "positive",
    "mean_squared_logarithmic_error": "positive",
    "mean_absolute_percentage_error": "positive",
}


# ---------------------------------------------------------------- numerics
def f64(x):
    return np.asarray(x, np.float64)


def clip_like_keras(p, dtype, eps):
    """clip(p, eps, 1 - eps) evaluated in the loss dtype, as the backend does."""
    dt = np.dtype(dtype)
    lo = dt.type(eps)
    hi = dt.type(1.0 - eps)
    return np.clip(np.asarray(p, dt), lo, hi).astype(np.float64)


def log_softmax(z, axis=-1):
    z = f64(z)
    m = np.max(z, axis=axis, keepdims=True)
    s = z - m
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def sigmoid(z):
    z = f64(z)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def hinge_labels(y_true):
    """{0, 1} labels as {-1, 1} (Keras 3's hinge losses; tf_keras's `_maybe_convert_labels`)."""
    if np.all((y_true == 0) | (y_true == 1)):
        return 2.0 * y_true - 1.0
    return y_true


def smooth_binary(y_true, kw):
    """Binary labels with `label_smoothing` applied (towards 0.5)."""
    ls = float(kw.get("label_smoothing", 0.0) or 0.0)
    return y_true * (1.0 - ls) + 0.5 * ls if ls else y_true


def smooth_categorical(y_true, kw, axis):
    """One-hot labels with `label_smoothing` spread over the classes along `axis`."""
    ls = float(kw.get("label_smoothing", 0.0) or 0.0)
    return y_true * (1.0 - ls) + ls / y_true.shape[axis] if ls else y_true


def backend_categorical_crossentropy(t, out, logits, from_logits, axis, dtype, eps):
    """Mirror of the backends' categorical_crossentropy (keras.src.backend.tensorflow.nn,
    tf_keras.src.backend): from the attached logits when there are any."""
    if logits is not None:
        out, from_logits = logits, True
    if from_logits:
        return -np.sum(t * log_softmax(out, axis), axis=axis)
    o = f64(out)
    o = o / np.sum(o, axis=axis, keepdims=True)
    o = clip_like_keras(o, dtype, eps)
    return -np.sum(t * np.log(o), axis=axis)


# ---------------------------------------------------------------- loss rows both engines share
def _mean_squared_error(r, y_true, y_pred, logits, kw, dtype, eps):
    return np.mean(np.square(y_true - y_pred), axis=-1), None


def _mean_absolute_error(r, y_true, y_pred, logits, kw, dtype, eps):
    return np.mean(np.abs(y_true - y_pred), axis=-1), None


def _mean_absolute_percentage_error(r, y_true, y_pred, logits, kw, dtype, eps):
    diff = np.abs((y_true - y_pred) / np.maximum(np.abs(y_true), eps))
    return 100.0 * np.mean(diff, axis=-1), None


def _mean_squared_logarithmic_error(r, y_true, y_pred, logits, kw, dtype, eps):
    a = np.log(np.maximum(y_pred, eps) + 1.0)
    b = np.log(np.maximum(y_true, eps) + 1.0)
    return np.mean(np.square(a - b), axis=-1), None


def _cosine_similarity(r, y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    return -np.sum(r.l2_normalize(y_true, axis) * r.l2_normalize(y_pred, axis), axis=axis), None


def _huber(r, y_true, y_pred, logits, kw, dtype, eps):
    delta = float(kw.get("delta", 1.0))
    err = y_pred - y_true
    a = np.abs(err)
    return np.mean(np.where(a <= delta, 0.5 * np.square(err), delta * a - 0.5 * delta ** 2), axis=-1), None


def _log_cosh(r, y_true, y_pred, logits, kw, dtype, eps):
    x = y_pred - y_true
    return np.mean(x + np.logaddexp(0.0, -2.0 * x) - np.log(2.0), axis=-1), None


def _kl_divergence(r, y_true, y_pred, logits, kw, dtype, eps):
    t = np.clip(y_true, eps, 1)
    p = np.clip(y_pred, eps, 1)
    return np.sum(t * np.log(t / p), axis=-1), None


def _poisson(r, y_true, y_pred, logits, kw, dtype, eps):
    return np.mean(y_pred - y_true * np.log(y_pred + eps), axis=-1), None


def _hinge(r, y_true, y_pred, logits, kw, dtype, eps):
    t = hinge_labels(y_true)
    return np.mean(np.maximum(1.0 - t * y_pred, 0.0), axis=-1), None


def _squared_hinge(r, y_true, y_pred, logits, kw, dtype, eps):
    t = hinge_labels(y_true)
    return np.mean(np.square(np.maximum(1.0 - t * y_pred, 0.0)), axis=-1), None


def _categorical_hinge(r, y_true, y_pred, logits, kw, dtype, eps):
    pos = np.sum(y_true * y_pred, axis=-1)
    neg = np.max((1.0 - y_true) * y_pred, axis=-1)
    return np.maximum(neg - pos + 1.0, 0.0), None


def _binary_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    t = smooth_binary(y_true, kw)
    bce = r.backend_binary_crossentropy(t, y_pred, logits, bool(kw.get("from_logits", False)), dtype, eps)
    return np.mean(bce, axis=kw.get("axis", -1)), None


def _categorical_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    t = smooth_categorical(y_true, kw, axis)
    return backend_categorical_crossentropy(
        t, y_pred, logits, bool(kw.get("from_logits", False)), axis, dtype, eps), None


LOSSES = {
    "mean_squared_error": _mean_squared_error,
    "mean_absolute_error": _mean_absolute_error,
    "mean_absolute_percentage_error": _mean_absolute_percentage_error,
    "mean_squared_logarithmic_error": _mean_squared_logarithmic_error,
    "cosine_similarity": _cosine_similarity,
    "huber": _huber,
    "log_cosh": _log_cosh,
    "kl_divergence": _kl_divergence,
    "poisson": _poisson,
    "hinge": _hinge,
    "squared_hinge": _squared_hinge,
    "categorical_hinge": _categorical_hinge,
    "binary_crossentropy": _binary_crossentropy,
    "categorical_crossentropy": _categorical_crossentropy,
}


# ---------------------------------------------------------------- regularizers (the same in both)
def _l1(r, config, x):
    return float(config["l1"]) * np.sum(np.abs(x))


def _l2(r, config, x):
    return float(config["l2"]) * np.sum(np.square(x))  # tf_keras: 2 * l2 * tf.nn.l2_loss(x)


def _l1l2(r, config, x):
    l1, l2 = float(config.get("l1") or 0.0), float(config.get("l2") or 0.0)
    out = 0.0
    if l1 != 0.0:
        out += l1 * np.sum(np.abs(x))
    if l2 != 0.0:
        out += l2 * np.sum(np.square(x))
    return out


def _orthogonal(r, config, x):
    axis = 1 if config.get("mode", "rows") == "rows" else 0
    n = r.l2_normalize(x, axis)
    product = n @ n.T if axis == 1 else n.T @ n
    size = product.shape[0]
    off = product * (1.0 - np.eye(size))
    pairs = size * (size - 1.0) / 2.0
    return float(config["factor"]) * 0.5 * np.sum(np.abs(off)) / pairs


REGULARIZERS = {"L1": _l1, "L2": _l2, "L1L2": _l1l2, "OrthogonalRegularizer": _orthogonal}


# ---------------------------------------------------------------- the interface terms.py reads
class Rules:
    """How one Keras computes, reduces, aggregates and adds the terms, in NumPy (`Engine.rules`)."""

    name = "?"
    activity_division_site = "Layer.__call__"  # where this Keras divides an activity loss by the batch size
    LOSSES = LOSSES
    REGULARIZERS = REGULARIZERS

    def elementwise_loss(self, fn, y_true, y_pred, logits, kwargs, dtype, eps):
        """Per-sample values of the built-in loss function `fn` (a name), and the mask it attaches."""
        raise NotImplementedError

    def reduce_weighted(self, values, sample_weight, mask, reduction):
        """A compiled loss's per-sample values to what `Loss.__call__` returns."""
        raise NotImplementedError

    def regularizer_value(self, cls_name, config, x):
        """The built-in regularizer `cls_name` (with `config`) of the tensor `x`."""
        x = f64(x)
        return self.REGULARIZERS[cls_name](self, config, x)

    def aggregate_additional(self, raw):
        """(value, step in words) of one entry of `model.losses`."""
        raise NotImplementedError

    def add_terms(self, terms) -> float:
        """The total, the terms added as this Keras adds them."""
        raise NotImplementedError

    def l2_normalize(self, x, axis):
        """This Keras's L2 normalisation (cosine similarity, the orthogonal regularizer)."""
        raise NotImplementedError

    def backend_binary_crossentropy(self, t, out, logits, from_logits, dtype, eps):
        """This backend's binary crossentropy on probabilities or logits."""
        raise NotImplementedError
