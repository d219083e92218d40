// Dot-product kernels behind matmul: one weight row against a small tile of activation rows.
//
// Weights stay in their GGUF block format; activations are quantized once per matmul into
// the format the weight type pairs with (ActFormat): Q8_K for the K types, block_q8_act for
// the 32-element legacy types, plain float for F32/F16/BF16 weights. Integer products are
// summed exactly per block; the float scales are applied per block (K types: per sub-block
// for the scales, and through the activation block sums for the min terms).
//
// Every type has a portable scalar kernel (the fallback, and the oracle the SIMD kernels are
// tested against besides the dequantize-then-dot reference); SIMD kernels live in per-ISA
// files (x86/avx2_dot.cpp) and are chosen once, by dot_kernel(), through one table.
#pragma once

#include <cstddef>
#include <span>

#include "gguf/ggml_types.h"

namespace kiln::kernels {

enum class ActFormat { F32, Q8_act, Q8_K };

// Activation rows per kernel call: a weight block is unpacked once and used this many times.
inline constexpr int kMaxTileTokens = 4;

// out[t] = dot(W row, activation row t) for t < nt (1..kMaxTileTokens).
// w_row: the row's blocks (cols elements). act: nt activation rows in the paired format,
// act_stride bytes apart.
using DotTileFn = void (*)(size_t cols, const std::byte* w_row, const std::byte* act,
                           size_t act_stride, int nt, float* out);

struct DotKernel {
  ActFormat act = ActFormat::F32;
  DotTileFn fn = nullptr;  // nullptr: no kernel for this weight type
  const char* isa = "";    // "avx2" or "portable", for benchmarks and test names
};

// The kernel matmul uses on this CPU (SIMD where built and supported, else portable).
DotKernel dot_kernel(GgmlType type);
// The portable scalar kernel (always available for the matmul types).
DotKernel dot_kernel_portable(GgmlType type);
// The AVX2 kernel, or fn == nullptr where there is none (type not covered, build without
// AVX2/FMA, or a CPU without them).
DotKernel dot_kernel_avx2(GgmlType type);

// Bytes of one activation row of `cols` elements in `format`.
size_t act_row_bytes(ActFormat format, size_t cols);
// Quantizes one activation row into `format` (out: act_row_bytes(format, x.size()) bytes).
void quantize_act_row(ActFormat format, std::span<const float> x, std::span<std::byte> out);

}  // namespace kiln::kernels
