// The one place that chooses between the SIMD and portable dot kernels: the SIMD table is
// used when it has a kernel for the type and the running CPU supports its instructions
// (checked once); everything else falls back to the portable kernels.
#include "kernels/dot.h"

namespace kiln::kernels {

DotKernel dot_kernel(GgmlType type) {
  const DotKernel simd = dot_kernel_avx2(type);
  if (simd.fn != nullptr) return simd;
  return dot_kernel_portable(type);
}

}  // namespace kiln::kernels
