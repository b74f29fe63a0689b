// The Python module ebm_ext._C: importing it registers every op (TORCH_LIBRARY blocks in the
// other translation units); build_info() says what this build contains.
#include <Python.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

namespace {

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
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ebm_ext kernels; the ops are under torch.ops.ebm_ext";
  m.def("build_info", &build_info, "What this build of ebm_ext._C contains.");
}
