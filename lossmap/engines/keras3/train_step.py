"""Keras 3: verification against the real `train_step`, and each term's gradient.

Attribution comes in two phases around verification: `begin_attribution` takes the
backward passes that need the capture's taped forward pass and releases it, so that
verification's own pass never runs beside it; `finish` adds the rest. The step runs
eagerly with the gradients it applies recorded (`_GradientRecorder`), so `finish`
derives the largest compiled term's gradient from them instead of running one more
backward pass, and each weight regularizer's from its own variable.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from lossmap.engines.base import Batch, Capture, Signature, Verification
from lossmap.engines.common.train_step import no_optimizer, run_train_step, swap_in_fresh_optimizer
from lossmap.engines.keras3.capture import term_targets


def verify_train_step(engine, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
    """The loss the model's real `train_step` logs, and (`record_gradient`) the gradient it applied."""
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    notes = []
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return no_optimizer(notes)
    swapped = swap_in_fresh_optimizer(model, optimizer, notes) if not optimizer.built else None
    recorder = (lambda m: _GradientRecorder(m.optimizer, m)) if record_gradient else None
    return run_train_step(model, (xs, ys, sw), notes, swapped, recorder=recorder)


class _GradientRecorder:
    """Keeps the gradients `train_step` hands to `optimizer.apply_gradients` (the tensors, not copies).

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
                recorder.gradient = {recorder.paths.get(id(v), getattr(v, "path", None)): _as_array(tf, g)
                                     for g, v in pairs}
            return original(pairs, *args, **kwargs)

        object.__setattr__(self.optimizer, "apply_gradients", apply_gradients)
        return self

    method = "apply_gradients"  # the optimizer method set on the instance for the step

    def __exit__(self, *exc):
        try:
            object.__delattr__(self.optimizer, self.method)
        except AttributeError:
            pass
        return False


def _taped_targets(engine, model, batch, sig, capture):
    """(tape, term tensors, regularized variables): the capture's recorded pass, or a new one."""
    import tensorflow as tf

    context = getattr(capture, "gradient_context", None) if capture is not None else None
    if context is not None:
        capture.gradient_context = None  # the tape is used once, then released
        return context
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
        tensors, regularized = term_targets(engine, model, ys, y_pred, sw)
    return tape, tensors, regularized


def _as_array(tf, g):
    """A gradient as a NumPy array over the tensor's own buffer (no copy); Embedding's `IndexedSlices` made dense."""
    if g is None:
        return None
    if isinstance(g, tf.IndexedSlices):
        g = tf.convert_to_tensor(g)
    return np.asarray(g)


def _gradient(tf, tape, targets, variables, paths) -> dict:
    """{path: gradient} of the sum of `targets`, one backward pass; each tensor converted as it is taken."""
    grads = tape.gradient(targets, variables)
    out = {}
    for i, path in enumerate(paths):
        out[path], grads[i] = _as_array(tf, grads[i]), None
    return out


def _records_gradient(model) -> bool:
    """Whether verification can record the plain gradient of the loss (an optimizer, no loss scaling)."""
    optimizer = getattr(model, "optimizer", None)
    return optimizer is not None and type(optimizer).__name__ != "LossScaleOptimizer"


def begin_attribution(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                      capture: Optional[Capture] = None, derive: bool = True) -> "_Pending":
    """The backward passes that need the taped forward pass (the capture's, else a new one), which is
    then released; `finish` adds the rest.

    `terms` are the inventory's terms in capture order; the same pass (same seeds) yields
    the same tensors in the same order. With `derive`, the largest compiled term is left
    for `finish`, to be taken as the real train_step's gradient minus all the others.
    """
    import tensorflow as tf
    from lossmap import gradients as gmod

    variables = list(model.trainable_variables)
    paths = [v.path for v in variables]
    tape, tensors, regularized = _taped_targets(engine, model, batch, sig, capture)
    try:
        if len(tensors) + len(regularized) != len(terms):
            raise RuntimeError(f"gradient pass found {len(tensors) + len(regularized)} terms, "
                               f"the inventory {len(terms)}")
        shared_terms = terms[: len(tensors)]
        # one regularizer per variable: nothing to hold for a second one on the same variable
        acc = gmod.Accumulator(paths, hold_locals=False)
        notes = []
        plan = list(gmod.plan_units(shared_terms, limit, notes))
        candidate = gmod.derivable_candidate(plan, shared_terms) if derive and _records_gradient(model) else None
        later = None
        for unit, members in plan:
            if unit is candidate:
                later = (unit, members)
                continue
            acc.add_shared(unit, _gradient(tf, tape, [tensors[i] for i in members], variables, paths))
    finally:
        del tape  # the forward pass's activations go with it, before verification runs another
    local = [(gmod.Unit(t.id, t.id, t.kind, [t.id], False), v) for t, v in zip(terms[len(tensors):], regularized)]
    return _Pending(engine, model, batch, sig, acc, notes, later, local)


class _Pending:
    """An attribution whose derived unit and weight regularizers are still to come (`finish`)."""

    def __init__(self, engine, model, batch, sig, acc, notes, later, local):
        self.engine, self.model, self.batch, self.sig = engine, model, batch, sig
        self.acc, self.notes, self.later, self.local = acc, notes, later, local

    @property
    def wants_total_gradient(self) -> bool:
        """Whether `finish` can use what the real train_step applied (it saves a backward pass)."""
        return self.later is not None

    def finish(self, total_gradient: Optional[dict] = None):
        """(Accumulator, notes): the derived unit from `total_gradient` (or a backward pass of a new
        taped forward pass when there is none), and each weight regularizer, variable by variable."""
        from lossmap import gradients as gmod

        acc = self.acc
        derived = None
        if self.later is not None:
            unit, members = self.later
            if gmod.complete(total_gradient, acc.variables):
                derived = unit
                acc.open(unit)
                self.notes.append(f"{unit.label}'s gradient is the gradient the real train_step applied minus "
                                  "every other term's (one backward pass saved)")
            else:
                acc.add_shared(unit, self.fresh_gradient(members))
        regs = self.regularizer_gradients()
        nxt = next(regs, None)
        for path in acc.variables:
            local = []
            while nxt is not None and nxt[1] == path:
                local.append((nxt[0], nxt[2]))
                nxt = next(regs, None)
            total = total_gradient.get(path) if derived is not None else None
            streamed = [(derived, acc.remainder(path, total, [g for _, g in local]))] if total is not None else []
            if streamed or local:
                acc.add_variable(path, streamed=streamed, local=local)
        return acc, self.notes

    def fresh_gradient(self, members) -> dict:
        """{path: gradient} of the terms at `members`, from a forward pass of its own."""
        import tensorflow as tf

        return _fresh_gradient(tf, self.engine, self.model, self.batch, self.sig, members)

    def regularizer_gradients(self):
        """(unit, variable path, gradient) of each weight regularizer in `self.local`, in model order."""
        import tensorflow as tf

        ops = self.engine.keras.ops
        return regularizer_gradients(self.local, lambda batch: _regularizer_batch(tf, ops, batch))


def _fresh_gradient(tf, engine, model, batch, sig, members) -> dict:
    """The gradient of the terms at `members` from a taped forward pass of its own (same seeds, same values)."""
    variables = list(model.trainable_variables)
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    with tf.GradientTape() as tape:
        y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
        tensors, _ = term_targets(engine, model, ys, y_pred, sw)
    return _gradient(tf, tape, [tensors[i] for i in members], variables, [v.path for v in variables])


REGULARIZER_BATCH = 4_000_000  # weights differentiated per regularizer pass (16 MB of float32)


def regularizer_gradients(local, gradients_of):
    """(unit, variable path, gradient) of each weight regularizer, in model order, from its own variable.

    A regularizer reaches only its own variable, so the gradient of a batch of them summed
    separates exactly (`gradients_of(batch)`, the backend's); batches bound what is held at once.
    """
    batch, size = [], 0
    for unit, v in local:
        batch.append((unit, v))
        size += int(np.prod(v.shape))
        if size >= REGULARIZER_BATCH:
            yield from gradients_of(batch)
            batch, size = [], 0
    if batch:
        yield from gradients_of(batch)


def _regularizer_batch(tf, ops, batch):
    with tf.GradientTape() as tape:
        total = ops.sum(ops.stack([ops.cast(v.regularizer(v), "float32") for _, v in batch]))
    grads = tape.gradient(total, [v for _, v in batch])
    for i, (unit, v) in enumerate(batch):
        g, grads[i] = _as_array(tf, grads[i]), None
        yield unit, v.path, g


def attribute_gradients(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                        total_gradient: Optional[dict] = None, capture: Optional[Capture] = None):
    """Per-term gradients folded into an Accumulator: `begin_attribution`, then its `finish`.

    With `total_gradient` (what the real train_step applied, same seeds), the largest compiled
    term's gradient is that total minus all the others: one backward pass fewer.
    """
    pending = begin_attribution(engine, model, batch, sig, terms, limit, capture, derive=total_gradient is not None)
    return pending.finish(total_gradient)
