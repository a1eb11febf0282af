"""The data model every stage after loading reads and every renderer prints.

Plain dataclasses only: no Keras object is ever stored here, so renderers and
the JSON writer never touch Keras.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from lossmap.groups import Grouping, group_terms

SCHEMA = "lossmap/1"

KINDS = ("compiled", "weight_regularizer", "activity_regularizer", "add_loss", "custom")
LEVELS = ("info", "warning", "error")


@dataclass
class ModelInfo:
    source: str
    name: str
    engine: str
    keras_version: str
    backend: str
    saved_with: Optional[str]
    compiled: bool
    custom_train_step: bool
    custom_compute_loss: bool
    engine_reason: Optional[str] = None  # why this engine (additive to the contract's fields)
    # custom training code: the step lossmap read ({"spec", "function", "file", "line", "kind"});
    # in the JSON only when there is one
    step: Optional[dict] = None


@dataclass
class BatchInfo:
    source: str  # "file" | "synthetic" (CLI); "arrays" from the Python API
    size: int
    seed: Optional[int]


@dataclass
class Term:
    """One addend of the training loss.

    `value` is the term before its weight, after Keras's own reduction of it;
    `contribution` is what enters the total.
    """

    id: str
    kind: str
    output: Optional[str]
    layer: Optional[str]
    variable: Optional[str]
    fn: Optional[str]
    config: Optional[dict]
    value: float
    weight: float
    contribution: float
    opaque: bool
    # Beyond the contract's required fields (additive, so schema stays lossmap/1):
    shape: Optional[list] = None  # shape of the raw tensor before Keras reduced it
    keras_value: Optional[float] = None  # the same term as Keras's own objects compute it
    steps: list = field(default_factory=list)  # how the value was computed, for people
    origin: Optional[dict] = None  # user code behind the term: {module, qualname, file, line, kind}
    # custom training code (in the JSON only when set): the addend as the step writes it, where its
    # value is computed ({"file", "line", "function"}), and the objective it belongs to
    expression: Optional[str] = None
    source: Optional[dict] = None
    objective: Optional[str] = None


@dataclass
class Total:
    reproduced: float
    compute_loss: Optional[float]
    train_step: Optional[float]
    max_abs_diff: float
    rtol: float
    atol: float
    verified: bool
    path: str  # which execution path was verified, e.g. "eager"
    summation: str  # how this Keras adds the terms, in words
    # custom training code: the gradients the real step applied equal the sum of the terms'
    # gradients (None: not checkable); in the JSON only for custom code
    gradients_verified: Optional[bool] = None


@dataclass
class Finding:
    code: str
    level: str
    term: Optional[str]
    message: str
    # a finding that stands for several terms of one group (in the JSON only then): their ids
    terms: Optional[list] = None


@dataclass
class Analysis:
    lossmap_version: str
    model: ModelInfo
    batch: BatchInfo
    terms: list
    total: Total
    findings: list
    gradients: Optional[dict] = None
    state_restored: Optional[bool] = None
    # For the HTML report (lossmap.sources), not part of the JSON contract (to_dict leaves them out):
    walkthrough: list = field(default_factory=list)  # [sources.Step], the library code behind the total
    call_sites: dict = field(default_factory=dict)  # term id -> [sources.CallSite], the user code behind it
    # tf_keras vs Keras 3 (lossmap.engine_diff, lossmap.compare), plain data: {"differences": [...],
    # "rows": [...] | None, ...}; in the JSON as "engine_comparison" only when present.
    engine_comparison: Optional[dict] = None
    # Keras 3's backends side by side (lossmap.compare_backends, lossmap.backend_diff), plain data:
    # {"backends", "rows", "totals", "differences", "skipped", "failed", ...}; in the JSON as
    # "backend_comparison" only when present.
    backend_comparison: Optional[dict] = None
    # custom training code: one entry per differentiated loss; in the JSON only when there are several
    objectives: list = field(default_factory=list)
    # custom training code, for the report: the user's own step as lossmap read it (not in the JSON)
    step_view: Any = None

    @functools.cached_property
    def grouping(self) -> Grouping:
        """Which terms the report shows together (lossmap.groups); computed on first use, not in the JSON."""
        return group_terms(self.terms)

    def term(self, term_id: str) -> Term:
        for t in self.terms:
            if t.id == term_id:
                return t
        raise KeyError(term_id)

    def to_dict(self) -> dict:
        custom = self.model.step is not None
        doc = {
            "schema": SCHEMA,
            "lossmap_version": self.lossmap_version,
            "model": _without_unset(dataclasses.asdict(self.model), ("step",)),
            "batch": dataclasses.asdict(self.batch),
            # custom training code's fields (null allowed there) only where a step was read
            "terms": [dataclasses.asdict(t) if custom else _without_unset(dataclasses.asdict(t), CUSTOM_TERM_FIELDS)
                      for t in self.terms],
            "total": dataclasses.asdict(self.total) if custom
            else _without_unset(dataclasses.asdict(self.total), ("gradients_verified",)),
            "findings": [_without_unset(dataclasses.asdict(f), ("terms",)) for f in self.findings],
            "gradients": self.gradients,
        }
        if len(self.objectives) > 1:
            doc["objectives"] = self.objectives
        if self.engine_comparison is not None:
            doc["engine_comparison"] = self.engine_comparison
        if self.backend_comparison is not None:
            doc["backend_comparison"] = self.backend_comparison
        return _strict(doc)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def worst_level(self) -> Optional[str]:
        levels = [LEVELS.index(f.level) for f in self.findings]
        return LEVELS[max(levels)] if levels else None

    def __str__(self) -> str:
        from lossmap.render.text import render_equation

        return render_equation(self)


CUSTOM_TERM_FIELDS = ("expression", "source", "objective")


def _without_unset(doc: dict, keys) -> dict:
    """Additive fields that only some analyses have are left out when unset, not written as null."""
    return {k: v for k, v in doc.items() if k not in keys or v is not None}


def _strict(obj: Any) -> Any:
    """NaN and Inf become null: the contract's JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return _strict(obj.item())
    return obj
