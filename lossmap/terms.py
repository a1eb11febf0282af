"""Stage 3: the inventory, with each term's value reproduced independently.

Reads an engine's `Capture` (plain arrays and configs) and returns `Term`s
whose values come from NumPy mirrors of the engine's Keras (`rules`: its
elementwise losses, reductions, regularizers, how an entry of `model.losses` is
aggregated and how the terms are added: `Engine.rules`, from the engine's
`rules.py`; the default engine's when none is given), not from Keras's
objects. A user-defined loss or regularizer is called as it is; its term is
`opaque`.
"""
from __future__ import annotations

import numpy as np

from lossmap.analysis import Term
from lossmap.engines import default_rules
from lossmap.engines.base import AdditionalCapture, Capture, CompiledCapture


def build_terms(capture: Capture, rules=None) -> list:
    rules = rules or default_rules()
    terms = [compiled_term(c, capture, rules) for c in capture.compiled]
    terms += [additional_term(a, capture, rules) for a in capture.additional]
    return terms


def _as_value(arr):
    arr = np.asarray(arr, np.float64)
    return float(arr) if arr.ndim == 0 else float(np.sum(arr))


def compiled_term(c: CompiledCapture, capture: Capture, rules=None) -> Term:
    rules = rules or default_rules()
    steps = []
    opaque = c.fn is None
    if c.overrides_call:
        raw = np.asarray(c.keras_value, np.float64)
        steps.append(f"{c.loss_class}.__call__ is user code: its result is taken as it is")
    else:
        if c.fn is not None:
            values, out_mask = rules.elementwise_loss(
                c.fn, c.y_true, c.y_pred, c.logits, c.fn_kwargs, c.dtype, capture.epsilon)
            source = "logits carried by the softmax/sigmoid output" if c.logits is not None else "y_pred"
            steps.append(f"{c.fn} per sample from {source}: shape {list(values.shape)}")
        else:
            values, out_mask = c.call_user()
            steps.append(f"{c.loss_class}.call (user code) per sample: shape {list(np.shape(values))}")
        mask = _combine_masks(c.mask, out_mask)
        if mask is not None:
            steps.append(f"mask: {int(np.sum(mask))} of {mask.size} entries count")
        if c.sample_weight is not None:
            steps.append("times sample_weight")
        raw = rules.reduce_weighted(values, c.sample_weight, mask, c.reduction)
        steps.append(f"reduction {c.reduction!r}")
    weight = 1.0 if c.weight is None else c.weight
    value = _as_value(raw) if np.ndim(raw) == 0 else float(np.mean(raw))
    # reduction "none": Keras's compute_loss is the unreduced tensor, and both what it logs
    # (train_step's Mean tracker) and lossmap's verification take its mean, so the term
    # enters the total as mean x weight (REDUCTION_NONE says the gradient sees the sum).
    contribution = value * weight
    if c.weight is not None:
        steps.append(f"times loss weight {c.weight:g}")
    config = dict(c.config or {})
    config.setdefault("reduction", c.reduction)
    if c.fn_kwargs:
        for k, v in c.fn_kwargs.items():
            config.setdefault(k, _plain(v))
    return Term(
        id=f"compiled/{c.name}",
        kind="compiled",
        output=c.output,
        layer=None,
        variable=None,
        fn=c.fn or c.loss_class,
        config=config,
        value=value,
        weight=weight,
        contribution=contribution,
        opaque=opaque,
        shape=list(np.shape(raw)),
        keras_value=_as_value(c.keras_value) if np.ndim(c.keras_value) == 0 else float(np.mean(c.keras_value)),
        steps=steps,
        origin=c.origin,
    )


def _combine_masks(in_mask, out_mask):
    if in_mask is not None and out_mask is not None:
        return np.logical_and(in_mask.astype(bool), out_mask.astype(bool))
    return in_mask if in_mask is not None else out_mask


def additional_term(a: AdditionalCapture, capture: Capture, rules=None) -> Term:
    rules = rules or default_rules()
    steps = []
    if a.kind == "add_loss":
        value, step = rules.aggregate_additional(a.raw)
        opaque = True
        steps.append(step)
        term_id = f"add_loss/{a.layer}/{a.index}"
        kind = "add_loss"
    else:
        if a.builtin:
            value = float(rules.regularizer_value(a.regularizer, a.config or {}, a.source_tensor))
            opaque = False
            steps.append(f"{a.regularizer}({_fmt_config(a.config)}) of the "
                         f"{'variable' if a.kind == 'weight_regularizer' else 'layer output'} "
                         f"shape {list(np.shape(a.source_tensor))}")
        else:
            value = _as_value(a.call_user())
            opaque = True
            steps.append(f"{a.regularizer} (user code) called as it is")
        if a.kind == "activity_regularizer":
            if a.normalised_by_batch and np.ndim(a.source_tensor) > 0:
                batch = np.shape(a.source_tensor)[0]
                value = value / batch if batch else 0.0
                site = getattr(rules, "activity_division_site", "Layer.__call__")
                steps.append(f"divided by the batch size {batch} ({site})")
            term_id = f"activity/{a.layer}" + (f"/{a.index}" if a.index else "")
        else:
            term_id = f"regularizer/{a.variable}"
        kind = a.kind
    return Term(
        id=term_id,
        kind=kind,
        output=None,
        layer=a.layer,
        variable=a.variable,
        fn=a.regularizer if a.kind != "add_loss" else None,
        config=a.config,
        value=value,
        weight=1.0,
        contribution=value,
        opaque=opaque,
        shape=list(np.shape(a.raw)),
        keras_value=a.keras_value,
        steps=steps,
        origin=a.origin,
    )


def _plain(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


def _fmt_config(config):
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in (config or {}).items())


def reproduce_total(terms, rules=None) -> float:
    """Add the terms the way the engine's Keras does (the default engine's when no rules are given)."""
    return (rules or default_rules()).add_terms(terms)
