"""The HTML report: one self-contained file (inline CSS and SVG, no requests of any kind).

Reads only the `Analysis`; never calls Keras. Tables and text are rendered
here, server-side, so the page reads with JavaScript off; the little script in
the template only adds conveniences (expand/collapse all).
"""
from __future__ import annotations

import functools
import json
import platform
import sys

from lossmap import gradient_layout as layout
from lossmap.groups import KIND_LABEL, KIND_ORDER, count_label
from lossmap.render import anchor_id, environment, format_number, svg
from lossmap.render.backends import view as backends_view
from lossmap.render.text import describe, render_equation, verdict

GROUP_OPEN_LIMIT = 12  # a kind with more terms than this starts collapsed


def render(analysis, command: str | None = None) -> str:
    env = environment(autoescape=True)
    env.globals["anchor"] = anchor_id
    env.globals["json_script"] = json_script
    template = env.get_template("report.html.j2")
    return template.render(**context(analysis, command))


def context(analysis, command=None) -> dict:
    """Everything the template shows, as plain values: built before any markup."""
    scale = sum(abs(t.contribution) for t in analysis.terms) or 1.0
    rows = [_term_row(analysis, t, scale) for t in analysis.terms]
    g = analysis.gradients
    return {
        "a": analysis,
        "rows": rows,
        "groups": _kind_sections(analysis, rows, scale),
        "equation": _equation(analysis, rows),
        "equation_text": render_equation(analysis),
        "verdict": verdict(analysis),
        "verdict_class": "ok" if analysis.total.verified else "bad",
        "graph": svg.loss_graph(analysis).svg,
        "layers": _layer_index(analysis),
        "gradient_bars": svg.gradient_share_bars(analysis) if g else None,
        "layer_heatmap": svg.layer_heatmap(analysis) if g else None,
        "cosine_heatmap": svg.cosine_heatmap(analysis) if g else None,
        "code_css": code_css(),
        "walkthrough": [_step_view(s) for s in getattr(analysis, "walkthrough", []) or []],
        "user_step": [_step_view(s) for s in getattr(analysis, "step_view", None) or []],
        "call_sites": _call_site_views(analysis),
        "findings": _finding_views(analysis),
        "json_doc": analysis.to_dict(),
        "env": _environment(analysis, command),
        "num": format_number,
        "bv": backends_view(analysis.backend_comparison) if getattr(analysis, "backend_comparison", None) else None,
    }


def _term_row(analysis, t, scale: float) -> dict:
    return {
        "t": t,
        "anchor": anchor_id("term", t.id),
        "kind_label": KIND_LABEL.get(t.kind, t.kind),
        "what": describe(t),
        "value": format_number(t.value),
        "weight": format_number(t.weight),
        "contribution": format_number(t.contribution),
        "share": abs(t.contribution) / scale,
        "share_text": f"{100.0 * abs(t.contribution) / scale:.1f}%",
        "config": _config_text(t.config),
        "call_sites": analysis.call_sites.get(t.id, []) if getattr(analysis, "call_sites", None) else [],
        "findings": [f for f in analysis.findings if f.term == t.id],
        "gradient": _gradient_view(analysis.gradients, t.id),
    }


def _gradient_view(g, term_id):
    """A term's gradient summary for its row, with how many layers its unit reaches."""
    entry = (g or {}).get("terms", {}).get(term_id)
    if entry is None:
        return None
    unit = layout.unit_of(g, term_id) or {}
    return dict(entry, layers=sum(stop - start for start, stop in (unit.get("reach") or {}).get("layers", ())),
                members=len(unit.get("terms") or ()))


def _kind_sections(analysis, rows: list, scale: float) -> list:
    """The term table: one collapsible section per kind, holding the groups of `analysis.grouping`."""
    group_of = analysis.grouping.group_of()
    sections = []
    for kind in KIND_ORDER:
        members = [r for r in rows if r["t"].kind == kind]
        if not members:
            continue
        sections.append({
            "kind": kind,
            "label": count_label(kind, len(members)),
            "rows": members,
            "subgroups": _subgroups(members, analysis.grouping.groups, group_of),
            "loose_rows": [r for r in members if r["t"].id not in group_of],
            "count": len(members),
            "subtotal": format_number(sum(r["t"].contribution for r in members)),
            "share_text": f"{100.0 * sum(abs(r['t'].contribution) for r in members) / scale:.1f}%",
            "open": len(members) <= GROUP_OPEN_LIMIT,
            "by_layer": _by_layer(members) if len(members) > GROUP_OPEN_LIMIT else None,
            "anchor": anchor_id("group", kind),
        })
    return sections


def _subgroups(members: list, groups: list, group_of: dict) -> list:
    out = []
    for grp in groups:
        rows_in = [r for r in members if group_of.get(r["t"].id) is grp]
        if rows_in:
            out.append({"label": grp.label, "anchor": anchor_id("group", grp.key), "count": len(rows_in),
                        "subtotal": format_number(sum(r["t"].contribution for r in rows_in)), "rows": rows_in})
    return out


# ---------------------------------------------------------------- pieces
EQUATION_TERMS = 12  # beyond this, additional terms of one kind become one addend of the equation


def _equation(analysis, rows):
    parts = []
    kinds = {}
    for r in rows:
        kinds.setdefault(r["t"].kind, []).append(r)
    grouped = {k for k, members in kinds.items()
               if len(rows) > EQUATION_TERMS and k != "compiled" and len(members) > 3}
    scale = sum(abs(r["t"].contribution) for r in rows) or 1.0
    for r in rows:
        t = r["t"]
        if t.kind in grouped:
            members = kinds[t.kind]
            if r is members[0]:
                subtotal = sum(m["t"].contribution for m in members)
                parts.append({
                    "anchor": anchor_id("group", t.kind),
                    "weight": None,
                    "value": format_number(subtotal),
                    "label": f"{count_label(t.kind, len(members))}: {describe(t)}, ...",
                    "share_text": f"{100.0 * sum(abs(m['t'].contribution) for m in members) / scale:.1f}%",
                    "kind": t.kind,
                })
            continue
        parts.append({
            "anchor": r["anchor"],
            "weight": None if t.weight == 1.0 else format_number(t.weight),
            "value": format_number(t.value),
            "label": describe(t),
            "share_text": r["share_text"],
            "kind": t.kind,
        })
    return {"total": format_number(analysis.total.reproduced), "parts": parts}


def _layer_index(analysis):
    """Every layer or output the page links to: what it owns, what scores it, what pushes it."""
    entries = {}

    def entry(name):
        return entries.setdefault(name, {"name": name, "anchor": anchor_id("layer", name),
                                         "owns": [], "scored_by": [], "pushed_by": []})

    for t in analysis.terms:
        if t.kind == "compiled" and t.output:
            entry(t.output)["scored_by"].append((t.id, anchor_id("term", t.id)))
        elif t.layer:
            entry(t.layer)["owns"].append((t.id, anchor_id("term", t.id)))
    g = analysis.gradients or {}
    for unit in g.get("units", []):
        for layer, norm in layout.per_layer(g, unit).items():
            entry(layer)["pushed_by"].append((unit["label"], norm))
    for e in entries.values():
        e["pushed_by"].sort(key=lambda kv: -kv[1])
        e["pushed_by"] = [(label, format_number(norm, 4)) for label, norm in e["pushed_by"][:6]]
    return list(entries.values())


def _by_layer(rows):
    """Subtotals per top-level block (first path component) for big groups."""
    blocks = {}
    for r in rows:
        t = r["t"]
        key = (t.layer or t.variable or t.id).split("/")[0]
        b = blocks.setdefault(key, {"block": key, "count": 0, "subtotal": 0.0})
        b["count"] += 1
        b["subtotal"] += t.contribution
    out = list(blocks.values())
    for b in out:
        b["subtotal"] = format_number(b["subtotal"])
    return out


def _config_text(config):
    if not config:
        return ""
    items = []
    for k, v in config.items():
        if k in ("name", "fn"):
            continue
        items.append(f"{k}={format_number(v) if isinstance(v, float) else v}")
    return ", ".join(items)


@functools.lru_cache(maxsize=1)
def code_css() -> str:
    from pygments.formatters import HtmlFormatter

    light = HtmlFormatter(style="friendly").get_style_defs(".code")
    dark = HtmlFormatter(style="github-dark").get_style_defs(".code")
    return f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}"


def highlight_lines(lines):
    """Pygments-highlighted HTML for each source line (tokens spanning lines are closed per line)."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    text = "\n".join(line.text if hasattr(line, "text") else line["text"] for line in lines)
    out = highlight(text, PythonLexer(stripnl=False, ensurenl=False), HtmlFormatter(nowrap=True))
    rendered = out.split("\n")
    rendered += [""] * (len(lines) - len(rendered))
    return rendered[: len(lines)]


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


CONTEXT_LINES = 3  # shown around each highlighted line; longer stretches between are folded
MIN_FOLD = 5


def _code_view(lines):
    """Rows for a code block: the lines that matter, with context; other stretches folded.

    The whole function is highlighted first (so the lexer sees docstrings whole), then
    runs of at least MIN_FOLD lines away from any highlighted line become one fold row.
    """
    lines = list(lines or [])
    htmls = highlight_lines(lines) if lines else []
    marked = [i for i, line in enumerate(lines) if _get(line, "highlight")]
    keep = set(range(min(2, len(lines)))) | {len(lines) - 1}
    for i in marked:
        keep.update(range(max(0, i - CONTEXT_LINES), min(len(lines), i + CONTEXT_LINES + 1)))
    if not marked:
        keep = set(range(len(lines)))
    out, i = [], 0
    while i < len(lines):
        j = i
        while j < len(lines) and j not in keep:
            j += 1
        if j - i >= MIN_FOLD:
            out.append({"fold": j - i, "first": _get(lines[i], "number"), "last": _get(lines[j - 1], "number")})
            i = j
            continue
        for k in range(i, max(j, i + 1)):
            out.append({
                "fold": None,
                "number": _get(lines[k], "number"),
                "html": htmls[k],
                "highlight": bool(_get(lines[k], "highlight")),
                "note": _get(lines[k], "note"),
                "terms": [{"id": t, "anchor": anchor_id("term", t)} for t in (_get(lines[k], "terms") or [])],
            })
        i = max(j, i + 1)
    return out


def _step_view(step):
    return {
        "key": _get(step, "key"),
        "anchor": anchor_id("step", _get(step, "key") or ""),
        "title": _get(step, "title"),
        "explanation": _get(step, "explanation"),
        "path": _get(step, "display_path") or _get(step, "file"),
        "qualname": _get(step, "qualname"),
        "start": _get(step, "start_line"),
        "end": _get(step, "end_line"),
        "found": _get(step, "found", True),
        "missing": _get(step, "missing"),
        "lines": _code_view(_get(step, "lines")) if _get(step, "found", True) else [],
    }


def _call_site_views(analysis):
    sites = getattr(analysis, "call_sites", None) or {}
    out = []
    for t in analysis.terms:
        for i, site in enumerate(sites.get(t.id, [])):
            out.append({
                "term": t.id,
                "term_anchor": anchor_id("term", t.id),
                "anchor": anchor_id("site", f"{t.id}-{i}"),
                "path": _get(site, "display_path") or _get(site, "file"),
                "qualname": _get(site, "qualname"),
                "start": _get(site, "start_line"),
                "found": _get(site, "found", True),
                "missing": _get(site, "missing"),
                "lines": _code_view(_get(site, "lines")) if _get(site, "found", True) else [],
            })
    return out


FINDING_STEPS = {
    "ADD_LOSS_NON_SCALAR": "aggregate_additional_loss",
    "PER_OUTPUT_LOGS_UNWEIGHTED": "compiled_loss",
    "ZERO_LOSS_WEIGHT": "compiled_loss",
    "CROSSENTROPY_FROM_LOGITS": "get_logits",
    "FROM_LOGITS_ON_PROBABILITIES": "get_logits",
    "REDUCTION_NONE": "reduce_values",
    "REGULARIZER_ON_FROZEN_WEIGHT": "regularization_losses",
    "CUSTOM_COMPUTE_LOSS": "compute_loss",
    "CUSTOM_TRAIN_STEP": "train_step",
    "TOTAL_MISMATCH": "compute_loss",
}


def _finding_views(analysis):
    steps = {_get(s, "key") for s in getattr(analysis, "walkthrough", []) or [] if _get(s, "found", True)}
    term_ids = {t.id for t in analysis.terms}
    out = []
    for f in analysis.findings:
        step = FINDING_STEPS.get(f.code)
        out.append({
            "f": f,
            "term_anchor": anchor_id("term", f.term) if f.term in term_ids else None,
            "members": [(t, anchor_id("term", t)) for t in (getattr(f, "terms", None) or []) if t in term_ids],
            "step_anchor": anchor_id("step", step) if step in steps else None,
        })
    order = {"error": 0, "warning": 1, "info": 2}
    out.sort(key=lambda v: order.get(v["f"].level, 3))
    return out


def _environment(analysis, command):
    import lossmap

    m = analysis.model
    versions = [("lossmap", lossmap.__version__), ("keras", m.keras_version), ("backend", m.backend),
                ("python", platform.python_version()), ("platform", platform.platform(terse=True))]
    tf_version = sys.modules.get("tensorflow")
    if tf_version is not None:
        versions.insert(3, ("tensorflow", getattr(tf_version, "__version__", "?")))
    default = ("lossmap.explain(model)  # in Python" if m.source.startswith("<live")
               else f"lossmap report {m.source}")
    return {"versions": versions, "command": command or default,
            "saved_with": m.saved_with}


def json_script(doc) -> str:
    """JSON safe inside <script type="application/json">: no '</' or '<!--' can end the element."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)  # compact: this page's largest part
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
