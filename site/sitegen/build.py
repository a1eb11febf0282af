"""Build the whole site: every page from real analyses, the index, the stylesheet, claims.json.

    python site/build.py [--out _site] [--only SLUG ...]

A claim that does not hold, or a line a page points at that moved, stops the build with a
message naming the page (exit 1); nothing half-built is left looking finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time

from sitegen import code
from sitegen.claims import ClaimFailed
from sitegen.render import PageBuild, environment, stylesheet, write


class SiteBuildError(RuntimeError):
    """A page could not be built; the message names the page."""


def versions() -> list:
    """(name, version) of everything a page's numbers depend on."""
    import keras
    import numpy as np
    import tensorflow as tf

    import lossmap

    out = [("lossmap", lossmap.__version__), ("Keras", keras.__version__)]
    for label, module in (("tf_keras", "tf_keras"), ("TensorFlow Probability", "tensorflow_probability")):
        try:
            out.append((label, __import__(module).__version__))
        except ImportError:
            out.append((label, "not installed"))
    out += [("TensorFlow", tf.__version__), ("NumPy", np.__version__), ("Python", platform.python_version())]
    return out


def _build_page(env, module, out_dir, shared) -> dict:
    page = PageBuild(module, out_dir)
    start = time.perf_counter()
    try:
        context = module.build(page)
    except ClaimFailed:
        raise
    except code.CodeChanged as exc:
        raise SiteBuildError(f"page '{module.SLUG}': the code it shows changed: {exc}") from exc
    html = env.get_template(f"pages/{module.SLUG}.html.j2").render(page=page, **shared, **context)
    write(os.path.join(out_dir, f"{module.SLUG}.html"), html)
    return {"slug": module.SLUG, "title": module.TITLE, "seconds": round(time.perf_counter() - start, 2),
            "claims": page.claims.to_list(), "reports": [href for _, href in page.reports],
            "answer": getattr(module, "ANSWER", "")}


def build(out_dir: str, only=None, log=print) -> dict:
    """Build the site into `out_dir` (emptied first); returns the manifest written as claims.json."""
    from lossmap.quiet import import_tensorflow

    from sitegen.pages import PAGES

    import_tensorflow()
    # the examples make TensorFlow log warnings the pages show where they matter; keep the build's output short
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    modules = [m for m in PAGES if not only or m.SLUG in only]
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    env = environment()
    shared = {"versions": versions(), "nav": [(m.SLUG, m.NAV, m.TITLE) for m in modules]}
    manifest = {"versions": dict(shared["versions"]), "pages": []}
    for i, module in enumerate(modules):
        entry = _build_page(env, module, out_dir, dict(shared, number=i + 1,
                                                       prev=modules[i - 1] if i else None,
                                                       next=modules[i + 1] if i + 1 < len(modules) else None))
        manifest["pages"].append(entry)
        log(f"  {module.SLUG}.html: {len(entry['claims'])} claims checked, {entry['seconds']} s")
    write(os.path.join(out_dir, "assets", "site.css"), stylesheet())
    write(os.path.join(out_dir, "index.html"),
          env.get_template("index.html.j2").render(pages=modules, manifest=manifest, **shared))
    write(os.path.join(out_dir, "claims.json"), json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build lossmap's learning site.")
    ap.add_argument("--out", default=os.path.join(code.REPO, "_site"), help="output folder (emptied first)")
    ap.add_argument("--only", nargs="*", help="build only these pages (by slug)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = build(args.out, args.only)
    except (ClaimFailed, SiteBuildError) as exc:
        print(f"site build failed: {exc}", file=sys.stderr)
        return 1
    claims = sum(len(p["claims"]) for p in manifest["pages"])
    print(f"built {len(manifest['pages'])} pages ({claims} claims checked) into {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
