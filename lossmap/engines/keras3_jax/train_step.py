"""Keras 3 on JAX: verification against the real stateless `train_step`, and each term's gradient.

Verification calls `JAXTrainer.train_step(state, data)` eagerly with the model's current state
(trainable, non-trainable, optimizer and metric variables' values), as `train_on_batch` does
without `jit`; the state it returns is discarded, so the model's variables are never written.
The gradient it hands `optimizer.stateless_apply` (compiled, as in `fit`) is recorded for attribution.

Attribution is `jax.vjp` of the terms (`capture.term_function`): one forward pass, then one
backward pass per attribution unit (a cotangent of ones on its terms); the weight regularizers,
which each reach only their own variable, by `jax.grad` of their sum over the regularized
variables alone. The bookkeeping is the TensorFlow engine's (`_Pending`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lossmap.engines.base import Batch, Capture, Signature, Verification
from lossmap.engines.common.train_step import no_optimizer, run_train_step, swap_in_fresh_optimizer
from lossmap.engines.keras3 import train_step as _keras3
from lossmap.engines.keras3_jax.capture import term_function


def verify_train_step(engine, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
    """The loss the model's real stateless `train_step` logs, and (`record_gradient`) the gradient it applied."""
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    notes = []
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return no_optimizer(notes)
    swapped = None
    if not optimizer.built:
        swapped = swap_in_fresh_optimizer(model, optimizer, notes)
        model.optimizer.build(model.trainable_variables)
    recorder = lambda m: _CompiledApply(m.optimizer, m, record_gradient)  # noqa: E731
    verification = run_train_step(model, (xs, ys, sw), notes, swapped, recorder=recorder, step=stateless_train_step)
    verification.path = "stateless train_step(state, data), eager"
    return verification


def stateless_train_step(model, data):
    """`model.train_step(state, data)` on the model's current state; the logs (the new state is dropped)."""
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables],
             [v.value for v in model.optimizer.variables],
             [v.value for v in model.metrics_variables])
    logs, _ = model.train_step(state, data)
    return logs


class _CompiledApply(_keras3._GradientRecorder):
    """`optimizer.stateless_apply` compiled with `jax.jit` for the one step (set on the instance), as
    `fit` runs it inside its jitted step: the same update, compiled once instead of op by op (11 s to
    3 s for ResNet50's Adam); with `record`, the gradients it is handed are kept, when they are the
    plain gradient of the loss (no loss scaling)."""

    method = "stateless_apply"

    def __init__(self, optimizer, model, record=True):
        super().__init__(optimizer, model)
        self.usable = record and self.usable
        self.order = [v.path for v in model.trainable_variables]

    def __enter__(self):
        import jax

        compiled = jax.jit(self.optimizer.stateless_apply)
        recorder = self

        def stateless_apply(optimizer_variables, grads, trainable_variables):
            if recorder.usable and recorder.gradient is None and len(grads) == len(recorder.order):
                recorder.gradient = {p: None if g is None else np.asarray(g) for p, g in zip(recorder.order, grads)}
            return compiled(optimizer_variables, grads, trainable_variables)

        object.__setattr__(self.optimizer, self.method, stateless_apply)
        return self


def _vjp(engine, model, batch, sig):
    """(vjp function, number of trunk-sharing terms, trainable variables, regularized ones)."""
    import jax

    xs, ys, sw = engine.pack_batch(model, sig, batch)
    f, trainable, regularized = term_function(engine, model, xs, ys, sw)
    out, vjp = jax.vjp(f, [v.value for v in trainable])
    return vjp, int(out.shape[0]), trainable, regularized


def _unit_gradient(vjp, n, members, paths) -> dict:
    """{path: gradient} of the sum of the terms at `members`: one backward pass."""
    import jax.numpy as jnp

    cotangent = np.zeros(n, np.float32)
    cotangent[list(members)] = 1.0
    (grads,) = vjp(jnp.asarray(cotangent))
    return {p: np.asarray(g) for p, g in zip(paths, grads)}


def begin_attribution(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                      capture: Optional[Capture] = None, derive: bool = True) -> "_Pending":
    """The backward passes of the trunk-sharing units on one linearised forward pass; `finish` adds the
    derived unit (with `derive`: the real train_step's gradient minus the others) and the regularizers."""
    from lossmap import gradients as gmod

    vjp, n, trainable, regularized = _vjp(engine, model, batch, sig)
    paths = [v.path for v in trainable]
    try:
        if n + len(regularized) != len(terms):
            raise RuntimeError(f"gradient pass found {n + len(regularized)} terms, the inventory {len(terms)}")
        acc = gmod.Accumulator(paths, hold_locals=False)
        notes = []
        plan = list(gmod.plan_units(terms[:n], limit, notes))
        candidate = gmod.derivable_candidate(plan, terms[:n]) if derive and _keras3._records_gradient(model) else None
        later = None
        for unit, members in plan:
            if unit is candidate:
                later = (unit, members)
                continue
            acc.add_shared(unit, _unit_gradient(vjp, n, members, paths))
    finally:
        del vjp  # the linearised pass's residuals go with it, before verification runs another
    local = [(gmod.Unit(t.id, t.id, t.kind, [t.id], False), v) for t, v in zip(terms[n:], regularized)]
    return _Pending(engine, model, batch, sig, acc, notes, later, local)


class _Pending(_keras3._Pending):
    """The TensorFlow engine's pending attribution, with JAX's backward passes."""

    def fresh_gradient(self, members) -> dict:
        vjp, n, trainable, _ = _vjp(self.engine, self.model, self.batch, self.sig)
        return _unit_gradient(vjp, n, members, [v.path for v in trainable])

    def regularizer_gradients(self):
        return _keras3.regularizer_gradients(self.local, _regularizer_batch)


def _regularizer_batch(batch):
    """(unit, path, gradient) of each regularizer in `batch`: `jax.grad` of their sum over their variables."""
    import jax
    import jax.numpy as jnp

    variables = [v for _, v in batch]

    def total(values):
        return jnp.sum(jnp.stack([jnp.asarray(v.regularizer(x), jnp.float32) for v, x in zip(variables, values)]))

    grads = jax.grad(total)([v.value for v in variables])
    for i, (unit, v) in enumerate(batch):
        g, grads[i] = np.asarray(grads[i]), None
        yield unit, v.path, g
