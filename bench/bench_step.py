"""Benchmark: lossmap on custom training code against the script a user would write by hand.

Not a test. It builds (once, cached) two ResNet50-sized Keras 3 models whose training step
lives in code, with a batch of 8 each, then times whole processes side by side, alternating
their order, after an untimed warm-up round:

  train_step override (`PhysicsResNet.train_step`: compute_loss + two physics terms)
    handwritten            python handwritten_train_step.py   (load_model + one train_on_batch)
    explain                lossmap explain model.keras --import physics_resnet.py --data batch.npz
    check                  lossmap check   model.keras --import physics_resnet.py --data batch.npz
    report                 lossmap report  model.keras --import physics_resnet.py --data batch.npz -o ...
  hand-written step function (`@tf.function def train_step(x, y)` over a global model)
    handwritten            python handwritten_loop.py         (import the module + one train_step(x, y))
    explain --step         lossmap explain --step loop_step.py:train_step --data loop_batch.npz
    check --step           lossmap check   --step loop_step.py:train_step --data loop_batch.npz

and prints, per command, the median/min/max wall time, CPU time and peak RSS, and the ratio
lossmap/handwritten of its own case (target from the issue: at most 2.0). Results also go to
bench/results_step.json. `--stages` adds one instrumented in-process run of each command
(timers around lossmap's stages, and around the hand-written scripts' import / load / step).

    python bench/bench_step.py [--repeats 3] [--warmup 1] [--size 64] [--only CMD ...] [--stages] [--rebuild]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_check as bc  # noqa: E402  (the timing of a child and the machine, as the other benchmarks take them)

BATCH_SIZE = 8
CLASSES = 10
TARGET_RATIO = 2.0  # the custom-code issue: explaining a custom step costs at most 2x running it once

# ---------------------------------------------------------------- the user's code (written into the cache)
PHYSICS_MODULE = '''\
"""A physics-informed ResNet: a `train_step` override that adds two physics terms to the data loss.

The network reads a field snapshot (64x64, 3 channels; channel 0 is a density) and
predicts the flow's state: density, momentum and energy. Besides the data loss (mse,
through `self.compute_loss`, which adds the L2 of every kernel), the step penalises two
physical relations between the input and the prediction: conservation of mass (the
predicted density is the field's mean density) and an equation of state
(2 * density * energy = momentum ** 2). Trunk: ResNet50's bottleneck stages, with L2 on
every Conv2D and Dense kernel.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers, regularizers  # noqa: E402

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # ResNet50: (filters, bottleneck blocks) per stage


def resnet_trunk(size, l2=1e-4, name="trunk"):
    """ResNet50's layout (53 Conv2D, each with L2 on its kernel) as a functional model."""
    def conv(x, filters, kernel, name, strides=1):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same",
                          kernel_regularizer=regularizers.L2(l2), name=name + "_conv")(x)
        return layers.BatchNormalization(name=name + "_bn")(x)

    inputs = keras.Input(shape=(size, size, 3), name="field")
    x = layers.Activation("relu", name="stem_relu")(conv(inputs, 64, 7, "stem", strides=2))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for s, (filters, blocks) in enumerate(STAGES):
        for b in range(blocks):
            p = f"s{s + 1}b{b + 1}"
            strides = 2 if b == 0 and s > 0 else 1
            shortcut = conv(x, 4 * filters, 1, p + "_proj", strides) if b == 0 else x
            y = layers.Activation("relu")(conv(x, filters, 1, p + "_1", strides))
            y = layers.Activation("relu")(conv(y, filters, 3, p + "_2"))
            y = conv(y, 4 * filters, 1, p + "_3")
            x = layers.Activation("relu", name=p + "_out")(layers.Add(name=p + "_add")([shortcut, y]))
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="lossmap_bench")
class PhysicsResNet(keras.Model):
    def __init__(self, image_size=64, a=0.5, b=0.1, l2=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.a, self.b, self.l2 = image_size, a, b, l2
        self.trunk = resnet_trunk(image_size, l2)
        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.head = layers.Dense(3, kernel_regularizer=regularizers.L2(l2), name="state")

    def call(self, field):
        return self.head(self.pool(self.trunk(field)))

    def train_step(self, data):
        # train_on_batch hands over (x, y, None), fit (x, y): unpack either
        field, state, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            pred = self(field, training=True)
            data_loss = self.compute_loss(field, state, pred)
            density, momentum, energy = pred[:, 0], pred[:, 1], pred[:, 2]
            mean_density = tf.reduce_mean(field[:, :, :, 0], axis=[1, 2])
            loss_mass = tf.reduce_mean(tf.square(density - mean_density))
            loss_state = tf.reduce_mean(tf.square(2.0 * density * energy - tf.square(momentum)))
            total = data_loss + self.a * loss_mass + self.b * loss_state
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(total)
        return {"loss": total, "data_loss": data_loss, "loss_mass": loss_mass, "loss_state": loss_state}

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "a": self.a, "b": self.b, "l2": self.l2}
'''

LOOP_MODULE = '''\
"""A hand-written training loop, as Keras's "writing a training loop from scratch" guide writes it.

The model is the saved ResNet50-style classifier next to this file (L2 on every kernel);
the step adds `sum(model.losses)` to the crossentropy itself.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

model = keras.saving.load_model(os.path.join(os.path.dirname(os.path.abspath(__file__)), "loop_model.keras"))
optimizer = keras.optimizers.SGD(learning_rate=1e-3)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
train_acc_metric = keras.metrics.SparseCategoricalAccuracy()


@tf.function
def train_step(x, y):
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss_value = loss_fn(y, logits)
        loss_value += sum(model.losses)
    grads = tape.gradient(loss_value, model.trainable_weights)
    optimizer.apply_gradients(zip(grads, model.trainable_weights))
    train_acc_metric.update_state(y, logits)
    return loss_value
'''

HANDWRITTEN_TRAIN_STEP = '''\
"""What a user writes by hand to run their train_step override once on a saved model and one batch."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import physics_resnet  # noqa: E402,F401  (registers PhysicsResNet)
import keras  # noqa: E402

model = keras.saving.load_model(sys.argv[1])
data = np.load(sys.argv[2])
print(model.train_on_batch(data["x"], data["y"], return_dict=True)["loss"])
'''

HANDWRITTEN_LOOP = '''\
"""What a user writes by hand to run their step function once on one batch."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop_step  # noqa: E402  (loads the model)

data = np.load(sys.argv[1])
print(float(loop_step.train_step(data["x"], data["y"])))
'''

SOURCES = {"physics_resnet.py": PHYSICS_MODULE, "loop_step.py": LOOP_MODULE,
           "handwritten_train_step.py": HANDWRITTEN_TRAIN_STEP, "handwritten_loop.py": HANDWRITTEN_LOOP}
# the cache directory is keyed by what build() makes: bump the name, or edit the code above
BUILD_VERSION = "resnet50-physics-loop-v1-" + hashlib.sha256(
    "".join(SOURCES[k] for k in sorted(SOURCES)).encode()).hexdigest()[:8]


# ---------------------------------------------------------------- building the models
def build(directory: str, size: int) -> dict:
    """Write the user's code, model.keras + batch.npz (train_step override) and loop_model.keras +
    loop_batch.npz (step function) in `directory`; return the models' facts."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, text in SOURCES.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    sys.path.insert(0, directory)
    import numpy as np
    import keras
    from keras import layers, regularizers

    import physics_resnet

    # 1. the train_step override
    keras.utils.set_random_seed(0)
    model = physics_resnet.PhysicsResNet(image_size=size, a=0.5, b=0.1, l2=1e-4, name="physics_resnet")
    model(keras.Input(shape=(size, size, 3), name="field"))  # builds every layer (and records the build config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    tmp = os.path.join(directory, "model.tmp.keras")
    model.save(tmp)
    reloaded = keras.saving.load_model(tmp)
    n_conv = sum(1 for layer in reloaded.trunk.layers if isinstance(layer, layers.Conv2D))
    n_reg = len(reloaded.losses)
    if n_reg != n_conv + 1:
        raise SystemExit(f"bench: expected {n_conv + 1} weight regularizers after reload, got {n_reg}")
    for a, b in zip(model.weights, reloaded.weights):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise SystemExit(f"bench: {a.path} differs after reload")
    os.replace(tmp, os.path.join(directory, "model.keras"))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH_SIZE, size, size, 3)).astype("float32")
    np.savez(os.path.join(directory, "batch.npz"), x=x,
             y=rng.standard_normal((BATCH_SIZE, 3)).astype("float32"))

    # 2. the model of the hand-written loop: the same trunk, a 10-class logits head, not compiled
    keras.utils.set_random_seed(1)
    trunk = physics_resnet.resnet_trunk(size, 1e-4, name="resnet")
    features = layers.GlobalAveragePooling2D(name="pool")(trunk.output)
    logits = layers.Dense(CLASSES, kernel_regularizer=regularizers.L2(1e-4), name="predictions")(features)
    loop_model = keras.Model(trunk.input, logits, name="resnet_classifier")
    loop_model.save(os.path.join(directory, "loop_model.keras"))
    n_loop_reg = len(keras.saving.load_model(os.path.join(directory, "loop_model.keras")).losses)
    np.savez(os.path.join(directory, "loop_batch.npz"), x=x,
             y=rng.integers(0, CLASSES, size=(BATCH_SIZE,)).astype("int32"))

    def params(m):
        return int(m.count_params())

    facts = {
        "build_version": BUILD_VERSION,
        "input_shape": [size, size, 3],
        "batch_size": BATCH_SIZE,
        "keras": keras.__version__,
        "train_step": {
            "architecture": "PhysicsResNet(keras.Model): ResNet50-layout functional trunk (53 Conv2D + BatchNorm, "
                            "bottleneck stages 3-4-6-3) + GlobalAveragePooling2D + Dense(3) 'state'",
            "step": "train_step override: self.compute_loss (mse + L2) + 0.5 * loss_mass + 0.1 * loss_state",
            "params": params(reloaded),
            "conv2d_layers": n_conv,
            "weight_regularizers": n_reg,
            "expected_terms": 1 + n_reg + 2,
            "loss": "mse",
            "regularizer": "L2(1e-4) on every Conv2D and Dense kernel",
            "optimizer": "Adam(1e-3)",
            "model_bytes": os.path.getsize(os.path.join(directory, "model.keras")),
        },
        "step_function": {
            "architecture": "functional: the same ResNet50-layout trunk + GlobalAveragePooling2D + "
                            "Dense(10) logits 'predictions', not compiled",
            "step": "@tf.function def train_step(x, y): SparseCategoricalCrossentropy(from_logits=True) "
                    "+ sum(model.losses); SGD(1e-3); a SparseCategoricalAccuracy metric",
            "params": params(loop_model),
            "weight_regularizers": n_loop_reg,
            "expected_terms": 1 + n_loop_reg,
            "model_bytes": os.path.getsize(os.path.join(directory, "loop_model.keras")),
        },
    }
    with open(os.path.join(directory, "model.json"), "w", encoding="utf-8") as fh:
        json.dump(facts, fh, indent=2)
    return facts


def ensure_models(cache_root: str, size: int, rebuild: bool) -> tuple[str, dict]:
    directory = os.path.join(cache_root, f"step-{BUILD_VERSION}-{size}px-keras{bc._version('keras')}")
    facts_path = os.path.join(directory, "model.json")
    if rebuild and os.path.isdir(directory):
        shutil.rmtree(directory)
    if not os.path.exists(facts_path):
        os.makedirs(directory, exist_ok=True)
        print(f"bench: building the models in {directory} (once) ...", flush=True)
        t0 = time.perf_counter()
        # in a child process, so that this one never imports TensorFlow
        subprocess.run([sys.executable, os.path.abspath(__file__), "--_build", directory, "--size", str(size)],
                       check=True, env=_env())
        print(f"bench: built in {time.perf_counter() - t0:.1f} s", flush=True)
    with open(facts_path, encoding="utf-8") as fh:
        return directory, json.load(fh)


def commands(directory: str, python: str) -> dict:
    """name -> (case, argv). Each case's first command is its hand-written baseline."""
    d = lambda *p: os.path.join(directory, *p)  # noqa: E731
    lossmap = [python, "-m", "lossmap"]
    override = [d("model.keras"), "--import", d("physics_resnet.py"), "--data", d("batch.npz")]
    step = ["--step", d("loop_step.py") + ":train_step", "--data", d("loop_batch.npz")]
    return {
        "train_step: handwritten": ("train_step", [python, d("handwritten_train_step.py"), d("model.keras"),
                                                   d("batch.npz")]),
        "train_step: explain": ("train_step", lossmap + ["explain"] + override),
        "train_step: check": ("train_step", lossmap + ["check"] + override),
        "train_step: report": ("train_step", lossmap + ["report"] + override
                               + ["-o", d("physics_resnet.lossmap.html")]),
        "step fn: handwritten": ("step_function", [python, d("handwritten_loop.py"), d("loop_batch.npz")]),
        "step fn: explain --step": ("step_function", lossmap + ["explain"] + step),
        "step fn: check --step": ("step_function", lossmap + ["check"] + step),
    }


# ---------------------------------------------------------------- timing
def reported_loss(name, stdout):
    """The training loss each command prints, to check they agree (handwritten: its last line;
    lossmap explain/check: the `train_step` line of the verification)."""
    if "handwritten" in name:
        lines = stdout.strip().splitlines()
        found = re.search(r"[-+0-9.eE]+", lines[-1]) if lines else None
        return float(found.group(0)) if found else None
    found = re.search(r"^\s*train_step\s+([-+0-9.eE]+)\s*$", stdout, re.M)
    return float(found.group(1)) if found else None


def verdict_lines(stdout):
    """The lines of lossmap's text that say whether it verified, and its error findings."""
    keep = []
    for line in stdout.splitlines():
        s = line.strip()
        if s.startswith(("max |diff|", "gradients ", "model state")) or s.startswith("[error]"):
            keep.append(s)
    return keep


def _env():
    env = dict(os.environ)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _lossmap_version():
    try:
        sys.path.insert(0, REPO)
        import lossmap  # no TensorFlow: lossmap's __init__ imports it lazily
        return lossmap.__version__
    except Exception:  # noqa: BLE001
        return bc._version("lossmap")
    finally:
        sys.path.remove(REPO)


def _git_commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ---------------------------------------------------------------- stages (one instrumented run)
def stages(cmds: dict, names: list, env) -> dict:
    """One in-process run of each command under bench/step_stages.py's timers; its table of seconds."""
    out = {}
    for name in names:
        argv = cmds[name][1]
        cmd = [sys.executable, os.path.join(HERE, "step_stages.py"), "--json"] + argv[1:]
        if argv[1:3] == ["-m", "lossmap"]:
            cmd = [sys.executable, os.path.join(HERE, "step_stages.py"), "--json", "--lossmap"] + argv[3:]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        found = re.search(r"^STAGES (.*)$", proc.stdout, re.M)
        if not found:
            print(f"bench: stages of '{name}' failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
                  file=sys.stderr)
            continue
        table = json.loads(found.group(1))
        table["process_wall"] = round(wall, 3)
        table["load_average_1min"] = round(os.getloadavg()[0], 2)
        out[name] = table
        print(f"\nstages of '{name}' (one run: {wall:.2f} s wall, of which {table['total']:.2f} s in the process "
              f"after start-up; the rest is interpreter start-up and shutdown; load {os.getloadavg()[0]:.2f}):")
        for row in table["rows"]:
            rss = f"{row['peak_rss_mb']:6d} MB" if row.get("peak_rss_mb") is not None else " " * 9
            print(f"  {'  ' * row['depth']}{row['stage']:<{74 - 2 * row['depth']}} {row['seconds']:7.2f} s {rss}"
                  + (f"  x{row['calls']}" if row["calls"] > 1 else ""))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of each command first, to warm the OS file cache (default 1)")
    parser.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    parser.add_argument("--only", nargs="+", metavar="CMD",
                        help="time only these commands (names as printed; each case keeps its handwritten)")
    parser.add_argument("--stages", action="store_true",
                        help="also one instrumented run of each command: seconds per stage (bench/step_stages.py)")
    parser.add_argument("--cache-dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--rebuild", action="store_true", help="build the models again")
    parser.add_argument("--results", default=os.path.join(HERE, "results_step.json"),
                        help="where to write the JSON results ('' for nowhere)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run every timed command at this niceness increment (negative needs root); "
                             "the same for all commands (default 0)")
    parser.add_argument("--_build", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._build:
        build(args._build, args.size)
        return 0

    directory, facts = ensure_models(args.cache_dir, args.size, args.rebuild)
    cmds = commands(directory, sys.executable)
    names = list(cmds)
    if args.only:
        wanted = set(args.only)
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown command(s) {sorted(unknown)}; known: {names}")
        cases = {cmds[n][0] for n in wanted}
        names = [n for n in names if n in wanted or ("handwritten" in n and cmds[n][0] in cases)]
    env = _env()
    base_of = {case: next(n for n in names if cmds[n][0] == case and "handwritten" in n)
               for case in {cmds[n][0] for n in names}}

    ts, sf = facts["train_step"], facts["step_function"]
    print(f"bench: train_step override: {ts['params']:,} parameters, {ts['expected_terms']} loss terms expected "
          f"(1 compiled + {ts['weight_regularizers']} L2 + 2 physics); step function: {sf['params']:,} parameters, "
          f"{sf['expected_terms']} terms expected (1 + {sf['weight_regularizers']} L2); input {args.size}x{args.size}x3, "
          f"batch {BATCH_SIZE}; {bc._cpu_count()} CPUs", flush=True)
    times = {n: [] for n in names}
    cpu_times = {n: [] for n in names}
    rss = {n: [] for n in names}
    exits, losses, failures, verdicts, loads = {}, {}, {}, {}, []
    load_before = os.getloadavg()
    for i in range(args.warmup + args.repeats):
        order = names if i % 2 == 0 else names[::-1]
        timed = i >= args.warmup
        for name in order:
            elapsed, cpu, peak, proc = bc.run_timed(cmds[name][1], env, args.nice)
            peak, code, stdout, stderr = peak / 2 ** 20, proc.returncode, proc.stdout, proc.stderr
            label = f"run {i - args.warmup + 1}/{args.repeats}" if timed else "warm-up"
            load = os.getloadavg()[0]
            loads.append(load)
            print(f"  {label:>9}  {name:<26} {elapsed:7.2f} s wall {cpu:7.2f} s CPU {peak:7.0f} MB  exit {code}"
                  f"  (load {load:.2f})", flush=True)
            exits.setdefault(name, set()).add(code)
            losses[name] = reported_loss(name, stdout)
            if "handwritten" not in name:
                verdicts[name] = verdict_lines(stdout)
            # explain/report: 0 explained; check: 0 verified, 1 mismatch or an error finding (a full run)
            allowed = (0,) if "handwritten" in name or "check" not in name else (0, 1)
            if code not in allowed:
                failures[name] = {"exit": code, "stderr_tail": stderr[-3000:], "stdout_tail": stdout[-3000:]}
            if timed:
                times[name].append(elapsed)
                cpu_times[name].append(cpu)
                rss[name].append(peak)
    load_after = os.getloadavg()

    stage_tables = stages(cmds, names, env) if args.stages else {}
    if args.repeats < 1:
        return 0
    med = {n: statistics.median(t) for n, t in times.items()}
    cpu_med = {n: statistics.median(t) for n, t in cpu_times.items()}
    rss_max = {n: max(r) for n, r in rss.items()}
    ratio = {n: med[n] / med[base_of[cmds[n][0]]] for n in names}
    cpu_ratio = {n: cpu_med[n] / cpu_med[base_of[cmds[n][0]]] for n in names}
    print()
    print(f"{'command':<26} {'median s':>9} {'min s':>7} {'max s':>7} {'x handwritten':>14} {'CPU s':>7} "
          f"{'x CPU':>6} {'peak RSS MB':>12}")
    for n in names:
        print(f"{n:<26} {med[n]:9.2f} {min(times[n]):7.2f} {max(times[n]):7.2f} {ratio[n]:14.2f} "
              f"{cpu_med[n]:7.2f} {cpu_ratio[n]:6.2f} {rss_max[n]:12.0f}")
    meets = {n: ratio[n] <= TARGET_RATIO for n in names if "handwritten" not in n}
    print(f"\nratio lossmap / handwritten of its case (median wall; target <= {TARGET_RATIO}): " + "; ".join(
        f"{n} {ratio[n]:.2f} ({'meets' if ok else 'MISSES'})" for n, ok in meets.items()))
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}, during: "
          f"{min(loads):.2f}-{max(loads):.2f} on {bc._cpu_count()} CPUs"
          + ("  (other work was running: wall times are inflated)" if max(loads) > 1.5 else ""))
    print("training loss printed: " + ", ".join(f"{n} {losses.get(n)}" for n in names))
    for name, lines in verdicts.items():
        print(f"  {name}: " + "; ".join(lines[:4]))
    for name, info in failures.items():
        print(f"\nbench: '{name}' exited {info['exit']}; its stderr ends with:\n{info['stderr_tail']}",
              file=sys.stderr)

    if args.results:
        results = {
            "benchmark": "lossmap on custom training code vs the hand-written script that runs the step once",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python bench/bench_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {
                "cpu_count": bc._cpu_count(),
                "os_cpu_count": os.cpu_count(),
                "cpu_model": bc._cpu_model(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "versions": {"lossmap": _lossmap_version(), "lossmap_commit": _git_commit(),
                         **{d: bc._version(d) for d in ("keras", "tensorflow", "tensorflow-cpu", "numpy")}},
            "models": facts,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "order": "alternating: even rounds " + " -> ".join(names) + ", odd rounds reversed",
            "commands": {n: " ".join("python" if c == sys.executable else
                                     os.path.relpath(c, REPO) if os.path.isabs(c) else c for c in cmds[n][1])
                         for n in names},
            "baseline": {n: base_of[cmds[n][0]] for n in names},
            "seconds": {n: [round(t, 3) for t in times[n]] for n in names},
            "median_seconds": {n: round(med[n], 3) for n in names},
            "min_seconds": {n: round(min(times[n]), 3) for n in names},
            "max_seconds": {n: round(max(times[n]), 3) for n in names},
            "ratio_to_handwritten": {n: round(ratio[n], 3) for n in names},
            "cpu_seconds": {n: [round(t, 3) for t in cpu_times[n]] for n in names},
            "median_cpu_seconds": {n: round(cpu_med[n], 3) for n in names},
            "cpu_ratio_to_handwritten": {n: round(cpu_ratio[n], 3) for n in names},
            "peak_rss_mb": {n: [round(r) for r in rss[n]] for n in names},
            "nice": args.nice,
            "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2),
                                  "min_during": round(min(loads), 2), "max_during": round(max(loads), 2)},
            "exit_codes": {n: sorted(exits[n]) for n in names},
            "training_loss_printed": losses,
            "verification": verdicts,
            "target_ratio": TARGET_RATIO,
            "meets_target": meets,
            "stages": stage_tables,
            "failures": failures,
        }
        with open(args.results, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
            fh.write("\n")
        print(f"bench: results in {os.path.relpath(args.results)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
