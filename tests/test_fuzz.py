"""Mutated archives and batch files never get more than a one-line refusal out of lossmap.

A seeded mutation loop (deterministic: the same SEED builds the same files, byte for
byte) takes a valid Keras 3 archive, a tf_keras archive and .h5 file, and a batch, and
breaks them the ways files break and attackers break them: truncation, flipped bytes
(in the data and in the zip headers), members removed, duplicated, renamed, added,
recompressed, encrypted, lying about their sizes or CRC, deflate bombs, JSON values of
the wrong type, enormous sizes and shapes in the config, nesting, HDF5 datasets that
declare gigabytes they do not store or read another file, and .npy headers declaring
enormous or impossible arrays, pickled objects, other dtypes and orders.

Every case runs the real CLI, `lossmap check FILE --format json`, in one child process
(`fuzz_child.py`, in-process calls of `lossmap.cli.main`: TensorFlow starts once) whose
address space is capped. The contract for each: exit 0, 1 or 2, never 3 and never a
traceback; exit 2 is exactly one line on stderr and nothing on stdout; 0 and 1 print one
strict JSON document; within CASE_SECONDS; the process's peak memory stays within
MEMORY_GROWTH of what the valid runs needed; no file is modified.
"""
import hashlib
import json
import os
import random
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

import hostile_files
import zipcraft
from zipcraft import MiB, Member

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The seed, and how many cases of each kind. LOSSMAP_FUZZ_SEED and LOSSMAP_FUZZ_SCALE explore further
# (e.g. LOSSMAP_FUZZ_SEED=7 LOSSMAP_FUZZ_SCALE=10); the suite runs the fixed seed at scale 1.
SEED = int(os.environ.get("LOSSMAP_FUZZ_SEED", "20261129"))
SCALE = float(os.environ.get("LOSSMAP_FUZZ_SCALE", "1"))
CASES = {k: int(n * SCALE) for k, n in {"keras3": 150, "tf_keras": 50, "h5": 30, "batch": 130}.items()}
WARM = 3                        # valid runs first: every import done before the address space is capped
HEADROOM = 3 << 30              # address space a case may add beyond the warm process (RLIMIT_AS)
MEMORY_GROWTH = 1 << 30         # peak RSS a case may add beyond the warm runs' peak
# CPU seconds per case (CPU time: the machine's other work does not count). A refusal is cheap; a full
# run does a forward pass, a train step and the gradients.
CASE_SECONDS = {2: 3.0, 0: 30.0, 1: 30.0}
CASE_WALL_SECONDS = 60.0  # and wall time, for what waits rather than computes (TensorFlow retries a failed allocation)
CHILD_SECONDS = 300 * max(SCALE, 1)  # the whole child, so that a case that hangs fails the test rather than CI
SIZE_KEYS = ("units", "filters", "input_dim", "output_dim", "batch_shape", "shape", "axis", "rate", "momentum",
             "epsilon", "l1", "l2", "learning_rate", "loss_weights", "kernel_size", "batch_input_shape")
HOSTILE_NAMES = ("config.json ", "CONFIG.JSON", "../config.json", "/etc/passwd", "x\ny", "a" * 300, "assets/x",
                 "assets/../../evil", "model.weights.npz", "metadata.json", "config.json", "model.weights.h5", "")


# ---------------------------------------------------------------- JSON values
def hostile_value(rng):
    return rng.choice([
        None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 30, 1e308, -1e308, 0.5,
        float("nan"), float("inf"), "", "x", "\n\r\u2028", "a" * 100_000, "../../etc/passwd", [], {}, [None],
        [2 ** 40, 2 ** 40], [None, 2 ** 40], [None, -3], {"class_name": "Dense", "config": {}}, {"class_name": 5},
        {"module": "os", "class_name": "system", "config": "echo pwned", "registered_name": "system"},
        "__DEEP_60__", "__DEEP_150__", "__DEEP_5000__",
    ])


def huge_size(rng):
    return rng.choice([0, -1, -(2 ** 31), 2 ** 27, 2 ** 31, 2 ** 40, 10 ** 12, 10 ** 40, 3.5, "3", None,
                       [None, 2 ** 40], [2 ** 30, 2 ** 30, 2 ** 30]])


def paths_in(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_in(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_in(v, path + (i,))


def set_at(doc, path, value):
    if not path:
        return value
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


def delete_at(doc, path):
    if path:
        node = doc
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
    return doc


def mutate_json(rng, data: bytes) -> bytes:
    """One to three mutations of a JSON document: values of the wrong type, keys removed or added,
    sizes enormous, containers swapped, nesting, or the text itself cut or corrupted."""
    doc = json.loads(data)
    for _ in range(rng.randint(1, 3)):
        paths = list(paths_in(doc))
        op = rng.choice(["value", "value", "size", "size", "delete", "add", "swap", "text"])
        if op == "text":
            text = json.dumps(doc)
            at = rng.randrange(len(text) + 1)
            return rng.choice([text[:at], text[:at] + rng.choice('{}[]",:\\\x00') + text[at:]]).encode()
        if op == "size":
            sized = [p for p in paths if p and p[-1] in SIZE_KEYS]
            if sized:
                doc = set_at(doc, rng.choice(sized), huge_size(rng))
                continue
            op = "value"
        path = rng.choice(paths)
        if op == "value":
            doc = set_at(doc, path, hostile_value(rng))
        elif op == "delete":
            doc = delete_at(doc, path)
        elif op == "add":
            containers = [p for p in paths if isinstance(_get(doc, p), dict)]
            target = _get(doc, rng.choice(containers)) if containers else None
            if target is not None:
                target[rng.choice(["extra", "class_name", "config", "shared_object_id", "build_config"])] = \
                    hostile_value(rng)
        elif op == "swap":
            node = _get(doc, path)
            if isinstance(node, dict):
                doc = set_at(doc, path, list(node.values()))
            elif isinstance(node, list):
                doc = set_at(doc, path, {str(i): v for i, v in enumerate(node)})
    text = json.dumps(doc)
    for depth in (60, 150, 5000):
        text = text.replace(f'"__DEEP_{depth}__"', "[" * depth + "]" * depth)
    return text.encode()


def _get(doc, path):
    node = doc
    for p in path:
        node = node[p]
    return node


# ---------------------------------------------------------------- bytes and zip members
def mutate_bytes(rng, raw: bytes) -> bytes:
    raw = bytearray(raw)
    op = rng.choice(["truncate", "flip", "flip", "header", "header", "insert", "delete", "append", "prepend"])
    starts = [i for sig in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06") for i in _find_all(raw, sig)]
    if not raw:
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 30, 100])))
    if op == "header" and not starts:
        op = "flip"
    if op == "truncate":
        return bytes(raw[:rng.randrange(len(raw))])
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if op == "header":  # a byte in a local header, a central directory entry or the end record
        for _ in range(rng.randint(1, 3)):
            at = min(rng.choice(starts) + rng.randrange(46), len(raw) - 1)
            raw[at] = rng.choice([0, 0xFF, raw[at] ^ (1 << rng.randrange(8)), rng.randrange(256)])
        return bytes(raw)
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100, 5000])))
    at = rng.randrange(len(raw))
    if op == "insert":
        return bytes(raw[:at]) + junk + bytes(raw[at:])
    if op == "delete":
        return bytes(raw[:at]) + bytes(raw[at + rng.randint(1, 200):])
    return bytes(raw) + junk if op == "append" else junk + bytes(raw)


def _find_all(raw, sig):
    at = raw.find(sig)
    while at >= 0:
        yield at
        at = raw.find(sig, at + 1)


def mutate_members(rng, members, json_members, other_weights=None):
    """A list of zipcraft Members, changed the way an attacker would."""
    members = list(members)
    m_i = rng.randrange(len(members))
    m = members[m_i]
    op = rng.choice(["drop", "duplicate", "rename", "add", "shuffle", "method", "flags", "lie", "lie", "bomb",
                     "empty", "content", "content", "json", "json", "json", "json", "swap_weights", "dataset",
                     "dataset"])
    if op == "drop":
        del members[m_i]
    elif op == "duplicate":
        copy = Member(m.name, mutate_bytes(rng, m.data) if rng.random() < 0.5 else m.data)
        members.insert(rng.randrange(len(members) + 1), copy)
    elif op == "rename":
        members[m_i] = Member(rng.choice(HOSTILE_NAMES), m.data)
    elif op == "add":
        name = rng.choice(HOSTILE_NAMES + ("assets/vocab.txt", "assets/sub/dir/file.bin", "extra.bin"))
        members.insert(rng.randrange(len(members) + 1),
                       Member(name, bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 3000])))))
    elif op == "shuffle":
        rng.shuffle(members)
    elif op == "method":
        choice = rng.choice(["deflate", "bzip2", "lzma", "unknown"])
        if choice == "deflate":
            members[m_i] = zipcraft.deflated(m.name, m.data)
        else:
            method = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA, "unknown": 99}[choice]
            members[m_i] = zipcraft.lying(m, method=method)
    elif op == "flags":
        members[m_i] = zipcraft.lying(m, flags=rng.choice([0x1, 0x8, 0x40, 0x1 | 0x8]))
    elif op == "lie":
        size = len(m.data)
        field = rng.choice(["file_size", "compress_size", "crc", "deflated_size"])
        value = rng.choice([0, 1, size // 2, size * 2, 2 ** 31, 2 ** 32 - 1])
        if field == "crc":
            members[m_i] = zipcraft.lying(m, crc=zlib.crc32(m.data) ^ 1)
        elif field == "deflated_size":  # a deflated member whose inflated bytes are not what it declares
            members[m_i] = zipcraft.lying(zipcraft.deflated(m.name, m.data), file_size=value)
        else:
            members[m_i] = zipcraft.lying(m, **{field: value})
    elif op == "bomb":
        total = rng.choice([65 * MiB, 130 * MiB, 300 * MiB])
        fill = b"\0" if m.name.endswith((".h5", ".npy", ".npz")) else b" "
        members[m_i] = zipcraft.deflate_bomb(m.name, m.data, total, fill)
    elif op == "empty":
        members[m_i] = Member(m.name, b"")
    elif op == "content":  # the CRC recomputed: the damage reaches Keras, h5py or NumPy
        members[m_i] = Member(m.name, mutate_bytes(rng, m.data) if len(m.data) > 1 else b"{")
    elif op == "json":
        targets = [i for i, x in enumerate(members) if x.name in json_members]
        if targets:
            i = rng.choice(targets)
            members[i] = Member(members[i].name, mutate_json(rng, members[i].data))
    elif op == "dataset":
        weights = [i for i, x in enumerate(members) if x.name == "model.weights.h5"]
        if weights:
            members[weights[0]] = Member("model.weights.h5", hostile_dataset(rng, members[weights[0]].data))
    elif op == "swap_weights" and other_weights is not None:
        weights = [i for i, x in enumerate(members) if x.name == "model.weights.h5"]
        if weights:
            members[weights[0]] = Member("model.weights.h5", other_weights)
    return members


# ---------------------------------------------------------------- HDF5 datasets
def hostile_dataset(rng, raw: bytes) -> bytes:
    """HDF5 bytes with one dataset replaced: huge and never written, compressed, stored in another
    file, of another shape or dtype."""
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.h5")
        with open(path, "wb") as fh:
            fh.write(raw)
        with h5py.File(path, "r+") as f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            name = rng.choice(sorted(names))
            shape = f[name].shape
            del f[name]
            op = rng.choice(["unwritten", "unwritten", "gzip", "external", "shape", "dtype", "scalar"])
            if op == "unwritten":
                f.create_dataset(name, shape=rng.choice([(2 ** 16, 2 ** 13), (2 ** 40,), (10 ** 6, 10 ** 6)]),
                                 dtype="float32", chunks=True, compression=rng.choice([None, "gzip"]))
            elif op == "gzip":
                f.create_dataset(name, data=np.zeros(rng.choice([2 ** 10, 2 ** 22]), "float32"), compression="gzip")
            elif op == "external":
                f.create_dataset(name, shape=shape, dtype="float32",
                                 external=[(rng.choice(["/dev/zero", "/etc/hostname", "missing.bin"]), 0, 1 << 20)])
            elif op == "shape":
                f.create_dataset(name, data=np.ones(tuple(d + 1 for d in shape) or (2,), "float32"))
            elif op == "dtype":
                f.create_dataset(name, data=np.ones(shape, rng.choice(["float64", "int8", "bool", "S3"])))
            else:
                f.create_dataset(name, data=np.float32(1))
        with open(path, "rb") as fh:
            return fh.read()


# ---------------------------------------------------------------- .npy members
def npy_bytes(header: str, data: bytes, version=1) -> bytes:
    body = header.encode("latin1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + data
    return b"\x93NUMPY" + bytes([version, 0]) + len(body).to_bytes(4, "little") + body + data


def hostile_npy(rng, arr):
    """A .npy member whose header or data is not what numpy.save writes."""
    good = np.lib.format.header_data_from_array_1_0(arr)
    descr, shape, fortran = good["descr"], good["shape"], good["fortran_order"]
    data = arr.tobytes()
    op = rng.choice(["shape", "shape", "descr", "fortran", "header", "length", "version", "data", "data"])
    if op == "shape":
        shape = rng.choice([(10 ** 12,), (2 ** 31, 2 ** 31), (-1, 4), (8, 4, 0), (), (8,), (8.5, 4), ("8", 4),
                            (2 ** 64, 1), tuple([1] * 64), (0, 4)])
    elif op == "descr":
        descr = rng.choice(["<f8", ">f4", "|O", "<U3", "|V8", "<c8", "|b1", "<i8", "<M8[s]", "zz", "<f1000000000",
                            [("a", "<f4")], [("a", "|O")], ("<f4", (2,)), "|S0", 5])
    elif op == "fortran":
        fortran = rng.choice([True, "yes", None, 1])
    header_dict = {"descr": descr, "fortran_order": fortran, "shape": shape}
    text = repr(header_dict)
    if op == "header":
        text = rng.choice(["{}", "[]", "{'descr': '<f4'}", "(" * 500 + ")" * 500, "{'descr': " + "[" * 3000,
                           repr({**header_dict, "extra": 1}), "__import__('os').system('true')", "x" * 20000,
                           text[: len(text) // 2]])
    raw = npy_bytes(text + " " * (63 - len(text) % 64) + "\n", data, rng.choice([1, 2, 3]) if op == "version" else 1)
    if op == "length":
        raw = raw[:8] + rng.choice([0, 5, 0xFFFF]).to_bytes(2, "little") + raw[10:]
    if op == "version":
        raw = raw[:6] + bytes([rng.choice([0, 2, 3, 9, 255]), 0]) + raw[8:]
    if op == "data":
        raw = rng.choice([raw[:-1], raw[: len(raw) // 2], raw + b"\0" * rng.choice([1, 4, 4096])])
    return raw


def batch_case(rng, arrays):
    """The .npz members (as zipcraft Members) of a mutated batch."""
    arrays = dict(arrays)
    op = rng.choice(["array", "array", "array", "npy", "npy", "npy", "members", "members", "bytes", "compressed"])
    if op == "array":
        key = rng.choice(list(arrays))
        change = rng.choice(["dtype", "shape", "batch", "values", "drop", "extra", "rename", "empty", "scalar"])
        a = arrays[key]
        if change == "dtype":
            arrays[key] = a.astype(rng.choice(["float64", "float16", "int64", "uint8", "bool", "complex64", "U3",
                                               "datetime64[s]", ">f4"]))
        elif change == "shape":
            arrays[key] = np.resize(a, rng.choice([(8, 5), (8, 4, 1), (4, 8), (8, 1), (2, 2, 2, 4)]))
        elif change == "batch":
            arrays[key] = np.resize(a, (rng.choice([0, 1, 5, 9, 1000]),) + a.shape[1:])
        elif change == "values":
            b = a.astype("float32").copy()
            b.flat[rng.randrange(b.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e38, -7.0, 1e6])
            arrays[key] = b.astype(a.dtype) if a.dtype.kind == "f" else b
        elif change == "drop":
            del arrays[key]
        elif change == "extra":
            arrays[rng.choice(["labels", "x/other", "y/c", "sample_weight/b", "y", "sample_weight"])] = a
        elif change == "rename":
            arrays[rng.choice(["X", "x\nx", "y/a/b", "", "x/x", "../x", "a" * 300])] = arrays.pop(key)
        elif change == "empty":
            arrays[key] = a[:0]
        else:
            arrays[key] = np.asarray(a.flat[0])
        if rng.random() < 0.1:
            arrays["objects"] = np.array([{"a": 1}, None], dtype=object)
        return [Member(k + ".npy", _npy(v)) for k, v in arrays.items()]
    members = [Member(k + ".npy", _npy(v)) for k, v in arrays.items()]
    if op == "npy":
        i = rng.randrange(len(members))
        members[i] = Member(members[i].name, hostile_npy(rng, arrays[members[i].name[:-4]]))
        return members
    if op == "compressed":  # what numpy.savez_compressed writes: valid
        return [zipcraft.deflated(m.name, m.data) for m in members]
    if op == "members":
        return mutate_members(rng, members, ())
    return mutate_bytes(rng, _zip_bytes(members))


def _npy(arr) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


def _zip_bytes(members) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "z.zip")
        zipcraft.write_zip(path, members)
        with open(path, "rb") as fh:
            return fh.read()


# ---------------------------------------------------------------- the cases
def h5_case(rng, base_path, out_path):
    """A tf_keras .h5 file: bytes flipped, cut or extended, its model_config or training_config mutated,
    or a dataset made hostile."""
    with open(base_path, "rb") as fh:
        raw = fh.read()
    op = rng.choice(["bytes", "bytes", "config", "config", "config", "dataset"])
    if op == "dataset":
        with open(out_path, "wb") as fh:
            fh.write(hostile_dataset(rng, raw))
        return
    if op == "bytes":
        raw = bytearray(raw)
        kind = rng.choice(["flip", "truncate", "append"])
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            raw = raw[:rng.randrange(8, len(raw))]
        else:
            raw += bytes(rng.randrange(256) for _ in range(1000))
        with open(out_path, "wb") as fh:
            fh.write(bytes(raw))
        return
    import h5py

    with open(out_path, "wb") as fh:
        fh.write(raw)
    with h5py.File(out_path, "r+") as f:
        attr = rng.choice(["model_config", "model_config", "training_config"])
        config = f.attrs[attr]
        config = config.encode() if isinstance(config, str) else bytes(config)
        f.attrs[attr] = mutate_json(rng, config).decode("utf-8", "replace").replace("\0", "?")


def build_cases(folder, paths):
    """[{id, argv, file}] for every mutated file, written to `folder`; the same SEED, the same files."""
    rng = random.Random(SEED)
    cases = [{"id": "valid/keras3", "argv": ["check", paths["keras3"], "--data", paths["batch"], "--format", "json"]}]
    if "tf_keras" in paths:
        cases += [{"id": "valid/tf_keras", "argv": ["check", paths["tf_keras"], "--format", "json"]},
                  {"id": "valid/h5", "argv": ["check", paths["h5"], "--format", "json", "--no-gradients"]}]
    with zipfile.ZipFile(paths["keras3"]) as zf:
        weights_k3 = zf.read("model.weights.h5")
    for kind in ("keras3", "tf_keras"):
        if kind not in paths:
            continue
        with open(paths[kind], "rb") as fh:
            raw = fh.read()
        base = zipcraft.members_of(paths[kind])
        for i in range(CASES[kind]):
            path = os.path.join(folder, f"{kind}_{i:03d}.keras")
            if rng.random() < 0.25:
                with open(path, "wb") as fh:
                    fh.write(mutate_bytes(rng, raw))
            else:
                zipcraft.write_zip(path, mutate_members(rng, base, ("config.json", "metadata.json"), weights_k3))
            cases.append({"id": f"{kind}/{i}", "argv": _check(rng, path), "file": path})
    if "h5" in paths:
        for i in range(CASES["h5"]):
            path = os.path.join(folder, f"h5_{i:03d}.h5")
            h5_case(rng, paths["h5"], path)
            cases.append({"id": f"h5/{i}", "argv": _check(rng, path), "file": path})
    arrays = hostile_files.batch_arrays()
    for i in range(CASES["batch"]):
        path = os.path.join(folder, f"batch_{i:03d}.npz")
        members = batch_case(rng, arrays)
        if isinstance(members, bytes):
            with open(path, "wb") as fh:
                fh.write(members)
        else:
            zipcraft.write_zip(path, members)
        cases.append({"id": f"batch/{i}", "argv": _check(rng, paths["keras3"], data=path), "file": path})
    return cases


def _check(rng, model, data=None):
    argv = ["check", model] + (["--data", data] if data else []) + ["--format", "json"]
    return argv if rng.random() < 0.15 else argv + ["--no-gradients"]


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def problems(case, result) -> list:
    """What this case's result breaks of the contract (empty when nothing)."""
    code, err = result["code"], result["stderr"]
    out = []
    if code not in (0, 1, 2):
        out.append(f"exit {code}")
    if "Traceback" in err:
        out.append("a traceback on stderr")
    if code == 2:
        *first, count = result["stderr_lines"]  # the first line and how many there are (stderr is kept cut)
        if result["stdout"]:
            out.append("exit 2 with something on stdout")
        if count != 1 or not first[0].startswith("lossmap: "):
            out.append(f"exit 2 with {count} stderr lines")
        elif len(first[0]) > 1100:
            out.append(f"exit 2 with a line of {len(first[0])} characters")
    elif code in (0, 1) and not result["json_ok"]:
        out.append("stdout is not one strict JSON document")
    limit = CASE_SECONDS.get(code, 30.0)
    if result["cpu"] > limit:
        out.append(f"took {result['cpu']:.1f} CPU s (limit {limit} s)")
    if result["seconds"] > CASE_WALL_SECONDS:
        out.append(f"took {result['seconds']:.1f} s (limit {CASE_WALL_SECONDS} s)")
    return out


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fuzz"))
    paths = hostile_files.build(folder)
    cases = build_cases(folder, paths)
    files = sorted({c["file"] for c in cases if "file" in c} | set(paths.values()))
    before = {f: _sha(f) for f in files}
    cases_path, results_path = os.path.join(folder, "cases.json"), os.path.join(folder, "results.jsonl")
    with open(cases_path, "w") as fh:
        json.dump(cases, fh)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    argv = [sys.executable, os.path.join(HERE, "fuzz_child.py"), cases_path, results_path, str(HEADROOM),
            str(min(WARM, len(cases)))]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_SECONDS, env=env, cwd=folder)
    except subprocess.TimeoutExpired as exc:  # the results so far say which case it was stuck in
        proc = subprocess.CompletedProcess(argv, f"timed out after {CHILD_SECONDS} s", "", str(exc.stderr or ""))
    with open(results_path) as fh:
        results = [json.loads(line) for line in fh]
    after = {f: _sha(f) for f in files}
    return {"cases": cases, "results": results, "proc": proc, "changed": [f for f in files if before[f] != after[f]]}


def test_the_fuzz_run_is_seeded(tmp_path):
    """Two builds of the cases from the same SEED are the same files, byte for byte."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    digests = []
    for folder in (a, b):
        paths = hostile_files.build(str(folder), tf_keras=False)
        cases = build_cases(str(folder), paths)
        digests.append([(c["id"], _sha(c["file"])) for c in cases if "file" in c])
    assert digests[0] == digests[1]


def test_every_mutation_is_exit_0_1_or_2_in_one_line_cheaply(fuzz_run):
    cases, results, proc = fuzz_run["cases"], fuzz_run["results"], fuzz_run["proc"]
    last = results[-1]["id"] if results else "none"
    assert proc.returncode == 0 and len(results) == len(cases), \
        f"the child stopped after case {last} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    by_id = {c["id"]: c for c in cases}
    bad = []
    for result in results:
        found = problems(by_id[result["id"]], result)
        if found:
            bad.append(f"{result['id']} ({' '.join(by_id[result['id']]['argv'][1:2])}): {'; '.join(found)}\n"
                       f"    stderr: {result['stderr'][-600:]!r}")
    assert not bad, f"{len(bad)} of {len(results)} cases break the contract:\n" + "\n".join(bad[:20])
    warm_peak = max(r["peak_rss"] for r in results[:WARM])
    peak = max(r["peak_rss"] for r in results)
    assert peak - warm_peak < MEMORY_GROWTH, f"peak RSS grew by {(peak - warm_peak) / MiB:.0f} MiB"
    assert all(r["code"] == 0 for r in results[:WARM]), results[:WARM]
    counts = {code: sum(r["code"] == code for r in results) for code in (0, 1, 2)}
    slowest = max(results[WARM:], key=lambda r: r["cpu"])
    print(f"\nfuzz: {len(results)} cases, exit codes {counts}, slowest {slowest['id']} {slowest['cpu']:.2f} CPU s, "
          f"peak RSS {peak / MiB:.0f} MiB (warm {warm_peak / MiB:.0f} MiB)")
    assert counts[2] > len(results) // 2 and counts[0] > 10  # the mutations do reach both outcomes


def test_no_file_is_modified(fuzz_run):
    assert not fuzz_run["changed"]
