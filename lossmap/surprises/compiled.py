"""The surprises in what `compile()` and the batch say: sample weights on time steps, a list `loss` on
dict outputs, sample weights under `sum_over_batch_size`, layers a regularizer missed, names a traced
`fit` rejects. Each check: `check_<name>(ctx)` yielding `Finding`s (`lossmap.surprises.CHECKS`).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from lossmap.analysis import Finding
from lossmap.surprises.common import (
    KERAS3_MEANS,
    TF_KERAS_MEANS,
    cite,
    combine_masks,
    elementwise,
    fmt,
    listed,
    reduced,
    where,
)


# ---------------------------------------------------------------- per-sample weights on a per-timestep loss
def check_timestep_weights(ctx):
    """Weights of shape (batch,) on a loss of shape (batch, time): Keras 3 broadcasts them along the last
    axis when it happens to equal the batch size; tf_keras expands them to rows."""
    for c in ctx.capture.compiled:
        sw = c.sample_weight
        parts = elementwise(ctx, c) if sw is not None and np.ndim(sw) == 1 else None
        if parts is None or parts[0].ndim < 2 or parts[0].shape[-1] == 1:
            continue
        values, mask = parts
        batch, last = values.shape[0], values.shape[-1]
        uniform = bool(np.all(sw == np.ravel(sw)[0]))
        if uniform and last == batch:
            continue  # the same number either way
        rows = np.broadcast_to(np.reshape(sw, (-1,) + (1,) * (values.ndim - 1)), values.shape)
        shaped = (batch,) + (1,) * (values.ndim - 1)
        fix = (f"Pass the weights with shape {shaped} (sample_weight{'[:, None]' * (values.ndim - 1)}), which "
               "both engines apply to whole samples.")
        tid = f"compiled/{c.name}"
        head = (f"{tid}: sample_weight has shape ({batch},) and the loss of output '{c.output}' has shape "
                f"{tuple(values.shape)} before its reduction (a value per time step). ")
        k3, tf = cite("k3_weight_multiply"), cite("tf_expand_weights")
        if ctx.legacy:
            yield _timestep_tf_keras(ctx, c, values, mask, tid, head, fix, k3, tf)
        elif last == batch:
            trained = reduced(ctx.rules, values, sw, mask, c.reduction)
            meant = reduced(ctx.rules, values, rows, mask, c.reduction)
            yield Finding(
                "SAMPLE_WEIGHT_ON_TIMESTEPS", "error", tid,
                head + f"Keras 3 does not expand the weights to rows: their shapes differ by a rank and the last "
                f"axis is not 1, so squeeze_or_expand_to_same_rank leaves them, and the multiply ({where(k3)}) "
                f"broadcasts them along the last axis, whose length happens to equal the batch size ({batch}): "
                f"weight j scales step j of every sample. The model trains on {fmt(trained)}; weighting each "
                f"sample's row, as meant (and as tf_keras does, {where(tf)}), gives {fmt(meant)}. {fix} With "
                "another batch size (the last batch of an epoch) the same multiply fails.")


def _timestep_tf_keras(ctx, c, values, mask, tid, head, fix, k3, tf):
    from lossmap.engines import engine_class

    batch, last = values.shape[0], values.shape[-1]
    trained = reduced(ctx.rules, values, c.sample_weight, mask, c.reduction)
    if last == batch:
        k3_rules = engine_class("keras3").rules
        k3_value = reduced(k3_rules, values, c.sample_weight, mask, "sum_over_batch_size" if c.reduction in
                           (None, "auto") else c.reduction)
        there = (f"with the last axis as long as the batch ({batch}) its multiply ({where(k3)}) broadcasts the "
                 f"weights along it, so weight j would scale step j of every sample: {fmt(k3_value)} instead")
    else:
        there = (f"its multiply ({where(k3)}) of shapes {tuple(values.shape)} and ({batch},) fails "
                 "('Incompatible shapes')")
    return Finding(
        "SAMPLE_WEIGHT_ON_TIMESTEPS", "info", tid,
        head + f"tf_keras expands the weights to rows ({where(tf)}), as meant: {fmt(trained)} on this batch. "
        f"Keras 3 does not: {there}. {fix}")


# ---------------------------------------------------------------- a list `loss` on dict outputs
def check_list_loss_on_dict_outputs(ctx):
    """A list `loss` / `loss_weights` with dict outputs: paired in the flattened (sorted-key) order."""
    f = ctx.facts
    code, flat = f.get("output_code_order"), f.get("output_flat_order")
    losses, weights = f.get("losses"), f.get("loss_weights")
    given = {"loss": losses, "loss_weights": weights}
    lists = [arg for arg, v in given.items() if isinstance(v, (list, tuple))]
    if not code or code == flat or not lists or any(len(given[a]) != len(code) for a in lists):
        return  # a list of another length is ENGINE_DIFF_LOSS_WEIGHTS_VALIDATION's
    by_output = {c.output: c for c in ctx.capture.compiled}
    rows, meant_total = [], 0.0
    for i, out in enumerate(code):
        got = by_output.get(out)
        spec = by_output.get(flat[i]) if isinstance(losses, (list, tuple)) else got
        if got is None or spec is None:
            return  # an output without a loss: the lists do not line up with the outputs this way
        weight = float(weights[i]) if isinstance(weights, (list, tuple)) else got.weight
        value = _value_with(ctx, spec, got)
        meant_total = None if value is None or meant_total is None else meant_total + value * (
            1.0 if weight is None else weight)
        if (_label(spec), weight) != (_label(got), got.weight):
            rows.append(f"'{out}' got {_label(got)}{_times(got.weight)} (meant: {_label(spec)}{_times(weight)})")
    if not rows:
        return
    trained = sum(t.contribution for t in ctx.analysis.terms if t.kind == "compiled")
    c = ctx.cite("k3_pack_list_loss", "tf_flatten_losses") if "loss" in lists else \
        ctx.cite("k3_pack_list_weights", "tf_flatten_loss_weights")
    either = " and ".join(f"`{a}`" for a in lists)
    yield Finding(
        "LIST_LOSS_ON_DICT_OUTPUTS", "warning", None,
        f"the model's outputs are a dict written in the order {code}, and {either} "
        f"{'is a list' if len(lists) == 1 else 'are lists'}: {ctx.label} pairs a list with a dict of outputs in "
        f"the order it flattens the dict, its sorted keys {flat} ({where(c)}), not in the order the code wrote "
        f"them. What each output really got, against the list read in the code's order: {'; '.join(rows)}. "
        f"The compiled loss is {fmt(trained)} on this batch; paired in the code's order it would be "
        f"{fmt(meant_total)}. Give {either} as dicts keyed by output name "
        f"(loss={{{', '.join(repr(o) + ': ...' for o in code)}}}).")


def _label(c) -> str:
    return c.fn or c.loss_class


def _times(weight) -> str:
    return "" if weight is None else f" x {weight:g}"


def _value_with(ctx, spec, target):
    """The loss `spec` (a captured loss) on the tensors of output `target`, reduced: None where it cannot be
    computed independently or does not fit that output (Keras would fail on it)."""
    if spec.fn is None:
        return target.keras_value.item() if spec is target and np.ndim(target.keras_value) == 0 else None
    try:
        values, out_mask = ctx.rules.elementwise_loss(spec.fn, target.y_true, target.y_pred, target.logits,
                                                      spec.fn_kwargs, spec.dtype, ctx.capture.epsilon)
        return reduced(ctx.rules, values, target.sample_weight, combine_masks(target.mask, out_mask), spec.reduction)
    except Exception:  # noqa: BLE001 - shapes that do not fit: no number
        return None


# ---------------------------------------------------------------- sample weights under sum_over_batch_size
def check_sample_weight_dilution(ctx):
    """`sum_over_batch_size` divides by the number of entries, not by the weights' sum."""
    means = TF_KERAS_MEANS if ctx.legacy else KERAS3_MEANS
    for c in ctx.capture.compiled:
        reduction = c.reduction or ("auto" if ctx.legacy else None)
        if c.sample_weight is None or reduction not in means:
            continue
        w = np.ravel(np.asarray(c.sample_weight, np.float64))
        zeros = int(np.sum(w == 0))
        parts = elementwise(ctx, c)
        if parts is None or (not zeros and np.all(w == w[0])) or _on_timesteps(ctx, c, parts[0]):
            continue
        values, mask = parts
        trained = reduced(ctx.rules, values, c.sample_weight, mask, c.reduction)
        total = reduced(ctx.rules, values, c.sample_weight, mask, "sum")
        weight_sum = reduced(ctx.rules, np.ones_like(values), c.sample_weight, mask, "sum")
        alternative = total / weight_sum if weight_sum else 0.0
        c_div = ctx.cite("k3_divisor_size", "tf_divisor_size")
        yield Finding(
            "SAMPLE_WEIGHTS_DILUTE", "warning" if zeros else "info", f"compiled/{c.name}",
            f"compiled/{c.name}: reduction '{c.reduction}' divides the weighted sum by the number of entries "
            f"({values.size}), not by the sum of the weights ({fmt(weight_sum)}) ({where(c_div)}): "
            f"{_dilution(zeros, w.size)}. The model trains on {fmt(trained)}; divided by the weights' sum it "
            f"would be {fmt(alternative)}. If that is what you mean, {_instead(ctx, c, values)}.")


def _on_timesteps(ctx, c, values) -> bool:
    """Keras 3 weights time steps here (SAMPLE_WEIGHT_ON_TIMESTEPS says so): one cause, named once."""
    return (not ctx.legacy and np.ndim(c.sample_weight) == 1 and values.ndim >= 2
            and values.shape[-1] == values.shape[0] != 1)


def _dilution(zeros, n) -> str:
    if not zeros:
        return "the weights' mean scales the loss as well as weighting the samples against each other"
    return (f"{zeros} of {n} samples {'has' if zeros == 1 else 'have'} weight 0 and still count in the divisor, "
            "so they dilute the loss of the others (a mask does not: Keras rescales it by total/valid)")


def _instead(ctx, c, values) -> str:
    if ctx.legacy:
        return ("tf_keras has no reduction that divides by the weights' sum: normalise each batch's weights to "
                "mean 1, or use reduction 'sum' and divide by the batch's weight sum yourself")
    name = _LOSS_CLASSES.get(c.fn) or ("".join(p.title() for p in c.fn.split("_")) if c.fn else c.loss_class)
    fix = f"compile the loss with reduction='mean_with_sample_weight' (keras.losses.{name}(reduction=...))"
    if np.size(c.sample_weight) == values.size:
        return fix + ", which divides by it"
    return (fix + f", and give a weight for every entry (shape {tuple(values.shape)}): that reduction divides by "
            "the sum of the weights as given")


_LOSS_CLASSES = {"kl_divergence": "KLDivergence"}  # where the class name is not the function's in CamelCase


# ---------------------------------------------------------------- layers a regularizer missed
def check_regularizer_gaps(ctx):
    """Most layers of a family carry a weight regularizer and some do not: name those left out."""
    families = {}
    for layer in ctx.facts.get("regularizable") or []:
        if layer["trainable"]:
            families.setdefault(layer["family"], []).append(layer)
    for family, members in families.items():
        regularized = [m for m in members if any(w["regularizer"] for w in m["weights"])]
        missing = [m for m in members if m not in regularized]
        if len(regularized) < 2 or not missing:
            continue
        whole_classes = not ({m["class"] for m in missing} & {m["class"] for m in regularized})
        # an output layer is often left out on purpose: only layers inside the model make a finding
        if (len(missing) < len(regularized) or whole_classes) and not all(m["output"] for m in missing):
            yield _gap_finding(ctx, family, members, regularized, missing)


def _gap_finding(ctx, family, members, regularized, missing):
    used = Counter((w["regularizer"], _config_key(w["config"]), w["builtin"])
                   for m in regularized for w in m["weights"] if w["regularizer"])
    (reg, config_key, builtin), _ = used.most_common(1)[0]
    config = dict(config_key)
    label = f"{reg}({', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in config_key)})"
    value = None
    if builtin and reg in getattr(ctx.rules, "REGULARIZERS", {}):
        value = sum(float(ctx.rules.regularizer_value(reg, config, w["read"]())) for m in missing for w in m["weights"])
    arguments = sorted({f"{w['argument']}= on {m['class']}" for m in missing for w in m["weights"]})
    outputs = [m for m in missing if m["output"]]
    classes = sorted({m["class"] for m in regularized})
    c = ctx.cite("k3_regularizer_skip", "tf_regularizer_added")
    note = (f" ({len(outputs)} of them {'produces' if len(outputs) == 1 else 'produce'} a model output, which is "
            "often left unregularized on purpose)" if outputs else "")
    names = [f"{m['layer']} ({m['class']})" for m in missing]
    return Finding(
        "REGULARIZER_GAP", "warning", None,
        f"{len(regularized)} of {len(members)} trainable {family} layers carry a weight regularizer ({label} on "
        f"{listed(classes)}), but {len(missing)} {'does' if len(missing) == 1 else 'do'} not: {listed(names)}"
        f"{note}. Keras adds a regularizer only for the weights a layer was given one for ({where(c)}), so "
        f"nothing pulls their weights towards 0. The same {label} on their weights would add {fmt(value)} to the "
        f"loss on this batch. If they are meant to be regularized, set {listed(arguments)}.")


def _config_key(config) -> tuple:
    return tuple(sorted((k, v) for k, v in (config or {}).items() if isinstance(v, (int, float, str, bool))))


# ---------------------------------------------------------------- names a traced fit rejects
def check_names(ctx):
    """Layer, model and loss names a TensorFlow name scope rejects: `fit` and `evaluate` will fail."""
    if not ctx.facts.get("scoped_names"):
        return  # no name scope checks names on this backend (JAX)
    from tensorflow.python.framework import ops  # the installed TensorFlow's own patterns

    patterns = {"root": getattr(ops, "_VALID_OP_NAME_REGEX", None),
                "nested": getattr(ops, "_VALID_SCOPE_NAME_REGEX", None)}
    if None in patterns.values():
        return  # a TensorFlow that checks names elsewhere: nothing measured to go by
    bad, seen = [], set()
    for what, name, scope in ctx.facts.get("scoped_names") or []:
        # a backslash passes the scope pattern but not TensorFlow's node names (measured: "Node name
        # contains invalid characters" once the traced step is built)
        if name and (what, name) not in seen and (not patterns[scope].match(name) or "\\" in name):
            seen.add((what, name))
            bad.append((what, name, scope))
    if not bad:
        return
    scope = ctx.cite("k3_layer_scope", "tf_layer_scope")
    loss = ctx.cite("k3_loss_scope", "tf_loss_scope")
    check, root = cite("k3_graph_scope_check"), cite("k3_graph_root_scope_check")  # TensorFlow's, for both
    roots = any(s == "root" for _, _, s in bad)
    yield Finding(
        "NAME_BREAKS_FIT", "error", None,
        f"fit and evaluate will fail: {listed(f'{w} {n!r}' for w, n, _ in bad)} "
        f"{'has' if len(bad) == 1 else 'have'} characters TensorFlow refuses in a name scope (letters, digits "
        f"and _ . - > / only{'; at the root, the first one a letter, digit or .' if roots else ''}). When fit "
        f"traces its step, Keras opens a name scope with each layer's name ({where(scope)}) and each loss's "
        f"({where(loss)}), and TensorFlow's Graph.name_scope raises ValueError ({where(check)}"
        f"{'; ' + where(root) if roots else ''}); a backslash passes that pattern but fails TensorFlow's node names "
        "(measured: 'Node name contains invalid characters'). lossmap computes eagerly, as run_eagerly=True "
        f"does, where no scope is checked. Rename them: {listed(f'{n!r} -> {_safe(n, s)!r}' for _, n, s in bad)}.")


def _safe(name: str, scope: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return safe if scope == "nested" or re.match(r"[A-Za-z0-9.]", safe) else "m" + safe
