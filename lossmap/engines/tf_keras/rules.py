"""Independent NumPy reproduction of tf_keras 2.x's loss terms, from captured tensors and configs.

Each function mirrors one function of the installed tf_keras source (named in
its docstring) without calling it. Where tf_keras and Keras 3 compute the same
thing the Keras 3 mirror (`lossmap.reproduce`) is reused; everything below is
where tf_keras differs:

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

from lossmap.engines.keras3 import rules as k3

L2_NORMALIZE_EPSILON = 1e-12  # tf.math.l2_normalize's default


def _f64(x):
    return np.asarray(x, np.float64)


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


# ---------------------------------------------------------------- elementwise losses
def _clip(p, dtype, eps):
    return k3._clip_like_keras(p, dtype, eps)


def _maybe_convert_labels(y_true):
    """Mirror of tf_keras.src.losses._maybe_convert_labels."""
    if np.all((y_true == 0) | (y_true == 1)):
        return 2.0 * y_true - 1.0
    return y_true


def _l2_normalize(x, axis):
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


def backend_categorical_crossentropy(t, out, logits, from_logits, axis, dtype, eps):
    """Mirror of tf_keras.src.backend.categorical_crossentropy."""
    if logits is not None:
        out, from_logits = logits, True
    if from_logits:
        return -np.sum(t * k3._log_softmax(out, axis), axis=axis)
    o = _f64(out)
    o = o / np.sum(o, axis=axis, keepdims=True)
    o = _clip(o, dtype, eps)
    return -np.sum(t * np.log(o), axis=axis)


def backend_sparse_categorical_crossentropy(t, out, logits, from_logits, axis, ignore_class, dtype, eps):
    """Mirror of tf_keras.src.backend.sparse_categorical_crossentropy. Returns (values, mask)."""
    t = np.asarray(t).astype(np.int64)
    if logits is not None:
        out, from_logits = logits, True
    z = _f64(out) if from_logits else np.log(_clip(out, dtype, eps))
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
    ls = k3._log_softmax(z, -1)
    res = -np.take_along_axis(ls, t[..., None], axis=-1)[..., 0]
    if valid is not None:
        res = np.where(valid, res, 0.0).reshape(out_shape[:-1])
        return res, valid.reshape(out_shape[:-1])
    if update_shape and rank >= 3:
        res = res.reshape(out_shape[:-1])
    return res, None


def _sigmoid(x):
    return k3._sigmoid(x)


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
    if fn == "sparse_categorical_crossentropy":
        return backend_sparse_categorical_crossentropy(
            y_true, y_pred, logits, bool(kw.get("from_logits", False)), kw.get("axis", -1),
            kw.get("ignore_class", None), dtype, eps)
    y_true = _f64(y_true)
    if fn == "mean_squared_error":
        return np.mean(np.square(y_pred - y_true), axis=-1), None
    if fn == "mean_absolute_error":
        return np.mean(np.abs(y_pred - y_true), axis=-1), None
    if fn == "mean_absolute_percentage_error":
        return 100.0 * np.mean(np.abs((y_true - y_pred) / np.maximum(np.abs(y_true), eps)), axis=-1), None
    if fn == "mean_squared_logarithmic_error":
        a = np.log(np.maximum(y_pred, eps) + 1.0)
        b = np.log(np.maximum(y_true, eps) + 1.0)
        return np.mean(np.square(a - b), axis=-1), None
    if fn == "squared_hinge":
        t = _maybe_convert_labels(y_true)
        return np.mean(np.square(np.maximum(1.0 - t * y_pred, 0.0)), axis=-1), None
    if fn == "hinge":
        t = _maybe_convert_labels(y_true)
        return np.mean(np.maximum(1.0 - t * y_pred, 0.0), axis=-1), None
    if fn == "categorical_hinge":
        pos = np.sum(y_true * y_pred, axis=-1)
        neg = np.max((1.0 - y_true) * y_pred, axis=-1)
        return np.maximum(neg - pos + 1.0, 0.0), None
    if fn == "huber":
        delta = float(kw.get("delta", 1.0))
        err = y_pred - y_true
        a = np.abs(err)
        return np.mean(np.where(a <= delta, 0.5 * np.square(err), delta * a - 0.5 * delta ** 2), axis=-1), None
    if fn == "log_cosh":
        x = y_pred - y_true
        return np.mean(x + np.logaddexp(0.0, -2.0 * x) - np.log(2.0), axis=-1), None
    if fn == "kl_divergence":
        t = np.clip(y_true, eps, 1)
        p = np.clip(y_pred, eps, 1)
        return np.sum(t * np.log(t / p), axis=-1), None
    if fn == "poisson":
        return np.mean(y_pred - y_true * np.log(y_pred + eps), axis=-1), None
    if fn == "cosine_similarity":
        axis = kw.get("axis", -1)
        return -np.sum(_l2_normalize(y_true, axis) * _l2_normalize(y_pred, axis), axis=axis), None
    if fn == "binary_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        t = y_true * (1.0 - ls) + 0.5 * ls if ls else y_true
        bce = backend_binary_crossentropy(t, y_pred, logits, bool(kw.get("from_logits", False)), dtype, eps)
        return np.mean(bce, axis=kw.get("axis", -1)), None
    if fn == "binary_focal_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        t = y_true * (1.0 - ls) + 0.5 * ls if ls else y_true
        from_logits = bool(kw.get("from_logits", False))
        sigmoidal = _sigmoid(y_pred) if from_logits else y_pred
        p_t = t * sigmoidal + (1 - t) * (1 - sigmoidal)
        focal = np.power(1.0 - p_t, float(kw.get("gamma", 2.0)))
        bce = backend_binary_crossentropy(t, y_pred, logits, from_logits, dtype, eps)
        out = focal * bce
        if kw.get("apply_class_balancing", False):
            alpha = float(kw.get("alpha", 0.25))
            out = (t * alpha + (1 - t) * (1 - alpha)) * out
        return np.mean(out, axis=kw.get("axis", -1)), None
    if fn == "categorical_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        axis = kw.get("axis", -1)
        t = y_true * (1.0 - ls) + ls / y_true.shape[axis] if ls else y_true
        return backend_categorical_crossentropy(
            t, y_pred, logits, bool(kw.get("from_logits", False)), axis, dtype, eps), None
    if fn == "categorical_focal_crossentropy":
        ls = float(kw.get("label_smoothing", 0.0) or 0.0)
        axis = kw.get("axis", -1)
        t = y_true * (1.0 - ls) + ls / y_true.shape[-1] if ls else y_true
        out, from_logits = y_pred, bool(kw.get("from_logits", False))
        if logits is not None:
            out, from_logits = logits, True
        p = np.exp(k3._log_softmax(out, axis)) if from_logits else _f64(out)
        o = p / np.sum(p, axis=axis, keepdims=True)
        o = _clip(o, dtype, eps)
        cce = -t * np.log(o)
        focal = np.power(1.0 - o, float(kw.get("gamma", 2.0))) * float(kw.get("alpha", 0.25)) * cce
        return np.sum(focal, axis=axis), None
    raise KeyError(fn)


BUILTIN_LOSS_FUNCTIONS = k3.BUILTIN_LOSS_FUNCTIONS


# ---------------------------------------------------------------- regularizers
BUILTIN_REGULARIZERS = frozenset({"L1", "L2", "L1L2", "OrthogonalRegularizer"})


def regularizer_value(cls_name, config, x):
    """Mirror of tf_keras.src.regularizers.<cls_name>.__call__."""
    x = _f64(x)
    if cls_name == "L1":
        return float(config["l1"]) * np.sum(np.abs(x))
    if cls_name == "L2":
        return float(config["l2"]) * np.sum(np.square(x))  # 2 * l2 * tf.nn.l2_loss(x)
    if cls_name == "L1L2":
        l1, l2 = float(config.get("l1") or 0.0), float(config.get("l2") or 0.0)
        out = 0.0
        if l1:
            out += l1 * np.sum(np.abs(x))
        if l2:
            out += l2 * np.sum(np.square(x))
        return out
    if cls_name == "OrthogonalRegularizer":
        rows = config.get("mode", "rows") == "rows"
        n = _l2_normalize(x, 1 if rows else 0)
        product = n @ n.T if rows else n.T @ n
        size = product.shape[0]
        off = product * (1.0 - np.eye(size))
        pairs = size * (size - 1.0) / 2.0
        return float(config["factor"]) * 0.5 * np.sum(np.abs(off)) / pairs
    raise KeyError(cls_name)


# ---------------------------------------------------------------- the rules the engine hands terms.py
class TfKerasRules:
    """How tf_keras reduces, aggregates and adds the terms (see the module docstring)."""

    name = "tf_keras"
    activity_division_site = "Layer._handle_activity_regularization"

    def elementwise_loss(self, fn, y_true, y_pred, logits, kwargs, dtype, eps):
        return elementwise_loss(fn, y_true, y_pred, logits, kwargs, dtype, eps)

    def reduce_weighted(self, values, sample_weight, mask, reduction):
        return reduce_weighted(values, sample_weight, mask, reduction)

    def regularizer_value(self, cls_name, config, x):
        return regularizer_value(cls_name, config, x)

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
