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

// Q8_act2 / Q8_K2: the precise two-plane formats (block_q8_act2 / block_q8_K2).
enum class ActFormat { F32, Q8_act, Q8_K, Q8_act2, Q8_K2 };

// How finely the matmul quantizes its activations: int8 (one int8 per activation, the
// default and the fastest) or int16 (two int8 planes, x ~= d q + d2 q2: about 2^8 times
// less activation rounding error for about one more maddubs per weight block; issue #5).
// Float weight types read float activations either way.
enum class ActPrecision { int8, int16 };

// Activation rows per kernel call, at most: a weight block is unpacked once and used for each.
// Each kernel says how many it takes (DotKernel::tile): 4 where registers are 16 (AVX2),
// 8 where they are 32 (AVX-512).
inline constexpr int kMaxTileTokens = 8;

// out[t] = dot(W row, activation row t) for t < nt (1..the kernel's DotKernel::tile).
// w_row: the row's blocks (cols elements). act: nt activation rows in the paired format,
// act_stride bytes apart.
using DotTileFn = void (*)(size_t cols, const std::byte* w_row, const std::byte* act,
                           size_t act_stride, int nt, float* out);

struct DotKernel {
  ActFormat act = ActFormat::F32;
  DotTileFn fn = nullptr;  // nullptr: no kernel for this weight type
  const char* isa = "";    // "avx512", "avx2" or "portable", for benchmarks and test names
  int tile = 4;            // activation rows fn takes per call, at most (<= kMaxTileTokens)
};

// The kernel matmul uses on this CPU (SIMD where built and supported, else portable).
DotKernel dot_kernel(GgmlType type);
// The portable scalar kernel (always available for the matmul types).
DotKernel dot_kernel_portable(GgmlType type);
// The AVX2 kernel, or fn == nullptr where there is none (type not covered, build without
// AVX2/FMA, or a CPU without them).
DotKernel dot_kernel_avx2(GgmlType type);
// The AVX-512 VNNI kernel (x86/avx512_dot.cpp; Q4_K, Q6_K, Q5_0, Q8_0), or fn == nullptr
// (type not covered, build without the flags, or a CPU without AVX-512 F/BW/VL/VNNI).
// Ignores the ISA limit; dot_kernel() consults it first when the limit allows AVX-512.
DotKernel dot_kernel_avx512(GgmlType type);

// ---- Prompt processing (many activation rows): register-tiled GEMM panels -------------

// Weight rows per GEMM panel (one int32 lane of a 512-bit vector per row).
inline constexpr int kGemmPanelRows = 16;

// y[t * y_stride + r] = dot(W row r, activation row t) for r < n_rows (1..kGemmPanelRows)
// and t < m. w: the panel's first row; rows w_row_bytes apart. act: m activation rows in
// the paired format, act_stride bytes apart. Never allocates.
using GemmPanelFn = void (*)(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                             const std::byte* act, size_t act_stride, size_t m, float* y,
                             size_t y_stride);

// Pre-packed panels: a weight matrix's 16-row panels packed once (at load) into a layout the
// GEMM reads directly, as compact as the blocks they come from.
// Writes the panel of rows w .. w + n_rows (1..kGemmPanelRows rows, w_row_bytes apart) into
// `panel` (GemmKernel::packed_bytes(cols) bytes, 64-byte aligned; rows past n_rows zeroed).
using GemmPackFn = void (*)(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                            std::byte* panel);
// GemmPanelFn's results, bit for bit, from a packed panel, for any m.
using GemmPackedFn = void (*)(size_t cols, const std::byte* panel, int n_rows, const std::byte* act,
                              size_t act_stride, size_t m, float* y, size_t y_stride);

struct GemmKernel {
  ActFormat act = ActFormat::F32;
  GemmPanelFn fn = nullptr;  // nullptr: matmul uses the dot kernels for every m
  const char* isa = "";
  // The same results as fn, bit for bit, without its repacking: for up to
  // kSmallMaxTokens tokens. With it, batches of decode tokens can go through the GEMM and a
  // lone token through `small` with the same results (matmul_group's BatchGemm).
  GemmPanelFn small = nullptr;
  // `small` is at least as fast as the per-row dot kernel for a single token (measured on
  // the 2-core test machine: true for the legacy types, whose dot kernels are AVX2; the K
  // types' AVX-512 dot kernels stay ~25% ahead), so using it costs a lone stream nothing.
  bool small_fast_alone = false;
  // Pre-packed panels (nullptr: none for this type): bytes of one packed 16-row panel of
  // `cols` columns, the packer, and the kernel that reads them.
  size_t (*packed_bytes)(size_t cols) = nullptr;
  GemmPackFn pack = nullptr;
  GemmPackedFn packed = nullptr;
  // `packed` is at least as fast as the per-row dot kernel for a single token (2-core test
  // machine: TinyLlama-1.1B Q4_K_M decode 57-59 vs 49-54 tokens/s; kiln-kernel-bench
  // matvec_packed vs matvec), so weights that have panels read them for every m under
  // BatchGemm::fast, and a lone token costs nothing.
  bool packed_fast_alone = false;
};

// From this many activation rows on, matmul uses a type's GEMM panel (GemmKernel::fn):
// repacking a 16-row panel costs about as much as a few tokens' worth of dot products.
inline constexpr size_t kGemmMinTokens = 8;
// Most activation rows a GEMM's few-token twin (GemmKernel::small) is given: from 4 on the
// GEMM itself is as fast (SmolLM2 Q4_1 decode batches of 4: equal; of 6: 1.33x faster),
// and as the twin's results are the GEMM's, the switch point is free to choose.
inline constexpr size_t kSmallMaxTokens = 3;

// The AVX-512 VNNI panel kernel, or fn == nullptr (type not covered, build without the
// flags, or a CPU without AVX-512 F/BW/VL/VNNI). Ignores the ISA limit below.
GemmKernel gemm_kernel_avx512(GgmlType type);
// The AVX2 panel kernel, with pre-packed panels for each type (decode reads them: without
// VNNI a lone token is bound by arithmetic, and the panels halve it), or fn == nullptr (other
// types, no AVX2 build or CPU).
GemmKernel gemm_kernel_avx2(GgmlType type);
// The GEMM panel kernel matmul uses for many activation rows, within the ISA limit: the
// AVX-512 one where the CPU has it, else the AVX2 one.
GemmKernel gemm_kernel(GgmlType type);

// The widest instruction set the kernels may use. Starts from the KILN_ISA environment
// variable ("portable", "avx2", "avx512"; unset: the widest the CPU has) and can be lowered
// by tests so every path runs on one machine. Kernels the CPU lacks are never chosen.
enum class Isa { Portable = 0, Avx2 = 1, Avx512 = 2 };
Isa isa_limit();
void set_isa_limit(Isa isa);

// Bytes of one activation row of `cols` elements in `format`.
size_t act_row_bytes(ActFormat format, size_t cols);
// Quantizes one activation row into `format` (out: act_row_bytes(format, x.size()) bytes),
// with the SIMD quantizer where the ISA limit allows (byte-identical to the portable one).
void quantize_act_row(ActFormat format, std::span<const float> x, std::span<std::byte> out);
// The reference quantizers of kernels/quants.cpp.
void quantize_act_row_portable(ActFormat format, std::span<const float> x,
                               std::span<std::byte> out);
// The AVX2 quantizer; false (nothing written) where there is none for the format or CPU.
bool quantize_act_row_avx2(ActFormat format, std::span<const float> x, std::span<std::byte> out);

// ---- Precise (int16, two-plane) activations: kernels/dot_precise_portable.cpp, x86/ ----

// The kernel matmul uses for `precision` on this CPU: int8 is dot_kernel(type); int16 pairs
// the quantized types with Q8_act2/Q8_K2 (AVX2 where there is a kernel, else portable) and
// keeps the float types on F32 activations.
DotKernel dot_kernel(GgmlType type, ActPrecision precision);
// The portable int16 kernels (every matmul type; the float types return their F32 kernel).
DotKernel dot_kernel_precise_portable(GgmlType type);
// The AVX2 int16 kernels, or fn == nullptr (type not covered, no AVX2 build or CPU).
DotKernel dot_kernel_precise_avx2(GgmlType type);
// The AVX2 quantizer of the two-plane formats (byte-identical to the reference ones); false
// (nothing written) for another format, wrong sizes, or a CPU without AVX2.
bool quantize_act_row_precise_avx2(ActFormat format, std::span<const float> x,
                                   std::span<std::byte> out);
// GEMM panels for int16 activations (kernels/gemm_precise.cpp): the int8 panel of the type
// run once per plane; fn == nullptr where gemm_kernel(type) has none.
GemmKernel gemm_kernel_precise(GgmlType type);
// gemm_kernel(type) for int8, gemm_kernel_precise(type) for int16.
GemmKernel gemm_kernel(GgmlType type, ActPrecision precision);

}  // namespace kiln::kernels
