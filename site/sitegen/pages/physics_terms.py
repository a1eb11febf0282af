"""Page 3: penalties on the model's input and output in a custom `train_step`; a detached term; plateaus."""
from __future__ import annotations

import importlib

from lossmap.gradient_layout import pairs as gradient_pairs, term_views
import lossmap
from lossmap.examples import physics_detached, physics_training
from sitegen import plots
from sitegen.claims import num, pct
from sitegen.code import source_of

SLUG = "physics-terms"
NAV = "Physics-informed terms"
TITLE = "Penalties that depend on the model's input and output"
ANSWER = ("Write them in `train_step` next to the data loss: lossmap splits the total into its terms, measures what each "
          "does to the weights, and names the line where a term stops training anything. A term whose curve is flat "
          "can still be training; a term whose curve falls can be dead. Its gradient tells which.")
SPEC = "lossmap.examples.pinn:physics_informed"  # module:function, not the package alias
DETACHED = "lossmap.examples.physics_detached:physics_detached"
# the package's factory of the same name hides the module from `from lossmap.examples import ...`
physics_informed = importlib.import_module("lossmap.examples.pinn")


def build(page) -> dict:
    a = lossmap.analyse(SPEC)
    d = lossmap.analyse(DETACHED)
    href = page.report(a, "physics_informed", "the physics-informed step", "lossmap report --example physics_informed")
    d_href = page.report(d, "physics_detached", "the detached step", f"lossmap report {DETACHED}")
    page.run("lossmap report --example physics_informed", "The step, split and verified:")
    page.run(f"lossmap report {DETACHED}", "The step with the detached term:")
    page.run("python -m lossmap.examples.physics_training", "The training runs behind the curves:")
    z, x = physics_training.measurements()
    model = physics_informed.physics_informed()
    hist = {"intact": physics_training.train(model, z, x)}
    trained = lossmap.analyse(model, data=(z, x))
    detached_model = physics_detached.physics_detached()
    hist["detached"] = physics_training.train(detached_model, z, x)
    trained_d = lossmap.analyse(detached_model, data=(z, x))
    c = {}
    c.update(_split_claims(page, a))
    c.update(_detached_claims(page, a, d))
    c.update(_plateau_claims(page, hist, trained, trained_d))
    c["data"] = page.claims.check("The measurements obey `x1 = z1 ** 2` and break `x0 + x1 = z0` by exactly 1",
                                  abs(x[:, 1] - z[:, 1] ** 2).max() < 1e-5
                                  and abs(x[:, 0] + x[:, 1] - z[:, 0] - 1).max() < 1e-5)
    return {
        "c": c,
        "step": page.steps(a, href)["user_step"], "eq": page.equation(a, href), "rows": page.term_rows(a, href),
        "detached_code": source_of(physics_detached.DetachedPhysicsEncoder.train_step,
                                   {"x_pred.numpy()": "the NumPy physics routine: TensorFlow records nothing here"}),
        "eq_d": page.equation(d, d_href), "rows_d": page.term_rows(d, d_href),
        "dead": next(f for f in d.findings if f.code == "DEAD_TERM"),
        "data_code": source_of(physics_training.measurements),
        "train_code": source_of(physics_training.train),
        "plots": [_chart(hist["intact"], "The step as written"), _chart(hist["detached"], "With loss_z detached")],
        "rows_trained": page.term_rows(trained, page.report(trained, "physics_trained", "the trained model",
                                                            "python -m lossmap.examples.physics_training")),
        "steps": physics_training.STEPS,
    }


def _chart(history, title) -> str:
    names = ["data_loss", "loss_x", "loss_z"]
    # loss_z dashed: it runs next to data_loss, which pulls x1 toward z1 ** 2 as well
    series = [plots.Series(n, [h[n] for h in history], f"s{i}", n == "loss_z") for i, n in enumerate(names)]
    return plots.line_chart(series, title=title, x_label="training step", y_label="term value (log scale)",
                            log_y=True, width=540, height=280)


def _split_claims(page, a) -> dict:
    check = page.claims.check
    ids = [t.id for t in a.terms]
    keras_terms = [t for t in a.terms if t.kind != "custom"]
    shares = {t: e["share"] for t, e in a.gradients["terms"].items()}
    value = {t.id: t.contribution / a.total.reproduced for t in a.terms}
    return {
        "split": check(f"lossmap splits the total into {len(ids)} terms: `self.compute_loss(...)` opens into "
                       f"{' and '.join(f'`{t.id}`' for t in keras_terms)}, and `self.a * loss_x` and "
                       "`self.b * loss_z` are custom terms with weights 0.5 and 0.1",
                       ids[:2] == [t.id for t in keras_terms] and a.term("custom/loss_x").weight == 0.5
                       and a.term("custom/loss_z").weight == 0.1),
        "verified": check(f"They add up to {num(a.total.reproduced, 6)}, the value the step differentiated, and the "
                          "gradients it applied equal the sum of the terms' gradients",
                          a.total.verified and a.total.gradients_verified),
        "share": check(f"On this batch `loss_x` makes up {pct(value['custom/loss_x'])} of the total and carries "
                       f"{pct(shares['custom/loss_x'])} of its gradient; the data loss makes up "
                       f"{pct(value['compiled/mse'])} and carries {pct(shares['compiled/mse'])}",
                       abs(shares["compiled/mse"] - value["compiled/mse"]) > 0.1),
    }


def _detached_claims(page, a, d) -> dict:
    check = page.claims.check
    dead = next((f for f in d.findings if f.code == "DEAD_TERM" and f.term == "custom/loss_z"), None)
    entry = term_views(d.gradients)["custom/loss_z"]
    return {
        "same_value": check(f"`loss_z` has the same value as in the intact step ({num(d.term('custom/loss_z').value, 6)})"
                            " and the total is still verified",
                            d.term("custom/loss_z").value == a.term("custom/loss_z").value and d.total.verified),
        "dead": check("Detached by a `.numpy()` call, `loss_z` keeps its value but its gradient is zero on every "
                      "weight: lossmap reports `DEAD_TERM` and names the line that passes it through `.numpy()`", dead is not None and ".numpy()" in dead.message
                      and entry["dead"] and entry["reach"]["variables"] == []),
    }


def _pair(a, x, y):
    return next(p for p in gradient_pairs(a.gradients) if {p["a"], p["b"]} == {x, y})


def _plateau_claims(page, hist, trained, trained_d) -> dict:
    check = page.claims.check
    lx = [h["loss_x"] for h in hist["intact"]]
    half = len(lx) // 2
    tail = lx[half:]
    g = trained.gradients
    lx_norm = g["terms"]["custom/loss_x"]["norm"]
    cos = _pair(trained, "compiled/mse", "custom/loss_x")["cosine"]
    lz_i, lz_d = hist["intact"][-1]["loss_z"], hist["detached"][-1]["loss_z"]
    dead_after = trained_d.gradients["terms"]["custom/loss_z"]["dead"]
    return {
        "plateau": check(f"`loss_x` falls from {num(lx[0])} to {num(lx[half])} in the first {half} steps, then stays "
                         f"between {num(min(tail))} and {num(max(tail))} for the last {len(tail)}",
                         max(tail) < 1.1 * min(tail) and lx[half] < 0.2 * lx[0]),
        "alive": check(f"After training, `loss_x`'s gradient is still {num(lx_norm)} (the total gradient is "
                       f"{num(g['total_norm'])}): the plateau is not a dead term", lx_norm > 0.2 * g["total_norm"]),
        "cosine": check(f"Its cosine with the data loss's gradient is {cos:.2f}: the two pull the shared weights in "
                        "opposite directions, and `loss_x` sits where the pulls balance", cos < -0.2),
        "falls_dead": check(f"Detached, `loss_z` still falls from {num(hist['detached'][0]['loss_z'])} to {num(lz_d)} "
                            f"(the intact step reaches {num(lz_i)}), because the data loss moves the same outputs; "
                            "lossmap still finds its gradient zero after training",
                            lz_d < 0.75 * hist["detached"][0]["loss_z"] and abs(lz_d - lz_i) < 0.05 * lz_i
                            and dead_after),
    }
