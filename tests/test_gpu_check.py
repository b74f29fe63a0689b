"""The GPU check's own parts, on this machine (scripts/gpu_check.sh's dry run runs them whole in
CI): the kernel driver names a fault planted in one kernel and carries on after it; the summary
gives a verdict for a run stopped in the middle of a step; the sanitizer runner tells a tooling
failure from a kernel error; the benches' decoding check accepts ties and refuses wrong paths;
the floors are bytes over bandwidth and FLOPs over rate; device cases are marked."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ebm_ext
from chain_cases import make_chain
from cuda_backends import EMULATION_MISSING

ROOT = Path(__file__).resolve().parents[1]


def load(relative):
    """A module of scripts/ or bench/, loaded from its file (neither is a package)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.mark.skipif(bool(EMULATION_MISSING), reason=str(EMULATION_MISSING))
def test_kernel_driver_names_a_planted_fault_and_carries_on(tmp_path):
    only = "B=4 T=5 K=4"  # the 24 chain cases of one shape, both dtypes, in each of the 3 forms
    out = tmp_path / "kernels.json"
    clean = run(ROOT / "scripts/gpu_kernels.py", "emulated", "--only", only, "--json", out)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(out.read_text())["passed"] == 72

    planted = run(ROOT / "scripts/gpu_kernels.py", "emulated", "--only", only, "--json", out,
                  env={"EBM_SIMT_PLANT_FAULT": "log_partition_kernel"})
    assert planted.returncode == 1, planted.stdout + planted.stderr
    result = json.loads(out.read_text())
    failed = {f["case"]: f["error"] for f in result["failed"]}
    # each process faults at its first log-partition launch, which chain_log_partition,
    # chain_marginals and the log Z backward each make first (a fault poisons the rest of its
    # process, as on a GPU): three cases a dtype, each named with the kernel (the general
    # chains' cases run edge_logz_kernel and pass)
    assert sorted(failed) == sorted(f"{op} {dt} B=4 T=5 K=4" for dt in ("f32", "f64") for op in (
        "chain_log_partition", "chain_marginals", "_chain_log_partition_backward"))
    for error in failed.values():
        assert "in kernel" in error and "log_partition_kernel" in error and "illegal memory access" in error
    assert result["passed"] == 72 - 6  # every other case ran, in the processes after each fault
    assert "viterbi f64 B=4 T=5 K=4" not in failed

    expected = run(ROOT / "scripts/gpu_kernels.py", "emulated", "--only", only, "--expect-fault",
                   "log_partition_kernel", env={"EBM_SIMT_PLANT_FAULT": "log_partition_kernel"})
    assert expected.returncode == 0, expected.stdout
    wrong = run(ROOT / "scripts/gpu_kernels.py", "emulated", "--only", only, "--expect-fault",
                "viterbi_kernel", env={"EBM_SIMT_PLANT_FAULT": "log_partition_kernel"})
    assert wrong.returncode == 1 and "NOT named" in wrong.stdout


def test_summary_gives_a_verdict_for_a_run_stopped_mid_step(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "steps.tsv").write_text("probe\t0\t3\t15\nbuild\t0\t90\t135\nkernels\t124\t30\t30\n")
    (work / "current").write_text("tests\t100\t0\n")
    (out / "junit_tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="2.5">'
        '<testcase classname="tests.test_chain" name="test_a[cuda]"/>'
        '<testcase classname="tests.test_chain" name="test_b[cuda]"><failure message="boom"/></testcase>'
        '</testsuite></testsuites>')
    (out / "build_resources.log").write_text(
        "ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90'\n"
        "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 0 barriers\n")
    summary = ROOT / "scripts/gpu_check_summary.py"
    assert run(summary, work, out, "0").returncode == 0  # between steps: no exit verdict
    midway = json.loads((out / "gpu_check.json").read_text())
    assert midway["steps"][-1]["status"] == "running" and not midway["finished"]

    final = run(summary, work, out, "0", "--final")
    assert final.returncode == 1
    verdict = json.loads((out / "gpu_check.json").read_text())
    assert [(s["step"], s["status"]) for s in verdict["steps"]] == [
        ("probe", "passed"), ("build", "passed"), ("kernels", "timed out"), ("tests", "interrupted")]
    assert verdict["verdict"] == "not passed: kernels, tests"
    assert verdict["tests"]["failed"] == [{"case": "tests.test_chain::test_b[cuda]", "message": "boom"}]
    assert verdict["resources"][0]["registers"] == 40 and verdict["resources"][0]["spill_stores"] == 4
    assert verdict["spilling_kernels"] == ["kernel(float*) (sm_90): 4 B stores, 4 B loads"]


def test_sanitizer_outcomes():
    classify = load("scripts/gpu_sanitizers.py").classify
    assert classify(0, "========= ERROR SUMMARY: 0 errors\n", False) == ("clean", 0)
    assert classify(3, "Invalid __global__ read of size 4\n========= ERROR SUMMARY: 2 errors\n",
                    False) == ("kernel errors", 2)
    assert classify(1, "gpu_kernels: FAIL [3/9] viterbi f32\n", False) == ("kernel errors", 0)
    assert classify(1, "========= Error: Device not supported\nerror 999\n", False) == ("tooling failure", 0)
    assert classify(None, "", True) == ("timed out", 0)


def test_decoding_check_accepts_ties_and_refuses_wrong_paths():
    check = load("bench/device_floor.py").assert_same_decoding
    unary, trans, _, start, end = make_chain(2000, 2, 2, lengths=False)
    unary[0] = 0.0  # sequence 0: every path has energy start + trans + end; make them all equal
    trans_tie, start_tie, end_tie = torch.zeros(2, 2, dtype=torch.float64), None, None
    energy, tags = ebm_ext.viterbi(unary, trans_tie, None, start_tie, end_tie)
    assert check("same", unary, trans_tie, start_tie, end_tie, tags, energy, tags) == (1.0, 0)
    other = tags.clone()
    other[0] = 1 - other[0]  # the other tie of sequence 0: 2 of 4000 tags differ
    assert check("tie", unary, trans_tie, start_tie, end_tie, tags, energy, other) == (0.9995, 1)

    energy, tags = ebm_ext.viterbi(unary, trans, None, start, end)  # no tie now
    other = tags.clone()
    other[5, 1] = 1 - other[5, 1]
    with pytest.raises(AssertionError, match="energies differ from our minimum"):
        check("wrong path", unary, trans, start, end, tags, energy, other)
    other[:10] = 1 - other[:10]
    with pytest.raises(AssertionError, match="of tags agree with ours"):
        check("many wrong", unary, trans, start, end, tags, energy, other)


def test_floors_are_bytes_over_bandwidth_and_flops_over_rate():
    floors = load("bench/device_floor.py").floors
    rates = {"copy_bytes_per_s": 2e12, "fp32_flop_per_s": 5e13, "tf32_flop_per_s": 4e14}
    f = floors(rates, 4e9, 4e11, "fp32")
    assert (f["memory_floor_s"], f["compute_floor_s"], f["floor_s"], f["bound"]) == (2e-3, 8e-3, 8e-3, "compute")
    f = floors(rates, 4e9, 4e11, "tf32")
    assert (f["compute_floor_s"], f["floor_s"], f["bound"]) == (1e-3, 2e-3, "memory")
    assert floors(rates, 2e6)["compute_floor_s"] == 0.0


def test_device_cases_are_marked_for_the_gpu_check():
    listed = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider",
                             "-m", "device_case", "tests/test_bilstm.py"], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, EBM_TEST_DEVICES="emulated"), timeout=300)
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert ids, listed.stdout + listed.stderr
    assert all("emulated" in i or "cuda" in i for i in ids), ids
    assert any("test_cuda_matches_cpu" in i for i in ids) and any("opcheck" in i for i in ids)


# ---- the roofline (bench/roofline.py): every CUDA op has a case, and every case runs --------

def test_every_cuda_op_has_a_roofline_case():
    roofline = load("bench/roofline.py")
    cuda_ops = set(ebm_ext.build_info()["cuda_ops"]) or set(_emulated_ops())
    assert cuda_ops, "no CUDA op is known to this build or the emulation"
    timed = {c.op for c in roofline.CASES} | set(roofline.COVERED_BY)
    assert cuda_ops <= timed, f"CUDA ops without a roofline case: {sorted(cuda_ops - timed)}"


def _emulated_ops():
    from cuda_backends import emulated_ops
    return [op for op in emulated_ops() if not op.startswith("_simt")]


@pytest.mark.parametrize("case", load("bench/roofline.py").CASES, ids=lambda c: f"{c.op} {c.shape}")
def test_roofline_case_runs_and_predicts_above_its_floor(case):
    # the call the GPU check will time, on small CPU inputs: a wrong argument shows here first
    case.call(case.inputs(device="cpu", small=True))
    for device in load("bench/roofline.py").DEVICES:
        row = case.row(device)
        assert 0 < row["floor_s"] <= row["predicted_s"], row


def test_roofline_table_lists_every_case_and_the_docs_show_it_as_generated():
    roofline = load("bench/roofline.py")
    table = roofline.markdown({f"{roofline.CASES[0].op} {roofline.CASES[0].shape}": 41e-6})
    assert table.count("\n") == len(roofline.CASES) + 1
    assert table.splitlines()[2].endswith("| 41 us |")
    # the README and the benchmarks page carry the table as the model computes it today
    assert roofline.markdown(h200=False) in (ROOT / "README.md").read_text()
    assert roofline.markdown() in (ROOT / "docs" / "benchmarks.md").read_text()
