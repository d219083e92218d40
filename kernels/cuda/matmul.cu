// Matrix multiplication of GGUF weights (kept in their block format on the device) with float
// activations: Y (m, rows) = X (m, cols) @ W^T, the CUDA twin of kernels::matmul.
//
// Decode (m <= kMatVecMaxTokens): one warp per weight row; lane l takes the 8-element chunks
// l, l + 32, ... of the row, so a warp reads a contiguous stretch of the row per step, and
// each dequantized chunk is used for up to 8 tokens before the next is read. Dequantize-
// and-FMA in float: for m this small the kernel is bound by reading the weights once.
// Prefill: 64x64 output tiles; each k-step dequantizes a 64x32 weight tile and converts a
// 32-wide slice of X to fp16 in shared memory, then 4 warps multiply them on the tensor cores
// (wmma 16x16x16, fp32 accumulate).
#include <mma.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/launch.h"

namespace kiln::cuda {

namespace {

constexpr int kMatVecWarps = 4;  // rows per block of the matrix-vector kernel

template <GgmlType T, int NT>
__global__ void __launch_bounds__(kMatVecWarps* kWarpSize)
    matvec_kernel(const uint8_t* w, size_t row_bytes, int rows, int cols, const float* x, int m,
                  float* y) {
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

constexpr int kTileM = 64;   // tokens per tile
constexpr int kTileN = 64;   // weight rows per tile
constexpr int kTileK = 32;   // columns per k-step
constexpr int kTilePad = 8;  // halves of padding per shared row (bank spread, keeps 32 B align)
constexpr int kTileThreads = 128;

template <GgmlType T>
__global__ void __launch_bounds__(kTileThreads)
    matmul_tc_kernel(const uint8_t* w, size_t row_bytes, int rows, int cols, const float* x, int m,
                     float* y) {
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

}  // namespace

void launch_matmul(const DeviceMatrix& w, const float* x, size_t m, float* y, cudaStream_t stream,
                   MatmulPath path) {
  check_matmul_shape(w);
  if (m == 0) return;
  check_alignment(w.data, "the weight matrix");
  check_alignment(x, "the activations");
  const bool matvec =
      path == MatmulPath::kMatVec || (path == MatmulPath::kAuto && m <= kMatVecMaxTokens);
  const size_t rb = row_bytes(w.type, w.cols);
  const auto* data = static_cast<const uint8_t*>(w.data);
  const int rows = static_cast<int>(w.rows), cols = static_cast<int>(w.cols);
  const int mi = static_cast<int>(m);
  dispatch_weight_type(w.type, "CUDA matmul", [&](auto t) {
    constexpr GgmlType T = decltype(t)::value;
    if (matvec) {
      const unsigned blocks = ceil_div(w.rows, kMatVecWarps);
      if (m == 1) {
        matvec_kernel<T, 1>
            <<<blocks, kMatVecWarps * kWarpSize, 0, stream>>>(data, rb, rows, cols, x, mi, y);
      } else {
        matvec_kernel<T, 8>
            <<<blocks, kMatVecWarps * kWarpSize, 0, stream>>>(data, rb, rows, cols, x, mi, y);
      }
    } else {
      const dim3 grid(ceil_div(w.rows, kTileN), ceil_div(m, kTileM));
      matmul_tc_kernel<T><<<grid, kTileThreads, 0, stream>>>(data, rb, rows, cols, x, mi, y);
    }
  });
  KILN_CUDA_CHECK_LAUNCH();
}

size_t matmul_bytes(const DeviceMatrix& w, size_t m) {
  return w.rows * row_bytes(w.type, w.cols) + m * w.cols * sizeof(float) +
         m * w.rows * sizeof(float);
}

}  // namespace kiln::cuda
