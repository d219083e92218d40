// GEMM panels for the precise (int16, two-plane) activations, for prompt processing.
//
// A two-plane activation row is two ordinary int8 rows back to back (kernels/blocks.h), and
// every term of the quantized dot products is linear in the activation, so
// W x = W (d q) + W (d2 q2): the panel runs the int8 GEMM panel of the weight type once per
// plane and adds the two. Twice the int8 compute (and the weight repacking twice), but the
// register-tiled panels stay far ahead of the per-row dot kernels for long prompts.
#include <algorithm>

#include "kernels/dot.h"

namespace kiln::kernels {
namespace {

// Tokens of plane 2 per panel call: its partial products go through a stack tile (8 KiB),
// and each call repacks the weight panel, so the tile is long enough to amortize that.
constexpr size_t kPlaneTokens = 128;

template <GgmlType Type>
void gemm_precise_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                        const std::byte* act, size_t act_stride, size_t m, float* y,
                        size_t y_stride) {
  // gemm_kernel_precise hands this panel out only where the int8 one exists.
  const GemmPanelFn int8_panel = gemm_kernel(Type).fn;
  // Plane 2 starts half way through each row (both planes have the same size).
  const size_t plane_bytes = act_stride / 2;
  int8_panel(cols, w, w_row_bytes, n_rows, act, act_stride, m, y, y_stride);
  float part[kPlaneTokens * kGemmPanelRows];
  for (size_t t0 = 0; t0 < m; t0 += kPlaneTokens) {
    const size_t mt = std::min(kPlaneTokens, m - t0);
    int8_panel(cols, w, w_row_bytes, n_rows, act + t0 * act_stride + plane_bytes, act_stride, mt,
               part, kGemmPanelRows);
    for (size_t t = 0; t < mt; ++t) {
      float* out = y + (t0 + t) * y_stride;
      const float* add = part + t * kGemmPanelRows;
      for (int r = 0; r < n_rows; ++r) out[r] += add[r];
    }
  }
}

template <GgmlType Type>
GemmKernel precise(const GemmKernel& int8_kernel) {
  const ActFormat act = int8_kernel.act == ActFormat::Q8_K ? ActFormat::Q8_K2 : ActFormat::Q8_act2;
  return {act, gemm_precise_panel<Type>, int8_kernel.isa};
}

}  // namespace

GemmKernel gemm_kernel_precise(GgmlType type) {
  const GemmKernel int8_kernel = gemm_kernel(type);
  if (int8_kernel.fn == nullptr) return {};
  if (int8_kernel.act != ActFormat::Q8_K && int8_kernel.act != ActFormat::Q8_act) return {};
  switch (type) {
    case GgmlType::Q4_0:
      return precise<GgmlType::Q4_0>(int8_kernel);
    case GgmlType::Q4_1:
      return precise<GgmlType::Q4_1>(int8_kernel);
    case GgmlType::Q5_0:
      return precise<GgmlType::Q5_0>(int8_kernel);
    case GgmlType::Q5_1:
      return precise<GgmlType::Q5_1>(int8_kernel);
    case GgmlType::Q8_0:
      return precise<GgmlType::Q8_0>(int8_kernel);
    case GgmlType::Q4_K:
      return precise<GgmlType::Q4_K>(int8_kernel);
    case GgmlType::Q5_K:
      return precise<GgmlType::Q5_K>(int8_kernel);
    case GgmlType::Q6_K:
      return precise<GgmlType::Q6_K>(int8_kernel);
    default:
      return {};
  }
}

}  // namespace kiln::kernels
