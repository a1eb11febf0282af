"""The learning site (`make site`): built once from real analyses, then checked statically.

Every page exists with its claims, a false claim stops the build naming the page and the claim,
every link and anchor resolves inside the site, the code shown is the code in the file it
names, and each page states its versions. The browser test is tests/test_site_browser.py.
"""
import html
import json
import os
import re
import types
from html.parser import HTMLParser
from urllib.parse import urldefrag, urlparse

import pytest

from site_build import REPO, SITE, built_site, html_files, import_sitegen

SLUGS = ["add-loss-and-kl", "model-losses", "physics-terms", "input-gradients", "one-loss-or-two-optimizers",
         "loss-weights", "engines", "backends"]


class Page(HTMLParser):
    """ids, links and resources of one HTML file."""

    def __init__(self, path):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.resources = set(), [], []
        with open(path, encoding="utf-8") as fh:
            self.text = fh.read()
        self.feed(self.text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        for key in ("src", "srcset", "data", "poster"):
            if key in a:
                self.resources.append(a[key])
        if tag == "link" and "href" in a:
            self.resources.append(a["href"])


@pytest.fixture(scope="module")
def site():
    return built_site()


def test_every_page_is_built_with_its_claims(site):
    out, manifest = site
    assert [p["slug"] for p in manifest["pages"]] == SLUGS
    for entry in manifest["pages"]:
        page = Page(os.path.join(out, entry["slug"] + ".html"))
        assert len(entry["claims"]) >= 6, entry["slug"]
        # every claim is listed on its page, and every check mark points at one
        assert {f"claim-{c['number']}" for c in entry["claims"]} <= page.ids
        ticks = re.findall(r'class="tick" href="#(claim-\d+)"', page.text)
        assert ticks and set(ticks) <= page.ids
        assert 'id="run-it"' in page.text and "<pre><code>" in page.text, entry["slug"]
    with open(os.path.join(out, "claims.json"), encoding="utf-8") as fh:
        assert json.load(fh)["pages"] == manifest["pages"]


def test_page2_kernel_reach_is_an_assertion_on_lossmaps_result(site):
    _, manifest = site
    claims = next(p["claims"] for p in manifest["pages"] if p["slug"] == "model-losses")
    assert any("reaches exactly that layer's kernel" in c["text"] for c in claims)
    # the same check on a result where the L2 also reached the bias: the page must not build
    import_sitegen()
    from sitegen.claims import ClaimFailed, Claims
    from sitegen.pages import model_losses

    gradients = {  # the gradients JSON's layout (lossmap.gradient_layout): reach by index into the tables
        "layers": ["dense_1", "dense_2"],
        "variables": ["dense_1/kernel", "dense_1/bias", "dense_2/kernel"],
        "units": [{"id": "u0", "reach": {"layers": [[0, 1]], "variables": [[0, 2]]}},
                  {"id": "u1", "reach": {"layers": [[0, 2]], "variables": [[0, 3]]}}],
        "terms": {model_losses.L2: {"unit": "u0"}, "activity/dense_2": {"unit": "u1"}},
    }
    fake = types.SimpleNamespace(
        gradients=gradients,
        total=types.SimpleNamespace(reproduced=1.0, train_step=1.0, verified=True))
    page = types.SimpleNamespace(claims=Claims("model-losses"))
    with pytest.raises(ClaimFailed, match=r"page 'model-losses': claim failed: An L2 on one layer reaches exactly"):
        model_losses._reach_claims(page, fake, {"dense_1/kernel": True})


def test_a_false_claim_fails_the_build_with_page_and_claim(monkeypatch, tmp_path, capsys):
    import_sitegen()
    import sitegen.pages
    from sitegen import build as build_module

    fake = types.SimpleNamespace(SLUG="fake", NAV="fake", TITLE="Fake", ANSWER="",
                                 build=lambda page: page.claims.check("two and two make five", 2 + 2 == 5))
    monkeypatch.setattr(sitegen.pages, "PAGES", [fake])
    assert build_module.main(["--out", str(tmp_path / "out")]) == 1
    assert "page 'fake': claim failed: two and two make five" in capsys.readouterr().err


def test_links_and_anchors_resolve_inside_the_site(site):
    out, _ = site
    pages = {os.path.realpath(p): Page(p) for p in html_files(out)}
    assert len(pages) >= len(SLUGS) + 1 + 10  # the pages, the index and the full reports
    for path, page in pages.items():
        for ref in page.links + page.resources:
            parsed = urlparse(ref)
            assert not parsed.scheme and not parsed.netloc, f"{path}: {ref} leaves the site"
            target, fragment = urldefrag(ref)
            target_path = os.path.realpath(os.path.join(os.path.dirname(path), target)) if target else path
            assert target_path.startswith(os.path.realpath(out)), f"{path}: {ref} leaves the site"
            assert os.path.exists(target_path), f"{path}: {ref} does not exist"
            if fragment:
                assert fragment in pages[target_path].ids, f"{path}: {ref}: no such anchor"
    css = open(os.path.join(out, "assets", "site.css"), encoding="utf-8").read()
    assert "url(" not in css and "@import" not in css
    # dark mode on screen only: printing from a dark-mode browser uses the light palette
    assert "@media screen and (prefers-color-scheme: dark)" in css and "@media (prefers-color-scheme" not in css


def _code_blocks(text):
    """(path, first line, [line texts]) of every included code block."""
    for fig in re.findall(r'<figure class="source".*?</figure>', text, re.S):
        m = re.search(r"in <code>([^<]+)</code>, lines (\d+)", fig)
        rows = re.findall(r'<td class="ln">(\d+)</td><td class="tx"><pre>(.*?)</pre>', fig, re.S)
        yield m.group(1), int(m.group(2)), [(int(n), html.unescape(re.sub(r"<[^>]+>", "", t))) for n, t in rows]


def _source_path(shown):
    if os.path.exists(os.path.join(REPO, shown)):
        return os.path.join(REPO, shown)
    import importlib.util

    top = importlib.util.find_spec(shown.split("/")[0])
    return os.path.join(os.path.dirname(os.path.dirname(top.origin)), shown)


def test_code_shown_is_the_code_in_the_file_it_names(site):
    out, _ = site
    checked = 0
    for slug in SLUGS:
        text = open(os.path.join(out, slug + ".html"), encoding="utf-8").read()
        for shown, _, rows in _code_blocks(text):
            with open(_source_path(shown), encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            for number, line in rows:
                # lossmap's view of a method may drop the class's indentation; nothing else may differ
                assert lines[number - 1].endswith(line) and lines[number - 1].strip() == line.strip(), \
                    f"{slug}: {shown}:{number} differs from the file"
                checked += 1
    assert checked > 500


def test_each_page_states_its_versions_and_draws_its_plots(site):
    import keras

    out, manifest = site
    assert manifest["versions"]["Keras"] == keras.__version__
    for slug in SLUGS:
        text = open(os.path.join(out, slug + ".html"), encoding="utf-8").read()
        assert f"<th>Keras</th><td>{keras.__version__}</td>" in text
        assert "<script" not in text  # the pages need no JavaScript
    plots = {slug: open(os.path.join(out, slug + ".html"), encoding="utf-8").read().count('class="lossmap plot"')
             for slug in ("physics-terms", "one-loss-or-two-optimizers")}
    assert plots == {"physics-terms": 2, "one-loss-or-two-optimizers": 4}


def test_answers_state_numbers_only_in_checked_sentences(site):
    """In each page's answer, a digit outside code is inside a checked sentence ("Keras 3" aside)."""
    out, _ = site
    for slug in SLUGS:
        text = open(os.path.join(out, slug + ".html"), encoding="utf-8").read()
        answer = re.search(r'<section id="answer".*?</section>', text, re.S).group(0)
        answer = re.sub(r'<span class="claim">.*?</span>', "", answer, flags=re.S)
        answer = re.sub(r"<code>.*?</code>|<[^>]+>|Keras 3|tf_keras 2\.x", "", answer, flags=re.S)
        assert not re.search(r"\d", answer), f"{slug}: unchecked number in the answer: {answer!r}"


def test_site_modules_follow_the_size_rule():
    from test_structure import offenders

    modules = [(os.path.relpath(os.path.join(folder, name), SITE), os.path.join(folder, name))
               for folder, _, files in os.walk(SITE) for name in files if name.endswith(".py")]
    assert offenders(modules) == []
