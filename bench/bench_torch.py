"""Benchmark: `KERAS_BACKEND=torch lossmap check` against the hand-written script on torch.

Not a test. The bench model of `bench_check.py` (ResNet50-sized, L2 on every kernel, two
weighted heads; a `.keras` archive is backend-free, so the one built there is loaded here on
torch) and the same hand-written `load_model` + `train_on_batch` script, all run with
KERAS_BACKEND=torch, side by side in one run, alternating their order:

  handwritten            python handwritten.py MODEL BATCH
  check --no-gradients   lossmap check MODEL --data BATCH --no-gradients
  check                  lossmap check MODEL --data BATCH

It prints the median wall times, the ratio lossmap/handwritten (target from issue 12: check
at most 0.5), CPU time and peak memory, checks that the commands print the same training
loss, and writes bench/results_torch.json.

    .venv/bin/python bench/bench_torch.py [--repeats 3] [--warmup 1] [--cache-dir bench/.cache]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_check as bc  # noqa: E402  (the bench model, the hand-written script, the timing)

TARGET = 0.5
MB = 2 ** 20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cache-dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--results", default=os.path.join(HERE, "results_torch.json"))
    args = parser.parse_args(argv)

    python = sys.executable
    directory, facts = bc.ensure_model(args.cache_dir, args.size, False)  # built on TensorFlow, once
    model, batch = os.path.join(directory, "model.keras"), os.path.join(directory, "batch.npz")
    commands = {
        "handwritten": [python, os.path.join(directory, "handwritten.py"), model, batch],
        "check --no-gradients": [python, "-m", "lossmap", "check", model, "--data", batch, "--no-gradients"],
        "check": [python, "-m", "lossmap", "check", model, "--data", batch],
    }
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2")
    names = list(commands)
    times, cpus, peaks, losses, exits = ({n: [] for n in names} for _ in range(5))
    load_before = os.getloadavg()
    for i in range(args.warmup + args.repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            elapsed, cpu, peak, proc = bc.run_timed(commands[name], env)
            label = f"run {i - args.warmup + 1}/{args.repeats}" if i >= args.warmup else "warm-up"
            print(f"  {label:>9}  {name:<22} {elapsed:7.2f} s wall {cpu:7.2f} s CPU {peak / MB:7.0f} MB peak  "
                  f"exit {proc.returncode}", flush=True)
            if proc.returncode not in ((0,) if name == "handwritten" else (0, 1)):
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            exits[name].append(proc.returncode)
            losses[name].append(bc.reported_loss(name, proc.stdout))
            if i >= args.warmup:
                times[name].append(elapsed)
                cpus[name].append(cpu)
                peaks[name].append(peak)
    load_after = os.getloadavg()
    med = {n: statistics.median(times[n]) for n in names}
    cpu = {n: statistics.median(cpus[n]) for n in names}
    peak = {n: statistics.median(peaks[n]) for n in names}
    base = med["handwritten"]
    low = {n: min(times[n]) for n in names}
    print(f"\n{'command':<22} {'median s':>9} {'x handwritten':>14} {'min s':>7} {'x handwritten':>14} "
          f"{'CPU s':>7} {'x handwritten':>14} {'peak MB':>8}")
    for n in names:
        print(f"{n:<22} {med[n]:9.2f} {med[n] / base:14.2f} {low[n]:7.2f} {low[n] / low['handwritten']:14.2f} "
              f"{cpu[n]:7.2f} {cpu[n] / cpu['handwritten']:14.2f} {peak[n] / MB:8.0f}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    print("training loss printed: " + ", ".join(f"{n} {losses[n][-1]}" for n in names))
    if args.results:
        results = {
            "benchmark": "KERAS_BACKEND=torch lossmap check vs hand-written load_model + train_on_batch on torch",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpu_count": bc._cpu_count(), "cpu_model": bc._cpu_model()},
            "versions": {d: bc._version(d) for d in ("lossmap", "keras", "torch", "numpy")},
            "model": facts,
            "repeats": args.repeats, "warmup": args.warmup,
            "order": "alternating: even runs " + " -> ".join(names) + ", odd runs reversed",
            "seconds": {n: [round(t, 3) for t in times[n]] for n in names},
            "median_seconds": {n: round(med[n], 3) for n in names},
            "ratio_to_handwritten": {n: round(med[n] / base, 3) for n in names},
            # the least disturbed run of each: on a machine shared with other work, the steadier comparison
            "min_seconds": {n: round(low[n], 3) for n in names},
            "min_ratio_to_handwritten": {n: round(low[n] / low["handwritten"], 3) for n in names},
            "cpu_ratio_to_handwritten": {n: round(cpu[n] / cpu["handwritten"], 3) for n in names},
            "median_cpu_seconds": {n: round(cpu[n], 3) for n in names},
            "median_peak_rss_bytes": {n: int(peak[n]) for n in names},
            "target_ratio": TARGET,
            "meets_target": {n: med[n] / base <= TARGET for n in names if n != "handwritten"},
            "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "exit_codes": {n: sorted(set(exits[n])) for n in names},
            "training_loss_printed": {n: losses[n][-1] for n in names},
        }
        with open(args.results, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
        print(f"bench: results in {os.path.relpath(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
