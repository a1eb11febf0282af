"""Page 2: why `model.losses` holds the regularization losses, when it is filled, and what "eager safe" means."""
from __future__ import annotations

import math

from lossmap.gradient_layout import pairs as gradient_pairs, term_views
import lossmap
from lossmap.examples import regularized
from sitegen.claims import num
from sitegen.code import file_lines, source_of

SLUG = "model-losses"
NAV = "What model.losses holds"
TITLE = "Why does model.losses hold my regularization losses?"
ANSWER = ("Because Keras adds them to the loss by reading `model.losses` in `compute_loss`. Weight regularizers are "
          "recomputed from the current weights on every read; activity regularizers and `add_loss` tensors are refilled "
          "by every call. A hand-written loop gets none of them unless it adds `sum(model.losses)` itself.")
L2 = "regularizer/dense_1/kernel"


def build(page) -> dict:
    a = lossmap.analyse("lossmap.examples.regularized:regularized")
    loop = lossmap.analyse(step="lossmap.examples.custom_loop:train_step")
    forgot = lossmap.analyse(step="lossmap.examples.regularized:train_step")
    href = page.report(a, "regularized", "the regularized model", "lossmap report lossmap.examples.regularized:regularized")
    loop_href = page.report(loop, "custom_loop", "the loop that adds model.losses", "lossmap report --example custom_loop")
    forgot_href = page.report(forgot, "forgotten_losses", "the loop that forgets them",
                              "lossmap report --step lossmap.examples.regularized:train_step")
    page.run("lossmap report lossmap.examples.regularized:regularized", "The model and its four kinds of terms:")
    page.run("python -c 'from lossmap.examples.regularized import when_filled; print(*when_filled(), sep=\"\\n\")'",
             "What model.losses holds, moment by moment:")
    page.run("lossmap explain --example custom_loop", "The hand-written loop that adds model.losses:")
    page.run("lossmap explain --step lossmap.examples.regularized:train_step", "The one that forgets them:")
    moments = regularized.when_filled()
    steps = page.steps(a, href)
    c = {}
    c.update(_moment_claims(page, a, moments))
    c.update(_reach_claims(page, a, regularized.reach_of_l2()))
    c.update(_source_claims(page, steps))
    c.update(_loop_claims(page, loop, forgot))
    return {
        "c": c, "moments": moments, "steps": steps,
        "model_code": source_of(regularized.regularized, {"kernel_regularizer=": "a weight regularizer",
                                                          "activity_regularizer=": "an activity regularizer",
                                                          "ActivationPenalty(0.01": "a layer that calls add_loss"}),
        "penalty_code": source_of(regularized.ActivationPenalty.call, {"self.add_loss(": None}),
        "moments_code": source_of(regularized.when_filled),
        "reach_code": source_of(regularized.reach_of_l2, {"model.losses[0]": "read under the tape"}),
        "eager_safe": _eager_safe_docstring(),
        "eq": page.equation(a, href), "rows": page.term_rows(a, href),
        "loop_step": page.steps(loop, loop_href)["user_step"], "eq_loop": page.equation(loop, loop_href),
        "forgot_code": source_of(regularized.train_step, {"model.losses forgotten": None}),
        "forgot_finding": next(f for f in forgot.findings if f.code == "MODEL_LOSSES_IGNORED"),
    }


def _moment_claims(page, a, moments) -> dict:
    check = page.claims.check
    (_, before), (_, first), (_, second), (_, doubled) = moments
    l2 = a.term(L2).value
    return {
        "before": check(f"Before any call, `model.losses` already holds one entry, the L2 of `dense_1`'s kernel "
                        f"({num(before[0], 6)}, the value lossmap gives `{L2}`)",
                        len(before) == 1 and math.isclose(before[0], l2, rel_tol=1e-6)),
        "after": check("After a call it holds three: the activity regularizer's and the `add_loss` tensor, in layer "
                       "order, then the weight regularizer", len(first) == 3 and first[2] == before[0]),
        "second": check(f"A second call does not add three more: it replaces the call-time entries "
                        f"({num(first[0])} became {num(second[0])}, {num(first[1])} became {num(second[1])}) and "
                        f"leaves the L2 as it was", len(second) == 3 and second[0] != first[0]
                        and second[1] != first[1] and second[2] == first[2]),
        "recomputed": check(f"Doubling the kernel, with no call, quadruples the L2 entry on the next read "
                            f"({num(second[2], 6)} became {num(doubled[2], 6)}): it is computed when "
                            f"`model.losses` is read", math.isclose(doubled[2], 4 * second[2], rel_tol=1e-5)
                            and doubled[:2] == second[:2]),
    }


def _reach_claims(page, a, reach_by_hand) -> dict:
    check = page.claims.check
    reach = {t: e["reach"] for t, e in term_views(a.gradients).items()}
    hand = [v for v, has in reach_by_hand.items() if has]
    return {
        "by_hand": check("Read under a `GradientTape`, the L2 entry has a gradient for exactly one variable, "
                         "`dense_1/kernel`", hand == ["dense_1/kernel"]),
        "reach": check("An L2 on one layer reaches exactly that layer's kernel: lossmap measures a gradient of "
                       f"`{L2}` on `dense_1/kernel` and on no other variable",
                       reach[L2]["variables"] == ["dense_1/kernel"]),
        "activity": check("The activity regularizer on `dense_2`'s output reaches `dense_2` and the layer before "
                          "it, never the output layer", reach["activity/dense_2"]["layers"] == ["dense_1", "dense_2"]),
        "verified": check(f"The four terms add up to {num(a.total.reproduced, 6)}, what Keras's `train_step` "
                          f"computed ({num(a.total.train_step, 6)})", a.total.verified),
    }


def _source_claims(page, steps) -> dict:
    check = page.claims.check
    losses = steps["layer_losses"]["block"]
    regs = steps["regularization_losses"]["block"]
    own, reg = losses.find("layer._get_own_losses()", True), losses.find("self._get_regularization_losses()", True)
    trainable = regs.find("for variable in self.trainable_weights", True)
    compute = steps["compute_loss"]["block"]
    return {
        "compute": check(f"`Trainer.compute_loss` adds every entry of `self.losses` to the compiled loss "
                         f"(`trainer.py` lines {compute.find('for loss in self.losses', True)} and "
                         f"{compute.find('total_loss = ops.sum(losses)', True)})", True),
        "k3_order": check(f"Keras 3's `Layer.losses` collects every layer's own tensors (`layer.py` line {own}), "
                          f"then calls `_get_regularization_losses()` (line {reg}) on every read", own < reg),
        "trainable": check(f"`_get_regularization_losses` applies each regularizer to the current value of "
                           f"trainable weights only (line {trainable})", trainable > 0),
    }


def _loop_claims(page, loop, forgot) -> dict:
    check = page.claims.check
    expanded = [t for t in loop.terms if t.expression == "sum(model.losses)"]
    f = next((f for f in forgot.findings if f.code == "MODEL_LOSSES_IGNORED"), None)
    return {
        "loop": check(f"In the guide's loop, lossmap expands `sum(model.losses)` (line {expanded[0].source['line']}) "
                      f"into {len(expanded)} terms ({', '.join(f'`{t.id}`' for t in expanded)}), and the total it "
                      f"differentiates is verified", len(expanded) == 2 and loop.total.verified),
        "forgot": check("A hand-written step that leaves out `sum(model.losses)` trains without them: lossmap "
                        "reports `MODEL_LOSSES_IGNORED`, three entries of `model.losses` that the loss it "
                        "differentiates never includes",
                        f is not None and "holds 3 entries" in f.message and len(forgot.terms) == 1),
    }


def _eager_safe_docstring():
    """The lines of tf_keras's `Layer.losses` docstring that say "eager safe"."""
    import tf_keras.src.engine.base_layer as base_layer

    from lossmap.sources import definition

    d = definition(base_layer.__file__, "Layer.losses")
    with open(base_layer.__file__, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    at = next(i + 1 for i in range(d.start_line - 1, d.end_line) if "eager safe" in lines[i])
    return file_lines(base_layer.__file__, at - 4, at + 3, {"eager safe": None}, qualname="Layer.losses")
