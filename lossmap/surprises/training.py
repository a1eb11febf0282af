"""The surprises in how the loss is trained on: replicas of a tf.distribute strategy, and loss scaling
under mixed_float16, for Keras's own step and for a custom one. Each check: `check_<name>(ctx)`
yielding `Finding`s (`lossmap.surprises.CHECKS`).
"""
from __future__ import annotations

from lossmap.analysis import Finding
from lossmap.surprises.common import KERAS3_MEANS, TF_KERAS_MEANS, cite, fmt, listed, where

MEAN_REDUCTIONS = {"keras3": KERAS3_MEANS + ("mean_with_sample_weight",), "tf_keras": TF_KERAS_MEANS}


# ---------------------------------------------------------------- replicas
def check_replicas(ctx):
    """Under N replicas Keras divides what it reduces by N and multiplies the logs back; a term the user's
    own code computes is not divided, and the summed gradient counts it N times."""
    n = int(ctx.facts.get("model_replicas") or 1)
    if n <= 1:
        return
    scaled, whole, unscaled = _by_scaling(ctx)
    part = sum(t.contribution for t in scaled)
    rest = sum(t.contribution for t in whole + unscaled)
    total = part + rest
    if ctx.legacy:
        how = (f"tf_keras divides each mean-reduced compiled loss by {n} after its loss weight ("
               f"{where(cite('tf_scale'))}) and the sum of model.losses too ("
               f"{where(cite('tf_scale_regularization'))}), and logs the values from before")
    else:
        how = (f"Keras 3 multiplies each mean-reduced compiled loss by 1/{n} ({where(cite('k3_scale'))}) "
               f"and each entry of model.losses too ({where(cite('k3_scale_additional'))}), and multiplies "
               f"the logged loss back by {n} ({where(cite('k3_unscale_logs'))})")
    sums = (f" {listed(t.id for t in whole)} use reduction 'sum', which is not divided: added up over the "
            "replicas it is the sum over the global batch, as meant." if whole else "")
    yield Finding(
        "DISTRIBUTION_LOSS_SCALING", "info", None,
        f"the model's strategy runs fit on {n} replicas: on each, {how}, so that the replicas' summed gradients "
        f"are the gradient of the mean over the global batch. On this batch taken as one replica's: the loss is "
        f"{fmt(total)}, and the replica differentiates {fmt(part / n + rest)}.{sums}")
    if unscaled:
        yield _unscaled(ctx, n, unscaled, part + sum(t.contribution for t in whole))


def _unscaled(ctx, n, unscaled, keras_part):
    u = sum(t.contribution for t in unscaled)
    divided = (where(ctx.cite("k3_scale", "tf_scale")) + ", " +
               where(ctx.cite("k3_scale_additional", "tf_scale_regularization")))
    return Finding(
        "UNSCALED_REPLICA_LOSS", "warning", unscaled[0].id if len(unscaled) == 1 else None,
        f"under {n} replicas, {listed(t.id for t in unscaled)} ({fmt(u)} on this batch) "
        f"{'is' if len(unscaled) == 1 else 'are'} not divided by {n}: the training code computes "
        f"{'it' if len(unscaled) == 1 else 'them'} itself, and {ctx.label} divides only what its own compute_loss "
        f"reduces and adds ({divided}). The replicas' gradients are summed, so a mean or a regularizer computed "
        f"this way counts {n} times: the update follows the gradient of {fmt(keras_part)} + {n} x {fmt(u)} = "
        f"{fmt(keras_part + n * u)}, not of {fmt(keras_part + u)}. Divide "
        f"{'it' if len(unscaled) == 1 else 'them'} by self.distribute_strategy.num_replicas_in_sync, or let "
        f"Keras compute {'it' if len(unscaled) == 1 else 'them'} (super().compute_loss"
        f"{'' if ctx.legacy else ', a keras.losses.Loss with a mean reduction'}).")


def _by_scaling(ctx) -> tuple:
    """(divided by the replicas, reduced by 'sum', never seen by Keras's scaling): the terms."""
    means = MEAN_REDUCTIONS[ctx.engine]
    keys = {id(a.term): a.key for a in ctx.result.assembled} if ctx.result is not None else {}
    scaled, whole, unscaled = [], [], []
    for t in ctx.analysis.terms:
        origin = keys.get(id(t), ("keras",))[0]
        if origin in ("losses", "losses_regularizers") or (origin == "addend" and not _through_keras_loss(ctx, t)):
            unscaled.append(t)  # model.losses read by the step itself, or the step's own arithmetic
        elif t.kind == "compiled" and ((t.config or {}).get("reduction") or ("auto" if ctx.legacy else None)) \
                not in means:
            whole.append(t)
        else:
            scaled.append(t)
    return scaled, whole, unscaled


def _through_keras_loss(ctx, t) -> bool:
    """Whether a custom term's value comes from a Keras 3 loss object with a mean reduction, which divides it by
    the replicas itself (tf_keras's loss objects do not: LossesContainer does)."""
    import libcst.matchers as m

    if ctx.legacy or not t.source:
        return False
    for d, st in _statements(ctx.result.decomposition):
        if d.fn.__qualname__ == t.source.get("function") and st.line <= t.source.get("line", -1) <= st.end_line:
            for call in m.findall(st.node, m.Call()):
                obj = _resolve(call.func, d.fn, ctx.model)
                if _is_mean_loss(obj):
                    return True
    return False


def _statements(d):
    for dd in (d, d.nested):
        if dd is not None:
            for st in dd.step.statements:
                yield dd, st


def _resolve(func, fn, model):
    """The object a callee (`self.loss_fn`, `loss_fn`, `losses.mse`) names, from the model or the function's
    closure and globals; None when it is something else."""
    import libcst as cst

    chain = []
    while isinstance(func, cst.Attribute):
        chain.append(func.attr.value)
        func = func.value
    if not isinstance(func, cst.Name):
        return None
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    try:
        obj = model if func.value == "self" else (
            cells[func.value].cell_contents if func.value in cells else fn.__globals__.get(func.value))
    except ValueError:  # an empty closure cell
        return None
    for attr in reversed(chain):
        obj = getattr(obj, attr, None)
    return obj


def _is_mean_loss(obj) -> bool:
    keras_loss = any(c.__name__ == "Loss" and (c.__module__ or "").startswith("keras.") for c in type(obj).__mro__)
    return keras_loss and getattr(obj, "reduction", None) in MEAN_REDUCTIONS["keras3"]


# ---------------------------------------------------------------- mixed_float16 loss scaling
def check_loss_scale(ctx):
    """A LossScaleOptimizer (compile adds one under mixed_float16): how Keras's step scales the loss, and a
    custom step that never scales it."""
    ls = ctx.facts.get("loss_scale")
    if ls is None:
        return
    r = ctx.result
    if r is None or r.decomposition.kind == "keras_default":
        yield _keras_step_scales(ctx, ls)
    elif _loss_scale_optimizer_applies(r) and not _scales(ctx, r):
        yield _skipped(ctx, ls, r)


def _loss_scale_optimizer_applies(r) -> bool:
    """Whether the step's gradients go to a LossScaleOptimizer: one was seen applying them, or the step
    applies them with the model's own optimizer (`self.optimizer`, `model.optimizer`), which is one."""
    labels = [o.get("optimizer") or "" for o in r.objectives]
    texts = [c.optimizer_text for dd in (r.decomposition, r.decomposition.nested) if dd is not None
             for c in dd.step.optimizer_calls]
    return any("LossScaleOptimizer" in label for label in labels) or any(t.endswith(".optimizer") for t in texts)


def _keras_step_scales(ctx, ls):
    loss = ctx.analysis.total.train_step if ctx.analysis.total.train_step is not None else \
        ctx.analysis.total.reproduced
    s = ls["scale"]
    scaled = f"{fmt(loss)} x {fmt(s)} = {fmt(loss * s)}" if s is not None else "it times that scale"
    wrapped = f"compile wrapped the optimizer ({ls['inner']}) in a LossScaleOptimizer"
    if ctx.legacy:
        how = (f"{wrapped} ({where(cite('tf_wrap_loss_scale'))}); train_step hands the loss to its minimize "
               f"({where(cite('tf_minimize'))}), which multiplies it by the current loss scale, {fmt(s)}, before "
               f"the gradient ({where(cite('tf_scaled_loss'))}) and divides the gradients by it again "
               "(get_unscaled_gradients)")
    else:
        how = (f"{wrapped} ({where(cite('k3_wrap_loss_scale'))}); train_step multiplies the loss by its current "
               f"scale, {fmt(s)}, before the gradient ({where(cite('k3_scale_loss'))}), and the optimizer divides "
               f"the gradients by it again ({where(cite('k3_unscale_gradients'))})")
    return Finding(
        "MIXED_PRECISION_LOSS_SCALE", "info", None,
        f"the model computes in mixed_float16, so {how}: Keras differentiates {scaled} on this batch, so that "
        "small float16 gradients do not underflow to 0. A step whose gradients are not finite is skipped and the "
        f"scale halved; after {ls.get('growth_steps') or 'a number of'} finite steps it doubles. The logged loss "
        f"is the unscaled {fmt(loss)}.")


def _scales(ctx, r) -> bool:
    """Whether the step calls what scales its loss for a LossScaleOptimizer (`scale_loss`; tf_keras:
    `get_scaled_loss` or `minimize`), or Keras's own `train_step`."""
    import libcst.matchers as m

    names = tuple(ctx.facts.get("scale_calls") or ()) + ("train_step",)  # super().train_step scales
    matcher = m.Call(func=m.Attribute(attr=m.OneOf(*[m.Name(n) for n in names]))) if names else None
    return matcher is not None and any(m.findall(st.node, matcher) for _, st in _statements(r.decomposition))


def _skipped(ctx, ls, r):
    d = r.decomposition
    s = ls["scale"]
    norm = (ctx.analysis.gradients or {}).get("total_norm")
    k3_divides = where(cite("k3_unscale_gradients"))
    if ctx.legacy:
        return Finding(
            "LOSS_SCALE_SKIPPED", "warning", None,
            f"{d.fn.__qualname__} hands its gradients to a LossScaleOptimizer ({ls['inner']}) without "
            f"get_scaled_loss / get_unscaled_gradients (tf_keras's own train_step scales through minimize: "
            f"{where(cite('tf_minimize'))}). tf_keras applies the gradients as given, only warning "
            f"({where(cite('tf_apply_unscaled'))}), so the update is the plain gradient, but float16 "
            f"gradients below about 6e-8 underflow to 0 without the scale ({fmt(s)}). Keras 3 would divide these "
            f"unscaled gradients by the scale ({k3_divides}). Inside the tape write scaled = "
            "self.optimizer.get_scaled_loss(loss), then grads = self.optimizer.get_unscaled_gradients("
            "tape.gradient(scaled, ...)).")
    applied = f": |gradient| {fmt(norm)} is applied as {fmt(norm / s)}" if norm is not None and s else ""
    return Finding(
        "LOSS_SCALE_SKIPPED", "error", None,
        f"{d.fn.__qualname__} hands its gradients to a LossScaleOptimizer ({ls['inner']}) but never scales its "
        f"loss (Keras's own train_step calls self.optimizer.scale_loss(loss): "
        f"{where(cite('k3_scale_loss'))}), and the optimizer divides every gradient by its dynamic scale "
        f"all the same ({k3_divides}): {ls['inner']} applies 1/{fmt(s)} of the gradient of the loss{applied}. The "
        f"scale doubles after {ls.get('growth_steps') or 'a number of'} finite steps, shrinking the updates "
        "further. Inside the tape write loss = self.optimizer.scale_loss(loss) before tape.gradient (tf_keras "
        f"would apply these gradients as given: {where(cite('tf_apply_unscaled'))}).")


def check_unused_override(ctx):
    """A loss method override this backend's trainer never calls (`facts["unused_overrides"]`)."""
    for name in ctx.facts.get("unused_overrides") or []:
        line = ctx.cite("k3_step_loss", "k3_step_loss")
        total = ctx.analysis.total.train_step
        yield Finding(
            "OVERRIDE_NEVER_CALLED", "warning", None,
            f"{name} overrides stateless_compute_loss, which only the JAX backend's trainer calls "
            f"(JAXTrainer.compute_loss_and_updates); on this backend train_step takes the loss from "
            f"self._compute_loss ({where(line)}), so the override changes nothing this model trains on: the "
            f"loss the real train_step computed here, {fmt(total)}, is without it. To change the loss on every "
            "backend, override compute_loss instead.")
