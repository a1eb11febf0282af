"""Helpers every engine needs, whatever Keras it knows: NumPy conversion, JSON-safe
configs, dense gradients, metric lists, one-line errors, where user code lives,
batch structures, load errors in words, and the facts engine differences read.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
from typing import Optional

import numpy as np


def as_numpy(t, copy=True):
    """`t` as a NumPy array (a copy unless `copy=False`); a torch tensor's value without its autograd record."""
    if t is None:
        return None
    if hasattr(t, "requires_grad") and hasattr(t, "detach"):  # torch: numpy() refuses a tensor that requires grad
        t = t.detach().cpu()
    return np.array(t) if copy else np.asarray(t)


def jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def dense_grad(tf, g):
    """A gradient as a dense array; Embedding (a gather) yields `tf.IndexedSlices`."""
    if g is None:
        return None
    if isinstance(g, tf.IndexedSlices):
        g = tf.convert_to_tensor(g)
    return np.array(g)


def reg_config(reg):
    if reg is None:
        return None
    try:
        return jsonable(reg.get_config())
    except Exception:
        return None


def call_regularizer(reg, tensor):
    return as_numpy(reg(tensor))


def all_metrics(model):
    try:
        return list(model.metrics)
    except Exception:
        return []


def one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), type(exc).__name__)
    return first[:400]


def builtin_fn_name(loss_fn, loss_base, wrapper_cls, losses_module: str, builtin_names) -> Optional[str]:
    """The name of the built-in loss function `loss_fn` wraps, or None for user code.

    A subclass that overrides `call` or `__call__` is user code, whatever it wraps.
    """
    if not isinstance(loss_fn, wrapper_cls):
        return None
    cls = type(loss_fn)
    if cls.call is not wrapper_cls.call or cls.__call__ is not loss_base.__call__:
        return None
    fn = loss_fn.fn
    if getattr(fn, "__module__", "") != losses_module:
        return None
    name = getattr(fn, "__name__", None)
    return name if name in builtin_names else None


def ignore_class_of(loss) -> Optional[int]:
    """The `ignore_class` a built-in sparse crossentropy was given (a label value it leaves out), or None."""
    value = (getattr(loss, "_fn_kwargs", None) or {}).get("ignore_class")
    return value if isinstance(value, int) else None


def is_builtin_regularizer(reg, regularizers_module: str, builtin_names) -> bool:
    if reg is None:
        return False
    cls = type(reg)
    return cls.__module__ == regularizers_module and cls.__name__ in builtin_names


def _code_of(obj):
    """The class or function whose source defines `obj`'s behaviour."""
    return obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)


def code_origin(obj) -> Optional[dict]:
    """Where the code of a class or function lives: file, first line, qualified name."""
    if obj is None:
        return None
    obj = _code_of(obj)
    try:
        path = inspect.getsourcefile(obj)
        _, line = inspect.getsourcelines(obj)
    except (TypeError, OSError):
        path, line = None, None
    return {
        "module": getattr(obj, "__module__", None),
        "qualname": getattr(obj, "__qualname__", getattr(obj, "__name__", None)),
        "file": path,
        "line": line,
        "kind": "class" if inspect.isclass(obj) else "function",
    }


def pack(kind, names, arrays):
    """Arrays in a model's structure: "single" (the one array), "dict" (by name) or "list"."""
    if kind == "single":
        return arrays[0]
    if kind == "dict":
        return dict(zip(names, arrays))
    return list(arrays)


def int_input_bound(model) -> int:
    """Exclusive bound for synthetic integer inputs: the smallest Embedding's input_dim (2 without one)."""
    bound = None
    for layer in model._flatten_layers(include_self=False):
        if type(layer).__name__ == "Embedding":
            dim = int(layer.input_dim)
            bound = dim if bound is None else min(bound, dim)
    return bound or 2


def gist(exc) -> str:
    """The first line of an error, with the next one when the first only announces it
    ("Exception encountered when calling layer 'norm' ...", "... Example error message for object <Dense>:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if len(lines) > 1 and (first.endswith(":") or first.startswith("Exception encountered when calling")):
        first = f"{first} {lines[1]}"
    return first[:400]


def raised_by_library(exc) -> bool:
    from lossmap.refusals import raised_by_library as by_library

    return by_library(exc)


@contextlib.contextmanager
def calling_the_model(model):
    """The model's own forward pass: what it raises is the model's failure (exit 2, one line), not lossmap's."""
    from lossmap.errors import UserError

    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if raised_by_library(exc):
            raise  # Keras refused the batch: lossmap.refusals says why, with the batch's shapes
        raise UserError(f"model '{getattr(model, 'name', '?')}' fails when it is called on the batch: "
                        f"{type(exc).__name__}: {gist(exc)} (a config value Keras accepted when loading, or the "
                        "model's own code; run with --debug for the traceback)") from exc


@contextlib.contextmanager
def keras_fails_too(model, keras_error):
    """lossmap's own calls of the model's losses and regularizers. When Keras's own compute_loss
    failed on the same pass (`keras_error`), what they raise is the model's failure (exit 2, one
    line); when Keras succeeded, it is lossmap's (it propagates)."""
    from lossmap.errors import UserError

    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if keras_error is None or raised_by_library(exc):
            raise  # lossmap's own failure, or Keras's refusal (lossmap.refusals says why, with the shapes)
        raise UserError(f"model '{getattr(model, 'name', '?')}': Keras cannot compute its loss ({keras_error}), "
                        "and neither can lossmap (a loss or regularizer config value Keras accepted when loading, "
                        "or the model's own code; run with --debug for the traceback)") from exc


def explain_load_error(path, exc) -> str:
    """Why Keras could not load `path`, in one line that says what to do."""
    text = str(exc)
    name = os.path.basename(path)
    if "safe_mode" in text or "unsafe" in text.lower() and "lambda" in text.lower():
        return (f"{name} contains code (such as a Lambda layer) that Keras's safe mode refuses to "
                "load; if you trust the file, run again with --unsafe")
    missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
    if missing:
        module = re.search(r"Full object config: \{'module': '([^']+)'", text)
        module = module.group(1) if module and module.group(1) not in ("builtins", "__main__") else None
        where = f" (defined in module {module})" if module else ""
        how = f"--import {module}" if module else "--import MODULE"
        return (f"{name} uses a custom {missing.group(1)} '{missing.group(2)}'{where} that Keras does not know; "
                f"import the module that defines and registers it with {how} (a module name or path/to/file.py), "
                "or load the model through a factory file.py:function")
    mismatch = weights_mismatch(text)
    if mismatch:
        variable, want, got = mismatch
        layer = variable.rpartition("/")[0] or variable
        return (f"{name}: layer '{layer}' does not match its saved weights: {variable} is {want} in the model's "
                f"config but {got} in its weights file (config and weights of different models); save the model "
                "again with model.save()")
    if "Could not locate" in text or "Unknown" in text and ("layer" in text or "object" in text or "loss" in text):
        first = one_line(exc)
        return (f"{name} uses a custom object Keras does not know ({first}); register it with "
                "--import MODULE (the module that defines it) or load through a factory file.py:function")
    return f"could not load {name} as a Keras 3 model: {gist(exc)}"


# How Keras 3 and tf_keras say that a saved weight has another shape than the variable the config built.
_MISMATCH = (
    re.compile(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\)|torch\.Size\(\[[^\]]*\]\))\. "
               r"Target variable: <Variable path=([^,>]+)"),
    re.compile(r"Cannot assign value to variable '\s*([^':]+)(?::\d+)?': Shape mismatch\.\s*The variable shape "
               r"(\([^)]*\)), and the assigned value shape (\([^)]*\))"),
)


def weights_mismatch(text):
    """(variable path, shape in the model, shape saved) when `text` is a loading error about a weight's shape."""
    keras3, tf_keras = (p.search(text) for p in _MISMATCH)
    if keras3:  # the torch backend prints the value's shape as torch.Size([3, 2])
        saved = re.sub(r"^torch\.Size\(\[([^\]]*)\]\)$", lambda m: str(tuple(int(d) for d in m.group(1).split(",") if d.strip())),
                       keras3.group(2))
        return keras3.group(3).strip(), keras3.group(1), saved
    if tf_keras:
        return tf_keras.group(1).strip(), tf_keras.group(2), tf_keras.group(3)
    return None


def shared_facts(engine, sig) -> dict:
    """The part of `Engine.engine_facts` every engine fills the same way (one replica off TensorFlow)."""
    replicas = 1
    if engine.backend_name == "tensorflow":
        import tensorflow as tf

        replicas = int(tf.distribute.get_strategy().num_replicas_in_sync)
    return {"engine": engine.name, "outputs": len(sig.outputs), "output_names": [o.name for o in sig.outputs],
            "replicas": replicas}


# Layers whose output differs between training and inference (Keras's own classes).
TRAINING_LAYERS = frozenset({
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "BatchNormalization", "RandomFlip", "RandomRotation",
    "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness", "RandomCrop",
})


@contextlib.contextmanager
def tensorflow_left_alone():
    """Keras's `tf.available` answered False for the block while TensorFlow is not imported (JAX, torch).

    Keras asks it where an object might be a TensorFlow one (`serialize_keras_object`, which a
    loss's `get_config` calls, checks for a `tf.TensorShape`), and answering imports TensorFlow
    (3 s). While TensorFlow is not imported no object is a TensorFlow one, so False is the same
    answer; Keras asks again afterwards.
    """
    import sys

    from keras.src.utils import module_utils

    lazy = getattr(module_utils, "tensorflow", None)
    if lazy is None or "tensorflow" in sys.modules or getattr(lazy, "_available", True) is not None:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None
