"""Benchmark: `lossmap check` on a Keras 3 backend against the hand-written script on it (issue 12).

Not a test. The bench model of bench_check.py (ResNet50-sized, L2 on every kernel, two weighted heads;
built once, cached; a .keras archive loads on any backend) and its batch; whole processes timed side by
side with KERAS_BACKEND set for all of them, alternating their order:

  handwritten            python handwritten.py MODEL BATCH   (load_model + one train_on_batch: on JAX the
                                                              train step is compiled with jax.jit)
  import keras           python -c "import keras"            (a floor: what any run pays before the model)
  real step alone        python real_step_alone.py MODEL BATCH   (a floor: import, load, the real train_step
                                                              once, eager, as lossmap's verification runs it)
  check --no-gradients   lossmap check MODEL --data BATCH --no-gradients
  check                  lossmap check MODEL --data BATCH

and prints median and least disturbed wall times, their ratio to the hand-written script (target from
issue 12: check at most 0.5 on each backend), CPU time, peak memory and the loss each printed. Results go
to bench/results_<backend>.json (`--no-floors` leaves the two floors out).

    .venv/bin/python bench/bench_backend.py [--backend jax|torch|tensorflow] [--repeats 3] [--warmup 0] [--nice N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import bench_check as bc

TARGET_RATIO = 0.5  # issue 12: on each backend, check at most 0.5x the hand-written script


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="jax", help="KERAS_BACKEND for every command (default jax)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0, help="untimed rounds first (default 0)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cache-dir", default=os.path.join(bc.HERE, ".cache"))
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--results", default=None, help="default bench/results_<backend>.json ('' for none)")
    parser.add_argument("--no-floors", action="store_true", help="leave out 'import keras' and 'real step alone'")
    args = parser.parse_args(argv)

    python = sys.executable
    directory, facts = bc.ensure_model(args.cache_dir, args.size, False)
    model, batch = os.path.join(directory, "model.keras"), os.path.join(directory, "batch.npz")
    lossmap = [python, "-m", "lossmap"]  # the lossmap on PYTHONPATH (a worktree), else the installed one
    commands = {"handwritten": [python, os.path.join(directory, "handwritten.py"), model, batch]}
    if not args.no_floors:
        commands["import keras"] = [python, "-c", "import keras"]
        commands["real step alone"] = [python, os.path.join(bc.HERE, "real_step_alone.py"), model, batch]
    commands.update({
        "check --no-gradients": lossmap + ["check", model, "--data", batch, "--no-gradients"],
        "check": lossmap + ["check", model, "--data", batch],
    })
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    names = list(commands)
    times, cpu, peaks, losses, exits = ({n: [] for n in names} for _ in range(5))
    print(f"bench: {facts['params']:,} parameters, {facts['loss_terms']} loss terms, backend {args.backend}, "
          f"{bc._cpu_count()} CPUs", flush=True)
    load_before = os.getloadavg()
    for i in range(args.warmup + args.repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            elapsed, cpu_s, peak, proc = bc.run_timed(commands[name], env, args.nice)
            print(f"  {'warm-up' if i < args.warmup else f'run {i - args.warmup + 1}/{args.repeats}':>9}  "
                  f"{name:<22} {elapsed:7.2f} s wall {cpu_s:7.2f} s CPU {peak / bc.MB:7.0f} MB  exit {proc.returncode}",
                  flush=True)
            if proc.returncode not in ((0,) if name == "handwritten" else (0, 1)):
                print(proc.stderr[-2000:], file=sys.stderr)
            exits[name].append(proc.returncode)
            losses[name].append(bc.reported_loss("handwritten" if "check" not in name else name, proc.stdout)
                                if name != "import keras" else None)
            if i >= args.warmup:
                times[name].append(elapsed)
                cpu[name].append(cpu_s)
                peaks[name].append(peak)
    load_after = os.getloadavg()
    medians = {n: statistics.median(t) for n, t in times.items()}
    least = {n: min(t) for n, t in times.items()}
    cpu_med = {n: statistics.median(c) for n, c in cpu.items()}
    base, base_least, base_cpu = medians["handwritten"], least["handwritten"], cpu_med["handwritten"]
    print(f"\n{'command':<22} {'median s':>9} {'x hand':>7} {'least s':>8} {'x hand':>7} {'CPU s':>7} {'x hand':>7} "
          f"{'peak MB':>8}  loss")
    for n in names:
        print(f"{n:<22} {medians[n]:9.2f} {medians[n] / base:7.2f} {least[n]:8.2f} {least[n] / base_least:7.2f} "
              f"{cpu_med[n]:7.2f} {cpu_med[n] / base_cpu:7.2f} {statistics.median(peaks[n]) / bc.MB:8.0f}  {losses[n][-1]}")
    print(f"load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    checks = [n for n in names if n.startswith("check")]
    result = {
        "backend": args.backend,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": facts,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "order": "alternating: even rounds " + " -> ".join(names) + ", odd rounds reversed",
        "cpus": bc._cpu_count(),
        "cpu_model": bc._cpu_model(),
        "load_average_before_after": [load_before, load_after],
        "versions": {d: bc._version(d) for d in ("keras", "jax", "jaxlib", "torch", "tensorflow", "numpy")},
        "wall_seconds": times,
        "median_wall_seconds": medians,
        "ratio_to_handwritten": {n: medians[n] / base for n in names if n != "handwritten"},
        # the least disturbed run of each: on a machine shared with other work, the steadier comparison
        "least_wall_seconds": least,
        "least_ratio_to_handwritten": {n: least[n] / base_least for n in names if n != "handwritten"},
        "target_ratio": TARGET_RATIO,
        "meets_target": {n: medians[n] / base <= TARGET_RATIO for n in checks},
        "cpu_seconds_median": cpu_med,
        "cpu_ratio_to_handwritten": {n: cpu_med[n] / base_cpu for n in names if n != "handwritten"},
        "peak_rss_mb_median": {n: statistics.median(p) / bc.MB for n, p in peaks.items()},
        "exits": exits,
        "reported_loss": losses,
    }
    path = args.results if args.results is not None else os.path.join(bc.HERE, f"results_{args.backend}.json")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        print(f"bench: results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
