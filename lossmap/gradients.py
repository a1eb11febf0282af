"""Stage: what each loss term does to the weights (per-term gradient attribution).

Engine-agnostic statistics over per-variable gradient arrays handed over one
attribution *unit* at a time (a term, or a group of terms of one kind and
family once there are more than `limit` of them). Only the gradients of the
units that share the network trunk are kept, for the pairwise dot products;
weight-regularizer units, which each reach a single variable, are folded in
variable by variable and never held together.

Statistics:
- norm: global L2 norm of the gradient of the term's contribution (weight x value);
- per_layer: L2 norm per layer; reach: the layers and variables with a non-zero gradient;
- share: projection share, g_i . G / |G|^2, which sums to 1 over all terms (G = total gradient);
- cosine: pairwise cosine similarity on the variables both units reach (PCGrad: < 0 conflicts);
- imbalance: max|g_i| / mean|g_j| over the weights both reach (Wang, Teng & Perdikaris 2021).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

DEFAULT_LIMIT = 8  # trunk-sharing terms that get a backward pass each
CONFLICT_COSINE = -0.5  # below this a pair is reported as strongly conflicting
SMALL_RATIO = 1e-3
FLOAT32_EPS = float(np.finfo(np.float32).eps)
ROUNDING_ULPS = 16  # float32 ulps of |total| + sum |parts| below which a remainder is rounding  # a term whose gradient is under this fraction of the largest one it shares weights with


@dataclass
class Unit:
    id: str
    label: str
    kind: str
    term_ids: list
    grouped: bool
    # filled by the accumulator
    sq_norm: float = 0.0
    per_layer_sq: dict = field(default_factory=dict)
    per_var: dict = field(default_factory=dict)  # var -> (sq_norm, max_abs, sum_abs, size)
    dot_total: float = 0.0


def plan_units(shared_terms, limit: int, notes: list):
    """Yield (Unit, member indices): a unit per term up to `limit`, else groups by kind and family.

    Compiled losses always stay single; add_loss and activity terms of one family
    (regularizer class, or the layer's add_loss) are grouped once the trunk-sharing
    terms outnumber the limit.
    """
    if len(shared_terms) <= limit:
        for i, t in enumerate(shared_terms):
            yield Unit(t.id, t.id, t.kind, [t.id], False), [i]
        return
    groups: dict = {}
    for i, t in enumerate(shared_terms):
        key = (t.kind, t.id) if t.kind == "compiled" else (t.kind, t.fn or "add_loss")
        groups.setdefault(key, []).append(i)
    for (kind, family), members in groups.items():
        if len(members) == 1:
            t = shared_terms[members[0]]
            yield Unit(t.id, t.id, t.kind, [t.id], False), members
            continue
        layers = sorted({shared_terms[i].layer for i in members})
        label = {"activity_regularizer": f"activity regularizers ({family})",
                 "add_loss": "add_loss terms"}.get(kind, kind)
        label = f"{label}, {len(members)} terms on {len(layers)} layers"
        uid = f"group/{kind}/{family}"
        notes.append(f"{label} were attributed together (more than {limit} trunk-sharing terms; "
                     "raise the limit to separate them); their per-layer breakdown is kept")
        yield Unit(uid, label, kind, [shared_terms[i].id for i in members], True), members


def derivable_unit(plan, shared_terms, total_gradient, paths):
    """The unit whose gradient can be taken as the total minus the others, or None.

    Only with the real step's gradient for every variable, at least two trunk-sharing
    units, and a compiled term to derive: the largest one by |contribution| (the
    least likely to be dead, where subtraction noise would matter).
    """
    if not total_gradient or len(plan) < 2 or any(p not in total_gradient for p in paths):
        return None
    by_id = {t.id: t for t in shared_terms}
    candidates = [unit for unit, _ in plan if not unit.grouped and unit.kind == "compiled"]
    if not candidates:
        return None
    return max(candidates, key=lambda u: abs(by_id[u.term_ids[0]].contribution))


def layer_of(variable_path: str) -> str:
    return variable_path.rsplit("/", 1)[0] if "/" in variable_path else variable_path


class Accumulator:
    """Folds in unit gradients; keeps only trunk-sharing units' gradients."""

    def __init__(self, variables: list):
        self.variables = list(variables)  # variable paths, model order
        self.units: list = []
        self.kept: dict = {}  # unit id -> {var: grad}
        self.dots: dict = {}  # (a, b) -> {var: dot}
        self.total = {v: None for v in self.variables}

    def add_shared(self, unit: Unit, grads: dict):
        """A unit that may reach many variables: kept for pairwise products."""
        grads = {v: g for v, g in grads.items() if g is not None and np.any(g)}
        self._stats(unit, grads)
        for other_id, other in self.kept.items():
            common = grads.keys() & other.keys()
            self.dots[(other_id, unit.id)] = {v: float(np.vdot(other[v], grads[v])) for v in common}
        self.kept[unit.id] = grads
        self.units.append(unit)
        self._add_to_total(grads)

    def remainder(self, total_gradient: dict, local_grads: dict) -> dict:
        """total - (every kept unit) - (the local units' gradients), by variable."""
        out = {}
        for v in self.variables:
            g = total_gradient.get(v)
            if g is None:
                continue
            rest = np.array(g, np.float32, copy=True)
            magnitude = np.abs(rest)
            parts = [grads[v] for grads in self.kept.values() if v in grads]
            if local_grads.get(v) is not None:
                parts.append(local_grads[v])
            for part in parts:
                rest -= part
                magnitude += np.abs(part)
            # What is left of an exact cancellation is float32 rounding of the parts: zero,
            # so the derived term does not seem to reach weights it does not touch.
            rest[np.abs(rest) <= ROUNDING_ULPS * FLOAT32_EPS * magnitude] = 0.0
            out[v] = rest
        return out

    def add_local(self, unit: Unit, var: str, grad):
        """A unit that reaches only `var` (a weight regularizer): folded in and dropped."""
        grads = {var: grad} if grad is not None and np.any(grad) else {}
        self._stats(unit, grads)
        for other_id, other in self.kept.items():
            if var in grads and var in other:
                self.dots[(other_id, unit.id)] = {var: float(np.vdot(other[var], grad))}
        self.units.append(unit)
        self._add_to_total(grads)
        unit._local = (var, grad if grads else None)  # for the dot with the total, dropped after

    def _stats(self, unit: Unit, grads: dict):
        for v, g in grads.items():
            g64 = np.asarray(g, np.float64)
            sq = float(np.vdot(g64, g64))
            absg = np.abs(g64)
            unit.per_var[v] = (sq, float(absg.max()), float(absg.sum()), int(g64.size))
            unit.sq_norm += sq
            layer = layer_of(v)
            unit.per_layer_sq[layer] = unit.per_layer_sq.get(layer, 0.0) + sq

    def _add_to_total(self, grads):
        for v, g in grads.items():
            g64 = np.asarray(g, np.float64)
            self.total[v] = g64.copy() if self.total[v] is None else self.total[v] + g64

    # ------------------------------------------------------------ results
    def finish(self) -> dict:
        total_sq = sum(float(np.vdot(g, g)) for g in self.total.values() if g is not None)
        for unit in self.units:
            if unit.id in self.kept:
                grads = self.kept[unit.id]
                unit.dot_total = sum(float(np.vdot(grads[v], self.total[v])) for v in grads)
            else:
                var, grad = getattr(unit, "_local", (None, None))
                unit.dot_total = float(np.vdot(np.asarray(grad, np.float64), self.total[var])) if grad is not None else 0.0
        self.kept.clear()
        return {"total_sq": total_sq}


def summarise(acc: Accumulator, finish: dict, optimizer: Optional[str], limit: int, notes: list) -> dict:
    """The JSON-ready `gradients` object."""
    total_sq = finish["total_sq"]
    total_norm = math.sqrt(total_sq)
    units = acc.units
    total_var_sq = {v: float(np.vdot(g, g)) for v, g in acc.total.items() if g is not None}
    terms = {}
    for u in units:
        entry = _term_entry(u, total_sq, total_norm, total_var_sq)
        for tid in u.term_ids:
            terms[tid] = entry
    cos_ids = [u.id for u in units]
    pairs = _pairs(acc, {u.id: u for u in units})
    return {
        "method": "one backward pass per trunk-sharing term (up to the limit, then one per group); "
                  "all weight regularizers in one pass, separated by variable",
        "limit": limit,
        "optimizer": optimizer,
        "total_norm": total_norm,
        "units": [{"id": u.id, "label": u.label, "kind": u.kind, "terms": u.term_ids, "grouped": u.grouped,
                   "norm": math.sqrt(u.sq_norm)} for u in units],
        "terms": terms,
        "pairs": pairs,
        "cosine": _cosine_matrix(cos_ids, pairs),
        "notes": notes,
    }


def _term_entry(u: Unit, total_sq: float, total_norm: float, total_var_sq: dict) -> dict:
    return {
        "unit": u.id,
        "grouped": u.grouped,
        "norm": math.sqrt(u.sq_norm),
        "share": (u.dot_total / total_sq) if total_sq > 0 else 0.0,
        "norm_share": (math.sqrt(u.sq_norm) / total_norm) if total_norm > 0 else 0.0,
        "per_layer": {k: math.sqrt(v) for k, v in u.per_layer_sq.items()},
        "reach": {"layers": sorted(u.per_layer_sq), "variables": sorted(u.per_var)},
        "dead": _dead(u, total_var_sq),
    }


def _pairs(acc: Accumulator, by_id: dict) -> list:
    """Pairwise statistics on the variables both units reach."""
    pairs = []
    for (a, b), per_var in acc.dots.items():
        ua, ub = by_id[a], by_id[b]
        common = sorted(per_var)
        if not common:
            continue
        dot = sum(per_var.values())
        na = math.sqrt(sum(ua.per_var[v][0] for v in common))
        nb = math.sqrt(sum(ub.per_var[v][0] for v in common))
        pairs.append({
            "a": a, "b": b, "cosine": dot / (na * nb) if na > 0 and nb > 0 else None,
            "per_layer": _per_layer_cosine(ua, ub, per_var, common),
            "shared_variables": len(common),
            "norm_a": na, "norm_b": nb,
            "imbalance_a_over_b": _imbalance(ua, ub, common),
            "imbalance_b_over_a": _imbalance(ub, ua, common),
        })
    return pairs


def _per_layer_cosine(ua: Unit, ub: Unit, per_var: dict, common: list) -> dict:
    out = {}
    for layer in sorted({layer_of(v) for v in common}):
        vs = [v for v in common if layer_of(v) == layer]
        d = sum(per_var[v] for v in vs)
        la = math.sqrt(sum(ua.per_var[v][0] for v in vs))
        lb = math.sqrt(sum(ub.per_var[v][0] for v in vs))
        out[layer] = d / (la * lb) if la > 0 and lb > 0 else None
    return out


def _cosine_matrix(cos_ids: list, pairs: list) -> dict:
    if len(cos_ids) > 64:
        return {"units": None, "matrix": None}
    index = {uid: i for i, uid in enumerate(cos_ids)}
    matrix = [[1.0 if i == j else None for j in range(len(cos_ids))] for i in range(len(cos_ids))]
    for p in pairs:
        i, j = index[p["a"]], index[p["b"]]
        matrix[i][j] = matrix[j][i] = p["cosine"]
    return {"units": cos_ids, "matrix": matrix}


def _dead(unit: Unit, total_var_sq: dict) -> bool:
    """No gradient at all, or on every variable it reaches below float32 resolution of the
    summed gradient there: adding it cannot change a single float32 update."""
    if unit.sq_norm == 0.0:
        return True
    return all(math.sqrt(sq) <= FLOAT32_EPS * math.sqrt(total_var_sq.get(v, 0.0))
               for v, (sq, _, _, _) in unit.per_var.items())


def _imbalance(ua: Unit, ub: Unit, common):
    """max |g_a| / mean |g_b| over the weights both reach."""
    max_a = max(ua.per_var[v][1] for v in common)
    sum_b = sum(ub.per_var[v][2] for v in common)
    size = sum(ub.per_var[v][3] for v in common)
    mean_b = sum_b / size if size else 0.0
    return max_a / mean_b if mean_b > 0 else None


ADAPTIVE = {"Adam", "AdamW", "Adamax", "Nadam", "RMSprop", "Adagrad", "Adadelta", "Adafactor", "Lion", "Lamb"}


def adam_note(optimizer: Optional[str]) -> str:
    name = optimizer or "the optimizer"
    ratio = ("the ratio between terms inside that sum is untouched: a term whose gradient is 1000x "
             "smaller than another's on the same weights still moves them 1000x less")
    if optimizer in ADAPTIVE:
        return (f"The model trains with {name}, which divides each variable's step by a running scale of "
                f"its summed gradient: the overall size of the loss matters little, but {ratio}.")
    return (f"The model trains with {name}, which applies the summed gradient as it is: each term moves "
            f"the weights in proportion to its gradient. (Adam-type optimizers normalise the scale of "
            f"the sum per variable, but even there {ratio}.)")


def findings(gradients: dict, analysis_terms) -> list:
    """DEAD_TERM, GRADIENT_CONFLICT, GRADIENT_DROWNED and OPTIMIZER_SCALE_NOTE from the statistics.

    A term dead only because its loss weight is 0 gets none (ZERO_LOSS_WEIGHT names that cause);
    a weight regularizer is meant to pull against the data terms and to be small next to them, so
    it is no conflict and only an info when drowned.
    """
    from lossmap.analysis import Finding

    out = []
    by_id = {t.id: t for t in analysis_terms}
    term_entries = gradients["terms"]
    dead_units = set()
    for t in analysis_terms:
        entry = term_entries.get(t.id)
        if entry and entry["dead"]:
            dead_units.add(entry["unit"])
            if t.weight == 0.0:
                continue
            if entry["norm"] == 0.0:
                text = (f"{t.id} has a zero gradient for every trainable variable: it is a constant for the "
                        "optimizer (computed only from inputs/targets, through a stop_gradient, on frozen weights, "
                        "or constant by construction such as L1 of a softmax) and trains nothing")
            else:
                text = (f"{t.id}'s gradient (norm {entry['norm']:.1e}) is below float32 resolution of the summed "
                        "gradient on every weight it reaches: adding it changes no float32 update on this batch, "
                        "so it trains nothing while the other terms are this large")
            out.append(Finding("DEAD_TERM", "warning", t.id, text))
    decay = {tid for tid, t in by_id.items() if t.kind == "weight_regularizer"}
    for p in gradients["pairs"]:
        if p["cosine"] is not None and p["cosine"] < CONFLICT_COSINE and not ({p["a"], p["b"]} & decay):
            out.append(Finding("GRADIENT_CONFLICT", "warning", p["b"],
                               f"{p['a']} and {p['b']} pull the {p['shared_variables']} weights they share in "
                               f"opposing directions (cosine {p['cosine']:.2f}); summed, they partly cancel"))
    out += _drowned(gradients, dead_units, decay)
    if gradients.get("optimizer"):
        out.append(Finding("OPTIMIZER_SCALE_NOTE", "info", None, adam_note(gradients["optimizer"])))
    return out


def _drowned(gradients: dict, dead_units: set, decay: set) -> list:
    """A term drowned by the largest gradient it shares weights with: one finding per term."""
    from lossmap.analysis import Finding

    largest = {}
    for p in gradients["pairs"]:
        for small, big, nsmall, nbig in ((p["a"], p["b"], p["norm_a"], p["norm_b"]),
                                         (p["b"], p["a"], p["norm_b"], p["norm_a"])):
            if nsmall > 0 and (small not in largest or nbig / nsmall > largest[small][0]):
                largest[small] = (nbig / nsmall, big)
    out = []
    for unit_id, (ratio, big) in largest.items():
        if ratio > 1.0 / SMALL_RATIO and unit_id not in dead_units:
            level = "info" if unit_id in decay else "warning"
            out.append(Finding("GRADIENT_DROWNED", level, unit_id,
                               f"on the weights it shares with {big}, {unit_id}'s gradient is "
                               f"{1.0 / ratio:.1e} of {big}'s: summed, it barely moves them"
                               + (" (usual for weight decay, which is meant to be small)" if level == "info" else "")))
    return out
