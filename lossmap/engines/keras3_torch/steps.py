"""Keras 3 on PyTorch: what the custom-training-code stage (`lossmap.steps`) needs to know.

Keras 3's answers (`lossmap.engines.keras3.steps`) hold on torch, except: the default
`train_step` to compare an override against is `TorchTrainer.train_step`; a gradient is a
torch tensor (`dense_gradient`); a batch becomes torch tensors (`as_tensors`); the optimizer's
first update is taken without autograd recording (as `TorchTrainer.train_step` applies it).
A step's gradient on torch is what `X.backward()` leaves in each parameter's `.grad`: the step's
`X.backward()` is read as TensorFlow's `tape.gradient(X, variables)` (`gradient_calls`), run through
`backward_recorder` (each addend's gradient by autograd before the graph is consumed), and its
variables narrowed to those whose `.grad` an optimizer call is handed (`narrow_to_applied`). A torch.optim
optimizer (`torch.optim.Adam(model.parameters())`, as Keras's torch training-loop guide writes it) applies
what `backward()` left when the step calls its `step()`: recorded by the spy (`parameter_steps`), its state
snapshotted with the step's (`lossmap.steps.state`).
"""
from __future__ import annotations

from lossmap.engines.common.helpers import as_numpy
from lossmap.engines.keras3 import steps as _k3
from lossmap.engines.keras3.steps import (  # noqa: F401 - the same on torch
    KERAS_LOSS_SIGNATURES,
    Expansion,
    additional_for,
    metric_classes,
    probe,
    training_layers,
    variable_namer,
)


SYNTHETIC_CLASS_IDS = "int64"  # made-up class ids as torch.nn.CrossEntropyLoss takes them (Long); Keras's too

# torch.nn's losses, by the Keras loss whose labels they read (for synthetic labels: class ids for CrossEntropyLoss)
TORCH_LOSS_LABELS = {"CrossEntropyLoss": "sparse_categorical_crossentropy", "NLLLoss": "sparse_categorical_crossentropy",
                     "MSELoss": "mean_squared_error", "L1Loss": "mean_absolute_error",
                     "BCELoss": "binary_crossentropy", "BCEWithLogitsLoss": "binary_crossentropy"}


def builtin_loss_name(obj):
    """The built-in Keras loss `obj` computes, or for a torch.nn loss the one whose labels it reads."""
    name = _k3.builtin_loss_name(obj)
    if name is None and type(obj).__module__.startswith("torch.nn"):
        name = TORCH_LOSS_LABELS.get(type(obj).__name__)
    return name


def optimizer_classes():
    """Keras's optimizers, and torch.optim's (a step may train a Keras model with `torch.optim.Adam(model.parameters())`)."""
    import torch
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    return (BaseOptimizer, torch.optim.Optimizer)


def parameter_steps(model):
    """(torch.optim's optimizer classes, parameter -> the model's Keras variable holding it): for the optimizer
    spy (`lossmap.steps.spy`), which records what each `optimizer.step()` finds in the parameters' `.grad`."""
    import torch

    classes, todo = [], [torch.optim.Optimizer]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo += cls.__subclasses__()
    by_parameter = {id(v.value): v for v in model.variables}
    return classes, lambda p: by_parameter.get(id(p))


def overrides(model) -> dict:
    """{"train_step": function or None, "compute_loss": function or None}: the user's overrides."""
    from keras.src.backend.torch.trainer import TorchTrainer
    from keras.src.trainers.trainer import Trainer

    cls = type(model)
    return {
        "train_step": cls.train_step if cls.train_step is not TorchTrainer.train_step else None,
        "compute_loss": cls.compute_loss if cls.compute_loss is not Trainer.compute_loss else None,
    }


def expand_keras_loss(engine, model, sig, call, loss_probe):
    """Keras 3's expansion of a `compute_loss` call, without Keras importing TensorFlow for a loss's config."""
    from lossmap.engines.common.helpers import tensorflow_left_alone

    with tensorflow_left_alone():
        return _k3.expand_keras_loss(engine, model, sig, call, loss_probe)


def gradient_calls(step):
    """`X.backward()` in the step, as a `GradientCall` of X (torch's `tape.gradient(X, variables)`): an objective
    when an optimizer call in the step applies what it leaves in the parameters' `.grad`. Added to
    `step.gradients` before the split, which follows X back into its addends as on TensorFlow."""
    import libcst.matchers as m

    from lossmap.steps.read import GradientCall

    applies = any(c.method in ("apply", "apply_gradients") for c in step.optimizer_calls) or \
        bool(m.findall(step.function, m.Call(func=m.Attribute(attr=m.Name("step")), args=[])))  # torch.optim
    for stmt in step.statements:
        for call in m.findall(stmt.node, m.Call(func=m.Attribute(attr=m.Name("backward")))):
            g = GradientCall(index=len(step.gradients), tape=None, line=step.line_of(call), statement=stmt.index,
                             call=call, target=call.func.value, sources=call.func,
                             target_text=step.code(call.func.value), sources_text="the parameters' .grad",
                             results=(), enclosing_tapes=(), kind="objective" if applies else "input")
            g.recorded_as = "backward"  # instrument: `X.backward(...)` -> `__lm__.backward(i, X.backward, ...)`
            step.gradients.append(g)


def backward_recorder(model):
    """The recorder's `backward` on torch: runs `X.backward(...)` as written, recorded as a gradient of X.

    Its sources are the model's trainable variables; `attribute` (the recorder's) takes each term's gradient
    (`torch.autograd.grad(term, params, retain_graph=True)`, through `capture._Tape`) before the user's
    `backward` consumes the graph; the result is what `backward` left in each `.grad` (the very tensors the
    step reads back and hands its optimizer, matched by `narrow_to_applied`), `taken` their values then."""
    from lossmap.engines.keras3_torch.capture import _Tape
    from lossmap.steps.record import GradientRecord

    def run(method, args, kwargs, attribute):
        sources = list(model.trainable_variables)
        record = GradientRecord(tape=_Tape(persistent=True), target=method.__self__, sources=sources,
                                structure=sources, result=None)
        attribute(record)
        returned = method(*args, **kwargs)
        record.result = [getattr(v.value, "grad", None) for v in sources]
        record.taken = [None if g is None else g.detach().clone() for g in record.result]
        return returned

    return run


def narrow_to_applied(d, updates):
    """After the instrumented run: each objective differentiated with `X.backward()` keeps the variables whose
    `.grad` an optimizer call was handed (by identity), as `tape.gradient(loss, variables)` names its sources
    on TensorFlow: `backward()` fills every parameter's `.grad`, the step trains those it applies (all of them
    when none reached an optimizer as is). Its gradient is then the values `backward()` left, before the step
    changed any in place (clipping, a second `backward()` accumulating)."""
    handed = {id(t) for u in updates for t in u.tensors if t is not None}
    for o in d.parts.objectives:
        records = [d.recorder.gradients.get(g.index) for g in o.gradient_calls()
                   if getattr(g, "recorded_as", None) == "backward"]
        records = [r for r in records if r is not None and getattr(r, "taken", None) is not None]
        kept = {d.attribution.namer(v) for r in records for v, t in zip(r.sources, r.result)
                if t is not None and id(t) in handed}
        for r in records:
            pairs = [(v, t) for v, t in zip(r.sources, r.taken) if not kept or d.attribution.namer(v) in kept]
            r.sources, r.result = [v for v, _ in pairs], [t for _, t in pairs]
        if not kept:
            continue
        d.attribution.sources[o.id] = [p for p in d.attribution.sources.get(o.id, []) if p in kept]
        for grads in d.attribution.term_gradients.get(o.id, {}).values():
            for p in [p for p in grads if p not in kept]:
                del grads[p]


def no_objective_reason(d):
    """Why lossmap finds nothing differentiated in a torch step that calls `X.backward()`: no optimizer call
    applies what it leaves in `.grad`; None when the step calls no `backward`."""
    import libcst.matchers as m

    calls = m.findall(d.step.function, m.Call(func=m.Attribute(attr=m.Name("backward"))))
    if not calls:
        return None
    target = d.step.code(calls[0].func.value)
    try:
        where = f"{d.step.file}:{d.step.line_of(calls[0])}"
    except KeyError:
        where = f"{d.step.file}:{d.step.start_line}"
    return (f"{d.fn.__qualname__} ({where}) calls {target}.backward() but no optimizer call in it applies the "
            "gradients it leaves in .grad (a Keras optimizer's apply(gradients, variables) or apply_gradients, "
            "or a torch.optim optimizer's step()): lossmap explains a step that computes and applies gradients")


def dense_gradient(g):
    """A torch gradient as a NumPy array (None stays None)."""
    return as_numpy(g)


def first_update(engine, optimizer, gradients: dict, variables: dict) -> dict:
    """Keras 3's first update, with torch recording nothing (the optimizer writes variables in place)."""
    import torch

    with torch.no_grad():
        return _k3.first_update(engine, optimizer, gradients, variables)


def as_tensors(structure):
    """A batch structure of arrays as torch tensors (on Keras's device)."""
    from keras import ops, tree

    return tree.map_structure(lambda a: None if a is None else ops.convert_to_tensor(a), structure)
