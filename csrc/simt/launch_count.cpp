// ebm_ext_emu::_simt_launches(): how many kernels the emulation has launched in this process, so
// that a test can count the launches of one op call (the decoders launch exactly one).
#include <torch/library.h>

#include "simt.h"

TORCH_LIBRARY_FRAGMENT(ebm_ext_emu, m) {
  m.def("_simt_launches() -> int",
        [] { return static_cast<int64_t>(::ebm_ext::simt::launches()); });
}
