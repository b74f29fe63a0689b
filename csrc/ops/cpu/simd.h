// SIMD building blocks of the CPU kernels: 64-byte registers written with GCC vector
// extensions, compiled once per target clone (AVX-512, AVX2, baseline x86-64).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

// The min-plus steps are the hot loops: build them for AVX-512, AVX2 and baseline x86-64 and
// let the loader pick (GCC function multi-versioning), so one build is fast on any x86 CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EBM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EBM_CLONES
#endif

namespace ebm_ext {
namespace simd {

// Registers of 64 bytes (16 floats or 8 doubles) written with GCC vector extensions: each
// target clone compiles them to its own instructions (one zmm, two ymm or four xmm).
template <typename S>
struct Lanes;
template <>
struct Lanes<float> {
  static constexpr int N = 16;
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));   // the comparison mask type
  typedef int32_t I32 __attribute__((vector_size(64)));
};
template <>
struct Lanes<double> {
  static constexpr int N = 8;
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
  typedef int32_t I32 __attribute__((vector_size(32)));
};

template <typename V, typename S>
inline V load(const S* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename S>
inline void store(S* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
template <typename S>
inline void store_index(int32_t* p, const typename Lanes<S>::I& v) {
  store(p, __builtin_convertvector(v, typename Lanes<S>::I32));
}

// transT is padded to Kp = a multiple of the lane count, with +inf in the padding, so every
// vector is full; results are written for all Kp lanes and only the first K are read.
inline int64_t padded(int64_t K, int64_t lanes) { return (K + lanes - 1) / lanes * lanes; }

// NaN or -inf: the energies the non-finite rules turn into NaN results.
template <typename S>
bool any_invalid(const S* x, int64_t n) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= !(x[i] > -std::numeric_limits<S>::infinity());
  return bad;
}

// exp(x) for x <= 0, the only arguments the kernels form (energies minus their minimum):
// Cephes' polynomial on 16 lanes, results below 1.6e-38 (and exp(-inf)) flushed to 0, NaN kept.
__attribute__((always_inline)) inline Lanes<float>::V exp_nonpositive(Lanes<float>::V x) {
  using V = Lanes<float>::V;
  using I = Lanes<float>::I;
  const V lo = V{} - 87.0f;
  const I nan = x != x;
  const I tiny = x < lo;
  x = tiny ? lo : x;
  const V fx = x * 1.44269504088896341f + 0.5f;
  I n = __builtin_convertvector(fx, I);  // truncates towards zero: make it a floor
  V nf = __builtin_convertvector(n, V);
  n = nf > fx ? n - 1 : n;
  nf = __builtin_convertvector(n, V);
  const V r = x - nf * 0.693359375f - nf * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I bits = (n + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof(V));
  V out = p * scale;
  out = tiny ? V{} : out;
  return nan ? x : out;
}

// exp(x) in float64 for x below 709 (the kernels form x <= 0, or a rounding above): Cephes'
// rational approximation (exp.c: n = round(x / ln 2), exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))
// on |r| <= ln 2 / 2, times 2^n) on 8 lanes; below -708 (and exp(-inf)) flushed to 0, NaN kept.
__attribute__((always_inline)) inline Lanes<double>::V exp_nonpositive(Lanes<double>::V x) {
  using V = Lanes<double>::V;
  using I = Lanes<double>::I;
  const V lo = V{} - 708.0;
  const I nan = x != x;
  const I tiny = x < lo;
  x = tiny ? lo : x;
  const V fx = x * 1.4426950408889634073599 + 0.5;
  I n = __builtin_convertvector(fx, I);  // truncates towards zero: make it a floor
  V nf = __builtin_convertvector(n, V);
  n = nf > fx ? n - 1 : n;
  nf = __builtin_convertvector(n, V);
  const V r = x - nf * 6.93145751953125e-1 - nf * 1.42860682030941723212e-6;
  const V rr = r * r;
  const V p = r * (((V{} + 1.26177193074810590878e-4) * rr + 3.02994407707441961300e-2) * rr +
                   9.99999999999999999910e-1);
  const V q = (((V{} + 3.00198505138664455042e-6) * rr + 2.52448340349684104192e-3) * rr +
               2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const V e = 1.0 + 2.0 * (p / (q - p));
  const I bits = (n + 1023) << 52;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof(V));
  V out = e * scale;
  out = tiny ? V{} : out;
  return nan ? x : out;
}

// out[i] = exp(shift - x[i]) for i < n (x[i] >= shift), n a multiple of the lane count.
EBM_CLONES inline void exp_shifted(const float* x, float shift, float* out, int64_t n) {
  using V = Lanes<float>::V;
  for (int64_t i = 0; i < n; i += Lanes<float>::N) {
    store(out + i, exp_nonpositive(shift - load<V>(x + i)));
  }
}
inline void exp_shifted(const double* x, double shift, double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(shift - x[i]);
}

}  // namespace simd
}  // namespace ebm_ext
