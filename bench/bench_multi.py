"""Benchmark: `lossmap check` over five small models in one call against five separate calls.

Not a test. It builds (once, cached) five small Keras 3 models of different
shapes, saved as .keras archives with built-in layers only, then times whole
processes side by side, alternating which goes first:

  separate   lossmap check m1.keras; ...; lossmap check m5.keras   (five processes, their times added)
  one call   lossmap check m1.keras m2.keras m3.keras m4.keras m5.keras

and prints the median wall and CPU times and the ratio one call / separate
(target from the CI issue: at most 0.5). Each exit code and verdict is printed
too, so one can see the two agree. Results go to bench/results_multi.json.

    .venv/bin/python bench/bench_multi.py [--repeats 3] [--warmup 1] [--no-gradients] [--rebuild]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_VERSION = "multi-5-small-v1"  # bump when build() makes other models: the cache is keyed by it
TARGET_RATIO = 0.5
NAMES = ("regression", "twoheads", "cnn", "autoencoder", "sequence")


def build(directory: str) -> list:
    """Make the five .keras archives in `directory`; return their paths."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers, regularizers

    keras.utils.set_random_seed(0)
    l2 = regularizers.L2(1e-4)
    models = {}
    x = keras.Input((16,), name="x")
    h = layers.Dense(32, activation="relu", kernel_regularizer=l2, name="h1")(x)
    models["regression"] = _compiled(keras.Model(x, layers.Dense(1, name="y")(h), name="regression"), "mse")
    x = keras.Input((12,), name="x")
    h = layers.Dense(24, activation="relu", kernel_regularizer=l2, name="trunk")(x)
    heads = {"label": layers.Dense(4, activation="softmax", name="label")(h),
             "score": layers.Dense(1, activity_regularizer=regularizers.L1(1e-3), name="score")(h)}
    models["twoheads"] = _compiled(keras.Model(x, heads, name="twoheads"),
                                   {"label": "sparse_categorical_crossentropy", "score": "mae"},
                                   loss_weights={"label": 1.0, "score": 0.3})
    x = keras.Input((16, 16, 1), name="image")
    h = layers.Conv2D(8, 3, activation="relu", kernel_regularizer=l2, name="conv")(x)
    h = layers.GlobalAveragePooling2D(name="pool")(layers.BatchNormalization(name="bn")(h))
    models["cnn"] = _compiled(keras.Model(x, layers.Dense(3, activation="softmax", name="cls")(h), name="cnn"),
                              "sparse_categorical_crossentropy")
    x = keras.Input((20,), name="x")
    code = layers.Dense(4, activity_regularizer=regularizers.L1(1e-4), name="code")(x)
    models["autoencoder"] = _compiled(keras.Model(x, layers.Dense(20, name="recon")(code), name="autoencoder"),
                                      "mse")
    x = keras.Input((10,), dtype="int32", name="tokens")
    h = layers.GlobalAveragePooling1D(name="mean")(layers.Embedding(50, 8, name="embed")(x))
    models["sequence"] = _compiled(keras.Model(x, layers.Dense(1, activation="sigmoid", name="p")(h),
                                               name="sequence"), "binary_crossentropy")
    paths = []
    for name in NAMES:
        path = os.path.join(directory, f"{name}.keras")
        models[name].save(path)
        paths.append(path)
    return paths


def _compiled(model, loss, **kwargs):
    model.compile(optimizer="adam", loss=loss, **kwargs)
    return model


def ensure_models(rebuild: bool) -> list:
    from importlib import metadata

    folder = os.path.join(HERE, ".cache", f"{BUILD_VERSION}-keras{metadata.version('keras')}")
    paths = [os.path.join(folder, f"{name}.keras") for name in NAMES]
    if rebuild or not all(os.path.exists(p) for p in paths):
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        # a process of its own: building imports TensorFlow, which the timed runs must not share
        subprocess.run([sys.executable, __file__, "--build-into", folder], check=True)
    return paths


def run_timed(cmd, env):
    """Wall and CPU (user + sys of the child) seconds of one process, and the process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def verdicts(stdout: str) -> list:
    """The lines `lossmap: MODEL: VERDICT (exit N)` of a several-model run, or the one model's verdict."""
    lines = [line for line in stdout.splitlines() if line.startswith("lossmap: ") and "(exit " in line]
    if lines:
        return [line.split(": ", 2)[2] for line in lines]
    found = [line.split("->")[-1].strip() for line in stdout.splitlines() if "max |diff|" in line]
    return found[-1:]


def one_round(paths, lossmap, extra, env):
    """Both ways once, the separate calls first; returns {way: (wall, cpu, exit codes, verdicts)}."""
    out = {}
    walls, cpus, codes, seen = 0.0, 0.0, [], []
    for path in paths:
        wall, cpu, proc = run_timed(lossmap + ["check", path] + extra, env)
        walls, cpus = walls + wall, cpus + cpu
        codes.append(proc.returncode)
        seen += verdicts(proc.stdout)
    out["separate"] = (walls, cpus, codes, seen)
    wall, cpu, proc = run_timed(lossmap + ["check"] + paths + extra, env)
    out["one call"] = (wall, cpu, [proc.returncode], [v.rsplit(" (exit", 1)[0] for v in verdicts(proc.stdout)])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-gradients", action="store_true", help="time check --no-gradients")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--build-into", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_into:
        build(args.build_into)
        return 0
    paths = ensure_models(args.rebuild)
    exe = shutil.which("lossmap", path=os.path.dirname(sys.executable))
    lossmap = [exe] if exe else [sys.executable, "-m", "lossmap"]
    extra = ["--no-gradients"] if args.no_gradients else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for _ in range(args.warmup):
        one_round(paths, lossmap, extra, env)
    rounds, load_before = [], os.getloadavg()
    for i in range(args.repeats):
        rounds.append((one_round if i % 2 == 0 else _reversed_round)(paths, lossmap, extra, env))
    return report(rounds, paths, extra, load_before, os.getloadavg())


def _reversed_round(paths, lossmap, extra, env):
    """The one call first, then the separate calls: the alternating order."""
    wall, cpu, proc = run_timed(lossmap + ["check"] + paths + extra, env)
    one = (wall, cpu, [proc.returncode], [v.rsplit(" (exit", 1)[0] for v in verdicts(proc.stdout)])
    separate = one_round(paths, lossmap, extra, env)["separate"]
    return {"one call": one, "separate": separate}


def report(rounds, paths, extra, load_before, load_after) -> int:
    from importlib import metadata

    med = {way: (statistics.median(r[way][0] for r in rounds), statistics.median(r[way][1] for r in rounds))
           for way in ("separate", "one call")}
    ratio, cpu_ratio = med["one call"][0] / med["separate"][0], med["one call"][1] / med["separate"][1]
    print(f"lossmap check{' ' + ' '.join(extra) if extra else ''} over {len(paths)} small models "
          f"({', '.join(NAMES)}); {len(rounds)} rounds, alternating order")
    print(f"{'way':<10} {'median wall':>12} {'min':>8} {'max':>8} {'median CPU':>11}  exit codes / verdicts")
    for way in ("separate", "one call"):
        walls = [r[way][0] for r in rounds]
        last = rounds[-1][way]
        print(f"{way:<10} {med[way][0]:>11.2f}s {min(walls):>7.2f}s {max(walls):>7.2f}s {med[way][1]:>10.2f}s  "
              f"{last[2]} {last[3]}")
    print(f"ratio one call / separate: wall {ratio:.3f}, CPU {cpu_ratio:.3f} (target <= {TARGET_RATIO})")
    print(f"load average (1 min): {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    same = rounds[-1]["separate"][3] == rounds[-1]["one call"][3]
    print("verdicts agree" if same else "VERDICTS DIFFER")
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": ["lossmap", "check"] + extra,
        "models": NAMES, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {d: metadata.version(d) for d in ("lossmap", "keras", "tensorflow-cpu")},
        "rounds": [{way: {"wall": r[way][0], "cpu": r[way][1], "exit_codes": r[way][2], "verdicts": r[way][3]}
                    for way in r} for r in rounds],
        "median_wall": {w: m[0] for w, m in med.items()}, "median_cpu": {w: m[1] for w, m in med.items()},
        "ratio_wall": ratio, "ratio_cpu": cpu_ratio, "target": TARGET_RATIO,
        "load_average": [load_before[0], load_after[0]], "verdicts_agree": same,
    }
    name = "results_multi_no_gradients.json" if extra else "results_multi.json"
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print(f"results: bench/{name}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
