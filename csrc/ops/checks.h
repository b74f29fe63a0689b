// The argument checks every op family shares, one wording for each: a shape as text, a required
// tensor, the same dtype / device as a reference argument, floating point, and the CPU kernels'
// dtype rule. Each family's header (chain.h, kmeans.h, ...) builds its op's checks from these,
// and both backends call that one check before touching memory.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "backend.h"

namespace ebm_ext {

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// A required tensor argument given as None arrives as an undefined tensor: say so, before any
// shape check reports its "shape [0]".
inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a tensor, got None");
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got ", t.device());
}

inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t,
                             const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the same dtype as ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

// The same dtype and device as the reference argument.
inline void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  check_same_dtype(op, name, t, ref_name, ref);
  check_same_device(op, name, t, ref_name, ref);
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

// The CPU kernels run in float32 and float64; the CUDA kernels also take float16/bfloat16.
inline void check_cpu_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(on_cuda(t) || t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": on CPU, ", name, " must be float32 or float64, got ", t.scalar_type());
}

}  // namespace ebm_ext
