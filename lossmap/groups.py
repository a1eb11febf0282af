"""Which terms the report shows together: plain data that every renderer reads.

Computed once per `Analysis` (`Analysis.grouping`), never part of the JSON. The
loss graph draws a group as one node, the HTML term table as one collapsible
block; both link to it by its `key`.

Up to `GROUP_THRESHOLD` (24) additional terms (regularizers, activity
regularizers, add_loss, custom) stand alone. Beyond that, terms are put in
buckets by the finest key that leaves at most `GROUP_THRESHOLD` buckets:

1. kind, function and layer;
2. kind, function, layer family (the layer name with digit runs replaced by
   "#": `dense_17` -> `dense_#`) and, for weight regularizers, the variable
   (`kernel`, `bias`);
3. kind, function and layer family;
4. kind and function;
5. kind.

A bucket of one term stays a single term; a bucket of several is a group.
Compiled losses are grouped the same way (by function and output family, then
function) only when there are more than `GROUP_THRESHOLD` of them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

GROUP_THRESHOLD = 24  # additional terms shown one each; beyond this they are grouped

KIND_ORDER = ("compiled", "add_loss", "activity_regularizer", "weight_regularizer", "custom")
KIND_LABEL = {  # a term's kind in a table column
    "compiled": "compiled loss",
    "weight_regularizer": "weight regularizer",
    "activity_regularizer": "activity regularizer",
    "add_loss": "add_loss",
    "custom": "custom",
}
KIND_SINGULAR = {
    "compiled": "compiled loss",
    "weight_regularizer": "weight regularizer",
    "activity_regularizer": "activity regularizer",
    "add_loss": "add_loss term",
    "custom": "custom term",
}
KIND_PLURAL = {
    "compiled": "compiled losses",
    "weight_regularizer": "weight regularizers",
    "activity_regularizer": "activity regularizers",
    "add_loss": "add_loss terms",
    "custom": "custom terms",
}


def count_label(kind: str, n: int) -> str:
    """'1 compiled loss', '3 weight regularizers'."""
    return f"{n} {KIND_SINGULAR[kind] if n == 1 else KIND_PLURAL[kind]}"


@dataclass(frozen=True)
class TermGroup:
    """Several terms shown as one.

    `share` is the members' sum of |contribution| over that of all terms;
    `layers` the members' layers (output names for compiled groups), in order;
    `fn` and `variable` what every member has in common ("" when they differ).
    """

    key: str  # unique among the groups of one analysis
    label: str
    kind: str
    term_ids: tuple
    subtotal: float
    count: int
    share: float
    layers: tuple
    fn: str = ""
    variable: str = ""

    def as_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "kind": self.kind, "term_ids": list(self.term_ids),
                "subtotal": self.subtotal, "count": self.count, "share": self.share,
                "layers": list(self.layers)}


@dataclass(frozen=True)
class Bucket:
    """One term on its own (`group` None), or the members of a group, in term order."""

    terms: tuple
    group: Optional[TermGroup] = None


@dataclass(frozen=True)
class Grouping:
    """The compiled and the additional terms as buckets, each section in first-appearance order."""

    compiled: tuple
    additional: tuple
    scale: float  # sum of |contribution| over the finite terms: every share is relative to it
    custom: tuple = ()  # terms of the user's own step, one bucket each (never grouped: each is a line of code)

    @property
    def groups(self) -> list:
        return [b.group for b in self.compiled + self.additional if b.group is not None]

    def group_of(self) -> dict:
        """Term id -> its TermGroup, for grouped terms only."""
        return {tid: g for g in self.groups for tid in g.term_ids}


def group_terms(terms, threshold: int = GROUP_THRESHOLD) -> Grouping:
    terms = list(terms)
    scale = math.fsum(abs(t.contribution) for t in terms if _finite(t.contribution))
    compiled = [t for t in terms if t.kind == "compiled"]
    additional = [t for t in terms if t.kind not in ("compiled", "custom")]
    custom = tuple(Bucket((t,)) for t in terms if t.kind == "custom")
    taken: list = []
    c_buckets = _make_buckets(compiled, _compiled_keys, threshold, scale, True, taken) if compiled else []
    a_buckets = _make_buckets(additional, _additional_keys, threshold, scale, False, taken) if additional else []
    return Grouping(tuple(c_buckets), tuple(a_buckets), scale, custom)


def term_share(t, scale: float) -> float:
    return abs(t.contribution) / scale if scale > 0 and _finite(t.contribution) else 0.0


def family(name: Optional[str]) -> str:
    """A layer's family: digit runs become '#', so dense_3 and dense_17 are one family."""
    return re.sub(r"\d+", "#", name) if name else "(model)"


def leaf(variable: Optional[str]) -> str:
    return variable.rsplit("/", 1)[-1] if variable else "?"


def span_label(names) -> str:
    if not names:
        return "(model)"
    if len(names) == 1:
        return names[0]
    return f"{names[0]} … {names[-1]}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _additional_keys(t) -> list:
    """Bucket keys (kind, function, layers, variable) for an additional term, finest first."""
    fn = t.fn or ""
    fam = family(t.layer)
    var = leaf(t.variable) if t.kind == "weight_regularizer" else ""
    return [(t.kind, fn, t.layer or "(model)", ""), (t.kind, fn, fam, var), (t.kind, fn, fam, ""),
            (t.kind, fn, "", ""), (t.kind, "", "", "")]


def _compiled_keys(t) -> list:
    return [("compiled", t.fn or "", family(t.output), ""), ("compiled", t.fn or "", "", "")]


def _make_buckets(terms, keys_of, threshold, scale, compiled, taken) -> list:
    out = []
    for key, members in _buckets(terms, keys_of, threshold):
        if key is None:
            out.append(Bucket(tuple(members)))
            continue
        group = _group(key, members, scale, compiled, taken)
        taken.append(group)
        out.append(Bucket(tuple(members), group))
    return out


def _buckets(terms, keys_of, threshold: int) -> list:
    """[(key tuple or None, [terms])] in first-appearance order; None = not grouped."""
    if len(terms) <= threshold:
        return [(None, [t]) for t in terms]
    levels = len(keys_of(terms[0]))
    chosen = None
    for level in range(levels):
        buckets: dict = {}
        for t in terms:
            buckets.setdefault(keys_of(t)[level], []).append(t)
        chosen = buckets
        if len(buckets) <= threshold:
            break
    return [(key if len(members) > 1 else None, members) for key, members in chosen.items()]


def _unique_key(key: tuple, taken: list) -> str:
    key_str = base = "/".join(k for k in key if k)
    n = 1
    while any(g.key == key_str for g in taken):  # names with "/" could collide
        n += 1
        key_str = f"{base}~{n}"
    return key_str


def _group(key: tuple, members: list, scale: float, compiled: bool, taken: list) -> TermGroup:
    kind = "compiled" if compiled else members[0].kind
    names = list(dict.fromkeys((t.output if compiled else t.layer) or "(model)" for t in members))
    fn = key[1] if len(key) > 1 and key[1] else None
    variable = key[3] if len(key) > 3 and key[3] else ""
    if compiled:
        label = f"{len(members)} compiled losses{f' ({fn})' if fn else ''} on outputs {span_label(names)}"
    else:
        what = KIND_PLURAL.get(kind, kind)
        if fn and kind != "add_loss":
            what += f" ({fn}" + (f", {variable}" if variable else "") + ")"
        label = f"{len(members)} {what} on {len(names)} layer{'s' if len(names) != 1 else ''}: {span_label(names)}"
    return TermGroup(
        key=_unique_key(key, taken),
        label=label,
        kind=kind,
        term_ids=tuple(t.id for t in members),
        subtotal=math.fsum(t.contribution for t in members),
        count=len(members),
        share=math.fsum(term_share(t, scale) for t in members),
        layers=tuple(names),
        fn=fn or "",
        variable=variable,
    )
