// Decode matrix-vector for Q4_K and Q6_K with integer dot products (dp4a): Y (m, rows) =
// X (m, cols) @ W^T for m <= kMatVecInt8MaxTokens.
//
// The tensor-core matrix-vector kernel (matmul.cu) turns every weight into fp16 before the
// mma; at one token that costs ~3 instructions per 2 weights and kept Q4_K at 0.8-1.3 TB/s on
// an H100. Here the 4- or 6-bit codes stay integers: a lane takes a 32-weight chunk of a row
// (16 bytes of Q4_K codes, or 8 positions of each quarter of a Q6_K half-block) and multiplies
// 4 codes a dp4a with x in int8, one scale per run of 8 values (and the float sum of the run
// for Q4_K's min term). x comes quantized by the RMSNorm that wrote it (QuantizedX), or the
// lane quantizes its chunk of x itself (the other inputs). A lane does the same chunk of 4
// rows, so each lane has 4 rows' loads in flight and shares its x among them.
#include <algorithm>
#include <span>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/gemm.h"

namespace kiln::cuda {

namespace {

// n (a multiple of 4) floats -> int8 with one scale: q = round(x / d), d = max|x| / 127.
// Returns d; *sum gets the float sum of the n values.
template <int N>
__device__ __forceinline__ float quantize_x(const float (&v)[N], uint32_t (&q)[N / 4], float* sum) {
  float amax = 0.0f, s = 0.0f;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    amax = fmaxf(amax, fabsf(v[i]));
    s += v[i];
  }
  *sum = s;
  const float d = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    q[i] = pack_int8x4(__float2int_rn(v[4 * i] * inv), __float2int_rn(v[4 * i + 1] * inv),
                       __float2int_rn(v[4 * i + 2] * inv), __float2int_rn(v[4 * i + 3] * inv));
  }
  return d;
}

template <int N>
__device__ __forceinline__ void load_floats(const float* p, float (&v)[N]) {
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    const float4 f = *reinterpret_cast<const float4*>(p + 4 * i);
    v[4 * i] = f.x;
    v[4 * i + 1] = f.y;
    v[4 * i + 2] = f.z;
    v[4 * i + 3] = f.w;
  }
}

// Byte k (0..11) of the three little-endian words of a Q4_K scale array, k known at run time
// (a byte array indexed at run time would live in local memory).
__device__ __forceinline__ int scale_byte(const uint32_t (&u)[3], int k) {
  const uint32_t w = k < 4 ? u[0] : (k < 8 ? u[1] : u[2]);
  return static_cast<int>((w >> (8 * (k % 4))) & 0xFFu);
}

// ---- Q4_K. Chunk c of a row: super-block c / 8, i = c % 8, 64-element group j = i / 2,
// half h = i % 2: code bytes [32 j + 16 h, +16). Their low nibbles are elements
// 64 j + 16 h + 0..15 (sub-block 2 j), the high nibbles 64 j + 32 + 16 h + 0..15 (2 j + 1).
struct Q4KX {  // x of one token at a chunk: the two 16-element runs, a scale per 8 values
  uint32_t lo[4], hi[4];
  float d[4], sum[4];  // groups: lo words 0-1, lo words 2-3, hi words 0-1, hi words 2-3
};

__device__ __forceinline__ Q4KX quantize_x_q4_k(const float* xt, int chunk) {
  const int b = chunk / 8, i = chunk % 8, j = i / 2, h = i % 2;
  const float* base = xt + 256 * b + 64 * j + 16 * h;
  Q4KX r;
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    float v[8];
    uint32_t q[2];
    load_floats(base + (g < 2 ? 0 : 32) + 8 * (g % 2), v);
    r.d[g] = quantize_x(v, q, &r.sum[g]);
    uint32_t* dst = g < 2 ? r.lo : r.hi;
    dst[2 * (g % 2)] = q[0];
    dst[2 * (g % 2) + 1] = q[1];
  }
  return r;
}

// The same from x quantized ahead (QuantizedX: int8 values, and a scale and a float sum per 8).
__device__ __forceinline__ Q4KX load_x_q4_k(const QuantizedX& xq, size_t row_offset, int chunk) {
  const int b = chunk / 8, i = chunk % 8, j = i / 2, h = i % 2;
  const size_t e = row_offset + 256 * b + 64 * j + 16 * h;
  const uint4 lo = *reinterpret_cast<const uint4*>(xq.q + e);
  const uint4 hi = *reinterpret_cast<const uint4*>(xq.q + e + 32);
  const float2 d_lo = *reinterpret_cast<const float2*>(xq.d + e / 8);
  const float2 d_hi = *reinterpret_cast<const float2*>(xq.d + e / 8 + 4);
  const float2 s_lo = *reinterpret_cast<const float2*>(xq.sum + e / 8);
  const float2 s_hi = *reinterpret_cast<const float2*>(xq.sum + e / 8 + 4);
  return {{lo.x, lo.y, lo.z, lo.w},
          {hi.x, hi.y, hi.z, hi.w},
          {d_lo.x, d_lo.y, d_hi.x, d_hi.y},
          {s_lo.x, s_lo.y, s_hi.x, s_hi.y}};
}

struct Q4KW {
  uint4 head, qs;  // d, dmin, scales[12]; the chunk's 16 code bytes
};

__device__ __forceinline__ Q4KW load_w_q4_k(const uint8_t* row, int chunk) {
  const uint8_t* blk = row + static_cast<size_t>(chunk / 8) * sizeof(block_q4_K);
  const int i = chunk % 8;
  return {*reinterpret_cast<const uint4*>(blk),
          *reinterpret_cast<const uint4*>(blk + offsetof(block_q4_K, qs) + 16 * i)};
}

__device__ __forceinline__ float dot_q4_k(const Q4KW& w, const Q4KX& x, int chunk) {
  const int j = (chunk % 8) / 2;
  const uint32_t q[4] = {w.qs.x, w.qs.y, w.qs.z, w.qs.w};
  int s[4] = {0, 0, 0, 0};  // the four 8-value groups of x.d
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    s[k / 2] = __dp4a(static_cast<int>(q[k] & 0x0F0F0F0Fu), static_cast<int>(x.lo[k]), s[k / 2]);
    s[2 + k / 2] = __dp4a(static_cast<int>((q[k] >> 4) & 0x0F0F0F0Fu), static_cast<int>(x.hi[k]),
                          s[2 + k / 2]);
  }
  const uint32_t sc[3] = {w.head.y, w.head.z, w.head.w};
  // Sub-blocks 2j and 2j + 1: 6-bit scale and min, packed as get_scale_min_k4 reads them.
  int sc_a, m_a, sc_b, m_b;
  if (j < 2) {
    sc_a = scale_byte(sc, 2 * j) & 63;
    m_a = scale_byte(sc, 2 * j + 4) & 63;
    sc_b = scale_byte(sc, 2 * j + 1) & 63;
    m_b = scale_byte(sc, 2 * j + 5) & 63;
  } else {
    const int a = 2 * j, b = 2 * j + 1;
    sc_a = (scale_byte(sc, a + 4) & 0xF) | ((scale_byte(sc, a - 4) >> 6) << 4);
    m_a = (scale_byte(sc, a + 4) >> 4) | ((scale_byte(sc, a) >> 6) << 4);
    sc_b = (scale_byte(sc, b + 4) & 0xF) | ((scale_byte(sc, b - 4) >> 6) << 4);
    m_b = (scale_byte(sc, b + 4) >> 4) | ((scale_byte(sc, b) >> 6) << 4);
  }
  const float d = half_bits_to_float(static_cast<uint16_t>(w.head.x & 0xFFFF));
  const float dmin = half_bits_to_float(static_cast<uint16_t>(w.head.x >> 16));
  const float lo = x.d[0] * static_cast<float>(s[0]) + x.d[1] * static_cast<float>(s[1]);
  const float hi = x.d[2] * static_cast<float>(s[2]) + x.d[3] * static_cast<float>(s[3]);
  return d * (static_cast<float>(sc_a) * lo + static_cast<float>(sc_b) * hi) -
         dmin * (static_cast<float>(m_a) * (x.sum[0] + x.sum[1]) +
                 static_cast<float>(m_b) * (x.sum[2] + x.sum[3]));
}

// ---- Q6_K. Chunk c: block c / 8, i = c % 8, half n = i / 4, l0 = 8 (i % 4): elements
// 128 n + 32 k + l0 + 0..7 for the quarters k = 0..3. Low 4 bits: ql[64 n + l0 + t] (k = 0, 2:
// low / high nibble) and ql[64 n + 32 + l0 + t] (k = 1, 3); high 2 bits: bits 2k of
// qh[32 n + l0 + t]; scale scales[8 n + l0 / 16 + 2 k]. Blocks are 210 bytes, so fields sit at
// 2-byte aligned addresses: 8 bytes are read as three aligned words and a funnel shift.
struct Q6KX {
  uint32_t q[4][2];  // quarter k: 8 int8
  float d[4];
};

__device__ __forceinline__ Q6KX quantize_x_q6_k(const float* xt, int chunk) {
  const int b = chunk / 8, i = chunk % 8, n = i / 4, l0 = 8 * (i % 4);
  Q6KX r;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float v[8], unused;
    load_floats(xt + 256 * b + 128 * n + 32 * k + l0, v);
    r.d[k] = quantize_x(v, r.q[k], &unused);
  }
  return r;
}

__device__ __forceinline__ Q6KX load_x_q6_k(const QuantizedX& xq, size_t row_offset, int chunk) {
  const int b = chunk / 8, i = chunk % 8, n = i / 4, l0 = 8 * (i % 4);
  Q6KX r;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const size_t e = row_offset + 256 * b + 128 * n + 32 * k + l0;
    const uint2 q = *reinterpret_cast<const uint2*>(xq.q + e);
    r.q[k][0] = q.x;
    r.q[k][1] = q.y;
    r.d[k] = xq.d[e / 8];
  }
  return r;
}

__device__ __forceinline__ void load_8_at_2_aligned(const uint8_t* p, uint32_t& lo, uint32_t& hi) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
  const uint32_t shift = static_cast<uint32_t>(a & 3) * 8;
  const uint32_t w0 = base[0], w1 = base[1], w2 = base[2];
  lo = __funnelshift_r(w0, w1, shift);
  hi = __funnelshift_r(w1, w2, shift);
}

struct Q6KW {
  uint32_t a[2], b[2], h[2], s[2];  // ql at 64n + l0, ql at 64n + 32 + l0, qh, scales[8n..]
  uint32_t d;
};

__device__ __forceinline__ Q6KW load_w_q6_k(const uint8_t* row, int chunk) {
  const uint8_t* blk = row + static_cast<size_t>(chunk / 8) * sizeof(block_q6_K);
  const int i = chunk % 8, n = i / 4, l0 = 8 * (i % 4);
  Q6KW w;
  load_8_at_2_aligned(blk + offsetof(block_q6_K, ql) + 64 * n + l0, w.a[0], w.a[1]);
  load_8_at_2_aligned(blk + offsetof(block_q6_K, ql) + 64 * n + 32 + l0, w.b[0], w.b[1]);
  load_8_at_2_aligned(blk + offsetof(block_q6_K, qh) + 32 * n + l0, w.h[0], w.h[1]);
  load_8_at_2_aligned(blk + offsetof(block_q6_K, scales) + 8 * n, w.s[0], w.s[1]);
  w.d = load_u16(blk + offsetof(block_q6_K, d));
  return w;
}

__device__ __forceinline__ float dot_q6_k(const Q6KW& w, const Q6KX& x, int chunk) {
  const int r0 = (8 * (chunk % 4)) / 16;  // l0 / 16: which 16-group of the quarter
  float acc = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    int s = 0;
#pragma unroll
    for (int word = 0; word < 2; ++word) {
      const uint32_t low = k % 2 == 0 ? w.a[word] : w.b[word];
      const uint32_t q4 = (k < 2 ? low : low >> 4) & 0x0F0F0F0Fu;
      const uint32_t q2 = (w.h[word] >> (2 * k)) & 0x03030303u;
      const uint32_t q6 = __vsub4(q4 | (q2 << 4), 0x20202020u);  // bytes q - 32, signed
      s = __dp4a(static_cast<int>(q6), static_cast<int>(x.q[k][word]), s);
    }
    // scales[8n + r0 + 2k]: bytes r0 + 2k of the 8 loaded (words s[0], s[1]).
    const int sb = r0 + 2 * k;
    const uint32_t sw = sb < 4 ? w.s[0] : w.s[1];
    const int sc = static_cast<int8_t>((sw >> (8 * (sb % 4))) & 0xFFu);
    acc += static_cast<float>(sc) * x.d[k] * static_cast<float>(s);
  }
  return half_bits_to_float(static_cast<uint16_t>(w.d)) * acc;
}

__device__ __forceinline__ float silu(float g) { return __fdividef(g, 1.0f + __expf(-g)); }

// One launch covers up to three matrices with the same input (Q, K and V), or the gate and up
// matrices of the FFN with the SwiGLU product applied (`swiglu`). A block has kInt8Slots row
// slots: rows r0 .. r0 + 3 of one matrix, or in swiglu mode rows r0, r0 + 1 of the gate
// (slots 0, 1) and of the up matrix (slots 2, 3). Its four warps split the rows' chunks, so a
// lane has one or two chunks of a 3072-8192 wide row and issues every row's loads at once.
constexpr int kInt8Threads = 128;
constexpr int kInt8Slots = 4;

struct Int8Part {
  const uint8_t* w;
  size_t row_bytes;
  int rows;
  GgmlType type;
  float* y;            // (m, rows)
  unsigned block_end;  // blocks [previous block_end, block_end) are this part's
};
struct Int8Args {
  Int8Part part[3];
  int n_parts;
  int cols;
  const float* x;  // (m, cols)
  int m;
  bool swiglu;    // part[0] gate, part[1] up: part[1].y = silu(x W_gate^T) * (x W_up^T)
  QuantizedX xq;  // x quantized ahead (by the RMSNorm before), or q null: quantize here
};

// The per-type pieces of a chunk, picked once by type: the weights' loads, x (quantized ahead
// or here) and their dot product.
template <GgmlType T>
struct Int8Chunk;
template <>
struct Int8Chunk<GgmlType::Q4_K> {
  using W = Q4KW;
  using X = Q4KX;
  static __device__ W load_w(const uint8_t* row, int c) { return load_w_q4_k(row, c); }
  static __device__ X load_x(const QuantizedX& xq, size_t at, int c) {
    return load_x_q4_k(xq, at, c);
  }
  static __device__ X quantize(const float* xt, int c) { return quantize_x_q4_k(xt, c); }
  static __device__ float dot(const W& w, const X& x, int c) { return dot_q4_k(w, x, c); }
};
template <>
struct Int8Chunk<GgmlType::Q6_K> {
  using W = Q6KW;
  using X = Q6KX;
  static __device__ W load_w(const uint8_t* row, int c) { return load_w_q6_k(row, c); }
  static __device__ X load_x(const QuantizedX& xq, size_t at, int c) {
    return load_x_q6_k(xq, at, c);
  }
  static __device__ X quantize(const float* xt, int c) { return quantize_x_q6_k(xt, c); }
  static __device__ float dot(const W& w, const X& x, int c) { return dot_q6_k(w, x, c); }
};

// Every row's loads of a chunk first, then the arithmetic. Weights never change, so the first
// chunk is requested before waiting for the kernel that wrote x: with programmatic dependent
// launch these loads overlap the previous kernels.
template <GgmlType T, int NT, bool kAhead>
__device__ __forceinline__ void accumulate_chunks(const uint8_t* const (&rows)[kInt8Slots],
                                                  const float* x, const QuantizedX& xq, int cols,
                                                  int m, float (&acc)[kInt8Slots][NT]) {
  using C = Int8Chunk<T>;
  typename C::W wv[kInt8Slots];
  const int chunks = cols / 32;
  auto load = [&](int c) {
#pragma unroll
    for (int r = 0; r < kInt8Slots; ++r) wv[r] = C::load_w(rows[r], c);
  };
  if (static_cast<int>(threadIdx.x) < chunks) load(threadIdx.x);
  wait_for_previous_kernels();
  for (int c = threadIdx.x; c < chunks; c += kInt8Threads) {
    if (c != static_cast<int>(threadIdx.x)) load(c);  // rows of more than 4,096 columns
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < m) {
        const size_t at = static_cast<size_t>(t) * cols;
        const typename C::X xv = kAhead ? C::load_x(xq, at, c) : C::quantize(x + at, c);
#pragma unroll
        for (int r = 0; r < kInt8Slots; ++r) acc[r][t] += C::dot(wv[r], xv, c);
      }
    }
  }
}

// Resident blocks matter more here than loads in flight per thread (each block issues its
// loads once and waits a memory round trip): with at most 80 registers a thread (24 bytes
// spilled) 6 blocks fit a multiprocessor instead of 5, and the Llama-3.2-3B decode ran
// 589-593 tokens/s on an H100 instead of 518-526 (uncapped, with the two chunks of an
// 8,192-wide row loaded ahead: 127 registers). 7 blocks gave 584, 8 (220 bytes spilled) 530.
constexpr int kInt8MinBlocks = 6;

template <int NT>
__global__ void __launch_bounds__(kInt8Threads, kInt8MinBlocks)
    matvec_int8_kernel(const Int8Args args) {
  __shared__ float partial[kInt8Threads / kWarpSize][kInt8Slots][NT];
  // Up to the wait in accumulate_chunks only weights are read (see begin_kernel).
  allow_next_kernel_launch();
  int pi = 0;
  while (pi + 1 < args.n_parts && blockIdx.x >= args.part[pi].block_end) ++pi;
  const unsigned first = pi == 0 ? 0u : args.part[pi - 1].block_end;
  const uint8_t* rows[kInt8Slots];
  bool ok[kInt8Slots];
  int r0;
  if (args.swiglu) {
    r0 = static_cast<int>(blockIdx.x) * 2;
#pragma unroll
    for (int s = 0; s < kInt8Slots; ++s) {
      const Int8Part& p = args.part[s / 2];
      const int row = r0 + s % 2;
      ok[s] = row < p.rows;
      rows[s] = p.w + static_cast<size_t>(ok[s] ? row : 0) * p.row_bytes;
    }
  } else {
    const Int8Part& p = args.part[pi];
    r0 = static_cast<int>(blockIdx.x - first) * kInt8Slots;
#pragma unroll
    for (int s = 0; s < kInt8Slots; ++s) {
      ok[s] = r0 + s < p.rows;  // rows past the end read row 0 again and are not written
      rows[s] = p.w + static_cast<size_t>(ok[s] ? r0 + s : 0) * p.row_bytes;
    }
  }
  float acc[kInt8Slots][NT];
#pragma unroll
  for (int s = 0; s < kInt8Slots; ++s) {
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[s][t] = 0.0f;
  }
  // Measured on an H100: applying the RMSNorm here (every block summing x^2 over the whole row
  // and scaling by the norm weights) cost more than the separate norm kernel it replaced.
  const bool q4 = args.part[pi].type == GgmlType::Q4_K;
  if (args.xq.q != nullptr) {
    if (q4) {
      accumulate_chunks<GgmlType::Q4_K, NT, true>(rows, args.x, args.xq, args.cols, args.m, acc);
    } else {
      accumulate_chunks<GgmlType::Q6_K, NT, true>(rows, args.x, args.xq, args.cols, args.m, acc);
    }
  } else if (q4) {
    accumulate_chunks<GgmlType::Q4_K, NT, false>(rows, args.x, args.xq, args.cols, args.m, acc);
  } else {
    accumulate_chunks<GgmlType::Q6_K, NT, false>(rows, args.x, args.xq, args.cols, args.m, acc);
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int s = 0; s < kInt8Slots; ++s) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float v = warp_sum(acc[s][t]);
      if (lane == 0) partial[warp][s][t] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x >= kInt8Slots * NT) return;
  const int s = threadIdx.x / NT, t = threadIdx.x % NT;
  if (t >= args.m || !ok[s]) return;
  auto total = [&](int slot) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kInt8Threads / kWarpSize; ++w) sum += partial[w][slot][t];
    return sum;
  };
  if (args.swiglu) {
    if (s >= 2) return;  // slots 0, 1 finish their row: y = silu(gate) * up
    const Int8Part& up = args.part[1];
    up.y[static_cast<size_t>(t) * up.rows + r0 + s] = silu(total(s)) * total(s + 2);
  } else {
    const Int8Part& p = args.part[pi];
    p.y[static_cast<size_t>(t) * p.rows + r0 + s] = total(s);
  }
}

Int8Part int8_part(const DeviceMatrix& w, float* y, unsigned block_end) {
  return {static_cast<const uint8_t*>(w.data),
          row_bytes(w.type, w.cols),
          static_cast<int>(w.rows),
          w.type,
          y,
          block_end};
}

void launch_int8(const Int8Args& args, unsigned blocks, cudaStream_t stream) {
  static_assert(kMatVecInt8MaxTokens == 1, "instantiate matvec_int8_kernel for more tokens");
  launch_kernel(matvec_int8_kernel<1>, blocks, kInt8Threads, 0, stream, args);
}

void check_int8(const DeviceMatrix& w, size_t m, size_t cols) {
  if (!has_int8_matvec(w.type) || m == 0 || m > kMatVecInt8MaxTokens || w.cols != cols) {
    throw std::invalid_argument("CUDA int8 matrix-vector: " + std::string(type_name(w.type)) +
                                " with " + std::to_string(m) + " tokens and " +
                                std::to_string(w.cols) + " columns is not supported");
  }
}

}  // namespace

bool has_int8_matvec(GgmlType type) { return type == GgmlType::Q4_K || type == GgmlType::Q6_K; }

void launch_matvec_int8(std::span<const DeviceMatrix> ws, std::span<float* const> ys,
                        const float* x, const QuantizedX& xq, size_t m, cudaStream_t stream) {
  if (ws.empty() || ws.size() > 3 || ys.size() != ws.size()) {
    throw std::invalid_argument("CUDA int8 matrix-vector: 1 to 3 matrices, one output each");
  }
  Int8Args args{};
  unsigned blocks = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    check_int8(ws[i], m, ws[0].cols);
    blocks += ceil_div(ws[i].rows, kInt8Slots);
    args.part[i] = int8_part(ws[i], ys[i], blocks);
  }
  args.n_parts = static_cast<int>(ws.size());
  args.cols = static_cast<int>(ws[0].cols);
  args.x = x;
  args.m = static_cast<int>(m);
  args.xq = xq;
  launch_int8(args, blocks, stream);
}

void launch_matvec_int8_swiglu(const DeviceMatrix& gate, const DeviceMatrix& up, const float* x,
                               const QuantizedX& xq, size_t m, float* y, cudaStream_t stream) {
  check_int8(gate, m, up.cols);
  check_int8(up, m, gate.cols);
  if (gate.rows != up.rows || gate.type != up.type) {
    throw std::invalid_argument("CUDA int8 SwiGLU: gate and up differ in rows or type");
  }
  Int8Args args{};
  const unsigned blocks = ceil_div(gate.rows, 2);
  args.part[0] = int8_part(gate, nullptr, blocks);
  args.part[1] = int8_part(up, y, blocks);
  args.n_parts = 2;
  args.cols = static_cast<int>(gate.cols);
  args.x = x;
  args.m = static_cast<int>(m);
  args.swiglu = true;
  args.xq = xq;
  launch_int8(args, blocks, stream);
}

}  // namespace kiln::cuda
