"""Cost of per-term gradient attribution: `lossmap check` with and without --no-gradients.

Whole processes, side by side, alternating order, on deep MLPs with 100, 300 and
500 regularized layers (kernel L2 + activity L1 on each: 201, 601 and 1,001 terms).
Target (issue 4): with gradients at most 2x the same command with --no-gradients.

    python bench/bench_gradients.py [--repeats 3] [--depths 100 300 500]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LOSSMAP = [sys.executable, "-m", "lossmap"]


def run(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--depths", type=int, nargs="+", default=[100, 300, 500])
    args = ap.parse_args()
    rows = []
    for depth in args.depths:
        spec = f"{os.path.join(HERE, 'deep_mlp.py')}:mlp_{depth}"
        base = LOSSMAP + ["check", spec, "--no-gradients", "--format", "json"]
        grad = LOSSMAP + ["check", spec, "--format", "json"]
        times = {"no_gradients": [], "gradients": []}
        terms = None
        for i in range(args.repeats):
            order = [("no_gradients", base), ("gradients", grad)]
            if i % 2:
                order.reverse()
            for name, cmd in order:
                t, out = run(cmd)
                times[name].append(t)
                if name == "gradients" and terms is None:
                    doc = json.loads(out)
                    terms = len(doc["terms"])
                    units = len(doc["gradients"]["units"])
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["gradients"] / med["no_gradients"]
        rows.append({"depth": depth, "terms": terms, "attribution_units": units,
                     "no_gradients_s": round(med["no_gradients"], 2), "gradients_s": round(med["gradients"], 2),
                     "ratio": round(ratio, 3), "target": 2.0, "met": ratio <= 2.0,
                     "runs": {k: [round(x, 2) for x in v] for k, v in times.items()}})
        print(f"depth {depth:4d}: {terms} terms, {units} units | --no-gradients {med['no_gradients']:.2f}s | "
              f"gradients {med['gradients']:.2f}s | ratio {ratio:.2f} (target <= 2.0)", flush=True)
    out = {"benchmark": "gradients", "cpus": os.cpu_count(), "python": platform.python_version(),
           "repeats": args.repeats, "rows": rows}
    try:
        import keras
        import tensorflow as tf

        out["keras"], out["tensorflow"] = keras.__version__, tf.__version__
    except ImportError:
        pass
    with open(os.path.join(HERE, "results_gradients.json"), "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
