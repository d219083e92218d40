// Device-pointer launchers of the CUDA kernels: what the CUDA forward calls. Every pointer
// here is device memory; every launch goes on `stream` and returns without waiting, so a
// whole forward can be captured in a CUDA graph. Shapes are in the comment of each one,
// in the same words as the CPU twins in kernels/ops.h, kernels/matmul.h, kernels/quants.h.
//
// This header is plain C++ (only the CUDA runtime's types), so host .cpp files and tests
// can include it; the kernels themselves live in the .cu files of this folder.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "gguf/ggml_types.h"

namespace kiln::cuda {

// Weight types the CUDA matmul and dequantizer handle.
bool has_cuda_matmul(GgmlType type);

// Which matmul kernel runs:
//   kMatVec       decode (small m): 16 weight rows per block, K split across its warps,
//                 weights dequantized to fp16 in registers and multiplied on the tensor cores
//                 (mma m16n8k16, rows as M and tokens as N, fp32 accumulation);
//   kMatVecInt8   decode of Q4_K and Q6_K up to kMatVecInt8MaxTokens tokens: codes kept as
//                 integers, x quantized to int8 per run of 8 values, dp4a (has_int8_matvec);
//   kTensorCore   prefill: X and W converted to fp16 in the workspace, then an fp16 GEMM on
//                 the tensor cores (ldmatrix + mma, 3-stage cp.async pipeline);
//   kTensorCoreTiles  prefill without a workspace: 64x64 output tiles dequantized into
//                 shared memory at every k-step (wmma); slower, kept as a fallback;
//   kMatVecFloat  a warp per row in float arithmetic (exact float; the decode kernel of the
//                 other types for one token, and a reference path for tests);
//   kAuto         decode sizes (m <= kMatVecMaxTokens): kMatVecInt8 where it applies, else
//                 kMatVecFloat for one token, else kMatVec; prefill: kTensorCore with a
//                 workspace, kTensorCoreTiles without.
enum class MatmulPath { kAuto, kMatVec, kTensorCore, kMatVecFloat, kMatVecInt8, kTensorCoreTiles };
// Largest m that kAuto sends to the matrix-vector kernels.
inline constexpr size_t kMatVecMaxTokens = 8;
// Largest m of the int8 matrix-vector kernel (its dp4a work grows with m, the mma kernel's
// hardly: on an H100 at 4 tokens the int8 kernel took 2.4x the mma kernel's time).
inline constexpr size_t kMatVecInt8MaxTokens = 1;
bool has_int8_matvec(GgmlType type);

// Activations quantized for the int8 matrix-vector kernel, row-major like x (m, cols): q the
// int8 values, d (m, cols / 8) the scale of each run of 8 (x ~ d * q, d = max|x| / 127), sum
// (m, cols / 8) the float sum of each run (Q4_K's min term). q null: none.
struct QuantizedX {
  int8_t* q = nullptr;
  float* d = nullptr;
  float* sum = nullptr;
};

// A weight matrix W (rows, cols) in device memory: rows of row_bytes(type, cols) bytes.
struct DeviceMatrix {
  GgmlType type;
  const void* data;
  size_t rows;
  size_t cols;
};

// Device scratch of the prefill GEMM (fp16 copies of X and of a chunk of W), owned by the
// caller so that the forward pass allocates nothing.
struct GemmWorkspace {
  void* data = nullptr;
  size_t bytes = 0;
};
// Bytes a workspace needs for up to max_m tokens, rows of up to max_cols, and matrices of up
// to max_matrix_elements weights (larger ones go through in chunks of rows).
size_t gemm_workspace_bytes(size_t max_m, size_t max_cols, size_t max_matrix_elements);

// Y (m, rows) = X (m, cols) @ W^T. X and Y are row-major, dense. cols must be a multiple of
// 32 (every block size divides it); throws std::invalid_argument otherwise or for a type
// without a kernel. `ws` is used for m > kMatVecMaxTokens (may be empty otherwise).
void launch_matmul(const DeviceMatrix& w, const float* x, size_t m, float* y,
                   const GemmWorkspace& ws, cudaStream_t stream,
                   MatmulPath path = MatmulPath::kAuto);
// Y (m, rows) = silu(gate) * (X @ W^T) with gate (m, rows): the up projection finishing the
// SwiGLU product. Up to kMatVecMaxTokens tokens the matrix-vector kernel applies it as it
// writes Y; for more, a silu_mul pass follows the tensor-core kernel.
void launch_matmul_silu_mul(const DeviceMatrix& w, const float* x, const float* gate, size_t m,
                            float* y, const GemmWorkspace& ws, cudaStream_t stream,
                            MatmulPath path = MatmulPath::kAuto);
// The attention projections q (m, q rows), k and v (m, kv rows) = X (m, cols) @ W^T of each:
// one launch where the int8 kernel takes all three (kAuto, m <= kMatVecInt8MaxTokens), else
// three through `path`.
// xq, when set, is x quantized by the norm that wrote it (launch_rmsnorm): the int8 kernel
// reads it instead of quantizing x itself in every block.
void launch_matmul_qkv(const DeviceMatrix& wq, const DeviceMatrix& wk, const DeviceMatrix& wv,
                       const float* x, size_t m, float* q, float* k, float* v,
                       const GemmWorkspace& ws, cudaStream_t stream,
                       MatmulPath path = MatmulPath::kAuto, const QuantizedX& xq = {});
// The FFN's SwiGLU input: Y (m, rows) = silu(X @ Wgate^T) * (X @ Wup^T). One launch where the
// int8 kernel takes both (kAuto, same type, m <= kMatVecInt8MaxTokens); else the gate
// projection into gate_out (m, rows), then the up projection applying the product as it
// writes Y.
void launch_matmul_swiglu(const DeviceMatrix& w_gate, const DeviceMatrix& w_up, const float* x,
                          size_t m, float* gate_out, float* y, const GemmWorkspace& ws,
                          cudaStream_t stream, MatmulPath path = MatmulPath::kAuto,
                          const QuantizedX& xq = {});
// Bytes one matmul call moves through memory: every weight byte once, plus x and y.
size_t matmul_bytes(const DeviceMatrix& w, size_t m);
// Bytes moved by the other launchers (inputs read once, outputs written once).
size_t dequantize_rows_bytes(GgmlType type, size_t n, size_t n_rows);
size_t rmsnorm_bytes(size_t n, size_t n_rows);
size_t elementwise_bytes(size_t n, size_t n_arrays);  // silu_mul: 3 arrays, add: 3
size_t rope_bytes(size_t n_rows, size_t n_heads, size_t rope_dim);
size_t kv_append_bytes(size_t n_rows, size_t kv_dim);

// out (n_rows, n) = rows of `src` (n_rows, row_bytes(type, n)) dequantized; row k of the
// output is row row_ids[k] of src when row_ids is not null (the embedding gather: row_ids
// are token ids), else row k.
void launch_dequantize_rows(GgmlType type, const void* src, size_t n, const int32_t* row_ids,
                            size_t n_rows, float* out, cudaStream_t stream);

// out (n_rows, n) = x[row] / sqrt(mean(x[row]^2) + eps) * weight (n,), where x[row] is row
// k of x, or row row_ids[k] when row_ids is not null (packing the rows that want logits).
// With q8.q set, the output rows are also written quantized for the int8 matrix-vector kernel
// (n a multiple of 8, at most kRmsnormInt8MaxWidth; std::invalid_argument otherwise).
inline constexpr size_t kRmsnormInt8MaxWidth = 16384;
void launch_rmsnorm(const float* x, const float* weight, float eps, size_t n, size_t n_rows,
                    const int32_t* row_ids, float* out, cudaStream_t stream,
                    const QuantizedX& q8 = {});

// Residual add and the next norm in one pass: x (n_rows, n) += residual (n_rows, n), then
// out (n_rows, n) = rmsnorm(x) * weight. out may alias residual (each element is read before
// it is written, by the same thread).
void launch_add_rmsnorm(float* x, const float* residual, const float* weight, float eps, size_t n,
                        size_t n_rows, float* out, cudaStream_t stream, const QuantizedX& q8 = {});

// x (n_rows, n) <- softmax of each row.
void launch_softmax(float* x, size_t n, size_t n_rows, cudaStream_t stream);

// out (n,) = silu(gate) * up. out may alias gate or up.
void launch_silu_mul(const float* gate, const float* up, float* out, size_t n, cudaStream_t stream);

// x (n,) += y (n,)
void launch_add(float* x, const float* y, size_t n, cudaStream_t stream);

// cos/sin (n_rows, rope_dim/2) of each row's position pos[k]:
//   theta_i = pos * base^(-2i / rope_dim) / freq_factors[i] (freq_factors may be null).
void launch_rope_angles(const int32_t* pos, size_t n_rows, size_t rope_dim, float freq_base,
                        const float* freq_factors, float* cos_out, float* sin_out,
                        cudaStream_t stream);

// Rotates adjacent pairs of the first rope_dim dims of each head of x (n_rows, n_heads *
// head_dim) by row k's angles cos/sin (n_rows, rope_dim/2).
void launch_rope_normal(float* x, size_t n_rows, size_t n_heads, size_t head_dim, size_t rope_dim,
                        const float* cos, const float* sin, cudaStream_t stream);

// KV cache append: k and v (n_rows, kv_dim) -> F16 rows of the cache layer
// [n_seq][n_ctx][kv_dim] at (seq[k], pos[k]).
void launch_kv_append(const float* k, const float* v, const int32_t* seq, const int32_t* pos,
                      size_t n_rows, size_t kv_dim, size_t n_ctx, uint16_t* k_cache,
                      uint16_t* v_cache, cudaStream_t stream);

// The two above and launch_rope_normal of q and k in one kernel: q (n_rows, n_heads *
// head_dim) rotated in place; k (n_rows, kv_dim) rotated and v stored into the cache layer at
// (seq[r], pos[r]) as F16 (k itself is left as it was).
void launch_rope_kv_append(float* q, const float* k, const float* v, size_t n_rows, size_t n_heads,
                           size_t n_kv_heads, size_t head_dim, size_t rope_dim, const float* cos,
                           const float* sin, const int32_t* seq, const int32_t* pos, size_t n_ctx,
                           uint16_t* k_cache, uint16_t* v_cache, cudaStream_t stream);

// Attention of n queries over one layer of the F16 cache [n_seq][n_ctx][kv_dim]:
//   out[i, h] = softmax(q[i, h] . K[seq_i, 0..pos_i, g]^T / sqrt(head_dim)) V[seq_i, 0..pos_i, g]
// with g = h / (n_heads / n_kv_heads). q and out are (n, n_heads * head_dim).
struct AttentionShape {
  size_t n_heads, n_kv_heads, head_dim, n_ctx;
};
// Positions per block of the split (flash-decoding) kernel.
// 32 while the context is at most 2,048, then larger so that a query has at most 64 chunks
// (the scratch of partial records grows with the number of chunks).
inline size_t attention_split_positions(size_t n_ctx) {
  const size_t per_chunk = (n_ctx + 63) / 64;
  return per_chunk <= 32 ? 32 : (per_chunk + 31) / 32 * 32;
}
// Bytes an attention call reads and writes: q and out, plus the K and V rows of every query's
// visible positions (n_pos_total = sum over queries of pos + 1) for each KV head.
size_t attention_bytes(const AttentionShape& shape, size_t n, size_t n_pos_total);
// Scratch floats the split kernel needs for up to n queries.
size_t attention_split_scratch_floats(const AttentionShape& shape, size_t n);
// Flash-decoding: the KV range of each query is split across blocks (positions in chunks of
// attention_split_positions(n_ctx)), then a reduce kernel merges the partial softmaxes.
// The grid depends only on (n, n_ctx), not on the positions, so it can live in a graph.
void launch_attention_split(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                            const int32_t* seq, const int32_t* pos, size_t n,
                            const AttentionShape& shape, float* scratch, float* out,
                            cudaStream_t stream);
// Prefill: flash-attention over tiles of queries and keys with the causal mask and an online
// softmax, on the tensor cores for head_dim 64 and 128 (Q and the weights as fp16 hi + lo
// pairs, fp32 accumulation), else in float arithmetic. All n queries must belong to one
// sequence (seq[0]); head_dim a multiple of 32, at most 256 (can_tile_attention).
bool can_tile_attention(const AttentionShape& shape);
void launch_attention_tiled(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                            int32_t seq, const int32_t* pos, size_t n, const AttentionShape& shape,
                            float* out, cudaStream_t stream);

}  // namespace kiln::cuda
