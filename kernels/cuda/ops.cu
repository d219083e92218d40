// Element-wise and row kernels of the forward pass: dequantize / embedding gather, RMSNorm,
// softmax, SwiGLU, residual add, RoPE and the KV cache append. Each one mirrors a CPU twin
// in kernels/ops.h or kernels/quants.h.
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/launch.h"

namespace kiln::cuda {

namespace {

constexpr int kRowThreads = 256;   // one block per row for the row kernels
constexpr int kFlatThreads = 256;  // element-wise kernels

// Grid for `n` element-wise items, capped: the kernels loop with a grid stride.
unsigned flat_blocks(size_t n) {
  const size_t blocks = (n + kFlatThreads - 1) / kFlatThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks == 0 ? 1 : blocks) : 65535);
}

// out (n_rows, n): chunk c of row k = elements [8 c, 8 c + 8) of source row row_ids[k] (or k).
template <GgmlType T>
__global__ void dequantize_rows_kernel(const uint8_t* src, size_t row_bytes, int n,
                                       const int32_t* row_ids, int n_rows, float* out) {
  begin_kernel();
  const int chunks = n / 8;
  const size_t total = static_cast<size_t>(chunks) * n_rows;
  for (size_t item = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int k = static_cast<int>(item / chunks), c = static_cast<int>(item % chunks);
    const size_t src_row = row_ids != nullptr ? static_cast<size_t>(row_ids[k]) : k;
    float v[8];
    dequant8<T>(src + src_row * row_bytes, 8 * c, v);
    float* dst = out + static_cast<size_t>(k) * n + 8 * c;
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[j] = v[j];
  }
}

// One block per output row: (optionally x[row] += residual[row] first, written back), sum of
// squares, then scale and weight. The row is read once into registers, a float4 per thread
// per 4,096 elements, so the block's loads are all in flight together (a loop of dependent
// scalar loads made this a latency-bound 11 us kernel for one 3,072-wide row on an H100).
constexpr int kNormThreads = 1024;
constexpr int kNormVecs = 4;  // float4s per thread held in registers: rows up to 16,384

__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(float* x, const float* residual, const float* weight, float eps, int n,
                   const int32_t* row_ids, float* out, QuantizedX q8) {
  begin_kernel();
  __shared__ float red[32];
  const int k = blockIdx.x;
  const size_t src_row = row_ids != nullptr ? static_cast<size_t>(row_ids[k]) : k;
  float* xr = x + src_row * n;
  const float* rr = residual != nullptr ? residual + src_row * n : nullptr;
  float* o = out + static_cast<size_t>(k) * n;
  float ss = 0.0f;
  if (n % 4 == 0 && n <= 4 * kNormVecs * kNormThreads) {
    const int n4 = n / 4;
    float4 v[kNormVecs];
#pragma unroll
    for (int j = 0; j < kNormVecs; ++j) {
      const int idx = static_cast<int>(threadIdx.x) + j * kNormThreads;
      if (idx < n4) {
        v[j] = reinterpret_cast<const float4*>(xr)[idx];
        if (rr != nullptr) {
          const float4 r = reinterpret_cast<const float4*>(rr)[idx];
          v[j] = make_float4(v[j].x + r.x, v[j].y + r.y, v[j].z + r.z, v[j].w + r.w);
        }
        ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
      }
    }
    ss = block_sum(ss, red);  // every thread has read its x and residual elements
    const float scale = rsqrtf(ss / static_cast<float>(n) + eps);
#pragma unroll
    for (int j = 0; j < kNormVecs; ++j) {
      const int idx = static_cast<int>(threadIdx.x) + j * kNormThreads;
      if (idx < n4) {
        if (rr != nullptr) reinterpret_cast<float4*>(xr)[idx] = v[j];
        const float4 w = reinterpret_cast<const float4*>(weight)[idx];
        v[j] = make_float4(v[j].x * scale * w.x, v[j].y * scale * w.y, v[j].z * scale * w.z,
                           v[j].w * scale * w.w);
        reinterpret_cast<float4*>(o)[idx] = v[j];
      }
    }
    if (q8.q != nullptr) {
      // Runs of 8 for the int8 matrix-vector kernel: threads 2i and 2i + 1 hold one run's two
      // float4s (n / 4 is even, so both are in the row or both past it).
#pragma unroll
      for (int j = 0; j < kNormVecs; ++j) {
        const int idx = static_cast<int>(threadIdx.x) + j * kNormThreads;
        const bool ok = idx < n4;
        const float4 f = ok ? v[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float amax = fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
        float sum = f.x + f.y + f.z + f.w;
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        if (ok) {
          const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
          const uint32_t word = pack_int8x4(__float2int_rn(f.x * inv), __float2int_rn(f.y * inv),
                                            __float2int_rn(f.z * inv), __float2int_rn(f.w * inv));
          const size_t at = static_cast<size_t>(k) * n + 4 * static_cast<size_t>(idx);
          *reinterpret_cast<uint32_t*>(q8.q + at) = word;
          if (idx % 2 == 0) {
            q8.d[at / 8] = amax / 127.0f;
            q8.sum[at / 8] = sum;
          }
        }
      }
    }
    return;
  }
  // Any other length: scalar passes (the residual sum is written back before the barrier
  // and only read again by the thread that wrote it).
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v = xr[i];
    if (rr != nullptr) {
      v += rr[i];
      xr[i] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float scale = rsqrtf(ss / static_cast<float>(n) + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = xr[i] * scale * weight[i];
}

__global__ void softmax_kernel(float* x, int n) {
  begin_kernel();
  __shared__ float red[32];
  float* xr = x + static_cast<size_t>(blockIdx.x) * n;
  float max = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) max = fmaxf(max, xr[i]);
  max = block_max(max, red);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(xr[i] - max);
    xr[i] = e;
    sum += e;
  }
  sum = block_sum(sum, red);
  const float inv = 1.0f / sum;
  for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] *= inv;
}

// Fused SwiGLU: out = gate / (1 + exp(-gate)) * up.
__global__ void silu_mul_kernel(const float* gate, const float* up, float* out, size_t n) {
  begin_kernel();
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* y, size_t n) {
  begin_kernel();
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

// Angles in double, as the CPU: at positions in the thousands a float exponent loses bits.
__global__ void rope_angles_kernel(const int32_t* pos, int n_rows, int rope_dim, float freq_base,
                                   const float* freq_factors, float* cos_out, float* sin_out) {
  begin_kernel();
  const int half = rope_dim / 2;
  const int total = n_rows * half;
  for (int item = blockIdx.x * blockDim.x + threadIdx.x; item < total;
       item += gridDim.x * blockDim.x) {
    const int k = item / half, i = item % half;
    double theta = static_cast<double>(pos[k]) *
                   pow(static_cast<double>(freq_base),
                       -2.0 * static_cast<double>(i) / static_cast<double>(rope_dim));
    if (freq_factors != nullptr) theta /= static_cast<double>(freq_factors[i]);
    cos_out[item] = static_cast<float>(cos(theta));
    sin_out[item] = static_cast<float>(sin(theta));
  }
}

// (a, b) rotated by the angle whose cosine and sine are c and s.
__device__ __forceinline__ void rotate_pair(float& a, float& b, float c, float s) {
  const float ra = a * c - b * s, rb = a * s + b * c;
  a = ra;
  b = rb;
}

// One thread per rotated pair (row k, head h, pair i): (x[2i], x[2i+1]) rotated by theta_i.
__global__ void rope_normal_kernel(float* x, int n_rows, int n_heads, int head_dim, int rope_dim,
                                   const float* cos, const float* sin) {
  begin_kernel();
  const int half = rope_dim / 2;
  const int total = n_rows * n_heads * half;
  for (int item = blockIdx.x * blockDim.x + threadIdx.x; item < total;
       item += gridDim.x * blockDim.x) {
    const int i = item % half, h = (item / half) % n_heads, k = item / (half * n_heads);
    float* v = x + (static_cast<size_t>(k) * n_heads + h) * head_dim;
    rotate_pair(v[2 * i], v[2 * i + 1], cos[k * half + i], sin[k * half + i]);
  }
}

// Element d of row k of k and v -> F16 cache row (seq[k], pos[k]).
__global__ void kv_append_kernel(const float* k, const float* v, const int32_t* seq,
                                 const int32_t* pos, int n_rows, int kv_dim, int n_ctx,
                                 uint16_t* k_cache, uint16_t* v_cache) {
  begin_kernel();
  const int total = n_rows * kv_dim;
  for (int item = blockIdx.x * blockDim.x + threadIdx.x; item < total;
       item += gridDim.x * blockDim.x) {
    const int r = item / kv_dim, d = item % kv_dim;
    const size_t dst = (static_cast<size_t>(seq[r]) * n_ctx + pos[r]) * kv_dim + d;
    k_cache[dst] = float_to_half_bits(k[item]);
    v_cache[dst] = float_to_half_bits(v[item]);
  }
}

// RoPE on q and k and the KV cache append in one pass, one thread per pair of dims of a row:
// q pairs (rotated in place), then k pairs (rotated, stored as F16 at (seq[r], pos[r])), then
// v pairs (stored). Pairs past rope_dim / 2 of a head are not rotated.
__global__ void rope_kv_append_kernel(float* q, const float* k, const float* v, int n_rows,
                                      int n_heads, int n_kv_heads, int head_dim, int rope_dim,
                                      const float* cos, const float* sin, const int32_t* seq,
                                      const int32_t* pos, int n_ctx, uint16_t* k_cache,
                                      uint16_t* v_cache) {
  begin_kernel();
  const int half_head = head_dim / 2, half_rope = rope_dim / 2;
  const int q_pairs = n_heads * half_head, kv_pairs = n_kv_heads * half_head;
  const int per_row = q_pairs + 2 * kv_pairs;
  const int kv_dim = n_kv_heads * head_dim;
  const int total = n_rows * per_row;
  for (int item = blockIdx.x * blockDim.x + threadIdx.x; item < total;
       item += gridDim.x * blockDim.x) {
    const int r = item / per_row;
    int j = item % per_row;
    const float* cr = cos + r * half_rope;
    const float* sr = sin + r * half_rope;
    if (j < q_pairs) {
      const int i = j % half_head;
      if (i < half_rope) {
        float* x = q + static_cast<size_t>(r) * n_heads * head_dim + 2 * j;
        rotate_pair(x[0], x[1], cr[i], sr[i]);
      }
      continue;
    }
    j -= q_pairs;
    const size_t dst = (static_cast<size_t>(seq[r]) * n_ctx + pos[r]) * kv_dim;
    if (j < kv_pairs) {
      const int i = j % half_head;
      const float* x = k + static_cast<size_t>(r) * kv_dim + 2 * j;
      float a = x[0], b = x[1];
      if (i < half_rope) rotate_pair(a, b, cr[i], sr[i]);
      k_cache[dst + 2 * j] = float_to_half_bits(a);
      k_cache[dst + 2 * j + 1] = float_to_half_bits(b);
    } else {
      j -= kv_pairs;
      const float* x = v + static_cast<size_t>(r) * kv_dim + 2 * j;
      v_cache[dst + 2 * j] = float_to_half_bits(x[0]);
      v_cache[dst + 2 * j + 1] = float_to_half_bits(x[1]);
    }
  }
}

}  // namespace

bool has_cuda_matmul(GgmlType type) {
  bool ok = true;
  try {
    dispatch_weight_type(type, "has_cuda_matmul", [](auto) {});
  } catch (const std::invalid_argument&) {
    ok = false;
  }
  return ok;
}

void launch_dequantize_rows(GgmlType type, const void* src, size_t n, const int32_t* row_ids,
                            size_t n_rows, float* out, cudaStream_t stream) {
  if (n % 8 != 0 || n % traits(type).block_elements != 0) {
    throw std::invalid_argument("dequantize_rows: row length " + std::to_string(n) +
                                " is not a multiple of the " + std::string(type_name(type)) +
                                " block size");
  }
  if (n_rows == 0) return;
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    throw std::invalid_argument("dequantize_rows: the source rows are not 16-byte aligned");
  }
  const size_t rb = row_bytes(type, n);
  dispatch_weight_type(type, "dequantize_rows", [&](auto t) {
    dequantize_rows_kernel<decltype(t)::value>
        <<<flat_blocks(n / 8 * n_rows), kFlatThreads, 0, stream>>>(static_cast<const uint8_t*>(src),
                                                                   rb, static_cast<int>(n), row_ids,
                                                                   static_cast<int>(n_rows), out);
  });
}

static_assert(kRmsnormInt8MaxWidth == 4 * kNormVecs * kNormThreads,
              "the int8 copy is written from the row held in registers");

static void check_int8_output(const QuantizedX& q8, size_t n) {
  if (q8.q != nullptr && (n % 8 != 0 || n > kRmsnormInt8MaxWidth)) {
    throw std::invalid_argument(
        "rmsnorm: the int8 copy needs a width that is a multiple of 8, "
        "at most 16384; got " +
        std::to_string(n));
  }
}

void launch_rmsnorm(const float* x, const float* weight, float eps, size_t n, size_t n_rows,
                    const int32_t* row_ids, float* out, cudaStream_t stream, const QuantizedX& q8) {
  if (n_rows == 0) return;
  check_int8_output(q8, n);
  // x is only written when a residual is given.
  launch_kernel(rmsnorm_kernel, static_cast<unsigned>(n_rows), kNormThreads, 0, stream,
                const_cast<float*>(x), nullptr, weight, eps, static_cast<int>(n), row_ids, out, q8);
}

void launch_add_rmsnorm(float* x, const float* residual, const float* weight, float eps, size_t n,
                        size_t n_rows, float* out, cudaStream_t stream, const QuantizedX& q8) {
  if (n_rows == 0) return;
  check_int8_output(q8, n);
  launch_kernel(rmsnorm_kernel, static_cast<unsigned>(n_rows), kNormThreads, 0, stream, x, residual,
                weight, eps, static_cast<int>(n), nullptr, out, q8);
}

void launch_softmax(float* x, size_t n, size_t n_rows, cudaStream_t stream) {
  if (n_rows == 0 || n == 0) return;
  launch_kernel(softmax_kernel, static_cast<unsigned>(n_rows), kRowThreads, 0, stream, x,
                static_cast<int>(n));
}

void launch_silu_mul(const float* gate, const float* up, float* out, size_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  launch_kernel(silu_mul_kernel, flat_blocks(n), kFlatThreads, 0, stream, gate, up, out, n);
}

void launch_add(float* x, const float* y, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch_kernel(add_kernel, flat_blocks(n), kFlatThreads, 0, stream, x, y, n);
}

void launch_rope_angles(const int32_t* pos, size_t n_rows, size_t rope_dim, float freq_base,
                        const float* freq_factors, float* cos_out, float* sin_out,
                        cudaStream_t stream) {
  const size_t total = n_rows * (rope_dim / 2);
  if (total == 0) return;
  launch_kernel(rope_angles_kernel, flat_blocks(total), kFlatThreads, 0, stream, pos,
                static_cast<int>(n_rows), static_cast<int>(rope_dim), freq_base, freq_factors,
                cos_out, sin_out);
}

void launch_rope_normal(float* x, size_t n_rows, size_t n_heads, size_t head_dim, size_t rope_dim,
                        const float* cos, const float* sin, cudaStream_t stream) {
  const size_t total = n_rows * n_heads * (rope_dim / 2);
  if (total == 0) return;
  launch_kernel(rope_normal_kernel, flat_blocks(total), kFlatThreads, 0, stream, x,
                static_cast<int>(n_rows), static_cast<int>(n_heads), static_cast<int>(head_dim),
                static_cast<int>(rope_dim), cos, sin);
}

void launch_rope_kv_append(float* q, const float* k, const float* v, size_t n_rows, size_t n_heads,
                           size_t n_kv_heads, size_t head_dim, size_t rope_dim, const float* cos,
                           const float* sin, const int32_t* seq, const int32_t* pos, size_t n_ctx,
                           uint16_t* k_cache, uint16_t* v_cache, cudaStream_t stream) {
  const size_t total = n_rows * (n_heads + 2 * n_kv_heads) * (head_dim / 2);
  if (total == 0) return;
  if (head_dim % 2 != 0 || rope_dim > head_dim) {
    throw std::invalid_argument("rope_kv_append: head_dim must be even and >= rope_dim");
  }
  launch_kernel(rope_kv_append_kernel, flat_blocks(total), kFlatThreads, 0, stream, q, k, v,
                static_cast<int>(n_rows), static_cast<int>(n_heads), static_cast<int>(n_kv_heads),
                static_cast<int>(head_dim), static_cast<int>(rope_dim), cos, sin, seq, pos,
                static_cast<int>(n_ctx), k_cache, v_cache);
}

void launch_kv_append(const float* k, const float* v, const int32_t* seq, const int32_t* pos,
                      size_t n_rows, size_t kv_dim, size_t n_ctx, uint16_t* k_cache,
                      uint16_t* v_cache, cudaStream_t stream) {
  const size_t total = n_rows * kv_dim;
  if (total == 0) return;
  launch_kernel(kv_append_kernel, flat_blocks(total), kFlatThreads, 0, stream, k, v, seq, pos,
                static_cast<int>(n_rows), static_cast<int>(kv_dim), static_cast<int>(n_ctx),
                k_cache, v_cache);
}

size_t dequantize_rows_bytes(GgmlType type, size_t n, size_t n_rows) {
  return n_rows * (row_bytes(type, n) + n * sizeof(float));
}
size_t rmsnorm_bytes(size_t n, size_t n_rows) { return (2 * n_rows + 1) * n * sizeof(float); }
size_t elementwise_bytes(size_t n, size_t n_arrays) { return n_arrays * n * sizeof(float); }
size_t rope_bytes(size_t n_rows, size_t n_heads, size_t rope_dim) {
  return n_rows * (2 * n_heads * rope_dim + rope_dim) * sizeof(float);
}
size_t kv_append_bytes(size_t n_rows, size_t kv_dim) {
  return n_rows * kv_dim * 2 * (sizeof(float) + sizeof(uint16_t));
}

}  // namespace kiln::cuda
