// The one place that chooses between the SIMD and portable kernels: a SIMD table is used
// when it has a kernel for the type, the running CPU supports its instructions (checked
// once, in the per-ISA file), and the ISA limit (KILN_ISA, or set_isa_limit in tests)
// allows it; everything else falls back to the portable kernels.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/dot.h"

namespace kiln::kernels {
namespace {

Isa isa_from_environment() {
  const char* env = std::getenv("KILN_ISA");
  if (env == nullptr) return Isa::Avx512;
  if (std::strcmp(env, "portable") == 0) return Isa::Portable;
  if (std::strcmp(env, "avx2") == 0) return Isa::Avx2;
  return Isa::Avx512;
}

std::atomic<Isa>& isa_limit_state() {
  static std::atomic<Isa> limit{isa_from_environment()};
  return limit;
}

}  // namespace

Isa isa_limit() { return isa_limit_state().load(std::memory_order_relaxed); }
void set_isa_limit(Isa isa) { isa_limit_state().store(isa, std::memory_order_relaxed); }

DotKernel dot_kernel(GgmlType type) {
  if (isa_limit() >= Isa::Avx512) {
    const DotKernel simd = dot_kernel_avx512(type);
    if (simd.fn != nullptr) return simd;
  }
  if (isa_limit() >= Isa::Avx2) {
    const DotKernel simd = dot_kernel_avx2(type);
    if (simd.fn != nullptr) return simd;
  }
  return dot_kernel_portable(type);
}

DotKernel dot_kernel(GgmlType type, ActPrecision precision) {
  if (precision == ActPrecision::int8) return dot_kernel(type);
  if (isa_limit() >= Isa::Avx2) {
    const DotKernel simd = dot_kernel_precise_avx2(type);
    if (simd.fn != nullptr) return simd;
  }
  return dot_kernel_precise_portable(type);
}

void quantize_act_row(ActFormat format, std::span<const float> x, std::span<std::byte> out) {
  if (isa_limit() >= Isa::Avx2 && quantize_act_row_avx2(format, x, out)) return;
  if (isa_limit() >= Isa::Avx2 && quantize_act_row_precise_avx2(format, x, out)) return;
  quantize_act_row_portable(format, x, out);
}

GemmKernel gemm_kernel(GgmlType type) {
  if (isa_limit() >= Isa::Avx512) {
    const GemmKernel simd = gemm_kernel_avx512(type);
    if (simd.fn != nullptr) return simd;
  }
  if (isa_limit() >= Isa::Avx2) return gemm_kernel_avx2(type);
  return {};
}

GemmKernel gemm_kernel(GgmlType type, ActPrecision precision) {
  return precision == ActPrecision::int8 ? gemm_kernel(type) : gemm_kernel_precise(type);
}

}  // namespace kiln::kernels
