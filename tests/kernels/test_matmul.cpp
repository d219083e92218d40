// Dot kernels and matmul against the oracle: dequantize the weight row with the reference
// dequantizer, dequantize the activation exactly as quantized for the kernel, and take the
// dot product in double.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <thread>
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

const GgmlType kMatmulTypes[] = {GgmlType::F32,  GgmlType::F16,    GgmlType::BF16,  GgmlType::Q4_0,
                                 GgmlType::Q4_1, GgmlType::Q5_0,   GgmlType::Q5_1,  GgmlType::Q8_0,
                                 GgmlType::Q2_K, GgmlType::Q3_K,   GgmlType::Q4_K,  GgmlType::Q5_K,
                                 GgmlType::Q6_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS};

std::string name_of(const ::testing::TestParamInfo<GgmlType>& info) {
  return std::string(type_name(info.param));
}

class DotTest : public ::testing::TestWithParam<GgmlType> {};

// Checks one kernel on one row against the oracle, for tiles of 1..4 activation rows.
void check_kernel(const DotKernel& kernel, GgmlType type, size_t cols, std::mt19937& rng) {
  ASSERT_NE(kernel.fn, nullptr);
  const auto w = random_weights(type, 1, cols, rng);
  std::vector<float> w_deq(cols);
  dequantize_row(type, w, w_deq);
  const size_t stride = act_row_bytes(kernel.act, cols);
  std::vector<std::byte> act(kMaxTileTokens * stride);
  std::vector<std::vector<float>> seen;
  for (int t = 0; t < kMaxTileTokens; ++t) {
    const auto x = random_activations(cols, rng);
    quantize_act_row(kernel.act, x, std::span(act).subspan(t * stride, stride));
    seen.push_back(activation_as_seen(kernel.act, x));
  }
  for (int nt = 1; nt <= kMaxTileTokens; ++nt) {
    float out[kMaxTileTokens + 1];
    out[nt] = -12345.0f;  // guard
    kernel.fn(cols, w.data(), act.data(), stride, nt, out);
    EXPECT_EQ(out[nt], -12345.0f) << "wrote past the tile";
    for (int t = 0; t < nt; ++t) {
      const auto ref = reference_dot(w_deq, seen[t]);
      ASSERT_TRUE(std::isfinite(out[t]));
      EXPECT_NEAR(out[t], ref.value, tolerance(ref))
          << kernel.isa << " cols " << cols << " nt " << nt << " t " << t;
    }
  }
}

std::vector<size_t> test_cols(GgmlType type) {
  const size_t block = traits(type).block_elements;
  if (block == 1) return {1, 7, 8, 33, 256, 1000};
  if (block == 32) return {32, 64, 96, 256 + 32, 2048};
  return {256, 512, 768, 2048};
}

TEST_P(DotTest, PortableMatchesReference) {
  std::mt19937 rng(1);
  for (size_t cols : test_cols(GetParam())) {
    check_kernel(dot_kernel_portable(GetParam()), GetParam(), cols, rng);
  }
}

TEST_P(DotTest, SelectedKernelMatchesReference) {
  std::mt19937 rng(2);
  for (size_t cols : test_cols(GetParam())) {
    check_kernel(dot_kernel(GetParam()), GetParam(), cols, rng);
  }
}

TEST_P(DotTest, SimdKernelPairsWithPortableFormat) {
  const DotKernel simd = dot_kernel_avx2(GetParam());
  if (simd.fn == nullptr) GTEST_SKIP() << "no AVX2 kernel for this type on this build/CPU";
  EXPECT_EQ(simd.act, dot_kernel_portable(GetParam()).act);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DotTest, ::testing::ValuesIn(kMatmulTypes), name_of);

class MatmulTest : public ::testing::TestWithParam<GgmlType> {};

// Runs matmul with guard cells around y and scratch and checks every output.
void check_matmul(GgmlType type, size_t rows, size_t cols, size_t m, ThreadPool& pool,
                  std::mt19937& rng) {
  const auto w = random_weights(type, rows, cols, rng);
  const auto x = random_activations(m * cols, rng);
  constexpr size_t kGuard = 16;
  constexpr float kSentinel = 7.77e7f;
  std::vector<float> y(m * rows + 2 * kGuard, kSentinel);
  const size_t scratch_bytes = matmul_scratch_bytes(type, cols, m);
  std::vector<std::byte> scratch(scratch_bytes + kGuard, std::byte{0xAB});

  const WeightMatrix matrix{type, w, rows, cols};
  matmul(matrix, x, m, std::span(y).subspan(kGuard, m * rows),
         std::span(scratch).first(scratch_bytes), pool);

  for (size_t i = 0; i < kGuard; ++i) {
    ASSERT_EQ(y[i], kSentinel) << "wrote before y";
    ASSERT_EQ(y[kGuard + m * rows + i], kSentinel) << "wrote after y";
    ASSERT_EQ(scratch[scratch_bytes + i], std::byte{0xAB}) << "wrote past scratch";
  }
  const ActFormat act = dot_kernel(type).act;
  const size_t rb = row_bytes(type, cols);
  std::vector<std::vector<float>> seen;
  for (size_t t = 0; t < m; ++t) {
    seen.push_back(activation_as_seen(act, std::span(x).subspan(t * cols, cols)));
  }
  std::vector<float> w_deq(cols);
  for (size_t r = 0; r < rows; ++r) {
    dequantize_row(type, std::span(w).subspan(r * rb, rb), w_deq);
    for (size_t t = 0; t < m; ++t) {
      const auto ref = reference_dot(w_deq, seen[t]);
      const float got = y[kGuard + t * rows + r];
      ASSERT_TRUE(std::isfinite(got)) << "row " << r << " token " << t;
      ASSERT_NEAR(got, ref.value, tolerance(ref))
          << type_name(type) << " rows " << rows << " cols " << cols << " m " << m << " row " << r
          << " token " << t << " threads " << pool.size();
    }
  }
}

TEST_P(MatmulTest, AwkwardShapesAndThreadCounts) {
  const GgmlType type = GetParam();
  const size_t block = std::max<size_t>(traits(type).block_elements, 32);
  std::mt19937 rng(3);
  for (int threads = 1; threads <= 3; ++threads) {
    ThreadPool pool(threads);
    for (size_t rows : {1, 17, 33}) {
      for (size_t m : {1, 3, 7}) {
        check_matmul(type, rows, block * (threads == 2 ? 3 : 1), m, pool, rng);
      }
    }
  }
  ThreadPool pool(3);
  check_matmul(type, 50, block, 33, pool, rng);  // several token tiles with a remainder
  check_matmul(type, 67, 2 * block, 5, pool, rng);
}

TEST_P(MatmulTest, RejectsBadShapes) {
  const GgmlType type = GetParam();
  const size_t block = traits(type).block_elements;
  ThreadPool pool(1);
  std::mt19937 rng(4);
  const size_t cols = std::max<size_t>(block, 32);
  const auto w = random_weights(type, 2, cols, rng);
  std::vector<float> x(cols), y(2);
  std::vector<std::byte> scratch(matmul_scratch_bytes(type, cols, 1));
  std::vector<float> y_short(1);
  EXPECT_THROW(matmul({type, w, 2, cols}, x, 1, y_short, scratch, pool), std::invalid_argument);
  EXPECT_THROW(matmul({type, std::span(w).first(w.size() - 1), 2, cols}, x, 1, y, scratch, pool),
               std::invalid_argument);
  if (block > 1) {
    EXPECT_THROW(matmul({type, w, 1, cols + 1}, std::vector<float>(cols + 1), 1, y, scratch, pool),
                 std::invalid_argument);
  }
  if (!scratch.empty()) {
    EXPECT_THROW(
        matmul({type, w, 2, cols}, x, 1, y, std::span(scratch).first(scratch.size() - 1), pool),
        std::invalid_argument);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatmulTest, ::testing::ValuesIn(kMatmulTypes), name_of);

TEST(Matmul, UnsupportedTypeIsNamed) {
  EXPECT_FALSE(has_matmul_kernel(GgmlType::IQ2_XXS));
  try {
    matmul_scratch_bytes(GgmlType::IQ2_XXS, 256, 1);
    FAIL() << "expected a throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos) << e.what();
  }
}

TEST(ThreadPool, RunsEveryIndexOnceManyTimes) {
  for (int threads = 1; threads <= 4; ++threads) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    std::vector<int> counts(threads, 0);
    for (int iteration = 0; iteration < 300; ++iteration) {
      pool.run([&](int i, int n) {
        ASSERT_EQ(n, threads);
        counts[i] += 1;  // each index owns its slot
      });
    }
    for (int c : counts) EXPECT_EQ(c, 300);
  }
  EXPECT_THROW(ThreadPool(0), std::invalid_argument);
  EXPECT_GE(default_thread_count(), 1);
}

TEST(ThreadPool, DestroysPromptlyWhateverTheWorkersAreDoing) {
  // Pools destroyed before their threads first run, right after a job, and after the
  // workers went to sleep: none may hang.
  for (int i = 0; i < 200; ++i) {
    ThreadPool pool(1 + i % 4);
    if (i % 3 == 1) pool.run([](int, int) {});
    if (i % 50 == 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

TEST(ThreadPool, EveryIndexRunsEvenWhenTheCallerDoesAllTheWork) {
  // More threads than cores: some workers are rarely scheduled, so the caller claims their
  // indexes; each index must still run exactly once per call.
  ThreadPool pool(8);
  std::vector<std::atomic<int>> counts(8);
  for (int iteration = 0; iteration < 200; ++iteration) {
    pool.run([&](int i, int) { counts[static_cast<size_t>(i)].fetch_add(1); });
  }
  for (auto& c : counts) EXPECT_EQ(c.load(), 200);
}

TEST(ThreadPool, WakesAfterSleeping) {
  ThreadPool pool(3);
  std::atomic<int> total{0};
  for (int iteration = 0; iteration < 3; ++iteration) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // workers go to sleep
    pool.run([&](int, int) { total.fetch_add(1); });
  }
  EXPECT_EQ(total.load(), 9);
}

}  // namespace
}  // namespace kiln::kernels
