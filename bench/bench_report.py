"""Benchmark: how big the report and the JSON are, and how the report opens in Chromium.

Not a test. For the ResNet50 bench model (bench_check.py's, cached) and deep MLPs with kernel L2
and activity L1 on every layer (bench/deep_mlp.py; 500 layers: 1,001 terms), it runs

  lossmap report MODEL -o OUT.html --json OUT.json
  lossmap check  MODEL --format json > OUT.check.json

and prints the size of each file and of the JSON embedded in the HTML, then opens each report in
headless Chromium (Debian's /usr/bin/chromium, through Playwright) and reports the longest task
on the page's main thread, from a PerformanceObserver of 'longtask' entries registered before the
page's first byte is parsed (every task over 50 ms). Targets (the output-size issue): report under
2 MB and `check --format json` under 3 MB for the 1,001-term MLP, report under 2 MB for the bench
model, and no task over 1 s. Results go to bench/results_report.json.

    python bench/bench_report.py [--depths 100 300 500] [--no-bench-model] [--html FILE ...]

`--html FILE` only opens existing reports in Chromium (for instance one written before a change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_check  # noqa: E402  (the bench model and its cache)

MB = 1e6
TARGETS = {"html_bytes": 2 * MB, "json_bytes": 3 * MB, "longest_task_ms": 1000.0}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Registered before the document is parsed: every task over 50 ms from then on, parsing included.
OBSERVE = """
window.__longtasks = [];
new PerformanceObserver(list => { for (const e of list.getEntries())
    window.__longtasks.push({start: e.startTime, duration: e.duration, name: e.name}); })
  .observe({type: "longtask", buffered: true});
"""
TASK_EVENTS = ("RunTask", "ThreadControllerImpl::RunTask")  # a task of the main thread's loop, by category
EMBEDDED = re.compile(rb'<script type="application/json" id="lossmap-data"[^>]*>(.*?)</script>', re.S)


def run(cmd, stdout_path=None):
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.decode()[-2000:]}")
    if stdout_path:
        with open(stdout_path, "wb") as fh:
            fh.write(proc.stdout)
    return elapsed


def write_outputs(name, spec, data, out_dir) -> dict:
    """The report (with its JSON) and `check --format json` of one model: sizes and times."""
    lossmap = [sys.executable, "-m", "lossmap"]
    extra = ["--data", data] if data else []
    html, report_json, check_json = (os.path.join(out_dir, f"{name}{s}") for s in
                                     (".lossmap.html", ".report.json", ".check.json"))
    t_report = run(lossmap + ["report", spec, *extra, "-o", html, "--json", report_json])
    t_check = run(lossmap + ["check", spec, *extra, "--format", "json"], stdout_path=check_json)
    with open(html, "rb") as fh:
        found = EMBEDDED.search(fh.read())
    with open(check_json, encoding="utf-8") as fh:
        doc = json.load(fh)
    gradients = doc.get("gradients") or {}
    return {"model": name, "spec": spec.replace(os.path.dirname(HERE) + os.sep, ""), "terms": len(doc["terms"]), "units": len(gradients.get("units") or ()),
            "html": html, "html_bytes": os.path.getsize(html),
            "embedded_json_bytes": len(found.group(1)) if found else None,
            "json_bytes": os.path.getsize(check_json),
            "gradients_json_bytes": len(json.dumps(gradients, indent=2)),
            "report_seconds": round(t_report, 2), "check_seconds": round(t_check, 2)}


def open_in_chromium(paths) -> dict:
    """{path: {"longest_task_ms", "long_tasks", "load_ms", "longest_traced_task_ms"}} for each report,
    each in a fresh page: the PerformanceObserver's long tasks (none under 50 ms), and as a
    cross-check the longest task on the renderer's main thread in Chrome's own trace."""
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            for path in paths:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.add_init_script(OBSERVE)
                trace = os.path.join(os.path.dirname(os.path.abspath(path)), "chromium-trace.json")
                browser.start_tracing(page=page, path=trace, categories=["toplevel", "devtools.timeline"])
                page.goto("file://" + os.path.abspath(path), wait_until="load", timeout=300_000)
                page.wait_for_timeout(1500)  # tasks queued by the load (layout, the page's own script)
                browser.stop_tracing()
                tasks = page.evaluate("window.__longtasks")
                load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                out[path] = {"longest_task_ms": round(max([t["duration"] for t in tasks] + [0.0]), 1),
                             "long_tasks": len(tasks), "load_ms": round(load_ms, 1),
                             "longest_traced_task_ms": longest_traced_task(trace)}
                page.close()
        finally:
            browser.close()
    return out


def longest_traced_task(trace_path) -> float:
    """The longest top-level task on the renderer's main thread in a Chrome trace, in ms."""
    with open(trace_path, encoding="utf-8") as fh:
        events = json.load(fh)
    events = events.get("traceEvents", []) if isinstance(events, dict) else events
    main = {(e["pid"], e["tid"]) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    durations = [e.get("dur", 0) for e in events
                 if e.get("ph") == "X" and e.get("name") in TASK_EVENTS and (e.get("pid"), e.get("tid")) in main]
    return round(max(durations + [0]) / 1000.0, 1)


def _ms(r) -> str:
    """The longest task: the observer's (every task over 50 ms), and the trace's."""
    observed = f"{r['longest_task_ms']:.0f} ms" if r["long_tasks"] else "none over 50 ms"
    return f"{observed} (trace {r['longest_traced_task_ms']:.0f} ms)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="*", default=[100, 300, 500],
                    help="deep MLPs by regularized layers (bench/deep_mlp.py; 100, 300 or 500)")
    ap.add_argument("--no-bench-model", action="store_true", help="leave out the ResNet50 bench model")
    ap.add_argument("--html", nargs="+", help="only open these existing reports in Chromium")
    ap.add_argument("--out", default=os.path.join(HERE, ".cache", "reports"))
    ap.add_argument("--results", default=os.path.join(HERE, "results_report.json"))
    args = ap.parse_args(argv)
    if args.html:
        for path, r in open_in_chromium(args.html).items():
            print(f"{path}: {os.path.getsize(path) / MB:.2f} MB, {r['long_tasks']} long tasks (over 50 ms), "
                  f"longest {_ms(r)}; load event at {r['load_ms']:.0f} ms")
        return 0
    os.makedirs(args.out, exist_ok=True)
    models = []
    if not args.no_bench_model:
        directory, _ = bench_check.ensure_model(os.path.join(HERE, ".cache"), 64, False)
        models.append(("resnet50", os.path.join(directory, "model.keras"), os.path.join(directory, "batch.npz")))
    models += [(f"mlp_{d}", f"{os.path.join(HERE, 'deep_mlp.py')}:mlp_{d}", None) for d in args.depths]
    rows = []
    for name, spec, data in models:
        rows.append(write_outputs(name, spec, data, args.out))
        print(f"{name}: written in {rows[-1]['report_seconds']} s (report), {rows[-1]['check_seconds']} s (check)",
              flush=True)
    browser = open_in_chromium([r["html"] for r in rows]) if os.path.exists(CHROMIUM) else {}
    print(f"\n{'model':<10} {'terms':>6} {'units':>6} {'report MB':>10} {'embedded JSON MB':>17} "
          f"{'check JSON MB':>14} {'longest task':>26} {'load ms':>8}")
    for r in rows:
        r.update(browser.get(r["html"], {}))
        r["meets"] = {"html_bytes": r["html_bytes"] < TARGETS["html_bytes"],
                      "json_bytes": r["json_bytes"] < TARGETS["json_bytes"],
                      "longest_task_ms": r.get("longest_task_ms", 0.0) < TARGETS["longest_task_ms"]}
        print(f"{r['model']:<10} {r['terms']:>6} {r['units']:>6} {r['html_bytes'] / MB:10.2f} "
              f"{(r['embedded_json_bytes'] or 0) / MB:17.2f} {r['json_bytes'] / MB:14.2f} "
              f"{_ms(r) if 'load_ms' in r else 'n/a':>26} {r.get('load_ms', float('nan')):8.0f}")
    print(f"targets: report < {TARGETS['html_bytes'] / MB:g} MB, check JSON < {TARGETS['json_bytes'] / MB:g} MB "
          f"(the 1,001-term MLP), no task over {TARGETS['longest_task_ms']:g} ms; "
          + ("all met" if all(all(r["meets"].values()) for r in rows) else "NOT all met"))
    with open(args.results, "w", encoding="utf-8") as fh:
        json.dump({"benchmark": "report and JSON size, report in Chromium", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "cpus": os.cpu_count(), "python": platform.python_version(), "targets": TARGETS,
                   "load_average_1min": round(os.getloadavg()[0], 2),
                   "rows": [{k: v for k, v in r.items() if k != "html"} for r in rows]}, fh, indent=2)
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
