"""Keras 3 on the JAX backend: the same inventory, reproduction, verification, gradients and walkthrough.

The backend is fixed when Keras is imported and this process runs TensorFlow, so every JAX run is in a
child process (`tests/jax_child.py`): one per job, shared by the module's tests (about 40 s for the
analyses, 40 s for the property examples, 10 s for the hostile files on 2 CPU cores).
"""
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "jax_child.py")


def run_child(job, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"jax_{job}")
    out = folder / "result.json"
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, CHILD, job, str(out), str(folder)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def analyses(tmp_path_factory):
    return run_child("analyses", tmp_path_factory)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return run_child("hostile", tmp_path_factory)


# ---------------------------------------------------------------- the example, through the CLI
def test_check_on_jax_verifies_the_example_and_names_the_backend(analyses):
    run = analyses["check_multitask"]
    assert run["code"] == 0, run["stderr"]
    doc = run["json"]
    assert doc["model"]["engine"] == "keras3" and doc["model"]["backend"] == "jax"
    assert doc["model"]["custom_train_step"] is False and doc["model"]["custom_compute_loss"] is False
    assert [t["id"] for t in doc["terms"]] == ["compiled/price", "compiled/kind", "add_loss/penalty/0",
                                               "activity/kind", "regularizer/trunk/kernel", "regularizer/price/kernel"]
    total = doc["total"]
    assert total["verified"] and total["compute_loss"] is not None and total["train_step"] is not None
    assert "stateless" in total["path"] and "jax.value_and_grad" in total["summation"]
    assert math.isclose(sum(t["contribution"] for t in doc["terms"]), total["reproduced"], rel_tol=1e-9)
    # a softmax output carries no logits the JAX backend reads: no CROSSENTROPY_FROM_LOGITS
    assert "CROSSENTROPY_FROM_LOGITS" not in {f["code"] for f in doc["findings"]}
    assert not [f for f in doc["findings"] if f["level"] == "error"]


def test_the_jax_path_never_imports_tensorflow(analyses):
    assert analyses["check_multitask"]["tensorflow_imported"] is False
    assert analyses["tensorflow_imported"] is False  # a report and an analysis later, still not


def test_report_on_jax_is_written(analyses):
    report = analyses["report"]
    assert report["code"] == 0, report["stderr"]
    with open(report["json"], encoding="utf-8") as fh:
        assert json.load(fh)["model"]["backend"] == "jax"
    with open(report["html"], encoding="utf-8") as fh:
        html = fh.read()
    assert "jax/trainer.py" in html and "JAXTrainer.train_step" in html


# ---------------------------------------------------------------- a saved model with everything
def test_a_saved_multi_output_model_with_everything_verifies(analyses):
    run = analyses["check_everything"]
    assert run["code"] == 0, run["stderr"]
    doc = run["json"]
    kinds = {t["kind"] for t in doc["terms"]}
    assert kinds == {"compiled", "add_loss", "activity_regularizer", "weight_regularizer"}
    weights = {t["id"]: t["weight"] for t in doc["terms"] if t["kind"] == "compiled"}
    assert weights == {"compiled/flag": 0.3, "compiled/kind": 1.5, "compiled/level": 0.7}
    assert doc["total"]["verified"] and doc["batch"]["source"] == "file"


def test_the_model_is_bit_identical_after_the_analysis(analyses):
    live = analyses["live_everything"]
    assert live["verified"] and live["state_restored"] and live["bit_identical"]


def test_loading_without_initial_values_gives_keras_s_variables_bit_for_bit(analyses):
    loaded = analyses["deferred_loading"]
    for archive in ("untrained", "trained"):
        assert loaded[archive]["equal"], archive
        assert loaded[archive]["optimizer_built"] and loaded[archive]["variables"] > 10
    made = loaded["variables"]
    assert made["zeros_before_exit"] and made["unassigned_is_its_initializer"] and made["overwritten_kept"]
    assert made["ones"] == [1.0, 1.0] and made["bfloat16"] == ["bfloat16", [0.0, 0.0]]
    assert made["patch_removed"] == "JaxVariable._initialize_with_initializer"


def test_per_term_gradients_add_up_to_jaxs_own_gradient(analyses):
    live = analyses["live_everything"]
    g = live["gradients"]
    assert set(g["terms"]) == {tid for tid, _, _ in live["terms"]}
    # the norm of the sum of the per-term gradients is |jax.grad| of Keras's compute_loss_and_updates
    assert math.isclose(g["total_norm"], live["jax_total_norm"], rel_tol=1e-4)
    assert math.isclose(sum(t["share"] for t in g["terms"].values()), 1.0, rel_tol=1e-4)
    assert all(t["norm"] > 0 for t in g["terms"].values())


def test_a_saturated_softmax_is_clipped_as_the_jax_backend_does(analyses):
    """JAX's nn.py clips the probability at epsilon where TensorFlow's would use the cached logits (60)."""
    for loss, run in analyses["saturated"].items():
        assert run["verified"], loss
        assert math.isclose(run["value"], -math.log(1e-7), rel_tol=1e-5), (loss, run)
        assert "DEAD_TERM" in run["findings"], loss  # the clip stops its gradient
        clipped = run["messages"]["CROSSENTROPY_CLIPPED"]  # the backend difference, told with its line
        assert "4 of 4 samples are at the clip" in clipped and "keras/src/backend/jax/nn.py:" in clipped, clipped
    assert "CROSSENTROPY_CLIPPED" not in {f["code"] for f in analyses["check_multitask"]["json"]["findings"]}


# ---------------------------------------------------------------- the walkthrough
def _line(path, number):
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()[number - 1]


def test_walkthrough_anchors_point_at_real_lines_of_the_jax_trainer_and_nn(analyses):
    steps = analyses["walkthrough"]
    for key, where in [("train_step", "keras/src/backend/jax/trainer.py"),
                       ("compute_loss_and_updates", "keras/src/backend/jax/trainer.py"),
                       ("jax_sparse_categorical_crossentropy", "keras/src/backend/jax/nn.py")]:
        step = steps[key]
        assert step["found"] and step["display_path"].endswith(where), (key, step)
        assert step["lines"], key
        for number, text in step["lines"]:
            assert _line(step["file"], number) == text, (key, number)
    texts = " ".join(t for _, t in steps["train_step"]["lines"])
    assert "jax.value_and_grad" in texts and "stateless_apply" in texts
    assert "jnp.clip" in steps["jax_sparse_categorical_crossentropy"]["lines"][0][1]
    assert "get_logits" not in steps  # TensorFlow's, not on this backend
    assert steps["compute_loss"]["found"]


# ---------------------------------------------------------------- custom training code
def test_a_compute_loss_override_is_split_verified_and_attributed_on_jax(analyses):
    """tests/custom_steps.py's `penalised` (Keras's loss + 0.05 * energy): each addend named and valued,
    the total verified against JAXTrainer.train_step(state, data), and each addend's gradient (Keras's
    default step's tape block replayed and differentiated with jax.vjp) equal to jax.grad of the same
    addend written out with jax.numpy in the child."""
    r = analyses["compute_loss"]
    assert r["custom_compute_loss"] and r["verified"] and r["gradients_verified"], r
    assert r["bit_identical"] and r["state_restored"] and r["bit_identical_after_jax"]
    terms = r["terms"]
    assert set(terms) == {"compiled/out", "regularizer/hidden/kernel", "custom/energy"}, terms
    energy = terms["custom/energy"]
    assert energy["kind"] == "custom" and energy["weight"] == 0.05 and energy["expression"] == "0.05 * energy"
    assert [energy["source"]["line"]] == _line_of_file("custom_steps.py", "energy = keras.ops.mean(keras.ops.square(y_pred))")
    assert energy["source"]["function"] == "PenalisedModel.compute_loss"
    assert terms["compiled/out"]["kind"] == "compiled" and [terms["compiled/out"]["source"]["line"]] == \
        _line_of_file("custom_steps.py", "loss = super().compute_loss(x, y, y_pred, sample_weight, training)")
    total = sum(t["contribution"] for t in terms.values())
    assert math.isclose(total, r["reproduced"], rel_tol=1e-9)
    assert math.isclose(r["reproduced"], r["train_step"], rel_tol=1e-6), r
    for name, jax_side in r["jax"].items():
        assert math.isclose(terms[name]["contribution"], jax_side["value"], rel_tol=1e-5), name
        assert math.isclose(r["gradients"][name], jax_side["norm"], rel_tol=1e-5), (name, r["gradients"], jax_side)
    assert math.isclose(r["total_norm"], r["jax_total_norm"], rel_tol=1e-5)


def test_a_compute_loss_override_with_dropout_and_activity_losses_verifies_its_gradients_on_jax(analyses):
    r = analyses["noisy_compute_loss"]
    assert r["verified"] and r["gradients_verified"] and r["bit_identical"], r
    assert "GRADIENTS_NOT_VERIFIED" not in r["findings"]
    assert {"custom", "compiled", "activity_regularizer", "weight_regularizer"} <= set(r["kinds"]), r["kinds"]


def _line_of(text: str) -> int:
    """The 1-based line of tests/custom_steps_jax.py that holds `text` (once)."""
    with open(os.path.join(HERE, "custom_steps_jax.py"), encoding="utf-8") as fh:
        found = [i for i, line in enumerate(fh, 1) if text in line]
    assert len(found) == 1, (text, found)
    return found[0]


def test_a_stateless_compute_loss_override_is_split_verified_and_attributed_on_jax(analyses):
    """`stateless_compute_loss` is where JAXTrainer gets its loss: an override of it is custom code. Keras's terms
    come from its `loss, variables = super().stateless_compute_loss(...)`, the penalty is a custom term; values and
    gradients match jax.grad of each addend written out independently."""
    r = analyses["stateless_compute_loss"]
    assert r["custom_compute_loss"] and r["verified"] and r["gradients_verified"] and r["bit_identical"], r
    terms = r["terms"]
    assert set(terms) == {"compiled/out", "regularizer/hidden/kernel", "custom/penalty"}, terms
    assert terms["custom/penalty"]["expression"] == "0.2 * penalty" and terms["custom/penalty"]["weight"] == 0.2
    assert terms["custom/penalty"]["source"]["function"] == "StatelessPenalisedModel.stateless_compute_loss"
    keras_line = _line_of("loss, variables = super().stateless_compute_loss(")
    assert terms["compiled/out"]["source"]["line"] == terms["regularizer/hidden/kernel"]["source"]["line"] == keras_line
    assert terms["custom/penalty"]["source"]["line"] == _line_of("penalty = keras.ops.mean(")
    for name, jax_side in r["jax"].items():
        assert math.isclose(terms[name]["contribution"], jax_side["value"], rel_tol=1e-5), name
        assert math.isclose(r["gradients"][name], jax_side["norm"], rel_tol=1e-5), (name, r["gradients"], jax_side)
    assert math.isclose(r["reproduced"], r["train_step"], rel_tol=1e-6)
    assert "MODEL_LOSSES_IGNORED" not in r["findings"] and "TOTAL_MISMATCH" not in r["findings"]
    assert any("stateless_compute_loss" in title for title in r["views"]), r["views"]


def test_a_guide_style_train_step_override_is_split_verified_and_attributed_on_jax(analyses):
    """Keras's JAX guide: `jax.value_and_grad(self.loss_and_updates, has_aux=True)` then `stateless_apply`. The
    loss is what the differentiated function returns first; its addends are valued, the total verified against
    the override itself, each addend's gradient is jax.grad of it, and the weight regularizer that `self.losses`
    reads from the variables (not from the values differentiated) trains nothing, as in the real step."""
    r = analyses["stateless_step"]
    assert r["verified"] and r["gradients_verified"] and r["bit_identical"] and r["bit_identical_after_jax"], r
    assert "real train_step(state, data)" in r["path"] and "jax.vjp" in r["path"]
    terms = r["terms"]
    assert set(terms) == {"compiled/out", "regularizer/hidden/kernel", "custom/smooth"}, terms
    smooth = terms["custom/smooth"]
    assert smooth["kind"] == "custom" and smooth["weight"] == 0.1 and smooth["expression"] == "0.1 * smooth"
    assert smooth["source"]["line"] == _line_of("smooth = keras.ops.mean(keras.ops.square(")
    assert smooth["source"]["function"] == "StatelessStepModel.loss_and_updates"
    assert terms["compiled/out"]["source"]["line"] == _line_of("data_loss = self.compute_loss(x, y, y_pred)")
    total = sum(t["contribution"] for t in terms.values())
    assert math.isclose(total, r["reproduced"], rel_tol=1e-9)
    assert math.isclose(r["reproduced"], r["train_step"], rel_tol=1e-6), r
    for name, jax_side in r["jax"].items():
        assert math.isclose(terms[name]["contribution"], jax_side["value"], rel_tol=1e-5), name
        assert math.isclose(r["gradients"][name], jax_side["norm"], rel_tol=1e-5, abs_tol=1e-12), (name, r)
    assert r["gradients"]["regularizer/hidden/kernel"] == 0.0 and "DEAD_TERM" in r["findings"]
    assert "GRADIENTS_NOT_VERIFIED" not in r["findings"]
    assert math.isclose(r["total_norm"], r["jax_total_norm"], rel_tol=1e-5)
    # what is shown as the step is the user's train_step, at its own lines, not the step lossmap writes out
    shown = r["step_view"][0]
    assert shown["file"].endswith("custom_steps_jax.py") and shown["qualname"] == "StatelessStepModel.train_step"
    (vg_line, vg_text, vg_note), (ap_line, ap_text, _) = shown["highlighted"]
    assert vg_text.startswith("grad_fn = jax.value_and_grad(self.loss_and_updates") and "loss_and_updates" in vg_note
    assert "stateless_apply(" in ap_text and ap_line > vg_line
    assert f"jax.value_and_grad (line {vg_line})" in r["summation"]
    assert [v["qualname"] for v in r["step_view"]][1:] == ["StatelessStepModel.loss_and_updates"]
    run = analyses["custom"]["stateless_step"]
    assert run["code"] == 0 and "VERIFIED" in run["stdout"] and "StatelessStepModel.loss_and_updates" in run["stdout"], run


@pytest.mark.parametrize("name,what", [("step_function", "custom_steps.py:step_clipped")])
def test_a_custom_training_step_on_jax_is_one_line_exit_2(analyses, name, what):
    run = analyses["custom"][name]
    assert run["code"] == 2 and run["stdout"] == ""
    lines = run["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmap: ") and "Traceback" not in run["stderr"]
    assert what in lines[0] and "JAX backend" in lines[0] and "KERAS_BACKEND=tensorflow" in lines[0]
    assert "override compute_loss instead" in lines[0]


def test_the_jax_guides_training_loop_is_split_verified_and_attributed(analyses):
    """`--step jax_training_loop.py:train_step` (the guide's jitted `train_step(state, data)`, a module-level
    `grad_fn = jax.value_and_grad(compute_loss_and_updates, has_aux=True)`, a global optimizer's
    `stateless_apply`): the model found through grad_fn, each addend valued and differentiated as jax.grad does
    it, verified against the step as written, nothing changed; the regularizer the loop never adds is named."""
    r = analyses["training_loop"]
    cli = r["cli"]
    assert cli["code"] == 0 and cli["json"]["total"]["verified"], cli["stderr"]
    assert r["verified"] and r["gradients_verified"] and r["unchanged"], r
    assert set(r["terms"]) == {"custom/data_loss", "custom/smooth"} and r["terms"]["custom/smooth"]["weight"] == 0.3
    assert r["terms"]["custom/smooth"]["source"]["function"] == "compute_loss_and_updates"
    for name, jax_side in r["jax"].items():
        assert math.isclose(r["terms"][name]["contribution"], jax_side["value"], rel_tol=1e-5), name
        assert math.isclose(r["gradients"][name], jax_side["norm"], rel_tol=1e-5), (name, r["gradients"], jax_side)
    assert math.isclose(r["reproduced"], r["train_step"], rel_tol=1e-6)
    assert "train_step(state, data) as written" in r["path"]
    ignored = r["findings"]["MODEL_LOSSES_IGNORED"]
    assert "inside compute_loss_and_updates" in ignored and "of train_step" in ignored, ignored
    metrics = r["with_metrics"]  # the guide's second form: the state carries a metric's variables
    assert metrics["verified"] and metrics["gradients_verified"] and metrics["metric_unchanged"], metrics
    assert metrics["terms"] == ["custom/data_loss", "custom/smooth"]
    shown = r["views"][0]
    assert shown["qualname"] == "train_step" and len(shown["highlighted"]) == 2, r["views"]
    assert shown["highlighted"][0] == _line_of_file("jax_training_loop.py", "= grad_fn(trainable_variables")[0]


def _line_of_file(name: str, text: str) -> list:
    """The 1-based lines of tests/`name` that hold `text`."""
    with open(os.path.join(HERE, name), encoding="utf-8") as fh:
        return [i for i, line in enumerate(fh, 1) if text in line]


def test_a_model_overriding_both_loss_methods_on_jax_is_one_line_exit_2(analyses):
    run = analyses["custom"]["both_overrides"]
    assert run["code"] == 2 and run["stdout"] == "", run
    lines = run["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmap: ") and "Traceback" not in run["stderr"]
    assert "BothOverridesModel overrides both compute_loss and stateless_compute_loss" in lines[0]


# ---------------------------------------------------------------- hostile files
@pytest.mark.parametrize("case,needles", [
    ("bomb", ["config.json inflates to 2 GiB"]),
    ("huge_layer", ["more variables than its weights can fill", "(4, 134217728)"]),
    ("mismatch", ["layer 'a' does not match its saved weights", "(3, 5)", "(3, 2)"]),
    ("labels", ["'y/b' holds class id 7"]),
    ("not_a_zip", ["not a .keras archive"]),
])
def test_hostile_files_on_jax_are_exit_2_in_one_line(hostile, case, needles):
    run = hostile[case]
    assert run["code"] == 2 and run["stdout"] == "", run
    lines = run["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmap: "), run["stderr"]
    for needle in needles:
        assert needle in lines[0]


def test_the_valid_hostile_target_verifies_on_jax(hostile):
    assert hostile["valid"]["code"] == 0, hostile["valid"]["stderr"]


# ---------------------------------------------------------------- the report in a browser
def test_jax_report_opens_cleanly_in_a_browser(analyses):
    """tests/test_browser.py's checks on a report made on JAX: no console error, no request besides the
    file, no dialog; the walkthrough's JAX steps are on the page."""
    import test_browser as tb  # skips this test where chromium or playwright is missing

    with tb.sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.FLAGS)
        try:
            page, events, url = tb._open(browser, analyses["report"]["html"], "report-multitask-jax.png")
            tb._assert_clean(events, url)
            assert page.locator("table.terms tr").count() > 1
            assert page.locator("#step-train_step").count() == 1
            assert "JAXTrainer.train_step" in page.locator("#step-train_step").inner_text()
            page.close()
        finally:
            browser.close()
