// Helpers shared by the AVX-512 kernel files (avx512_dot.cpp, avx512_gemm.cpp): the vpermw
// index that spreads per-sub-block scales over lanes.
//
// Include this INSIDE an unnamed namespace, after kernels/x86/simd_unpack.h, and only in
// files compiled with AVX-512 flags (internal linkage, for the reason simd_unpack.h gives).
#pragma once

// Index vector for vpermw: int16 lane k of the result takes lane first + k / per_lane.
inline __m512i word_index(int first, int per) {
  alignas(64) int16_t idx[32];
  for (int k = 0; k < 32; ++k) idx[k] = static_cast<int16_t>(first + k / per);
  return _mm512_load_si512(idx);
}
