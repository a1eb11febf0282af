"""The learning site in a real browser: headless Chromium (Debian's package), driven by Playwright.

Every page of the site (the questions, the index and the full reports they link) opens with no
console error and no request outside the site folder, and every link on it lands on an
existing page and anchor. The question pages and the index are screenshotted in light and
dark mode into `$LOSSMAP_ARTIFACTS` (default `ci-artifacts/`).
"""
import os
from urllib.parse import unquote, urldefrag

import pytest

from site_build import built_site, html_files
from test_browser import ARTIFACTS, CHROMIUM, FLAGS

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def site():
    return built_site()[0]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _visit(browser, path, dark, screenshot=None):
    page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark" if dark else "light")
    events = {"console": [], "requests": [], "errors": []}
    page.on("console", lambda m: events["console"].append((m.type, m.text)))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.goto("file://" + os.path.abspath(path))
    page.wait_for_load_state("load")
    if screenshot:
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, screenshot), full_page=True)
    return page, events


def test_every_page_opens_cleanly_and_its_links_resolve(browser, site):
    root = "file://" + os.path.realpath(site)
    ids, links, shots = {}, {}, 0
    for path in html_files(site):
        question = os.path.dirname(path) == site
        for dark in ((False, True) if question else (False,)):
            name = os.path.splitext(os.path.basename(path))[0]
            shot = f"site-{name}{'-dark' if dark else ''}.png" if question else None
            page, events = _visit(browser, path, dark, shot)
            shots += bool(shot)
            assert [c for c in events["console"] if c[0] == "error"] == [], path
            assert events["errors"] == [], path
            outside = [u for u in events["requests"] if not u.startswith(root + "/")]
            assert outside == [], f"{path} requested {outside}"
            ids[os.path.realpath(path)] = set(page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)"))
            # getAttribute: an SVG <a>'s href property is an SVGAnimatedString, not the URL
            links[path] = page.evaluate("[...document.querySelectorAll('a[href]')]"
                                        ".map(a => new URL(a.getAttribute('href'), document.baseURI).href)")
            page.close()
    assert shots == 2 * 9  # eight questions and the index, light and dark
    for path, hrefs in links.items():
        for link in hrefs:
            target, fragment = urldefrag(link)
            assert target.startswith(root + "/"), f"{path}: {link} leaves the site"
            file = os.path.realpath(unquote(target[len("file://"):]))
            assert file in ids, f"{path}: {link} is not a page of the site"
            if fragment:
                assert unquote(fragment) in ids[file], f"{path}: {link}: no such anchor"
