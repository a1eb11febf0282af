"""`lossmap check` and `lossmap lock` over one or several models in one process.

The models share one TensorFlow import; a model that cannot be analysed gets
its one line on stderr and its exit code (2, or 3 for lossmap's own failure)
while the others go on, and the call exits with the worst code. Everything
that can be checked without TensorFlow (the lock file, the output files) is
checked before it is imported.
"""
from __future__ import annotations

import copy
import os
import sys
import time

from lossmap.ci import lock as lockfile_module
from lossmap.ci import lockdiff
from lossmap.ci.outcome import Outcome, exit_code, worst
from lossmap.errors import EXIT_FAILED, EXIT_OK, UserError

FILE_FORMATS = ("text", "json", "junit", "sarif")


def analyse_each(args, gradients=None) -> list:
    """Analyse every MODEL of `args.models`; a failure becomes that model's outcome."""
    from lossmap.cli import analyse_args, report_error

    outcomes = []
    for model in args.models:
        ns = copy.copy(args)
        ns.model = model
        start = time.perf_counter()
        fresh_keras_state()
        try:
            analysis = analyse_args(ns, gradients=gradients)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as the contract says, then the next model
            code, line = report_error(exc, args.debug)
            outcomes.append(Outcome(model, code, error=line))
            continue
        outcomes.append(Outcome(model, EXIT_OK, analysis, seconds=time.perf_counter() - start))
    return outcomes


def fresh_keras_state():
    """Give the next model the Keras global state of a process of its own.

    Keras names unnamed layers from process-wide counters (dense, dense_1, ...),
    and term ids carry those names: without this, a factory's ids would depend on
    the models analysed before it in the same call, and so would its lock entry.
    Nothing to do before Keras is imported (the first model of a call).
    """
    for name in ("keras", "tf_keras"):
        backend = getattr(sys.modules.get(name), "backend", None)
        clear = getattr(backend, "clear_session", None)
        if clear is not None:
            clear()


def check(args) -> int:
    from lossmap.cli import report_error

    outputs = parse_outputs(args.outputs)
    try:
        lockfile = lockfile_module.read(args.lock, args.models) if args.lock else None
    except UserError as exc:  # before TensorFlow; still an error in the JUnit, SARIF and GitHub output
        code, line = report_error(exc, args.debug)
        lockfile, outcomes = None, [Outcome(model, code, error=line) for model in args.models]
    else:
        _quiet()
        outcomes = analyse_each(args)
    for o in outcomes:
        if o.analysis is not None and lockfile is not None:
            _compare(o, lockfile, args)
        if o.analysis is not None:
            o.exit_code = exit_code(o.analysis, args.fail_on)
    sys.stdout.write(render(args.format, outcomes, args.fail_on))
    for fmt, path in outputs:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(render(fmt, outcomes, args.fail_on))
    return worst(o.exit_code for o in outcomes)


def render(fmt: str, outcomes, fail_on: str) -> str:
    if fmt == "json":
        from lossmap.ci.text import render_json

        return render_json(outcomes, fail_on)
    if fmt == "github":
        from lossmap.ci import github

        return github.render(outcomes, fail_on, summary_path=os.environ.get("GITHUB_STEP_SUMMARY") or None)
    if fmt == "sarif":
        from lossmap.ci import sarif

        return sarif.render(outcomes, fail_on)
    if fmt == "junit":
        from lossmap.ci import junit

        return junit.render(outcomes, fail_on)
    from lossmap.ci.text import render_text

    return render_text(outcomes, fail_on)


def parse_outputs(specs) -> list:
    """`--output FORMAT=FILE` options as (format, path), checked before anything runs."""
    out = []
    for spec in specs or ():
        fmt, sep, path = spec.partition("=")
        if not sep or fmt not in FILE_FORMATS or not path:
            raise UserError(f"--output {spec}: expected FORMAT=FILE with FORMAT one of {', '.join(FILE_FORMATS)}, "
                            "e.g. --output sarif=lossmap.sarif")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UserError(f"--output {spec}: cannot write {path}: the folder {folder} does not exist")
        out.append((fmt, path))
    return out


def _compare(outcome, lockfile, args):
    """Compare the model with its lock entry; its changes become findings (so every format shows them)."""
    from lossmap.cli import report_error

    analysis = outcome.analysis
    key = lockfile_module.model_key(analysis.model.source, lockfile.path)
    locked = lockfile.models.get(key) or {}
    values = locked.get("values")
    current = lockfile_module.entry(
        outcome.document(), values=values is not None,
        rtol=(values or {}).get("rtol", lockfile_module.VALUE_RTOL),
        atol=(values or {}).get("atol", lockfile_module.VALUE_ATOL),
        batch_digest=_digest(args.data))
    try:
        comparison = lockdiff.compare(lockfile, key, current, [outcome.model])
    except UserError as exc:
        outcome.exit_code, outcome.error = report_error(exc, False)
        outcome.analysis = None
        return
    analysis.findings = list(analysis.findings) + comparison.findings()
    outcome.lock = comparison
    outcome._doc = None  # the document again, with the lock's findings and the lock itself


def _digest(data):
    return lockfile_module.file_digest(data) if data and os.path.exists(data) else None


def lock(args) -> int:
    """`lossmap lock`: write each model's entry; an entry that changed is rewritten only with --update."""
    path = args.output
    existing = lockfile_module.read(path, args.models, missing_ok=True, bad_ok=args.update)
    _quiet()
    models = dict(existing.models)
    codes, dirty = [], False
    for o in analyse_each(args, gradients=False):
        if o.analysis is None:
            codes.append(o.exit_code)
            continue
        key = lockfile_module.model_key(o.analysis.model.source, path)
        new = lockfile_module.entry(o.document(), values=args.values, rtol=args.value_rtol, atol=args.value_atol,
                                    batch_digest=_digest(args.data))
        code, replace = _lock_one(key, models.get(key), new, args.update, path)
        codes.append(code)
        if replace:
            models[key], dirty = new, True
    if dirty:
        lockfile_module.write(path, models)
        print(f"lossmap: wrote {path}", file=sys.stderr)
    return worst(codes)


def _lock_one(key, old, new, update, path):
    """Print what happens to one model's entry; return (exit code, whether to write `new`)."""
    if old is None:
        print(f"{key}: locked {len(new['terms'])} terms")
        return EXIT_OK, True
    changes = lockdiff.diff(old, new)
    layout = _layout(old) != _layout(new)
    failing = [c for c in changes if c.level == "error"]
    if changes or layout:
        text = lockdiff.Comparison(path, key, changes).text()
        if layout:
            text += f"  ~ the entry records {_layout(new)} now (was {_layout(old)})\n"
        sys.stdout.write(text)
    if not failing and not layout:
        print(f"{key}: up to date")
        return EXIT_OK, update and bool(changes)
    if update:
        print(f"{key}: updated")
        return EXIT_OK, True
    print(f"{key}: the loss composition differs from {path}; run with --update to rewrite it")
    return EXIT_FAILED, False


def _layout(entry) -> str:
    """What an entry holds beyond the composition: values, on which batch, with which tolerance."""
    values = entry.get("values")
    if values is None:
        return "no values"
    return f"values (batch {values.get('batch')}, rtol {values.get('rtol')}, atol {values.get('atol')})"


def _quiet():
    from lossmap.quiet import quiet_environment

    quiet_environment()

