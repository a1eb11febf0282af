"""Where the time goes: one run of a lossmap command, or of a hand-written script, under stage timers.

Not a test, and not lossmap's code: it wraps functions of lossmap, Keras and TensorFlow from
the outside (inclusive wall seconds and call counts), runs the command in this process, and
prints a table (with --json, one line `STAGES {...}` too, for bench/bench_step.py).

    python bench/step_stages.py [--json] --lossmap explain MODEL --import MODULE --data BATCH
    python bench/step_stages.py [--json] --lossmap explain --step FILE.py:FUNCTION --data BATCH
    python bench/step_stages.py [--json] handwritten_train_step.py MODEL BATCH   # a hand-written script

For a hand-written script it also times a second call of the step afterwards (not part of the
script), which separates tracing a tf.function from running it.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time

T0 = time.perf_counter()
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class RSS:
    """The process's resident set size, sampled every few milliseconds in a thread (/proc/self/statm)."""

    def __init__(self, every=0.005):
        self.samples: list = []  # (perf_counter, bytes)
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.every = every
        self.stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def now(self):
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self):
        while not self.stopped.wait(self.every):
            self.samples.append((time.perf_counter(), self.now()))

    def peak(self, intervals):
        """Largest sample inside any of the (start, end) intervals, in MB."""
        best = 0
        for t, rss in self.samples:
            if any(a <= t <= b for a, b in intervals):
                best = max(best, rss)
        return round(best / 2 ** 20) if best else None


class Timers:
    """Inclusive wall seconds, calls and peak RSS per label; rows print in the order they were declared."""

    def __init__(self):
        self.seconds: dict = {}
        self.calls: dict = {}
        self.intervals: dict = {}  # label -> [(start, end)]
        self.order: list = []  # (label, depth)
        self.active: dict = {}  # label -> calls of it running now
        self.rss = RSS() if os.path.exists("/proc/self/statm") else None

    def add(self, label, seconds):
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds
        self.calls[label] = self.calls.get(label, 0) + 1
        end = time.perf_counter()
        self.intervals.setdefault(label, []).append((end - seconds, end))

    def row(self, label, depth):
        self.order.append((label, depth))
        return label

    def wrap(self, owner, attr, label, depth=None, outermost=False, first_only=False, contexts=None):
        """Replace owner.attr by a timed wrapper. `outermost`: nested calls of it are not counted again;
        `first_only`: only the first call; `contexts`: [(enclosing label, row label)]: the time goes to
        the row of the first enclosing stage running (and nowhere outside them). depth None: the rows
        are declared elsewhere."""
        original = getattr(owner, attr)
        timers, busy = self, [0]
        if depth is not None:
            self.row(label, depth)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            target = label
            if contexts is not None:
                target = next((row for ctx, row in contexts if timers.active.get(ctx)), None)
            if target is None or (outermost and busy[0]) or (first_only and timers.calls.get(target)):
                return original(*args, **kwargs)
            busy[0] += 1
            timers.active[label] = timers.active.get(label, 0) + 1
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                busy[0] -= 1
                timers.active[label] -= 1
                timers.add(target, time.perf_counter() - t)

        setattr(owner, attr, timed)
        return original

    def table(self, total):
        peak = (lambda label: self.rss.peak(self.intervals.get(label, []))) if self.rss else (lambda label: None)
        rows = [{"stage": label, "depth": depth, "seconds": round(self.seconds.get(label, 0.0), 3),
                 "calls": self.calls.get(label, 0), "peak_rss_mb": peak(label)} for label, depth in self.order]
        return {"total": round(total, 3), "rows": rows,
                "peak_rss_mb": round(max(r for _, r in self.rss.samples) / 2 ** 20) if self.rss and self.rss.samples
                else None}


def _method_owner(cls, name):
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass
    raise AttributeError(name)


def timed_import(timers, label, modules):
    t = time.perf_counter()
    for m in modules:
        __import__(m)
    timers.row(label, 0)
    timers.add(label, time.perf_counter() - t)


def keras_probes(timers, contexts):
    """Forward passes, backward passes, optimizer updates (inclusive; a model inside a model counted once),
    timed only inside the given stages: contexts = [(enclosing stage label, row prefix, depth)]."""
    import keras
    import tensorflow as tf
    from keras.src.models.model import Model

    kinds = [("forward", "model forward (outermost Model.__call__)"),
             ("backward", "tape.gradient (backward passes)"),
             ("update", "optimizer.apply_gradients (incl. building its slots)")]
    rows = {kind: [] for kind, _ in kinds}
    for ctx, prefix, depth in contexts:
        for kind, text in kinds:
            rows[kind].append((ctx, timers.row(f"{prefix}{text}", depth)))
    call = Model.__call__
    Model.__call__ = lambda self, *a, **k: call(self, *a, **k)  # a Model attribute to wrap, for Models only
    timers.wrap(Model, "__call__", "forward", outermost=True, contexts=rows["forward"])
    timers.wrap(tf.GradientTape, "gradient", "backward", outermost=True, contexts=rows["backward"])
    for cls in {_method_owner(c, "apply_gradients") for c in (keras.optimizers.Adam, keras.optimizers.SGD)}:
        timers.wrap(cls, "apply_gradients", "update", outermost=True, contexts=rows["update"])


def _probes_under(timers, instrumented, real):
    """The Keras probes' rows go right under each run's row: move them there after declaring them."""
    before = list(timers.order)
    keras_probes(timers, [(instrumented, "[instrumented] ", 3), (real, "[real] ", 3)])
    added = timers.order[len(before):]
    timers.order = before
    for ctx in (instrumented, real):
        mine = [r for r in added if r[0].startswith("[instrumented] " if ctx == instrumented else "[real] ")]
        at = next(i for i, (label, _) in enumerate(timers.order) if label == ctx) + 1
        timers.order[at:at] = mine


def lossmap_stages(argv):
    timers = Timers()
    timed_import(timers, "import tensorflow + keras", ["tensorflow", "keras"])
    timed_import(timers, "import lossmap (cli, pipeline, steps, engines, renderers)", [
        "lossmap.cli", "lossmap.pipeline", "lossmap.load", "lossmap.steps.pipeline", "lossmap.steps.analyse",
        "lossmap.steps.decompose", "lossmap.steps.run", "lossmap.steps.state", "lossmap.steps.record",
        "lossmap.steps.view", "lossmap.engines.keras3.steps", "lossmap.engines.keras3.engine",
        "lossmap.render.text", "lossmap.render.json_report", "lossmap.render.html"])
    import keras

    import lossmap.cli as cli
    import lossmap.engines.keras3.steps as k3steps
    import lossmap.pipeline as pipeline
    import lossmap.render.html as html
    import lossmap.render.json_report as json_report
    import lossmap.render.text as text
    import lossmap.steps.analyse as analyse
    import lossmap.steps.decompose as decompose
    import lossmap.steps.pipeline as steps_pipeline
    import lossmap.steps.record as record
    import lossmap.steps.run as run
    import lossmap.steps.state as state
    import lossmap.steps.view as view

    w = timers.wrap
    w(pipeline, "_step_function", "--step: import the step's module (its model loads there)", 0)
    w(keras.saving, "load_model", "keras.saving.load_model", 1)
    w(pipeline, "load", "load (lossmap.load: checks, engine, load_model for a .keras)", 0)
    w(steps_pipeline, "analyse_custom_code", "analyse_custom_code (the custom-code pipeline)", 0)
    w(state.StepState, "__init__", "snapshot: the model, its optimizers and metrics (StepState)", 1)
    w(steps_pipeline, "labels_from_step_losses", "labels from the step's losses", 1)
    w(pipeline, "_batch", "batch (.npz)", 1)
    w(steps_pipeline, "analyse_custom", "analyse_custom", 1)
    w(decompose, "decompose", "decompose: read + split the step's source (libcst)", 2)
    w(decompose, "read_function", "read_function (parse the file, find the function)", 3)
    w(decompose, "split", "split into addends and objectives", 3)
    w(decompose, "split_returns", "split_returns (an overridden compute_loss)", 3)
    instrumented, real = "instrumented run (step's copy, recorded)", "real run (the step as written, eager)"
    w(analyse, "_instrumented_run", instrumented, 2)
    w(analyse, "instrument", "rewrite + compile the instrumented copy", 3)
    w(state.StepState, "swap_in_copies", "fresh copies of unbuilt optimizers", 3)
    w(record.Recorder, "keras_loss", "compute_loss as called by the step (Keras) + its expansion", 3)
    w(k3steps, "expand_keras_loss", "expansion of compute_loss into terms (lossmap)", 4)
    w(record.Recorder, "losses", "model.losses read by the step + its expansion", 3)
    w(record.Recorder, "gradient", "the step's tape.gradient, per-term gradients included", 3)
    w(run.Attribution, "__call__", "per-term gradients on the user's tape (Attribution)", 4)
    w(analyse, "_real_run", real, 2)
    w(state.StepState, "restore", "restore the state (after each run)", 2)
    _probes_under(timers, instrumented, real)
    w(analyse, "_assemble", "assemble terms", 2)
    w(analyse, "_verify_gradients", "verify gradients (sum of terms vs applied)", 2)
    w(analyse, "_compare_optimizers", "compare optimizers (several objectives)", 2)
    w(analyse, "_attribute", "gradient statistics (Accumulator)", 2)
    w(state.StepState, "identical", "bit-for-bit state check", 1)
    w(steps_pipeline, "_findings", "findings", 1)
    w(view, "attach_sources", "sources: the user's step annotated (report)", 1)
    w(text, "render", "render text", 0)
    w(json_report, "render", "render JSON", 0)
    w(html, "render", "render HTML", 0)

    t = time.perf_counter()
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # the explanation itself is not what this run is for
    try:
        code = cli.main(argv)
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    timers.row("lossmap.cli.main (all of the above but the imports)", 0)
    timers.add("lossmap.cli.main (all of the above but the imports)", time.perf_counter() - t)
    return timers, code


def handwritten_stages(script, args):
    import runpy

    timers = Timers()
    timed_import(timers, "import tensorflow + keras", ["tensorflow", "keras"])
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
    from tensorflow.python.eager.polymorphic_function.polymorphic_function import Function

    timers.wrap(keras.saving, "load_model", "keras.saving.load_model", 0)
    first_tob = "first model.train_on_batch"
    first_fn = "first call of the tf.function (trace + graph optimization + run)"
    timers.wrap(TensorFlowTrainer, "train_on_batch", first_tob, 0, first_only=True)
    timers.wrap(Function, "__call__", first_fn, 0, first_only=True)
    keras_probes(timers, [(first_fn, "[tracing] ", 1)])
    sys.argv = [script] + list(args)
    t = time.perf_counter()
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")
    try:
        namespace = runpy.run_path(script, run_name="__main__")
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    timers.row("the script (all of the above but the imports)", 0)
    timers.add("the script (all of the above but the imports)", time.perf_counter() - t)
    # a second call of the step, not part of the script: running it without tracing
    import numpy as np

    if "model" in namespace and hasattr(namespace["model"], "train_on_batch"):
        data = np.load(args[-1])
        t = time.perf_counter()
        namespace["model"].train_on_batch(data["x"], data["y"])
        label = "(not in the script) second train_on_batch: the traced step only"
    else:
        step_module = next(v for k, v in namespace.items() if hasattr(v, "train_step"))
        data = np.load(args[-1])
        t = time.perf_counter()
        step_module.train_step(data["x"], data["y"])
        label = "(not in the script) second train_step call: the traced step only"
    timers.row(label, 0)
    timers.add(label, time.perf_counter() - t)
    del tf
    return timers, 0


def main(argv):
    as_json = "--json" in argv[:2]
    argv = [a for i, a in enumerate(argv) if not (i < 2 and a == "--json")]
    if argv and argv[0] == "--lossmap":
        timers, code = lossmap_stages(argv[1:])
    else:
        timers, code = handwritten_stages(argv[0], argv[1:])
    table = timers.table(time.perf_counter() - T0)
    table["exit"] = code
    print(f"{'stage':<74} {'seconds':>10} {'peak RSS':>9}")
    for row in table["rows"]:
        indent = "  " * row["depth"]
        rss = f"{row['peak_rss_mb']:6d} MB" if row["peak_rss_mb"] is not None else " " * 9
        print(f"{indent}{row['stage']:<{74 - len(indent)}} {row['seconds']:8.2f} s {rss}"
              + (f"  x{row['calls']}" if row["calls"] > 1 else ""))
    print(f"{'in this process, from start to here':<74} {table['total']:8.2f} s {table['peak_rss_mb'] or 0:6d} MB")
    if as_json:
        print("STAGES " + json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
