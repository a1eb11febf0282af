"""Independent NumPy reproduction of every term, from captured tensors and configs.

Each function mirrors one function of the installed Keras source (named in its
docstring) without calling it. Arithmetic is float64, except where Keras's
result depends on float32 rounding (clipping at `1 - epsilon`), which is done
in the loss dtype as Keras does.
"""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7  # keras.config.epsilon() default; the engine passes the live value


# ---------------------------------------------------------------- shape helpers
def squeeze_or_expand_to_same_rank(x1, x2, expand_rank_1=True):
    """Mirror of keras.src.losses.loss.squeeze_or_expand_to_same_rank."""
    r1, r2 = x1.ndim, x2.ndim
    if r1 == r2:
        return x1, x2
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = np.expand_dims(x2, -1)
        else:
            x1 = np.squeeze(x1, -1)
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = np.expand_dims(x1, -1)
        else:
            x2 = np.squeeze(x2, -1)
    return x1, x2


# ---------------------------------------------------------------- reductions (Keras 3)
def apply_mask(sample_weight, mask, reduction):
    """Mirror of keras.src.losses.loss.apply_mask."""
    if mask is None:
        return sample_weight
    if reduction in ("mean", "sum_over_batch_size"):
        total = float(np.prod(mask.shape))
        valid = float(np.sum(mask.astype(np.float64)))
        mask_weight = total / valid if valid else 0.0
        float_mask = np.where(mask.astype(bool), mask_weight, 0.0)
    else:
        float_mask = mask.astype(np.float64)
    if sample_weight is not None:
        float_mask, sample_weight = squeeze_or_expand_to_same_rank(
            float_mask, np.asarray(sample_weight, np.float64)
        )
        return sample_weight * float_mask
    return float_mask


def reduce_values(values, sample_weight, reduction):
    """Mirror of keras.src.losses.loss.reduce_values (one replica)."""
    if reduction in (None, "none") or values.shape == () or values.shape == (0,):
        return values
    loss = np.sum(values)
    if reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        if reduction == "mean_with_sample_weight" and sample_weight is not None:
            divisor = float(np.sum(sample_weight))
        else:
            divisor = float(np.prod(values.shape))
        loss = loss / divisor if divisor else 0.0  # divide_no_nan
    return np.asarray(loss, np.float64)


def reduce_weighted_values(values, sample_weight=None, mask=None, reduction="sum_over_batch_size"):
    """Mirror of keras.src.losses.loss.reduce_weighted_values."""
    values = np.asarray(values, np.float64)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, np.float64)
    sample_weight = apply_mask(sample_weight, mask, reduction)
    if sample_weight is not None:
        values, sample_weight = squeeze_or_expand_to_same_rank(values, sample_weight)
        values = values * sample_weight
    return reduce_values(values, sample_weight, reduction)


# ---------------------------------------------------------------- elementwise losses
def _f64(x):
    return np.asarray(x, np.float64)


def _clip_like_keras(p, dtype, eps):
    """clip(p, eps, 1 - eps) evaluated in the loss dtype, as the backend does."""
    dt = np.dtype(dtype)
    lo = dt.type(eps)
    hi = dt.type(1.0 - eps)
    return np.clip(np.asarray(p, dt), lo, hi).astype(np.float64)


def _log_softmax(z, axis=-1):
    z = _f64(z)
    m = np.max(z, axis=axis, keepdims=True)
    s = z - m
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _sigmoid(z):
    z = _f64(z)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def _hinge_labels(y_true):
    if np.all((y_true == 0) | (y_true == 1)):
        return 2.0 * y_true - 1.0
    return y_true


def _l2_normalize(x, axis):
    """Mirror of keras.ops.normalize(order=2): x / sqrt(max(sum(x^2), eps))."""
    sq = np.sum(np.square(x), axis=axis, keepdims=True)
    return x * (1.0 / np.sqrt(np.maximum(sq, EPSILON)))


def backend_binary_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.tensorflow.nn.binary_crossentropy (with _get_logits)."""
    if logits is not None:  # the output carries the sigmoid's logits
        out, from_logits = logits, True
    if from_logits:
        x = _f64(out)
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p = _clip_like_keras(out, dtype, eps)
    one_minus = (np.asarray(1.0, np.dtype(dtype)) - np.asarray(p, np.dtype(dtype))).astype(np.float64)
    return -(t * np.log(p) + (1 - t) * np.log(one_minus))


def backend_categorical_crossentropy(t, out, logits, from_logits, axis, dtype, eps):
    """Mirror of keras.src.backend.tensorflow.nn.categorical_crossentropy."""
    if logits is not None:
        out, from_logits = logits, True
    if from_logits:
        return -np.sum(t * _log_softmax(out, axis), axis=axis)
    o = _f64(out)
    o = o / np.sum(o, axis=axis, keepdims=True)
    o = _clip_like_keras(o, dtype, eps)
    return -np.sum(t * np.log(o), axis=axis)


def backend_sparse_categorical_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.tensorflow.nn.sparse_categorical_crossentropy."""
    if logits is not None:
        out, from_logits = logits, True
    t = np.asarray(t).astype(np.int64)
    if t.ndim == out.ndim and t.shape[-1] == 1:
        t = np.squeeze(t, -1)
    z = _f64(out) if from_logits else np.log(_clip_like_keras(out, dtype, eps))
    ls = _log_softmax(z, -1)
    return -np.take_along_axis(ls, t[..., None], axis=-1)[..., 0]


def elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps):
    """Per-sample values of Keras's built-in loss function `fn` (a name).

    Returns (values, out_mask); out_mask is what the function attaches to its
    result (only sparse crossentropy with ignore_class does).
    """
    kw = dict(kwargs)
    # LossFunctionWrapper.call squeezes or expands first.
    y_true, y_pred = squeeze_or_expand_to_same_rank(_f64(y_true), _f64(y_pred))
    if logits is not None and logits.shape != y_pred.shape:
        logits = None
    if fn in ("mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
              "mean_squared_logarithmic_error", "cosine_similarity", "huber", "log_cosh"):
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    if fn == "mean_squared_error":
        return np.mean(np.square(y_true - y_pred), axis=-1), None
    if fn == "mean_absolute_error":
        return np.mean(np.abs(y_true - y_pred), axis=-1), None
    if fn == "mean_absolute_percentage_error":
        diff = np.abs((y_true - y_pred) / np.maximum(np.abs(y_true), eps))
        return 100.0 * np.mean(diff, axis=-1), None
    if fn == "mean_squared_logarithmic_error":
        a = np.log(np.maximum(y_pred, eps) + 1.0)
        b = np.log(np.maximum(y_true, eps) + 1.0)
        return np.mean(np.square(a - b), axis=-1), None
    if fn == "cosine_similarity":
        axis = kw.get("axis", -1)
        return -np.sum(_l2_normalize(y_true, axis) * _l2_normalize(y_pred, axis), axis=axis), None
    if fn == "huber":
        delta = float(kw.get("delta", 1.0))
        err = y_pred - y_true
        a = np.abs(err)
        return np.mean(np.where(a <= delta, 0.5 * err**2, delta * a - 0.5 * delta**2), axis=-1), None
    if fn == "log_cosh":
        x = y_pred - y_true
        return np.mean(x + np.logaddexp(0.0, -2.0 * x) - np.log(2.0), axis=-1), None
    if fn == "kl_divergence":
        t = np.clip(y_true, eps, 1)
        p = np.clip(y_pred, eps, 1)
        return np.sum(t * np.log(t / p), axis=-1), None
    if fn == "poisson":
        return np.mean(y_pred - y_true * np.log(y_pred + eps), axis=-1), None
    if fn == "hinge":
        t = _hinge_labels(y_true)
        return np.mean(np.maximum(1.0 - t * y_pred, 0.0), axis=-1), None
    if fn == "squared_hinge":
        t = _hinge_labels(y_true)
        return np.mean(np.square(np.maximum(1.0 - t * y_pred, 0.0)), axis=-1), None
    if fn == "categorical_hinge":
        pos = np.sum(y_true * y_pred, axis=-1)
        neg = np.max((1.0 - y_true) * y_pred, axis=-1)
        return np.maximum(neg - pos + 1.0, 0.0), None
    if fn == "binary_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        t = y_true * (1.0 - ls) + 0.5 * ls if ls else y_true
        bce = backend_binary_crossentropy(t, y_pred, logits, bool(kw.get("from_logits", False)), dtype, eps)
        return np.mean(bce, axis=kw.get("axis", -1)), None
    if fn == "binary_focal_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        t = y_true * (1.0 - ls) + 0.5 * ls if ls else y_true
        p, lg = y_pred, logits
        if kw.get("from_logits", False):
            lg = y_pred  # ops.sigmoid attaches its logits, so the bce below uses them
            p = _sigmoid(y_pred)
        bce = backend_binary_crossentropy(t, p, lg, False, dtype, eps)
        p_t = t * p + (1 - t) * (1 - p)
        focal = np.power(1.0 - p_t, float(kw.get("gamma", 2.0))) * bce
        if kw.get("apply_class_balancing", False):
            alpha = float(kw.get("alpha", 0.25))
            focal = (t * alpha + (1 - t) * (1 - alpha)) * focal
        return np.mean(focal, axis=kw.get("axis", -1)), None
    if fn == "categorical_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        axis = kw.get("axis", -1)
        t = y_true * (1.0 - ls) + ls / y_true.shape[axis] if ls else y_true
        return backend_categorical_crossentropy(t, y_pred, logits, bool(kw.get("from_logits", False)), axis, dtype, eps), None
    if fn == "categorical_focal_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        axis = kw.get("axis", -1)
        t = y_true * (1.0 - ls) + ls / y_true.shape[axis] if ls else y_true
        p = np.exp(_log_softmax(y_pred, axis)) if kw.get("from_logits", False) else y_pred
        o = p / np.sum(p, axis=axis, keepdims=True)
        o = _clip_like_keras(o, dtype, eps)
        cce = -t * np.log(o)
        focal = np.power(1.0 - o, float(kw.get("gamma", 2.0))) * float(kw.get("alpha", 0.25)) * cce
        return np.sum(focal, axis=axis), None
    if fn == "sparse_categorical_crossentropy":
        return _sparse_cce(y_true, y_pred, logits, kw, dtype, eps)
    raise KeyError(fn)


def _sparse_cce(y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    ignore = kw.get("ignore_class", None)
    if y_true.ndim == y_pred.ndim and y_true.shape[axis] == 1:
        y_true = np.squeeze(y_true, axis)
    valid = None
    if ignore is not None:
        valid = y_true != ignore
        y_true = np.where(valid, y_true, 0)
        y_pred = np.where(valid[..., None], y_pred, 0.0)
        if logits is not None:
            # ops.where makes a new tensor: the softmax's logits are no longer attached.
            logits = None
    res = backend_sparse_categorical_crossentropy(y_true, y_pred, logits, bool(kw.get("from_logits", False)), dtype, eps)
    if valid is not None:
        res = np.where(valid, res, 0.0)
    return res, valid


BUILTIN_LOSS_FUNCTIONS = frozenset({
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error", "cosine_similarity", "huber", "log_cosh",
    "kl_divergence", "poisson", "hinge", "squared_hinge", "categorical_hinge",
    "binary_crossentropy", "binary_focal_crossentropy", "categorical_crossentropy",
    "categorical_focal_crossentropy", "sparse_categorical_crossentropy",
})


# ---------------------------------------------------------------- regularizers
BUILTIN_REGULARIZERS = frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"})


def regularizer_value(cls_name, config, x):
    """Mirror of keras.src.regularizers.regularizers.<cls_name>.__call__."""
    x = _f64(x)
    if cls_name == "L1":
        return float(config["l1"]) * np.sum(np.abs(x))
    if cls_name == "L2":
        return float(config["l2"]) * np.sum(np.square(x))
    if cls_name == "L1L2":
        l1, l2 = float(config.get("l1") or 0.0), float(config.get("l2") or 0.0)
        out = 0.0
        if l1 != 0.0:
            out += l1 * np.sum(np.abs(x))
        if l2 != 0.0:
            out += l2 * np.sum(np.square(x))
        return out
    if cls_name == "OrthogonalRegularizer":
        axis = 1 if config.get("mode", "rows") == "rows" else 0
        n = _l2_normalize(x, axis)
        product = n @ n.T if axis == 1 else n.T @ n
        size = product.shape[0]
        off = product * (1.0 - np.eye(size))
        pairs = size * (size - 1.0) / 2.0
        return float(config["factor"]) * 0.5 * np.sum(np.abs(off)) / pairs
    raise KeyError(cls_name)


# ---------------------------------------------------------------- the rules the Keras 3 engine hands terms.py
class Keras3Rules:
    """How Keras 3 reduces, aggregates and adds the terms (`Trainer.compute_loss`)."""

    name = "keras3"

    def elementwise_loss(self, fn, y_true, y_pred, logits, kwargs, dtype, eps):
        return elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps)

    def reduce_weighted(self, values, sample_weight, mask, reduction):
        return reduce_weighted_values(values, sample_weight, mask, reduction)

    def regularizer_value(self, cls_name, config, x):
        return regularizer_value(cls_name, config, x)

    def aggregate_additional(self, raw):
        """(value, step) of one entry of `model.losses`: `Trainer._aggregate_additional_loss` sums it."""
        raw = np.asarray(raw, np.float64)
        return float(np.sum(raw)), ("the tensor the layer passed to add_loss" +
                                    (f", shape {list(raw.shape)}, summed by ops.sum" if raw.ndim else ""))

    def add_terms(self, terms) -> float:
        """`Trainer.compute_loss`: the compiled loss first, then each additional term, with ops.sum."""
        compiled = [t.contribution for t in terms if t.kind == "compiled"]
        additional = [t.contribution for t in terms if t.kind != "compiled"]
        parts = ([float(np.sum(compiled))] if compiled else []) + additional
        return float(np.sum(parts)) if parts else 0.0


KERAS3 = Keras3Rules()
