"""Findings about the user's own training code, each citing the line it is about.

Codes (stable, in the contract): MODEL_LOSSES_IGNORED, TRAINING_FLAG_MISSING, DEAD_TERM,
INPUT_GRADIENT_TERM, LOGGED_LOSS_DIFFERS, MULTIPLE_OPTIMIZERS, UNSPLIT_LOSS; plus
GRADIENTS_NOT_VERIFIED when the step applied other gradients than its terms add up to.
"""
from __future__ import annotations

import math

import libcst.matchers as m

from lossmap import gradient_layout, gradients as gradients_module
from lossmap.analysis import Finding
from lossmap.steps.split import dependencies

BREAKS = (
    (m.Call(func=m.Attribute(attr=m.Name("stop_gradient")) | m.Name("stop_gradient")), "stop_gradient"),
    (m.Call(func=m.Attribute(attr=m.Name("numpy"))), ".numpy(), which leaves TensorFlow"),
    (m.Call(func=m.Attribute(attr=m.Name("item"))), ".item(), a Python number outside the autodiff graph"),
    (m.Call(func=m.Attribute(attr=m.Name("detach"))), ".detach(), which torch autograd does not record"),
    (m.Call(func=m.Attribute(value=m.Name("np") | m.Name("numpy"))), "a NumPy call, which TensorFlow does not record"),
    (m.Call(func=m.Name("float") | m.Name("int")), "a Python number, which TensorFlow does not record"),
)


def collect(analysis, eng, model, result) -> list:
    out = []
    for rule in RULES:
        out += rule(analysis, eng, model, result)
    return out


# ---------------------------------------------------------------- rules
def _model_losses_ignored(analysis, eng, model, result):
    if not result.losses_after or result.unexpanded or any(
            t.kind in ("weight_regularizer", "activity_regularizer", "add_loss") for t in analysis.terms):
        return []
    if _reads_losses_unsplit(result.decomposition):
        return []
    kinds = {}
    for kind, _ in result.losses_after:
        kinds[kind] = kinds.get(kind, 0) + 1
    total = math.fsum(v for _, v in result.losses_after)
    what = ", ".join(f"{n} {k.replace('_', ' ')}{'s' if n > 1 else ''}" for k, n in sorted(kinds.items()))
    d = result.decomposition
    o = d.parts.objectives[0]
    where = f"line {o.gradient.line}: {o.gradient.target_text}" if o.gradient is not None else d.fn.__qualname__
    inside = _where_differentiated(o)
    shown = getattr(d.words, "shown", None)  # a step lossmap wrote out (JAX): name the user's lines instead
    if shown:
        differentiated = d.words.function.__qualname__
        where = f"what {differentiated} returns, differentiated at line {shown['line']} of {shown['function']}"
        inside = f"inside {differentiated}, the function jax.value_and_grad differentiates"
    return [Finding("MODEL_LOSSES_IGNORED", "warning", None,
                    f"model.losses holds {len(result.losses_after)} entries ({what}) adding up to {total:.6g} on this "
                    f"batch, and the loss the step differentiates ({where}) never includes them: Keras adds them "
                    "only inside compute_loss, so a hand-written step must add sum(model.losses) (or call "
                    f"compute_loss) {inside}")]


def _reads_losses_unsplit(d) -> bool:
    """Some addend's value comes from a `.losses` read lossmap kept inside one term (`if model.losses: loss = loss
    + tf.add_n(model.losses)`, `torch.sum(*model.losses)`): the loss does include them, unsplit."""
    losses = m.Attribute(attr=m.Name("losses"))
    for part in (d, d.nested):
        for a in (part.parts.addends if part is not None else []):
            statements = [part.step.statements[a.statement]] + dependencies(part.step, a.value_node, a.statement)
            if any(m.findall(s.node, losses) for s in statements):
                return True
    return False


def _where_differentiated(o) -> str:
    backward = o.gradient is not None and getattr(o.gradient, "recorded_as", None) == "backward"
    return f"into {o.gradient.target_text} before .backward()" if backward else "inside the tape itself"


def _training_flag_missing(analysis, eng, model, result):
    d = result.decomposition
    if d.kind == "keras_default":
        return []
    out = []
    for call in d.step.model_calls:
        if call.training is not None:
            continue
        target = resolve_call(call, d, model, result.step_function)
        if target is None:
            continue
        behaving = eng.training_layers(target)
        if not behaving:
            continue
        shown = ", ".join(behaving[:5]) + (f" and {len(behaving) - 5} more" if len(behaving) > 5 else "")
        out.append(Finding("TRAINING_FLAG_MISSING", "warning", None,
                           f"line {call.line} calls {call.func_text}(...) without training=True, and it has layers "
                           f"that compute something else in training ({shown}): in this step they run in "
                           f"inference mode; write {call.func_text}(..., training=True)"))
    return out


def _input_gradient_terms(analysis, eng, model, result):
    d = result.decomposition
    inputs = [g for g in d.step.gradients if g.kind == "input"]
    if not inputs:
        return []
    out = []
    for a in result.assembled:
        if a.key[0] != "addend":
            continue
        addend = d.parts.addends[a.key[-1]] if len(a.key) == 2 else None
        if addend is None:
            continue
        deps = {s.index for s in dependencies(d.step, addend.value_node, addend.statement)} | {addend.statement}
        for g in inputs:
            if g.statement in deps:
                out.append(_input_gradient_finding(analysis, d, a.term, g))
    return out


def _input_gradient_finding(analysis, d, term, g):
    objective = d.parts.objectives[0].gradient
    outer = objective.tape if objective is not None else None
    record = d.recorder.gradients.get(g.index)
    names = {t.index: t.name for t in d.step.tapes}
    recording = [names.get(i) for i in record.inside] if record is not None else list(g.enclosing_tapes)
    entry = (analysis.gradients or {}).get("terms", {}).get(term.id)
    unit = gradient_layout.unit_of(analysis.gradients, term.id) if entry else None
    layers = len(gradient_layout.reach(analysis.gradients, unit)["layers"]) if unit else 0
    reach = f"; measured: its gradient reaches {layers} layer(s)" \
        if entry and not entry["dead"] else "; measured: it gives the weights no gradient"
    if outer in recording:
        how = (f"the tape `{outer}` that differentiates the loss was recording when it was taken, so the "
               "second-order path (through d output / d input) trains the weights")
    else:
        how = (f"it was taken while the tape `{outer}` that differentiates the loss was not recording, so the "
               "second-order path is lost: the term trains nothing through it")
    return Finding("INPUT_GRADIENT_TERM", "info", term.id,
                   f"{term.id} depends on {g.results[0] if g.results else 'a gradient'} = "
                   f"{g.tape}.gradient({g.target_text}, {g.sources_text}) (line {g.line}), the gradient of an "
                   f"output with respect to an input; {how}{reach}")


def _logged_loss_differs(analysis, eng, model, result):
    d = result.decomposition
    if result.logged is None or result.target is None:
        return []
    total = analysis.total
    if abs(result.logged - result.target) <= total.atol + total.rtol * max(abs(result.logged), abs(result.target)):
        return []
    if d.kind == "keras_default":
        where = "Keras's train_step logs " + ("the compiled loss's own running mean (LossesContainer's metric), "
                                              "not what compute_loss returns" if analysis.model.engine == "tf_keras"
                                              else "another value than compute_loss returns")
        return [Finding("LOGGED_LOSS_DIFFERS", "warning", None,
                        f"{where}: it logs loss {result.logged:.7g} while the model trains on {result.target:.7g} "
                        f"(the value of {d.nested.fn.__qualname__ if d.nested else 'compute_loss'})")]
    line = d.step.statements[d.step.returns[-1]].line if d.step.returns else d.step.start_line
    return [Finding("LOGGED_LOSS_DIFFERS", "warning", None,
                    f"the step returns loss {result.logged:.7g} (line {line}) but differentiates "
                    f"{result.target:.7g}: the logged loss is not the loss it trains on")]


def _multiple_optimizers(analysis, eng, model, result):
    objectives = result.objectives
    if len(objectives) < 2 or len({o["optimizer"] for o in objectives}) < 2:
        return []  # one optimizer for several losses: GRADIENT_TRANSFORMED says how it combines them
    parts = [f"{o['id']} = {o['target']} (line {o['source']['line']}; {o['optimizer'] or 'no optimizer seen'}; "
             f"{len(o['terms'])} term(s); {len(o['variables'])} variable(s))" for o in objectives]
    shared = sorted(set(objectives[0]["variables"]).intersection(*[set(o["variables"]) for o in objectives[1:]]))
    text = "the step differentiates several losses, each with its own optimizer: " + "; ".join(parts)
    if shared:
        text += f". They share {len(shared)} variable(s) ({', '.join(shared[:4])}{'...' if len(shared) > 4 else ''})"
        comparison = result.update_comparison
        if comparison:
            first = objectives[0]["optimizer"] or "the first optimizer"
            parts = [f"{v} {c['as_written']:.3g} vs {c['summed']:.3g}" for v, c in list(comparison.items())[:4]]
            text += (f". First update of each shared variable (norm), the step as written (each optimizer on its "
                     f"own loss, both applied) vs one {first} on the summed loss: " + "; ".join(parts))
    else:
        text += ". They share no variable: summing the losses with one optimizer would train each part alike " \
                "only for optimizers that treat variables independently"
    return [Finding("MULTIPLE_OPTIMIZERS", "info", None, text)]


def _unsplit(analysis, eng, model, result):
    return [Finding("UNSPLIT_LOSS", "info", term_id, f"{term_id or 'a term'} was not split further: {reason}")
            for term_id, reason in result.unsplit]


def _gradients_not_verified(analysis, eng, model, result):
    if result.gradients_verified is not False:
        return []
    return [Finding("GRADIENTS_NOT_VERIFIED", "error", None,
                    "the gradients the step applies are not the sum of its terms' gradients: "
                    + ("; ".join(result.gradient_notes) or "the decomposition does not account for what trains the "
                                                           "model"))]


def _gradients_transformed(analysis, eng, model, result):
    if not result.transformed:
        return []
    return [Finding("GRADIENT_TRANSFORMED", "info", None,
                    f"{', '.join(result.transformed)}: the step changes the gradient between taking it and applying "
                    "it (clipping, scaling, masking): the terms add up to what it differentiates, and the optimizer "
                    "receives something else; per-term shares are of the gradient before the change")]


RULES = (_gradients_transformed, _model_losses_ignored, _training_flag_missing, _input_gradient_terms, _logged_loss_differs,
         _multiple_optimizers, _unsplit, _gradients_not_verified)


# ---------------------------------------------------------------- gradients
def gradient_findings(analysis, result, model=None) -> list:
    """The gradient statistics' findings; a dead custom term says where its path breaks."""
    out = []
    for f in gradients_module.findings(analysis.gradients, analysis.terms):
        if f.code == "DEAD_TERM" and f.term and f.term.startswith("custom/"):
            f = Finding("DEAD_TERM", "warning", f.term, f"{f.term} has no gradient path to any trainable variable: "
                        + break_reason(result, f.term, model) + "; it changes the loss value but trains nothing")
        out.append(f)
    return out


def break_reason(result, term_id, model=None) -> str:
    """Where the term's path to the weights breaks, as far as the source tells."""
    d = result.decomposition
    assembled = next((a for a in result.assembled if a.term.id == term_id), None)
    if assembled is None or assembled.key[0] != "addend" or len(assembled.key) != 2:
        return "lossmap cannot tell from the source where the path breaks"
    addend = d.parts.addends[assembled.key[-1]]
    use = d.step.statements[addend.statement]
    deps = dependencies(d.step, addend.value_node, addend.statement)
    for stmt in [use] + deps:
        for matcher, what in BREAKS:
            if m.findall(stmt.node, matcher):
                return f"line {stmt.line} passes it through {what}"
    objective = d.parts.objectives[assembled.objective].gradient
    tape = next((t for t in d.step.tapes if objective is not None and t.name == objective.tape), None)
    computed = next((s for s in deps if s.line == addend.value_line), use)
    if tape is not None and tape.name not in computed.tapes:
        return (f"it is computed on line {computed.line}, outside `with ... as {tape.name}:` (lines {tape.line}-"
                f"{tape.end_line}), so the tape never recorded it")
    calls = {c.statement for c in d.step.model_calls if resolve_call(c, d, model, result.step_function) is not None}
    if model is not None and not any(s.index in calls for s in [computed] + deps):
        return "it is computed from the batch alone (no call of the model in it), a constant for the optimizer"
    return "lossmap cannot tell from the source where the path breaks"


def resolve_call(call, d, model, step_function):
    """The live model or layer a call in the step calls, or None when it is something else."""
    if call.root == "self" and d.kind in ("train_step", "compute_loss"):
        obj = model
    elif step_function is not None and step_function.model_first and call.root == d.step.params[0]:
        obj = model
    else:
        obj = _lookup(d.fn, call.root)
        if obj is None:
            return None
    for attr in call.attrs:
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj if hasattr(obj, "_flatten_layers") and callable(obj) else None


def _lookup(fn, name):
    cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    if name in cells:
        try:
            return cells[name].cell_contents
        except ValueError:
            return None
    return fn.__globals__.get(name)
