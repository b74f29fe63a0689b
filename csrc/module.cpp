// The Python module ebm_ext._C: importing it registers every op (TORCH_LIBRARY blocks in the
// other translation units); build_info() says what this build contains.
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <algorithm>
#include <string>
#include <vector>

#include "ops/partition.h"

namespace {

// Names of the ebm_ext ops that have a kernel for `key` in this process.
std::vector<std::string> ops_with_kernel(c10::DispatchKey key) {
  std::vector<std::string> names;
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNamesForDispatchKey(key)) {
    if (name.name.rfind("ebm_ext::", 0) == 0) names.push_back(name.name.substr(9));
  }
  std::sort(names.begin(), names.end());
  return names;
}

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef EBM_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
  info["cpu_ops"] = ops_with_kernel(c10::DispatchKey::CPU);
  info["cuda_ops"] = ops_with_kernel(c10::DispatchKey::CUDA);
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ebm_ext kernels; the ops are under torch.ops.ebm_ext";
  m.def("build_info", &build_info, "What this build of ebm_ext._C contains.");
  m.def("_take_partition_domain_counts", &ebm_ext::take_partition_domain_counts,
        "(exp-domain, log-space) sequences run by the CPU log-partition kernels since the last "
        "call; resets both.");
}
