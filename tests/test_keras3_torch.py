"""Keras 3 on PyTorch: the same explanation and verification as on TensorFlow.

The backend is fixed when Keras is imported, and this process runs TensorFlow: the cases run
in child processes with KERAS_BACKEND=torch (`tests/torch_child.py`, one per group, started
once per module by the fixtures below), and the tests here assert on what they report.
torch is part of the test environment (`make test` installs it, `pip install torch==2.13.0`,
a CPU build), so these tests run; without torch they fail saying how to install it.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "torch_child.py")


def _torch_installed():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_child(group, tmp_path_factory, extra_env=None):
    """{case: facts} from `torch_child.py GROUP` in a KERAS_BACKEND=torch child process."""
    assert _torch_installed(), "torch is not installed: make test installs it (pip install torch==2.13.0)"
    out = tmp_path_factory.mktemp(f"torch_{group}") / "results.json"
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3", **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, CHILD, group, str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def main_cases(tmp_path_factory):
    import hostile_files

    folder = tmp_path_factory.mktemp("torch_files")
    hostile_files.build(str(folder), tf_keras=False)  # saved here on TensorFlow: .keras files are backend-free
    return run_child("main", tmp_path_factory, {"LOSSMAP_TORCH_FILES": str(folder)})


@pytest.fixture(scope="module")
def custom_cases(tmp_path_factory):
    return run_child("custom", tmp_path_factory)


@pytest.fixture(scope="module")
def property_cases(tmp_path_factory):
    return run_child("property", tmp_path_factory)


def ok(cases, name):
    result = cases[name]
    assert result["ok"], result.get("error")
    return result


def _message(terms_or_json):
    return json.dumps(terms_or_json, indent=1, default=str)[:3000]


# ---------------------------------------------------------------- inventory, reproduction, verification
def test_a_multi_output_archive_with_sample_weights_verifies_on_torch_without_tensorflow(main_cases):
    r = ok(main_cases, "multi_output_file")
    assert r["exit"] == 0, r["stderr"]
    doc = r["json"]
    assert doc["model"]["backend"] == "torch" and doc["model"]["engine"] == "keras3"
    assert [t["id"] for t in doc["terms"]] == ["compiled/a", "compiled/b", "activity/trunk",
                                               "regularizer/trunk/kernel"]
    weights = {t["id"]: t["weight"] for t in doc["terms"]}
    assert weights["compiled/a"] == 0.5 and weights["compiled/b"] == 1.0
    total = doc["total"]
    assert total["verified"] and total["compute_loss"] is not None and total["train_step"] is not None, _message(total)
    assert abs(total["reproduced"] - total["train_step"]) <= 1e-5 * abs(total["train_step"]) + 1e-6
    # the sample weights of output 'a' reached the reproduction
    assert any("sample_weight" in s for s in next(t for t in doc["terms"] if t["id"] == "compiled/a")["steps"])
    assert doc["gradients"] is not None
    assert "torch" in total["summation"] and "backward" in total["summation"]
    assert not r["tensorflow_imported"], "the torch path imported TensorFlow"


def test_the_multitask_example_verifies_with_every_kind_of_term(main_cases):
    r = ok(main_cases, "multitask_example")
    assert r["backend"] == "torch" and r["verified"] and r["state_restored"], _message(r)
    kinds = {t["kind"] for t in r["terms"].values()}
    assert kinds == {"compiled", "add_loss", "activity_regularizer", "weight_regularizer"}
    assert r["terms"]["compiled/price"]["weight"] == 0.4 and r["terms"]["compiled/kind"]["weight"] == 0.6
    for tid, t in r["terms"].items():  # each compiled term against Keras's own loss object on torch
        if t["kind"] == "compiled":
            assert np.isclose(t["value"], t["keras_value"], rtol=1e-5, atol=1e-7), tid


def test_crossentropy_after_a_softmax_is_computed_from_the_probabilities_on_torch(main_cases):
    """TensorFlow computes it from the softmax's attached logits (CROSSENTROPY_FROM_LOGITS); torch's nn.py
    never reads them: the reproduction follows torch, and no logits finding is raised."""
    r = ok(main_cases, "multitask_example")
    kind = r["terms"]["compiled/kind"]
    assert not any("logits" in s for s in kind["steps"]), kind["steps"]
    assert "CROSSENTROPY_FROM_LOGITS" not in [f[0] for f in r["findings"]]


def test_variables_optimizer_state_and_grads_are_bit_identical_afterwards(main_cases):
    r = ok(main_cases, "variables_bit_identical")
    assert r["verified"] and r["state_restored"] and r["identical"], r
    assert r["grads_none_before"] and r["grads_none_after"], "loss.backward() left .grad on the parameters"


# ---------------------------------------------------------------- gradients
def test_each_terms_gradient_is_torch_autograds(main_cases):
    r = ok(main_cases, "gradients_against_autograd")
    assert r["verified"]
    for tid, norm in r["autograd_norms"].items():
        assert np.isclose(r["gradient_terms"][tid], norm, rtol=1e-4), (tid, r["gradient_terms"][tid], norm)
    assert set(r["gradient_terms"]) == set(r["terms"])
    assert all(v > 0 for v in r["gradient_terms"].values())


# ---------------------------------------------------------------- the source walkthrough
def test_the_walkthrough_reads_the_torch_trainer_and_nn_at_their_true_lines(main_cases):
    r = ok(main_cases, "multitask_example")
    steps = {s["key"]: s for s in r["walkthrough"]}
    train = steps["train_step"]
    assert train["qualname"] == "TorchTrainer.train_step" and train["file"].endswith(
        os.path.join("backend", "torch", "trainer.py")), train
    assert "get_logits" not in steps and "scale_loss_for_distribution" not in steps
    nn = steps["torch_sparse_categorical_crossentropy"]
    assert nn["file"].endswith(os.path.join("backend", "torch", "nn.py"))
    wanted = {"train_step": ["self.zero_grad()", "loss.backward()", "self.optimizer.apply("],
              "torch_sparse_categorical_crossentropy": ["torch.clip("]}
    for key, needles in wanted.items():
        step = steps[key]
        with open(step["file"], encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        for number, text, _ in step["lines"]:
            assert lines[number - 1] == text, (key, number, text)  # the true line of the installed file
        highlighted = " ".join(text for _, text, _ in step["lines"])
        for needle in needles:
            assert needle in highlighted, (key, needle, highlighted)


# ---------------------------------------------------------------- hostile inputs
@pytest.mark.parametrize("name", ["config_bomb", "layer_bigger_than_weights", "weights_mismatch",
                                  "labels_outside_classes", "missing_file"])
def test_hostile_inputs_are_exit_2_with_one_line_on_torch(main_cases, name):
    r = ok(main_cases, "hostile_inputs")[name]
    assert r["exit"] == 2, r
    assert r["stdout"] == "" and "Traceback" not in r["stderr"], r["stderr"]
    lines = r["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmap: "), r["stderr"]
    assert r["needle"] in lines[0], lines[0]
    assert r["cpu_seconds"] < 5.0, r


def test_a_weights_mismatch_names_the_layer_and_both_shapes_on_torch(main_cases):
    line = ok(main_cases, "hostile_inputs")["weights_mismatch"]["stderr"]
    assert "a/kernel" in line and "(3, 5)" in line and "(3, 2)" in line, line


# ---------------------------------------------------------------- the property, across built-in losses
def test_every_built_in_loss_reproduces_and_verifies_on_torch(property_cases):
    results = ok(property_cases, "built_in_losses")
    failed = {k: v for k, v in results.items() if k not in ("ok", "seconds") and v != "ok"}
    assert len([k for k in results if k not in ("ok", "seconds")]) == 17
    assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())


# ---------------------------------------------------------------- custom training code
def test_a_compute_loss_override_is_split_into_its_addends_on_torch(custom_cases):
    r = ok(custom_cases, "compute_loss_override")
    assert r["backend"] == "torch" and r["custom_compute_loss"] and not r["custom_train_step"]
    assert r["verified"], _message(r)
    kinds = {t["kind"] for t in r["terms"].values()}
    assert "custom" in kinds and "compiled" in kinds and "weight_regularizer" in kinds, r["terms"]
    custom = [t for t in r["terms"].values() if t["kind"] == "custom"]
    assert any("0.05" in (t["expression"] or "") or t["weight"] == 0.05 for t in custom), custom


def test_a_stateless_compute_loss_override_is_never_called_on_torch_and_said_so(custom_cases):
    r = ok(custom_cases, "override_never_called")
    assert r["verified"] and not r["custom_compute_loss"], r
    (finding,) = [f for f in r["findings"] if f[0] == "OVERRIDE_NEVER_CALLED"]
    assert finding[1] == "warning" and finding[2].startswith("JaxOnlyPenalty.stateless_compute_loss overrides")
    assert "backend/torch/trainer.py:" in finding[2] and "(TorchTrainer.train_step)" in finding[2]


def test_the_torch_guides_loop_with_a_torch_optimizer_is_split_verified_and_put_back(custom_cases):
    """Keras's "training loop from scratch in PyTorch" guide, first form: `torch.optim.Adam(model.parameters())`
    and `optimizer.step()`. Each addend valued and differentiated as torch.autograd does it, the gradients the
    optimizer's step() found in `.grad` verified, and Adam's moments put back bit for bit."""
    r = ok(custom_cases, "torch_optim_loop")
    cli = r["cli"]
    assert cli["code"] == 0 and cli["json"]["total"]["verified"], cli["stderr"]
    assert r["verified"] and r["gradients_verified"] and r["identical"] and r["optimizer_state_identical"], _message(r)
    assert set(r["terms"]) == set(r["autograd_norms"]) == {"custom/data_loss", "custom/penalty"}
    for tid, value in r["autograd_values"].items():
        assert np.isclose(r["terms"][tid]["contribution"], value, rtol=1e-6), (tid, r["terms"][tid], value)
    for tid, norm in r["autograd_norms"].items():
        assert np.isclose(r["gradient_terms"][tid], norm, rtol=1e-5), (tid, r["gradient_terms"], norm)


def test_the_guides_train_step_with_loss_backward_is_split_and_verified(custom_cases):
    """The Keras guide's torch `train_step` (`self.compute_loss(...)` plus a penalty, `loss.backward()`, the
    gradients read back from `.grad` into `optimizer.apply`): `loss.backward()` is the differentiated loss."""
    r = ok(custom_cases, "train_step_override")
    assert r["exit"] == 0 and r["json"] is not None, r["stderr"]
    total = r["json"]["total"]
    assert total["verified"] and total["gradients_verified"], total
    terms = {t["id"]: t for t in r["json"]["terms"]}
    assert set(terms) == {"compiled/out", "regularizer/hidden/kernel", "custom/smooth"}, terms
    line = _line_of("loss.backward()", after="class GuideStepModel")
    assert terms["custom/smooth"]["weight"] == 0.1 and f"differentiated at line {line}" in total["summation"], total


def _line_of(text: str, after: str) -> int:
    """The 1-based line of tests/torch_custom_steps.py holding `text`, the first after the line holding `after`."""
    with open(os.path.join(HERE, "torch_custom_steps.py"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    start = next(i for i, ln in enumerate(lines) if after in ln)
    return next(i for i, ln in enumerate(lines[start:], start + 1) if text in ln)


def test_a_hand_built_loss_backward_step_matches_autograd_addend_by_addend(custom_cases):
    """Data loss + physics-style penalty + sum(self.losses), differentiated with loss.backward(): every addend
    named and valued, the total verified against what backward() differentiated, each addend's gradient equal
    to torch.autograd.grad of it computed independently, and the state (optimizer slots, .grad) bit-identical."""
    r = ok(custom_cases, "physics_step_against_autograd")
    assert r["verified"] and r["gradients_verified"] and r["state_restored"], _message(r)
    assert r["identical"] and r["grads_none_after"], r
    assert set(r["terms"]) == set(r["autograd_norms"]), r["terms"]
    for tid, value in r["autograd_values"].items():
        assert np.isclose(r["terms"][tid]["contribution"], value, rtol=1e-6), (tid, r["terms"][tid], value)
    for tid, norm in r["autograd_norms"].items():
        assert norm > 0 and np.isclose(r["gradient_terms"][tid], norm, rtol=1e-5), (tid, r["gradient_terms"][tid], norm)
    assert r["terms"]["custom/physics"]["weight"] == 0.5 and r["terms"]["custom/physics"]["source"], r["terms"]
    unwanted = ("MODEL_LOSSES_IGNORED", "DEAD_TERM", "UNSPLIT_LOSS")
    assert not [f for f in r["findings"] if f[0] in unwanted], r["findings"]


def test_a_step_function_with_loss_backward_is_explained_too(custom_cases):
    r = ok(custom_cases, "step_function")
    assert r["exit"] == 0 and r["json"] is not None, r["stderr"]
    assert r["json"]["total"]["verified"] and r["json"]["total"]["gradients_verified"], r["json"]["total"]
    kinds = sorted(t["kind"] for t in r["json"]["terms"])
    assert kinds == ["custom", "weight_regularizer"], r["json"]["terms"]


def test_an_addend_passed_through_detach_is_a_dead_term(custom_cases):
    r = ok(custom_cases, "detached_addend")
    assert r["verified"] and r["gradients_verified"], _message(r)
    dead = [f for f in r["findings"] if f[0] == "DEAD_TERM"]
    assert len(dead) == 1 and "custom/smooth" in dead[0][2] and ".detach()" in dead[0][2], r["findings"]
    assert any(f[0] == "MODEL_LOSSES_IGNORED" and "before .backward()" in f[2] for f in r["findings"]), r["findings"]


def test_a_step_with_loss_backward_that_applies_nothing_is_one_line(custom_cases):
    r = ok(custom_cases, "step_function_applying_nothing")
    assert r["exit"] == 2 and r["json"] is None, r
    lines = r["stderr"].splitlines()
    assert len(lines) == 1 and "Traceback" not in r["stderr"], r["stderr"]
    assert lines[0].startswith("lossmap: backward_only (") and "loss.backward()" in lines[0], lines[0]


def test_two_backward_calls_with_two_optimizers_keep_the_variables_each_applies(custom_cases):
    """backward() fills every parameter's .grad: each objective keeps the variables its optimizer is handed
    (as tape.gradient(loss, variables) names them), and an in-place clip of .grad is GRADIENT_TRANSFORMED."""
    r = ok(custom_cases, "two_optimizers")
    assert r["verified"] and r["gradients_verified"] and r["state_restored"], _message(r)
    found = {f[0]: f[2] for f in r["findings"]}
    assert "2 variable(s)" in found["MULTIPLE_OPTIMIZERS"] and "share no variable" in found["MULTIPLE_OPTIMIZERS"]
    assert found["GRADIENT_TRANSFORMED"].startswith("objective/1:"), found
