"""K-means: assigning points to their nearest centroid, and a whole Lloyd fit, side by side with
faiss (IndexFlatL2 search with k=1, faiss.Kmeans), scikit-learn (pairwise_distances_argmin,
KMeans) and the plain-PyTorch matrix-product trick, on the same float32 data."""

import numpy as np
import pytest
import torch

import ebm_ext
from ebm_ext import _reference as ref

from ebm_ext.cluster import lloyd

ROUNDS = 3


def _data(N, d, k, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((N, d)).astype(np.float32)
    W = y[rng.choice(N, k, replace=False)].copy()
    return y, W


@pytest.fixture(scope="module")
def assignment_data():
    return _data(1_000_000, 64, 256)


@pytest.mark.parametrize("impl", ["ebm_ext", "faiss", "scikit-learn", "torch matmul"])
def test_assign(benchmark, assignment_data, impl):
    benchmark.group = "nearest centroid 1M x 64, k=256"
    y, W = assignment_data
    yt, Wt = torch.from_numpy(y), torch.from_numpy(W)
    want = ebm_ext.nearest_centroid(yt, Wt)[1]
    if impl == "ebm_ext":
        fn = lambda: ebm_ext.nearest_centroid(yt, Wt)[1]  # noqa: E731
    elif impl == "faiss":
        import faiss
        index = faiss.IndexFlatL2(W.shape[1])
        index.add(W)
        fn = lambda: torch.from_numpy(index.search(y, 1)[1][:, 0])  # noqa: E731
    elif impl == "scikit-learn":
        from sklearn.metrics import pairwise_distances_argmin
        fn = lambda: torch.from_numpy(pairwise_distances_argmin(y, W))  # noqa: E731
    else:
        fn = lambda: ref.nearest_centroid_matmul(yt, Wt)[1]  # noqa: E731
    # Float32 near-ties may go either way in any implementation: all but a few agree.
    assert (fn().long() == want).float().mean() > 0.9999
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.fixture(scope="module")
def fit_data():
    return _data(100_000, 64, 256, seed=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("impl", ["ebm_ext", "scikit-learn", "faiss"])
def test_lloyd_20_iterations(benchmark, fit_data, impl, dtype):
    benchmark.group = f"k-means fit 100k x 64, k=256, 20 Lloyd iterations, {dtype}"
    y, W = (a.astype(dtype) for a in fit_data)
    results = {}
    if impl == "ebm_ext":
        yt, Wt = torch.from_numpy(y), torch.from_numpy(W)

        def fn():
            results["inertia"] = lloyd(yt, Wt, max_iter=20, tol=0)["inertia"]
    elif impl == "scikit-learn":
        from sklearn.cluster import KMeans

        def fn():
            fit = KMeans(W.shape[0], init=W, n_init=1, max_iter=20, tol=0, algorithm="lloyd").fit(y)
            results["inertia"] = _inertia(y, fit.cluster_centers_)
    else:
        if dtype == "float64":
            pytest.skip("faiss clusters float32 only")
        import faiss

        def fn():
            # All points (no subsampling), the same initial centroids, 20 iterations.
            fit = faiss.Kmeans(W.shape[1], W.shape[0], niter=20, max_points_per_centroid=10**9)
            fit.train(y, init_centroids=W)
            results["inertia"] = _inertia(y, fit.centroids)
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info["inertia"] = results["inertia"]


def _inertia(y, W):
    """Sum of squared distances to the nearest centroid, in float64 (the comparable number)."""
    return ebm_ext.nearest_centroid(torch.from_numpy(y).double(), torch.from_numpy(np.asarray(W)).double())[0].sum().item()
