"""The terminal explanation: the equation with this batch's numbers, the terms, the findings."""
from __future__ import annotations

from lossmap import gradient_layout as layout
from lossmap.groups import KIND_LABEL
from lossmap.render import environment, format_number

def describe(term) -> str:
    if term.kind == "custom":
        line = (term.source or {}).get("line")
        return f"{term.expression or term.id}" + (f", line {line}" if line else "")
    if term.kind == "compiled":
        return f"{term.output}, {term.fn}"
    if term.kind == "weight_regularizer":
        return f"{term.fn} on {term.variable}"
    if term.kind == "activity_regularizer":
        return f"{term.fn} on the output of {term.layer}"
    return f"add_loss in {term.layer}"


def equation_parts(analysis):
    parts = []
    for t in analysis.terms:
        number = format_number(t.value)
        body = f"{format_number(t.weight)} x {number}" if t.weight != 1.0 else number
        parts.append(f"{body} ({describe(t)})")
    return parts


def render_equation(analysis) -> str:
    parts = equation_parts(analysis)
    rhs = "\n     + ".join(parts) if parts else "0"
    return f"loss {format_number(analysis.total.reproduced)} =\n       {rhs}"


def render(analysis, width: int = 100) -> str:
    env = environment(autoescape=False)
    template = env.get_template("explain.txt.j2")
    total = analysis.total
    scale = sum(abs(t.contribution) for t in analysis.terms) or 1.0
    rows = [{
        "id": t.id,
        "kind": KIND_LABEL.get(t.kind, t.kind),
        "what": describe(t),
        "value": format_number(t.value),
        "weight": format_number(t.weight),
        "contribution": format_number(t.contribution),
        "share": f"{100.0 * abs(t.contribution) / scale:.1f}%",
        "opaque": "user code" if t.opaque else "",
        "steps": t.steps,
    } for t in analysis.terms]
    from lossmap.render.backends import render_text as backends_text

    return template.render(
        custom=custom_code_lines(analysis),
        gradient_rows=_gradient_rows(analysis),
        conflicts=_conflicts(analysis),
        a=analysis,
        equation=render_equation(analysis),
        rows=rows,
        total=total,
        verdict=verdict(analysis),
        widths=_widths(rows),
    ) + backends_text(analysis)


def custom_code_lines(analysis) -> dict:
    """What the text shows of a custom step: where each term comes from, the objectives, the gradient check."""
    step = analysis.model.step
    if step is None:
        return {}
    where = []
    for t in analysis.terms:
        src = t.source or {}
        if src.get("line"):
            text = t.expression if t.kind == "custom" else f"{t.expression} -> {describe(t)}"
            where.append(f"line {src['line']}: {text}  [{t.id}]")
    objectives = [f"{o['id']}: {o['target']} = {format_number(o['value'])} (line {o['source']['line']}, "
                  f"{o['optimizer'] or 'no optimizer seen'}; {len(o['terms'])} terms, {len(o['variables'])} variables)"
                  for o in analysis.objectives] if len(analysis.objectives) > 1 else []
    g = analysis.total.gradients_verified
    gradients = {True: "VERIFIED (the gradients the step applies = the sum of its terms' gradients)",
                 False: "MISMATCH (the step applies other gradients than its terms add up to)",
                 None: "not compared"}[g]
    return {"step": step, "where": where, "objectives": objectives, "gradients": gradients}


def verdict(analysis) -> str:
    total = analysis.total
    if total.compute_loss is None and total.train_step is None:
        return "NOT VERIFIED (Keras computed no total to compare with)"
    return "VERIFIED" if total.verified else "MISMATCH"


def _widths(rows):
    cols = ("id", "kind", "value", "weight", "contribution", "share")
    return {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}


def _gradient_rows(analysis):
    g = analysis.gradients
    if not g:
        return []
    rows, seen = [], set()
    for t in analysis.terms:
        entry = g["terms"].get(t.id)
        if entry is None or entry["unit"] in seen:
            continue
        seen.add(entry["unit"])
        unit = next(u for u in g["units"] if u["id"] == entry["unit"])
        layers = layout.reach(g, unit)["layers"]
        top = sorted(layout.per_layer(g, unit).items(), key=lambda kv: -kv[1])[:3]
        rows.append({
            "id": unit["label"] if unit["grouped"] else t.id,
            "norm": format_number(entry["norm"], 4),
            "share": f"{100.0 * entry['share']:.1f}%",
            "reach": "nothing (dead)" if entry["dead"] else f"{len(layers)} layer{'s' if len(layers) != 1 else ''}",
            "top": ", ".join(f"{k} {format_number(v, 3)}" for k, v in top),
        })
    return rows


def _conflicts(analysis):
    g = analysis.gradients
    if not g:
        return []
    # a cosine within rounding of 0 is no pull either way
    pairs = [p for p in layout.pairs(g) if p["cosine"] is not None and p["cosine"] < -0.005]
    pairs.sort(key=lambda p: p["cosine"])
    return [f"{p['a']} vs {p['b']}: cosine {p['cosine']:.2f} on {p['shared_variables']} shared variables"
            for p in pairs[:10]]
