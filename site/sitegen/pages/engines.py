"""Page 7: where tf_keras 2.x and Keras 3 assemble the same model's loss differently, with both engines' lines."""
from __future__ import annotations

import math

import numpy as np

import lossmap
from lossmap.compare import analyse_both
from lossmap.examples import engine_differences as models
from sitegen.claims import num
from sitegen.code import library_window, source_of

SLUG = "engines"
NAV = "tf_keras 2.x vs Keras 3"
TITLE = "tf_keras 2.x vs Keras 3: where the same model gets a different loss"
ANSWER = ("The places lossmap knows, each found in both engines' installed source: non-scalar `add_loss` tensors, activity "
          "regularizer normalisation, per-output logs, `loss_weights` validation, distribution scaling, regularizers on "
          "frozen weights and binary crossentropy's epsilon. Here each one is run in both engines.")
SPEC = "lossmap.examples.engine_differences:{}"
ORDER = ("ENGINE_DIFF_ADD_LOSS_NON_SCALAR", "ENGINE_DIFF_ACTIVITY_NORMALISATION", "ENGINE_DIFF_PER_OUTPUT_LOGS",
         "ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION", "ENGINE_DIFF_DISTRIBUTION_SCALING", "ENGINE_DIFF_FROZEN_REGULARIZER",
         "ENGINE_DIFF_CROSSENTROPY_EPSILON")


def build(page) -> dict:
    both = analyse_both(SPEC.format("differences"))
    ns = analyse_both(SPEC.format("non_scalar_add_loss"))
    short = lossmap.analyse(SPEC.format("short_loss_weights_tf_keras"))
    for a, name, fn in ((both, "engine_differences", "differences"), (ns, "non_scalar_add_loss", "non_scalar_add_loss")):
        command = f"lossmap report {SPEC.format(fn)} --compare-engines"
        page.report(a, name, f"{fn} in both engines", command)
        page.run(command, f"`{fn}`, both engines side by side:")
    command = f"lossmap report {SPEC.format('short_loss_weights_tf_keras')}"
    page.report(short, "short_loss_weights", "short loss_weights on tf_keras", command)
    page.run(command, "`short_loss_weights` on tf_keras, the engine that accepts it:")
    source = {}
    for a, fn in ((both, "differences"), (ns, "non_scalar_add_loss"), (short, "short_loss_weights")):
        for d in a.engine_comparison["differences"]:
            source.setdefault(d["code"], (d, fn, a))
    c = _claims(page, both, ns, short)
    return {
        "c": c,
        "cards": [_card(code, *source[code], c[code]) for code in ORDER],
        "code": {fn: source_of(getattr(models, fn)) for fn in ("differences", "non_scalar_add_loss",
                                                                "short_loss_weights")},
        "table": _table(both), "totals": both.engine_comparison["totals"],
    }


def _card(code, d, fn, a, claim) -> dict:
    cites = [{"engine": "tf_keras" if ct["engine"] == "tf_keras" else "Keras 3", "block": library_window(ct)}
             for ct in d["cites"]]
    return {"code": code, "title": d["title"], "level": d["level"], "message": d["message"], "model": fn,
            "tf_keras": d.get("tf_keras"), "keras3": d.get("keras3"), "cites": cites, "claim": claim}


def _table(a) -> list:
    return [{"id": r["id"], "kind": r["kind"], "note": r["note"],
             "tf": r["tf_keras"]["contribution"] if r["tf_keras"] else None,
             "k3": r["keras3"]["contribution"] if r["keras3"] else None, "diff": r["difference"]}
            for r in a.engine_comparison["rows"]]


def _rows(a) -> dict:
    return {r["id"]: r for r in a.engine_comparison["rows"]}


def _claims(page, both, ns, short) -> dict:
    codes = {d["code"] for a in (both, ns, short) for d in a.engine_comparison["differences"]}
    out = {"all": page.claims.check(f"lossmap knows {len(ORDER)} places where tf_keras 2.x and Keras 3 build a "
                                    "different loss from the same model definition, and reports all of them on these "
                                    "three models", codes >= set(ORDER))}
    out.update(_claims_non_scalar(page, ns))
    out.update(_claims_same(page, both))
    out.update(_claims_weights(page, short))
    out.update(_claims_values(page, both))
    return out


def _claims_non_scalar(page, ns) -> dict:
    import tf_keras

    row = _rows(ns)["add_loss/penalty/0"]
    model = models.non_scalar_add_loss(tf_keras)
    x, y = np.zeros((4, 6), "float32"), np.zeros((4, 1), "float32")
    message = _raised(lambda: model.train_on_batch(x, y))
    size = ns.batch.size
    return {"ENGINE_DIFF_ADD_LOSS_NON_SCALAR": page.claims.check(
        f"A per-sample `add_loss` tensor counts {num(row['keras3']['value'])} in Keras 3, its sum over the {size} "
        f"samples, where lossmap values it at its mean, {num(row['tf_keras']['value'])}, in tf_keras; and tf_keras's "
        "own `train_on_batch` fails: `AddN` cannot add the per-sample tensor to the scalar compiled loss",
        math.isclose(row["keras3"]["value"], size * row["tf_keras"]["value"], rel_tol=1e-5)
        and message is not None and "AddN" in message and ns.engine_comparison["totals"]["keras3"]["verified"])}


def _claims_same(page, both) -> dict:
    rows = _rows(both)
    diffs = {d["code"]: d for d in both.engine_comparison["differences"]}
    check = page.claims.check
    return {
        "ENGINE_DIFF_ACTIVITY_NORMALISATION": check(
            f"Both installed engines divide the activity regularizer by the batch size: `activity/trunk` is "
            f"{num(rows['activity/trunk']['tf_keras']['value'])} in both", diffs[
                "ENGINE_DIFF_ACTIVITY_NORMALISATION"]["same"] and rows["activity/trunk"]["note"] == "same"),
        "ENGINE_DIFF_PER_OUTPUT_LOGS": check(
            "Both engines record `<output>_loss` before the loss weight: the per-output logs are unweighted in both",
            diffs["ENGINE_DIFF_PER_OUTPUT_LOGS"]["same"]),
        "ENGINE_DIFF_DISTRIBUTION_SCALING": check(
            f"With one replica, the SUM-reduced `value` loss is the same in both engines "
            f"({num(rows['compiled/value']['tf_keras']['contribution'])} after its weight); only several replicas "
            "would tell them apart", rows["compiled/value"]["note"] == "same"),
    }


def _claims_weights(page, short) -> dict:
    import keras

    model = models.short_loss_weights(keras)
    message = _raised(lambda: model.train_on_batch(np.zeros((4, 6), "float32"), [np.zeros((4, 1), "float32")] * 3))
    ids = [t.id for t in short.terms]
    return {"ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION": page.claims.check(
        f"With three outputs and two loss weights, tf_keras trains on {', '.join(f'`{i}`' for i in ids)} and silently "
        f"drops `third`; Keras 3's `train_on_batch` raises: \"{(message or '').splitlines()[0]}\"",
        ids == ["compiled/first", "compiled/second"] and short.total.verified
        and message is not None and "loss_weights" in message)}


def _claims_values(page, both) -> dict:
    rows = _rows(both)
    t = both.engine_comparison["totals"]
    frozen, score = rows["regularizer/pretrained/kernel"], rows["compiled/score"]
    gap = t["tf_keras"]["reproduced"] - t["keras3"]["reproduced"]
    explained = frozen["tf_keras"]["contribution"] - score["difference"]
    check = page.claims.check
    return {
        "ENGINE_DIFF_FROZEN_REGULARIZER": check(
            f"The L2 on the frozen layer's kernel ({num(frozen['tf_keras']['contribution'])}) is in tf_keras's total "
            "only", frozen["keras3"] is None and frozen["note"] == "only in tf_keras"),
        "ENGINE_DIFF_CROSSENTROPY_EPSILON": check(
            f"Binary crossentropy on `hard_sigmoid` probabilities contributes {num(score['tf_keras']['contribution'], 6)}"
            f" in tf_keras and {num(score['keras3']['contribution'], 6)} in Keras 3",
            score["note"] == "differs" and score["tf_keras"]["contribution"] > score["keras3"]["contribution"]),
        "totals": check(
            f"The totals differ by {num(gap, 6)}: exactly the frozen L2 plus the crossentropy's epsilon "
            f"({num(explained, 6)}), and each engine's own `train_step` agrees with its total",
            math.isclose(gap, explained, rel_tol=1e-4) and t["tf_keras"]["verified"] and t["keras3"]["verified"]),
    }


def _raised(fn):
    """The message of what `fn` raises, or None."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - which error the engine raises is the claim
        return str(exc).strip()
    return None
