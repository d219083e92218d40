// Helpers shared by the AVX-512 kernel files (avx512_dot.cpp, avx512_gemm.cpp): the Q4_K
// scale unpacking and the vpermw index that spreads per-sub-block scales over lanes.
//
// Include this INSIDE an unnamed namespace, after kernels/x86/simd_unpack.h, and only in
// files compiled with AVX-512 flags (internal linkage, for the reason simd_unpack.h gives).
#pragma once

// The 12 packed bytes -> 8 scales and 8 mins as 16 int16 (scales 0..7, then mins 0..7),
// the same unpacking as get_scale_min_k4. All in vector registers: building the words in
// memory and loading them as one vector stalls on store forwarding (several narrow stores
// feeding one wide load), which cost the few-token kernels more than their arithmetic.
// `packed` must have 4 readable bytes before it (a Q4_K/Q5_K block's d and dmin).
inline __m256i unpack_q4_K_scales_mins16(const uint8_t packed[12]) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed - 4));
  // Words of x: [d dmin, in0, in1, in2].
  const __m128i p = _mm_shuffle_epi32(x, _MM_SHUFFLE(3, 2, 3, 1));  // [in0, in2, in1, in2]
  const __m128i q = _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 2, 1, 1));  // [in0, in0, in1, in1]
  const __m128i k6 = _mm_set1_epi8(0x3f), k4 = _mm_set1_epi8(0x0f), k2 = _mm_set1_epi8(0x03);
  const __m128i low = _mm_and_si128(p, k6);  // words 0 and 2: in0 & k6, in1 & k6
  const __m128i high = _mm_or_si128(         // words 1 and 3
      _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)), k4),
      _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(q, 6), k2), 4));
  return _mm256_cvtepu8_epi16(_mm_blend_epi32(low, high, 0b1010));
}

// Index vector for vpermw: int16 lane k of the result takes lane first + k / per_lane.
inline __m512i word_index(int first, int per) {
  alignas(64) int16_t idx[32];
  for (int k = 0; k < 32; ++k) idx[k] = static_cast<int16_t>(first + k / per);
  return _mm512_load_si512(idx);
}
