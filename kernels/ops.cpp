// Float kernels of the forward pass. AVX2/FMA/F16C paths with scalar tails;
// the scalar reference versions live in tests/kernels/test_ops.cpp.
#include "kernels/ops.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <xsimd/xsimd.hpp>

#include "kernels/dot.h"
#include "kernels/f16.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KILN_OPS_AVX2 1
#endif

namespace kiln::kernels {

namespace {

// Scalar half <-> float for tails; the row loops below use F16C directly.
float half_to_float(uint16_t h) { return fp16_to_fp32(h); }
uint16_t float_to_half(float f) { return fp32_to_fp16(f); }

#ifdef KILN_OPS_AVX2
float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

constexpr size_t kQ8Block = 32;
constexpr size_t kQ8BlockBytes = 34;  // fp16 scale + 32 int8

}  // namespace

void rmsnorm(std::span<const float> x, std::span<const float> weight, float eps,
             std::span<float> out) {
  assert(weight.size() == x.size() && out.size() == x.size());
  // Sum of squares in double: n is up to ~8k and the result feeds every layer.
  double ss = 0.0;
  for (float v : x) ss += static_cast<double>(v) * v;
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps));
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * weight[i];
}

SoftmaxPiece softmax_exp(std::span<float> x) {
  if (x.empty()) return {};
  // exp is the cost here (attention runs it n_ctx times per head and token):
  // vectorised with xsimd, whose exp is accurate to about 1 ulp.
  using Batch = xsimd::batch<float, xsimd::avx2>;  // the ISA every build targets
  constexpr size_t kLanes = Batch::size;
  const size_t n = x.size();
  const float max = *std::max_element(x.begin(), x.end());
  const Batch vmax(max);
  Batch vsum(0.0f);
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Batch e = xsimd::exp(Batch::load_unaligned(&x[i]) - vmax);
    e.store_unaligned(&x[i]);
    vsum += e;
  }
  float sum = xsimd::hadd(vsum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  return {max, sum};
}

void softmax(std::span<float> x) {
  if (x.empty()) return;
  using Batch = xsimd::batch<float, xsimd::avx2>;
  constexpr size_t kLanes = Batch::size;
  const size_t n = x.size();
  const float inv = 1.0f / softmax_exp(x).sum;
  const Batch vinv(inv);
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    (Batch::load_unaligned(&x[i]) * vinv).store_unaligned(&x[i]);
  }
  for (; i < n; ++i) x[i] *= inv;
}

void silu_mul(std::span<const float> gate, std::span<const float> up, std::span<float> out) {
  assert(gate.size() == up.size() && out.size() == gate.size());
  using Batch = xsimd::batch<float, xsimd::avx2>;  // the ISA every build targets
  constexpr size_t kLanes = Batch::size;
  const size_t n = gate.size();
  size_t i = 0;
  const Batch one(1.0f);
  for (; i + kLanes <= n; i += kLanes) {
    const Batch g = Batch::load_unaligned(&gate[i]);
    const Batch u = Batch::load_unaligned(&up[i]);
    (g / (one + xsimd::exp(-g)) * u).store_unaligned(&out[i]);
  }
  for (; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add(std::span<float> x, std::span<const float> y) {
  assert(x.size() == y.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

float dot(std::span<const float> a, std::span<const float> b) {
  assert(a.size() == b.size());
  const size_t n = a.size();
  size_t i = 0;
  float sum = 0.0f;
#ifdef KILN_OPS_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i]), _mm256_loadu_ps(&b[i]), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i + 8]), _mm256_loadu_ps(&b[i + 8]), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i]), _mm256_loadu_ps(&b[i]), acc0);
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float dot_f16(std::span<const float> a, std::span<const uint16_t> b) {
  assert(a.size() == b.size());
  const size_t n = a.size();
  size_t i = 0;
  float sum = 0.0f;
#ifdef KILN_OPS_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(&b[i])));
    const __m256 b1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(&b[i + 8])));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i]), b0, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i + 8]), b1, acc1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(&b[i])));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(&a[i]), b0, acc0);
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) sum += a[i] * half_to_float(b[i]);
  return sum;
}

void axpy(float alpha, std::span<const float> x, std::span<float> y) {
  assert(x.size() == y.size());
  const size_t n = x.size();
  size_t i = 0;
#ifdef KILN_OPS_AVX2
  const __m256 va = _mm256_set1_ps(alpha);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(&y[i], _mm256_fmadd_ps(va, _mm256_loadu_ps(&x[i]), _mm256_loadu_ps(&y[i])));
  }
#endif
  for (; i < n; ++i) y[i] += alpha * x[i];
}

void axpy_f16(float alpha, std::span<const uint16_t> x, std::span<float> y) {
  assert(x.size() == y.size());
  const size_t n = x.size();
  size_t i = 0;
#ifdef KILN_OPS_AVX2
  const __m256 va = _mm256_set1_ps(alpha);
  for (; i + 8 <= n; i += 8) {
    const __m256 vx = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(&x[i])));
    _mm256_storeu_ps(&y[i], _mm256_fmadd_ps(va, vx, _mm256_loadu_ps(&y[i])));
  }
#endif
  for (; i < n; ++i) y[i] += alpha * half_to_float(x[i]);
}

// Attention kernels: the per-position dot_f16 / axpy_f16 calls they replace spent most
// of their time in call overhead, a horizontal sum per position, and a store and reload
// of out per position (a latency chain through memory); a decode step of 8 sequences
// with ~100 cached positions each spent ~15% of its time there (SmolLM2, 2 threads).
void attention_scores_f16(std::span<const float> q, const uint16_t* k, size_t stride, float scale,
                          std::span<float> scores) {
  const size_t hd = q.size(), n_pos = scores.size();
  size_t p = 0;
#ifdef KILN_OPS_AVX2
  if (hd % 8 == 0) {
    const auto half8 = [](const uint16_t* h) {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
    };
    // Four positions at a time: four independent sums, reduced together.
    for (; p + 4 <= n_pos; p += 4) {
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (size_t i = 0; i < hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(&q[i]);
        for (size_t j = 0; j < 4; ++j) {
          acc[j] = _mm256_fmadd_ps(qv, half8(k + (p + j) * stride + i), acc[j]);
        }
      }
      // Lane j of the result: the sum of acc[j].
      const __m256 s01 = _mm256_hadd_ps(acc[0], acc[1]);
      const __m256 s23 = _mm256_hadd_ps(acc[2], acc[3]);
      const __m256 s = _mm256_hadd_ps(s01, s23);
      const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
      _mm_storeu_ps(&scores[p], _mm_mul_ps(sum, _mm_set1_ps(scale)));
    }
  }
#endif
  for (; p < n_pos; ++p) scores[p] = scale * dot_f16(q, {k + p * stride, hd});
}

void attention_values_f16(std::span<const float> weights, const uint16_t* v, size_t stride,
                          std::span<float> out) {
  const size_t hd = out.size(), n_pos = weights.size();
  size_t i0 = 0;
#ifdef KILN_OPS_AVX2
  // 64 outputs at a time in 8 registers, every position added before they are stored.
  constexpr size_t kChunk = 64;
  for (; i0 + kChunk <= hd; i0 += kChunk) {
    __m256 acc[kChunk / 8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (size_t p = 0; p < n_pos; ++p) {
      const __m256 w = _mm256_set1_ps(weights[p]);
      const uint16_t* row = v + p * stride + i0;
      for (size_t j = 0; j < kChunk / 8; ++j) {
        const __m256 x =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 8 * j)));
        acc[j] = _mm256_fmadd_ps(w, x, acc[j]);
      }
    }
    for (size_t j = 0; j < kChunk / 8; ++j) _mm256_storeu_ps(&out[i0 + 8 * j], acc[j]);
  }
#endif
  if (i0 == hd) return;
  const std::span<float> rest = out.subspan(i0);
  std::fill(rest.begin(), rest.end(), 0.0f);
  for (size_t p = 0; p < n_pos; ++p) axpy_f16(weights[p], {v + p * stride + i0, hd - i0}, rest);
}

// kernels/x86/avx512_attention.cpp: false where the build or the head size has no kernel.
bool attention_scores_f16_group_avx512(const float* q, size_t n_heads, size_t hd, const uint16_t* k,
                                       size_t stride, size_t n_pos, float scale, float* scores,
                                       size_t scores_stride);
bool attention_values_f16_group_avx512(const float* weights, size_t weights_stride, size_t n_heads,
                                       size_t n_pos, const uint16_t* v, size_t stride, float* out,
                                       size_t hd);

namespace {
bool use_avx512_attention() {
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("f16c");
  return cpu && isa_limit() >= Isa::Avx512;
}
}  // namespace

void attention_scores_f16_group(std::span<const float> q, size_t n_heads, const uint16_t* k,
                                size_t stride, size_t n_pos, float scale, float* scores,
                                size_t scores_stride) {
  assert(n_heads > 0 && q.size() % n_heads == 0);
  const size_t hd = q.size() / n_heads;
  if (use_avx512_attention() &&
      attention_scores_f16_group_avx512(q.data(), n_heads, hd, k, stride, n_pos, scale, scores,
                                        scores_stride)) {
    return;
  }
  for (size_t h = 0; h < n_heads; ++h) {
    attention_scores_f16(q.subspan(h * hd, hd), k, stride, scale,
                         {scores + h * scores_stride, n_pos});
  }
}

void attention_values_f16_group(const float* weights, size_t weights_stride, size_t n_heads,
                                size_t n_pos, const uint16_t* v, size_t stride,
                                std::span<float> out) {
  assert(n_heads > 0 && out.size() % n_heads == 0);
  const size_t hd = out.size() / n_heads;
  if (use_avx512_attention() &&
      attention_values_f16_group_avx512(weights, weights_stride, n_heads, n_pos, v, stride,
                                        out.data(), hd)) {
    return;
  }
  for (size_t h = 0; h < n_heads; ++h) {
    attention_values_f16({weights + h * weights_stride, n_pos}, v, stride, out.subspan(h * hd, hd));
  }
}

float dot_q8_0(std::span<const float> a, std::span<const std::byte> blocks) {
  assert(a.size() % kQ8Block == 0 && blocks.size() == a.size() / kQ8Block * kQ8BlockBytes);
  float sum = 0.0f;
  for (size_t b = 0; b < a.size() / kQ8Block; ++b) {
    const std::byte* block = blocks.data() + b * kQ8BlockBytes;
    uint16_t d_bits;
    std::memcpy(&d_bits, block, 2);
    const auto* q = reinterpret_cast<const int8_t*>(block + 2);
    const float* ab = a.data() + b * kQ8Block;
    float block_sum = 0.0f;
    for (size_t j = 0; j < kQ8Block; ++j) block_sum += ab[j] * static_cast<float>(q[j]);
    sum += block_sum * half_to_float(d_bits);
  }
  return sum;
}

void axpy_q8_0(float alpha, std::span<const std::byte> blocks, std::span<float> y) {
  assert(y.size() % kQ8Block == 0 && blocks.size() == y.size() / kQ8Block * kQ8BlockBytes);
  for (size_t b = 0; b < y.size() / kQ8Block; ++b) {
    const std::byte* block = blocks.data() + b * kQ8BlockBytes;
    uint16_t d_bits;
    std::memcpy(&d_bits, block, 2);
    const auto* q = reinterpret_cast<const int8_t*>(block + 2);
    const float scale = alpha * half_to_float(d_bits);
    float* yb = y.data() + b * kQ8Block;
    for (size_t j = 0; j < kQ8Block; ++j) yb[j] += scale * static_cast<float>(q[j]);
  }
}

void quantize_q8_0(std::span<const float> x, std::span<std::byte> blocks) {
  assert(x.size() % kQ8Block == 0 && blocks.size() == x.size() / kQ8Block * kQ8BlockBytes);
  for (size_t b = 0; b < x.size() / kQ8Block; ++b) {
    const float* xb = x.data() + b * kQ8Block;
    float amax = 0.0f;
    for (size_t j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float inv = d != 0.0f ? 1.0f / d : 0.0f;
    std::byte* block = blocks.data() + b * kQ8BlockBytes;
    const uint16_t d_bits = float_to_half(d);
    std::memcpy(block, &d_bits, 2);
    auto* q = reinterpret_cast<int8_t*>(block + 2);
    for (size_t j = 0; j < kQ8Block; ++j) q[j] = static_cast<int8_t>(std::lround(xb[j] * inv));
  }
}

void f32_to_f16_row(std::span<const float> x, std::span<uint16_t> out) {
  assert(x.size() == out.size());
  size_t i = 0;
#ifdef KILN_OPS_AVX2
  for (; i + 8 <= x.size(); i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(&x[i]), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(&out[i]), h);
  }
#endif
  for (; i < x.size(); ++i) out[i] = float_to_half(x[i]);
}

void f16_to_f32_row(std::span<const uint16_t> x, std::span<float> out) {
  assert(x.size() == out.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = half_to_float(x[i]);
}

void rope_angles(int64_t pos, size_t rope_dim, float freq_base, std::span<const float> freq_factors,
                 std::span<float> cos_out, std::span<float> sin_out) {
  const size_t half = rope_dim / 2;
  assert(cos_out.size() >= half && sin_out.size() >= half);
  assert(freq_factors.empty() || freq_factors.size() >= half);
  // Angles in double: at positions in the thousands a float exponent loses
  // several bits before the cos/sin.
  for (size_t i = 0; i < half; ++i) {
    double theta = static_cast<double>(pos) *
                   std::pow(static_cast<double>(freq_base),
                            -2.0 * static_cast<double>(i) / static_cast<double>(rope_dim));
    if (!freq_factors.empty()) theta /= freq_factors[i];
    cos_out[i] = static_cast<float>(std::cos(theta));
    sin_out[i] = static_cast<float>(std::sin(theta));
  }
}

void rope_normal(std::span<float> x, size_t n_heads, size_t head_dim, size_t rope_dim,
                 std::span<const float> cos, std::span<const float> sin) {
  assert(x.size() == n_heads * head_dim && rope_dim <= head_dim);
  for (size_t h = 0; h < n_heads; ++h) {
    float* v = x.data() + h * head_dim;
    for (size_t i = 0; i < rope_dim / 2; ++i) {
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cos[i] - b * sin[i];
      v[2 * i + 1] = a * sin[i] + b * cos[i];
    }
  }
}

void rope_neox(std::span<float> x, size_t n_heads, size_t head_dim, size_t rope_dim,
               std::span<const float> cos, std::span<const float> sin) {
  assert(x.size() == n_heads * head_dim && rope_dim <= head_dim);
  const size_t half = rope_dim / 2;
  for (size_t h = 0; h < n_heads; ++h) {
    float* v = x.data() + h * head_dim;
    for (size_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = a * sin[i] + b * cos[i];
    }
  }
}

}  // namespace kiln::kernels
