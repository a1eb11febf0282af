"""`lossmap check --format github|sarif|junit`: what each format says, from analyses made once.

The formats read the data model only, so most cases render outcomes built from
the session's analyses (the bundled example, the hostile-names model) without
running Keras again; `tests/test_ci_lock.py` runs the command line.
"""
import copy
import json
import os
import re
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from conftest import HOSTILE_IMG, HOSTILE_SCRIPT
from lossmap.analysis import Finding
from lossmap.ci import github, junit, sarif, summary
from lossmap.ci.outcome import Outcome, exit_code
from lossmap.ci.rules import RULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(REPO, "tests", "data", "sarif-schema-2.1.0.json")


def outcome(analysis, findings=None, model="lossmap.examples:multitask", fail_on="error"):
    a = copy.deepcopy(analysis)  # the session's analysis stays as it is
    if findings is not None:
        a.findings = list(a.findings) + findings
    return Outcome(model, exit_code(a, fail_on), a, seconds=1.5)


def failed(model="broken.keras", code=2, line="lossmap: broken.keras is truncated or damaged; save it again"):
    return Outcome(model, code, error=line)


def sarif_validator():
    with open(SCHEMA, encoding="utf-8") as fh:
        schema = json.load(fh)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


def unescape_property(text):  # the runner's ActionCommand.UnescapeProperty, in reverse order of escaping
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def unescape_data(text):
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def parse_command(line):
    """(name, properties, message) of one workflow command line, as the runner reads it."""
    m = re.fullmatch(r"::([a-z-]+)(?: ([^:]*))?::(.*)", line)
    assert m, line
    props = {}
    for pair in (m.group(2) or "").split(","):
        if pair:
            key, _, value = pair.partition("=")
            props[key] = unescape_property(value)
    return m.group(1), props, unescape_data(m.group(3))


# ---------------------------------------------------------------- GitHub workflow commands
def test_escaping_is_the_toolkits():
    assert github.escape_data("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext: a, b"
    assert github.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert github.command("error", "x", file="a,b.py", line=3, title=None) == "::error file=a%2Cb.py,line=3::x"
    assert github.command("notice", "m") == "::notice::m"
    hostile = "50% of: a,b\r\nc::d"
    name, props, message = parse_command(github.command("warning", hostile, title=hostile, file="f.py"))
    assert (name, props, message) == ("warning", {"title": hostile, "file": "f.py"}, hostile)


def test_github_output_for_the_example(example_analysis, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = github.render([outcome(example_analysis)], "error", summary_path=None)
    lines = out.splitlines()
    assert lines[0].startswith("::group::lossmap lossmap.examples:multitask: VERIFIED")
    token = lines[1].split("::stop-commands::")[1]
    end = lines.index(f"::{token}::")
    assert lines[end + 1] == "::endgroup::"
    commands = [parse_command(line) for line in lines[end + 2:] if line.startswith("::")]
    levels = {c[0] for c in commands}
    assert levels == {"notice"}, commands  # the example has info findings only
    by_code = {c[1]["title"].split(": ")[1]: c for c in commands}
    # a finding on a term without user code points at the factory's def line, relative to the working directory
    cross = by_code["CROSSENTROPY_FROM_LOGITS"][1]
    assert cross["file"] == "lossmap/examples/__init__.py"
    assert int(cross["line"]) == _line_of(os.path.join(REPO, "lossmap/examples/__init__.py"), "def multitask(")
    assert lines[-1] == "lossmap: lossmap.examples:multitask: VERIFIED (exit 0)"


def _line_of(path, needle):
    with open(path, encoding="utf-8") as fh:
        return next(i for i, line in enumerate(fh, 1) if line.startswith(needle))


def test_github_annotation_limits_keep_the_most_important(example_analysis):
    findings = [Finding("DEAD_TERM", "error", "compiled/kind", f"dead {i}") for i in range(20)]
    findings += [Finding("TOTAL_MISMATCH", "error", None, "the total differs")]
    findings += [Finding("LOCK_TERM_REMOVED", "error", "regularizer/trunk/kernel", "the L2 on trunk/kernel is gone")]
    findings += [Finding("GRADIENT_CONFLICT", "warning", "compiled/kind", f"conflict {i}") for i in range(3)]
    findings += [Finding("OPAQUE_TERM", "info", None, f"note {i}") for i in range(12)]
    out = github.render([outcome(example_analysis, findings), failed()], "error")
    commands = [parse_command(line) for line in out.splitlines() if re.match(r"::(error|warning|notice) ", line)]
    by_level = {level: [c for c in commands if c[0] == level] for level in ("error", "warning", "notice")}
    assert [len(v) for v in by_level.values()] == [10, 3, 10]
    errors = by_level["error"]
    titles = [c[1]["title"] for c in errors]
    assert "lossmap: could not analyse broken.keras" in titles  # the most important of all
    assert any(t.endswith("TOTAL_MISMATCH") for t in titles) and any(t.endswith("LOCK_TERM_REMOVED") for t in titles)
    # 23 errors (20 + 2 + the model that failed): 9 shown, the 14 least important counted
    assert titles[-1] == "lossmap: 14 more errors" and "(DEAD_TERM x14)" in errors[-1][2], errors[-1]
    assert by_level["notice"][-1][1]["title"] == "lossmap: 7 more notices"
    assert "see the log above" in errors[-1][2]


def test_github_output_cannot_be_hijacked_by_names(hostile_analysis):
    out = github.render([outcome(hostile_analysis, model="hostile.py:build")], "error")
    lines = out.splitlines()
    token = lines[1].split("::stop-commands::")[1]
    inside = lines[2:lines.index(f"::{token}::")]
    assert any(HOSTILE_IMG in line for line in inside)  # the names are shown, inside the stopped region
    outside = lines[lines.index(f"::{token}::"):]
    for line in outside:
        if line.startswith("::") and not line.startswith(("::endgroup::", f"::{token}::")):
            parse_command(line)  # every command outside it parses, with the names escaped
    assert all("\n" not in line and "\r" not in line for line in lines)


def test_step_summary_is_appended(example_analysis, hostile_analysis, tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("before\n", encoding="utf-8")
    outcomes = [outcome(example_analysis), outcome(hostile_analysis, model="hostile.py:build"), failed()]
    github.render(outcomes, "error", summary_path=str(path))
    text = path.read_text(encoding="utf-8")
    assert text.startswith("before\n")
    assert "## ✅ lossmap multitask: VERIFIED" in text
    assert "loss 1.75214 =\n       0.4 x 1.18499 (price, mean_squared_error)" in text
    for t in example_analysis.terms:
        assert f"| {summary.md(t.id)} |" in text
    assert "| info | CROSSENTROPY\\_FROM\\_LOGITS | compiled/kind |" in text
    assert "**Verification** (eager" in text and "→ **VERIFIED**" in text
    assert "## ⚠️ lossmap broken.keras: could not analyse" in text
    markup = re.sub(r"```text\n.*?\n```", "", text, flags=re.S)  # a code block shows names as they are
    assert HOSTILE_IMG not in markup and HOSTILE_SCRIPT not in markup  # elsewhere escaped: &lt;img ...
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


def test_summary_tables_are_cut_for_big_models():
    terms = [{"id": f"regularizer/d{i}/kernel", "kind": "weight_regularizer", "value": float(i), "weight": 1.0,
              "contribution": float(i)} for i in range(120)]
    lines = summary.term_table({"terms": terms})
    assert len([line for line in lines if line.startswith("| regularizer/")]) == summary.MAX_TERMS
    assert "| regularizer/d119/kernel |" in "\n".join(lines) and "| regularizer/d0/kernel |" not in "\n".join(lines)
    assert lines[-1].startswith("70 smaller terms not shown")


def test_markdown_escaping():
    assert summary.md("a|b_c*<x>\nnext") == "a\\|b\\_c\\*&lt;x&gt; next"
    assert summary.code_block("x ``` y")[0] == "````text"


# ---------------------------------------------------------------- SARIF
def test_sarif_is_valid_and_complete(example_analysis, hostile_analysis, monkeypatch):
    monkeypatch.chdir(REPO)
    extra = [Finding("DEAD_TERM", "error", "add_loss/penalty/0", "dead"),
             Finding("GRADIENT_CONFLICT", "warning", "compiled/kind", "one"),
             Finding("GRADIENT_CONFLICT", "warning", "compiled/kind", "two"),
             Finding("SOME_FUTURE_CODE", "warning", None, "a code without a description yet")]
    outcomes = [outcome(example_analysis, extra), outcome(hostile_analysis, model="hostile.py:build"), failed()]
    doc = json.loads(sarif.render(outcomes, "error"))
    errors = [e.message for e in sarif_validator().iter_errors(doc)]
    assert not errors, errors[:5]
    assert doc["version"] == "2.1.0" and len(doc["runs"]) == 1
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert set(RULES) <= set(ids) and "SOME_FUTURE_CODE" in ids
    for r in rules:
        assert r["shortDescription"]["text"] and r["fullDescription"]["text"] and r["help"]["text"], r
    results = run["results"]
    assert {r["level"] for r in results} == {"note", "warning", "error"}
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    dead = next(r for r in results if r["ruleId"] == "DEAD_TERM")
    where = dead["locations"][0]["physicalLocation"]
    # add_loss/penalty/0 comes from user code: the layer's class in the examples module
    assert where["artifactLocation"] == {"uri": "lossmap/examples/__init__.py", "uriBaseId": "%SRCROOT%"}
    assert where["region"]["startLine"] == example_analysis.term("add_loss/penalty/0").origin["line"]
    prints = [r["partialFingerprints"]["lossmap/v1"] for r in results]
    assert len(set(prints)) == len(prints)  # two conflicts of one term stay two alerts
    again = json.loads(sarif.render(outcomes, "error"))["runs"][0]["results"]
    assert prints == [r["partialFingerprints"]["lossmap/v1"] for r in again]
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert run["invocations"][0]["executionSuccessful"] is False and "broken.keras" in notes[0]["message"]["text"]


def test_sarif_fingerprints_ignore_the_numbers(example_analysis):
    a = outcome(example_analysis, [Finding("DEAD_TERM", "error", "compiled/kind", "gradient 1e-9")])
    b = outcome(example_analysis, [Finding("DEAD_TERM", "error", "compiled/kind", "gradient 3e-9")])
    prints = [{r["ruleId"]: r["partialFingerprints"] for r in json.loads(sarif.render([o], "error"))["runs"][0]["results"]}
              for o in (a, b)]
    assert prints[0] == prints[1]


# ---------------------------------------------------------------- JUnit
def test_junit_cases_failures_and_errors(example_analysis):
    extra = [Finding("ZERO_LOSS_WEIGHT", "warning", "compiled/price", "weight 0")]
    outcomes = [outcome(example_analysis, extra), failed(), failed("other.keras", 3, "lossmap: internal error: X")]
    for fail_on, expected_failures in (("error", 0), ("warning", 2)):
        root = ET.fromstring(junit.render(outcomes, fail_on))
        suites = root.findall("testsuite")
        assert [s.get("name") for s in suites] == ["lossmap multitask", "lossmap broken.keras", "lossmap other.keras"]
        cases = suites[0].findall("testcase")
        names = [c.get("name") for c in cases]
        codes = list(dict.fromkeys(f.code for f in example_analysis.findings + extra))
        assert names == ["verification"] + codes + [t.id for t in example_analysis.terms]
        failures = [c for c in cases if c.find("failure") is not None]
        assert len(failures) == expected_failures  # the ZERO_LOSS_WEIGHT case and its term's
        assert int(suites[0].get("failures")) == expected_failures and int(root.get("failures")) == expected_failures
        assert root.get("errors") == "2"
        errors = [s.find("testcase/error") for s in suites[1:]]
        assert [e.get("type") for e in errors] == ["lossmap exit 2", "lossmap exit 3"]
    assert "VERIFIED" in cases[0].find("system-out").text


def test_junit_mismatch_is_a_failure_and_text_is_clean(hostile_analysis):
    o = outcome(hostile_analysis, model="hostile.py:build")
    o.analysis.total.verified = False
    o.exit_code = exit_code(o.analysis)
    o.analysis.findings.append(Finding("TOTAL_MISMATCH", "error", None, "differs\x00\x1b[31m"))
    root = ET.fromstring(junit.render([o], "error"))
    verification = root.find("testsuite/testcase[@name='verification']")
    assert verification.find("failure").get("type") == "TOTAL_MISMATCH"
    assert any(HOSTILE_IMG in c.get("name") for c in root.iter("testcase"))  # escaped by the XML writer, kept
    assert "\x00" not in junit.render([o], "error")


@pytest.mark.parametrize("fmt", ["github", "sarif", "junit"])
def test_every_format_carries_the_same_verdict(example_analysis, fmt):
    good = outcome(example_analysis)
    bad = outcome(example_analysis, [Finding("LOCK_WEIGHT_CHANGED", "error", "compiled/kind", "0.6 -> 0")])
    render = {"github": lambda os_: github.render(os_, "error"), "sarif": lambda os_: sarif.render(os_, "error"),
              "junit": lambda os_: junit.render(os_, "error")}[fmt]
    assert (good.exit_code, bad.exit_code) == (0, 1)
    good_out, bad_out = render([good]), render([bad])
    if fmt == "github":
        assert "(exit 0)" in good_out and "(exit 1)" in bad_out and "::error " in bad_out
    elif fmt == "sarif":
        levels = [r["level"] for r in json.loads(bad_out)["runs"][0]["results"]]
        assert "error" in levels and "error" not in [r["level"] for r in json.loads(good_out)["runs"][0]["results"]]
    else:
        assert ET.fromstring(good_out).get("failures") == "0" and ET.fromstring(bad_out).get("failures") != "0"


def test_terms_from_custom_training_code_point_at_their_line(example_analysis, monkeypatch):
    """The custom-code stage sets `expression`, `source`, `objective` on its terms; every format reads them."""
    from lossmap.ci import lock

    monkeypatch.chdir(REPO)
    o = outcome(example_analysis, [Finding("MODEL_LOSSES_IGNORED", "error", "compiled/price", "no model.losses")])
    term = o.analysis.term("compiled/price")
    term.expression, term.objective = "0.4 * mse(y, p)", None
    term.source = {"file": os.path.join(REPO, "lossmap/examples/custom_loop.py"), "line": 7, "function": "step"}
    doc = o.document()
    assert doc["terms"][0]["source"]["line"] == 7 and doc["terms"][0]["expression"] == "0.4 * mse(y, p)"
    result = next(r for r in json.loads(sarif.render([o], "error"))["runs"][0]["results"]
                  if r["ruleId"] == "MODEL_LOSSES_IGNORED")
    assert result["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "lossmap/examples/custom_loop.py", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 7}}
    annotation = next(line for line in github.render([o], "error").splitlines()
                      if line.startswith("::error") and "MODEL_LOSSES_IGNORED" in line)
    assert annotation.startswith("::error file=lossmap/examples/custom_loop.py,line=7,")
    assert lock.entry(doc)["terms"]["compiled/price"]["expression"] == "0.4 * mse(y, p)"
