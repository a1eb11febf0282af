"""The Markdown job summary (`GITHUB_STEP_SUMMARY`): per model the verdict, the equation with this batch's
numbers, the term table, the verification, the lock diff and the findings.

Every name from the model is escaped (Markdown and HTML), and code blocks get a
fence longer than any run of backticks in them. Long tables are cut (GitHub
takes 1 MiB of summary per step), saying how much was left out.
"""
from __future__ import annotations

import re

from lossmap.ci.outcome import headline, verification
from lossmap.ci.rules import LEVELS, rule
from lossmap.render import format_number

MAX_TERMS = 50  # rows of the term table
MAX_EQUATION = 40  # lines of the equation
MAX_FINDINGS = 100
ICON = {0: "✅", 1: "❌"}
_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(text) -> str:
    """Plain text in Markdown (a table cell, a heading): no markup, no HTML, one line."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", " ".join(text.split()))


def code_block(text: str, language: str = "text") -> list:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, text.rstrip("\n"), fence]


def markdown(outcomes, fail_on: str) -> str:
    return "".join(section(o, fail_on) for o in outcomes)


def section(outcome, fail_on: str) -> str:
    doc = outcome.document()
    icon = ICON.get(outcome.exit_code, "⚠️")
    if doc is None:
        return "\n".join([f"## {icon} lossmap {md(outcome.model)}: {headline(outcome, fail_on)}", "",
                          f"exit {outcome.exit_code}: {md(outcome.error or '')}", "", ""])
    model, batch = doc["model"], doc["batch"]
    seed = f", seed {batch['seed']}" if batch.get("seed") is not None else ""
    lines = [f"## {icon} lossmap {md(model['name'])}: {headline(outcome, fail_on)}", "",
             f"{md(model['source'])} · engine {md(model['engine'])}, Keras {md(model['keras_version'])} · "
             f"batch: {md(batch['source'])}, {batch['size']} samples{seed} · exit {outcome.exit_code} "
             f"(--fail-on {fail_on})", ""]
    lines += code_block(equation(outcome.analysis)) + [""]
    lines += term_table(doc) + [""]
    lines += [verification_line(doc), ""]
    if outcome.lock is not None:
        lines += [f"**Lock** {md(outcome.lock.path)}: "
                  + ("changed" if outcome.lock.changed else "unchanged"), ""]
        if outcome.lock.changes:
            lines += code_block(outcome.lock.text(), "diff") + [""]
    lines += findings_table(doc) + ["", ""]
    return "\n".join(lines)


def equation(analysis) -> str:
    from lossmap.render.text import equation_parts

    parts = equation_parts(analysis)
    shown = parts[:MAX_EQUATION]
    if len(parts) > len(shown):
        shown.append(f"... {len(parts) - len(shown)} more terms (lossmap explain shows them all)")
    rhs = "\n     + ".join(shown) if shown else "0"
    return f"loss {format_number(analysis.total.reproduced)} =\n       {rhs}"


def term_table(doc: dict) -> list:
    terms = doc["terms"]
    scale = sum(abs(t["contribution"] or 0.0) for t in terms) or 1.0
    keep = set(sorted(range(len(terms)), key=lambda i: -abs(terms[i]["contribution"] or 0.0))[:MAX_TERMS])
    lines = ["| term | kind | value | weight | contribution | share |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for i, t in enumerate(terms):
        if i in keep:
            share = 100.0 * abs(t["contribution"] or 0.0) / scale
            lines.append(f"| {md(t['id'])} | {md(t['kind'])} | {format_number(t['value'])} | "
                         f"{format_number(t['weight'])} | {format_number(t['contribution'])} | {share:.1f}% |")
    if len(terms) > len(keep):
        lines += ["", f"{len(terms) - len(keep)} smaller terms not shown (the {len(keep)} largest contributions are)."]
    return lines


def verification_line(doc: dict) -> str:
    total = doc["total"]
    return (f"**Verification** ({md(total.get('path', ''))}, rtol {total['rtol']:g}, atol {total['atol']:g}): "
            f"reproduced {format_number(total['reproduced'], 8)}, compute_loss "
            f"{format_number(total['compute_loss'], 8)}, train_step {format_number(total['train_step'], 8)}, "
            f"max \\|diff\\| {format_number(total['max_abs_diff'], 3)} → **{verification(doc)}**")


def findings_table(doc: dict) -> list:
    findings = doc["findings"]
    if not findings:
        return ["**Findings**: none"]
    lines = ["**Findings**", "", "| level | code | term | message |", "| --- | --- | --- | --- |"]
    order = sorted(range(len(findings)), key=lambda i: (-LEVELS.index(findings[i]["level"]),
                                                         rule(findings[i]["code"]).rank, i))
    for f in [findings[i] for i in order[:MAX_FINDINGS]]:
        lines.append(f"| {f['level']} | {md(f['code'])} | {md(f['term'] or '')} | {md(f['message'])} |")
    if len(findings) > MAX_FINDINGS:
        lines += ["", f"{len(findings) - MAX_FINDINGS} more findings: run lossmap check locally to see them all."]
    return lines
