"""Page 8: the same Keras 3 model on TensorFlow, JAX and PyTorch: where the loss it trains on differs, and why."""
from __future__ import annotations

import math

from lossmap import backends
from lossmap.backend_diff import keras_file
from lossmap.compare_backends import analyse_backends
from lossmap.examples import backend_differences as models
from lossmap.sources import definition
from sitegen.build import SiteBuildError
from sitegen.claims import num
from sitegen.code import file_lines, source_of

SLUG = "backends"
NAV = "TensorFlow, JAX, PyTorch"
TITLE = "TensorFlow, JAX or PyTorch: does the same model train on the same loss?"
ANSWER = ("Mostly yes: the loss is assembled by the same `CompileLoss` and `Trainer.compute_loss` on every backend. "
          "Two things differ: a crossentropy on a softmax or sigmoid output (TensorFlow computes it from the cached "
          "logits, JAX and PyTorch from clipped probabilities), and a `stateless_compute_loss` override, which only "
          "the JAX trainer calls. Here each is run on every installed backend, side by side.")
SPEC = "lossmap.examples.backend_differences:{}"
LABEL = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def build(page) -> dict:
    missing = [b for b in ("jax", "torch") if backends.missing(b)]
    if missing:  # the page is about every backend: say which one the build machine lacks, in one line
        raise SiteBuildError(f"page '{SLUG}' needs Keras 3 on {', '.join(missing)} installed: "
                             f"{backends.missing(missing[0])}")
    runs = {}
    for fn, title in (("agreeing", "the same on every backend"), ("saturated", "a saturated softmax"),
                      ("jax_only_penalty", "a stateless_compute_loss override")):
        runs[fn] = analyse_backends(SPEC.format(fn), gradients=False)
        command = f"lossmap report {SPEC.format(fn)} --compare-backends"
        page.report(runs[fn], fn, f"{fn}: {title}", command)
        page.run(command, f"`{fn}`, every installed backend side by side:")
    c = _claims(page, runs)
    cards = [_card(runs[fn], code, c[code]) for fn, code in (("saturated", "BACKEND_DIFF_CROSSENTROPY_LOGITS"),
                                                              ("jax_only_penalty", "BACKEND_DIFF_OVERRIDE"))]
    return {
        "c": c, "cards": cards, "labels": [LABEL[b] for b in runs["saturated"].backend_comparison["backends"]],
        "code": {fn: source_of(getattr(models, fn)) for fn in runs},
        "tables": {fn: _table(a) for fn, a in runs.items()},
    }


def _table(a) -> dict:
    bc = a.backend_comparison
    rows = [{"id": r["id"], "kind": r["kind"], "differs": r["differs"],
             "values": [(r["values"].get(b) or {}).get("value") for b in bc["backends"]]} for r in bc["rows"]]
    totals = [bc["totals"][b]["reproduced"] for b in bc["backends"]]
    return {"rows": rows, "totals": totals, "verified": [bc["totals"][b]["verified"] for b in bc["backends"]]}


def _difference(a, code) -> dict:
    return next(d for d in a.backend_comparison["differences"] if d["code"] == code)


def _card(a, code, claim) -> dict:
    d = _difference(a, code)
    return {"code": code, "title": d["title"], "message": d["message"], "claim": claim,
            "cites": [{"backend": LABEL.get(ct["engine"], ct["engine"]), "block": _window(ct)} for ct in d["cites"]]}


def _window(cite: dict, before: int = 4, after: int = 3):
    """The lines around a cited statement, read from the installed file by path (another backend's module is not
    imported here: JAX's would import JAX)."""
    path = keras_file(cite["module"])
    d = definition(path, cite["qualname"])
    first, last = max(d.start_line, cite["line"] - before), min(d.end_line, cite["line"] + after)
    return file_lines(path, first, last, marks={cite["text"]: None} if cite.get("text") else None,
                      qualname=cite["qualname"])


def _row(a, term_id) -> dict:
    return next(r for r in a.backend_comparison["rows"] if r["id"] == term_id)


def _claims(page, runs) -> dict:
    check = page.claims.check
    agreeing, saturated, override = runs["agreeing"], runs["saturated"], runs["jax_only_penalty"]
    every = [LABEL[b] for b in agreeing.backend_comparison["backends"]]
    verified = all(t["verified"] for a in runs.values() for t in a.backend_comparison["totals"].values())
    kind = _row(saturated, "compiled/kind")["values"]
    penalty = _row(override, "custom/penalty")["values"]
    cap = -math.log(1e-7)
    totals = {fn: {b: t["reproduced"] for b, t in a.backend_comparison["totals"].items()} for fn, a in runs.items()}
    return {
        "cap": check(
            f"Clipped at 1e-7, a probability counts at most -log(1e-7) = {num(cap)} per sample: the JAX and PyTorch "
            "values stay under it, the logits' value does not",
            kind["jax"]["value"] <= cap + 1e-4 and kind["torch"]["value"] <= cap + 1e-4 and kind["tensorflow"]["value"] > cap),
        "saturated_totals": check(
            f"The totals differ by {num(totals['saturated']['tensorflow'] - totals['saturated']['jax'])}, exactly the "
            "crossentropy's difference: the L2 term is the same on every backend",
            math.isclose(totals["saturated"]["tensorflow"] - totals["saturated"]["jax"],
                         kind["tensorflow"]["contribution"] - kind["jax"]["contribution"], rel_tol=1e-5)
            and not _row(saturated, "regularizer/hidden/kernel")["differs"]),
        "override_totals": check(
            f"JAX's total exceeds TensorFlow's by {num(totals['jax_only_penalty']['jax'] - totals['jax_only_penalty']['tensorflow'])}: "
            f"the penalty times its weight {num(penalty['jax']['weight'])}, and nothing else",
            math.isclose(totals["jax_only_penalty"]["jax"] - totals["jax_only_penalty"]["tensorflow"],
                         penalty["jax"]["contribution"], rel_tol=1e-5)),
        "same": check(
            f"On {', '.join(every)}, the MSE, L2 and `add_loss` model gives every term the same value within "
            f"tolerance (total {num(agreeing.backend_comparison['totals']['tensorflow']['reproduced'])})",
            not any(r["differs"] for r in agreeing.backend_comparison["rows"]) and len(every) == 3),
        "verified": check(
            "On every backend, for every model here, lossmap's independent reproduction equals that backend's own "
            "`compute_loss` and its real `train_step`", verified),
        "BACKEND_DIFF_CROSSENTROPY_LOGITS": check(
            f"The saturated softmax's crossentropy is {num(kind['tensorflow']['value'])} on TensorFlow (from the "
            f"logits) and {num(kind['jax']['value'])} on JAX, {num(kind['torch']['value'])} on PyTorch (from "
            "probabilities clipped to [1e-7, 1 - 1e-7])",
            kind["tensorflow"]["value"] > kind["jax"]["value"] + 1.0
            and _difference(saturated, "BACKEND_DIFF_CROSSENTROPY_LOGITS")["term"] == "compiled/kind"),
        "BACKEND_DIFF_OVERRIDE": check(
            f"The `stateless_compute_loss` override's penalty ({num(penalty['jax']['value'])}) is in JAX's total only: "
            "TensorFlow's and PyTorch's `train_step` never call the method",
            penalty.get("tensorflow") is None and penalty.get("torch") is None
            and _difference(override, "BACKEND_DIFF_OVERRIDE")["term"] == "custom/penalty"),
    }
