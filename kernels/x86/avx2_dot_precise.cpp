// AVX2/FMA kernels for the precise (int16, two-plane) activations of kernels/blocks.h:
// x ~= d q + d2 q2, as two planes of block_q8_act (legacy 32-element types) or block_q8_K
// (Q4_K, Q5_K, Q6_K), plane 2 starting n_blocks blocks after plane 1.
//
// Same structure as the int8 kernels of avx2_dot.cpp: each weight block is unpacked once
// per tile, then multiplied with both activation planes (one more maddubs + madd per 32
// weights and row), and the two integer sums get their own float scale
// (d_w d q-sum + d_w d2 q2-sum). |q|, |q2| <= 127, so the maddubs pair sums stay within
// int16 as in the int8 kernels, and signed weights can go through maddubs as
// |w| * (a * sign(w)). The unpacking helpers are shared through kernels/x86/simd_unpack.h. Types
// without a kernel here use dot_precise_portable.cpp.
#include "kernels/dot.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/blocks.h"

namespace kiln::kernels {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#include "kernels/x86/simd_unpack.h"

// ---- Legacy 32-element types x two planes of block_q8_act ------------------------------

template <typename Block, int NT>
void dot_legacy_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                     float* out) {
  constexpr bool kHasMin = Legacy<Block>::kUnsigned;
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const block_q8_act* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_act*>(act + t * act_stride);
  // Separate accumulators for the two planes: two independent FMA chains per row.
  __m256 acc[NT], acc2[NT];
  float acc_min[NT] = {};
  for (int t = 0; t < NT; ++t) acc[t] = acc2[t] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  const size_t n_blocks = cols / QK8_0;
  for (size_t i = 0; i < n_blocks; ++i) {
    const Block& b = w[i];
    const __m256i q = Legacy<Block>::weights(b);
    // Unsigned codes go straight into maddubs; signed ones as |w| with w's sign moved onto
    // the activations.
    const __m256i mul = kHasMin ? q : _mm256_sign_epi8(q, q);
    const float d = half_to_float(b.d);
    for (int t = 0; t < NT; ++t) {
      const block_q8_act& x = a[t][i];
      const block_q8_act& x2 = a[t][n_blocks + i];
      __m256i q1 = load256(x.qs);
      __m256i q2 = load256(x2.qs);
      if constexpr (!kHasMin) {
        q1 = _mm256_sign_epi8(q1, q);
        q2 = _mm256_sign_epi8(q2, q);
      }
      const __m256i s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(mul, q1), ones);
      const __m256i s2 = _mm256_madd_epi16(_mm256_maddubs_epi16(mul, q2), ones);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(s1), acc[t]);
      acc2[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x2.d), _mm256_cvtepi32_ps(s2), acc2[t]);
      if constexpr (kHasMin) acc_min[t] += half_to_float(b.m) * (x.s + x2.s);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum(_mm256_add_ps(acc[t], acc2[t])) + acc_min[t];
}

// ---- Q4_K, Q5_K x two planes of block_q8_K ------------------------------------------------

// Shuffle mask that broadcasts int16 lane s to all 16 lanes.
inline __m256i broadcast_word_mask(int s) {
  const auto lo = static_cast<char>(2 * s), hi = static_cast<char>(2 * s + 1);
  return _mm256_setr_epi8(lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi,
                          lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi);
}

// Min term of one plane: sum over the 8 sub-blocks of 32 of min * (plane sum there).
inline __m128 min_products(__m128i mins, const int16_t bsums[16]) {
  const __m256i b = load256(bsums);
  const __m128i pair_sums =
      _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  return _mm_cvtepi32_ps(_mm_madd_epi16(mins, pair_sums));
}

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

    __m256i sumi[NT], sumi2[NT];
    for (int t = 0; t < NT; ++t) {
      const block_q8_K& x = a[t][i];
      const block_q8_K& x2 = a[t][n_blocks + i];
      acc_min[t] = _mm_fmadd_ps(_mm_set1_ps(dmin * x.d), min_products(mins, x.bsums), acc_min[t]);
      acc_min[t] = _mm_fmadd_ps(_mm_set1_ps(dmin * x2.d), min_products(mins, x2.bsums), acc_min[t]);
      sumi[t] = sumi2[t] = _mm256_setzero_si256();
    }
    for (int j = 0; j < 4; ++j) {
      // 64 elements: sub-block 2j in the low nibbles, 2j + 1 in the high nibbles.
      const __m256i q4 = load256(b.qs + 32 * j);
      __m256i q_low = _mm256_and_si256(q4, low_mask);
      __m256i q_high = _mm256_and_si256(_mm256_srli_epi16(q4, 4), low_mask);
      if constexpr (kFifthBit) {
        const __m256i one = _mm256_set1_epi8(1);
        q_low = _mm256_or_si256(q_low, _mm256_slli_epi16(_mm256_and_si256(high_bits, one), 4));
        q_high = _mm256_or_si256(
            q_high, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high_bits, 1), one), 4));
        high_bits = _mm256_srli_epi16(high_bits, 2);
      }
      const __m256i scale_low = _mm256_shuffle_epi8(scales, broadcast_word_mask(2 * j));
      const __m256i scale_high = _mm256_shuffle_epi8(scales, broadcast_word_mask(2 * j + 1));
      for (int t = 0; t < NT; ++t) {
        const block_q8_K& x = a[t][i];
        const block_q8_K& x2 = a[t][n_blocks + i];
        const __m256i p1 = _mm256_add_epi32(
            _mm256_madd_epi16(scale_low, _mm256_maddubs_epi16(q_low, load256(x.qs + 64 * j))),
            _mm256_madd_epi16(scale_high,
                              _mm256_maddubs_epi16(q_high, load256(x.qs + 64 * j + 32))));
        const __m256i p2 = _mm256_add_epi32(
            _mm256_madd_epi16(scale_low, _mm256_maddubs_epi16(q_low, load256(x2.qs + 64 * j))),
            _mm256_madd_epi16(scale_high,
                              _mm256_maddubs_epi16(q_high, load256(x2.qs + 64 * j + 32))));
        sumi[t] = _mm256_add_epi32(sumi[t], p1);
        sumi2[t] = _mm256_add_epi32(sumi2[t], p2);
      }
    }
    for (int t = 0; t < NT; ++t) {
      const block_q8_K& x = a[t][i];
      const block_q8_K& x2 = a[t][n_blocks + i];
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x2.d), _mm256_cvtepi32_ps(sumi2[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    __m128 m = acc_min[t];
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    out[t] = hsum(acc[t]) - _mm_cvtss_f32(m);
  }
}

// ---- Q6_K x two planes of block_q8_K ------------------------------------------------------

// Shuffle mask giving int8 scales [2g x 8, 2g + 1 x 8].
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
    // Codes go through maddubs as q + 32 (0..63); the offset comes back out per plane as
    // 32 * sum over sub-blocks of scale * (plane sum of the sub-block).
    const __m256i scales16 = _mm256_cvtepi8_epi16(scales8);
    __m256i sumi[NT], sumi2[NT];
    for (int t = 0; t < NT; ++t) {
      const block_q8_K& x = a[t][i];
      const block_q8_K& x2 = a[t][n_blocks + i];
      sumi[t] =
          _mm256_sub_epi32(_mm256_setzero_si256(),
                           _mm256_slli_epi32(_mm256_madd_epi16(scales16, load256(x.bsums)), 5));
      sumi2[t] =
          _mm256_sub_epi32(_mm256_setzero_si256(),
                           _mm256_slli_epi32(_mm256_madd_epi16(scales16, load256(x2.bsums)), 5));
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
          const block_q8_K& x = a[t][i];
          const block_q8_K& x2 = a[t][n_blocks + i];
          const int offset = 128 * h + 32 * k;
          sumi[t] = _mm256_add_epi32(
              sumi[t],
              _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q[k], load256(x.qs + offset))));
          sumi2[t] = _mm256_add_epi32(
              sumi2[t],
              _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q[k], load256(x2.qs + offset))));
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      const block_q8_K& x = a[t][i];
      const block_q8_K& x2 = a[t][n_blocks + i];
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * x2.d), _mm256_cvtepi32_ps(sumi2[t]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = hsum(acc[t]);
}

// ---- Quantizer ---------------------------------------------------------------------------

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// 4 x 8 int32 (each in -127..127) -> 32 int8 in order.
inline __m256i pack_32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i abcd = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Sums of the two 16-byte halves of 32 int8.
inline void half_sums(__m256i q, int& low, int& high) {
  const __m256i s4 =
      _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
  const __m256i h = _mm256_hadd_epi32(s4, s4);
  const __m256i h2 = _mm256_hadd_epi32(h, h);
  low = _mm256_extract_epi32(h2, 0);
  high = _mm256_extract_epi32(h2, 4);
}

// The reference quantize_two_planes (kernels/quants.cpp) on N floats, operation for
// operation (same products, round-half-even, clamp, fma residual), so the bytes agree.
// Writes q1/q2 (N int8 each) and the 16-element sums of each; returns {d, d2}.
template <int N>
inline void quantize_two_planes(const float* v, int8_t* q1, int8_t* q2, int* sums1, int* sums2,
                                float& d_out, float& d2_out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m256 amax = _mm256_setzero_ps();
  for (int j = 0; j < N; j += 8)
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + j)));
  const float d = hmax(amax) / 127.0f;
  const __m256 vd = _mm256_set1_ps(d);
  const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
  alignas(32) float r[N];
  __m256 rmax = _mm256_setzero_ps();
  for (int j = 0; j < N; j += 32) {
    __m256i qi[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 x = _mm256_loadu_ps(v + j + 8 * k);
      const __m256 q =
          _mm256_min_ps(_mm256_max_ps(_mm256_round_ps(_mm256_mul_ps(x, id), kRound), lo), hi);
      const __m256 res = _mm256_fnmadd_ps(vd, q, x);
      _mm256_store_ps(r + j + 8 * k, res);
      rmax = _mm256_max_ps(rmax, _mm256_andnot_ps(sign, res));
      qi[k] = _mm256_cvtps_epi32(q);
    }
    const __m256i packed = pack_32(qi[0], qi[1], qi[2], qi[3]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q1 + j), packed);
    half_sums(packed, sums1[j / 16], sums1[j / 16 + 1]);
  }
  const float d2 = hmax(rmax) / 127.0f;
  const __m256 id2 = _mm256_set1_ps(d2 != 0.0f ? 1.0f / d2 : 0.0f);
  for (int j = 0; j < N; j += 32) {
    __m256i qi[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 q = _mm256_min_ps(
          _mm256_max_ps(_mm256_round_ps(_mm256_mul_ps(_mm256_load_ps(r + j + 8 * k), id2), kRound),
                        lo),
          hi);
      qi[k] = _mm256_cvtps_epi32(q);
    }
    const __m256i packed = pack_32(qi[0], qi[1], qi[2], qi[3]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q2 + j), packed);
    half_sums(packed, sums2[j / 16], sums2[j / 16 + 1]);
  }
  d_out = d;
  d2_out = d2;
}

// ---- Table -------------------------------------------------------------------------------

KILN_TILE_DISPATCH(dot_q4_0, dot_legacy_tile, block_q4_0)
KILN_TILE_DISPATCH(dot_q4_1, dot_legacy_tile, block_q4_1)
KILN_TILE_DISPATCH(dot_q5_0, dot_legacy_tile, block_q5_0)
KILN_TILE_DISPATCH(dot_q5_1, dot_legacy_tile, block_q5_1)
KILN_TILE_DISPATCH(dot_q8_0, dot_legacy_tile, block_q8_0)
KILN_TILE_DISPATCH(dot_q4_K, dot_q45_K_tile, block_q4_K)
KILN_TILE_DISPATCH(dot_q5_K, dot_q45_K_tile, block_q5_K)
KILN_TILE_DISPATCH(dot_q6_K, dot_q6_K_tile)

bool cpu_has_avx2() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                __builtin_cpu_supports("f16c");
  return supported;
}

}  // namespace

bool quantize_act_row_precise_avx2(ActFormat format, std::span<const float> x,
                                   std::span<std::byte> out) {
  if (!cpu_has_avx2()) return false;
  if (format == ActFormat::Q8_act2) {
    const size_t nb = x.size() / QK8_0;
    if (x.size() % QK8_0 != 0 || out.size() < 2 * nb * sizeof(block_q8_act)) return false;
    auto* blocks = reinterpret_cast<block_q8_act*>(out.data());
    for (size_t i = 0; i < nb; ++i) {
      block_q8_act& p1 = blocks[i];
      block_q8_act& p2 = blocks[nb + i];
      int s1[2], s2[2];
      float d, d2;
      quantize_two_planes<QK8_0>(x.data() + i * QK8_0, p1.qs, p2.qs, s1, s2, d, d2);
      p1.d = d;
      p1.s = d * static_cast<float>(s1[0] + s1[1]);
      p2.d = d2;
      p2.s = d2 * static_cast<float>(s2[0] + s2[1]);
    }
    return true;
  }
  if (format == ActFormat::Q8_K2) {
    const size_t nb = x.size() / QK_K;
    if (x.size() % QK_K != 0 || out.size() < 2 * nb * sizeof(block_q8_K)) return false;
    auto* blocks = reinterpret_cast<block_q8_K*>(out.data());
    for (size_t i = 0; i < nb; ++i) {
      block_q8_K& p1 = blocks[i];
      block_q8_K& p2 = blocks[nb + i];
      int s1[QK_K / 16], s2[QK_K / 16];
      quantize_two_planes<QK_K>(x.data() + i * QK_K, p1.qs, p2.qs, s1, s2, p1.d, p2.d);
      for (int s = 0; s < QK_K / 16; ++s) {
        p1.bsums[s] = static_cast<int16_t>(s1[s]);
        p2.bsums[s] = static_cast<int16_t>(s2[s]);
      }
    }
    return true;
  }
  return false;
}

DotKernel dot_kernel_precise_avx2(GgmlType type) {
  if (!cpu_has_avx2()) return {};
  constexpr const char* isa = "avx2";
  switch (type) {
    case GgmlType::Q4_0:
      return {ActFormat::Q8_act2, dot_q4_0, isa};
    case GgmlType::Q4_1:
      return {ActFormat::Q8_act2, dot_q4_1, isa};
    case GgmlType::Q5_0:
      return {ActFormat::Q8_act2, dot_q5_0, isa};
    case GgmlType::Q5_1:
      return {ActFormat::Q8_act2, dot_q5_1, isa};
    case GgmlType::Q8_0:
      return {ActFormat::Q8_act2, dot_q8_0, isa};
    case GgmlType::Q4_K:
      return {ActFormat::Q8_K2, dot_q4_K, isa};
    case GgmlType::Q5_K:
      return {ActFormat::Q8_K2, dot_q5_K, isa};
    case GgmlType::Q6_K:
      return {ActFormat::Q8_K2, dot_q6_K, isa};
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      // Float activations are exact already: the ordinary float kernels.
      return dot_kernel_avx2(type);
    default:
      return {};
  }
}

}  // namespace kiln::kernels

#else  // no AVX2/FMA/F16C in this build: the portable precise kernels serve every type

namespace kiln::kernels {
DotKernel dot_kernel_precise_avx2(GgmlType) { return {}; }
bool quantize_act_row_precise_avx2(ActFormat, std::span<const float>, std::span<std::byte>) {
  return false;
}
}  // namespace kiln::kernels

#endif
