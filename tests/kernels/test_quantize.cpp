// Reference quantizers: quantize -> dequantize (the reference dequantizers, themselves
// checked against the gguf Python package) must land within what each format's step size
// implies, and awkward rows (constant, zero, outliers, wrong lengths) must behave.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/f16.h"
#include "kernels/quantize.h"
#include "kernels/quants.h"

namespace kiln::kernels {
namespace {

const GgmlType kWeightTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                                 GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
                                 GgmlType::F16,  GgmlType::BF16, GgmlType::F32};

std::vector<float> gaussian_row(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

std::vector<float> round_trip(GgmlType type, const std::vector<float>& x) {
  std::vector<std::byte> q(row_bytes(type, x.size()));
  quantize_row(type, x, q);
  std::vector<float> y(x.size());
  dequantize_row(type, q, y);
  return y;
}

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s += static_cast<double>(f) * f;
  return std::sqrt(s / static_cast<double>(v.size()));
}

double rms_error(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - y[i];
    s += d * d;
  }
  return std::sqrt(s / static_cast<double>(x.size()));
}

// Bound on RMS(error) / RMS(x) for Gaussian rows. A b-bit uniform quantizer over a block
// spanning about +-2.5 sigma has step ~ 5 sigma / 2^b and RMS error step / sqrt(12); the
// bounds below sit ~1.5x above that so a real regression (a wrong level, a lost scale bit)
// fails while the scale searches' small wins and losses do not.
double relative_rms_bound(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
      return 0.13;  // 16 levels, symmetric (one level unused)
    case GgmlType::Q4_1:
      return 0.12;  // 16 levels over [min, max]
    case GgmlType::Q4_K:
      return 0.11;  // 16 levels, per-32 fitted scale and min
    case GgmlType::Q5_0:
      return 0.065;  // 32 levels
    case GgmlType::Q5_1:
      return 0.06;
    case GgmlType::Q5_K:
      return 0.055;
    case GgmlType::Q6_K:
      return 0.03;  // 64 levels per 16
    case GgmlType::Q8_0:
      return 0.008;  // 255 levels
    case GgmlType::F16:
      return 5e-4;  // 11-bit significand: 2^-11 relative, worst case
    case GgmlType::BF16:
      return 4e-3;  // 8-bit significand
    case GgmlType::F32:
      return 0.0;
    default:
      return 0.0;
  }
}

TEST(Quantize, CanQuantizeListsTheProducedTypes) {
  for (GgmlType t : kWeightTypes) EXPECT_TRUE(can_quantize(t)) << type_name(t);
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_NL, GgmlType::Q8_K, GgmlType::I8,
                     GgmlType::IQ2_XXS}) {
    EXPECT_FALSE(can_quantize(t)) << type_name(t);
  }
}

TEST(Quantize, GaussianRowsRoundTripWithinTheFormatsError) {
  for (GgmlType type : kWeightTypes) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      const auto x = gaussian_row(4096, seed, 0.02f * static_cast<float>(seed));
      const auto y = round_trip(type, x);
      const double rel = rms_error(x, y) / rms(x);
      EXPECT_LE(rel, relative_rms_bound(type)) << type_name(type) << " seed " << seed;
      // The K types' (scale, min) search must pay off: with the same bits per element as
      // Q4_1/Q5_1 (plus 6-bit scale codes instead of fp16 ones) they are clearly more
      // accurate on Gaussian rows (~9% and ~4.5%; without the search they are not better).
      if (type == GgmlType::Q4_K) {
        EXPECT_LE(rel, rms_error(x, round_trip(GgmlType::Q4_1, x)) / rms(x) * 0.95);
      }
      if (type == GgmlType::Q5_K) {
        EXPECT_LE(rel, rms_error(x, round_trip(GgmlType::Q5_1, x)) / rms(x) * 0.98);
      }
    }
  }
}

// Legacy types: every element lands on the level nearest to it among the levels the
// format can express with the block's scale (recomputed here from the block's values by
// the format's definition, independently of the quantizer), up to the fp16 rounding of d
// (which moves level q by |q| * |d - fp16(d)|) and of m.
TEST(Quantize, LegacyTypesRoundEachElementToANearestLevel) {
  const auto x = gaussian_row(1024, 7);
  struct Case {
    GgmlType type;
    int lo_level, hi_level;  // levels lo..hi times d (symmetric), or 0..hi times d plus min
    bool with_min;
  };
  // Symmetric types: d = (element of largest magnitude) / lo_level, so that element sits on
  // the wide level; elements on the other side beyond hi_level * |d| are clamped.
  for (const Case c : {Case{GgmlType::Q4_0, -8, 7, false}, Case{GgmlType::Q5_0, -16, 15, false},
                       Case{GgmlType::Q8_0, -127, 127, false}, Case{GgmlType::Q4_1, 0, 15, true},
                       Case{GgmlType::Q5_1, 0, 31, true}}) {
    const auto y = round_trip(c.type, x);
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float lo = x[b * 32], hi = x[b * 32], amax = 0, max = 0;
      for (size_t i = b * 32; i < b * 32 + 32; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
        if (std::fabs(x[i]) > amax) {
          amax = std::fabs(x[i]);
          max = x[i];
        }
      }
      // Q8_0 is symmetric about zero with d = max|x| / 127, sign irrelevant.
      const float d = c.with_min                 ? (hi - lo) / static_cast<float>(c.hi_level)
                      : c.type == GgmlType::Q8_0 ? amax / 127.0f
                                                 : max / static_cast<float>(c.lo_level);
      const float base = c.with_min ? lo : 0.0f;
      const int n_levels = c.hi_level - c.lo_level + 1;
      const float slop = static_cast<float>(n_levels) * std::fabs(d) * 0x1p-11f +
                         std::fabs(base) * 0x1p-11f + 1e-6f;
      for (size_t i = b * 32; i < b * 32 + 32; ++i) {
        float best = INFINITY;
        for (int q = c.lo_level; q <= c.hi_level; ++q) {
          best = std::min(best, std::fabs(x[i] - (base + static_cast<float>(q) * d)));
        }
        ASSERT_LE(std::fabs(x[i] - y[i]), best + slop)
            << type_name(c.type) << " block " << b << " element " << i;
      }
    }
  }
}

TEST(Quantize, SymmetricTypesMapTheLargestMagnitudeOntoTheWideLevel) {
  // Q4_0 levels are -8..7 times d: the element of largest magnitude must land on -8 (exact
  // up to the fp16 rounding of d), whatever its sign.
  for (float sign : {1.0f, -1.0f}) {
    auto x = gaussian_row(32, 11, 0.1f);
    x[5] = sign * 3.0f;
    const auto y = round_trip(GgmlType::Q4_0, x);
    EXPECT_NEAR(y[5], x[5], 3.0f * 0x1p-11f) << "sign " << sign;
    const auto y5 = round_trip(GgmlType::Q5_0, x);
    EXPECT_NEAR(y5[5], x[5], 3.0f * 0x1p-11f) << "sign " << sign;
  }
}

TEST(Quantize, ZeroRowsStayExactlyZero) {
  const std::vector<float> x(512, 0.0f);
  for (GgmlType type : kWeightTypes) {
    const auto y = round_trip(type, x);
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_EQ(y[i], 0.0f) << type_name(type) << " element " << i;
    }
  }
}

TEST(Quantize, ConstantRowsComeBackClose) {
  // (Constants are chosen so the K types' fp16 super-scales, c / 15 / 63, stay normal
  // numbers: below ~0.06 they go subnormal and lose relative precision, as in ggml.)
  for (float c : {0.5f, -0.5f, 1.0f, -7.25f, 100.0f}) {
    const std::vector<float> x(512, c);
    for (GgmlType type : kWeightTypes) {
      const auto y = round_trip(type, x);
      // A constant block is representable up to the rounding of its scales: fp16 d (2^-11)
      // times at most a few levels, or a 6-bit K scale code rounding (1/63 of d).
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], c, std::fabs(c) * 4e-3f) << type_name(type) << " c=" << c << " i=" << i;
      }
    }
  }
}

TEST(Quantize, OutliersAreKeptAndDoNotSpoilOtherBlocks) {
  for (GgmlType type : kWeightTypes) {
    auto x = gaussian_row(2048, 21, 0.02f);
    const auto clean = round_trip(type, x);
    x[300] = 50.0f;  // 2500 sigma, inside the second 256-element super-block
    const auto y = round_trip(type, x);
    for (float v : y) ASSERT_TRUE(std::isfinite(v)) << type_name(type);
    // The outlier is the block maximum: it sets the scale, so it comes back nearly exact.
    EXPECT_NEAR(y[300], 50.0f, 50.0f * 0.02f) << type_name(type);
    // Blocks (and super-blocks) other than the outlier's are unaffected.
    for (size_t i = 512; i < x.size(); ++i)
      ASSERT_EQ(y[i], clean[i]) << type_name(type) << " " << i;
    for (size_t i = 0; i < 256; ++i) ASSERT_EQ(y[i], clean[i]) << type_name(type) << " " << i;
  }
}

TEST(Quantize, TinyAndHugeMagnitudesStayFinite) {
  // 1e4 sigma keeps the _1 types' fp16 min inside fp16's range (65504).
  for (float sigma : {1e-6f, 1e-3f, 1e3f, 1e4f}) {
    const auto x = gaussian_row(512, 5, sigma);
    for (GgmlType type : kWeightTypes) {
      const auto y = round_trip(type, x);
      for (float v : y) ASSERT_TRUE(std::isfinite(v)) << type_name(type) << " sigma " << sigma;
      if (sigma >= 1e-3f) {
        EXPECT_LE(rms_error(x, y) / rms(x), relative_rms_bound(type) * 1.5 + 1e-6)
            << type_name(type) << " sigma " << sigma;
      }
    }
  }
}

TEST(Quantize, SymmetricLegacyTypesAreIdempotent) {
  // Re-quantizing a dequantized row reproduces the same bytes: the scale is recovered
  // exactly from the wide level and every element sits exactly on a level.
  const auto x = gaussian_row(1024, 9);
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0}) {
    std::vector<std::byte> q1(row_bytes(type, x.size())), q2(q1.size());
    quantize_row(type, x, q1);
    std::vector<float> y(x.size());
    dequantize_row(type, q1, y);
    quantize_row(type, y, q2);
    EXPECT_EQ(std::memcmp(q1.data(), q2.data(), q1.size()), 0) << type_name(type);
  }
}

TEST(Quantize, RejectsRowsThatAreNotWholeBlocks) {
  const std::vector<float> x(300, 1.0f);  // a multiple of neither 32 nor 256
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0}) {
    std::vector<std::byte> out(4096);
    try {
      quantize_row(type, x, out);
      ADD_FAILURE() << type_name(type) << " accepted a row of 300";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("300"), std::string::npos) << e.what();
    }
  }
  // 288 = 9 * 32 is fine for the 32-element types but not for the K types.
  const std::vector<float> x288(288, 1.0f);
  std::vector<std::byte> out(row_bytes(GgmlType::Q5_0, 288));
  EXPECT_NO_THROW(quantize_row(GgmlType::Q5_0, x288, out));
  std::vector<std::byte> out_k(1024);
  EXPECT_THROW(quantize_row(GgmlType::Q4_K, x288, out_k), std::invalid_argument);
  std::vector<block_q6_K> blocks(2);
  EXPECT_THROW(quantize_row_q6_K(x288, blocks), std::invalid_argument);
}

TEST(Quantize, RejectsWrongOutputSizesAndTypes) {
  const std::vector<float> x(256, 1.0f);
  std::vector<std::byte> small(row_bytes(GgmlType::Q4_K, 256) - 1);
  EXPECT_THROW(quantize_row(GgmlType::Q4_K, x, small), std::invalid_argument);
  std::vector<std::byte> big(row_bytes(GgmlType::Q4_0, 256) + 18);
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, x, big), std::invalid_argument);
  std::vector<std::byte> any(1024);
  EXPECT_THROW(quantize_row(GgmlType::Q3_K, x, any), std::invalid_argument);
  std::vector<block_q4_0> blocks(7);  // 256 values need 8
  EXPECT_THROW(quantize_row_q4_0(x, blocks), std::invalid_argument);
}

TEST(Quantize, KTypeScalesUseTheFullSixBitRange) {
  // The sub-block with the largest scale gets code 63 (scales are quantized against the
  // largest), so d * 63 reproduces it; a broken packing of the high bits would lose this.
  auto x = gaussian_row(256, 13, 0.01f);
  for (size_t i = 224; i < 256; ++i) x[i] *= 40.0f;  // sub-block 7 (high bits packed apart)
  std::vector<block_q4_K> q(1);
  quantize_row_q4_K(x, q);
  uint8_t sc = 0, m = 0;
  get_scale_min_k4(7, q[0].scales, sc, m);
  EXPECT_EQ(sc, 63);
  const auto y = round_trip(GgmlType::Q4_K, x);
  std::vector<float> sub7(x.begin() + 224, x.end()), sub7y(y.begin() + 224, y.end());
  EXPECT_LE(rms_error(sub7, sub7y) / rms(sub7), relative_rms_bound(GgmlType::Q4_K));
}

}  // namespace
}  // namespace kiln::kernels
