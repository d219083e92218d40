// Portable kernels for the precise (int16, two-plane) activation rows of kernels/blocks.h:
// every quantized matmul type against two planes of block_q8_act (32-element types) or
// block_q8_K (256-element types).
//
// One generic kernel serves every type: each weight block is dequantized once with the
// reference dequantizer (kernels/quants.cpp, the spec of the format), then dotted in float
// with every activation row of the tile, each activation rebuilt as d * q + d2 * q2. This is
// the fallback (no AVX2) and the oracle the AVX2 kernels are tested against; the float
// types keep their ordinary float kernels.
#include <cstdint>

#include "kernels/blocks.h"
#include "kernels/dot.h"
#include "kernels/quants.h"

namespace kiln::kernels {
namespace {

// A weight row of `Type` against two-plane activation rows of `ActBlock` (block_q8_act or
// block_q8_K; plane 2 starts n_blocks blocks after plane 1).
template <GgmlType Type, typename ActBlock>
void dot_precise_generic(size_t cols, const std::byte* w_row, const std::byte* act,
                         size_t act_stride, int nt, float* out) {
  constexpr int kElements = static_cast<int>(sizeof(ActBlock::qs));
  const size_t block_bytes = row_bytes(Type, kElements);
  const size_t n_blocks = cols / kElements;
  float w[kElements];
  double sums[kMaxTileTokens] = {};
  for (size_t i = 0; i < n_blocks; ++i) {
    dequantize_row(Type, {w_row + i * block_bytes, block_bytes}, w);
    for (int t = 0; t < nt; ++t) {
      const auto* row = reinterpret_cast<const ActBlock*>(act + t * act_stride);
      const ActBlock& a1 = row[i];
      const ActBlock& a2 = row[n_blocks + i];
      // The two planes are summed separately, then scaled, so the second one's small terms
      // are not lost against the first's. Double: each product is exact and the block sum
      // nearly so, which keeps this a sharp oracle for the SIMD kernels.
      double s1 = 0.0;
      double s2 = 0.0;
      for (int j = 0; j < kElements; ++j) {
        s1 += static_cast<double>(w[j]) * a1.qs[j];
        s2 += static_cast<double>(w[j]) * a2.qs[j];
      }
      sums[t] += a1.d * s1 + a2.d * s2;
    }
  }
  for (int t = 0; t < nt; ++t) out[t] = static_cast<float>(sums[t]);
}

template <GgmlType Type>
DotKernel legacy(const char* isa) {
  return {ActFormat::Q8_act2, dot_precise_generic<Type, block_q8_act>, isa};
}
template <GgmlType Type>
DotKernel k_type(const char* isa) {
  return {ActFormat::Q8_K2, dot_precise_generic<Type, block_q8_K>, isa};
}

}  // namespace

DotKernel dot_kernel_precise_portable(GgmlType type) {
  constexpr const char* isa = "portable";
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      // Float activations are exact already.
      return dot_kernel_portable(type);
    case GgmlType::Q4_0:
      return legacy<GgmlType::Q4_0>(isa);
    case GgmlType::Q4_1:
      return legacy<GgmlType::Q4_1>(isa);
    case GgmlType::Q5_0:
      return legacy<GgmlType::Q5_0>(isa);
    case GgmlType::Q5_1:
      return legacy<GgmlType::Q5_1>(isa);
    case GgmlType::Q8_0:
      return legacy<GgmlType::Q8_0>(isa);
    case GgmlType::IQ4_NL:
      return legacy<GgmlType::IQ4_NL>(isa);
    case GgmlType::Q2_K:
      return k_type<GgmlType::Q2_K>(isa);
    case GgmlType::Q3_K:
      return k_type<GgmlType::Q3_K>(isa);
    case GgmlType::Q4_K:
      return k_type<GgmlType::Q4_K>(isa);
    case GgmlType::Q5_K:
      return k_type<GgmlType::Q5_K>(isa);
    case GgmlType::Q6_K:
      return k_type<GgmlType::Q6_K>(isa);
    case GgmlType::IQ4_XS:
      return k_type<GgmlType::IQ4_XS>(isa);
    default:
      return {};
  }
}

}  // namespace kiln::kernels
