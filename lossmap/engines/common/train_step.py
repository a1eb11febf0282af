"""The verification both engines run: the model's real `train_step`, eagerly, from zeroed metrics."""
from __future__ import annotations

import contextlib

import numpy as np

from lossmap.engines.base import Verification
from lossmap.engines.common.helpers import all_metrics, one_line


def no_optimizer(notes) -> Verification:
    return Verification(None, "the model has no optimizer (not compiled)", "eager", notes, True)


def swap_in_fresh_optimizer(model, optimizer, notes):
    """Set a fresh copy of the unbuilt `optimizer` on `model`; returns `optimizer`, to put back.

    Building the user's optimizer would add state to their model: the copy takes the step instead.
    """
    clone = type(optimizer).from_config(optimizer.get_config())
    object.__setattr__(model, "optimizer", clone)
    notes.append("the optimizer was not built yet, so a fresh copy of it took the step")
    return optimizer


def run_train_step(model, data, notes, swapped=None, recorder=None, step=None) -> Verification:
    """`model.train_step(data)` and the 'loss' it logs; then the user's optimizer (`swapped`) is put back.

    `recorder(model)`: a context manager around the step whose `.gradient` becomes
    `Verification.total_gradient`. `step(model, data)`: how the backend calls its train_step
    and gets the logs (default: `model.train_step(data)`).
    """
    try:
        # The logged 'loss' is a running Mean (over the epoch, after fit()): from zero it is this
        # step's loss. The state snapshot puts the metrics back afterwards.
        for metric in all_metrics(model):
            metric.reset_state()
        applied = recorder(model) if recorder is not None else None
        with applied if applied is not None else contextlib.nullcontext():
            logs = step(model, data) if step is not None else model.train_step(data)
        loss = logs.get("loss") if isinstance(logs, dict) else None
        if loss is None:
            return Verification(None, "train_step returned no 'loss' in its logs", "eager", notes, True)
        return Verification(float(np.array(loss)), None, "eager", notes, True,
                            total_gradient=applied.gradient if applied is not None else None)
    except Exception as exc:
        return Verification(None, one_line(exc), "eager", notes, True)
    finally:
        if swapped is not None:
            object.__setattr__(model, "optimizer", swapped)


class Attributed:
    """A pending attribution with nothing left to do (`Engine.begin_attribution` of an engine that
    takes every backward pass at once): `finish` hands over the accumulator."""

    wants_total_gradient = False

    def __init__(self, acc, notes):
        self.acc, self.notes = acc, notes

    def finish(self, total_gradient=None):
        return self.acc, self.notes
