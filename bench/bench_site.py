"""Wall time of `make site`: the whole learning site built from scratch, as whole processes.

Runs what the Makefile's `site` target runs (`python site/build.py --out DIR`) with this
interpreter, `--repeats` times, and reports the median, min and max wall time, the CPU time of
the child, the 1-minute load average, and each page's own time (from the build's claims.json).
Target (the site issue): at most 5 minutes on this 2-core machine, page 5's training included.

    python bench/bench_site.py [--repeats 3] [--make]

`--make` times `make site` itself instead (it needs the Makefile's .venv).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGET_S = 300.0


def run_once(out, use_make):
    cmd = (["make", "site"] if use_make else [sys.executable, os.path.join(REPO, "site", "build.py"), "--out", out])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"site build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    built = os.path.join(REPO, "_site") if use_make else out
    with open(os.path.join(built, "claims.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    return wall, cpu, manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--make", action="store_true", help="time `make site` instead of site/build.py")
    args = ap.parse_args()
    walls, cpus, pages = [], [], {}
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            wall, cpu, manifest = run_once(os.path.join(tmp, "site"), args.make)
        walls.append(wall)
        cpus.append(cpu)
        for p in manifest["pages"]:
            pages.setdefault(p["slug"], []).append(p["seconds"])
        claims = sum(len(p["claims"]) for p in manifest["pages"])
        print(f"run {i + 1}: {wall:.1f} s wall, {cpu:.1f} s CPU, load {load:.2f}, {len(manifest['pages'])} pages, "
              f"{claims} claims", flush=True)
    med = statistics.median(walls)
    print(f"median {med:.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); target <= {TARGET_S:.0f} s: "
          f"{'met' if med <= TARGET_S else 'NOT met'}")
    for slug, secs in pages.items():
        print(f"  {slug:28s} {statistics.median(secs):6.2f} s")
    result = {"benchmark": "site", "command": "make site" if args.make else "python site/build.py --out DIR",
              "cpus": os.cpu_count(), "python": platform.python_version(), "versions": manifest["versions"],
              "repeats": args.repeats, "wall_s": [round(w, 2) for w in walls], "cpu_s": [round(c, 2) for c in cpus],
              "median_s": round(med, 2), "target_s": TARGET_S, "met": med <= TARGET_S,
              "pages_median_s": {k: round(statistics.median(v), 2) for k, v in pages.items()}}
    with open(os.path.join(HERE, "results_site.json"), "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
