"""Page 4: a loss built from d(output)/d(input): nested and persistent tapes, and a gradient taken outside the tape."""
from __future__ import annotations

import contextlib
import importlib
import logging
import math

from lossmap.gradient_layout import pairs as gradient_pairs, term_views
import lossmap
from lossmap.examples import input_gradient_tapes as tapes
from sitegen.claims import num
from sitegen.code import source_of

SLUG = "input-gradients"
NAV = "Losses built from d(output)/d(input)"
TITLE = "A loss that uses d(output)/d(input)"
ANSWER = ("Take the input gradient while the tape that differentiates the loss is recording (a nested tape, or the "
          "same persistent tape inside its block): then the penalty trains the weights through the second-order path. "
          "Taken outside that tape, the penalty has the same value and trains nothing.")
# the package's factory of the same name hides the module from `from lossmap.examples import ...`
input_gradient = importlib.import_module("lossmap.examples.smoothness")
VARIANTS = (
    ("nested", "lossmap.examples.smoothness:input_gradient", "input_gradient", "Nested tapes"),
    ("persistent", "lossmap.examples.input_gradient_tapes:persistent_tape", "persistent_tape", "One persistent tape"),
    ("outside", "lossmap.examples.input_gradient_tapes:outside_tape", "outside_tape", "Taken outside the tape"),
)
TERM = "custom/smoothness"


def build(page) -> dict:
    analyses, views, warned = {}, {}, {}
    for key, spec, name, title in VARIANTS:
        with tensorflow_warnings() as warned[key]:
            a = lossmap.analyse(spec)
        href = page.report(a, name, title.lower(), f"lossmap report {spec}")
        page.run(f"lossmap report {spec}", f"{title}:")
        analyses[key] = a
        views[key] = {"title": title, "eq": page.equation(a, href), "rows": page.term_rows(a, href),
                      "finding": next(f for f in a.findings if f.code == "INPUT_GRADIENT_TERM"),
                      "dead": next((f for f in a.findings if f.code == "DEAD_TERM"), None)}
    views["nested"]["code"] = source_of(input_gradient.SmoothRegressor.train_step, {
        "with tf.GradientTape() as tape:": "the outer tape starts recording",
        "dy_dx = inner.gradient(y_pred, x)": "taken inside the outer block: recorded"})
    views["persistent"]["code"] = source_of(tapes.PersistentTapeRegressor.train_step, {
        "persistent=True": "one tape for both gradients",
        "dy_dx = tape.gradient(y_pred, x)": "inside its own block: recorded"})
    views["outside"]["code"] = source_of(tapes.OutsideTapeRegressor.train_step, {
        "dy_dx = inner.gradient(y_first, x)": "before the outer tape exists: a constant for it"})
    c = {}
    c.update(_value_claims(page, analyses))
    c.update(_path_claims(page, analyses))
    note = [m for m in warned["persistent"] if "higher order derivatives" in m]
    c["tf_warns"] = page.claims.check("TensorFlow itself logs a warning for the persistent tape: \"" + (
        note[0].split(". ")[-1].rstrip(".") if note else "") + "\"", bool(note) and not warned["nested"])
    return {"c": c, "v": views, "order": [k for k, *_ in VARIANTS]}


def _value_claims(page, an) -> dict:
    check = page.claims.check
    values = {k: a.term(TERM).value for k, a in an.items()}
    data = {k: a.gradients["terms"]["compiled/mse"]["norm"] for k, a in an.items()}
    weights = {a.term(TERM).weight for a in an.values()}
    return {
        "weight": check(f"lossmap reads the penalty's weight, `self.smoothness_weight`, as {weights.pop():g} in all "
                        "three steps", len({a.term(TERM).weight for a in an.values()}) == 1),
        "same": check(f"The smoothness penalty has the same value in all three steps ({num(values['nested'], 6)}), "
                      "and each total is verified against what the step differentiated",
                      len(set(values.values())) == 1 and all(a.total.verified and a.total.gradients_verified
                                                              for a in an.values())),
        "data_same": check(f"The data loss's gradient is the same in all three ({num(data['nested'])})",
                           all(math.isclose(v, data["nested"], rel_tol=1e-5) for v in data.values())),
    }


def _path_claims(page, an) -> dict:
    check = page.claims.check
    g = {k: term_views(a.gradients)[TERM] for k, a in an.items()}
    msg = {k: next(f.message for f in a.findings if f.code == "INPUT_GRADIENT_TERM") for k, a in an.items()}
    reach = g["nested"]["reach"]["variables"]
    out_vars = [v for v in reach if "/out/" in v]
    return {
        "nested": check(f"With nested tapes, lossmap finds the outer tape recording when `dy_dx` was taken: the "
                        f"penalty's gradient is {num(g['nested']['norm'])} and reaches {len(reach)} variables",
                        "second-order path (through d output / d input) trains the weights" in msg["nested"]
                        and not g["nested"]["dead"]),
        "persistent": check(f"With one persistent tape, the gradient is the same ({num(g['persistent']['norm'])})",
                            math.isclose(g["persistent"]["norm"], g["nested"]["norm"], rel_tol=1e-5)
                            and "trains the weights" in msg["persistent"]),
        "second_order": check("The penalty's gradient reaches the output layer's kernel but not its bias: "
                              "d(output)/d(input) does not depend on the bias, so only the second-order path can "
                              "explain what it reaches",
                              out_vars and all(v.endswith("kernel") for v in out_vars)
                              and not any(v.endswith("out/bias") for v in reach)),
        "outside": check("Taken outside the tape that differentiates the loss, the penalty's gradient is zero: "
                         "lossmap says the second-order path is lost and reports `DEAD_TERM`",
                         "second-order path is lost" in msg["outside"] and g["outside"]["dead"]
                         and any(f.code == "DEAD_TERM" for f in an["outside"].findings)),
    }


@contextlib.contextmanager
def tensorflow_warnings():
    """The messages TensorFlow's logger emits at WARNING and above inside the block (not printed)."""
    logger, seen = logging.getLogger("tensorflow"), []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers, logger.propagate = [Keep(logging.WARNING)], False
    logger.setLevel(logging.WARNING)
    try:
        yield seen
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])
