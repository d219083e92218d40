// AVX-512 attention over the F16 KV cache for a GQA group: the query heads that share one KV
// head are scored and summed in one pass over its keys and values, so each cached fp16 value
// is converted to float once per group instead of once per head (SmolLM2: 3 heads a group,
// Llama 2/3 and TinyLlama 4-8). Same contracts as kernels/ops.h's *_group functions, which
// call these after a CPUID check and fall back to the per-head AVX2 kernels.
//
// Built with AVX-512 flags for this file only (kernels/CMakeLists.txt).
#include "kernels/ops.h"

#if defined(__AVX512F__) && defined(__F16C__)
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_ps() as the merge source of unmasked
// shuffles and conversions, which -Wmaybe-uninitialized reports once they are inlined in
// loops (a false positive, gone in GCC 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace kiln::kernels {
namespace {

// Positions per scores tile: their keys are converted to float once (into the stack), then
// every head of the group reads them.
constexpr size_t kTile = 16;
constexpr size_t kMaxHeadDim = 256;

// v[j] (16 partial sums each) -> lane j = the sum of v[j].
inline __m512 reduce_16x16(const __m512 v[16]) {
  __m512 w[8], x[4];
  // 128-bit lanes of w[i]: [v2i (0+2), v2i (1+3), v2i+1 (0+2), v2i+1 (1+3)].
  for (int i = 0; i < 8; ++i) {
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  // 128-bit lane L of x[i]: four partials of v[4i + L].
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
  }
  // Within each 128-bit lane L: element i = the sum of v[4i + L].
  const __m512 y0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
  const __m512 y1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
  const __m512 z = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(y0), _mm512_castps_pd(y1))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(y0), _mm512_castps_pd(y1))));
  // z element 4L + i holds v[4i + L]'s sum: back to lane j = 4i + L.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, z);
}

// The cache rows of one KV head are strided (every KV head's values of a position lie
// together), short runs the hardware prefetchers pick up late: request the head's bytes of
// the position kAhead rows on.
constexpr size_t kAhead = 16;
inline void prefetch_head(const uint16_t* row, size_t hd) {
  for (size_t b = 0; b < hd * sizeof(uint16_t); b += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(row) + b, _MM_HINT_T0);
  }
}

inline __m512 load_half16(const uint16_t* h) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
}

// Values for up to H heads of hd = 16 C: acc[h][c] += w_h[p] * V_p[16c ..], over every p.
template <int C, int H>
void values_heads(const float* weights, size_t weights_stride, int n_heads, size_t n_pos,
                  const uint16_t* v, size_t stride, float* out, size_t hd) {
  __m512 acc[H][C];
  for (int h = 0; h < H; ++h) {
    for (int c = 0; c < C; ++c) acc[h][c] = _mm512_setzero_ps();
  }
  for (size_t p = 0; p < n_pos; ++p) {
    if (p + kAhead < n_pos) prefetch_head(v + (p + kAhead) * stride, 16 * C);
    __m512 row[C];
    for (int c = 0; c < C; ++c) row[c] = load_half16(v + p * stride + 16 * c);
    for (int h = 0; h < H; ++h) {
      if (h >= n_heads) break;
      const __m512 w = _mm512_set1_ps(weights[static_cast<size_t>(h) * weights_stride + p]);
      for (int c = 0; c < C; ++c) acc[h][c] = _mm512_fmadd_ps(w, row[c], acc[h][c]);
    }
  }
  for (int h = 0; h < H && h < n_heads; ++h) {
    for (int c = 0; c < C; ++c)
      _mm512_storeu_ps(out + static_cast<size_t>(h) * hd + 16 * c, acc[h][c]);
  }
}

}  // namespace

bool attention_scores_f16_group_avx512(const float* q, size_t n_heads, size_t hd, const uint16_t* k,
                                       size_t stride, size_t n_pos, float scale, float* scores,
                                       size_t scores_stride) {
  if (hd % 16 != 0 || hd > kMaxHeadDim) return false;
  alignas(64) float keys[kTile * kMaxHeadDim];
  const size_t chunks = hd / 16;
  const __m512 vscale = _mm512_set1_ps(scale);
  for (size_t p0 = 0; p0 < n_pos; p0 += kTile) {
    const size_t np = std::min(kTile, n_pos - p0);
    for (size_t j = p0 + kAhead; j < std::min(n_pos, p0 + kAhead + kTile); ++j) {
      prefetch_head(k + j * stride, hd);
    }
    // The tile's keys as float; missing positions as zeros (their scores are not stored).
    for (size_t j = 0; j < kTile; ++j) {
      for (size_t c = 0; c < chunks; ++c) {
        _mm512_store_ps(keys + j * hd + 16 * c,
                        j < np ? load_half16(k + (p0 + j) * stride + 16 * c) : _mm512_setzero_ps());
      }
    }
    const __mmask16 mask = static_cast<__mmask16>((1u << np) - 1);
    for (size_t h = 0; h < n_heads; ++h) {
      const float* qh = q + h * hd;
      __m512 acc[kTile];
      for (size_t j = 0; j < kTile; ++j) acc[j] = _mm512_setzero_ps();
      for (size_t c = 0; c < chunks; ++c) {
        const __m512 qv = _mm512_loadu_ps(qh + 16 * c);
        for (size_t j = 0; j < kTile; ++j) {
          acc[j] = _mm512_fmadd_ps(qv, _mm512_load_ps(keys + j * hd + 16 * c), acc[j]);
        }
      }
      _mm512_mask_storeu_ps(scores + h * scores_stride + p0, mask,
                            _mm512_mul_ps(reduce_16x16(acc), vscale));
    }
  }
  return true;
}

bool attention_values_f16_group_avx512(const float* weights, size_t weights_stride, size_t n_heads,
                                       size_t n_pos, const uint16_t* v, size_t stride, float* out,
                                       size_t hd) {
  // 16 accumulators: 4 heads of 64 values, or 2 of 128, at a time.
  for (size_t h0 = 0; h0 < n_heads;) {
    const int left = static_cast<int>(n_heads - h0);
    const float* w = weights + h0 * weights_stride;
    float* o = out + h0 * hd;
    if (hd == 64) {
      values_heads<4, 4>(w, weights_stride, left, n_pos, v, stride, o, hd);
      h0 += 4;
    } else if (hd == 128) {
      values_heads<8, 2>(w, weights_stride, left, n_pos, v, stride, o, hd);
      h0 += 2;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace kiln::kernels

#else

namespace kiln::kernels {
bool attention_scores_f16_group_avx512(const float*, size_t, size_t, const uint16_t*, size_t,
                                       size_t, float, float*, size_t) {
  return false;
}
bool attention_values_f16_group_avx512(const float*, size_t, size_t, size_t, const uint16_t*,
                                       size_t, float*, size_t) {
  return false;
}
}  // namespace kiln::kernels

#endif
