"""`--format text` and `--format json` for one or several models.

One model prints exactly what it always has (plus the lock file's diff when
`--lock` is given); several print one after the other and end with a line per
model. JSON for one model is the contract's document; for several, one
document `{"schema": "lossmap-runs/1", "exit_code", "fail_on", "models": [...]}`
with an entry `{"model", "exit_code", "document"}` per model (`"error"`, the
one-line message, instead of `"document"` for a model that could not be analysed).
"""
from __future__ import annotations

import json

from lossmap.ci.outcome import headline, worst

RUNS_SCHEMA = "lossmap-runs/1"


def explanation(outcome) -> str:
    """The text explanation of one analysed model, and its lock diff."""
    from lossmap.render.text import render

    out = render(outcome.analysis)
    if outcome.lock is not None:
        out += "\n" + outcome.lock.text()
    return out


def render_text(outcomes, fail_on: str) -> str:
    analysed = [o for o in outcomes if o.analysis is not None]
    if len(outcomes) == 1:
        return explanation(analysed[0]) if analysed else ""
    parts = [explanation(o) for o in analysed]
    summary = [f"lossmap: {o.model}: {headline(o, fail_on)} (exit {o.exit_code})" for o in outcomes]
    summary.append(f"lossmap: {len(outcomes)} models, exit {worst(o.exit_code for o in outcomes)}")
    return ("\n" + "=" * 78 + "\n\n").join(parts) + ("\n" if parts else "") + "\n".join(summary) + "\n"


def render_json(outcomes, fail_on: str) -> str:
    if len(outcomes) == 1:
        doc = outcomes[0].document()
        return "" if doc is None else json.dumps(doc, indent=2, allow_nan=False) + "\n"
    models = [{"model": o.model, "exit_code": o.exit_code,
               **({"document": o.document()} if o.document() is not None else {"error": o.error})}
              for o in outcomes]
    runs = {"schema": RUNS_SCHEMA, "exit_code": worst(o.exit_code for o in outcomes), "fail_on": fail_on,
            "models": models}
    return json.dumps(runs, indent=2, allow_nan=False) + "\n"
