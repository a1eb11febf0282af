"""`lossmap report --compare-engines`: one model definition, both engines, side by side.

The model has to exist in both engines: a factory whose first parameter is the
Keras module (`def build(keras): ...`, called once with `tf_keras` and once with
`keras`), or a tf_keras `.keras`/`.h5` file that Keras 3 can load too. The
tf_keras model's weights are copied into the Keras 3 one when the two weight
lists line up (else each keeps its own, and the table says so), both run on the
same batch with the same seed, and the result is the primary analysis (tf_keras
unless `--engine keras3`) with `engine_comparison` filled in: plain data, one
row per term, the totals, and the ENGINE_DIFF_* differences of both runs with
the source lines of both engines.
"""
from __future__ import annotations

import os

import numpy as np

from lossmap.errors import UserError


def _modules():
    from lossmap.engines import engine_class

    if not engine_class("tf_keras").installed():
        raise UserError("--compare-engines needs both engines, and tf_keras is not installed: pip install tf_keras")
    import keras
    import tf_keras

    return {"tf_keras": tf_keras, "keras3": keras}


def build_both(spec: str, imports=(), unsafe=False) -> dict:
    """{engine name: live model} for `spec` (a factory taking the Keras module, or a tf_keras file)."""
    from lossmap import load as load_module

    mods = _modules()
    load_module.import_modules(imports)
    if not os.path.exists(spec) and load_module.is_factory_spec(spec):
        if not load_module.factory_takes_module(spec):
            raise UserError(f"--compare-engines needs the model in both engines: make the factory take the Keras "
                            f"module as its first argument (def {spec.rpartition(':')[2]}(keras): ...), or give a "
                            "tf_keras .keras/.h5 file")
        models = {name: load_module._call_factory(spec, mod) for name, mod in mods.items()}
        for name, model in models.items():
            if load_module.engine_for("auto", obj=model)[0] != name:
                raise UserError(f"the factory {spec} called with the {name} module did not build a {name} model "
                                "(use the module it is given for every layer)")
        return models
    meta = load_module.archive_metadata(spec)
    from lossmap.engines import engine_class

    models = {}
    try:
        models["tf_keras"] = load_module.load_archive(engine_class("tf_keras")(), spec, meta, safe_mode=not unsafe)
    except UserError as exc:
        raise UserError(f"--compare-engines: tf_keras cannot load {os.path.basename(spec)}: {exc}") from exc
    try:
        models["keras3"] = load_module.load_archive(engine_class("keras3")(), spec, meta, safe_mode=not unsafe)
    except UserError as exc:
        raise UserError(f"--compare-engines: Keras 3 cannot load {os.path.basename(spec)} "
                        f"(saved by Keras {meta.get('keras_version') or '?'}): {exc}") from exc
    return models


def _copy_weights(src, dst) -> str:
    a, b = src.get_weights(), dst.get_weights()
    if len(a) == len(b) and all(np.shape(x) == np.shape(y) for x, y in zip(a, b)):
        dst.set_weights(a)
        return "the tf_keras model's weights were copied into the Keras 3 model, so the numbers compare term by term"
    return (f"the weights could not be copied ({len(a)} arrays in tf_keras, {len(b)} in Keras 3, or shapes differ): "
            "each engine runs its own initial weights, so values differ beyond the loss semantics")


def _batch_arrays(eng, model, data, batch_size, seed):
    from lossmap import batch as batch_module

    sig = eng.signature(model)
    if data is not None:
        b = batch_module.from_file(os.fspath(data), sig)
    else:
        b = batch_module.synthetic(sig, batch_size, seed)
    xs = [b.x[s.name] for s in sig.inputs]
    ys = [b.y.get(s.name) for s in sig.outputs]
    sw = [b.sample_weight.get(s.name) for s in sig.outputs] if b.sample_weight else None
    return (xs, ys, sw) if sw is not None else (xs, ys), b


def analyse_both(spec, data=None, *, batch_size=8, seed=0, imports=(), unsafe=False, engine="auto",
                 **options):
    """The primary analysis with `engine_comparison` filled in (see the module docstring).

    `options` go to `lossmap.pipeline.analyse` for both runs (rtol, atol, gradients, ...).
    """
    from lossmap.engines import engine_class
    from lossmap.pipeline import analyse

    spec = os.fspath(spec)
    models = build_both(spec, imports, unsafe)
    weights_note = _copy_weights(models["tf_keras"], models["keras3"])
    random_layers = [layer.name for layer in models["tf_keras"]._flatten_layers(include_self=False)
                     if getattr(layer, "_random_generator", None) is not None or "Variational" in type(layer).__name__]
    if random_layers:
        weights_note += (f"; {', '.join(random_layers)} draw random numbers in training mode, and the two engines "
                         "draw differently, so terms downstream of them differ by chance as well")
    arrays, batch = _batch_arrays(engine_class("tf_keras")(), models["tf_keras"], data, batch_size, seed)
    if isinstance(arrays[1], list) and all(v is None for v in arrays[1]):
        arrays = (arrays[0], None) + tuple(arrays[2:])
    results = {}
    for name in ("tf_keras", "keras3"):
        results[name] = analyse(models[name], arrays, seed=seed, engine=name, **dict(options, engine_diffs=True))
    primary = "keras3" if engine == "keras3" else "tf_keras"
    result = results[primary]
    result.model.source = spec
    result.batch.source = "file" if data is not None else "synthetic"
    result.batch.seed = None if data is not None else seed
    result.engine_comparison = comparison(results, weights_note, batch_note=(
        f"the same {batch.size}-sample batch ({'from ' + os.path.basename(os.fspath(data)) if data else f'synthetic, seed {seed}'}) "
        "in both engines"))
    return result


def comparison(results: dict, weights_note: str, batch_note: str) -> dict:
    """Plain data for the report: one row per term id, both totals, the differences of both runs."""
    tf_a, k3_a = results["tf_keras"], results["keras3"]
    by_id = {name: {t.id: t for t in a.terms} for name, a in results.items()}
    order = [t.id for t in tf_a.terms] + [t.id for t in k3_a.terms if t.id not in by_id["tf_keras"]]
    rows = []
    for tid in order:
        cells = {}
        for name in ("tf_keras", "keras3"):
            t = by_id[name].get(tid)
            cells[name] = None if t is None else {"value": t.value, "weight": t.weight,
                                                   "contribution": t.contribution, "shape": t.shape}
        a, b = cells["tf_keras"], cells["keras3"]
        diff = None if a is None or b is None else b["contribution"] - a["contribution"]
        kind = (by_id["tf_keras"].get(tid) or by_id["keras3"].get(tid)).kind
        rows.append({"id": tid, "kind": kind, "tf_keras": a, "keras3": b, "difference": diff,
                     "note": _row_note(a, b, diff)})
    totals = {name: {"version": a.model.keras_version, "reproduced": a.total.reproduced,
                     "compute_loss": a.total.compute_loss, "train_step": a.total.train_step,
                     "verified": a.total.verified} for name, a in results.items()}
    diffs, seen = [], set()
    for name in ("tf_keras", "keras3"):
        for d in (results[name].engine_comparison or {}).get("differences", []):
            if d["code"] not in seen:
                seen.add(d["code"])
                diffs.append(d)
    return {"engines": ["tf_keras", "keras3"], "rows": rows, "totals": totals, "differences": diffs,
            "weights": weights_note, "batch": batch_note}


def _row_note(a, b, diff):
    if a is None:
        return "only in Keras 3"
    if b is None:
        return "only in tf_keras"
    scale = max(abs(a["contribution"]), abs(b["contribution"]), 1e-12)
    if diff is not None and abs(diff) <= 1e-5 * scale + 1e-7:
        return "same"
    return "differs"
