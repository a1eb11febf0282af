"""The gradient charts: share of the total gradient, gradient norm per layer, cosine between units.

Each returns "" (falsy) when there is nothing to draw (no gradient attribution,
no units, or no cosine), so a template can write `{% if svg %}`. Rows for a
single term link to that term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lossmap import gradient_layout as layout
from lossmap.render import anchor_id
from lossmap.render.svg.gradient_units import (MAX_UNIT_ROWS, display_units, layer_order, row_label, rss,
                                               unit_title, units)
from lossmap.render.svg.primitives import (CHAR_PX, MARGIN, SMALL_CHAR_PX, coord, esc, finite, fit, link, num,
                                           pct, shape, svg_root, text_at)

MAX_HEATMAP_COLUMNS = 60  # more layers than this are merged into blocks of consecutive layers
CONFLICT_COSINE = -0.5  # as lossmap.gradients.CONFLICT_COSINE: a strong conflict
HEAT_DECADES = 3  # the layer heat map's log scale spans this many powers of ten

LABEL_CHARS = 42  # row labels of the share bars and the layer heat map
COL_ANGLE = 55.0  # column labels of the heat maps are rotated by this many degrees
BARS_W, VALUES_W, BAR_ROW_H, BARS_TOP = 360, 210, 24, 30
HEAT_CELL_H = 22
SHARE_NOTE = "share of the total gradient: g·G/|G|², sums to 100%; left of the axis: a term pulling against the rest"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _label_width(rows: list, pad: float) -> float:
    return min(LABEL_CHARS * CHAR_PX, max(len(row_label(u, LABEL_CHARS)) * CHAR_PX for u in rows)) + pad


# ====================================================================== share bars
@dataclass
class _Axis:
    x_bar: float  # left end of the bar area
    zero: float  # x of a zero share
    scale: float  # pixels per unit of share
    ticks: list


def _nice_step(span: float) -> float:
    raw = span / 4
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _share_axis(shares: list, x_bar: float) -> _Axis:
    lo, hi = min(0.0, min(shares)), max(0.0, max(shares))
    if hi - lo <= 0:
        hi = 1.0
    # the domain hugs the data (a little air), with room for a sliver of negative share
    lo_d, hi_d = lo * 1.04, hi * 1.04
    if lo < 0 and lo_d > -0.03 * (hi_d - lo_d):
        lo_d = -0.03 * (hi_d - lo_d)
    step = _nice_step(hi_d - lo_d)
    lo_t, hi_t = math.ceil(lo_d / step - 1e-9) * step, math.floor(hi_d / step + 1e-9) * step
    scale = BARS_W / (hi_d - lo_d)
    ticks = [lo_t + k * step for k in range(int(round((hi_t - lo_t) / step)) + 1)]
    return _Axis(x_bar=x_bar, zero=x_bar + (-lo_d) * scale, scale=scale, ticks=ticks)


def _share_grid(axis: _Axis, n_rows: int) -> list:
    body = []
    for t in axis.ticks:
        x = axis.zero + t * axis.scale
        body.append(f'<line class="grid" x1="{coord(x)}" y1="{BARS_TOP - 6}" x2="{coord(x)}" '
                    f'y2="{coord(BARS_TOP + BAR_ROW_H * n_rows)}"/>')
        anchor = "end" if x > axis.x_bar + BARS_W - 12 else "start" if x < axis.x_bar + 12 else "middle"
        body.append(text_at(x, BARS_TOP - 10, f"{round(100 * t, 6):g}%", "tick", anchor))
    body.append(text_at(axis.x_bar + BARS_W + 14, BARS_TOP - 10, "share", "tick"))
    body.append(text_at(axis.x_bar + BARS_W + 76, BARS_TOP - 10, "norm |g|", "tick"))
    return body


def _share_row(u: dict, s: float, i: int, axis: _Axis, lw: float) -> str:
    y = BARS_TOP + i * BAR_ROW_H
    ty = y + BAR_ROW_H / 2 + 4
    w = abs(s) * axis.scale
    if s != 0:
        w = max(w, 1.5)
    x = axis.zero if s >= 0 else axis.zero - w
    vx = axis.x_bar + BARS_W + 14
    row = [f'<g class="row {u["kind"]}{" dead" if u["dead"] else ""}"><title>{esc(unit_title(u))}</title>',
           shape("row-hit", MARGIN, y, lw + BARS_W + VALUES_W, BAR_ROW_H),
           link(u["href"], text_at(axis.x_bar - 10, ty, row_label(u, LABEL_CHARS), "row-label", "end")),
           shape("bar neg" if s < 0 else "bar", x, y + 5, w, BAR_ROW_H - 10, rx=2),
           text_at(vx, ty, pct(s), "value"),
           text_at(vx + 62, ty, num(u["norm"]) if u["norm"] is not None else "n/a", "value")]
    if u["dead"]:
        row.append(text_at(vx + 128, ty, "✕ dead", "dead-mark"))
    elif u["dead_count"]:
        row.append(text_at(vx + 128, ty, f"✕ {u['dead_count']} dead", "dead-mark"))
    row.append("</g>")
    return "".join(row)


def gradient_share_bars(analysis, *, max_rows: int = MAX_UNIT_ROWS) -> str:
    """Horizontal bars: each attribution unit's share of the total gradient (g_i . G / |G|^2,
    summing to 100%), negative shares to the left of the axis, with the norm; dead units marked."""
    g = analysis.gradients
    if not g:
        return ""
    rows = display_units(g, max_rows)
    if not rows:
        return ""
    lw = _label_width(rows, 14)
    shares = [u["share"] if finite(u["share"]) else 0.0 for u in rows]
    axis = _share_axis(shares, MARGIN + lw)
    body = _share_grid(axis, len(rows))
    body += [_share_row(u, s, i, axis, lw) for i, (u, s) in enumerate(zip(rows, shares))]
    bottom = BARS_TOP + BAR_ROW_H * len(rows)
    body.append(f'<line class="axis" x1="{coord(axis.zero)}" y1="{BARS_TOP - 4}" x2="{coord(axis.zero)}" '
                f'y2="{coord(bottom + 2)}"/>')
    body.append(text_at(axis.x_bar, bottom + 22, SHARE_NOTE, "note"))
    width = max(MARGIN + lw + BARS_W + VALUES_W, axis.x_bar + len(SHARE_NOTE) * SMALL_CHAR_PX) + MARGIN
    dead = sum(u["dead_count"] for u in rows)
    label = (f"Share of the total gradient for {_plural(len(rows), 'attribution unit')}"
             + (f"; {dead} dead" if dead else ""))
    return svg_root("grad-share", width, bottom + 34, label, body)


# ====================================================================== heat maps: shared
@dataclass
class _Grid:
    x: float  # left of the first column
    y: float  # top of the first row, below the rotated column labels
    right: float  # right end of the grid or of its longest column label


def _grid(label_w: float, col_labels: list, cell_w: float) -> _Grid:
    s, c = math.sin(math.radians(COL_ANGLE)), math.cos(math.radians(COL_ANGLE))
    lens = [len(x) * SMALL_CHAR_PX for x in col_labels]
    head = max(lens) * s + 14
    x = MARGIN + label_w
    right = max([x + (i + 0.5) * cell_w + lens[i] * c for i in range(len(col_labels))]
                + [x + len(col_labels) * cell_w])
    return _Grid(x=x, y=MARGIN + head, right=right)


def _col_labels(grid: _Grid, cell_w: float, titles: list, labels: list, hrefs: list) -> list:
    out = []
    for i, (title, label, href) in enumerate(zip(titles, labels, hrefs)):
        cx = grid.x + (i + 0.5) * cell_w + 3
        cy = grid.y - 6
        text = (f'<text class="col-label" x="{coord(cx)}" y="{coord(cy)}" '
                f'transform="rotate(-{COL_ANGLE:g} {coord(cx)} {coord(cy)})"><title>{esc(title)}</title>'
                f'{esc(label)}</text>')
        out.append(link(href, text))
    return out


# ====================================================================== layer heat map
def _heat_cell(label: str, where: str, v, row_max: float, x: float, y: float, cw: float) -> str:
    if v is None or v <= 0 or row_max <= 0:
        tip = f"{label} on {where}: " + ("not reached" if v is None else "zero gradient")
        return shape("cell empty", x, y, cw, HEAT_CELL_H, title=tip)
    rel = v / row_max
    shade = max(0.06, min(1.0, 1.0 + math.log10(rel) / HEAT_DECADES))
    tip = f"{label} on {where}: gradient norm {num(v)} ({rel:.3g} of the row's largest)"
    return shape("cell", x, y, cw, HEAT_CELL_H, opacity=shade, title=tip)


def _heat_row(u: dict, y: float, blocks: list, names: list, grid: _Grid, cw: float) -> list:
    values = [rss(u["per_layer"].get(name, 0.0) for name in b) if any(n in u["per_layer"] for n in b)
              else None for b in blocks]
    row_max = max([v for v in values if v is not None] + [0.0])
    lab = text_at(grid.x - 8, y + HEAT_CELL_H / 2 + 4, row_label(u, LABEL_CHARS), "row-label", "end")
    out = [f'<g class="row {u["kind"]}{" dead" if u["dead"] else ""}"><title>{esc(unit_title(u))}</title>'
           + link(u["href"], lab) + "</g>"]
    out += [_heat_cell(u["label"], names[i], v, row_max, grid.x + i * cw, y, cw) for i, v in enumerate(values)]
    return out


def _heat_legend(lx: float, ly: float) -> tuple:
    """The legend's markup and its right end."""
    body = ['<g class="legend">', text_at(lx, ly + 10, "norm vs. the row's largest:", "")]
    lx += 150
    for k in range(HEAT_DECADES + 1):
        rel = 10.0 ** (-k)
        body.append(shape("cell", lx, ly, 14, 14, opacity=max(0.06, 1.0 + math.log10(rel) / HEAT_DECADES)))
        label = "1" if k == 0 else f"1/{10 ** k}"
        body.append(text_at(lx + 18, ly + 11, label, ""))
        lx += 18 + len(label) * SMALL_CHAR_PX + 12
    body.append(shape("cell empty", lx, ly, 14, 14))
    body.append(text_at(lx + 18, ly + 11, "not reached", ""))
    body.append("</g>")
    return body, lx + (18 + 11 * SMALL_CHAR_PX)


def layer_heatmap(analysis, *, max_columns: int = MAX_HEATMAP_COLUMNS, max_rows: int = MAX_UNIT_ROWS) -> str:
    """Rows: attribution units; columns: layers in model order (merged into blocks of consecutive
    layers beyond `max_columns`). Shade: the unit's gradient norm on that layer relative to the
    largest in its row, on a log scale over `HEAT_DECADES` powers of ten."""
    g = analysis.gradients
    if not g:
        return ""
    rows = display_units(g, max_rows)
    layers = layer_order(rows)
    if not rows or not layers:
        return ""
    size = max(1, math.ceil(len(layers) / max_columns))
    blocks = [layers[i:i + size] for i in range(0, len(layers), size)]
    names = [b[0] if len(b) == 1 else f"{b[0]} – {b[-1]}" for b in blocks]
    labels = [fit(n, 22) for n in names]
    n_cols = len(blocks)
    cw = 30 if n_cols <= 12 else 22 if n_cols <= 30 else 16
    grid = _grid(_label_width(rows, 12), labels, cw)
    hrefs = ["#" + anchor_id("layer", b[0]) if len(b) == 1 else None for b in blocks]
    body = _col_labels(grid, cw, names, labels, hrefs)
    for r, u in enumerate(rows):
        body += _heat_row(u, grid.y + r * HEAT_CELL_H, blocks, names, grid, cw)
    body.append(shape("frame", grid.x, grid.y, n_cols * cw, len(rows) * HEAT_CELL_H))
    ly = grid.y + len(rows) * HEAT_CELL_H + 16
    legend, lx = _heat_legend(grid.x, ly)
    body += legend
    height = ly + 22
    if size > 1:
        note = (f"{len(layers)} layers merged into {n_cols} blocks of up to {size} consecutive layers "
                "(a block's norm is the root-sum-square of its layers')")
        body.append(text_at(grid.x, height + 8, note, "note"))
        lx = max(lx, grid.x + len(note) * SMALL_CHAR_PX)
        height += 20
    label = (f"Gradient norm per layer for {_plural(len(rows), 'attribution unit')} "
             f"over {_plural(len(layers), 'layer')}" + (f" (in {n_cols} blocks)" if size > 1 else ""))
    return svg_root("layer-heatmap", max(grid.right, lx) + MARGIN, height + MARGIN, label, body)


# ====================================================================== cosine heat map
@dataclass
class _CosineTable:
    """What the cosine heat map shows: a row per unit in `ids`, a column per unit in `cols`."""

    ids: list
    cols: list  # the units that share weights with others (the first len(cols) of `ids`)
    labels: list  # of `ids`
    hrefs: list  # of `ids`
    cosine: dict  # (a, b) -> cosine, both ways
    shared: dict  # (a, b) -> number of shared variables, both ways
    hidden: int  # weight regularizers left out


def _cosine_table(g: dict):
    """The table to draw, or None when no pair has a cosine."""
    all_units = units(g)
    by_id = {u["id"]: u for u in all_units}
    shared, cosine = {}, {}
    for p in layout.pairs(g):
        shared[(p["a"], p["b"])] = shared[(p["b"], p["a"])] = p.get("shared_variables")
        cosine[(p["a"], p["b"])] = cosine[(p["b"], p["a"])] = p.get("cosine")
    # Weight regularizers each reach one variable, so two of them never share weights: their
    # rows are set against the trunk-sharing units' columns only (a square of all of them
    # would be mostly empty cells), the most conflicting first, up to MAX_UNIT_ROWS.
    cols = [u["id"] for u in all_units if u["kind"] != "weight_regularizer"]
    local = [u["id"] for u in all_units if u["kind"] == "weight_regularizer"]
    if not cols or not cosine:
        return None
    local.sort(key=lambda uid: min([c for c in (cosine.get((uid, col)) for col in cols)
                                    if c is not None and finite(c)] or [2.0]))
    ids = cols + local[: max(0, MAX_UNIT_ROWS - len(cols))]
    return _CosineTable(ids=ids, cols=cols, labels=[by_id.get(i, {}).get("label", i) for i in ids],
                        hrefs=[by_id.get(i, {}).get("href") for i in ids], cosine=cosine, shared=shared,
                        hidden=len(cols) + len(local) - len(ids))


def _none_mark(x1, y1, x2, y2) -> str:
    return f'<line class="none-mark" x1="{coord(x1)}" y1="{coord(y1)}" x2="{coord(x2)}" y2="{coord(y2)}"/>'


def _conflict_dot(v: float, x: float, y: float, cell: float, show_numbers: bool) -> str:
    strong = v < CONFLICT_COSINE
    r = max(2.0, cell * (0.14 if strong else 0.09))
    dx, dy = (x + cell - r - 3, y + r + 3) if show_numbers else (x + cell / 2, y + cell / 2)
    return f'<circle class="conflict{" strong" if strong else ""}" cx="{coord(dx)}" cy="{coord(dy)}" r="{coord(r)}"/>'


def _cosine_cell(table: _CosineTable, i: int, j: int, x: float, y: float, cell: float, conflicting: set) -> str:
    a, b = table.ids[i], table.cols[j]
    la, lb = table.labels[i], table.labels[j]
    if a == b:
        return shape("cell diag", x, y, cell, cell, title=f"{la} with itself")
    v = table.cosine.get((a, b))
    if v is None or not finite(v):
        return shape("cell none", x, y, cell, cell, title=f"{la} vs {lb}: no shared weights (no cosine)",
                     after=_none_mark(x + 3, y + cell - 3, x + cell - 3, y + 3))
    sv = table.shared.get((a, b))
    tip = (f"{la} vs {lb}: cosine {v:.3f}"
           + (f" on {sv} shared variable{'s' if sv != 1 else ''}" if sv is not None else "")
           + ("; they pull the shared weights in opposing directions" if v < 0 else ""))
    show_numbers = cell >= 32
    marks = []
    if v < 0:
        conflicting.add(frozenset((a, b)))
        marks.append(_conflict_dot(v, x, y, cell, show_numbers))
    if show_numbers:
        marks.append(text_at(x + cell / 2, y + cell / 2 + 4 + (3 if v < 0 else 0), f"{v:.2f}", "cell-text"))
    return shape(f"cell {'neg' if v < 0 else 'pos'}", x, y, cell, cell, opacity=max(0.06, min(1.0, abs(v))),
                 title=tip, after="".join(marks))


def _cosine_legend(ly: float) -> tuple:
    """The legend's markup and its right end."""
    lx = MARGIN
    body = ['<g class="legend">']
    for v in (-1.0, -0.5, 0.0, 0.5, 1.0):
        body.append(shape(f"cell {'neg' if v < 0 else 'pos'}", lx, ly, 14, 14, opacity=max(0.06, abs(v))))
        body.append(text_at(lx + 18, ly + 11, f"{v:+.1f}" if v else "0", ""))
        lx += 18 + (4 if v else 1) * SMALL_CHAR_PX + 8
    lx += 8
    for cls, r, label in (("conflict", 3, "conflict (< 0)"),
                          ("conflict strong", 5, f"strong conflict (< {CONFLICT_COSINE:g})")):
        body.append(f'<circle class="{cls}" cx="{coord(lx + 7)}" cy="{coord(ly + 7)}" r="{r}"/>')
        body.append(text_at(lx + 16, ly + 11, label, ""))
        lx += 16 + len(label) * SMALL_CHAR_PX + 10
    body.append(shape("cell none", lx, ly, 14, 14, after=_none_mark(lx + 2, ly + 12, lx + 12, ly + 2)))
    body.append(text_at(lx + 18, ly + 11, "no shared weights", ""))
    body.append("</g>")
    return body, lx + (18 + 17 * SMALL_CHAR_PX)


def cosine_heatmap(analysis) -> str:
    """Pairwise cosine similarity of the units' gradients on the weights both reach; a dot marks
    a conflict (cosine < 0), a larger one a strong conflict; dashed cells share no weights."""
    g = analysis.gradients
    table = _cosine_table(g) if g else None
    if table is None:
        return ""
    n, m = len(table.ids), len(table.cols)
    cell = 44 if n <= 8 else 32 if n <= 16 else 20 if n <= 32 else 14
    short = [fit(x, 30) for x in table.labels]
    grid = _grid(max(len(x) for x in short) * CHAR_PX + 12, short[:m], cell)
    body = _col_labels(grid, cell, table.labels[:m], short[:m], table.hrefs[:m])
    conflicting: set = set()
    for i in range(n):
        y = grid.y + i * cell
        body.append(link(table.hrefs[i], f'<text class="row-label" x="{coord(grid.x - 8)}" '
                         f'y="{coord(y + cell / 2 + 4)}" text-anchor="end"><title>{esc(table.labels[i])}</title>'
                         f'{esc(short[i])}</text>'))
        body += [_cosine_cell(table, i, j, grid.x + j * cell, y, cell, conflicting) for j in range(m)]
    body.append(shape("frame", grid.x, grid.y, m * cell, n * cell))
    ly = grid.y + n * cell + 16
    if table.hidden:
        body.append(text_at(MARGIN, ly + 4, f"{table.hidden} more weight regularizer{'s' if table.hidden != 1 else ''} "
                            "not shown (the least conflicting); all are in the JSON", "note"))
        ly += 18
    legend, lx = _cosine_legend(ly)
    label = (f"Cosine similarity between the gradients of {n} attribution units and the {m} that share the "
             f"trunk, on the weights both reach; {_plural(len(conflicting), 'conflicting pair')}")
    return svg_root("cosine-heatmap", max(grid.right, lx) + MARGIN, ly + 14 + MARGIN, label, body + legend)
