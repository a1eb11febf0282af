"""What lossmap reads from the files it is given, and the limits it reads within.

A `.keras` archive and an `.npz` batch are zip files. A zip file says how big its
members are before anything is inflated, but a member can lie about its size, and
a few megabytes can inflate to gigabytes (a "deflate bomb"). Everything here runs
before Keras, h5py or NumPy sees the file, costs next to nothing, and refuses with
a `UserError` (exit 2, one line saying what is wrong and how to fix it):

- the declared sizes are checked first (`check_members`): no member inflates past
  its own limit, past `MAX_EXPANSION` times what it stores, or the whole archive
  past `MAX_EXPANSION` times the file; duplicate names, encrypted members and
  compression methods Keras and NumPy never write are refused;
- then what is read is streamed with a cap (`read_member`): a member that inflates
  to more or fewer bytes than it declares is refused the moment it does, and its
  CRC is checked (Python's zipfile never hands out more than the declared size, so
  Keras, reading the same members afterwards, is bounded by the same checks);
- JSON is parsed only when its size passed, and its nesting depth is bounded;
- an HDF5 file's datasets (the weights) may not declare far more than they store, nor
  read another file (`check_h5`: metadata only);
- a `.npy` member's header (its shape and dtype) is parsed here, never by pickle:
  an array must hold exactly the bytes its shape declares.

lossmap only ever opens the user's files for reading.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import struct
import zipfile

import numpy as np

from lossmap.errors import UserError

MiB = 1 << 20
GiB = 1 << 30

# ---------------------------------------------------------------- every zip file (.keras, .npz)
# Members in one zip file. Keras writes 3 (metadata, config, weights) plus its assets
# and numpy.savez one per array; every member costs a few hundred bytes of memory to list.
MAX_MEMBERS = 10_000
# Inflated size over stored size, per member and for the whole file. Keras stores members
# uncompressed (1:1); deflate gives about 1.1:1 on weights and up to 40:1 on a config
# (ResNet50's config.json, measured); deflate cannot exceed 1032:1, and a bomb is near that.
MAX_EXPANSION = 100
# Below this a member may compress as well as it likes: inflating 64 MiB takes about 0.1 s.
EXPANSION_FLOOR = 64 * MiB
# Below this a whole file may too (the members' floors, with room for a config and assets).
TOTAL_EXPANSION_FLOOR = 256 * MiB
# How much is inflated at a time when a member is read.
READ_CHUNK = 1 * MiB
# The compression methods Keras and numpy.savez write (and `zip`). bzip2 is refused because
# Python's zipfile inflates a bzip2 chunk in one call, uncapped (a few KB can be gigabytes).
READABLE_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}

# ---------------------------------------------------------------- .keras archives
# config.json, inflated. ResNet50's is 172 KiB and a 1,000-layer model's about 1 MiB;
# 32 MiB is over 100 times that, and parses in about 0.4 s (up to about 700 MB of
# Python objects for the most compact JSON there is, "[{},{},...]").
CONFIG_MAX_BYTES = 32 * MiB
# metadata.json, inflated: Keras writes about 100 bytes (keras_version, date_saved).
METADATA_MAX_BYTES = 1 * MiB
# Nesting depth of a JSON document. ResNet50's config is 12 deep and a model nested in
# a model adds about 6; Keras and lossmap walk configs recursively, and Python stops at
# 1,000 frames (several per level), so 100 keeps every walk far from that.
JSON_MAX_DEPTH = 100
# Nesting depth of the compile config (optimizer, losses, loss weights, metrics). Keras writes it 4
# deep (Adam, a dict of losses); a schedule in a schedule or a loss object's own config adds about
# 2 each. tf_keras's compile takes time exponential in how deep a loss structure is nested (about
# 2x a level: 0.4 s at 17, 5.5 s at 21, measured), so 12 keeps it under 0.1 s.
COMPILE_CONFIG_MAX_DEPTH = 12
# keras_version in metadata.json: a short version string ("3.15.1", "2.15.0", "3.0.0.dev2023").
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")

# ---------------------------------------------------------------- .npz batches
# A .npy header (shape, dtype, order): numpy's own reader refuses more than 10,000 bytes.
NPY_MAX_HEADER_BYTES = 10_000
# All arrays of one batch together. lossmap holds a batch at least twice (NumPy and the
# tensors Keras is fed) and runs a forward pass, a train step and the gradients on it;
# 4 GiB is far past what a CPU run on one batch is for: pass a smaller batch.
BATCH_MAX_BYTES = 4 * GiB
# One sample of a loaded model's inputs and outputs together: a default batch of 8 has to fit
# BATCH_MAX_BYTES. Real ones are far smaller (a 1024x1024 RGB image is 12 MiB, a 256^3 volume
# 64 MiB); a config declaring more would have lossmap and Keras allocate it to learn its shapes.
SAMPLE_MAX_BYTES = BATCH_MAX_BYTES // 8
NPY_MAGIC = b"\x93NUMPY"


def size_text(n: int) -> str:
    """A byte count for people: 2.0 GiB, 64 MiB, 3 KiB, 12 bytes."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 and value != int(value) else f"{value:.0f} {unit}"
    return f"{n} bytes"


def shown(name, limit: int = 80) -> str:
    """A name taken from the file, quoted for a one-line message (control characters escaped, shortened)."""
    text = repr(str(name))[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- opening a zip file
def declared_entries(path: str):
    """(entries, central directory size) from the end-of-central-directory record, without zipfile.

    None when the record cannot be found (zipfile then says why the file is not a zip).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        tail_len = min(size, 22 + 0xFFFF)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        entries, cd_size = struct.unpack("<HL", tail[at + 10: at + 16])
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the locator sits just before the record
            locator = tail[at - 20: at] if at >= 20 else b""
            if len(locator) == 20 and locator[:4] == b"PK\x06\x07":
                offset = struct.unpack("<Q", locator[8:16])[0]
                if offset + 56 <= size:
                    fh.seek(offset)
                    record = fh.read(56)
                    if record[:4] == b"PK\x06\x06":
                        entries, cd_size = struct.unpack("<QQ", record[32:48])
    return entries, cd_size


def open_zip(path: str, label: str, fix: str) -> zipfile.ZipFile:
    """The zip file at `path`, once its end record says it is of a sane size (see `check_members`)."""
    found = declared_entries(path)
    if found is not None:
        entries, cd_size = found
        if entries > MAX_MEMBERS:
            raise UserError(f"{label} lists {entries:,} members, over lossmap's limit of {MAX_MEMBERS:,}; {fix}")
        if cd_size > os.path.getsize(path):
            raise UserError(f"{label} is damaged (its member list claims more bytes than the file has); {fix}")
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise UserError(f"{label} is truncated or damaged ({_why(exc)}); {fix}") from exc


# What zipfile raises on a damaged or hostile file (reading its member list or a member).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, IndexError,
              struct.error, NotImplementedError, RuntimeError, OverflowError)


def _why(exc) -> str:
    text = str(exc).strip().splitlines()
    return type(exc).__name__ + (f": {shown(text[0], 120)}" if text else "")


def check_members(zf: zipfile.ZipFile, file_size: int, label: str, fix: str, limits: dict = None) -> list:
    """The members of `zf` (a zip file of `file_size` bytes), once their declared sizes are sane
    (see the module docstring).

    `limits`: {member name: (largest inflated size, what the member is)}.
    """
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UserError(f"{label} has {len(infos):,} members, over lossmap's limit of {MAX_MEMBERS:,}; {fix}")
    seen, total = set(), 0
    for info in infos:
        name = shown(info.filename)
        if not info.filename:
            raise UserError(f"{label} is damaged (a member without a name); {fix}")
        if info.filename in seen:
            raise UserError(f"{label} holds '{name}' twice (a damaged or tampered file); {fix}")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise UserError(f"{label}: member '{name}' is encrypted; lossmap reads unencrypted files: {fix}")
        if info.compress_type not in READABLE_METHODS:
            method = METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise UserError(f"{label}: member '{name}' is compressed with {method}; lossmap reads stored and "
                            f"deflated members (what Keras and NumPy write): {fix}")
        if info.header_offset + info.compress_size > file_size:
            raise UserError(f"{label} is truncated or damaged (member '{name}' runs past the end of the file); {fix}")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise UserError(f"{label} is damaged (member '{name}' is stored uncompressed but declares "
                            f"{info.file_size:,} bytes for {info.compress_size:,}); {fix}")
        cap, what = (limits or {}).get(info.filename, (None, None))
        if cap is not None and info.file_size > cap:
            raise UserError(f"{label}: {name} inflates to {size_text(info.file_size)} ({size_text(info.compress_size)} "
                            f"stored), over lossmap's limit of {size_text(cap)} for {what}; {fix}")
        if cap is None and info.file_size > EXPANSION_FLOOR and info.file_size > MAX_EXPANSION * info.compress_size:
            raise UserError(f"{label}: member '{name}' inflates to {size_text(info.file_size)} from "
                            f"{size_text(info.compress_size)} (over {MAX_EXPANSION}:1, a decompression bomb); {fix}")
        total += info.file_size
    if total > max(TOTAL_EXPANSION_FLOOR, MAX_EXPANSION * file_size):
        raise UserError(f"{label}: its members inflate to {size_text(total)} from a {size_text(file_size)} file "
                        f"(over {MAX_EXPANSION}:1, a decompression bomb); {fix}")
    return infos


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, fix: str, keep: bool = True,
                cap: int = None, sink=None, skip: int = 0) -> bytes:
    """A member's bytes, inflated a chunk at a time and never past its declared size or `cap`.

    With `keep=False` the bytes are only counted and checked (CRC), not kept; with `sink`
    (a writable uint8 buffer of the member's size less `skip`) they are written into it.
    """
    name = shown(info.filename)
    limit = info.file_size if cap is None else min(cap, info.file_size)
    out, n = bytearray(), 0
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(READ_CHUNK)
                if not chunk:
                    break
                if n + len(chunk) > limit:
                    raise UserError(f"{label}: member '{name}' inflates past {size_text(limit)}, the size it "
                                    f"declares or lossmap's limit; {fix}")
                if keep:
                    out += chunk
                if sink is not None and n + len(chunk) > skip:
                    part = memoryview(chunk)[max(skip - n, 0):]
                    at = max(n - skip, 0)
                    sink[at: at + len(part)] = np.frombuffer(part, np.uint8)
                n += len(chunk)
    except UserError:
        raise
    except ZIP_ERRORS as exc:
        raise UserError(f"{label} is damaged (member '{name}': {_why(exc)}); {fix}") from exc
    if n != info.file_size:
        raise UserError(f"{label} is damaged (member '{name}' declares {info.file_size:,} bytes but holds "
                        f"{n:,}); {fix}")
    return bytes(out)


# ---------------------------------------------------------------- JSON
def parse_json(data: bytes, label: str, fix: str):
    """A JSON document (bytes, as Keras reads it), refused when malformed or nested too deep."""
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise UserError(f"{label} is nested too deeply to be a Keras config; {fix}") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise UserError(f"{label} is not valid JSON ({shown(exc, 120)}); {fix}") from exc
    depth = json_depth(value)
    if depth > JSON_MAX_DEPTH:
        raise UserError(f"{label} is nested {depth} levels deep, over lossmap's limit of {JSON_MAX_DEPTH} "
                        f"(a Keras config is about 12 to 30); {fix}")
    return value


def json_depth(value, stop: int = JSON_MAX_DEPTH + 1) -> int:
    """Nesting depth of parsed JSON (a scalar is 1), counted without recursion; stops counting at `stop`."""
    best, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        best = max(best, depth)
        if best >= stop:
            return best
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return best


# ---------------------------------------------------------------- .npy members
def npy_header(head: bytes, label: str, fix: str):
    """(dtype, shape, fortran_order, header length) of a .npy member from its first bytes, without pickle."""
    if head[:6] != NPY_MAGIC or len(head) < 10:
        raise UserError(f"{label} is not a NumPy array (.npy); {fix}")
    major = head[6]
    if major == 1:
        (length,), start = struct.unpack("<H", head[8:10]), 10
    elif major in (2, 3) and len(head) >= 12:
        (length,), start = struct.unpack("<I", head[8:12]), 12
    else:
        raise UserError(f"{label} is a .npy of format version {major}, which lossmap does not read; {fix}")
    if length > NPY_MAX_HEADER_BYTES or start + length > len(head):
        raise UserError(f"{label} has a .npy header of {length:,} bytes (numpy writes under "
                        f"{NPY_MAX_HEADER_BYTES:,}); {fix}")
    try:
        text = head[start: start + length].decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ValueError("not a .npy header")
        shape, fortran = header["shape"], header["fortran_order"]
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError("bad shape")
        if not isinstance(fortran, bool):
            raise ValueError("bad fortran_order")
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, KeyError, IndexError,
            UnicodeDecodeError) as exc:
        raise UserError(f"{label} has a damaged .npy header ({shown(exc, 80)}); {fix}") from exc
    return dtype, shape, fortran, start + length


def npy_bytes(dtype, shape) -> int:
    return math.prod(shape) * dtype.itemsize


# ---------------------------------------------------------------- HDF5 (model.weights.h5, tf_keras .h5 files)
def check_h5(source, label: str, fix: str, file_size: int):
    """Refuse an HDF5 file whose datasets declare far more than they store, or read another file.

    A chunked dataset whose chunks were never written, or are compressed, reads back at its
    declared size: a 27 KB file can declare a 2 GiB kernel, which Keras reads into memory in
    full before it compares its shape (52 s and 6.9 GB, measured). Only metadata is read here.
    `source`: a path or a seekable binary file object.
    """
    import h5py

    found = {"total": 0}

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return None
        where = f"{label}: dataset '{shown(name, 60)}'"
        if obj.external or obj.is_virtual:
            raise UserError(f"{where} reads its data from another file (external or virtual storage); {fix}")
        declared = math.prod(obj.shape or ()) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        if declared > EXPANSION_FLOOR and declared > MAX_EXPANSION * stored:
            raise UserError(f"{where} declares {size_text(declared)} of data but stores {size_text(stored)} "
                            f"(over {MAX_EXPANSION}:1, a decompression bomb); {fix}")
        found["total"] += declared
        return None

    try:
        with h5py.File(source, "r") as f:
            f.visititems(visit)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds on a damaged file
        raise UserError(f"{label} is not a readable HDF5 file ({_why(exc)}); {fix}") from exc
    if found["total"] > max(TOTAL_EXPANSION_FLOOR, MAX_EXPANSION * file_size):
        raise UserError(f"{label}: its datasets declare {size_text(found['total'])} in a {size_text(file_size)} "
                        f"file (over {MAX_EXPANSION}:1, a decompression bomb); {fix}")


class MemberWindow:
    """A stored (uncompressed) zip member as a seekable read-only file, straight from the archive.

    For h5py, which seeks back and forth: zipfile's own member file re-reads from the member's
    start on every backward seek.
    """

    def __init__(self, path: str, info: zipfile.ZipInfo):
        self._fh = open(path, "rb")
        self._fh.seek(info.header_offset)
        local = self._fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            self._fh.close()
            raise UserError(f"{os.path.basename(path)} is damaged (member '{shown(info.filename)}' has no local "
                            "header where the directory says)")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        self._start = info.header_offset + 30 + name_len + extra_len
        self._size = info.compress_size
        self._pos = 0

    def read(self, n=-1):
        if n is None or n < 0:
            n = self._size - self._pos
        n = max(0, min(n, self._size - self._pos))
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        self._pos += len(data)
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self):
        return self._pos

    def seekable(self):
        return True

    def readable(self):
        return True

    def close(self):
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
