"""Findings grouped the way terms are grouped: one finding per code and group, with its members listed.

On a ResNet with an L2 on every kernel, 52 identical "GRADIENT_DROWNED" lines hide the two
findings that matter. Findings of one code and level whose terms fall in one group of
`Analysis.grouping` (or, for terms shown one by one, share their kind and function) become
one finding once there are `GROUP_MIN` of them: its `terms` lists every member, its message
says how many and gives the first as the example. Text, JSON, the report and every CI
format read the same list.

    >>> analysis.findings = group_findings(analysis.findings, analysis)   # doctest: +SKIP
"""
from __future__ import annotations

from lossmap.analysis import Finding
from lossmap.groups import KIND_PLURAL, span_label

GROUP_MIN = 3  # this many findings of one code in one group become one
LISTED = 6  # a grouped message names this many members, then says how many more


def group_findings(findings: list, analysis) -> list:
    """The findings, those of one code, level and term group merged; order kept (first member's place)."""
    terms = {t.id: t for t in analysis.terms}
    group_of = analysis.grouping.group_of()
    buckets: dict = {}
    for f in findings:
        key = _key(f, terms, group_of)
        if key is not None:
            buckets.setdefault(key, []).append(f)
    merged = {id(members[0]): _merge(key, members, terms, group_of)
              for key, members in buckets.items() if len(members) >= GROUP_MIN}
    dropped = {id(f) for key, members in buckets.items() if len(members) >= GROUP_MIN for f in members[1:]}
    return [merged.get(id(f), f) for f in findings if id(f) not in dropped]


def _key(f: Finding, terms: dict, group_of: dict):
    t = terms.get(f.term)
    if t is None or f.terms:
        return None
    group = group_of.get(t.id)
    return (f.code, f.level, ("group", group.key) if group is not None else ("kind", t.kind, t.fn or ""))


def _merge(key, members: list, terms: dict, group_of: dict) -> Finding:
    first = members[0]
    ids = [f.term for f in members]
    group = group_of.get(first.term)
    t = terms[first.term]
    layers = [terms[i].layer or terms[i].output or "" for i in ids]
    what = group.label if group is not None else \
        f"{len(ids)} {KIND_PLURAL.get(t.kind, t.kind)}{f' ({t.fn})' if t.fn else ''} on {span_label(layers)}"
    shown = ", ".join(ids[:LISTED]) + (f" and {len(ids) - LISTED} more" if len(ids) > LISTED else "")
    return Finding(first.code, first.level, None,
                   f"{len(ids)} terms ({what}): {shown}. For example: {first.message}", terms=ids)
