"""The report's SVG pictures, from hand-built Analysis objects (no TensorFlow: fast)."""
from types import SimpleNamespace
import math
import os
import re
import xml.etree.ElementTree as ET

import pytest

from lossmap import gradient_layout as layout
from lossmap.analysis import Analysis, BatchInfo, ModelInfo, Term, Total
from lossmap.render import anchor_id, svg

NS = "{http://www.w3.org/2000/svg}"
HOSTILE = ["<img src=x onerror=alert(1)>", "</script><script>alert(1)</script>", 'a"b\'c&d']


# ---------------------------------------------------------------- builders
def term(id, kind, contribution, *, output=None, layer=None, variable=None, fn=None, weight=1.0):
    value = contribution / weight if weight else contribution
    return Term(id=id, kind=kind, output=output, layer=layer, variable=variable, fn=fn, config=None,
                value=value, weight=weight, contribution=contribution, opaque=False)


def analysis(terms, gradients=None, name="m"):
    total = sum(t.contribution for t in terms)
    return Analysis(
        lossmap_version="0.1.0",
        model=ModelInfo(source="x", name=name, engine="keras3", keras_version="3", backend="tensorflow",
                        saved_with=None, compiled=True, custom_train_step=False, custom_compute_loss=False),
        batch=BatchInfo(source="synthetic", size=8, seed=0),
        terms=terms,
        total=Total(reproduced=total, compute_loss=total, train_step=total, max_abs_diff=0.0, rtol=1e-5,
                    atol=1e-7, verified=True, path="eager", summation="sum"),
        findings=[],
        gradients=gradients,
    )


def small_terms(names=("price", "kind", "trunk", "penalty")):
    out_a, out_b, trunk, penalty = names
    return [
        term(f"compiled/{out_a}", "compiled", 0.47, output=out_a, fn="mean_squared_error", weight=0.4),
        term(f"compiled/{out_b}", "compiled", 1.2, output=out_b, fn="sparse_categorical_crossentropy", weight=0.6),
        term(f"add_loss/{penalty}/0", "add_loss", 0.055, layer=penalty),
        term(f"activity/{out_b}", "activity_regularizer", 0.0055, layer=out_b, fn="L2"),
        term(f"regularizer/{trunk}/kernel", "weight_regularizer", 0.0084, layer=trunk,
             variable=f"{trunk}/kernel", fn="L2"),
    ]


def fake_gradients(terms, cosines=None, dead=(), matrix=True):
    """One unit per term; per-layer norms over the layers named in the terms (the JSON's layout:
    per-layer norms and reach by index into the `layers` table)."""
    layers = list(dict.fromkeys([t.layer or t.output for t in terms]))
    units, entries = [], {}
    for i, t in enumerate(terms):
        norm = 1.0 / (i + 1)
        reach = [t.layer] if t.kind == "weight_regularizer" else layers
        per_layer = [] if t.id in dead else [[layers.index(name), norm / (k + 1)] for k, name in enumerate(reach)]
        entries[t.id] = {"unit": t.id, "grouped": False, "norm": 0.0 if t.id in dead else norm,
                         "share": (-0.05 if i == 1 else 0.9 / len(terms)), "norm_share": 0.3, "dead": t.id in dead}
        units.append({"id": t.id, "label": t.id, "kind": t.kind, "terms": [t.id], "grouped": False,
                      **{k: v for k, v in entries[t.id].items() if k not in ("unit", "grouped")},
                      "per_layer": sorted(per_layer),
                      "reach": {"layers": [[i, i + 1] for i, _ in sorted(per_layer)], "variables": []}})
    ids = [u["id"] for u in units]
    n = len(ids)
    m = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
    pairs = []
    for (a, b), c in (cosines or {}).items():
        i, j = ids.index(a), ids.index(b)
        m[i][j] = m[j][i] = c
        pairs.append({"a": a, "b": b, "cosine": c, "per_layer": [], "shared_variables": 3,
                      "norm_a": 1.0, "norm_b": 1.0, "imbalance_a_over_b": 1.0, "imbalance_b_over_a": 1.0})
    return {"method": "fake", "limit": 8, "optimizer": "Adam", "total_norm": 1.0, "layers": layers, "variables": [],
            "units": units,
            "terms": entries, "pairs": layout.pair_table(pairs, ids),
            "cosine": {"units": ids if matrix else None, "matrix": m if matrix else None}, "notes": []}


def big_terms(n_layers=150):
    """2 compiled + 150 kernel L2 + 150 activity L1 on dense_i: 302 terms."""
    terms = [term("compiled/out", "compiled", 0.7, output="out", fn="mean_squared_error"),
             term("compiled/aux", "compiled", 0.2, output="aux", fn="mean_absolute_error", weight=0.5)]
    for i in range(n_layers):
        terms.append(term(f"regularizer/dense_{i}/kernel", "weight_regularizer", 1e-4 * (1 + i % 7),
                          layer=f"dense_{i}", variable=f"dense_{i}/kernel", fn="L2"))
        terms.append(term(f"activity/dense_{i}", "activity_regularizer", 3e-5 * (1 + i % 5),
                          layer=f"dense_{i}", fn="L1"))
    return terms


def parse(markup):
    assert markup.startswith("<svg ")
    root = ET.fromstring(markup)
    assert root.tag == NS + "svg"
    assert root.get("role") == "img" and root.get("aria-label")
    assert root.find(NS + "title") is not None
    return root


def hrefs(root):
    return {a.get("href") for a in root.iter(NS + "a")}


def all_svgs(a):
    g = svg.loss_graph(a)
    return [g.svg, svg.gradient_share_bars(a), svg.layer_heatmap(a), svg.cosine_heatmap(a)]


# ---------------------------------------------------------------- loss graph
def test_every_term_is_a_link_target_and_sums_link_to_steps():
    terms = small_terms()
    a = analysis(terms)
    assert not any(h.startswith("#step-") for h in hrefs(parse(svg.loss_graph(a).svg)))  # no steps shown
    a.walkthrough = [SimpleNamespace(key=k, found=True)
                     for k in ("compute_loss", "compiled_loss", "aggregate_additional_loss")]
    g = svg.loss_graph(a)
    assert isinstance(g, svg.Graph) and g.groups == [] and str(g) == g.svg == g.__html__()
    root = parse(g.svg)
    links = hrefs(root)
    for t in terms:
        assert "#" + anchor_id("term", t.id) in links
    for step in ("compute_loss", "compiled_loss", "aggregate_additional_loss"):
        assert "#" + anchor_id("step", step) in links
    assert "#" + anchor_id("layer", "trunk") in links
    text = "".join(root.itertext())
    assert "0.47" in text and "1.2" in text  # each term's number is shown
    # node classes by kind
    classes = " ".join(el.get("class", "") for el in root.iter())
    for cls in ("node compiled", "node weight_regularizer", "node activity_regularizer",
                "node add_loss", "node sum", "node total", "edge", "bar"):
        assert cls in classes


def test_bars_are_proportional_to_the_share_of_the_total():
    terms = [term("compiled/a", "compiled", 3.0, output="a", fn="mse"),
             term("add_loss/l/0", "add_loss", -1.0, layer="l")]
    root = parse(svg.loss_graph(analysis(terms)).svg)
    bars = [float(r.get("width")) for g in root.iter(NS + "g") if g.get("class") == "bar" for r in g]
    assert sorted(bars) == pytest.approx([0.25 * svg.BAR_W, 0.75 * svg.BAR_W])


def test_only_compiled_only_additional_and_no_terms():
    compiled = [term("compiled/a", "compiled", 1.0, output="a", fn="mse")]
    extra = [term("add_loss/l/0", "add_loss", 1.0, layer="l")]
    for terms in (compiled, extra, []):
        a = analysis(terms)
        # the walkthrough shows a step only when the model uses it
        a.walkthrough = [SimpleNamespace(key="compute_loss", found=True)] + (
            [SimpleNamespace(key="compiled_loss", found=True)] if any(t.kind == "compiled" for t in terms) else [])
        root = parse(svg.loss_graph(a).svg)
        links = hrefs(root)
        assert "#" + anchor_id("step", "compute_loss") in links
        assert ("#" + anchor_id("step", "compiled_loss") in links) == bool(terms and terms[0].kind == "compiled")


def test_hostile_names_are_escaped_everywhere():
    terms = small_terms(names=tuple(HOSTILE) + ("plain",))
    terms.append(term("regularizer/" + HOSTILE[0] + "/kernel", "weight_regularizer", 0.01, layer=HOSTILE[0],
                      variable=HOSTILE[0] + "/kernel", fn=HOSTILE[1]))
    a = analysis(terms, fake_gradients(terms, {(terms[0].id, terms[1].id): -0.7}), name=HOSTILE[1])
    for markup in all_svgs(a):
        assert markup
        assert "<img" not in markup and "</script" not in markup.lower() and "<script" not in markup.lower()
        root = parse(markup)
        for el in root.iter():  # no attribute smuggled in
            assert not any(k.lower().startswith("on") for k in el.attrib)
    # the names are still there, escaped, for people to read
    assert "&lt;img src=x onerror=alert(1)&gt;" in svg.loss_graph(a).svg


def test_long_names_are_cut_and_kept_whole_in_the_title():
    long = "a_really_long_layer_name_that_would_never_fit_in_a_node_" * 3
    terms = [term(f"add_loss/{long}/0", "add_loss", 1.0, layer=long)]
    root = parse(svg.loss_graph(analysis(terms)).svg)
    texts = [t.text for t in root.iter(NS + "text")]
    titles = [t.text for t in root.iter(NS + "title")]
    assert not any(t and long in t for t in texts)
    assert any(t and t.endswith("…") for t in texts)
    assert any(t and long in t for t in titles)


def test_sizes_adapt_to_label_lengths():
    short = svg.loss_graph(analysis([term("add_loss/l/0", "add_loss", 1.0, layer="l")]))
    wide = svg.loss_graph(analysis([term("add_loss/l/0", "add_loss", 1.0, layer="a_medium_length_name")]))
    assert wide.width > short.width


def test_grouping_kicks_in_for_300_terms_and_subtotals_add_up():
    terms = big_terms(150)
    assert len(terms) == 302
    a = analysis(terms)
    g = svg.loss_graph(a)
    root = parse(g.svg)
    assert g.groups, "302 terms must be grouped"
    grouped_ids = [tid for grp in g.groups for tid in grp["term_ids"]]
    assert len(grouped_ids) == len(set(grouped_ids))
    by_id = {t.id: t for t in terms}
    assert math.isclose(sum(grp["subtotal"] for grp in g.groups),
                        math.fsum(by_id[tid].contribution for tid in grouped_ids), rel_tol=1e-12)
    for grp in g.groups:
        assert grp["count"] == len(grp["term_ids"])
        assert math.isclose(grp["subtotal"], math.fsum(by_id[t].contribution for t in grp["term_ids"]))
        assert grp["anchor"] == anchor_id("group", grp["key"])
        assert set(grp) >= {"key", "label", "kind", "term_ids", "subtotal", "count"}
    assert len({grp["key"] for grp in g.groups}) == len(g.groups)
    # every term is either drawn as its own link or sits in a linked group
    links = hrefs(root)
    for t in terms:
        assert "#" + anchor_id("term", t.id) in links or t.id in grouped_ids
    for grp in g.groups:
        assert "#" + grp["anchor"] in links
    # kernel L2 and activity L1 on dense_# are two groups; compiled (2 terms) stay single
    assert sorted(grp["count"] for grp in g.groups) == [150, 150]
    assert "#" + anchor_id("term", "compiled/out") in links
    assert g.height < 600  # stays readable


def test_grouping_coarsens_when_families_are_many():
    terms = [term(f"add_loss/{name}/0", "add_loss", 0.01, layer=name)
             for name in (f"layer{chr(97 + i)}{chr(97 + j)}" for i in range(10) for j in range(10))]
    g = svg.loss_graph(analysis(terms))
    assert len(g.groups) == 1 and g.groups[0]["count"] == 100
    parse(g.svg)


def test_no_grouping_at_the_threshold():
    terms = [term(f"activity/d_{i}", "activity_regularizer", 0.01, layer=f"d_{i}", fn="L1")
             for i in range(svg.GROUP_THRESHOLD)]
    g = svg.loss_graph(analysis(terms))
    assert g.groups == []
    links = hrefs(parse(g.svg))
    assert all("#" + anchor_id("term", t.id) in links for t in terms)


# ---------------------------------------------------------------- gradients
def test_gradient_charts_absent_or_empty():
    a = analysis(small_terms())
    assert svg.gradient_share_bars(a) == svg.layer_heatmap(a) == svg.cosine_heatmap(a) == ""
    empty = {"units": [], "terms": {}, "pairs": {"fields": layout.PAIR_FIELDS, "rows": []},
             "cosine": {"units": None, "matrix": None}}
    a = analysis(small_terms(), empty)
    assert svg.gradient_share_bars(a) == svg.layer_heatmap(a) == svg.cosine_heatmap(a) == ""
    a = analysis(small_terms(), {})
    assert svg.gradient_share_bars(a) == svg.layer_heatmap(a) == svg.cosine_heatmap(a) == ""


def test_share_bars_negative_left_and_dead_marked():
    terms = small_terms()
    a = analysis(terms, fake_gradients(terms, dead={terms[2].id}))
    root = parse(svg.gradient_share_bars(a))
    axis = next(el for el in root.iter(NS + "line") if el.get("class") == "axis")
    zero = float(axis.get("x1"))
    groups = [g for g in root.iter(NS + "g") if (g.get("class") or "").split()[:1] == ["bar"]]
    assert len(groups) == len(terms)
    bars = [g.find(NS + "rect") for g in groups]
    neg = [g.find(NS + "rect") for g in groups if "neg" in g.get("class")]
    assert len(neg) == 1 and float(neg[0].get("x")) + float(neg[0].get("width")) == pytest.approx(zero, abs=0.1)
    assert all(float(r.get("x")) == pytest.approx(zero, abs=0.1) for r in bars if r not in neg)
    rows = [el for el in root.iter(NS + "g") if "row" in (el.get("class") or "").split()]
    dead = [el for el in rows if "dead" in el.get("class").split()]
    assert len(dead) == 1 and "dead" in "".join(dead[0].itertext())
    assert "#" + anchor_id("term", terms[0].id) in hrefs(root)


def test_layer_heatmap_rows_columns_and_blocks():
    terms = small_terms()
    a = analysis(terms, fake_gradients(terms))
    root = parse(svg.layer_heatmap(a))
    cells = [g for g in root.iter(NS + "g") if (g.get("class") or "").split()[:1] == ["cell"]
             and g.find(NS + "title") is not None]
    n_layers = len({t.layer or t.output for t in terms})
    assert len(cells) == len(terms) * n_layers
    # 150 layers: merged into blocks, at most MAX_HEATMAP_COLUMNS columns, and said so
    big = big_terms(150)
    a = analysis(big, fake_gradients(big, matrix=False))
    markup = svg.layer_heatmap(a)
    root = parse(markup)
    cols = [t for t in root.iter(NS + "text") if t.get("class") == "col-label"]
    assert len(cols) <= svg.MAX_HEATMAP_COLUMNS
    assert "merged into" in "".join(root.itertext())
    rows = [t for t in root.iter(NS + "text") if t.get("class") == "row-label"]
    assert len(rows) <= svg.MAX_UNIT_ROWS


def test_cosine_heatmap_marks_negative_cosines_and_missing_ones():
    terms = small_terms()
    cos = {(terms[0].id, terms[1].id): -0.7, (terms[0].id, terms[2].id): -0.2, (terms[1].id, terms[2].id): 0.4}
    a = analysis(terms, fake_gradients(terms, cos))
    root = parse(svg.cosine_heatmap(a))
    circles = [c for c in root.iter(NS + "circle") if "conflict" in c.get("class")]
    in_grid = [c for c in circles if c not in list(root.find(NS + "g[@class='legend']").iter(NS + "circle"))]
    assert len(in_grid) == 4  # two negative pairs of trunk terms, both halves of their square
    assert sum("strong" in c.get("class") for c in in_grid) == 2
    neg = [g for g in root.iter(NS + "g") if g.get("class") == "cell neg" and g.find(NS + "title") is not None]
    assert len(neg) == 4
    titles = " ".join(t.text or "" for t in root.iter(NS + "title"))
    assert "no shared weights" in titles and "-0.700" in titles
    # drawn from the pairs, so also without the (<= 64 units) matrix
    a = analysis(terms, fake_gradients(terms, cos, matrix=False))
    assert svg.cosine_heatmap(a) != ""
    # no pair at all: nothing to draw
    assert svg.cosine_heatmap(analysis(terms, fake_gradients(terms, {}))) == ""


def test_cosine_heatmap_sets_weight_regularizers_against_trunk_terms_only():
    """Regularizers never share weights with each other: rows for them, columns for trunk terms."""
    big = big_terms(150)
    shared_ids = [t.id for t in big if t.kind != "weight_regularizer"][:3]
    regs = [t.id for t in big if t.kind == "weight_regularizer"]
    cos = {(shared_ids[0], shared_ids[1]): 0.3}
    cos.update({(shared_ids[0], r): (-0.9 if i == 77 else 0.1) for i, r in enumerate(regs)})
    gradients = fake_gradients(big[:2] + [t for t in big if t.kind == "weight_regularizer"], cos, matrix=False)
    root = parse(svg.cosine_heatmap(analysis(big, gradients)))
    cols = [t for t in root.iter(NS + "text") if t.get("class") == "col-label"]
    rows = [t for t in root.iter(NS + "text") if t.get("class") == "row-label"]
    assert len(cols) == 2  # the two compiled terms
    assert len(rows) == svg.MAX_UNIT_ROWS
    row_titles = [r.find(NS + "title").text for r in rows]
    assert row_titles[2] == regs[77]  # the most conflicting regularizer comes first
    notes = " ".join(t.text or "" for t in root.iter(NS + "text") if t.get("class") == "note")
    assert f"{150 + 2 - svg.MAX_UNIT_ROWS} more weight regularizers not shown" in notes


def test_all_outputs_are_well_formed_for_big_models():
    big = big_terms(150)
    a = analysis(big, fake_gradients(big, matrix=False))
    for markup in all_svgs(a):
        if markup:
            parse(markup)


def test_rects_carry_no_class():
    """A host page's `.bar { width: 80px }` must not resize the pictures' rectangles."""
    terms = small_terms()
    a = analysis(terms, fake_gradients(terms, {(terms[0].id, terms[1].id): -0.7}))
    for markup in all_svgs(a):
        assert all(r.get("class") is None for r in parse(markup).iter(NS + "rect"))


def test_css_names_the_classes():
    for cls in (".node", ".compiled", ".weight_regularizer", ".activity_regularizer", ".add_loss", ".sum",
                ".total", ".edge", ".bar", ".cell", ".conflict", "prefers-color-scheme: dark"):
        assert cls in svg.SVG_CSS
    assert not re.search(r"url\(|@import|https?:", svg.SVG_CSS)


def test_no_keras_import():
    import subprocess
    import sys

    code = ("import sys, lossmap.render.svg; "
            "sys.exit(any(m.split('.')[0] in ('keras', 'tensorflow') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- real models (slow: TensorFlow)
@pytest.mark.skipif(os.environ.get("LOSSMAP_FAST") == "1", reason="needs TensorFlow")
def test_real_multitask_renders():
    import lossmap

    a = lossmap.analyse("lossmap.examples:multitask")
    g = svg.loss_graph(a)
    links = hrefs(parse(g.svg))
    assert all("#" + anchor_id("term", t.id) in links for t in a.terms)
    for markup in (svg.gradient_share_bars(a), svg.layer_heatmap(a), svg.cosine_heatmap(a)):
        parse(markup)


def test_odd_terms_non_finite_values_and_model_level_losses():
    terms = [term("compiled/a", "compiled", float("nan"), output=None, fn=None),
             term("add_loss/(model)/0", "add_loss", float("inf"), layer=None),
             term("custom/x", "custom", -2.0, layer="x", fn="my_fn"),
             term("activity/y", "activity_regularizer", 0.0, layer="y", fn=None)]
    a = analysis(terms)
    a.total.compute_loss = None
    a.total.train_step = None
    a.total.verified = False
    g = svg.loss_graph(a)
    root = parse(g.svg)
    links = hrefs(root)
    assert all("#" + anchor_id("term", t.id) in links for t in terms)
    assert "unverified" in g.svg and "NaN" in "".join(root.itertext())
