"""Check a model's training loss in a test, as `lossmap check` does in CI.

    from lossmap.testing import check_loss
    check_loss(model)                                    # verified, no error-level finding
    check_loss("model.keras", lock="lossmap.lock.json")  # and the composition is the locked one

With pytest, the `lossmap_check` fixture (lossmap.pytest_plugin) does the same
with lock paths relative to the test file, and `pytest --lossmap-update`
rewrites the lock files instead of comparing with them. A failure raises
`LossmapCheckFailed` (an AssertionError) whose message is lossmap's own
explanation: the equation with this batch's numbers, the verification, the
lock diff and the findings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from lossmap.ci import lock as lockfile_module
from lossmap.ci import lockdiff
from lossmap.ci.outcome import LEVEL_ORDER, exit_code, failing_findings
from lossmap.errors import UserError


class LossmapCheckFailed(AssertionError):
    """The model's loss does not verify, a finding reaches `fail_on`, or the composition left its lock."""


@dataclass
class LockUpdate:
    path: str
    key: str
    what: str  # "created", "added", "unchanged", or the changes in a few words


def check_loss(model, batch=None, lock=None, *, fail_on="error", update=False, values=False, updates=None,
               update_hint="lossmap lock MODEL --update", **options):
    """Analyse `model` (a live model, a .keras path or a factory spec) and fail unless it passes.

    `batch`: None (synthetic), an .npz path, or `(x, y[, sample_weight])`.
    `lock`: a lock file to compare the composition with; with `update=True` the
    model's entry is written instead (`values=True` records values too), and a
    `LockUpdate` is appended to `updates`. Other options go to `lossmap.analyse`.
    Returns the `Analysis`.
    """
    __tracebackhide__ = True
    if fail_on not in LEVEL_ORDER:
        raise ValueError(f"fail_on must be one of {', '.join(LEVEL_ORDER)}, not {fail_on!r}")
    from lossmap.pipeline import analyse

    try:
        lockfile = _read_lock(lock, update, update_hint)
        options.setdefault("sources", False)
        analysis = analyse(model, batch, **options)
        comparison = _lock(analysis, lockfile, update, values, updates, update_hint)
    except UserError as exc:
        raise LossmapCheckFailed(f"lossmap: {exc}") from None
    if exit_code(analysis, fail_on):
        raise LossmapCheckFailed(explanation(analysis, comparison, fail_on, update_hint))
    return analysis


def _read_lock(lock, update, hint):
    if lock is None:
        return None
    path = os.fspath(lock)
    if not update and not os.path.exists(path):
        raise UserError(f"lock file {path}: no such file; create it with: {hint}")
    return lockfile_module.read(path, missing_ok=update, bad_ok=update)


def _lock(analysis, lockfile, update, values, updates, hint):
    """Compare with the lock entry (its changes become findings), or write the entry with `update`."""
    if lockfile is None:
        return None
    from lossmap.ci.outcome import document

    key = lockfile_module.model_key(analysis.model.source, lockfile.path)
    old = lockfile.models.get(key)
    if update:
        new = lockfile_module.entry(document(analysis), values=values)
        changes = [c for c in lockdiff.diff(old, new) if c.level == "error"] if old else []
        what = "created" if not lockfile.models else "added" if old is None else (
            f"{len(changes)} change{'s' if len(changes) != 1 else ''}" if changes or old != new else "unchanged")
        if old != new:
            lockfile_module.write(lockfile.path, {**lockfile.models, key: new})
        if updates is not None:
            updates.append(LockUpdate(lockfile.path, key, what))
        return None
    locked_values = (old or {}).get("values") or {}
    current = lockfile_module.entry(document(analysis), values=bool(locked_values),
                                    rtol=locked_values.get("rtol", lockfile_module.VALUE_RTOL),
                                    atol=locked_values.get("atol", lockfile_module.VALUE_ATOL))
    comparison = lockdiff.compare(lockfile, key, current, same_batch_required=False, hint=hint)
    analysis.findings = list(analysis.findings) + comparison.findings()
    return comparison


def explanation(analysis, comparison, fail_on: str, hint: str) -> str:
    """The failure message: verdict, equation, verification, lock diff, findings."""
    from lossmap.ci.outcome import document, verification
    from lossmap.render import format_number

    doc = document(analysis, comparison)
    total = doc["total"]
    lines = [f"lossmap: the training loss of {analysis.model.name!r} does not pass "
             f"({verification(doc)}{', lock changed' if comparison and comparison.changed else ''}; "
             f"fail_on={fail_on!r})", "", str(analysis), "",
             f"verification ({total['path']}): reproduced {format_number(total['reproduced'], 8)}, "
             f"compute_loss {format_number(total['compute_loss'], 8)}, train_step "
             f"{format_number(total['train_step'], 8)}, max |diff| {format_number(total['max_abs_diff'], 3)} "
             f"-> {verification(doc)}"]
    if comparison is not None and comparison.changes:
        lines += ["", comparison.text().rstrip("\n"), f"(if the change is intended: {hint})"]
    failing = failing_findings(doc, fail_on)
    lines += ["", f"findings at or above {fail_on}:" if failing else "findings:"]
    shown = failing or doc["findings"]
    lines += [f"  [{f['level']}] {f['code']}{' (' + f['term'] + ')' if f['term'] else ''}: {f['message']}"
              for f in shown] or ["  none"]
    return "\n".join(lines)
