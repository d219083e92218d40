// The activation quantizers (Q8_0, Q8_K, the matmul's block_q8_act) against their
// definitions, and the dequantize_row dispatcher's contract. The dequantizers themselves are
// compared with the gguf Python package in tests/python/test_quant_dequant.py.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/f16.h"
#include "kernels/quants.h"

namespace kiln::kernels {
namespace {

std::vector<float> random_row(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

TEST(QuantizeQ8K, ErrorWithinHalfStepAndBlockSumsExact) {
  std::mt19937 rng(11);
  for (float scale : {1e-3f, 1.0f, 300.0f}) {
    const auto x = random_row(4 * QK_K, rng, scale);
    std::vector<block_q8_K> q(4);
    quantize_row_q8_K(x, q);
    for (size_t i = 0; i < q.size(); ++i) {
      float amax = 0.0f;
      for (int j = 0; j < QK_K; ++j) amax = std::max(amax, std::fabs(x[i * QK_K + j]));
      EXPECT_NEAR(std::fabs(q[i].d), amax / 127.0f, amax * 1e-6f);
      for (int j = 0; j < QK_K; ++j) {
        ASSERT_GE(q[i].qs[j], -127);  // the SIMD kernels negate activation quants
        EXPECT_NEAR(q[i].d * q[i].qs[j], x[i * QK_K + j], std::fabs(q[i].d) * 0.5001f);
      }
      for (int s = 0; s < QK_K / 16; ++s) {
        int sum = 0;
        for (int j = 0; j < 16; ++j) sum += q[i].qs[16 * s + j];
        EXPECT_EQ(q[i].bsums[s], sum);
      }
    }
  }
}

TEST(QuantizeQ8K, ZeroBlockIsAllZero) {
  std::vector<float> x(QK_K, 0.0f);
  std::vector<block_q8_K> q(1);
  quantize_row_q8_K(x, q);
  EXPECT_EQ(q[0].d, 0.0f);
  for (int j = 0; j < QK_K; ++j) EXPECT_EQ(q[0].qs[j], 0);
  for (int s = 0; s < 16; ++s) EXPECT_EQ(q[0].bsums[s], 0);
}

TEST(QuantizeQ8Act, ErrorWithinHalfStepAndSumMatches) {
  std::mt19937 rng(12);
  const auto x = random_row(8 * QK8_0, rng, 2.0f);
  std::vector<block_q8_act> q(8);
  quantize_row_q8_act(x, q);
  std::vector<float> back(x.size());
  dequantize_row_q8_act(q, back);
  for (size_t i = 0; i < q.size(); ++i) {
    int sum = 0;
    for (int j = 0; j < QK8_0; ++j) {
      ASSERT_GE(q[i].qs[j], -127);
      sum += q[i].qs[j];
      EXPECT_NEAR(back[i * QK8_0 + j], x[i * QK8_0 + j], q[i].d * 0.5001f);
    }
    EXPECT_FLOAT_EQ(q[i].s, q[i].d * static_cast<float>(sum));
  }
}

TEST(QuantizeQ8_0, RoundTripWithinHalfStepOfTheFp16Scale) {
  std::mt19937 rng(13);
  const auto x = random_row(8 * QK8_0, rng, 0.1f);
  std::vector<block_q8_0> q(8);
  quantize_row_q8_0(x, q);
  std::vector<float> back(x.size());
  dequantize_row_q8_0(q, back);
  for (size_t i = 0; i < q.size(); ++i) {
    const float d = fp16_to_fp32(q[i].d);
    for (int j = 0; j < QK8_0; ++j) {
      // Rounded with the unrounded scale, so allow the fp16 rounding of d on top.
      EXPECT_NEAR(back[i * QK8_0 + j], x[i * QK8_0 + j], d * 0.5f + 127.0f * d * 1e-3f);
    }
  }
}

TEST(DequantizeRow, RejectsUnsupportedTypesAndWrongSizes) {
  std::vector<std::byte> src(66);
  std::vector<float> dst(256);
  EXPECT_FALSE(can_dequantize(GgmlType::IQ2_XXS));
  try {
    dequantize_row(GgmlType::IQ2_XXS, src, dst);
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(can_dequantize(GgmlType::Q4_K));
  std::vector<std::byte> q4k(144);
  EXPECT_NO_THROW(dequantize_row(GgmlType::Q4_K, q4k, dst));
  EXPECT_THROW(dequantize_row(GgmlType::Q4_K, std::span(q4k).first(143), dst),
               std::invalid_argument);
  std::vector<float> not_a_block(100);
  EXPECT_THROW(dequantize_row(GgmlType::Q4_K, q4k, not_a_block), std::invalid_argument);
}

TEST(DequantizeRow, DispatcherMatchesTypedFunctions) {
  // A Q4_0 block written by hand: d = 0.5, codes 0..15 then 15..0.
  block_q4_0 b{};
  b.d = fp32_to_fp16(0.5f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  std::vector<float> y(32);
  dequantize_row(GgmlType::Q4_0, std::as_bytes(std::span(&b, 1)), y);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 8));
    EXPECT_EQ(y[j + 16], 0.5f * static_cast<float>(15 - j - 8));
  }
}

}  // namespace
}  // namespace kiln::kernels
