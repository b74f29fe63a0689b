"""Sparse coding as an energy-based model: E(y, z) = ||y - D z||^2 + lam ||z||_1 with a
dictionary D (n, m) of atoms as columns, codes z (B, m), and the free energy F(y) = min_z E(y, z).

Note the scaling: scikit-learn and SPAMS minimise 1/2 ||y - D z||^2 + alpha ||z||_1, which is
this energy divided by 2 with alpha = lam / 2.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._autograd import register_not_differentiable
from torch import Tensor

from ._checks import check_int64, check_tensors

_ops = torch.ops.ebm_ext


def sparse_coding_lipschitz(D: Tensor) -> Tensor:
    """L = 2 * the largest eigenvalue of D^T D (0-dim tensor on D's device): the Lipschitz
    constant of the gradient of ||y - D z||^2. Found by power iteration on the smaller of
    D^T D and D D^T; pass it to ``sparse_code`` as ``lipschitz`` to reuse it across calls."""
    check_tensors("sparse_coding_lipschitz", ("D", D, True))
    return _ops.sparse_coding_lipschitz(D)


def sparse_code(y: Tensor, D: Tensor, lam: float, max_iter: int = 1000, tol: float = 1e-4,
                method: str = "fista", nonneg: bool = False, z0: Optional[Tensor] = None,
                lipschitz: Optional[Tensor] = None, check_every: int = 10,
                return_info: bool = False):
    """argmin_z ||y - D z||^2 + lam ||z||_1 for each row of ``y`` (B, n): codes (B, m).

    Batched ISTA or FISTA (``method``) with the step 1/L, L = 2 * the largest eigenvalue of
    D^T D (``lipschitz``, computed when not given); FISTA restarts its momentum per sample
    whenever a step goes against it. Each sample stops when its relative duality gap
    (gap / objective, with the dual point scaled from the residual) is at most ``tol``,
    checked every ``check_every`` iterations, or after ``max_iter`` iterations; converged
    samples cost nothing more. ``nonneg`` constrains z >= 0. ``z0`` warm-starts.
    With lam = 0 the only dual points lie in the null space of D^T, so the gap stays equal
    to the objective and samples run ``max_iter`` iterations unless they fit y exactly.

    The codes are not differentiable (use ``sparse_coding_energy`` for gradients).
    With ``return_info``, returns ``(z, rel_gap (B,), iterations (B,) int64)``.
    """
    check_tensors("sparse_code", ("y", y, True), ("D", D, True), ("z0", z0, False), ("lipschitz", lipschitz, False))
    check_int64("sparse_code", "max_iter", max_iter)
    check_int64("sparse_code", "check_every", check_every)
    z, gap, iterations = _ops.sparse_code(y, D, lam, max_iter, tol, method, nonneg, z0,
                                          lipschitz, check_every)
    return (z, gap, iterations) if return_info else z


def sparse_coding_energy(y: Tensor, D: Tensor, lam: float, max_iter: int = 1000,
                         tol: float = 1e-4, method: str = "fista", nonneg: bool = False,
                         z0: Optional[Tensor] = None, lipschitz: Optional[Tensor] = None,
                         check_every: int = 10, return_codes: bool = False):
    """The free energy F(y) = min_z ||y - D z||^2 + lam ||z||_1, shape (B,), at the codes
    ``sparse_code`` finds (same arguments). Differentiable in y and D by the envelope theorem,
    without unrolling the solver: dF/dy = 2 (y - D z*), dF/dD = -2 (y - D z*) z*^T. The
    gradient is exact at the optimum; its error follows the codes' (``tol``).
    With ``return_codes``, returns ``(F, z*)``."""
    check_tensors("sparse_coding_energy", ("y", y, True), ("D", D, True), ("z0", z0, False), ("lipschitz", lipschitz, False))
    check_int64("sparse_coding_energy", "max_iter", max_iter)
    check_int64("sparse_coding_energy", "check_every", check_every)
    energy, z = _ops.sparse_coding_energy(y, D, lam, max_iter, tol, method, nonneg, z0,
                                          lipschitz, check_every)
    return (energy, z) if return_codes else energy


def _check_fake(op, y, D, z0):
    torch._check(y.dim() == 2, lambda: f"{op}: y must be a 2-D tensor (B, n), got {y.dim()}-D")
    torch._check(D.dim() == 2, lambda: f"{op}: D must be a 2-D tensor (n, m), got {D.dim()}-D")
    torch._check(D.dtype == y.dtype, lambda: f"{op}: D must have the dtype of y ({y.dtype}), got {D.dtype}")
    torch._check(D.shape[0] == y.shape[1], lambda: f"{op}: D must have n={y.shape[1]} rows")
    if z0 is not None:
        torch._check(tuple(z0.shape) == (y.shape[0], D.shape[1]), lambda: f"{op}: z0 must have shape (B, m)")


@torch.library.register_fake("ebm_ext::sparse_code")
def _sparse_code_fake(y, D, lam, max_iter=1000, tol=1e-4, method="fista", nonneg=False, z0=None,
                      lipschitz=None, check_every=10):
    _check_fake("sparse_code", y, D, z0)
    B, m = y.shape[0], D.shape[1]
    return y.new_empty(B, m), y.new_empty(B), y.new_empty(B, dtype=torch.long)


@torch.library.register_fake("ebm_ext::sparse_coding_lipschitz")
def _sparse_coding_lipschitz_fake(D):
    torch._check(D.dim() == 2, lambda: "sparse_coding_lipschitz: D must be a 2-D tensor")
    return D.new_empty((), dtype=torch.float64 if D.dtype == torch.float64 else torch.float32)


# sparse_coding_energy is a CompositeImplicitAutograd op (csrc/ops/sparse_coding.cpp): autograd
# differentiates the energy at the codes, which is the envelope theorem's gradient.

register_not_differentiable(
    "sparse_code", "differentiate the free energy sparse_coding_energy (envelope theorem), "
    "or detach y and D")
register_not_differentiable(
    "sparse_coding_lipschitz", "it is a step size; detach D (sparse_coding_lipschitz(D.detach()))")
