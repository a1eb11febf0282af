"""Independent NumPy reproduction of tf_keras 2.x's loss terms, from captured tensors and configs.

Each function mirrors one function of the installed tf_keras source (named in
its docstring) without calling it. Where tf_keras and Keras 3 compute the same
thing, `lossmap.engines.common.rules` holds it; everything below is where
tf_keras differs:

- `LossesContainer.__call__` (engine/compile_utils.py): `match_dtype_and_rank`,
  then the prediction's `_keras_mask` multiplied into the sample weights, then
  `Loss.__call__`, times the loss weight, `scale_loss_for_distribution` for
  AUTO / SUM_OVER_BATCH_SIZE, and `tf.add_n` over outputs plus one `tf.add_n`
  of every regularization loss. `add_n` adds tensors of one shape only: it does
  not reduce a non-scalar `add_loss` tensor (Keras 3 sums it).
- `Loss.__call__` / `losses_utils.apply_valid_mask` / `compute_weighted_loss` /
  `reduce_weighted_loss` (utils/losses_utils.py): AUTO means SUM_OVER_BATCH_SIZE;
  the mask is rescaled by total/valid with a plain division (NaN when nothing is
  valid, where Keras 3 uses divide_no_nan); SUM_OVER_BATCH_SIZE divides by the
  number of elements of the weighted losses.
- backend.py: `binary_crossentropy` from probabilities clips to [eps, 1 - eps]
  and then adds eps again inside both logarithms; the crossentropies use the
  `_keras_logits` a softmax/sigmoid output carries (eager tensors have no op
  type to look at). `tf.math.l2_normalize` (cosine similarity, orthogonal
  regularizer) uses 1e-12, not Keras 3's epsilon.
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common import rules as common
from lossmap.engines.common.rules import clip_like_keras, f64 as _f64, log_softmax, sigmoid, smooth_binary, smooth_categorical

L2_NORMALIZE_EPSILON = 1e-12  # tf.math.l2_normalize's default


# ---------------------------------------------------------------- shapes (losses_utils)
def remove_squeezable_dimensions(labels, predictions, expected_rank_diff=0):
    """Mirror of tf_keras.src.utils.losses_utils.remove_squeezable_dimensions (static ranks)."""
    rank_diff = predictions.ndim - labels.ndim
    if rank_diff == expected_rank_diff + 1 and predictions.shape[-1] == 1:
        predictions = np.squeeze(predictions, -1)
    elif rank_diff == expected_rank_diff - 1 and labels.shape[-1] == 1:
        labels = np.squeeze(labels, -1)
    return labels, predictions


def squeeze_or_expand_dimensions(y_pred, y_true=None, sample_weight=None):
    """Mirror of tf_keras.src.utils.losses_utils.squeeze_or_expand_dimensions (static ranks)."""
    if y_true is not None:
        if (y_pred.ndim - y_true.ndim != 1) or (y_pred.ndim and y_pred.shape[-1] == 1):
            y_true, y_pred = remove_squeezable_dimensions(y_true, y_pred)
    if sample_weight is None:
        return y_pred, y_true, None
    if sample_weight.ndim == 0:
        return y_pred, y_true, sample_weight
    if sample_weight.ndim - y_pred.ndim == 1:
        sample_weight = np.squeeze(sample_weight, -1)
    elif y_pred.ndim - sample_weight.ndim == 1:
        sample_weight = np.expand_dims(sample_weight, -1)
    return y_pred, y_true, sample_weight


def match_dtype_and_rank(y_t, y_p, sw):
    """Mirror of tf_keras.src.engine.compile_utils.match_dtype_and_rank (ranks only; lossmap works in float64)."""
    y_t = np.asarray(y_t)
    if y_t.ndim == 1 and np.ndim(y_p) == 2:
        y_t = np.expand_dims(y_t, -1)
    if sw is not None:
        sw = np.asarray(sw)
        if sw.ndim == 1 and np.ndim(y_p) == 2:
            sw = np.expand_dims(sw, -1)
    return y_t, sw


# ---------------------------------------------------------------- masks and reductions
def apply_mask(sample_weight, mask):
    """Mirror of tf_keras.src.utils.losses_utils.apply_mask (the mask plays the predictions' part)."""
    if mask is None:
        return sample_weight
    mask = _f64(mask)
    if sample_weight is not None:
        sample_weight = _f64(sample_weight)
        mask, _, sample_weight = squeeze_or_expand_dimensions(mask, sample_weight=sample_weight)
        return sample_weight * mask
    return mask


def apply_valid_mask(losses, sample_weight, mask, reduction):
    """Mirror of tf_keras.src.utils.losses_utils.apply_valid_mask."""
    if mask is None:
        return sample_weight
    mask = _f64(mask)
    if reduction in ("auto", "sum_over_batch_size"):
        total = float(mask.size)
        valid = float(np.sum(mask))
        with np.errstate(divide="ignore", invalid="ignore"):
            # a plain division: nothing valid gives inf, and 0 * inf = NaN, as in TensorFlow
            mask = mask * (np.float64(total) / np.float64(valid))
    return apply_mask(sample_weight, mask)


def reduce_weighted_loss(weighted_losses, reduction="sum_over_batch_size"):
    """Mirror of tf_keras.src.utils.losses_utils.reduce_weighted_loss."""
    if reduction == "none":
        return weighted_losses
    loss = np.sum(weighted_losses)
    if reduction == "sum_over_batch_size":
        n = float(np.size(weighted_losses))
        loss = loss / n if n else 0.0  # _safe_mean: divide_no_nan
    return np.asarray(loss, np.float64)


def compute_weighted_loss(losses, sample_weight=None, reduction="sum_over_batch_size"):
    """Mirror of tf_keras.src.utils.losses_utils.compute_weighted_loss."""
    if reduction == "auto":
        reduction = "sum_over_batch_size"
    losses = _f64(losses)
    sample_weight = np.float64(1.0) if sample_weight is None else _f64(sample_weight)
    losses, _, sample_weight = squeeze_or_expand_dimensions(losses, None, sample_weight)
    return reduce_weighted_loss(losses * sample_weight, reduction)


def reduce_weighted(values, sample_weight=None, mask=None, reduction="auto"):
    """What tf_keras does to an output's per-sample losses, from the container to the scalar.

    `LossesContainer.__call__` multiplies the prediction's mask into the sample
    weights (`apply_mask`), then `Loss.__call__` rescales the mask by
    total/valid for AUTO/SUM_OVER_BATCH_SIZE (`apply_valid_mask`) and reduces
    (`compute_weighted_loss`). `mask` is the combined prediction/loss mask
    (a 0/1 mask multiplied in twice is the same mask).
    """
    reduction = _get_reduction(reduction)
    sw = apply_mask(None if sample_weight is None else _f64(sample_weight), mask)
    sw = apply_valid_mask(values, sw, mask, reduction)
    return compute_weighted_loss(values, sw, reduction)


def _get_reduction(reduction):
    """Mirror of tf_keras.src.losses.Loss._get_reduction (no strategy: AUTO -> SUM_OVER_BATCH_SIZE)."""
    if reduction in (None, "auto"):
        return "sum_over_batch_size"
    return reduction


# ---------------------------------------------------------------- backend (tf_keras.src.backend)
def l2_normalize(x, axis):
    """Mirror of tf.math.l2_normalize: x * rsqrt(max(sum(x^2), 1e-12))."""
    sq = np.sum(np.square(x), axis=axis, keepdims=True)
    return x / np.sqrt(np.maximum(sq, L2_NORMALIZE_EPSILON))


def backend_binary_crossentropy(t, out, logits, from_logits, dtype, eps):
    """Mirror of tf_keras.src.backend.binary_crossentropy (with _get_logits, eager)."""
    if logits is not None:
        out, from_logits = logits, True
    if from_logits:
        x = _f64(out)
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    dt = np.dtype(dtype)
    p = np.clip(np.asarray(out, dt), dt.type(eps), dt.type(1.0 - eps))
    e = dt.type(eps)
    # tf_keras adds epsilon inside both logs after clipping (Keras 3 does not)
    pos = np.log((p + e).astype(np.float64))
    neg = np.log((dt.type(1.0) - p + e).astype(np.float64))
    return -(t * pos + (1 - t) * neg)


def backend_sparse_categorical_crossentropy(t, out, logits, from_logits, axis, ignore_class, dtype, eps):
    """Mirror of tf_keras.src.backend.sparse_categorical_crossentropy. Returns (values, mask)."""
    t = np.asarray(t).astype(np.int64)
    if logits is not None:
        out, from_logits = logits, True
    z = _f64(out) if from_logits else np.log(clip_like_keras(out, dtype, eps))
    rank = z.ndim
    axis = axis % rank
    if axis != rank - 1:
        z = np.moveaxis(z, axis, -1)
    out_shape = z.shape
    update_shape = t.ndim != rank - 1
    if update_shape:
        t = t.reshape(-1)
        z = z.reshape(-1, out_shape[-1])
    valid = None
    if ignore_class is not None:
        valid = t != ignore_class
        t = np.where(valid, t, 0)
    ls = log_softmax(z, -1)
    res = -np.take_along_axis(ls, t[..., None], axis=-1)[..., 0]
    if valid is not None:
        res = np.where(valid, res, 0.0).reshape(out_shape[:-1])
        return res, valid.reshape(out_shape[:-1])
    if update_shape and rank >= 3:
        res = res.reshape(out_shape[:-1])
    return res, None


# ---------------------------------------------------------------- elementwise losses (tf_keras.src.losses)
def _binary_focal_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    t = smooth_binary(y_true, kw)
    from_logits = bool(kw.get("from_logits", False))
    sigmoidal = sigmoid(y_pred) if from_logits else y_pred
    p_t = t * sigmoidal + (1 - t) * (1 - sigmoidal)
    focal = np.power(1.0 - p_t, float(kw.get("gamma", 2.0)))
    bce = backend_binary_crossentropy(t, y_pred, logits, from_logits, dtype, eps)
    out = focal * bce
    if kw.get("apply_class_balancing", False):
        alpha = float(kw.get("alpha", 0.25))
        out = (t * alpha + (1 - t) * (1 - alpha)) * out
    return np.mean(out, axis=kw.get("axis", -1)), None


def _categorical_focal_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    axis = kw.get("axis", -1)
    t = smooth_categorical(y_true, kw, -1)
    out, from_logits = y_pred, bool(kw.get("from_logits", False))
    if logits is not None:
        out, from_logits = logits, True
    p = np.exp(log_softmax(out, axis)) if from_logits else _f64(out)
    o = p / np.sum(p, axis=axis, keepdims=True)
    o = clip_like_keras(o, dtype, eps)
    cce = -t * np.log(o)
    focal = np.power(1.0 - o, float(kw.get("gamma", 2.0))) * float(kw.get("alpha", 0.25)) * cce
    return np.sum(focal, axis=axis), None


def _sparse_categorical_crossentropy(r, y_true, y_pred, logits, kw, dtype, eps):
    return backend_sparse_categorical_crossentropy(
        y_true, y_pred, logits, bool(kw.get("from_logits", False)), kw.get("axis", -1),
        kw.get("ignore_class", None), dtype, eps)


LOSSES = {
    **common.LOSSES,
    "binary_focal_crossentropy": _binary_focal_crossentropy,
    "categorical_focal_crossentropy": _categorical_focal_crossentropy,
    "sparse_categorical_crossentropy": _sparse_categorical_crossentropy,
}
BUILTIN_LOSS_FUNCTIONS = frozenset(LOSSES)
BUILTIN_REGULARIZERS = frozenset(common.REGULARIZERS)

# The functions whose labels reach the backend as they are (integer class ids), not as float64.
_INTEGER_LABELS = frozenset({"sparse_categorical_crossentropy"})


def elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps):
    """Per-sample values of tf_keras's built-in loss function `fn` (a name), as
    `LossFunctionWrapper.call` computes them. Returns (values, out_mask)."""
    kw = dict(kwargs)
    y_pred = _f64(y_pred)
    y_true = np.asarray(y_true)
    # LossFunctionWrapper.call: squeeze_or_expand_dimensions(y_pred, y_true)
    y_pred2, y_true2, _ = squeeze_or_expand_dimensions(y_pred, y_true)
    if y_pred2.shape != y_pred.shape:
        logits = None  # a squeezed tensor is a new tensor: no _keras_logits on it
    y_pred, y_true = y_pred2, y_true2
    if logits is not None and np.shape(logits) != y_pred.shape:
        logits = None
    if fn not in _INTEGER_LABELS:
        y_true = _f64(y_true)
    return LOSSES[fn](TF_KERAS, y_true, y_pred, logits, kw, dtype, eps)


def regularizer_value(cls_name, config, x):
    """Mirror of tf_keras.src.regularizers.<cls_name>.__call__."""
    return TF_KERAS.regularizer_value(cls_name, config, x)


# ---------------------------------------------------------------- the rules the engine hands terms.py
class TfKerasRules(common.Rules):
    """How tf_keras reduces, aggregates and adds the terms (see the module docstring)."""

    name = "tf_keras"
    activity_division_site = "Layer._handle_activity_regularization"
    LOSSES = LOSSES
    elementwise_loss = staticmethod(elementwise_loss)
    reduce_weighted = staticmethod(reduce_weighted)
    l2_normalize = staticmethod(l2_normalize)
    backend_binary_crossentropy = staticmethod(backend_binary_crossentropy)

    def aggregate_additional(self, raw):
        """(value, step) of one entry of `model.losses`: tf_keras adds it unreduced.

        A non-scalar tensor only adds up (with `tf.add_n`) when every addend has
        its shape; the total is then a tensor whose mean is what is logged and
        what lossmap verifies, so its mean is the value here.
        """
        raw = np.asarray(raw, np.float64)
        if raw.ndim == 0:
            return float(raw), "the tensor the layer passed to add_loss, added as it is by tf.add_n"
        return float(np.mean(raw)), (f"the tensor the layer passed to add_loss, shape {list(raw.shape)}: "
                                     "tf_keras does not reduce it (tf.add_n needs every addend of one shape); "
                                     "lossmap counts its mean, what the logged loss would show")

    def add_terms(self, terms) -> float:
        """`LossesContainer.__call__`: add_n(compiled x weight ..., add_n(regularization losses))."""
        compiled = [t.contribution for t in terms if t.kind == "compiled"]
        additional = [t.contribution for t in terms if t.kind != "compiled"]
        parts = compiled + ([float(np.sum(additional))] if additional else [])
        return float(np.sum(parts)) if parts else 0.0

    @staticmethod
    def add_n_shapes(terms):
        """The shapes tf.add_n would be given, and whether it can add them.

        Returns (ok, regularization_shapes, total_shapes): `add_n` needs one shape for all.
        """
        reg = [tuple(t.shape or ()) for t in terms if t.kind != "compiled"]
        reg_ok = len(set(reg)) <= 1
        outer = [tuple(t.shape or ()) for t in terms if t.kind == "compiled"]
        if reg:
            outer.append(reg[0] if reg_ok else None)
        ok = reg_ok and len(set(outer)) <= 1
        return ok, reg, outer


TF_KERAS = TfKerasRules()
