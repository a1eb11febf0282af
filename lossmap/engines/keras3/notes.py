"""Keras 3: what the walkthrough says about this model, read from the plain-data `Analysis`.

The notes written next to the highlighted lines of `anchors.py` (this model's
own names and numbers), and the predicates that say when a model uses a step.
"""
from __future__ import annotations

from lossmap.engines.common.anchor_kit import (
    LIST_LIMIT,
    compiled as _compiled,
    extra as _extra,
    findings as _findings,
    has_step as _has_step,
    join as _join,
    listed as _list,
    masked as _masked,
    name as _name,
    number as _n,
    of_kind as _kind,
    reduction as _reduction,
    via_loss_call as _via_loss_call,
)


# ---------------------------------------------------------------- reading the analysis
def weighted(a):
    return [t for t in _via_loss_call(a) if _has_step(t, "sample_weight")]


def _compiled_sum(a) -> float:
    return sum(t.contribution for t in _compiled(a))


def entries(a) -> int:
    """How many entries Trainer.compute_loss's `losses` list gets."""
    return (1 if _compiled(a) else 0) + len(_extra(a))


def uses_default_compute_loss(a) -> bool:
    return not a.model.custom_compute_loss


def uses_default_train_step(a) -> bool:
    return a.model.compiled and not a.model.custom_train_step


# ---------------------------------------------------------------- notes
def train_compute(a):
    tot = a.total
    keras = f"; the real train_step gave {_n(tot.train_step)}" if tot.train_step is not None else ""
    return f"loss = {_n(tot.reproduced)} for this batch (lossmap's reproduction){keras}"


def optimizer(a):
    opt = (a.gradients or {}).get("optimizer")
    return f"{opt} applies the gradients of {_n(a.total.reproduced)}" if opt else \
        f"the optimizer applies the gradients of {_n(a.total.reproduced)}"


def compile_call(a):
    c = _compiled(a)
    if not c:
        return None
    parts = _join((f"{_name(t)} {_n(t.contribution)}" for t in c), " + ")
    return f"CompileLoss returns {_n(_compiled_sum(a))} here" + (f" ({parts})" if len(c) > 1 else "")


def losses_loop(a):
    extra = _extra(a)
    listed = _list(f"{t.id} {_n(t.contribution)}" for t in extra)
    return f"model.losses holds {len(extra)} entr{'y' if len(extra) == 1 else 'ies'} here: {listed}"


def total(a):
    parts = []
    if _compiled(a):
        parts.append(f"{_n(_compiled_sum(a))} (compiled)")
    extra = _extra(a)
    shown = extra if len(parts) + len(extra) <= LIST_LIMIT else extra[:LIST_LIMIT - len(parts) - 1]
    parts += [f"{_n(t.contribution)} ({t.id})" for t in shown]
    rest = extra[len(shown):]
    if rest:
        parts.append(f"{_n(sum(t.contribution for t in rest))} ({len(rest)} more terms)")
    return f"here {' + '.join(parts)} = {_n(a.total.reproduced)}"


def single_entry(a):
    only = "the compiled loss" if _compiled(a) else _extra(a)[0].id
    return f"only one entry here ({only}): the total is {_n(a.total.reproduced)}"


def aggregate(a):
    wide = [t for t in _extra(a) if t.shape]
    if not wide:
        return "every entry here is a scalar: ops.sum leaves it as it is"
    parts = []
    for t in wide:
        n = 1
        for d in t.shape:
            n *= d
        parts.append(f"{t.id} has shape {t.shape}: all {n} entries are summed to {_n(t.value)}")
    return _join(parts)


def loss_fn(a):
    parts = []
    for t in _compiled(a):
        sw = " with this batch's sample_weight" if _has_step(t, "sample_weight") else ""
        parts.append(f"{_name(t)}: {t.fn}{sw} -> {_n(t.value)}")
    return _join(parts)


def multiply(a):
    parts = [f"{_name(t)}'s {_n(t.value)} is multiplied by {_n(t.weight)} (= {_n(t.contribution)})"
             for t in _compiled(a)]
    return "here " + _list(parts)


def metric(a):
    parts = [f"{_name(t)}_loss records {_n(t.value)}" for t in _compiled(a)]
    return "per-output logs, before the loss weight (unweighted): " + _list(parts)


def sum_outputs(a):
    c = _compiled(a)
    return f"{_join((_n(t.contribution) for t in c), ' + ')} = {_n(_compiled_sum(a))}"


def single_output(a):
    t = _compiled(a)[0]
    return f"one output: {_name(t)}'s {_n(t.contribution)} is the compiled loss"


def self_call(a):
    parts = []
    for t in _via_loss_call(a):
        if t.opaque:
            parts.append(f"{_name(t)}: {t.fn}.call (user code)")
        else:
            parts.append(f"{_name(t)}: LossFunctionWrapper.call -> {t.fn}, one value per sample")
    return _join(parts)


def reduce_weighted(a):
    return _join(f"{_name(t)}: reduction {_reduction(t)!r} -> {_n(t.value)}" for t in _via_loss_call(a))


def in_mask(a):
    return _join(f"{_name(t)}'s prediction carries a mask" for t in _masked(a))


def wrapped(t) -> bool:
    """A built-in loss function, or a user function given to compile() (wrapped the same way)."""
    return not t.opaque or t.fn == "LossFunctionWrapper"


def fn(a):
    parts = []
    for t in _via_loss_call(a):
        if not wrapped(t):
            continue
        fn = t.fn if not t.opaque else f"the user function {(t.origin or {}).get('qualname') or '?'}"
        parts.append(f"self.fn is {fn} for {_name(t)}")
    return _join(parts)


def logits(a):
    ids = [f.term for f in _findings(a, "CROSSENTROPY_FROM_LOGITS", "FROM_LOGITS_ON_PROBABILITIES") if f.term]
    names = [_name(a.term(i)) for i in ids]
    return (f"{_list(names)}: the softmax/sigmoid output carries its logits (_keras_logits), so the "
            "crossentropy is computed from them, with no epsilon clipping")


def from_logits_warning(a):
    ids = [f.term for f in _findings(a, "FROM_LOGITS_ON_PROBABILITIES") if f.term]
    return f"{_list(ids)}: from_logits=True on a softmax/sigmoid output: Keras warns here and uses the logits"


def apply_mask_call(a):
    return _join(f"{_name(t)}: the mask is merged into the sample weights" for t in _masked(a))


def mask_times_sample_weights(a):
    return _join(f"{_name(t)}: mask weights times sample weights" for t in _masked(a) if t in weighted(a))


def times_weights(a):
    parts = [f"{_name(t)}: each loss value times its sample weight" for t in weighted(a)]
    parts += [f"{_name(t)}: times the mask weights" for t in _masked(a) if t not in weighted(a)]
    return _join(parts)


def mask_weight(a):
    parts = []
    for t in _masked(a):
        if _reduction(t) in ("mean", "sum_over_batch_size"):
            step = next(s for s in t.steps if "mask" in s)
            parts.append(f"{_name(t)}: {step}; each counted entry weighs total/valid, so the mean is over them")
    return _join(parts)


def plain_mask(a):
    return _join(f"{_name(t)} (reduction {_reduction(t)!r}): the mask is used as 0/1 weights"
                 for t in _masked(a) if _reduction(t) not in ("mean", "sum_over_batch_size"))


def reduce_sum(a):
    return _join(f"{_name(t)}: {_reduction(t)!r}" for t in _via_loss_call(a) if _reduction(t) not in (None, "none"))


def divisor_count(a):
    names = [_name(t) for t in _via_loss_call(a) if _reduction(t) in ("sum_over_batch_size", "mean")
             or _reduction(t) == "mean_with_sample_weight" and not _has_step(t, "sample_weight")]
    return (f"{_list(names)}: the sum is divided by the number of loss values "
            f"(this batch has {a.batch.size} samples)")


def divisor_weights(a):
    names = [_name(t) for t in _via_loss_call(a)
             if _reduction(t) == "mean_with_sample_weight" and _has_step(t, "sample_weight")]
    return f"{_list(names)}: the sum is divided by the sum of the sample weights"


def no_reduction(a):
    return _join(f"{_name(t)}: reduction {_reduction(t)!r}: the per-sample tensor is returned as it is"
                 for t in _via_loss_call(a) if _reduction(t) in (None, "none"))


def replicas(a):
    return "lossmap's run uses the default strategy: 1 replica, so the value is unchanged"


def activity_call(a):
    return _join(f"{t.layer}: {t.fn}{_cfg(t)} of the layer output" for t in _kind(a, "activity_regularizer"))


def activity_divide(a):
    parts = [f"{t.layer}: {s} -> {_n(t.value)}" for t in _kind(a, "activity_regularizer")
             for s in t.steps if "divided by the batch size" in s]
    return _join(parts)


def activity_add(a):
    return _list(f"{t.layer} -> {t.id}" for t in _kind(a, "activity_regularizer"))


def add_loss_extend(a):
    parts = [f"{t.id} {_n(t.value)}" + (f" (shape {t.shape})" if t.shape else "")
             for t in a.terms if t.kind in ("add_loss", "activity_regularizer")]
    return "appended to the layer's own list: " + _list(parts)


def own_losses(a):
    own = [t.id for t in a.terms if t.kind in ("add_loss", "activity_regularizer") and t.layer == a.model.name]
    return ("the model's own add_loss tensors: " + _list(own)) if own else \
        "the model itself added nothing"


def sublayer_losses(a):
    ids = [t.id for t in a.terms if t.kind in ("add_loss", "activity_regularizer") and t.layer != a.model.name]
    return "every sublayer's add_loss and activity-regularizer tensors, in layer order: " + _list(ids)


def has_sublayer_losses(a) -> bool:
    return any(t.kind in ("add_loss", "activity_regularizer") and t.layer != a.model.name for t in a.terms)


def weight_losses(a):
    return "then the weight regularizers: " + _list(t.id for t in _kind(a, "weight_regularizer"))


def trainable_loop(a):
    regs = _kind(a, "weight_regularizer")
    frozen = _findings(a, "REGULARIZER_ON_FROZEN_WEIGHT")
    text = f"{len(regs)} regularized trainable variable{'s' if len(regs) != 1 else ''} here"
    if frozen:
        text += "; left out because not trainable: " + _list(f.term.split("/", 1)[-1] for f in frozen if f.term)
    return text


def regularizer_append(a):
    return _join(f"{t.variable}: {t.fn}{_cfg(t)} -> {_n(t.value)}" for t in _kind(a, "weight_regularizer"))


def _cfg(t) -> str:
    cfg = t.config or {}
    inner = _list(f"{k}={_n(v) if isinstance(v, float) else v}" for k, v in cfg.items())
    return f"({inner})" if inner else ""


def regularizer_terms(name):
    def terms(a):
        return [t for t in a.terms if t.kind in ("weight_regularizer", "activity_regularizer")
                and t.fn == name and not t.opaque]
    return terms


def regularizer_return(name):
    def note(a):
        return _join(f"{t.variable or t.layer}: {name}{_cfg(t)} -> "
                     f"{_n(t.value) if t.kind == 'weight_regularizer' else 'the value before the batch division'}"
                     for t in regularizer_terms(name)(a))
    return note
