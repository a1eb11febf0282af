"""tf_keras: verification against the real `train_step`, and each term's gradient."""
from __future__ import annotations

from typing import Optional

from lossmap.engines.base import Batch, Capture, Signature, Verification
from lossmap.engines.common.helpers import dense_grad, one_line
from lossmap.engines.common.train_step import Attributed, no_optimizer, run_train_step, swap_in_fresh_optimizer
from lossmap.engines.tf_keras.capture import compiled_entries, keras_loss_value, loss_entries, short_var_name


def verify_train_step(engine, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
    """The loss the model's real `train_step` logs (its metrics reset first: the logged 'loss' is a running mean).

    `record_gradient` is accepted for the common interface: this engine derives no term from the step's gradient.
    """
    xs, ys, sw = engine.packed_tensors(model, sig, batch)
    notes = []
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return no_optimizer(notes)
    swapped = None
    if not getattr(optimizer, "_built", False):
        try:
            swapped = swap_in_fresh_optimizer(model, optimizer, notes)
        except Exception as exc:
            return Verification(None, f"could not copy the optimizer: {one_line(exc)}", "eager", notes, True)
    return run_train_step(model, (xs, ys, sw), notes, swapped)


def _gradient_pass(engine, model, sig, batch, trainable):
    """One taped training-mode pass: (tape, trunk-sharing term tensors, weight regularizers,
    the trainable ones as (variable, callable), their sum)."""
    tf = engine.tf
    xs, ys, sw = engine.packed_tensors(model, sig, batch)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(xs, training=True)
        tensors = []
        for e in compiled_entries(engine, model, sig, ys, y_pred, sw):
            if e["loss"] is None or e["y_true"] is None:
                continue
            value, _, _ = keras_loss_value(e["loss"], e["y_true"], e["y_pred"], e["sample_weight"])
            if e["weight"] is not None:
                value = value * e["weight"]
            tensors.append(tf.reduce_sum(value))
        entries, callables, regs = loss_entries(model)
        tensors.extend(tf.reduce_sum(t) for _, t in entries)
        tensors.extend(tf.reduce_sum(c()) for _, c in callables)
        regularized = [(v, c) for _, v, _, c in regs if id(v) in trainable]
        reg_sum = tf.add_n([tf.cast(c(), "float32") for _, c in regularized]) if regularized else None
    return tape, tensors, regs, regularized, reg_sum


def begin_attribution(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                      capture: Optional[Capture] = None, derive: bool = True) -> Attributed:
    """Per-term gradients of one taped training-mode forward pass of its own, all at once (see the
    Keras 3 engine's): every trunk-sharing term gets its own backward pass, so nothing waits for
    verification's gradient."""
    tf = engine.tf
    from lossmap import gradients as gmod

    variables = list(model.trainable_variables)
    owner = {}
    for layer in model._flatten_layers():
        for v in layer._trainable_weights:
            owner.setdefault(id(v), f"{layer.name}/{short_var_name(v)}")
    paths = [owner.get(id(v), short_var_name(v)) for v in variables]
    trainable = {id(v) for v in variables}
    tape, tensors, regs, regularized, reg_sum = _gradient_pass(engine, model, sig, batch, trainable)
    if len(tensors) + len(regs) != len(terms):
        raise RuntimeError(f"gradient pass found {len(tensors) + len(regs)} terms, the inventory {len(terms)}")
    shared_terms = terms[: len(tensors)]
    reg_terms = [t for (_, v, _, _), t in zip(regs, terms[len(tensors):]) if id(v) in trainable]
    path_of = {id(v): p for v, p in zip(variables, paths)}
    reg_paths = [path_of[id(v)] for v, _ in regularized]
    # a regularizer's gradient is held for another on the same variable only when there can be one
    acc = gmod.Accumulator(paths, hold_locals=len(set(reg_paths)) < len(reg_paths))
    notes = []
    if len(regularized) < len(regs):
        notes.append("regularizers on non-trainable weights (which tf_keras still adds to the loss) "
                     "have no gradient and were left out of the attribution")
    try:
        for unit, members in gmod.plan_units(shared_terms, limit, notes):
            grads = tape.gradient([tensors[i] for i in members], variables)
            acc.add_shared(unit, {p: dense_grad(tf, g) for p, g in zip(paths, grads)})
        if regularized:
            grads = tape.gradient(reg_sum, [v for v, _ in regularized])
            for term, path, g in zip(reg_terms, reg_paths, grads):
                unit = gmod.Unit(term.id, term.id, term.kind, [term.id], False)
                acc.add_local(unit, path, dense_grad(tf, g))
    finally:
        del tape
    return Attributed(acc, notes)


def attribute_gradients(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                        total_gradient: Optional[dict] = None, capture: Optional[Capture] = None):
    """`begin_attribution`, finished. `total_gradient` (what the real train_step applied) is accepted for the
    common interface and not used: every trunk-sharing term here gets its own backward pass."""
    return begin_attribution(engine, model, batch, sig, terms, limit, capture).finish(total_gradient)
