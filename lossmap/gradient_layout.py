"""The layout of the `gradients` JSON: shared tables of layers and variables, and reading them back.

A unit's per-layer norms and reach refer to the tables by index, so the document grows with
units + layers + variables, not with their product:

    "layers":    ["dense_0", "dense_1", ...]                  every layer a trainable variable belongs to
    "variables": ["dense_0/kernel", "dense_0/bias", ...]      every trainable variable, model order
    unit["per_layer"]: [[layer index, norm], ...]              non-zero only, model order, 6 significant digits
    unit["reach"]:     {"layers": [[start, stop], ...],        half-open index ranges into the tables
                        "variables": [[start, stop], ...]}
    "pairs": {"fields": PAIR_FIELDS, "rows": [[a, b, ...]]}    a row per pair of units that share weights,
                                                              a and b by index into "units"; its per_layer
                                                              as [[layer index, cosine], ...]

`per_layer`, `reach`, `unit_of` and `pairs` give the names back.
"""
from __future__ import annotations

import math
from typing import Optional

DIGITS = 6  # significant digits of a per-layer norm: float32 gradients carry about 7
PAIR_FIELDS = ["a", "b", "cosine", "shared_variables", "norm_a", "norm_b", "imbalance_a_over_b",
               "imbalance_b_over_a", "per_layer"]


def layer_of(variable_path: str) -> str:
    return variable_path.rsplit("/", 1)[0] if "/" in variable_path else variable_path


def rounded(x: float) -> float:
    """`x` to `DIGITS` significant digits (what per-layer norms and pairwise statistics are written at)."""
    return float(f"{x:.{DIGITS}g}") if math.isfinite(x) else x


def ranges(indices) -> list:
    """Sorted indices as half-open [start, stop) runs: [0, 1, 2, 5] -> [[0, 3], [5, 6]]."""
    out = []
    for i in sorted(indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def expand(runs) -> list:
    """The indices of [start, stop) runs."""
    return [i for start, stop in runs for i in range(start, stop)]


class Tables:
    """The variables (model order, then any other a unit reaches) and their layers, by index."""

    def __init__(self, variables, reached=()):
        self.variables = list(dict.fromkeys(list(variables) + list(reached)))
        self.layers = list(dict.fromkeys(layer_of(v) for v in self.variables))
        self._var = {v: i for i, v in enumerate(self.variables)}
        self._layer = {name: i for i, name in enumerate(self.layers)}

    def layer_index(self, name: str) -> int:
        return self._layer[name]

    def unit_fields(self, per_layer_sq: dict, per_var: dict) -> dict:
        """A unit's `per_layer` and `reach` from its squared norms per layer and its variables."""
        layers = sorted(self._layer[name] for name in per_layer_sq)
        return {
            "per_layer": [[i, rounded(math.sqrt(per_layer_sq[self.layers[i]]))] for i in layers],
            "reach": {"layers": ranges(layers), "variables": ranges(self._var[v] for v in per_var)},
        }


# ---------------------------------------------------------------- reading it back
def unit_of(gradients: dict, term_id: str) -> Optional[dict]:
    """The unit entry a term's gradient was attributed in (its group's for a grouped term)."""
    entry = (gradients.get("terms") or {}).get(term_id)
    if entry is None:
        return None
    return next((u for u in gradients.get("units") or () if u["id"] == entry["unit"]), None)


def per_layer(gradients: dict, unit: dict) -> dict:
    """{layer name: gradient norm} of a unit, model order."""
    names = gradients.get("layers") or []
    return {names[i]: norm for i, norm in unit.get("per_layer") or ()}


def reach(gradients: dict, unit: dict) -> dict:
    """{"layers": [names], "variables": [paths]} a unit's gradient reaches, model order."""
    runs = unit.get("reach") or {}
    return {"layers": [gradients["layers"][i] for i in expand(runs.get("layers") or ())],
            "variables": [gradients["variables"][i] for i in expand(runs.get("variables") or ())]}


def pair_table(pairs: list, unit_ids: list) -> dict:
    """Pairs (dicts of PAIR_FIELDS, units by id) as the JSON's table: one row each, units by index."""
    index = {uid: i for i, uid in enumerate(unit_ids)}
    rows = [[index[p["a"]], index[p["b"]]] + [p[f] for f in PAIR_FIELDS[2:]] for p in pairs]
    return {"fields": list(PAIR_FIELDS), "rows": rows}


def pairs(gradients: dict) -> list:
    """The pairs as dicts: "a" and "b" the units' ids, "per_layer" {layer name: cosine}."""
    table = gradients.get("pairs") or {}
    ids = [u["id"] for u in gradients.get("units") or ()]
    names = gradients.get("layers") or []
    out = []
    for row in table.get("rows") or ():
        p = dict(zip(table["fields"], row))
        p["a"], p["b"] = ids[p["a"]], ids[p["b"]]
        p["per_layer"] = {names[i]: cosine for i, cosine in p.get("per_layer") or ()}
        out.append(p)
    return out


def term_view(gradients: dict, term_id: str) -> Optional[dict]:
    """One term's statistics with its unit's reach and per-layer norms by name, as one dict."""
    entry = (gradients.get("terms") or {}).get(term_id)
    unit = unit_of(gradients, term_id)
    if entry is None or unit is None:
        return None
    return dict(entry, reach=reach(gradients, unit), per_layer=per_layer(gradients, unit))


def term_views(gradients: dict) -> dict:
    """`term_view` of every term: {term id: view}."""
    return {tid: term_view(gradients, tid) for tid in gradients.get("terms") or {}}
