"""lossmap on Keras 3's JAX backend, in a child process (the backend is fixed when Keras is imported, and
the test process runs TensorFlow): `python tests/jax_child.py JOB OUT.json [DIR]` runs every analysis of
JOB in this one process and writes what tests/test_keras3_jax.py asserts on as JSON.

Jobs: `analyses` (the CLI on the bundled example, a saved multi-output model with everything, a report
for the browser, the walkthrough, gradients against jax.grad, custom code), `property` (built-in losses
on random models, tests/test_property.py's specs), `hostile` (tests/hostile_files.py's files, mutated).
"""
import json
import os
import pathlib
import sys
import tempfile
import traceback

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from child_cli import cli  # noqa: E402  (tests/ is on the path from here)


def highlighted(analysis):
    """The walkthrough: key -> {file, display_path, lines: [[number, text]]} of the highlighted lines."""
    return {s.key: {"file": s.file, "display_path": s.display_path, "found": s.found,
                    "lines": [[ln.number, ln.text] for ln in s.lines if ln.highlight]}
            for s in analysis.walkthrough}


# ---------------------------------------------------------------- analyses
def everything_model():
    """Two list outputs (sigmoid and softmax heads, MSE), loss weights, L1/L2 kernel regularizers, an
    activity regularizer, an add_loss layer, BatchNormalization and Dropout, Adam."""
    import keras
    from keras import layers, regularizers

    from lossmap.examples import ActivationPenalty, same_weights

    same_weights(3)
    x = keras.Input((5,), name="features")
    h = layers.Dense(8, activation="relu", kernel_regularizer=regularizers.L1L2(1e-3, 1e-3), name="trunk")(x)
    h = layers.BatchNormalization(name="norm")(h)
    h = layers.Dropout(0.3, seed=2, name="drop")(h)
    h = ActivationPenalty(0.1, name="penalty")(h)
    flag = layers.Dense(2, activation="sigmoid", kernel_regularizer=regularizers.L2(1e-2), name="flag")(h)
    kind = layers.Dense(4, activation="softmax", activity_regularizer=regularizers.L2(1e-2), name="kind")(h)
    level = layers.Dense(1, name="level")(h)
    model = keras.Model(x, [flag, kind, level], name="everything")
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=["binary_crossentropy", "categorical_crossentropy", "mse"], loss_weights=[0.3, 1.5, 0.7])
    return model


def saturated_model(loss):
    """A softmax head whose logits differ by 60: class 2's probability is far below epsilon."""
    import keras

    x = keras.Input((2,), name="x")
    out = keras.layers.Dense(3, activation="softmax", name="p", bias_initializer=keras.initializers.Constant(
        [30.0, 0.0, -30.0]), kernel_initializer="zeros")(x)
    model = keras.Model(x, out, name="saturated")
    model.compile(optimizer="sgd", loss=loss)
    return model


def everything_batch(path, n=8):
    import numpy as np

    rng = np.random.default_rng(1)
    np.savez(path, **{
        "x": rng.standard_normal((n, 5)).astype("float32"),
        "y/flag": rng.integers(0, 2, (n, 2)).astype("float32"),
        "y/kind": np.eye(4, dtype="float32")[rng.integers(0, 4, n)],
        "y/level": rng.standard_normal((n, 1)).astype("float32"),
        "sample_weight/kind": rng.uniform(0.2, 2.0, n).astype("float32"),
        "sample_weight/level": (rng.uniform(0.0, 2.0, n) * rng.integers(0, 2, n)).astype("float32"),
    })
    return path


def state_of(model):
    import numpy as np

    vs = list(model.variables) + (list(model.optimizer.variables) if model.optimizer.built else [])
    return [(v.path, np.array(v.value).tobytes()) for v in vs], model.optimizer.built


def gradient_norm(grads) -> float:
    """|gradient| over every variable, summed in float64."""
    import numpy as np

    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64)))) for g in grads)))


def jax_addends(addends, values) -> dict:
    """{name: {"value", "norm"}}: each addend written out as a function of the trainable values, and the norm of
    its `jax.grad`: the independent reference lossmap's terms are held to."""
    import jax

    return {name: {"value": float(f(values)), "norm": gradient_norm(jax.grad(f)(values))} for name, f in addends.items()}


def jax_total_gradient_norm(model, xs, ys, sw):
    """|gradient of the total| as Keras's own compute_loss_and_updates gives it, with jax.grad."""
    import jax

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    mv = [v.value for v in model.metrics_variables]
    opt = type(model.optimizer).from_config(model.optimizer.get_config())  # a built copy: the model's stays unbuilt
    opt.build(model.trainable_variables)
    ov = [v.value for v in opt.variables]
    grads = jax.grad(lambda t: model.compute_loss_and_updates(t, ntv, mv, xs, ys, sw, training=True,
                                                              optimizer_variables=ov)[0])(tv)
    return gradient_norm(grads)


def deferred_loading(out_dir, archive, batch_path):
    """lossmap's JAX load (initial values deferred) against `keras.saving.load_model`, variable by variable,
    for an untrained archive (the optimizer's slots are never assigned) and a trained one (they are); and
    `initial_values_deferred` on hand-made variables."""
    import keras
    import numpy as np

    import lossmap.load
    from lossmap.engines.common.initial_values import initial_values_deferred

    data = np.load(batch_path)
    trained = everything_model()
    trained.train_on_batch(data["x"], [data["y/flag"], data["y/kind"], data["y/level"]])
    trained_archive = os.path.join(out_dir, "everything_trained.keras")
    trained.save(trained_archive)
    out = {}
    for name, path in (("untrained", archive), ("trained", trained_archive)):
        theirs = keras.saving.load_model(path, custom_objects=None)
        ours = lossmap.load.load(path, imports=("lossmap.examples",)).model
        values = [[value for _, value in state_of(m)[0]] for m in (ours, theirs)]  # paths: Keras's name counters
        out[name] = {"equal": values[0] == values[1], "variables": len(values[0]), "optimizer_built": state_of(ours)[1]}
    seeded = keras.initializers.RandomNormal(seed=7)
    with initial_values_deferred():
        unassigned = keras.Variable(seeded, shape=(3, 4), name="unassigned")
        overwritten = keras.Variable(seeded, shape=(3, 4), name="overwritten")
        overwritten.assign(np.full((3, 4), 5.0, "float32"))
        ones = keras.Variable(keras.initializers.Ones(), shape=(2,), name="ones")
        half = keras.Variable(keras.initializers.Zeros(), shape=(2,), dtype="bfloat16", name="half")
        during = np.array(unassigned.value).tolist()
    out["variables"] = {
        "zeros_before_exit": during == np.zeros((3, 4)).tolist(),
        "unassigned_is_its_initializer": np.array_equal(np.array(unassigned.value), np.array(seeded((3, 4)))),
        "overwritten_kept": np.array(overwritten.value).tolist() == np.full((3, 4), 5.0).tolist(),
        "ones": np.array(ones.value).tolist(), "bfloat16": [str(half.dtype), np.array(half.value, "float32").tolist()],
        "patch_removed": type(keras.Variable((1.0,)))._initialize_with_initializer.__qualname__,
    }
    return out


def analyses(out_dir):
    import lossmap

    res = {}
    code, out, err = cli("check", "--example", "multitask", "--format", "json")
    res["check_multitask"] = {"code": code, "json": json.loads(out) if out.strip() else None, "stderr": err,
                              "tensorflow_imported": "tensorflow" in sys.modules}
    html, report_json = os.path.join(out_dir, "multitask.jax.html"), os.path.join(out_dir, "multitask.jax.json")
    code, out, err = cli("report", "--example", "multitask", "-o", html, "--json", report_json)
    res["report"] = {"code": code, "html": html, "json": report_json, "stderr": err}
    a = lossmap.analyse("lossmap.examples:multitask")
    res["walkthrough"] = highlighted(a)
    res["tensorflow_imported"] = "tensorflow" in sys.modules

    # a saved archive with everything, and a live copy of it whose state is compared bit for bit
    model = everything_model()
    archive = os.path.join(out_dir, "everything.keras")
    model.save(archive)
    batch = everything_batch(os.path.join(out_dir, "everything.npz"))
    code, out, err = cli("check", archive, "--data", batch, "--import", "lossmap.examples", "--format", "json")
    res["check_everything"] = {"code": code, "json": json.loads(out) if out.strip() else None, "stderr": err}
    before = state_of(model)
    live = lossmap.analyse(model, batch)
    res["live_everything"] = {"verified": live.total.verified, "state_restored": live.state_restored,
                              "bit_identical": state_of(model) == before,
                              "terms": [[t.id, t.kind, t.contribution] for t in live.terms]}
    res["deferred_loading"] = deferred_loading(out_dir, archive, batch)
    eng = lossmap.load.load(model).engine
    sig = eng.signature(model)
    from lossmap import batch as batch_module

    xs, ys, sw = eng.pack_batch(model, sig, batch_module.from_file(batch, sig))
    res["live_everything"]["jax_total_norm"] = jax_total_gradient_norm(model, xs, ys, sw)
    res["live_everything"]["gradients"] = json.loads(lossmap.render.json_report.render(live))["gradients"]

    # a saturated softmax: JAX's crossentropy clips the probability (TensorFlow's would use the logits)
    res["saturated"] = {}
    for loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        sat = saturated_model(loss)
        labels = [[2]] * 4 if loss.startswith("sparse") else [[0.0, 0.0, 1.0]] * 4
        import numpy as np

        s = lossmap.analyse(sat, (np.ones((4, 2), "float32"), np.array(labels, "float32")))
        res["saturated"][loss] = {"verified": s.total.verified, "value": s.terms[0].value,
                                  "compute_loss": s.total.compute_loss, "findings": [f.code for f in s.findings],
                                  "messages": {f.code: f.message for f in s.findings}}

    # custom training code: a compute_loss override and a train_step(state, data) override as Keras's JAX
    # guide writes it explained; a --step function refused in one line
    res["custom"] = {name: dict(zip(("code", "stdout", "stderr"), cli("check", *argv)))
                     for name, argv in (("stateless_step", [os.path.join(HERE, "custom_steps_jax.py:stateless_step")]),
                                        ("both_overrides", [os.path.join(HERE, "custom_steps_jax.py:both_overrides")]),
                                        ("step_function", ["--step", os.path.join(HERE, "custom_steps.py:step_clipped"),
                                                           os.path.join(HERE, "custom_steps.py:penalised")]))}
    res["compute_loss"] = compute_loss_override()
    res["stateless_step"] = stateless_step_override()
    res["noisy_compute_loss"] = noisy_compute_loss()
    res["stateless_compute_loss"] = stateless_compute_loss_override()
    res["training_loop"] = training_loop()
    return res


def noisy_compute_loss():
    """custom_steps_jax.py's `noisy_penalised`: the replayed block draws Dropout's mask again from the seed
    state the step's own pass drew it from, so the terms' gradients add up to what train_step applies."""
    import custom_steps_jax
    import lossmap

    model = custom_steps_jax.noisy_penalised()
    before = state_of(model)
    a = lossmap.analyse(model)
    return {"verified": a.total.verified, "gradients_verified": getattr(a.total, "gradients_verified", None),
            "bit_identical": state_of(model) == before, "kinds": sorted(t.kind for t in a.terms),
            "findings": [f.code for f in a.findings]}


def stateless_compute_loss_override():
    """custom_steps_jax.py's `stateless_penalised`: Keras's terms found inside the override's `super()` call, the
    penalty as a custom term, each addend's value and gradient next to `jax.grad` of it written out here."""
    import jax.numpy as jnp
    import numpy as np

    import custom_steps_jax
    import lossmap

    model = custom_steps_jax.stateless_penalised()
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 4)).astype("float32"), rng.standard_normal((6, 2)).astype("float32")
    before = state_of(model)
    a = lossmap.analyse(model, (x, y))
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    kernel = model.get_layer("hidden").kernel
    index = next(i for i, v in enumerate(model.trainable_variables) if v is kernel)

    def y_pred(t):
        return model.stateless_call(t, ntv, jnp.asarray(x), training=True)[0]

    addends = {"compiled/out": lambda t: jnp.mean(jnp.square(jnp.asarray(y) - y_pred(t))),
               "regularizer/hidden/kernel": lambda t: 1e-2 * jnp.sum(jnp.square(t[index])),
               "custom/penalty": lambda t: 0.2 * jnp.mean(jnp.square(y_pred(t)))}
    return {"verified": a.total.verified, "gradients_verified": getattr(a.total, "gradients_verified", None),
            "reproduced": a.total.reproduced, "train_step": a.total.train_step, "path": a.total.path,
            "bit_identical": state_of(model) == before, "findings": [f.code for f in a.findings],
            "custom_compute_loss": a.model.custom_compute_loss,
            "terms": {t.id: {"kind": t.kind, "contribution": t.contribution, "weight": t.weight,
                             "expression": getattr(t, "expression", None), "source": getattr(t, "source", None)}
                      for t in a.terms},
            "gradients": {k: v["norm"] for k, v in (a.gradients or {}).get("terms", {}).items()},
            "views": [v.title for v in a.step_view],
            "jax": jax_addends(addends, tv)}


def training_loop():
    """tests/jax_training_loop.py (the JAX guide's training loop): `--step train_step` through the CLI, and the
    same step through the API next to `jax.grad` of each addend written out here; the model's and the loop
    optimizer's variables bit for bit before and after."""
    import jax.numpy as jnp
    import numpy as np

    import jax_training_loop as loop
    import lossmap

    code, out, err = cli("check", "--step", os.path.join(HERE, "jax_training_loop.py:train_step"), "--format", "json")
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 4)).astype("float32"), rng.standard_normal((6, 3)).astype("float32")
    variables = list(loop.model.variables) + list(loop.optimizer.variables)
    before = [np.array(v.value).tobytes() for v in variables]
    a = lossmap.analyse(None, (x, y), step=loop.train_step)
    after = [np.array(v.value).tobytes() for v in variables]
    metric_state = [np.array(v.value).tobytes() for v in loop.train_mae.variables]
    with_metrics = lossmap.analyse(None, (x, y), step=loop.train_step_with_metrics)
    metric_unchanged = metric_state == [np.array(v.value).tobytes() for v in loop.train_mae.variables]
    tv = [v.value for v in loop.model.trainable_variables]
    ntv = [v.value for v in loop.model.non_trainable_variables]

    def y_pred(t):
        return loop.model.stateless_call(t, ntv, jnp.asarray(x), training=True)[0]

    addends = {"custom/data_loss": lambda t: jnp.mean(jnp.square(jnp.asarray(y) - y_pred(t))),
               "custom/smooth": lambda t: 0.3 * jnp.mean(jnp.square(y_pred(t)[:, 1:] - y_pred(t)[:, :-1]))}
    return {"cli": {"code": code, "json": json.loads(out) if out.strip() else None, "stderr": err[-2000:]},
            "verified": a.total.verified, "gradients_verified": getattr(a.total, "gradients_verified", None),
            "reproduced": a.total.reproduced, "train_step": a.total.train_step, "path": a.total.path,
            "unchanged": before == after, "findings": {f.code: f.message for f in a.findings},
            "with_metrics": {"verified": with_metrics.total.verified, "metric_unchanged": metric_unchanged,
                             "gradients_verified": getattr(with_metrics.total, "gradients_verified", None),
                             "terms": sorted(t.id for t in with_metrics.terms)},
            "terms": {t.id: {"contribution": t.contribution, "weight": t.weight, "source": getattr(t, "source", None)}
                      for t in a.terms},
            "gradients": {k: v["norm"] for k, v in (a.gradients or {}).get("terms", {}).items()},
            "views": [{"qualname": v.qualname, "highlighted": [ln.number for ln in v.lines if ln.highlight]}
                      for v in a.step_view],
            "jax": jax_addends(addends, tv)}


def stateless_step_override():
    """custom_steps_jax.py's `stateless_step` (the guide's `train_step(state, data)` with `jax.value_and_grad`
    of `loss_and_updates`): its addends, the verification against the override itself, and each addend's
    gradient next to `jax.grad` of the same addend written out here from the trainable values (the weight
    regularizer, which `self.losses` reads from the variables and not from those values, gets none)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import custom_steps_jax
    import lossmap

    model = custom_steps_jax.stateless_step()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)).astype("float32"), rng.standard_normal((6, 3)).astype("float32")
    before = state_of(model)
    a = lossmap.analyse(model, (x, y))
    out = {"verified": a.total.verified, "reproduced": a.total.reproduced, "train_step": a.total.train_step,
           "gradients_verified": getattr(a.total, "gradients_verified", None), "path": a.total.path,
           "bit_identical": state_of(model) == before, "findings": [f.code for f in a.findings],
           "terms": {t.id: {"kind": t.kind, "value": t.value, "weight": t.weight, "contribution": t.contribution,
                            "expression": getattr(t, "expression", None), "source": getattr(t, "source", None)}
                     for t in a.terms},
           "gradients": {k: v["norm"] for k, v in (a.gradients or {}).get("terms", {}).items()},
           "total_norm": (a.gradients or {}).get("total_norm"),
           "summation": a.total.summation,
           "step_view": [{"file": v.file, "qualname": v.qualname,
                          "highlighted": [[ln.number, ln.text.strip(), ln.note] for ln in v.lines if ln.highlight]}
                         for v in a.step_view]}
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    kernel = next(v for v in model.trainable_variables if v.path == "hidden/kernel")

    def y_pred(t):
        return model.stateless_call(t, ntv, jnp.asarray(x), training=True)[0]

    addends = {"compiled/out": lambda t: jnp.mean(jnp.square(jnp.asarray(y) - y_pred(t))),
               "regularizer/hidden/kernel": lambda t: 1e-2 * jnp.sum(jnp.square(kernel.value)) + 0 * t[0].sum(),
               "custom/smooth": lambda t: 0.1 * jnp.mean(jnp.square(y_pred(t)[:, 1:] - y_pred(t)[:, :-1]))}
    out["jax"] = jax_addends(addends, tv)
    out["jax_total_norm"] = gradient_norm(jax.grad(lambda t: model.loss_and_updates(t, ntv, jnp.asarray(x), jnp.asarray(y),
                                                                         training=True)[0])(tv))
    out["bit_identical_after_jax"] = state_of(model) == before
    return out


def compute_loss_override():
    """tests/custom_steps.py's `penalised` (a compute_loss override) on a live model: its addends, the
    verification, and each addend's gradient next to `jax.grad` of the same addend written out here."""
    import custom_steps
    import lossmap

    model = custom_steps.penalised()
    x, y = custom_steps.batch()
    before = state_of(model)
    a = lossmap.analyse(model, (x, y))
    out = {"verified": a.total.verified, "reproduced": a.total.reproduced, "train_step": a.total.train_step,
           "compute_loss": a.total.compute_loss, "gradients_verified": getattr(a.total, "gradients_verified", None),
           "custom_compute_loss": a.model.custom_compute_loss, "bit_identical": state_of(model) == before,
           "state_restored": a.state_restored, "findings": [f.code for f in a.findings],
           "terms": {t.id: {"kind": t.kind, "value": t.value, "weight": t.weight, "contribution": t.contribution,
                            "expression": getattr(t, "expression", None), "source": getattr(t, "source", None)}
                     for t in a.terms},
           "gradients": {k: v["norm"] for k, v in (a.gradients or {}).get("terms", {}).items()},
           "total_norm": (a.gradients or {}).get("total_norm")}
    out["jax"] = addend_gradient_norms(model, x, y)
    out["jax_total_norm"] = jax_total_gradient_norm(model, x, y, None)
    out["bit_identical_after_jax"] = state_of(model) == before
    return out


def addend_gradient_norms(model, x, y):
    """|jax.grad| of each of penalised's addends, written out with jax.numpy from `stateless_call`."""
    import jax.numpy as jnp

    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    kernel = [v.path for v in model.trainable_variables].index("hidden/kernel")

    def y_pred(t):
        return model.stateless_call(t, ntv, jnp.asarray(x), training=True)[0]

    addends = {"compiled/out": lambda t: jnp.mean(jnp.square(jnp.asarray(y) - y_pred(t))),
               "regularizer/hidden/kernel": lambda t: 1e-2 * jnp.sum(jnp.square(t[kernel])),
               "custom/energy": lambda t: 0.05 * jnp.mean(jnp.square(y_pred(t)))}
    return jax_addends(addends, tv)


# ---------------------------------------------------------------- property
def property_examples(n_per_loss):
    """tests/test_property.py's property on JAX: `n_per_loss` drawn models per built-in loss."""
    from hypothesis import HealthCheck, given, seed, settings

    import test_property as tp

    failures, ran = {}, {}
    for i, loss in enumerate(tp.LOSSES):
        count = [0]

        @seed(1000 + i)
        @settings(max_examples=n_per_loss, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(spec=tp.model_specs(loss))
        def check(spec):
            count[0] += 1
            with tempfile.TemporaryDirectory() as tmp:
                tp.check_spec(spec, pathlib.Path(tmp))

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - reported to the test, with the spec hypothesis printed
            failures[loss] = "".join(traceback.format_exception_only(type(exc), exc))[-3000:]
        ran[loss] = count[0]
    return {"failures": failures, "ran": ran}


# ---------------------------------------------------------------- hostile files
def hostile(out_dir):
    import hostile_files
    import zipcraft
    from zipcraft import Member

    paths = hostile_files.build(out_dir, tf_keras=False)
    members = zipcraft.members_of(paths["keras3"])
    config = json.loads(next(m.data for m in members if m.name == "config.json"))

    def variant(name, change):
        path = os.path.join(out_dir, name)
        zipcraft.write_zip(path, change([Member(m.name, m.data) for m in members]))
        return path

    def with_config(cfg):
        return lambda ms: [Member("config.json", json.dumps(cfg).encode()) if m.name == "config.json" else m
                           for m in ms]

    bomb = variant("bomb.keras", lambda ms: [zipcraft.deflate_bomb("config.json", b"{", 2 << 30)
                                             if m.name == "config.json" else m for m in ms])
    huge, mismatch = json.loads(json.dumps(config)), json.loads(json.dumps(config))
    for layer in huge["config"]["layers"]:
        if layer["config"]["name"] == "trunk":
            layer["config"]["units"] = 2 ** 27
    for layer in mismatch["config"]["layers"]:
        if layer["config"]["name"] == "a":
            layer["config"]["units"] = 5
    import numpy as np

    labels = os.path.join(out_dir, "labels.npz")
    np.savez(labels, **dict(hostile_files.batch_arrays(), **{"y/b": np.full(8, 7, "int32")}))
    cases = {
        "valid": ["check", paths["keras3"], "--data", paths["batch"]],
        "bomb": ["check", bomb],
        "huge_layer": ["check", variant("huge.keras", with_config(huge))],
        "mismatch": ["check", variant("mismatch.keras", with_config(mismatch))],
        "labels": ["check", paths["keras3"], "--data", labels],
        "not_a_zip": ["check", os.path.join(out_dir, "batch.npz").replace("batch.npz", "nothing.keras")],
    }
    with open(cases["not_a_zip"][1], "wb") as fh:
        fh.write(b"not a zip at all")
    return {name: dict(zip(("code", "stdout", "stderr"), cli(*argv))) for name, argv in cases.items()}


def main():
    job, out_path = sys.argv[1], sys.argv[2]
    out_dir = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp()
    if job == "analyses":
        result = analyses(out_dir)
    elif job == "property":
        result = property_examples(int(os.environ.get("LOSSMAP_JAX_PROPERTY_EXAMPLES", "1")))
    elif job == "hostile":
        result = hostile(out_dir)
    else:
        raise SystemExit(f"unknown job {job}")
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, default=str)


if __name__ == "__main__":
    main()
