// Sparse coding: input checks shared by the CPU and CUDA kernels, the Lipschitz constant of the
// smooth part, and the free energy (written with ATen on top of sparse_code).
//
//   E(y, z) = ||y - D z||^2 + lam ||z||_1,   F(y) = min_z E(y, z),   y (B, n), D (n, m), z (B, m)
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

#include <cmath>
#include <string>

namespace ebm_ext {

struct SparseCodeOptions {
  double lam;
  int64_t max_iter;
  double tol;
  bool fista;
  bool nonneg;
  int64_t check_every;
};

inline SparseCodeOptions check_sparse_code_inputs(
    const char* op, const at::Tensor& y, const at::Tensor& D, double lam, int64_t max_iter,
    double tol, c10::string_view method, bool nonneg, const c10::optional<at::Tensor>& z0,
    const c10::optional<at::Tensor>& lipschitz, int64_t check_every) {
  check_defined(op, "y", y);
  check_defined(op, "D", D);
  TORCH_CHECK(y.dim() == 2, op, ": y must be a 2-D tensor (B, n), got shape ", y.sizes());
  TORCH_CHECK(D.dim() == 2, op, ": D must be a 2-D tensor (n, m) with atoms as columns, got shape ",
              D.sizes());
  check_floating(op, "y", y);
  check_like(op, "D", D, "y", y);
  TORCH_CHECK(D.size(0) == y.size(1), op, ": D must have n=", y.size(1),
              " rows (the length of y's rows), got shape ", D.sizes());
  TORCH_CHECK(D.size(1) >= 1, op, ": D must hold at least one atom (m >= 1), got shape ", D.sizes());
  TORCH_CHECK(std::isfinite(lam) && lam >= 0, op, ": lam must be a finite number >= 0, got ", lam);
  TORCH_CHECK(max_iter >= 1, op, ": max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, op, ": tol must be a finite number >= 0, got ", tol);
  TORCH_CHECK(method == "fista" || method == "ista", op,
              ": method must be 'fista' or 'ista', got '", std::string(method), "'");
  TORCH_CHECK(check_every >= 1, op, ": check_every must be >= 1, got ", check_every);
  if (z0.has_value()) {
    TORCH_CHECK(z0->dim() == 2 && z0->size(0) == y.size(0) && z0->size(1) == D.size(1), op,
                ": z0 must have shape (B, m) = (", y.size(0), ", ", D.size(1), "), got ",
                z0->sizes());
    check_like(op, "z0", *z0, "y", y);
  }
  if (lipschitz.has_value()) {
    TORCH_CHECK(lipschitz->numel() == 1, op,
                ": lipschitz must hold one number (from sparse_coding_lipschitz(D)), got shape ",
                lipschitz->sizes());
  }
  return {lam, max_iter, tol, method == "fista", nonneg, check_every};
}

// L = 2 * the largest eigenvalue of D^T D, by power iteration on the smaller of D^T D and D D^T
// (they share their nonzero eigenvalues), on D's device, in D's dtype (float32 for lower).
// The Rayleigh quotient converges from below and quadratically in the eigenvector's error;
// iteration stops when it changes by less than 1e-7 relative (checked every 10 steps).
// The iteration runs on D / max|D| (entries at most 1), so that D^T D cannot overflow; the
// result, 2 * rayleigh * max|D|^2, is +inf when it exceeds the dtype's range (a float32 D
// with entries near 1e19 and more), never NaN. A D holding NaN or +-inf gives NaN.
inline at::Tensor sparse_coding_lipschitz_aten(const at::Tensor& D) {
  check_defined("sparse_coding_lipschitz", "D", D);
  TORCH_CHECK(D.dim() == 2 && at::isFloatingType(D.scalar_type()),
              "sparse_coding_lipschitz: D must be a 2-D floating-point tensor (n, m), got shape ",
              D.sizes(), " and dtype ", D.scalar_type());
  auto Dw = D.scalar_type() == at::kDouble ? D : D.to(at::kFloat);
  if (D.numel() == 0) return at::zeros({}, Dw.options());
  const auto scale = Dw.abs().max();
  const double s = scale.item<double>();
  const bool scaled = std::isfinite(s) && s > 0;
  if (scaled) Dw = Dw / scale;
  const auto gram = D.size(0) <= D.size(1) ? at::mm(Dw, Dw.t()) : at::mm(Dw.t(), Dw);
  // A fixed start with no special structure (not orthogonal to the top eigenvector but by
  // accident of measure zero): 1 + 0.1 * i / size.
  auto v = 1 + 0.1 * at::arange(gram.size(0), gram.options()) / double(gram.size(0));
  v = v / v.norm();
  double previous = 0;
  at::Tensor rayleigh;
  for (int step = 1; step <= 1000; ++step) {
    const auto w = at::mv(gram, v);
    rayleigh = at::dot(v, w);
    const auto norm = w.norm();
    // A zero D gives w = 0: stay at 0 (the smallest normal number of the dtype keeps 0 / 0 out).
    v = w / norm.clamp_min(D.scalar_type() == at::kDouble ? 1e-300 : 1e-37);
    if (step % 10 == 0) {
      const double now = rayleigh.item<double>();
      if (std::abs(now - previous) <= 1e-7 * std::abs(now)) break;
      previous = now;
    }
  }
  // In the dtype, one factor at a time: an overflow rounds to +inf, as IEEE arithmetic does.
  return scaled ? rayleigh * scale * scale * 2 : 2 * rayleigh;
}

// The step's L on the host (one synchronisation on CUDA): the given one, or D's.
// A given L must be finite and > 0 (0 would be a step of infinity); D's own is 0 only when D is
// all zeros, and then z = 0 is the exact answer.
inline double lipschitz_value(const at::Tensor& D, const c10::optional<at::Tensor>& lipschitz) {
  if (lipschitz.has_value()) {
    const double L = lipschitz->item<double>();
    TORCH_CHECK(std::isfinite(L) && L > 0,
                "sparse_code: lipschitz must be a finite number > 0 (sparse_coding_lipschitz(D)), got ",
                L);
    // 2 max_j ||D[:, j]||^2 (a Rayleigh quotient of D^T D) is a lower bound of the true constant:
    // a step 1/L longer than that makes the iterates blow up or oscillate without an error.
    const double lower = D.numel() ? 2 * D.to(at::kDouble).square().sum(0).max().item<double>() : 0;
    TORCH_CHECK(L >= lower * (1 - 1e-6), "sparse_code: lipschitz (", L, ") must be at least the ",
                "Lipschitz constant of the gradient, which is >= 2 max_j ||D[:, j]||^2 = ", lower,
                "; pass sparse_coding_lipschitz(D)");
    return L;
  }
  const double L = sparse_coding_lipschitz_aten(D).item<double>();
  TORCH_CHECK(!std::isnan(L), "sparse_code: D must be finite (its Lipschitz constant came out as ",
              L, ")");
  TORCH_CHECK(std::isfinite(L), "sparse_code: D is too large for its dtype (", D.scalar_type(),
              "): its Lipschitz constant 2 * max eig(D^T D) overflows to inf (max |D| = ",
              D.abs().max().item<double>(), "); scale D down");
  return L;
}

// The rules both backends apply to a finished solve: a row of y holding NaN or +-inf gets NaN
// codes and gap (the solver's arithmetic on it means nothing); codes that overflowed on finite
// data mean the step 1/lipschitz was too long, which is an error, not an answer.
inline void finish_sparse_code(const at::Tensor& y, at::Tensor& z, at::Tensor& gap, double L,
                               bool given) {
  if (z.numel() == 0) return;
  const auto bad_row = at::logical_not(at::isfinite(y).all(1));
  const auto diverged = at::logical_not(at::isfinite(z).all(1)).logical_and(bad_row.logical_not());
  TORCH_CHECK(!diverged.any().item<bool>(), "sparse_code: the iterates diverged (non-finite codes "
              "from finite y): ", given ? "the given lipschitz" : "the computed Lipschitz constant",
              " (", L, ") is below the Lipschitz constant of the gradient; pass "
              "sparse_coding_lipschitz(D)");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  z.masked_fill_(bad_row.unsqueeze(1), nan);
  gap.masked_fill_(bad_row, nan);
}

}  // namespace ebm_ext
