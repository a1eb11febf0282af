"""Inline SVG pictures for the HTML report, laid out here in Python.

Reads only an `Analysis` (never Keras, never TensorFlow) and returns SVG markup
to paste into the page as it is: no JavaScript layout, no Graphviz, no fonts or
requests of any kind. Every name that comes from the model (outputs, layers,
losses, term ids) is escaped with `html.escape(..., quote=True)`; long names
are cut with an ellipsis and kept whole in the `<title>` (hover text).

Public API
----------
- `loss_graph(analysis) -> Graph`: the loss as a left-to-right graph; `Graph.svg`
  is the markup, `Graph.groups` the collapsed groups of terms (see below).
- `gradient_share_bars(analysis) -> str`: each attribution unit's share of the total gradient.
- `layer_heatmap(analysis) -> str`: each unit's gradient norm on each layer.
- `cosine_heatmap(analysis) -> str`: pairwise cosine similarity between units.
- `SVG_CSS`: the stylesheet for all of the above (light, and dark through
  `prefers-color-scheme` or `<html data-theme="dark">`).

The three gradient functions return "" (falsy) when there is nothing to draw
(no gradient attribution, no units, or no cosine matrix), so a template can
write `{% if svg %}`.

Grouping in the loss graph
--------------------------
Up to `GROUP_THRESHOLD` (24) additional terms (regularizers, activity
regularizers, add_loss, custom) get a node each. Beyond that, terms are put in
buckets by the finest key that leaves at most `GROUP_THRESHOLD` nodes:

1. kind, function and layer;
2. kind, function, layer family (the layer name with digit runs replaced by
   "#": `dense_17` -> `dense_#`) and, for weight regularizers, the variable
   (`kernel`, `bias`);
3. kind, function and layer family;
4. kind and function;
5. kind.

A bucket of one term stays a term node; a bucket of several becomes a group
node (count, subtotal, share) linking to `#group-<key>`, fed by one node for
its layers ("dense_0 ... dense_99, 100 layers"). Compiled losses are grouped
the same way (by function and output family, then function) only when there
are more than `GROUP_THRESHOLD` of them. `Graph.groups` lists every group as
`{key, label, kind, term_ids, subtotal, count, share, layers, anchor}` with
`anchor == anchor_id("group", key)`, so the report can render the details.

Links
-----
Term nodes link to `#` + anchor_id("term", term.id); layer nodes to
anchor_id("layer", name); the compiled sum to anchor_id("step", "compiled_loss"),
the additional sum to anchor_id("step", "aggregate_additional_loss"), the total
to anchor_id("step", "compute_loss"). In the gradient charts, rows for a single
term link to that term.

CSS classes (all scoped under the root `svg.lossmap`)
-----------------------------------------------------
Root: `lossmap` plus one of `loss-graph`, `grad-share`, `layer-heatmap`, `cosine-heatmap`.

Classes sit on `<g>`, `<text>`, `<path>`, `<line>` and `<circle>` elements,
never on a `<rect>`: a rectangle is the child of a classed `<g>` (style it as
`.bar > rect`), because SVG 2 makes width/height CSS properties and a host
page's rule for a common name (the report's own `.bar { width: 80px }`) would
otherwise resize it.

Kinds (on nodes, edges and chart rows): `compiled`, `weight_regularizer`,
`activity_regularizer`, `add_loss`, `custom`; and `sum`, `total` for the sums.
A kind class sets the custom property `--k` that the shapes inside use.

Loss graph: `node` (a `<g>` whose first `<rect>` is the box; with its kind
class, and `source` for outputs/layers (`output`, `layer`, `block`), `term` for
a term, `group` for a group of terms, `weight` for a loss-weight box,
`compiled-sum` / `additional-sum`), `label` / `sub` (first and second text
line), `bar-track` / `bar` (share of the sum of |contributions|), `edge` (a
connector with its kind class, or `plain`; its width grows with the share it
carries), `arrow` (its head), `caption` (section headings), `verified` /
`unverified` on the total.

Gradient share bars: `row` (one unit, with its kind class, `dead` when its
gradient is zero), `row-hit` (hover band), `row-label`, `bar` (plus `neg` when
the share is negative), `axis`, `grid`, `tick`, `value`, `dead-mark`, `note`.

Heat maps: `cell` (one square; the shade is the rect's `fill-opacity`), with
`empty` (a layer the unit does not reach), `pos` / `neg` (cosine sign), `diag`
(a unit with itself) or `none` (no shared weights, crossed by a `none-mark`
line); `conflict` (dot on a negative cosine; plus `strong` below
CONFLICT_COSINE), `cell-text`, `col-label`, `row-label`, `frame`, `legend`, `note`.

The stylesheet picks up the report's own palette (`--compiled`, `--fg`,
`--card`, ...) when the page defines it, and has fallbacks otherwise.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Optional

from lossmap.groups import GROUP_THRESHOLD, KIND_PLURAL, group_terms, leaf as _leaf, span_label as _span_label
from lossmap.groups import term_share as _term_share
from lossmap.render import anchor_id, format_number, template_source

MAX_HEATMAP_COLUMNS = 60  # more layers than this are merged into blocks of consecutive layers
MAX_UNIT_ROWS = 40  # gradient charts: more units than this are merged (weight regularizers first)
CONFLICT_COSINE = -0.5  # as lossmap.gradients.CONFLICT_COSINE: a strong conflict
HEAT_DECADES = 3  # the layer heat map's log scale spans this many powers of ten

CHAR_PX = 7.0  # estimated width of a character at 12px
BOLD_CHAR_PX = 7.7  # ... at 12px, semibold (node labels)
SUB_CHAR_PX = 6.4  # ... at 11px
SMALL_CHAR_PX = 5.9  # ... at 10px

KIND_NAMES = {
    "compiled": "compiled loss",
    "weight_regularizer": "weight regularizer",
    "activity_regularizer": "activity regularizer",
    "add_loss": "add_loss",
    "custom": "custom term",
}
KIND_PLURAL = {
    "compiled": "compiled losses",
    "weight_regularizer": "weight regularizers",
    "activity_regularizer": "activity regularizers",
    "add_loss": "add_loss terms",
    "custom": "custom terms",
}

SVG_CSS = template_source("svg.css")


# ====================================================================== helpers
def esc(value) -> str:
    """Escape anything that came from the model for text or an attribute."""
    return html.escape(str(value), quote=True)


def _f(x: float) -> str:
    """A coordinate, short."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _fit(text: str, max_chars: int) -> str:
    text = str(text)
    if len(text) <= max_chars:
        return text
    return text[: max(1, max_chars - 1)] + "…"


def _num(value) -> str:
    return format_number(value, 4)


def _pct(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    p = 100.0 * x
    if p == 0:
        return "0%"
    if abs(p) < 0.01:
        return ("-" if p < 0 else "") + "<0.01%"
    if abs(p) < 1:
        return f"{p:{'+' if signed else ''}.2f}%"
    return f"{p:{'+' if signed else ''}.1f}%"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _svg_root(cls: str, width: float, height: float, label: str, body: list, desc: str = "") -> str:
    w, h = int(math.ceil(width)), int(math.ceil(height))
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="lossmap {cls}" role="img" '
            f'aria-label="{esc(label)}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<title>{esc(label)}</title>')
    if desc:
        head += f"<desc>{esc(desc)}</desc>"
    return head + "".join(body) + "</svg>"


def _shape(cls: str, x, y, w, h, *, rx=None, opacity=None, title=None, after="") -> str:
    """A rectangle inside a classed group: the class is on the `<g>`, never on the `<rect>`, so a
    host page's rule for a common class name (`.bar { width: 80px }`) cannot resize it (SVG 2
    makes width/height CSS properties)."""
    t = f"<title>{esc(title)}</title>" if title else ""
    r = f' rx="{_f(rx)}"' if rx else ""
    o = f' fill-opacity="{opacity:.3f}"' if opacity is not None else ""
    return (f'<g class="{cls}">{t}<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}"{r}{o}/>'
            f'{after}</g>')


def _text(x, y, text, cls="", anchor=None, extra="") -> str:
    a = f' text-anchor="{anchor}"' if anchor else ""
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{_f(x)}" y="{_f(y)}"{c}{a}{extra}>{esc(text)}</text>'


# ====================================================================== loss graph
@dataclass
class Graph:
    """The loss graph: `svg` is the markup; `groups` the collapsed groups of terms.

    Each group is a dict: key (str, unique), label (str, for people), kind (term
    kind), term_ids (list), subtotal (sum of the members' contributions), count,
    share (sum |contribution| of members / sum |contribution| of all terms),
    layers (layer names, or output names for compiled groups, in order) and
    anchor (== anchor_id("group", key): the group node links to "#" + anchor).
    `str(graph)` and `graph.__html__()` give the markup.
    """

    svg: str
    groups: list = field(default_factory=list)
    width: int = 0
    height: int = 0

    def __str__(self) -> str:
        return self.svg

    def __html__(self) -> str:
        return self.svg


@dataclass
class _Node:
    cls: str  # classes after "node"
    label: str
    sub: str = ""
    title: str = ""
    href: Optional[str] = None
    bar: Optional[float] = None  # share in [0, 1]
    max_chars: int = 30


@dataclass
class _Row:
    kind: str
    share: float
    source_key: tuple
    source: _Node
    cells: list  # compiled: [fn node, weight node]; additional: [term node]


NODE_H = 42
ROW_GAP = 10
COL_GAP = 44
PAD = 9
BAR_W = 96
MARGIN = 12
CAPTION_H = 22
SECTION_GAP = 18


def _node_width(node: _Node, min_w: float = 70) -> float:
    label = _fit(node.label, node.max_chars)
    w = len(label) * BOLD_CHAR_PX + 2 * PAD
    if node.sub:
        w = max(w, len(node.sub) * SUB_CHAR_PX + 2 * PAD)
    if node.bar is not None:
        w = max(w, BAR_W + 2 * PAD)
    return max(min_w, w)


def _draw_node(node: _Node, x: float, y: float, w: float, h: float) -> str:
    label = _fit(node.label, max(3, int((w - 2 * PAD) / BOLD_CHAR_PX)))
    title = node.title or node.label
    parts = []
    if node.href:
        parts.append(f'<a href="{esc(node.href)}">')
    parts.append(f'<g class="node {node.cls}"><title>{esc(title)}</title>')
    parts.append(f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" rx="6"/>')
    cy = y + h / 2
    if node.sub:
        ly, sy = (cy - 4, cy + 10) if node.bar is None else (cy - 7, cy + 7)
        parts.append(_text(x + PAD, ly, label, "label"))
        parts.append(_text(x + PAD, sy, node.sub, "sub"))
    else:
        parts.append(_text(x + PAD, cy + 4, label, "label"))
    if node.bar is not None:
        by = cy + 12
        share = min(1.0, max(0.0, node.bar)) if _finite(node.bar) else 0.0
        bw = BAR_W * share
        if share > 0:
            bw = max(bw, 1.5)
        parts.append(_shape("bar-track", x + PAD, by, BAR_W, 4, rx=2))
        parts.append(_shape("bar", x + PAD, by, bw, 4, rx=2))
    parts.append("</g>")
    if node.href:
        parts.append("</a>")
    return "".join(parts)


def _edge(x1, y1, x2, y2, width: float, cls: str) -> str:
    if abs(y1 - y2) < 0.5:
        d = f"M{_f(x1)},{_f(y1)} H{_f(x2 - 5)}"
    else:
        mx = (x1 + x2) / 2
        d = f"M{_f(x1)},{_f(y1)} C{_f(mx)},{_f(y1)} {_f(mx)},{_f(y2)} {_f(x2 - 5)},{_f(y2)}"
    arrow = f'<path class="arrow" d="M{_f(x2 - 6)},{_f(y2 - 3.5)} L{_f(x2)},{_f(y2)} L{_f(x2 - 6)},{_f(y2 + 3.5)} Z"/>'
    return f'<path class="edge {cls}" d="{d}" stroke-width="{width:.2f}"/>' + arrow


def _edge_width(share: float) -> float:
    return 1.0 + 7.0 * (min(1.0, max(0.0, share)) if _finite(share) else 0.0)


def _describe_additional(t) -> str:
    if t.kind == "weight_regularizer":
        return f"{t.fn or 'regularizer'}({_leaf(t.variable)})"
    if t.kind == "activity_regularizer":
        return f"activity {t.fn or 'regularizer'}"
    if t.kind == "add_loss":
        tail = t.id.rsplit("/", 1)[-1]
        return f"add_loss #{tail}" if tail.isdigit() else "add_loss"
    return t.fn or t.id


def _term_title(t, share: float) -> str:
    what = {
        "compiled": f"compiled loss {t.fn} on output {t.output}",
        "weight_regularizer": f"{t.fn} weight regularizer on {t.variable}",
        "activity_regularizer": f"{t.fn} activity regularizer on the output of {t.layer}",
        "add_loss": f"add_loss in layer {t.layer}",
    }.get(t.kind, f"{t.kind} term {t.fn or ''}")
    weight = f" x weight {_num(t.weight)}" if t.weight != 1.0 else ""
    return (f"{t.id}: {what}; value {_num(t.value)}{weight} = contribution {_num(t.contribution)} "
            f"({_pct(share)} of the sum of |contributions|)")


def _source_node(names: list, what: str, linked: bool) -> _Node:
    """An output or layer node (one name), or a block of them."""
    if len(names) == 1:
        name = names[0]
        href = "#" + anchor_id("layer", name) if linked and name != "(model)" else None
        return _Node(f"source {'output' if what == 'output' else 'layer'}", name, what,
                     f"{what} {name}", href, max_chars=28)
    return _Node(f"source {'output' if what == 'output' else 'layer'} block", _span_label(names),
                 f"{len(names)} {what}s", f"{len(names)} {what}s: " + ", ".join(names[:40])
                 + (", …" if len(names) > 40 else ""), max_chars=28)


def _compiled_rows(buckets, scale) -> list:
    rows = []
    for b in buckets:
        if b.group is None:
            t = b.terms[0]
            share = _term_share(t, scale)
            href = "#" + anchor_id("term", t.id)
            title = _term_title(t, share)
            out = t.output or "(output)"
            fn_node = _Node("compiled term", t.fn or t.id, f"value {_num(t.value)}", title, href, max_chars=36)
            w_node = _Node("compiled term weight", f"× {_num(t.weight)}",
                           f"= {_num(t.contribution)} · {_pct(share)}", title, href, bar=share)
            src = _Node("source output", out, "output", f"output {out}", max_chars=28)
            rows.append(_Row("compiled", share, ("output", out), src, [fn_node, w_node]))
            continue
        g = b.group
        href = "#" + anchor_id("group", g.key)
        weights = sorted({t.weight for t in b.terms})
        wl = f"× {_num(weights[0])}" if len(weights) == 1 else f"× {_num(weights[0])} … {_num(weights[-1])}"
        fn_node = _Node("compiled group", f"{g.count} × {g.fn or 'loss'}", f"{g.count} terms",
                        g.label, href)
        w_node = _Node("compiled group weight", wl, f"Σ {_num(g.subtotal)} · {_pct(g.share)}",
                       g.label + f"; subtotal {_num(g.subtotal)}", href, bar=g.share)
        rows.append(_Row("compiled", g.share, ("outputs",) + tuple(g.layers),
                         _source_node(g.layers, "output", False), [fn_node, w_node]))
    return rows


def _additional_rows(buckets, scale) -> list:
    items = []
    for b in buckets:
        if b.group is None:
            t = b.terms[0]
            share = _term_share(t, scale)
            layer = t.layer or "(model)"
            node = _Node(f"{t.kind} term", _describe_additional(t),
                         f"{_num(t.contribution)} · {_pct(share)}", _term_title(t, share),
                         "#" + anchor_id("term", t.id), bar=share)
            items.append(_Row(t.kind, share, ("layer", layer), _source_node([layer], "layer", True), [node]))
            continue
        g = b.group
        kind = g.kind
        fn = g.fn
        if kind == "weight_regularizer" and g.variable:
            what = f"{fn}({g.variable})"
        elif kind == "weight_regularizer":
            what = f"{fn or 'weight'} regularizers"
        elif kind == "activity_regularizer":
            what = f"activity {fn}" if fn else "activity regularizers"
        elif kind == "add_loss":
            what = "add_loss"
        else:
            what = fn or KIND_PLURAL.get(kind, kind)
        node = _Node(f"{kind} group", f"{g.count} × {what}",
                     f"Σ {_num(g.subtotal)} · {_pct(g.share)}",
                     f"{g.label}; subtotal {_num(g.subtotal)} ({_pct(g.share)} of the sum of "
                     "|contributions|); details below the graph", "#" + anchor_id("group", g.key), bar=g.share)
        items.append(_Row(kind, g.share, ("layers",) + tuple(g.layers),
                          _source_node(g.layers, "layer", True), [node]))
    # rows sharing a source sit together, in order of first appearance
    order: dict = {}
    for r in items:
        order.setdefault(r.source_key, []).append(r)
    return [r for rs in order.values() for r in rs]


def loss_graph(analysis, *, group_threshold: int = GROUP_THRESHOLD) -> Graph:
    """The loss, left to right: outputs -> loss functions -> loss weights -> compiled sum;
    layers -> regularizers / activity regularizers / add_loss -> additional sum; both -> total.
    """
    terms = list(analysis.terms)
    grouping = analysis.grouping if group_threshold == GROUP_THRESHOLD else group_terms(terms, group_threshold)
    scale = grouping.scale
    compiled = [t for t in terms if t.kind == "compiled"]
    additional = [t for t in terms if t.kind != "compiled"]
    groups = [dict(g.as_dict(), anchor=anchor_id("group", g.key)) for g in grouping.groups]
    crows = _compiled_rows(grouping.compiled, scale)
    arows = _additional_rows(grouping.additional, scale)

    # ---- node boxes
    total = analysis.total
    shown_steps = {getattr(st, "key", None) for st in (getattr(analysis, "walkthrough", None) or [])
                   if getattr(st, "found", False)}

    def step_link(key):
        """Link a sum to its walkthrough step only when the report shows that step."""
        return "#" + anchor_id("step", key) if key in shown_steps else None

    verified = bool(getattr(total, "verified", False))
    c_sum = math.fsum(t.contribution for t in compiled)
    a_sum = math.fsum(t.contribution for t in additional)
    c_share = math.fsum(_term_share(t, scale) for t in compiled)
    a_share = math.fsum(_term_share(t, scale) for t in additional)
    c_node = _Node("sum compiled-sum", "Σ compiled", f"= {_num(c_sum)} · {_pct(c_share)}",
                   f"compiled loss: the sum of the {len(compiled)} weighted compiled loss"
                   f"{'es' if len(compiled) != 1 else ''} = {_num(c_sum)}",
                   step_link("compiled_loss"))
    a_node = _Node("sum additional-sum", "Σ additional", f"= {_num(a_sum)} · {_pct(a_share)}",
                   f"additional losses (model.losses): the sum of {len(additional)} term"
                   f"{'s' if len(additional) != 1 else ''} = {_num(a_sum)}",
                   step_link("aggregate_additional_loss"))
    checks = [f"Keras compute_loss {_num(total.compute_loss)}" if total.compute_loss is not None else None,
              f"train_step {_num(total.train_step)}" if total.train_step is not None else None]
    checks = [c for c in checks if c]
    t_title = (f"total loss = {_num(total.reproduced)} (reproduced)"
               + (f"; {', '.join(checks)}" if checks else "")
               + ("; verified" if verified else "; not verified"))
    t_node = _Node(f"total {'verified' if verified else 'unverified'}", "total loss",
                   f"= {_num(total.reproduced)}" + (" ✓" if verified else ""), t_title,
                   step_link("compute_loss"))

    # ---- column widths
    w0 = max([_node_width(r.source, 80) for r in crows + arows] + [80])
    w1 = max([_node_width(r.cells[0], 110) for r in crows] + [110])
    w2 = max([_node_width(r.cells[1], 110) for r in crows] + [110])
    span = max([_node_width(r.cells[0], 150) for r in arows] + [0])
    if span > w1 + COL_GAP + w2:
        extra = span - (w1 + COL_GAP + w2)
        w1 += extra / 2
        w2 += extra / 2
    sums = ([c_node] if crows else []) + ([a_node] if arows else [])
    w3 = max([_node_width(n, 100) for n in sums] + [100])
    w4 = max(_node_width(t_node, 100), 100)
    x0 = MARGIN
    x1 = x0 + w0 + COL_GAP
    x2 = x1 + w1 + COL_GAP
    x3 = x2 + w2 + COL_GAP
    x4 = x3 + w3 + COL_GAP
    width = x4 + w4 + MARGIN

    body: list = []
    edges: list = []
    nodes: list = []
    y = MARGIN
    pitch = NODE_H + ROW_GAP

    def section(rows, caption, sum_node, compiled_section):
        nonlocal y
        body.append(_text(x0, y + 12, caption, "caption"))
        y += CAPTION_H
        top = y
        centres = []
        for r in rows:
            cy = y + NODE_H / 2
            centres.append(cy)
            if compiled_section:
                nodes.append(_draw_node(r.cells[0], x1, y, w1, NODE_H))
                nodes.append(_draw_node(r.cells[1], x2, y, w2, NODE_H))
                edges.append(_edge(x0 + w0, cy, x1, cy, 1.2, "plain"))
                edges.append(_edge(x1 + w1, cy, x2, cy, 1.2, "plain"))
            else:
                nodes.append(_draw_node(r.cells[0], x1, y, x2 + w2 - x1, NODE_H))
                edges.append(_edge(x0 + w0, cy, x1, cy, 1.2, "plain"))
            y += pitch
        # sources span their consecutive rows
        i = 0
        while i < len(rows):
            j = i
            while j + 1 < len(rows) and rows[j + 1].source_key == rows[i].source_key:
                j += 1
            sy = top + i * pitch
            nodes.append(_draw_node(rows[i].source, x0, sy, w0, (j - i + 1) * pitch - ROW_GAP))
            i = j + 1
        scy = (centres[0] + centres[-1]) / 2
        nodes.append(_draw_node(sum_node, x3, scy - NODE_H / 2, w3, NODE_H))
        for r, cy in zip(rows, centres):
            edges.append(_edge(x2 + w2, cy, x3, scy, _edge_width(r.share), r.kind))
        y += SECTION_GAP - ROW_GAP
        return scy

    sum_centres = []
    if crows:
        cy = section(crows, "compiled loss · Model.compile(loss=…, loss_weights=…)", c_node, True)
        sum_centres.append((cy, c_share))
    if arows:
        cy = section(arows, "additional losses · model.losses", a_node, False)
        sum_centres.append((cy, a_share))
    if sum_centres:
        ty = (sum_centres[0][0] + sum_centres[-1][0]) / 2
        for scy, share in sum_centres:
            edges.append(_edge(x3 + w3, scy, x4, ty, _edge_width(share), "sum"))
    else:
        body.append(_text(x0, y + 12, "no loss terms", "caption"))
        y += CAPTION_H
        ty = y + NODE_H / 2
        y += NODE_H + SECTION_GAP
    nodes.append(_draw_node(t_node, x4, ty - NODE_H / 2, w4, NODE_H))
    height = max(y - SECTION_GAP + MARGIN, ty + NODE_H / 2 + MARGIN)

    n = len(terms)
    label = (f"Loss graph of {analysis.model.name}: {n} term{'s' if n != 1 else ''} "
             f"({len(compiled)} compiled, {len(additional)} additional) add up to the total "
             f"{_num(total.reproduced)}" + (f"; {len(groups)} groups shown collapsed" if groups else ""))
    svg = _svg_root("loss-graph", width, height, label, body + edges + nodes)
    return Graph(svg=svg, groups=groups, width=int(math.ceil(width)), height=int(math.ceil(height)))


# ====================================================================== gradients: shared
def _units(g: dict) -> list:
    """Each attribution unit once, in the order of `gradients['units']`."""
    entries = g.get("terms") or {}
    units = g.get("units")
    if not units:  # older documents: rebuild from the per-term entries
        seen: dict = {}
        for tid, e in entries.items():
            u = seen.setdefault(e["unit"], {"id": e["unit"], "label": e["unit"], "kind": "custom",
                                            "terms": [], "grouped": e.get("grouped", False)})
            u["terms"].append(tid)
        units = list(seen.values())
    out = []
    for u in units:
        e = next((entries[t] for t in u.get("terms", []) if t in entries), None) or {}
        term_ids = list(u.get("terms", []))
        out.append({
            "id": u["id"],
            "label": u.get("label") or u["id"],
            "kind": u.get("kind") or "custom",
            "term_ids": term_ids,
            "grouped": bool(u.get("grouped")),
            "norm": e.get("norm", u.get("norm")),
            "share": e.get("share"),
            "norm_share": e.get("norm_share"),
            "per_layer": dict(e.get("per_layer") or {}),
            "dead": bool(e.get("dead")),
            "dead_count": 1 if e.get("dead") else 0,
            "members": 1,
            "href": "#" + anchor_id("term", term_ids[0]) if len(term_ids) == 1 else None,
            "merged": False,
        })
    return out


def _rss(values) -> float:
    return math.sqrt(math.fsum(v * v for v in values if _finite(v)))


def _merge(units: list, label: str, kind: str, exact: bool) -> dict:
    per_layer: dict = {}
    for u in units:
        for k, v in u["per_layer"].items():
            per_layer.setdefault(k, []).append(v)
    return {
        "id": "merged/" + label,
        "label": label,
        "kind": kind,
        "term_ids": [t for u in units for t in u["term_ids"]],
        "grouped": True,
        "norm": _rss(u["norm"] or 0.0 for u in units),
        "share": math.fsum(u["share"] or 0.0 for u in units),
        "norm_share": None,
        "per_layer": {k: _rss(v) for k, v in per_layer.items()},
        "dead": all(u["dead"] for u in units),
        "dead_count": sum(u["dead_count"] for u in units),
        "members": sum(u["members"] for u in units),
        "href": None,
        "merged": True,
        "exact": exact,
    }


def _display_units(g: dict, max_rows: int = MAX_UNIT_ROWS) -> list:
    """Units to draw: all of them, or (beyond `max_rows`) weight regularizers merged into one
    row (their norms combine exactly: each reaches its own variable), then the smallest of the
    rest merged into one "other units" row."""
    units = _units(g)
    if len(units) <= max_rows:
        return units
    wr = [u for u in units if u["kind"] == "weight_regularizer" and not u["grouped"]]
    rest = [u for u in units if not (u["kind"] == "weight_regularizer" and not u["grouped"])]
    rows = list(rest)
    if len(wr) > 1:
        rows.append(_merge(wr, f"{len(wr)} weight regularizers", "weight_regularizer", True))
    else:
        rows += wr
    if len(rows) > max_rows:
        ranked = sorted(range(len(rows)), key=lambda i: -abs(rows[i]["share"] or 0.0))
        keep = set(ranked[: max_rows - 1])
        others = [rows[i] for i in range(len(rows)) if i not in keep]
        rows = [rows[i] for i in range(len(rows)) if i in keep]
        rows.append(_merge(others, f"{sum(u['members'] for u in others)} other units", "custom", False))
    return rows


def _layer_order(units: list) -> list:
    """Layers in model order: the per-layer dicts are each in model order; merge them."""
    first: dict = {}
    succ: dict = {}
    indeg: dict = {}
    for u in units:
        seq = list(u["per_layer"])
        for name in seq:
            if name not in first:
                first[name] = len(first)
                succ[name] = set()
                indeg[name] = 0
        for a, b in zip(seq, seq[1:]):
            if b not in succ[a]:
                succ[a].add(b)
                indeg[b] += 1
    order = []
    remaining = set(first)
    while remaining:
        ready = [n for n in remaining if indeg[n] == 0]
        pick = min(ready or remaining, key=first.get)  # on a cycle, first seen wins
        order.append(pick)
        remaining.discard(pick)
        for b in succ[pick]:
            indeg[b] -= 1
    return order


def _unit_title(u: dict) -> str:
    parts = [u["label"]]
    if u["merged"]:
        parts.append(f"{u['members']} units merged"
                     + ("" if u.get("exact") else "; norms combined as root-sum-square"))
    elif u["grouped"]:
        parts.append(f"{len(u['term_ids'])} terms attributed together")
    if u["share"] is not None:
        parts.append(f"share of the total gradient {_pct(u['share'])}")
    if u["norm"] is not None:
        parts.append(f"gradient norm {_num(u['norm'])}")
    if u["norm_share"] is not None:
        parts.append(f"{_pct(u['norm_share'])} of the total gradient's norm")
    if u["dead"]:
        parts.append("dead: its gradient is zero for every weight")
    elif u["dead_count"]:
        parts.append(f"{u['dead_count']} dead")
    return "; ".join(parts)


def _row_label(u: dict, max_chars: int) -> str:
    return _fit(u["label"], max_chars)


def _nice_step(span: float) -> float:
    raw = span / 4
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


# ====================================================================== gradients: share bars
def gradient_share_bars(analysis, *, max_rows: int = MAX_UNIT_ROWS) -> str:
    """Horizontal bars: each attribution unit's share of the total gradient (g_i . G / |G|^2,
    summing to 100%), negative shares to the left of the axis, with the norm; dead units marked."""
    g = analysis.gradients
    if not g:
        return ""
    units = _display_units(g, max_rows)
    if not units:
        return ""
    label_chars = 42
    lw = min(label_chars * CHAR_PX, max(len(_row_label(u, label_chars)) * CHAR_PX for u in units)) + 14
    bw = 360
    vw = 210
    row_h = 24
    top = 30
    x_bar = MARGIN + lw
    shares = [u["share"] if _finite(u["share"]) else 0.0 for u in units]
    lo, hi = min(0.0, min(shares)), max(0.0, max(shares))
    if hi - lo <= 0:
        hi = 1.0
    # the domain hugs the data (a little air), with room for a sliver of negative share
    lo_d, hi_d = lo * 1.04, hi * 1.04
    if lo < 0 and lo_d > -0.03 * (hi_d - lo_d):
        lo_d = -0.03 * (hi_d - lo_d)
    step = _nice_step(hi_d - lo_d)
    lo_t, hi_t = math.ceil(lo_d / step - 1e-9) * step, math.floor(hi_d / step + 1e-9) * step
    scale = bw / (hi_d - lo_d)
    zero = x_bar + (-lo_d) * scale
    body = []
    height = top + row_h * len(units) + 34
    # grid and ticks
    ticks = [lo_t + k * step for k in range(int(round((hi_t - lo_t) / step)) + 1)]
    for t in ticks:
        x = zero + t * scale
        body.append(f'<line class="grid" x1="{_f(x)}" y1="{top - 6}" x2="{_f(x)}" y2="{_f(top + row_h * len(units))}"/>')
        anchor = "end" if x > x_bar + bw - 12 else "start" if x < x_bar + 12 else "middle"
        body.append(_text(x, top - 10, f"{round(100 * t, 6):g}%", "tick", anchor))
    body.append(_text(x_bar + bw + 14, top - 10, "share", "tick"))
    body.append(_text(x_bar + bw + 76, top - 10, "norm |g|", "tick"))
    for i, (u, s) in enumerate(zip(units, shares)):
        y = top + i * row_h
        cls = f"row {u['kind']}" + (" dead" if u["dead"] else "")
        w = abs(s) * scale
        if s != 0:
            w = max(w, 1.5)
        x = zero if s >= 0 else zero - w
        row = [f'<g class="{cls}"><title>{esc(_unit_title(u))}</title>',
               _shape("row-hit", MARGIN, y, lw + bw + vw, row_h)]
        lab = _text(x_bar - 10, y + row_h / 2 + 4, _row_label(u, label_chars), "row-label", "end")
        row.append(f'<a href="{esc(u["href"])}">{lab}</a>' if u["href"] else lab)
        row.append(_shape("bar neg" if s < 0 else "bar", x, y + 5, w, row_h - 10, rx=2))
        vx = x_bar + bw + 14
        row.append(_text(vx, y + row_h / 2 + 4, _pct(s), "value"))
        row.append(_text(vx + 62, y + row_h / 2 + 4, _num(u["norm"]) if u["norm"] is not None else "n/a", "value"))
        if u["dead"]:
            row.append(_text(vx + 128, y + row_h / 2 + 4, "✕ dead", "dead-mark"))
        elif u["dead_count"]:
            row.append(_text(vx + 128, y + row_h / 2 + 4, f"✕ {u['dead_count']} dead", "dead-mark"))
        row.append("</g>")
        body.append("".join(row))
    body.append(f'<line class="axis" x1="{_f(zero)}" y1="{top - 4}" x2="{_f(zero)}" y2="{_f(top + row_h * len(units) + 2)}"/>')
    note = "share of the total gradient: g·G/|G|², sums to 100%; left of the axis: a term pulling against the rest"
    body.append(_text(x_bar, top + row_h * len(units) + 22, note, "note"))
    width = max(MARGIN + lw + bw + vw, x_bar + len(note) * SMALL_CHAR_PX) + MARGIN
    dead = sum(u["dead_count"] for u in units)
    label = (f"Share of the total gradient for {len(units)} attribution unit{'s' if len(units) != 1 else ''}"
             + (f"; {dead} dead" if dead else ""))
    return _svg_root("grad-share", width, height, label, body)


# ====================================================================== gradients: layer heat map
def _col_label_geometry(labels: list, angle: float = 55.0):
    s, c = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    lens = [len(x) * SMALL_CHAR_PX for x in labels]
    return s, c, lens


def layer_heatmap(analysis, *, max_columns: int = MAX_HEATMAP_COLUMNS, max_rows: int = MAX_UNIT_ROWS) -> str:
    """Rows: attribution units; columns: layers in model order (merged into blocks of consecutive
    layers beyond `max_columns`). Shade: the unit's gradient norm on that layer relative to the
    largest in its row, on a log scale over `HEAT_DECADES` powers of ten."""
    g = analysis.gradients
    if not g:
        return ""
    units = _display_units(g, max_rows)
    layers = _layer_order(units)
    if not units or not layers:
        return ""
    # columns: single layers, or blocks of consecutive layers
    size = max(1, math.ceil(len(layers) / max_columns))
    blocks = [layers[i:i + size] for i in range(0, len(layers), size)]
    col_names = [b[0] if len(b) == 1 else f"{b[0]} – {b[-1]}" for b in blocks]
    col_labels = [_fit(n, 22) for n in col_names]
    n_cols = len(blocks)
    cw = 30 if n_cols <= 12 else 22 if n_cols <= 30 else 16
    ch = 22
    label_chars = 42
    lw = min(label_chars * CHAR_PX, max(len(_row_label(u, label_chars)) * CHAR_PX for u in units)) + 12
    angle = 55.0
    s, c, lens = _col_label_geometry(col_labels, angle)
    head = max(lens) * s + 14
    x_grid = MARGIN + lw
    y_grid = MARGIN + head
    grid_w = n_cols * cw
    right = max([x_grid + (i + 0.5) * cw + lens[i] * c for i in range(n_cols)] + [x_grid + grid_w])
    body = []
    for i, (name, lab) in enumerate(zip(col_names, col_labels)):
        cx = x_grid + (i + 0.5) * cw + 3
        cy = y_grid - 6
        text = (f'<text class="col-label" x="{_f(cx)}" y="{_f(cy)}" '
                f'transform="rotate(-{angle:g} {_f(cx)} {_f(cy)})"><title>{esc(name)}</title>{esc(lab)}</text>')
        if len(blocks[i]) == 1:
            text = f'<a href="#{esc(anchor_id("layer", name))}">{text}</a>'
        body.append(text)
    for r, u in enumerate(units):
        y = y_grid + r * ch
        values = [_rss(u["per_layer"].get(name, 0.0) for name in b) if any(n in u["per_layer"] for n in b)
                  else None for b in blocks]
        row_max = max([v for v in values if v is not None] + [0.0])
        row = [f'<g class="row {u["kind"]}{" dead" if u["dead"] else ""}"><title>{esc(_unit_title(u))}</title>']
        lab = _text(x_grid - 8, y + ch / 2 + 4, _row_label(u, label_chars), "row-label", "end")
        row.append(f'<a href="{esc(u["href"])}">{lab}</a>' if u["href"] else lab)
        row.append("</g>")
        body.append("".join(row))
        for i, v in enumerate(values):
            x = x_grid + i * cw
            where = col_names[i]
            if v is None or v <= 0 or row_max <= 0:
                tip = f"{u['label']} on {where}: " + ("not reached" if v is None else "zero gradient")
                body.append(_shape("cell empty", x, y, cw, ch, title=tip))
                continue
            rel = v / row_max
            shade = max(0.06, min(1.0, 1.0 + math.log10(rel) / HEAT_DECADES))
            tip = f"{u['label']} on {where}: gradient norm {_num(v)} ({rel:.3g} of the row's largest)"
            body.append(_shape("cell", x, y, cw, ch, opacity=shade, title=tip))
    grid_bottom = y_grid + len(units) * ch
    body.append(_shape("frame", x_grid, y_grid, grid_w, len(units) * ch))
    # legend
    ly = grid_bottom + 16
    lx = x_grid
    body.append('<g class="legend">')
    body.append(_text(lx, ly + 10, "norm vs. the row's largest:", ""))
    lx += 150
    for k in range(HEAT_DECADES + 1):
        rel = 10.0 ** (-k)
        shade = max(0.06, 1.0 + math.log10(rel) / HEAT_DECADES)
        body.append(_shape("cell", lx, ly, 14, 14, opacity=shade))
        text = "1" if k == 0 else f"1/{10 ** k}"
        body.append(_text(lx + 18, ly + 11, text, ""))
        lx += 18 + len(text) * SMALL_CHAR_PX + 12
    body.append(_shape("cell empty", lx, ly, 14, 14))
    body.append(_text(lx + 18, ly + 11, "not reached", ""))
    lx += 18 + 11 * SMALL_CHAR_PX
    body.append("</g>")
    height = ly + 22
    if size > 1:
        note = (f"{len(layers)} layers merged into {n_cols} blocks of up to {size} consecutive layers "
                "(a block's norm is the root-sum-square of its layers')")
        body.append(_text(x_grid, height + 8, note, "note"))
        lx = max(lx, x_grid + len(note) * SMALL_CHAR_PX)
        height += 20
    width = max(right, lx) + MARGIN
    label = (f"Gradient norm per layer for {len(units)} attribution unit{'s' if len(units) != 1 else ''} "
             f"over {len(layers)} layer{'s' if len(layers) != 1 else ''}"
             + (f" (in {n_cols} blocks)" if size > 1 else ""))
    return _svg_root("layer-heatmap", width, height + MARGIN, label, body)


# ====================================================================== gradients: cosine heat map
def cosine_heatmap(analysis) -> str:
    """Pairwise cosine similarity of the units' gradients on the weights both reach; a dot marks
    a conflict (cosine < 0), a larger one a strong conflict; dashed cells share no weights."""
    g = analysis.gradients
    if not g:
        return ""
    units = _units(g)
    by_id = {u["id"]: u for u in units}
    shared, cosine = {}, {}
    for p in g.get("pairs") or []:
        shared[(p["a"], p["b"])] = shared[(p["b"], p["a"])] = p.get("shared_variables")
        cosine[(p["a"], p["b"])] = cosine[(p["b"], p["a"])] = p.get("cosine")
    # Weight regularizers each reach one variable, so two of them never share weights: their
    # rows are set against the trunk-sharing units' columns only (a square of all of them
    # would be mostly empty cells), the most conflicting first, up to MAX_UNIT_ROWS.
    cols = [u["id"] for u in units if u["kind"] != "weight_regularizer"]
    local = [u["id"] for u in units if u["kind"] == "weight_regularizer"]
    if not cols or not cosine:
        return ""
    local.sort(key=lambda uid: min([c for c in (cosine.get((uid, col)) for col in cols)
                                    if c is not None and _finite(c)] or [2.0]))
    ids = cols + local[: max(0, MAX_UNIT_ROWS - len(cols))]
    hidden = len(cols) + len(local) - len(ids)
    matrix = [[None if a == b else cosine.get((a, b)) for b in cols] for a in ids]
    n = len(ids)
    m = len(cols)
    cell = 44 if n <= 8 else 32 if n <= 16 else 20 if n <= 32 else 14
    show_numbers = cell >= 32
    label_chars = 30
    labels = [by_id.get(i, {}).get("label", i) for i in ids]
    short = [_fit(x, label_chars) for x in labels]
    lw = max(len(x) for x in short) * CHAR_PX + 12
    angle = 55.0
    s, c, lens = _col_label_geometry(short[:m], angle)
    head = max(lens) * s + 14
    x_grid = MARGIN + lw
    y_grid = MARGIN + head
    right = max([x_grid + (j + 0.5) * cell + lens[j] * c for j in range(m)] + [x_grid + m * cell])
    body = []
    for j in range(m):
        cx = x_grid + (j + 0.5) * cell + 3
        cy = y_grid - 6
        href = by_id.get(ids[j], {}).get("href")
        text = (f'<text class="col-label" x="{_f(cx)}" y="{_f(cy)}" '
                f'transform="rotate(-{angle:g} {_f(cx)} {_f(cy)})"><title>{esc(labels[j])}</title>{esc(short[j])}</text>')
        body.append(f'<a href="{esc(href)}">{text}</a>' if href else text)
    conflicting = set()
    for i in range(n):
        y = y_grid + i * cell
        href = by_id.get(ids[i], {}).get("href")
        lab = (f'<text class="row-label" x="{_f(x_grid - 8)}" y="{_f(y + cell / 2 + 4)}" text-anchor="end">'
               f'<title>{esc(labels[i])}</title>{esc(short[i])}</text>')
        body.append(f'<a href="{esc(href)}">{lab}</a>' if href else lab)
        for j in range(m):
            x = x_grid + j * cell
            v = matrix[i][j]
            if ids[i] == cols[j]:
                body.append(_shape("cell diag", x, y, cell, cell, title=f"{labels[i]} with itself"))
                continue
            if v is None or not _finite(v):
                tip = f"{labels[i]} vs {labels[j]}: no shared weights (no cosine)"
                body.append(_shape("cell none", x, y, cell, cell, title=tip, after=(
                    f'<line class="none-mark" x1="{_f(x + 3)}" y1="{_f(y + cell - 3)}" '
                    f'x2="{_f(x + cell - 3)}" y2="{_f(y + 3)}"/>')))
                continue
            sv = shared.get((ids[i], cols[j]))
            tip = (f"{labels[i]} vs {labels[j]}: cosine {v:.3f}"
                   + (f" on {sv} shared variable{'s' if sv != 1 else ''}" if sv is not None else "")
                   + ("; they pull the shared weights in opposing directions" if v < 0 else ""))
            sign = "neg" if v < 0 else "pos"
            parts = []
            if v < 0:
                conflicting.add(frozenset((ids[i], cols[j])))
                strong = v < CONFLICT_COSINE
                r = max(2.0, cell * (0.14 if strong else 0.09))
                dx, dy = (x + cell - r - 3, y + r + 3) if show_numbers else (x + cell / 2, y + cell / 2)
                parts.append(f'<circle class="conflict{" strong" if strong else ""}" cx="{_f(dx)}" cy="{_f(dy)}" r="{_f(r)}"/>')
            if show_numbers:
                parts.append(_text(x + cell / 2, y + cell / 2 + 4 + (3 if v < 0 else 0), f"{v:.2f}", "cell-text"))
            body.append(_shape(f"cell {sign}", x, y, cell, cell, opacity=max(0.06, min(1.0, abs(v))), title=tip,
                               after="".join(parts)))
    body.append(_shape("frame", x_grid, y_grid, m * cell, n * cell))
    ly = y_grid + n * cell + 16
    if hidden:
        body.append(_text(MARGIN, ly + 4, f"{hidden} more weight regularizer{'s' if hidden != 1 else ''} "
                          "not shown (the least conflicting); all are in the JSON", "note"))
        ly += 18
    # legend
    lx = MARGIN
    body.append('<g class="legend">')
    for v in (-1.0, -0.5, 0.0, 0.5, 1.0):
        sign = "neg" if v < 0 else "pos"
        body.append(_shape(f"cell {sign}", lx, ly, 14, 14, opacity=max(0.06, abs(v))))
        body.append(_text(lx + 18, ly + 11, f"{v:+.1f}" if v else "0", ""))
        lx += 18 + (4 if v else 1) * SMALL_CHAR_PX + 8
    lx += 8
    body.append(f'<circle class="conflict" cx="{_f(lx + 7)}" cy="{_f(ly + 7)}" r="3"/>')
    body.append(_text(lx + 16, ly + 11, "conflict (< 0)", ""))
    lx += 16 + len("conflict (< 0)") * SMALL_CHAR_PX + 10
    strong_label = f"strong conflict (< {CONFLICT_COSINE:g})"
    body.append(f'<circle class="conflict strong" cx="{_f(lx + 7)}" cy="{_f(ly + 7)}" r="5"/>')
    body.append(_text(lx + 16, ly + 11, strong_label, ""))
    lx += 16 + len(strong_label) * SMALL_CHAR_PX + 10
    body.append(_shape("cell none", lx, ly, 14, 14, after=(
        f'<line class="none-mark" x1="{_f(lx + 2)}" y1="{_f(ly + 12)}" x2="{_f(lx + 12)}" y2="{_f(ly + 2)}"/>')))
    body.append(_text(lx + 18, ly + 11, "no shared weights", ""))
    lx += 18 + 17 * SMALL_CHAR_PX
    body.append("</g>")
    width = max(right, lx) + MARGIN
    height = ly + 14 + MARGIN
    label = (f"Cosine similarity between the gradients of {n} attribution units and the {m} that share the "
             "trunk, on the weights both reach; "
             f"{len(conflicting)} conflicting pair{'s' if len(conflicting) != 1 else ''}")
    return _svg_root("cosine-heatmap", width, height, label, body)
