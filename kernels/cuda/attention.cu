// Attention over the F16 KV cache, the CUDA twin of Engine::attention:
//   out[i, h] = softmax(q[i, h] . K[seq_i, 0..pos_i, g]^T / sqrt(head_dim)) V[seq_i, 0..pos_i, g]
// with the KV group g = h / (n_heads / n_kv_heads) (GQA).
//
// Decode uses flash-decoding: each (query, head) has its positions cut into chunks of
// attention_split_positions(n_ctx), one block per chunk writes (max, sum of exp, unnormalised
// weighted V), and a reduce kernel merges the chunks. Prefill of one sequence uses a
// flash-attention tile kernel: 16 queries share each 32-key tile of K and V in shared
// memory, every warp keeps an online softmax (running max and sum) per query, and the
// causal mask is the query's own position.
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace kiln::cuda {

namespace {

constexpr int kSplitThreads = 128;
constexpr int kSplitWarps = kSplitThreads / kWarpSize;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxDimsPerLane = kMaxHeadDim / kWarpSize;

size_t n_splits(size_t n_ctx) {
  const size_t chunk = attention_split_positions(n_ctx);
  return (n_ctx + chunk - 1) / chunk;
}

// Block (query-head qh, chunk split). Partial record: [max, sum, acc[head_dim]].
__global__ void __launch_bounds__(kSplitThreads)
    attention_split_kernel(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                           const int32_t* seq, const int32_t* pos, int n_heads, int n_kv_heads,
                           int head_dim, int n_ctx, int splits, int chunk, float scale,
                           float* scratch) {
  extern __shared__ float smem[];
  float* qs = smem;                 // (head_dim,) q * scale
  float* scores = qs + head_dim;    // (chunk,)
  float* partial = scores + chunk;  // (warps, head_dim)
  __shared__ float red[32];

  const int qh = blockIdx.x, split = blockIdx.y;
  const int i = qh / n_heads, h = qh % n_heads;
  const int n_pos = pos[i] + 1;
  const int start = split * chunk;
  if (start >= n_pos) return;  // this chunk is past the query's position: the reduce skips it
  const int end = min(start + chunk, n_pos);
  const int g = h / (n_heads / n_kv_heads), kv_dim = n_kv_heads * head_dim;
  const size_t base =
      static_cast<size_t>(seq[i]) * n_ctx * kv_dim + static_cast<size_t>(g) * head_dim;
  const uint16_t* k_base = k_cache + base;
  const uint16_t* v_base = v_cache + base;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int q_dim = n_heads * head_dim;

  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    qs[d] = q[static_cast<size_t>(i) * q_dim + h * head_dim + d] * scale;
  }
  __syncthreads();

  // Scores: a warp per position, lanes across the head dimensions.
  for (int p = start + warp; p < end; p += kSplitWarps) {
    const uint16_t* k = k_base + static_cast<size_t>(p) * kv_dim;
    float s = 0.0f;
    for (int d = lane; d < head_dim; d += kWarpSize) s += qs[d] * half_bits_to_float(k[d]);
    s = warp_sum(s);
    if (lane == 0) scores[p - start] = s;
  }
  __syncthreads();

  float max = -INFINITY;
  for (int p = threadIdx.x; p < end - start; p += blockDim.x) max = fmaxf(max, scores[p]);
  max = block_max(max, red);
  float sum = 0.0f;
  for (int p = threadIdx.x; p < end - start; p += blockDim.x) {
    const float e = expf(scores[p] - max);
    scores[p] = e;
    sum += e;
  }
  sum = block_sum(sum, red);  // begins with a barrier: the scores are all written

  // Weighted V: each warp sums its positions, lanes across dims; then warps are merged.
  float acc[kMaxDimsPerLane];
#pragma unroll
  for (int j = 0; j < kMaxDimsPerLane; ++j) acc[j] = 0.0f;
  for (int p = start + warp; p < end; p += kSplitWarps) {
    const uint16_t* v = v_base + static_cast<size_t>(p) * kv_dim;
    const float w = scores[p - start];
#pragma unroll
    for (int j = 0; j < kMaxDimsPerLane; ++j) {
      const int d = lane + j * kWarpSize;
      if (d < head_dim) acc[j] += w * half_bits_to_float(v[d]);
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxDimsPerLane; ++j) {
    const int d = lane + j * kWarpSize;
    if (d < head_dim) partial[warp * head_dim + d] = acc[j];
  }
  __syncthreads();
  float* record = scratch + (static_cast<size_t>(qh) * splits + split) * (head_dim + 2);
  if (threadIdx.x == 0) {
    record[0] = max;
    record[1] = sum;
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float a = 0.0f;
    for (int w = 0; w < kSplitWarps; ++w) a += partial[w * head_dim + d];
    record[2 + d] = a;
  }
}

// Decode, grouped: a block is one warp, for (query i, KV head g, chunk split), and serves
// the G query heads that read KV head g, so each K and V row is read once for all of them.
// The chunk goes by in runs of 32 positions: scores with a lane per position (16-byte loads
// along the K row), an online softmax per head with warp reductions, then the weighted V
// with lanes across dimensions. Same records as the kernel above.
constexpr int kGroupedMaxHeads = 8;

template <int G>
__global__ void __launch_bounds__(kWarpSize)
    attention_split_grouped_kernel(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                                   const int32_t* seq, const int32_t* pos, int n_heads,
                                   int n_kv_heads, int head_dim, int n_ctx, int splits, int chunk,
                                   float scale, float* scratch) {
  extern __shared__ float qs[];  // (G, head_dim) q * scale
  const int i = blockIdx.x / n_kv_heads, g = blockIdx.x % n_kv_heads, split = blockIdx.y;
  const int n_pos = pos[i] + 1;
  const int start = split * chunk;
  if (start >= n_pos) return;  // past the query's position: the reduce skips this chunk
  const int end = min(start + chunk, n_pos);
  const int kv_dim = n_kv_heads * head_dim, q_dim = n_heads * head_dim;
  const size_t base =
      static_cast<size_t>(seq[i]) * n_ctx * kv_dim + static_cast<size_t>(g) * head_dim;
  const int lane = threadIdx.x;
  const int dims_per_lane = head_dim / kWarpSize;

  // The group's heads are consecutive: q[i, g G .. g G + G - 1].
  for (int e = lane; e < G * head_dim; e += kWarpSize) {
    qs[e] = q[static_cast<size_t>(i) * q_dim + static_cast<size_t>(g) * G * head_dim + e] * scale;
  }
  __syncwarp();

  float run_max[G], run_sum[G], acc[G][kMaxDimsPerLane];
#pragma unroll
  for (int j = 0; j < G; ++j) {
    run_max[j] = -INFINITY;
    run_sum[j] = 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxDimsPerLane; ++c) acc[j][c] = 0.0f;
  }

  for (int run = start; run < end; run += kWarpSize) {
    // Scores of position p = run + lane.
    const int p = run + lane;
    const bool valid = p < end;
    float s[G];
#pragma unroll
    for (int j = 0; j < G; ++j) s[j] = 0.0f;
    if (valid) {
      const uint16_t* k = k_cache + base + static_cast<size_t>(p) * kv_dim;
#pragma unroll 8
      for (int d = 0; d < head_dim; d += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(k + d);
        const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const float2 kf = __half22float2(*reinterpret_cast<const __half2*>(&words[c]));
#pragma unroll
          for (int j = 0; j < G; ++j) {
            s[j] += qs[j * head_dim + d + 2 * c] * kf.x + qs[j * head_dim + d + 2 * c + 1] * kf.y;
          }
        }
      }
    }
    // Online softmax: rescale what was summed so far to the new running max.
    float e[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      const float new_max = fmaxf(run_max[j], warp_max(valid ? s[j] : -INFINITY));
      e[j] = valid ? expf(s[j] - new_max) : 0.0f;
      const float alpha = expf(run_max[j] - new_max);  // 0 on the first run
      run_sum[j] = run_sum[j] * alpha + warp_sum(e[j]);
      run_max[j] = new_max;
#pragma unroll
      for (int c = 0; c < kMaxDimsPerLane; ++c) acc[j][c] *= alpha;
    }
    // Weighted V of the run's positions; lane covers dims lane + 32 c. Eight rows are
    // requested before any is used (one row at a time, each waited for its load).
    const int n_run = min(kWarpSize, end - run);
    constexpr int kRows = 8;
    for (int r0 = 0; r0 < n_run; r0 += kRows) {
      float vf[kRows][kMaxDimsPerLane];
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        const int r = min(r0 + u, n_run - 1);  // past the run: a valid row, weight unused
        const uint16_t* v = v_cache + base + static_cast<size_t>(run + r) * kv_dim;
#pragma unroll
        for (int c = 0; c < kMaxDimsPerLane; ++c) {
          vf[u][c] = c < dims_per_lane ? half_bits_to_float(v[lane + c * kWarpSize]) : 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        if (r0 + u >= n_run) break;  // uniform across the warp
#pragma unroll
        for (int j = 0; j < G; ++j) {
          const float w = __shfl_sync(0xffffffffu, e[j], r0 + u);
#pragma unroll
          for (int c = 0; c < kMaxDimsPerLane; ++c) acc[j][c] += w * vf[u][c];
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < G; ++j) {
    const int qh = i * n_heads + g * G + j;
    float* record = scratch + (static_cast<size_t>(qh) * splits + split) * (head_dim + 2);
    if (lane == 0) {
      record[0] = run_max[j];
      record[1] = run_sum[j];
    }
#pragma unroll
    for (int c = 0; c < kMaxDimsPerLane; ++c) {
      if (c < dims_per_lane) record[2 + lane + c * kWarpSize] = acc[j][c];
    }
  }
}

// Block per query-head: merges the chunk records with the global max.
__global__ void attention_reduce_kernel(const float* scratch, const int32_t* pos, int n_heads,
                                        int head_dim, int splits, int chunk, float* out) {
  const int qh = blockIdx.x, i = qh / n_heads, h = qh % n_heads;
  const int used = (pos[i] + chunk) / chunk;  // chunks holding positions 0..pos[i]
  const float* records = scratch + static_cast<size_t>(qh) * splits * (head_dim + 2);
  float max = -INFINITY;
  for (int s = 0; s < used; ++s) max = fmaxf(max, records[s * (head_dim + 2)]);
  float total = 0.0f;
  for (int s = 0; s < used; ++s) {
    const float* r = records + s * (head_dim + 2);
    total += r[1] * expf(r[0] - max);
  }
  const float inv = 1.0f / total;
  float* o = out + static_cast<size_t>(i) * n_heads * head_dim + h * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < used; ++s) {
      const float* r = records + s * (head_dim + 2);
      a += r[2 + d] * expf(r[0] - max);
    }
    o[d] = a * inv;
  }
}

constexpr int kTileQueries = 16;  // queries per block (4 per warp)
constexpr int kTileKeys = 32;     // keys per tile: lane j scores key j
constexpr int kTileThreads = 128;
constexpr int kQueriesPerWarp = kTileQueries / (kTileThreads / kWarpSize);

size_t tiled_smem_bytes(int head_dim) {
  const size_t kv_row = static_cast<size_t>(head_dim) + 2;  // halves; +2 spreads banks
  return 2 * kTileKeys * kv_row * sizeof(uint16_t) + kTileQueries * head_dim * sizeof(float);
}

// Block (query tile, head h); all queries of one sequence `seq`, positions from pos.
__global__ void __launch_bounds__(kTileThreads)
    attention_tiled_kernel(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                           int seq, const int32_t* pos, int n, int n_heads, int n_kv_heads,
                           int head_dim, int n_ctx, float scale, float* out) {
  extern __shared__ __align__(16) unsigned char tile_smem[];
  const int kv_row = head_dim + 2;
  __half* ks = reinterpret_cast<__half*>(tile_smem);              // (kTileKeys, kv_row)
  __half* vs = ks + kTileKeys * kv_row;                           // (kTileKeys, kv_row)
  float* qs = reinterpret_cast<float*>(vs + kTileKeys * kv_row);  // (kTileQueries, head_dim)

  const int h = blockIdx.y, i0 = blockIdx.x * kTileQueries;
  const int g = h / (n_heads / n_kv_heads), kv_dim = n_kv_heads * head_dim;
  const int q_dim = n_heads * head_dim;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int dims_per_lane = head_dim / kWarpSize;
  const size_t base = static_cast<size_t>(seq) * n_ctx * kv_dim + static_cast<size_t>(g) * head_dim;

  // Queries of the tile, scaled; the last valid one has the largest position.
  int last_pos = 0;
  for (int qi = 0; qi < kTileQueries; ++qi) {
    if (i0 + qi < n) last_pos = max(last_pos, pos[i0 + qi]);
  }
  for (int e = threadIdx.x; e < kTileQueries * head_dim; e += blockDim.x) {
    const int qi = e / head_dim, d = e % head_dim;
    qs[e] = i0 + qi < n ? q[static_cast<size_t>(i0 + qi) * q_dim + h * head_dim + d] * scale : 0.0f;
  }

  int my_pos[kQueriesPerWarp];
  float run_max[kQueriesPerWarp], run_sum[kQueriesPerWarp];
  float acc[kQueriesPerWarp][kMaxDimsPerLane];
#pragma unroll
  for (int qq = 0; qq < kQueriesPerWarp; ++qq) {
    const int i = i0 + warp * kQueriesPerWarp + qq;
    my_pos[qq] = i < n ? pos[i] : -1;  // -1: no query, every key masked
    run_max[qq] = -INFINITY;
    run_sum[qq] = 0.0f;
#pragma unroll
    for (int j = 0; j < kMaxDimsPerLane; ++j) acc[qq][j] = 0.0f;
  }

  for (int t0 = 0; t0 <= last_pos; t0 += kTileKeys) {
    __syncthreads();  // the previous tile is no longer read (and qs is written, first time)
    // K and V rows t0 .. t0 + 31; rows past last_pos are zero so masked keys add nothing.
    for (int e = threadIdx.x; e < kTileKeys * head_dim; e += blockDim.x) {
      const int r = e / head_dim, d = e % head_dim, p = t0 + r;
      uint16_t kb = 0, vb = 0;
      if (p <= last_pos) {
        kb = k_cache[base + static_cast<size_t>(p) * kv_dim + d];
        vb = v_cache[base + static_cast<size_t>(p) * kv_dim + d];
      }
      ks[r * kv_row + d] = __ushort_as_half(kb);
      vs[r * kv_row + d] = __ushort_as_half(vb);
    }
    __syncthreads();

#pragma unroll
    for (int qq = 0; qq < kQueriesPerWarp; ++qq) {
      if (t0 > my_pos[qq]) continue;  // warp-uniform: the whole tile is in this query's future
      const float* qv = qs + (warp * kQueriesPerWarp + qq) * head_dim;
      const __half* k = ks + lane * kv_row;
      float s = 0.0f;
      for (int d = 0; d < head_dim; d += 2) {
        const float2 kf = __half22float2(*reinterpret_cast<const __half2*>(k + d));
        s += qv[d] * kf.x + qv[d + 1] * kf.y;
      }
      if (t0 + lane > my_pos[qq]) s = -INFINITY;  // causal mask
      const float new_max = fmaxf(run_max[qq], warp_max(s));
      const float p = expf(s - new_max);
      const float alpha = expf(run_max[qq] - new_max);  // 0 on the first tile
      run_sum[qq] = run_sum[qq] * alpha + warp_sum(p);
      run_max[qq] = new_max;
#pragma unroll
      for (int j = 0; j < kMaxDimsPerLane; ++j) {
        if (j < dims_per_lane) {
          float a = acc[qq][j] * alpha;
          const int d = lane + j * kWarpSize;
          for (int kk = 0; kk < kTileKeys; ++kk) {
            a += __shfl_sync(0xffffffffu, p, kk) * __half2float(vs[kk * kv_row + d]);
          }
          acc[qq][j] = a;
        }
      }
    }
  }

#pragma unroll
  for (int qq = 0; qq < kQueriesPerWarp; ++qq) {
    const int i = i0 + warp * kQueriesPerWarp + qq;
    if (i >= n) continue;
    const float inv = 1.0f / run_sum[qq];
    float* o = out + static_cast<size_t>(i) * q_dim + h * head_dim;
#pragma unroll
    for (int j = 0; j < kMaxDimsPerLane; ++j) {
      if (j < dims_per_lane) o[lane + j * kWarpSize] = acc[qq][j] * inv;
    }
  }
}

void check_shape(const AttentionShape& s) {
  if (s.n_heads == 0 || s.n_kv_heads == 0 || s.n_heads % s.n_kv_heads != 0 || s.head_dim == 0 ||
      s.head_dim > kMaxHeadDim || s.n_ctx == 0) {
    throw std::invalid_argument(
        "CUDA attention: unsupported shape (heads " + std::to_string(s.n_heads) + ", kv heads " +
        std::to_string(s.n_kv_heads) + ", head dim " + std::to_string(s.head_dim) + ", at most " +
        std::to_string(kMaxHeadDim) + ")");
  }
}

}  // namespace

size_t attention_bytes(const AttentionShape& shape, size_t n, size_t n_pos_total) {
  const size_t q_dim = shape.n_heads * shape.head_dim, kv_dim = shape.n_kv_heads * shape.head_dim;
  return 2 * n * q_dim * sizeof(float) + 2 * n_pos_total * kv_dim * sizeof(uint16_t);
}

size_t attention_split_scratch_floats(const AttentionShape& shape, size_t n) {
  return n * shape.n_heads * n_splits(shape.n_ctx) * (shape.head_dim + 2);
}

void launch_attention_split(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                            const int32_t* seq, const int32_t* pos, size_t n,
                            const AttentionShape& shape, float* scratch, float* out,
                            cudaStream_t stream) {
  check_shape(shape);
  if (n == 0) return;
  const size_t splits = n_splits(shape.n_ctx);
  const float scale = 1.0f / sqrtf(static_cast<float>(shape.head_dim));
  const size_t group = shape.n_heads / shape.n_kv_heads;
  const int heads = static_cast<int>(shape.n_heads), kv_heads = static_cast<int>(shape.n_kv_heads);
  const int head_dim = static_cast<int>(shape.head_dim), n_ctx = static_cast<int>(shape.n_ctx);
  const int n_split = static_cast<int>(splits);
  const int chunk = static_cast<int>(attention_split_positions(shape.n_ctx));
  // Grouped kernel for up to 8 query heads per KV head and head_dim a multiple of 32 (16-byte
  // K loads, whole dims per lane); the other shapes take the block-per-head kernel.
  if (group <= kGroupedMaxHeads && shape.head_dim % kWarpSize == 0) {
    const size_t smem = group * shape.head_dim * sizeof(float);
    const dim3 grid(static_cast<unsigned>(n * shape.n_kv_heads), static_cast<unsigned>(splits));
    // One instantiation per group size; the table keeps the dispatch to one launch.
    using GroupedKernel = decltype(&attention_split_grouped_kernel<1>);
    static constexpr GroupedKernel kGrouped[kGroupedMaxHeads] = {
        &attention_split_grouped_kernel<1>, &attention_split_grouped_kernel<2>,
        &attention_split_grouped_kernel<3>, &attention_split_grouped_kernel<4>,
        &attention_split_grouped_kernel<5>, &attention_split_grouped_kernel<6>,
        &attention_split_grouped_kernel<7>, &attention_split_grouped_kernel<8>};
    kGrouped[group - 1]<<<grid, kWarpSize, smem, stream>>>(q, k_cache, v_cache, seq, pos, heads,
                                                           kv_heads, head_dim, n_ctx, n_split,
                                                           chunk, scale, scratch);
  } else {
    const size_t smem = (shape.head_dim + chunk + kSplitWarps * shape.head_dim) * sizeof(float);
    const dim3 grid(static_cast<unsigned>(n * shape.n_heads), static_cast<unsigned>(splits));
    attention_split_kernel<<<grid, kSplitThreads, smem, stream>>>(q, k_cache, v_cache, seq, pos,
                                                                  heads, kv_heads, head_dim, n_ctx,
                                                                  n_split, chunk, scale, scratch);
  }
  KILN_CUDA_CHECK_LAUNCH();
  attention_reduce_kernel<<<static_cast<unsigned>(n * shape.n_heads), 128, 0, stream>>>(
      scratch, pos, static_cast<int>(shape.n_heads), static_cast<int>(shape.head_dim),
      static_cast<int>(splits), chunk, out);
  KILN_CUDA_CHECK_LAUNCH();
}

bool can_tile_attention(const AttentionShape& shape) {
  return shape.head_dim % kWarpSize == 0 && shape.head_dim <= kMaxHeadDim;
}

void launch_attention_tiled(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                            int32_t seq, const int32_t* pos, size_t n, const AttentionShape& shape,
                            float* out, cudaStream_t stream) {
  check_shape(shape);
  if (!can_tile_attention(shape)) {
    throw std::invalid_argument(
        "CUDA tiled attention needs a head dimension that is a multiple "
        "of 32, got " +
        std::to_string(shape.head_dim));
  }
  if (n == 0) return;
  const size_t smem = tiled_smem_bytes(static_cast<int>(shape.head_dim));
  if (smem > 48 * 1024) {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_tiled_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  }
  const float scale = 1.0f / sqrtf(static_cast<float>(shape.head_dim));
  const dim3 grid(ceil_div(n, kTileQueries), static_cast<unsigned>(shape.n_heads));
  attention_tiled_kernel<<<grid, kTileThreads, smem, stream>>>(
      q, k_cache, v_cache, seq, pos, static_cast<int>(n), static_cast<int>(shape.n_heads),
      static_cast<int>(shape.n_kv_heads), static_cast<int>(shape.head_dim),
      static_cast<int>(shape.n_ctx), scale, out);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::cuda
