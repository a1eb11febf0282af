"""The layout of the `gradients` JSON: shared tables of layers and variables, and reading them back.

A unit's per-layer norms and reach refer to the tables by index, so the document grows with
units + layers + variables, not with their product:

    "layers":    ["dense_0", "dense_1", ...]                  every layer a trainable variable belongs to
    "variables": ["dense_0/kernel", "dense_0/bias", ...]      every trainable variable, model order
    unit["per_layer"]: [[layer index, norm], ...]              non-zero only, model order, 6 significant digits
    unit["reach"]:     {"layers": [[start, stop], ...],        half-open index ranges into the tables
                        "variables": [[start, stop], ...]}

`per_layer`, `reach` and `unit_of` give the names back for a unit or a term.
"""
from __future__ import annotations

import math
from typing import Optional

DIGITS = 6  # significant digits of a per-layer norm: float32 gradients carry about 7


def layer_of(variable_path: str) -> str:
    return variable_path.rsplit("/", 1)[0] if "/" in variable_path else variable_path


def rounded(x: float) -> float:
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
