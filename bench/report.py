"""Turns a pytest-benchmark JSON file into a Markdown table: the median time of each
implementation and its ratio to the group's base, which is "ebm_ext viterbi" where the group
has it (k-best and loss-augmented decoding are measured against plain decoding) and "ebm_ext"
otherwise.

    python bench/report.py runs/bench.json
"""
import json
import sys
from collections import defaultdict

BASES = ("ebm_ext viterbi", "ebm_ext", "ebm_ext eager")


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        impl = bench["params"]["impl"]
        extra = bench.get("extra_info", {})
        if "inertia" in extra:  # fits are compared at their final energy
            impl += f" (inertia {extra['inertia']:.7g})"
        notes = [extra[k] for k in ("setting", "note") if k in extra]
        if notes:  # iterative solvers: at what setting, to what accuracy
            impl += f" ({', '.join(notes)})"
        groups[bench["group"]][impl] = bench["stats"]["median"]
    print("| benchmark | implementation | median | ratio to base |")
    print("| --- | --- | ---: | ---: |")
    for group, rows in groups.items():
        base_name = next((r for b in BASES for r in rows if r == b or r.startswith(b + " (")), None)
        for impl, t in sorted(rows.items(), key=lambda r: r[1]):
            ratio = f"{t / rows[base_name]:.2f}x" if base_name else "-"
            name = f"**{impl}** (base)" if impl == base_name else impl
            print(f"| {group} | {name} | {_fmt(t)} | {ratio} |")


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


if __name__ == "__main__":
    main(sys.argv[1])
