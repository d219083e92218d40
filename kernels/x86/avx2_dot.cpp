// AVX2/FMA dot-product kernels (x86-64).
//
// Integer work uses intrinsics because xsimd has no equivalent of the instructions these
// kernels are built on:
//   _mm256_maddubs_epi16(u8, i8): multiplies unsigned weight codes by signed activation
//       quants and adds adjacent pairs into int16 (no overflow here: |pair| <= 2*63*127);
//   _mm256_madd_epi16(i16, i16): multiplies int16 pairs and adds them into int32 (used to
//       apply per-sub-block integer scales and to widen);
//   _mm256_sign_epi8: applies the sign of one vector to another, so signed weights can go
//       through maddubs as |w| * (a * sign(w)) (activations are never -128, so negating
//       them is exact).
// Float accumulation and horizontal sums use xsimd. Each kernel is a template over the
// number of activation rows (1..4) sharing each unpacked weight block.
//
// Compiled only when the build targets AVX2+FMA+F16C; dot_kernel_avx2 also checks the
// running CPU once, so a binary built with the flags but run elsewhere falls back cleanly.
#include "kernels/dot.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "kernels/blocks.h"
#include "kernels/f16.h"

namespace kiln::kernels {
namespace {

using floatv = xsimd::batch<float, xsimd::avx2>;

inline float hsum(__m256 v) { return xsimd::hadd(floatv(v)); }
inline float hsum(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

// fp16 -> fp32 with the F16C instruction (the portable fp16_to_fp32 branches on the class).
#include "kernels/x86/simd_unpack.h"

// Sum of (signed w) * (signed a) over 32 int8 pairs, as 8 int32 lanes.
inline __m256i dot_i8_i8(__m256i w, __m256i a) {
  const __m256i abs_w = _mm256_sign_epi8(w, w);
  const __m256i signed_a = _mm256_sign_epi8(a, w);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(abs_w, signed_a), _mm256_set1_epi16(1));
}
// Sum of (unsigned w) * (signed a) over 32 pairs, as 8 int32 lanes.
inline __m256i dot_u8_i8(__m256i w, __m256i a) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
}

// ---- Legacy 32-element types x block_q8_act -------------------------------------------

// Every legacy block starts with its fp16 d (and, for Q4_1/Q5_1, m right after it): one
// 4-byte load and one conversion give [d, m or junk, 0, 0].
template <typename Block>
inline __m128 block_d_m(const Block& b) {
  uint32_t bits;
  std::memcpy(&bits, &b, 4);
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits)));
}

template <typename Block, int NT>
void dot_legacy_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                     float* out) {
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const block_q8_act* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_act*>(act + t * act_stride);
  constexpr bool kHasMin = Legacy<Block>::kUnsigned;
  __m256 acc[NT];
  __m128 acc_min[NT];  // lane 1 sums m * s
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    acc_min[t] = _mm_setzero_ps();
  }
  const size_t n_blocks = cols / QK8_0;
  for (size_t i = 0; i < n_blocks; ++i) {
    const __m256i q = Legacy<Block>::weights(w[i]);
    const __m128 d_m = block_d_m(w[i]);
    for (int t = 0; t < NT; ++t) {
      const __m256i qa = load256(a[t][i].qs);
      const __m256i sum = kHasMin ? dot_u8_i8(q, qa) : dot_i8_i8(q, qa);
      // [d * d_a, m * s_a] in one multiply (block_q8_act keeps d and s adjacent).
      const __m128 a_d_s = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(&a[t][i].d)));
      const __m128 scales = _mm_mul_ps(d_m, a_d_s);
      acc[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(scales), _mm256_cvtepi32_ps(sum), acc[t]);
      if constexpr (kHasMin) acc_min[t] = _mm_add_ps(acc_min[t], scales);
    }
  }
  for (int t = 0; t < NT; ++t) {
    out[t] = hsum(acc[t]);
    if constexpr (kHasMin) out[t] += _mm_cvtss_f32(_mm_movehdup_ps(acc_min[t]));
  }
}

// ---- Q4_K x Q8_K -----------------------------------------------------------------------

// Shuffle masks that broadcast int16 lane s (bytes 2s, 2s+1) to all 16 lanes.
inline __m256i broadcast_word_mask(int s) {
  const auto lo = static_cast<char>(2 * s), hi = static_cast<char>(2 * s + 1);
  return _mm256_setr_epi8(lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi,
                          lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi);
}

// Q4_K and Q5_K: 4-bit codes (plus, for Q5_K, a fifth bit from qh) with 6-bit scales and
// mins per 32-element sub-block.
template <typename Block, int NT>
void dot_q45_K_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                    float* out) {
  constexpr bool kFifthBit = std::is_same_v<Block, block_q5_K>;
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_K*>(act + t * act_stride);
  __m256 acc[NT];
  __m128 acc_min[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    acc_min[t] = _mm_setzero_ps();
  }
  const __m256i low_mask = _mm256_set1_epi8(0x0F);
  const size_t n_blocks = cols / QK_K;
  for (size_t i = 0; i < n_blocks; ++i) {
    const Block& b = w[i];
    const float d = half_to_float(b.d);
    const float dmin = half_to_float(b.dmin);
    __m256i high_bits = _mm256_setzero_si256();
    if constexpr (kFifthBit) high_bits = load256(b.qh);
    const __m256i scales_mins = _mm256_cvtepu8_epi16(unpack_q4_K_scales_mins(b.scales));
    const __m128i mins = _mm256_extracti128_si256(scales_mins, 1);
    const __m256i scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(scales_mins));

    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) {
      // Min term: sum over the 8 sub-blocks of min * (activation sum of the sub-block).
      const __m256i bsums = load256(a[t][i].bsums);
      const __m128i pair_sums =
          _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
      const __m128i min_prod = _mm_madd_epi16(mins, pair_sums);
      acc_min[t] =
          _mm_fmadd_ps(_mm_set1_ps(dmin * a[t][i].d), _mm_cvtepi32_ps(min_prod), acc_min[t]);
      sumi[t] = _mm256_setzero_si256();
    }
    for (int j = 0; j < 4; ++j) {
      // 64 elements: sub-block 2j in the low nibbles, 2j + 1 in the high nibbles.
      const __m256i q4 = load256(b.qs + 32 * j);
      __m256i q_low = _mm256_and_si256(q4, low_mask);
      __m256i q_high = _mm256_and_si256(_mm256_srli_epi16(q4, 4), low_mask);
      if constexpr (kFifthBit) {
        // Bit s of qh[l] is the fifth bit of element l of sub-block s (here s = 2j, 2j + 1).
        const __m256i one = _mm256_set1_epi8(1);
        const __m256i bit_low = _mm256_and_si256(high_bits, one);
        const __m256i bit_high = _mm256_and_si256(_mm256_srli_epi16(high_bits, 1), one);
        q_low = _mm256_or_si256(q_low, _mm256_slli_epi16(bit_low, 4));
        q_high = _mm256_or_si256(q_high, _mm256_slli_epi16(bit_high, 4));
        high_bits = _mm256_srli_epi16(high_bits, 2);
      }
      const __m256i scale_low = _mm256_shuffle_epi8(scales, broadcast_word_mask(2 * j));
      const __m256i scale_high = _mm256_shuffle_epi8(scales, broadcast_word_mask(2 * j + 1));
      for (int t = 0; t < NT; ++t) {
        const __m256i a_low = load256(a[t][i].qs + 64 * j);
        const __m256i a_high = load256(a[t][i].qs + 64 * j + 32);
        const __m256i p_low = _mm256_madd_epi16(scale_low, _mm256_maddubs_epi16(q_low, a_low));
        const __m256i p_high = _mm256_madd_epi16(scale_high, _mm256_maddubs_epi16(q_high, a_high));
        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_low, p_high));
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[t][i].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]) - hsum(acc_min[t]);
}

// ---- Q6_K x Q8_K -----------------------------------------------------------------------

// Shuffle mask giving int8 scales [2g x 8, 2g + 1 x 8]: the two 16-element sub-blocks of
// the g-th group of 32 elements.
inline __m128i sub_block_pair_mask(int g) {
  const auto a = static_cast<char>(2 * g), b = static_cast<char>(2 * g + 1);
  return _mm_setr_epi8(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
}

template <int NT>
void dot_q6_K_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                   float* out) {
  const auto* w = reinterpret_cast<const block_q6_K*>(w_row);
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_K*>(act + t * act_stride);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const __m256i m2_shifted = _mm256_set1_epi8(0x0C);
  const __m256i m2_high = _mm256_set1_epi8(0x30);
  const size_t n_blocks = cols / QK_K;
  for (size_t i = 0; i < n_blocks; ++i) {
    const block_q6_K& b = w[i];
    const float d = half_to_float(b.d);
    const __m128i scales8 = load128(b.scales);
    // Codes are stored as q + 32 (0..63) so they can go through maddubs unsigned; the
    // offset comes back out as 32 * sum over sub-blocks of scale * (activation sum).
    const __m256i scales16 = _mm256_cvtepi8_epi16(scales8);
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) {
      const __m256i offset = _mm256_madd_epi16(scales16, load256(a[t][i].bsums));
      sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
    }
    for (int h = 0; h < 2; ++h) {
      const __m256i qh = load256(b.qh + 32 * h);
      const __m256i ql_a = load256(b.ql + 64 * h);
      const __m256i ql_b = load256(b.ql + 64 * h + 32);
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(ql_a, m4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(ql_b, m4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, m2_shifted), 2));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_a, 4), m4),
                             _mm256_and_si256(qh, m2_high));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_b, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2_high));
      for (int k = 0; k < 4; ++k) {
        const __m256i scale =
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, sub_block_pair_mask(4 * h + k)));
        for (int t = 0; t < NT; ++t) {
          const __m256i qa = load256(a[t][i].qs + 128 * h + 32 * k);
          const __m256i p = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q[k], qa));
          sumi[t] = _mm256_add_epi32(sumi[t], p);
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[t][i].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
}

// ---- Q2_K, Q3_K x Q8_K -----------------------------------------------------------------

// The 12 packed Q3_K scale bytes -> 16 signed scales (6-bit code - 32), as in
// unpack_q3_K_scales, four at a time in 32-bit words.
inline __m128i unpack_q3_K_scales_16(const uint8_t packed[12]) {
  uint32_t in[3];
  std::memcpy(in, packed, 12);
  constexpr uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303;
  uint32_t out[4];
  out[0] = (in[0] & k4) | ((in[2] & k2) << 4);                // scales 0..3
  out[1] = (in[1] & k4) | (((in[2] >> 2) & k2) << 4);         // scales 4..7
  out[2] = ((in[0] >> 4) & k4) | (((in[2] >> 4) & k2) << 4);  // scales 8..11
  out[3] = ((in[1] >> 4) & k4) | (((in[2] >> 6) & k2) << 4);  // scales 12..15
  return _mm_sub_epi8(load128(out), _mm_set1_epi8(32));
}

// Q2_K: 2-bit codes (0..3) with a 4-bit scale and a 4-bit min per 16-element sub-block.
// Q3_K: the same 2-bit codes plus a third bit from hmask; a clear bit subtracts 4. Codes
// go through maddubs unsigned as low | hbit << 2 (0..7, i.e. q + 4), and the offset comes
// back out as 4 * sum over sub-blocks of scale * (activation sum), as in Q6_K.
// Element 128 h + 32 p + l is bit pair p of qs[32 h + l] (and, for Q3_K, bit 4 h + p of
// hmask[l]); each group of 32 covers the sub-blocks 2 (4 h + p) and 2 (4 h + p) + 1.
template <typename Block, int NT>
void dot_q23_K_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                    float* out) {
  constexpr bool kQ3 = std::is_same_v<Block, block_q3_K>;
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_K*>(act + t * act_stride);
  __m256 acc[NT];
  __m256 acc_min[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    acc_min[t] = _mm256_setzero_ps();
  }
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const __m256i one = _mm256_set1_epi8(0x01);
  const size_t n_blocks = cols / QK_K;
  for (size_t i = 0; i < n_blocks; ++i) {
    const Block& b = w[i];
    const float d = half_to_float(b.d);
    __m128i scales8;
    __m256i hbits = _mm256_setzero_si256();
    __m256i sumi[NT];
    if constexpr (kQ3) {
      scales8 = unpack_q3_K_scales_16(b.scales);
      hbits = load256(b.hmask);
      const __m256i scales16 = _mm256_cvtepi8_epi16(scales8);
      for (int t = 0; t < NT; ++t) {
        const __m256i offset = _mm256_madd_epi16(scales16, load256(a[t][i].bsums));
        sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 2));
      }
    } else {
      const __m128i packed = load128(b.scales);
      const __m128i low_mask = _mm_set1_epi8(0x0F);
      scales8 = _mm_and_si128(packed, low_mask);
      // Min term: sum over the 16 sub-blocks of min * (activation sum of the sub-block).
      const __m256i mins16 =
          _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low_mask));
      const float dmin = half_to_float(b.dmin);
      for (int t = 0; t < NT; ++t) {
        const __m256i min_prod = _mm256_madd_epi16(mins16, load256(a[t][i].bsums));
        acc_min[t] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * a[t][i].d), _mm256_cvtepi32_ps(min_prod),
                                     acc_min[t]);
        sumi[t] = _mm256_setzero_si256();
      }
    }
    for (int h = 0; h < 2; ++h) {
      __m256i q2 = load256(b.qs + 32 * h);
      for (int p = 0; p < 4; ++p) {
        // 16-bit shifts leak bits across bytes only above the masked-off ones.
        __m256i q = _mm256_and_si256(q2, m2);
        q2 = _mm256_srli_epi16(q2, 2);
        if constexpr (kQ3) {
          q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(hbits, one), 2));
          hbits = _mm256_srli_epi16(hbits, 1);
        }
        const __m256i scale =
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, sub_block_pair_mask(4 * h + p)));
        for (int t = 0; t < NT; ++t) {
          const __m256i qa = load256(a[t][i].qs + 128 * h + 32 * p);
          const __m256i prod = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q, qa));
          sumi[t] = _mm256_add_epi32(sumi[t], prod);
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[t][i].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    if constexpr (kQ3) {
      out[t] = hsum(acc[t]);
    } else {
      out[t] = hsum(acc[t]) - hsum(acc_min[t]);
    }
  }
}

// ---- IQ4_NL x block_q8_act, IQ4_XS x Q8_K -----------------------------------------------

// The 16 IQ4 values in both 128-bit lanes, for a byte shuffle lookup.
inline __m256i iq4_table() { return _mm256_broadcastsi128_si256(load128(kvalues_iq4nl)); }

template <int NT>
void dot_iq4_nl_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                     float* out) {
  const auto* w = reinterpret_cast<const block_iq4_nl*>(w_row);
  const block_q8_act* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_act*>(act + t * act_stride);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i table = iq4_table();
  const size_t n_blocks = cols / QK4_NL;
  for (size_t i = 0; i < n_blocks; ++i) {
    const __m256i q = _mm256_shuffle_epi8(table, unpack_nibbles_32(w[i].qs));
    const float d = half_to_float(w[i].d);
    for (int t = 0; t < NT; ++t) {
      const __m256i sum = dot_i8_i8(q, load256(a[t][i].qs));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[t][i].d), _mm256_cvtepi32_ps(sum), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
}

template <int NT>
void dot_iq4_xs_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                     float* out) {
  const auto* w = reinterpret_cast<const block_iq4_xs*>(w_row);
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_K*>(act + t * act_stride);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i table = iq4_table();
  const size_t n_blocks = cols / QK_K;
  for (size_t i = 0; i < n_blocks; ++i) {
    const block_iq4_xs& b = w[i];
    const float d = half_to_float(b.d);
    __m256i sumi[NT];
    for (int t = 0; t < NT; ++t) sumi[t] = _mm256_setzero_si256();
    for (int s = 0; s < QK_K / 32; ++s) {
      const int low = (b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF;
      const int high = (b.scales_h >> (2 * s)) & 3;
      const __m256i scale = _mm256_set1_epi16(static_cast<int16_t>((low | (high << 4)) - 32));
      const __m256i q = _mm256_shuffle_epi8(table, unpack_nibbles_32(b.qs + 16 * s));
      const __m256i abs_q = _mm256_sign_epi8(q, q);
      for (int t = 0; t < NT; ++t) {
        const __m256i signed_a = _mm256_sign_epi8(load256(a[t][i].qs + 32 * s), q);
        const __m256i p = _mm256_madd_epi16(scale, _mm256_maddubs_epi16(abs_q, signed_a));
        sumi[t] = _mm256_add_epi32(sumi[t], p);
      }
    }
    for (int t = 0; t < NT; ++t) {
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a[t][i].d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
}

// ---- F32 / F16 x F32 (xsimd) -----------------------------------------------------------

inline floatv load_weights8(const float* p) { return floatv::load_unaligned(p); }
inline floatv load_weights8(const uint16_t* p) { return floatv(_mm256_cvtph_ps(load128(p))); }
// bf16 is the top half of an fp32: widen to 32 bits and shift into place.
struct Bf16 {
  uint16_t bits;
};
inline floatv load_weights8(const Bf16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(load128(p));
  return floatv(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
}
inline float load_weight(const Bf16* p) { return bf16_to_fp32(p->bits); }
inline float load_weight(const float* p) { return *p; }
inline float load_weight(const uint16_t* p) { return half_to_float(*p); }

template <typename W, int NT>
void dot_float_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                    float* out) {
  const auto* w = reinterpret_cast<const W*>(w_row);
  const float* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const float*>(act + t * act_stride);
  // Two accumulators per row hide the FMA latency when NT is small.
  floatv acc0[NT], acc1[NT];
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = floatv(0.0f);
  size_t j = 0;
  for (; j + 16 <= cols; j += 16) {
    const floatv w0 = load_weights8(w + j);
    const floatv w1 = load_weights8(w + j + 8);
    for (int t = 0; t < NT; ++t) {
      acc0[t] = xsimd::fma(w0, floatv::load_unaligned(a[t] + j), acc0[t]);
      acc1[t] = xsimd::fma(w1, floatv::load_unaligned(a[t] + j + 8), acc1[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    float sum = xsimd::hadd(acc0[t] + acc1[t]);
    for (size_t k = j; k < cols; ++k) sum += load_weight(w + k) * a[t][k];
    out[t] = sum;
  }
}

// ---- Activation quantization -----------------------------------------------------------
// Byte for byte what quantize_row_q8_K / quantize_row_q8_act (kernels/quants.cpp) write: the
// same float operations in the same order, and _mm256_cvtps_epi32 rounds half to even as
// nearbyint does in the default rounding mode. Prefill quantizes every activation row, and
// the reference loops (a branchy arg-max for Q8_K) cost several percent of a prompt.

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }
inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
// 32 int32 in [-127, 127] (four vectors, in order) -> 32 int8.
inline __m256i pack_32(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
  // The packs interleave 128-bit lanes: dword k of the result holds elements of q[k % 4].
  return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void quantize_q8_K(const float* x, size_t n_blocks, block_q8_K* y) {
  for (size_t i = 0; i < n_blocks; ++i) {
    const float* v = x + i * QK_K;
    block_q8_K& b = y[i];
    __m256 amax_v = _mm256_setzero_ps();
    for (int j = 0; j < QK_K; j += 8)
      amax_v = _mm256_max_ps(amax_v, abs_ps(_mm256_loadu_ps(v + j)));
    const float amax = hmax(amax_v);
    if (amax == 0.0f) {
      b.d = 0.0f;
      std::memset(b.qs, 0, sizeof(b.qs));
      std::memset(b.bsums, 0, sizeof(b.bsums));
      continue;
    }
    // The reference keeps the first element of largest magnitude (its sign decides).
    float max = 0.0f;
    const __m256 amax_b = _mm256_set1_ps(amax);
    for (int j = 0; j < QK_K; j += 8) {
      const int hit =
          _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(v + j)), amax_b, _CMP_EQ_OQ));
      if (hit != 0) {
        max = v[j + __builtin_ctz(static_cast<unsigned>(hit))];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m256 scale = _mm256_set1_ps(iscale);
    const __m256i limit = _mm256_set1_epi32(127);
    for (int j = 0; j < QK_K; j += 32) {
      __m256i q[4];
      for (int k = 0; k < 4; ++k) {
        q[k] = _mm256_min_epi32(
            limit, _mm256_cvtps_epi32(_mm256_mul_ps(scale, _mm256_loadu_ps(v + j + 8 * k))));
      }
      b.bsums[j / 16] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[0], q[1])));
      b.bsums[j / 16 + 1] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[2], q[3])));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b.qs + j), pack_32(q[0], q[1], q[2], q[3]));
    }
    b.d = 1.0f / iscale;
  }
}

void quantize_q8_act(const float* x, size_t n_blocks, block_q8_act* y) {
  for (size_t i = 0; i < n_blocks; ++i) {
    const float* v = x + i * QK8_0;
    __m256 f[4];
    __m256 amax_v = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      f[k] = _mm256_loadu_ps(v + 8 * k);
      amax_v = _mm256_max_ps(amax_v, abs_ps(f[k]));
    }
    const float d = hmax(amax_v) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 scale = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(f[k], scale));
    const int sum =
        hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs), pack_32(q[0], q[1], q[2], q[3]));
    y[i].d = d;
    y[i].s = d * static_cast<float>(sum);
  }
}

// ---- Table -----------------------------------------------------------------------------

KILN_TILE_DISPATCH(dot_q8_0, dot_legacy_tile, block_q8_0)
KILN_TILE_DISPATCH(dot_q4_0, dot_legacy_tile, block_q4_0)
KILN_TILE_DISPATCH(dot_q4_1, dot_legacy_tile, block_q4_1)
KILN_TILE_DISPATCH(dot_q5_0, dot_legacy_tile, block_q5_0)
KILN_TILE_DISPATCH(dot_q5_1, dot_legacy_tile, block_q5_1)
KILN_TILE_DISPATCH(dot_q2_K, dot_q23_K_tile, block_q2_K)
KILN_TILE_DISPATCH(dot_q3_K, dot_q23_K_tile, block_q3_K)
KILN_TILE_DISPATCH(dot_q4_K, dot_q45_K_tile, block_q4_K)
KILN_TILE_DISPATCH(dot_q5_K, dot_q45_K_tile, block_q5_K)
KILN_TILE_DISPATCH(dot_iq4_nl, dot_iq4_nl_tile)
KILN_TILE_DISPATCH(dot_iq4_xs, dot_iq4_xs_tile)
KILN_TILE_DISPATCH(dot_q6_K, dot_q6_K_tile)
KILN_TILE_DISPATCH(dot_f32, dot_float_tile, float)
KILN_TILE_DISPATCH(dot_f16, dot_float_tile, uint16_t)
KILN_TILE_DISPATCH(dot_bf16, dot_float_tile, Bf16)

bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}

}  // namespace

bool quantize_act_row_avx2(ActFormat format, std::span<const float> x, std::span<std::byte> out) {
  if (!cpu_has_avx2()) return false;
  switch (format) {
    case ActFormat::Q8_act:
      if (x.size() % QK8_0 != 0 || out.size() < x.size() / QK8_0 * sizeof(block_q8_act)) {
        return false;  // the reference quantizer names the error
      }
      quantize_q8_act(x.data(), x.size() / QK8_0, reinterpret_cast<block_q8_act*>(out.data()));
      return true;
    case ActFormat::Q8_K:
      if (x.size() % QK_K != 0 || out.size() < x.size() / QK_K * sizeof(block_q8_K)) return false;
      quantize_q8_K(x.data(), x.size() / QK_K, reinterpret_cast<block_q8_K*>(out.data()));
      return true;
    default:
      return false;  // F32 needs no quantizing; the precise formats have their own
  }
}

DotKernel dot_kernel_avx2(GgmlType type) {
  if (!cpu_has_avx2()) return {};
  constexpr const char* isa = "avx2";
  switch (type) {
    case GgmlType::F32:
      return {ActFormat::F32, dot_f32, isa};
    case GgmlType::F16:
      return {ActFormat::F32, dot_f16, isa};
    case GgmlType::BF16:
      return {ActFormat::F32, dot_bf16, isa};
    case GgmlType::Q4_0:
      return {ActFormat::Q8_act, dot_q4_0, isa};
    case GgmlType::Q4_1:
      return {ActFormat::Q8_act, dot_q4_1, isa};
    case GgmlType::Q5_0:
      return {ActFormat::Q8_act, dot_q5_0, isa};
    case GgmlType::Q5_1:
      return {ActFormat::Q8_act, dot_q5_1, isa};
    case GgmlType::Q8_0:
      return {ActFormat::Q8_act, dot_q8_0, isa};
    case GgmlType::Q2_K:
      return {ActFormat::Q8_K, dot_q2_K, isa};
    case GgmlType::Q3_K:
      return {ActFormat::Q8_K, dot_q3_K, isa};
    case GgmlType::Q4_K:
      return {ActFormat::Q8_K, dot_q4_K, isa};
    case GgmlType::Q5_K:
      return {ActFormat::Q8_K, dot_q5_K, isa};
    case GgmlType::Q6_K:
      return {ActFormat::Q8_K, dot_q6_K, isa};
    case GgmlType::IQ4_NL:
      return {ActFormat::Q8_act, dot_iq4_nl, isa};
    case GgmlType::IQ4_XS:
      return {ActFormat::Q8_K, dot_iq4_xs, isa};
    default:
      return {};
  }
}

}  // namespace kiln::kernels

#else  // no AVX2/FMA/F16C in this build: every type uses the portable kernels

namespace kiln::kernels {
DotKernel dot_kernel_avx2(GgmlType) { return {}; }
bool quantize_act_row_avx2(ActFormat, std::span<const float>, std::span<std::byte>) {
  return false;
}
}  // namespace kiln::kernels

#endif
