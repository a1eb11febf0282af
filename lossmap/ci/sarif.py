"""`lossmap check --format sarif`: SARIF 2.1.0 for GitHub code scanning.

One run for all the models of the call (code scanning takes one run per tool
and category), with every rule of `lossmap.ci.rules`; a result per finding at
the file and line it concerns (`lossmap.ci.locate`), an explicit level (info is
SARIF's `note`) and a `partialFingerprints` entry built from what identifies
the finding across runs (where, which model, which code, which term), never
from its message, whose numbers change from run to run. A model that could
not be analysed is a tool execution notification.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from typing import Optional
from urllib.parse import quote

from lossmap import __version__
from lossmap.ci.locate import locate, model_location
from lossmap.ci.outcome import worst
from lossmap.ci.rules import RULES, plain, rule

VERSION = "2.1.0"
SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT = "lossmap/v1"
SRCROOT = "%SRCROOT%"
LEVEL = {"error": "error", "warning": "warning", "info": "note"}


def render(outcomes, fail_on: str, cwd: Optional[str] = None) -> str:
    rules = list(RULES.values())
    for code in sorted({f["code"] for o in outcomes if o.document() for f in o.document()["findings"]}):
        if code not in RULES:
            rules.append(rule(code))  # a code without a description yet still gets a rule
    index = {r.code: i for i, r in enumerate(rules)}
    results, seen = [], Counter()
    for o in outcomes:
        doc = o.document()
        for f in (doc["findings"] if doc else ()):
            results.append(result(doc, f, o.lock, index, seen, cwd))
    run = {
        "tool": {"driver": {"name": "lossmap", "version": __version__, "semanticVersion": __version__,
                            "rules": [descriptor(r) for r in rules]}},
        "automationDetails": {"id": "lossmap/"},
        "originalUriBaseIds": {SRCROOT: {"uri": _dir_uri(cwd or os.getcwd())}},
        "invocations": [invocation(outcomes, fail_on)],
        "results": results,
    }
    return json.dumps({"$schema": SCHEMA_URI, "version": VERSION, "runs": [run]}, indent=2, allow_nan=False) + "\n"


def descriptor(r) -> dict:
    """A rule: id, name, short and full description, help, default level."""
    name = "".join(part.capitalize() for part in r.code.split("_"))
    return {
        "id": r.code,
        "name": name,
        "shortDescription": {"text": r.title},
        "fullDescription": {"text": plain(r.when)[:1].upper() + plain(r.when)[1:] + "."},
        "help": {"text": plain(r.help), "markdown": r.help},
        "defaultConfiguration": {"level": r.sarif_level},
        "properties": {"tags": ["lossmap", "keras", "loss"], "precision": "very-high"},
    }


def result(doc: dict, f: dict, lock, index: dict, seen: Counter, cwd: Optional[str]) -> dict:
    where = locate(doc, f, lock, cwd)
    name = doc["model"]["name"]
    physical = {"artifactLocation": _artifact(where, doc), "region": {"startLine": (where.line if where else None) or 1}}
    identity = "\0".join([physical["artifactLocation"]["uri"], name, f["code"], f["term"] or ""])
    seen[identity] += 1  # the same code on the same term twice (two conflicts of one term) stays two alerts
    digest = hashlib.sha256(f"{identity}\0{seen[identity]}".encode("utf-8")).hexdigest()
    props = {"model": name, "modelSource": doc["model"]["source"], "lossmapLevel": f["level"]}
    if f["term"]:
        props["term"] = f["term"]
    return {
        "ruleId": f["code"],
        "ruleIndex": index[f["code"]],
        "level": LEVEL[f["level"]],
        "message": {"text": f"{name}: {f['message']}"},
        "locations": [{"physicalLocation": physical}],
        "partialFingerprints": {FINGERPRINT: digest},
        "properties": props,
    }


def _artifact(where, doc: dict) -> dict:
    if where is None:  # no file at all (a live model): the model as the tool names it
        return {"uri": quote(doc["model"]["source"])}
    if where.inside:
        return {"uri": where.uri, "uriBaseId": SRCROOT}
    return {"uri": where.uri}


def invocation(outcomes, fail_on: str) -> dict:
    notes = []
    for o in outcomes:
        if o.document() is None:
            where = model_location(o.model)
            note = {"level": "error", "message": {"text": o.error or f"{o.model}: failed"},
                    "properties": {"model": o.model, "exitCode": o.exit_code}}
            if where is not None:
                note["locations"] = [{"physicalLocation": {"artifactLocation": _artifact(where, {})}}]
            notes.append(note)
    code = worst(o.exit_code for o in outcomes)
    return {"executionSuccessful": code < 2, "exitCode": code, "toolExecutionNotifications": notes,
            "properties": {"failOn": fail_on}}


def _dir_uri(path: str) -> str:
    uri = "file://" + quote(os.path.abspath(path).replace(os.sep, "/"))
    return uri if uri.endswith("/") else uri + "/"
