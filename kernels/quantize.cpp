// Reference weight quantizers. See quantize.h for the recipes; the comments here say why
// each step is there. The scale searches follow the algorithms of ggml's reference
// quantizers (make_qkx2_quants, make_qx_quants) so that our files match what other GGUF
// tools produce for the same weights.
#include "kernels/quantize.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/f16.h"
#include "kernels/quants.h"

namespace kiln::kernels {

namespace {

// Below this a group counts as all zero (no scale can be derived from it).
constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest, ties to even (the default FP rounding mode). Callers only pass values
// well inside the int range: quantized levels and 6/8-bit scale codes.
inline int nearest_int(float v) { return static_cast<int>(std::nearbyint(v)); }

template <typename Block>
void check_row(const char* type, std::span<const float> x, std::span<Block> y, size_t qk) {
  if (x.size() % qk != 0) {
    throw std::invalid_argument(std::string("quantize ") + type + ": row length " +
                                std::to_string(x.size()) + " is not a multiple of " +
                                std::to_string(qk));
  }
  if (y.size() != x.size() / qk) {
    throw std::invalid_argument(std::string("quantize ") + type + ": " + std::to_string(x.size()) +
                                " values need " + std::to_string(x.size() / qk) +
                                " blocks, output holds " + std::to_string(y.size()));
  }
}

// Index of the element of largest magnitude (the first one on ties); `amax` gets |x[i]|.
// The sign of that element matters: the symmetric formats map it to the level with the
// larger magnitude (-8 of -8..7), which is only reachable on the negative side.
size_t index_of_max_abs(std::span<const float> x, float& amax) {
  size_t best = 0;
  amax = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      best = i;
    }
  }
  return best;
}

// Asymmetric group fit: finds scale and min so that x[i] ~= scale * L[i] - the_min with
// L[i] in 0..nmax, minimising sum weights[i] * (error)^2. Starts from the min/max grid
// and then tries nstep+1 slightly stretched grids ((nmax + rmin + rdelta * is) levels over
// the range), solving the 2x2 weighted least-squares for (scale, min) on each and keeping
// the best. min is clamped to <= 0 (so the_min >= 0) because the formats store the min as
// an unsigned 6-bit multiple of dmin. Returns the scale; L gets the levels.
float fit_scale_min(std::span<const float> x, std::span<const float> weights, std::span<uint8_t> L,
                    float& the_min, int nmax, float rmin, float rdelta, int nstep) {
  const size_t n = x.size();
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (size_t i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L.begin(), L.end(), uint8_t{0});
    the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1.0f / iscale;
  float best_error = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
    L[i] = static_cast<uint8_t>(l);
    const float diff = scale * static_cast<float>(l) + min - x[i];
    const float diff2 = diff * diff;
    best_error += weights[i] * diff2;
  }
  std::array<uint8_t, 32> candidate{};
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (size_t i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      candidate[i] = static_cast<uint8_t>(l);
      const float fl = static_cast<float>(l);
      sum_l += weights[i] * fl;
      sum_l2 += weights[i] * fl * fl;
      sum_xl += weights[i] * fl * x[i];
    }
    // Normal equations of min over (scale, min) of sum w (scale*l + min - x)^2.
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (this_min > 0) {
        // A positive min cannot be stored: refit the scale alone with min = 0.
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float error = 0;
      for (size_t i = 0; i < n; ++i) {
        const float diff = this_scale * static_cast<float>(candidate[i]) + this_min - x[i];
        const float diff2 = diff * diff;
        error += weights[i] * diff2;
      }
      if (error < best_error) {
        std::copy_n(candidate.begin(), n, L.begin());
        best_error = error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  the_min = -min;
  return scale;
}

// Symmetric group fit for Q6_K: x[i] ~= scale * (L[i] - nmax) with L[i] - nmax in
// -nmax..nmax-1, weights x^2 (large values matter most). Tries 19 grids around
// nmax / max|x| and keeps the one whose least-squares scale explains the most of x.
// The returned scale carries the sign that puts the largest-magnitude element on -nmax.
float fit_scale_symmetric(std::span<const float> x, std::span<int8_t> L, int nmax) {
  float amax = 0;
  const float max = x[index_of_max_abs(x, amax)];
  if (amax < kGroupMaxEps) {
    std::fill(L.begin(), L.end(), int8_t{0});
    return 0.0f;
  }
  auto level = [nmax](float iscale, float v) {
    return std::clamp(nearest_int(iscale * v), -nmax, nmax - 1);
  };
  float iscale = -static_cast<float>(nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const int l = level(iscale, x[i]);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  // For the least-squares scale, the error is sum w x^2 - sumlx^2 / suml2: maximise
  // sumlx^2 / suml2, i.e. scale * sumlx.
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    sumlx = suml2 = 0;
    for (float v : x) {
      const int l = level(iscale, v);
      const float w = v * v;
      sumlx += w * v * static_cast<float>(l);
      suml2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (size_t i = 0; i < x.size(); ++i) L[i] = static_cast<int8_t>(level(iscale, x[i]) + nmax);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q4_K/Q5_K pack 8 six-bit scales and 8 six-bit mins into 12 bytes: sub-blocks 0..3 use
// the low 6 bits of bytes 0..3 (scale) and 4..7 (min); sub-blocks 4..7 keep their low 4
// bits in bytes 8..11 and their top 2 bits in the spare top bits of bytes 0..7.
void pack_scale_min_k4(int j, uint8_t sc, uint8_t m, uint8_t* scales) {
  if (j < 4) {
    scales[j] = sc;
    scales[j + 4] = m;
  } else {
    scales[j + 4] = static_cast<uint8_t>((sc & 0xF) | ((m & 0xF) << 4));
    scales[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
    scales[j] |= static_cast<uint8_t>((m >> 4) << 6);
  }
}

void unpack_scale_min_k4(int j, const uint8_t* scales, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = scales[j] & 63;
    m = scales[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// The shared part of Q4_K and Q5_K for one super-block x (256,): fits the 8 sub-blocks,
// stores d, dmin and the packed scales, and returns the levels L (256,) in 0..nmax,
// recomputed against the stored (rounded) scales so that rounding of the scales does not
// show up as a bias in every element.
template <typename Block>
void quantize_superblock_k4(const float* x, Block& y, int nmax, float rmin, float rdelta, int nstep,
                            std::array<uint8_t, QK_K>& L) {
  constexpr int kSub = QK_K / 32;
  std::array<float, kSub> scales{};
  std::array<float, kSub> mins{};
  std::array<float, 32> weights{};
  float max_scale = 0;  // scales are >= 0 here since the min is subtracted
  float max_min = 0;
  for (int j = 0; j < kSub; ++j) {
    const std::span<const float> group(x + 32 * j, 32);
    float sum_x2 = 0;
    for (float v : group) sum_x2 += v * v;
    // Weight each element by the group's RMS plus its own magnitude: large weights
    // matter more, but small ones are not ignored.
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l)
      weights[static_cast<size_t>(l)] = av_x + std::fabs(group[static_cast<size_t>(l)]);
    scales[static_cast<size_t>(j)] =
        fit_scale_min(group, weights, std::span(L).subspan(static_cast<size_t>(32 * j), 32),
                      mins[static_cast<size_t>(j)], nmax, rmin, rdelta, nstep);
    max_scale = std::max(max_scale, scales[static_cast<size_t>(j)]);
    max_min = std::max(max_min, mins[static_cast<size_t>(j)]);
  }

  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  std::memset(y.scales, 0, sizeof(y.scales));
  for (int j = 0; j < kSub; ++j) {
    const auto ls =
        static_cast<uint8_t>(std::min(63, nearest_int(inv_scale * scales[static_cast<size_t>(j)])));
    const auto lm =
        static_cast<uint8_t>(std::min(63, nearest_int(inv_min * mins[static_cast<size_t>(j)])));
    pack_scale_min_k4(j, ls, lm, y.scales);
  }
  y.d = fp32_to_fp16(max_scale / 63.f);
  y.dmin = fp32_to_fp16(max_min / 63.f);

  for (int j = 0; j < kSub; ++j) {
    uint8_t sc = 0, m = 0;
    unpack_scale_min_k4(j, y.scales, sc, m);
    const float d = fp16_to_fp32(y.d) * static_cast<float>(sc);
    if (d == 0) continue;  // keep the fit's levels; they all dequantize to -dm anyway
    const float dm = fp16_to_fp32(y.dmin) * static_cast<float>(m);
    for (int i = 0; i < 32; ++i) {
      const int l = nearest_int((x[32 * j + i] + dm) / d);
      L[static_cast<size_t>(32 * j + i)] = static_cast<uint8_t>(std::clamp(l, 0, nmax));
    }
  }
}

}  // namespace

void quantize_row_q4_0(std::span<const float> x, std::span<block_q4_0> y) {
  check_row("q4_0", x, y, QK4_0);
  for (size_t b = 0; b < y.size(); ++b) {
    const std::span<const float> xb = x.subspan(b * QK4_0, QK4_0);
    float amax = 0;
    const float max = xb[index_of_max_abs(xb, amax)];
    const float d = max / -8;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < QK4_0 / 2; ++j) {
      // x*id lies in [-8, 8]; +8.5 then truncation rounds half up, the top clamps to 15.
      const auto q0 = std::min(15, static_cast<int>(xb[static_cast<size_t>(j)] * id + 8.5f));
      const auto q1 = std::min(15, static_cast<int>(xb[static_cast<size_t>(j + 16)] * id + 8.5f));
      y[b].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q4_1(std::span<const float> x, std::span<block_q4_1> y) {
  check_row("q4_1", x, y, QK4_1);
  for (size_t b = 0; b < y.size(); ++b) {
    const std::span<const float> xb = x.subspan(b * QK4_1, QK4_1);
    const auto [min_it, max_it] = std::minmax_element(xb.begin(), xb.end());
    const float min = *min_it;
    const float d = (*max_it - min) / 15;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(min);
    for (int j = 0; j < QK4_1 / 2; ++j) {
      const auto q0 =
          std::min(15, static_cast<int>((xb[static_cast<size_t>(j)] - min) * id + 0.5f));
      const auto q1 =
          std::min(15, static_cast<int>((xb[static_cast<size_t>(j + 16)] - min) * id + 0.5f));
      y[b].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q5_0(std::span<const float> x, std::span<block_q5_0> y) {
  check_row("q5_0", x, y, QK5_0);
  for (size_t b = 0; b < y.size(); ++b) {
    const std::span<const float> xb = x.subspan(b * QK5_0, QK5_0);
    float amax = 0;
    const float max = xb[index_of_max_abs(xb, amax)];
    const float d = max / -16;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const auto q0 = static_cast<uint32_t>(
          std::min(31, static_cast<int>(xb[static_cast<size_t>(j)] * id + 16.5f)));
      const auto q1 = static_cast<uint32_t>(
          std::min(31, static_cast<int>(xb[static_cast<size_t>(j + 16)] * id + 16.5f)));
      y[b].qs[j] = static_cast<uint8_t>((q0 & 0xF) | ((q1 & 0xF) << 4));
      // Bit 4 of element j goes to bit j of qh, of element j+16 to bit j+16.
      qh |= (q0 >> 4) << j;
      qh |= (q1 >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; ++k) y[b].qh[k] = static_cast<uint8_t>(qh >> (8 * k));
  }
}

void quantize_row_q5_1(std::span<const float> x, std::span<block_q5_1> y) {
  check_row("q5_1", x, y, QK5_1);
  for (size_t b = 0; b < y.size(); ++b) {
    const std::span<const float> xb = x.subspan(b * QK5_1, QK5_1);
    const auto [min_it, max_it] = std::minmax_element(xb.begin(), xb.end());
    const float min = *min_it;
    const float d = (*max_it - min) / 31;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(min);
    uint32_t qh = 0;
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const auto q0 = static_cast<uint32_t>(
          std::min(31, static_cast<int>((xb[static_cast<size_t>(j)] - min) * id + 0.5f)));
      const auto q1 = static_cast<uint32_t>(
          std::min(31, static_cast<int>((xb[static_cast<size_t>(j + 16)] - min) * id + 0.5f)));
      y[b].qs[j] = static_cast<uint8_t>((q0 & 0xF) | ((q1 & 0xF) << 4));
      qh |= (q0 >> 4) << j;
      qh |= (q1 >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; ++k) y[b].qh[k] = static_cast<uint8_t>(qh >> (8 * k));
  }
}

void quantize_row_q4_K(std::span<const float> x, std::span<block_q4_K> y) {
  check_row("q4_K", x, y, QK_K);
  std::array<uint8_t, QK_K> L{};
  for (size_t b = 0; b < y.size(); ++b) {
    // 20 grids stretched by -1.0 .. +1.0 levels in steps of 0.1.
    quantize_superblock_k4(x.data() + b * QK_K, y[b], 15, -1.0f, 0.1f, 20, L);
    // Each 64-element chunk shares 32 bytes: first 32 in the low nibbles, next 32 high.
    uint8_t* q = y[b].qs;
    for (int j = 0; j < QK_K; j += 64) {
      for (int l = 0; l < 32; ++l) {
        q[l] = static_cast<uint8_t>(L[static_cast<size_t>(j + l)] |
                                    (L[static_cast<size_t>(j + l + 32)] << 4));
      }
      q += 32;
    }
  }
}

void quantize_row_q5_K(std::span<const float> x, std::span<block_q5_K> y) {
  check_row("q5_K", x, y, QK_K);
  std::array<uint8_t, QK_K> L{};
  for (size_t b = 0; b < y.size(); ++b) {
    // 16 grids stretched by -0.5 .. +1.0 levels in steps of 0.1.
    quantize_superblock_k4(x.data() + b * QK_K, y[b], 31, -0.5f, 0.1f, 15, L);
    // Low nibbles as in Q4_K; bit 4 of the elements of chunk c (64 elements) goes to bit
    // 2c (first 32) and 2c+1 (next 32) of qh[l].
    std::memset(y[b].qh, 0, sizeof(y[b].qh));
    uint8_t* ql = y[b].qs;
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[static_cast<size_t>(n + j)];
        int l2 = L[static_cast<size_t>(n + j + 32)];
        if (l1 > 15) {
          l1 -= 16;
          y[b].qh[j] |= m1;
        }
        if (l2 > 15) {
          l2 -= 16;
          y[b].qh[j] |= m2;
        }
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
      m1 = static_cast<uint8_t>(m1 << 2);
      m2 = static_cast<uint8_t>(m2 << 2);
      ql += 32;
    }
  }
}

void quantize_row_q6_K(std::span<const float> x, std::span<block_q6_K> y) {
  check_row("q6_K", x, y, QK_K);
  constexpr int kSub = QK_K / 16;
  std::array<int8_t, QK_K> L{};
  std::array<float, kSub> scales{};
  for (size_t b = 0; b < y.size(); ++b) {
    const float* xb = x.data() + b * QK_K;
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < kSub; ++ib) {
      const float scale = fit_scale_symmetric(
          std::span(xb + 16 * ib, 16), std::span(L).subspan(static_cast<size_t>(16 * ib), 16), 32);
      scales[static_cast<size_t>(ib)] = scale;
      if (std::fabs(scale) > max_abs_scale) {
        max_abs_scale = std::fabs(scale);
        max_scale = scale;
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      // All (near) zero: an all-zero block dequantizes to exact zeros.
      std::memset(&y[b], 0, sizeof(block_q6_K));
      continue;
    }
    // The largest sub-block scale maps to -128 so the int8 scales use their full range.
    const float iscale = -128.f / max_scale;
    y[b].d = fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < kSub; ++ib) {
      y[b].scales[ib] =
          static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[static_cast<size_t>(ib)])));
    }
    // Re-round every element against its stored (rounded) sub-block scale.
    for (int j = 0; j < kSub; ++j) {
      const float d = fp16_to_fp32(y[b].d) * static_cast<float>(y[b].scales[j]);
      if (d == 0) continue;
      for (int i = 0; i < 16; ++i) {
        const int l = std::clamp(nearest_int(xb[16 * j + i] / d), -32, 31);
        L[static_cast<size_t>(16 * j + i)] = static_cast<int8_t>(l + 32);
      }
    }
    // Each 128-element half: 4 runs of 32. ql[l] holds run 0 (low) and run 2 (high),
    // ql[l+32] runs 1 and 3; qh[l] holds the top 2 bits of all four runs.
    uint8_t* ql = y[b].ql;
    uint8_t* qh = y[b].qh;
    for (int j = 0; j < QK_K; j += 128) {
      for (int l = 0; l < 32; ++l) {
        const auto at = [&](int k) {
          return static_cast<uint8_t>(L[static_cast<size_t>(j + l + k)]);
        };
        ql[l] = static_cast<uint8_t>((at(0) & 0xF) | ((at(64) & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((at(32) & 0xF) | ((at(96) & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((at(0) >> 4) | ((at(32) >> 4) << 2) | ((at(64) >> 4) << 4) |
                                     ((at(96) >> 4) << 6));
      }
      ql += 64;
      qh += 32;
    }
  }
}

bool can_quantize(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

namespace {
template <typename Block>
std::span<Block> as_blocks(std::span<std::byte> out) {
  if (reinterpret_cast<uintptr_t>(out.data()) % alignof(Block) != 0) {
    throw std::invalid_argument("quantize_row: output buffer is not aligned for the block type");
  }
  return {reinterpret_cast<Block*>(out.data()), out.size() / sizeof(Block)};
}
}  // namespace

void quantize_row(GgmlType type, std::span<const float> x, std::span<std::byte> out) {
  if (!can_quantize(type)) {
    throw std::invalid_argument("quantize_row: cannot quantize to type " +
                                std::string(type_name(type)));
  }
  const auto& t = traits(type);
  if (x.size() % t.block_elements != 0) {
    throw std::invalid_argument("quantize_row: row length " + std::to_string(x.size()) +
                                " is not a multiple of " + std::to_string(t.block_elements) +
                                " (the block size of " + std::string(t.name) + ")");
  }
  if (out.size() != row_bytes(type, x.size())) {
    throw std::invalid_argument("quantize_row: " + std::string(t.name) + " row of " +
                                std::to_string(x.size()) + " values needs " +
                                std::to_string(row_bytes(type, x.size())) + " bytes, got " +
                                std::to_string(out.size()));
  }
  switch (type) {
    case GgmlType::F32:
      std::memcpy(out.data(), x.data(), x.size_bytes());
      return;
    case GgmlType::F16:
      fp32_to_fp16_row(x, as_blocks<uint16_t>(out));
      return;
    case GgmlType::BF16:
      fp32_to_bf16_row(x, as_blocks<uint16_t>(out));
      return;
    case GgmlType::Q4_0:
      return quantize_row_q4_0(x, as_blocks<block_q4_0>(out));
    case GgmlType::Q4_1:
      return quantize_row_q4_1(x, as_blocks<block_q4_1>(out));
    case GgmlType::Q5_0:
      return quantize_row_q5_0(x, as_blocks<block_q5_0>(out));
    case GgmlType::Q5_1:
      return quantize_row_q5_1(x, as_blocks<block_q5_1>(out));
    case GgmlType::Q8_0:
      return quantize_row_q8_0(x, as_blocks<block_q8_0>(out));
    case GgmlType::Q4_K:
      return quantize_row_q4_K(x, as_blocks<block_q4_K>(out));
    case GgmlType::Q5_K:
      return quantize_row_q5_K(x, as_blocks<block_q5_K>(out));
    case GgmlType::Q6_K:
      return quantize_row_q6_K(x, as_blocks<block_q6_K>(out));
    default:
      break;
  }
  throw std::invalid_argument("quantize_row: cannot quantize to type " + std::string(t.name));
}

}  // namespace kiln::kernels
