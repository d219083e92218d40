// AVX-512 (F/BW/VL/VNNI) dot-tile kernels for decode: same DotTileFn signature and
// activation formats as the AVX2 kernels (avx2_dot.cpp), with 512-bit vectors so one weight
// vector covers 64 elements (two legacy blocks, or two 32-element sub-blocks of a K block).
//
//   K types: _mm512_maddubs_epi16(u8 codes, s8 activations) gives exact int16 pair sums
//       (|pair| <= 2 * 63 * 127), and vpdpwssd multiplies them by the per-sub-block int16
//       scales and accumulates into int32 in one instruction (AVX2 needs madd + add).
//   legacy types: vpdpbusd (u8 x s8 -> int32); signed weights go through it as
//       |w| * (a * sign(w)) (AVX-512 has no vpsignb, so a masked subtract negates a).
//
// Each token keeps its own accumulators and sees the same operations in the same order
// whatever the tile size, so a token's result does not depend on nt or its tile mates.
//
// Built with AVX-512 flags for this file only; dot_kernel_avx512 checks the running CPU
// once and returns nothing on a CPU without the instructions.
#include "kernels/dot.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__AVX512VNNI__) && defined(__F16C__)
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the merge source of unmasked
// operations, which -W(maybe-)uninitialized reports (thousands of times) once they are inlined
// in loops: a false positive, gone in GCC 13.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/blocks.h"

namespace kiln::kernels {
namespace {

// Internal linkage only (see simd_unpack.h): this file is compiled with AVX-512 flags.
#include "kernels/x86/avx512_unpack.h"
#include "kernels/x86/simd_unpack.h"
inline __m512i loadu512(const void* p) { return _mm512_loadu_si512(p); }

// Decode streams the weights from DRAM; requesting each Q4_K block's lines 2 KiB ahead
// (into the rest of the row, then the next row, which the same thread usually takes next)
// keeps the stream fuller than the hardware prefetchers alone: TinyLlama-1.1B Q4_K_M decode
// +1-4% from huge pages and from the file mapping (2-core test machine, alternated runs;
// 0.5, 1, 3 and 4 KiB ahead gained less or nothing, and the same in the Q6_K kernel nothing).
constexpr size_t kPrefetchAhead = 2048;
template <typename Block>
inline void prefetch_block_ahead(const Block& b) {
  const char* p = reinterpret_cast<const char*>(&b) + kPrefetchAhead;
  for (size_t o = 0; o < sizeof(Block); o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

// ---- Q4_K x Q8_K -----------------------------------------------------------------------

template <int NT>
void dot_q4_K_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                   float* out) {
  const auto* w = reinterpret_cast<const block_q4_K*>(w_row);
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_K*>(act + t * act_stride);
  __m512 acc[NT];
  __m256 acc_min[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm512_setzero_ps();
    acc_min[t] = _mm256_setzero_ps();
  }
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  // The upper 256 bits shift right by 4: low nibbles below, high nibbles above.
  const __m512i nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
  __m512i scale_index[4];
  for (int j = 0; j < 4; ++j) scale_index[j] = word_index(2 * j, 16);
  // Byte picks that turn the 8 mins (bytes 8..15 of the unpacked scales) into 16 bytes,
  // each min twice: one per bsum, so vpmaddwd sums each sub-block's two bsums times its min.
  const __m128i min_pairs =
      _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
  const size_t n_blocks = cols / QK_K;
  for (size_t i = 0; i < n_blocks; ++i) {
    const block_q4_K& b = w[i];
    prefetch_block_ahead(b);
    // d and dmin in lanes 0 and 1 (the two halfs are adjacent).
    uint32_t d_dmin_bits;
    std::memcpy(&d_dmin_bits, &b.d, 4);
    const __m128 d_dmin = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(d_dmin_bits)));
    const __m128i scales_mins8 = unpack_q4_K_scales_mins(b.scales);
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales_mins8, min_pairs));
    const __m512i scales_wide = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(scales_mins8));
    __m512i q[4], scale[4];
    for (int j = 0; j < 4; ++j) {
      // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles): activations 64j .. 64j + 63.
      const __m512i q4 = _mm512_broadcast_i64x4(load256(b.qs + 32 * j));
      q[j] = _mm512_and_si512(_mm512_srlv_epi64(q4, nibble_shift), low_mask);
      scale[j] = _mm512_permutexvar_epi16(scale_index[j], scales_wide);
    }
    for (int t = 0; t < NT; ++t) {
      // [d, dmin] * the activations' scale.
      const __m128 da = _mm_mul_ps(d_dmin, _mm_set1_ps(a[t][i].d));
      const __m256i min_prod = _mm256_madd_epi16(mins, load256(a[t][i].bsums));
      acc_min[t] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(da)),
                                   _mm256_cvtepi32_ps(min_prod), acc_min[t]);
      __m512i sumi = _mm512_setzero_si512();
      for (int j = 0; j < 4; ++j) {
        const __m512i p = _mm512_maddubs_epi16(q[j], loadu512(a[t][i].qs + 64 * j));
        sumi = _mm512_dpwssd_epi32(sumi, p, scale[j]);
      }
      acc[t] = _mm512_fmadd_ps(_mm512_broadcastss_ps(da), _mm512_cvtepi32_ps(sumi), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const __m128 m4 =
        _mm_add_ps(_mm256_castps256_ps128(acc_min[t]), _mm256_extractf128_ps(acc_min[t], 1));
    __m128 m = _mm_add_ps(m4, _mm_movehl_ps(m4, m4));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    out[t] = _mm512_reduce_add_ps(acc[t]) - _mm_cvtss_f32(m);
  }
}

// ---- Q6_K x Q8_K -----------------------------------------------------------------------

template <int NT>
void dot_q6_K_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                   float* out) {
  const auto* w = reinterpret_cast<const block_q6_K*>(w_row);
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_K*>(act + t * act_stride);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i m_high = _mm512_set1_epi8(0x30);
  // Elements 128h + 0..63: ql low nibbles, qh bits 0-1 (first 32) or 2-3 (next 32) as 0x30.
  const __m512i shift_first = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2);
  // Elements 128h + 64..127: ql high nibbles, qh bits 4-5 or 6-7 as 0x30.
  const __m512i shift_second = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
  __m512i scale_index[4];
  for (int k = 0; k < 4; ++k) scale_index[k] = word_index(4 * k, 8);
  const size_t n_blocks = cols / QK_K;
  for (size_t i = 0; i < n_blocks; ++i) {
    const block_q6_K& b = w[i];
    const float d = half_to_float(b.d);
    // Codes are stored as q + 32 (0..63) so they go through maddubs unsigned; the offset
    // comes back out as 32 * sum over sub-blocks of scale * (activation sum).
    const __m256i scales16 = _mm256_cvtepi8_epi16(load128(b.scales));
    const __m512i scales_wide = _mm512_zextsi256_si512(scales16);
    __m512i q[4], scale[4];
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = loadu512(b.ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(load256(b.qh + 32 * h));
      q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                 _mm512_and_si512(_mm512_sllv_epi64(qh, shift_first), m_high));
      q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                     _mm512_and_si512(_mm512_srlv_epi64(qh, shift_second), m_high));
    }
    for (int k = 0; k < 4; ++k) scale[k] = _mm512_permutexvar_epi16(scale_index[k], scales_wide);
    for (int t = 0; t < NT; ++t) {
      const __m256i offset = _mm256_madd_epi16(scales16, load256(a[t][i].bsums));
      __m512i sumi = _mm512_zextsi256_si512(
          _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5)));
      for (int k = 0; k < 4; ++k) {
        const __m512i p = _mm512_maddubs_epi16(q[k], loadu512(a[t][i].qs + 64 * k));
        sumi = _mm512_dpwssd_epi32(sumi, p, scale[k]);
      }
      acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(d * a[t][i].d), _mm512_cvtepi32_ps(sumi), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = _mm512_reduce_add_ps(acc[t]);
}

// ---- Q5_0 / Q8_0 x block_q8_act ----------------------------------------------------------

// Signed weight bytes of two consecutive blocks (the second all zero when there is none).
template <typename Block>
inline __m512i legacy_pair(const Block* b, bool second) {
  if constexpr (std::is_same_v<Block, block_q5_0>) {
    // Both blocks at once: the 16 code bytes of each block in two 128-bit lanes, the upper
    // lane shifted right by 4 (low nibbles, then high nibbles), and the 64 fifth bits of
    // the two qh fields as a byte mask.
    const __m256i qs0 = _mm256_broadcastsi128_si256(load128(b[0].qs));
    const __m256i qs1 = second ? _mm256_broadcastsi128_si256(load128(b[1].qs)) : qs0;
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(qs0), qs1, 1);
    const __m512i codes = _mm512_and_si512(
        _mm512_srlv_epi64(both, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0F));
    uint32_t qh0 = 0, qh1 = 0;
    std::memcpy(&qh0, b[0].qh, 4);
    if (second) std::memcpy(&qh1, b[1].qh, 4);
    const __mmask64 fifth = _cvtu64_mask64(qh0 | (static_cast<uint64_t>(qh1) << 32));
    const __m512i q = _mm512_sub_epi8(codes, _mm512_set1_epi8(16));
    // A missing second block's bytes are junk, but its activations are zero (no effect).
    return _mm512_mask_add_epi8(q, fifth, q, _mm512_set1_epi8(0x10));
  }
  const __m256i lo = Legacy<Block>::weights(b[0]);
  const __m256i hi = second ? Legacy<Block>::weights(b[1]) : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

template <typename Block, int NT>
void dot_legacy_tile(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                     float* out) {
  static_assert(!Legacy<Block>::kUnsigned, "signed legacy types only");
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const block_q8_act* a[NT];
  for (int t = 0; t < NT; ++t) a[t] = reinterpret_cast<const block_q8_act*>(act + t * act_stride);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  const size_t n_blocks = cols / QK8_0;
  for (size_t i = 0; i < n_blocks; i += 2) {
    const bool second = i + 1 < n_blocks;
    const __m512i q = legacy_pair(w + i, second);
    const __m512i abs_q = _mm512_abs_epi8(q);
    const __mmask64 negative = _mm512_movepi8_mask(q);
    const float d0 = half_to_float(w[i].d);
    const float d1 = second ? half_to_float(w[i + 1].d) : 0.0f;
    for (int t = 0; t < NT; ++t) {
      const block_q8_act& a0 = a[t][i];
      const __m256i qa_lo = load256(a0.qs);
      __m256i qa_hi = _mm256_setzero_si256();
      float s1 = 0.0f;
      if (second) {
        qa_hi = load256(a[t][i + 1].qs);
        s1 = d1 * a[t][i + 1].d;
      }
      __m512i qa = _mm512_inserti64x4(_mm512_castsi256_si512(qa_lo), qa_hi, 1);
      qa = _mm512_mask_sub_epi8(qa, negative, _mm512_setzero_si512(), qa);
      const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), abs_q, qa);
      const __m512 scale = _mm512_insertf32x8(_mm512_set1_ps(d0 * a0.d), _mm256_set1_ps(s1), 1);
      acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) out[t] = _mm512_reduce_add_ps(acc[t]);
}

// ---- Table -----------------------------------------------------------------------------

KILN_TILE_DISPATCH_8(dot_q4_K, dot_q4_K_tile)
KILN_TILE_DISPATCH_8(dot_q6_K, dot_q6_K_tile)
KILN_TILE_DISPATCH_8(dot_q5_0, dot_legacy_tile, block_q5_0)
KILN_TILE_DISPATCH_8(dot_q8_0, dot_legacy_tile, block_q8_0)

bool cpu_has_avx512_vnni() {
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}

}  // namespace

DotKernel dot_kernel_avx512(GgmlType type) {
  if (!cpu_has_avx512_vnni()) return {};
  constexpr const char* isa = "avx512";
  switch (type) {
    case GgmlType::Q4_K:
      return {ActFormat::Q8_K, dot_q4_K, isa, 8};
    case GgmlType::Q6_K:
      return {ActFormat::Q8_K, dot_q6_K, isa, 8};
    case GgmlType::Q5_0:
      return {ActFormat::Q8_act, dot_q5_0, isa, 8};
    case GgmlType::Q8_0:
      return {ActFormat::Q8_act, dot_q8_0, isa, 8};
    default:
      return {};
  }
}

}  // namespace kiln::kernels

#else  // this build cannot compile the AVX-512 VNNI kernels: decode keeps the AVX2 ones

namespace kiln::kernels {
DotKernel dot_kernel_avx512(GgmlType) { return {}; }
}  // namespace kiln::kernels

#endif
