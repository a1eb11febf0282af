"""Stage 1: turn what the user named into a live model and the engine that explains it.

MODEL is a `.keras` archive, a legacy `.h5` file (tf_keras), a factory
`path/to/file.py:function` or `package.module:function`, or (from Python) a
live model object.

The engine (`choose_engine`): `--engine keras3|tf_keras` when given; otherwise
the model object's class (a live model or what a factory returned), or the
file's metadata (`keras_version` 2.x in a `.keras` archive or an `.h5` file
means tf_keras), or, when the file does not say, `TF_USE_LEGACY_KERAS=1`.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import importlib.util
import json
import os
import sys
import types
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

from lossmap import guards, limits
from lossmap.batch import npz_headers
from lossmap.engines import engine_of, make_engine
from lossmap.errors import UserError
from lossmap.quiet import import_backend


ENGINES = ("auto", "keras3", "tf_keras")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class Loaded:
    model: Any
    engine: Any
    source: str
    saved_with: Optional[str]
    owned: bool  # lossmap created this model object (archive or factory)
    engine_reason: Optional[str] = None  # why this engine explains the model, in words


KERAS_FIX = "save the model again with model.save('model.keras')"
H5_FIX = "save the model again (model.save('model.h5') with tf_keras, or model.save('model.keras'))"
# Members lossmap reads itself, and the most each may inflate to (see lossmap/limits.py).
ARCHIVE_JSON = {
    "config.json": (limits.CONFIG_MAX_BYTES, "a model config"),
    "metadata.json": (limits.METADATA_MAX_BYTES, "Keras's metadata"),
}


def archive_metadata(path: str) -> dict:
    """Read a `.keras` archive's metadata without Keras, checking that it is one.

    Everything Keras will read is checked first, within `lossmap.limits`: declared and
    actual sizes, checksums, and config.json and metadata.json as JSON.
    """
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; give a .keras archive or a factory file.py:function")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory (a SavedModel?); lossmap reads .keras archives: "
                        "save with model.save('model.keras')")
    if path.endswith((".h5", ".hdf5")):
        return h5_metadata(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":  # a zip's first entry, but no central directory at the end
                raise UserError(f"{name} is truncated or damaged (a zip file cut short); save the model "
                                "again with model.save('model.keras')")
        raise UserError(f"{name} is not a .keras archive (not a zip file); save the model with "
                        "model.save('model.keras')")
    with limits.open_zip(path, name, KERAS_FIX) as zf:
        infos = {i.filename: i for i in limits.check_members(zf, os.path.getsize(path), name, KERAS_FIX, ARCHIVE_JSON)}
        if "config.json" not in infos:
            raise UserError(f"{name} is a zip file but not a Keras archive (no config.json inside); "
                            "save the model with model.save('model.keras')")
        read = {}
        for member, info in infos.items():  # every member inflated once, checksums checked
            cap = ARCHIVE_JSON.get(member, (None,))[0]
            keep = cap is not None or (member.endswith((".h5", ".npz")) and info.compress_type != zipfile.ZIP_STORED)
            read[member] = limits.read_member(zf, info, name, KERAS_FIX, keep=keep, cap=cap)
        for member, info in infos.items():  # the weights' own arrays (HDF5 and .npz compress, too)
            if member.endswith((".h5", ".npz")):
                _check_weights_file(path, info, read[member], f"{name}: {limits.shown(member)}")
    config = limits.parse_json(read["config.json"], f"{name}: config.json", KERAS_FIX)
    if not isinstance(config, dict):
        raise UserError(f"{name}: config.json holds {_json_kind(config)}, not a model config; {KERAS_FIX}")
    _check_compile_config(config.get("compile_config"), f"{name}: config.json", KERAS_FIX)
    guards.check_layer_graph(config, f"{name}: config.json", KERAS_FIX)
    meta = {}
    if "metadata.json" in read:
        meta = _checked_metadata(limits.parse_json(read["metadata.json"], f"{name}: metadata.json", KERAS_FIX), name)
    weights = sum(info.file_size for member, info in infos.items() if member.startswith("model.weights."))
    return {**meta, "weights_bytes": weights}


def _check_weights_file(path, info, data, label):
    """The datasets of an HDF5 weights member, or the arrays of an .npz one, against what they store."""
    source = limits.MemberWindow(path, info) if info.compress_type == zipfile.ZIP_STORED else io.BytesIO(data)
    with contextlib.closing(source):
        if info.filename.endswith(".h5"):
            limits.check_h5(source, label, KERAS_FIX, info.file_size)
            return
        try:
            inner = zipfile.ZipFile(source)
        except limits.ZIP_ERRORS as exc:
            raise UserError(f"{label} is not a NumPy .npz file ({type(exc).__name__}); {KERAS_FIX}") from exc
        with inner:
            npz_headers(inner, info.file_size, label, KERAS_FIX)


def _check_compile_config(compile_config, label, fix):
    """Refuse a compile config nested deeper than `limits.COMPILE_CONFIG_MAX_DEPTH` (see there why),
    or whose loss weights are not numbers (tf_keras takes any value and fails only when it multiplies)."""
    depth = limits.json_depth(compile_config, limits.COMPILE_CONFIG_MAX_DEPTH + 1)
    if depth > limits.COMPILE_CONFIG_MAX_DEPTH:
        raise UserError(f"{label}: its compile config (optimizer, loss, metrics) is nested over "
                        f"{limits.COMPILE_CONFIG_MAX_DEPTH} levels deep, which a model's compile() never writes; {fix}")
    weights = compile_config.get("loss_weights") if isinstance(compile_config, dict) else None
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in _leaves(weights)):
        raise UserError(f"{label}: its compile config gives loss_weights {limits.shown(json.dumps(weights), 60)}, "
                        f"not numbers; {fix}")


def _leaves(value):
    """The scalars of a JSON structure (a structure of loss weights follows the outputs')."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def _checked_metadata(meta, name) -> dict:
    """metadata.json as lossmap uses it: an object whose keras_version, when there, is a version string."""
    if not isinstance(meta, dict):
        raise UserError(f"{name}: metadata.json holds {_json_kind(meta)}, not Keras's metadata; {KERAS_FIX}")
    version = meta.get("keras_version")
    if version is not None and not (isinstance(version, str) and limits.VERSION_PATTERN.fullmatch(version)):
        raise UserError(f"{name}: metadata.json gives keras_version {limits.shown(json.dumps(version), 40)}, not a "
                        f"version string; {KERAS_FIX}")
    return meta


def _json_kind(value) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def import_modules(modules):
    for module in modules or ():
        try:
            if module.endswith(".py") or os.sep in module:
                _import_file(module)
            else:
                importlib.import_module(module)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"--import {module} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def import_file_or_module(where: str, imports=()):
    """The module a `--step` names: a file path imported as its own module, or `package.module`."""
    import_modules(imports)
    if where.endswith(".py") or os.sep in where:
        if not os.path.exists(where):
            raise UserError(f"{where}: no such file")
        try:
            return _import_file(where)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"importing {where} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise UserError(f"cannot import {where}: {type(exc).__name__}: {_first_line(exc)}") from exc


def _import_file(path):
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    mod_name = "lossmap_user_" + os.path.splitext(os.path.basename(path))[0]
    cached = sys.modules.get(mod_name)
    if cached is not None:
        if os.path.abspath(getattr(cached, "__file__", "") or "") == os.path.abspath(path):
            return cached
        # another file with the same name (dir_a/model.py, dir_b/model.py): a module of its own
        mod_name += "_" + format(abs(hash(os.path.abspath(path))), "x")[:8]
        if mod_name in sys.modules:
            return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[mod_name]
        raise
    return module


def is_factory_spec(spec: str) -> bool:
    if ":" not in spec:
        return False
    left, _, right = spec.rpartition(":")
    if not right.isidentifier():
        return False
    return left.endswith(".py") or all(part.isidentifier() for part in left.split("."))


def factory_takes_module(spec: str) -> bool:
    """Whether the factory `spec` accepts the Keras module as its first argument (`def build(keras=None)`)."""
    import inspect

    fn = _factory_function(spec)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)


def _factory_function(spec: str):
    left, _, fn_name = spec.rpartition(":")
    try:
        module = _import_file(left) if left.endswith(".py") else importlib.import_module(left)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not import the factory module {left}: {type(exc).__name__}: {_first_line(exc)}") from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        own = sorted(n for n, v in vars(module).items() if isinstance(v, types.FunctionType) and not n.startswith("_")
                     and getattr(v, "__module__", None) == module.__name__)
        listed = f"; it defines {', '.join(own)}" if own else ""
        raise UserError(f"{left} has no function {fn_name}{listed}: name the function that builds "
                        f"the model after the colon ({left}:FUNCTION)")
    return fn


def _call_factory(spec: str, keras_module=None):
    fn = _factory_function(spec)
    try:
        return fn() if keras_module is None else fn(keras_module)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the factory {spec} raised {type(exc).__name__}: {_first_line(exc)} "
                        "(fix the factory; run with --debug for the traceback)") from exc


def h5_metadata(path: str) -> dict:
    """Check a legacy HDF5 model file and read what Keras wrote at its root, without Keras."""
    name = os.path.basename(path)
    with open(path, "rb") as fh:
        if fh.read(8) != HDF5_SIGNATURE:
            raise UserError(f"{name} is not an HDF5 file; save the model with model.save('model.keras') "
                            "(Keras 3), or model.save('model.h5') with tf_keras")
    try:
        import h5py

        with h5py.File(path, "r") as f:
            attrs = {k: _attr_text(f.attrs[k]) for k in ("keras_version", "backend", "model_config", "training_config")
                     if k in f.attrs}
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{name} is an HDF5 file that cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
                        "save the model again (model.save('model.keras') with Keras 3, or "
                        "model.save('model.h5') with tf_keras)") from exc
    limits.check_h5(path, name, H5_FIX, os.path.getsize(path))
    if "model_config" not in attrs:
        raise UserError(f"{name} holds weights only (no model config in the HDF5 file); lossmap needs the whole "
                        "model: save it with model.save('model.h5') (tf_keras) or model.save('model.keras')")
    config = attrs["model_config"]
    if len(config) > limits.CONFIG_MAX_BYTES:
        raise UserError(f"{name}: its model config is {limits.size_text(len(config))}, over lossmap's limit of "
                        f"{limits.size_text(limits.CONFIG_MAX_BYTES)} for a model config; {H5_FIX}")
    parsed = limits.parse_json(_utf8(config), f"{name}: the model config", H5_FIX)
    if not isinstance(parsed, dict):
        raise UserError(f"{name}: its model config is not a JSON object; {H5_FIX}")
    guards.check_layer_graph(parsed, f"{name}: the model config", H5_FIX)
    training = attrs.get("training_config")
    if training is not None:
        if len(training) > limits.CONFIG_MAX_BYTES:
            raise UserError(f"{name}: its training config is {limits.size_text(len(training))}, over lossmap's limit "
                            f"of {limits.size_text(limits.CONFIG_MAX_BYTES)}; {H5_FIX}")
        parsed = limits.parse_json(_utf8(training), f"{name}: the training config", H5_FIX)
        _check_compile_config(parsed, name, H5_FIX)
    version = attrs.get("keras_version")
    if version is not None and not limits.VERSION_PATTERN.fullmatch(version):
        raise UserError(f"{name}: keras_version {limits.shown(version, 40)} is not a version string; {H5_FIX}")
    return {"format": "h5", "keras_version": attrs.get("keras_version"), "backend": attrs.get("backend"),
            "weights_bytes": os.path.getsize(path)}


def _utf8(text: str) -> bytes:
    """An attribute's text as the bytes it was (h5py keeps bytes that are not UTF-8 as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


def _attr_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def engine_for(requested: str = "auto", metadata: Optional[dict] = None, obj: Any = None):
    """(engine name, reason) for a model: see the module docstring. Never imports Keras."""
    if requested not in ENGINES:
        raise UserError(f"unknown engine {requested!r}; choose auto, keras3 or tf_keras")
    legacy_env = os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true")
    if obj is not None:
        actual = engine_of(obj)
        what = "a tf_keras model (tf_keras.Model)" if actual == "tf_keras" else "a Keras 3 model (keras.Model)"
        if requested not in ("auto", actual):
            raise UserError(f"--engine {requested} was asked for, but the model is {what}: run with "
                            f"--engine {actual} (or auto)")
        return actual, f"the model is {what}"
    meta = metadata or {}
    version = meta.get("keras_version")
    h5 = meta.get("format") == "h5"
    kind = "HDF5 file" if h5 else "archive"
    if requested == "tf_keras":
        if version and str(version).startswith("3") and not h5:
            raise UserError(f"the archive was saved by Keras {version}, which tf_keras cannot load: "
                            "use --engine keras3 (or auto)")
        return "tf_keras", "--engine tf_keras"
    if requested == "keras3":
        return "keras3", "--engine keras3"
    if version and str(version).startswith("2"):
        return "tf_keras", f"the {kind} was saved by Keras {version} (tf_keras)"
    if version and str(version).startswith("3"):
        return "keras3", f"the {kind} was saved by Keras {version}"
    if h5:
        return "tf_keras", "a legacy HDF5 file that does not say which Keras saved it"
    if legacy_env:
        return "tf_keras", "TF_USE_LEGACY_KERAS=1"
    return "keras3", "the default (nothing asks for tf_keras)"


def choose_engine(requested: str = "auto", metadata: Optional[dict] = None, obj: Any = None):
    """The engine for a model (see `engine_for`); its `reason` attribute says why."""
    name, reason = engine_for(requested, metadata, obj)
    eng = make_engine(name)
    eng.reason = reason
    return eng


def load(model, *, imports=(), unsafe=False, engine="auto", keras_module=None) -> Loaded:
    """Resolve MODEL (a path, a factory spec or a live model) to a `Loaded`.

    `keras_module`: for a factory that takes the Keras module as its argument
    (`def build(keras): ...`), the module to pass (`lossmap report --compare-engines`).
    """
    if not isinstance(model, (str, os.PathLike)):
        eng = choose_engine(engine, obj=model) if _looks_like_model(model) else choose_engine(engine)
        if not eng.is_model(model):
            raise UserError(f"expected a Keras model, got {type(model).__name__}")
        return Loaded(model, eng, f"<live model {model.name}>", None, owned=False, engine_reason=eng.reason)
    spec = os.fspath(model)
    if imports or (not os.path.exists(spec) and is_factory_spec(spec)):
        import_backend()  # before user code, which imports it too: TensorFlow talks on fd 2 at import
    import_modules(imports)
    if not os.path.exists(spec) and is_factory_spec(spec):
        built = _call_factory(spec, keras_module)
        if not _looks_like_model(built):
            raise UserError(f"the factory {spec} returned {type(built).__name__}, not a Keras model")
        eng = choose_engine(engine, obj=built)
        if not eng.is_model(built):
            raise UserError(f"the factory {spec} returned {type(built).__name__}, not a Keras model")
        return Loaded(built, eng, spec, None, owned=True, engine_reason=eng.reason)
    meta = archive_metadata(spec)
    eng = choose_engine(engine, meta)
    loaded = load_archive(eng, spec, meta, safe_mode=not unsafe)
    return Loaded(loaded, eng, spec, meta.get("keras_version"), owned=True, engine_reason=eng.reason)


def load_archive(eng, path: str, meta: dict, safe_mode: bool = True):
    """`eng.load_archive(path)` within lossmap's guards (`lossmap.guards`).

    The variables the config makes Keras create are bounded by the weights the file
    holds (`meta["weights_bytes"]`, from `archive_metadata`), and what Keras warns about
    a file it then refuses is left to the one-line error.
    """
    budget = guards.VariableBudget(path, meta.get("weights_bytes"))
    with guards.held_back(), budget.watching(eng.name, eng.backend_name):
        try:
            model = eng.load_archive(path, safe_mode=safe_mode)
        except UserError as exc:
            budget.check(exc)
            raise
    budget.check()
    if not eng.is_model(model):  # a config Keras deserialized into something else (its "config" key renamed...)
        raise UserError(f"{os.path.basename(path)}: config.json does not describe a Keras model (Keras built "
                        f"{limits.shown(type(model).__name__, 40)} from it); {KERAS_FIX}")
    guards.check_sample_size(model, path)
    return model


def _looks_like_model(obj) -> bool:
    """A Keras 3 or tf_keras model, by its classes' names and modules (no Keras import)."""
    for c in type(obj).__mro__:
        top = (c.__module__ or "").split(".")[0]
        if c.__name__ == "Model" and top in ("keras", "tf_keras"):
            return True
    return False


def _first_line(exc) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
