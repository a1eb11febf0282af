"""The whole flow, one stage after another: load, batch, capture (and the taped backward passes), verify,
attribute, findings, sources.

    >>> import lossmap
    >>> result = lossmap.analyse("model.keras")          # doctest: +SKIP
    >>> print(result)                                    # the equation, with this batch's numbers
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from lossmap import __version__
from lossmap import batch as batch_module
from lossmap import findings as findings_module
from lossmap import gradients as gradients_module
from lossmap import surprises
from lossmap.analysis import Analysis, BatchInfo, Total
from lossmap.errors import UserError
from lossmap.finding_groups import group_findings
from lossmap.load import load
from lossmap.refusals import batch_shapes, keras_refusals
from lossmap.terms import build_terms, reproduce_total
from lossmap.verify import compare, scalar, tolerances


def analyse(model=None, data=None, *, batch_size=8, seed=0, imports=(), unsafe=False, engine="auto",
            rtol=None, atol=None, gradients=True, gradient_limit=None, engine_diffs=None,
            sources=True, step=None, weights=None, on_capture=None) -> Analysis:
    """Explain and verify the training loss of `model` (a path, a factory spec or a live model).

    The model is left exactly as it was: every variable the run touches is
    restored, and `Analysis.state_restored` records the bit-for-bit check.
    `sources`: locate the Keras source walkthrough and user call sites (for the HTML
    report; `check` skips it).
    `engine_diffs`: add the ENGINE_DIFF_* findings (where tf_keras and Keras 3
    differ for this model); by default only for a tf_keras model.
    `step`: a training-step function (or `FILE.py:FUNCTION`) whose loss to explain; a model
    whose class overrides `train_step` or `compute_loss` is explained through its own code
    without it (`lossmap.steps`).
    `weights`: an `.npz` of `model.get_weights()` to set on a model lossmap built itself (a factory's
    model on another backend, `lossmap.compare_backends`): the arrays in order, keys `w/<index>`.
    `on_capture`: called with the compiled path's `Capture` (outputs, labels, logits) once it is taken
    (`lossmap.compare_backends` computes each backend's loss arithmetic on the same outputs).
    """
    step_fn = _step_function(step, imports) if step is not None else None
    if model is None and step_fn is None:
        raise UserError("give MODEL (a .keras file or a factory), or a training step with --step FILE.py:FUNCTION")
    loaded = load(model if model is not None else _model_of(step_fn), imports=imports, unsafe=unsafe,
                  engine=engine)
    eng, m = loaded.engine, loaded.model
    if weights is not None and loaded.owned:
        _set_weights(m, weights)
    info = eng.model_info(m, loaded.source, loaded.saved_with)
    info.engine_reason = loaded.engine_reason
    options = dict(batch_size=batch_size, seed=seed, rtol=rtol, atol=atol, gradients=gradients,
                   gradient_limit=gradient_limit, sources=sources)
    unread = None
    if step_fn is not None or info.custom_train_step or info.custom_compute_loss:
        refusal = eng.custom_code_refusal(m, step_fn)
        if refusal is not None:
            raise UserError(refusal)
        custom, unread = _custom_code(eng, m, info, step_fn, data, options)
        if custom is not None:
            return custom
    analysis = _compiled(eng, m, info, data, engine_diffs, on_capture=on_capture, **options)
    if unread:
        for f in analysis.findings:
            if f.code in ("CUSTOM_TRAIN_STEP", "CUSTOM_COMPUTE_LOSS"):
                f.message += f" (lossmap could not read the override: {unread})"
    return analysis


def _set_weights(model, path):
    """The arrays of `path` (`w/0`, `w/1`, ...) as the model's weights, when they line up; else a UserError."""
    from lossmap.batch import read_npz

    arrays = read_npz(os.fspath(path))
    given = [arrays[f"w/{i}"] for i in range(len(arrays)) if f"w/{i}" in arrays]
    own = model.get_weights()
    if len(given) != len(own) or any(np.shape(a) != np.shape(b) for a, b in zip(given, own)):
        raise UserError(f"the weights in {os.path.basename(os.fspath(path))} do not fit model '{model.name}' "
                        f"({len(given)} arrays for {len(own)} weights, or their shapes differ)")
    model.set_weights(given)


def _custom_code(eng, m, info, step_fn, data, options):
    """(Analysis, None) through the user's own code; (None, why) for a model's own override lossmap cannot
    read, which falls back to the compile-time inventory."""
    from lossmap.steps.decompose import StepUnreadable
    from lossmap.steps.pipeline import analyse_custom_code

    try:
        return analyse_custom_code(eng, m, info, step_fn, data, **options), None
    except StepUnreadable as exc:
        if step_fn is not None:
            raise
        return None, str(exc)


def _compiled(eng, m, info, data, engine_diffs, *, batch_size, seed, rtol, atol, gradients, gradient_limit,
              sources, on_capture=None) -> Analysis:
    """What compile() and model.losses define, captured, reproduced, verified and attributed.

    Memory decides the order: the backward passes that need the capture's taped forward
    pass run right after it and release it, so verification's own forward and backward
    pass never runs beside a recorded one; the rest of the attribution follows verification.
    """
    runs = _SeededRuns(eng, m, seed)
    with runs:
        sig = eng.signature(m)
        batch = _batch(data, sig, batch_size, seed)
        shapes = batch_shapes(batch)
        limit = gradient_limit or gradients_module.DEFAULT_LIMIT
        # a custom train_step's applied gradient need not be these terms' sum: derive no term from it
        derive = info.compiled and not info.custom_train_step
        capture, terms, pending = _capture(runs, batch, sig, shapes, limit if gradients else None, derive)
        if on_capture is not None:
            on_capture(capture)
        wants = pending is not None and pending.wants_total_gradient
        verification = _verify(runs, batch, sig, wants) if info.compiled else None
        attribution = None
        if pending is not None:
            with keras_refusals("gradient computation", shapes):
                attribution = _attribute(runs, pending, verification, limit)
    restored = runs.state.identical()
    if not info.compiled and not terms:
        raise UserError(f"model '{m.name}' is not compiled and has no losses (no add_loss, no "
                        "regularizers): there is nothing to explain; compile it with a loss")
    analysis = Analysis(
        lossmap_version=__version__,
        model=info,
        batch=BatchInfo(batch.source, batch.size, batch.seed),
        terms=terms,
        total=_total(eng, capture, terms, verification, rtol, atol),
        findings=[],
        state_restored=restored,
        gradients=attribution,
    )
    _findings(analysis, eng, m, sig, capture, verification, engine_diffs)
    if sources:
        _sources(analysis, eng)
    return analysis


class _SeededRuns:
    """The runs of one analysis on the model: each with the seed set, the model's state restored after it.

    `with runs:` around them all restores once more on the way out, but only
    when something ran (or failed) since the last restore: a restore writes
    every variable back.
    """

    def __init__(self, eng, model, seed, state=None):
        self.eng, self.model = eng, model
        self.seed = seed if seed is not None else 0
        self.state = state if state is not None else eng.state(model)
        self._clean = False  # not known to be clean yet: a failure before the first run restores too

    @contextlib.contextmanager
    def seeded(self):
        self._clean = False
        self.eng.seed_random(self.seed)
        yield
        # not reached when the run raises: the enclosing `with runs:` restores then
        self.state.restore()
        self._clean = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._clean:
            self.state.restore()


def _step_function(step, imports):
    """`FILE.py:FUNCTION`, `package.module:FUNCTION` or a function, as `lossmap.steps.locate.StepFunction`."""
    from lossmap.load import import_file_or_module
    from lossmap.quiet import import_backend
    from lossmap.steps import locate

    import_backend()  # the step's module imports it: quietly first
    if isinstance(step, str):
        return locate.resolve(step, lambda where: import_file_or_module(where, imports))
    return locate.describe(step, getattr(step, "__qualname__", repr(step)))


def _model_of(step_fn):
    from lossmap.steps import locate

    return locate.the_model(step_fn)


def _batch(data, sig, batch_size, seed):
    """The batch: synthetic, from a .npz file, or from arrays given in Python."""
    if data is None:
        return batch_module.synthetic(sig, batch_size, seed)
    if isinstance(data, (str, os.PathLike)):
        return batch_module.from_file(os.fspath(data), sig)
    return batch_module.from_arrays(data, sig)


def _capture(runs, batch, sig, shapes, limit, derive):
    """One forward pass: every term as Keras computes it, and the terms built from them; with a gradient
    `limit`, the backward passes on that pass (an attribution pending verification's gradient)."""
    eng, m = runs.eng, runs.model
    pending = None
    with runs.seeded():
        with keras_refusals("forward pass and loss", shapes):
            capture = eng.capture(m, batch, sig, keep_tape=limit is not None)
            terms = _unique_ids(build_terms(capture, eng.rules))
        _release_term_arrays(capture)
        try:
            if limit is not None and terms and capture.gradient_context is not None:
                pending = _begin_attribution(runs, batch, sig, shapes, terms, limit, capture, derive)
        finally:
            capture.gradient_context = None  # the recorded pass, whatever happened
    if limit is not None and terms and pending is None:
        with runs.seeded():  # an engine that tapes a pass of its own: seeded as every other pass is
            pending = _begin_attribution(runs, batch, sig, shapes, terms, limit, None, derive)
    return capture, terms, pending


def _begin_attribution(runs, batch, sig, shapes, terms, limit, capture, derive):
    with keras_refusals("gradient computation", shapes):
        return runs.eng.begin_attribution(runs.model, batch, sig, terms, limit, capture=capture, derive=derive)


def _release_term_arrays(capture):
    """The variables' values and layer outputs the terms were computed from: not needed once they are."""
    for a in capture.additional:
        a.source_tensor = None


def _verify(runs, batch, sig, record_gradient):
    """A real train_step on the same batch (with `record_gradient`, the gradient it applied)."""
    with runs.seeded():
        return runs.eng.verify_train_step(runs.model, batch, sig, record_gradient=record_gradient)


def _attribute(runs, pending, verification, limit):
    """What each term does to the weights: the pending attribution finished, summarised."""
    with runs.seeded():
        applied = verification.total_gradient if verification is not None else None
        acc, notes = pending.finish(applied)
        if verification is not None:
            verification.total_gradient = None  # the size of the model: not kept past this stage
        return gradients_module.summarise(acc, acc.finish(), runs.eng.optimizer_name(runs.model), limit, notes)


def _total(eng, capture, terms, verification, rtol, atol) -> Total:
    """The reproduced total, compared with Keras's compute_loss and train_step."""
    rtol_, atol_ = tolerances(capture.dtype, rtol, atol)
    reproduced = reproduce_total(terms, eng.rules)
    keras_compute = scalar(capture.compute_loss)
    keras_step = verification.train_step if verification else None
    scale = sum(abs(t.contribution) for t in terms)
    diff, verified = compare(reproduced, [keras_compute, keras_step], scale, rtol_, atol_)
    return Total(
        reproduced=reproduced,
        compute_loss=keras_compute,
        train_step=keras_step,
        max_abs_diff=diff,
        rtol=rtol_,
        atol=atol_,
        verified=verified,
        path=verification.path if verification else "eager (compute_loss only)",
        summation=eng.summation(),
    )


def _findings(analysis, eng, m, sig, capture, verification, engine_diffs):
    """The findings: the rules', the gradients', the engine differences, and the state check's."""
    analysis.findings = findings_module.collect(
        analysis, capture,
        frozen_regularized=eng.frozen_regularized_variables(m),
        verification_notes=verification.notes if verification else (),
        compute_loss_error=capture.compute_loss_error,
        train_step_error=verification.train_step_error if verification else None,
    )
    if analysis.gradients is not None:
        analysis.findings += gradients_module.findings(analysis.gradients, analysis.terms)
    if engine_diffs or (engine_diffs is None and eng.engine_diffs_by_default):
        from lossmap import engine_diff

        diffs = engine_diff.differences(analysis, capture, eng.engine_facts(m, sig))
        analysis.findings += engine_diff.as_findings(diffs)
        analysis.engine_comparison = {"differences": diffs, "rows": None}
    analysis.findings += surprises.findings(analysis, capture, eng, m, sig)
    analysis.findings = group_findings(analysis.findings, analysis)
    if not analysis.state_restored:
        analysis.findings.append(findings_module.Finding(
            "STATE_NOT_RESTORED", "error", None,
            "lossmap could not put the model's state back bit for bit (a lossmap bug: please report it)"))


def _sources(analysis, eng):
    """The source walkthrough and the user call sites; a failure here never fails the analysis."""
    from lossmap import sources  # libcst: imported when needed, not with lossmap

    try:
        anchors = eng.walkthrough_anchors()
        analysis.walkthrough = sources.walkthrough(analysis, anchors)
    except Exception as exc:  # noqa: BLE001
        analysis.walkthrough = [sources.failed_step("walkthrough", "Source walkthrough", "", exc)]
    try:
        analysis.call_sites = sources.user_call_sites(analysis)
    except Exception as exc:  # noqa: BLE001
        analysis.call_sites = {}
        analysis.walkthrough.append(sources.failed_step("call_sites", "Where each additional loss comes from",
                                                        "", exc))


def _unique_ids(terms):
    seen = {}
    for t in terms:
        if t.id in seen:
            seen[t.id] += 1
            t.id = f"{t.id}#{seen[t.id]}"
        else:
            seen[t.id] = 0
    return terms
