// Matrix multiplication of GGUF weights (any matmul type, kept in their block format) with
// float activations: the one kernel the forward pass spends its time in.
//
// Activations are quantized once per call into the format the weight type pairs with (see
// kernels/dot.h), into caller-provided scratch; the rows of W are then shared out across
// the thread pool in chunks of a multiple of 16 rows (so no two threads write the same cache
// line of y), and within a chunk tokens are taken in tiles of up to 4 so each weight block
// is unpacked once per tile.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "gguf/ggml_types.h"
#include "kernels/dot.h"
#include "kernels/thread_pool.h"

namespace kiln::kernels {

// A weight matrix W (rows, cols) as stored in GGUF: rows of row_bytes(type, cols) bytes each.
struct WeightMatrix {
  GgmlType type;
  std::span<const std::byte> data;
  size_t rows;
  size_t cols;
  // The same weights pre-packed by pack_panels, or empty. Where present (and this CPU has
  // the kernel that reads them, within the ISA limit), matmul and matmul_group read them
  // wherever they would run the type's GEMM or its few-token twin (int8 activations): the
  // same results bit for bit, without the GEMM's per-call repack. Where they would run the
  // per-row dot kernels, they still do, from `data`.
  std::span<const std::byte> panels = {};
};

// Bytes pack_panels writes for a (rows, cols) weight of this type: 0 where this CPU (within
// the ISA limit) has no pre-packed panels for the type or cols is not a multiple of its
// block size.
size_t packed_panels_bytes(GgmlType type, size_t rows, size_t cols);
// Version of the pre-packed panel layouts: part of every packed_panels_layout() tag, so
// panels kept on disk (the engine's panel cache) by a build with another layout are packed
// again. Bump it whenever a pack function's output changes.
inline constexpr int kPackedPanelsVersion = 1;
// "ISA/vN" of the panels pack_panels writes for this type on this CPU, "" where it has none.
std::string packed_panels_layout(GgmlType type);
// The instruction set whose panels pack_panels writes on this CPU (within the ISA limit):
// "avx512" or "avx2", "" where no type has pre-packed panels. Panels of one ISA are of no use
// to the other's kernels, so the engine keeps one panel cache file per ISA.
std::string packed_panels_isa();
// Packs w.data into `out` (packed_panels_bytes(...) bytes, 64-byte aligned), 16-row panels
// shared out across the pool. Throws std::invalid_argument for a type without pre-packed
// panels or sizes that do not match.
void pack_panels(const WeightMatrix& w, std::span<std::byte> out, ThreadPool& pool);
// The kernel that reads w's pre-packed panels for these activations, or nullptr (w has
// none, int16 activations, or no such kernel on this CPU within the ISA limit). Throws
// std::invalid_argument when w.panels is smaller than packed_panels_bytes(...).
GemmPackedFn packed_panel_kernel(const WeightMatrix& w, ActPrecision precision);

// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS.
bool has_matmul_kernel(GgmlType type);

// Scratch bytes needed to hold m activation rows of length cols quantized for this weight
// type (0 for the float types, which read x directly). Throws std::invalid_argument for a
// type without a kernel.
// precision: how the activations are quantized (kernels/dot.h); int16 needs more scratch.
size_t matmul_scratch_bytes(GgmlType type, size_t cols, size_t m,
                            ActPrecision precision = ActPrecision::int8);

// Y (m, rows) = X (m, cols) @ W^T. x and y are row-major and dense (only their first m * cols
// and m * rows elements are used); scratch has matmul_scratch_bytes(...) bytes (any
// alignment). Never allocates. m == 1 is the decode matrix-vector case. Throws
// std::invalid_argument (naming the type and sizes) for a type without a kernel, cols not a
// multiple of the block size, or spans too small.
// precision int16 uses the two-plane activation kernels (dot_kernel(type, precision), and
// gemm_kernel(type, precision) for many rows).
void matmul(const WeightMatrix& w, std::span<const float> x, size_t m, std::span<float> y,
            std::span<std::byte> scratch, ThreadPool& pool,
            ActPrecision precision = ActPrecision::int8);

// Which weight types matmul_group sends through the GEMM panels (more than kSmallMaxTokens
// rows) and their bit-identical few-token twins (up to that), instead of the per-row dot
// kernels. Either way a row's result is the same for every m.
enum class BatchGemm {
  off,   // none: the per-row dot kernels for every m
  fast,  // types whose twin, or pre-packed panels where the weights have them, are as fast
         // as the dot kernel for one token (GemmKernel::small_fast_alone,
         // packed_fast_alone): many decode streams gain, a lone one loses nothing (default)
  all,   // every type with a twin (the K types' twins: ~25% slower for one token than their
         // AVX-512 dot kernels, and no faster for 8 on the test machine; for experiments)
};
// "auto" (fast), "all" or "off"; std::invalid_argument naming `option` otherwise.
BatchGemm parse_batch_gemm(std::string_view option, std::string_view value);

// The panel kernel matmul_group runs for m rows of this type under `policy`, or nullptr for
// the per-row dot kernels (dot_act: their activation format).
// packed: the weights have pre-packed panels (packed_panel_kernel(w, precision) != nullptr),
// which stand in for the panel kernel; under `fast` GemmKernel::packed_fast_alone then counts.
GemmPanelFn batch_panel_kernel(GgmlType type, ActPrecision precision, ActFormat dot_act, size_t m,
                               BatchGemm policy, bool packed = false);

// True when matmul_group gives kGemmMinTokens or more rows of this type the same path as
// matmul (both the GEMM, or both the dot kernels), so a batch mixing prompt runs and decode
// tokens can be one matmul_group call without changing any row's result.
bool matmul_group_runs_like_matmul(GgmlType type, ActPrecision precision, BatchGemm policy,
                                   bool packed = false);

// ---- Several matmuls of one input in one dispatch (kernels/matmul_group.cpp) ----------

// One product of a group: y (m, w.rows) = X (m, w.cols) @ w^T, y row-major and dense.
struct MatmulTarget {
  WeightMatrix w;
  std::span<float> y;
};

// Most targets in one matmul_group call (Q, K and V of a layer are three).
inline constexpr size_t kMaxGroupTargets = 4;

// Scratch bytes matmul_group needs for weights of these types (same cols, m tokens): one
// region per activation format the types pair with. Throws std::invalid_argument for a
// type without a kernel or more than kMaxGroupTargets types.
size_t matmul_group_scratch_bytes(std::span<const GgmlType> types, size_t cols, size_t m,
                                  ActPrecision precision = ActPrecision::int8);

// The matmuls that share their input X (m, cols) (Q/K/V of a layer, gate/up of the FFN) as
// one job: X is quantized once per activation format the weights pair with, and the rows
// of all the weights are shared out across the pool in ONE dispatch, so a thread that
// finishes its part of one weight goes on to the next instead of waiting at a barrier per
// matmul. Work is claimed in shrinking chunks of 16-row units (large first, single units
// at the end) so the threads finish together. Each row's result is the same for every m
// (see BatchGemm: the per-row dot kernels, or the GEMM panels and their bit-identical
// few-token twins), so the rows of a batch of decode tokens from many sequences come out as
// each sequence's would alone. Errors as matmul()'s, thrown before any output is written;
// never allocates.
void matmul_group(std::span<const MatmulTarget> targets, std::span<const float> x, size_t m,
                  std::span<std::byte> scratch, ThreadPool& pool,
                  ActPrecision precision = ActPrecision::int8,
                  BatchGemm batch_gemm = BatchGemm::off);

}  // namespace kiln::kernels
