// Prefill matmul: Y (m, rows) = X (m, cols) @ W^T for m > kMatVecMaxTokens, in three launches:
//   1. X -> fp16 (m, cols) in the workspace;
//   2. W -> fp16, a chunk of rows at a time, in the workspace (dequant8, the one place the
//      block layouts live);
//   3. an fp16 GEMM on the tensor cores: 64 or 128 tokens x 128 rows per block, K in steps of
//      32 through a 3-stage cp.async pipeline in shared memory, fragments read with ldmatrix,
//      mma.m16n8k16 with fp32 accumulation.
// Dequantizing inside the GEMM's tile loader (the previous kernel, kept as the fallback for
// callers without a workspace) ran the block decoding once per 64-token tile and held the
// tensor cores at ~50 TFLOP/s on an H100; the dequantized chunk costs one pass over the
// weights (~2.5 bytes per weight written and read) and leaves the GEMM a plain fp16 one.
#include <cuda_fp16.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/mma.cuh"

namespace kiln::cuda {

namespace {

constexpr size_t kWorkspaceAlign = 256;
size_t align_workspace(size_t n) {
  return (n + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// ---- 1 and 2: fp16 copies of the operands, eight elements (one 16-byte store) per thread.

__global__ void floats_to_halves_kernel(const float* x, size_t n8, half* out) {
  begin_kernel();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  const float4 a = reinterpret_cast<const float4*>(x)[2 * i];
  const float4 b = reinterpret_cast<const float4*>(x)[2 * i + 1];
  union {
    uint4 u;
    __half2 h[4];
  } o;
  o.h[0] = __floats2half2_rn(a.x, a.y);
  o.h[1] = __floats2half2_rn(a.z, a.w);
  o.h[2] = __floats2half2_rn(b.x, b.y);
  o.h[3] = __floats2half2_rn(b.z, b.w);
  reinterpret_cast<uint4*>(out)[i] = o.u;
}

template <GgmlType T>
__global__ void dequantize_to_halves_kernel(const uint8_t* w, size_t row_bytes, int rows, int cols,
                                            half* out) {
  begin_kernel();
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int chunks = cols / 8;
  if (i >= static_cast<size_t>(rows) * chunks) return;
  const size_t row = i / chunks;
  const int c = static_cast<int>(i % chunks);
  float v[8];
  dequant8<T>(w + row * row_bytes, 8 * c, v);
  union {
    uint4 u;
    __half2 h[4];
  } o;
#pragma unroll
  for (int j = 0; j < 4; ++j) o.h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
  reinterpret_cast<uint4*>(out)[i] = o.u;
}

// ---- 3: the fp16 GEMM. C (m, n) = A (m, K) @ B (n, K)^T, both operands K-contiguous (which
// is what mma's row.col wants: A row-major, B column-major), C fp32 with row stride ldc.

constexpr int kGemmN = 128;  // weight rows per block
constexpr int kGemmK = 32;   // K per pipeline stage
constexpr int kGemmStages = 3;
constexpr int kGemmThreads = 256;        // 8 warps: 2 along the tokens x 4 along the rows
constexpr int kGemmStride = kGemmK + 8;  // halves per shared row: 80 bytes, so the 8 rows an
                                         // ldmatrix reads fall in 8 different 16-byte banks

template <int BM>
constexpr size_t gemm_shared_bytes() {
  return static_cast<size_t>(kGemmStages) * (BM + kGemmN) * kGemmStride * sizeof(half);
}

// BM tokens x 128 rows per block; warp (wm, wn) owns BM/2 tokens x 32 rows: MI = BM/32
// m16 tiles by 4 n8 tiles.
template <int BM>
__global__ void __launch_bounds__(kGemmThreads)
    hgemm_kernel(const half* __restrict__ a, const half* __restrict__ b, int m, int n, int k,
                 float* __restrict__ c, size_t ldc) {
  begin_kernel();
  constexpr int MI = BM / 32, NJ = 4;
  extern __shared__ __align__(16) unsigned char gemm_shared[];
  half* as = reinterpret_cast<half*>(gemm_shared);                      // [stage][BM][stride]
  half* bs = as + static_cast<size_t>(kGemmStages) * BM * kGemmStride;  // [stage][128][stride]

  const int tid = threadIdx.x, warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int wm = warp / 4, wn = warp % 4;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * kGemmN;
  const int k_tiles = k / kGemmK;

  // Stage s <- K tile kt: 16-byte chunks, four per shared row; rows past m or n read zeros.
  auto load_stage = [&](int s, int kt) {
    half* a_s = as + static_cast<size_t>(s) * BM * kGemmStride;
    half* b_s = bs + static_cast<size_t>(s) * kGemmN * kGemmStride;
    const int kc0 = kt * kGemmK;
#pragma unroll
    for (int i = 0; i < (BM * 4 + kGemmThreads - 1) / kGemmThreads; ++i) {
      const int chunk = tid + i * kGemmThreads;
      if (chunk < BM * 4) {
        const int r = chunk / 4, kc = (chunk % 4) * 8;
        const bool ok = m0 + r < m;
        cp_async_16(a_s + r * kGemmStride + kc,
                    a + (ok ? static_cast<size_t>(m0 + r) * k + kc0 + kc : 0), ok);
      }
    }
#pragma unroll
    for (int i = 0; i < kGemmN * 4 / kGemmThreads; ++i) {
      const int chunk = tid + i * kGemmThreads;
      const int r = chunk / 4, kc = (chunk % 4) * 8;
      const bool ok = n0 + r < n;
      cp_async_16(b_s + r * kGemmStride + kc,
                  b + (ok ? static_cast<size_t>(n0 + r) * k + kc0 + kc : 0), ok);
    }
  };

  float acc[MI][NJ][4];
#pragma unroll
  for (int i = 0; i < MI; ++i) {
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    }
  }

#pragma unroll
  for (int s = 0; s < kGemmStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kGemmStages - 2>();  // tile kt has landed (for this thread's copies)...
    __syncthreads();                   // ...and everyone's; stage (kt - 1) is free again
    {
      const int next = kt + kGemmStages - 1;
      if (next < k_tiles) load_stage(next % kGemmStages, next);
      cp_async_commit();
    }
    const half* a_s = as + static_cast<size_t>(kt % kGemmStages) * BM * kGemmStride;
    const half* b_s = bs + static_cast<size_t>(kt % kGemmStages) * kGemmN * kGemmStride;
#pragma unroll
    for (int kk = 0; kk < kGemmK; kk += 16) {
      // A (x4): matrices = (rows 0-7 | 8-15) x (k 0-7 | 8-15); lane l addresses row l % 16
      // at k 8 (l / 16): the registers come out as mma's a0..a3.
      uint32_t af[MI][4];
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int row = wm * (BM / 2) + i * 16 + lane % 16;
        ldmatrix_x4(af[i], a_s + row * kGemmStride + kk + 8 * (lane / 16));
      }
      // B (x4) covers two n8 tiles: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
      // (n 8-15, k 8-15) = b0, b1 of tile j and of tile j + 1.
      uint32_t bf[NJ][2];
#pragma unroll
      for (int j = 0; j < NJ; j += 2) {
        uint32_t r[4];
        const int row = wn * 32 + j * 8 + lane % 8 + 8 * (lane / 16);
        ldmatrix_x4(r, b_s + row * kGemmStride + kk + 8 * ((lane / 8) % 2));
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) mma_m16n8k16(acc[i][j], af[i], bf[j][0], bf[j][1]);
      }
    }
  }
  cp_async_wait<0>();

  // c0, c1: token g, rows 2p, 2p + 1 of the n8 tile; c2, c3: token g + 8.
  const int g = lane / 4, p = lane % 4;
#pragma unroll
  for (int i = 0; i < MI; ++i) {
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tok = m0 + wm * (BM / 2) + i * 16 + g + 8 * (e / 2);
        const int col = n0 + wn * 32 + j * 8 + 2 * p + e % 2;
        if (tok < m && col < n) c[static_cast<size_t>(tok) * ldc + col] = acc[i][j][e];
      }
    }
  }
}

template <int BM>
void launch_hgemm(const half* a, const half* b, int m, int n, int k, float* c, size_t ldc,
                  cudaStream_t stream) {
  constexpr size_t shared = gemm_shared_bytes<BM>();
  static const bool configured = [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(
        hgemm_kernel<BM>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    return true;
  }();
  (void)configured;
  const dim3 grid(ceil_div(n, kGemmN), ceil_div(m, BM));
  launch_kernel(hgemm_kernel<BM>, grid, kGemmThreads, shared, stream, a, b, m, n, k, c, ldc);
}

}  // namespace

size_t gemm_workspace_bytes(size_t max_m, size_t max_cols, size_t max_matrix_elements) {
  // The weight chunk: the largest matrix, up to 64 Mi halves (128 MiB), and never fewer than
  // 128 rows of the widest one.
  const size_t w_halves =
      std::max(std::min(max_matrix_elements, size_t{64} << 20), size_t{kGemmN} * max_cols);
  return align_workspace(max_m * max_cols * sizeof(half)) +
         align_workspace(w_halves * sizeof(half));
}

void launch_gemm_dequantized(const DeviceMatrix& w, const float* x, size_t m, float* y,
                             const GemmWorkspace& ws, cudaStream_t stream) {
  const size_t x_bytes = align_workspace(m * w.cols * sizeof(half));
  if (ws.data == nullptr || ws.bytes < x_bytes + size_t{kGemmN} * w.cols * sizeof(half)) {
    throw std::invalid_argument("CUDA matmul: the GEMM workspace (" + std::to_string(ws.bytes) +
                                " bytes) is too small for " + std::to_string(m) + " x " +
                                std::to_string(w.cols));
  }
  half* x_half = static_cast<half*>(ws.data);
  half* w_half = reinterpret_cast<half*>(static_cast<unsigned char*>(ws.data) + x_bytes);
  const size_t w_halves = (ws.bytes - x_bytes) / sizeof(half);
  // Rows per chunk: a multiple of the GEMM's 128 (each chunk is a whole number of blocks).
  const size_t chunk_rows = std::min(w.rows, w_halves / w.cols / size_t{kGemmN} * size_t{kGemmN});

  constexpr int kThreads = 256;
  const size_t x8 = m * w.cols / 8;
  launch_kernel(floats_to_halves_kernel, ceil_div(x8, kThreads), kThreads, 0, stream, x, x8,
                x_half);

  const size_t rb = row_bytes(w.type, w.cols);
  const int k = static_cast<int>(w.cols), mi = static_cast<int>(m);
  // BM = 128 (more arithmetic per shared-memory read) when that still fills every
  // multiprocessor, else 64 (twice the blocks).
  const bool wide = ceil_div(m, 128) * ceil_div(chunk_rows, kGemmN) >=
                    static_cast<unsigned>(multiprocessor_count());
  for (size_t r0 = 0; r0 < w.rows; r0 += chunk_rows) {
    const size_t rows = std::min(chunk_rows, w.rows - r0);
    const auto* src = static_cast<const uint8_t*>(w.data) + r0 * rb;
    dispatch_weight_type(w.type, "CUDA matmul", [&](auto t) {
      constexpr GgmlType T = decltype(t)::value;
      const size_t n8 = rows * w.cols / 8;
      launch_kernel(dequantize_to_halves_kernel<T>, ceil_div(n8, kThreads), kThreads, 0, stream,
                    src, rb, static_cast<int>(rows), k, w_half);
    });
    const int n = static_cast<int>(rows);
    if (wide) {
      launch_hgemm<128>(x_half, w_half, mi, n, k, y + r0, w.rows, stream);
    } else {
      launch_hgemm<64>(x_half, w_half, mi, n, k, y + r0, w.rows, stream);
    }
  }
}

}  // namespace kiln::cuda
