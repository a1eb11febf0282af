"""Benchmark: `keras.saving.load_model` of the bench model, as Keras does it and with the initial values deferred
(`lossmap.engines.common.initial_values`), each load in a fresh process per backend, alternating, side by side.

Not a test. Why lossmap defers the initial values on JAX only: there the load compiles every initializer.

    .venv/bin/python bench/bench_loading.py [--backends jax tensorflow torch] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import bench_check as bc

LOAD = """
import sys, time
import keras
from lossmap.engines.common.initial_values import initial_values_deferred
start = time.perf_counter()
if sys.argv[2] == "deferred":
    with initial_values_deferred():
        keras.saving.load_model(sys.argv[1])
else:
    keras.saving.load_model(sys.argv[1])
print(time.perf_counter() - start)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="*", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=os.path.join(bc.HERE, ".cache"))
    args = parser.parse_args(argv)
    directory, _ = bc.ensure_model(args.cache_dir, 64, False)
    model = os.path.join(directory, "model.keras")
    print(f"{'backend':<11} {'load_model s':>13} {'deferred s':>11}   (median of {args.repeats}, each a fresh process)")
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        times = {"keras": [], "deferred": []}
        for i in range(args.repeats):
            for mode in (("keras", "deferred") if i % 2 == 0 else ("deferred", "keras")):
                proc = subprocess.run([sys.executable, "-c", LOAD, model, mode], env=env, capture_output=True,
                                      text=True, check=True)
                times[mode].append(float(proc.stdout.strip().splitlines()[-1]))
        print(f"{backend:<11} {statistics.median(times['keras']):13.2f} {statistics.median(times['deferred']):11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
