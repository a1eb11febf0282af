"""Keras 3 on JAX: what the custom-training-code stage (`lossmap.steps`) needs to know about this backend.

The loss side is the TensorFlow engine's (`lossmap.engines.keras3.steps`: probes, how a call of
`compute_loss` expands, `model.losses`, optimizer and metric classes). What differs: overrides are
judged against `JAXTrainer.train_step`, batches become JAX arrays, gradients are JAX arrays already
dense. A `compute_loss` override is explained through Keras's default step written out
(`lossmap.steps.default_step`), whose tape here is `REPLAY` (`_ReplayTape`):
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

    def adapt(instrumented):
        def compute_loss(model, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            patched = model.__dict__.pop("compute_loss", None)  # Keras's, for the override's super() call
            values = [[v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables,
                                                       model.metrics_variables)]
            try:
                out = instrumented(model, *values, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                   training=training)
            finally:
                if patched is not None:
                    object.__setattr__(model, "compute_loss", patched)
            return out[0]
        return compute_loss

    adapt.has_aux = True
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

    def adapt(instrumented):
        def compute_loss(model, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            patched = model.__dict__.pop("compute_loss", None)  # its own self.compute_loss is Keras's
            values = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            losses, model._losses_override = model._losses_override, []  # self.losses as the real step reads it
            try:
                with _variables_as_stored(model):
                    out = instrumented(model, *values, x, y, **({"training": True} if takes_training else {}))
            finally:
                model._losses_override = losses
                if patched is not None:
                    object.__setattr__(model, "compute_loss", patched)
            return out[0] if has_aux else out
        return compute_loss

    adapt.has_aux = has_aux
    return adapt


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
