"""Benchmark: `lossmap check` against the script a user would write by hand.

Not a test. It builds (once, cached) a ResNet50-sized Keras 3 model with no
pretrained weights, L2 on every Conv2D/Dense kernel and two weighted heads, plus
a batch of 8, then times whole processes side by side, alternating their order:

  handwritten            python handwritten.py MODEL BATCH   (load_model + one train_on_batch)
  check --no-gradients   lossmap check MODEL --data BATCH --no-gradients
  check                  lossmap check MODEL --data BATCH
  report                 lossmap report MODEL --data BATCH -o bench.lossmap.html

and prints the median wall times and the ratio lossmap/handwritten (targets from
the issues: check at most 0.5, report at most 1.0), and next to them each command's
peak resident memory and its ratio to the hand-written script's (target: check at
most 1.25). Results also go to bench/results.json.

    .venv/bin/python bench/bench_check.py [--repeats 3] [--warmup 1] [--size 64] [--nice -10] [--rebuild]
                                          [--baseline SRC] [--skip-report]

`--baseline SRC` runs `check` and `check --no-gradients` of another lossmap source tree (for
instance `git archive` of the commit before a change) in the same rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
# Bump when what build() makes changes: the cache directory is keyed by it.
BUILD_VERSION = "resnet50-l2-2heads-v1"
BATCH_SIZE = 8
MB = 2 ** 20
CLASSES = 10
TARGET_RATIO = 0.5  # lossmap check (core issue)
TARGETS = {"check --no-gradients": 0.5, "check": 0.5, "report": 1.0}  # report: the report issue
# peak resident memory, lossmap / handwritten (the memory issue: lossmap check; report has no target)
MEMORY_TARGETS = {"check --no-gradients": 1.25, "check": 1.25, "report": None}

HANDWRITTEN = '''\
"""What a user writes by hand to see the training loss of a saved model on one batch."""
import sys

import numpy as np
import keras

model = keras.saving.load_model(sys.argv[1])
data = np.load(sys.argv[2])
x = data["x"]
y = {k[len("y/"):]: data[k] for k in data.files if k.startswith("y/")}
print(model.train_on_batch(x, y))
'''


# ---------------------------------------------------------------- building the model
def build(directory: str, size: int) -> dict:
    """Make model.keras, batch.npz and handwritten.py in `directory`; return the model's facts."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import keras
    from keras import layers, regularizers

    keras.utils.set_random_seed(0)
    trunk = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(size, size, 3))
    # Rebuild the trunk from its config with an L2 regularizer on every Conv2D kernel:
    # the regularizer is part of each layer's config, so it survives save/load.
    config = trunk.get_config()
    n_conv = 0
    for layer_cfg in config["layers"]:
        if layer_cfg["class_name"] == "Conv2D":
            layer_cfg["config"]["kernel_regularizer"] = keras.saving.serialize_keras_object(
                regularizers.L2(1e-4))
            n_conv += 1
    trunk = keras.Model.from_config(config)

    inputs = keras.Input(shape=(size, size, 3), name="image")
    features = layers.GlobalAveragePooling2D(name="pool")(trunk(inputs))
    label = layers.Dense(CLASSES, activation="softmax", kernel_regularizer=regularizers.L2(1e-4),
                         name="label")(features)
    score = layers.Dense(1, kernel_regularizer=regularizers.L2(1e-4), name="score")(features)
    model = keras.Model(inputs, {"label": label, "score": score}, name="resnet50_two_heads")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={"label": "sparse_categorical_crossentropy", "score": "mse"},
        loss_weights={"label": 1.0, "score": 0.5},
    )

    tmp = os.path.join(directory, "model.tmp.keras")
    model.save(tmp)
    reloaded = keras.saving.load_model(tmp)
    n_reg = len(reloaded.losses)
    n_reg_vars = sum(1 for v in reloaded.trainable_weights if getattr(v, "regularizer", None) is not None)
    if n_reg != n_conv + 2 or n_reg_vars != n_reg:
        raise SystemExit(f"bench: expected {n_conv + 2} weight regularizers after reload, "
                         f"got {n_reg} losses / {n_reg_vars} regularized variables")
    os.replace(tmp, os.path.join(directory, "model.keras"))

    rng = np.random.default_rng(0)
    np.savez(
        os.path.join(directory, "batch.npz"),
        x=rng.standard_normal((BATCH_SIZE, size, size, 3)).astype("float32"),
        **{"y/label": rng.integers(0, CLASSES, size=(BATCH_SIZE,)).astype("int32"),
           "y/score": rng.standard_normal((BATCH_SIZE, 1)).astype("float32")},
    )
    with open(os.path.join(directory, "handwritten.py"), "w", encoding="utf-8") as fh:
        fh.write(HANDWRITTEN)
    facts = {
        "build_version": BUILD_VERSION,
        "architecture": "keras.applications.ResNet50(weights=None, include_top=False) + "
                        "GlobalAveragePooling2D + Dense(10, softmax) 'label' + Dense(1) 'score'",
        "input_shape": [size, size, 3],
        "batch_size": BATCH_SIZE,
        "params": int(reloaded.count_params()),
        "trainable_params": int(sum(int(np.prod(v.shape)) for v in reloaded.trainable_weights)),
        "layers_in_trunk": len(trunk.layers),
        "conv2d_layers": n_conv,
        "weight_regularizers": n_reg,
        "compiled_losses": 2,
        "loss_terms": n_reg + 2,
        "loss": {"label": "sparse_categorical_crossentropy", "score": "mse"},
        "loss_weights": {"label": 1.0, "score": 0.5},
        "regularizer": "L2(1e-4) on every Conv2D and Dense kernel",
        "optimizer": "Adam(1e-3)",
        "model_bytes": os.path.getsize(os.path.join(directory, "model.keras")),
        "keras": keras.__version__,
    }
    with open(os.path.join(directory, "model.json"), "w", encoding="utf-8") as fh:
        json.dump(facts, fh, indent=2)
    return facts


def ensure_model(cache_root: str, size: int, rebuild: bool) -> tuple[str, dict]:
    directory = os.path.join(cache_root, f"{BUILD_VERSION}-{size}px-keras{_version('keras')}")
    facts_path = os.path.join(directory, "model.json")
    if rebuild and os.path.isdir(directory):
        shutil.rmtree(directory)
    if not os.path.exists(facts_path):
        os.makedirs(directory, exist_ok=True)
        print(f"bench: building the model in {directory} (once) ...", flush=True)
        t0 = time.perf_counter()
        # In a child process, so that this one never imports TensorFlow.
        subprocess.run([sys.executable, os.path.abspath(__file__), "--_build", directory, "--size", str(size)],
                       check=True)
        print(f"bench: built in {time.perf_counter() - t0:.1f} s", flush=True)
    with open(facts_path, encoding="utf-8") as fh:
        return directory, json.load(fh)


# ---------------------------------------------------------------- timing
def run_timed(cmd, env, nice=0, cwd=None):
    """Wall seconds (perf_counter around the child), its CPU seconds (user + sys), its peak resident
    memory in bytes, and the finished process.

    `os.wait4` reports the resource usage of that one child (`ru_maxrss`, the high-water mark of its
    resident set, KiB on Linux: what `/usr/bin/time -f %M` prints), where `RUSAGE_CHILDREN` would
    give the largest of all children so far.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, cwd=cwd,
                                 preexec_fn=(lambda: os.nice(nice)) if nice else None)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, child.returncode, out.read(), err.read())
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, proc


def reported_loss(name, stdout):
    """The training loss each command prints, to check they agree."""
    if name == "handwritten":
        found = re.search(r"[-+0-9.eE]+", stdout.strip().splitlines()[-1]) if stdout.strip() else None
    else:
        found = re.search(r"^\s*train_step\s+([-+0-9.eE]+)", stdout, re.M)
        found = found and re.search(r"[-+0-9.eE]+$", found.group(0))
    return float(found.group(0)) if found else None


def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _lossmap_executable(python):
    candidate = os.path.join(os.path.dirname(python), "lossmap")
    return candidate if os.path.exists(candidate) else shutil.which("lossmap")


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of each command first, to warm the OS file cache (default 1)")
    parser.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    parser.add_argument("--cache-dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--rebuild", action="store_true", help="build the model again")
    parser.add_argument("--results", default=os.path.join(HERE, "results.json"),
                        help="where to write the JSON results ('' for nowhere)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run every timed command at this niceness increment (negative needs root): "
                             "on a machine shared with other work, e.g. -10 gives the timed processes most "
                             "of the CPU; the same for all commands (default 0)")
    parser.add_argument("--baseline", metavar="SRC",
                        help="also run `check` and `check --no-gradients` from this lossmap source tree "
                             "(PYTHONPATH), in the same rounds: before and after a change, side by side")
    parser.add_argument("--skip-report", action="store_true", help="leave out the `report` command")
    parser.add_argument("--_build", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._build:
        build(args._build, args.size)
        return 0

    python = sys.executable
    lossmap = _lossmap_executable(python)
    if lossmap is None:
        print("bench: no lossmap console script next to this Python or on PATH; pip install -e .", file=sys.stderr)
        return 2
    directory, facts = ensure_model(args.cache_dir, args.size, args.rebuild)
    model, batch = os.path.join(directory, "model.keras"), os.path.join(directory, "batch.npz")
    commands = {
        "handwritten": [python, os.path.join(directory, "handwritten.py"), model, batch],
        "check --no-gradients": [lossmap, "check", model, "--data", batch, "--no-gradients"],
        "check": [lossmap, "check", model, "--data", batch],
        "report": [lossmap, "report", model, "--data", batch, "-o", os.path.join(directory, "bench.lossmap.html")],
    }
    if args.skip_report:
        del commands["report"]
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    envs, cwds = {}, {}
    if args.baseline:
        # the same commands from another source tree (say, the commit before a change), in the same rounds;
        # run from that tree, since `python -m` looks in the working directory before PYTHONPATH
        baseline = os.path.abspath(args.baseline)
        for name in ("check --no-gradients", "check"):
            commands[f"{name} @baseline"] = [python, "-m", "lossmap"] + commands[name][1:]
            envs[f"{name} @baseline"] = dict(env, PYTHONPATH=baseline)
            cwds[f"{name} @baseline"] = baseline

    print(f"bench: {facts['params']:,} parameters, {facts['loss_terms']} loss terms "
          f"({facts['compiled_losses']} compiled + {facts['weight_regularizers']} L2), "
          f"input {args.size}x{args.size}x3, batch {BATCH_SIZE}; {_cpu_count()} CPUs", flush=True)
    names = list(commands)
    times = {n: [] for n in names}
    cpu_times = {n: [] for n in names}
    peaks = {n: [] for n in names}
    exits, losses, failures, error_findings = {}, {}, {}, {}
    load_before = os.getloadavg()
    for i in range(args.warmup + args.repeats):
        order = names if i % 2 == 0 else names[::-1]
        timed = i >= args.warmup
        for name in order:
            elapsed, cpu, peak, proc = run_timed(commands[name], envs.get(name, env), args.nice, cwds.get(name))
            label = f"run {i - args.warmup + 1}/{args.repeats}" if timed else "warm-up"
            print(f"  {label:>9}  {name:<22} {elapsed:7.2f} s wall {cpu:7.2f} s CPU {peak / MB:7.0f} MB peak  "
                  f"exit {proc.returncode}", flush=True)
            exits.setdefault(name, set()).add(proc.returncode)
            losses[name] = reported_loss(name, proc.stdout)
            # lossmap check: 0 verified, 1 mismatch or an error finding (a full run all the same)
            if proc.returncode not in ((0,) if name == "handwritten" else (0, 1)):
                failures[name] = {"exit": proc.returncode, "stderr_tail": proc.stderr[-2000:],
                                  "stdout_tail": proc.stdout[-2000:]}
            elif proc.returncode == 1:
                error_findings[name] = [line.strip() for line in proc.stdout.splitlines()
                                        if line.strip().startswith("[error]") or "MISMATCH" in line][:5]
            if timed:
                times[name].append(elapsed)
                cpu_times[name].append(cpu)
                peaks[name].append(peak)
    load_after = os.getloadavg()

    if args.repeats < 1:
        return 0
    medians = {n: statistics.median(t) for n, t in times.items()}
    cpu_medians = {n: statistics.median(t) for n, t in cpu_times.items()}
    peak_medians = {n: statistics.median(p) for n, p in peaks.items()}
    base = medians["handwritten"]
    peak_base = peak_medians["handwritten"]
    print()
    print(f"{'command':<22} {'median s':>9} {'min s':>7} {'max s':>7} {'x handwritten':>14} {'CPU s':>7}"
          f" {'peak MB':>8} {'x handwritten':>14}")
    for n in names:
        print(f"{n:<22} {medians[n]:9.2f} {min(times[n]):7.2f} {max(times[n]):7.2f} "
              f"{medians[n] / base:14.2f} {cpu_medians[n]:7.2f} {peak_medians[n] / MB:8.0f} "
              f"{peak_medians[n] / peak_base:14.2f}")
    meets = {n: medians[n] / base <= TARGETS[n] for n in names if n in TARGETS}
    print("\nratio lossmap / handwritten (median wall): " + "; ".join(
        f"{n} {medians[n] / base:.2f} (target <= {TARGETS[n]}, {'meets' if ok else 'misses'})"
        for n, ok in meets.items()))
    memory_meets = {n: peak_medians[n] / peak_base <= MEMORY_TARGETS[n] for n in names
                    if MEMORY_TARGETS.get(n) is not None}
    if args.baseline:
        print("ratio to @baseline (median wall; peak memory): " + "; ".join(
            f"{n} {medians[n] / medians[n + ' @baseline']:.2f}; {peak_medians[n] / peak_medians[n + ' @baseline']:.2f}"
            for n in ("check --no-gradients", "check")))
    print("ratio lossmap / handwritten (median peak resident memory): " + "; ".join(
        f"{n} {peak_medians[n] / peak_base:.2f}" + (f" (target <= {MEMORY_TARGETS[n]}, "
                                                     f"{'meets' if memory_meets[n] else 'misses'})"
                                                     if n in memory_meets else "")
        for n in names if n != "handwritten"))
    report_path = os.path.join(directory, "bench.lossmap.html")
    if os.path.exists(report_path):
        print(f"report size: {os.path.getsize(report_path) / 1e6:.2f} MB (budget 2 MB)")
    print("ratio of median CPU time (user + sys): " + "; ".join(
        f"{n} {cpu_medians[n] / cpu_medians['handwritten']:.2f}" for n in names if n != "handwritten"))
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {_cpu_count()} CPUs"
          + ("  (other work was running: wall times are inflated)" if max(load_before[0], load_after[0]) > 1.5
             else ""))
    print("training loss printed: " + ", ".join(f"{n} {losses.get(n)}" for n in names))
    for name, lines in error_findings.items():
        print(f"note: '{name}' exited 1 (a full run; its report has an error finding or a mismatch): "
              + "; ".join(line[:160] for line in lines))
    for name, info in failures.items():
        print(f"\nbench: '{name}' exited {info['exit']}; its stderr ends with:\n{info['stderr_tail']}",
              file=sys.stderr)

    if args.results:
        results = {
            "benchmark": "lossmap check vs hand-written load_model + train_on_batch",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "cpu_count": _cpu_count(),
                "os_cpu_count": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "versions": {d: _version(d) for d in ("lossmap", "keras", "tensorflow", "tensorflow-cpu", "numpy")},
            "model": facts,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "order": "alternating: even runs " + " -> ".join(names) + ", odd runs reversed",
            "commands": {n: " ".join(os.path.relpath(c) if os.path.isabs(c) else c for c in cmd)
                         for n, cmd in commands.items()},
            "baseline": os.path.abspath(args.baseline) if args.baseline else None,
            "seconds": {n: [round(t, 3) for t in times[n]] for n in names},
            "median_seconds": {n: round(medians[n], 3) for n in names},
            "ratio_to_handwritten": {n: round(medians[n] / base, 3) for n in names},
            "cpu_seconds": {n: [round(t, 3) for t in cpu_times[n]] for n in names},
            "median_cpu_seconds": {n: round(cpu_medians[n], 3) for n in names},
            "cpu_ratio_to_handwritten": {n: round(cpu_medians[n] / cpu_medians["handwritten"], 3) for n in names},
            "peak_rss_bytes": peaks,
            "median_peak_rss_bytes": {n: int(peak_medians[n]) for n in names},
            "peak_rss_ratio_to_handwritten": {n: round(peak_medians[n] / peak_base, 3) for n in names},
            "memory_target_ratio": MEMORY_TARGETS,
            "meets_memory_target": memory_meets,
            "nice": args.nice,
            "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "exit_codes": {n: sorted(exits[n]) for n in names},
            "training_loss_printed": losses,
            "error_findings": error_findings,
            "target_ratio": TARGETS,
            "report_bytes": os.path.getsize(report_path) if os.path.exists(report_path) else None,
            "meets_target": meets,
            "failures": failures,
        }
        with open(args.results, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
        print(f"bench: results in {os.path.relpath(args.results)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
