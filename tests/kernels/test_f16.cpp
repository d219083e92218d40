// fp16/bf16 conversions against independent oracles: the F16C instructions (hardware
// IEEE conversion with round-to-nearest-even) for fp16, and exact arithmetic for bf16.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/f16.h"

namespace kiln::kernels {
namespace {

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

TEST(F16, EveryHalfToFloatMatchesHardware) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float expected = _cvtsh_ss(static_cast<uint16_t>(h));
    const float got = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      ASSERT_TRUE(std::isnan(got)) << "half 0x" << std::hex << h;
    }
    ASSERT_EQ(bits(got), bits(expected)) << "half 0x" << std::hex << h;
  }
}

TEST(F16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto half = static_cast<uint16_t>(h);
    const uint16_t back = fp32_to_fp16(fp16_to_fp32(half));
    if ((half & 0x7c00) == 0x7c00 && (half & 0x3ff) != 0) {
      // NaN: stays NaN with its payload; only the quiet bit may be added.
      ASSERT_EQ(back, half | 0x200) << "half 0x" << std::hex << h;
    } else {
      ASSERT_EQ(back, half) << "half 0x" << std::hex << h;
    }
  }
}

TEST(F16, FloatToHalfMatchesHardwareOnRoundingEdges) {
  // For every combination of sign, exponent and top 10 mantissa bits, try the dropped
  // 13 bits at the rounding edges (just below, at and above the tie) and at random.
  std::mt19937 rng(42);
  const uint32_t edges[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff};
  for (uint32_t top = 0; top < (1u << 19); ++top) {
    for (uint32_t low : edges) {
      const uint32_t x = (top << 13) | low;
      const float f = std::bit_cast<float>(x);
      const uint16_t expected = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
      ASSERT_EQ(fp32_to_fp16(f), expected) << "float bits 0x" << std::hex << x;
    }
    const uint32_t x = (top << 13) | (rng() & 0x1fff);
    const float f = std::bit_cast<float>(x);
    ASSERT_EQ(fp32_to_fp16(f), _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT))
        << "float bits 0x" << std::hex << x;
  }
}

TEST(F16, SpecialValues) {
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);  // the tie above the largest half rounds up
  EXPECT_EQ(fp32_to_fp16(-INFINITY), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(0x1p-24f), 0x0001);
  EXPECT_EQ(fp32_to_fp16(0x1p-25f), 0x0000);  // tie to even (zero)
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(NAN))));
}

TEST(BF16, ExhaustiveToFloatAndRoundTrip) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const auto v = static_cast<uint16_t>(b);
    const float f = bf16_to_fp32(v);
    ASSERT_EQ(bits(f), b << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(fp32_to_bf16(f), v);
    }
  }
}

TEST(BF16, RoundsToNearestEven) {
  // Compare against rounding done in double: the two bf16 neighbours of x and the
  // distance to each.
  std::mt19937 rng(7);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t x = rng() & 0x7effffffu;  // finite, positive, rounds to finite
    const float f = std::bit_cast<float>(x);
    const uint32_t down = x & 0xffff0000u;
    const uint32_t up = down + 0x10000u;
    const double d_down = static_cast<double>(f) - std::bit_cast<float>(down);
    const double d_up = static_cast<double>(std::bit_cast<float>(up)) - f;
    uint32_t expected;
    if (d_down < d_up) {
      expected = down;
    } else if (d_up < d_down) {
      expected = up;
    } else {
      expected = ((down >> 16) & 1u) ? up : down;
    }
    ASSERT_EQ(static_cast<uint32_t>(fp32_to_bf16(f)) << 16, expected) << std::hex << x;
  }
}

TEST(F16, RowConversionsMatchScalar) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 100.0f);
  for (size_t n : {0u, 1u, 7u, 8u, 9u, 31u, 100u}) {
    std::vector<float> src(n), back(n), back_bf(n);
    for (auto& v : src) v = dist(rng);
    std::vector<uint16_t> half(n), bf(n);
    fp32_to_fp16_row(src, half);
    fp16_to_fp32_row(half, back);
    fp32_to_bf16_row(src, bf);
    bf16_to_fp32_row(bf, back_bf);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(half[i], fp32_to_fp16(src[i]));
      EXPECT_EQ(bits(back[i]), bits(fp16_to_fp32(half[i])));
      EXPECT_EQ(bf[i], fp32_to_bf16(src[i]));
      EXPECT_EQ(bits(back_bf[i]), bits(bf16_to_fp32(bf[i])));
    }
  }
  std::vector<float> small(3);
  std::vector<uint16_t> big(4);
  EXPECT_THROW(fp32_to_fp16_row(small, big), std::invalid_argument);
}

}  // namespace
}  // namespace kiln::kernels
