"""Command line: `lossmap check|explain|report|lock MODEL`.

Parsing and usage errors never import TensorFlow: `lossmap --help` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys

from lossmap import __version__
from lossmap.engines import BACKENDS
from lossmap.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, UserError

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"lossmap: {message} (see lossmap {self._sub_name()}--help)\n")

    def _sub_name(self):
        parts = self.prog.split()
        return (parts[1] + " ") if len(parts) > 1 else ""


# The bundled examples (lossmap.examples.EXAMPLES), listed here so that argument
# errors never import Keras; tests/test_report.py checks that the two agree.
# name -> (MODEL, --step): the specs each example runs as
EXAMPLES = {
    "multitask": ("lossmap.examples:multitask", None),
    "dense_variational": ("lossmap.examples:dense_variational", None),
    "physics_informed": ("lossmap.examples:physics_informed", None),
    "input_gradient": ("lossmap.examples:input_gradient", None),
    "custom_loop": (None, "lossmap.examples.custom_loop:train_step"),
}
# Examples whose training code is written with TensorFlow (tf.GradientTape): Keras 3 on another
# backend hands that code its own tensors, so they run on the TensorFlow backend only.
TENSORFLOW_EXAMPLES = ("physics_informed", "input_gradient", "custom_loop")

MODEL_HELP = ("a .keras archive (or a tf_keras .h5 file), or a factory path/to/file.py:function or "
              "package.module:function returning a compiled model")


def _common_options(many: bool = False) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and data")
    if many:  # check and lock: several models share one TensorFlow import (main() requires one at least)
        g.add_argument("models", metavar="MODEL", nargs="*", help=MODEL_HELP + "; several in one call share "
                       "one TensorFlow import and give one exit code, the worst (may be left out with --step "
                       "or --example)")
    else:
        g.add_argument("model", metavar="MODEL", nargs="?",
                       help=MODEL_HELP + " (may be left out with --step or --example)")
    g.add_argument("--step", metavar="FILE.py:FUNCTION",
                   help="a training-step function to explain (FUNCTION(x, y), FUNCTION(x, y, sample_weight) or "
                        "FUNCTION(data); the model first when its first parameter is model or self); MODEL may "
                        "be left out when the function reaches exactly one Keras model")
    g.add_argument("--example", choices=tuple(EXAMPLES), metavar="NAME",
                   help=f"a bundled example instead of MODEL ({', '.join(EXAMPLES)})")
    g.add_argument("--data", metavar="BATCH.npz",
                   help="batch to evaluate: keys x, y, sample_weight (or x/<input>, y/<output>, "
                        "sample_weight/<output>); default: a synthetic batch")
    g.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                   help="size of the synthetic batch (default 8)")
    g.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the synthetic batch (default 0)")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE (or file.py) first so its custom objects register; repeatable")
    g.add_argument("--unsafe", action="store_true",
                   help="allow deserializing code such as Lambda layers (Keras safe mode off)")
    g.add_argument("--engine", choices=("auto", "keras3", "tf_keras"), default="auto",
                   help="the Keras that explains the model (default auto: the model's own class, the file's "
                        "keras_version, .h5 means tf_keras, else TF_USE_LEGACY_KERAS=1); tf_keras needs "
                        "pip install tf_keras")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help="the Keras 3 backend to run on (default: KERAS_BACKEND, else the backend of "
                        "~/.keras/keras.json, else tensorflow); another backend than this process's runs the "
                        "command in a child process with KERAS_BACKEND set (same output and exit code)")
    g.add_argument("--weights-from", metavar="WEIGHTS.npz", help=argparse.SUPPRESS)  # --compare-backends' runs
    g.add_argument("--no-gradients", action="store_true", help="skip per-term gradient attribution")
    g.add_argument("--gradient-limit", type=_positive_int, default=None, metavar="N",
                   help="trunk-sharing terms that get a backward pass each before terms are grouped (default 8)")
    g.add_argument("--rtol", type=float, default=None, help="relative tolerance (default by dtype: float32 1e-5)")
    g.add_argument("--atol", type=float, default=None, help="absolute tolerance (default by dtype: float32 1e-7)")
    g.add_argument("--debug", action="store_true", help="show full tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(
        prog="lossmap",
        description="Explain, term by term, the loss Keras trains your model on, and verify it "
                    "against Keras's own compute_loss and a real train_step.",
        epilog="Every command takes --backend tensorflow|jax|torch (the Keras 3 backend; default KERAS_BACKEND, "
               "else ~/.keras/keras.json, else tensorflow); report and explain take --compare-backends. "
               "Exit codes: 0 verified; 1 mismatch or finding at/above --fail-on; "
               "2 could not analyse (bad input); 3 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"lossmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_check(sub)
    explain = sub.add_parser("explain", parents=[common], help="the loss as an equation, a term table and findings",
                             description="Print the loss as an equation with this batch's numbers.")
    _add_compare_backends(explain)
    report = sub.add_parser("report", parents=[common],
                            help="write the HTML explainer (one self-contained file)",
                            description="Write one self-contained HTML file that explains the model's "
                                        "training loss down to the Keras source lines that compute it.")
    report.add_argument("-o", "--output", metavar="OUT.html",
                        help="where to write the report (default: ./<model name>.lossmap.html)")
    report.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the JSON document here")
    report.add_argument("--compare-engines", action="store_true",
                        help="run the model in both tf_keras and Keras 3 and add a side-by-side table (MODEL: a "
                             "factory taking the Keras module, def build(keras), or a tf_keras .keras/.h5 file)")
    _add_compare_backends(report)
    _add_lock(sub)
    return parser


def _add_compare_backends(parser):
    parser.add_argument("--compare-backends", action="store_true",
                        help="run the model on every installed Keras 3 backend (tensorflow, jax, torch), each in "
                             "its own process on the same batch, and add a side-by-side table: each term, the "
                             "total and the verdict per backend, and every difference explained from the "
                             "backends' own source lines")


def _add_check(sub):
    check = sub.add_parser("check", parents=[_common_options(many=True)],
                           help="verify the total; exit code for CI",
                           description="Verify the reproduced total against Keras (and the lock file); exit "
                                       "0/1/2/3, the worst of all models.")
    check.add_argument("--format", choices=("text", "json", "github", "junit", "sarif"), default="text",
                       help="text; json (the contract's document); github (workflow commands and, with "
                            "GITHUB_STEP_SUMMARY set, a job summary); junit (JUnit XML); sarif (SARIF 2.1.0)")
    check.add_argument("--fail-on", choices=("error", "warning"), default="error",
                       help="lowest finding level that makes the exit code 1 (default error)")
    check.add_argument("--lock", metavar="LOCK.json",
                       help="compare the loss composition with this lock file (lossmap lock); a change is exit 1")
    check.add_argument("--output", dest="outputs", action="append", default=[], metavar="FORMAT=FILE",
                       help="also write FORMAT (text, json, junit, sarif) to FILE; repeatable")


def _add_lock(sub):
    lock = sub.add_parser("lock", parents=[_common_options(many=True)],
                          help="write the loss composition to a lock file, for check --lock",
                          description="Write each model's loss composition (terms, weights, reductions, "
                                      "regularizer strengths, engine) to a lock file that check --lock compares "
                                      "with. An entry that changed is rewritten only with --update.")
    lock.add_argument("-o", "--output", default="lossmap.lock.json", metavar="LOCK.json",
                      help="the lock file (default lossmap.lock.json)")
    lock.add_argument("--update", action="store_true", help="rewrite entries that changed (and a bad lock file)")
    lock.add_argument("--values", action="store_true",
                      help="also record each term's value on this batch, compared within a tolerance")
    lock.add_argument("--value-rtol", type=float, default=1e-4, metavar="R",
                      help="relative tolerance of recorded values (default 1e-4)")
    lock.add_argument("--value-atol", type=float, default=1e-6, metavar="A",
                      help="absolute tolerance of recorded values (default 1e-6)")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.command:
        print("lossmap: no command given; run lossmap check MODEL or lossmap explain MODEL "
              "(see lossmap --help)", file=sys.stderr)
        return EXIT_USAGE
    if args.command in ("check", "lock") and not (args.models or args.step or args.example):
        print(f"lossmap: the following arguments are required: MODEL, --step or --example (see lossmap "
              f"{args.command} --help)", file=sys.stderr)
        return EXIT_USAGE
    try:
        delegated = _on_backend(args) if args.backend is not None else None
        if delegated is not None:
            return delegated
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a UserError is exit 2, anything else lossmap's own failure
        return report_error(exc, args.debug)[0]


def _on_backend(args):
    """`--backend B`: None to run here (this process is on B, or will be); else the exit code of the
    command run in a child process on B, or 2 with one line when it cannot run there."""
    from lossmap import backends

    line = backends.usage_error(args.engine, args.backend) or backends.missing(args.backend)
    if line is not None:
        print(f"lossmap: {line}", file=sys.stderr)
        return EXIT_USAGE
    if args.backend == backends.current():
        if "keras.src.backend.config" not in sys.modules:  # keras.json may say B while the variable is unset
            os.environ["KERAS_BACKEND"] = args.backend
        return None
    return backends.run_command(args.argv, args.backend)


def report_error(exc, debug: bool):
    """Print the one line (the traceback too with --debug) for an error; return (exit code, the line)."""
    if debug:  # the traceback, and still the contract's exit code
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, UserError):
        line, code = f"lossmap: {exc}", EXIT_USAGE
    else:
        line = (f"lossmap: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                "(run with --debug for the traceback, and please report it)")
        code = EXIT_INTERNAL
    if not (debug and code == EXIT_INTERNAL):
        print(line, file=sys.stderr)
    return code, line


def _run(args) -> int:
    if args.command in ("check", "lock"):
        from lossmap.ci import run as ci_run

        _resolve_models(args)
        return ci_run.check(args) if args.command == "check" else ci_run.lock(args)
    _resolve_model(args)
    analysis = analyse_args(args, sources=args.command == "report")
    if args.command == "report":
        return _write_report(args, analysis)
    from lossmap.render.text import render

    sys.stdout.write(render(analysis))
    return EXIT_OK


def analyse_args(args, sources: bool = False, gradients=None):
    """Analyse `args.model` with the common options (TensorFlow imported here, not before)."""
    _quiet_tensorflow()
    if args.data is not None and not os.path.exists(args.data):
        raise UserError(f"--data {args.data}: no such file")
    if args.data is not None:  # its sizes and .npy headers, before TensorFlow starts (lossmap/limits.py)
        from lossmap.batch import read_npz

        read_npz(args.data, load=False)
    from lossmap.pipeline import analyse

    run = analyse
    if getattr(args, "compare_engines", False) and getattr(args, "compare_backends", False):
        raise UserError("give --compare-engines or --compare-backends, not both")
    if getattr(args, "compare_engines", False):
        from lossmap.compare import analyse_both as run
    if getattr(args, "compare_backends", False):
        from lossmap.compare_backends import analyse_backends as run
    extra = {"weights": args.weights_from} if args.weights_from else {}
    model = None if args.model == STEP_ONLY else args.model
    with _stdout_to_stderr():
        return run(
            model, args.data, batch_size=args.batch_size, seed=args.seed, imports=args.imports,
            unsafe=args.unsafe, engine=args.engine, rtol=args.rtol, atol=args.atol,
            gradients=not args.no_gradients if gradients is None else gradients,
            gradient_limit=args.gradient_limit, sources=sources, **({"step": args.step} if args.step else {}), **extra)


STEP_ONLY = "<the model the step reaches>"  # check/lock with --step and no MODEL: one run, keyed by the step


def _resolve_models(args):
    """check and lock: MODEL..., --step and --example as the list of runs."""
    if args.example and (args.models or args.step):
        raise UserError("give either MODEL (and --step) or --example NAME, not both")
    if args.example:
        _check_example_backend(args.example)
        model, args.step = EXAMPLES[args.example]
        args.models = [model or STEP_ONLY]
    elif not args.models:
        args.models = [STEP_ONLY]


def _check_example_backend(name: str) -> None:
    from lossmap.engines import keras_backend

    backend = keras_backend()
    if name in TENSORFLOW_EXAMPLES and backend != "tensorflow":
        raise UserError(f"the example {name!r} trains with tf.GradientTape, which Keras 3 on {backend} does not "
                        f"feed: run it with --backend tensorflow")


def _resolve_model(args):
    """MODEL, --step and --example: which model and step to explain (usage errors before any import)."""
    if args.example and (args.model or args.step):
        raise UserError("give either MODEL (and --step) or --example NAME, not both")
    if args.example:
        _check_example_backend(args.example)
        args.model, args.step = EXAMPLES[args.example]
        args.default_stem = args.example
    elif not args.model and not args.step:
        raise UserError(f"lossmap {args.command} needs MODEL (a .keras file or a factory), --step FILE.py:FUNCTION "
                        f"or --example NAME ({', '.join(EXAMPLES)})")
    else:
        named = args.model or args.step
        base = os.path.basename(named.rstrip("/\\"))
        args.default_stem = base.rsplit(":", 1)[-1] if ":" in base and not os.path.exists(named) \
            else os.path.splitext(base)[0]
    if args.command == "report":
        _check_report_paths(args)


def _check_report_paths(args):
    out = args.output or f"{args.default_stem}.lossmap.html"
    for path in (out, args.json_out):
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise UserError(f"cannot write {path}: the folder {folder} does not exist")
    args.output = out


def _write_report(args, analysis) -> int:
    from lossmap.render.html import render as render_html
    from lossmap.render.json_report import render as render_json

    command = "lossmap " + " ".join(_quote(a) for a in (args.argv or []))
    page = render_html(analysis, command=command)
    try:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(page)
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as fh:
                fh.write(render_json(analysis))
    except OSError as exc:
        raise UserError(f"cannot write the report: {exc.strerror} ({exc.filename})") from exc
    print(f"lossmap: wrote {args.output} ({len(page.encode('utf-8')) / 1024:.0f} KiB)"
          + (f" and {args.json_out}" if args.json_out else ""), file=sys.stderr)
    return EXIT_OK


def _quote(arg):
    import shlex

    return shlex.quote(arg)


def exit_code(analysis, fail_on="error") -> int:
    """See `lossmap.ci.outcome.exit_code`."""
    from lossmap.ci.outcome import exit_code as _exit_code

    return _exit_code(analysis, fail_on)


def _quiet_tensorflow():
    from lossmap.quiet import quiet_environment

    quiet_environment()


class _stdout_to_stderr:
    """Anything Keras or user code prints goes to stderr: stdout is the report alone."""

    def __enter__(self):
        self._saved = sys.stdout
        sys.stdout = sys.stderr

    def __exit__(self, *exc):
        sys.stdout = self._saved
        return False
