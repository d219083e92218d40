// matmul_group against the oracle of test_matmul.cpp (dequantized weight row . activation
// as the kernel sees it, in double), on groups that mix activation formats, with guard
// cells around every output and the scratch, at several thread counts.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/dot.h"
#include "kernels/matmul.h"
#include "kernels/quants.h"
#include "kernels/thread_pool.h"

namespace kiln::kernels {
namespace {

using testing::activation_as_seen;
using testing::random_activations;
using testing::random_weights;
using testing::reference_dot;
using testing::tolerance;

constexpr size_t kGuard = 16;
constexpr float kSentinel = 7.77e7f;

struct Shape {
  GgmlType type;
  size_t rows;
};

// Runs one group and checks every output of every target, and that nothing outside the
// outputs and the scratch was written.
void check_group(const std::vector<Shape>& shapes, size_t cols, size_t m, ThreadPool& pool,
                 std::mt19937& rng, ActPrecision precision = ActPrecision::int8) {
  std::vector<std::vector<std::byte>> weights;
  std::vector<std::vector<float>> ys;
  std::vector<GgmlType> types;
  for (const Shape& s : shapes) {
    weights.push_back(random_weights(s.type, s.rows, cols, rng));
    ys.emplace_back(m * s.rows + 2 * kGuard, kSentinel);
    types.push_back(s.type);
  }
  std::vector<MatmulTarget> targets;
  for (size_t i = 0; i < shapes.size(); ++i) {
    targets.push_back({{shapes[i].type, weights[i], shapes[i].rows, cols},
                       std::span(ys[i]).subspan(kGuard, m * shapes[i].rows)});
  }
  const auto x = random_activations(m * cols, rng);
  const size_t scratch_bytes = matmul_group_scratch_bytes(types, cols, m, precision);
  std::vector<std::byte> scratch(scratch_bytes + kGuard, std::byte{0xAB});

  matmul_group(targets, x, m, std::span(scratch).first(scratch_bytes), pool, precision);

  for (size_t i = 0; i < kGuard; ++i) {
    ASSERT_EQ(scratch[scratch_bytes + i], std::byte{0xAB}) << "wrote past scratch";
  }
  for (size_t k = 0; k < shapes.size(); ++k) {
    const GgmlType type = shapes[k].type;
    const size_t rows = shapes[k].rows;
    const std::vector<float>& y = ys[k];
    for (size_t i = 0; i < kGuard; ++i) {
      ASSERT_EQ(y[i], kSentinel) << "target " << k << ": wrote before y";
      ASSERT_EQ(y[kGuard + m * rows + i], kSentinel) << "target " << k << ": wrote after y";
    }
    const ActFormat act = dot_kernel(type, precision).act;
    std::vector<std::vector<float>> seen;
    for (size_t t = 0; t < m; ++t) {
      seen.push_back(activation_as_seen(act, std::span(x).subspan(t * cols, cols)));
    }
    const size_t rb = row_bytes(type, cols);
    std::vector<float> w_deq(cols);
    for (size_t r = 0; r < rows; ++r) {
      dequantize_row(type, std::span(weights[k]).subspan(r * rb, rb), w_deq);
      for (size_t t = 0; t < m; ++t) {
        const auto ref = reference_dot(w_deq, seen[t]);
        const float got = y[kGuard + t * rows + r];
        ASSERT_TRUE(std::isfinite(got)) << "target " << k << " row " << r << " token " << t;
        ASSERT_NEAR(got, ref.value, tolerance(ref))
            << "target " << k << " (" << type_name(type) << ", " << rows << " rows) cols " << cols
            << " m " << m << " row " << r << " token " << t << " threads " << pool.size();
      }
    }
  }
}

TEST(MatmulGroup, QkvShapedGroupsMatchTheOracle) {
  std::mt19937 rng(11);
  for (int threads = 1; threads <= 3; ++threads) {
    ThreadPool pool(threads);
    for (size_t m : {1, 2, 5}) {
      // Like a layer of a Q4_K_M model: Q and K in Q4_K, V in Q6_K (same activation format).
      check_group({{GgmlType::Q4_K, 64}, {GgmlType::Q4_K, 16}, {GgmlType::Q6_K, 16}}, 512, m, pool,
                  rng);
      // Q5_0 / Q8_0 (32-element activation blocks) next to F32 (float activations).
      check_group({{GgmlType::Q5_0, 33}, {GgmlType::Q8_0, 7}, {GgmlType::F32, 20}}, 96, m, pool,
                  rng);
    }
  }
}

TEST(MatmulGroup, MixesEveryActivationFormatInOneGroup) {
  std::mt19937 rng(12);
  ThreadPool pool(2);
  // Q8_K, Q8_act and F32 activations at once, four targets, rows not multiples of 16.
  check_group({{GgmlType::Q4_K, 50}, {GgmlType::Q4_0, 3}, {GgmlType::F16, 17}, {GgmlType::Q6_K, 1}},
              256, 3, pool, rng);
  // Several token tiles with a remainder.
  check_group({{GgmlType::Q8_0, 40}, {GgmlType::Q4_1, 9}}, 64, 11, pool, rng);
}

TEST(MatmulGroup, PreciseActivationsUseTheirOwnFormats) {
  std::mt19937 rng(15);
  ThreadPool pool(2);
  // int16 activations: Q8_K2 and Q8_act2 regions next to F32 ones.
  check_group({{GgmlType::Q4_K, 40}, {GgmlType::Q8_0, 16}, {GgmlType::F32, 9}}, 256, 2, pool, rng,
              ActPrecision::int16);
}

TEST(MatmulGroup, OneTargetIsAPlainMatmul) {
  std::mt19937 rng(13);
  ThreadPool pool(3);
  check_group({{GgmlType::Q6_K, 1000}}, 256, 1, pool, rng);  // many units: shrinking claims
  check_group({{GgmlType::IQ4_XS, 5}}, 256, 4, pool, rng);
}

TEST(MatmulGroup, RejectsBadGroupsBeforeWriting) {
  std::mt19937 rng(14);
  ThreadPool pool(2);
  const size_t cols = 256;
  const auto w = random_weights(GgmlType::Q4_K, 16, cols, rng);
  const auto w_wide = random_weights(GgmlType::Q4_K, 16, 2 * cols, rng);
  std::vector<float> x(2 * cols), y(16, kSentinel), y2(16, kSentinel), y_short(15);
  std::vector<std::byte> scratch(matmul_group_scratch_bytes(
      std::vector<GgmlType>{GgmlType::Q4_K, GgmlType::Q4_K}, 2 * cols, 1));
  const WeightMatrix matrix{GgmlType::Q4_K, w, 16, cols};

  // Different cols in one group: the first target must stay untouched.
  std::vector<MatmulTarget> mixed{{matrix, y}, {{GgmlType::Q4_K, w_wide, 16, 2 * cols}, y2}};
  EXPECT_THROW(matmul_group(mixed, x, 1, scratch, pool), std::invalid_argument);
  for (float v : y) ASSERT_EQ(v, kSentinel);

  std::vector<MatmulTarget> short_y{{matrix, y}, {matrix, y_short}};
  EXPECT_THROW(matmul_group(short_y, x, 1, scratch, pool), std::invalid_argument);
  for (float v : y) ASSERT_EQ(v, kSentinel);

  std::vector<MatmulTarget> short_w{
      {{GgmlType::Q4_K, std::span(w).first(w.size() - 1), 16, cols}, y}};
  EXPECT_THROW(matmul_group(short_w, x, 1, scratch, pool), std::invalid_argument);

  std::vector<MatmulTarget> one{{matrix, y}};
  EXPECT_THROW(matmul_group(one, x, 1, std::span(scratch).first(10), pool), std::invalid_argument);
  EXPECT_THROW(matmul_group(one, std::span(x).first(cols - 1), 1, scratch, pool),
               std::invalid_argument);

  std::vector<MatmulTarget> too_many(kMaxGroupTargets + 1, MatmulTarget{matrix, y});
  EXPECT_THROW(matmul_group(too_many, x, 1, scratch, pool), std::invalid_argument);

  try {
    matmul_group_scratch_bytes(std::vector<GgmlType>{GgmlType::IQ2_XXS}, 256, 1);
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln::kernels
