// What matmul and matmul_group share (kernels/matmul.cpp, kernels/matmul_group.cpp): one
// weight's rows multiplied 16 at a time, through whichever kernel the caller picked.
#pragma once

#include <cstddef>

#include "kernels/dot.h"
#include "kernels/matmul.h"

namespace kiln::kernels {

// Rows per work unit: 16 floats = one 64-byte line of y per token, so two threads never
// write the same cache line; and one GEMM panel.
inline constexpr size_t kUnitRows = 16;
static_assert(kUnitRows == kGemmPanelRows);

// One weight, ready to run: where its rows, activations and outputs are, and the kernel for
// its units: its pre-packed panels (packed), else its GEMM panel (panel), else the per-row
// dot kernel in tiles of dot_tile tokens.
struct RowJob {
  const std::byte* w = nullptr;  // row-major blocks, w_row_bytes a row
  size_t w_row_bytes = 0;
  size_t rows = 0;
  size_t cols = 0;
  DotTileFn dot = nullptr;
  int dot_tile = 4;  // DotKernel::tile
  GemmPanelFn panel = nullptr;
  GemmPackedFn packed = nullptr;
  const std::byte* panels = nullptr;  // packed: one panel_bytes panel per unit
  size_t panel_bytes = 0;
  const std::byte* act = nullptr;  // m activation rows, act_stride bytes apart
  size_t act_stride = 0;
  float* y = nullptr;  // (m, rows), row-major
};

// The job's kernels for m rows: the panel given (nullptr: the dot kernels), and w's packed
// panels (packed: packed_panel_kernel(w, ...), or nullptr) standing in for it where w has
// them (same results, no repack).
RowJob row_job(const WeightMatrix& w, DotKernel dot, GemmPanelFn panel, GemmPackedFn packed);

// y[t * rows + r] for rows r of unit `unit` ([16 unit, +16)) and every token t < m.
void run_unit(const RowJob& job, size_t unit, size_t m);

}  // namespace kiln::kernels
