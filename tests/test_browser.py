"""The report in a real browser: headless Chromium (Debian's package), driven by Playwright.

No console error, no request besides the file itself, no dialog (a hostile name
must not run script), and a screenshot kept as a CI artifact
(`$LOSSMAP_ARTIFACTS`, default `ci-artifacts/`).
"""
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = os.environ.get("LOSSMAP_ARTIFACTS", os.path.join(os.path.dirname(os.path.dirname(__file__)), "ci-artifacts"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser test (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _open(browser, path, screenshot_name, dark=False):
    page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark" if dark else "light")
    events = {"console": [], "requests": [], "dialogs": [], "errors": []}
    page.on("console", lambda m: events["console"].append((m.type, m.text)))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("pageerror", lambda e: events["errors"].append(str(e)))

    def on_dialog(d):
        events["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    url = "file://" + os.path.abspath(path)
    page.goto(url)
    page.wait_for_load_state("load")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, screenshot_name), full_page=True)
    return page, events, url


def _assert_clean(events, url):
    assert [c for c in events["console"] if c[0] == "error"] == []
    assert events["errors"] == []
    assert events["dialogs"] == []
    assert events["requests"] == [url]


def test_report_opens_cleanly(browser, example_report):
    page, events, url = _open(browser, example_report, "report-multitask.png")
    _assert_clean(events, url)
    # the term table, graph and source walkthrough are there and a term link works
    assert page.locator("table.terms tr").count() > 1
    link = page.locator("ol.parts a").first
    link.click()
    assert page.evaluate("location.hash").startswith("#term-")
    page.close()
    dark, events, url = _open(browser, example_report, "report-multitask-dark.png", dark=True)
    _assert_clean(events, url)
    dark.close()


def test_hostile_names_run_no_script(browser, hostile_report):
    page, events, url = _open(browser, hostile_report, "report-hostile-names.png")
    _assert_clean(events, url)
    assert page.evaluate("window.__pwned === undefined")
    assert page.locator("img").count() == 0
    page.close()


def test_custom_step_report_opens_cleanly(browser, custom_report):
    page, events, url = _open(browser, custom_report, "report-custom-step.png")
    _assert_clean(events, url)
    link = page.locator("#step-user_step .ann a").first
    link.click()
    assert page.evaluate("location.hash").startswith("#term-")
    page.close()
    dark, events, url = _open(browser, custom_report, "report-custom-step-dark.png", dark=True)
    _assert_clean(events, url)
    dark.close()
