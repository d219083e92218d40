// Matrix multiplication of GGUF weights (kept in their block format on the device) with float
// activations: Y (m, rows) = X (m, cols) @ W^T, the CUDA twin of kernels::matmul.
//
// The dispatch between the kernels (launch_matmul_impl) and two of them:
// Decode (m <= kMatVecMaxTokens): 16 weight rows per block, K split across the block's warps,
// weights dequantized to fp16 in registers and multiplied with x (as fp16) on the tensor
// cores, fp32 accumulation: the float FMA version (kMatVecFloat, a warp per row) spends more
// instructions per weight than the memory system leaves it at this arithmetic intensity for
// the K types (for one token of the legacy types it is the faster one). One token of Q4_K /
// Q6_K goes to the int8 kernel (matvec_int8.cu).
// Prefill: the fp16 GEMM through the workspace (gemm.cu); without a workspace, 64x64 output
// tiles dequantized into shared memory at every k-step (wmma 16x16x16, fp32 accumulate).
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma.cuh"

namespace kiln::cuda {

namespace {

constexpr int kMatVecWarps = 4;  // rows per block of the matrix-vector kernel

template <GgmlType T, int NT>
__global__ void __launch_bounds__(kMatVecWarps* kWarpSize)
    matvec_kernel(const uint8_t* w, size_t row_bytes, int rows, int cols, const float* x, int m,
                  float* y) {
  begin_kernel();
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int row = blockIdx.x * kMatVecWarps + warp;
  if (row >= rows) return;
  const uint8_t* w_row = w + static_cast<size_t>(row) * row_bytes;
  const int chunks = cols / 8;
  for (int t0 = 0; t0 < m; t0 += NT) {
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int c = lane; c < chunks; c += kWarpSize) {
      float wv[8];
      dequant8<T>(w_row, 8 * c, wv);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t0 + t < m) {
          const float4* xp =
              reinterpret_cast<const float4*>(x + static_cast<size_t>(t0 + t) * cols + 8 * c);
          const float4 a = xp[0], b = xp[1];
          acc[t] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w + wv[4] * b.x +
                    wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float s = warp_sum(acc[t]);
      if (lane == 0 && t0 + t < m) y[static_cast<size_t>(t0 + t) * rows + row] = s;
    }
  }
}

// ---- Decode on the tensor cores: mma.m16n8k16 with 16 weight rows as M and the tokens as N.
//
// Lane l of a warp is (g = l / 4, p = l % 4). For each mma it supplies
//   A: 4 weights of rows g and g + 8 (fp16, dequantized in registers) at 4 element positions
//      e..e+3 of each,
//   B: x of token g at the same 4 positions,
// where the positions depend on p only, so every row and every token pairs the same
// elements (the k order inside an mma is free; A and B only have to agree). Registers:
// a0 = (w_g[e], w_g[e+2]) and a2 = (w_g[e+1], w_g[e+3]) are k-slots (2p, 2p+1) and
// (2p+8, 2p+9) of row g, a1/a3 the same of row g + 8; b0/b1 hold x at those slots. The fp32
// result c0, c1 is y[tokens 2p, 2p+1][row g], c2, c3 the same of row g + 8. A block's warps
// split K; their partial sums meet in shared memory.
constexpr int kMmaRows = 16;      // weight rows per block (the mma's M)
constexpr int kMmaTokens = 8;     // tokens per pass (the mma's N)
constexpr int kMmaMaxWarps = 16;  // warps per block splitting K

// B registers: the activations of one token at positions e..e+3 (a 16-byte load), or zeros.
// The load is unconditional (inactive lanes read position 0 of a valid row) and the zeros a
// select: loads behind a divergent branch were not overlapped with each other.
struct XFrag {
  uint32_t x02, x13;
};
__device__ __forceinline__ XFrag load_x_frag(const float* xt, int e, bool active) {
  const float4 f = *reinterpret_cast<const float4*>(xt + (active ? e : 0));
  const XFrag r{pack_half2(f.x, f.z), pack_half2(f.y, f.w)};
  return active ? r : XFrag{0u, 0u};
}

// A registers of one row for one mma: weights at e, e+2 and at e+1, e+3.
struct WFrag {
  uint32_t w02, w13;
};

__device__ __forceinline__ void mma_rows(float (&c)[4], const WFrag& r0, const WFrag& r8,
                                         const XFrag& x) {
  mma_m16n8k16(c, r0.w02, r8.w02, r0.w13, r8.w13, x.x02, x.x13);
}

__device__ __forceinline__ float silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

// K steps of a row: a 256-element block for Q4_K and Q6_K (their own loaders), 128 elements
// (4 sub-steps of dequant8) for every other type.
template <GgmlType T>
__host__ __device__ constexpr int matvec_mma_k_steps(int cols) {
  return T == GgmlType::Q4_K || T == GgmlType::Q6_K ? cols / 256 : (cols + 127) / 128;
}

// The two rows of a lane: g and g + 8 of the block's 16.
struct RowPair {
  const uint8_t* w[2];
  bool ok[2];
};

// Any type: the quad covers 32 consecutive elements of each of its rows per sub-step through
// dequant8 (lane p: elements 8p..8p+7, two mmas); a step is 4 sub-steps (128 elements).
template <GgmlType T>
__device__ __forceinline__ void matvec_mma_step_generic(const RowPair& rows, const float* xt,
                                                        bool token_ok, int step, int cols, int p,
                                                        float (&c)[4]) {
  XFrag xf[4][2];  // x fragments of the step, requested before any arithmetic
#pragma unroll
  for (int sub = 0; sub < 4; ++sub) {
    const bool in_row = step * 128 + sub * 32 < cols;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      xf[sub][h] = load_x_frag(xt, step * 128 + sub * 32 + 8 * p + 4 * h, token_ok && in_row);
    }
  }
#pragma unroll
  for (int sub = 0; sub < 4; ++sub) {
    const int e0 = step * 128 + sub * 32 + 8 * p;
    if (step * 128 + sub * 32 >= cols) break;  // uniform across the warp
    WFrag wf[2][2];                            // [row][h]
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float v[8];
      if (rows.ok[r]) {
        dequant8<T>(rows.w[r], e0, v);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = 0.0f;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float* q = v + 4 * h;
        wf[r][h] = {pack_half2(q[0], q[2]), pack_half2(q[1], q[3])};
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) mma_rows(c, wf[0][h], wf[1][h], xf[sub][h]);
  }
}

// Q4_K: a step is one 256-element block of each row. Lane p loads the block's header
// (d, dmin, scales) and two 16-byte runs of qs: bytes [16p, 16p + 16) and [64 + 16p, ...),
// i.e. words 4p..4p+3 and 16+4p..19+4p. Word w holds elements 64 (w / 8) + 4 (w % 8) + 0..3
// of sub-block 2 (w / 8) in its low nibbles and of sub-block 2 (w / 8) + 1 (32 elements
// later) in its high nibbles. Nibbles become fp16 exactly through 0x6400 | q = 1024 + q.
struct Q4KLoads {
  uint4 head, qa, qb;
};
__device__ __forceinline__ Q4KLoads load_q4_k(const uint8_t* w_row, bool row_ok, int block, int p) {
  if (!row_ok) return {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
  const uint8_t* b = w_row + static_cast<size_t>(block) * sizeof(block_q4_K);
  return {*reinterpret_cast<const uint4*>(b), *reinterpret_cast<const uint4*>(b + 16 + 16 * p),
          *reinterpret_cast<const uint4*>(b + 80 + 16 * p)};
}

// One row's fp16 weights for the 16 mmas of a Q4_K block: [run r][nibble h][word i].
__device__ __forceinline__ void dequant_q4_k_lane(const Q4KLoads& L, bool odd,
                                                  WFrag (&out)[2][2][4]) {
  // The 12 scale bytes; indexed only with constants below so they stay in registers.
  union {
    uint32_t u[3];
    uint8_t b[12];
  } scales;
  scales.u[0] = L.head.y;
  scales.u[1] = L.head.z;
  scales.u[2] = L.head.w;
  const float d = half_bits_to_float(static_cast<uint16_t>(L.head.x & 0xFFFF));
  const float dmin = half_bits_to_float(static_cast<uint16_t>(L.head.x >> 16));
  const __half2 k1024 = __float2half2_rn(1024.0f);
  const uint32_t runs[2][4] = {{L.qa.x, L.qa.y, L.qa.z, L.qa.w}, {L.qb.x, L.qb.y, L.qb.z, L.qb.w}};
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // run r covers 64-element group j = 2r (+1 for odd lanes)
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // low nibbles: sub-block 2j; high: 2j + 1
      int sc0, mn0, sc1, mn1;
      scale_min_k4(2 * (2 * r) + h, scales.b, sc0, mn0);
      scale_min_k4(2 * (2 * r + 1) + h, scales.b, sc1, mn1);
      const int sc = odd ? sc1 : sc0, mn = odd ? mn1 : mn0;
      const __half2 scale = __float2half2_rn(d * static_cast<float>(sc));
      const __half2 neg_min = __float2half2_rn(-dmin * static_cast<float>(mn));
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t v = runs[r][i] >> (4 * h);
        const uint32_t q02 = (v & 0x000F000Fu) | 0x64006400u;
        const uint32_t q13 = ((v >> 8) & 0x000F000Fu) | 0x64006400u;
        out[r][h][i] = {half2_bits(__hfma2(__hsub2(bits_half2(q02), k1024), scale, neg_min)),
                        half2_bits(__hfma2(__hsub2(bits_half2(q13), k1024), scale, neg_min))};
      }
    }
  }
}

__device__ __forceinline__ void matvec_mma_q4_k_block(const Q4KLoads (&L)[2], const float* xt,
                                                      bool token_ok, int block, int p,
                                                      float (&c)[4]) {
  const bool odd = p >= 2;  // lanes 2, 3 take the second 64-element group of each run
  // All 16 x fragments are requested before the first mma: issued one before each mma they
  // were 16 L2 round trips in a row (the kernel ran at 14% of DRAM bandwidth).
  XFrag xf[2][2][4];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = 2 * r + (odd ? 1 : 0);  // 64-element group of run r
        const int e = block * 256 + 64 * j + 32 * h + 16 * (p % 2) + 4 * i;
        xf[r][h][i] = load_x_frag(xt, e, token_ok);
      }
    }
  }
  WFrag w0[2][2][4], w8[2][2][4];
  dequant_q4_k_lane(L[0], odd, w0);
  dequant_q4_k_lane(L[1], odd, w8);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int i = 0; i < 4; ++i) mma_rows(c, w0[r][h][i], w8[r][h][i], xf[r][h][i]);
    }
  }
}

// Q6_K (210-byte blocks, so only 2-byte aligned): a step is one block of each row. Lane
// p = 2h + c takes ql bytes [32p, 32p + 32): words whose low nibbles are the low 4 bits of
// elements 128h + 32c + 0..31 and whose high nibbles those of 128h + 32(c + 2) + 0..31;
// the matching 2-bit highs are in qh bytes [32h, 32h + 32), bit pair k of each byte for
// quarter k. Words come from aligned 32-bit loads joined by a funnel shift.
struct Q6KLoads {
  uint32_t ql[8], qh[8];
  uint32_t scales_lo, scales_hi;  // scales[8h + 2c + 0..1], scales[8h + 2c + 4..5] (int8)
  uint32_t d;                     // half bits
};

__device__ __forceinline__ void load_words_2_aligned(const uint8_t* p, uint32_t (&out)[8]) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
  const uint32_t shift = static_cast<uint32_t>(a & 3) * 8;
  uint32_t raw[9];
#pragma unroll
  for (int i = 0; i < 9; ++i) raw[i] = base[i];
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = __funnelshift_r(raw[i], raw[i + 1], shift);
}

__device__ __forceinline__ Q6KLoads load_q6_k(const uint8_t* w_row, bool row_ok, int block, int p) {
  Q6KLoads L{};
  if (!row_ok) return L;
  const uint8_t* b = w_row + static_cast<size_t>(block) * sizeof(block_q6_K);
  const int h = p / 2, c = p % 2;
  load_words_2_aligned(b + offsetof(block_q6_K, ql) + 32 * p, L.ql);
  load_words_2_aligned(b + offsetof(block_q6_K, qh) + 32 * h, L.qh);
  L.scales_lo = load_u16(b + offsetof(block_q6_K, scales) + 8 * h + 2 * c);
  L.scales_hi = load_u16(b + offsetof(block_q6_K, scales) + 8 * h + 2 * c + 4);
  L.d = load_u16(b + offsetof(block_q6_K, d));
  return L;
}

// One row's fp16 weights for the 16 mmas of a Q6_K block: [word i][nibble hn].
__device__ __forceinline__ void dequant_q6_k_lane(const Q6KLoads& L, int p, WFrag (&out)[8][2]) {
  const int cq = p % 2;
  const float d = half_bits_to_float(static_cast<uint16_t>(L.d));
  // scale[hn][i / 4]: hn 0 is quarter cq (low nibbles), 1 is quarter cq + 2.
  __half2 scale[2][2];
  const uint32_t packed[2] = {L.scales_lo, L.scales_hi};
#pragma unroll
  for (int hn = 0; hn < 2; ++hn) {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      const int8_t sc = static_cast<int8_t>((packed[hn] >> (8 * g)) & 0xFF);
      scale[hn][g] = __float2half2_rn(d * static_cast<float>(sc));
    }
  }
  const __half2 k1056 = __float2half2_rn(1056.0f);  // 1024 + the offset 32
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int hn = 0; hn < 2; ++hn) {
      const int k = cq + 2 * hn;  // quarter of the 128-element half
      const uint32_t q4 = (L.ql[i] >> (4 * hn)) & 0x0F0F0F0Fu;
      const uint32_t q2 = (L.qh[i] >> (2 * k)) & 0x03030303u;
      const uint32_t q6 = q4 | (q2 << 4);
      const uint32_t h02 = (q6 & 0x00FF00FFu) | 0x64006400u;
      const uint32_t h13 = ((q6 >> 8) & 0x00FF00FFu) | 0x64006400u;
      out[i][hn] = {half2_bits(__hmul2(__hsub2(bits_half2(h02), k1056), scale[hn][i / 4])),
                    half2_bits(__hmul2(__hsub2(bits_half2(h13), k1056), scale[hn][i / 4]))};
    }
  }
}

__device__ __forceinline__ void matvec_mma_q6_k_block(const Q6KLoads (&L)[2], const float* xt,
                                                      bool token_ok, int block, int p,
                                                      float (&c)[4]) {
  const int h = p / 2, cq = p % 2;
  XFrag xf[8][2];  // every x fragment requested before the first mma (see Q4_K)
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int hn = 0; hn < 2; ++hn) {
      xf[i][hn] = load_x_frag(xt, block * 256 + 128 * h + 32 * (cq + 2 * hn) + 4 * i, token_ok);
    }
  }
  WFrag w0[8][2], w8[8][2];
  dequant_q6_k_lane(L[0], p, w0);
  dequant_q6_k_lane(L[1], p, w8);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int hn = 0; hn < 2; ++hn) mma_rows(c, w0[i][hn], w8[i][hn], xf[i][hn]);
  }
}

template <GgmlType T>
__global__ void __launch_bounds__(kMmaMaxWarps* kWarpSize)
    matvec_mma_kernel(const uint8_t* w, size_t row_bytes, int rows, int cols, const float* x, int m,
                      const float* silu_gate, float* y) {
  begin_kernel();
  __shared__ float partial[kMmaMaxWarps][kMmaTokens][kMmaRows];
  const int n_warps = blockDim.x / kWarpSize;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, p = lane % 4;
  const int row0 = blockIdx.x * kMmaRows;
  RowPair pair;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + g + 8 * r;
    pair.ok[r] = row < rows;
    pair.w[r] = w + static_cast<size_t>(pair.ok[r] ? row : 0) * row_bytes;
  }
  const int steps = matvec_mma_k_steps<T>(cols);

  for (int t0 = 0; t0 < m; t0 += kMmaTokens) {
    const bool token_ok = t0 + g < m;
    const float* xt = x + static_cast<size_t>(token_ok ? t0 + g : 0) * cols;
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    // Steps warp, warp + n_warps, ... of the row pair; each step's loads are issued before
    // its arithmetic. (Loading the next step's weights during this one's doubled the
    // registers held for loads, 122 a thread, and fewer warps fit an SM.)
    for (int step = warp; step < steps; step += n_warps) {
      if constexpr (T == GgmlType::Q4_K) {
        const Q4KLoads L[2] = {load_q4_k(pair.w[0], pair.ok[0], step, p),
                               load_q4_k(pair.w[1], pair.ok[1], step, p)};
        matvec_mma_q4_k_block(L, xt, token_ok, step, p, c);
      } else if constexpr (T == GgmlType::Q6_K) {
        const Q6KLoads L[2] = {load_q6_k(pair.w[0], pair.ok[0], step, p),
                               load_q6_k(pair.w[1], pair.ok[1], step, p)};
        matvec_mma_q6_k_block(L, xt, token_ok, step, p, c);
      } else {
        matvec_mma_step_generic<T>(pair, xt, token_ok, step, cols, p, c);
      }
    }
    // c0, c1: tokens 2p, 2p + 1 of row g; c2, c3: the same of row g + 8.
    partial[warp][2 * p][g] = c[0];
    partial[warp][2 * p + 1][g] = c[1];
    partial[warp][2 * p][g + 8] = c[2];
    partial[warp][2 * p + 1][g + 8] = c[3];
    __syncthreads();
    for (int o = threadIdx.x; o < kMmaTokens * kMmaRows; o += blockDim.x) {
      const int t = o / kMmaRows, r = o % kMmaRows;
      float sum = 0.0f;
      for (int k = 0; k < n_warps; ++k) sum += partial[k][t][r];
      if (t0 + t < m && row0 + r < rows) {
        const size_t at = static_cast<size_t>(t0 + t) * rows + row0 + r;
        // The SwiGLU product for the up projection: y = silu(gate) * (x @ W^T).
        y[at] = silu_gate != nullptr ? silu(silu_gate[at]) * sum : sum;
      }
    }
    __syncthreads();
  }
}

// Warps per block of the mma matrix-vector kernel: ~3,000 warps over the GPU (enough loads in
// flight to cover the memory latency, and few enough to be resident at once), at most 16 a
// block and never more warps than K steps.
int matvec_mma_warps(size_t rows, size_t k_steps) {
  const size_t row_blocks = (rows + kMmaRows - 1) / kMmaRows;
  size_t warps = (3072 + row_blocks - 1) / row_blocks;
  warps = std::min<size_t>(warps, kMmaMaxWarps);
  warps = std::min<size_t>(warps, std::max<size_t>(k_steps, 1));
  return static_cast<int>(std::max<size_t>(warps, 1));
}

constexpr int kTileM = 64;   // tokens per tile
constexpr int kTileN = 64;   // weight rows per tile
constexpr int kTileK = 32;   // columns per k-step
constexpr int kTilePad = 8;  // halves of padding per shared row (bank spread, keeps 32 B align)
constexpr int kTileThreads = 128;

template <GgmlType T>
__global__ void __launch_bounds__(kTileThreads)
    matmul_tc_kernel(const uint8_t* w, size_t row_bytes, int rows, int cols, const float* x, int m,
                     float* y) {
  begin_kernel();
  using namespace nvcuda;
  __shared__ __align__(128) half xs[kTileM][kTileK + kTilePad];
  __shared__ __align__(128) half ws[kTileN][kTileK + kTilePad];
  __shared__ __align__(128) float cs[kTileM][kTileN + 4];

  const int tid = threadIdx.x, warp = tid / kWarpSize;
  const int warp_m = warp / 2, warp_n = warp % 2;  // each warp owns a 32x32 quarter
  const int row0 = blockIdx.x * kTileN, tok0 = blockIdx.y * kTileM;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  for (int k0 = 0; k0 < cols; k0 += kTileK) {
    // X slice (64 tokens x 32 cols) -> fp16: two threads per token, 16 columns each.
    {
      const int r = tid / 2, c0 = (tid % 2) * 16;
      const int tok = tok0 + r;
      if (tok < m) {
        const float4* xp =
            reinterpret_cast<const float4*>(x + static_cast<size_t>(tok) * cols + k0 + c0);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float4 v = xp[q];
          xs[r][c0 + 4 * q + 0] = __float2half(v.x);
          xs[r][c0 + 4 * q + 1] = __float2half(v.y);
          xs[r][c0 + 4 * q + 2] = __float2half(v.z);
          xs[r][c0 + 4 * q + 3] = __float2half(v.w);
        }
      } else {
#pragma unroll
        for (int q = 0; q < 16; ++q) xs[r][c0 + q] = __float2half(0.0f);
      }
    }
    // W tile (64 rows x 32 cols) dequantized: 256 chunks of 8, two per thread.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int chunk = tid + i * kTileThreads;
      const int r = chunk / 4, c = (chunk % 4) * 8;
      float v[8];
      if (row0 + r < rows) {
        dequant8<T>(w + static_cast<size_t>(row0 + r) * row_bytes, k0 + c, v);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) ws[r][c + j] = __float2half(v[j]);
    }
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a[2];
      // B (k, n) = W[n][k]: the W tile stored [n][k] is B in column-major order.
      wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a[i], &xs[warp_m * 32 + i * 16][kk], kTileK + kTilePad);
        wmma::load_matrix_sync(b[i], &ws[warp_n * 32 + i * 16][kk], kTileK + kTilePad);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&cs[warp_m * 32 + i * 16][warp_n * 32 + j * 16], acc[i][j],
                              kTileN + 4, wmma::mem_row_major);
    }
  }
  __syncthreads();
  // Edges: only the tokens < m and rows < rows of the tile are written.
  for (int e = tid; e < kTileM * kTileN; e += kTileThreads) {
    const int r = e / kTileN, c = e % kTileN;
    if (tok0 + r < m && row0 + c < rows) {
      y[static_cast<size_t>(tok0 + r) * rows + row0 + c] = cs[r][c];
    }
  }
}

// The kernels read x as float4 and Q4_K/Q5_K quants as 8-byte words.
void check_alignment(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    throw std::invalid_argument(std::string("CUDA matmul: ") + what + " is not 16-byte aligned");
  }
}

void check_matmul_shape(const DeviceMatrix& w) {
  if (w.cols % 32 != 0 || w.cols % traits(w.type).block_elements != 0) {
    throw std::invalid_argument("CUDA matmul: " + std::string(type_name(w.type)) + " matrix has " +
                                std::to_string(w.cols) +
                                " columns, not a multiple of 32 and of the block size");
  }
  if (w.rows == 0 || w.rows > (1u << 30) || w.cols > (1u << 30)) {
    throw std::invalid_argument("CUDA matmul: unsupported matrix shape " + std::to_string(w.rows) +
                                " x " + std::to_string(w.cols));
  }
}

// KILN_CUDA_MATVEC=float|mma sends kAuto's decode sizes to that kernel instead (for comparing
// them inside a whole forward pass; read once).
const std::string& matvec_kernel_override() {
  static const std::string value = [] {
    const char* v = std::getenv("KILN_CUDA_MATVEC");
    return std::string(v != nullptr ? v : "");
  }();
  return value;
}

// x quantized ahead, unless KILN_CUDA_INT8_X=inline asks the int8 kernel to quantize x itself
// (for comparing the two; read once).
QuantizedX ahead(const QuantizedX& xq) {
  static const bool inline_x = [] {
    const char* v = std::getenv("KILN_CUDA_INT8_X");
    return v != nullptr && std::string(v) == "inline";
  }();
  return inline_x ? QuantizedX{} : xq;
}

// Whether kAuto gives these matrices (one input of m tokens) to the int8 kernel.
bool int8_takes(std::initializer_list<const DeviceMatrix*> ws, size_t m) {
  if (m == 0 || m > kMatVecInt8MaxTokens || !matvec_kernel_override().empty()) return false;
  for (const DeviceMatrix* w : ws) {
    if (!has_int8_matvec(w->type) || w->cols != (*ws.begin())->cols) return false;
  }
  return true;
}

void launch_matmul_impl(const DeviceMatrix& w, const float* x, const float* silu_gate, size_t m,
                        float* y, const GemmWorkspace& ws, cudaStream_t stream, MatmulPath path) {
  check_matmul_shape(w);
  if (m == 0) return;
  check_alignment(w.data, "the weight matrix");
  check_alignment(x, "the activations");
  // KILN_CUDA_MATVEC=float|mma sends kAuto's decode sizes to that kernel instead (for
  // comparing them inside a whole forward pass; read once).
  const std::string& matvec_override = matvec_kernel_override();
  if (path == MatmulPath::kAuto) {
    if (m > kMatVecMaxTokens) {
      path = ws.data != nullptr ? MatmulPath::kTensorCore : MatmulPath::kTensorCoreTiles;
    } else if (matvec_override == "float" && silu_gate == nullptr) {
      path = MatmulPath::kMatVecFloat;
    } else if (matvec_override == "mma") {
      path = MatmulPath::kMatVec;
    } else if (silu_gate == nullptr && int8_takes({&w}, m)) {
      path = MatmulPath::kMatVecInt8;
    } else if (m == 1 && silu_gate == nullptr) {
      // One token of the other types: the warp-per-row float kernel read 1.3-2.1 TB/s on an
      // H100 where the mma kernel read 0.3-1.2 (the mma's 16-row groups win from 4 tokens).
      path = MatmulPath::kMatVecFloat;
    } else {
      path = MatmulPath::kMatVec;
    }
  }
  if (silu_gate != nullptr && path != MatmulPath::kMatVec) {
    throw std::invalid_argument("CUDA matmul: the fused SwiGLU product needs the mma matvec path");
  }
  if (path == MatmulPath::kMatVecInt8) {
    const DeviceMatrix one[] = {w};
    float* const out[] = {y};
    launch_matvec_int8(one, out, x, QuantizedX{}, m, stream);
    return;
  }
  if (path == MatmulPath::kTensorCore) {
    launch_gemm_dequantized(w, x, m, y, ws, stream);
    return;
  }
  const size_t rb = row_bytes(w.type, w.cols);
  const auto* data = static_cast<const uint8_t*>(w.data);
  const int rows = static_cast<int>(w.rows), cols = static_cast<int>(w.cols);
  const int mi = static_cast<int>(m);
  dispatch_weight_type(w.type, "CUDA matmul", [&](auto t) {
    constexpr GgmlType T = decltype(t)::value;
    if (path == MatmulPath::kMatVec) {
      const int warps = matvec_mma_warps(w.rows, matvec_mma_k_steps<T>(cols));
      launch_kernel(matvec_mma_kernel<T>, ceil_div(w.rows, kMmaRows), warps * kWarpSize, 0, stream,
                    data, rb, rows, cols, x, mi, silu_gate, y);
    } else if (path == MatmulPath::kMatVecFloat) {
      const unsigned blocks = ceil_div(w.rows, kMatVecWarps);
      if (m == 1) {
        launch_kernel(matvec_kernel<T, 1>, blocks, kMatVecWarps * kWarpSize, 0, stream, data, rb,
                      rows, cols, x, mi, y);
      } else {
        launch_kernel(matvec_kernel<T, 8>, blocks, kMatVecWarps * kWarpSize, 0, stream, data, rb,
                      rows, cols, x, mi, y);
      }
    } else {
      const dim3 grid(ceil_div(w.rows, kTileN), ceil_div(m, kTileM));
      launch_kernel(matmul_tc_kernel<T>, grid, kTileThreads, 0, stream, data, rb, rows, cols, x, mi,
                    y);
    }
  });
}

}  // namespace

void launch_matmul(const DeviceMatrix& w, const float* x, size_t m, float* y,
                   const GemmWorkspace& ws, cudaStream_t stream, MatmulPath path) {
  launch_matmul_impl(w, x, nullptr, m, y, ws, stream, path);
}

void launch_matmul_silu_mul(const DeviceMatrix& w, const float* x, const float* gate, size_t m,
                            float* y, const GemmWorkspace& ws, cudaStream_t stream,
                            MatmulPath path) {
  if (m <= kMatVecMaxTokens) {
    launch_matmul_impl(w, x, gate, m, y, ws, stream, path);
  } else {
    launch_matmul_impl(w, x, nullptr, m, y, ws, stream, path);
    launch_silu_mul(gate, y, y, m * w.rows, stream);
  }
}

void launch_matmul_qkv(const DeviceMatrix& wq, const DeviceMatrix& wk, const DeviceMatrix& wv,
                       const float* x, size_t m, float* q, float* k, float* v,
                       const GemmWorkspace& ws, cudaStream_t stream, MatmulPath path,
                       const QuantizedX& xq) {
  if (path == MatmulPath::kAuto && int8_takes({&wq, &wk, &wv}, m)) {
    for (const DeviceMatrix* w : {&wq, &wk, &wv}) check_matmul_shape(*w);
    check_alignment(x, "the activations");
    const DeviceMatrix mats[] = {wq, wk, wv};
    float* const outs[] = {q, k, v};
    launch_matvec_int8(mats, outs, x, ahead(xq), m, stream);
    return;
  }
  launch_matmul(wq, x, m, q, ws, stream, path);
  launch_matmul(wk, x, m, k, ws, stream, path);
  launch_matmul(wv, x, m, v, ws, stream, path);
}

void launch_matmul_swiglu(const DeviceMatrix& w_gate, const DeviceMatrix& w_up, const float* x,
                          size_t m, float* gate_out, float* y, const GemmWorkspace& ws,
                          cudaStream_t stream, MatmulPath path, const QuantizedX& xq) {
  if (path == MatmulPath::kAuto && int8_takes({&w_gate, &w_up}, m) && w_gate.type == w_up.type &&
      w_gate.rows == w_up.rows) {
    check_matmul_shape(w_gate);
    check_matmul_shape(w_up);
    check_alignment(x, "the activations");
    launch_matvec_int8_swiglu(w_gate, w_up, x, ahead(xq), m, y, stream);
    return;
  }
  launch_matmul(w_gate, x, m, gate_out, ws, stream, path);
  launch_matmul_silu_mul(w_up, x, gate_out, m, y, ws, stream, path);
}

size_t matmul_bytes(const DeviceMatrix& w, size_t m) {
  return w.rows * row_bytes(w.type, w.cols) + m * w.cols * sizeof(float) +
         m * w.rows * sizeof(float);
}

}  // namespace kiln::cuda
