"""Term groups (lossmap.groups): computed once per analysis, read by the loss graph and the HTML table."""
from lossmap.groups import GROUP_THRESHOLD, group_terms
from lossmap.render import anchor_id, html, svg
from test_svg import analysis, big_terms, small_terms


def test_computed_once_and_not_in_the_json():
    a = analysis(big_terms(150))
    assert a.grouping is a.grouping
    assert "grouping" not in a.to_dict() and "groups" not in a.to_json()
    assert [g.count for g in a.grouping.groups] == [150, 150]
    assert group_terms(a.terms, GROUP_THRESHOLD) == a.grouping


def test_every_term_in_one_bucket_in_order():
    terms = big_terms(150)
    g = group_terms(terms)
    ids = [t.id for b in g.compiled + g.additional for t in b.terms]
    assert sorted(ids) == sorted(t.id for t in terms)
    assert [t.id for b in g.compiled for t in b.terms] == [t.id for t in terms if t.kind == "compiled"]
    assert group_terms(small_terms()).groups == []


def test_graph_and_term_table_show_the_same_groups(monkeypatch):
    a = analysis(big_terms(150))
    keys = [g.key for g in a.grouping.groups]
    assert [g["key"] for g in svg.loss_graph(a).groups] == keys
    # the table's groups come from the analysis, not from drawing the graph
    monkeypatch.setattr(svg, "loss_graph", lambda _a: svg.Graph(svg="<svg/>"))
    sections = html.context(a)["groups"]
    anchors = [sg["anchor"] for s in sections for sg in s["subgroups"]]
    assert sorted(anchors) == sorted(anchor_id("group", k) for k in keys)
