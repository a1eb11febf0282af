"""Run `lossmap.cli.main` in this one process on every case of a fuzz run (see test_fuzz.py).

    python fuzz_child.py CASES.json RESULTS.jsonl HEADROOM_BYTES WARM_CASES

The first WARM_CASES cases are valid runs that import TensorFlow, Keras and tf_keras;
after them the address space is capped at its size then plus HEADROOM_BYTES (RLIMIT_AS),
so that a case that tries to allocate gigabytes fails here (and shows as exit 3 or a dead
child) instead of taking the machine's memory. Each case's exit code, stdout, stderr,
wall and CPU seconds and the process's peak RSS afterwards go to RESULTS, one JSON line per case,
flushed as it ends: when the child dies, the last line says which case it survived.
"""
import contextlib
import io
import json
import os
import resource
import sys
import time


def status(field: str) -> int:
    """A size from /proc/self/status in bytes: VmSize (address space), VmHWM (peak RSS of this program;
    getrusage's ru_maxrss would include the parent's peak before exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_case(cli, argv):
    out, err = io.StringIO(), io.StringIO()
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        except BaseException as exc:  # noqa: BLE001 - reported, the parent fails the case
            code = f"raised {type(exc).__name__}: {exc}"
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - start, time.process_time() - cpu


def record(case_id, code, stdout, stderr, seconds, cpu) -> dict:
    """What the parent checks of one case; stdout and stderr kept cut (a message can be long)."""
    lines = stderr.splitlines()
    return {"id": case_id, "code": code, "json_ok": strict_json(stdout), "stdout": stdout[:2000],
            "stderr": stderr if len(stderr) <= 4000 else stderr[:2000] + " [...] " + stderr[-2000:],
            "stderr_lines": lines[:1] + [len(lines)], "seconds": seconds, "cpu": cpu, "peak_rss": status("VmHWM")}


def strict_json(text) -> bool:
    """Whether `text` is one strict JSON document (no NaN or Infinity)."""
    def refuse(token):
        raise ValueError(token)

    try:
        json.loads(text, parse_constant=refuse)
        return True
    except ValueError:
        return False


def main(cases_path, results_path, headroom, warm):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from lossmap.cli import main as cli

    with open(cases_path) as fh:
        cases = json.load(fh)
    with open(results_path, "w") as out:
        for i, case in enumerate(cases):
            if i == warm:
                limit = status("VmSize") + headroom
                resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            code, stdout, stderr, seconds, cpu = run_case(cli, case["argv"])
            out.write(json.dumps(record(case["id"], code, stdout, stderr, seconds, cpu)) + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
