"""Where `lossmap check` holds its memory: the peak and the resident set of each stage, in one process.

Not a test. Runs `lossmap.analyse` on the bench model (bench_check.py's, cached) with each stage
wrapped: before a stage the kernel's high-water mark of the resident set is reset (writing 5 to
/proc/self/clear_refs), after it VmHWM is that stage's peak and VmRSS what the process holds
going into the next one. Linux only.

    python bench/bench_memory.py [--no-gradients] [--model MODEL.keras --data BATCH.npz]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MB = 2 ** 20


def status() -> dict:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak():
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")


class Stages:
    """Wraps functions as stages and records each one's peak, resident set after it, and seconds."""

    def __init__(self):
        self.rows = []
        self.last_end = time.perf_counter()

    def mark(self, name, start):
        s = status()
        self.rows.append({"stage": name, "peak_bytes": s["VmHWM"], "resident_after_bytes": s["VmRSS"],
                          "seconds": round(time.perf_counter() - start, 2)})
        print(f"  {name:<40} peak {s['VmHWM'] / MB:6.0f} MB   after {s['VmRSS'] / MB:6.0f} MB   "
              f"{time.perf_counter() - start:6.2f} s", flush=True)
        reset_peak()
        self.last_end = time.perf_counter()

    def wrap(self, owner, attr, name):
        original = getattr(owner, attr)
        stages = self

        def stage(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                stages.mark(name, start)

        setattr(owner, attr, stage)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-gradients", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--data")
    ap.add_argument("--results", default=os.path.join(HERE, "results_memory.json"))
    args = ap.parse_args(argv)
    model, data = args.model, args.data
    if model is None:
        import bench_check

        directory, _ = bench_check.ensure_model(os.path.join(HERE, ".cache"), 64, False)
        model, data = os.path.join(directory, "model.keras"), os.path.join(directory, "batch.npz")
    stages = Stages()
    reset_peak()
    start = time.perf_counter()
    from lossmap.quiet import import_tensorflow

    import_tensorflow()
    from lossmap import pipeline
    from lossmap.engines.keras3 import engine, train_step

    stages.mark("import TensorFlow, Keras, lossmap", start)
    # (owner, attribute, stage); an attribute an older lossmap does not have is left out
    for owner, attr, name in [
        (pipeline, "load", "load the model"),
        (pipeline._SeededRuns, "__init__", "state snapshot"),
        (engine.Keras3Engine, "capture", "capture (taped forward pass)"),
        (pipeline, "build_terms", "terms (NumPy reproduction)"),
        (engine.Keras3Engine, "begin_attribution", "backward passes on the capture's tape"),
        (pipeline, "_verify", "verify (eager train_step)"),
        (getattr(train_step, "_Pending", None), "finish", "attribution: derived term, regularizers"),
        (engine.Keras3Engine, "attribute_gradients", "attribution (every backward pass)"),
        (pipeline.gradients_module, "summarise", "summarise"),
        (pipeline, "_findings", "findings"),
    ]:
        if owner is not None and hasattr(owner, attr):
            stages.wrap(owner, attr, name)
    analysis = pipeline.analyse(model, data, gradients=not args.no_gradients, sources=False)
    stages.mark("the rest (state check, Analysis)", stages.last_end)
    print(f"verified {analysis.total.verified}, state restored {analysis.state_restored}; "
          f"peak of the whole run {max(r['peak_bytes'] for r in stages.rows) / MB:.0f} MB")
    if args.results:
        with open(args.results, "w", encoding="utf-8") as fh:
            json.dump({"benchmark": "peak and resident memory by stage",
                       "model": model.replace(os.path.dirname(HERE) + os.sep, ""),
                       "gradients": not args.no_gradients, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "stages": stages.rows}, fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
