"""Custom training code, end to end (Keras 3): every construct and finding, values checked by hand.

The steps live in tests/custom_steps.py; each test runs lossmap on a live model and a fixed
batch, and recomputes what it can with NumPy from the model's own weights.
"""
import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import custom_steps as cs

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = os.path.join(HERE, "custom_steps.py")
_CACHE = {}


def analyse(step, build=cs.mlp, **kw):
    """lossmap on a fresh model from `build` and the fixed batch (shared between tests)."""
    import lossmap

    key = (step, build.__name__, tuple(sorted(kw.items())))
    if key not in _CACHE:
        model = build()
        before = [np.array(v) for v in model.variables]
        result = lossmap.analyse(model, cs.batch(), step=getattr(cs, step), **kw)
        after = [np.array(v) for v in model.variables]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after)), "the model was changed"
        _CACHE[key] = (model, result)
    return _CACHE[key]


def forward(model, x):
    w1, b1 = (np.array(v, np.float64) for v in model.get_layer("hidden").weights)
    w2, b2 = (np.array(v, np.float64) for v in model.get_layer("out").weights)
    return np.tanh(x @ w1 + b1) @ w2 + b2


def finding(result, code):
    return [f for f in result.findings if f.code == code]


def line_of(fn, text):
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_terms_values_and_weights_by_hand():
    model, r = analyse("step_adds_losses")
    x, y = (a.astype(np.float64) for a in cs.batch())
    pred = forward(model, x)
    kernel = np.array(model.get_layer("hidden").kernel, np.float64)
    expected = {
        "custom/data_loss": (np.mean((y - pred) ** 2), 1.0),
        "custom/physics": (np.mean((pred[:, 0] - x[:, 0]) ** 2), cs.LAM),
        "regularizer/hidden/kernel": (1e-2 * np.sum(kernel ** 2), 1.0),
    }
    assert {t.id for t in r.terms} == set(expected)
    for t in r.terms:
        value, weight = expected[t.id]
        assert t.value == pytest.approx(value, rel=1e-5), t.id
        assert t.weight == weight and t.contribution == pytest.approx(value * weight, rel=1e-5)
    assert r.total.verified and r.total.gradients_verified and r.state_restored
    assert r.total.train_step == pytest.approx(sum(v * w for v, w in expected.values()), rel=1e-5)


def test_custom_terms_in_the_json():
    _, r = analyse("step_adds_losses")
    doc = json.loads(r.to_json())
    term = next(t for t in doc["terms"] if t["id"] == "custom/physics")
    assert term["kind"] == "custom" and term["expression"] == "LAM * physics" and term["opaque"] is True
    assert term["source"] == {"file": STEPS, "line": line_of(cs.step_adds_losses, "physics = tf"),
                              "function": "step_adds_losses"}
    assert term["objective"] is None and "objectives" not in doc
    reg = next(t for t in doc["terms"] if t["kind"] == "weight_regularizer")
    assert reg["expression"] == "sum(model.losses)"
    assert doc["total"]["gradients_verified"] is True
    assert doc["model"]["step"]["function"] == "step_adds_losses"


def test_gradients_of_each_term_add_up_to_what_the_step_applies():
    _, r = analyse("step_adds_losses")
    g = r.gradients
    assert set(g["terms"]) == {t.id for t in r.terms}
    assert sum(e["share"] for e in g["terms"].values()) == pytest.approx(1.0, abs=1e-6)
    from lossmap import gradient_layout

    unit = gradient_layout.unit_of(g, "regularizer/hidden/kernel")
    assert gradient_layout.reach(g, unit)["variables"] == ["hidden/kernel"]
    assert not any(e["dead"] for e in g["terms"].values())


def test_model_losses_ignored():
    model, r = analyse("step_ignores_losses")
    f = finding(r, "MODEL_LOSSES_IGNORED")
    kernel = np.array(model.get_layer("hidden").kernel, np.float64)
    assert len(f) == 1 and f[0].level == "warning"
    assert "1 entries (1 weight regularizer)" in f[0].message
    assert f"{1e-2 * np.sum(kernel ** 2):.6g}" in f[0].message
    assert not finding(analyse("step_adds_losses")[1], "MODEL_LOSSES_IGNORED")


def test_model_losses_added_in_a_branch_are_not_said_to_be_ignored():
    """`if model.losses: loss = loss + tf.add_n(model.losses)` (the guides' form): the branch stays one unsplit
    term, whose value includes the regularizer; the step does not ignore model.losses, and lossmap says so."""
    model, r = analyse("step_adds_losses_when_present")
    kernel = np.array(model.get_layer("hidden").kernel, np.float64)
    assert r.total.verified and not finding(r, "MODEL_LOSSES_IGNORED")
    (unsplit,) = finding(r, "UNSPLIT_LOSS")
    assert "if" in unsplit.message
    pred = np.array(model(cs.batch()[0], training=True), np.float64)  # no Dropout: the pass the step ran
    data = np.mean((np.array(cs.batch()[1], np.float64) - pred) ** 2)
    assert sum(t.contribution for t in r.terms) == pytest.approx(data + 1e-2 * np.sum(kernel ** 2), rel=1e-5)


def test_training_flag_missing():
    _, r = analyse("step_without_training_flag", cs.mlp_dropout)
    f = finding(r, "TRAINING_FLAG_MISSING")
    assert len(f) == 1 and f"line {line_of(cs.step_without_training_flag, 'pred = model(x)')}" in f[0].message
    assert "drop" in f[0].message
    assert r.total.verified  # the step as written is still what lossmap verifies
    assert not finding(analyse("step_without_training_flag")[1], "TRAINING_FLAG_MISSING")  # no Dropout


@pytest.mark.parametrize("step, where", [
    ("step_numpy_penalty", ".numpy()"),
    ("step_stop_gradient", "stop_gradient"),
    ("step_penalty_outside_tape", "outside `with"),
    ("step_inputs_only", "from the batch alone"),
])
def test_dead_terms_say_where_the_path_breaks(step, where):
    _, r = analyse(step)
    dead = finding(r, "DEAD_TERM")
    assert len(dead) == 1 and where in dead[0].message, [f.message for f in dead]
    assert dead[0].term.startswith("custom/") and dead[0].level == "warning"
    assert r.total.verified and r.total.gradients_verified


def test_logged_loss_differs():
    _, r = analyse("step_logs_other_loss")
    f = finding(r, "LOGGED_LOSS_DIFFERS")
    data = next(t for t in r.terms if t.id == "custom/data_loss")
    assert len(f) == 1 and f"{data.value:.7g}" in f[0].message and f"{r.total.train_step:.7g}" in f[0].message
    assert not finding(analyse("step_adds_losses")[1], "LOGGED_LOSS_DIFFERS")


def test_a_loop_is_one_term_with_the_reason_and_still_verifies():
    model, r = analyse("step_loop", build=lambda: cs.mlp(l2=0))
    x, y = (a.astype(np.float64) for a in cs.batch())
    pred = forward(model, x)
    assert [t.id for t in r.terms] == ["custom/loss"]
    assert r.terms[0].value == pytest.approx(np.mean((pred[:, 0] - y[:, 0]) ** 2)
                                             + np.mean((pred[:, 1] - y[:, 1]) ** 2), rel=1e-5)
    f = finding(r, "UNSPLIT_LOSS")
    assert len(f) == 1 and "`for` loop" in f[0].message
    assert r.total.verified and r.total.gradients_verified


def test_two_optimizers_are_two_objectives_with_their_shared_variables():
    _, r = analyse("step_two_optimizers", cs.two_heads)
    doc = r.to_dict()
    assert [o["id"] for o in doc["objectives"]] == ["objective/0", "objective/1"]
    a, b = doc["objectives"]
    assert a["terms"] == ["custom/loss_a"] and b["terms"] == ["custom/loss_b"]
    assert "opt_a" in a["optimizer"] and "Adam" in a["optimizer"] and "opt_b" in b["optimizer"]
    assert set(a["variables"]) & set(b["variables"]) == {"trunk/kernel", "trunk/bias"}
    assert a["verified"] and b["verified"] and r.total.gradients_verified
    assert r.total.train_step == pytest.approx(a["value"] + b["value"], rel=1e-6)
    f = finding(r, "MULTIPLE_OPTIMIZERS")
    assert len(f) == 1 and "trunk/" in f[0].message and "summed loss" in f[0].message
    # Adam's first step moves every weight with a non-zero gradient by about its learning rate:
    # |update| of the 4x5 trunk kernel is close to lr * sqrt(20) for each optimizer
    assert a["first_update"]["trunk/kernel"] == pytest.approx(0.01 * np.sqrt(20), rel=1e-3)
    assert b["first_update"]["trunk/kernel"] == pytest.approx(0.001 * np.sqrt(20), rel=1e-3)


def test_input_gradient_recorded_by_a_persistent_tape_trains_the_weights():
    _, r = analyse("step_persistent_input_gradient")
    f = finding(r, "INPUT_GRADIENT_TERM")
    assert len(f) == 1 and f[0].term == "custom/smooth" and "second-order path" in f[0].message
    assert "trains the weights" in f[0].message
    assert not r.gradients["terms"]["custom/smooth"]["dead"]
    assert r.total.gradients_verified


def test_input_gradient_taken_outside_the_tape_is_lost():
    _, r = analyse("step_input_gradient_outside")
    f = finding(r, "INPUT_GRADIENT_TERM")
    assert len(f) == 1 and "is lost" in f[0].message
    assert r.gradients["terms"]["custom/smooth"]["dead"]
    assert finding(r, "DEAD_TERM")


def test_a_tf_function_is_explained_through_the_function_it_wraps():
    _, r = analyse("traced_step")
    assert r.model.step["wrapped_in_tf_function"] is True
    assert {t.kind for t in r.terms} == {"custom", "weight_regularizer"}
    assert r.total.verified and r.total.gradients_verified


def test_compute_loss_override_opens_into_keras_terms_and_the_users_addend():
    import lossmap

    model = cs.penalised()
    r = lossmap.analyse(model, cs.batch())
    kinds = sorted(t.kind for t in r.terms)
    assert kinds == ["compiled", "custom", "weight_regularizer"]
    energy = next(t for t in r.terms if t.kind == "custom")
    assert energy.weight == 0.05 and energy.source["function"] == "PenalisedModel.compute_loss"
    assert r.model.step["kind"] == "keras_default"
    # verified against Keras's own train_step, which calls the override
    assert r.total.verified and r.total.compute_loss == pytest.approx(r.total.train_step, rel=1e-5)
    assert r.total.gradients_verified
    assert not finding(r, "CUSTOM_COMPUTE_LOSS")


def test_train_step_override_examples_verify():
    import lossmap

    for example in ("physics_informed", "input_gradient"):
        r = lossmap.analyse(f"lossmap.examples:{example}")
        assert r.total.verified and r.total.gradients_verified and r.state_restored, example
        assert any(t.kind == "custom" for t in r.terms) and any(t.kind == "compiled" for t in r.terms)


# ---------------------------------------------------------------- the command line
def _cli(*args):
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "lossmap", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_step_finds_the_model_in_the_modules_globals(tmp_path):
    code, out, err = _cli("check", "--example", "custom_loop", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"]["name"] == "custom_loop" and doc["total"]["verified"] and doc["total"]["gradients_verified"]
    assert {t["kind"] for t in doc["terms"]} == {"custom", "weight_regularizer", "activity_regularizer"}


@pytest.mark.parametrize("args, needle", [
    (["--step", f"{STEPS}:LAM", f"{STEPS}:mlp"], "not a function"),
    (["--step", f"{STEPS}:step_no_gradient", f"{STEPS}:mlp"], "never differentiates a loss"),
    (["--step", f"{STEPS}:nothing_here", f"{STEPS}:mlp"], "has no 'nothing_here'"),
    (["--step", "no_such_file.py:train_step"], "no such file"),
    (["--step", f"{STEPS}:step_adds_losses"], "give MODEL"),
    (["--step", "lossmap.examples.custom_loop:optimizer"], "not a function"),
    (["--step", f"{STEPS}:from_a_string", f"{STEPS}:mlp"], "cannot be read"),
])
def test_cli_bad_steps_are_one_line_exit_2(args, needle, capsys):
    from lossmap.cli import main

    code = main(["check", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_cli_a_batch_the_step_cannot_take_is_exit_2(tmp_path, capsys):
    from lossmap.cli import main

    data = tmp_path / "batch.npz"
    np.savez(data, x=np.zeros((3, 4), "float32"), y=np.zeros((3, 7), "float32"))
    code = main(["check", "--step", f"{STEPS}:step_adds_losses", f"{STEPS}:mlp", "--data", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_the_users_files_are_not_changed():
    from lossmap.cli import main

    before = open(STEPS, "rb").read(), os.stat(STEPS).st_mtime_ns
    main(["check", "--step", f"{STEPS}:step_adds_losses", f"{STEPS}:mlp", "--no-gradients"])
    assert (open(STEPS, "rb").read(), os.stat(STEPS).st_mtime_ns) == before


def test_an_override_without_source_falls_back_to_the_compiled_inventory():
    import keras
    import lossmap

    namespace = {"keras": keras}
    exec("class NoSource(keras.Model):\n    def train_step(self, data):\n        return super().train_step(data)\n",
         namespace)
    inputs = keras.Input((4,))
    model = namespace["NoSource"](inputs, keras.layers.Dense(2)(inputs))
    model.compile("sgd", "mse")
    r = lossmap.analyse(model, cs.batch())
    assert r.model.step is None and [t.kind for t in r.terms] == ["compiled"]
    f = finding(r, "CUSTOM_TRAIN_STEP")
    assert len(f) == 1 and "could not read the override" in f[0].message


def test_clipped_gradients_verify_against_what_the_step_differentiates():
    _, r = analyse("step_clipped")
    assert r.total.verified and r.total.gradients_verified
    assert [f.code for f in r.findings if f.code == "GRADIENT_TRANSFORMED"] == ["GRADIENT_TRANSFORMED"]
    assert not finding(analyse("step_adds_losses")[1], "GRADIENT_TRANSFORMED")


def test_batchnorm_rounding_is_not_a_gradient_mismatch():
    """Gradients through BatchNorm, and of a bias right before it (exactly 0), differ by rounding only."""
    import keras
    import lossmap

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(16, name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Activation("tanh")(h)))
    r = lossmap.analyse(model, cs.batch(32), step=cs.step_adds_losses, gradients=False)
    assert r.total.verified and r.total.gradients_verified, [f.message for f in r.findings]
