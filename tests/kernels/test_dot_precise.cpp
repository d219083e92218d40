// The precise (int16, two-plane) activation mode: its quantizers, every precise dot kernel
// (portable and AVX2) and matmul with ActPrecision::int16, against float64 references.
//
// Two references: the "as seen" one (the weight row dequantized, the activation rebuilt from
// its two planes, dotted in double) that a kernel must match to float rounding; and the true
// one (the unquantized float activation), against which the kernel's error must stay under
// the bound the second plane guarantees (|x - d q - d2 q2| <= d2 / 2 per element) and far
// below what the int8 kernels of the same type lose.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/blocks.h"
#include "kernels/dot.h"
#include "kernels/matmul.h"
#include "kernels/quants.h"
#include "kernels/thread_pool.h"

namespace kiln::kernels {
namespace {

using testing::random_weights;
using testing::reference_dot;
using testing::tolerance;

const GgmlType kQuantTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1,   GgmlType::Q5_0, GgmlType::Q5_1,
                                GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K,
                                GgmlType::Q4_K, GgmlType::Q5_K,   GgmlType::Q6_K, GgmlType::IQ4_XS};
// The types the test models use, which must have an AVX2 kernel (where the CPU has AVX2).
const GgmlType kAvx2Types[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                               GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

std::string name_of(const ::testing::TestParamInfo<GgmlType>& info) {
  return std::string(type_name(info.param));
}

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

// Activation rows of three kinds: plain normal; outlier-heavy (a few elements 50..300 times
// the rest, as in real residual streams, so one element sets a block's int8 scale); and
// mixed scales with an all-zero block and a block of tiny values.
std::vector<float> activations(size_t n, int kind, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  if (kind == 1) {
    std::uniform_int_distribution<size_t> pos(0, n - 1);
    std::uniform_real_distribution<float> big(50.0f, 300.0f);
    for (size_t k = 0; k < std::max<size_t>(1, n / 40); ++k) {
      x[pos(rng)] = (k % 2 ? -1.0f : 1.0f) * big(rng);
    }
  } else if (kind == 2) {
    for (size_t j = 0; j < n; ++j) x[j] *= std::pow(10.0f, static_cast<float>(j % 7) - 3.0f);
    std::fill(x.begin(), x.begin() + std::min<size_t>(n, 32), 0.0f);
    if (n >= 64) {
      for (size_t j = 32; j < 64; ++j) x[j] = 1e-30f * normal(rng);
    }
  }
  return x;
}

// The activation as the kernel sees it, and per element the bound on |x - seen| the format
// guarantees (half a step of the second plane, plus float rounding of the residual).
struct Seen {
  std::vector<float> values;
  std::vector<float> bound;
};
Seen dequantize_act(ActFormat format, std::span<const std::byte> q, size_t n) {
  Seen s{std::vector<float>(n), std::vector<float>(n)};
  if (format == ActFormat::F32) {
    std::memcpy(s.values.data(), q.data(), n * sizeof(float));
  } else if (format == ActFormat::Q8_act2) {
    const std::span blocks(reinterpret_cast<const block_q8_act*>(q.data()), 2 * n / QK8_0);
    dequantize_row_q8_act2(blocks, s.values);
    for (size_t j = 0; j < n; ++j) s.bound[j] = blocks[n / QK8_0 + j / QK8_0].d * 0.5f;
  } else {
    EXPECT_EQ(format, ActFormat::Q8_K2);
    const std::span blocks(reinterpret_cast<const block_q8_K*>(q.data()), 2 * n / QK_K);
    dequantize_row_q8_K2(blocks, s.values);
    for (size_t j = 0; j < n; ++j) s.bound[j] = blocks[n / QK_K + j / QK_K].d * 0.5f;
  }
  return s;
}

// ---- Quantizers -------------------------------------------------------------------------

TEST(PreciseQuantize, TwoPlanesBoundTheErrorAndSumsMatch) {
  std::mt19937 rng(7);
  for (ActFormat format : {ActFormat::Q8_act2, ActFormat::Q8_K2}) {
    for (int kind = 0; kind < 3; ++kind) {
      const size_t n = 512;
      const auto x = activations(n, kind, rng);
      std::vector<std::byte> q(act_row_bytes(format, n));
      quantize_act_row(format, x, q);
      std::vector<std::byte> q_portable(q.size());
      quantize_act_row_portable(format, x, q_portable);
      EXPECT_EQ(q, q_portable) << "dispatching quantizer differs from the reference";
      const Seen seen = dequantize_act(format, q, n);
      for (size_t j = 0; j < n; ++j) {
        // Residual rounding in float adds at most a few ulps of x.
        EXPECT_LE(std::fabs(x[j] - seen.values[j]),
                  seen.bound[j] * 1.001f + 4e-7f * std::fabs(x[j]) + 1e-38f)
            << "format " << static_cast<int>(format) << " kind " << kind << " element " << j;
      }
      if (format == ActFormat::Q8_act2) {
        const std::span blocks(reinterpret_cast<const block_q8_act*>(q.data()), 2 * n / QK8_0);
        for (const auto& b : blocks) {
          int sum = 0;
          for (int j = 0; j < QK8_0; ++j) {
            EXPECT_GE(b.qs[j], -127);
            sum += b.qs[j];
          }
          EXPECT_FLOAT_EQ(b.s, b.d * static_cast<float>(sum));
        }
        for (size_t i = 0; i < n / QK8_0; ++i) {
          EXPECT_LE(blocks[n / QK8_0 + i].d, blocks[i].d / 254.0f * 1.001f);
        }
      } else {
        const std::span blocks(reinterpret_cast<const block_q8_K*>(q.data()), 2 * n / QK_K);
        for (const auto& b : blocks) {
          for (int s = 0; s < QK_K / 16; ++s) {
            int sum = 0;
            for (int j = 0; j < 16; ++j) {
              EXPECT_GE(b.qs[16 * s + j], -127);
              sum += b.qs[16 * s + j];
            }
            EXPECT_EQ(b.bsums[s], sum);
          }
        }
        for (size_t i = 0; i < n / QK_K; ++i) {
          EXPECT_LE(blocks[n / QK_K + i].d, blocks[i].d / 254.0f * 1.001f);
        }
      }
    }
  }
}

TEST(PreciseQuantize, ZeroBlockIsAllZero) {
  const std::vector<float> x(QK_K, 0.0f);
  std::vector<std::byte> q(act_row_bytes(ActFormat::Q8_K2, QK_K), std::byte{0x5A});
  quantize_act_row(ActFormat::Q8_K2, x, q);
  for (const auto& b : std::span(reinterpret_cast<const block_q8_K*>(q.data()), 2)) {
    EXPECT_EQ(b.d, 0.0f);
    for (int j = 0; j < QK_K; ++j) EXPECT_EQ(b.qs[j], 0);
    for (int s = 0; s < QK_K / 16; ++s) EXPECT_EQ(b.bsums[s], 0);
  }
}

// ---- Dot kernels ------------------------------------------------------------------------

class PreciseDotTest : public ::testing::TestWithParam<GgmlType> {};

// Error totals over all rows checked, for the int8-vs-int16 comparison.
struct Errors {
  double int8 = 0.0;
  double int16 = 0.0;
};

// One kernel on one weight row, tiles of 1..4 rows of every activation kind.
void check_precise_kernel(const DotKernel& kernel, GgmlType type, size_t cols, std::mt19937& rng,
                          Errors& errors) {
  ASSERT_NE(kernel.fn, nullptr);
  const DotKernel int8_kernel = dot_kernel_portable(type);
  const auto w = random_weights(type, 1, cols, rng);
  std::vector<float> w_deq(cols);
  dequantize_row(type, w, w_deq);
  const size_t stride = act_row_bytes(kernel.act, cols);
  const size_t stride8 = act_row_bytes(int8_kernel.act, cols);
  std::vector<std::byte> act(kMaxTileTokens * stride);
  std::vector<std::byte> act8(kMaxTileTokens * stride8);
  std::vector<std::vector<float>> xs;
  std::vector<Seen> seen;
  for (int t = 0; t < kMaxTileTokens; ++t) {
    xs.push_back(activations(cols, t % 3, rng));
    quantize_act_row(kernel.act, xs.back(), std::span(act).subspan(t * stride, stride));
    quantize_act_row(int8_kernel.act, xs.back(), std::span(act8).subspan(t * stride8, stride8));
    seen.push_back(dequantize_act(kernel.act, std::span(act).subspan(t * stride, stride), cols));
  }
  const int tile = std::min(kernel.tile, int8_kernel.tile);
  float out8[kMaxTileTokens];
  int8_kernel.fn(cols, w.data(), act8.data(), stride8, tile, out8);
  for (int nt = 1; nt <= tile; ++nt) {
    float out[kMaxTileTokens + 1];
    out[nt] = -12345.0f;  // guard
    kernel.fn(cols, w.data(), act.data(), stride, nt, out);
    EXPECT_EQ(out[nt], -12345.0f) << "wrote past the tile";
    for (int t = 0; t < nt; ++t) {
      const auto as_seen = reference_dot(w_deq, seen[t].values);
      EXPECT_NEAR(out[t], as_seen.value, tolerance(as_seen))
          << kernel.isa << " " << type_name(type) << " cols " << cols << " nt " << nt << " t " << t;
      // Against the unquantized activations: the second plane's guarantee.
      const auto truth = reference_dot(w_deq, xs[t]);
      double bound = 0.0;
      for (size_t j = 0; j < cols; ++j) bound += std::fabs(w_deq[j]) * seen[t].bound[j];
      EXPECT_LE(std::fabs(out[t] - truth.value), bound * 1.001 + 2 * tolerance(truth))
          << kernel.isa << " " << type_name(type) << " cols " << cols << " t " << t;
      if (nt == tile) {
        errors.int16 += std::fabs(out[t] - truth.value);
        errors.int8 += std::fabs(out8[t] - truth.value);
      }
    }
  }
}

void check_type(GgmlType type, bool avx2) {
  const size_t block = traits(type).block_elements;
  const DotKernel kernel = avx2 ? dot_kernel_precise_avx2(type) : dot_kernel_precise_portable(type);
  ASSERT_NE(kernel.fn, nullptr);
  EXPECT_EQ(kernel.act, block == QK_K ? ActFormat::Q8_K2 : ActFormat::Q8_act2);
  std::mt19937 rng(static_cast<uint32_t>(type) * 31 + (avx2 ? 1 : 0));
  Errors errors;
  // One block, a few blocks, an odd count of blocks.
  for (size_t blocks : {1, 3, 8, 11}) {
    for (int rep = 0; rep < 4; ++rep)
      check_precise_kernel(kernel, type, blocks * block, rng, errors);
  }
  // The point of the mode: far less error than the int8 activations (the second plane
  // shrinks the activation rounding by about 254; ask for 50).
  EXPECT_LT(errors.int16 * 50.0, errors.int8)
      << type_name(type) << ": int16 total error " << errors.int16 << ", int8 " << errors.int8;
}

TEST_P(PreciseDotTest, PortableMatchesFloat64Reference) { check_type(GetParam(), false); }

TEST_P(PreciseDotTest, Avx2MatchesFloat64ReferenceAndPortable) {
  const GgmlType type = GetParam();
  if (dot_kernel_precise_avx2(type).fn == nullptr) {
    const bool required =
        std::find(std::begin(kAvx2Types), std::end(kAvx2Types), type) != std::end(kAvx2Types);
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    EXPECT_FALSE(required && cpu_has_avx2()) << "no AVX2 precise kernel for " << type_name(type);
#else
    (void)required;
#endif
    GTEST_SKIP() << "no AVX2 precise kernel for " << type_name(type);
  }
  check_type(type, true);
  // And the two agree on the same inputs to float rounding.
  std::mt19937 rng(99);
  const size_t cols = 4 * traits(type).block_elements;
  const auto w = random_weights(type, 1, cols, rng);
  const DotKernel simd = dot_kernel_precise_avx2(type);
  const DotKernel portable = dot_kernel_precise_portable(type);
  ASSERT_EQ(simd.act, portable.act);
  const size_t stride = act_row_bytes(simd.act, cols);
  std::vector<std::byte> act(kMaxTileTokens * stride);
  for (int t = 0; t < kMaxTileTokens; ++t) {
    quantize_act_row(simd.act, activations(cols, t % 3, rng),
                     std::span(act).subspan(t * stride, stride));
  }
  const int tile = std::min(simd.tile, portable.tile);
  float a[kMaxTileTokens], b[kMaxTileTokens];
  simd.fn(cols, w.data(), act.data(), stride, tile, a);
  portable.fn(cols, w.data(), act.data(), stride, tile, b);
  for (int t = 0; t < tile; ++t) {
    EXPECT_NEAR(a[t], b[t], 1e-5 * std::max(1.0f, std::fabs(b[t]))) << "t " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, PreciseDotTest, ::testing::ValuesIn(kQuantTypes), name_of);

TEST(PreciseDot, FloatTypesKeepFloatKernels) {
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    const DotKernel k = dot_kernel(type, ActPrecision::int16);
    EXPECT_EQ(k.act, ActFormat::F32) << type_name(type);
    EXPECT_EQ(k.fn, dot_kernel(type).fn) << type_name(type);
  }
  EXPECT_EQ(dot_kernel(GgmlType::Q4_K, ActPrecision::int8).fn, dot_kernel(GgmlType::Q4_K).fn);
}

// ---- matmul with ActPrecision::int16 ----------------------------------------------------

// Restores the ISA limit a test lowered.
struct IsaGuard {
  Isa saved = isa_limit();
  ~IsaGuard() { set_isa_limit(saved); }
};

class PreciseMatmulTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(PreciseMatmulTest, EveryTileCountAndIsaMatchesReference) {
  const GgmlType type = GetParam();
  const size_t cols = 3 * static_cast<size_t>(traits(type).block_elements);
  const size_t rows = 37;  // not a multiple of the 16-row chunks
  std::mt19937 rng(static_cast<uint32_t>(type) + 1000);
  const auto w_data = random_weights(type, rows, cols, rng);
  std::vector<float> w_deq(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    dequantize_row(type,
                   std::span(w_data).subspan(r * row_bytes(type, cols), row_bytes(type, cols)),
                   std::span(w_deq).subspan(r * cols, cols));
  }
  const WeightMatrix w{type, w_data, rows, cols};
  IsaGuard guard;
  ThreadPool pool(2);
  for (Isa isa : {Isa::Portable, Isa::Avx2, Isa::Avx512}) {
    set_isa_limit(isa);
    const DotKernel kernel = dot_kernel(type, ActPrecision::int16);
    // Where the int8 path has a GEMM panel, int16 has one too (and m >= 8 below runs it).
    if (gemm_kernel(type).fn != nullptr) {
      const GemmKernel gemm = gemm_kernel(type, ActPrecision::int16);
      EXPECT_NE(gemm.fn, nullptr);
      EXPECT_EQ(gemm.act, kernel.act);
    }
    // m = 1..9 (dot tiles, and the GEMM panels from 8 rows on where there are any), and
    // longer runs across the precise panel's 128-token tiles.
    for (size_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 33, 150}) {
      std::vector<float> x;
      for (size_t t = 0; t < m; ++t) {
        const auto row = activations(cols, static_cast<int>(t % 3), rng);
        x.insert(x.end(), row.begin(), row.end());
      }
      std::vector<std::byte> scratch(matmul_scratch_bytes(type, cols, m, ActPrecision::int16));
      if (kernel.act != ActFormat::F32) {
        EXPECT_GT(scratch.size(), matmul_scratch_bytes(type, cols, m));
      }
      const float kGuard = -777.0f;
      std::vector<float> y(m * rows + 5, kGuard);
      matmul(w, x, m, y, scratch, pool, ActPrecision::int16);
      for (size_t k = m * rows; k < y.size(); ++k) ASSERT_EQ(y[k], kGuard) << "guard " << k;
      const size_t stride = act_row_bytes(kernel.act, cols);
      for (size_t t = 0; t < m; ++t) {
        std::vector<std::byte> q(stride);
        quantize_act_row(kernel.act, std::span(x).subspan(t * cols, cols), q);
        const Seen seen = dequantize_act(kernel.act, q, cols);
        for (size_t r = 0; r < rows; ++r) {
          const auto ref = reference_dot(std::span(w_deq).subspan(r * cols, cols), seen.values);
          ASSERT_NEAR(y[t * rows + r], ref.value, tolerance(ref))
              << "isa " << static_cast<int>(isa) << " m " << m << " t " << t << " r " << r;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, PreciseMatmulTest,
                         ::testing::Values(GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0,
                                           GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q3_K,
                                           GgmlType::F16),
                         name_of);

}  // namespace
}  // namespace kiln::kernels
