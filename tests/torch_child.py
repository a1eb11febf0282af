"""The Keras 3 on PyTorch cases, run in a child process with KERAS_BACKEND=torch.

The backend is fixed when Keras is imported and the pytest process runs TensorFlow, so
`tests/test_keras3_torch.py` runs this file once per group of cases:

    KERAS_BACKEND=torch python tests/torch_child.py GROUP OUT.json

and asserts on what it writes: {case: {"ok": true, ...facts} or {"ok": false, "error": traceback}}.
Each case is a plain function returning facts (JSON-able); one failing case does not stop the others.
"""
import json
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from child_cli import cli  # noqa: E402  (tests/ is on the path from here)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if os.environ.get("KERAS_BACKEND") != "torch":
    raise SystemExit("torch_child.py runs with KERAS_BACKEND=torch")

import numpy as np  # noqa: E402

CASES = {}


def case(group):
    def register(fn):
        CASES.setdefault(group, {})[fn.__name__] = fn
        return fn
    return register


def summary(analysis):
    """The facts of an analysis the tests read."""
    t = analysis.total
    grads = analysis.gradients or {}
    return {
        "backend": analysis.model.backend, "engine": analysis.model.engine,
        "custom_train_step": analysis.model.custom_train_step,
        "custom_compute_loss": analysis.model.custom_compute_loss,
        "verified": t.verified, "reproduced": t.reproduced, "compute_loss": t.compute_loss,
        "train_step": t.train_step, "max_abs_diff": t.max_abs_diff, "state_restored": analysis.state_restored,
        "terms": {x.id: {"kind": x.kind, "value": x.value, "contribution": x.contribution, "weight": x.weight,
                         "keras_value": x.keras_value, "steps": list(x.steps or []),
                         "source": getattr(x, "source", None), "expression": getattr(x, "expression", None)}
                  for x in analysis.terms},
        "findings": [[f.code, f.level, f.message] for f in analysis.findings],
        "gradient_terms": {k: v.get("norm") for k, v in (grads.get("terms") or {}).items()} if grads else None,
        "gradient_notes": list(grads.get("notes") or []) if grads else None,
        "gradients_verified": getattr(t, "gradients_verified", None),
    }


def walkthrough(analysis):
    """[{key, module, qualname, file, lines: [[number, text, note]]}] of the analysis's source walkthrough."""
    out = []
    for step in analysis.walkthrough or []:
        get = (lambda k, s=step: s.get(k) if isinstance(s, dict) else getattr(s, k, None))
        out.append({"key": get("key"), "module": get("module"), "qualname": get("qualname"),
                    "file": get("file"), "found": get("found"),
                    "lines": [[ln.number, ln.text, ln.note] for ln in (get("lines") or []) if ln.highlight]})
    return out


# ---------------------------------------------------------------- the main group
def hostile_model():
    import hostile_files
    import keras

    return hostile_files.build_model(keras)


def files():
    """The hostile-files target and its batch, saved by the parent process (LOSSMAP_TORCH_FILES)."""
    folder = os.environ["LOSSMAP_TORCH_FILES"]
    return {"dir": folder, "keras3": os.path.join(folder, "k3.keras"), "batch": os.path.join(folder, "batch.npz")}


@case("main")
def multi_output_file():
    """The hostile-files target (dict outputs, loss weights, L2 kernel, L1 activity, BN), checked from its
    archive with sample weights in the batch file; first, so that nothing else imported TensorFlow yet."""
    paths = files()
    code, out, err = cli("check", paths["keras3"], "--data", paths["batch"], "--format", "json")
    return {"exit": code, "json": json.loads(out) if out.strip() else None, "stderr": err[-2000:],
            "tensorflow_imported": "tensorflow" in sys.modules}


@case("main")
def multitask_example():
    import lossmap

    a = lossmap.analyse("lossmap.examples:multitask", sources=True)
    return dict(summary(a), walkthrough=walkthrough(a))


@case("main")
def variables_bit_identical():
    """A model with BatchNormalization, Dropout, an add_loss layer and a built optimizer with state: every
    variable, optimizer slot, metric and `.grad` bit for bit the same after the analysis."""
    import keras
    import lossmap
    from lossmap.examples import multitask

    model = multitask()
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for v in model.optimizer.variables:
        if "float" in str(v.dtype):
            v.assign(rng.uniform(0, 0.1, v.shape).astype("float32"))
    everything = list(model.variables) + list(model.optimizer.variables)
    before = [np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in everything]
    grads_before = [v.value.grad for v in model.trainable_variables]
    a = lossmap.analyse(model)
    after = [keras.ops.convert_to_numpy(v.value) for v in everything]
    same = all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(before, after))
    return {"verified": a.total.verified, "state_restored": a.state_restored, "identical": same,
            "variables": len(everything), "grads_none_before": all(g is None for g in grads_before),
            "grads_none_after": all(v.value.grad is None for v in model.trainable_variables)}


@case("main")
def gradients_against_autograd():
    """Each compiled term's gradient norm from lossmap against `torch.autograd.grad` of weight x loss here."""
    import keras
    import lossmap
    import torch
    import hostile_files

    model = hostile_model()
    arrays = hostile_files.batch_arrays()
    x, ys = arrays["x"], {"a": arrays["y/a"], "b": arrays["y/b"]}
    sw = arrays["sample_weight/a"]
    a = lossmap.analyse(model, (x, ys, {"a": sw}))
    params = [v.value for v in model.trainable_variables]
    y_pred = model(x, training=True)
    losses = {"a": (keras.losses.MeanSquaredError(), 0.5, sw), "b": (keras.losses.SparseCategoricalCrossentropy(), 1.0, None)}
    mine = {}
    for name, (loss, weight, w) in losses.items():
        value = weight * loss(ys[name], y_pred[name], sample_weight=w)
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        mine[f"compiled/{name}"] = float(np.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads if g is not None)))
    return dict(summary(a), autograd_norms=mine)


@case("main")
def hostile_inputs():
    """Hostile files (tests/hostile_files.py, tests/zipcraft.py) on the torch backend: exit 2, one line."""
    import hostile_files
    import zipcraft
    from zipcraft import Member

    paths = files()
    folder = tempfile.mkdtemp()
    members = zipcraft.members_of(paths["keras3"])
    config = json.loads(next(m.data for m in members if m.name == "config.json"))

    def archive(name, change):
        path = os.path.join(folder, name)
        zipcraft.write_zip(path, change([Member(m.name, m.data) for m in members]))
        return path

    def with_config(edit):
        cfg = json.loads(json.dumps(config))
        for layer in cfg["config"]["layers"]:
            edit(layer)
        data = json.dumps(cfg).encode()
        return lambda ms: [Member("config.json", data) if m.name == "config.json" else m for m in ms]

    def units(name, n):
        def edit(layer):
            if layer["config"]["name"] == name:
                layer["config"]["units"] = n
        return edit

    bomb = zipcraft.deflate_bomb("config.json", next(m.data for m in members if m.name == "config.json"), 2 << 30)
    labels = dict(hostile_files.batch_arrays(), **{"y/b": np.array([0, 1, 2, 3, 0, 1, 2, 0], "int32")})
    np.savez(os.path.join(folder, "labels.npz"), **labels)
    cases = {
        "config_bomb": (["check", archive("bomb.keras", lambda ms: [bomb if m.name == "config.json" else m
                                                                  for m in ms])], "inflates to 2 GiB"),
        "layer_bigger_than_weights": (["check", archive("huge.keras", with_config(units("trunk", 2 ** 27)))],
                                      "more variables than its weights can fill"),
        "weights_mismatch": (["check", archive("mismatch.keras", with_config(units("a", 5)))],
                             "layer 'a' does not match its saved weights"),
        "labels_outside_classes": (["check", paths["keras3"], "--data", os.path.join(folder, "labels.npz")],
                                   "class id"),
        "missing_file": (["check", os.path.join(folder, "nothing.keras")], "nothing.keras"),
    }
    out = {}
    for name, (argv, needle) in cases.items():
        start = time.process_time()
        code, stdout, stderr = cli(*argv)
        out[name] = {"exit": code, "stdout": stdout, "stderr": stderr, "needle": needle,
                     "cpu_seconds": time.process_time() - start}
    return out


# ---------------------------------------------------------------- custom training code
@case("custom")
def compute_loss_override():
    import lossmap

    a = lossmap.analyse("torch_custom_steps.py:penalised", imports=(), sources=True)
    return summary(a)


@case("custom")
def override_never_called():
    import lossmap

    return summary(lossmap.analyse("lossmap.examples.backend_differences:jax_only_penalty", imports=()))


@case("custom")
def train_step_override():
    code, out, err = cli("check", os.path.join(HERE, "torch_custom_steps.py") + ":guide_step", "--format", "json")
    return {"exit": code, "json": json.loads(out) if out.strip() else None, "stderr": err[-2000:]}


@case("custom")
def step_function():
    spec = os.path.join(HERE, "torch_custom_steps.py")
    code, out, err = cli("check", "--step", spec + ":loop_step", spec + ":plain", "--format", "json")
    return {"exit": code, "json": json.loads(out) if out.strip() else None, "stderr": err[-2000:]}


@case("custom")
def step_function_applying_nothing():
    spec = os.path.join(HERE, "torch_custom_steps.py")
    code, out, err = cli("check", "--step", spec + ":backward_only", spec + ":plain", "--format", "json")
    return {"exit": code, "json": json.loads(out) if out.strip() else None, "stderr": err[-2000:]}


@case("custom")
def physics_step_against_autograd():
    """The hand-built loss.backward() step: each addend's gradient from lossmap against `torch.autograd.grad` of
    weight x addend computed here, and every variable, optimizer slot and `.grad` bit for bit the same after."""
    import keras
    import lossmap
    import torch
    import torch_custom_steps

    model = torch_custom_steps.physics_step()
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    everything = list(model.variables) + list(model.optimizer.variables)
    before = [np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in everything]
    a = lossmap.analyse(model, (x, y))
    after = [keras.ops.convert_to_numpy(v.value) for v in everything]
    params = [v.value for v in model.trainable_variables]
    y_pred = model(x, training=True)
    tx, ty = torch.as_tensor(x), torch.as_tensor(y)
    addends = {"custom/data_loss": keras.ops.mean(keras.ops.square(ty - y_pred)),
               "custom/physics": 0.5 * keras.ops.mean(keras.ops.square(keras.ops.sum(y_pred, axis=1) - tx.sum(1))),
               "regularizer/hidden/kernel": sum(model.losses)}
    norms = {}
    for name, value in addends.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        norms[name] = float(np.sqrt(sum(float((g.detach().double() ** 2).sum()) for g in grads if g is not None)))
    return dict(summary(a), autograd_norms=norms, autograd_values={k: float(v.detach()) for k, v in addends.items()},
                identical=all(p.dtype == q.dtype and p.tobytes() == q.tobytes() for p, q in zip(before, after)),
                grads_none_after=all(v.value.grad is None for v in model.trainable_variables))


@case("custom")
def two_optimizers():
    import lossmap

    return summary(lossmap.analyse("torch_custom_steps.py:two_optimizers", imports=()))


@case("custom")
def torch_optim_loop():
    """tests/torch_training_loop.py (the torch guide's loop: torch.optim.Adam, torch.nn.CrossEntropyLoss,
    optimizer.step()): through the CLI, and through the API after one real step (so Adam has moments to put
    back), next to torch.autograd.grad of each addend; the parameters and the optimizer's state bit for bit."""
    import keras
    import lossmap
    import torch
    import torch_training_loop as loop

    code, out, err = cli("check", "--step", os.path.join(HERE, "torch_training_loop.py:train_step"), "--format", "json")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 6)).astype("float32"), rng.integers(0, 4, 8).astype("int64")
    loop.train_step(torch.as_tensor(x), torch.as_tensor(y))  # one real step: Adam's state is not empty
    before = [np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in loop.model.variables]
    state_before = {k: v.clone() for k, v in loop.optimizer.state_dict()["state"][0].items()}
    a = lossmap.analyse(None, (x, y), step=loop.train_step)
    after = [keras.ops.convert_to_numpy(v.value) for v in loop.model.variables]
    state_after = loop.optimizer.state_dict()["state"][0]
    params = [v.value for v in loop.model.trainable_variables]
    logits = loop.model(torch.as_tensor(x))
    addends = {"custom/data_loss": loop.loss_fn(logits, torch.as_tensor(y)),
               "custom/penalty": 0.05 * torch.mean(logits ** 2)}
    norms = {}
    for name, value in addends.items():
        grads = torch.autograd.grad(value, params, retain_graph=True)
        norms[name] = float(np.sqrt(sum(float((g.detach().double() ** 2).sum()) for g in grads)))
    return dict(summary(a), cli={"code": code, "json": json.loads(out) if out.strip() else None,
                                 "stderr": err[-2000:]},
                autograd_norms=norms, autograd_values={k: float(v.detach()) for k, v in addends.items()},
                identical=all(p.tobytes() == q.tobytes() for p, q in zip(before, after)),
                optimizer_state_identical=state_before.keys() == state_after.keys() and all(
                    torch.equal(state_before[k], state_after[k]) for k in state_before))


@case("custom")
def detached_addend():
    import lossmap

    return summary(lossmap.analyse("torch_custom_steps.py:detached_step", imports=()))


# ---------------------------------------------------------------- the property group
@case("property")
def built_in_losses():
    """tests/test_property.py's property, one drawn model per built-in loss (seeded as there)."""
    import pathlib

    from hypothesis import HealthCheck, given, seed, settings

    import test_property as prop

    out = {}
    for lead in prop.LOSSES:
        @seed(prop.LOSSES.index(lead))
        @settings(max_examples=1, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(spec=prop.model_specs(lead))
        def check(spec):
            with tempfile.TemporaryDirectory() as tmp:
                prop.check_spec(spec, pathlib.Path(tmp))

        try:
            check()
            out[lead] = "ok"
        except Exception:  # noqa: BLE001 - reported to the parent test
            out[lead] = traceback.format_exc()[-3000:]
    return out


def main(argv):
    group, target = argv[1], argv[2]
    os.chdir(HERE)
    results = {}
    for name, fn in CASES[group].items():
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **fn()}
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[name] = {"ok": False, "error": traceback.format_exc()[-4000:]}
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    with open(target, "w", encoding="utf-8") as fh:
        json.dump(results, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
