"""Stage 2: the batch the loss is evaluated on, from a file or made up.

File keys follow the contract: `x`, `y`, `sample_weight` for one input/output;
`x/<input>`, `y/<output>`, `sample_weight/<output>` for named structures.
Synthetic batches are seeded and give each loss the labels it expects.
"""
from __future__ import annotations

import math
import os

import numpy as np

from lossmap import limits
from lossmap.engines.base import Batch, Signature
from lossmap.errors import UserError

DEFAULT_UNKNOWN_DIM = 4  # a non-batch dimension the model leaves open (sequence length)


def synthetic(sig: Signature, batch_size: int = 8, seed: int = 0) -> Batch:
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    _within_batch_limit(sig, batch_size)
    rng = np.random.default_rng(seed)
    x = {}
    for spec in sig.inputs:
        shape = _concrete(spec.shape, batch_size)
        x[spec.name] = _random_input(rng, shape, spec.dtype, sig.int_input_bound, spec.name)
    y = {}
    for spec in sig.outputs:
        y[spec.name] = synthetic_labels(rng, _concrete(spec.shape, batch_size), spec.dtype, spec.loss_fn)
    return Batch(x=x, y=y, sample_weight={}, source="synthetic", seed=seed)


def _within_batch_limit(sig: Signature, batch_size: int):
    """Refuse a synthetic batch bigger than `limits.BATCH_MAX_BYTES` before any of it is made."""
    total, biggest = 0, None
    for spec in list(sig.inputs) + list(sig.outputs):
        try:
            n = math.prod(_concrete(spec.shape, batch_size)) * max(np.dtype(spec.dtype).itemsize, 4)
        except (TypeError, ValueError):
            continue  # a dtype NumPy does not know: _random_input says so
        total += n
        if biggest is None or n > biggest[1]:
            biggest = (spec.name, n, spec.shape)
    if total > limits.BATCH_MAX_BYTES:
        name, n, shape = biggest
        raise UserError(f"a synthetic batch of {batch_size} needs {limits.size_text(total)} ('{limits.shown(name)}' "
                        f"{_fmt_shape(shape)} alone {limits.size_text(n)}), over lossmap's limit of "
                        f"{limits.size_text(limits.BATCH_MAX_BYTES)} for one batch; pass a smaller --batch-size")


def _concrete(shape, batch_size):
    dims = list(shape)
    if not dims:
        return ()
    return (batch_size,) + tuple(DEFAULT_UNKNOWN_DIM if d is None else int(d) for d in dims[1:])


def _random_input(rng, shape, dtype, int_bound, name):
    kind = np.dtype(dtype).kind if _is_numpy_dtype(dtype) else "O"
    if kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if kind in "iu":
        return rng.integers(0, int_bound, size=shape).astype(dtype)
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    raise UserError(f"cannot make up data for input '{name}' of dtype {dtype}; pass --data batch.npz")


def _is_numpy_dtype(dtype):
    try:
        np.dtype(dtype)
        return True
    except TypeError:
        return False


def synthetic_labels(rng, pred_shape, pred_dtype, loss_fn):
    """Valid targets for `loss_fn` on predictions of `pred_shape`."""
    from lossmap.engines.common.rules import LABEL_KIND

    dtype = pred_dtype if np.dtype(pred_dtype).kind == "f" else "float32"
    kind = LABEL_KIND.get(loss_fn or "", "real")
    classes = pred_shape[-1] if len(pred_shape) > 1 else 1
    if kind == "sparse":
        return rng.integers(0, max(classes, 1), size=pred_shape[:-1]).astype("int32")
    if kind == "onehot":
        idx = rng.integers(0, max(classes, 1), size=pred_shape[:-1])
        onehot = np.zeros(np.shape(idx) + (max(classes, 1),), dtype=dtype)  # np.eye(classes)[idx], without
        np.put_along_axis(onehot, np.expand_dims(idx, -1), 1, axis=-1)    # the classes x classes matrix
        return onehot
    if kind == "binary":
        return rng.integers(0, 2, size=pred_shape).astype(dtype)
    if kind == "distribution":
        raw = rng.uniform(0.05, 1.0, size=pred_shape)
        return (raw / raw.sum(axis=-1, keepdims=True)).astype(dtype)
    if kind == "positive":
        return rng.uniform(0.1, 2.0, size=pred_shape).astype(dtype)
    return rng.standard_normal(pred_shape).astype(dtype)


NPZ_FIX = "save the batch again with numpy.savez"


def read_npz(path: str, load: bool = True):
    """{key: array} of a NumPy `.npz` batch, read without pickle and within `lossmap.limits`.

    Every member's declared size and .npy header (shape, dtype) is checked before any
    array is read; `load=False` stops there (a check that costs next to nothing).
    """
    name = os.path.basename(path)
    label = f"--data {name}"
    if not os.path.exists(path):
        raise UserError(f"{label}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{label} is a directory; give a .npz file saved with numpy.savez")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == limits.NPY_MAGIC:
        raise UserError(f"{label}: a single .npy array; lossmap needs an .npz with keys x and y")
    if magic[:2] != b"PK":
        raise UserError(f"{label}: not a NumPy .npz file (a zip of arrays); save plain arrays with numpy.savez")
    with limits.open_zip(path, label, NPZ_FIX) as zf:
        members = npz_headers(zf, os.path.getsize(path), label)
        total = sum(limits.npy_bytes(dtype, shape) for _, _, dtype, shape, _, _ in members)
        if total > limits.BATCH_MAX_BYTES:
            raise UserError(f"{label}: its arrays need {limits.size_text(total)}, over lossmap's limit of "
                            f"{limits.size_text(limits.BATCH_MAX_BYTES)} for one batch; pass a smaller batch")
        if not load:
            return None
        return {key: _npy_data(zf, info, dtype, shape, fortran, start, label)
                for key, info, dtype, shape, fortran, start in members}


def npz_headers(zf, file_size, label, fix=NPZ_FIX):
    """[(key, member, dtype, shape, fortran_order, data offset)] of an .npz (a zip file of `file_size`
    bytes), each .npy header checked against its member's size; no array data is read."""
    out, keys = [], set()
    for info in limits.check_members(zf, file_size, label, fix):
        if info.filename.endswith("/"):  # a folder entry (zip -r writes them)
            continue
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        shown = limits.shown(key)
        if key in keys:
            raise UserError(f"{label}: two members are named '{shown}'; {fix}")
        keys.add(key)
        head = _read_some(zf, info, min(info.file_size, limits.NPY_MAX_HEADER_BYTES + 12), label, fix)
        dtype, shape, fortran, start = limits.npy_header(head, f"{label}: '{shown}'", fix)
        if dtype.hasobject:
            raise UserError(f"{label}: '{shown}' holds pickled objects (lossmap never unpickles); "
                            + ("save plain arrays with numpy.savez" if fix == NPZ_FIX else fix))
        if dtype.kind not in "biuf":
            raise UserError(f"{label}: '{shown}' has dtype {dtype}; it must be numeric")
        nbytes = limits.npy_bytes(dtype, shape)
        if start + nbytes != info.file_size:
            raise UserError(f"{label}: '{shown}' declares shape {shape} of {dtype} ({limits.size_text(nbytes)}) but "
                            f"holds {limits.size_text(max(info.file_size - start, 0))}; the file is damaged: {fix}")
        out.append((key, info, dtype, shape, fortran, start))
    return out


def _read_some(zf, info, n, label, fix=NPZ_FIX):
    try:
        with zf.open(info) as fh:
            return fh.read(n)
    except limits.ZIP_ERRORS as exc:
        raise UserError(f"{label} is damaged (member '{limits.shown(info.filename)}': {type(exc).__name__}); "
                        f"{fix}") from exc


def _npy_data(zf, info, dtype, shape, fortran, start, label):
    """One array, read straight into its buffer: never more bytes than its header declared (checked)."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    flat = np.empty(count, dtype=dtype)
    buf = flat.view(np.uint8) if flat.nbytes else None
    limits.read_member(zf, info, label, NPZ_FIX, keep=False, sink=buf, skip=start)
    arr = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def from_file(path: str, sig: Signature) -> Batch:
    name = os.path.basename(path)
    arrays = read_npz(path)
    x = _pick(arrays, "x", [s.name for s in sig.inputs], name, required=True)
    y = _pick(arrays, "y", [s.name for s in sig.outputs], name, required=True,
              optional_names={s.name for s in sig.outputs if s.loss_fn is None})
    sw = _pick(arrays, "sample_weight", [s.name for s in sig.outputs], name, required=False)
    known = {"x", "y", "sample_weight"} | {f"{p}/{n}" for p in ("x",) for n in (s.name for s in sig.inputs)} \
        | {f"{p}/{n}" for p in ("y", "sample_weight") for n in (s.name for s in sig.outputs)}
    extra = sorted(set(arrays) - known)
    if extra:
        raise UserError(f"--data {name}: key '{limits.shown(extra[0])}' matches no input or output of the model "
                        f"(inputs: {', '.join(s.name for s in sig.inputs)}; outputs: "
                        f"{', '.join(s.name for s in sig.outputs)})")
    batch = Batch(x=x, y=y, sample_weight=sw, source="file", seed=None)
    _validate(batch, sig, name)
    return batch


def _pick(arrays, prefix, names, file_name, required, optional_names=()):
    out = {}
    if len(names) == 1 and prefix in arrays:
        out[names[0]] = arrays[prefix]
        return out
    for n in names:
        key = f"{prefix}/{n}"
        if key in arrays:
            out[n] = arrays[key]
        elif required and n not in optional_names:
            if len(names) == 1:
                raise UserError(f"--data {file_name}: missing key '{prefix}' (or '{key}'); save it with "
                                f"numpy.savez(..., {prefix}=...)")
            raise UserError(f"--data {file_name}: missing key '{key}' (expected '{prefix}/<name>' for each of "
                            f"{', '.join(names)})")
    return out


def _validate(batch: Batch, sig: Signature, file_name: str):
    sizes = {}  # key -> batch size (None for a 0-d array)
    for spec in sig.inputs:
        arr = batch.x[spec.name]
        key = "x" if len(sig.inputs) == 1 else f"x/{spec.name}"
        _check_dtype(arr, key, file_name, spec.dtype)
        if arr.ndim != len(spec.shape):
            raise UserError(f"--data {file_name}: '{key}' has shape {arr.shape} but the model expects "
                            f"{_fmt_shape(spec.shape)}")
        for got, want in zip(arr.shape[1:], spec.shape[1:]):
            if want is not None and got != want:
                raise UserError(f"--data {file_name}: '{key}' has shape {arr.shape} but the model expects "
                                f"{_fmt_shape(spec.shape)}")
        sizes[key] = arr.shape[0] if arr.ndim else None
    for spec in sig.outputs:
        key = "y" if len(sig.outputs) == 1 else f"y/{spec.name}"
        if spec.name not in batch.y:
            batch.y[spec.name] = np.zeros(_concrete(spec.shape, next(iter(sizes.values()))), "float32")
            continue
        arr = batch.y[spec.name]
        _check_dtype(arr, key, file_name, "float32")
        sparse = spec.loss_fn == "sparse_categorical_crossentropy"
        want = tuple(spec.shape[:-1]) if sparse else tuple(spec.shape)
        if not _labels_fit(arr.shape, want, sparse):
            raise UserError(f"--data {file_name}: '{key}' has shape {arr.shape} but output '{spec.name}' "
                            f"needs {_fmt_shape(want)}" + (" (integer class ids)" if sparse else ""))
        if sparse:
            _check_class_ids(arr, key, file_name, spec)
        sizes[key] = arr.shape[0] if arr.ndim else None
    for out_name, arr in batch.sample_weight.items():
        key = "sample_weight" if len(sig.outputs) == 1 else f"sample_weight/{out_name}"
        _check_dtype(arr, key, file_name, "float32")
        y_shape = batch.y[out_name].shape
        if arr.ndim == 0 or arr.ndim > len(y_shape) or any(d not in (1, y) for d, y in zip(arr.shape[1:], y_shape[1:])):
            raise UserError(f"--data {file_name}: '{key}' has shape {arr.shape}; give one weight per sample, "
                            f"shape ({batch.y[out_name].shape[0]},)")
        sizes[key] = arr.shape[0]
    if len(set(sizes.values())) != 1 or None in sizes.values():
        listed = ", ".join(f"'{k}' has {'no batch axis' if n is None else n}" for k, n in sizes.items())
        raise UserError(f"--data {file_name}: arrays disagree on the batch size ({listed}); give every array "
                        "the same first dimension")


def _check_class_ids(arr, key, file_name, spec):
    """Sparse crossentropy labels are class ids in [0, classes) or its ignore_class: TensorFlow refuses
    any other mid-run."""
    if arr.size == 0:
        return
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise UserError(f"--data {file_name}: '{key}' holds NaN or Inf where output '{spec.name}' needs class ids "
                        "(sparse_categorical_crossentropy)")
    ids = np.trunc(arr) if arr.dtype.kind == "f" else arr  # TensorFlow casts float labels to int
    classes = spec.shape[-1] if len(spec.shape) > 1 else None
    bad = (ids < 0) | (ids >= classes) if classes is not None else ids < 0
    ignore = getattr(spec, "ignore_class", None)
    if ignore is not None:
        bad &= ids != ignore
    if bad.any():
        span = f"0 to {classes - 1}" if classes is not None else "0 or more"
        also = f" (or its ignore_class {ignore})" if ignore is not None else ""
        raise UserError(f"--data {file_name}: '{key}' holds class id {ids[bad].flat[0]:g}, but output '{spec.name}' "
                        f"(sparse_categorical_crossentropy) takes class ids {span}{also}")


def _labels_fit(shape, want, sparse):
    if len(shape) == 0:
        return False
    candidates = [tuple(want)]
    if len(want) >= 1 and want[-1] == 1:
        candidates.append(tuple(want[:-1]))
    candidates.append(tuple(want) + (1,))
    for cand in candidates:
        if len(cand) == len(shape) and all(w is None or w == g for g, w in zip(shape[1:], cand[1:])):
            return True
    return False


def _check_dtype(arr, key, file_name, want):
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise UserError(f"--data {file_name}: '{key}' has dtype {arr.dtype}; it must be numeric")
    if np.dtype(want).kind in "iu" and kind == "f":
        raise UserError(f"--data {file_name}: '{key}' has dtype {arr.dtype} but the model expects {want}")


def _fmt_shape(shape):
    return "(" + ", ".join("batch" if i == 0 else ("any" if d is None else str(d)) for i, d in enumerate(shape)) + ")"


def from_arrays(data, sig: Signature) -> Batch:
    """A batch given in Python: `(x, y)` or `(x, y, sample_weight)`, each an array, a list or a dict."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise UserError("batch must be None, a path to an .npz, or a tuple (x, y) or (x, y, sample_weight)")
    x, y, sw = (list(data) + [None])[:3]
    batch = Batch(
        x=_by_name(x, [s.name for s in sig.inputs], "x"),
        y=_by_name(y, [s.name for s in sig.outputs], "y"),
        sample_weight=_by_name(sw, [s.name for s in sig.outputs], "sample_weight") if sw is not None else {},
        source="arrays",
        seed=None,
    )
    batch.sample_weight = {k: v for k, v in batch.sample_weight.items() if v is not None}
    _validate(batch, sig, "batch")
    return batch


def _by_name(value, names, what):
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise UserError(f"batch {what}: '{unknown[0]}' is not one of {', '.join(names)}")
        return {k: np.asarray(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise UserError(f"batch {what}: {len(value)} arrays for {len(names)} ({', '.join(names)})")
        return {n: np.asarray(v) for n, v in zip(names, value) if v is not None}
    if len(names) != 1:
        raise UserError(f"batch {what}: one array for {len(names)} ({', '.join(names)}); give a dict or a list")
    return {names[0]: np.asarray(value)}
