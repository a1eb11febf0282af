"""Page 6: `loss_weights` and multi-output models: pairing by name, by position, dict outputs; the per-output logs."""
from __future__ import annotations

import math

import numpy as np

import lossmap
from lossmap.examples import multi_output
from sitegen.claims import num
from sitegen.code import source_of

SLUG = "loss-weights"
NAV = "loss_weights and multi-output models"
TITLE = "loss_weights and multi-output models"
ANSWER = ("Keras pairs each output with its loss and weight by name (dicts) or by position in the model's outputs "
          "(lists), and a dict of outputs is flattened in sorted-key order. The `<output>_loss` logs are recorded before "
          "the weight is applied, and the regularization terms are in none of them, so the logged loss is not their "
          "sum.")


def batch():
    """Eight samples: features, a price and a class id."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype("float32")
    return x, [rng.standard_normal((8, 1)).astype("float32"), rng.integers(0, 3, (8, 1))]


def build(page) -> dict:
    x, y = batch()
    named = lossmap.analyse(multi_output.by_name(), data=(x, y))
    listed = lossmap.analyse(multi_output.by_position(), data=(x, y))
    dict_a = lossmap.analyse("lossmap.examples.multi_output:dict_outputs")
    logs = multi_output.logs(multi_output.by_name(), x, y)
    href = page.report(named, "multi_output", "two weighted outputs", "lossmap report lossmap.examples.multi_output:by_name")
    d_href = page.report(dict_a, "dict_outputs", "dict outputs with a list of losses",
                         "lossmap report lossmap.examples.multi_output:dict_outputs")
    page.run("lossmap report lossmap.examples.multi_output:by_name", "Two outputs, dicts by name:")
    page.run("lossmap report lossmap.examples.multi_output:dict_outputs", "Dict outputs with a list of losses:")
    steps = page.steps(named, href)
    c = {}
    c.update(_pairing_claims(page, named, listed))
    c.update(_log_claims(page, named, logs, steps))
    c.update(_dict_claims(page, dict_a, x, y))
    return {
        "c": c, "logs": logs, "steps": steps,
        "code": {name: source_of(getattr(multi_output, name)) for name in
                 ("_two_heads", "by_name", "by_position", "dict_outputs", "logs")},
        "eq": page.equation(named, href), "eq_dict": page.equation(dict_a, d_href),
        "per_output": next(f for f in named.findings if f.code == "PER_OUTPUT_LOGS_UNWEIGHTED"),
        "dead": next(f for f in dict_a.findings if f.code == "DEAD_TERM"),
    }


def _signature(a) -> list:
    return [(t.id, t.output, t.fn, t.weight, t.value) for t in a.terms]


def _pairing_claims(page, named, listed) -> dict:
    check = page.claims.check
    price, kind = named.term("compiled/price"), named.term("compiled/kind")
    return {
        "same": check("Given as dicts by output name or as lists in the order of `model.outputs`, the losses and "
                      "weights pair the same way: lossmap finds the same terms with the same values",
                      _signature(named) == _signature(listed)),
        "pairs": check(f"`price` is scored by `{price.fn}` with weight {price.weight:g}, `kind` by `{kind.fn}` with "
                       f"weight {kind.weight:g}", (price.fn, price.weight, kind.fn, kind.weight)
                       == ("mean_squared_error", 0.4, "sparse_categorical_crossentropy", 0.6)),
    }


def _log_claims(page, a, logs, steps) -> dict:
    check = page.claims.check
    price, kind = a.term("compiled/price"), a.term("compiled/kind")
    l2 = a.term("regularizer/trunk/kernel")
    block = steps["compiled_loss"]["block"]
    metric, weight = block.find("metric.update_state(", True), block.find("ops.multiply(value, loss_weight)", True)
    logged_sum = logs["price_loss"] + logs["kind_loss"]
    return {
        "unweighted": check(f"One `train_on_batch` logs `price_loss` {num(logs['price_loss'], 6)} and `kind_loss` "
                            f"{num(logs['kind_loss'], 6)}: the values before their weights",
                            math.isclose(logs["price_loss"], price.value, rel_tol=1e-5)
                            and math.isclose(logs["kind_loss"], kind.value, rel_tol=1e-5)),
        "order": check(f"`CompileLoss.call` records each output's metric (`compile_utils.py` line {metric}) before "
                       f"it multiplies the value by the loss weight (line {weight})", metric < weight),
        "loss": check(f"The logged `loss` is {num(logs['loss'], 6)} = {price.weight:g} x {num(price.value)} + "
                      f"{kind.weight:g} x {num(kind.value)} + {num(l2.value)} (the L2 on the trunk), not "
                      f"`price_loss + kind_loss` = {num(logged_sum, 6)}",
                      math.isclose(logs["loss"], a.total.reproduced, rel_tol=1e-5) and a.total.verified
                      and abs(logs["loss"] - logged_sum) > 0.1),
    }


def _dict_claims(page, a, x, y) -> dict:
    import keras

    check = page.claims.check
    model = multi_output.dict_outputs()
    zeta, alpha = a.term("compiled/zeta"), a.term("compiled/alpha")
    try:
        multi_output.logs(model, x, {"zeta": y[0], "alpha": y[1]})
        raised = None
    except Exception as exc:  # noqa: BLE001 - which error Keras raises is the claim
        raised = exc
    return {
        "sorted": check(f"`model.output_names` is {model.output_names}: the dict's keys in sorted order, not in the "
                        "order written", model.output_names == ["alpha_head", "zeta_head"]),
        "mispaired": check(f"So the list pairs its first loss and weight with `alpha`: lossmap finds `alpha` scored by "
                           f"`{alpha.fn}` with weight {alpha.weight:g} and `zeta` by `{zeta.fn}` with weight "
                           f"{zeta.weight:g}", (alpha.fn, alpha.weight, zeta.fn, zeta.weight)
                           == ("mean_squared_error", 0.3, "sparse_categorical_crossentropy", 0.7)),
        "dead": check("A crossentropy over one unit is always 0: lossmap reports the `zeta` term dead",
                      zeta.value == 0.0 and any(f.code == "DEAD_TERM" and f.term == "compiled/zeta"
                                                for f in a.findings)),
        "raises": check(f"With the labels you meant (a number for `zeta`, a class id for `alpha`), Keras "
                        f"{keras.__version__}'s `train_on_batch` fails inside `sparse_categorical_crossentropy` with "
                        f"{type(raised).__name__}, far from the `compile` call that caused it",
                        raised is not None and "sparse_categorical_crossentropy" in str(raised)),
    }
