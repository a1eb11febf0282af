"""Page 5: one summed loss or two optimizers (and a weighted sum, and PCGrad), trained, measured and plotted."""
from __future__ import annotations

import math

import numpy as np

from lossmap.gradient_layout import pairs as gradient_pairs, term_views
import lossmap
from lossmap.examples import two_heads
from sitegen import plots
from sitegen.claims import num
from sitegen.code import source_of

SLUG = "one-loss-or-two-optimizers"
NAV = "One summed loss or two optimizers?"
TITLE = "One summed loss or two optimizers?"
ANSWER = ("Adam divides each variable's step by the size of its own gradient. One Adam on the sum lets the larger "
          "loss set the shared trunk's direction; one Adam per loss gives each loss a full-size step on the trunk, so "
          "the trunk moves up to twice as far. A weighted sum moves the balance without the doubled step.")
LABELS = {"summed": "summed", "two_optimizers": "two optimizers", "weighted": "weighted (1, 10)", "pcgrad": "PCGrad"}
KERNEL = "trunk/kernel"


def build(page) -> dict:
    runs = {name: two_heads.train(make) for name, make in two_heads.METHODS.items()}
    scaled = two_heads.train(two_heads.weighted, w_a=100.0, w_b=1000.0)
    x, y = two_heads.dataset()
    summed_a = lossmap.analyse(step="lossmap.examples.two_heads:example_summed", data=(x, y))
    two_a = lossmap.analyse(step="lossmap.examples.two_heads:example_two_optimizers", data=(x, y))
    pc_a = lossmap.analyse(step="lossmap.examples.two_heads:example_pcgrad", data=(x, y))
    s_href = page.report(summed_a, "two_heads_summed", "one Adam on the sum",
                         "lossmap report --step lossmap.examples.two_heads:example_summed")
    t_href = page.report(two_a, "two_heads_two_optimizers", "one Adam per loss",
                         "lossmap report --step lossmap.examples.two_heads:example_two_optimizers")
    page.run("python -m lossmap.examples.two_heads", "Train the four ways (the curves on this page):")
    page.run("lossmap explain --step lossmap.examples.two_heads:example_two_optimizers",
             "lossmap on the two-optimizer step:")
    c = {}
    c.update(_first_step_claims(page, runs, two_a))
    c.update(_training_claims(page, runs, scaled))
    c.update(_lossmap_claims(page, summed_a, pc_a))
    return {
        "c": c, "lr": two_heads.LEARNING_RATE, "steps": len(runs["summed"]["loss_a"]),
        "code": {name: source_of(getattr(two_heads, name)) for name in
                 ("dataset", "build_model", "summed", "two_optimizers", "weighted", "pcgrad", "_project", "train")},
        "charts": _charts(runs), "final": _final_rows(runs),
        "rows_summed": page.term_rows(summed_a, s_href), "eq_two": page.equation(two_a, t_href),
        "objectives": two_a.objectives,
        "multi": next(f for f in two_a.findings if f.code == "MULTIPLE_OPTIMIZERS"),
        "pc_finding": next((f for f in pc_a.findings if f.code == "GRADIENT_TRANSFORMED"), None),
    }


def _charts(runs) -> list:
    lr = two_heads.LEARNING_RATE
    out = []
    for key, title in (("loss_a", "loss_a (the large target) per step"), ("loss_b", "loss_b (the small target) per step")):
        series = [plots.Series(LABELS[n], r[key], f"s{i}", n == "pcgrad") for i, (n, r) in enumerate(runs.items())]
        out.append(plots.line_chart(series, title=title, x_label="training step", y_label=f"{key} (log scale)",
                                    log_y=True, width=540, height=290))
    for variable in (KERNEL, "trunk/bias"):
        series = [plots.Series(LABELS[n], r["trunk_update"][variable], f"s{i}", n == "pcgrad")
                  for i, (n, r) in enumerate(runs.items())]
        out.append(plots.line_chart(series, title=f"Size of each step's update to {variable}", x_label="training step",
                                    y_label="RMS of the update (log scale)", log_y=True, width=540, height=290,
                                    marks=((lr, "learning rate"), (2 * lr, "2 x learning rate"))))
    return out


def _final_rows(runs) -> list:
    return [{"method": LABELS[n], "loss_a": r["loss_a"][-1], "loss_b": r["loss_b"][-1],
             "step_size": float(np.mean(r["trunk_update"][KERNEL]))} for n, r in runs.items()]


def _first_step_claims(page, runs, two_a) -> dict:
    check = page.claims.check
    lr = two_heads.LEARNING_RATE
    one = runs["summed"]["first_update"][KERNEL] / lr
    two = runs["two_optimizers"]["first_update"][KERNEL] / lr
    full = float(np.mean(np.abs(two - 2) < 0.05))  # within 5% of it: Adam's eps matters for tiny gradients
    rms = runs["two_optimizers"]["trunk_update"][KERNEL][0]
    first = two_a.objectives[0]["first_update"][KERNEL]
    n = one.size
    return {
        "one_first": check(f"On the first step, one Adam on the summed loss moved every one of the {n} entries of "
                           f"the trunk's kernel by the learning rate, {lr}", np.all(np.abs(one - 1) < 1e-3)),
        "two_first": check(f"With two Adams, every entry moved by 0 or by twice the learning rate (within 5%): "
                           f"{100 * full:.0f}% by {2 * lr:g}, where the two gradients agree in sign, the rest not at all",
                           np.all((np.abs(two) < 0.05) | (np.abs(two - 2) < 0.05)) and 0 < full < 1),
        "two_rms": check(f"So the update's root mean square is 2 x {lr} x sqrt({full:.3f}) = "
                         f"{2 * lr * math.sqrt(full):.5f}, the measured {rms:.5f}",
                         math.isclose(rms, 2 * lr * math.sqrt(full), rel_tol=0.02)),
        "lossmap_first": check(f"lossmap's `MULTIPLE_OPTIMIZERS` finding measures the same thing on its own batch: "
                               f"each optimizer alone moves `{KERNEL}` by {num(first)} (= {lr} x sqrt({n}))",
                               math.isclose(first, lr * math.sqrt(n), rel_tol=1e-3)),
    }


def _training_claims(page, runs, scaled) -> dict:
    check = page.claims.check
    f = {n: (r["loss_a"][-1], r["loss_b"][-1], float(np.mean(r["trunk_update"][KERNEL]))) for n, r in runs.items()}
    steps = len(runs["summed"]["loss_a"])
    drift = max(max(abs(p - q) / p for p, q in zip(runs["weighted"][k], scaled[k])) for k in ("loss_a", "loss_b"))
    return {
        "two_b": check(f"After {steps} steps, two optimizers leave loss_b {f['summed'][1] / f['two_optimizers'][1]:.1f}"
                       f" times lower than one optimizer on the sum ({num(f['two_optimizers'][1])} against "
                       f"{num(f['summed'][1])}), for a loss_a {f['two_optimizers'][0] / f['summed'][0]:.2f} times "
                       "higher", f["two_optimizers"][1] < f["summed"][1] and f["two_optimizers"][0] > f["summed"][0]),
        "two_moves": check(f"Two optimizers move the trunk's kernel {f['two_optimizers'][2] / f['summed'][2]:.2f} "
                           f"times as far per step, on average over the run", f["two_optimizers"][2] > f["summed"][2]),
        "weighted": check(f"Weighting loss_b 10 times lowers it to {num(f['weighted'][1])} and raises loss_a to "
                          f"{num(f['weighted'][0])}: the weights move the balance",
                          f["weighted"][1] < f["summed"][1] and f["weighted"][0] > f["summed"][0]),
        "scale": check(f"Multiplying both weights by 100 changes no loss by more than {drift:.0e} (relative) over "
                       f"the {steps} steps: Adam sees only the ratio", drift < 1e-3),
        "pcgrad": check(f"PCGrad ends within {100 * _rel(f['pcgrad'], f['summed']):.1f}% of the summed loss on both "
                        "losses: on this task the two gradients barely conflict", _rel(f["pcgrad"], f["summed"]) < 0.05),
    }


def _rel(p, q) -> float:
    return max(abs(p[0] - q[0]) / q[0], abs(p[1] - q[1]) / q[1])


def _lossmap_claims(page, summed_a, pc_a) -> dict:
    check = page.claims.check
    g = term_views(summed_a.gradients)
    a, b = g["custom/loss_a"], g["custom/loss_b"]
    pair = gradient_pairs(summed_a.gradients)[0]
    return {
        "shares": check(f"On the whole dataset before training, lossmap gives loss_a {100 * a['share']:.1f}% of the "
                        f"summed gradient and loss_b {100 * b['share']:.1f}%; on the trunk their gradients' norms are "
                        f"{num(a['per_layer']['trunk'])} and {num(b['per_layer']['trunk'])}",
                        a["share"] > 0.9 and a["per_layer"]["trunk"] > 5 * b["per_layer"]["trunk"]),
        "cosine": check(f"Their cosine on the trunk is {pair['cosine']:.3f}: almost orthogonal, hardly in conflict",
                        abs(pair["cosine"]) < 0.1),
        "pc_lossmap": _pcgrad_claim(check, pc_a, pair),
    }


def _pcgrad_claim(check, pc_a, pair):
    """What lossmap says of the PCGrad step on this batch: PCGrad projects only conflicting gradients."""
    transformed = any(f.code == "GRADIENT_TRANSFORMED" for f in pc_a.findings)
    verified = pc_a.total.verified and pc_a.total.gradients_verified
    if transformed:
        return check("On the PCGrad step, lossmap verifies both losses and the gradients the step takes of them, "
                     "and reports `GRADIENT_TRANSFORMED`: the trunk receives the projected gradients, not their sum",
                     verified and pair["cosine"] < 0)
    return check(f"On the PCGrad step, lossmap verifies both losses and every gradient the step applies: on this "
                 f"batch the trunk gradients do not conflict (cosine {pair['cosine']:.3f}), so PCGrad projects nothing "
                 "and applies their plain sum, and no `GRADIENT_TRANSFORMED` is reported",
                 verified and pair["cosine"] >= 0)
