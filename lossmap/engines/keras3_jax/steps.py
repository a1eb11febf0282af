"""Keras 3 on JAX: what the custom-training-code stage (`lossmap.steps`) needs to know about this backend.

The loss side is the TensorFlow engine's (`lossmap.engines.keras3.steps`: probes, how a call of
`compute_loss` expands, `model.losses`, optimizer and metric classes). What differs: overrides are
judged against `JAXTrainer.train_step`, batches become JAX arrays, gradients are JAX arrays already
dense. A `compute_loss` override is explained through Keras's default step written out
(`lossmap.steps.default_step`), whose tape here is `REPLAY` (`capture.ReplayTape`):
JAX records nothing, so the tape's block is run again as a function of the trainable variables'
values (`stateless_call`, then the instrumented override in a `StatelessScope`, as
`JAXTrainer.compute_loss_and_updates` runs it) and differentiated with `jax.vjp`. The real step it is
verified against is `JAXTrainer.train_step(state, data)` (`real_default_step`). A `train_step(state, data)`
override as Keras's JAX guide writes it (`jax.value_and_grad` of one method, `optimizer.stateless_apply`) is
explained the same way, its differentiated method in place of the override (`differentiated_function`), and so
is an override of `stateless_compute_loss`, the method `compute_loss_and_updates` takes the loss from
(`stateless_compute_loss_override`).
"""
from __future__ import annotations

import contextlib
import inspect
import textwrap
import types

import numpy as np

from lossmap.engines.keras3 import steps as _keras3_steps
from lossmap.engines.keras3_jax.capture import REPLAY  # noqa: F401  (the written-out steps' tape; default_step reads it)
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
    """{"train_step": function or None, "compute_loss": function or None}: against `JAXTrainer`. An override
    of `stateless_compute_loss` (where `JAXTrainer.compute_loss_and_updates` gets the loss) counts as one of
    `compute_loss`: both decide what the step differentiates (`stateless_compute_loss_override`)."""
    found = _keras3_steps.overrides(model, _jax_trainer())
    if found["compute_loss"] is None:
        found["compute_loss"] = _stateless_compute_loss(model)
    return found


def _stateless_compute_loss(model):
    from keras.src.trainers.trainer import Trainer

    fn = getattr(type(model), "stateless_compute_loss", None)
    return fn if fn is not None and fn is not Trainer.stateless_compute_loss else None


def refusal(model, step_fn):
    """Why custom training code is not explained on JAX, in one line (`Engine.custom_code_refusal`);
    None for a `compute_loss` override alone (Keras's default step, with `REPLAY` as its tape) and for a
    `train_step(state, data)` override as Keras's JAX guide writes it (`differentiated_function`).

    lossmap.steps follows a step's loss to the `tape.gradient` call that differentiates it and
    takes each addend's gradient on that tape; another `train_step(state, data)` of the user's (or a
    `--step` function) differentiates inside `jax.value_and_grad` in a way lossmap does not read.
    """
    found = overrides(model)
    cls = type(model).__name__
    both = _keras3_steps.overrides(model, _jax_trainer())["compute_loss"] is not None and \
        _stateless_compute_loss(model) is not None
    if step_fn is None and found["train_step"] is None and both:
        return (f"{cls} overrides both compute_loss and stateless_compute_loss: on JAX train_step gets its loss "
                "from stateless_compute_loss, which reaches compute_loss only through Keras's own; lossmap reads "
                "one of them, so put the loss in one (compute_loss is called on every backend), or run it with "
                "KERAS_BACKEND=tensorflow, where stateless_compute_loss is never called")
    if step_fn is None and found["train_step"] is not None and differentiated_function(model) is not None:
        return None
    if step_fn is not None and training_loop_step(step_fn) is not None:
        return None
    if step_fn is not None:
        what = f"the training step {getattr(step_fn, 'spec', None) or 'given with --step'}"
    elif found["train_step"] is not None:
        what = f"{cls} overrides train_step({', '.join(list(inspect.signature(found['train_step']).parameters)[1:])})"
    else:
        return None
    return (f"lossmap does not explain this custom training step on the JAX backend ({what}): on JAX it reads a "
            "train_step(state, data) that differentiates one function with jax.value_and_grad and hands the "
            "gradients to optimizer.stateless_apply, as Keras's JAX guides write it, and this one is not; run it "
            "with KERAS_BACKEND=tensorflow, override compute_loss instead (explained on JAX), or check the model "
            "without the override")


def differentiated_function(model):
    """What the step differentiates, when it is a function of the user's other than `compute_loss`: a guide-style
    `train_step(state, data)` override's (`guide_train_step`), or a `stateless_compute_loss` override's
    (`stateless_compute_loss_override`); else None."""
    return guide_train_step(model) or stateless_compute_loss_override(model)


def stateless_compute_loss_override(model):
    """A `stateless_compute_loss` override (and no `train_step` or `compute_loss` one), read like an overridden
    `compute_loss`: Keras's default step, whose `compute_loss` call opens into the override's instrumented copy,
    called with the variables' values (the replay's, inside its `StatelessScope`) and the call's `x`, `y`,
    `y_pred` and `sample_weight`; the loss is the first item it returns. Verified against the model's real
    `JAXTrainer.train_step(state, data)`, which calls the override from `compute_loss_and_updates`."""
    found = _keras3_steps.overrides(model, _jax_trainer())
    fn = _stateless_compute_loss(model)
    if fn is None or found["train_step"] is not None or found["compute_loss"] is not None:
        return None
    from lossmap.steps import default_step

    return types.SimpleNamespace(
        function=fn, adapt=_stateless_adapter(fn), step=default_step.keras_train_step,
        title=f"Keras's train_step, as lossmap reads it (your model overrides stateless_compute_loss, "
              f"{fn.__qualname__})",
        nested_title=f"Your stateless_compute_loss override ({fn.__qualname__})",
        path=f"eager: Keras's default train_step written out, its compute_loss call opening into "
             f"{fn.__qualname__}'s instrumented copy (replayed and differentiated with jax.vjp), and the model's "
             "real train_step(state, data) (its gradients)",
        shown=None, train_step=None, applied_line=None,
        summation=f"the loss is the first item {fn.__qualname__} returns; JAXTrainer.train_step differentiates "
                  "it (jax.value_and_grad of compute_loss_and_updates, which calls stateless_compute_loss) and "
                  "hands the gradients to optimizer.stateless_apply")


def _jax_trainer():
    from keras.src.backend.jax.trainer import JAXTrainer

    return JAXTrainer


def _stateless_adapter(fn):
    """The instrumented `stateless_compute_loss` as the model's `compute_loss` (`stateless_compute_loss_override`)."""

    def call(instrumented, model, x, y, y_pred, sample_weight, training):
        values = [[v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables,
                                                   model.metrics_variables)]
        return instrumented(model, *values, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)

    return _as_compute_loss(call, has_aux=True)


def _as_compute_loss(call, has_aux):
    """`adapt` for `lossmap.steps.decompose`: a differentiated function's instrumented copy as the model's
    `compute_loss`, which Keras's written-out step calls. `call(instrumented, model, x, y, y_pred, sample_weight,
    training)` hands the copy its arguments; while it runs, the model's own `compute_loss` is Keras's again (a
    `self.compute_loss` or `super()` call inside the function must not reach the copy). The loss is what the
    function returns, its first item with `has_aux`."""

    def adapt(instrumented):
        def compute_loss(model, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            patched = model.__dict__.pop("compute_loss", None)
            try:
                out = call(instrumented, model, x, y, y_pred, sample_weight, training)
            finally:
                if patched is not None:
                    object.__setattr__(model, "compute_loss", patched)
            return out[0] if has_aux else out
        return compute_loss

    adapt.has_aux = has_aux
    return adapt


def guide_train_step(model):
    """(function, adapt) for a `train_step(self, state, data)` override as Keras's JAX guide writes it, else None.

    The step differentiates `self.<name>` with `jax.value_and_grad` / `jax.grad` (`has_aux=True`: the loss is
    the first item it returns) and hands the gradients to `self.optimizer.stateless_apply`. That method is
    pure in the values it is given, so it is read as an overridden `compute_loss` that Keras's default step
    (with `REPLAY` as its tape) calls: `adapt` turns its instrumented copy into one, called with the
    trainable and non-trainable variables' values (the replay's, inside its `StatelessScope`), `x`, `y`
    and `training=True`. The real step it is verified against is the override itself (`real_default_step`).
    """
    import libcst as cst
    import libcst.matchers as m

    step = overrides(model)["train_step"]
    if step is None or list(inspect.signature(step).parameters)[1:] != ["state", "data"]:
        return None
    try:
        text, first_line = inspect.getsourcelines(step)
        source = cst.parse_module(textwrap.dedent("".join(text)))
    except (OSError, TypeError, cst.ParserSyntaxError):
        return None
    applies = m.findall(source, m.Attribute(attr=m.Name("stateless_apply")))
    if not applies:
        return None
    grad = m.Call(func=m.Attribute(value=m.Name("jax"), attr=m.Name("value_and_grad") | m.Name("grad"))
                  | m.Name("value_and_grad") | m.Name("grad"))
    calls = [c for c in m.findall(source, grad)
             if c.args and m.matches(c.args[0].value, m.Attribute(value=m.Name("self")))]
    if len(calls) != 1:
        return None
    fn = getattr(type(model), calls[0].args[0].value.attr.value, None)
    if not inspect.isfunction(fn):
        return None
    has_aux = any(a.keyword is not None and a.keyword.value == "has_aux" and m.matches(a.value, m.Name("True"))
                  for a in calls[0].args)
    how = calls[0].func.attr.value if isinstance(calls[0].func, cst.Attribute) else calls[0].func.value
    what = f"{fn.__qualname__} differentiated with jax.{how}"
    line, applied_line = _lines_of(source, [calls[0], applies[0]], first_line)
    returned = f"the first item {fn.__qualname__} returns (has_aux=True)" if has_aux else f"what {fn.__qualname__} returns"
    return types.SimpleNamespace(
        function=fn, adapt=_adapter(fn, has_aux), step=value_and_grad_step,
        title=f"Your train_step(state, data) override, as lossmap reads it ({what})",
        path=f"eager: {fn.__qualname__}'s instrumented copy, replayed and differentiated with jax.vjp, and the "
             "model's real train_step(state, data) (its gradients)",
        # what the output names as the step: the user's override, not the written-out step lossmap runs
        shown={"function": step.__qualname__, "file": inspect.getsourcefile(step), "line": line},
        train_step=step, applied_line=applied_line,
        nested_title=f"{fn.__qualname__}, which your train_step differentiates",
        summation=f"the loss is {returned}; {step.__qualname__} differentiates it with "
                  f"jax.{how} (line {line}) and hands the gradients to optimizer.stateless_apply")


def training_loop_step(step_fn):
    """For `--step FILE.py:train_step`: a free `train_step(state, data)` as Keras's guide "Writing a training
    loop from scratch in JAX" writes it, read like a guide-style override (`guide_train_step`); else None.

    `state` unpacks into the trainable, non-trainable and optimizer variables' values (and the variables of
    the metrics it updates with `stateless_update_state`), `data` into `x, y` (and `sample_weight`); the step calls `jax.value_and_grad(f, has_aux=...)` (inline, or a module-level
    `grad_fn = jax.value_and_grad(f, ...)`) on those names and hands the gradients to a global optimizer's
    `stateless_apply`. `f` is read as an overridden `compute_loss` (`_loop_adapter`), lossmap's written-out
    step (`value_and_grad_loop_step`) applies with that optimizer's `stateless_apply` (nothing assigned), and
    the real step is the user's function (unwrapped from `jax.jit`), called on the model's current state.
    """
    import libcst as cst
    import libcst.matchers as m
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    fn = getattr(step_fn, "fn", None)
    if fn is None or list(inspect.signature(fn).parameters) != ["state", "data"]:
        return None
    try:
        text, first_line = inspect.getsourcelines(fn)
        source = cst.parse_module(textwrap.dedent("".join(text)))
        with open(inspect.getsourcefile(fn), encoding="utf-8") as fh:
            module = cst.parse_module(fh.read())
    except (OSError, TypeError, cst.ParserSyntaxError):
        return None
    names = {n: ("state", i) for i, n in enumerate(_unpacked(source, "state"))}
    data = _unpacked(source, "data")
    names.update({n: ("data", i) for i, n in enumerate(data)})
    applies = m.findall(source, m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("stateless_apply"))))
    updates = m.findall(source, m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("stateless_update_state"))))
    metrics = [_reached(fn, c.func.value.value) for c in updates]
    if len(names) - len(data) != (4 if metrics else 3) or len(data) not in (2, 3) or len(applies) != 1:
        return None
    optimizer = _reached(fn, applies[0].func.value.value)
    found = _differentiated_call(source, module, fn)
    if not isinstance(optimizer, BaseOptimizer) or found is None or not all(hasattr(x, "variables") for x in metrics):
        return None
    state = _LoopState(optimizer, metrics)
    call, f, has_aux, how = found
    picks = [names.get(a.value.value) if isinstance(a.value, cst.Name) else None for a in call.args]
    if None in picks:
        return None
    keywords = [a.keyword.value if a.keyword is not None else None for a in call.args]
    line, applied_line = _lines_of(source, [call, applies[0]], first_line)
    returned = f"the first item {f.__qualname__} returns (has_aux=True)" if has_aux else f"what {f.__qualname__} returns"
    return types.SimpleNamespace(
        function=f, adapt=_loop_adapter(list(zip(keywords, picks)), has_aux, state),
        step=value_and_grad_loop_step, extra_arguments=(optimizer,), real=_loop_real_step(fn, state, len(data)),
        title=f"Your train_step(state, data), as lossmap reads it ({f.__qualname__} differentiated with jax.{how})",
        path=f"eager: {f.__qualname__}'s instrumented copy, replayed and differentiated with jax.vjp, and your "
             f"{fn.__qualname__}(state, data) as written, without jax.jit (its gradients)",
        shown={"function": fn.__qualname__, "file": inspect.getsourcefile(fn), "line": line},
        train_step=fn, applied_line=applied_line,
        nested_title=f"{f.__qualname__}, which your train_step differentiates",
        summation=f"the loss is {returned}; {fn.__qualname__} differentiates it with jax.{how} (line {line}) and "
                  "hands the gradients to optimizer.stateless_apply")


def _unpacked(source, name: str) -> list:
    """The names of `a, b, c = name` in the function `source`, else []."""
    import libcst as cst
    import libcst.matchers as m

    for node in m.findall(source, m.Assign(targets=[m.AssignTarget(target=m.Tuple())], value=m.Name(name))):
        elements = node.targets[0].target.elements
        if all(isinstance(e.value, cst.Name) for e in elements):
            return [e.value.value for e in elements]
    return []


def _reached(fn, name: str):
    """What `name` is in `fn`'s closure or module globals (None when neither has it)."""
    for free, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        if free == name:
            return cell.cell_contents
    return fn.__globals__.get(name)


def _differentiated_call(source, module, fn):
    """(the call that differentiates, the function, has_aux, "value_and_grad" | "grad") in the step: either
    `jax.value_and_grad(f, ...)(args)` inline, or `grad_fn(args)` with `grad_fn = jax.value_and_grad(f, ...)`
    at the module's top level; None unless exactly one."""
    import libcst as cst
    import libcst.matchers as m

    grad = m.Call(func=m.Attribute(value=m.Name("jax"), attr=m.Name("value_and_grad") | m.Name("grad"))
                  | m.Name("value_and_grad") | m.Name("grad"), args=[m.Arg(value=m.Name()), m.ZeroOrMore()])
    named = {stmt.body[0].targets[0].target.value: stmt.body[0].value for stmt in module.body
             if m.matches(stmt, m.SimpleStatementLine(body=[m.Assign(targets=[m.AssignTarget(target=m.Name())],
                                                                      value=grad)]))}
    calls = [(c, c.func) for c in m.findall(source, m.Call(func=grad))]
    calls += [(c, named[c.func.value]) for c in m.findall(source, m.Call(func=m.Name()))
              if c.func.value in named and c.func.value not in fn.__code__.co_varnames]
    if len(calls) != 1:
        return None
    call, spec = calls[0]
    from lossmap.steps.read import unwrap

    f = unwrap(_reached(fn, spec.args[0].value.value) or (lambda: None))
    if not inspect.isfunction(f) or f.__name__ == "<lambda>":
        return None
    has_aux = any(a.keyword is not None and a.keyword.value == "has_aux" and m.matches(a.value, m.Name("True"))
                  for a in spec.args)
    how = spec.func.attr.value if isinstance(spec.func, cst.Attribute) else spec.func.value
    return call, f, has_aux, how


class _LoopState:
    """A training loop's `state` from the live objects: the model's trainable and non-trainable variables'
    values, its optimizer's, and (when the step updates metrics statelessly) those metrics' variables'."""

    def __init__(self, optimizer, metrics):
        self.optimizer, self.metrics = optimizer, metrics

    def values(self, model) -> list:
        out = [[v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables,
                                                self.optimizer.variables)]
        if self.metrics:
            out.append([v.value for metric in self.metrics for v in metric.variables])
        return out


def _loop_adapter(arguments, has_aux, state):
    """The instrumented differentiated function as the model's `compute_loss` (`training_loop_step`): called
    with what the step passes it, each argument one of the state's lists or of the batch's parts."""

    def call(instrumented, model, x, y, y_pred, sample_weight, training):
        parts = {"state": state.values(model), "data": (x, y, sample_weight)}
        args = [parts[kind][i] for keyword, (kind, i) in arguments if keyword is None]
        kwargs = {keyword: parts[kind][i] for keyword, (kind, i) in arguments if keyword is not None}
        with _variables_as_stored(model):
            return instrumented(*args, **kwargs)

    return _as_compute_loss(call, has_aux)


def _loop_real_step(fn, state, n_data):
    """The user's `train_step(state, data)` on the model's current state (the state it returns dropped); its
    loss as logs (the first item it returns, as the guide's `return loss, state`)."""
    def call(model, x, y, sample_weight=None, *_):
        returned = fn(tuple(state.values(model)), (x, y) if n_data == 2 else (x, y, sample_weight))
        return {"loss": returned[0]} if isinstance(returned, (tuple, list)) else returned
    return call


def value_and_grad_loop_step(model, x, y, sample_weight=None, optimizer=None):
    """A training loop's `train_step(state, data)`, as lossmap runs it (`training_loop_step`): the differentiated
    function as `model.compute_loss`; the loop's optimizer given the gradients statelessly, as the step does."""
    with REPLAY.GradientTape() as tape:  # jax.value_and_grad: the function replayed from the trainable values
        loss = model.compute_loss(x, y, None, sample_weight)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.stateless_apply([v.value for v in optimizer.variables], grads,  # nothing assigned
                              [v.value for v in model.trainable_variables])
    return loss


def _lines_of(module, nodes, first_line: int) -> list:
    """The file lines where `nodes` (found in `module`, the dedented source that starts at `first_line`) start."""
    import libcst as cst
    from libcst.metadata import PositionProvider

    positions = cst.metadata.MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    return [first_line - 1 + positions[node].start.line for node in nodes]


def value_and_grad_step(model, x, y, sample_weight=None):
    """A `train_step(state, data)` override's `jax.value_and_grad`, as lossmap runs it (`differentiated_function`):
    `model.compute_loss` is the differentiated function, given the variables' values (the loss it returns)."""
    with REPLAY.GradientTape() as tape:  # jax.value_and_grad: the function replayed from the trainable values
        loss = model.compute_loss(x, y, None, sample_weight)  # fn(trainable, non_trainable, x, y, training=True)
    grads = tape.gradient(loss, model.trainable_variables)
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))  # optimizer.stateless_apply
    return loss


def _adapter(fn, has_aux):
    """The instrumented differentiated function as the model's `compute_loss` (see `differentiated_function`)."""
    takes_training = "training" in inspect.signature(fn).parameters

    def call(instrumented, model, x, y, y_pred, sample_weight, training):
        values = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        losses, model._losses_override = model._losses_override, []  # self.losses as the real step reads it
        try:
            with _variables_as_stored(model):
                return instrumented(model, *values, x, y, **({"training": True} if takes_training else {}))
        finally:
            model._losses_override = losses

    return _as_compute_loss(call, has_aux)


def _variables_as_stored(model):
    """A `StatelessScope` in which the trainable variables read what they hold (the replay's scope otherwise):
    as in the real step, the function differentiates only through the values it is handed (a weight
    regularizer read from `self.losses` gets no gradient from `jax.value_and_grad`); other mappings (seed
    states) kept."""
    from keras.src.backend.common.stateless_scope import StatelessScope, get_stateless_scope

    outer = get_stateless_scope()
    scope = StatelessScope()
    scope.state_mapping = dict(outer.state_mapping) if outer is not None else {}
    for v in model.trainable_variables:
        scope.state_mapping[id(v)] = v._value
    return scope


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


def dense_gradient(g):
    return None if g is None else np.array(g)


def as_tensors(structure):
    import jax.numpy as jnp
    from keras import tree

    return tree.map_structure(lambda a: None if a is None else jnp.asarray(a), structure)
