"""Keras 3: verification against the real `train_step`, and each term's gradient.

The step runs eagerly with the gradients it applies recorded (`_GradientRecorder`),
so gradient attribution can derive the largest compiled term's gradient from
them instead of running one more backward pass.
"""
from __future__ import annotations

from typing import Optional

from lossmap.engines.base import Batch, Capture, Signature, Verification
from lossmap.engines.common.helpers import dense_grad
from lossmap.engines.common.train_step import no_optimizer, run_train_step, swap_in_fresh_optimizer
from lossmap.engines.keras3.capture import gradient_targets


def verify_train_step(engine, model, batch: Batch, sig: Signature) -> Verification:
    """The loss the model's real `train_step` logs, and the gradient it applied."""
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    notes = []
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return no_optimizer(notes)
    swapped = swap_in_fresh_optimizer(model, optimizer, notes) if not optimizer.built else None
    return run_train_step(model, (xs, ys, sw), notes, swapped,
                          recorder=lambda m: _GradientRecorder(m.optimizer, m))


class _GradientRecorder:
    """Keeps a copy of the gradients `train_step` hands to `optimizer.apply_gradients`.

    Set on the optimizer instance for the one step and removed after; only kept
    when they are the plain gradient of the loss (no loss scaling).
    """

    def __init__(self, optimizer, model):
        self.optimizer = optimizer
        self.usable = type(optimizer).__name__ != "LossScaleOptimizer"
        self.paths = {id(v): v.path for v in model.trainable_variables}
        self.gradient = None

    def __enter__(self):
        import tensorflow as tf

        original = self.optimizer.apply_gradients
        recorder = self

        def apply_gradients(grads_and_vars, *args, **kwargs):
            pairs = list(grads_and_vars)
            if recorder.usable and recorder.gradient is None:
                recorder.gradient = {recorder.paths.get(id(v), getattr(v, "path", None)): dense_grad(tf, g)
                                     for g, v in pairs}
            return original(pairs, *args, **kwargs)

        object.__setattr__(self.optimizer, "apply_gradients", apply_gradients)
        return self

    def __exit__(self, *exc):
        try:
            object.__delattr__(self.optimizer, "apply_gradients")
        except AttributeError:
            pass
        return False


def _taped_targets(engine, model, batch, sig, capture):
    """(tape, term tensors, regularized variables, their regularizers' sum): the capture's, or a new pass."""
    import tensorflow as tf

    context = getattr(capture, "gradient_context", None) if capture is not None else None
    if context is not None:
        capture.gradient_context = None  # the tape is used once, then released
        return context
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
        tensors, regularized, reg_sum = gradient_targets(engine, model, ys, y_pred, sw)
    return tape, tensors, regularized, reg_sum


def attribute_gradients(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                        total_gradient: Optional[dict] = None, capture: Optional[Capture] = None):
    """Per-term gradients of one taped training-mode forward pass, folded into an Accumulator.

    `terms` are the inventory's terms in capture order; the same pass (same
    seeds) yields the same tensors in the same order. With `total_gradient`
    (what the real train_step applied, same seeds), the largest compiled
    term's gradient is that total minus all the others: one backward pass fewer.
    """
    import tensorflow as tf
    from lossmap import gradients as gmod

    variables = list(model.trainable_variables)
    paths = [v.path for v in variables]
    tape, tensors, regularized, reg_sum = _taped_targets(engine, model, batch, sig, capture)
    if len(tensors) + len(regularized) != len(terms):
        raise RuntimeError(f"gradient pass found {len(tensors) + len(regularized)} terms, "
                           f"the inventory {len(terms)}")
    shared_terms = terms[: len(tensors)]
    acc = gmod.Accumulator(paths)
    notes = []
    try:
        plan = list(gmod.plan_units(shared_terms, limit, notes))
        derived = gmod.derivable_unit(plan, shared_terms, total_gradient, paths)
        reg_grads = {}
        if regularized:
            grads = tape.gradient(reg_sum, regularized)
            reg_grads = {v.path: dense_grad(tf, g) for v, g in zip(regularized, grads)}
        for unit, members in plan:
            if unit is derived:
                continue
            # A list of targets is differentiated as their sum, in one backward pass.
            grads = tape.gradient([tensors[i] for i in members], variables)
            acc.add_shared(unit, {p: dense_grad(tf, g) for p, g in zip(paths, grads)})
        if derived is not None:
            acc.add_shared(derived, acc.remainder(total_gradient, reg_grads))
            notes.append(f"{derived.label}'s gradient is the gradient the real train_step applied minus "
                         "every other term's (one backward pass saved)")
        for term, v in zip(terms[len(tensors):], regularized):
            unit = gmod.Unit(term.id, term.id, term.kind, [term.id], False)
            acc.add_local(unit, v.path, reg_grads.get(v.path))
    finally:
        del tape
    return acc, notes
