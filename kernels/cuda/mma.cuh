// Tensor-core and asynchronous-copy pieces shared by the GEMM, the matrix-vector kernels and
// the prefill attention: mma.m16n8k16 (fp16 in, fp32 accumulators), ldmatrix, cp.async.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, p = lane % 4), which every caller relies on:
//   A (16 x 16, row-major): a0 = (row g, cols 2p, 2p+1), a1 = (row g + 8, same cols),
//                           a2 = (row g, cols 2p + 8, 2p + 9), a3 = (row g + 8, same cols);
//   B (16 x 8, "col"):      b0 = (rows 2p, 2p + 1, col g), b1 = (rows 2p + 8, 2p + 9, col g);
//   C (16 x 8):             c0, c1 = (row g, cols 2p, 2p + 1), c2, c3 = (row g + 8, same cols).
// So the C of two adjacent n8 tiles is, packed to fp16, the A of one k16 step (used by the
// attention's P V).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace kiln::cuda {

// c += A B with fp32 accumulators.
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                             uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  mma_m16n8k16(c, a[0], a[1], a[2], a[3], b0, b1);
}

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ __half2 bits_half2(uint32_t u) {
  return *reinterpret_cast<const __half2*>(&u);
}
// Two floats as one fp16 pair (lo in the low half): an mma operand register.
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  return half2_bits(__floats2half2_rn(lo, hi));
}

// Two floats as fp16 pairs hi + lo with hi + lo = the floats to ~2^-22 relative (lo holds
// what rounding to fp16 lost): two mmas with hi and lo give a near-fp32 operand.
__device__ __forceinline__ void split_half2(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 back = __half22float2(h);
  hi = half2_bits(h);
  lo = pack_half2(a - back.x, b - back.y);
}

// Four 8x8 fp16 matrices from shared memory; lanes 8j .. 8j + 7 give the row addresses of
// matrix j, and register j of lane l gets (row l / 4, cols 2 (l % 4), +1) of matrix j.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const half* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
// The same, transposed: register j of lane l gets (rows 2 (l % 4), +1, col l / 4) of matrix j
// (a B operand from a matrix stored with its K index as the row).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const half* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// 16 bytes global -> shared without passing through registers; valid false zero-fills them.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(global), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace kiln::cuda
