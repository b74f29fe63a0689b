// One batch of linear chains as every kernel of the chain, partition, distribution and
// relaxed-inference families reads it, on the host and on the device, and the pieces of exact
// decoding that the CPU and CUDA kernels share (the path energy, the walk-backs along the
// backpointers, the k-best lists). Written once so that both backends return the same numbers
// and the same tags by construction, not by two copies kept in step.
//
// The chain energy of tags y of sequence b, length L:
//   E(y) = start[y_0] + sum_{t<L} unary[b, t, y_t] + sum_{1<=t<L} trans[y_{t-1}, y_t] + end[y_{L-1}].
#pragma once

#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define EBM_HD __host__ __device__
#else
#define EBM_HD
#endif

namespace ebm_ext {

// unary (B, T, K) in U, the input's dtype; the parameters in P: the input's dtype on the CPU,
// the accumulation type where a CUDA kernel staged them. start, end and lengths may be null (zero
// energies; every sequence of length T).
template <typename U, typename P = U>
struct ChainView {
  const U* unary;
  const P* trans;  // (K, K), trans[i * K + j]: i -> j
  const P* start;  // (K,) or nullptr
  const P* end;    // (K,) or nullptr
  const int64_t* lengths;  // (B,) or nullptr
  int64_t T, K;

  EBM_HD int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  EBM_HD P start_at(int64_t j) const { return start ? start[j] : P(0); }
  EBM_HD P end_at(int64_t j) const { return end ? end[j] : P(0); }
  EBM_HD const U* unary_at(int64_t b, int64_t t) const { return unary + (b * T + t) * K; }

  EBM_HD P trans_at(int64_t i, int64_t j) const { return trans[i * K + j]; }
  EBM_HD U unary_value(int64_t b, int64_t t, int64_t j) const { return unary_at(b, t)[j]; }

  // E(tags[0..L)) of sequence b, summed in A (path_energy below).
  template <typename A = P>
  EBM_HD A path_energy(int64_t b, const int64_t* tags, int64_t L) const;
};

// E(tags[0..L)) of sequence b of any chain that reads like ChainView (start_at, end_at,
// unary_value, trans_at: the CUDA decoders read their parameters through strides), summed in A;
// the tags are in [0, K). -inf is not an energy: it follows NaN's rule.
template <typename A, typename Chain>
EBM_HD A path_energy(const Chain& c, int64_t b, const int64_t* tags, int64_t L) {
  if (L == 0) return A(0);
  A e = static_cast<A>(c.start_at(tags[0])) + static_cast<A>(c.end_at(tags[L - 1]));
  // The unary terms, then the transitions: this order of the sums is part of the contract
  // (the CPU kernel's numbers, and training runs, do not move when the code does).
  for (int64_t t = 0; t < L; ++t) e += static_cast<A>(c.unary_value(b, t, tags[t]));
  for (int64_t t = 1; t < L; ++t) e += static_cast<A>(c.trans_at(tags[t - 1], tags[t]));
  return e == -std::numeric_limits<A>::infinity() ? std::numeric_limits<A>::quiet_NaN() : e;
}

template <typename U, typename P>
template <typename A>
EBM_HD A ChainView<U, P>::path_energy(int64_t b, const int64_t* tags, int64_t L) const {
  return ::ebm_ext::path_energy<A>(*this, b, tags, L);
}

// The best path from its first tag: backpointers ptr[(t - 1) * stride + i] give the tag at t
// after tag i at t - 1.
template <typename Ptr>
EBM_HD void walk_back(int64_t first, const Ptr* ptr, int64_t stride, int64_t L, int64_t* tags) {
  int64_t y = first;
  tags[0] = y;
  for (int64_t t = 1; t < L; ++t) {
    y = static_cast<int64_t>(ptr[(t - 1) * stride + y]);
    tags[t] = y;
  }
}

// k-best list Viterbi codes an entry of the list of (t, i) as code = j * k + r: the next tag j
// and the rank r in j's list. ptr[((t - 1) * k + r) * stride + j] is the code of the r-th entry
// of (t, j); the path of a final code is walked from t = 0.
template <typename Ptr>
EBM_HD void kbest_walk_back(int64_t code, int64_t k, const Ptr* ptr, int64_t stride, int64_t L,
                            int64_t* tags) {
  int64_t j = code / k, r = code % k;
  tags[0] = j;
  for (int64_t t = 1; t < L; ++t) {
    const int64_t next = static_cast<int64_t>(ptr[((t - 1) * k + r) * stride + j]);
    j = next / k;
    r = next % k;
    tags[t] = j;
  }
}

// Inserts (value, code) into the ascending list top[0..k), codes alongside, after the entries
// it ties with (the earlier code wins a tie). Returns false, leaving the list as it was, when
// value is not below the last entry: callers scanning a list of increasing values stop there.
// Entry s lives at top[s * stride] (CUDA keeps one list per column of a (k, K) array).
template <typename A, typename C>
EBM_HD bool kbest_insert(A* top, C* codes, int64_t k, A value, C code, int64_t stride = 1) {
  if (!(value < top[(k - 1) * stride])) return false;
  int64_t s = k - 1;
  while (s > 0 && value < top[(s - 1) * stride]) {
    top[s * stride] = top[(s - 1) * stride];
    codes[s * stride] = codes[(s - 1) * stride];
    --s;
  }
  top[s * stride] = value;
  codes[s * stride] = code;
  return true;
}

// The final list of k-best list Viterbi: w[r * K + j] holds the r-th best energy of a path from
// tag j at t = 0 (ascending in r, unary included); with start added, the k best over (j, r)
// in (j, r) order of ties, into top (ascending; +inf and code -1 where fewer paths exist).
template <typename A, typename C, typename Chain>
EBM_HD void kbest_final_list(const Chain& c, const A* w, int64_t k, A* top, C* codes) {
  for (int64_t s = 0; s < k; ++s) {
    top[s] = std::numeric_limits<A>::infinity();
    codes[s] = C(-1);
  }
  for (int64_t j = 0; j < c.K; ++j)
    for (int64_t r = 0; r < k; ++r)
      if (!kbest_insert(top, codes, k, w[r * c.K + j] + static_cast<A>(c.start_at(j)),
                        static_cast<C>(j * k + r)))
        break;  // j's later ranks are larger still
}

}  // namespace ebm_ext
