"""`lossmap check --format github`: workflow commands for GitHub Actions, and the job summary.

Findings become `::error` / `::warning` / `::notice` annotations at the file and
line they concern (`lossmap.ci.locate`), escaped as the Actions toolkit escapes
them (`command.ts`: `%`, CR and LF in data; also `:` and `,` in properties).
GitHub displays 10 annotations of each level per step: past that, the most
important nine (by the rule table's order) and one saying how many more. Each
model's explanation goes in a collapsed log group, printed between
`::stop-commands::` markers so that no name in it can issue a command. With
`GITHUB_STEP_SUMMARY` set, a Markdown summary is appended to that file.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from lossmap.ci.locate import locate, model_location
from lossmap.ci.outcome import headline
from lossmap.ci.rules import rule

LIMIT = 10  # annotations of one level that GitHub displays for a step
COMMAND = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str, **properties) -> str:
    """One workflow command, `::name key=value,key=value::message`; empty properties are left out."""
    props = ",".join(f"{k}={escape_property(str(v))}" for k, v in properties.items() if v not in (None, ""))
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


@dataclass
class Annotation:
    level: str  # error | warning | notice
    title: str
    message: str
    file: Optional[str] = None
    line: Optional[int] = None
    rank: int = 0  # lower is shown first
    code: str = ""

    def command(self) -> str:
        return command(self.level, self.message, file=self.file, line=self.line, title=self.title)


def render(outcomes, fail_on: str, summary_path: Optional[str] = None, cwd: Optional[str] = None) -> str:
    """What `--format github` prints; appends the job summary to `summary_path` when given."""
    lines = []
    for o in outcomes:
        lines += log_group(o, fail_on)
    lines += [a.command() for a in limited(annotations(outcomes, cwd), has_summary=bool(summary_path))]
    for o in outcomes:
        lines.append(f"lossmap: {o.model}: {headline(o, fail_on)} (exit {o.exit_code})")
    if summary_path:
        append_summary(summary_path, outcomes, fail_on)
    return "\n".join(lines) + "\n"


def append_summary(path: str, outcomes, fail_on: str) -> None:
    """Append the Markdown summary; a summary that cannot be written costs a line on stderr, not the verdict."""
    import sys

    from lossmap.ci.summary import markdown

    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown(outcomes, fail_on))
    except OSError as exc:
        print(f"lossmap: cannot write the job summary to {path}: {exc.strerror}", file=sys.stderr)


def log_group(outcome, fail_on: str) -> list:
    """The model's text explanation in a collapsed group, with workflow commands stopped inside it."""
    if outcome.analysis is None:
        return []
    from lossmap.ci.text import explanation

    body = explanation(outcome)
    token = "lossmap-" + hashlib.sha256(body.encode("utf-8")).hexdigest()[:20]
    return [f"::group::lossmap {escape_data(outcome.model)}: {escape_data(headline(outcome, fail_on))}",
            f"::stop-commands::{token}", body.rstrip("\n"), f"::{token}::", "::endgroup::"]


def annotations(outcomes, cwd: Optional[str] = None) -> list:
    """Every annotation, in each model's order: could-not-analyse first, then the findings."""
    out = []
    for o in outcomes:
        doc = o.document()
        if doc is None:
            where = model_location(o.model, cwd)
            inside = where is not None and where.inside
            out.append(Annotation("error", f"lossmap: could not analyse {o.model}", o.error or "failed",
                                  where.path if inside else None, where.line if inside else None, -1))
            continue
        for f in doc["findings"]:
            where = locate(doc, f, o.lock, cwd)
            inside = where is not None and where.inside
            message = (f"{f['term']}: " if f["term"] and not f["message"].startswith(f["term"]) else "") + f["message"]
            out.append(Annotation(COMMAND[f["level"]], f"lossmap {doc['model']['name']}: {f['code']}", message,
                                  where.path if inside else None, where.line if inside else None,
                                  rule(f["code"]).rank, f["code"]))
    return out


def limited(items, has_summary: bool) -> list:
    """At most LIMIT of each level: the most important, then one saying how many more there are."""
    out = []
    for level in ("error", "warning", "notice"):
        mine = [a for a in items if a.level == level]
        ordered = sorted(range(len(mine)), key=lambda i: (mine[i].rank, i))
        if len(mine) <= LIMIT:
            out += [mine[i] for i in sorted(ordered)]
            continue
        shown = sorted(ordered[:LIMIT - 1])
        rest = [mine[i] for i in ordered[LIMIT - 1:]]
        out += [mine[i] for i in shown]
        out.append(_more(level, rest, has_summary))
    return out


def _more(level: str, rest: list, has_summary: bool) -> Annotation:
    counts = Counter(a.code or "could not analyse" for a in rest)
    listed = ", ".join(f"{code} x{n}" if n > 1 else code for code, n in sorted(counts.items()))
    noun = {"error": "errors", "warning": "warnings", "notice": "notices"}[level]
    where = "the job summary" if has_summary else "the log above"
    return Annotation(level, f"lossmap: {len(rest)} more {noun}",
                      f"{len(rest)} more {noun} than GitHub shows as annotations ({listed}); see {where}",
                      rank=10 ** 6)
