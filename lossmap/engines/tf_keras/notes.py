"""tf_keras: what the walkthrough says about this model, read from the plain-data `Analysis`.

The notes written next to the highlighted lines of `anchors.py` (this model's
own names and numbers).
"""
from __future__ import annotations

from lossmap.engines.common.anchor_kit import (
    compiled as _compiled,
    extra as _extra,
    findings as _findings,
    listed as _list,
    masked as _masked,
    name as _name,
    number as _n,
    of_kind as _kind,
    reduction as _reduction,
    via_loss_call as _via_loss_call,
)


# ---------------------------------------------------------------- notes
def forward(a):
    return f"loss = {_n(a.total.reproduced)} for this batch (lossmap's reproduction)" + (
        f"; the real train_step logged {_n(a.total.train_step)}" if a.total.train_step is not None else "")


def compute_loss_call(a):
    extra = _extra(a)
    return (f"the compiled losses of {len(_compiled(a))} output(s), and model.losses with {len(extra)} "
            f"entr{'y' if len(extra) == 1 else 'ies'} as regularization_losses")


def loss_obj(a):
    return _list(f"{_name(t)}: {t.fn} -> {_n(t.value)}" for t in _compiled(a))


def metric(a):
    return "per-output logs, before the loss weight (unweighted): " + _list(
        f"{_name(t)}_loss records {_n(t.value)}" for t in _compiled(a))


def weight(a):
    return _list(f"{_name(t)}: {_n(t.value)} x {_n(t.weight)} = {_n(t.contribution)}"
                 for t in _compiled(a) if t.weight != 1.0)


def scale(a):
    return "one replica in lossmap's run: scale_loss_for_distribution leaves each value as it is"


def reg_add_n(a):
    extra = _extra(a)
    wide = [t for t in extra if t.shape]
    text = (f"tf.add_n of {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} = "
            f"{_n(sum(t.contribution for t in extra))}")
    if wide:
        text += ("; add_n does not reduce: " + _list(f"{t.id} has shape {t.shape}" for t in wide)
                 + " (see ENGINE_DIFF_ADD_LOSS_NON_SCALAR)")
    return text


def total(a):
    parts = [f"{_n(t.contribution)} ({_name(t)})" for t in _compiled(a)]
    if _extra(a):
        parts.append(f"{_n(sum(t.contribution for t in _extra(a)))} (regularization)")
    return f"tf.add_n: {' + '.join(parts)} = {_n(a.total.reproduced)}"


def mean_tracker(a):
    return f"the 'loss' fit() prints: the running mean of {_n(a.total.reproduced)}"


def apply_mask(a):
    return _list(f"{_name(t)}: its prediction's _keras_mask is multiplied into the sample weights" for t in _masked(a))


def reduction(a):
    return _list(f"{_name(t)}: {_reduction(t)!r}" + (" (AUTO means SUM_OVER_BATCH_SIZE)" if _reduction(t) == "auto"
                                                       else "") for t in _via_loss_call(a))


def weighted(a):
    return _list(f"{_name(t)} -> {_n(t.value)}" for t in _via_loss_call(a))


def fn(a):
    return _list(f"self.fn is {t.fn} for {_name(t)}" for t in _via_loss_call(a) if not t.opaque)


def logits(a):
    ids = [f.term for f in _findings(a, "CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES") if f.term]
    return (f"{_list(ids)}: the softmax/sigmoid output carries _keras_logits, so the crossentropy is computed "
            "from them, with no epsilon clipping")


def activity(a):
    return _list(f"{t.layer}: {t.fn} of the output / batch size = {_n(t.value)}" for t in _kind(a, "activity_regularizer"))


def eager_losses(a):
    return "kept for this call: " + _list(f"{t.id} {_n(t.value)}" + (f" (shape {t.shape})" if t.shape else "")
                                          for t in a.terms if t.kind in ("add_loss", "activity_regularizer"))


def callable_losses(a):
    regs = _kind(a, "weight_regularizer")
    frozen = _findings(a, "ENGINE_DIFF_FROZEN_REGULARIZER")
    return (f"{len(regs)} weight regularizer(s) recomputed on this access"
            + ("; non-trainable ones included (ENGINE_DIFF_FROZEN_REGULARIZER)" if frozen else ""))


def regularizer(a):
    return _list(f"{t.variable}: {t.fn} -> {_n(t.value)}" for t in _kind(a, "weight_regularizer"))
