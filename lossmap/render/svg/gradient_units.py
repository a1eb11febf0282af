"""The rows the gradient charts draw: attribution units read from `Analysis.gradients`.

Each unit is a plain dict (id, label, kind, term_ids, grouped, norm, share,
norm_share, per_layer, dead, dead_count, members, href, merged); beyond
`MAX_UNIT_ROWS` units, some are merged into one row.
"""
from __future__ import annotations

import math

from lossmap import gradient_layout as layout
from lossmap.render import anchor_id
from lossmap.render.svg.primitives import finite, fit, num, pct

MAX_UNIT_ROWS = 40  # gradient charts: more units than this are merged (weight regularizers first)


def units(g: dict) -> list:
    """Each attribution unit once, in the order of `gradients['units']`."""
    entries = g.get("terms") or {}
    out = []
    for u in g.get("units") or ():
        e = next((entries[t] for t in u.get("terms", []) if t in entries), None) or {}
        term_ids = list(u.get("terms", []))
        dead = bool(u.get("dead", e.get("dead")))
        out.append({
            "id": u["id"],
            "label": u.get("label") or u["id"],
            "kind": u.get("kind") or "custom",
            "term_ids": term_ids,
            "grouped": bool(u.get("grouped")),
            "norm": u.get("norm", e.get("norm")),
            "share": u.get("share", e.get("share")),
            "norm_share": u.get("norm_share", e.get("norm_share")),
            "per_layer": layout.per_layer(g, u),
            "dead": dead,
            "dead_count": 1 if dead else 0,
            "members": 1,
            "href": "#" + anchor_id("term", term_ids[0]) if len(term_ids) == 1 else None,
            "merged": False,
        })
    return out


def rss(values) -> float:
    return math.sqrt(math.fsum(v * v for v in values if finite(v)))


def _merge(units: list, label: str, kind: str, exact: bool) -> dict:
    per_layer: dict = {}
    for u in units:
        for k, v in u["per_layer"].items():
            per_layer.setdefault(k, []).append(v)
    return {
        "id": "merged/" + label,
        "label": label,
        "kind": kind,
        "term_ids": [t for u in units for t in u["term_ids"]],
        "grouped": True,
        "norm": rss(u["norm"] or 0.0 for u in units),
        "share": math.fsum(u["share"] or 0.0 for u in units),
        "norm_share": None,
        "per_layer": {k: rss(v) for k, v in per_layer.items()},
        "dead": all(u["dead"] for u in units),
        "dead_count": sum(u["dead_count"] for u in units),
        "members": sum(u["members"] for u in units),
        "href": None,
        "merged": True,
        "exact": exact,
    }


def display_units(g: dict, max_rows: int = MAX_UNIT_ROWS) -> list:
    """Units to draw: all of them, or (beyond `max_rows`) weight regularizers merged into one
    row (their norms combine exactly: each reaches its own variable), then the smallest of the
    rest merged into one "other units" row."""
    all_units = units(g)
    if len(all_units) <= max_rows:
        return all_units
    wr = [u for u in all_units if u["kind"] == "weight_regularizer" and not u["grouped"]]
    rows = [u for u in all_units if not (u["kind"] == "weight_regularizer" and not u["grouped"])]
    if len(wr) > 1:
        rows.append(_merge(wr, f"{len(wr)} weight regularizers", "weight_regularizer", True))
    else:
        rows += wr
    if len(rows) > max_rows:
        ranked = sorted(range(len(rows)), key=lambda i: -abs(rows[i]["share"] or 0.0))
        keep = set(ranked[: max_rows - 1])
        others = [rows[i] for i in range(len(rows)) if i not in keep]
        rows = [rows[i] for i in range(len(rows)) if i in keep]
        rows.append(_merge(others, f"{sum(u['members'] for u in others)} other units", "custom", False))
    return rows


def layer_order(units: list) -> list:
    """Layers in model order: the per-layer dicts are each in model order; merge them."""
    first: dict = {}
    succ: dict = {}
    indeg: dict = {}
    for u in units:
        seq = list(u["per_layer"])
        for name in seq:
            if name not in first:
                first[name] = len(first)
                succ[name] = set()
                indeg[name] = 0
        for a, b in zip(seq, seq[1:]):
            if b not in succ[a]:
                succ[a].add(b)
                indeg[b] += 1
    order = []
    remaining = set(first)
    while remaining:
        ready = [n for n in remaining if indeg[n] == 0]
        pick = min(ready or remaining, key=first.get)  # on a cycle, first seen wins
        order.append(pick)
        remaining.discard(pick)
        for b in succ[pick]:
            indeg[b] -= 1
    return order


def unit_title(u: dict) -> str:
    parts = [u["label"]]
    if u["merged"]:
        parts.append(f"{u['members']} units merged"
                     + ("" if u.get("exact") else "; norms combined as root-sum-square"))
    elif u["grouped"]:
        parts.append(f"{len(u['term_ids'])} terms attributed together")
    if u["share"] is not None:
        parts.append(f"share of the total gradient {pct(u['share'])}")
    if u["norm"] is not None:
        parts.append(f"gradient norm {num(u['norm'])}")
    if u["norm_share"] is not None:
        parts.append(f"{pct(u['norm_share'])} of the total gradient's norm")
    if u["dead"]:
        parts.append("dead: its gradient is zero for every weight")
    elif u["dead_count"]:
        parts.append(f"{u['dead_count']} dead")
    return "; ".join(parts)


def row_label(u: dict, max_chars: int) -> str:
    return fit(u["label"], max_chars)
