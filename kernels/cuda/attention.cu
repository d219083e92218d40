// Attention over the F16 KV cache, the CUDA twin of Engine::attention:
//   out[i, h] = softmax(q[i, h] . K[seq_i, 0..pos_i, g]^T / sqrt(head_dim)) V[seq_i, 0..pos_i, g]
// with the KV group g = h / (n_heads / n_kv_heads) (GQA).
//
// Decode uses flash-decoding: each (query, head) has its positions cut into chunks of
// attention_split_positions(n_ctx), one block per chunk writes (max, sum of exp, unnormalised
// weighted V), and a reduce kernel merges the chunks. Prefill of one sequence uses a
// flash-attention tile kernel: a block's queries share each tile of K and V in shared memory,
// every warp keeps an online softmax (running max and sum) per query, and the causal mask is
// the query's own position. On the tensor cores for head_dim 64 and 128
// (attention_flash_kernel), in float arithmetic for the other head sizes
// (attention_tiled_kernel).
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.cuh"

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
  begin_kernel();
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
  begin_kernel();
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
  begin_kernel();
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
  begin_kernel();
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

// ---- Prefill on the tensor cores (head_dim 64 or 128): flash attention with mma.m16n8k16.
// Block (64 queries, head h), 4 warps of 16 queries; K and V tiles of 64 keys pass through
// shared memory in two cp.async stages. Per tile a warp computes S = Q K^T (16 x 64) in
// fp32 registers, masks keys past each query's position, updates its running max and sum
// (base-2 exponent: log2(e) / sqrt(head_dim) is folded into Q), and adds P V. Q and P enter
// the mma as fp16 hi + lo pairs (two mmas each), so they keep ~fp32 precision; K and V are
// fp16 in the cache already.
// The scalar kernel above took 503 us for 512 queries x 24 heads (head_dim 128) on an H100:
// 38% of the whole prompt's time.
constexpr int kFlashQueries = 64;
constexpr int kFlashKeys = 64;
constexpr int kFlashThreads = 128;

// Halves per shared row of K and V: the 8 rows an ldmatrix reads hit different banks.
template <int HD>
inline constexpr int kFlashStride = HD + 8;
// Two stages of a K and a V tile.
template <int HD>
inline constexpr size_t kFlashSmemBytes = kFlashStride<HD> * sizeof(uint16_t) * 4 * kFlashKeys;

template <int HD>
__global__ void __launch_bounds__(kFlashThreads)
    attention_flash_kernel(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                           int seq, const int32_t* pos, int n, int n_heads, int n_kv_heads,
                           int n_ctx, float scale_log2, float* out) {
  begin_kernel();
  constexpr int kStride = kFlashStride<HD>;
  constexpr int kSteps = HD / 16;  // k16 steps of Q K^T; n8 tiles of the output: HD / 8
  extern __shared__ __align__(16) unsigned char flash_smem[];
  half* tiles = reinterpret_cast<half*>(flash_smem);  // [stage][K, V][key][kStride]
  __shared__ int warp_last[kFlashThreads / kWarpSize];

  const int h = blockIdx.y, i0 = blockIdx.x * kFlashQueries;
  const int g = h / (n_heads / n_kv_heads), kv_dim = n_kv_heads * HD, q_dim = n_heads * HD;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int gq = lane / 4, pq = lane % 4;
  const size_t base = static_cast<size_t>(seq) * n_ctx * kv_dim + static_cast<size_t>(g) * HD;

  // This lane's two query rows (gq and gq + 8 of the warp's 16) and their positions; -1: no
  // query (past n), every key masked.
  const int row0 = i0 + 16 * warp + gq, row1 = row0 + 8;
  const int pos0 = row0 < n ? pos[row0] : -1, pos1 = row1 < n ? pos[row1] : -1;
  const int my_last = __reduce_max_sync(0xffffffffu, max(pos0, pos1));
  if (lane == 0) warp_last[warp] = my_last;

  // Q (scaled) as the A fragments of k16 step ks, split into fp16 hi + lo parts (Q = hi + lo
  // to ~2^-22): rounding Q to one fp16 moved 2 of 170 greedy tokens of a synthetic model
  // against the CPU forward. Re-read from global memory (L1 after the first tile) at every
  // tile rather than held in 64 more registers.
  const float* q_rows[2] = {row0 < n ? q + static_cast<size_t>(row0) * q_dim + h * HD : nullptr,
                            row1 < n ? q + static_cast<size_t>(row1) * q_dim + h * HD : nullptr};
  auto q_fragments = [&](int ks, uint32_t(&hi)[4], uint32_t(&lo)[4]) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float* row = q_rows[r % 2];
      float2 v = make_float2(0.0f, 0.0f);
      if (row != nullptr)
        v = *reinterpret_cast<const float2*>(row + 16 * ks + 2 * pq + 8 * (r / 2));
      split_half2(v.x * scale_log2, v.y * scale_log2, hi[r], lo[r]);
    }
  };
  __syncthreads();
  int block_last = warp_last[0];
#pragma unroll
  for (int w = 1; w < kFlashThreads / kWarpSize; ++w) block_last = max(block_last, warp_last[w]);
  const int n_tiles = block_last < 0 ? 0 : block_last / kFlashKeys + 1;

  // Tile t (keys 64 t ..) of K and V into stage t % 2; keys past block_last are zero-filled.
  auto load_tile = [&](int t) {
    half* k_s = tiles + static_cast<size_t>(t % 2) * 2 * kFlashKeys * kStride;
    half* v_s = k_s + kFlashKeys * kStride;
    constexpr int kChunksPerRow = HD / 8;
#pragma unroll
    for (int i = 0; i < kFlashKeys * kChunksPerRow / kFlashThreads; ++i) {
      const int chunk = threadIdx.x + i * kFlashThreads;
      const int r = chunk / kChunksPerRow, c = (chunk % kChunksPerRow) * 8;
      const int key = t * kFlashKeys + r;
      const bool ok = key <= block_last;
      const size_t at = ok ? base + static_cast<size_t>(key) * kv_dim + c : 0;
      cp_async_16(k_s + r * kStride + c, k_cache + at, ok);
      cp_async_16(v_s + r * kStride + c, v_cache + at, ok);
    }
  };

  float o[HD / 8][4];
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.0f, 0.0f};  // rows gq, gq + 8

  if (n_tiles > 0) load_tile(0);
  cp_async_commit();
  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) load_tile(t + 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile t has landed (this thread's copies)...
    __syncthreads();     // ...and everyone's
    const int t0 = t * kFlashKeys;
    if (t0 <= my_last) {  // warp-uniform: otherwise every key is in this warp's future
      const half* k_s = tiles + static_cast<size_t>(t % 2) * 2 * kFlashKeys * kStride;
      const half* v_s = k_s + kFlashKeys * kStride;

      // S = Q K^T: 8 n8 tiles of keys. B (dims x keys) from K rows [key][dim]: ldmatrix
      // matrices (keys 8j.., dims 16ks..), (keys 8j.., dims +8), (keys 8j + 8.., ...), ...
      float sc[kFlashKeys / 8][4];
#pragma unroll
      for (int j = 0; j < kFlashKeys / 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) {
        uint32_t qa_hi[4], qa_lo[4];
        q_fragments(ks, qa_hi, qa_lo);
#pragma unroll
        for (int j = 0; j < kFlashKeys / 8; j += 2) {
          uint32_t b[4];
          const int key = 8 * j + lane % 8 + 8 * (lane / 16);
          ldmatrix_x4(b, k_s + key * kStride + 16 * ks + 8 * ((lane / 8) % 2));
          mma_m16n8k16(sc[j], qa_hi, b[0], b[1]);
          mma_m16n8k16(sc[j], qa_lo, b[0], b[1]);
          mma_m16n8k16(sc[j + 1], qa_hi, b[2], b[3]);
          mma_m16n8k16(sc[j + 1], qa_lo, b[2], b[3]);
        }
      }

      // Causal mask and the online softmax of rows gq (c0, c1) and gq + 8 (c2, c3); the four
      // lanes of a quad hold one row between them.
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kFlashKeys / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = t0 + 8 * j + 2 * pq + e % 2;
          if (key > (e < 2 ? pos0 : pos1)) sc[j][e] = -INFINITY;
          tile_max[e / 2] = fmaxf(tile_max[e / 2], sc[j][e]);
        }
      }
      float alpha[2], base_max[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        const float new_max = fmaxf(run_max[r], tile_max[r]);
        base_max[r] = new_max == -INFINITY ? 0.0f : new_max;  // a row with nothing visible yet
        alpha[r] = exp2f(run_max[r] - base_max[r]);           // 0 on the first visible tile
        run_max[r] = new_max;
        // This lane's share of the row sum (reduced over the quad at the end).
        run_sum[r] *= alpha[r];
      }
#pragma unroll
      for (int j = 0; j < kFlashKeys / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sc[j][e] = exp2f(sc[j][e] - base_max[e / 2]);
          run_sum[e / 2] += sc[j][e];
        }
      }
#pragma unroll
      for (int j = 0; j < HD / 8; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
      }

      // O += P V: P's C fragments of key tiles 2kk, 2kk + 1 are the A of k16 step kk (split
      // into fp16 hi + lo like Q); B (keys x dims) from V rows [key][dim] through the
      // transposing ldmatrix: matrices (keys 16kk.., dims 8j..), (keys 16kk + 8.., dims 8j..),
      // (keys 16kk.., dims 8j + 8..), (keys 16kk + 8.., dims 8j + 8..).
#pragma unroll
      for (int kk = 0; kk < kFlashKeys / 16; ++kk) {
        uint32_t pa_hi[4], pa_lo[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float* c = sc[2 * kk + r / 2] + 2 * (r % 2);  // (c0, c1) or (c2, c3)
          split_half2(c[0], c[1], pa_hi[r], pa_lo[r]);
        }
#pragma unroll
        for (int j = 0; j < HD / 8; j += 2) {
          uint32_t b[4];
          const int key = 16 * kk + lane % 8 + 8 * ((lane / 8) % 2);
          ldmatrix_x4_trans(b, v_s + key * kStride + 8 * j + 8 * (lane / 16));
          mma_m16n8k16(o[j], pa_hi, b[0], b[1]);
          mma_m16n8k16(o[j], pa_lo, b[0], b[1]);
          mma_m16n8k16(o[j + 1], pa_hi, b[2], b[3]);
          mma_m16n8k16(o[j + 1], pa_lo, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // stage t % 2 is free for tile t + 2
  }
  cp_async_wait<0>();

  // out = O / sum, the row sums reduced over each quad.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    run_sum[r] += __shfl_xor_sync(0xffffffffu, run_sum[r], 1);
    run_sum[r] += __shfl_xor_sync(0xffffffffu, run_sum[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r == 0 ? row0 : row1;
    if (row >= n) continue;
    const float inv = 1.0f / run_sum[r];
    float* dst = out + static_cast<size_t>(row) * q_dim + h * HD + 2 * pq;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
      *reinterpret_cast<float2*>(dst + 8 * j) =
          make_float2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    }
  }
}

template <int HD>
void launch_attention_flash(const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
                            int32_t seq, const int32_t* pos, size_t n, const AttentionShape& shape,
                            float* out, cudaStream_t stream) {
  constexpr size_t smem = kFlashSmemBytes<HD>;
  static const bool configured = [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_flash_kernel<HD>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    return true;
  }();
  (void)configured;
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(HD));
  const dim3 grid(ceil_div(n, kFlashQueries), static_cast<unsigned>(shape.n_heads));
  launch_kernel(attention_flash_kernel<HD>, grid, kFlashThreads, smem, stream, q, k_cache, v_cache,
                seq, pos, static_cast<int>(n), static_cast<int>(shape.n_heads),
                static_cast<int>(shape.n_kv_heads), static_cast<int>(shape.n_ctx), scale_log2, out);
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
    launch_kernel(kGrouped[group - 1], grid, kWarpSize, smem, stream, q, k_cache, v_cache, seq, pos,
                  heads, kv_heads, head_dim, n_ctx, n_split, chunk, scale, scratch);
  } else {
    const size_t smem = (shape.head_dim + chunk + kSplitWarps * shape.head_dim) * sizeof(float);
    const dim3 grid(static_cast<unsigned>(n * shape.n_heads), static_cast<unsigned>(splits));
    launch_kernel(attention_split_kernel, grid, kSplitThreads, smem, stream, q, k_cache, v_cache,
                  seq, pos, heads, kv_heads, head_dim, n_ctx, n_split, chunk, scale, scratch);
  }
  launch_kernel(attention_reduce_kernel, static_cast<unsigned>(n * shape.n_heads), 128, 0, stream,
                scratch, pos, static_cast<int>(shape.n_heads), static_cast<int>(shape.head_dim),
                static_cast<int>(splits), chunk, out);
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
  if (shape.head_dim == 64) {
    launch_attention_flash<64>(q, k_cache, v_cache, seq, pos, n, shape, out, stream);
    return;
  }
  if (shape.head_dim == 128) {
    launch_attention_flash<128>(q, k_cache, v_cache, seq, pos, n, shape, out, stream);
    return;
  }
  const size_t smem = tiled_smem_bytes(static_cast<int>(shape.head_dim));
  if (smem > 48 * 1024) {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_tiled_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  }
  const float scale = 1.0f / sqrtf(static_cast<float>(shape.head_dim));
  const dim3 grid(ceil_div(n, kTileQueries), static_cast<unsigned>(shape.n_heads));
  launch_kernel(attention_tiled_kernel, grid, kTileThreads, smem, stream, q, k_cache, v_cache, seq,
                pos, static_cast<int>(n), static_cast<int>(shape.n_heads),
                static_cast<int>(shape.n_kv_heads), static_cast<int>(shape.head_dim),
                static_cast<int>(shape.n_ctx), scale, out);
}

}  // namespace kiln::cuda
