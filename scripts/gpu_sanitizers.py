"""compute-sanitizer's four tools on every ebm_ext kernel (scripts/gpu_kernels.py), side by side:
the GPU check's sanitizer step (scripts/gpu_check.sh).

    python scripts/gpu_sanitizers.py [cuda|emulated] --log FILE --json FILE [--limit S] [--dry-run]

- memcheck (out-of-bounds and misaligned accesses), racecheck (shared-memory races), synccheck
  (barriers not every thread reaches) and initcheck (reads of uninitialised device memory), each
  in its own process, at the same time;
- PYTORCH_NO_CUDA_MEMORY_CACHING=1: without it, PyTorch's caching allocator hands out pieces of
  larger blocks, and memcheck cannot see an access past a tensor that stays inside its block;
- only our kernels are instrumented (--kernel-name kns=ebm_ext: every kernel of ours lives in
  namespace ebm_ext, so its mangled name holds "ebm_ext"); torch's and cuBLAS's are not. Whether
  this compute-sanitizer has the option is checked in the same run (--help); without it the tools
  run unfiltered, and the log says so;
- the version is logged, and each tool's outcome is one of: clean; kernel errors (the tool's
  error summary counts errors, or the driver failed a case); tooling failure (the tool refused
  the device or could not start: not a verdict on our kernels); timed out.

--dry-run (no GPU): the same runs and classification with the program run bare, not under
compute-sanitizer. Exit status 0 when every tool is clean, 2 when the only failures are the
tooling's, 1 otherwise.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
# What compute-sanitizer prints when it, not the program, cannot go on.
TOOLING = re.compile(r"Device not supported|not supported on this|Unable to (?:find|open|load|create)|"
                     r"error 999|Target application terminated before first instrumented API call|"
                     r"Could not (?:find|load)|LibraryNotLoaded|Failed to initialize", re.I)
ERRORS = re.compile(r"ERROR SUMMARY: (\d+) error")


def classify(rc, output, timed_out):
    """One tool's outcome from its exit status and output: (status, errors it counted)."""
    errors = sum(int(n) for n in ERRORS.findall(output))
    if timed_out:
        return "timed out", errors
    if TOOLING.search(output):
        return "tooling failure", errors
    return ("clean" if rc == 0 and errors == 0 else "kernel errors"), errors


def find_sanitizer():
    """compute-sanitizer on the PATH, or where CUDA installs it; None when there is none."""
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (shutil.which("compute-sanitizer"), f"{cuda}/bin/compute-sanitizer",
                      f"{cuda}/compute-sanitizer/compute-sanitizer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_tools(args, bare, sanitizer, program):
    """Every tool at once on the program (or the program `bare`, in a dry run); waits for each
    within args.limit seconds. Returns (results by tool, log sections)."""
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    runs = {}
    for tool in TOOLS:
        command = bare or sanitizer + ["--tool", tool] + program
        out = open(pathlib.Path(args.json).with_suffix(f".{tool}.log"), "w+")
        runs[tool] = (command, out, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env),
                      time.monotonic())
    results, log = {}, []
    for tool, (command, out, process, t0) in runs.items():
        timed_out = False
        try:
            process.wait(timeout=max(1.0, args.limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            timed_out = True
        out.seek(0)
        output = out.read()
        out.close()
        status, errors = classify(process.returncode, output, timed_out)
        results[tool] = {"status": status, "exit": process.returncode, "errors": errors,
                         "seconds": round(time.monotonic() - t0, 1)}
        print(f"gpu_sanitizers: {tool}: {status} (exit {process.returncode}, {errors} errors counted, "
              f"{results[tool]['seconds']} s)", flush=True)
        log.append(f"===== {tool}: {status}\n$ {' '.join(command)}\n{output}")
    return results, log


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("where", choices=["cuda", "emulated"])
    parser.add_argument("--log", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--limit", type=float, default=70.0, help="seconds for each tool")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()

    program = [sys.executable, str(ROOT / "scripts" / "gpu_kernels.py"), args.where]
    options, found = [], find_sanitizer()
    sanitizer = [found or "compute-sanitizer"]
    if args.dry_run:
        version, filtered = "(dry run: compute-sanitizer not run)", True
    elif found is None:
        version, filtered = "(no compute-sanitizer on the PATH or under CUDA_HOME)", False
    else:
        try:
            version = subprocess.run(sanitizer + ["--version"], capture_output=True, text=True,
                                     timeout=20).stdout.strip().splitlines()[-1]
            filtered = "--kernel-name" in subprocess.run(sanitizer + ["--help"], capture_output=True,
                                                         text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError, IndexError) as e:
            version, filtered = f"(compute-sanitizer failed to start: {e})", False
        options = ["--error-exitcode", "3", "--print-limit", "20", "--target-processes", "all"]
        if filtered:
            options += ["--kernel-name", "kns=ebm_ext"]
    if not args.dry_run and found is None:
        log = []
        results = {tool: {"status": "tooling failure", "exit": None, "errors": 0, "seconds": 0} for tool in TOOLS}
        print(f"gpu_sanitizers: {version}: every tool is a tooling failure")
    else:
        print(f"gpu_sanitizers: {version}; filter to our kernels: "
              f"{'yes (kns=ebm_ext)' if filtered else 'NO: this compute-sanitizer has no --kernel-name'}",
              flush=True)
        results, log = run_tools(args, program if args.dry_run else None, sanitizer + options, program)
    pathlib.Path(args.log).write_text(f"{version}\n" + "\n".join(log))
    pathlib.Path(args.json).write_text(json.dumps({"version": version, "filtered": filtered, "tools": results},
                                                  indent=1))
    statuses = {r["status"] for r in results.values()}
    raise SystemExit(0 if statuses == {"clean"} else 2 if statuses <= {"clean", "tooling failure"} else 1)


if __name__ == "__main__":
    main()
