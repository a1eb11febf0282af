"""`lossmap lock` and `lossmap check --lock`, and several models in one call, through the command line.

The factory reads LM_VARIANT when it is called, so one MODEL (one lock key) can
change between runs the way a pull request changes a model.
"""
import json
import os
import xml.etree.ElementTree as ET

import pytest

from lossmap.ci import lock as lockmod
from lossmap.ci import lockdiff
from lossmap.cli import main
from lossmap.errors import UserError

FACTORY = '''
import os

import keras
from keras import layers, ops, regularizers


class Smooth(layers.Layer):
    def call(self, x):
        self.add_loss(0.01 * ops.mean(ops.square(x)))
        return x


def build():
    """Two heads; LM_VARIANT=changed drops the encoder's L2, sets aux's weight to 0, sums the main loss,
    weakens the head's L2 and adds an add_loss."""
    changed = os.environ.get("LM_VARIANT") == "changed"
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    h = layers.Dense(8, name="encoder", kernel_regularizer=None if changed else regularizers.L2(1e-3))(x)
    if changed:
        h = Smooth(name="smooth")(h)
    main = layers.Dense(1, name="main", kernel_regularizer=regularizers.L2(1e-5 if changed else 1e-4))(h)
    aux = layers.Dense(1, name="aux")(h)
    model = keras.Model(x, {"main": main, "aux": aux}, name="twoheads")
    main_loss = keras.losses.MeanSquaredError(reduction="sum") if changed else "mse"
    model.compile("sgd", loss={"main": main_loss, "aux": "mae"},
                  loss_weights={"main": 1.0, "aux": 0.0 if changed else 0.5})
    return model


def unnamed():
    """Layers without names: Keras names them from process-wide counters."""
    x = keras.Input((4,))
    model = keras.Model(x, layers.Dense(1)(layers.Dense(3, kernel_regularizer="l2")(x)))
    model.compile("sgd", "mse")
    return model


def zero_weight():
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, {"a": layers.Dense(1, name="a")(x), "b": layers.Dense(1, name="b")(x)}, name="zw")
    model.compile("sgd", loss={"a": "mse", "b": "mse"}, loss_weights={"a": 1.0, "b": 0.0})
    return model
'''


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lockmodels")
    (folder / "lm_lock_models.py").write_text(FACTORY)
    return str(folder / "lm_lock_models.py")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, out, err, *needles):
    assert code == 2, (code, out, err)
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lossmap: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_lock_is_deterministic_and_check_passes(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = f"{spec}:build"
    code, out, err = run(capsys, "lock", model, "-o", "a.lock.json", "--no-gradients")
    assert code == 0, err
    assert "locked 4 terms" in out
    code, out, err = run(capsys, "lock", model, "-o", "b.lock.json", "--no-gradients")
    text = (tmp_path / "a.lock.json").read_text()
    assert text == (tmp_path / "b.lock.json").read_text()
    doc = json.loads(text)
    assert list(doc) == ["schema", "models"] and doc["schema"] == "lossmap-lock/1"
    key = os.path.relpath(spec, tmp_path).replace(os.sep, "/") + ":build"
    entry = doc["models"][key]
    assert entry["engine"] == "keras3" and entry["name"] == "twoheads"
    assert entry["terms"]["regularizer/encoder/kernel"] == {
        "config": {"l2": 0.001}, "function": "L2", "kind": "weight_regularizer", "owner": "encoder/kernel",
        "weight": 1.0}
    assert entry["terms"]["compiled/aux"]["weight"] == 0.5 and "value" not in entry["terms"]["compiled/aux"]
    code, out, err = run(capsys, "lock", model, "-o", "a.lock.json")
    assert code == 0 and "up to date" in out and (tmp_path / "a.lock.json").read_text() == text
    code, out, err = run(capsys, "check", model, "--lock", "a.lock.json", "--no-gradients")
    assert code == 0, out + err
    assert f"Lock a.lock.json ({key}): unchanged" in out


def test_check_says_what_changed_in_every_format(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = f"{spec}:build"
    assert run(capsys, "lock", model, "--no-gradients")[0] == 0  # lossmap.lock.json
    monkeypatch.setenv("LM_VARIANT", "changed")
    code, out, err = run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients", "--format",
                         "json", "--output", "sarif=l.sarif", "--output", "junit=l.xml", "--output", "text=l.txt")
    assert code == 1, err
    doc = json.loads(out)
    changes = {(c["code"], c["term"]): c["message"] for c in doc["lock"]["changes"]}
    assert changes[("LOCK_TERM_REMOVED", "regularizer/encoder/kernel")].startswith(
        "the L2 on encoder/kernel (l2=0.001) is gone")
    assert changes[("LOCK_WEIGHT_CHANGED", "compiled/aux")] == \
        "the loss weight of the loss on output 'aux' (mean_absolute_error) went from 0.5 to 0"
    assert "went from 'sum_over_batch_size' to 'sum'" in changes[("LOCK_REDUCTION_CHANGED", "compiled/main")]
    assert "went from l2=0.0001 to l2=1e-05" in changes[("LOCK_REGULARIZER_CHANGED", "regularizer/main/kernel")]
    assert ("LOCK_TERM_ADDED", "add_loss/smooth/0") in changes
    assert not any(code == "LOCK_CONFIG_CHANGED" for code, _ in changes)  # "mse" vs MeanSquaredError()
    assert doc["lock"]["changed"] is True and doc["lock"]["file"] == "lossmap.lock.json"
    assert {f["code"] for f in doc["findings"]} >= {c for c, _ in changes}
    removed_line = next(c["line"] for c in doc["lock"]["changes"] if c["code"] == "LOCK_TERM_REMOVED")
    lock_lines = (tmp_path / "lossmap.lock.json").read_text().splitlines()
    assert lock_lines[removed_line - 1].strip() == '"regularizer/encoder/kernel": {'
    sarif = json.loads((tmp_path / "l.sarif").read_text())
    removed = next(r for r in sarif["runs"][0]["results"] if r["ruleId"] == "LOCK_TERM_REMOVED")
    location = removed["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "lossmap.lock.json"
    assert location["region"]["startLine"] == removed_line
    suite = ET.parse(tmp_path / "l.xml").getroot().find("testsuite")
    lock_case = suite.find("testcase[@name='lock lossmap.lock.json']")
    assert "is gone" in lock_case.find("failure").text
    text = (tmp_path / "l.txt").read_text()
    assert "  - regularizer/encoder/kernel: the L2 on encoder/kernel (l2=0.001) is gone" in text
    assert "  + add_loss/smooth/0: the add_loss of layer smooth is new" in text
    code, out, err = run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients", "--format", "github")
    assert code == 1 and "title=lossmap twoheads%3A LOCK_WEIGHT_CHANGED" in out


def test_lock_rewrites_only_with_update(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = f"{spec}:build"
    assert run(capsys, "lock", model, "--no-gradients")[0] == 0
    before = (tmp_path / "lossmap.lock.json").read_text()
    monkeypatch.setenv("LM_VARIANT", "changed")
    code, out, err = run(capsys, "lock", model, "--no-gradients")
    assert code == 1 and "run with --update" in out and "is gone" in out
    assert (tmp_path / "lossmap.lock.json").read_text() == before
    code, out, err = run(capsys, "lock", model, "--no-gradients", "--update")
    assert code == 0 and "updated" in out
    assert run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients")[0] == 0


def test_bad_lock_files_are_exit_2_with_one_line(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = f"{spec}:build"
    one_line(*run(capsys, "check", model, "--lock", "absent.json"), "absent.json: no such file",
             f"lossmap lock {model} -o absent.json")
    (tmp_path / "bad.json").write_text('{"schema": "lossmap-lock/1", "models": {')
    one_line(*run(capsys, "check", model, "--lock", "bad.json"), "not valid JSON", "--update")
    (tmp_path / "v2.json").write_text('{"schema": "lossmap-lock/2", "models": {}}')
    one_line(*run(capsys, "check", model, "--lock", "v2.json"), "schema 'lossmap-lock/2'", "lossmap-lock/1")
    (tmp_path / "other.json").write_text('{"name": "something else"}')
    one_line(*run(capsys, "check", model, "--lock", "other.json"), "not a lossmap lock file")
    (tmp_path / "broken.json").write_text('{"schema": "lossmap-lock/1", "models": {"m": {"terms": []}}}')
    one_line(*run(capsys, "check", model, "--lock", "broken.json"), "malformed", "'m'")
    assert run(capsys, "lock", f"{spec}:zero_weight", "-o", "zw.json", "--no-gradients")[0] == 0
    one_line(*run(capsys, "check", model, "--lock", "zw.json", "--no-gradients"), "for another model",
             f"{os.path.basename(spec)}:zero_weight)", f"lossmap lock {model} -o zw.json")
    code, out, err = run(capsys, "lock", model, "-o", "bad.json")
    assert code == 2 and "not valid JSON" in err  # lock refuses to overwrite it too ...
    assert run(capsys, "lock", model, "-o", "bad.json", "--update", "--no-gradients")[0] == 0  # ... unless asked
    assert run(capsys, "check", model, "--lock", "bad.json", "--no-gradients")[0] == 0


def test_values_within_tolerance(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = f"{spec}:build"
    assert run(capsys, "lock", model, "--values", "--no-gradients")[0] == 0
    path = tmp_path / "lossmap.lock.json"
    doc = json.loads(path.read_text())
    entry = next(iter(doc["models"].values()))
    assert entry["values"]["batch"] == {"source": "synthetic", "size": 8, "seed": 0}
    assert (entry["values"]["rtol"], entry["values"]["atol"]) == (1e-4, 1e-6)
    assert run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients")[0] == 0
    term = entry["terms"]["compiled/main"]
    term["value"] = term["value"] * (1 + 1e-6)  # within tolerance
    path.write_text(lockmod.dumps(doc["models"]))
    assert run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients")[0] == 0
    term["value"] = term["value"] * 1.01
    path.write_text(lockmod.dumps(doc["models"]))
    code, out, err = run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients")
    assert code == 1 and "LOCK_VALUE_CHANGED (compiled/main)" in out and "beyond the lock file's tolerance" in out
    one_line(*run(capsys, "check", model, "--lock", "lossmap.lock.json", "--no-gradients", "--seed", "3"),
             "another batch", "seed 0", "seed 3", "--values")


def test_several_models_one_call_worst_exit_code(spec, tmp_path, capsys):
    good, zero = f"{spec}:build", f"{spec}:zero_weight"
    code, out, err = run(capsys, "check", good, zero, "--no-gradients", "--fail-on", "warning")
    assert code == 1, err
    assert out.count("Verification (") == 2
    assert out.rstrip().splitlines()[-1] == "lossmap: 2 models, exit 1"
    missing = tmp_path / "absent.keras"
    code, out, err = run(capsys, "check", good, missing, zero, "--no-gradients", "--format", "json")
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("lossmap: ")] == [
        f"lossmap: {missing}: no such file; give a .keras archive or a factory file.py:function"]
    runs = json.loads(out)
    assert runs["schema"] == "lossmap-runs/1" and runs["exit_code"] == 2
    assert [(m["model"], m["exit_code"]) for m in runs["models"]] == [(good, 0), (str(missing), 2), (zero, 0)]
    assert runs["models"][0]["document"]["schema"] == "lossmap/1" and "error" in runs["models"][1]


def test_usage_errors_of_the_new_options(capsys, tmp_path):
    one_line(*run(capsys, "check"), "MODEL")
    one_line(*run(capsys, "lock"), "MODEL")
    one_line(*run(capsys, "check", "m.keras", "--output", "xml=out.xml"), "FORMAT=FILE")
    one_line(*run(capsys, "check", "m.keras", "--output", f"sarif={tmp_path}/no/such/dir/x.sarif"),
             "does not exist")


# ---------------------------------------------------------------- the lock module itself
def test_model_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.keras").write_bytes(b"")
    lock = str(tmp_path / "ci" / "lossmap.lock.json")
    assert lockmod.model_key("models/a.keras", lock) == "../models/a.keras"
    assert lockmod.model_key("models/build.py:make", lock) == "../models/build.py:make"
    assert lockmod.model_key("pkg.models:make", lock) == "pkg.models:make"
    assert lockmod.model_key("<live model twoheads>", lock) == "twoheads"


def test_diff_words():
    old = {"engine": "tf_keras", "backend": "tensorflow", "keras_version": "2.16", "terms": {
        "compiled/aux": {"kind": "compiled", "output": "aux", "function": "mse", "weight": 0.5,
                         "config": {"reduction": "auto"}},
        "activity/enc": {"kind": "activity_regularizer", "owner": "enc", "function": "L1", "weight": 1.0,
                         "config": {"l1": 0.01}},
        "custom/a": {"kind": "custom", "expression": "a * loss_x", "weight": 2.0}}}
    new = json.loads(json.dumps(old))
    new.update(engine="keras3", keras_version="3.15.1")
    new["terms"]["compiled/aux"]["config"].update(from_logits=False, label_smoothing=0.1)
    new["terms"]["activity/enc"]["config"]["l1"] = 0.02
    new["terms"]["custom/a"].update(expression="b * loss_x", weight=-1.0)
    words = {(c.code, c.term): (c.level, c.message) for c in lockdiff.diff(old, new)}
    assert words[("LOCK_ENGINE_CHANGED", None)] == ("error", "the engine went from 'tf_keras' to 'keras3'")
    assert words[("LOCK_KERAS_VERSION_CHANGED", None)][0] == "info"
    assert words[("LOCK_CONFIG_CHANGED", "compiled/aux")][1] == \
        "label_smoothing of the loss on output 'aux' (mse) went from none to 0.1"  # from_logits=False: a default
    assert words[("LOCK_REGULARIZER_CHANGED", "activity/enc")][1] == \
        "the strength of the L1 on the output of enc went from l1=0.01 to l1=0.02"
    assert words[("LOCK_EXPRESSION_CHANGED", "custom/a")][1] == \
        "the expression of the custom term a * loss_x went from 'a * loss_x' to 'b * loss_x'"
    assert words[("LOCK_WEIGHT_CHANGED", "custom/a")][1] == \
        "the coefficient of the custom term a * loss_x went from 2 to -1"


def test_read_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"no such file; create it with: lossmap lock a.keras b.keras -o"):
        lockmod.read(str(tmp_path / "x.json"), ["a.keras", "b.keras"])
    assert lockmod.read(str(tmp_path / "x.json"), missing_ok=True).models == {}
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a lossmap lock file"):
        lockmod.read(str(tmp_path / "x.json"))
    assert lockmod.read(str(tmp_path / "x.json"), bad_ok=True).models == {}


@pytest.mark.parametrize("argv,expected", [(["lock", "--help"], 0), (["check", "m.keras", "--lock", "{absent}"], 2)])
def test_no_tensorflow_for_help_and_bad_lock_input(tmp_path, argv, expected):
    import subprocess
    import sys

    argv = [a.format(absent=tmp_path / "absent.json") for a in argv]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lossmap"] + argv, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == expected
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "argparse" in imported
    assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "numpy")]
    messages = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    if expected == 0:
        assert "usage: lossmap lock" in proc.stdout and not messages
    else:
        assert len(messages) == 1 and "absent.json: no such file" in messages[0]


def test_a_bad_lock_file_is_still_a_junit_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "check", "a.keras", "b.keras", "--lock", "absent.json", "--format", "junit")
    assert code == 2 and err.count("lossmap: ") == 1 and "absent.json: no such file" in err
    root = ET.fromstring(out)
    assert root.get("errors") == "2"
    assert "absent.json: no such file" in root.find("testsuite/testcase/error").get("message")


def test_each_model_of_a_call_gets_the_names_of_a_process_of_its_own(spec, capsys):
    model = f"{spec}:unnamed"
    code, out, err = run(capsys, "check", model, model, f"{spec}:build", model, "--no-gradients", "--format", "json")
    assert code == 0, err
    ids = [[t["id"] for t in m["document"]["terms"]] for m in json.loads(out)["models"]]
    assert ids[0] == ids[1] == ids[3] == ["compiled/dense", "regularizer/dense_1/kernel"]


def test_config_floats_read_well():
    assert lockmod.value_config({"name": "l2", "l2": 0.0010000000474974513, "nested": {"a": [0.30000001192092896]},
                                 "fn": {"class_name": "function"}, "axis": None}) == {
        "l2": 0.001, "nested": {"a": [0.3]}}
    assert lockmod.rounded(float("nan")) is None and lockmod.rounded(1.2345678901) == 1.234568
