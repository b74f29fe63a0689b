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
    """L = 2 * the largest eigenvalue of D^T D, the Lipschitz constant of the gradient of ||y - D z||^2.

    Found by power iteration on the smaller of D^T D and D D^T, on D / max|D| (so it is +inf,
    never NaN, when the constant overflows D's dtype). Pass it to ``sparse_code`` as
    ``lipschitz`` to reuse it across calls.

    Args:
        D (Tensor[n, m], float): the dictionary, atoms as columns.

    Returns:
        Tensor[] (0-dimensional, on D's device): L; 0 for an all-zero D. Not differentiable.

    Raises:
        RuntimeError: a D that is not a 2-D float tensor.

    Example:
        >>> round(float(ebm_ext.sparse_coding_lipschitz(torch.eye(3) * 2)), 4)   # 2 * 2^2
        8.0
    """
    check_tensors("sparse_coding_lipschitz", ("D", D, True))
    return _ops.sparse_coding_lipschitz(D)


def sparse_code(y: Tensor, D: Tensor, lam: float, max_iter: int = 1000, tol: float = 1e-4,
                method: str = "fista", nonneg: bool = False, z0: Optional[Tensor] = None,
                lipschitz: Optional[Tensor] = None, check_every: int = 10,
                return_info: bool = False):
    """Sparse codes: argmin_z ||y - D z||^2 + lam ||z||_1 for each row of y.

    Batched ISTA or FISTA with the step 1/L (L = ``sparse_coding_lipschitz(D)`` unless given);
    FISTA restarts its momentum per sample when a step goes against it. Each sample stops on
    its own relative duality gap (gap / objective <= ``tol``, checked every ``check_every``
    iterations) or after ``max_iter``; converged samples cost nothing more. With lam = 0 the
    gap stays equal to the objective, so samples run ``max_iter`` unless they fit y exactly.

    Args:
        y (Tensor[B, n], float): the samples.
        D (Tensor[n, m], float): the dictionary, atoms as columns.
        lam (float): the L1 weight, >= 0.
        max_iter (int): the most iterations per sample.
        tol (float): the relative duality gap at which a sample stops.
        method (str): ``'fista'`` or ``'ista'``.
        nonneg (bool): constrain z >= 0.
        z0 (Tensor[B, m], float, optional): a warm start; None: zeros.
        lipschitz (Tensor[], optional): L from ``sparse_coding_lipschitz``, to reuse it.
        check_every (int): how often the gap is checked.
        return_info (bool): also return each sample's gap and iteration count.

    Returns:
        Tensor[B, m]: the codes, or ``(z, rel_gap (B,), iterations (B,) int64)`` with
        ``return_info``. Not differentiable (``sparse_coding_energy`` is).

    Raises:
        RuntimeError: bad shapes, dtypes or values (a negative lam, a lipschitz below the
            bound it must exceed), named in the message; a D whose constant overflows.

    Example:
        >>> D = torch.eye(2, dtype=torch.float64)
        >>> ebm_ext.sparse_code(torch.tensor([[3., 0.2]], dtype=torch.float64), D, lam=1.0)
        tensor([[2.5000, 0.0000]], dtype=torch.float64)
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
    """The sparse-coding free energy F(y) = min_z ||y - D z||^2 + lam ||z||_1 of every row of y.

    Evaluated at the codes ``sparse_code`` finds (same arguments), and differentiable in y and
    D by the envelope theorem, without unrolling the solver: dF/dy = 2 (y - D z*),
    dF/dD = -2 (y - D z*) z*^T. The gradient is exact at the optimum; its error follows the
    codes' (``tol``).

    Args:
        y (Tensor[B, n], float): the samples.
        D (Tensor[n, m], float): the dictionary, atoms as columns.
        lam (float): the L1 weight, >= 0.
        max_iter, tol, method, nonneg, z0, lipschitz, check_every: as in ``sparse_code``.
        return_codes (bool): also return the codes z*.

    Returns:
        Tensor[B]: F(y), or ``(F, z*)`` with ``return_codes``.

    Raises:
        RuntimeError: as ``sparse_code``.

    Example:
        >>> D = torch.eye(2, dtype=torch.float64)
        >>> ebm_ext.sparse_coding_energy(torch.tensor([[3., 0.2]], dtype=torch.float64), D, lam=1.0)
        tensor([2.7900], dtype=torch.float64)
    """
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
