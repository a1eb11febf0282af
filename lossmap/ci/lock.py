"""The lock file: the composition of a model's loss, written so that a code review can read its diff.

    {"schema": "lossmap-lock/1",
     "models": {"<model key>": {"name", "engine", "backend", "keras_version",
                                "terms": {"<term id>": {"kind", "output", "owner", "function", "config",
                                                        "expression", "weight", "value"}},
                                "values": {"batch", "rtol", "atol", "total"}}}}

A model's key is MODEL as given (a factory spec, or a path made relative to the
lock file's folder, so it does not depend on where lossmap runs), or the model's
name for a live model. Fields that are null are left out; `value` and `values`
only with `lossmap lock --values`. Keys are sorted and floats of values rounded
to float32 precision, so the file is the same on every run and machine.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from lossmap.errors import UserError

SCHEMA = "lossmap-lock/1"
DEFAULT_PATH = "lossmap.lock.json"
VALUE_RTOL, VALUE_ATOL = 1e-4, 1e-6
# Config entries that never change a term's value: its display name, and the function a
# LossFunctionWrapper serializes (the term's `function` already names it).
_NOT_VALUE = ("name", "fn")


@dataclass
class LockFile:
    path: str
    models: dict = field(default_factory=dict)  # model key -> entry
    text: str = ""  # as read, to find the line of a term

    def line_of(self, key: str, term_id: str):
        """1-based line of `term_id`'s entry under model `key` in the file as read, or None."""
        lines = self.text.splitlines()
        start = next((i for i, line in enumerate(lines) if line.strip().startswith(json.dumps(key) + ":")), None)
        if start is None:
            return None
        needle = json.dumps(term_id) + ": {"
        return next((i + 1 for i in range(start, len(lines)) if lines[i].strip() == needle), None)


def entry(doc: dict, values: bool = False, rtol: float = VALUE_RTOL, atol: float = VALUE_ATOL,
          batch_digest=None) -> dict:
    """The lock entry of one model, from its JSON document."""
    model = doc["model"]
    terms = {}
    for t in doc["terms"]:
        item = {
            "kind": t["kind"],
            "output": t.get("output"),
            "owner": t.get("variable") or t.get("layer"),
            "function": t.get("fn"),
            "config": value_config(t.get("config")),
            "expression": t.get("expression"),
            "objective": t.get("objective"),
            "weight": t["weight"],
        }
        if values:
            item["value"] = rounded(t["value"])
        terms[t["id"]] = {k: v for k, v in item.items() if v is not None}
    out = {"name": model["name"], "engine": model["engine"], "backend": model["backend"],
           "keras_version": model["keras_version"], "terms": terms}
    if values:
        batch = {k: v for k, v in doc["batch"].items() if v is not None}
        if batch_digest:
            batch["sha256"] = batch_digest
        out["values"] = {"batch": batch, "rtol": rtol, "atol": atol, "total": rounded(doc["total"]["reproduced"])}
    return out


def value_config(config):
    """The part of a term's config that affects its value (None-valued entries left out).

    Floats at float32 precision: tf_keras keeps a regularizer's 1e-3 as
    0.0010000000474974513, which reads badly in a review and says nothing more.
    """
    if not isinstance(config, dict):
        return None
    kept = {k: _rounded_floats(v) for k, v in config.items() if k not in _NOT_VALUE and v is not None}
    return kept or None


def _rounded_floats(obj):
    if isinstance(obj, float):
        return rounded(obj)
    if isinstance(obj, dict):
        return {k: _rounded_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded_floats(v) for v in obj]
    return obj


def rounded(value):
    """A value at float32 precision (7 significant digits): stable across machines."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None  # the lock file is strict JSON, as the contract's document is
    return float(f"{value:.7g}")


def model_key(source: str, lock_path: str) -> str:
    """How the lock file names a model: MODEL as given, with a path made relative to the lock file."""
    if source.startswith("<live model ") and source.endswith(">"):
        return source[len("<live model "):-1]
    left, sep, fn = source.rpartition(":")
    if sep and not os.path.exists(source):
        if left.endswith(".py") or "/" in left or os.sep in left:
            return _relative(left, lock_path) + ":" + fn
        return source  # package.module:function
    return _relative(source, lock_path)


def _relative(path: str, lock_path: str) -> str:
    base = os.path.dirname(os.path.abspath(lock_path))
    return os.path.relpath(os.path.abspath(path), base).replace(os.sep, "/")


def regenerate_hint(models, path: str, update: bool = True) -> str:
    shown = " ".join(models) if models else "MODEL"
    return f"lossmap lock {shown} -o {path}" + (" --update" if update else "")


def read(path: str, models=(), missing_ok: bool = False, bad_ok: bool = False) -> LockFile:
    """Read and check a lock file: a missing, malformed or other-version file is a UserError (exit 2).

    `missing_ok`: an absent file reads as empty (for `lossmap lock`); `bad_ok`: so
    does a bad one (for `lossmap lock --update`, which replaces it).
    """
    if not os.path.exists(path):
        if missing_ok:
            return LockFile(path)
        raise UserError(f"lock file {path}: no such file; create it with: "
                        f"{regenerate_hint(models, path, update=False)}")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"lock file {path} cannot be read ({exc}); regenerate it with: "
                        f"{regenerate_hint(models, path)}") from exc
    try:
        return LockFile(path, _parse(text, path, models), text)
    except UserError:
        if bad_ok:
            return LockFile(path)
        raise


def _parse(text: str, path: str, models_given=()) -> dict:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UserError(f"lock file {path} is not valid JSON ({exc}); regenerate it with: "
                        f"{regenerate_hint(models_given, path)}") from exc
    if not isinstance(doc, dict) or "schema" not in doc:
        raise UserError(f"{path} is not a lossmap lock file (no \"schema\": \"{SCHEMA}\"); regenerate it with: "
                        f"{regenerate_hint(models_given, path)}")
    if doc["schema"] != SCHEMA:
        raise UserError(f"lock file {path} has schema {doc['schema']!r}, and this lossmap reads {SCHEMA!r}; "
                        f"regenerate it with: {regenerate_hint(models_given, path)}")
    models = doc.get("models")
    bad = _bad_entry(models)
    if bad:
        raise UserError(f"lock file {path} is malformed ({bad}); regenerate it with: {regenerate_hint(models_given, path)}")
    return models


def _bad_entry(models):
    """What is wrong with the `models` object, or None."""
    if not isinstance(models, dict):
        return "\"models\" is not an object"
    for key, item in models.items():
        if not isinstance(item, dict) or not isinstance(item.get("terms"), dict):
            return f"model {key!r} has no \"terms\" object"
        for needed in ("engine", "name"):
            if not isinstance(item.get(needed), str):
                return f"model {key!r} has no {needed!r}"
        for term_id, term in item["terms"].items():
            if not isinstance(term, dict) or "kind" not in term or not isinstance(term.get("weight"), (int, float)):
                return f"term {term_id!r} of model {key!r} needs \"kind\" and a numeric \"weight\""
    return None


def dumps(models: dict) -> str:
    """The file's text: `schema` first, then every key sorted; two-space indent, a final newline."""
    return json.dumps({"schema": SCHEMA, "models": _sorted(models)}, indent=2, allow_nan=False) + "\n"


def _sorted(obj):
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


def write(path: str, models: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: the folder {folder} does not exist")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(dumps(models))
    os.replace(tmp, path)  # a lock file is never left half written


def file_digest(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
