"""The engines, one folder each, same file names in every folder, and their registry.

An engine is one Keras implementation on one backend: `keras3/` (Keras 3 on TensorFlow),
`keras3_jax/`, `keras3_torch/` and `tf_keras/` (TensorFlow only). The name a user picks
with `--engine` (and the JSON's `model.engine`) is the Keras implementation; the backend is
Keras's own choice (`KERAS_BACKEND`, else `keras.json`), read here without importing Keras.

Nothing here imports Keras or TensorFlow until an engine is made:

    >>> from lossmap.engines import engine_class
    >>> engine_class("tf_keras").rules.name
    'tf_keras'
"""
from __future__ import annotations

import importlib
import json
import os
import sys

NAMES = ("keras3", "tf_keras")
DEFAULT = "keras3"  # what a model that does not say is explained with
BACKENDS = ("tensorflow", "jax", "torch")  # Keras 3's backends lossmap explains
_CLASSES = {
    ("keras3", "tensorflow"): ("lossmap.engines.keras3", "Keras3Engine"),
    ("keras3", "jax"): ("lossmap.engines.keras3_jax", "Keras3JaxEngine"),
    ("tf_keras", "tensorflow"): ("lossmap.engines.tf_keras", "TfKerasEngine"),
}


def keras_backend() -> str:
    """The backend Keras 3 runs on in this process, decided as `keras.src.backend.config` decides it.

    Once Keras is imported its own answer wins; before, `KERAS_BACKEND`, else the `backend` of
    `$KERAS_HOME/keras.json` (default `~/.keras`), else "tensorflow".
    """
    config = sys.modules.get("keras.src.backend.config")
    if config is not None and hasattr(config, "backend"):
        return config.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as fh:
            return str(json.load(fh).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def engine_class(name: str, backend: str | None = None):
    """The `Engine` subclass for `name` on `backend` (default: Keras's backend for keras3; TensorFlow for
    tf_keras), imported, not instantiated: no Keras import."""
    if backend is None:
        backend = keras_backend() if name == "keras3" else "tensorflow"
    key = (name, backend)
    if key not in _CLASSES:
        from lossmap.errors import UserError

        raise UserError(f"lossmap does not explain {name} on the {backend!r} backend; it explains "
                        + ", ".join(f"{n} on {b}" for n, b in _CLASSES))
    module, cls = _CLASSES[key]
    return getattr(importlib.import_module(module), cls)


def make_engine(name: str, backend: str | None = None):
    """A ready engine: for the TensorFlow backend, TensorFlow imported quietly first, then the engine's Keras."""
    cls = engine_class(name, backend)
    if cls.backend_name == "tensorflow":
        from lossmap.quiet import import_tensorflow

        import_tensorflow()
    return cls()  # tf_keras: a UserError saying `pip install tf_keras` when it is missing


def engine_of(obj) -> str:
    """The name of the engine a live model belongs to, by its classes' modules (no Keras import)."""
    return next((n for n in NAMES if n != DEFAULT and engine_class(n).owns(obj)), DEFAULT)


def default_rules():
    """The NumPy rules of the default engine on TensorFlow (what `lossmap.terms` uses when given none)."""
    return engine_class(DEFAULT, "tensorflow").rules
