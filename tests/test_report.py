"""Structural tests of the HTML report: terms, links, embedded JSON, escaping, the CLI command."""
import json
import os
from html.parser import HTMLParser

from conftest import HOSTILE_IMG, HOSTILE_SCRIPT
from lossmap.render import anchor_id


class PageIndex(HTMLParser):
    """Ids, internal links, elements and the embedded JSON of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.hrefs, self.tags, self.text = set(), [], [], []
        self.external = []
        self._json, self.json_text = False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("href", "src", "xlink:href", "action"):
            if key in attrs:
                value = attrs[key]
                (self.hrefs if value.startswith("#") else self.external).append(value)
        if tag == "script" and attrs.get("type") == "application/json":
            self._json = True

    def handle_data(self, data):
        if self._json:
            self.json_text = data
        self.text.append(data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._json = False


def index(path):
    p = PageIndex()
    with open(path, encoding="utf-8") as fh:
        p.feed(fh.read())
    return p


def test_every_term_appears_with_a_row(example_report, example_analysis):
    page = index(example_report)
    for t in example_analysis.terms:
        assert anchor_id("term", t.id) in page.ids, t.id
    text = " ".join(page.text)
    for t in example_analysis.terms:
        assert t.id in text


def test_every_internal_link_resolves(example_report, hostile_report):
    for path in (example_report, hostile_report):
        page = index(path)
        missing = [h for h in page.hrefs if h[1:] not in page.ids]
        assert missing == []
        assert page.external == []  # no request of any kind: no src, no external href


def test_embedded_json_equals_json_output(example_report, example_analysis):
    page = index(example_report)
    assert json.loads(page.json_text) == json.loads(example_analysis.to_json())


def test_self_contained(example_report):
    with open(example_report, encoding="utf-8") as fh:
        html = fh.read()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    assert "<link" not in html and "@import" not in html
    assert "prefers-color-scheme: dark" in html and "@media print" in html


def test_hostile_names_come_out_as_text(hostile_report, hostile_analysis):
    with open(hostile_report, encoding="utf-8") as fh:
        html = fh.read()
    assert HOSTILE_IMG not in html and "<img" not in html and HOSTILE_SCRIPT not in html
    assert html.count("</script>") == 2  # the JSON block and the page's own script, nothing else
    assert "<b onmouseover" not in html and "<svg onload" not in html
    page = index(hostile_report)
    assert any(HOSTILE_IMG in t for t in page.text)  # shown, as text
    assert any(HOSTILE_SCRIPT in t for t in page.text)
    assert json.loads(page.json_text) == json.loads(hostile_analysis.to_json())
    assert [t for t, _ in page.tags if t in ("img", "iframe", "object", "embed")] == []
    handlers = [k for _, attrs in page.tags for k in attrs if k.startswith("on")]
    assert handlers == []


def test_explanation_object(example_analysis, tmp_path):
    from lossmap.explanation import Explanation

    e = Explanation(example_analysis)
    assert str(e).startswith("loss ")
    assert "<iframe srcdoc=" in e._repr_html_()
    assert json.loads(e.to_json())["schema"] == "lossmap/1"
    html_path = e.save(tmp_path / "r.html")
    json_path = e.save(tmp_path / "r.json")
    assert open(html_path).read().startswith("<!DOCTYPE html>")
    assert json.load(open(json_path)) == json.loads(e.to_json())


def test_report_command_writes_html_and_json(tmp_path, monkeypatch):
    from lossmap.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", "--example", "multitask", "--json", "out.json", "--no-gradients"]) == 0
    assert os.path.exists("multitask.lossmap.html")
    page = index("multitask.lossmap.html")
    assert json.loads(page.json_text) == json.load(open("out.json"))
    assert main(["report"]) == 2
    assert main(["report", "--example", "multitask", "-o", "no/such/dir/x.html"]) == 2


def test_examples_list_matches_the_package():
    from lossmap.cli import EXAMPLES
    from lossmap.examples import EXAMPLES as BUILT

    assert EXAMPLES == BUILT


def test_report_size_for_many_terms(tmp_path):
    """Hundreds of terms stay well under the 2 MB budget."""
    import lossmap
    from lossmap.render.html import render

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    analysis = lossmap.analyse(os.path.join(here, "bench", "deep_mlp.py") + ":mlp_100")
    html = render(analysis)
    assert len(analysis.terms) == 201
    assert len(html.encode("utf-8")) < 2_000_000
    page = PageIndex()
    page.feed(html)
    assert [h for h in page.hrefs if h[1:] not in page.ids] == []


def test_custom_step_report_walks_through_the_users_lines(custom_report, custom_analysis):
    """The user's own step: its lines with their real numbers, each addend linked to its term."""
    page = index(custom_report)
    assert anchor_id("step", "user_step") in page.ids
    assert [h for h in page.hrefs if h[1:] not in page.ids] == [] and page.external == []
    assert json.loads(page.json_text) == json.loads(custom_analysis.to_json())
    with open(custom_report, encoding="utf-8") as fh:
        html = fh.read()
    for t in custom_analysis.terms:
        assert anchor_id("term", t.id) in page.ids
        # every term is linked from the line of the step that makes it
        assert f'href="#{anchor_id("term", t.id)}">{t.id}</a>' in html, t.id
    custom = [t for t in custom_analysis.terms if t.kind == "custom"]
    for t in custom:
        line = t.source["line"]
        assert f'<td class="ln">{line}</td>' in html
    text = " ".join(page.text)
    assert "Your training step" in text and "your step" in text.lower()
