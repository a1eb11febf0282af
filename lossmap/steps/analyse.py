"""The custom-code way into the pipeline: run the user's step, and hand on the same `Term`s.

    decompose (read + split)  ->  instrumented run (terms, targets, per-term gradients)
    ->  real run (the gradients the step as written applies)  ->  assemble terms  ->  verify
    ->  gradient statistics  ->  (findings: lossmap.steps.findings)

Every run is seeded and followed by a restore of everything the step can change
(`lossmap.steps.state.StepState`).
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lossmap import gradients as gradients_module
from lossmap.errors import UserError
from lossmap.steps import decompose as decompose_module
from lossmap.steps.assemble import Assembler, scalar_value
from lossmap.steps.run import Attribution, Decomposition, instrument, run


@dataclass
class CustomResult:
    """What the custom path hands the pipeline: terms and numbers, plus what findings and sources need."""

    decomposition: Decomposition
    terms: list
    objectives: list  # JSON-ready objectives (only output when there are several)
    target: Optional[float]  # what the step differentiated (summed over objectives)
    logged: Optional[float]  # what the step returned as its loss
    keras_logged: Optional[float]  # the real step's logged loss, when Keras's own step ran
    gradients_verified: Optional[bool]
    gradient_notes: list
    attribution: Optional[dict]
    unsplit: list
    notes: list
    instrumented_error: Optional[BaseException] = None
    real_error: Optional[BaseException] = None
    losses_after: list = field(default_factory=list)  # (kind, value) of model.losses after the step's pass
    captures: list = field(default_factory=list)  # the Capture of each compute_loss expansion
    term_gradients: dict = field(default_factory=dict)  # term id -> {path: gradient of its contribution}
    step_function: Any = None
    assembled: list = field(default_factory=list)  # [assemble.AssembledTerm], in the order of `terms`
    unexpanded: list = field(default_factory=list)  # Keras loss calls that stayed one term
    # several optimizers: per shared variable, |first update| as the step is written and with one
    # optimizer (the first objective's) on the summed loss
    update_comparison: dict = field(default_factory=dict)
    transformed: list = field(default_factory=list)  # objectives whose step changes the gradient before applying it


def analyse_custom(eng, model, sig, batch, runs, step=None, *, gradients=True, gradient_limit=None,
                   rtol=1e-5, atol=1e-7) -> CustomResult:
    """Decompose, run twice, assemble and verify the loss a custom step differentiates."""
    d = decompose_module.decompose(eng, model, step)
    xs, ys, sw = eng.pack_batch(model, sig, batch)
    args = decompose_module.arguments(d, step, model, eng.as_tensors(xs), eng.as_tensors(ys),
                                      eng.as_tensors(sw) if sw is not None else None)
    first, losses_after = _instrumented_run(eng, model, sig, d, step, args, runs)
    if first.error is not None:
        raise UserError(_step_failed(d, first.error))
    narrow = getattr(getattr(eng, "steps_module", None), "narrow_to_applied", None)  # torch: what .grad trains
    if narrow is not None:
        narrow(d, first.updates)
    second = _real_run(eng, model, d, step, args, runs)
    result = _assemble(eng, model, d, first, second)
    result.losses_after = losses_after
    result.step_function = step
    _verify_gradients(eng, result, d, first, second, rtol, atol)
    result.update_comparison = _compare_optimizers(eng, model, d, first, result, runs.state)
    if gradients:
        result.attribution = _attribute(eng, model, result, d, gradient_limit)
    return result


# ---------------------------------------------------------------- the two runs
def _instrumented_run(eng, model, sig, d, step, args, runs):
    probe = eng.probe(model)
    expand = _expander(eng, model, sig, d, probe)
    d.attribution = Attribution(eng, d, eng.variable_namer(model), lambda: _losses_now(eng, model, probe))
    instrument(d, expand, d.attribution)
    if d.nested is not None:
        instrument(d.nested, expand, None)
    d.recorder.expand_losses = lambda losses: eng.additional_for(model, losses, probe)
    backward = getattr(getattr(eng, "steps_module", None), "backward_recorder", None)  # torch's loss.backward()
    d.recorder.run_backward = backward(model) if backward is not None else None
    if d.nested is not None:
        d.nested.recorder.expand_losses = d.recorder.expand_losses
    call, _ = decompose_module.callables(d, step, model, eng)
    with runs.seeded():
        runs.state.swap_in_copies()
        with probe, _patched_compute_loss(model, d):
            result = run(lambda: call(*args), eng.optimizer_classes(), eng, eng.variable_namer(model), model=model)
            d.recorder.on_gradient = None
    _release_tapes(d)
    return result, d.attribution.snapshot_value or []


def _release_tapes(d):
    """The persistent tapes hold every activation of the pass: once each term's gradient is taken, let go."""
    for decomposition in (d, d.nested):
        if decomposition is None or decomposition.recorder is None:
            continue
        rec = decomposition.recorder
        rec.tapes.clear()
        for record in rec.gradients.values():
            record.tape = None


def _expander(eng, model, sig, d, probe):
    def expand(call):
        nested = d.nested
        if nested is not None and getattr(call.fn, "__func__", None) is nested.instrumented:
            return nested
        return eng.expand_keras_loss(model, sig, call, probe)
    return expand


class _patched_compute_loss:
    """The instrumented override as the model's `compute_loss`, for the instrumented run only."""

    def __init__(self, model, d: Decomposition):
        self.model, self.nested = model, d.nested

    def __enter__(self):
        if self.nested is not None:
            object.__setattr__(self.model, "compute_loss", types.MethodType(self.nested.instrumented, self.model))

    def __exit__(self, *exc):
        if self.nested is not None:
            object.__delattr__(self.model, "compute_loss")
        return False


def _real_run(eng, model, d, step, args, runs):
    _, real = decompose_module.callables(d, step, model, eng)
    with runs.seeded():
        runs.state.swap_in_copies()
        return run(lambda: real(*args), eng.optimizer_classes(), eng, eng.variable_namer(model), model=model)


def _losses_now(eng, model, probe) -> list:
    """(kind, value) of each entry of model.losses when the step takes its gradient (before any update)."""
    try:
        losses = list(model.losses)
        return [(a.kind, scalar_value(t)) for a, t in zip(eng.additional_for(model, losses, probe), losses)]
    except Exception:  # the findings only lose a count
        return []


def _step_failed(d, exc) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == d.step.file]
    where = f" at line {frames[-1].lineno} of {d.step.file}" if frames else ""
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else ""
    return (f"the step {d.fn.__qualname__} raised {type(exc).__name__}{where}: {first} (lossmap runs the step as "
            "written on the batch, from --data or made up: check that the step runs on it)")


# ---------------------------------------------------------------- terms and numbers
def _assemble(eng, model, d, first, second) -> CustomResult:
    objectives = d.parts.objectives
    labels = {o.id: (None if len(objectives) == 1 else f"objective/{o.id}") for o in objectives}
    asm = Assembler(eng, labels.get)
    for o in objectives:
        asm.objective(d, o.id)
    assembled = asm.out.terms
    _unique_ids([a.term for a in assembled])
    targets = {o.id: scalar_value(t) for o, t in ((o, d.attribution.targets.get(o.id)) for o in objectives)
               if t is not None}
    result = CustomResult(
        decomposition=d, terms=[a.term for a in assembled], objectives=[],
        target=math.fsum(targets.values()) if targets else None,
        logged=_logged_loss(first.returned), keras_logged=None, gradients_verified=None,
        gradient_notes=[], attribution=None, unsplit=asm.out.unsplit, notes=asm.out.notes + list(d.recorder.errors),
        real_error=second.error, captures=asm.out.captures)
    result.unexpanded = asm.out.unexpanded
    if d.kind == "keras_default":
        result.keras_logged = result.logged = _logged_loss(second.returned)
    result.assembled = assembled
    result.objectives = [_objective_entry(eng, d, o, labels[o.id] or f"objective/{o.id}", targets.get(o.id),
                                          assembled, first) for o in objectives]
    return result


def _logged_loss(returned) -> Optional[float]:
    """The loss a step returns: `logs["loss"]`, or the value itself when it returns one tensor."""
    value = returned.get("loss") if isinstance(returned, dict) else returned
    if value is None or isinstance(value, (dict, list, tuple, str)):
        return None
    try:
        return scalar_value(value)
    except (TypeError, ValueError):
        return None


def _objective_entry(eng, d, o, label, target, assembled, first) -> dict:
    members = [a for a in assembled if a.objective == o.id]
    value = math.fsum(a.term.contribution for a in members)
    g = o.gradient
    update = _update_of(d, o, first.updates)
    return {
        "id": label,
        "optimizer": _optimizer_label(d, update, g),
        "target": g.target_text if g is not None else "",
        "source": {"file": d.step.file, "line": g.line if g is not None else d.step.start_line,
                   "function": d.fn.__qualname__},
        "value": target,
        "reproduced": value,
        "terms": [a.term.id for a in members],
        "variables": list(d.attribution.sources.get(o.id, [])),
        "verified": None,
    }


def _update_of(d, o, updates):
    """The optimizer call that applied this objective's gradient (matched by the gradient objects)."""
    if o.gradient is None:
        return None
    records = [d.recorder.gradients.get(g.index) for g in o.gradient_calls()]
    if any(r is None for r in records):
        return None
    from lossmap.steps.record import flatten

    if records[0].optimizer is not None:  # minimize: the optimizer's own apply_gradients
        return next(((i, u) for i, u in enumerate(updates) if u.optimizer is records[0].optimizer), None)
    produced = {id(g) for r in records for g in flatten(r.result) if g is not None}
    for i, update in enumerate(updates):
        if produced & {id(g) for g in update.tensors if g is not None}:
            return i, update
    # the step made new tensors of the gradient (clipping): the update of the same variables
    variables = set(d.attribution.sources.get(o.id, ()))
    return next(((i, u) for i, u in enumerate(updates) if variables and set(u.gradients) >= variables), None)


def _optimizer_label(d, update, g) -> Optional[str]:
    if update is None:
        return None
    _, u = update
    results = set(g.results) if g is not None else set()
    text = g.minimize if g is not None and g.minimize else \
        next((c.optimizer_text for c in d.step.optimizer_calls if results & c.reads), None)
    name = type(u.optimizer).__name__
    return f"{text} ({name})" if text else name


def _unique_ids(terms):
    seen = {}
    for t in terms:
        if t.id in seen:
            seen[t.id] += 1
            t.id = f"{t.id}#{seen[t.id]}"
        else:
            seen[t.id] = 0
    return terms


# ---------------------------------------------------------------- gradients
def term_gradient(assembled, attribution) -> dict:
    """The gradient of one term's contribution, by variable path (computed once, then kept on the term)."""
    cached = getattr(assembled, "gradient", None)
    if cached is not None:
        return cached
    recorded = attribution.term_gradients.get(assembled.objective, {}).get(assembled.key, {})
    if assembled.local_variable is not None:
        g = recorded.get(assembled.local_variable)
        out = {} if g is None else {assembled.local_variable: g * assembled.multiplier}
    else:
        out = {p: g * assembled.multiplier for p, g in recorded.items()}
    assembled.gradient = out
    return out


# Gradients are long float32 reductions, and through BatchNorm each term's gradient is itself a
# difference of much larger numbers: summing the terms' gradients reorders all of that. So each
# variable's gap is measured against the norm of the whole applied gradient (measured on a
# BatchNorm ResNet: gaps up to 1.3e-5 of it, where a bias before BatchNorm, whose exact gradient
# is 0, is all rounding).
GRADIENT_RTOL = 1e-4


def _verify_gradients(eng, result, d, first, second, rtol, atol):
    """Per objective: the sum of the terms' gradients against what the step differentiated (the result of
    its `tape.gradient`) and what each run handed its optimizer."""
    checks, notes = [], []
    by_update: dict = {}  # update index -> (update, [(objective id, its taken gradient)])
    for o, entry in zip(d.parts.objectives, result.objectives):
        matched = _update_of(d, o, first.updates)
        if matched is None:
            notes.append(f"{entry['id']}: no optimizer call received its gradient, so the applied gradient "
                         "was not compared")
            continue
        index, applied = matched
        real = second.updates[index] if index < len(second.updates) else None
        parts = [term_gradient(a, d.attribution) for a in result.assembled if a.objective == o.id]
        tolerance = max(rtol, GRADIENT_RTOL)
        summed = _sum_gradients(parts)
        taken = _taken_gradient(eng, d, o)
        reference = taken if taken is not None else applied.gradients
        worst = _worst_gap(summed, reference, parts, tolerance, atol)
        worst_real = _worst_gap(applied.gradients, real.gradients, [], tolerance, atol) if real is not None \
            else (None, float("inf"))
        ok, ok_real = worst[1] <= 1.0, worst_real[1] <= 1.0
        if taken is not None:
            by_update.setdefault(index, (applied, []))[1].append((entry["id"], taken))
        entry["verified"] = bool(ok and ok_real and entry["value"] is not None and
                                 _close_value(entry["reproduced"], entry["value"], rtol, atol))
        checks.append(ok and ok_real)
        if not ok:
            notes.append(f"{entry['id']}: the terms' gradients do not add up to the gradient the step takes, on "
                         f"{worst[0]} ({worst[1]:.3g} times the tolerance)")
        if not ok_real:
            notes.append(f"{entry['id']}: the step as written applied other gradients than its instrumented copy")
    result.gradients_verified = all(checks) if checks else None
    result.gradient_notes = notes
    # what the optimizer received, against what the step's gradient calls returned (summed where the
    # objectives it applies share a variable): anything else is a transform (clipping, projection)
    result.transformed = [oid for applied, taken in by_update.values()
                          if _worst_gap(_sum_gradients([t for _, t in taken]), applied.gradients, [],
                                        max(rtol, GRADIENT_RTOL), atol)[1] > 1.0 for oid, _ in taken]
    result.term_gradients = {a.term.id: term_gradient(a, d.attribution) for a in result.assembled}


def _taken_gradient(eng, d, o):
    """What the step's own `tape.gradient` returned for this objective, by variable path (None for minimize)."""
    from lossmap.steps.record import flatten

    name = d.attribution.namer
    out = {}
    for g in o.gradient_calls():
        record = d.recorder.gradients.get(g.index)
        if record is None or record.result is None:
            return None
        out.update({name(v): eng.dense_gradient(t) for v, t in zip(record.sources, flatten(record.result))})
    return out or None


def _sum_gradients(parts) -> dict:
    out = {}
    for grads in parts:
        for p, g in grads.items():
            g = np.asarray(g, np.float64)
            out[p] = g.copy() if p not in out else out[p] + g
    return out


def _worst_gap(a: dict, b: dict, parts, rtol, atol):
    """(variable, gap / tolerance) of the variable that differs most: the L2 norm of its difference
    against `atol` per element plus `rtol` times the norm of the whole gradient `b` (or `a`)."""
    paths = sorted(set(a) | set(b))
    whole = max(_norm_all(b), _norm_all(a))
    worst = (None, 0.0)
    for p in paths:
        x = np.asarray(a.get(p) if a.get(p) is not None else 0.0, np.float64)
        y = np.asarray(b.get(p) if b.get(p) is not None else 0.0, np.float64)
        gap = float(np.linalg.norm(x - y)) if np.size(x) or np.size(y) else 0.0
        size = max(np.size(x), np.size(y), 1)
        ratio = gap / (atol * np.sqrt(size) + rtol * whole) if gap else 0.0
        if ratio > worst[1]:
            worst = (p, ratio)
    return worst


def _norm_all(grads: dict) -> float:
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values() if g is not None)))


def _close_value(a, b, rtol, atol) -> bool:
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _attribute(eng, model, result, d, gradient_limit) -> dict:
    """Per-term gradient statistics, through the same accumulator as the compiled path."""
    paths = []
    for o in d.parts.objectives:
        paths += [p for p in d.attribution.sources.get(o.id, []) if p not in paths]
    acc = gradients_module.Accumulator(paths)
    limit = gradient_limit or gradients_module.DEFAULT_LIMIT
    notes = list(result.gradient_notes)
    shared = [a for a in result.assembled if a.local_variable is None]
    for unit, members in gradients_module.plan_units([a.term for a in shared], limit, notes):
        acc.add_shared(unit, _sum_gradients([result.term_gradients[shared[i].term.id] for i in members]))
    for a in result.assembled:
        if a.local_variable is not None:
            unit = gradients_module.Unit(a.term.id, a.term.id, a.term.kind, [a.term.id], False)
            acc.add_local(unit, a.local_variable, result.term_gradients[a.term.id].get(a.local_variable))
    if len(d.parts.objectives) > 1:
        notes.append("the step differentiates several objectives: shares are of the sum of every term's gradient")
    optimizer = eng.optimizer_name(model) or _optimizer_of_step(result)
    return gradients_module.summarise(acc, acc.finish(), optimizer, limit, notes)


def _optimizer_of_step(result):
    """The optimizer class the step's first objective applies its gradient with (a global, an attribute)."""
    names = [o.get("optimizer") for o in result.objectives if o.get("optimizer")]
    return names[0].rsplit("(", 1)[-1].rstrip(")") if names else None


# ---------------------------------------------------------------- sum the losses or use two optimizers?
def _compare_optimizers(eng, model, d, first, result, state) -> dict:
    """For the variables every objective updates: the size of the first update fresh copies of the
    step's optimizers make, each from its own objective's gradient (the step as written), next to the
    update of one fresh copy of the first objective's optimizer from the summed gradient."""
    if len(d.parts.objectives) < 2:
        return {}
    matched = [_update_of(d, o, first.updates) for o in d.parts.objectives]
    if any(m is None for m in matched):
        return {}
    updates = [u for _, u in matched]
    shared = set.intersection(*[{p for p, g in u.gradients.items() if g is not None} for u in updates])
    if not shared:
        return {}
    namer = eng.variable_namer(model)
    values = {namer(v): value for v, value in zip(state.model_state.variables, state.model_state.values)}
    try:
        as_written = {}
        for u in updates:
            for p, delta in eng.first_update(u.optimizer, {p: u.gradients[p] for p in shared}, values).items():
                as_written[p] = as_written.get(p, 0.0) + delta
        summed = eng.first_update(updates[0].optimizer, {p: sum(u.gradients[p] for u in updates) for p in shared},
                                  values)
    except Exception as exc:  # the comparison is extra information: say why it is missing
        result.notes.append(f"the optimizers' first updates could not be compared ({type(exc).__name__}: {exc})")
        return {}
    for o, u in zip(result.objectives, updates):
        own = eng.first_update(u.optimizer, {p: u.gradients[p] for p in shared}, values)
        o["first_update"] = {p: float(np.linalg.norm(own[p])) for p in sorted(own)}
    return {p: {"as_written": float(np.linalg.norm(as_written[p])), "summed": float(np.linalg.norm(summed[p]))}
            for p in sorted(shared) if p in summed}
