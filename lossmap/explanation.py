"""`lossmap.explain(model)`: the report as a Python object, for notebooks and scripts.

    >>> import lossmap
    >>> e = lossmap.explain(model)          # doctest: +SKIP
    >>> print(e)                            # the equation with this batch's numbers
    >>> e                                   # in Jupyter: the whole report, inline
    >>> e.save("loss.html"); e.to_json()
"""
from __future__ import annotations

import html
import os

from lossmap.analysis import Analysis


class Explanation:
    """An `Analysis` with its renderings; holds no Keras object."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis

    def __str__(self) -> str:
        return str(self.analysis)

    def __repr__(self) -> str:
        t = self.analysis.total
        return (f"<lossmap.Explanation {self.analysis.model.name}: loss {t.reproduced:.6g}, "
                f"{len(self.analysis.terms)} terms, {'verified' if t.verified else 'NOT verified'}>")

    def to_json(self, indent=2) -> str:
        return self.analysis.to_json(indent=indent)

    def html(self) -> str:
        from lossmap.render.html import render

        return render(self.analysis)

    def text(self) -> str:
        from lossmap.render.text import render

        return render(self.analysis)

    def _repr_html_(self) -> str:
        # The page goes in an iframe so its styles and ids cannot clash with the notebook's.
        page = html.escape(self.html(), quote=True)
        return (f'<iframe srcdoc="{page}" style="width:100%;height:720px;border:1px solid #ddd;'
                f'border-radius:8px" title="lossmap report for {html.escape(self.analysis.model.name)}"></iframe>')

    def save(self, path) -> str:
        """Write the HTML report, or the JSON document when `path` ends in .json."""
        path = os.fspath(path)
        text = self.to_json() + "\n" if path.endswith(".json") else self.html()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path
