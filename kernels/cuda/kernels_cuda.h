// The CUDA kernels exposed for tests: each has a host launcher with the same signature as its
// CPU twin (host spans in, host spans out). A launcher copies its inputs to the device, runs
// the kernel the CUDA forward runs (launch.h), and copies the result back, so tests compare
// the two implementations element by element. Not for the hot path: every call allocates.
//
// Every launcher throws std::runtime_error naming the CUDA error when there is no usable
// device; call cuda_device_count() first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gguf/ggml_types.h"
#include "kernels/cuda/launch.h"
#include "kernels/matmul.h"

namespace kiln::cuda {

// Visible CUDA devices; 0 when there is none or the driver is missing (never throws).
int cuda_device_count();
// "NAME (compute X.Y, N MiB)" of device 0, or why there is none.
std::string cuda_device_description();

// Twin of kernels::dequantize_row: one row of `type` -> dst.
void dequantize_row(GgmlType type, std::span<const std::byte> src, std::span<float> dst);

// The device dequantizer's code (dequant.cuh) run on the host, no GPU needed: lets tests
// check every block layout of the CUDA kernels on any machine.
void dequantize_row_host(GgmlType type, std::span<const std::byte> src, std::span<float> dst);

// Twin of kernels::matmul: Y (m, rows) = X (m, cols) @ W^T, through `path`.
void matmul(const kernels::WeightMatrix& w, std::span<const float> x, size_t m, std::span<float> y,
            MatmulPath path = MatmulPath::kAuto);

// Twin of kernels::matmul then kernels::silu_mul: Y = silu(gate) * (X @ W^T).
void matmul_silu_mul(const kernels::WeightMatrix& w, std::span<const float> x,
                     std::span<const float> gate, size_t m, std::span<float> y);

// Twin of three kernels::matmul calls on one input: the forward's Q, K and V projections
// (launch_matmul_qkv: one launch where the int8 kernel takes them). With a norm weight (cols,)
// the input is first rmsnorm(x) * weight (eps 1e-5) through launch_rmsnorm with its int8 copy,
// as in the forward; else x itself, quantized by the int8 kernel.
void matmul_qkv(const kernels::WeightMatrix& wq, const kernels::WeightMatrix& wk,
                const kernels::WeightMatrix& wv, std::span<const float> x, size_t m,
                std::span<float> q, std::span<float> k, std::span<float> v,
                std::span<const float> norm_weight = {});

// Twin of kernels::matmul of the gate and up matrices then kernels::silu_mul:
// Y = silu(X @ Wgate^T) * (X @ Wup^T) (launch_matmul_swiglu); the norm as above.
void matmul_swiglu(const kernels::WeightMatrix& w_gate, const kernels::WeightMatrix& w_up,
                   std::span<const float> x, size_t m, std::span<float> y,
                   std::span<const float> norm_weight = {});

// The int8 copy of its output a norm can write for the int8 matrix-vector kernel (QuantizedX:
// values, and a scale and a float sum per run of 8).
struct Int8Rows {
  std::vector<int8_t> q;
  std::vector<float> d, sum;
};

// Twins of kernels::rmsnorm, softmax, silu_mul, add (one row each); with q8, the norm's int8
// copy comes back too.
void rmsnorm(std::span<const float> x, std::span<const float> weight, float eps,
             std::span<float> out, Int8Rows* q8 = nullptr);
// Twin of kernels::add then kernels::rmsnorm: x += residual, out = rmsnorm(x) * weight.
void add_rmsnorm(std::span<float> x, std::span<const float> residual, std::span<const float> weight,
                 float eps, std::span<float> out, Int8Rows* q8 = nullptr);
void softmax(std::span<float> x);
void silu_mul(std::span<const float> gate, std::span<const float> up, std::span<float> out);
void add(std::span<float> x, std::span<const float> y);

// Twin of kernels::rope_angles.
void rope_angles(int64_t pos, size_t rope_dim, float freq_base, std::span<const float> freq_factors,
                 std::span<float> cos_out, std::span<float> sin_out);
// Twin of kernels::rope_normal.
void rope_normal(std::span<float> x, size_t n_heads, size_t head_dim, size_t rope_dim,
                 std::span<const float> cos, std::span<const float> sin);
// Twin of kernels::rope_normal on q and k, then kernels::f32_to_f16_row of k and v: one row
// through the fused kernel of the forward (rope_kv_append), the cache rows at (0, 0).
void rope_kv_append(std::span<float> q, std::span<const float> k, std::span<const float> v,
                    size_t n_heads, size_t n_kv_heads, size_t head_dim, size_t rope_dim,
                    std::span<const float> cos, std::span<const float> sin,
                    std::span<uint16_t> k_out, std::span<uint16_t> v_out);
// Twin of kernels::f32_to_f16_row, through the KV cache append kernel (one row at (0, 0)).
void f32_to_f16_row(std::span<const float> x, std::span<uint16_t> out);

// Attention of n queries q (n, n_heads * head_dim) over one layer of an F16 cache
// [n_seq][n_ctx][kv_dim] (k_cache and v_cache hold n_seq * n_ctx * kv_dim halves) -> out
// (n, n_heads * head_dim); query i reads positions [0, pos[i]] of sequence seq[i]. The tiled
// path needs every seq[i] equal. (The CPU twin is Engine::attention; tests carry a scalar
// reference.)
enum class AttentionPath { kSplit, kTiled };
void attention(std::span<const float> q, std::span<const uint16_t> k_cache,
               std::span<const uint16_t> v_cache, std::span<const int32_t> seq,
               std::span<const int32_t> pos, const AttentionShape& shape, std::span<float> out,
               AttentionPath path);

}  // namespace kiln::cuda
