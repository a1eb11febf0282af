"""Keras 3 on JAX: the training-mode forward pass that captures every term, and the terms as a function.

The capture is the TensorFlow engine's (`lossmap.engines.keras3.capture`): one eager pass of the
model with the loss probes, Keras's own `_compute_loss` on it, each compiled loss and each entry of
`model.losses` as NumPy. JAX records no tape: `keep_tape` is ignored, and the gradient stage
differentiates `term_function` (the same terms, from the trainable variables' values, through
`stateless_call` as `JAXTrainer.compute_loss_and_updates` runs the model) with `jax.vjp`.
For a `compute_loss` override, `linearise_default_step` does the same for Keras's default step
(`lossmap.steps.default_step`): the override's call replayed from the trainable values, every
addend and term it recorded paired with its replayed value (`ReplayTape` differentiates them).
"""
from __future__ import annotations

import contextlib
import inspect
import types

import numpy as np

from lossmap.engines.base import Batch, Capture, Signature
from lossmap.engines.common.helpers import tensorflow_left_alone
from lossmap.engines.keras3 import capture as _keras3


def capture(engine, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
    """One training-mode forward pass and everything the terms need from it (no recorded pass).

    A softmax/sigmoid may leave `_keras_logits` on its output, but the JAX backend's crossentropies
    never read them: the captured logits are dropped, as Keras drops them here.
    """
    with tensorflow_left_alone():
        result = _keras3._capture(engine, model, batch, sig, None)
    for c in result.compiled:
        c.logits = None
    return result


def compiled_targets(engine, model, ys, y_pred, sw) -> list:
    """Each compiled loss times its weight, summed to a scalar, in `CompileLoss._flat_losses` order."""
    ops = engine.keras.ops
    out = []
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is not None:
        if not compile_loss.built:
            compile_loss.build(ys, y_pred)
        for path, loss_fn, weight, _ in compile_loss._flat_losses:
            y_t, y_p, s_w = _keras3._per_output(path, ys, y_pred, sw)
            value = ops.cast(loss_fn(y_t, y_p, s_w), compile_loss.dtype)
            if weight is not None:
                value = ops.multiply(value, weight)
            out.append(ops.sum(value))
    return out


def term_function(engine, model, xs, ys, sw):
    """(f, trainable variables, regularized ones): `f(trainable values)` is the vector of the trunk-sharing terms'
    contributions (compiled, then each add_loss and activity entry of `model.losses`), in inventory
    order, computed with `stateless_call` from the non-trainable variables' current values."""
    import jax.numpy as jnp
    from keras.src import backend

    trainable = list(model.trainable_variables)
    non_trainable = [v.value for v in model.non_trainable_variables]
    regularized = [v for v in trainable if getattr(v, "regularizer", None) is not None]
    kwargs = {"training": True} if model._call_has_training_arg else {}

    def f(values):
        y_pred, _, losses = model.stateless_call(values, non_trainable, xs, return_losses=True, **kwargs)
        mapping = list(zip(trainable, values)) + list(zip(model.non_trainable_variables, non_trainable))
        with backend.StatelessScope(state_mapping=mapping):
            tensors = compiled_targets(engine, model, ys, y_pred, sw)
            # model.losses in the scope: the layers' add_loss entries, then one per regularized variable
            layer_losses = losses[: len(losses) - len(regularized)]
            tensors += [model._aggregate_additional_loss(t) for t in layer_losses]
        return jnp.stack([jnp.asarray(t, jnp.float32) for t in tensors]) if tensors else jnp.zeros((0,))

    return f, trainable, regularized


# ---------------------------------------------------------------- Keras's default step, replayed
def linearise_default_step(recorder, seeds=()):
    """(vjp, {id(recorded tensor): position}, n, trainable variables) for `ReplayTape`.

    `recorder` ran Keras's default step with the model's instrumented `compute_loss`: the override's
    call is found among its Keras calls, and `replay` runs it again from the trainable values. Every
    tensor the recorders kept (addends, the terms of each Keras `compute_loss` call, `model.losses`
    reads, what the override returned) is paired by its key with its replayed value, and `jax.vjp`
    linearises the vector of their sums. `seeds`: (seed state variable, value) as the block found them.
    """
    import jax

    call = next((c for c in recorder.keras_calls.values() if hasattr(c.expansion, "instrumented")), None)
    if call is None:
        raise RuntimeError("the tape's block called no compute_loss override lossmap instrumented: nothing to replay")
    model = call.fn.__self__
    nested = call.expansion.recorder
    originals = _recorded(nested) + [call.result]
    trainable = list(model.trainable_variables)

    def f(values):
        replayed = replay(model, call, nested, values, seeds)
        return _stacked(_recorded(replayed["recorder"]) + [replayed["result"]], len(originals))

    _, vjp = jax.vjp(f, [v.value for v in trainable])
    index = {}
    for i, t in enumerate(originals):
        if t is not None:
            index.setdefault(id(t), i)
    return vjp, index, len(originals), trainable


def replay(model, call, nested, values, seeds=()) -> dict:
    """The override's call again, from the trainable `values`: `stateless_call` with the losses the
    forward pass adds, then the instrumented override in a `StatelessScope` with `model.losses` made
    of them (`JAXTrainer.compute_loss_and_updates`), the seed states put back as `seeds` holds them; its recorder's fields for the run are returned
    ({"recorder": namespace, "result": what it returned}) and the recorder is left as it was."""
    from keras.src import backend
    from keras.src.trainers.trainer import Trainer

    bound = inspect.signature(Trainer.compute_loss).bind(None, *call.args, **call.kwargs).arguments
    kwargs = {"training": True} if model._call_has_training_arg else {}
    trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
    regularized = [v for v in trainable if getattr(v, "regularizer", None) is not None]
    saved, before = dict(vars(nested)), {id(v): value for v, value in seeds}
    with _unprobed(model):
        y_pred, _, losses = model.stateless_call(values, [before.get(id(v), v.value) for v in non_trainable], bound.get("x"),
                                                 return_losses=True, **kwargs)
    args = [y_pred if a is bound.get("y_pred") else a for a in call.args]
    kw = {k: (y_pred if a is bound.get("y_pred") else a) for k, a in call.kwargs.items()}
    vars(nested).update(values={}, keras_calls={}, losses_lists={}, losses_captures={}, factors={}, coefs={},
                        counts=type(nested.counts)(), returned=None, returned_set=False, errors=[],
                        expand_losses=None, on_gradient=None,
                        expand_keras=lambda c: _replayed_expansion(model, c, losses, regularized))
    try:
        with backend.StatelessScope(state_mapping=list(zip(trainable, values)) + list(seeds)):
            if losses:
                model._losses_override.clear()
                model._losses_override = losses
            try:
                result = call.fn(*args, **kw)
            finally:
                if losses:
                    model._losses_override.clear()
        return {"recorder": types.SimpleNamespace(**vars(nested)), "result": result}
    finally:
        vars(nested).clear()
        vars(nested).update(saved)


@contextlib.contextmanager
def _unprobed(model):
    """The forward pass without lossmap's loss probe (`keras3.capture._LossProbe`), which reads each activity
    regularizer's input as NumPy: a replay runs on tracers, and its losses are not the step's."""
    from keras.src.layers.layer import Layer

    add_loss = Layer.add_loss
    swapped = [(layer, layer.activity_regularizer) for layer in model._flatten_layers(include_self=True)
               if isinstance(getattr(layer, "activity_regularizer", None), _keras3._ActivityRecorder)]
    Layer.add_loss = getattr(add_loss, "__wrapped__", add_loss)
    for layer, wrapped in swapped:
        layer.activity_regularizer = wrapped.regularizer
    try:
        yield
    finally:
        Layer.add_loss = add_loss
        for layer, wrapped in swapped:
            layer.activity_regularizer = wrapped


def _replayed_expansion(model, call, losses, regularized):
    """A Keras `compute_loss` call's terms from traced values, in the order of the eager expansion
    (`keras3.steps.expand_keras_loss`): compiled, then each `add_loss` entry, and the regularizers."""
    import keras

    from lossmap.engines.keras3.steps import bound_loss_arguments

    bound = bound_loss_arguments(call)
    ys, y_pred, sw = bound.get("y"), bound.get("y_pred"), bound.get("sample_weight")
    tensors = compiled_targets(types.SimpleNamespace(keras=keras), model, ys, y_pred, sw) if y_pred is not None else []
    tensors += [model._aggregate_additional_loss(t) for t in losses[: len(losses) - len(regularized)]]
    regs = [keras.ops.cast(v.regularizer(v), "float32") for v in regularized]
    return types.SimpleNamespace(tensors=tensors, regularizer_tensors=regs)


def _recorded(rec) -> list:
    """Every tensor a recorder kept, in an order fixed by its keys (the same for a replay of the same code)."""
    out = [rec.values[k] for k in sorted(rec.values)]
    for k in sorted(rec.keras_calls):
        c = rec.keras_calls[k]
        e = c.expansion
        out.append(c.result)
        out += list(getattr(e, "tensors", None) or []) + list(getattr(e, "regularizer_tensors", None) or [])
    for k in sorted(rec.losses_lists):
        out += list(rec.losses_lists[k])
    return out + [rec.returned]


def _stacked(tensors, n):
    import jax.numpy as jnp

    if len(tensors) != n:
        raise RuntimeError(f"the replayed compute_loss recorded {len(tensors)} tensors, the run {n}")
    return jnp.stack([jnp.zeros((), jnp.float32) if t is None or not hasattr(t, "shape") and not
                      isinstance(t, (int, float)) else jnp.sum(jnp.asarray(t, jnp.float32)) for t in tensors])


# ---------------------------------------------------------------- the tape of Keras's default step, replayed
class ReplayTape:
    """`tf.GradientTape` for Keras's default step on JAX (`lossmap.steps.default_step`).

    Nothing is recorded while the block runs. At the first `gradient`, the block (the forward pass and
    the model's `compute_loss`, which is lossmap's instrumented copy of the override) runs again as a
    function of the trainable variables' values, every addend and term the recorder kept paired with
    its replayed value, and is linearised with `jax.vjp`; each `gradient(target, sources)` is then one
    backward pass with a cotangent of ones on the recorded tensors in `target` (a list: their sum).
    """

    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.recorder = None  # lossmap.steps.record.Recorder, handed over by `Recorder.tape` (`bind`)
        self._linear = None
        self.seeds = {}  # id(seed state variable) -> (variable, value before the block's first draw)
        self._next = None

    def bind(self, recorder):
        self.recorder = recorder

    def __enter__(self):
        """Each `SeedGenerator`'s state as the block first draws from it: the replay draws the same numbers."""
        from keras.src.random.seed_generator import SeedGenerator

        self._next = original = SeedGenerator.next
        seeds = self.seeds

        def next(generator, ordered=True):
            seeds.setdefault(id(generator.state), (generator.state, generator.state.value))
            return original(generator, ordered)

        SeedGenerator.next = next
        return self

    def __exit__(self, *exc):
        from keras.src.random.seed_generator import SeedGenerator

        SeedGenerator.next = self._next
        return False

    def stop_recording(self):
        return contextlib.nullcontext()

    def gradient(self, target, sources, **options):
        import jax.numpy as jnp

        if self._linear is None:
            self._linear = linearise_default_step(self.recorder, list(self.seeds.values()))
        vjp, index, n, trainable = self._linear
        cotangent = np.zeros(n, np.float32)
        for t in (target if isinstance(target, (list, tuple)) else [target]):
            if t is None:
                continue
            if id(t) not in index:
                raise RuntimeError("the JAX replay of Keras's default step differentiates only what the step's "
                                   "compute_loss recorded, and this tensor is not one of them")
            cotangent[index[id(t)]] += 1.0
        (grads,) = vjp(jnp.asarray(cotangent))
        by_variable = {id(v): g for v, g in zip(trainable, grads)}
        return [by_variable.get(id(s)) for s in sources]


REPLAY = types.SimpleNamespace(GradientTape=ReplayTape, IndexedSlices=type("IndexedSlices", (), {}))
