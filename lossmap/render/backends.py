"""The backends' side-by-side section (`--compare-backends`) as plain rows, for the HTML and text templates.

Reads only `Analysis.backend_comparison` (`lossmap.compare_backends.comparison`); never calls Keras.
"""
from __future__ import annotations

from lossmap.backend_diff import LABEL
from lossmap.render import environment, format_number


def view(bc: dict) -> dict:
    names = bc["backends"]
    totals = bc["totals"]
    return {
        "backends": [{"name": b, "label": LABEL.get(b, b), "keras": totals[b]["keras_version"],
                      "here": b == bc["primary"]} for b in names],
        "rows": [{"id": r["id"], "kind": r["kind"], "note": r["note"], "differs": r["differs"],
                  "cells": [format_number(r["values"][b]["contribution"]) if r["values"][b] else "-" for b in names]}
                 for r in bc["rows"]],
        "total": [format_number(totals[b]["reproduced"]) for b in names],
        "compute_loss": [format_number(totals[b]["compute_loss"]) for b in names],
        "train_step": [format_number(totals[b]["train_step"]) if totals[b]["train_step"] is not None else "failed"
                       for b in names],
        "verdict": [("VERIFIED" if totals[b]["verified"] else "NOT VERIFIED")
                    + (f", max |diff| {format_number(totals[b]['max_abs_diff'], 3)}"
                       if totals[b]["max_abs_diff"] is not None else "") for b in names],
        "totals_same": bc["totals_same"],
        "differences": bc["differences"],
        "skipped": [f"{LABEL.get(s['backend'], s['backend'])}: {s['why']}" for s in bc["skipped"]],
        "failed": [f"{LABEL.get(f['backend'], f['backend'])} (exit {f['exit_code']}): {f['error']}"
                   for f in bc["failed"]],
        "tolerance": f"rtol {bc['rtol']:g}, atol {bc['atol']:g}",
        "batch": bc["batch"],
        "weights": bc["weights"],
    }


def render_text(analysis) -> str:
    """The section under `lossmap explain --compare-backends`."""
    bc = analysis.backend_comparison
    if not bc:
        return ""
    v = view(bc)
    head = ["term"] + [f"{b['label']}" for b in v["backends"]] + [""]
    body = [[r["id"]] + r["cells"] + [r["note"]] for r in v["rows"]]
    body += [["total (reproduced)"] + v["total"] + [""], ["compute_loss"] + v["compute_loss"] + [""],
             ["train_step"] + v["train_step"] + [""]]
    widths = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    table = ["  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) if i < len(head) - 1 else str(c)
                              for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in [head] + body]
    env = environment(autoescape=False)
    return env.get_template("backends.txt.j2").render(v=v, table=table)
