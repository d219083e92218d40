// Internal to the CUDA matmul (matmul.cu dispatches to these): the prefill GEMM through fp16
// copies (gemm.cu) and the integer decode matrix-vector of the K types (matvec_int8.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>

#include "kernels/cuda/launch.h"

namespace kiln::cuda {

// Y (m, rows) = X (m, cols) @ W^T: X and W converted to fp16 in `ws` (W a chunk of rows at a
// time), then the fp16 tensor-core GEMM. Throws std::invalid_argument when `ws` cannot hold
// X and 128 rows of W.
void launch_gemm_dequantized(const DeviceMatrix& w, const float* x, size_t m, float* y,
                             const GemmWorkspace& ws, cudaStream_t stream);

// ys[i] (m, ws[i].rows) = X (m, cols) @ ws[i]^T for 1 to 3 matrices of
// the same width, in one launch, with dp4a: the types of has_int8_matvec and
// 1 <= m <= kMatVecInt8MaxTokens.
// xq: x quantized ahead (launch_rmsnorm's), or xq.q null to quantize x in the kernel.
void launch_matvec_int8(std::span<const DeviceMatrix> ws, std::span<float* const> ys,
                        const float* x, const QuantizedX& xq, size_t m, cudaStream_t stream);
// Y (m, rows) = silu(X @ gate^T) * (X @ up^T) in one launch (gate and up of one type).
void launch_matvec_int8_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x,
                               const QuantizedX& xq, size_t m, float* y, cudaStream_t stream);

}  // namespace kiln::cuda
