"""The loss graph, left to right: outputs -> loss functions -> loss weights -> compiled sum;
layers -> regularizers / activity regularizers / add_loss -> additional sum; both -> total.

Terms are drawn one node each, or one node per group of `Analysis.grouping`
(lossmap.groups), fed by one node for its layers ("dense_0 ... dense_99, 100 layers").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from lossmap.groups import GROUP_THRESHOLD, KIND_PLURAL, group_terms, leaf, span_label, term_share
from lossmap.render import anchor_id
from lossmap.render.svg.primitives import (BOLD_CHAR_PX, MARGIN, SUB_CHAR_PX, coord, esc, finite, fit, num, pct,
                                           shape, svg_root, text_at)

NODE_H = 42
ROW_GAP = 10
COL_GAP = 44
PAD = 9
BAR_W = 96
CAPTION_H = 22
SECTION_GAP = 18
COMPILED_CAPTION = "compiled loss · Model.compile(loss=…, loss_weights=…)"
ADDITIONAL_CAPTION = "additional losses · model.losses"
CUSTOM_CAPTION = "your step · {function}"


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


# ====================================================================== nodes and edges
def _node_width(node: _Node, min_w: float = 70) -> float:
    label = fit(node.label, node.max_chars)
    w = len(label) * BOLD_CHAR_PX + 2 * PAD
    if node.sub:
        w = max(w, len(node.sub) * SUB_CHAR_PX + 2 * PAD)
    if node.bar is not None:
        w = max(w, BAR_W + 2 * PAD)
    return max(min_w, w)


def _node_bar(share: float, x: float, by: float) -> str:
    share = min(1.0, max(0.0, share)) if finite(share) else 0.0
    bw = BAR_W * share
    if share > 0:
        bw = max(bw, 1.5)
    return shape("bar-track", x + PAD, by, BAR_W, 4, rx=2) + shape("bar", x + PAD, by, bw, 4, rx=2)


def _draw_node(node: _Node, x: float, y: float, w: float, h: float) -> str:
    label = fit(node.label, max(3, int((w - 2 * PAD) / BOLD_CHAR_PX)))
    parts = [f'<g class="node {node.cls}"><title>{esc(node.title or node.label)}</title>',
             f'<rect x="{coord(x)}" y="{coord(y)}" width="{coord(w)}" height="{coord(h)}" rx="6"/>']
    cy = y + h / 2
    if node.sub:
        ly, sy = (cy - 4, cy + 10) if node.bar is None else (cy - 7, cy + 7)
        parts.append(text_at(x + PAD, ly, label, "label"))
        parts.append(text_at(x + PAD, sy, node.sub, "sub"))
    else:
        parts.append(text_at(x + PAD, cy + 4, label, "label"))
    if node.bar is not None:
        parts.append(_node_bar(node.bar, x, cy + 12))
    parts.append("</g>")
    markup = "".join(parts)
    return f'<a href="{esc(node.href)}">{markup}</a>' if node.href else markup


def _edge(x1, y1, x2, y2, width: float, cls: str) -> str:
    if abs(y1 - y2) < 0.5:
        d = f"M{coord(x1)},{coord(y1)} H{coord(x2 - 5)}"
    else:
        mx = (x1 + x2) / 2
        d = f"M{coord(x1)},{coord(y1)} C{coord(mx)},{coord(y1)} {coord(mx)},{coord(y2)} {coord(x2 - 5)},{coord(y2)}"
    arrow = (f'<path class="arrow" d="M{coord(x2 - 6)},{coord(y2 - 3.5)} L{coord(x2)},{coord(y2)} '
             f'L{coord(x2 - 6)},{coord(y2 + 3.5)} Z"/>')
    return f'<path class="edge {cls}" d="{d}" stroke-width="{width:.2f}"/>' + arrow


def _edge_width(share: float) -> float:
    return 1.0 + 7.0 * (min(1.0, max(0.0, share)) if finite(share) else 0.0)


# ====================================================================== rows: one per term or group
def _describe_additional(t) -> str:
    if t.kind == "weight_regularizer":
        return f"{t.fn or 'regularizer'}({leaf(t.variable)})"
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
    weight = f" x weight {num(t.weight)}" if t.weight != 1.0 else ""
    return (f"{t.id}: {what}; value {num(t.value)}{weight} = contribution {num(t.contribution)} "
            f"({pct(share)} of the sum of |contributions|)")


def _source_node(names, what: str, linked: bool) -> _Node:
    """An output or layer node (one name), or a block of them."""
    if len(names) == 1:
        name = names[0]
        href = "#" + anchor_id("layer", name) if linked and name != "(model)" else None
        return _Node(f"source {'output' if what == 'output' else 'layer'}", name, what,
                     f"{what} {name}", href, max_chars=28)
    return _Node(f"source {'output' if what == 'output' else 'layer'} block", span_label(names),
                 f"{len(names)} {what}s", f"{len(names)} {what}s: " + ", ".join(names[:40])
                 + (", …" if len(names) > 40 else ""), max_chars=28)


def _compiled_term_row(t, scale: float) -> _Row:
    share = term_share(t, scale)
    href = "#" + anchor_id("term", t.id)
    title = _term_title(t, share)
    out = t.output or "(output)"
    fn_node = _Node("compiled term", t.fn or t.id, f"value {num(t.value)}", title, href, max_chars=36)
    w_node = _Node("compiled term weight", f"× {num(t.weight)}",
                   f"= {num(t.contribution)} · {pct(share)}", title, href, bar=share)
    src = _Node("source output", out, "output", f"output {out}", max_chars=28)
    return _Row("compiled", share, ("output", out), src, [fn_node, w_node])


def _compiled_group_row(g, members) -> _Row:
    href = "#" + anchor_id("group", g.key)
    weights = sorted({t.weight for t in members})
    wl = f"× {num(weights[0])}" if len(weights) == 1 else f"× {num(weights[0])} … {num(weights[-1])}"
    fn_node = _Node("compiled group", f"{g.count} × {g.fn or 'loss'}", f"{g.count} terms", g.label, href)
    w_node = _Node("compiled group weight", wl, f"Σ {num(g.subtotal)} · {pct(g.share)}",
                   g.label + f"; subtotal {num(g.subtotal)}", href, bar=g.share)
    return _Row("compiled", g.share, ("outputs",) + tuple(g.layers), _source_node(g.layers, "output", False),
                [fn_node, w_node])


def _compiled_rows(buckets, scale: float) -> list:
    return [_compiled_term_row(b.terms[0], scale) if b.group is None else _compiled_group_row(b.group, b.terms)
            for b in buckets]


def _additional_term_row(t, scale: float) -> _Row:
    share = term_share(t, scale)
    layer = t.layer or "(model)"
    node = _Node(f"{t.kind} term", _describe_additional(t), f"{num(t.contribution)} · {pct(share)}",
                 _term_title(t, share), "#" + anchor_id("term", t.id), bar=share)
    return _Row(t.kind, share, ("layer", layer), _source_node([layer], "layer", True), [node])


def _group_what(g) -> str:
    """What a group node says its members are: 'L2(kernel)', 'activity L1', 'add_loss'."""
    if g.kind == "weight_regularizer" and g.variable:
        return f"{g.fn}({g.variable})"
    if g.kind == "weight_regularizer":
        return f"{g.fn or 'weight'} regularizers"
    if g.kind == "activity_regularizer":
        return f"activity {g.fn}" if g.fn else "activity regularizers"
    if g.kind == "add_loss":
        return "add_loss"
    return g.fn or KIND_PLURAL.get(g.kind, g.kind)


def _additional_group_row(g) -> _Row:
    node = _Node(f"{g.kind} group", f"{g.count} × {_group_what(g)}", f"Σ {num(g.subtotal)} · {pct(g.share)}",
                 f"{g.label}; subtotal {num(g.subtotal)} ({pct(g.share)} of the sum of "
                 "|contributions|); details below the graph", "#" + anchor_id("group", g.key), bar=g.share)
    return _Row(g.kind, g.share, ("layers",) + tuple(g.layers), _source_node(g.layers, "layer", True), [node])


def _additional_rows(buckets, scale: float) -> list:
    items = [_additional_term_row(b.terms[0], scale) if b.group is None else _additional_group_row(b.group)
             for b in buckets]
    # rows sharing a source sit together, in order of first appearance
    order: dict = {}
    for r in items:
        order.setdefault(r.source_key, []).append(r)
    return [r for rs in order.values() for r in rs]


def _captions(analysis):
    """The compiled and additional sections' captions; in a custom step, the call that brings them in."""
    if analysis.model.step is None:
        return COMPILED_CAPTION, ADDITIONAL_CAPTION
    out = []
    for kinds, what in ((("compiled",), "compiled loss"),
                        (("weight_regularizer", "activity_regularizer", "add_loss"), "model.losses")):
        via = next((t for t in analysis.terms if t.kind in kinds and t.expression), None)
        out.append(f"{what} · via {via.expression} (line {(via.source or {}).get('line')})" if via else what)
    return tuple(out)


def _custom_term_row(t, scale: float) -> _Row:
    """A term of the user's own step: fed by the line that computes it."""
    share = term_share(t, scale)
    src = t.source or {}
    line = src.get("line")
    node = _Node("custom term", t.expression or t.id, f"{num(t.contribution)} · {pct(share)}",
                 f"{t.id}: {t.expression} (line {line}); value {num(t.value)}"
                 + (f" x {num(t.weight)}" if t.weight != 1.0 else "") + f" = contribution {num(t.contribution)}",
                 "#" + anchor_id("term", t.id), bar=share, max_chars=40)
    source = _Node("source step", f"line {line}" if line else "your step", src.get("function") or "",
                   f"{src.get('file')}:{line}", "#" + anchor_id("step", "user_step"), max_chars=28)
    return _Row("custom", share, ("line", line), source, [node])


def _custom_sections(analysis, grouping) -> list:
    """(caption, rows, terms) for the custom terms: one section per objective of the step."""
    terms = [b.terms[0] for b in grouping.custom]
    if not terms:
        return []
    function = (analysis.model.step or {}).get("function") or "custom code"
    objectives = list(dict.fromkeys(t.objective for t in terms))
    out = []
    for objective in objectives:
        members = [t for t in terms if t.objective == objective]
        caption = CUSTOM_CAPTION.format(function=function) + (f" · {objective}" if objective else "")
        out.append((caption, [_custom_term_row(t, grouping.scale) for t in members], members))
    return out


def _custom_sum(members, scale, objective) -> _Node:
    total = math.fsum(t.contribution for t in members)
    share = math.fsum(term_share(t, scale) for t in members)
    label = "Σ your terms" if not objective else f"Σ {objective}"
    return _Node("sum custom-sum", label, f"= {num(total)} · {pct(share)}",
                 f"the step's own terms{f' of {objective}' if objective else ''}: {len(members)} term"
                 f"{'s' if len(members) != 1 else ''} = {num(total)}", "#" + anchor_id("step", "user_step"))


# ====================================================================== the sums and the total
@dataclass
class _Sums:
    compiled: _Node
    additional: _Node
    total: _Node
    compiled_share: float
    additional_share: float


def _step_links(analysis):
    """Link a sum to its walkthrough step only when the report shows that step."""
    shown = {getattr(st, "key", None) for st in (getattr(analysis, "walkthrough", None) or [])
             if getattr(st, "found", False)}
    return lambda key: "#" + anchor_id("step", key) if key in shown else None


def _total_node(total, href) -> _Node:
    verified = bool(getattr(total, "verified", False))
    checks = [f"Keras compute_loss {num(total.compute_loss)}" if total.compute_loss is not None else None,
              f"train_step {num(total.train_step)}" if total.train_step is not None else None]
    checks = [c for c in checks if c]
    title = (f"total loss = {num(total.reproduced)} (reproduced)"
             + (f"; {', '.join(checks)}" if checks else "")
             + ("; verified" if verified else "; not verified"))
    return _Node(f"total {'verified' if verified else 'unverified'}", "total loss",
                 f"= {num(total.reproduced)}" + (" ✓" if verified else ""), title, href)


def _sums(analysis, scale: float) -> _Sums:
    compiled = [t for t in analysis.terms if t.kind == "compiled"]
    additional = [t for t in analysis.terms if t.kind not in ("compiled", "custom")]
    step_link = _step_links(analysis)
    c_sum = math.fsum(t.contribution for t in compiled)
    a_sum = math.fsum(t.contribution for t in additional)
    c_share = math.fsum(term_share(t, scale) for t in compiled)
    a_share = math.fsum(term_share(t, scale) for t in additional)
    c_node = _Node("sum compiled-sum", "Σ compiled", f"= {num(c_sum)} · {pct(c_share)}",
                   f"compiled loss: the sum of the {len(compiled)} weighted compiled loss"
                   f"{'es' if len(compiled) != 1 else ''} = {num(c_sum)}",
                   step_link("compiled_loss"))
    a_node = _Node("sum additional-sum", "Σ additional", f"= {num(a_sum)} · {pct(a_share)}",
                   f"additional losses (model.losses): the sum of {len(additional)} term"
                   f"{'s' if len(additional) != 1 else ''} = {num(a_sum)}",
                   step_link("aggregate_additional_loss"))
    return _Sums(c_node, a_node, _total_node(analysis.total, step_link("compute_loss")), c_share, a_share)


# ====================================================================== layout
@dataclass
class _Columns:
    """x and width of the five columns: sources, functions, weights, sums, total."""

    x: list
    w: list

    @property
    def width(self) -> float:
        return self.x[4] + self.w[4] + MARGIN


def _columns(crows: list, arows: list, sums: _Sums, extra_sums=()) -> _Columns:
    w0 = max([_node_width(r.source, 80) for r in crows + arows] + [80])
    w1 = max([_node_width(r.cells[0], 110) for r in crows] + [110])
    w2 = max([_node_width(r.cells[1], 110) for r in crows] + [110])
    span = max([_node_width(r.cells[0], 150) for r in arows] + [0])
    if span > w1 + COL_GAP + w2:  # an additional term's node spans the function and weight columns
        extra = span - (w1 + COL_GAP + w2)
        w1 += extra / 2
        w2 += extra / 2
    sum_nodes = ([sums.compiled] if crows else []) + ([sums.additional] if arows else []) + list(extra_sums)
    w3 = max([_node_width(n, 100) for n in sum_nodes] + [100])
    w4 = max(_node_width(sums.total, 100), 100)
    xs = [MARGIN]
    for w in (w0, w1, w2, w3):
        xs.append(xs[-1] + w + COL_GAP)
    return _Columns(xs, [w0, w1, w2, w3, w4])


class _Canvas:
    """Markup in three layers (captions, edges, nodes on top), filled section by section."""

    def __init__(self, cols: _Columns):
        self.cols = cols
        self.body: list = []
        self.edges: list = []
        self.nodes: list = []
        self.y = MARGIN

    def section(self, rows: list, caption: str, sum_node: _Node, compiled: bool) -> float:
        """A section's rows, their sources and its sum node; returns the sum's centre y."""
        x, w = self.cols.x, self.cols.w
        self.body.append(text_at(x[0], self.y + 12, caption, "caption"))
        self.y += CAPTION_H
        top = self.y
        centres = [self._row(r, compiled) for r in rows]
        self._sources(rows, top)
        scy = (centres[0] + centres[-1]) / 2
        self.nodes.append(_draw_node(sum_node, x[3], scy - NODE_H / 2, w[3], NODE_H))
        for r, cy in zip(rows, centres):
            self.edges.append(_edge(x[2] + w[2], cy, x[3], scy, _edge_width(r.share), r.kind))
        self.y += SECTION_GAP - ROW_GAP
        return scy

    def _row(self, r: _Row, compiled: bool) -> float:
        x, w, y = self.cols.x, self.cols.w, self.y
        cy = y + NODE_H / 2
        if compiled:
            self.nodes.append(_draw_node(r.cells[0], x[1], y, w[1], NODE_H))
            self.nodes.append(_draw_node(r.cells[1], x[2], y, w[2], NODE_H))
            self.edges.append(_edge(x[0] + w[0], cy, x[1], cy, 1.2, "plain"))
            self.edges.append(_edge(x[1] + w[1], cy, x[2], cy, 1.2, "plain"))
        else:
            self.nodes.append(_draw_node(r.cells[0], x[1], y, x[2] + w[2] - x[1], NODE_H))
            self.edges.append(_edge(x[0] + w[0], cy, x[1], cy, 1.2, "plain"))
        self.y += NODE_H + ROW_GAP
        return cy

    def _sources(self, rows: list, top: float) -> None:
        """A source node spans its consecutive rows."""
        pitch = NODE_H + ROW_GAP
        i = 0
        while i < len(rows):
            j = i
            while j + 1 < len(rows) and rows[j + 1].source_key == rows[i].source_key:
                j += 1
            self.nodes.append(_draw_node(rows[i].source, self.cols.x[0], top + i * pitch, self.cols.w[0],
                                         (j - i + 1) * pitch - ROW_GAP))
            i = j + 1

    def total(self, sum_centres: list, node: _Node) -> float:
        """The total node, fed by the sums (centre y, share); returns the picture's height."""
        x, w = self.cols.x, self.cols.w
        if sum_centres:
            ty = (sum_centres[0][0] + sum_centres[-1][0]) / 2
            for scy, share in sum_centres:
                self.edges.append(_edge(x[3] + w[3], scy, x[4], ty, _edge_width(share), "sum"))
        else:
            self.body.append(text_at(x[0], self.y + 12, "no loss terms", "caption"))
            self.y += CAPTION_H
            ty = self.y + NODE_H / 2
            self.y += NODE_H + SECTION_GAP
        self.nodes.append(_draw_node(node, x[4], ty - NODE_H / 2, w[4], NODE_H))
        return max(self.y - SECTION_GAP + MARGIN, ty + NODE_H / 2 + MARGIN)

    def markup(self) -> list:
        return self.body + self.edges + self.nodes


def _graph_label(analysis, n_groups: int) -> str:
    n = len(analysis.terms)
    n_compiled = sum(1 for t in analysis.terms if t.kind == "compiled")
    return (f"Loss graph of {analysis.model.name}: {n} term{'s' if n != 1 else ''} "
            f"({n_compiled} compiled, {n - n_compiled} additional) add up to the total "
            f"{num(analysis.total.reproduced)}" + (f"; {n_groups} groups shown collapsed" if n_groups else ""))


def loss_graph(analysis, *, group_threshold: int = GROUP_THRESHOLD) -> Graph:
    """The loss as a left-to-right graph, with the groups of `analysis.grouping` collapsed."""
    grouping = (analysis.grouping if group_threshold == GROUP_THRESHOLD
                else group_terms(analysis.terms, group_threshold))
    crows = _compiled_rows(grouping.compiled, grouping.scale)
    arows = _additional_rows(grouping.additional, grouping.scale)
    custom = _custom_sections(analysis, grouping)
    custom_sums = [_custom_sum(members, grouping.scale, rows[0] and members[0].objective)
                   for _, rows, members in custom]
    sums = _sums(analysis, grouping.scale)
    canvas = _Canvas(_columns(crows, arows + [r for _, rows, _ in custom for r in rows], sums, custom_sums))
    sum_centres = []
    compiled_caption, additional_caption = _captions(analysis)
    if crows:
        sum_centres.append((canvas.section(crows, compiled_caption, sums.compiled, True), sums.compiled_share))
    if arows:
        sum_centres.append((canvas.section(arows, additional_caption, sums.additional, False),
                            sums.additional_share))
    for (caption, rows, members), node in zip(custom, custom_sums):
        share = math.fsum(term_share(t, grouping.scale) for t in members)
        sum_centres.append((canvas.section(rows, caption, node, False), share))
    height = canvas.total(sum_centres, sums.total)
    width = canvas.cols.width
    groups = [dict(g.as_dict(), anchor=anchor_id("group", g.key)) for g in grouping.groups]
    svg = svg_root("loss-graph", width, height, _graph_label(analysis, len(groups)), canvas.markup())
    return Graph(svg=svg, groups=groups, width=int(math.ceil(width)), height=int(math.ceil(height)))
