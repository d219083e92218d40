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

#include "gguf/ggml_types.h"
#include "kernels/thread_pool.h"

namespace kiln::kernels {

// A weight matrix W (rows, cols) as stored in GGUF: rows of row_bytes(type, cols) bytes each.
struct WeightMatrix {
  GgmlType type;
  std::span<const std::byte> data;
  size_t rows;
  size_t cols;
};

// F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS.
bool has_matmul_kernel(GgmlType type);

// Scratch bytes needed to hold m activation rows of length cols quantized for this weight
// type (0 for the float types, which read x directly). Throws std::invalid_argument for a
// type without a kernel.
size_t matmul_scratch_bytes(GgmlType type, size_t cols, size_t m);

// Y (m, rows) = X (m, cols) @ W^T. x and y are row-major and dense (only their first m * cols
// and m * rows elements are used); scratch has matmul_scratch_bytes(...) bytes (any
// alignment). Never allocates. m == 1 is the decode matrix-vector case. Throws
// std::invalid_argument (naming the type and sizes) for a type without a kernel, cols not a
// multiple of the block size, or spans too small.
void matmul(const WeightMatrix& w, std::span<const float> x, size_t m, std::span<float> y,
            std::span<std::byte> scratch, ThreadPool& pool);

}  // namespace kiln::kernels
