"""sparse_code / sparse_coding_energy against scikit-learn's exact LARS solution, a long plain
PyTorch FISTA run and the optimality conditions; gradients by the envelope theorem; errors;
and the role of the L1 regulariser, shown on learned dictionaries."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_ext
from ebm_ext import _reference as ref
from conftest import requires_cuda, tolerance
from cuda_backends import emulated_batch, emulating, skip_compile_if_emulated

import images
import sparse_coding
from ebm_ext.sparse import DictionaryLearning  # noqa: E402

EXACT = dict(max_iter=20000, tol=1e-12)


def _problem(B, n, m, seed=0, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, n, generator=g, dtype=torch.float64)
    D = torch.randn(n, m, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=0, keepdim=True)
    return y.to(device, dtype), D.to(device, dtype)


def _lars(y, D, lam, positive=False):
    from sklearn.decomposition import sparse_encode
    # scikit-learn minimises 1/2 ||y - D z||^2 + alpha ||z||_1: our energy / 2, alpha = lam / 2
    z = sparse_encode(y.double().cpu().numpy(), D.double().cpu().numpy().T, algorithm="lasso_lars",
                      alpha=lam / 2, positive=positive, max_iter=10000)
    return torch.from_numpy(z)


@pytest.mark.parametrize("method", ["fista", "ista"])
@pytest.mark.parametrize("nonneg", [False, True])
def test_matches_scikit_learn_lars(method, nonneg, device):
    y, D = _problem(12, 10, 25, seed=1, device=device)
    y = y[:emulated_batch(12)]
    z = ebm_ext.sparse_code(y, D, 0.3, method=method, nonneg=nonneg, **EXACT)
    want = _lars(y, D, 0.3, positive=nonneg)
    torch.testing.assert_close(z.cpu(), want, atol=1e-6, rtol=0)
    if nonneg:
        assert (z >= 0).all()


@pytest.mark.parametrize("lam", [0.05, 0.5, 3.0])
def test_optimality_conditions(lam, device, dtype):
    y, D = _problem(20, 16, 40, seed=2, device=device, dtype=dtype)
    y = y[:emulated_batch(20)]
    # float32 stalls at its gap floor (~1e-5 relative) within 3000 iterations: no use going on.
    z = ebm_ext.sparse_code(y, D, lam, max_iter=3000 if dtype == torch.float32 else 20000,
                            tol=1e-7 if dtype == torch.float32 else 1e-12)
    c = (y - z @ D.t()) @ D  # D^T r; optimality: c_j = (lam/2) sign(z_j) on the support, |c_j| <= lam/2 off it
    atol = 2e-3 if dtype == torch.float32 else 1e-6
    support = z != 0
    torch.testing.assert_close(c[support], (lam / 2) * z[support].sign(), atol=atol, rtol=0)
    assert (c[~support].abs() <= lam / 2 + atol).all()


def test_matches_long_plain_pytorch_run(device, dtype):
    y, D = _problem(8, 12, 30, seed=3, device=device, dtype=dtype)
    y = y[:emulated_batch(8)]
    z = ebm_ext.sparse_code(y, D, 0.2, **EXACT)
    want = ref.sparse_code(y.double(), D.double(), 0.2, iterations=5000)
    got_energy = ref.sparse_coding_energy(y.double(), D.double(), 0.2, z.double())
    torch.testing.assert_close(got_energy, ref.sparse_coding_energy(y.double(), D.double(), 0.2, want),
                               **tolerance(dtype))


@settings(deadline=None, max_examples=40)
@given(B=st.integers(0, 6), n=st.integers(1, 9), m=st.integers(1, 40), lam=st.floats(0.01, 3.0),
       seed=st.integers(0, 2**16), method=st.sampled_from(["fista", "ista"]), nonneg=st.booleans())
def test_any_shape_reaches_the_lars_optimum(B, n, m, lam, seed, method, nonneg):
    y, D = _problem(B, n, m, seed=seed)
    z, gap, iterations = ebm_ext.sparse_code(y, D, lam, method=method, nonneg=nonneg, max_iter=50000,
                                             tol=1e-10, return_info=True)
    assert z.shape == (B, m) and gap.shape == iterations.shape == (B,)
    if B == 0:
        return
    want = _lars(y, D, lam, positive=nonneg)
    energy = ref.sparse_coding_energy(y, D, lam, z)
    best = ref.sparse_coding_energy(y, D, lam, want)
    # A sample stops on its gap or on max_iter (ISTA on nearly collinear atoms can be that slow),
    # and either way the returned relative gap bounds how far its energy is from the optimum.
    assert ((gap <= 1e-10) | (iterations == 50000)).all() and (iterations <= 50000).all()
    assert ((energy - best) / best.clamp_min(1e-12) <= gap + 1e-9).all()


def test_each_sample_stops_on_its_own_gap():
    y, D = _problem(64, 16, 48, seed=4)
    z, gap, iterations = ebm_ext.sparse_code(y, D, 0.1, tol=1e-6, check_every=5, max_iter=20000,
                                             return_info=True)
    assert (gap <= 1e-6).all()
    assert len(set(iterations.tolist())) > 3, "samples should stop at different iterations"
    assert (iterations % 5 == 0).all()
    # The returned gap bounds the objective's distance to the optimum.
    best = ref.sparse_coding_energy(y, D, 0.1, _lars(y, D, 0.1))
    assert ((ref.sparse_coding_energy(y, D, 0.1, z) - best) / best <= gap + 1e-12).all()


def test_warm_start_at_the_optimum_takes_no_iteration():
    y, D = _problem(10, 12, 30, seed=5)
    z = ebm_ext.sparse_code(y, D, 0.3, **EXACT)
    again, gap, iterations = ebm_ext.sparse_code(y, D, 0.3, tol=1e-8, z0=z, check_every=3, return_info=True)
    assert (iterations == 0).all() and (gap <= 1e-8).all()
    assert torch.equal(again, z)
    # Near the optimum, fewer iterations than from zero.
    _, _, cold = ebm_ext.sparse_code(y, D, 0.3, tol=1e-10, return_info=True)
    _, _, warm = ebm_ext.sparse_code(y, D, 0.3, tol=1e-10, z0=z * 0.9, return_info=True)
    assert warm.sum() < cold.sum()


def test_max_iter_bounds_the_work_and_ista_is_slower_than_fista():
    y, D = _problem(30, 16, 64, seed=6)
    _, _, fista = ebm_ext.sparse_code(y, D, 0.1, tol=1e-8, return_info=True)
    _, _, ista = ebm_ext.sparse_code(y, D, 0.1, tol=1e-8, method="ista", return_info=True, max_iter=100000)
    assert fista.sum() < ista.sum()
    _, gap, capped = ebm_ext.sparse_code(y, D, 0.1, tol=0, max_iter=7, return_info=True)
    assert (capped == 7).all() and (gap > 0).all()


def test_lipschitz_constant_is_twice_the_top_eigenvalue(device, dtype):
    for shape in [(16, 40), (40, 16), (1, 1)]:
        _, D = _problem(1, *shape, seed=7, device=device, dtype=dtype)
        want = 2 * torch.linalg.eigvalsh((D.t() @ D).double())[-1]
        got = ebm_ext.sparse_coding_lipschitz(D)
        assert got.dim() == 0
        torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=1e-5, atol=0)


def test_given_lipschitz_is_used():
    y, D = _problem(5, 8, 20, seed=8)
    L = ebm_ext.sparse_coding_lipschitz(D)
    torch.testing.assert_close(ebm_ext.sparse_code(y, D, 0.2, lipschitz=L, **EXACT),
                               ebm_ext.sparse_code(y, D, 0.2, **EXACT))
    # Twice the constant: half the step, the same optimum.
    torch.testing.assert_close(ebm_ext.sparse_code(y, D, 0.2, lipschitz=2 * L, **EXACT),
                               ebm_ext.sparse_code(y, D, 0.2, **EXACT), atol=1e-7, rtol=0)


def test_degenerate_inputs():
    y, D = _problem(3, 4, 5, seed=9)
    assert torch.equal(ebm_ext.sparse_code(y, torch.zeros_like(D), 0.1), torch.zeros(3, 5, dtype=torch.float64))
    assert torch.equal(ebm_ext.sparse_code(torch.zeros_like(y), D, 0.1), torch.zeros(3, 5, dtype=torch.float64))
    assert ebm_ext.sparse_code(y[:0], D, 0.1).shape == (0, 5)
    big = ebm_ext.sparse_code(y, D, 1e6)  # lam above ||2 D^T y||_inf: z = 0
    assert torch.equal(big, torch.zeros_like(big))


def test_free_energy_value_and_envelope_gradient(device):
    # sparse_coding_energy is a composite: under the emulation every one of gradcheck's
    # numerical evaluations runs the emulated sparse_code (2 s at the CPU's size), so it gets a
    # smaller problem there.
    shape = (2, 3, 5) if emulating() else (6, 8, 20)
    y, D = _problem(*shape, seed=10, device=device)
    energy, z = ebm_ext.sparse_coding_energy(y, D, 0.3, return_codes=True, **EXACT)
    torch.testing.assert_close(energy, ref.sparse_coding_energy(y, D, 0.3, z))
    torch.autograd.gradcheck(lambda a, b: ebm_ext.sparse_coding_energy(a, b, 0.3, **EXACT),
                             (y.clone().requires_grad_(), D.clone().requires_grad_()), atol=1e-5)


def test_envelope_gradient_equals_the_formula():
    y, D = _problem(6, 8, 20, seed=11)
    y.requires_grad_()
    D.requires_grad_()
    weights = torch.rand(6, dtype=torch.float64)
    energy, z = ebm_ext.sparse_coding_energy(y, D, 0.3, return_codes=True, **EXACT)
    gy, gD = torch.autograd.grad((energy * weights).sum(), (y, D))
    r = (y - z @ D.t()).detach()
    torch.testing.assert_close(gy, 2 * weights[:, None] * r)
    torch.testing.assert_close(gD, -2 * (weights[:, None] * r).t() @ z)
    assert energy.requires_grad and not z.requires_grad  # the codes are not differentiated


@pytest.mark.parametrize("case", ["sparse_code", "sparse_code-ista-nonneg-warm",
                                  "sparse_coding_energy", "sparse_coding_lipschitz"])
def test_opcheck(device, dtype, case, opcheck_util):
    y, D = _problem(5, 6, 10, seed=12, device=device, dtype=dtype)
    ops = torch.ops.ebm_ext
    op, args = {
        "sparse_code": (ops.sparse_code, (y, D, 0.2)),
        "sparse_code-ista-nonneg-warm": (ops.sparse_code, (y, D, 0.2, 50, 1e-4, "ista", True,
                                                            torch.zeros(5, 10, dtype=dtype, device=device))),
        "sparse_coding_energy": (ops.sparse_coding_energy,
                                 (y.detach().requires_grad_(), D.detach().requires_grad_(), 0.2)),
        "sparse_coding_lipschitz": (ops.sparse_coding_lipschitz, (D,)),
    }[case]
    torch.library.opcheck(op, args, test_utils=opcheck_util)


def test_compile_fullgraph(device):
    y, D = _problem(5, 6, 10, seed=13, device=device, dtype=torch.float32)
    D.requires_grad_()
    skip_compile_if_emulated()
    f = torch.compile(lambda a, b: ebm_ext.sparse_coding_energy(a, b, 0.2).sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(y, D), ebm_ext.sparse_coding_energy(y, D, 0.2).sum())
    f(y, D).backward()
    assert D.grad is not None


# The kernel takes a block per sample for small batches and a warp per sample once they hold 8
# samples per SM (the emulation reports 2 SMs, so 16 samples reach the warp layout there; on
# an H100, 1056).
@pytest.mark.parametrize("layout", ["block", "warp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_equals_cuda(dtype, layout, gpu):
    B = {("block", "cuda"): 300, ("warp", "cuda"): 1200, ("block", "emulated"): 2,
         ("warp", "emulated"): 20}[layout, gpu.name]  # emulated: a few samples
    y, D = _problem(B, 64, 256, seed=14, dtype=dtype)
    # float32's floor: the gap, evaluated in float32 products, stops near 5e-6 relative here
    # (measured 4.6e-6 to 9.9e-6), as on the CPU.
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    on_cpu, gap_cpu, it_cpu = ebm_ext.sparse_code(y, D, 0.2, tol=tol, max_iter=5000, return_info=True)
    with gpu():
        on_gpu, gap, it_gpu = ebm_ext.sparse_code(gpu.to(y), gpu.to(D), 0.2, tol=tol, max_iter=5000,
                                                  return_info=True)
    e_cpu, e_gpu = (ref.sparse_coding_energy(y.double(), D.double(), 0.2, z.double().cpu()) for z in (on_cpu, on_gpu))
    torch.testing.assert_close(e_cpu, e_gpu, rtol=10 * tol, atol=1e-6)
    assert (gap <= tol).all()
    # The same solver: working sets on both, so the step counts are of the same order.
    assert it_gpu.double().mean() <= 3 * it_cpu.double().mean() + 10


def test_cuda_large_dictionary_converges(gpu):
    # 9000 atoms: the iterate does not fit in shared memory, and whole-problem FISTA at 1/L ends
    # 1000 iterations with gaps of 3e-3; the working sets converge as on the CPU.
    y, D = _problem(4, 32, 9000, seed=15, dtype=torch.float32)
    on_cpu = ebm_ext.sparse_code(y, D, 0.5, tol=1e-5)
    with gpu():
        on_gpu, gap, _ = ebm_ext.sparse_code(gpu.to(y), gpu.to(D), 0.5, tol=1e-5, return_info=True)
    assert (gap <= 1e-5).all()
    e_cpu, e_gpu = (ref.sparse_coding_energy(y.double(), D.double(), 0.5, z.double().cpu()) for z in (on_cpu, on_gpu))
    torch.testing.assert_close(e_cpu, e_gpu, rtol=1e-4, atol=1e-5)


def test_cuda_gram_ignores_the_tf32_switch(gpu):
    y, D = _problem(50, 32, 128, seed=16, dtype=torch.float32)
    y = y[:50 if gpu.name == "cuda" else 4]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 GEMMs on a GPU that has them
    try:
        with gpu():
            _, gap, iterations = ebm_ext.sparse_code(gpu.to(y), gpu.to(D), 0.2, tol=2e-5, max_iter=3000,
                                                     return_info=True)
    finally:
        torch.set_float32_matmul_precision(previous)
    # float32's floor here is ~4e-6 relative (measured 1e-6 to 3.7e-6); a TF32 Gram matrix would
    # put it near 1e-3.
    assert (gap <= 2e-5).all() and (iterations < 3000).all()


_y, _D = torch.zeros(3, 4), torch.zeros(4, 5)


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.zeros(4), _D, 0.1), {}, r"y must be a 2-D tensor \(B, n\), got shape \[4\]"),
    ((_y, torch.zeros(4), 0.1), {}, r"D must be a 2-D tensor \(n, m\) with atoms as columns, got shape \[4\]"),
    ((_y.long(), _D, 0.1), {}, "y must be a floating-point tensor, got Long"),
    ((_y, _D.double(), 0.1), {}, r"D must have the same dtype as y \(Float\), got Double"),
    ((_y, torch.zeros(3, 5), 0.1), {}, r"D must have n=4 rows \(the length of y's rows\), got shape \[3, 5\]"),
    ((_y, torch.zeros(4, 0), 0.1), {}, r"D must hold at least one atom \(m >= 1\), got shape \[4, 0\]"),
    ((_y, _D, -1.0), {}, "lam must be a finite number >= 0, got -1"),
    ((_y, _D, float("nan")), {}, "lam must be a finite number >= 0, got nan"),
    ((_y, _D, 0.1), {"max_iter": 0}, "max_iter must be >= 1, got 0"),
    ((_y, _D, 0.1), {"tol": -1.0}, "tol must be a finite number >= 0, got -1"),
    ((_y, _D, 0.1), {"method": "lars"}, "method must be 'fista' or 'ista', got 'lars'"),
    ((_y, _D, 0.1), {"check_every": 0}, "check_every must be >= 1, got 0"),
    ((_y, _D, 0.1), {"z0": torch.zeros(3, 4)}, r"z0 must have shape \(B, m\) = \(3, 5\), got \[3, 4\]"),
    ((_y, _D, 0.1), {"z0": torch.zeros(3, 5, dtype=torch.float64)}, r"z0 must have the same dtype as y \(Float\), got Double"),
    ((_y, _D, 0.1), {"lipschitz": torch.ones(2)}, r"lipschitz must hold one number \(from sparse_coding_lipschitz\(D\)\), got shape \[2\]"),
    ((_y, _D, 0.1), {"lipschitz": torch.tensor(float("inf"))}, "lipschitz must be a finite number > 0 \\(sparse_coding_lipschitz\\(D\\)\\), got inf"),
    ((_y, torch.full((4, 5), float("nan")), 0.1), {}, r"D must be finite \(its Lipschitz constant came out as nan\)"),
    ((_y.half(), _D.half(), 0.1), {}, "on CPU, y must be float32 or float64, got Half"),
])
def test_errors(args, kwargs, message):
    with pytest.raises(RuntimeError, match="sparse_code: " + message):
        ebm_ext.sparse_code(*args, **kwargs)


def test_energy_errors_name_the_op_that_checks():
    with pytest.raises(RuntimeError, match=r"sparse_code: D must have n=4 rows"):
        ebm_ext.sparse_coding_energy(_y, torch.zeros(3, 5), 0.1)


@requires_cuda
def test_error_on_mixed_devices():
    with pytest.raises(RuntimeError, match=r"sparse_code: D must be on the same device as y"):
        ebm_ext.sparse_code(_y.cuda(), _D, 0.1)


def test_module():
    y, D = _problem(5, 6, 10, seed=16)
    model = ebm_ext.nn.SparseCodingEnergy(6, 10, 0.2, D, tol=1e-10, max_iter=10000)
    torch.testing.assert_close(model(y), ebm_ext.sparse_coding_energy(y, D, 0.2, tol=1e-10, max_iter=10000))
    assert model.codes(y).shape == (5, 10)
    with pytest.raises(ValueError, match=r"dictionary must have shape \(6, 11\), got \(6, 10\)"):
        ebm_ext.nn.SparseCodingEnergy(6, 11, 0.2, D)
    with torch.no_grad():
        model.D.mul_(3)
    model.normalise_atoms()
    torch.testing.assert_close(model.D.norm(dim=0), torch.ones(10, dtype=torch.float64))


# --- the regulariser's role -------------------------------------------------------------------

def test_without_l1_an_overcomplete_dictionary_gives_zero_energy_to_anything():
    patches = images.image_patches(200, seed=1).double()
    noise = images.noise_like(patches, seed=1)
    _, D = _problem(1, 64, 128, seed=17)  # overcomplete: 128 atoms span R^64
    for y in (patches, noise):
        F = ebm_ext.sparse_coding_energy(y, D, 0.0, max_iter=20000, tol=0)
        assert F.max() < 1e-6 * y.pow(2).sum(1).min()


def test_with_l1_after_learning_data_has_lower_energy_than_noise():
    patches = images.image_patches(3000, seed=2)
    train, held_out = patches[:2500], patches[2500:]
    learned = DictionaryLearning(64, lam=0.2, epochs=3, batch_size=250, lr=3e-3, tol=1e-3)
    learned.fit(train, held_out=held_out)
    data = learned.free_energy(held_out)
    noise = learned.free_energy(images.noise_like(held_out, seed=3))
    assert data.mean() < 0.75 * noise.mean()
    assert (data < noise).float().mean() > 0.8
    history = learned.history_
    assert history[-1]["held_out_energy"] < history[0]["held_out_energy"] + 1e-3
    # The estimator's views agree with the energy they learned.
    assert learned.components_.shape == (64, 64) and learned.dictionary.shape == (64, 64)
    torch.testing.assert_close(learned.dictionary.norm(dim=0), torch.ones(64))
    z = learned.transform(held_out[:50])
    want = ebm_ext.sparse_code(held_out[:50], learned.dictionary, 0.2, tol=1e-3)
    torch.testing.assert_close(z, want)


def test_dictionary_learning_arguments():
    with pytest.raises(ValueError, match="DictionaryLearning: n_components must be an int >= 1"):
        DictionaryLearning(0)
    with pytest.raises(ValueError, match="DictionaryLearning: lam must be >= 0, got -1"):
        DictionaryLearning(4, lam=-1)
    with pytest.raises(ValueError, match=r"n_components \(8\) must be at most the number of rows"):
        DictionaryLearning(8).fit(torch.randn(5, 3))
    with pytest.raises(RuntimeError, match="DictionaryLearning.transform: call fit first"):
        DictionaryLearning(2).transform(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"DictionaryLearning.fit: y must be a floating-point \(N, n\)"):
        DictionaryLearning(2).fit(torch.ones(5, 3, dtype=torch.long))


def test_dictionary_learning_command(tmp_path):
    metrics = sparse_coding.main(["--out", str(tmp_path), "--patches", "600", "--held-out", "100",
                                  "--atoms", "32", "--epochs", "2", "--no-progress"])
    assert metrics["held_out_energy"] < metrics["noise_energy"]
    for name in ("atoms.png", "reconstructions.png", "metrics.json", "dictionary.pt"):
        assert (tmp_path / name).stat().st_size > 0
    saved = torch.load(tmp_path / "dictionary.pt", weights_only=True)
    assert saved["D"].shape == (64, 32)
