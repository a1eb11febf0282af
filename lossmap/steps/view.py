"""The user's step as the report and `explain` show it: its real lines, each addend annotated.

Plain `lossmap.sources.Step`s: the step function (and the `compute_loss` override it
opens into), every line that matters highlighted with this batch's numbers and the ids of
the terms it makes; then the installed Keras's own walkthrough for whatever the step
hands to Keras (`compute_loss`, `model.losses`), and the call sites of additional losses.
"""
from __future__ import annotations

from lossmap.steps.run import Decomposition


def attach_sources(analysis, eng, result):
    """Fill `analysis.step_view`, `analysis.walkthrough` and `analysis.call_sites`; never fails the analysis."""
    from lossmap import sources

    try:
        analysis.step_view = step_views(analysis, result)
    except Exception as exc:  # noqa: BLE001
        analysis.step_view = [sources.failed_step("user_step", "Your training step", "", exc)]
    keras_side = keras_view(analysis)
    try:
        analysis.walkthrough = sources.walkthrough(keras_side, eng.walkthrough_anchors()) if keras_side.terms else []
    except Exception as exc:  # noqa: BLE001
        analysis.walkthrough = [sources.failed_step("walkthrough", "Source walkthrough", "", exc)]
    try:
        analysis.call_sites = {k: v for k, v in sources.user_call_sites(analysis).items()
                               if not k.startswith("custom/")}
    except Exception:  # noqa: BLE001
        analysis.call_sites = {}


def keras_view(analysis):
    """The analysis as Keras's own code sees it: only the terms the step hands to Keras, and their sum
    (what `compute_loss` returns), so the walkthrough's notes speak of Keras's part alone."""
    import dataclasses
    import math

    terms = [t for t in analysis.terms if t.kind != "custom"]
    total = dataclasses.replace(analysis.total, reproduced=math.fsum(t.contribution for t in terms),
                                train_step=None)
    return dataclasses.replace(analysis, terms=terms, total=total)


def step_views(analysis, result) -> list:
    d = result.decomposition
    if getattr(d.words, "train_step", None) is not None:  # a written-out step: show the user's own (JAX)
        views = [_written_out_view(result, d, _title(d))]
    else:
        views = [_view(analysis, result, d, "user_step", _title(d))]
    if d.nested is not None:
        title = getattr(d.words, "nested_title", None) or "Your compute_loss override"
        view = _view(analysis, result, d.nested, "user_compute_loss", title)
        if getattr(d.words, "nested_title", None):  # not a compute_loss: the function the step differentiates (JAX)
            view.explanation = (f"What {d.nested.fn.__qualname__} returns is what the step differentiates; each "
                                "addend below is one term.")
        views.append(view)
    return views


def _title(d: Decomposition) -> str:
    if getattr(d.words, "title", None):
        return d.words.title
    return {"train_step": "Your train_step override", "function": "Your training step",
            "keras_default": "Keras's train_step, as lossmap reads it (your model overrides only compute_loss)",
            }.get(d.kind, "Your training step")


def _view(analysis, result, d: Decomposition, key, title):
    from lossmap.sources import SourceLine, Step, display_path

    step = d.step
    notes = _notes(analysis, result, d)
    text = step.source_lines()
    lines = []
    for i, line in enumerate(text):
        number = i + 1 + step.offset
        if number < step.start_line or number > step.end_line:
            continue
        note, terms = notes.get(number, (None, []))
        lines.append(SourceLine(number, line, highlight=note is not None, note=note, terms=terms))
    return Step(key=key, title=title, explanation=_explanation(d), file=step.file,
                display_path=display_path(step.file), qualname=d.fn.__qualname__, start_line=step.start_line,
                end_line=step.end_line, lines=lines)


def _written_out_view(result, d: Decomposition, title):
    """The user's train_step as written, for a step lossmap runs written out (`d.words`, JAX's
    `differentiated_function`): the line that differentiates and the line that applies, highlighted."""
    import inspect

    from lossmap.sources import SourceLine, Step, display_path

    words = d.words
    text, start = inspect.getsourcelines(words.train_step)
    value = result.objectives[0]["value"] if result.objectives else None
    notes = {words.shown["line"]: f"differentiates {words.function.__qualname__}: loss = "
                                  + ("n/a" if value is None else f"{value:.7g}") + " (its addends below)",
             words.applied_line: "optimizer.stateless_apply: applies the gradient"}
    lines = [SourceLine(start + i, line.rstrip("\n"), highlight=start + i in notes, note=notes.get(start + i),
                        terms=[]) for i, line in enumerate(text)]
    return Step(key="user_step", title=title, file=words.shown["file"],
                explanation="Your train_step differentiates the function opened below; lossmap runs an "
                            "instrumented copy of that function, replays it from the trainable values and "
                            "differentiates each addend with jax.vjp, and verifies against this train_step as written.",
                display_path=display_path(words.shown["file"]), qualname=words.train_step.__qualname__,
                start_line=start, end_line=start + len(text) - 1, lines=lines)


def _explanation(d: Decomposition) -> str:
    if d.kind == "keras_default":
        return ("Keras's own train_step runs the forward pass on a tape and differentiates self.compute_loss(...); "
                "your model's override decides what that returns.")
    if d.kind == "compute_loss":
        return "What your compute_loss returns is what Keras differentiates; each addend below is one term."
    return ("The lines that make the loss this step differentiates, with this batch's numbers; each highlighted "
            "addend is one term of the equation.")


def _notes(analysis, result, d: Decomposition) -> dict:
    """line -> (note, [term ids])."""
    notes: dict = {}

    def add(line, text, term=None):
        old, terms = notes.get(line, (None, []))
        notes[line] = ("; ".join(x for x in (old, text) if x), terms + ([term] if term else []))

    by_addend = _terms_by_addend(result, d)
    for a in d.parts.addends:
        for t in by_addend.get(a.id, []):
            add(a.line, f"{t.id} = {t.value:.6g}" + (f" x {t.weight:g}" if t.weight != 1.0 else ""), t.id)
            if a.value_line != a.line and t.kind == "custom":
                add(a.value_line, f"{a.value_text} = {t.value:.6g}", t.id)
    for o, entry in zip(d.parts.objectives, result.objectives if d is result.decomposition else []):
        if o.gradient is not None:
            value = "n/a" if entry["value"] is None else f"{entry['value']:.7g}"
            add(o.gradient.line, f"differentiates {o.gradient.target_text} = {value}")
    for t in d.step.tapes:
        add(t.line, f"tape `{t.name}` records from here" + (" (persistent)" if t.persistent else ""))
    for c in d.step.optimizer_calls:
        add(c.line, f"{c.optimizer_text}.{c.method}: applies the gradient")
    return notes


def _terms_by_addend(result, d: Decomposition) -> dict:
    """Addend id (of `d`) -> the terms it became (one, or the terms of a Keras call it opened)."""
    out: dict = {}
    for a in result.assembled:
        addend_id = _addend_in(a.key, d, result.decomposition)
        if addend_id is not None:
            out.setdefault(addend_id, []).append(a.term)
    return out


def _addend_in(key, d, outer):
    """Which addend of `d` a term key goes through: the outer step's first id, a nested override's second."""
    ids = [k for k in key[1:] if isinstance(k, int)]
    if key[0] in ("keras", "losses"):
        ids = ids[:-1]
    if d is outer:
        return ids[0] if ids else None
    return ids[1] if len(ids) > 1 else None
