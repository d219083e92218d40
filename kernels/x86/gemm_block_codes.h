// Weight blocks as the GEMM panels read them, shared by the AVX-512 (avx512_gemm.cpp) and AVX2
// (avx2_gemm.cpp) panels.
//
// The K super-blocks (Q4_K, Q5_K, Q6_K): a row's 256 codes in element order, unsigned, and its
// integer scales and mins, so that
//   dot(row, a) = d da sum_sb scale_sb (codes . a)_sb - dmin da sum_g min16_g bsum_g
// (g: the 16-element groups of block_q8_K's bsums). Q6_K's -32 offset is a min term with
// min16 = 32 scale and dmin = d.
//
// Include this INSIDE an unnamed namespace, after <immintrin.h> and kernels/blocks.h (for the
// same reason as simd_unpack.h, which it includes: each including file has its own target
// flags, so these must have internal linkage).
#pragma once

#include "kernels/x86/simd_unpack.h"

// The pre-packed panels' common walk (GemmPackFn): the panel's panel_bytes zeroed (absent
// rows stay zero), then pack(block, r, i) for block i of each row r < n_rows.
template <typename Block, typename Pack>
inline void pack_panel_blocks(size_t n_blocks, const std::byte* w, size_t w_row_bytes, int n_rows,
                              std::byte* panel, size_t panel_bytes, Pack&& pack) {
  std::memset(panel, 0, panel_bytes);
  for (int r = 0; r < n_rows; ++r) {
    const auto* blocks = reinterpret_cast<const Block*>(w + static_cast<size_t>(r) * w_row_bytes);
    for (size_t i = 0; i < n_blocks; ++i) pack(blocks[i], r, i);
  }
}

// 6-bit scale and min of sub-block s of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
inline void scale_min_k4(int s, const uint8_t* q, int& scale, int& min) {
  if (s < 4) {
    scale = q[s] & 63;
    min = q[s + 4] & 63;
  } else {
    scale = (q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4);
    min = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}

// scale of each sub-block (kSubBlocks of them), min16 of each 16-element group, d and dmin.
struct KScales {
  int scale[16];
  int min16[16];
  float d, dmin;
};

template <typename Block>
inline KScales k4_scales(const Block& b) {
  KScales k;
  for (int s = 0; s < 8; ++s) {
    int min;
    scale_min_k4(s, b.scales, k.scale[s], min);
    k.min16[2 * s] = k.min16[2 * s + 1] = min;
  }
  k.d = half_to_float(b.d);
  k.dmin = half_to_float(b.dmin);
  return k;
}

template <typename Block>
struct KCodes;

template <>
struct KCodes<block_q4_K> {
  static constexpr int kSubBlocks = 8;  // of 32 elements
  static void codes(const block_q4_K& b, uint8_t* out) {
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    for (int j = 0; j < 4; ++j) {
      const __m256i q = load256(b.qs + 32 * j);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64 * j), _mm256_and_si256(q, low_mask));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64 * j + 32),
                          _mm256_and_si256(_mm256_srli_epi16(q, 4), low_mask));
    }
  }
  static KScales scales(const block_q4_K& b) { return k4_scales(b); }
};

template <>
struct KCodes<block_q5_K> {
  static constexpr int kSubBlocks = 8;
  static void codes(const block_q5_K& b, uint8_t* out) {
    const __m256i low_mask = _mm256_set1_epi8(0x0F);
    const __m256i one = _mm256_set1_epi8(1);
    __m256i high_bits = load256(b.qh);
    for (int j = 0; j < 4; ++j) {
      // Bit s of qh[l] is the fifth bit of element l of sub-block s (here s = 2j, 2j + 1).
      const __m256i q = load256(b.qs + 32 * j);
      const __m256i bit_low = _mm256_slli_epi16(_mm256_and_si256(high_bits, one), 4);
      const __m256i bit_high =
          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high_bits, 1), one), 4);
      high_bits = _mm256_srli_epi16(high_bits, 2);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64 * j),
                          _mm256_or_si256(_mm256_and_si256(q, low_mask), bit_low));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(out + 64 * j + 32),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low_mask), bit_high));
    }
  }
  static KScales scales(const block_q5_K& b) { return k4_scales(b); }
};

template <>
struct KCodes<block_q6_K> {
  static constexpr int kSubBlocks = 16;  // of 16 elements
  static void codes(const block_q6_K& b, uint8_t* out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m2 = _mm256_set1_epi8(0x03);
    const __m256i m2_shifted = _mm256_set1_epi8(0x0C);
    const __m256i m2_high = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
      const __m256i qh = load256(b.qh + 32 * h);
      const __m256i ql_a = load256(b.ql + 64 * h);
      const __m256i ql_b = load256(b.ql + 64 * h + 32);
      const __m256i q[4] = {_mm256_or_si256(_mm256_and_si256(ql_a, m4),
                                            _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
                            _mm256_or_si256(_mm256_and_si256(ql_b, m4),
                                            _mm256_slli_epi16(_mm256_and_si256(qh, m2_shifted), 2)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_a, 4), m4),
                                            _mm256_and_si256(qh, m2_high)),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_b, 4), m4),
                                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2_high))};
      for (int k = 0; k < 4; ++k) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 128 * h + 32 * k), q[k]);
      }
    }
  }
  // Codes are q + 32: the offset returns as a min term 32 * scale with dmin = d.
  static KScales scales(const block_q6_K& b) {
    KScales k;
    for (int s = 0; s < 16; ++s) {
      k.scale[s] = b.scales[s];
      k.min16[s] = 32 * b.scales[s];
    }
    k.d = half_to_float(b.d);
    k.dmin = k.d;
    return k;
  }
};

// The legacy 32-element blocks. codes(b): the block's 32 codes as the panels use them, q +
// kOffset (unsigned); the panels' c (the coefficient of the activation block's s = da sum(a))
// is m, or -kOffset d.
template <typename Block>
struct LCodes;

template <>
struct LCodes<block_q8_0> {
  static constexpr int kOffset = 128;
  static __m256i codes(const block_q8_0& b) {
    return _mm256_xor_si256(load256(b.qs), _mm256_set1_epi8(-128));  // q + 128
  }
};
template <>
struct LCodes<block_q4_0> {
  static constexpr int kOffset = 8;
  static __m256i codes(const block_q4_0& b) { return unpack_nibbles_32(b.qs); }
};
template <>
struct LCodes<block_q4_1> {
  static constexpr int kOffset = 0;
  static __m256i codes(const block_q4_1& b) { return unpack_nibbles_32(b.qs); }
};
template <>
struct LCodes<block_q5_0> {
  static constexpr int kOffset = 16;
  static __m256i codes(const block_q5_0& b) {
    return _mm256_or_si256(unpack_nibbles_32(b.qs), expand_high_bits_32(b.qh));
  }
};
template <>
struct LCodes<block_q5_1> {
  static constexpr int kOffset = 0;
  static __m256i codes(const block_q5_1& b) {
    return _mm256_or_si256(unpack_nibbles_32(b.qs), expand_high_bits_32(b.qh));
  }
};
