"""Keras 3 on JAX: what the custom-training-code stage (`lossmap.steps`) needs to know about this backend.

The loss side is the TensorFlow engine's (`lossmap.engines.keras3.steps`: probes, how a call of
`compute_loss` expands, `model.losses`, optimizer and metric classes). What differs: overrides are
judged against `JAXTrainer.train_step`, batches become JAX arrays, gradients are JAX arrays already
dense. A `compute_loss` override is explained through Keras's default step written out
(`lossmap.steps.default_step`), whose tape here is `REPLAY` (`_ReplayTape`):
JAX records nothing, so the tape's block is run again as a function of the trainable variables'
values (`stateless_call`, then the instrumented override in a `StatelessScope`, as
`JAXTrainer.compute_loss_and_updates` runs it) and differentiated with `jax.vjp`. The real step it is
verified against is `JAXTrainer.train_step(state, data)` (`real_default_step`).
"""
from __future__ import annotations

import contextlib
import inspect
import types

import numpy as np

from lossmap.engines.keras3 import steps as _keras3_steps
from lossmap.engines.keras3.steps import (  # noqa: F401  (the engine reads them from this module)
    Expansion,
    additional_for,
    builtin_loss_name,
    first_update,
    metric_classes,
    optimizer_classes,
    probe,
    training_layers,
    variable_namer,
)


def overrides(model) -> dict:
    """{"train_step": function or None, "compute_loss": function or None}: against `JAXTrainer`."""
    from keras.src.backend.jax.trainer import JAXTrainer

    return _keras3_steps.overrides(model, JAXTrainer)


def refusal(model, step_fn):
    """Why custom training code is not explained on JAX, in one line (`Engine.custom_code_refusal`);
    None for a `compute_loss` override alone (Keras's default step, with `REPLAY` as its tape).

    lossmap.steps follows a step's loss to the `tape.gradient` call that differentiates it and
    takes each addend's gradient on that tape; a `train_step(state, data)` of the user's (or a
    `--step` function) differentiates inside `jax.value_and_grad`, which has no tape to record on
    and runs the function it differentiates with tracers.
    """
    found = overrides(model)
    cls = type(model).__name__
    if step_fn is not None:
        what = f"the training step {getattr(step_fn, 'spec', None) or 'given with --step'}"
    elif found["train_step"] is not None:
        what = f"{cls} overrides train_step({', '.join(list(inspect.signature(found['train_step']).parameters)[1:])})"
    else:
        return None
    return (f"lossmap does not explain a custom training step on the JAX backend yet ({what}): it follows a "
            "loss to a GradientTape, and JAX differentiates it inside jax.value_and_grad; run it with "
            "KERAS_BACKEND=tensorflow, override compute_loss instead (explained on JAX), or check the model "
            "without the override")


def expand_keras_loss(engine, model, sig, call, loss_probe):
    """Keras 3's expansion of a `compute_loss` call, without Keras importing TensorFlow for a loss's config."""
    from lossmap.engines.common.helpers import tensorflow_left_alone

    with tensorflow_left_alone():
        return _keras3_steps.expand_keras_loss(engine, model, sig, call, loss_probe)


def real_default_step(model):
    """The model's real step, called like `keras_train_step`: `JAXTrainer.train_step(state, data)` on the
    model's current state, eagerly; its logs (the optimizer's `apply`, inside `stateless_apply`, is what
    lossmap's optimizer spy sees; the returned state is dropped)."""
    from lossmap.engines.keras3_jax.train_step import stateless_train_step

    def call(_model, x, y, sample_weight=None):
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        return stateless_train_step(model, (x, y) if sample_weight is None else (x, y, sample_weight))
    return call


class _ReplayTape:
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
            from lossmap.engines.keras3_jax.capture import linearise_default_step

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


REPLAY = types.SimpleNamespace(GradientTape=_ReplayTape, IndexedSlices=type("IndexedSlices", (), {}))


def dense_gradient(g):
    return None if g is None else np.array(g)


def as_tensors(structure):
    import jax.numpy as jnp
    from keras import tree

    return tree.map_structure(lambda a: None if a is None else jnp.asarray(a), structure)
