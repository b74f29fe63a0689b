"""Writes $OUT/gpu_check.json, the GPU check's verdict so far (scripts/gpu_check.sh calls it after
every step, and on exit with --final): each step's status, exit code, seconds and limit (a step
still running when the check stopped is "interrupted"); the kernel driver's failures; the test
and opcheck totals and failed cases (junit XML); the sanitizers' outcomes; each kernel's
registers and spills; and each bench case's wall time, GPU time, floor and ratio.

    python scripts/gpu_check_summary.py WORK_DIR OUT_DIR DRY(0|1) [--final]

With --final the exit status is 1 when any step did not pass (0 otherwise).
"""
import json
import pathlib
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

STATUS = {0: "passed", 124: "timed out", 137: "timed out (killed)"}


def step_status(name, rc):
    if name == "sanitizers" and rc == 2:
        return "tooling failure"
    return STATUS.get(rc, "failed")


def read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None


def junit(path):
    """Totals and failed case ids of a junit XML file, or None."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time_s": 0.0}
    failed = []
    for suite in root.iter("testsuite"):
        for key in ("tests", "failures", "errors", "skipped"):
            totals[key] += int(suite.get(key, 0))
        totals["time_s"] += float(suite.get("time", 0))
        for case in suite.iter("testcase"):
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is not None:
                failed.append({"case": f"{case.get('classname')}::{case.get('name')}",
                               "message": (bad.get("message") or "")[:300]})
    totals["time_s"] = round(totals["time_s"], 1)
    return dict(totals, failed=failed)


def demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, timeout=10)
        lines = out.stdout.splitlines()
        return lines if len(lines) == len(names) else names
    except (OSError, subprocess.SubprocessError):
        return names


def resources(path):
    """Registers, stack and spills of each kernel from ptxas's --resource-usage lines."""
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except OSError:
        return []
    kernels, current = [], None
    for line in lines:
        m = re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line)
        if m:
            current = {"kernel": m.group(1), "arch": m.group(2)}
            kernels.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    for k, name in zip(kernels, demangle([k["kernel"] for k in kernels])):
        k["kernel"] = name
    return kernels


def bench(path):
    data = read_json(path)
    if not data:
        return []
    keep = ("gpu_s", "gpu_timer", "floor_s", "memory_floor_s", "compute_floor_s", "bound", "gpu_over_floor",
            "iterations", "predicted_s", "gpu_over_predicted")
    return [dict({"name": b["name"], "group": b.get("group"), "wall_mean_s": b["stats"]["mean"],
                  "wall_min_s": b["stats"]["min"], "rounds": b["stats"]["rounds"]},
                 **{k: b.get("extra_info", {}).get(k) for k in keep}) for b in data.get("benchmarks", [])]


def main():
    work, out, dry = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
    final = "--final" in sys.argv[4:]
    steps = []
    try:
        rows = (work / "steps.tsv").read_text().splitlines()
    except OSError:
        rows = []
    for row in rows:
        name, rc, seconds, limit = row.split("\t")
        steps.append({"step": name, "status": step_status(name, int(rc)), "exit": int(rc),
                      "seconds": int(seconds), "limit_s": int(limit)})
    try:
        name, limit, since = (work / "current").read_text().split("\t")
        steps.append({"step": name, "status": "interrupted" if final else "running", "exit": None,
                      "seconds": int(time.time() - int(since)), "limit_s": int(limit)})
    except (OSError, ValueError):
        pass
    kernels = resources(out / "build_resources.log")
    summary = {
        "dry_run": dry,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "finished": final,
        "steps": steps,
        "kernels": read_json(work / "kernels.json"),
        "planted_fault": read_json(work / "planted.json"),
        "tests": junit(out / "junit_tests.xml"),
        "opcheck": junit(out / "junit_opcheck.xml"),
        "sanitizers": read_json(work / "sanitizers.json"),
        "resources": kernels,
        "spilling_kernels": [f"{k['kernel']} ({k['arch']}): {k.get('spill_stores')} B stores, "
                             f"{k.get('spill_loads')} B loads" for k in kernels
                             if k.get("spill_stores") or k.get("spill_loads")],
        "bench": bench(out / "bench.json"),
    }
    for part in ("kernels", "planted_fault"):  # the per-case list is in the log; keep the verdict
        if summary[part]:
            summary[part].pop("results", None)
    not_passed = [s["step"] for s in steps if s["status"] != "passed"]
    summary["verdict"] = ("every step passed" if steps and not not_passed
                          else f"not passed: {', '.join(not_passed)}" if not_passed else "no step ran")
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "gpu_check.json")
    if final:
        print("gpu_check:", json.dumps([{k: s[k] for k in ("step", "status", "seconds", "limit_s")} for s in steps]))
        print("gpu_check:", summary["verdict"])
        sys.exit(1 if not_passed or not steps else 0)


if __name__ == "__main__":
    main()
