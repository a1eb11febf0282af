"""Stage 1: turn what the user named into a live model and the engine that explains it.

MODEL is a `.keras` archive, a factory `path/to/file.py:function` or
`package.module:function`, or (from Python) a live model object.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import types
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

from lossmap.errors import UserError


@dataclass
class Loaded:
    model: Any
    engine: Any
    source: str
    saved_with: Optional[str]
    owned: bool  # lossmap created this model object (archive or factory)


def archive_metadata(path: str) -> dict:
    """Read a `.keras` archive's metadata without Keras, checking that it is one."""
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; give a .keras archive or a factory file.py:function")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory (a SavedModel?); lossmap reads .keras archives: "
                        "save with model.save('model.keras')")
    if path.endswith((".h5", ".hdf5")):
        raise UserError(f"{name} is a legacy HDF5 file, which needs the tf_keras engine; "
                        "it is not available in this version of lossmap: re-save it as .keras")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":  # a zip's first entry, but no central directory at the end
                raise UserError(f"{name} is truncated or damaged (a zip file cut short); save the model "
                                "again with model.save('model.keras')")
        raise UserError(f"{name} is not a .keras archive (not a zip file); save the model with "
                        "model.save('model.keras')")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise UserError(f"{name} is a zip file but not a Keras archive (no config.json inside); "
                                "save the model with model.save('model.keras')")
            bad = zf.testzip()
            if bad is not None:
                raise UserError(f"{name} is damaged ({bad} fails its checksum); save the model again")
            meta = {}
            if "metadata.json" in names:
                meta = json.loads(zf.read("metadata.json").decode("utf-8"))
            json.loads(zf.read("config.json").decode("utf-8"))
            return meta
    except UserError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"{name} is truncated or damaged ({type(exc).__name__}); save the model again") from exc


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


def _call_factory(spec: str):
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
    try:
        return fn()
    except Exception as exc:
        raise UserError(f"the factory {spec} raised {type(exc).__name__}: {_first_line(exc)} "
                        "(fix the factory; run with --debug for the traceback)") from exc


def choose_engine(requested: str = "auto", metadata: Optional[dict] = None):
    if requested == "tf_keras" or os.environ.get("TF_USE_LEGACY_KERAS") == "1" and requested == "auto":
        raise UserError("the tf_keras engine is not available in this version of lossmap; use --engine keras3")
    if metadata and str(metadata.get("keras_version", "3")).startswith("2") and requested == "auto":
        raise UserError(f"the archive was saved by Keras {metadata['keras_version']} (tf_keras), which "
                        "this version of lossmap cannot explain yet; re-save it with Keras 3")
    if requested not in ("auto", "keras3"):
        raise UserError(f"unknown engine {requested!r}; choose auto, keras3 or tf_keras")
    from lossmap.engines.keras3 import Keras3Engine

    return Keras3Engine()


def load(model, *, imports=(), unsafe=False, engine="auto") -> Loaded:
    """Resolve MODEL (a path, a factory spec or a live model) to a `Loaded`."""
    if not isinstance(model, (str, os.PathLike)):
        eng = choose_engine(engine)
        if not eng.is_model(model):
            raise UserError(f"expected a Keras model, got {type(model).__name__}")
        return Loaded(model, eng, f"<live model {model.name}>", None, owned=False)
    spec = os.fspath(model)
    import_modules(imports)
    if not os.path.exists(spec) and is_factory_spec(spec):
        eng = choose_engine(engine)
        built = _call_factory(spec)
        if not eng.is_model(built):
            raise UserError(f"the factory {spec} returned {type(built).__name__}, not a Keras model")
        return Loaded(built, eng, spec, None, owned=True)
    meta = archive_metadata(spec)
    eng = choose_engine(engine, meta)
    loaded = eng.load_archive(spec, safe_mode=not unsafe)
    return Loaded(loaded, eng, spec, meta.get("keras_version"), owned=True)


def _first_line(exc) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
