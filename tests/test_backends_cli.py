"""`--backend` and `--compare-backends`, through the real command line in child processes.

Keras fixes its backend at import, so every case runs lossmap as a process, in a clean environment
(`env -i` with PATH and a fresh HOME: no keras.json, no KERAS_BACKEND unless the case sets it). The
cases that need lossmap's engine for JAX (or PyTorch) skip, saying so, while that engine is not
registered in `lossmap.engines`; once it is, they run.
"""
import ast
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lossmap import backends
from lossmap.engines import _CLASSES

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "backend_models.py")
SATURATED, AGREEING = f"{MODELS}:saturated", f"{MODELS}:agreeing"


def engine_ready(backend):
    """Skip reason, or None when lossmap has an engine for Keras 3 on `backend` and it is installed."""
    if ("keras3", backend) not in _CLASSES:
        return f"lossmap's Keras 3 engine for the {backend} backend is not registered in lossmap.engines yet"
    return backends.missing(backend)


def needs(backend):
    why = engine_ready(backend)
    return pytest.mark.skipif(why is not None, reason=why or "")


def clean_env(tmp_path, **extra):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    os.makedirs(env["HOME"], exist_ok=True)
    if os.environ.get("PYTHONPATH"):  # a worktree run against another checkout's editable install
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def lossmap(args, tmp_path, **env):
    return subprocess.run([sys.executable, "-m", "lossmap", *args], env=clean_env(tmp_path, **env),
                          capture_output=True, text=True, cwd=str(tmp_path))


def one_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ---------------------------------------------------------------- --backend
@pytest.mark.parametrize("command", ["check", "report"])
def test_a_tensorflow_example_on_another_backend_is_one_line(tmp_path, command):
    proc = lossmap([command, "--example", "physics_informed"], tmp_path, KERAS_BACKEND="torch")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "run it with --backend tensorflow" in one_line(proc)


def test_a_jax_training_loop_step_on_tensorflow_is_one_line(tmp_path):
    """The JAX guide's `train_step(state, data)` needs JAX's stateless step: on TensorFlow, one line naming it."""
    loop = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_training_loop.py")
    proc = lossmap(["check", "--step", f"{loop}:train_step", "--backend", "tensorflow"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_line(proc)
    assert "takes (state, data), a JAX training loop's stateless step" in line and "--backend jax" in line


def test_backend_tf_keras_on_jax_is_a_usage_error(tmp_path):
    proc = lossmap(["check", AGREEING, "--backend", "jax", "--engine", "tf_keras"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "tf_keras runs on TensorFlow only" in one_line(proc)


def test_backend_not_installed_says_how_to_install(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    # a sitecustomize that makes `torch` (and jax) unimportable, as on a machine without them
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'jax', 'jaxlib'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n")
    path = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH")) if p)
    for backend, install in (("torch", "pip install torch"), ("jax", "pip install 'jax[cpu]'")):
        proc = lossmap(["check", AGREEING, "--backend", backend, "--format", "json"], tmp_path, PYTHONPATH=path)
        assert proc.returncode == 2 and proc.stdout == ""
        line = one_line(proc)
        assert f"the {backend} backend needs" in line and install in line, line


def test_backend_tensorflow_from_a_jax_process_runs_in_a_child(tmp_path):
    """KERAS_BACKEND=jax in the environment, --backend tensorflow: the child runs on TensorFlow, its
    one JSON document and exit code pass through."""
    proc = lossmap(["check", AGREEING, "--backend", "tensorflow", "--format", "json", "--no-gradients"], tmp_path,
                   KERAS_BACKEND="jax")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["model"]["backend"] == "tensorflow" and doc["total"]["verified"]
    assert proc.stderr == ""


def test_backend_passes_the_exit_code_and_line_through(tmp_path):
    proc = lossmap(["check", str(tmp_path / "missing.keras"), "--backend", "tensorflow"], tmp_path,
                   KERAS_BACKEND="jax")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "missing.keras" in one_line(proc)


def test_backend_in_process_when_already_on_it(tmp_path):
    """keras.json says tensorflow, the variable is unset: --backend tensorflow runs here (no child)."""
    keras_dir = tmp_path / "home" / ".keras"
    keras_dir.mkdir(parents=True)
    (keras_dir / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    code = ("import sys; from lossmap import backends; from lossmap.cli import main\n"
            "def refuse(*a, **k): raise AssertionError('a child process was started')\n"
            "backends.run_child = refuse\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "check", AGREEING, "--backend", "tensorflow", "--format",
                           "json", "--no-gradients"], env=clean_env(tmp_path), capture_output=True, text=True,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"]["backend"] == "tensorflow"


def _ctrl_c_default():
    """A test run in the background (`make test &`, CI) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: give the process under test the disposition a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_backend_ctrl_c_reaches_the_child(tmp_path):
    """SIGINT to the parent alone (kill -INT): it is passed on, the child exits 130, no traceback."""
    slow, started = tmp_path / "slow.py", tmp_path / "started"
    slow.write_text(f"import time\n\ndef build():\n    open({str(started)!r}, 'w').close()\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "lossmap", "check", f"{slow}:build", "--backend", "tensorflow"],
                            env=clean_env(tmp_path, KERAS_BACKEND="jax"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path), preexec_fn=_ctrl_c_default)
    deadline = time.monotonic() + 180
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the child is in the factory (TensorFlow imported, the model being built)
    assert started.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == ""


# ---------------------------------------------------------------- --compare-backends
def _report(tmp_path, model, *extra):
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    proc = lossmap(["report", model, "--compare-backends", "-o", str(out), "--json", str(js), "--no-gradients",
                    *extra], tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out.read_text(), json.loads(js.read_text())


def test_compare_backends_lists_what_it_skips(tmp_path):
    """Every backend is in the table or listed as skipped, with why."""
    page, doc = _report(tmp_path, AGREEING)
    bc = doc["backend_comparison"]
    assert bc["primary"] == "tensorflow" and "tensorflow" in bc["backends"]
    for b in ("jax", "torch"):
        why = engine_ready(b)
        listed = [s for s in bc["skipped"] if s["backend"] == b]
        if why is None:
            assert b in bc["backends"] or [f for f in bc["failed"] if f["backend"] == b]
        else:
            assert listed and listed[0]["why"], bc["skipped"]
    assert 'id="backends"' in page
    assert doc["terms"] and [r["id"] for r in bc["rows"]] == [t["id"] for t in doc["terms"]]


def test_explain_compare_backends_text(tmp_path):
    proc = lossmap(["explain", AGREEING, "--compare-backends", "--no-gradients"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Backends side by side" in proc.stdout and "TensorFlow" in proc.stdout


def test_compare_backends_refuses_tf_keras_and_step(tmp_path):
    proc = lossmap(["report", AGREEING, "--compare-backends", "--engine", "tf_keras"], tmp_path)
    assert proc.returncode == 2 and "tf_keras" in one_line(proc)
    proc = lossmap(["report", AGREEING, "--compare-backends", "--compare-engines"], tmp_path)
    assert proc.returncode == 2 and "not both" in one_line(proc)


@needs("jax")
def test_compare_backends_agree(tmp_path):
    page, doc = _report(tmp_path, AGREEING)
    bc = doc["backend_comparison"]
    assert {"tensorflow", "jax"} <= set(bc["backends"])
    assert bc["totals_same"] and bc["differences"] == []
    assert all(not r["differs"] for r in bc["rows"])
    assert all(bc["totals"][b]["verified"] for b in bc["backends"])
    assert "Every term agrees within tolerance" in page


def _true_line(path, function, text):
    """The line of `text` inside `function` of the installed file, by ast (the test's own reading)."""
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    lines = source.splitlines()
    fn = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == function)
    return next(i for i in range(fn.lineno, fn.end_lineno + 1) if text in lines[i - 1])


def _keras_dir():
    import importlib.util

    return os.path.dirname(importlib.util.find_spec("keras").origin)


@needs("jax")
def test_compare_backends_explains_saturated_crossentropy(tmp_path):
    page, doc = _report(tmp_path, SATURATED)
    bc = doc["backend_comparison"]
    row = next(r for r in bc["rows"] if r["id"] == "compiled/kind")
    tf, jx = row["values"]["tensorflow"]["value"], row["values"]["jax"]["value"]
    assert row["differs"] and tf > jx + 1.0  # the logits count what the clip caps
    assert not bc["totals_same"]
    assert all(bc["totals"][b]["verified"] for b in bc["backends"])  # each backend reproduces itself
    (d,) = [d for d in bc["differences"] if d["term"] == "compiled/kind"]
    assert d["code"] == "BACKEND_DIFF_CROSSENTROPY_LOGITS"
    keras_dir = _keras_dir()
    jax_cite = next(c for c in d["cites"] if c["engine"] == "jax")
    assert jax_cite["found"] and jax_cite["path"].endswith("keras/src/backend/jax/nn.py")
    assert jax_cite["line"] == _true_line(os.path.join(keras_dir, "src/backend/jax/nn.py"),
                                          "sparse_categorical_crossentropy", "jnp.clip(output")
    tf_cite = next(c for c in d["cites"] if c["engine"] == "tensorflow" and c["qualname"] == "_get_logits")
    assert tf_cite["line"] == _true_line(os.path.join(keras_dir, "src/backend/tensorflow/nn.py"), "_get_logits",
                                         "output_ = output._keras_logits")
    assert "keras/src/backend/jax/nn.py" in page and "BACKEND_DIFF_CROSSENTROPY_LOGITS" in page


def test_compare_backends_explains_a_term_only_the_jax_trainer_calls(tmp_path):
    """A `stateless_compute_loss` override: explained on JAX, never called on TensorFlow (OVERRIDE_NEVER_CALLED);
    the side-by-side table names the method and cites each trainer's line by structure, at its true line."""
    _, doc = _report(tmp_path, f"{MODELS}:jax_only_penalty")
    bc = doc["backend_comparison"]
    (d,) = [d for d in bc["differences"] if d["term"] == "custom/penalty"]
    assert d["code"] == "BACKEND_DIFF_OVERRIDE" and "JaxOnlyPenalty.stateless_compute_loss" in d["message"]
    assert not any(x["code"] == "BACKEND_DIFF_UNEXPLAINED" for x in bc["differences"]), bc["differences"]
    assert all(bc["totals"][b]["verified"] for b in bc["backends"])
    keras_dir = _keras_dir()
    jax_cite = next(c for c in d["cites"] if c["engine"] == "jax")
    assert jax_cite["line"] == _true_line(os.path.join(keras_dir, "src/backend/jax/trainer.py"),
                                          "compute_loss_and_updates", "= self.stateless_compute_loss(")
    tf_cite = next(c for c in d["cites"] if c["engine"] == "tensorflow")
    assert tf_cite["line"] == _true_line(os.path.join(keras_dir, "src/backend/tensorflow/trainer.py"), "train_step",
                                         "loss = self._compute_loss(")


@needs("torch")
def test_compare_backends_torch_column(tmp_path):
    _, doc = _report(tmp_path, SATURATED)
    bc = doc["backend_comparison"]
    assert "torch" in bc["backends"]
    d = next(d for d in bc["differences"] if d["term"] == "compiled/kind")
    assert any(c["engine"] == "torch" and c["found"] for c in d["cites"])


# ---------------------------------------------------------------- the explanation, from real runs of each backend
def test_saturated_difference_is_explained_from_real_backend_numbers(tmp_path):
    """Independent of lossmap's JAX engine: TensorFlow's real JSON document, and what Keras's own
    compute_loss gives on JAX for the same weights and batch (a plain Keras process), side by side
    through `comparison`: the difference is measurable and explained from both backends' lines."""
    if backends.missing("jax"):
        pytest.skip(backends.missing("jax"))
    from lossmap.compare_backends import comparison

    batch, weights = tmp_path / "b.npz", tmp_path / "w.npz"
    rng = np.random.default_rng(0)
    np.savez(batch, **{"x/x": rng.standard_normal((8, 4)).astype("float32"),
                       "y/kind": rng.integers(0, 3, 8).astype("int32")})
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import backend_models as bm\n"
            "m = bm.saturated(); np.savez(sys.argv[2], **{f'w/{i}': w for i, w in enumerate(m.get_weights())})\n")
    subprocess.run([sys.executable, "-c", code, HERE, str(weights)], env=clean_env(tmp_path, KERAS_BACKEND="tensorflow"),
                   check=True, capture_output=True)
    tf = lossmap(["check", SATURATED, "--format", "json", "--data", str(batch), "--weights-from", str(weights),
                  "--no-gradients"], tmp_path, KERAS_BACKEND="tensorflow")
    assert tf.returncode == 0, tf.stderr
    tf_doc = json.loads(tf.stdout)
    ref = {}
    for b in ("tensorflow", "jax"):
        p = subprocess.run([sys.executable, MODELS, str(weights), str(batch)], env=clean_env(tmp_path, KERAS_BACKEND=b),
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        ref[b] = float(p.stdout.split()[-1])
    term = next(t for t in tf_doc["terms"] if t["id"] == "compiled/kind")
    assert abs(term["value"] - ref["tensorflow"]) <= 1e-4 * abs(ref["tensorflow"])  # lossmap = Keras on TF
    assert ref["tensorflow"] > ref["jax"] + 1.0  # measurably different on JAX
    jax_doc = json.loads(json.dumps(tf_doc))
    jax_doc["model"]["backend"] = "jax"
    jax_doc["findings"] = []  # nothing is computed from logits there
    jt = next(t for t in jax_doc["terms"] if t["id"] == "compiled/kind")
    jt["value"] = jt["contribution"] = ref["jax"]
    cmp = comparison({"tensorflow": tf_doc, "jax": jax_doc}, "tensorflow", (1e-5, 1e-7))
    (d,) = cmp["differences"]
    assert d["code"] == "BACKEND_DIFF_CROSSENTROPY_LOGITS" and d["term"] == "compiled/kind"
    assert "-log(1e-07) = 16.12" in d["message"]
    where = {(c["engine"], c["qualname"]): c for c in d["cites"]}
    keras_dir = _keras_dir()
    assert where[("jax", "sparse_categorical_crossentropy")]["line"] == _true_line(
        os.path.join(keras_dir, "src/backend/jax/nn.py"), "sparse_categorical_crossentropy", "jnp.clip(output")
    assert where[("tensorflow", "softmax")]["line"] == _true_line(
        os.path.join(keras_dir, "src/backend/tensorflow/nn.py"), "softmax", "output._keras_logits = logits")
    assert [r["id"] for r in cmp["rows"] if r["differs"]] == ["compiled/kind"]


@needs("jax")
def test_compare_backends_random_layers_are_not_blamed_on_the_arithmetic(tmp_path):
    """The bundled multitask has Dropout: its terms differ between backends by the random numbers, and
    its softmax crossentropy agrees on identical outputs, so no crossentropy difference is claimed."""
    proc = lossmap(["report", "--example", "multitask", "--compare-backends", "--no-gradients", "-o",
                    str(tmp_path / "m.html"), "--json", str(tmp_path / "m.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    bc = json.loads((tmp_path / "m.json").read_text())["backend_comparison"]
    codes = {d["code"] for d in bc["differences"]}
    assert "BACKEND_DIFF_CROSSENTROPY_LOGITS" not in codes and "BACKEND_DIFF_RANDOM_LAYERS" in codes
    (d,) = bc["differences"]
    assert "drop" in d["message"] and "compiled/kind's arithmetic agrees on identical outputs" in d["message"]
    assert all(bc["totals"][b]["verified"] for b in bc["backends"])
