"""Where `lossmap check` spends its time on a Keras 3 backend: one in-process run of `lossmap.analyse` on the bench
model with a timer around each stage, and on JAX the time XLA spent compiling inside each (`jax.monitoring`).

Not a test, and not a comparison (bench_backend.py is): a breakdown to read next to it.

    KERAS_BACKEND=jax .venv/bin/python bench/backend_stages.py [--no-gradients] [--cache-dir bench/.cache]
"""
from __future__ import annotations

import argparse
import collections
import functools
import importlib
import os
import sys
import time

import bench_check as bc

ENGINE = {"jax": "keras3_jax", "torch": "keras3_torch", "tensorflow": "keras3"}
STAGES = ("verify_train_step", "begin_attribution", "_vjp", "_unit_gradient", "_gradient", "_regularizer_batch")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-gradients", action="store_true")
    parser.add_argument("--cache-dir", default=os.path.join(bc.HERE, ".cache"))
    args = parser.parse_args(argv)
    directory, _ = bc.ensure_model(args.cache_dir, 64, False)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    start = time.perf_counter()
    compiled = [0.0]
    if backend == "jax":
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(
            lambda event, seconds, **_: compiled.__setitem__(0, compiled[0] + seconds)
            if event.endswith("backend_compile_duration") else None)
    import lossmap
    import lossmap.pipeline as pipeline

    spent = collections.defaultdict(lambda: [0.0, 0.0, 0])  # stage -> [seconds, compiling, calls]

    def timed(owner, name, label):
        original = getattr(owner, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def run(*a, **k):
            t, c = time.perf_counter(), compiled[0]
            try:
                return original(*a, **k)
            finally:
                entry = spent[label]
                entry[0] += time.perf_counter() - t
                entry[1] += compiled[0] - c
                entry[2] += 1
        setattr(owner, name, run)

    engine = ENGINE[backend]
    capture = importlib.import_module(f"lossmap.engines.{engine}.capture")
    steps = importlib.import_module(f"lossmap.engines.{engine}.train_step")
    timed(pipeline, "load", "load")
    timed(capture, "capture", "capture")
    for name in STAGES:
        timed(steps, name, name)
    timed(getattr(steps, "_Pending", None) or object, "finish", "attribution: derived term, regularizers")
    imported = time.perf_counter() - start
    t = time.perf_counter()
    lossmap.analyse(os.path.join(directory, "model.keras"), data=os.path.join(directory, "batch.npz"),
                    gradients=not args.no_gradients, sources=False)
    total = time.perf_counter() - t
    print(f"backend {backend}: imports {imported:.2f} s, lossmap.analyse {total:.2f} s"
          + (f" ({compiled[0]:.2f} s of it XLA compiling)" if backend == "jax" else ""))
    for label, (seconds, compiling, calls) in spent.items():  # nested stages are inside their callers' time
        print(f"  {label:<40} {seconds:6.2f} s" + (f"  compiling {compiling:5.2f} s" if backend == "jax" else "")
              + (f"  ({calls} calls)" if calls > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
