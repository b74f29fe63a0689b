"""nearest_centroid / kmeans_energy against the plain-PyTorch reference (the full distance
matrix), exact ties on integer data, gradients, errors; the k-means trainers in python/."""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebm_ext
from ebm_ext import _reference as ref
from conftest import requires_cuda, tolerance
from cuda_backends import skip_compile_if_emulated

import kmeans
from ebm_ext import cluster


def _points(N, k, d, seed=0, device="cpu", dtype=torch.float64, integers=False):
    g = torch.Generator().manual_seed(seed)
    if integers:  # small integers: every distance is exact, so ties are real ties
        y = torch.randint(-3, 4, (N, d), generator=g)
        W = torch.randint(-3, 4, (k, d), generator=g)
    else:
        y, W = torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(k, d, generator=g, dtype=torch.float64)
    return y.to(device, dtype), W.to(device, dtype)


@pytest.mark.parametrize("N,k,d", [(1000, 256, 64), (37, 3, 5), (101, 70, 7), (50, 33, 130),
                                   (5, 1, 3), (1, 300, 2), (0, 4, 3)])
def test_matches_full_distance_matrix(N, k, d, device, dtype):
    y, W = _points(N, k, d, seed=N + k + d, device=device, dtype=dtype)
    dist2, index = ebm_ext.nearest_centroid(y, W)
    want, want_index = ref.nearest_centroid(y.double(), W.double())
    assert dist2.dtype == dtype and index.dtype == torch.long and dist2.shape == index.shape == (N,)
    torch.testing.assert_close(dist2.double(), want, **tolerance(dtype))
    # The chosen centroid is a nearest one up to rounding (the index itself may differ from the
    # reference's only where two centroids tie within that rounding).
    chosen = ((y.double() - W.double()[index]) ** 2).sum(-1)
    torch.testing.assert_close(chosen, want, **tolerance(dtype))
    assert (want_index == index).double().mean() >= 0.99 or N == 0


@settings(deadline=None, max_examples=60)
@given(N=st.integers(0, 40), k=st.integers(1, 80), d=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_integer_data_ties_go_to_smallest_index(N, k, d, seed):
    for dtype in (torch.float32, torch.float64):
        y, W = _points(N, k, d, seed=seed, dtype=dtype, integers=True)
        W[k // 2:] = W[:k - k // 2].clone()  # duplicated centroids: exact ties everywhere
        dist2, index = ebm_ext.nearest_centroid(y, W)
        want, want_index = ref.nearest_centroid(y, W)
        assert torch.equal(index, want_index)
        assert torch.equal(dist2, want)


def test_zero_dimensional_points_are_all_at_distance_zero():
    dist2, index = ebm_ext.nearest_centroid(torch.empty(3, 0), torch.empty(2, 0))
    assert torch.equal(dist2, torch.zeros(3)) and torch.equal(index, torch.zeros(3, dtype=torch.long))


def test_nan_point_gets_nan_distance_and_nan_centroid_is_never_picked(device):
    y = torch.tensor([[0.0, 0.0], [float("nan"), 1.0], [5.0, 5.0]], device=device)
    W = torch.tensor([[float("nan"), 0.0], [1.0, 1.0], [4.0, 4.0]], device=device)
    dist2, index = ebm_ext.nearest_centroid(y, W)
    assert index[0].item() == 1 and index[2].item() == 2
    assert torch.isnan(dist2[1]) and dist2[0].item() == 2.0 and dist2[2].item() == 2.0


def test_non_contiguous_inputs(device):
    y, W = _points(40, 9, 12, seed=3, device=device)
    got = ebm_ext.nearest_centroid(y.t().contiguous().t(), W[:, ::1].t().contiguous().t())
    want = ebm_ext.nearest_centroid(y, W)
    assert torch.equal(got[1], want[1])
    got = ebm_ext.nearest_centroid(y[::2, ::3], W[:, ::3])
    assert torch.equal(got[1], ref.nearest_centroid(y[::2, ::3], W[:, ::3])[1])


def test_energy_gradients_match_reference(device):
    y, W = _points(30, 7, 5, seed=4, device=device)
    y1, W1 = y.clone().requires_grad_(), W.clone().requires_grad_()
    y2, W2 = y.clone().requires_grad_(), W.clone().requires_grad_()
    weights = torch.rand(30, dtype=torch.float64, device=device)
    (ebm_ext.kmeans_energy(y1, W1) * weights).sum().backward()
    (ref.nearest_centroid(y2, W2)[0] * weights).sum().backward()
    torch.testing.assert_close(y1.grad, y2.grad)
    torch.testing.assert_close(W1.grad, W2.grad)


def test_gradcheck(device):
    y, W = _points(12, 4, 3, seed=5, device=device)
    torch.autograd.gradcheck(ebm_ext.kmeans_energy, (y.requires_grad_(), W.requires_grad_()))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["values", "grad"])
def test_opcheck(device, dtype, requires_grad, opcheck_util):
    y, W = _points(20, 6, 4, seed=6, device=device, dtype=dtype)
    torch.library.opcheck(torch.ops.ebm_ext.nearest_centroid,
                          (y.requires_grad_(requires_grad), W.requires_grad_(requires_grad)),
                          test_utils=opcheck_util)


def test_compile_fullgraph(device):
    y, W = _points(20, 6, 4, seed=7, device=device, dtype=torch.float32)
    skip_compile_if_emulated()
    compiled = torch.compile(lambda a, b: ebm_ext.kmeans_energy(a, b).sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(y, W), ebm_ext.kmeans_energy(y, W).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_equals_cuda(dtype, gpu):
    y, W = _points(5000, 300, 33, seed=8, dtype=dtype, integers=True)
    on_cpu = ebm_ext.nearest_centroid(y, W)
    with gpu():
        on_gpu = ebm_ext.nearest_centroid(gpu.to(y), gpu.to(W))
    assert torch.equal(on_cpu[1], on_gpu[1].cpu())
    assert torch.equal(on_cpu[0], on_gpu[0].cpu())
    y, W = _points(3000, 200, 70, seed=9, dtype=dtype)
    on_cpu = ebm_ext.nearest_centroid(y, W)
    with gpu():
        on_gpu = ebm_ext.nearest_centroid(gpu.to(y), gpu.to(W))
    assert (on_cpu[1] == on_gpu[1].cpu()).float().mean() > 0.999
    torch.testing.assert_close(on_cpu[0], on_gpu[0].cpu(), **tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype, gpu):
    y, W = _points(500, 40, 16, seed=10, integers=True)
    with gpu():
        dist2, index = ebm_ext.nearest_centroid(gpu.to(y).to(dtype), gpu.to(W).to(dtype))
    assert torch.equal(index.cpu(), ref.nearest_centroid(y, W)[1])


@pytest.mark.parametrize("y,W,message", [
    (torch.zeros(3), torch.zeros(2, 3), r"y must be a 2-D tensor \(N, d\), got shape \[3\]"),
    (torch.zeros(3, 2), torch.zeros(2), r"W must be a 2-D tensor \(k, d\) of centroids as rows, got shape \[2\]"),
    (torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, 2), "y must be a floating-point tensor, got Long"),
    (torch.zeros(3, 2), torch.zeros(2, 2, dtype=torch.float64), r"W must have the same dtype as y \(Float\), got Double"),
    (torch.zeros(3, 2), torch.zeros(2, 3), r"W must have d=2 columns like y, got shape \[2, 3\]"),
    (torch.zeros(3, 2), torch.zeros(0, 2), r"W must hold at least one centroid \(k >= 1\), got shape \[0, 2\]"),
    (torch.zeros(3, 2, dtype=torch.float16), torch.zeros(2, 2, dtype=torch.float16),
     "on CPU, y must be float32 or float64, got Half"),
])
def test_errors(y, W, message):
    with pytest.raises(RuntimeError, match="nearest_centroid: " + message):
        ebm_ext.nearest_centroid(y, W)


@requires_cuda
def test_error_on_mixed_devices():
    with pytest.raises(RuntimeError, match=r"nearest_centroid: W must be on the same device as y"):
        ebm_ext.nearest_centroid(torch.zeros(3, 2, device="cuda"), torch.zeros(2, 2))


def test_module_energy_and_assignment():
    y, W = _points(25, 4, 3, seed=11)
    model = ebm_ext.nn.KMeansEnergy(4, 3, centroids=W)
    torch.testing.assert_close(model(y), ref.nearest_centroid(y, W)[0])
    assert torch.equal(model.assign(y), ref.nearest_centroid(y, W)[1])
    with pytest.raises(ValueError, match=r"centroids must have shape \(4, 2\), got \(4, 3\)"):
        ebm_ext.nn.KMeansEnergy(4, 2, centroids=W)


# --- the trainers (ebm_ext.cluster) ------------------------------------------------------------

def test_lloyd_follows_scikit_learn_exactly_in_float64():
    from sklearn.cluster import KMeans
    g = torch.Generator().manual_seed(12)
    y = torch.randn(3000, 8, generator=g, dtype=torch.float64)
    init = y[torch.randperm(3000, generator=g)[:20]]
    ours = cluster.lloyd(y, init, max_iter=15, tol=0)
    theirs = KMeans(20, init=init.numpy(), n_init=1, max_iter=15, tol=0, algorithm="lloyd").fit(y.numpy())
    assert ours["n_iter"] == 15
    assert torch.equal(ours["index"], torch.from_numpy(theirs.labels_).long())
    assert ours["inertia"] == pytest.approx(theirs.inertia_, rel=1e-10)
    torch.testing.assert_close(ours["W"], torch.from_numpy(theirs.cluster_centers_))


def test_lloyd_reseeds_empty_clusters_and_stops_on_tol():
    y, _ = kmeans.blobs(seed=1)
    init = torch.tensor([[0.0, 0.0], [100.0, 100.0], [100.0, 100.0], [-100.0, 0.0], [1.0, 1.0]])
    fit = cluster.lloyd(y, init, tol=1e-4)
    assert fit["reseeded"] >= 3 and fit["n_iter"] < 300
    assert torch.bincount(fit["index"], minlength=5).min() >= 1


def test_kmeans_plus_plus_spreads_the_seeds():
    y, labels = kmeans.blobs(n=500, seed=2)
    seeds = cluster.kmeans_plus_plus(y, 5, torch.Generator().manual_seed(0))
    groups = labels[ref.nearest_centroid(seeds, y)[1]]
    assert len(set(groups.tolist())) == 5  # one seed in each of the well separated groups
    with pytest.raises(ValueError, match=r"k must be in \[1, N=500\], got 0"):
        cluster.kmeans_plus_plus(y, 0)


def test_minibatch_descent_lowers_the_free_energy():
    y, _ = kmeans.blobs(n=200, seed=3)
    g = torch.Generator().manual_seed(0)
    start = cluster.kmeans_plus_plus(y, 5, g) + 1.0
    fit = cluster.fit_minibatch(y, start, epochs=20, batch_size=20, lr=0.05, generator=g)
    assert fit["history"][-1] < 0.5 * ebm_ext.kmeans_energy(y, start).sum().item()
    assert fit["inertia"] == pytest.approx(cluster.lloyd(y, fit["W"])["inertia"], rel=0.05)


def test_kmeans_estimator_matches_scikit_learn():
    from sklearn.cluster import KMeans
    g = torch.Generator().manual_seed(13)
    y = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    init = y[torch.randperm(2000, generator=g)[:12]]
    ours = cluster.KMeans(12, init=init, tol=0, max_iter=20).fit(y)
    theirs = KMeans(12, init=init.numpy(), n_init=1, max_iter=20, tol=0, algorithm="lloyd").fit(y.numpy())
    assert torch.equal(ours.labels_, torch.from_numpy(theirs.labels_).long())
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    torch.testing.assert_close(ours.cluster_centers_, torch.from_numpy(theirs.cluster_centers_))
    new = torch.randn(300, 6, generator=g, dtype=torch.float64)
    assert torch.equal(ours.predict(new), torch.from_numpy(theirs.predict(new.numpy())).long())
    torch.testing.assert_close(ours.transform(new), torch.from_numpy(theirs.transform(new.numpy())))
    assert ours.score(new) == pytest.approx(theirs.score(new.numpy()), rel=1e-10)
    seeded = [cluster.KMeans(5, seed=3).fit(y).inertia_ for _ in range(2)]
    assert seeded[0] == seeded[1]
    sgd = cluster.KMeans(5, method="minibatch", epochs=5, batch_size=100, seed=0).fit(y.float())
    assert sgd.n_iter_ == 5 and sgd.labels_.shape == (2000,)


def test_kmeans_estimator_arguments():
    for kwargs, message in [({"n_clusters": 0}, "n_clusters must be an int >= 1"),
                            ({"n_clusters": 2, "method": "elkan"}, "method must be 'lloyd' or 'minibatch'"),
                            ({"n_clusters": 2, "init": "random"}, "init must be 'k-means++' or a")]:
        with pytest.raises(ValueError, match=re.escape("KMeans: " + message)):
            cluster.KMeans(**kwargs)
    with pytest.raises(RuntimeError, match="KMeans.predict: call fit first"):
        cluster.KMeans(2).predict(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"KMeans.fit: init must have shape \(n_clusters, d\) = \(2, 3\)"):
        cluster.KMeans(2, init=torch.zeros(2, 2)).fit(torch.randn(5, 3))


def test_blobs_and_digits_commands(tmp_path):
    blobs = kmeans.main(["blobs", "--out", str(tmp_path)])
    assert blobs["lloyd"]["ari"] == pytest.approx(1.0) and (tmp_path / "kmeans_blobs.png").stat().st_size > 10_000
    digits = kmeans.main(["digits", "--out", str(tmp_path), "--no-progress"])
    assert digits["ari"] > 0.5 and (tmp_path / "kmeans_digits.json").exists()


# ---- the tensor-core kernel (float32): an exact argmin under TF32 rounding ---------------------

def _tf32(x: torch.Tensor) -> torch.Tensor:
    """x (float32) rounded to TF32 as cvt.rna.tf32.f32 does: 10 mantissa bits, ties away."""
    bits = x.view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _float32_argmin(y, W, norm):
    """The SIMT kernel's argmin: norm_j - 2 y.W_j with the dot summed in float32 in order of q
    (no fused multiply-add, as g++ compiles the emulation), ties to the smallest j."""
    dot = torch.zeros(y.shape[0], W.shape[0], dtype=torch.float32)
    for q in range(y.shape[1]):
        dot = dot + y[:, q:q + 1] * W[:, q][None]
    return (norm[None] - 2 * dot).argmin(1)  # argmin: the first of equal minima


def _near_ties(N=256, pairs=24, d=24, seed=11):
    """Centroids in pairs 1e-5 apart (relative): TF32's rounding (about 1e-3) orders many pairs
    wrongly, float32 orders them right."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(pairs, d, generator=g)
    W = torch.cat([base, base + 1e-5 * torch.randn(pairs, d, generator=g)])
    y = base[torch.randint(pairs, (N,), generator=g)] * 0.5 + 0.1 * torch.randn(N, d, generator=g)
    return y, W


def test_tensor_core_argmin_is_exact_on_near_ties(gpu):
    y, W = _near_ties()
    norm = W.square().sum(1)
    want = _float32_argmin(y, W, norm)
    tf32 = (norm[None].double() - 2 * _tf32(y).double() @ _tf32(W).double().t()).argmin(1)
    assert (tf32 != want).double().mean() > 0.05, "the case must be one TF32 alone gets wrong"
    with gpu():
        dist2, index = ebm_ext.nearest_centroid(gpu.to(y), gpu.to(W))
    index = index.cpu()
    if gpu.name == "emulated":
        assert torch.equal(index, want)
    else:  # the GPU fuses multiply-adds: the float32 values may differ in their last bit
        exact = ((y.double()[:, None] - W.double()[None]) ** 2).sum(-1)
        chosen = exact.gather(1, index[:, None]).squeeze(1)
        assert (chosen - exact.min(1).values).abs().max() <= 1e-5 * exact.min(1).values.max()
    torch.testing.assert_close(dist2.cpu(), ((y - W[index]) ** 2).sum(-1), rtol=1e-5, atol=1e-6)
