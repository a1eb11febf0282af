"""Stage: what each loss term does to the weights (per-term gradient attribution).

Engine-agnostic statistics over per-variable gradient arrays handed over one
attribution *unit* at a time (a term, or a group of terms of one kind and
family once there are more than `limit` of them). Only the gradients of the
trunk-sharing units that arrive whole are kept, for the pairwise dot products;
a derived unit and the weight-regularizer units, which each reach a single
variable, are folded in variable by variable and never held together. The
total gradient is never formed: its norms and dot products follow from the
pairwise ones. The JSON layout (index tables, per-unit breakdowns, the pairs
table) is `lossmap.gradient_layout`'s.

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

from lossmap import gradient_layout as layout

DEFAULT_LIMIT = 8  # trunk-sharing terms that get a backward pass each
CONFLICT_COSINE = -0.5  # below this a pair is reported as strongly conflicting
SMALL_RATIO = 1e-3  # a term whose gradient is under this fraction of the largest one it shares weights with
FLOAT32_EPS = float(np.finfo(np.float32).eps)
ROUNDING_ULPS = 16  # float32 ulps of |total| + sum |parts| below which a remainder is rounding


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


def derivable_candidate(plan, shared_terms):
    """The unit whose gradient could be taken as the total minus the others, or None.

    At least two trunk-sharing units and a compiled term to derive: the largest one by
    |contribution| (the least likely to be dead, where subtraction noise would matter).
    """
    if len(plan) < 2:
        return None
    by_id = {t.id: t for t in shared_terms}
    candidates = [unit for unit, _ in plan if not unit.grouped and unit.kind == "compiled"]
    if not candidates:
        return None
    return max(candidates, key=lambda u: abs(by_id[u.term_ids[0]].contribution))


def complete(total_gradient, paths) -> bool:
    """Whether the real step's gradient names every variable (only then can a unit be derived from it)."""
    return bool(total_gradient) and all(p in total_gradient for p in paths)


def derivable_unit(plan, shared_terms, total_gradient, paths):
    """`derivable_candidate`, when the real step's gradient covers every variable; else None."""
    return derivable_candidate(plan, shared_terms) if complete(total_gradient, paths) else None


layer_of = layout.layer_of


def _nonzero(g) -> bool:
    return g is not None and bool(np.any(g))


def _flat(g):
    g = np.ravel(np.asarray(g))
    return g if g.dtype in (np.float32, np.float64) else g.astype(np.float64)


def _dot(a, b) -> float:
    """a . b accumulated in float64 (float32 accumulation over millions of weights loses digits), the
    products cast as they stream (no float64 copy of the arrays)."""
    return float(np.einsum("i,i->", _flat(a), _flat(b), dtype=np.float64))


class Accumulator:
    """Folds in unit gradients as running statistics and dot products; holds only the kept units'.

    Units that share the trunk and whose gradient arrives whole (`add_shared`) are kept, for the dot
    products of every later unit; they come first. The rest arrive variable by variable
    (`add_variable`, `add_local`) and are dropped once folded in. Every pair of units that reaches
    a variable gets its dot product there, so the total gradient G (the sum of all units') is never
    formed: |G|^2, each unit's g . G and |G| per variable follow from those products (`finish`).
    """

    def __init__(self, variables: list, hold_locals: bool = True):
        self.variables = list(variables)  # variable paths, model order
        self.units: list = []
        self.kept: dict = {}  # unit id -> {var: grad}
        self.dots: dict = {}  # (a, b) -> {var: dot}, a added first: the reported pairs
        self.cross: dict = {}  # (a, b) -> {var: dot} of two weight regularizers on one variable: totals only
        # add_local keeps each weight regularizer's gradient until finish, for another on the same
        # variable; False when the caller knows there is at most one per variable
        self.hold_locals = hold_locals
        self._locals: dict = {}  # var -> [(unit id, grad)]
        self._ids: set = set()
        self._streaming = False  # a unit that is not kept arrived: no kept unit may follow

    def _register(self, unit: Unit):
        if unit.id not in self._ids:
            self._ids.add(unit.id)
            self.units.append(unit)

    def add_shared(self, unit: Unit, grads: dict):
        """A unit that may reach many variables, whole: kept for the products of later units."""
        if self._streaming:
            raise RuntimeError("kept units are added before any unit that arrives variable by variable")
        grads = {v: g for v, g in grads.items() if _nonzero(g)}
        self._register(unit)
        for v, g in grads.items():
            self._stats(unit, v, g)
        for other_id, other in self.kept.items():
            self.dots[(other_id, unit.id)] = {v: _dot(other[v], g) for v, g in grads.items() if v in other}
        self.kept[unit.id] = grads

    def open(self, unit: Unit):
        """A trunk-sharing unit that will arrive variable by variable (`add_variable(streamed=...)`)."""
        self._streaming = True
        self._register(unit)
        for other_id in self.kept:
            self.dots.setdefault((other_id, unit.id), {})

    def add_variable(self, var: str, streamed=(), local=()):
        """On `var`: (unit, grad) of opened trunk-sharing units and of units that reach only this variable
        (weight regularizers). Their statistics and their products with every kept unit and with
        each other; nothing is retained."""
        self._streaming = True
        seen = []
        for unit, g in list(streamed) + list(local):
            self._register(unit)
            if not _nonzero(g):
                continue
            self._stats(unit, var, g)
            for other_id, other in self.kept.items():
                if var in other:
                    self.dots.setdefault((other_id, unit.id), {})[var] = _dot(other[var], g)
            is_local = any(u is unit for u, _ in local)
            for prev, prev_g, prev_local in seen:
                table = self.cross if prev_local and is_local else self.dots
                table.setdefault((prev.id, unit.id), {})[var] = _dot(prev_g, g)
            seen.append((unit, g, is_local))

    def add_local(self, unit: Unit, var: str, grad):
        """A unit that reaches only `var` (a weight regularizer): folded in and dropped."""
        self.add_variable(var, local=[(unit, grad)])
        if not self.hold_locals or not _nonzero(grad):
            return
        for prev_id, prev in self._locals.get(var, []):
            self.cross.setdefault((prev_id, unit.id), {})[var] = _dot(prev, grad)
        self._locals.setdefault(var, []).append((unit.id, grad))

    def remainder(self, var: str, total, local_grads=()):
        """The derived unit's gradient on `var`: the real step's `total` minus every kept unit's and
        the `local_grads` there."""
        rest = np.array(total, np.float32, copy=True)
        magnitude = np.abs(rest)
        parts = [grads[var] for grads in self.kept.values() if var in grads]
        parts += [g for g in local_grads if g is not None]
        for part in parts:
            rest -= part
            magnitude += np.abs(part)
        # What is left of an exact cancellation is float32 rounding of the parts: zero,
        # so the derived term does not seem to reach weights it does not touch.
        rest[np.abs(rest) <= ROUNDING_ULPS * FLOAT32_EPS * magnitude] = 0.0
        return rest

    def _stats(self, unit: Unit, v: str, g):
        g = _flat(g)
        sq = _dot(g, g)
        unit.per_var[v] = (sq, float(max(g.max(), -g.min())), float(np.abs(g).sum(dtype=np.float64)), int(g.size))
        unit.sq_norm += sq
        layer = layer_of(v)
        unit.per_layer_sq[layer] = unit.per_layer_sq.get(layer, 0.0) + sq

    # ------------------------------------------------------------ results
    def finish(self) -> dict:
        """|G|^2 overall and per variable, and each unit's g . G, from the products; drops the kept gradients."""
        var_sq: dict = {}
        dot_total = {u.id: u.sq_norm for u in self.units}
        for u in self.units:
            for v, stats in u.per_var.items():
                var_sq[v] = var_sq.get(v, 0.0) + stats[0]
        for table in (self.dots, self.cross):
            for (a, b), per_var in table.items():
                for v, d in per_var.items():
                    var_sq[v] += 2.0 * d
                    dot_total[a] += d
                    dot_total[b] += d
        for u in self.units:
            u.dot_total = dot_total[u.id]
        # rounding can leave a hair below zero where the terms cancel exactly
        var_sq = {v: max(sq, 0.0) for v, sq in var_sq.items()}
        self.kept.clear()
        self._locals.clear()
        return {"total_sq": max(math.fsum(var_sq.values()), 0.0), "total_var_sq": var_sq}


def summarise(acc: Accumulator, finish: dict, optimizer: Optional[str], limit: int, notes: list) -> dict:
    """The JSON-ready `gradients` object (its layout: `lossmap.gradient_layout`)."""
    total_sq = finish["total_sq"]
    total_norm = math.sqrt(total_sq)
    units = acc.units
    tables = layout.Tables(acc.variables, [v for u in units for v in u.per_var])
    unit_entries, terms = [], {}
    for u in units:
        entry = _term_entry(u, total_sq, total_norm, finish["total_var_sq"])
        for tid in u.term_ids:
            terms[tid] = entry
        unit_entries.append({"id": u.id, "label": u.label, "kind": u.kind, "terms": u.term_ids,
                             "grouped": u.grouped, "norm": entry["norm"],
                             **tables.unit_fields(u.per_layer_sq, u.per_var)})
    pairs = _pairs(acc, {u.id: u for u in units}, tables)
    return {
        "method": "one backward pass per trunk-sharing term (up to the limit, then one per group); "
                  "weight regularizers differentiated from their own variables, a batch of them per pass",
        "limit": limit,
        "optimizer": optimizer,
        "total_norm": total_norm,
        "layers": tables.layers,
        "variables": tables.variables,
        "units": unit_entries,
        "terms": terms,
        "pairs": layout.pair_table(pairs, [u.id for u in units]),
        "cosine": _cosine_matrix([u.id for u in units], pairs),
        "notes": notes,
    }


def _term_entry(u: Unit, total_sq: float, total_norm: float, total_var_sq: dict) -> dict:
    """A term's summary: its unit's, for each term of a group (the per-layer detail is the unit's)."""
    return {
        "unit": u.id,
        "grouped": u.grouped,
        "norm": math.sqrt(u.sq_norm),
        "share": (u.dot_total / total_sq) if total_sq > 0 else 0.0,
        "norm_share": (math.sqrt(u.sq_norm) / total_norm) if total_norm > 0 else 0.0,
        "dead": _dead(u, total_var_sq),
    }


def _pairs(acc: Accumulator, by_id: dict, tables) -> list:
    """Pairwise statistics on the variables both units reach (6 significant digits)."""
    pairs = []
    for (a, b), per_var in acc.dots.items():
        ua, ub = by_id[a], by_id[b]
        common = sorted(per_var)
        if not common:
            continue
        dot = math.fsum(per_var.values())
        na = math.sqrt(math.fsum(ua.per_var[v][0] for v in common))
        nb = math.sqrt(math.fsum(ub.per_var[v][0] for v in common))
        pairs.append({
            "a": a, "b": b, "cosine": _round(dot / (na * nb) if na > 0 and nb > 0 else None),
            "per_layer": _per_layer_cosine(ua, ub, per_var, tables),
            "shared_variables": len(common),
            "norm_a": _round(na), "norm_b": _round(nb),
            "imbalance_a_over_b": _round(_imbalance(ua, ub, common)),
            "imbalance_b_over_a": _round(_imbalance(ub, ua, common)),
        })
    return pairs


def _round(x):
    return None if x is None else layout.rounded(x)


def _per_layer_cosine(ua: Unit, ub: Unit, per_var: dict, tables) -> list:
    """[[layer index, cosine on that layer's shared variables]], model order."""
    by_layer: dict = {}
    for v, d in per_var.items():
        by_layer.setdefault(layer_of(v), []).append((v, d))
    out = []
    for layer, items in by_layer.items():
        d = math.fsum(x for _, x in items)
        la = math.sqrt(math.fsum(ua.per_var[v][0] for v, _ in items))
        lb = math.sqrt(math.fsum(ub.per_var[v][0] for v, _ in items))
        out.append([tables.layer_index(layer), _round(d / (la * lb)) if la > 0 and lb > 0 else None])
    return sorted(out, key=lambda item: item[0])


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
    pairs = layout.pairs(gradients)
    for p in pairs:
        if p["cosine"] is not None and p["cosine"] < CONFLICT_COSINE and not ({p["a"], p["b"]} & decay):
            out.append(Finding("GRADIENT_CONFLICT", "warning", p["b"],
                               f"{p['a']} and {p['b']} pull the {p['shared_variables']} weights they share in "
                               f"opposing directions (cosine {p['cosine']:.2f}); summed, they partly cancel"))
    out += _drowned(pairs, dead_units, decay)
    if gradients.get("optimizer"):
        out.append(Finding("OPTIMIZER_SCALE_NOTE", "info", None, adam_note(gradients["optimizer"])))
    return out


def _drowned(pairs: list, dead_units: set, decay: set) -> list:
    """A term drowned by the largest gradient it shares weights with: one finding per term."""
    from lossmap.analysis import Finding

    largest = {}
    for p in pairs:
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
