"""What lossmap does around Keras's own loading of a file it has checked (`lossmap.limits`).

A config can declare layers far bigger than the weights saved next to it
(`"units": 134217728` costs Keras 14 s and 7.6 GB before it finds that the saved
kernel has another shape). `VariableBudget` counts the bytes of every variable
Keras is about to create while it loads, before the variable's initial value is
computed, and stops the load once they pass what the file's weights can account
for. `held_back` keeps Keras's warnings about a file it then refuses off the
terminal: the one-line error says what is wrong. `check_layer_graph` refuses a
functional graph tf_keras's rebuild loop would wait on for ever.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import warnings

from lossmap import limits
from lossmap.errors import UserError

# Bytes of variables a load may create per byte of saved weights: every weight once,
# and up to 3 optimizer slots per trainable weight (Adam with amsgrad), which Keras 3's
# compile_from_config builds while loading; twice that for margin (an h5 file also
# stores names and attributes, so it is never smaller than the weights it holds).
VARIABLE_BYTES_PER_WEIGHT_BYTE = 8
# What any load may create whatever the file holds (metrics, seed states, small models).
VARIABLE_BYTES_FLOOR = 256 * limits.MiB


class VariableBudget:
    """The bytes of variables Keras may create while loading `path` (see the module docstring)."""

    def __init__(self, path: str, weights_bytes):
        self.name = os.path.basename(path)
        self.weights_bytes = weights_bytes or 0
        self.limit = max(VARIABLE_BYTES_FLOOR, VARIABLE_BYTES_PER_WEIGHT_BYTE * self.weights_bytes)
        self.spent = 0
        self.over = None  # the message, once the limit is passed

    def add(self, shape, dtype, variable):
        """Count a variable about to be created; raise once the budget is spent (before it is allocated)."""
        if self.over is None:
            try:
                dims = [int(d) for d in shape]
                size = int(_dtype_size(dtype))
            except (TypeError, ValueError):  # an unknown dimension or dtype: Keras will say so itself
                return
            self.spent += math.prod(max(d, 0) for d in dims) * size
            if self.spent <= self.limit:
                return
            self.over = (f"{self.name}: its config declares more variables than its weights can fill: "
                         f"{limits.shown(variable, 60)} of shape {tuple(dims)} brings them to "
                         f"{limits.size_text(self.spent)}, for saved weights of "
                         f"{limits.size_text(self.weights_bytes)} (lossmap builds at most "
                         f"{limits.size_text(self.limit)}); save the model again with model.save()")
        raise UserError(self.over)

    def check(self, cause=None):
        """Refuse with the budget's own message when it was passed (Keras may have wrapped or swallowed it)."""
        if self.over is not None:
            raise UserError(self.over) from cause

    @contextlib.contextmanager
    def watching(self, engine: str, backend: str = "tensorflow"):
        """Count every variable created in the body: TensorFlow variables that say their shape
        (tf_keras), and Keras 3 variables before their initializer runs (on any `backend`; TensorFlow
        is only imported for its own)."""

        def creator(next_creator, **kwargs):
            if kwargs.get("shape") is not None and kwargs.get("dtype") is not None:
                self.add(kwargs["shape"], kwargs["dtype"], kwargs.get("name") or "a variable")
            return next_creator(**kwargs)

        cls = original = None
        if engine == "keras3":
            import keras

            # the class that defines it (the backend's Variable, under keras.Variable): every variable gets it
            cls = next((c for c in keras.Variable.__mro__ if "_initialize_with_initializer" in c.__dict__), None)
            original = cls and cls.__dict__["_initialize_with_initializer"]
        if original is not None:
            budget = self

            def counted(variable, initializer):
                budget.add(variable._shape, variable._dtype, getattr(variable, "path", None) or "a variable")
                return original(variable, initializer)

            cls._initialize_with_initializer = counted
        try:
            if backend == "tensorflow":
                import tensorflow as tf

                scope = tf.variable_creator_scope(creator)
            else:
                scope = contextlib.nullcontext()
            with scope:
                yield self
        finally:
            if original is not None:
                cls._initialize_with_initializer = original


def check_sample_size(model, path: str):
    """Refuse a loaded model one sample of whose inputs and outputs exceeds `limits.SAMPLE_MAX_BYTES`."""
    try:
        tensors = [("input", t) for t in getattr(model, "inputs", None) or []] + \
                  [("output", t) for t in getattr(model, "outputs", None) or []]
        sizes = [(kind, t, math.prod(max(int(d or 1), 0) for d in list(t.shape)[1:]) * max(_dtype_size(t.dtype), 4))
                 for kind, t in tensors]
    except Exception:  # noqa: BLE001 - a subclassed model that does not say: the batch limits still apply
        return
    total = sum(n for _, _, n in sizes)
    if total > limits.SAMPLE_MAX_BYTES:
        kind, t, n = max(sizes, key=lambda s: s[2])
        raise UserError(f"{os.path.basename(path)}: one sample of the model's inputs and outputs is "
                        f"{limits.size_text(total)} (its {kind} {limits.shown(getattr(t, 'name', '?'), 40)} of shape "
                        f"{tuple(t.shape)} alone {limits.size_text(n)}), over lossmap's limit of "
                        f"{limits.size_text(limits.SAMPLE_MAX_BYTES)}; save the model again with model.save()")


def _dtype_size(dtype) -> int:
    """Bytes per element of a Keras or TensorFlow dtype (TensorFlow's own answer once it is imported)."""
    name = getattr(dtype, "name", dtype)
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"].as_dtype(name).size
    import numpy as np

    bits = re.search(r"(\d+)$", str(name))
    try:
        return np.dtype(str(name)).itemsize
    except TypeError:  # bfloat16, float8_*: the width its name says
        return int(bits.group(1)) // 8 if bits else 4


# What Keras says on loading a model that was compiled but never trained (its optimizer was not
# built when it was saved): true of most files people hand lossmap, and the loss lossmap explains
# does not depend on the optimizer's state. Not repeated after a load that succeeds.
EXPECTED_ON_LOAD = ("Skipping variable loading for optimizer",)


def _expected(text) -> bool:
    return any(marker in str(text) for marker in EXPECTED_ON_LOAD)


class _Holder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        if all(r is not record for r in self.records):  # a record that reached several handler lists
            self.records.append(record)


@contextlib.contextmanager
def held_back():
    """Python warnings and log records of the body: shown when it succeeds (but EXPECTED_ON_LOAD),
    dropped when it raises.

    Keras warns about a damaged file (weights it skips, containers it cannot match)
    before it refuses it; the refusal is then one line that says what is wrong.
    """
    holder = _Holder()
    loggers = [logging.root] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                if isinstance(lg, logging.Logger) and lg.handlers]
    saved = [(lg, lg.handlers) for lg in loggers]
    last_resort = logging.lastResort
    with warnings.catch_warnings(record=True) as caught:
        for lg, _ in saved:
            lg.handlers = [holder]
        logging.lastResort = holder
        try:
            yield
        finally:
            for lg, handlers in saved:
                lg.handlers = handlers
            logging.lastResort = last_resort
    for w in caught:
        if not _expected(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    records = [r for r in holder.records if not _expected(r.getMessage())]
    if records and not logging.root.handlers and any(r.name == "absl" for r in records):
        logging.basicConfig()  # what absl.logging does before its first record; the hold kept it from it
    for record in records:
        logging.getLogger(record.name).handle(record)


# ---------------------------------------------------------------- tf_keras's functional graph
def check_layer_graph(config, label: str, fix: str):
    """Refuse a functional model whose layer graph tf_keras would wait on for ever.

    tf_keras rebuilds a functional model by calling each layer once the nodes its inputs
    come from exist, and goes round again while any node waits, with no check that a
    round made progress ("Caution: This may lead to infinite loops for malformed network
    configurations!", `reconstruct_from_config`): an inbound node index that no call
    creates (NaN, "0", one past the last) or a cycle hangs it. This replays that loop on
    the config alone, for every functional model in it. Keras 3's loop stops by itself.
    """
    for functional in _functional_configs(config):
        stuck = _replay(functional)
        if stuck:
            raise UserError(f"{label}: layer '{limits.shown(stuck, 60)}' takes its input from a node no layer "
                            f"call creates (a node index out of range, or a cycle): tf_keras would wait for it "
                            f"for ever; {fix}")


def _functional_configs(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("layers"), list) and "input_layers" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _replay(functional):
    """The name of a layer whose node never gets its inputs in tf_keras's loop, or None."""
    layers = [l for l in functional["layers"] if isinstance(l, dict) and isinstance(l.get("name"), str)]
    pending, done, first, kind = {}, {}, {}, {}
    for layer in layers:
        nodes = layer.get("inbound_nodes")
        if not isinstance(nodes, list) or any(isinstance(n, dict) for n in nodes):
            return None  # Keras 3's format (or no list at all: Keras raises on it)
        name = layer["name"]
        pending.setdefault(name, []).extend(nodes)
        done.setdefault(name, 0)
        kind[name] = layer.get("class_name")
        first[name] = _skips_first_node(layer)
    while any(pending.values()):
        progress = False
        for layer in layers:
            queue = pending[layer["name"]]
            while queue:
                ready = _node_ready(queue[0], done, first, kind)
                if ready is None:  # tf_keras raises on this node: no wait
                    return None
                if not ready:
                    break
                queue.pop(0)
                done[layer["name"]] += 1
                progress = True
        if not progress:
            return next(name for name, queue in pending.items() if queue)
    return None


def _skips_first_node(layer) -> int:
    """tf_keras's `_should_skip_first_node`: a nested model built on an Input has a node the config leaves out."""
    config = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    inner = config.get("layers")
    if isinstance(inner, list) and "input_layers" in config:
        return 1
    if layer.get("class_name") == "Sequential" and isinstance(inner, list) and inner:
        return int(isinstance(inner[0], dict) and inner[0].get("class_name") == "InputLayer")
    return 0


def _node_ready(node, done, first, kind):
    """True when every node `node` reads exists, False when one does not yet, None when tf_keras raises."""
    for ref in _node_refs(node):
        if ref is None or len(ref) not in (3, 4):
            return None
        name, index = ref[0], ref[1]
        if name == "_CONSTANT_VALUE":  # a constant input (tf_keras asserts its shape itself)
            continue
        if name not in done:
            return None  # a KeyError in tf_keras
        if kind[name] == "InputLayer":
            continue
        try:
            hash(index)
        except TypeError:
            return None
        if index not in range(first[name], first[name] + done[name]):
            return False
    return True


def _node_refs(node):
    """The [layer, node index, tensor index(, kwargs)] lists a node reads, those inside kwargs
    included (what tf_utils.convert_inner_node_data wraps); None for an input tf_keras cannot read."""
    stack = [(node, True)]
    while stack:
        item, top = stack.pop()
        if isinstance(item, list) and len(item) in (3, 4) and isinstance(item[0], str):
            yield item
            if len(item) == 4:
                stack.append((item[3], False))
        elif isinstance(item, dict):
            stack.extend((v, top) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, top) for v in item)
        elif top:  # an input that is no [layer, node, tensor] list: tf_keras raises on it
            yield None
