"""`lossmap ARGV` inside a backend's child process (tests/jax_child.py, tests/torch_child.py)."""
import contextlib
import io


def cli(*argv):
    """(exit code, stdout, stderr) of `lossmap ARGV` in this process."""
    from lossmap.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()
