"""Pages, the shared stylesheet and the full reports, written into the output folder.

One look with the report: the stylesheet is lossmap's own `report.css`, `svg.css` and code
colours, plus `site.css`; pages are Jinja templates (autoescaped) under `site/templates/`.
All links are relative, so the site works from the file system and from any static host.
"""
from __future__ import annotations

import os

import jinja2
from markupsafe import Markup, escape

from lossmap.render import TEMPLATE_DIRS, format_number, template_source
from sitegen import code
from sitegen.claims import Claims, num, pct

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE_TEMPLATES = os.path.join(HERE, "templates")
CSP = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([SITE_TEMPLATES] + [d for d in TEMPLATE_DIRS if os.path.isdir(d)]),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.globals.update(claim=claim_markup, num=num, pct=pct, fmt=format_number, csp=CSP)
    env.filters["ticks"] = ticks
    return env


def ticks(text) -> Markup:
    """Text with `backticks` shown as code (escaped first: the text may hold any name)."""
    parts = str(text).split("`")
    return Markup("").join(Markup("<code>{}</code>").format(p) if i % 2 else escape(p) for i, p in enumerate(parts))


def claim_markup(c, text=None) -> Markup:
    """A checked sentence: its text and a check mark linking to the list of checks at the page's end."""
    return Markup('<span class="claim">{}<a class="tick" href="#{}" title="checked at build time">'
                  '&#10003;</a></span>').format(ticks(text if text is not None else c.text), c.anchor)


def stylesheet() -> str:
    from lossmap.render.html import code_css

    with open(os.path.join(SITE_TEMPLATES, "site.css"), encoding="utf-8") as fh:
        own = fh.read()
    css = "\n".join([template_source("report.css"), template_source("svg.css"), code_css(), own])
    # dark colours on screen only: a page printed from a dark-mode browser prints in the light palette
    return css.replace("@media (prefers-color-scheme: dark)", "@media screen and (prefers-color-scheme: dark)")


class PageBuild:
    """What a page builder gets: its claims, code inclusion, lossmap's views and the full reports."""

    def __init__(self, module, out_dir: str):
        self.module = module
        self.slug, self.title, self.nav = module.SLUG, module.TITLE, module.NAV
        self.claims = Claims(self.slug)
        self.out_dir = out_dir
        self.reports = []  # (title, href)
        self.commands = []  # the "run it yourself" commands
        self._views = {}

    # ---- lossmap's own views of an analysis
    def view(self, analysis) -> dict:
        """`lossmap.render.html.context(analysis)`, computed once per analysis."""
        from lossmap.render.html import context

        key = id(analysis)
        if key not in self._views:
            self._views[key] = (analysis, context(analysis))
        return self._views[key][1]

    def steps(self, analysis, report_href: str) -> dict:
        """The analysis's Keras walkthrough, by step key, each a CodeBlock plus its title and explanation."""
        out = {}
        for v in self.view(analysis)["walkthrough"] + self.view(analysis)["user_step"]:
            if v["found"]:
                block = code.step_block(v, report_href)
                out[v["key"]] = {"block": block, "title": v["title"], "explanation": v["explanation"]}
        return out

    def call_site(self, analysis, term_id: str, report_href: str):
        """Where the term's additional loss is added, in the layer's own source (lossmap's call sites)."""
        views = [v for v in self.view(analysis)["call_sites"] if v["term"] == term_id and v["found"]]
        if not views:
            raise code.CodeChanged(f"lossmap found no call site for {term_id}")
        return code.step_block(views[0], report_href)

    def equation(self, analysis, report_href: str) -> dict:
        eq = self.view(analysis)["equation"]
        parts = [dict(p, href=f"{report_href}#{p['anchor']}") for p in eq["parts"]]
        return {"total": eq["total"], "parts": parts, "summation": analysis.total.summation}

    def term_rows(self, analysis, report_href: str) -> list:
        """The report's term rows, each gradient with its reach by name (`gradient_layout.term_view`)."""
        from lossmap.gradient_layout import term_view

        rows = []
        for r in self.view(analysis)["rows"]:
            view = term_view(analysis.gradients, r["t"].id) if r.get("gradient") else None
            rows.append(dict(r, href=f"{report_href}#{r['anchor']}", gradient=view))
        return rows

    # ---- files
    def report(self, analysis, name: str, title: str, command: str) -> str:
        """Write lossmap's full report of `analysis` to reports/NAME.html; returns its relative href."""
        from lossmap.render.html import render

        os.makedirs(os.path.join(self.out_dir, "reports"), exist_ok=True)
        href = f"reports/{name}.html"
        with open(os.path.join(self.out_dir, href), "w", encoding="utf-8") as fh:
            fh.write(render(analysis, command=command))
        self.reports.append((title, href))
        return href

    def run(self, command: str, what: str) -> str:
        self.commands.append((command, what))
        return command


def findings_of(analysis, *codes) -> list:
    return [f for f in analysis.findings if not codes or f.code in codes]


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


__all__ = ["PageBuild", "environment", "escape", "findings_of", "stylesheet", "write"]
