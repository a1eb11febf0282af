"""The walkthrough: the library functions an engine names (`Anchor`), located for this model."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

from lossmap.sources.highlight import Note, Step, as_stmt, locate
from lossmap.sources.index import no_gc_pauses


@dataclass(frozen=True)
class Anchor:
    """One walkthrough step: a function in an importable module, and what to highlight in it."""

    key: str
    title: str
    module: str  # import path, e.g. "keras.src.trainers.compile_utils"
    qualname: str  # e.g. "CompileLoss.call" or "reduce_values"
    explanation: Note  # one paragraph, or a callable(analysis) returning it
    statements: Sequence = ()  # [Stmt | (matcher, note) | (matcher, note, label)]
    when: Optional[Callable] = None  # when(analysis): does this model use the step?


def _resolve(note, analysis):
    return note(analysis) if callable(note) else note


def walkthrough(analysis, anchors: Sequence[Anchor]) -> list:
    """The steps this model uses (each anchor's `when`), located in the installed sources."""
    with no_gc_pauses():
        return _walkthrough(analysis, anchors)


def _walkthrough(analysis, anchors) -> list:
    steps = []
    for a in anchors:
        try:
            if a.when is not None and not a.when(analysis):
                continue
            stmts = []
            for spec in a.statements:
                s = as_stmt(spec)
                if s.when is not None and not s.when(analysis):
                    continue
                stmts.append(replace(s, note=_resolve(s.note, analysis), when=None))
            steps.append(locate(a.module, a.qualname, stmts, key=a.key, title=a.title,
                                explanation=_resolve(a.explanation, analysis) or ""))
        except Exception as exc:  # noqa: BLE001 - one broken step must not hide the others
            steps.append(failed_step(a.key, a.title, a.qualname, exc))
    return steps


def failed_step(key: str, title: str, qualname: str, exc: BaseException) -> Step:
    """The step that stands in for one that could not be built, saying why."""
    return Step(key, title or qualname or key, "", None, None, qualname, None, None, [], False,
                f"lossmap could not build this step: {type(exc).__name__}: {exc}")
