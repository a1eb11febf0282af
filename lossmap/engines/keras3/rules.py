"""Keras 3's loss arithmetic in NumPy: every term reproduced independently, from captured tensors and configs.

Each function mirrors one function of the installed Keras source (named in its
docstring) without calling it. Arithmetic is float64, except where Keras's
result depends on float32 rounding (clipping at `1 - epsilon`), which is done
in the loss dtype as Keras does. What tf_keras computes the same way is in
`lossmap.engines.common.rules`; the rows of `LOSSES` here are where Keras 3
has its own.
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common import rules as common
from lossmap.engines.common.rules import clip_like_keras, f64, log_softmax, sigmoid, smooth_binary, smooth_categorical

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


# ---------------------------------------------------------------- backend (keras.src.backend.tensorflow.nn)
def l2_normalize(x, axis):
    """Mirror of keras.ops.normalize(order=2): x / sqrt(max(sum(x^2), eps))."""
    sq = np.sum(np.square(x), axis=axis, keepdims=True)
    return x * (1.0 / np.sqrt(np.maximum(sq, EPSILON)))


def backend_binary_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.tensorflow.nn.binary_crossentropy (with _get_logits)."""
    if logits is not None:  # the output carries the sigmoid's logits
        out, from_logits = logits, True
    if from_logits:
        x = f64(out)
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p = clip_like_keras(out, dtype, eps)
    one_minus = (np.asarray(1.0, np.dtype(dtype)) - np.asarray(p, np.dtype(dtype))).astype(np.float64)
    return -(t * np.log(p) + (1 - t) * np.log(one_minus))


def backend_sparse_categorical_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of keras.src.backend.tensorflow.nn.sparse_categorical_crossentropy."""
    if logits is not None:
        out, from_logits = logits, True
    t = np.asarray(t).astype(np.int64)
    if t.ndim == out.ndim and t.shape[-1] == 1:
        t = np.squeeze(t, -1)
    z = f64(out) if from_logits else np.log(clip_like_keras(out, dtype, eps))
    ls = log_softmax(z, -1)
    return -np.take_along_axis(ls, t[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------- elementwise losses (keras.src.losses.losses)
def _binary_focal_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    t = smooth_binary(y_true, kw)
    p, lg = y_pred, logits
    if kw.get("from_logits", False):
        lg = y_pred  # ops.sigmoid attaches its logits, so the bce below uses them
        p = sigmoid(y_pred)
    bce = r.backend_binary_crossentropy(t, p, lg, False, dtype, eps)
    p_t = t * p + (1 - t) * (1 - p)
    focal = np.power(1.0 - p_t, float(kw.get("gamma", 2.0))) * bce
    if kw.get("apply_class_balancing", False):
        alpha = float(kw.get("alpha", 0.25))
        focal = (t * alpha + (1 - t) * (1 - alpha)) * focal
    return np.mean(focal, axis=kw.get("axis", -1)), None


def _categorical_focal_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    t = smooth_categorical(y_true, kw, axis)
    p = np.exp(log_softmax(y_pred, axis)) if kw.get("from_logits", False) else y_pred
    o = p / np.sum(p, axis=axis, keepdims=True)
    o = clip_like_keras(o, dtype, eps)
    cce = -t * np.log(o)
    focal = np.power(1.0 - o, float(kw.get("gamma", 2.0))) * float(kw.get("alpha", 0.25)) * cce
    return np.sum(focal, axis=axis), None


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
        if logits is not None:
            # ops.where makes a new tensor: the softmax's logits are no longer attached.
            logits = None
    res = r.backend_sparse_categorical_crossentropy(y_true, y_pred, logits, bool(kw.get("from_logits", False)), dtype, eps)
    if valid is not None:
        res = np.where(valid, res, 0.0)
    return res, valid


LOSSES = {
    **common.LOSSES,
    "binary_focal_crossentropy": _binary_focal_crossentropy,
    "categorical_focal_crossentropy": _categorical_focal_crossentropy,
    "sparse_categorical_crossentropy": _sparse_categorical_crossentropy,
}
BUILTIN_LOSS_FUNCTIONS = frozenset(LOSSES)
BUILTIN_REGULARIZERS = frozenset(common.REGULARIZERS)

# The functions that line y_true and y_pred up a second time before computing (as the Keras source does).
_SQUEEZED_AGAIN = frozenset({"mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
                             "mean_squared_logarithmic_error", "cosine_similarity", "huber", "log_cosh"})


def elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps, rules=None):
    """Per-sample values of Keras's built-in loss function `fn` (a name).

    Returns (values, out_mask); out_mask is what the function attaches to its
    result (only sparse crossentropy with ignore_class does). `rules`: the backend's
    `Keras3Rules` (default: TensorFlow's).
    """
    kw = dict(kwargs)
    # LossFunctionWrapper.call squeezes or expands first.
    y_true, y_pred = squeeze_or_expand_to_same_rank(f64(y_true), f64(y_pred))
    if logits is not None and logits.shape != y_pred.shape:
        logits = None
    if fn in _SQUEEZED_AGAIN:
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    return LOSSES[fn](rules or KERAS3, y_true, y_pred, logits, kw, dtype, eps)


def regularizer_value(cls_name, config, x):
    """Mirror of keras.src.regularizers.regularizers.<cls_name>.__call__."""
    return KERAS3.regularizer_value(cls_name, config, x)


# ---------------------------------------------------------------- the rules the Keras 3 engine hands terms.py
class Keras3Rules(common.Rules):
    """How Keras 3 reduces, aggregates and adds the terms (`Trainer.compute_loss`)."""

    name = "keras3"
    LOSSES = LOSSES
    elementwise_loss = staticmethod(elementwise_loss)
    reduce_weighted = staticmethod(reduce_weighted_values)
    l2_normalize = staticmethod(l2_normalize)
    backend_binary_crossentropy = staticmethod(backend_binary_crossentropy)
    backend_sparse_categorical_crossentropy = staticmethod(backend_sparse_categorical_crossentropy)

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
