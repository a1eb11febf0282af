"""The custom-code flow from a loaded model to an `Analysis`, as `lossmap.pipeline.analyse` is for compile().

    state (model + everything the step reaches) -> batch -> analyse_custom (runs, terms,
    gradients) -> total -> findings (generic, gradient, custom-code) -> sources (the user's step)
"""
from __future__ import annotations

import math

import numpy as np

from lossmap import __version__
from lossmap import findings as findings_module
from lossmap import gradients as gradients_module
from lossmap import surprises
from lossmap.analysis import Analysis, BatchInfo, Finding, Total
from lossmap.engines.base import Capture
from lossmap.finding_groups import group_findings
from lossmap.steps.analyse import analyse_custom
from lossmap.steps.state import StepState
from lossmap.verify import compare, tolerances


def analyse_custom_code(eng, model, info, step_fn, data, *, batch_size, seed, rtol, atol, gradients,
                        gradient_limit, sources) -> Analysis:
    from lossmap.pipeline import _SeededRuns, _batch

    state = StepState(eng, model, step_fn.fn if step_fn is not None else None, step_fn)
    runs = _SeededRuns(eng, model, seed, state=state)
    rtol_, atol_ = tolerances("float32", rtol, atol)
    with runs:
        sig = labels_from_step_losses(eng, eng.signature(model), model, step_fn)
        batch = _batch(data, sig, batch_size, seed)
        ids = getattr(getattr(eng, "steps_module", None), "SYNTHETIC_CLASS_IDS", None)
        if data is None and ids is not None:  # made-up class ids as the backend's own losses take them
            batch.y = {k: v.astype(ids) if getattr(v, "dtype", None) == np.int32 else v for k, v in batch.y.items()}
        result = analyse_custom(eng, model, sig, batch, runs, step_fn, gradients=gradients,
                                gradient_limit=gradient_limit, rtol=rtol_, atol=atol_)
    info.step = _step_info(result)
    analysis = Analysis(
        lossmap_version=__version__, model=info, batch=BatchInfo(batch.source, batch.size, batch.seed),
        terms=result.terms, total=_total(eng, result, rtol_, atol_), findings=[],
        state_restored=runs.state.identical(), gradients=result.attribution)
    analysis.objectives = result.objectives
    analysis.findings = _findings(analysis, eng, model, result, state)
    if sources:
        from lossmap.steps.view import attach_sources

        attach_sources(analysis, eng, result)
    return analysis


def labels_from_step_losses(eng, sig, model, step_fn):
    """Outputs no compiled loss scores get synthetic labels for the built-in loss the step itself uses,
    when it reaches exactly one (a global `loss_fn = SparseCategoricalCrossentropy()`, `self.loss_fn`)."""
    from lossmap.steps.locate import reached
    from lossmap.steps.state import attribute_references

    if all(o.loss_fn is not None for o in sig.outputs):
        return sig
    found = {r.get() for r in attribute_references(model, lambda o: eng.builtin_loss_name(o) is not None)}
    if step_fn is not None:
        found |= {r.get() for r in reached(step_fn.fn, lambda o: eng.builtin_loss_name(o) is not None)}
    names = {eng.builtin_loss_name(o) for o in found}
    if len(names) != 1:
        return sig
    name = names.pop()
    for o in sig.outputs:
        if o.loss_fn is None:
            o.loss_fn = name
    return sig


def _step_info(result) -> dict:
    d = result.decomposition
    step = result.step_function
    return {
        "spec": step.spec if step is not None else f"{type(d.fn).__name__}",
        "kind": d.kind,
        "function": d.fn.__qualname__,
        "file": d.step.file,
        "line": d.step.start_line,
        "compute_loss": d.nested.fn.__qualname__ if d.nested is not None else None,
        "wrapped_in_tf_function": bool(step.wrapped_in_tf_function) if step is not None else False,
        **(getattr(d.words, "shown", None) or {}),  # a written-out step names the user's own (JAX)
    }


def _total(eng, result, rtol, atol) -> Total:
    reproduced = math.fsum(t.contribution for t in result.terms)
    if result.decomposition.kind == "keras_default":
        # what Keras's train_step differentiates is what the override returns; the real step's gradients are
        # compared with the terms' (gradients_verified), its logged loss with LOGGED_LOSS_DIFFERS
        compute_loss, train_step = result.target, result.target
        path = "eager: the model's compute_loss override in Keras's train_step (instrumented copy), and the " \
               "model's real train_step (its gradients)"
        path = getattr(result.decomposition.words, "path", path)
    else:
        compute_loss, train_step = None, result.target
        path = "eager: the step's instrumented copy, and the step as written (its gradients)"
    scale = sum(abs(t.contribution) for t in result.terms if math.isfinite(t.contribution))
    diff, verified = compare(reproduced, [compute_loss, train_step], scale, rtol, atol)
    total = Total(reproduced=reproduced, compute_loss=compute_loss, train_step=train_step, max_abs_diff=diff,
                  rtol=rtol, atol=atol, verified=verified, path=path,
                  summation=getattr(result.decomposition.words, "summation", None)
                  or " | ".join(_objective_texts(result)))
    total.gradients_verified = result.gradients_verified
    return total


def _objective_texts(result) -> list:
    """Per objective, the statements its addends come from, in source order."""
    d = result.decomposition
    out = []
    for o in d.parts.objectives:
        lines = sorted({_value_statement(d, d.parts.addends[a]) for a in o.addends})
        texts = [f"{d.step.statements[i].text} (line {d.step.statements[i].line})" for i in lines]
        differentiated = f"; differentiated at line {o.gradient.line}" if o.gradient is not None else ""
        out.append("; ".join(texts) + differentiated)
    return out


def _value_statement(d, addend) -> int:
    """The statement that computes an addend's value (its definition, for a name used in the sum)."""
    return next((st.index for st in d.step.statements if st.line == addend.value_line), addend.statement)


def _findings(analysis, eng, model, result, state) -> list:
    from lossmap.steps import findings as step_findings

    merged = Capture(compiled=[c for cap in result.captures for c in cap.compiled],
                     additional=[a for cap in result.captures for a in cap.additional],
                     compute_loss=None, compute_loss_error=None, dtype="float32", epsilon=1e-7)
    out = findings_module.collect(analysis, merged, frozen_regularized=eng.frozen_regularized_variables(model),
                                  verification_notes=state.notes + result.notes,
                                  compute_loss_error=None, train_step_error=None)
    out = [f for f in out if f.code not in ("CUSTOM_TRAIN_STEP", "CUSTOM_COMPUTE_LOSS", "NOT_COMPILED")
           and not (f.code == "OPAQUE_TERM" and f.term and f.term.startswith("custom/"))]
    if analysis.gradients is not None:
        out += step_findings.gradient_findings(analysis, result, model)
    out += step_findings.collect(analysis, eng, model, result)
    out += surprises.findings(analysis, merged, eng, model, result=result)
    out = group_findings(out, analysis)
    if not analysis.state_restored:
        out.append(Finding("STATE_NOT_RESTORED", "error", None,
                           "lossmap could not put the model's state back bit for bit (a lossmap bug: please report it)"))
    return out


__all__ = ["analyse_custom_code", "gradients_module"]
