"""One model's outcome in a `lossmap check` call, its verdict and exit code: what every format reports.

Every format reads `Outcome.document()` (the contract's JSON document, plus
`lock` when a lock file was compared) and `Outcome.exit_code`, so all of them
carry the same verdict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from lossmap.errors import EXIT_FAILED, EXIT_OK

LEVEL_ORDER = {"info": 0, "warning": 1, "error": 2}
# Set on terms by the custom-training-code stage; read when present, whether or not
# the data model has them as fields yet.
CUSTOM_TERM_FIELDS = ("expression", "source", "objective")


@dataclass
class Outcome:
    model: str  # MODEL as given on the command line
    exit_code: int
    analysis: Any = None  # lossmap.analysis.Analysis; None when the model could not be analysed
    error: Optional[str] = None  # the one-line message of exit 2 or 3
    lock: Any = None  # lossmap.ci.lockdiff.Comparison when a lock file was compared
    seconds: Optional[float] = None  # how long the analysis took
    _doc: Optional[dict] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.analysis.model.name if self.analysis is not None else self.model

    def document(self) -> Optional[dict]:
        """The JSON document (computed once); None when the model could not be analysed."""
        if self.analysis is None:
            return None
        if self._doc is None:
            self._doc = document(self.analysis, self.lock)
        return self._doc


def document(analysis, lock=None) -> dict:
    """`analysis.to_dict()`, with the custom-code fields of terms and the lock comparison when there is one."""
    doc = analysis.to_dict()
    for term, entry in zip(analysis.terms, doc["terms"]):
        for key in CUSTOM_TERM_FIELDS:
            if key not in entry and getattr(term, key, None) is not None:
                entry[key] = getattr(term, key)
    if lock is not None:
        doc["lock"] = lock.to_dict()
    return doc


def exit_code(analysis, fail_on: str = "error") -> int:
    """0 verified and no finding at or above `fail_on`; 1 otherwise (the contract's exit codes)."""
    total = analysis.total
    if (total.compute_loss is not None or total.train_step is not None) and not total.verified:
        return EXIT_FAILED
    threshold = LEVEL_ORDER[fail_on]
    if any(LEVEL_ORDER[f.level] >= threshold for f in analysis.findings):
        return EXIT_FAILED
    return EXIT_OK


def verification(doc: dict) -> str:
    """VERIFIED, MISMATCH or NOT VERIFIED: what became of the total."""
    total = doc["total"]
    if total["compute_loss"] is None and total["train_step"] is None:
        return "NOT VERIFIED"
    return "VERIFIED" if total["verified"] else "MISMATCH"


def headline(outcome: Outcome, fail_on: str) -> str:
    """One line: the verification, the lock, the findings that fail the check; the same in every format."""
    doc = outcome.document()
    if doc is None:
        return "could not analyse" if outcome.exit_code == 2 else "internal error"
    parts = [verification(doc)]
    if outcome.lock is not None:
        parts.append("lock changed" if outcome.lock.changed else "lock unchanged")
    failing = failing_findings(doc, fail_on)
    lock_codes = sum(1 for f in failing if f["code"].startswith("LOCK_"))
    others = len(failing) - lock_codes
    if others:
        parts.append(f"{others} finding{'s' if others != 1 else ''} at or above {fail_on}")
    return ", ".join(parts)


def failing_findings(doc: dict, fail_on: str) -> list:
    threshold = LEVEL_ORDER[fail_on]
    return [f for f in doc["findings"] if LEVEL_ORDER.get(f["level"], 2) >= threshold]


def worst(codes) -> int:
    """One exit code for several models: the worst (3 internal > 2 could not analyse > 1 failed > 0)."""
    return max(codes, default=EXIT_OK)
