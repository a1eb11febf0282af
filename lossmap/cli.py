"""Command line: `lossmap check|explain MODEL`.

Parsing and usage errors never import TensorFlow: `lossmap --help` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys

from lossmap import __version__
from lossmap.errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, UserError

LEVEL_ORDER = {"info": 0, "warning": 1, "error": 2}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"lossmap: {message} (see lossmap {self._sub_name()}--help)\n")

    def _sub_name(self):
        parts = self.prog.split()
        return (parts[1] + " ") if len(parts) > 1 else ""


# The bundled examples (lossmap.examples.EXAMPLES), listed here so that argument
# errors never import Keras; tests/test_report.py checks that the two agree.
EXAMPLES = ("multitask", "dense_variational")

MODEL_HELP = ("a .keras archive (or a tf_keras .h5 file), or a factory path/to/file.py:function or "
              "package.module:function returning a compiled model")


def _common_options(model_optional: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and data")
    if model_optional:
        g.add_argument("model", metavar="MODEL", nargs="?", help=MODEL_HELP + " (or --example NAME)")
    else:
        g.add_argument("model", metavar="MODEL", help=MODEL_HELP)
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
    g.add_argument("--no-gradients", action="store_true", help="skip per-term gradient attribution")
    g.add_argument("--gradient-limit", type=_positive_int, default=None, metavar="N",
                   help="trunk-sharing terms that get a backward pass each before terms are grouped (default 8)")
    g.add_argument("--rtol", type=float, default=None, help="relative tolerance (default by dtype: float32 1e-5)")
    g.add_argument("--atol", type=float, default=None, help="absolute tolerance (default by dtype: float32 1e-7)")
    g.add_argument("--debug", action="store_true", help="show full tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(model_optional=False)
    parser = _Parser(
        prog="lossmap",
        description="Explain, term by term, the loss Keras trains your model on, and verify it "
                    "against Keras's own compute_loss and a real train_step.",
        epilog="Exit codes: 0 verified; 1 mismatch or finding at/above --fail-on; "
               "2 could not analyse (bad input); 3 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"lossmap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    check = sub.add_parser("check", parents=[common], help="verify the total; exit code for CI",
                           description="Verify the reproduced total against Keras; exit 0/1/2/3.")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.add_argument("--fail-on", choices=("error", "warning"), default="error",
                       help="lowest finding level that makes the exit code 1 (default error)")
    sub.add_parser("explain", parents=[common], help="the loss as an equation, a term table and findings",
                   description="Print the loss as an equation with this batch's numbers.")
    report = sub.add_parser("report", parents=[_common_options(model_optional=True)],
                            help="write the HTML explainer (one self-contained file)",
                            description="Write one self-contained HTML file that explains the model's "
                                        "training loss down to the Keras source lines that compute it.")
    report.add_argument("-o", "--output", metavar="OUT.html",
                        help="where to write the report (default: ./<model name>.lossmap.html)")
    report.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the JSON document here")
    report.add_argument("--example", choices=EXAMPLES, metavar="NAME",
                        help=f"report on a bundled example model ({', '.join(EXAMPLES)})")
    report.add_argument("--compare-engines", action="store_true",
                        help="run the model in both tf_keras and Keras 3 and add a side-by-side table (MODEL: a "
                             "factory taking the Keras module, def build(keras), or a tf_keras .keras/.h5 file)")
    return parser


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
    try:
        return _run(args)
    except UserError as exc:
        if args.debug:  # the traceback, and still the contract's exit code
            import traceback

            traceback.print_exc()
        print(f"lossmap: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # lossmap's own failure
        if args.debug:
            import traceback

            traceback.print_exc()
            return EXIT_INTERNAL
        print(f"lossmap: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(run with --debug for the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _run(args) -> int:
    if args.command == "report":
        _resolve_report_model(args)
    _quiet_tensorflow()
    if args.data is not None and not os.path.exists(args.data):
        raise UserError(f"--data {args.data}: no such file")
    if args.data is not None:  # its sizes and .npy headers, before TensorFlow starts (lossmap/limits.py)
        from lossmap.batch import read_npz

        read_npz(args.data, load=False)
    from lossmap.pipeline import analyse

    run = analyse
    if getattr(args, "compare_engines", False):
        from lossmap.compare import analyse_both as run
    with _stdout_to_stderr():
        analysis = run(
            args.model, args.data, batch_size=args.batch_size, seed=args.seed, imports=args.imports,
            unsafe=args.unsafe, engine=args.engine, rtol=args.rtol, atol=args.atol,
            gradients=not args.no_gradients, gradient_limit=args.gradient_limit,
            sources=args.command == "report")
    if args.command == "report":
        return _write_report(args, analysis)
    if args.command == "check" and args.format == "json":
        from lossmap.render.json_report import render

        sys.stdout.write(render(analysis))
    else:
        from lossmap.render.text import render

        sys.stdout.write(render(analysis))
    if args.command == "explain":
        return EXIT_OK
    return exit_code(analysis, args.fail_on)


def _resolve_report_model(args):
    if args.example and args.model:
        raise UserError("give either MODEL or --example NAME, not both")
    if args.example:
        args.model = f"lossmap.examples:{args.example}"
        args.default_stem = args.example
    elif not args.model:
        raise UserError("lossmap report needs MODEL (a .keras file or a factory) or --example NAME "
                        f"({', '.join(EXAMPLES)})")
    else:
        base = os.path.basename(args.model.rstrip("/\\"))
        args.default_stem = base.rsplit(":", 1)[-1] if ":" in base and not os.path.exists(args.model) \
            else os.path.splitext(base)[0]
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
    total = analysis.total
    if (total.compute_loss is not None or total.train_step is not None) and not total.verified:
        return EXIT_FAILED
    threshold = LEVEL_ORDER[fail_on]
    if any(LEVEL_ORDER[f.level] >= threshold for f in analysis.findings):
        return EXIT_FAILED
    return EXIT_OK


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
