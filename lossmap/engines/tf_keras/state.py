"""tf_keras: every variable a forward pass or a train step can touch, and the seed counters, snapshotted."""
from __future__ import annotations

from lossmap.engines.common.helpers import all_metrics
from lossmap.engines.common.state import VariableSnapshot


class ModelState(VariableSnapshot):
    """Every variable a forward pass or a train step can touch, by value (weights, BatchNorm
    statistics, optimizer variables including `iterations`, metric state, stateful RNG generators),
    and the Python op-seed counters of seeded layers."""

    def __init__(self, model):
        super().__init__(model, _stateful_variables(model))
        # backend.RandomGenerator with a user seed counts its legacy op seeds in Python (make_legacy_seed)
        self.seeds = [(g, g._seed) for g in _random_generators(model)]

    def restore(self):
        super().restore()
        for g, seed in self.seeds:
            g._seed = seed

    def identical(self) -> bool:
        return all(g._seed == seed for g, seed in self.seeds) and super().identical()


def _random_generators(model):
    from tf_keras.src.backend import RandomGenerator

    found, seen = [], set()
    for layer in model._flatten_layers():
        for value in list(vars(layer).values()):
            if isinstance(value, RandomGenerator) and id(value) not in seen and hasattr(value, "_seed"):
                seen.add(id(value))
                found.append(value)
    return found


def _stateful_variables(model):
    found, seen = [], set()

    def add(vs):
        for v in vs or ():
            if v is not None and id(v) not in seen and hasattr(v, "assign"):
                seen.add(id(v))
                found.append(v)

    add(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        opt_vars = getattr(optimizer, "variables", None)
        if callable(opt_vars) and not isinstance(opt_vars, (list, tuple)):
            opt_vars = opt_vars()
        add(list(opt_vars or ()))
        iterations = getattr(optimizer, "_iterations", None)
        add([iterations])
    for m in all_metrics(model):
        add(m.variables)
    for layer in model._flatten_layers():
        gen = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if gen is not None and hasattr(gen, "state"):
            add([gen.state])
    return found
