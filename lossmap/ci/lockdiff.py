"""What changed between a lock file's entry and the model's loss now, in words a pull request can show.

Each change is a finding (code `LOCK_*`, see `lossmap.ci.rules`): "the L2 on
encoder/kernel (l2=0.001) is gone", "the loss weight of the loss on output 'aux'
went from 0.5 to 0".
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from lossmap.ci.lock import regenerate_hint
from lossmap.errors import UserError

REGULARIZER_KINDS = ("weight_regularizer", "activity_regularizer")
_TERM_FIELDS = (("function", "LOCK_FUNCTION_CHANGED"), ("expression", "LOCK_EXPRESSION_CHANGED"),
                ("kind", "LOCK_TERM_CHANGED"), ("output", "LOCK_TERM_CHANGED"), ("owner", "LOCK_TERM_CHANGED"),
                ("objective", "LOCK_TERM_CHANGED"))


@dataclass
class Change:
    code: str
    term: Optional[str]
    message: str
    level: str = "error"
    before: Any = None
    after: Any = None

    @property
    def sign(self) -> str:
        return {"LOCK_TERM_REMOVED": "-", "LOCK_TERM_ADDED": "+"}.get(self.code, "~" if self.level == "error" else " ")


@dataclass
class Comparison:
    """A model's loss now against its lock file entry."""

    path: str  # the lock file
    key: str  # the model's key in it
    changes: list = field(default_factory=list)
    lines: dict = field(default_factory=dict)  # term id -> its line in the lock file, where it has one

    @property
    def changed(self) -> bool:
        return any(c.level == "error" for c in self.changes)

    def findings(self) -> list:
        from lossmap.analysis import Finding

        return [Finding(c.code, c.level, c.term, f"{c.message} (lock file {self.path})") for c in self.changes]

    def to_dict(self) -> dict:
        return {"file": self.path, "model": self.key, "changed": self.changed,
                "changes": [{"code": c.code, "level": c.level, "term": c.term, "message": c.message,
                             "before": c.before, "after": c.after, "line": self.lines.get(c.term)}
                            for c in self.changes]}

    def text(self) -> str:
        """The readable diff: one line per change, `-` removed, `+` added, `~` changed."""
        n = sum(1 for c in self.changes if c.level == "error")
        head = f"Lock {self.path} ({self.key}): " + (f"{n} change{'s' if n != 1 else ''}" if n else "unchanged")
        lines = [head] + [f"  {c.sign} {c.term + ': ' if c.term else ''}{c.message}" for c in self.changes]
        return "\n".join(lines) + "\n"


def compare(lockfile, key: str, current: dict, models_given=(), same_batch_required: bool = True,
            hint=None) -> Comparison:
    """Compare model `key`'s entry in `lockfile` with `current` (`lossmap.ci.lock.entry`).

    A lock file without this model, or whose values were recorded on another
    batch, is a UserError (exit 2) saying how to regenerate it (`hint`: the
    command that does, when it is not `lossmap lock`).
    """
    locked = lockfile.models.get(key)
    if locked is None:
        held = ", ".join(sorted(lockfile.models)) or "no model"
        hint = hint or regenerate_hint(models_given, lockfile.path, update=False)
        raise UserError(f"lock file {lockfile.path} is for another model: it has no entry for {key} (it locks "
                        f"{held}); add it with: {hint}")
    if same_batch_required and "values" in locked:
        _same_batch(locked["values"]["batch"], current.get("values", {}).get("batch"), lockfile.path, models_given)
    changes = diff(locked, current)
    lines = {}
    for c in changes:
        if c.term and c.term in locked["terms"]:
            lines[c.term] = lockfile.line_of(key, c.term)
    return Comparison(lockfile.path, key, changes, {k: v for k, v in lines.items() if v})


def _same_batch(locked, now, path, models_given):
    if locked != now:
        raise UserError(f"lock file {path} has values measured on another batch ({_batch_words(locked)}; this "
                        f"run: {_batch_words(now)}): check on the same batch, or regenerate it with: "
                        f"{regenerate_hint(models_given, path)} --values")


def _batch_words(batch):
    if not batch:
        return "none"
    if batch.get("source") == "synthetic":
        return f"synthetic, {batch.get('size')} samples, seed {batch.get('seed')}"
    return f"{batch.get('source')}, {batch.get('size')} samples" + (
        f", sha256 {batch['sha256'][:12]}" if batch.get("sha256") else "")


def diff(old: dict, new: dict) -> list:
    """The changes from lock entry `old` to entry `new`, model-wide ones first, then term by term."""
    changes = []
    for name in ("engine", "backend"):
        if old.get(name) != new.get(name):
            changes.append(Change("LOCK_ENGINE_CHANGED", None, f"the {name} went from {_fmt(old.get(name))} to "
                                  f"{_fmt(new.get(name))}", before=old.get(name), after=new.get(name)))
    if old.get("keras_version") != new.get("keras_version"):
        changes.append(Change("LOCK_KERAS_VERSION_CHANGED", None, f"Keras {_fmt(new.get('keras_version'))} is "
                              f"installed, the lock file was written with {_fmt(old.get('keras_version'))}",
                              level="info", before=old.get("keras_version"), after=new.get("keras_version")))
    old_terms, new_terms = old["terms"], new["terms"]
    for term_id in sorted(set(old_terms) | set(new_terms)):
        if term_id not in new_terms:
            t = old_terms[term_id]
            changes.append(Change("LOCK_TERM_REMOVED", term_id, f"{describe(t)} is gone: the loss no longer has "
                                  f"it{_weight_words(t)}", before=t))
        elif term_id not in old_terms:
            t = new_terms[term_id]
            changes.append(Change("LOCK_TERM_ADDED", term_id, f"{describe(t)} is new{_weight_words(t)}", after=t))
        else:
            changes += term_changes(term_id, old_terms[term_id], new_terms[term_id])
    if "values" in old and "values" in new:
        changes += value_changes(old, new)
    return changes


def term_changes(term_id: str, old: dict, new: dict) -> list:
    out = []
    what = describe(old)
    if not _same_number(old.get("weight"), new.get("weight")):
        noun = "coefficient" if old.get("kind") == "custom" else "loss weight"
        out.append(Change("LOCK_WEIGHT_CHANGED", term_id, f"the {noun} of {what} went from "
                          f"{_fmt(old.get('weight'))} to {_fmt(new.get('weight'))}",
                          before=old.get("weight"), after=new.get("weight")))
    for name, code in _TERM_FIELDS:
        if old.get(name) != new.get(name):
            out.append(Change(code, term_id, f"the {name} of {what} went from {_fmt(old.get(name))} to "
                              f"{_fmt(new.get(name))}", before=old.get(name), after=new.get(name)))
    out += config_changes(term_id, old, new)
    return out


def config_changes(term_id: str, old: dict, new: dict) -> list:
    """A change per config entry that differs.

    An entry on one side only (a loss given by name, then as an object with every
    argument spelled out) counts only when its value is not default-like: the
    lock file cannot ask Keras for the defaults.
    """
    old_cfg, new_cfg = old.get("config") or {}, new.get("config") or {}
    what = describe(old, strength=False)
    out = []
    for key in sorted(set(old_cfg) | set(new_cfg)):
        a, b = old_cfg.get(key), new_cfg.get(key)
        if a == b or (key not in old_cfg and _default_like(b)) or (key not in new_cfg and _default_like(a)):
            continue
        if key == "reduction":
            code, words = "LOCK_REDUCTION_CHANGED", f"the reduction of {what} went from {_fmt(a)} to {_fmt(b)}"
        elif old.get("kind") in REGULARIZER_KINDS:
            code, words = "LOCK_REGULARIZER_CHANGED", f"the strength of {what} went from {key}={_fmt(a)} to " \
                                                      f"{key}={_fmt(b)}"
        else:
            code, words = "LOCK_CONFIG_CHANGED", f"{key} of {what} went from {_fmt(a)} to {_fmt(b)}"
        out.append(Change(code, term_id, words, before=a, after=b))
    return out


def _default_like(value) -> bool:
    return value is None or value is False or (isinstance(value, (int, float)) and value in (0, -1))


def value_changes(old: dict, new: dict) -> list:
    tol = old["values"]
    rtol, atol = float(tol.get("rtol", 0.0)), float(tol.get("atol", 0.0))
    out = []
    pairs = [(None, "the total", tol.get("total"), new["values"].get("total"))]
    for term_id in sorted(set(old["terms"]) & set(new["terms"])):
        a, b = old["terms"][term_id].get("value"), new["terms"][term_id].get("value")
        if a is not None or b is not None:
            pairs.append((term_id, "the value of " + describe(old["terms"][term_id]), a, b))
    for term_id, what, a, b in pairs:
        if _beyond(a, b, rtol, atol):
            out.append(Change("LOCK_VALUE_CHANGED", term_id, f"{what} moved from {_fmt(a)} to {_fmt(b)}, beyond "
                              f"the lock file's tolerance (rtol {rtol:g}, atol {atol:g})", before=a, after=b))
    return out


def _beyond(a, b, rtol, atol) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(a - b) > atol + rtol * abs(a)


def _same_number(a, b) -> bool:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def describe(t: dict, strength: bool = True) -> str:
    """A term of a lock entry in words: 'the L2 on encoder/kernel (l2=0.001)', "the loss on output 'aux' (mse)"."""
    kind, fn, owner = t.get("kind"), t.get("function"), t.get("owner")
    strength = _strength(t) if strength else ""
    if kind == "compiled":
        return f"the loss on output {t.get('output')!r} ({fn})"
    if kind == "weight_regularizer":
        return f"the {fn or 'regularizer'} on {owner}{strength}"
    if kind == "activity_regularizer":
        return f"the {fn or 'regularizer'} on the output of {owner}{strength}"
    if kind == "add_loss":
        return f"the add_loss of layer {owner}"
    if kind == "custom":
        return f"the custom term {t.get('expression') or fn or ''}".rstrip()
    return f"the {kind} term"


def _strength(t: dict) -> str:
    config = t.get("config") or {}
    shown = [f"{k}={_fmt(v)}" for k, v in sorted(config.items()) if isinstance(v, (int, float))]
    return f" ({', '.join(shown)})" if shown else ""


def _weight_words(t: dict) -> str:
    weight = t.get("weight", 1.0)
    return "" if weight == 1.0 else f" (loss weight {_fmt(weight)})"


def _fmt(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True)
