"""K-means as an energy-based model, with scikit-learn's estimator API.

The free energy of a point y under centroids W (k, d) is F(y) = min_j ||y - W_j||^2
(ebm_ext.nearest_centroid, ebm_ext.nn.KMeansEnergy); fitting lowers sum_i F(y_i):

  lloyd      exact block-coordinate descent: assign (the argmin over z), then move each centroid
             to the mean of its points (the argmin over W); empty clusters are re-seeded with the
             points farthest from their centroids; stops when the centroids move less than tol
             (relative to the data's variance, as scikit-learn);
  minibatch  stochastic gradient descent on the mean free energy of minibatches (the gradient
             reaches each point's nearest centroid only: dF/dW_j = -2 (y - W_j)).

Seeding is greedy k-means++ (Arthur and Vassilvitskii 2007, with scikit-learn's 2 + log k
candidates per step)::

    km = KMeans(10, seed=0).fit(y)       # y (N, d)
    km.cluster_centers_, km.labels_, km.inertia_, km.n_iter_
    km.predict(y_new), km.transform(y_new), km.score(y_new)
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._estimators import progress, rows
from .nn import KMeansEnergy
from .ops import nearest_centroid

__all__ = ["KMeans", "fit_minibatch", "kmeans_plus_plus", "lloyd"]


def kmeans_plus_plus(y: Tensor, k: int, generator: Optional[torch.Generator] = None,
                     local_trials: Optional[int] = None) -> Tensor:
    """Greedy k-means++ seeding, as scikit-learn's.

    Each centroid is chosen among 2 + log k candidates drawn in proportion to their free
    energy, keeping the one that lowers the total most.

    Args:
        y (Tensor[N, d], float): the points.
        k (int): the number of centroids, <= N.
        generator (torch.Generator, optional): the source of randomness.
        local_trials (int, optional): candidates per centroid; None: 2 + log k.

    Returns:
        Tensor[k, d]: rows of y.
    """
    N = y.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"kmeans_plus_plus: k must be in [1, N={N}], got {k}")
    trials = local_trials or 2 + int(math.log(k))
    first = torch.randint(N, (1,), generator=generator, device="cpu").item()
    centers = [y[first]]
    closest = ((y - y[first]) ** 2).sum(1)
    for _ in range(1, k):
        weights = closest.double().clamp_min(0)
        if weights.sum() <= 0:  # every point sits on a centroid: any point will do
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights.cpu(), trials, replacement=True, generator=generator)
        candidates = y[picks.to(y.device)]
        dist = torch.minimum(closest.unsqueeze(0), torch.cdist(candidates, y) ** 2)
        best = dist.sum(1).argmin()
        centers.append(candidates[best])
        closest = dist[best]
    return torch.stack(centers)


def lloyd(y: Tensor, W: Tensor, max_iter: int = 300, tol: float = 1e-4,
          show_progress: bool = False) -> dict:
    """Lloyd's algorithm from centroids W.

    Empty clusters are re-seeded with the points farthest from their centroid; it stops when
    the centroids move less than ``tol`` times the data's mean variance.

    Args:
        y (Tensor[N, d], float): the points.
        W (Tensor[k, d], float): the initial centroids.
        max_iter (int): the most iterations.
        tol (float): the stopping tolerance; 0 runs exactly max_iter iterations.
        show_progress (bool): a tqdm bar.

    Returns:
        dict: ``{'W', 'index', 'inertia', 'n_iter', 'reseeded'}``; the final assignment and
        inertia (sum of free energies) are those of the returned centroids.
    """
    if W.dim() != 2 or y.dim() != 2 or W.shape[1] != y.shape[1]:
        raise ValueError(f"lloyd: expected y (N, d) and W (k, d), got {tuple(y.shape)} and "
                         f"{tuple(W.shape)}")
    k = W.shape[0]
    W = W.clone()
    threshold = tol * y.var(0).mean().item()
    reseeded = n_iter = 0
    for n_iter in progress(range(1, max_iter + 1), show_progress, desc="lloyd"):
        dist2, index = nearest_centroid(y, W)
        counts = torch.bincount(index, minlength=k)
        sums = torch.zeros_like(W).index_add_(0, index, y)
        new = sums / counts.clamp_min(1).unsqueeze(1).to(W.dtype)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed with the points worst served by their centroid
            reseeded += empty.numel()
            new[empty] = y[dist2.topk(empty.numel()).indices]
        shift = ((new - W) ** 2).sum().item()
        W = new
        if shift <= threshold:
            break
    dist2, index = nearest_centroid(y, W)
    return {"W": W, "index": index, "inertia": dist2.double().sum().item(), "n_iter": n_iter,
            "reseeded": reseeded}


def fit_minibatch(y: Tensor, W: Tensor, epochs: int = 20, batch_size: int = 256, lr: float = 0.05,
                  generator: Optional[torch.Generator] = None, show_progress: bool = False) -> dict:
    """Stochastic gradient descent on the mean free energy of minibatches (autograd on KMeansEnergy).

    Args:
        y (Tensor[N, d], float): the points.
        W (Tensor[k, d], float): the initial centroids.
        epochs (int): passes over the data.
        batch_size (int): points per step.
        lr (float): the step size.
        generator (torch.Generator, optional): the order of the points.
        show_progress (bool): a tqdm bar.

    Returns:
        dict: ``{'W', 'index', 'inertia', 'history'}`` (inertia per epoch).
    """
    model = KMeansEnergy(*W.shape, centroids=W)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for _ in progress(range(epochs), show_progress, desc="minibatch"):
        for batch in torch.randperm(y.shape[0], generator=generator).split(batch_size):
            loss = model(y[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            history.append(model(y).double().sum().item())
    W = model.W.detach()
    dist2, index = nearest_centroid(y, W)
    return {"W": W, "index": index, "inertia": dist2.double().sum().item(), "history": history}


class KMeans:
    """K-means with scikit-learn's estimator API, on ebm_ext's fused nearest-centroid kernel.

    Args:
        n_clusters: k.
        method: 'lloyd' (exact, default) or 'minibatch' (gradient steps on the free energy).
        init: 'k-means++' or a (k, d) tensor of initial centroids.
        max_iter, tol: Lloyd's limits (tol relative to the data's variance; 0 runs max_iter).
        epochs, batch_size, lr: the minibatch trainer's.
        seed: seeds the k-means++ draws and the minibatch order (None: torch's global RNG).
        show_progress: a tqdm bar.

    Attributes:
        cluster_centers_ (Tensor[k, d]): the centroids, after ``fit``.
        labels_ (Tensor[N], int64): each training point's centroid.
        inertia_ (float): the sum of the training points' free energies.
        n_iter_ (int): Lloyd iterations, or epochs of the minibatch trainer.

    Example:
        >>> from ebm_ext.cluster import KMeans
        >>> y = torch.tensor([[0., 0.], [0., 1.], [10., 10.], [10., 11.]])
        >>> km = KMeans(2, seed=0).fit(y)
        >>> km.inertia_, sorted(km.cluster_centers_.tolist())
        (1.0, [[0.0, 0.5], [10.0, 10.5]])
    """

    def __init__(self, n_clusters: int = 8, *, method: str = "lloyd", init="k-means++",
                 max_iter: int = 300, tol: float = 1e-4, epochs: int = 20, batch_size: int = 256,
                 lr: float = 0.05, seed: Optional[int] = None, show_progress: bool = False):
        if not isinstance(n_clusters, int) or n_clusters < 1:
            raise ValueError(f"KMeans: n_clusters must be an int >= 1, got {n_clusters!r}")
        if method not in ("lloyd", "minibatch"):
            raise ValueError(f"KMeans: method must be 'lloyd' or 'minibatch', got {method!r}")
        if not (isinstance(init, Tensor) or init == "k-means++"):
            raise ValueError(f"KMeans: init must be 'k-means++' or a (k, d) tensor, got {init!r}")
        self.n_clusters, self.method, self.init = n_clusters, method, init
        self.max_iter, self.tol = max_iter, tol
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.seed, self.show_progress = seed, show_progress

    def fit(self, y) -> "KMeans":
        """Fits the centroids to the rows of y (Lloyd or minibatch descent).

        Args:
            y (Tensor or array, [N, d]): the data; N >= n_clusters.

        Returns:
            KMeans: self, with ``cluster_centers_``, ``labels_``, ``inertia_``, ``n_iter_``.

        Raises:
            ValueError: data of the wrong shape, too few rows, or an init of the wrong shape.
        """
        y = rows(y, "KMeans.fit", "(N, d)")
        g = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        if isinstance(self.init, Tensor):
            W = self.init.to(y)
            if tuple(W.shape) != (self.n_clusters, y.shape[1]):
                raise ValueError(f"KMeans.fit: init must have shape (n_clusters, d) = "
                                 f"({self.n_clusters}, {y.shape[1]}), got {list(W.shape)}")
        else:
            W = kmeans_plus_plus(y, self.n_clusters, g)
        if self.method == "lloyd":
            fit = lloyd(y, W, self.max_iter, self.tol, self.show_progress)
            self.n_iter_ = fit["n_iter"]
        else:
            fit = fit_minibatch(y, W, self.epochs, self.batch_size, self.lr, g, self.show_progress)
            self.n_iter_ = self.epochs
        self.cluster_centers_, self.labels_, self.inertia_ = fit["W"], fit["index"], fit["inertia"]
        return self

    def _fitted(self, op: str) -> Tensor:
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError(f"KMeans.{op}: call fit first")
        return self.cluster_centers_

    def predict(self, y) -> Tensor:
        """The nearest centroid of each row.

        Args:
            y (Tensor or array, [N, d]): the data.

        Returns:
            Tensor[N], int64: centroid indices.
        """
        W = self._fitted("predict")
        return nearest_centroid(rows(y, "KMeans.predict", "(N, d)").to(W), W)[1]

    def fit_predict(self, y) -> Tensor:
        """``fit(y)``, then the training rows' labels.

        Args:
            y (Tensor or array, [N, d]): the data.

        Returns:
            Tensor[N], int64: ``labels_``.
        """
        return self.fit(y).labels_

    def transform(self, y) -> Tensor:
        """Euclidean distances to every centroid (scikit-learn's ``transform``).

        Args:
            y (Tensor or array, [N, d]): the data.

        Returns:
            Tensor[N, k]: the distances.
        """
        W = self._fitted("transform")
        return torch.cdist(rows(y, "KMeans.transform", "(N, d)").to(W), W)

    def score(self, y) -> float:
        """Minus the summed free energy of y (scikit-learn's ``score``).

        Args:
            y (Tensor or array, [N, d]): the data.

        Returns:
            float: -sum_i min_j ||y_i - W_j||^2.
        """
        W = self._fitted("score")
        dist2 = nearest_centroid(rows(y, "KMeans.score", "(N, d)").to(W), W)[0]
        return -dist2.double().sum().item()
