"""`lossmap report|explain MODEL --compare-backends`: one model, one batch, every installed Keras backend.

Keras fixes its backend at import, so each backend runs in its own process. This process runs the
backend it is on (`lossmap.backends.current()`) and makes the batch: the `--data` file, or the
synthetic batch written once to a temporary `.npz`, so every backend sees identical arrays. A
factory's model is built with each backend's own random initializers, so its weights go to the
other runs in an `.npz` too (a `.keras` file loads the same weights everywhere). Every other
installed backend then runs `lossmap check MODEL --format json --data BATCH.npz` in a child process
with `KERAS_BACKEND` set. The documents are put side by side (`comparison`: each term per backend,
the totals, the verdicts) and every difference beyond tolerance is explained from the backends'
own source lines (`lossmap.backend_diff`). A backend that is not installed, or that lossmap has no
engine for, is listed as skipped with why; one whose run fails, with its one line.

The result is this process's `Analysis` with `backend_comparison` set (in its JSON too).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import numpy as np

from lossmap import backend_diff, backends
from lossmap.engines import _CLASSES, BACKENDS
from lossmap.errors import UserError


def analyse_backends(spec, data=None, *, batch_size=8, seed=0, imports=(), unsafe=False, engine="auto",
                     rtol=None, atol=None, step=None, **options):
    """This backend's analysis of `spec`, with `backend_comparison` filled in (see the module docstring).

    `options` go to `lossmap.pipeline.analyse` for this backend's run (gradients, sources, ...); the
    other backends run without gradients (the comparison shows values and verdicts).
    """
    from lossmap.pipeline import analyse

    spec = os.fspath(spec)
    loaded = _load(spec, step, imports, unsafe, engine)
    model, factory = loaded.model, not os.path.exists(spec)
    with tempfile.TemporaryDirectory(prefix="lossmap-backends-") as tmp:
        batch_path, weights_path = _shared_files(tmp, loaded, data, batch_size, seed, factory)
        captures = []
        result = analyse(model, batch_path, seed=seed, engine=engine, rtol=rtol, atol=atol,
                         on_capture=captures.append, **options)
        result.model.source, result.model.saved_with = spec, loaded.saved_with
        result.batch.source = "file" if data is not None else "synthetic"
        result.batch.seed = None if data is not None else seed
        here = backends.current()
        docs, skipped, failed = _run_others(
            here, result, _child_argv(spec, batch_path, weights_path, seed, imports, unsafe, rtol, atol))
    import keras

    result.backend_comparison = comparison(
        docs, here, (result.total.rtol, result.total.atol), epsilon=float(keras.config.epsilon()),
        random_layers=[layer.name for layer in model._flatten_layers(include_self=False)
                       if getattr(layer, "seed_generator", None) is not None],
        skipped=skipped, failed=failed, arithmetic=arithmetic_on_these_outputs(captures[0]) if captures else {},
        batch_note=(f"the same {result.batch.size}-sample batch on every backend, "
                    + (f"from {os.path.basename(os.fspath(data))}" if data is not None else
                       f"synthetic (seed {seed}) and written once to an .npz")),
        weights_note=("the factory's model built here; its weights copied into every other backend's model"
                      if factory else f"every backend loads the same weights from {os.path.basename(spec)}"))
    return result


def _load(spec, step, imports, unsafe, engine):
    """The model in this process, once the request is known to be a comparison of Keras 3's backends."""
    from lossmap.load import load

    if step is not None:
        raise UserError("--compare-backends compares a MODEL (a .keras file or a factory); it does not take --step")
    if engine == "tf_keras":
        raise UserError("--compare-backends compares Keras 3's backends; tf_keras runs on TensorFlow only "
                        "(use --compare-engines for tf_keras and Keras 3)")
    loaded = load(spec, imports=imports, unsafe=unsafe, engine=engine)
    if loaded.engine.name != "keras3":
        raise UserError(f"--compare-backends compares Keras 3's backends, and {os.path.basename(spec)} is a "
                        f"{loaded.engine.name} model (use --compare-engines for tf_keras and Keras 3)")
    return loaded


def _shared_files(tmp, loaded, data, batch_size, seed, factory):
    """(the batch file every backend reads, the weights file a factory's models get or None)."""
    if data is None:
        from lossmap import batch as batch_module

        batch_path = os.path.join(tmp, "batch.npz")
        _write_batch(batch_module.synthetic(loaded.engine.signature(loaded.model), batch_size, seed), batch_path)
    else:
        batch_path = os.fspath(data)
    weights_path = None
    if factory:
        weights_path = os.path.join(tmp, "weights.npz")
        np.savez(weights_path, **{f"w/{i}": w for i, w in enumerate(loaded.model.get_weights())})
    return batch_path, weights_path


def _run_others(here, result, argv):
    """({backend: JSON document}, skipped, failed): this backend's document, and a child per other backend."""
    docs, skipped, failed = {}, [], []
    for b in BACKENDS:
        if b == here:
            docs[b] = result.to_dict()
            continue
        why = backends.missing(b) or (None if ("keras3", b) in _CLASSES else
                                      f"lossmap has no engine for Keras 3 on the {b} backend yet")
        if why:
            skipped.append({"backend": b, "why": why})
            continue
        code, out, err = backends.run_child(argv, b, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if code == 130:
            raise KeyboardInterrupt
        doc = _document(code, out)
        if doc is None:
            failed.append({"backend": b, "exit_code": code, "error": _last_line(err)})
        else:
            docs[b] = doc
    return docs, skipped, failed


def arithmetic_on_these_outputs(capture) -> dict:
    """{term id: {"values": {backend: value}, "outside": n, "entries": N}} for each compiled crossentropy:
    what each backend's loss arithmetic (its engine's NumPy rules, `Engine.rules`) gives on the outputs,
    labels and logits of this process's own forward pass. Identical inputs, so whatever differs here is
    the arithmetic, not the forward pass or its random numbers. `outside`: entries of the outputs below
    epsilon or above 1 - epsilon, where clipping changes a probability."""
    from lossmap.engines import engine_class

    out = {}
    for c in getattr(capture, "compiled", None) or []:
        if c.fn not in backend_diff.CROSSENTROPIES or c.fn_kwargs.get("from_logits"):
            continue
        values = {}
        for b in BACKENDS:
            if ("keras3", b) not in _CLASSES:
                continue
            try:
                rules = engine_class("keras3", b).rules
                elementwise, out_mask = rules.elementwise_loss(c.fn, c.y_true, c.y_pred, c.logits, c.fn_kwargs,
                                                               c.dtype, capture.epsilon)
                raw = rules.reduce_weighted(elementwise, c.sample_weight, out_mask if c.mask is None else c.mask,
                                            c.reduction)
                values[b] = float(np.mean(raw))
            except Exception:  # noqa: BLE001 - a mirror that cannot say leaves the value out
                continue
        pred = np.asarray(c.y_pred, dtype=np.float64)
        eps = float(capture.epsilon)
        out[f"compiled/{c.name}"] = {"values": values, "outside": int(np.sum((pred < eps) | (pred > 1 - eps))),
                                     "entries": int(pred.size), "logits": c.logits is not None}
    return out


def _write_batch(batch, path):
    arrays = {f"x/{k}": v for k, v in batch.x.items()}
    arrays.update({f"y/{k}": v for k, v in batch.y.items() if v is not None})
    arrays.update({f"sample_weight/{k}": v for k, v in (batch.sample_weight or {}).items() if v is not None})
    np.savez(path, **arrays)


def _child_argv(spec, batch_path, weights_path, seed, imports, unsafe, rtol, atol):
    argv = ["check", spec, "--format", "json", "--data", batch_path, "--no-gradients", "--engine", "keras3",
            "--seed", str(seed)]
    for module in imports or ():
        argv += ["--import", module]
    if unsafe:
        argv.append("--unsafe")
    if rtol is not None:
        argv += ["--rtol", repr(rtol)]
    if atol is not None:
        argv += ["--atol", repr(atol)]
    if weights_path:
        argv += ["--weights-from", weights_path]
    return argv


def _document(code, out):
    if code not in (0, 1):
        return None
    try:
        doc = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == "lossmap/1" else None


def _last_line(err) -> str:
    lines = [ln for ln in (err or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _close(a, b, rtol, atol) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def comparison(docs: dict, primary: str, tol, *, epsilon=1e-7, random_layers=(), skipped=(), failed=(),
               batch_note="", weights_note="", arithmetic=None) -> dict:
    """Plain data for the renderers: one row per term id (each backend's value, weight, contribution),
    the totals and verdicts per backend, and the differences beyond tolerance, explained."""
    rtol, atol = tol
    names = [b for b in BACKENDS if b in docs]
    order, info = [], {}
    for b in names:
        for t in docs[b]["terms"]:
            if t["id"] not in info:
                order.append(t["id"])
                info[t["id"]] = t
    rows = []
    for tid in order:
        values = {}
        for b in names:
            t = next((t for t in docs[b]["terms"] if t["id"] == tid), None)
            values[b] = None if t is None else {"value": t["value"], "weight": t["weight"],
                                                "contribution": t["contribution"]}
        present = [v["contribution"] for v in values.values() if v is not None]
        missing = [b for b, v in values.items() if v is None]
        spread = (max(present) - min(present)) if present and None not in present else None
        differs = bool(missing) or any(not _close(present[0], p, rtol, atol) for p in present[1:])
        note = ("only on " + ", ".join(b for b in names if values[b] is not None) if missing
                else "differs" if differs else "same")
        t = info[tid]
        rows.append({"id": tid, "kind": t["kind"], "fn": t.get("fn"), "config": t.get("config"),
                     "values": values, "spread": spread, "differs": differs, "note": note})
    totals = {}
    for b in names:
        d = docs[b]
        totals[b] = {"keras_version": d["model"]["keras_version"], "engine": d["model"]["engine"],
                     "reproduced": d["total"]["reproduced"], "compute_loss": d["total"]["compute_loss"],
                     "train_step": d["total"]["train_step"], "max_abs_diff": d["total"]["max_abs_diff"],
                     "verified": d["total"]["verified"],
                     "errors": sum(1 for f in d["findings"] if f["level"] == "error")}
    reproduced = [totals[b]["reproduced"] for b in names]
    totals_same = all(_close(reproduced[0], r, rtol, atol) for r in reproduced[1:])
    cmp = backend_diff.Comparison(docs, rows, epsilon, random_layers, arithmetic or {}, tol)
    return {"backends": names, "primary": primary, "rows": rows, "totals": totals, "totals_same": totals_same,
            "differences": backend_diff.differences(cmp) if len(names) > 1 else [],
            "skipped": list(skipped), "failed": list(failed), "rtol": rtol, "atol": atol,
            "batch": batch_note, "weights": weights_note}
