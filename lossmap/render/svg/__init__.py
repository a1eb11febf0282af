"""Inline SVG pictures for the HTML report, laid out here in Python.

Reads only an `Analysis` (never Keras, never TensorFlow) and returns SVG markup
to paste into the page as it is: no JavaScript layout, no Graphviz, no fonts or
requests of any kind. Every name that comes from the model (outputs, layers,
losses, term ids) is escaped; long names are cut with an ellipsis and kept
whole in the `<title>` (hover text).

Modules: `primitives` (escaping, numbers, text, shapes), `graph` (the loss
graph), `gradient_units` (the rows the gradient charts draw) and
`gradient_charts` (share bars, layer heat map, cosine heat map).

Public API
----------
- `loss_graph(analysis) -> Graph`: the loss as a left-to-right graph; `Graph.svg`
  is the markup, `Graph.groups` the collapsed groups of terms (`Analysis.grouping`,
  see lossmap.groups), as dicts with `anchor == anchor_id("group", key)`.
- `gradient_share_bars(analysis) -> str`: each attribution unit's share of the total gradient.
- `layer_heatmap(analysis) -> str`: each unit's gradient norm on each layer.
- `cosine_heatmap(analysis) -> str`: pairwise cosine similarity between units.
- `SVG_CSS`: the stylesheet for all of the above (templates/svg.css; light, and
  dark through `prefers-color-scheme` or `<html data-theme="dark">`).

The three gradient functions return "" (falsy) when there is nothing to draw.

Links
-----
Term nodes link to `#` + anchor_id("term", term.id); group nodes to
anchor_id("group", key); layer nodes to anchor_id("layer", name); the compiled
sum to anchor_id("step", "compiled_loss"), the additional sum to
anchor_id("step", "aggregate_additional_loss"), the total to
anchor_id("step", "compute_loss") (each only when the report shows that step).
In the gradient charts, rows for a single term link to that term.

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
from lossmap.groups import GROUP_THRESHOLD
from lossmap.render import template_source
from lossmap.render.svg.gradient_charts import (CONFLICT_COSINE, HEAT_DECADES, MAX_HEATMAP_COLUMNS, cosine_heatmap,
                                                gradient_share_bars, layer_heatmap)
from lossmap.render.svg.gradient_units import MAX_UNIT_ROWS
from lossmap.render.svg.graph import BAR_W, Graph, loss_graph

SVG_CSS = template_source("svg.css")

__all__ = ["BAR_W", "CONFLICT_COSINE", "GROUP_THRESHOLD", "Graph", "HEAT_DECADES", "MAX_HEATMAP_COLUMNS",
           "MAX_UNIT_ROWS", "SVG_CSS", "cosine_heatmap", "gradient_share_bars", "layer_heatmap", "loss_graph"]
