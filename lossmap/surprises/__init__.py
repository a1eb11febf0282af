"""Where Keras changes the training loss without an error, told: with the installed line that does it,
the number it changes for this model on this batch, and what to write instead.

lossmap reproduces these behaviours exactly; these findings say so. One check per behaviour, a
small named function `check_<name>(ctx)` yielding `Finding`s, in `CHECKS` (the order of the
findings): `compiled.py` holds those about what `compile()` and the batch say, `training.py`
those about how the loss is trained on (replicas, loss scaling, an override the backend never calls), `backends.py` those of one
backend's own arithmetic. Each cites a statement of an
engine's `citations.py`, found in the installed source by structure (`lossmap.engine_diff.cite`),
and computes its numbers with the engine's NumPy rules from the captured tensors. What a check
needs from the live model comes from `Engine.engine_facts`; this package never calls Keras.

    >>> analysis.findings += findings(analysis, capture, eng, model, sig)   # doctest: +SKIP
"""
from __future__ import annotations

from lossmap.surprises import backends, compiled, training
from lossmap.surprises.common import Context

CHECKS = (
    compiled.check_names,
    compiled.check_timestep_weights,
    training.check_loss_scale,
    compiled.check_list_loss_on_dict_outputs,
    training.check_replicas,
    compiled.check_regularizer_gaps,
    compiled.check_sample_weight_dilution,
    backends.check_crossentropy_clipped,
    training.check_unused_override,
)


def findings(analysis, capture, eng, model, sig=None, result=None) -> list:
    """Every check's findings on one analysis; `result`: custom training code's `CustomResult`."""
    facts = eng.engine_facts(model, sig if sig is not None else eng.signature(model))
    ctx = Context(analysis, capture, facts, eng.rules, eng.name, result=result, model=model)
    return [f for check in CHECKS for f in check(ctx)]
