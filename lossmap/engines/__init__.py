"""The engines, one folder each (`keras3/`, `tf_keras/`, same file names in both), and their registry.

Nothing here imports Keras or TensorFlow until an engine is made:

    >>> from lossmap.engines import engine_class
    >>> engine_class("tf_keras").rules.name
    'tf_keras'
"""
from __future__ import annotations

import importlib

NAMES = ("keras3", "tf_keras")
DEFAULT = "keras3"  # what a model that does not say is explained with
_CLASSES = {
    "keras3": ("lossmap.engines.keras3", "Keras3Engine"),
    "tf_keras": ("lossmap.engines.tf_keras", "TfKerasEngine"),
}


def engine_class(name: str):
    """The `Engine` subclass called `name` (imported, not instantiated: no Keras import)."""
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def make_engine(name: str):
    """A ready engine: TensorFlow imported quietly first, then the engine's Keras."""
    from lossmap.quiet import import_tensorflow

    import_tensorflow()
    return engine_class(name)()  # tf_keras: a UserError saying `pip install tf_keras` when it is missing


def engine_of(obj) -> str:
    """The name of the engine a live model belongs to, by its classes' modules (no Keras import)."""
    return next((n for n in NAMES if n != DEFAULT and engine_class(n).owns(obj)), DEFAULT)


def default_rules():
    """The NumPy rules of the default engine (what `lossmap.terms` uses when given none)."""
    return engine_class(DEFAULT).rules
