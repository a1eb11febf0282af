"""The command line's contract: exit codes, one-line errors, clean stdout.

Every input lossmap cannot analyse ends with exit code 2, nothing on stdout and
exactly one line on stderr, "lossmap: <what is wrong>; <how to fix it>", with no
traceback unless --debug. Most cases call `lossmap.cli.main` in this process
(TensorFlow is imported once); subprocesses check what only a real process
shows: tracebacks, TensorFlow's own logging, and what gets imported.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from lossmap.cli import main

EXE_DIR = os.path.dirname(sys.executable)
LOSSMAP = shutil.which("lossmap", path=EXE_DIR)
CLI = [LOSSMAP] if LOSSMAP else [sys.executable, "-m", "lossmap"]
CUSTOM_KEY = "lossmap_test_cli>Scale"

FACTORIES = '''
import keras
from keras import layers, ops


class Penalty(layers.Layer):
    """A scalar add_loss on a trained tensor."""

    def call(self, x):
        self.add_loss(0.1 * ops.mean(ops.square(x)))
        return x


class VectorPenalty(layers.Layer):
    """add_loss of an unreduced tensor: Keras sums every entry (a warning finding)."""

    def call(self, x):
        self.add_loss(0.1 * ops.square(x))
        return x


def _net(extra=None):
    keras.utils.set_random_seed(0)  # the same weights every run
    inputs = keras.Input((4,), name="x")
    h = layers.Dense(3, name="hidden")(inputs)
    if extra is not None:
        h = extra(h)
    return keras.Model(inputs, layers.Dense(2, name="out")(h), name="net")


def good():
    model = _net()
    model.compile(optimizer="sgd", loss="mse")
    return model


def noisy():
    print("building the model ...")
    model = good()
    model.summary()
    return model


def broken():
    raise RuntimeError("this factory needs a GPU")


def not_a_model():
    return {"model": None}


def uncompiled():
    return _net()


def uncompiled_add_loss():
    return _net(Penalty(name="penalty"))


def vector_add_loss():
    model = _net(VectorPenalty(name="vpenalty"))
    model.compile(optimizer="sgd", loss="mse")
    return model
'''

CUSTOM_LAYERS = '''
import keras


@keras.saving.register_keras_serializable(package="lossmap_test_cli")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


# ---------------------------------------------------------------- helpers
def run(capsys, *argv):
    """`lossmap ARGV` in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_process(*argv, env=None):
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(CLI + [str(a) for a in argv], capture_output=True, text=True, env=full_env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code, out, err, *needles):
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert out == "", f"stdout should be empty:\n{out}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr:\n{err}"
    assert lines[0].startswith("lossmap: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def strict_json(text):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def forget_custom_layers():
    """Unregister the custom layer and forget every module that defined it."""
    import keras

    keras.saving.get_custom_objects().pop(CUSTOM_KEY, None)
    for name in [n for n in sys.modules if "lm_custom_layers" in n]:
        del sys.modules[name]


def import_as(name, path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every model and batch file the cases below use, built once."""
    import keras
    from keras import layers

    d = tmp_path_factory.mktemp("cli")
    f = {"dir": d}

    f["factories"] = d / "lm_factories.py"
    f["factories"].write_text(FACTORIES)
    fac = import_as("lm_factories_for_saving", f["factories"])
    f["good"] = d / "good.keras"
    fac.good().save(f["good"])
    f["uncompiled"] = d / "uncompiled.keras"
    fac.uncompiled().save(f["uncompiled"])
    del sys.modules["lm_factories_for_saving"]

    # A custom layer saved from module lm_custom_layers, then unregistered.
    f["custom_module"] = d / "lm_custom_layers.py"
    f["custom_module"].write_text(CUSTOM_LAYERS)
    custom = import_as("lm_custom_layers", f["custom_module"])
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, layers.Dense(2)(custom.Scale(name="scale")(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    f["custom"] = d / "custom.keras"
    model.save(f["custom"])
    forget_custom_layers()

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, layers.Dense(2)(layers.Lambda(lambda t: t * 2.0, name="double")(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    f["lambda"] = d / "lambda.keras"
    model.save(f["lambda"])

    data = f["good"].read_bytes()
    f["truncated"] = d / "truncated.keras"
    f["truncated"].write_bytes(data[: len(data) // 2])
    f["text"] = d / "model.keras"
    f["text"].write_text("this is not a model\n")
    f["no_config"] = d / "no_config.keras"
    with zipfile.ZipFile(f["no_config"], "w") as zf:
        zf.writestr("weights.txt", "nothing")
    f["directory"] = d / "saved_model"
    f["directory"].mkdir()
    f["h5"] = d / "model.h5"
    f["h5"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype("float32")
    y = rng.standard_normal((8, 2)).astype("float32")
    batches = {
        "ok": dict(x=x, y=y, sample_weight=np.ones(8, "float32")),
        "pickled": dict(x=np.array([{"a": 1}] * 8, dtype=object), y=y),
        "no_y": dict(x=x),
        "bad_shape": dict(x=np.zeros((8, 5), "float32"), y=y),
        "strings": dict(x=np.full((8, 4), "a"), y=y),
        "extra_key": dict(x=x, y=y, labels=y),
        "batch_size": dict(x=x, y=y[:5]),
    }
    for name, arrays in batches.items():
        f[f"data_{name}"] = d / f"{name}.npz"
        np.savez(f[f"data_{name}"], **arrays)
    f["data_not_npz"] = d / "not_npz.npz"
    f["data_not_npz"].write_text("x,y\n1,2\n")
    f["data_npy"] = d / "single.npy"
    np.save(f["data_npy"], x)
    return f


# ---------------------------------------------------------------- the model file
@pytest.mark.parametrize("key,needles", [
    ("missing", ["no such file", "factory"]),
    ("directory", ["is a directory", "model.save"]),
    ("text", ["not a .keras archive", "model.save"]),
    ("no_config", ["no config.json", "model.save"]),
    ("truncated", ["truncated", "save the model again"]),
    ("h5", ["HDF5", ".keras"]),
])
def test_unreadable_model_file(files, capsys, key, needles):
    path = files["dir"] / "absent.keras" if key == "missing" else files[key]
    assert_one_line_error(*run(capsys, "check", path), *needles)


def test_engine_not_available(files, capsys):
    assert_one_line_error(*run(capsys, "check", files["good"], "--engine", "tf_keras"), "tf_keras", "--engine keras3")


def test_unknown_custom_object_then_import(files, capsys, monkeypatch):
    forget_custom_layers()
    line = assert_one_line_error(*run(capsys, "check", files["custom"]), "'Scale'", "--import lm_custom_layers")
    assert "Full object config" not in line

    code, out, err = run(capsys, "check", files["custom"], "--import", files["custom_module"])
    assert code == 0, err
    assert "Traceback" not in err and out

    forget_custom_layers()
    monkeypatch.syspath_prepend(str(files["dir"]))
    code, out, err = run(capsys, "check", files["custom"], "--import", "lm_custom_layers")
    assert code == 0, err


def test_bad_import(files, capsys):
    assert_one_line_error(*run(capsys, "check", files["good"], "--import", "no_such_module_lm"),
                          "--import no_such_module_lm", "ModuleNotFoundError")
    assert_one_line_error(*run(capsys, "check", files["good"], "--import", files["dir"] / "absent.py"),
                          "no such file")


def test_lambda_refused_in_safe_mode_then_unsafe(files, capsys):
    assert_one_line_error(*run(capsys, "check", files["lambda"]), "safe mode", "--unsafe")
    code, out, err = run(capsys, "check", files["lambda"], "--unsafe")
    assert code == 0, err
    assert out


# ---------------------------------------------------------------- --data
@pytest.mark.parametrize("key,needles", [
    ("missing", ["--data", "no such file"]),
    ("not_npz", ["not a NumPy .npz", "numpy.savez"]),
    ("npy", [".npz", "keys x and y"]),
    ("pickled", ["pickled", "numpy.savez"]),
    ("no_y", ["missing key 'y'", "numpy.savez"]),
    ("bad_shape", ["'x'", "(8, 5)", "(batch, 4)"]),
    ("strings", ["'x'", "numeric"]),
    ("extra_key", ["'labels'", "matches no input or output"]),
    ("batch_size", ["batch size", "'x' has 8", "'y' has 5"]),
])
def test_bad_data_file(files, capsys, key, needles):
    path = files["dir"] / "absent.npz" if key == "missing" else files[f"data_{key}"]
    line = assert_one_line_error(*run(capsys, "check", files["good"], "--data", path), *needles)
    assert os.path.basename(path) in line


def test_good_data_file(files, capsys):
    code, out, err = run(capsys, "check", files["good"], "--data", files["data_ok"], "--format", "json")
    assert code == 0, err
    doc = strict_json(out)
    assert doc["batch"] == {"source": "file", "size": 8, "seed": None}


# ---------------------------------------------------------------- factories
@pytest.mark.parametrize("spec,needles", [
    ("{fac}:no_such_function", ["has no function no_such_function", "good", ":FUNCTION"]),
    ("{fac}:broken", ["raised RuntimeError", "this factory needs a GPU", "--debug"]),
    ("{fac}:not_a_model", ["returned dict", "not a Keras model"]),
    ("{dir}/absent.py:build", ["absent.py", "no such file"]),
    ("lm_factories:not_a_model", ["returned dict"]),
    ("lossmap.examples:no_such_example", ["has no function no_such_example", "multitask"]),
    ("no_such_package_lm.models:build", ["could not import", "no_such_package_lm"]),
])
def test_bad_factory(files, capsys, monkeypatch, spec, needles):
    monkeypatch.syspath_prepend(str(files["dir"]))
    spec = spec.format(fac=files["factories"], dir=files["dir"])
    assert_one_line_error(*run(capsys, "check", spec), *needles)


@pytest.mark.parametrize("spec", ["{fac}:good", "lm_factories:good", "lossmap.examples:multitask"])
def test_good_factory(files, capsys, monkeypatch, spec):
    monkeypatch.syspath_prepend(str(files["dir"]))
    code, out, err = run(capsys, "check", spec.format(fac=files["factories"]))
    assert code == 0, err + out


def test_factories_with_the_same_file_name(tmp_path, capsys):
    """dir_a/model.py and dir_b/model.py are two modules, not one cached under the other."""
    for sub, body in (("a", "def build():\n    return 1\n"), ("b", "def build():\n    return 'b'\n")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "lm_same_name.py").write_text(body)
    assert_one_line_error(*run(capsys, "check", f"{tmp_path}/a/lm_same_name.py:build"), "returned int")
    assert_one_line_error(*run(capsys, "check", f"{tmp_path}/b/lm_same_name.py:build"), "returned str")


# ---------------------------------------------------------------- usage errors
@pytest.mark.parametrize("argv,needles", [
    (["check", "{good}", "--no-such-option"], ["unrecognized arguments", "--help"]),
    (["check", "{good}", "--batch-size", "0"], ["--batch-size", "at least 1"]),
    (["check", "{good}", "--batch-size", "eight"], ["--batch-size", "whole number"]),
    (["check", "{good}", "--format", "xml"], ["--format", "invalid choice"]),
    (["check", "{good}", "--rtol", "tight"], ["--rtol"]),
    (["check"], ["MODEL"]),
    (["frobnicate", "{good}"], ["invalid choice"]),
    ([], ["no command", "--help"]),
])
def test_usage_error(files, capsys, argv, needles):
    argv = [a.format(good=files["good"]) for a in argv]
    assert_one_line_error(*run(capsys, *argv), *needles)


# ---------------------------------------------------------------- what there is to explain
def test_uncompiled_without_losses(files, capsys):
    assert_one_line_error(*run(capsys, "check", files["uncompiled"]), "not compiled", "compile it with a loss")
    assert_one_line_error(*run(capsys, "explain", f"{files['factories']}:uncompiled"), "not compiled")


def test_uncompiled_with_add_loss_is_explained(files, capsys):
    spec = f"{files['factories']}:uncompiled_add_loss"
    code, out, err = run(capsys, "check", spec, "--format", "json")
    assert code == 0, err + out
    doc = strict_json(out)
    assert doc["model"]["compiled"] is False
    assert [t["kind"] for t in doc["terms"]] == ["add_loss"]
    assert "NOT_COMPILED" in {f["code"] for f in doc["findings"]}
    code, out, err = run(capsys, "explain", spec)
    assert code == 0, err
    assert "NOT_COMPILED" in out


# ---------------------------------------------------------------- a good model
def test_good_model_check_and_explain(files, capsys):
    code, out, err = run(capsys, "check", files["good"])
    assert code == 0, err + out
    assert out.strip()
    code, out, err = run(capsys, "explain", files["good"], "--batch-size", "3", "--seed", "5", "--no-gradients")
    assert code == 0, err + out
    assert out.strip()


def test_check_json_is_one_strict_document(files, capsys):
    code, out, err = run(capsys, "check", f"{files['factories']}:noisy", "--format", "json")
    assert code == 0, err
    doc = strict_json(out)  # the whole of stdout: the factory's print and summary went to stderr
    assert "building the model" in err
    assert doc["schema"] == "lossmap/1"
    assert doc["model"]["engine"] == "keras3"
    assert doc["batch"] == {"source": "synthetic", "size": 8, "seed": 0}
    assert doc["total"]["verified"] is True
    assert "NaN" not in out and "Infinity" not in out


def test_fail_on_warning(files, capsys):
    spec = f"{files['factories']}:vector_add_loss"
    code, out, err = run(capsys, "check", spec, "--format", "json")
    doc = strict_json(out)
    levels = {f["code"]: f["level"] for f in doc["findings"]}
    assert levels.get("ADD_LOSS_NON_SCALAR") == "warning"
    assert "error" not in levels.values(), doc["findings"]
    assert code == 0, err
    code, out, err = run(capsys, "check", spec, "--fail-on", "warning")
    assert code == 1, err + out
    assert "ADD_LOSS_NON_SCALAR" in out


def test_model_files_are_never_modified(files, multitask_archive, capsys):
    runs = [
        [files["good"]],
        [files["good"], "--format", "json", "--data", files["data_ok"]],
        [files["lambda"], "--unsafe"],
        [multitask_archive, "--import", "lossmap.examples", "--format", "json"],
    ]
    for argv in runs:
        path = argv[0]
        before = (sha256(path), os.stat(path).st_mtime_ns)
        for command in ("check", "explain"):
            if command == "explain" and "--format" in argv:
                continue
            code, out, err = run(capsys, command, *argv)
            assert code == 0, err
        assert (sha256(path), os.stat(path).st_mtime_ns) == before, path


# ---------------------------------------------------------------- real processes
NO_TF_CASES = [
    (["--help"], 0),
    (["check", "--help"], 0),
    (["explain", "--help"], 0),
    (["--version"], 0),
    (["check", "model.keras", "--no-such-option"], 2),
    (["check", "model.keras", "--batch-size", "0"], 2),
    ([], 2),
]


@pytest.mark.parametrize("argv,expected", NO_TF_CASES)
def test_help_and_usage_errors_do_not_import_tensorflow(argv, expected):
    code, out, err = run_process(*argv, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert code == expected, err
    imported = [line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert "argparse" in imported  # the import log is there to read
    heavy = [m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "numpy")]
    assert not heavy, heavy
    if expected == 0:
        assert out.startswith(("usage: lossmap", "lossmap ")), out
    else:
        messages = [line for line in err.splitlines() if not line.startswith("import time:")]
        assert out == "" and len(messages) == 1 and messages[0].startswith("lossmap: "), err


def test_python_dash_m_help_imports_no_tensorflow():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lossmap", "check", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: lossmap check" in proc.stdout
    assert "tensorflow" not in proc.stderr and "keras" not in proc.stderr


@pytest.mark.parametrize("key,needles", [
    ("missing", ["no such file"]),
    ("truncated", ["truncated"]),
    ("custom", ["'Scale'", "--import"]),
    ("lambda", ["--unsafe"]),
])
def test_process_bad_input_is_one_line_without_traceback(files, key, needles):
    path = files["dir"] / "absent.keras" if key == "missing" else files[key]
    assert_one_line_error(*run_process("check", path, "--format", "json"), *needles)


def test_process_debug_shows_the_traceback_and_keeps_exit_2(files):
    code, out, err = run_process("check", files["truncated"], "--debug")
    assert code == 2, err
    assert out == ""
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("lossmap: ")


def test_process_check_json_stdout_is_json_only(multitask_archive):
    before = sha256(multitask_archive)
    code, out, err = run_process("check", multitask_archive, "--import", "lossmap.examples", "--format", "json",
                                 env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert code == 0, err
    doc = strict_json(out)
    assert doc["schema"] == "lossmap/1"
    assert doc["model"]["name"] == "multitask"
    assert {t["kind"] for t in doc["terms"]} >= {"compiled", "weight_regularizer", "activity_regularizer", "add_loss"}
    assert "Traceback" not in err
    assert sha256(multitask_archive) == before
