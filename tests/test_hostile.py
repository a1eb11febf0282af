"""Hostile files cost almost nothing to refuse: exit 2, one line, in well under a second.

Each case is one way a `.keras` archive, a `.h5` file or an `.npz` batch can be built to
make a reader spend memory or time: deflate bombs (a few MB declaring gigabytes) in
config.json, metadata.json, the weights and in batch members; members that lie about
their size; many overlapping bombs; bzip2, encryption, duplicates; JSON nested past the
parser's recursion limit; configs declaring layers far bigger than their weights;
.npy headers declaring enormous or pickled arrays. `lossmap.limits` and `lossmap.guards`
hold the limits each case runs into. A subprocess measures the whole refusal of a
2 GiB config bomb under a 1 GiB address-space cap.
"""
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import hostile_files
import zipcraft
from lossmap import limits
from lossmap.cli import main
from zipcraft import MiB, Member

GiB = 1 << 30
FAST = 1.0  # CPU seconds that refusing a hostile file may take in this process (CPU time: the
#             machine's other work does not count)


def run(capsys, *argv):
    start = time.process_time()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    seconds = time.process_time() - start
    out, err = capsys.readouterr()
    return code, out, err, seconds


def refused(capsys, *argv, needles=(), seconds=FAST):
    """Run lossmap; assert exit 2, nothing on stdout, one line on stderr holding `needles`, fast."""
    code, out, err, took = run(capsys, *argv)
    assert code == 2, f"exit {code}:\n{err}"
    assert out == "" and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossmap: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert took < seconds, f"{took:.2f} CPU s to refuse: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    paths = hostile_files.build(str(folder))
    paths["dir"] = folder
    paths["members"] = {k: zipcraft.members_of(paths[k]) for k in ("keras3", "tf_keras") if k in paths}
    return paths


def archive(files, name, change, kind="keras3"):
    """A copy of the valid archive with `change(members)` applied, written by zipcraft."""
    path = os.path.join(files["dir"], name)
    zipcraft.write_zip(path, change([Member(m.name, m.data) for m in files["members"][kind]]))
    return path


def replaced(member_name, new):
    return lambda members: [new if m.name == member_name else m for m in members]


def json_of(files, member, kind="keras3"):
    return json.loads(next(m.data for m in files["members"][kind] if m.name == member))


def with_json(member, value):
    return replaced(member, Member(member, value if isinstance(value, bytes) else json.dumps(value).encode()))


# ---------------------------------------------------------------- deflate bombs and lying members
@pytest.mark.parametrize("member,fill,needles", [
    ("config.json", b" ", ["config.json inflates to 2 GiB", "over lossmap's limit of 32 MiB", "model.save"]),
    ("metadata.json", b" ", ["metadata.json inflates to 2 GiB", "1 MiB"]),
    ("model.weights.h5", b"\0", ["'model.weights.h5' inflates to 2 GiB", "decompression bomb"]),
])
def test_a_member_that_inflates_to_gigabytes_is_refused_from_its_header(files, capsys, member, fill, needles):
    original = next(m.data for m in files["members"]["keras3"] if m.name == member)
    bomb = zipcraft.deflate_bomb(member, original, 2 * GiB, fill)
    assert len(bomb.data) < 3 * MiB  # a few MB declaring gigabytes
    path = archive(files, f"bomb_{member}.keras", replaced(member, bomb))
    refused(capsys, "check", path, "--format", "json", needles=needles)


def test_a_member_that_inflates_past_what_it_declares_is_refused_at_the_declared_size(files, capsys):
    config = next(m.data for m in files["members"]["keras3"] if m.name == "config.json")
    bomb = zipcraft.deflate_bomb("config.json", config, 512 * MiB)
    liar = zipcraft.lying(bomb, file_size=len(config) + 10)  # says 5 KB, inflates to 512 MiB
    path = archive(files, "liar.keras", replaced("config.json", liar))
    refused(capsys, "check", path, needles=["damaged", "config.json"])


@pytest.mark.parametrize("declared", ["bigger", "smaller"])
def test_a_stored_member_whose_sizes_disagree_is_refused(files, capsys, declared):
    def lie(m):
        return zipcraft.lying(m, file_size=len(m.data) * 2 if declared == "bigger" else len(m.data) // 2)
    path = archive(files, f"stored_{declared}.keras", lambda ms: [lie(m) if m.name == "model.weights.h5" else m
                                                                    for m in ms])
    refused(capsys, "check", path, needles=["damaged", "model.weights.h5"])


def test_many_bombs_each_under_the_floor_are_refused_together(files, capsys):
    bombs = [zipcraft.deflate_bomb(f"assets/part{i}.bin", b"", 60 * MiB, b"\0") for i in range(8)]
    path = archive(files, "many.keras", lambda ms: ms + bombs)
    refused(capsys, "check", path, needles=["inflate to 480 MiB", "decompression bomb"])


def test_too_many_members_are_refused_before_they_are_listed(files, capsys):
    extra = [Member(f"assets/{i}", b"") for i in range(limits.MAX_MEMBERS + 1)]
    path = archive(files, "crowded.keras", lambda ms: ms + extra)
    refused(capsys, "check", path, needles=["10,004 members", "10,000"])


@pytest.mark.parametrize("change,needles", [
    (lambda m: zipcraft.lying(m, method=zipfile.ZIP_BZIP2), ["bzip2", "stored and deflated"]),
    (lambda m: zipcraft.lying(m, method=99), ["method 99"]),
    (lambda m: zipcraft.lying(m, flags=0x1), ["encrypted"]),
])
def test_members_lossmap_cannot_read_safely_are_refused(files, capsys, change, needles):
    path = archive(files, "method.keras", lambda ms: [change(m) if m.name == "config.json" else m for m in ms])
    refused(capsys, "check", path, needles=needles)


def test_a_duplicated_member_is_refused(files, capsys):
    path = archive(files, "twice.keras", lambda ms: ms + [Member("config.json", b"{}")])
    refused(capsys, "check", path, needles=["holds 'config.json' twice"])


def test_a_member_name_with_a_line_break_stays_on_one_line(files, capsys):
    path = archive(files, "newline.keras", lambda ms: ms + [zipcraft.lying(Member("evil\nname", b"x"), flags=1)])
    refused(capsys, "check", path, needles=["evil\\nname", "encrypted"])


# ---------------------------------------------------------------- HDF5 datasets
def h5_with(raw: bytes, folder, change) -> bytes:
    """An HDF5 file's bytes after `change(h5py.File)`: one kernel replaced by a hostile dataset."""
    import h5py

    path = os.path.join(folder, "scratch.h5")
    with open(path, "wb") as fh:
        fh.write(raw)
    with h5py.File(path, "r+") as f:
        kernels = []
        f.visititems(lambda n, o: kernels.append(n) if isinstance(o, h5py.Dataset) and len(o.shape) == 2 else None)
        name = kernels[0]
        del f[name]
        change(f, name)
    with open(path, "rb") as fh:
        return fh.read()


def unwritten(f, name):  # chunked and never written: reads back as 2 GiB of fill values, stores nothing
    f.create_dataset(name, shape=(2 ** 16, 2 ** 13), dtype="float32", chunks=(1024, 1024), compression="gzip")


def external(f, name):
    f.create_dataset(name, shape=(4, 3), dtype="float32", external=[("/dev/zero", 0, 48)])


@pytest.mark.parametrize("kind", ["keras3", "tf_keras", "h5"])
@pytest.mark.parametrize("change,needles", [
    (unwritten, ["declares 2 GiB of data but stores 0 bytes", "decompression bomb"]),
    (external, ["reads its data from another file"]),
])
def test_weights_whose_datasets_declare_what_they_do_not_hold_are_refused(files, capsys, kind, change, needles):
    if kind not in files:
        pytest.skip("tf_keras is not installed")
    if kind == "h5":
        with open(files["h5"], "rb") as fh:
            raw = h5_with(fh.read(), files["dir"], change)
        path = os.path.join(files["dir"], f"dataset_{change.__name__}.h5")
        with open(path, "wb") as fh:
            fh.write(raw)
    else:
        weights = next(m.data for m in files["members"][kind] if m.name == "model.weights.h5")
        bad = Member("model.weights.h5", h5_with(weights, files["dir"], change))
        path = archive(files, f"dataset_{change.__name__}.keras", replaced("model.weights.h5", bad), kind=kind)
    refused(capsys, "check", path, needles=needles)


def test_a_name_of_100000_characters_keeps_the_line_short(files, capsys):
    config = json_of(files, "config.json")
    config["config"]["layers"][1]["class_name"] = "a" * 100_000
    path = archive(files, "longname.keras", with_json("config.json", config))
    line = refused(capsys, "check", path, needles=["longname.keras"], seconds=5.0)
    assert len(line) <= 1000 + len("lossmap: ")


def test_a_user_error_is_one_line_of_at_most_1000_characters_that_keeps_its_end():
    from lossmap.errors import UserError

    message = str(UserError("start\nof it " + "x" * 5000 + "\u2028 fix it so"))
    assert "\n" not in message and "\u2028" not in message and len(message) <= 1000
    assert message.startswith("start of it") and message.endswith("x fix it so") and " ... " in message


# ---------------------------------------------------------------- JSON
def test_json_nested_past_the_parsers_recursion_limit_is_exit_2(files, capsys):
    deep = b'{"class_name": "Functional", "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = archive(files, "deep.keras", with_json("config.json", deep))
    refused(capsys, "check", path, needles=["config.json is nested too deeply"])


def test_json_nested_past_lossmaps_depth_limit_is_exit_2(files, capsys):
    config = json_of(files, "config.json")
    config["config"]["extra"] = json.loads("[" * 500 + "]" * 500)
    path = archive(files, "deep500.keras", with_json("config.json", config))
    refused(capsys, "check", path, needles=["over lossmap's limit of 100"])


def test_a_deeply_nested_loss_in_the_compile_config_is_refused_before_tf_keras_compiles_it(files, capsys):
    if "tf_keras" not in files:
        pytest.skip("tf_keras is not installed")
    config = json_of(files, "config.json", "tf_keras")
    config["compile_config"]["loss"] = json.loads("[" * 40 + "]" * 40)  # 2^40 steps in tf_keras's compile
    path = archive(files, "deep_loss.keras", with_json("config.json", config), kind="tf_keras")
    refused(capsys, "check", path, needles=["compile config", "12 levels"], seconds=5.0)


@pytest.mark.parametrize("member,value,needles", [
    ("config.json", [], ["config.json holds an array"]),
    ("config.json", b"{\"class_name\": ", ["config.json is not valid JSON"]),
    ("config.json", b"\xff\xfe\x00", ["config.json is not valid JSON"]),
    ("metadata.json", [], ["metadata.json holds an array"]),
    ("metadata.json", {"keras_version": 3}, ["keras_version 3, not a version string"]),
    ("metadata.json", {"keras_version": "3.1\nINJECTED"}, ["not a version string"]),
])
def test_json_of_the_wrong_shape_is_exit_2(files, capsys, member, value, needles):
    path = archive(files, "wrong.keras", with_json(member, value))
    refused(capsys, "check", path, needles=needles)


# ---------------------------------------------------------------- what the config declares
@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_a_layer_far_bigger_than_its_weights_is_refused_before_it_is_allocated(files, capsys, kind):
    if kind not in files["members"]:
        pytest.skip("tf_keras is not installed")
    config = json_of(files, "config.json", kind)
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] == "trunk":
            layer["config"]["units"] = 2 ** 27  # a 2 GiB kernel: 14 s and 7.6 GB before this guard
    path = archive(files, f"huge_{kind}.keras", with_json("config.json", config), kind=kind)
    refused(capsys, "check", path, needles=["more variables than its weights can fill", "(4, 134217728)",
                                            "2 GiB"], seconds=5.0)


@pytest.mark.parametrize("kind", ["keras3", "tf_keras"])
def test_config_and_weights_of_different_sizes_is_one_line_naming_the_layer_and_both_shapes(files, capsys, kind):
    if kind not in files["members"]:
        pytest.skip("tf_keras is not installed")
    config = json_of(files, "config.json", kind)
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] == "a":
            layer["config"]["units"] = 5
    path = archive(files, f"mismatch_{kind}.keras", with_json("config.json", config), kind=kind)
    refused(capsys, "check", path, needles=["layer 'a' does not match its saved weights", "a/kernel",
                                            "(3, 5)", "(3, 2)"], seconds=5.0)


def test_a_config_that_is_no_model_is_exit_2(files, capsys):
    if "tf_keras" not in files["members"]:
        pytest.skip("tf_keras is not installed")
    config = json_of(files, "config.json", "tf_keras")
    config["konfig"] = config.pop("config")
    path = archive(files, "nomodel.keras", with_json("config.json", config), kind="tf_keras")
    refused(capsys, "check", path, needles=["does not describe a Keras model"], seconds=5.0)


def test_npz_weights_holding_a_bomb_are_refused(files, capsys):
    """Keras can keep the weights as model.weights.npz: a zip inside the zip, checked the same way."""
    inner = os.path.join(files["dir"], "inner.npz")
    h = header((2 ** 28,))
    zipcraft.write_zip(inner, [zipcraft.deflate_bomb("layers/dense/vars/0.npy", h, len(h) + 2 * GiB, b"\0")])
    with open(inner, "rb") as fh:
        weights = Member("model.weights.npz", fh.read())
    path = archive(files, "npz_weights.keras", lambda ms: [m for m in ms if m.name != "model.weights.h5"] + [weights])
    refused(capsys, "check", path, needles=["model.weights.npz", "inflates to 2.0 GiB", "decompression bomb"])


# ---------------------------------------------------------------- tf_keras's layer graph
def _inbound(config, layer_name):
    return next(l for l in config["config"]["layers"] if l["name"] == layer_name)["inbound_nodes"]


@pytest.mark.parametrize("change", ["nan", "past_the_end", "string", "cycle"])
def test_a_layer_graph_tf_keras_would_wait_on_for_ever_is_refused(files, change):
    from lossmap import guards
    from lossmap.errors import UserError

    if "tf_keras" not in files["members"]:
        pytest.skip("tf_keras is not installed")
    config = json_of(files, "config.json", "tf_keras")
    guards.check_layer_graph(config, "tk.keras", "fix")  # as saved: fine
    node = _inbound(config, "norm")[0][0]  # ["trunk", 0, 0, {}]
    if change == "cycle":
        _inbound(config, "trunk")[0][0] = ["norm", 0, 0, {}]
    else:
        node[1] = {"nan": float("nan"), "past_the_end": 1, "string": "0"}[change]
    with pytest.raises(UserError, match="would wait for it for ever"):
        guards.check_layer_graph(config, "tk.keras", "fix")


def test_shared_and_nested_layers_are_a_graph_tf_keras_rebuilds(tmp_path):
    """Node indices past 0 (a layer called twice, a model nested in a model, twice) are what tf_keras writes."""
    tfk = pytest.importorskip("tf_keras")
    from lossmap import guards

    L = tfk.layers
    i = tfk.Input((4,))
    inner = tfk.Model(i, L.Dense(4)(i), name="inner")
    j = tfk.Input((4,))
    mid = tfk.Model(j, inner(inner(j)), name="mid")
    a, b = tfk.Input((4,), name="a"), tfk.Input((4,), name="b")
    shared = L.Dense(4, name="shared")
    model = tfk.Model([a, b], L.Add()([mid(mid(shared(a))), shared(b)]))
    config = json.loads(model.to_json())
    guards.check_layer_graph(config, "model", "fix")


def test_a_hanging_graph_is_refused_by_the_cli_in_a_process(files, tmp_path):
    """Without the check this process would never end (the timeout says so)."""
    if "tf_keras" not in files["members"]:
        pytest.skip("tf_keras is not installed")
    config = json_of(files, "config.json", "tf_keras")
    _inbound(config, "norm")[0][0][1] = float("nan")
    path = archive(files, "hang.keras", with_json("config.json", config), kind="tf_keras")
    proc = subprocess.run([sys.executable, "-m", "lossmap", "check", path], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               os.environ.get("PYTHONPATH", "")])))
    assert proc.returncode == 2 and "would wait for it for ever" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- batches
def npz(files, name, members):
    path = os.path.join(files["dir"], name)
    zipcraft.write_zip(path, members)
    return path


def npy(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


def batch_members(**changed):
    arrays = {**hostile_files.batch_arrays(), **changed}
    return [Member(k + ".npy", npy(v)) for k, v in arrays.items() if v is not None]


def header(shape, descr="<f8") -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (63 - len(text) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def test_a_batch_member_that_inflates_to_gigabytes_is_refused(files, capsys):
    bomb = zipcraft.deflate_bomb("x.npy", header((2 ** 28,)), len(header((2 ** 28,))) + 2 * GiB, b"\0")
    path = npz(files, "bomb.npz", [m for m in batch_members() if m.name != "x.npy"] + [bomb])
    refused(capsys, "check", files["keras3"], "--data", path, needles=["bomb.npz", "'x.npy' inflates to 2.0 GiB",
                                                                         "decompression bomb"], seconds=5.0)


@pytest.mark.parametrize("shape,descr,needles", [
    ((10 ** 12,), "<f8", ["declares shape (1000000000000,) of float64 (7.3 TiB) but holds 0 bytes"]),
    ((8, 4), "|O", ["holds pickled objects", "never unpickles"]),
    ((8, 4), "<U3", ["has dtype <U3", "numeric"]),
    ((8, -4), "<f4", ["damaged .npy header"]),
])
def test_a_batch_member_declaring_what_it_does_not_hold_is_refused_unread(files, capsys, shape, descr, needles):
    path = npz(files, "declares.npz", [m for m in batch_members() if m.name != "x.npy"]
               + [Member("x.npy", header(shape, descr))])
    refused(capsys, "check", files["keras3"], "--data", path, needles=needles, seconds=5.0)


def test_a_batch_over_the_batch_limit_is_refused_before_it_is_read(files, capsys, monkeypatch):
    monkeypatch.setattr(limits, "BATCH_MAX_BYTES", 100)
    refused(capsys, "check", files["keras3"], "--data", files["batch"], needles=["over lossmap's limit of 100 bytes",
                                                                                  "smaller batch"], seconds=5.0)


@pytest.mark.parametrize("members,needles", [
    (lambda ms: ms + [Member("x", ms[0].data)], ["two members are named 'x'"]),
    (lambda ms: ms + [Member("notes.txt", b"hello")], ["'notes.txt' is not a NumPy array"]),
    (lambda ms: ms + [Member("x\nsneaky.npy", ms[0].data)], ["'x\\nsneaky' matches no input"]),
    (lambda ms: [zipcraft.lying(m, method=zipfile.ZIP_BZIP2) for m in ms], ["bzip2"]),
])
def test_a_batch_of_odd_members_is_one_line(files, capsys, members, needles):
    path = npz(files, "odd.npz", members(batch_members()))
    refused(capsys, "check", files["keras3"], "--data", path, needles=needles, seconds=5.0)


@pytest.mark.parametrize("labels,needles", [
    (np.array([0, 1, 2, 3, 0, 1, 2, 0], "int32"), ["'y/b' holds class id 3", "class ids 0 to 2"]),
    (np.array([0, 1, -7, 2, 0, 1, 2, 0], "float32"), ["class id -7"]),
    (np.array([0, 1, np.nan, 2, 0, 1, 2, 0], "float32"), ["NaN or Inf"]),
])
def test_sparse_labels_outside_the_classes_are_exit_2(files, capsys, labels, needles):
    path = npz(files, "labels.npz", batch_members(**{"y/b": labels}))
    refused(capsys, "check", files["keras3"], "--data", path, needles=needles, seconds=5.0)


def test_sample_weights_that_do_not_broadcast_are_exit_2(files, capsys):
    path = npz(files, "sw.npz", batch_members(**{"sample_weight/a": np.ones((8, 5), "float32")}))
    refused(capsys, "check", files["keras3"], "--data", path, needles=["'sample_weight/a' has shape (8, 5)"],
            seconds=5.0)


def test_other_byte_orders_and_fortran_order_and_deflate_are_read_as_numpy_writes_them(files, capsys, tmp_path):
    arrays = hostile_files.batch_arrays()
    plain = tmp_path / "plain.npz"
    np.savez(plain, **arrays)
    odd = tmp_path / "odd.npz"
    np.savez_compressed(odd, **{**arrays, "x": np.asfortranarray(arrays["x"]).astype(">f4"),
                                "y/a": np.asfortranarray(arrays["y/a"])})
    docs = []
    for path in (plain, odd):
        code, out, err, _ = run(capsys, "check", files["keras3"], "--data", path, "--format", "json",
                                "--no-gradients")
        assert code == 0, err
        docs.append(json.loads(out))
    assert docs[0]["total"]["reproduced"] == docs[1]["total"]["reproduced"]


def test_a_model_whose_one_sample_is_gigabytes_is_refused_once_loaded(tmp_path, capsys):
    import keras

    x = keras.Input((2 ** 28,), name="x")  # no weights at all: nothing for the variable budget to count
    model = keras.Model(x, keras.layers.Rescaling(2.0, name="twice")(x))
    model.compile(loss="mse")
    model.save(tmp_path / "wide.keras")
    refused(capsys, "check", tmp_path / "wide.keras", needles=["one sample of the model's inputs and outputs is 2 GiB",
                                                                "512 MiB"], seconds=5.0)


def test_a_synthetic_batch_over_the_limit_is_refused_before_it_is_made(tmp_path, capsys):
    factory = tmp_path / "wide_model.py"
    factory.write_text(
        "import keras\n"
        "def build():\n"
        "    x = keras.Input((2 ** 28,), name='x')\n"
        "    m = keras.Model(x, keras.layers.Rescaling(2.0)(x))\n"
        "    m.compile(loss='mse')\n"
        "    return m\n")
    refused(capsys, "check", f"{factory}:build", needles=["a synthetic batch of 8 needs 16 GiB", "--batch-size"],
            seconds=5.0)


# ---------------------------------------------------------------- nothing is modified; the whole process
def test_hostile_files_are_left_as_they_were(files, capsys):
    config = next(m.data for m in files["members"]["keras3"] if m.name == "config.json")
    paths = [archive(files, "bomb_again.keras", replaced("config.json", zipcraft.deflate_bomb(
        "config.json", config, 100 * MiB))), files["keras3"], files["batch"]]
    before = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    for p in paths[:2]:
        run(capsys, "check", p, "--data", files["batch"], "--format", "json", "--no-gradients")
    assert before == [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


MEASURE = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY))
start, cpu = time.perf_counter(), time.process_time()
from lossmap.cli import main
code = main(sys.argv[1:])
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"code": code, "seconds": seconds, "cpu": cpu, "tensorflow": "tensorflow" in sys.modules,
                  "peak_rss": peak}), file=sys.stderr)
"""


@pytest.mark.parametrize("what", ["config bomb", "batch bomb"])
def test_a_process_refuses_a_bomb_in_well_under_a_second_within_a_small_memory(files, what, tmp_path):
    """The whole process, under a 1 GiB address-space cap: no TensorFlow, a fraction of a second, under 200 MB."""
    if what == "config bomb":
        config = next(m.data for m in files["members"]["keras3"] if m.name == "config.json")
        target = archive(files, "process_bomb.keras", replaced("config.json",
                                                               zipcraft.deflate_bomb("config.json", config, 2 * GiB)))
        argv = ["check", target, "--format", "json"]
    else:
        bomb = zipcraft.deflate_bomb("x.npy", header((2 ** 28,)), len(header((2 ** 28,))) + 2 * GiB, b"\0")
        target = npz(files, "process_bomb.npz", [bomb] + [m for m in batch_members() if m.name != "x.npy"])
        argv = ["check", files["keras3"], "--data", target, "--format", "json"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", MEASURE] + argv, capture_output=True, text=True, env=env,
                          timeout=60, cwd=str(tmp_path))
    lines = proc.stderr.splitlines()
    measured = json.loads(lines[-1])
    assert proc.returncode == 0 and measured["code"] == 2, proc.stderr
    assert proc.stdout == "" and len(lines) == 2 and lines[0].startswith("lossmap: "), proc.stderr
    assert not measured["tensorflow"]  # refused before TensorFlow starts
    # lossmap's import and the refusal, in CPU seconds (about 0.2 s on an idle machine, wall time too)
    assert measured["cpu"] < 0.75 and measured["peak_rss"] < 200 * MiB, measured
