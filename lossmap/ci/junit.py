"""`lossmap check --format junit`: JUnit XML, so GitLab and Jenkins list lossmap with the test results.

A test suite per model, with a test case for the verification, one for the lock
file (with `--lock`), one per finding code and one per term. A case fails when
what it covers reaches `--fail-on` (a mismatch, a lock change, a finding); a
model that could not be analysed (exit 2) or hit an internal error (exit 3) is
one case with an `<error>`.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from lossmap.ci.outcome import LEVEL_ORDER, headline, verification
from lossmap.render import format_number

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def clean(text) -> str:
    """Text XML 1.0 can hold (control characters dropped)."""
    return _XML_INVALID.sub("", str(text))


def render(outcomes, fail_on: str) -> str:
    root = ET.Element("testsuites", name="lossmap")
    for o in outcomes:
        root.append(suite(o, fail_on))
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(s.get(key)) for s in root)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def suite(outcome, fail_on: str) -> ET.Element:
    doc = outcome.document()
    name = clean(outcome.name)
    s = ET.Element("testsuite", name=f"lossmap {name}")
    if outcome.seconds is not None:
        s.set("time", f"{outcome.seconds:.3f}")
    props = ET.SubElement(s, "properties")
    for key, value in _properties(outcome, fail_on):
        ET.SubElement(props, "property", name=key, value=clean(value))
    cls = f"lossmap.{name}"
    if doc is None:
        case = ET.SubElement(s, "testcase", classname=cls, name="analysis")
        ET.SubElement(case, "error", message=clean(outcome.error or "failed"),
                      type=f"lossmap exit {outcome.exit_code}").text = clean(outcome.error or "")
    else:
        s.append(_verification(doc, cls))
        if outcome.lock is not None:
            s.append(_lock(outcome.lock, cls))
        for case in _finding_cases(doc, cls, fail_on) + _term_cases(doc, cls, fail_on):
            s.append(case)
    cases = s.findall("testcase")
    s.set("tests", str(len(cases)))
    for key, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        s.set(key, str(sum(1 for c in cases if c.find(tag) is not None)))
    return s


def _properties(outcome, fail_on):
    out = [("model", outcome.model), ("exit_code", outcome.exit_code), ("fail_on", fail_on),
           ("verdict", headline(outcome, fail_on))]
    doc = outcome.document()
    if doc is not None:
        out += [("engine", doc["model"]["engine"]), ("keras_version", doc["model"]["keras_version"])]
    return out


def _case(cls: str, name: str, out: str = "", failure=None) -> ET.Element:
    case = ET.Element("testcase", classname=cls, name=clean(name))
    if failure is not None:
        message, kind, body = failure
        ET.SubElement(case, "failure", message=clean(message), type=kind).text = clean(body)
    if out:
        ET.SubElement(case, "system-out").text = clean(out)
    return case


def _verification(doc: dict, cls: str) -> ET.Element:
    total = doc["total"]
    what = verification(doc)
    body = (f"reproduced {format_number(total['reproduced'], 8)}, compute_loss "
            f"{format_number(total['compute_loss'], 8)}, train_step {format_number(total['train_step'], 8)}, "
            f"max |diff| {format_number(total['max_abs_diff'], 3)} (rtol {total['rtol']:g}, atol {total['atol']:g})")
    if what == "MISMATCH":
        return _case(cls, "verification", failure=(f"MISMATCH: {body}", "TOTAL_MISMATCH", body))
    case = _case(cls, "verification", out=f"{what}: {body}")
    if what == "NOT VERIFIED":
        ET.SubElement(case, "skipped", message="Keras computed no total to compare with")
    return case


def _lock(lock, cls: str) -> ET.Element:
    name = f"lock {lock.path}"
    if lock.changed:
        return _case(cls, name, failure=("the loss composition changed", "lossmap.lock", lock.text()))
    return _case(cls, name, out=lock.text())


def _finding_cases(doc: dict, cls: str, fail_on: str) -> list:
    by_code = {}
    for f in doc["findings"]:
        by_code.setdefault(f["code"], []).append(f)
    cases = []
    for code, found in by_code.items():
        text = "\n".join(f"[{f['level']}] {f['term'] + ': ' if f['term'] else ''}{f['message']}" for f in found)
        failing = [f for f in found if LEVEL_ORDER[f["level"]] >= LEVEL_ORDER[fail_on]]
        failure = (failing[0]["message"], code, text) if failing else None
        cases.append(_case(f"{cls}.findings", code, out="" if failing else text, failure=failure))
    return cases


def _term_cases(doc: dict, cls: str, fail_on: str) -> list:
    cases = []
    for t in doc["terms"]:
        mine = [f for f in doc["findings"] if f["term"] == t["id"]]
        failing = [f for f in mine if LEVEL_ORDER[f["level"]] >= LEVEL_ORDER[fail_on]]
        body = (f"{t['kind']}: value {format_number(t['value'])} x weight {format_number(t['weight'])} = "
                f"{format_number(t['contribution'])}" + "".join(f"\n  - {s}" for s in t.get("steps") or ()))
        body += "".join(f"\n[{f['level']}] {f['code']}: {f['message']}" for f in mine)
        failure = (f"{failing[0]['code']}: {failing[0]['message']}", failing[0]["code"], body) if failing else None
        cases.append(_case(f"{cls}.terms", t["id"], out="" if failing else body, failure=failure))
    return cases
