"""What every surprise check reads: the analysis, its capture, the engine's facts and NumPy rules,
and how a finding cites the installed source and prints its numbers.

    >>> fmt(1 / 3), fmt(None)
    ('0.333333', 'n/a')
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

KERAS3_MEANS = ("sum_over_batch_size", "mean")  # Keras 3's reductions that divide by the number of entries
TF_KERAS_MEANS = ("sum_over_batch_size", "auto")  # tf_keras's (AUTO is SUM_OVER_BATCH_SIZE)


@dataclass
class Context:
    """One analysis as the checks see it (see `lossmap.surprises.findings`)."""

    analysis: Any
    capture: Any
    facts: dict
    rules: Any  # the engine's NumPy mirror (`Engine.rules`)
    engine: str  # "keras3" | "tf_keras"
    result: Any = None  # custom training code: `lossmap.steps.analyse.CustomResult`
    model: Any = None  # the live model: custom code's callees are resolved on it

    @property
    def legacy(self) -> bool:
        return self.engine == "tf_keras"

    @property
    def label(self) -> str:
        return "tf_keras" if self.legacy else "Keras 3"

    def cite(self, keras3_key: str, tf_keras_key: str) -> dict:
        """This engine's statement of a pair of citation keys."""
        return cite(tf_keras_key if self.legacy else keras3_key)

    def term(self, term_id: str):
        return next((t for t in self.analysis.terms if t.id == term_id), None)

    def compiled_term(self, c):
        """The analysis's term of a `CompiledCapture` (by output and loss name)."""
        return next((t for t in self.analysis.terms if t.kind == "compiled" and t.output == c.output
                     and t.id.split("/", 1)[-1].split("#")[0] == c.name), None)


def cite(key: str) -> dict:
    """Where the statement `key` of an engine's `citations.py` is in the installed source (`engine_diff.cite`)."""
    from lossmap.engine_diff import cite as _cite

    return _cite(key)


def where(c: dict) -> str:
    from lossmap.engine_diff import where as _where

    return _where(c)


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{float(v):.6g}"


def elementwise(ctx: Context, c) -> Optional[tuple]:
    """(values before reduction, mask) of a compiled loss, as the engine's mirror or the user's `call` gives
    them; None for a loss whose `__call__` is user code (nothing before its reduction to look at)."""
    if c.overrides_call:
        return None
    if c.fn is not None:
        values, out_mask = ctx.rules.elementwise_loss(c.fn, c.y_true, c.y_pred, c.logits, c.fn_kwargs, c.dtype,
                                                      ctx.capture.epsilon)
    elif c.call_user is not None:
        values, out_mask = c.call_user()
    else:
        return None
    return np.asarray(values, np.float64), combine_masks(c.mask, out_mask)


def combine_masks(in_mask, out_mask):
    """Keras's `in_mask & out_mask` (`Loss.__call__`), either alone when the other is missing."""
    if in_mask is not None and out_mask is not None:
        return np.logical_and(np.asarray(in_mask, bool), np.asarray(out_mask, bool))
    return in_mask if in_mask is not None else out_mask


def reduced(rules, values, sample_weight, mask, reduction) -> float:
    """A compiled loss's value as `Loss.__call__` returns it (the mean of an unreduced one, as logged)."""
    raw = rules.reduce_weighted(values, sample_weight, mask, reduction)
    return float(np.mean(raw)) if np.ndim(raw) else float(raw)


def listed(items, limit=6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
