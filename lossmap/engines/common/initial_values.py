"""Loading a Keras 3 archive without computing the initial values its weights file then overwrites.

`keras.saving.load_model` builds every variable with its initializer and only then assigns the
archive's values. On JAX each initializer runs op by op outside `jit`, and XLA compiles it once
per variable shape: on the bench model (ResNet50, 756 variables) that is 3.5 s of a 5.2 s load,
spent on random numbers nobody reads. Inside `initial_values_deferred()` a variable starts as
NumPy zeros of its shape and dtype (no compilation); a variable the load then assigns never
needed its initializer, and one it leaves alone (an optimizer's slots when the archive has none)
gets its initializer's value afterwards, unless that value is the zeros or ones it already
holds. The loaded model's variables are the ones `load_model` gives, bit for bit
(tests/test_initial_values.py), except that an unassigned variable with an unseeded random
initializer gets a different draw, as a second `load_model` would give it.

    >>> with initial_values_deferred():                       # doctest: +SKIP
    ...     model = keras.saving.load_model("model.keras")

Not deferred (Keras's own path): variables laid out by a `keras.distribution`, Flax NNX
variables, and dtypes NumPy does not know.
"""
from __future__ import annotations

import contextlib

import numpy as np


@contextlib.contextmanager
def initial_values_deferred():
    """Within: variables start as zeros and remember their initializer. On a clean exit, every one
    that was never assigned gets its initializer's value (see the module docstring)."""
    import keras
    from keras.src.backend import config
    from keras.src.backend.common import global_state

    if config.is_nnx_enabled() or global_state.get_global_attribute("distribution") is not None:
        yield
        return
    # patched where defined (the backend's class, under keras.Variable), so that putting it back leaves no copy
    concrete, base = _defining(keras.Variable, "_initialize_with_initializer"), _defining(keras.Variable, "assign")
    initialize, assign = concrete.__dict__["_initialize_with_initializer"], base.__dict__["assign"]
    pending = {}  # id(variable): (variable, initializer), in creation order

    def deferred(self, initializer):
        start = _placeholder(self._shape, self._dtype, initializer)
        if start is None:
            return initialize(self, initializer)
        value, exact = start
        if not exact:
            pending[id(self)] = (self, initializer)
        return initialize(self, lambda shape, dtype=None: value)

    def assigned(self, value):
        pending.pop(id(self), None)
        return assign(self, value)

    concrete._initialize_with_initializer, base.assign = deferred, assigned
    try:
        yield
    finally:
        concrete._initialize_with_initializer, base.assign = initialize, assign
    for variable, initializer in pending.values():
        variable.assign(initializer(variable.shape, dtype=variable.dtype))


def _defining(cls, name):
    return next(c for c in cls.__mro__ if name in c.__dict__)


def _placeholder(shape, dtype, initializer):
    """(NumPy start value, whether it is already the initializer's value), or None to leave Keras's way."""
    from keras import initializers

    try:
        np_dtype = np.dtype(dtype)
    except TypeError:  # bfloat16, string: not a NumPy dtype name
        return None
    if type(initializer) is initializers.Ones:
        return np.ones(shape, np_dtype), True
    return np.zeros(shape, np_dtype), type(initializer) is initializers.Zeros
