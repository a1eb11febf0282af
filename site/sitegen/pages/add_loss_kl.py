"""Page 1: where `add_loss` and KL losses are added after the forward pass (tf_keras + TFP, then Keras 3)."""
from __future__ import annotations

from lossmap.gradient_layout import pairs as gradient_pairs, term_views
import lossmap
from lossmap.examples import dense_variational, variational_keras3
from sitegen.claims import num
from sitegen.code import source_of

SLUG = "add-loss-and-kl"
NAV = "add_loss and KL terms"
TITLE = "Where are add_loss and KL losses added after the forward pass?"
ANSWER = ("Not during the forward pass: `add_loss` only stores the tensor on the layer. After it, `compute_loss` reads "
          "`model.losses` and adds the entries to the compiled loss: `tf.add_n` in tf_keras, `ops.sum` in Keras 3.")
KL = "add_loss/bayes/0"


def build(page) -> dict:
    tf_a = lossmap.analyse("lossmap.examples:dense_variational")
    k3_a = lossmap.analyse("lossmap.examples.variational_keras3:dense_variational")
    tf_href = page.report(tf_a, "dense_variational", "DenseVariational on tf_keras",
                          "lossmap report --example dense_variational")
    k3_href = page.report(k3_a, "dense_variational_keras3", "the Keras 3 port",
                          "lossmap report lossmap.examples.variational_keras3:dense_variational")
    page.run("lossmap report --example dense_variational", "tf_keras and TensorFlow Probability:")
    page.run("lossmap report lossmap.examples.variational_keras3:dense_variational", "The Keras 3 port:")
    tf_steps, k3_steps = page.steps(tf_a, tf_href), page.steps(k3_a, k3_href)
    c = {}
    c.update(_forward_claims(page, tf_a, tf_href, tf_steps))
    c.update(_after_claims(page, tf_a, tf_steps))
    c.update(_keras3_claims(page, k3_a, k3_steps))
    c.update(_reach_claims(page, tf_a, k3_a))
    return {
        "c": c,
        "model_code": source_of(dense_variational, {"tfp.layers.DenseVariational(": "the KL term comes from here"}),
        "port_code": source_of(variational_keras3.MeanFieldVariational.call,
                               {"self.add_loss(": "the same hand-over in Keras 3"}),
        "tfp_site": page.call_site(tf_a, KL, tf_href),
        "tf": tf_steps, "k3": k3_steps,
        "eq_tf": page.equation(tf_a, tf_href), "eq_k3": page.equation(k3_a, k3_href),
    }


def _forward_claims(page, a, href, steps) -> dict:
    check = page.claims.check
    kl = a.term(KL)
    site = page.call_site(a, KL, href)
    line = site.find("self.add_loss(", highlighted=True)
    keep = steps["tfk_add_loss"]["block"].find("_eager_losses", highlighted=True)
    return {
        "engine": check("TensorFlow Probability's layers are tf_keras layers, so lossmap explains this model with its "
                        "tf_keras engine", a.model.engine == "tf_keras" and _tfp_on_tf_keras()),
        "kl_term": check(f"lossmap finds one `add_loss` term, `{KL}`, owned by the layer `bayes`, worth "
                         f"{num(kl.value, 6)} on this batch",
                         kl.kind == "add_loss" and kl.layer == "bayes" and kl.weight == 1.0),
        "tfp_line": check(f"TensorFlow Probability's `DenseVariational.call` hands the KL estimate to "
                          f"`self.add_loss` at line {line} of `{site.path}`", site.qualname == "DenseVariational.call"),
        "kept": check(f"tf_keras's `Layer.add_loss` appends the tensor, unreduced, to the layer's `_eager_losses` "
                      f"(`base_layer.py` line {keep}): nothing is added to a loss yet", keep > 0),
    }


def _after_claims(page, a, steps) -> dict:
    check = page.claims.check
    compute = steps["tfk_compute_loss"]["block"]
    container = steps["tfk_container"]["block"]
    losses = steps["tfk_losses"]["block"]
    eager, callables = losses.find("_eager_losses", True), losses.find("_callable_losses", True)
    reg_line = container.find("tf.add_n(regularization_losses)", True)
    total_line = container.find("tf.add_n(loss_values)", True)
    extra = [t for t in a.terms if t.kind != "compiled"]
    parts = " + ".join(f"{num(t.contribution, 6)} (`{t.id}`)" for t in a.terms)
    return {
        "recomputed": check("lossmap's run shows the weight regularizer recomputed when `model.losses` was read",
                            "recomputed on this access" in losses.note("_callable_losses")),
        "order": check(f"`model.losses` lists the tensors added during the last call first (line {eager}), then "
                       f"evaluates the weight regularizers (line {callables}): here `{extra[0].id}`, then "
                       f"`{extra[1].id}`",
                       eager < callables and [t.kind for t in extra] == ["add_loss", "weight_regularizer"]),
        "handed": check(f"`Model.compute_loss` passes `self.losses` to the compiled loss as `regularization_losses` "
                        f"(`training.py` line {compute.find('regularization_losses=self.losses', True)})", True),
        "add_n": check(f"`LossesContainer.__call__` adds the {len(extra)} entries of `model.losses` with "
                       f"`tf.add_n(regularization_losses)` (`compile_utils.py` line {reg_line}), then adds that sum "
                       f"to the compiled loss with a second `tf.add_n` (line {total_line})", reg_line < total_line),
        "sum": check(f"On this batch {parts} = {num(a.total.reproduced, 6)}, and tf_keras's own `train_step` "
                     f"computed {num(a.total.train_step, 6)}", a.total.verified),
    }


def _keras3_claims(page, a, steps) -> dict:
    check = page.claims.check
    compute = steps["compute_loss"]["block"]
    agg = steps["aggregate_additional_loss"]["block"]
    own = steps["layer_add_loss"]["block"].find("self._losses.extend", True)
    loop, total = compute.find("for loss in self.losses", True), compute.find("total_loss = ops.sum(losses)", True)
    return {
        "tfp_layer": check("`tfp.layers.DenseVariational` subclasses tf_keras's `Layer`, not Keras 3's",
                           _tfp_on_tf_keras()),
        "k3_keep": check(f"Keras 3's `Layer.add_loss` appends the tensor to the layer's own list (`layer.py` line "
                         f"{own})", a.term(KL).kind == "add_loss"),
        "k3_loop": check(f"`Trainer.compute_loss` computes the compiled loss, then passes each entry of "
                         f"`self.losses` through `_aggregate_additional_loss` (`trainer.py` line {loop}), which "
                         f"reduces it with `ops.sum` (line {agg.find('ops.sum(loss)', True)}), and adds everything "
                         f"with `ops.sum(losses)` (line {total})", loop < total),
        "k3_sum": check(f"The port's total, {num(a.total.reproduced, 6)}, is what Keras 3's `train_step` computed "
                        f"({num(a.total.train_step, 6)})", a.total.verified),
    }


def _reach_claims(page, tf_a, k3_a) -> dict:
    check = page.claims.check
    out = {}
    for key, name, a in (("reach_tf", "tf_keras", tf_a), ("reach_k3", "Keras 3", k3_a)):
        reach = term_views(a.gradients)[KL]["reach"]["variables"]
        out[key] = check(f"in {name}, the KL term's gradient reaches {len(reach)} variables "
                         f"({', '.join(f'`{v}`' for v in reach)}), the posterior's and the prior's, and no variable of "
                         "the trunk", reach and not any(v.startswith("trunk/") for v in reach))
    return out


def _tfp_on_tf_keras() -> bool:
    import keras
    import tensorflow_probability as tfp
    import tf_keras

    layer = tfp.layers.DenseVariational
    return issubclass(layer, tf_keras.layers.Layer) and not issubclass(layer, keras.layers.Layer)
