// Dot kernels and matmul against the oracle: dequantize the weight row with the reference
// dequantizer, dequantize the activation exactly as quantized for the kernel, and take the
// dot product in double.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/blocks.h"
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

// Checks one kernel on one row against the oracle, for tiles of 1..kernel.tile activation rows.
void check_kernel(const DotKernel& kernel, GgmlType type, size_t cols, std::mt19937& rng) {
  ASSERT_NE(kernel.fn, nullptr);
  ASSERT_GE(kernel.tile, 1);
  ASSERT_LE(kernel.tile, kMaxTileTokens);
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
  for (int nt = 1; nt <= kernel.tile; ++nt) {
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

// The AVX-512 dot kernels against the oracle and against the portable kernel, over awkward
// shapes (odd block counts for the legacy types, whose kernel takes two blocks per vector).
TEST_P(DotTest, Avx512KernelMatchesReferenceAndPortable) {
  const GgmlType type = GetParam();
  const DotKernel simd = dot_kernel_avx512(type);
  if (simd.fn == nullptr) GTEST_SKIP() << "no AVX-512 dot kernel for this type on this build/CPU";
  EXPECT_EQ(simd.act, dot_kernel_portable(type).act);
  std::mt19937 rng(21);
  std::vector<size_t> cols_list = test_cols(type);
  const size_t block = traits(type).block_elements;
  for (size_t n : {1, 3, 5, 7, 33}) cols_list.push_back(block * n);
  for (size_t cols : cols_list) check_kernel(simd, type, cols, rng);

  const DotKernel portable = dot_kernel_portable(type);
  for (size_t cols : cols_list) {
    const auto w = random_weights(type, 1, cols, rng);
    std::vector<float> w_deq(cols);
    dequantize_row(type, w, w_deq);
    const size_t stride = act_row_bytes(simd.act, cols);
    std::vector<std::byte> act(kMaxTileTokens * stride);
    std::vector<std::vector<float>> seen;
    for (int t = 0; t < kMaxTileTokens; ++t) {
      const auto x = random_activations(cols, rng);
      quantize_act_row(simd.act, x, std::span(act).subspan(t * stride, stride));
      seen.push_back(activation_as_seen(simd.act, x));
    }
    // A full tile of each (the portable kernel's 4 tokens, then the rest).
    float got[kMaxTileTokens], want[kMaxTileTokens];
    simd.fn(cols, w.data(), act.data(), stride, simd.tile, got);
    for (int t0 = 0; t0 < simd.tile; t0 += portable.tile) {
      portable.fn(cols, w.data(), act.data() + t0 * stride, stride,
                  std::min(portable.tile, simd.tile - t0), want + t0);
    }
    for (int t = 0; t < simd.tile; ++t) {
      // Both are within tolerance of the oracle; they differ only in float rounding order.
      EXPECT_NEAR(got[t], want[t], 2 * tolerance(reference_dot(w_deq, seen[t])))
          << "cols " << cols << " t " << t;
    }
  }
}

// A token's result must not depend on the tile size or its tile mates (batch invariance):
// every SIMD kernel gives bit-identical outputs for a token alone and in tiles of 2..tile.
TEST_P(DotTest, SimdKernelsAreTileInvariant) {
  const GgmlType type = GetParam();
  std::mt19937 rng(22);
  for (const DotKernel& kernel : {dot_kernel_avx512(type), dot_kernel_avx2(type)}) {
    if (kernel.fn == nullptr) continue;
    for (size_t cols : test_cols(type)) {
      const auto w = random_weights(type, 1, cols, rng);
      const size_t stride = act_row_bytes(kernel.act, cols);
      std::vector<std::byte> act(kMaxTileTokens * stride);
      for (int t = 0; t < kMaxTileTokens; ++t) {
        quantize_act_row(kernel.act, random_activations(cols, rng),
                         std::span(act).subspan(t * stride, stride));
      }
      float alone[kMaxTileTokens];
      for (int t = 0; t < kMaxTileTokens; ++t) {
        kernel.fn(cols, w.data(), act.data() + t * stride, stride, 1, &alone[t]);
      }
      for (int nt = 2; nt <= kernel.tile; ++nt) {
        for (int first = 0; first + nt <= kMaxTileTokens; ++first) {
          float tile[kMaxTileTokens];
          kernel.fn(cols, w.data(), act.data() + first * stride, stride, nt, tile);
          for (int t = 0; t < nt; ++t) {
            EXPECT_EQ(tile[t], alone[first + t])
                << kernel.isa << " cols " << cols << " nt " << nt << " token " << first + t;
          }
        }
      }
    }
  }
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

// ---- GEMM panels (prompt processing) ----------------------------------------------------

// Restores the ISA limit a test lowered.
class ScopedIsaLimit {
 public:
  explicit ScopedIsaLimit(Isa isa) : saved_(isa_limit()) { set_isa_limit(isa); }
  ~ScopedIsaLimit() { set_isa_limit(saved_); }
  ScopedIsaLimit(const ScopedIsaLimit&) = delete;
  ScopedIsaLimit& operator=(const ScopedIsaLimit&) = delete;

 private:
  Isa saved_;
};

const GgmlType kGemmTypes[] = {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_0,
                               GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1};

class GemmTest : public ::testing::TestWithParam<GgmlType> {};

// One panel call on weights w (n_rows rows of cols) and activations x (m rows) with y rows
// spaced wider than the panel: every output near the float64 reference, and the gaps and the
// cells after the last row keep their sentinel.
void check_panel_on(const GemmKernel& kernel, GgmlType type, int n_rows, size_t cols, size_t m,
                    std::span<const std::byte> w, std::span<const float> x) {
  const size_t stride = act_row_bytes(kernel.act, cols);
  std::vector<std::byte> act(m * stride);
  std::vector<std::vector<float>> seen;
  for (size_t t = 0; t < m; ++t) {
    const auto row = std::span(x).subspan(t * cols, cols);
    quantize_act_row(kernel.act, row, std::span(act).subspan(t * stride, stride));
    seen.push_back(activation_as_seen(kernel.act, row));
  }
  // The GEMM from the blocks, then (where the kernel has them) from pre-packed panels.
  std::vector<std::byte> panel_storage;
  std::byte* panel = nullptr;
  if (kernel.pack != nullptr) {
    panel_storage.resize(kernel.packed_bytes(cols) + 64);
    const size_t pad = (64 - reinterpret_cast<uintptr_t>(panel_storage.data()) % 64) % 64;
    panel = panel_storage.data() + pad;
    kernel.pack(cols, w.data(), row_bytes(type, cols), n_rows, panel);
  }
  for (const bool packed : {false, true}) {
    if (packed && panel == nullptr) break;
    SCOPED_TRACE(packed ? "pre-packed panel" : "GEMM");
    constexpr float kSentinel = -5.5e6f;
    const size_t y_stride = static_cast<size_t>(n_rows) + 3;
    std::vector<float> y(m * y_stride + 16, kSentinel);
    const size_t rb = row_bytes(type, cols);
    if (packed) {
      kernel.packed(cols, panel, n_rows, act.data(), stride, m, y.data(), y_stride);
    } else {
      kernel.fn(cols, w.data(), rb, n_rows, act.data(), stride, m, y.data(), y_stride);
    }
    std::vector<float> w_deq(cols);
    for (int r = 0; r < n_rows; ++r) {
      dequantize_row(type, std::span(w).subspan(static_cast<size_t>(r) * rb, rb), w_deq);
      for (size_t t = 0; t < m; ++t) {
        const auto ref = reference_dot(w_deq, seen[t]);
        const float got = y[t * y_stride + static_cast<size_t>(r)];
        ASSERT_TRUE(std::isfinite(got));
        ASSERT_NEAR(got, ref.value, tolerance(ref))
            << type_name(type) << " rows " << n_rows << " cols " << cols << " m " << m << " row "
            << r << " token " << t;
      }
    }
    for (size_t t = 0; t < m; ++t) {
      for (size_t r = static_cast<size_t>(n_rows); r < y_stride; ++r) {
        ASSERT_EQ(y[t * y_stride + r], kSentinel) << "wrote outside the panel, token " << t;
      }
    }
    for (size_t i = m * y_stride; i < y.size(); ++i) ASSERT_EQ(y[i], kSentinel) << "wrote past y";
  }
}

void check_panel(const GemmKernel& kernel, GgmlType type, int n_rows, size_t cols, size_t m,
                 std::mt19937& rng) {
  const auto w = random_weights(type, static_cast<size_t>(n_rows), cols, rng);
  const auto x = random_activations(m * cols, rng);
  check_panel_on(kernel, type, n_rows, cols, m, w, x);
}

// Every token count up to two tiles and more, partial panels, and K past one repacked chunk.
void check_awkward_shapes(const GemmKernel& kernel, GgmlType type) {
  EXPECT_EQ(kernel.act, dot_kernel_portable(type).act);
  std::mt19937 rng(11);
  const size_t block = traits(type).block_elements;
  // The second size spans more than one repacked K chunk (1024 columns), with a remainder.
  const size_t big = block == 256 ? 5 * 256 : 33 * 32;
  for (size_t m = 1; m <= 17; ++m) {
    for (int n_rows : {1, 7, 9, 16}) check_panel(kernel, type, n_rows, block * (m % 3 + 1), m, rng);
  }
  check_panel(kernel, type, 16, big, 9, rng);
  check_panel(kernel, type, 5, big, 17, rng);
  check_panel(kernel, type, 16, big, 24, rng);
}

TEST_P(GemmTest, PanelMatchesReferenceOverAwkwardShapes) {
  const GgmlType type = GetParam();
  const GemmKernel kernel = gemm_kernel_avx512(type);
  if (kernel.fn == nullptr) GTEST_SKIP() << "no AVX-512 VNNI GEMM for this type on this build/CPU";
  check_awkward_shapes(kernel, type);
}

// The AVX2 panels over the same shapes.
TEST_P(GemmTest, Avx2PanelMatchesReferenceOverAwkwardShapes) {
  const GgmlType type = GetParam();
  const GemmKernel kernel = gemm_kernel_avx2(type);
  if (kernel.fn == nullptr) {
    EXPECT_FALSE(__builtin_cpu_supports("avx2")) << "no AVX2 GEMM for " << type_name(type);
    GTEST_SKIP() << "no AVX2 GEMM on this build/CPU";
  }
  EXPECT_STREQ(kernel.isa, "avx2");
  check_awkward_shapes(kernel, type);
}

// The AVX2 panels add the int16 pair sums of several groups before widening, exact only
// within the bound worked out in avx2_gemm.cpp: every code at its largest magnitude against
// every activation at +-127 is that bound's worst case (an overflow would wrap to a wrong
// sign). Q8_0's largest magnitude is q = -128.
template <typename Block>
void fill_max_codes(std::vector<std::byte>& w, size_t rows, size_t rb) {
  constexpr bool kQ8 = std::is_same_v<Block, kiln::kernels::block_q8_0>;
  std::fill(w.begin(), w.end(), std::byte{kQ8 ? uint8_t{0x80} : uint8_t{0xFF}});
  for (size_t r = 0; r < rows; ++r) {
    for (size_t b = 0; b < rb / sizeof(Block); ++b) {
      auto* block = reinterpret_cast<Block*>(w.data() + r * rb) + b;
      block->d = 0x3C00;                                              // 1.0 (0xFFFF would be a NaN)
      if constexpr (requires { block->dmin; }) block->dmin = 0x3800;  // 0.5
      if constexpr (requires { block->m; }) block->m = 0x3800;
    }
  }
}

TEST(Gemm, Avx2PanelsExactAtTheirInt16Bound) {
  namespace kk = kiln::kernels;
  for (GgmlType type : kGemmTypes) {
    const GemmKernel kernel = gemm_kernel_avx2(type);
    if (kernel.fn == nullptr) GTEST_SKIP() << "no AVX2 GEMM on this build/CPU";
    constexpr int kRows = 16;
    const size_t cols = 2 * 256, rb = row_bytes(type, cols), m = 6;
    std::vector<std::byte> w(kRows * rb);
    if (type == GgmlType::Q4_K) fill_max_codes<kk::block_q4_K>(w, kRows, rb);
    if (type == GgmlType::Q5_K) fill_max_codes<kk::block_q5_K>(w, kRows, rb);
    if (type == GgmlType::Q6_K) fill_max_codes<kk::block_q6_K>(w, kRows, rb);
    if (type == GgmlType::Q4_0) fill_max_codes<kk::block_q4_0>(w, kRows, rb);
    if (type == GgmlType::Q4_1) fill_max_codes<kk::block_q4_1>(w, kRows, rb);
    if (type == GgmlType::Q5_0) fill_max_codes<kk::block_q5_0>(w, kRows, rb);
    if (type == GgmlType::Q5_1) fill_max_codes<kk::block_q5_1>(w, kRows, rb);
    if (type == GgmlType::Q8_0) fill_max_codes<kk::block_q8_0>(w, kRows, rb);
    std::vector<float> x(m * cols);  // +-127 once quantized
    for (size_t t = 0; t < m; ++t) {
      std::fill_n(x.begin() + static_cast<ptrdiff_t>(t * cols), cols, t % 2 == 0 ? 1.0f : -1.0f);
    }
    // m = 1: the pre-packed panels' lone-token kernel; 6: the GEMM's tiles.
    for (size_t tokens : {size_t{1}, m}) check_panel_on(kernel, type, kRows, cols, tokens, w, x);
  }
}

// m random activation rows of `cols` elements, quantized into `format` one after another.
std::vector<std::byte> random_quantized_rows(ActFormat format, size_t m, size_t cols,
                                             std::mt19937& rng) {
  const auto x = random_activations(m * cols, rng);
  const size_t stride = act_row_bytes(format, cols);
  std::vector<std::byte> act(m * stride);
  for (size_t t = 0; t < m; ++t) {
    quantize_act_row(format, std::span(x).subspan(t * cols, cols),
                     std::span(act).subspan(t * stride, stride));
  }
  return act;
}

// The few-token twin must give the GEMM's results bit for bit (the engine relies on it to
// batch decode tokens of many sequences without changing any of them), and on its own
// match the reference and write nothing outside the panel.
TEST_P(GemmTest, SmallPanelIsBitIdenticalToGemm) {
  const GgmlType type = GetParam();
  const GemmKernel kernel = gemm_kernel_avx512(type);
  if (kernel.fn == nullptr) GTEST_SKIP() << "no AVX-512 VNNI GEMM for this type on this build/CPU";
  ASSERT_NE(kernel.small, nullptr);
  const GemmKernel small{kernel.act, kernel.small, kernel.isa, nullptr};
  std::mt19937 rng(13);
  const size_t block = traits(type).block_elements;
  const size_t big = block == 256 ? 5 * 256 : 33 * 32;  // more than one GEMM K chunk
  for (size_t m = 1; m <= 9; ++m) {
    for (int n_rows : {1, 5, 16}) {
      for (size_t cols : {block, block * (m % 3 + 2), big}) {
        check_panel(small, type, n_rows, cols, m, rng);
        const auto w = random_weights(type, static_cast<size_t>(n_rows), cols, rng);
        const size_t stride = act_row_bytes(kernel.act, cols);
        const auto act = random_quantized_rows(kernel.act, m, cols, rng);
        const size_t rb = row_bytes(type, cols);
        std::vector<float> y_gemm(m * 16, 0.0f), y_small(m * 16, 0.0f);
        kernel.fn(cols, w.data(), rb, n_rows, act.data(), stride, m, y_gemm.data(), 16);
        kernel.small(cols, w.data(), rb, n_rows, act.data(), stride, m, y_small.data(), 16);
        for (size_t t = 0; t < m; ++t) {
          for (int r = 0; r < n_rows; ++r) {
            const size_t i = t * 16 + static_cast<size_t>(r);
            ASSERT_EQ(std::bit_cast<uint32_t>(y_small[i]), std::bit_cast<uint32_t>(y_gemm[i]))
                << type_name(type) << " rows " << n_rows << " cols " << cols << " m " << m
                << " row " << r << " token " << t << ": " << y_small[i] << " vs " << y_gemm[i];
          }
        }
      }
    }
  }
}

// Pre-packed panels must give the GEMM's results bit for bit for every m (so packing at load
// changes no logits), and the packer must stay inside its panel.
void check_packed_like_gemm(const GemmKernel& kernel, GgmlType type) {
  ASSERT_NE(kernel.packed, nullptr);
  std::mt19937 rng(14);
  const size_t block = traits(type).block_elements;
  const size_t big = block == 256 ? 5 * 256 : 33 * 32;
  for (size_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17}) {
    for (int n_rows : {1, 5, 16}) {
      for (size_t cols : {block, block * 3, big}) {
        const auto w = random_weights(type, static_cast<size_t>(n_rows), cols, rng);
        const size_t rb = row_bytes(type, cols);
        const size_t bytes = kernel.packed_bytes(cols);
        ASSERT_EQ(bytes % 64, 0u);
        std::vector<std::byte> storage(bytes + 128, std::byte{0x5A});
        const size_t pad = (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
        std::byte* panel = storage.data() + pad;
        kernel.pack(cols, w.data(), rb, n_rows, panel);
        for (size_t i = pad + bytes; i < storage.size(); ++i) {
          ASSERT_EQ(storage[i], std::byte{0x5A}) << "packer wrote past its panel";
        }
        const size_t stride = act_row_bytes(kernel.act, cols);
        const auto act = random_quantized_rows(kernel.act, m, cols, rng);
        std::vector<float> y_gemm(m * 16, 0.0f), y_packed(m * 16, -7.0f);
        kernel.fn(cols, w.data(), rb, n_rows, act.data(), stride, m, y_gemm.data(), 16);
        kernel.packed(cols, panel, n_rows, act.data(), stride, m, y_packed.data(), 16);
        for (size_t t = 0; t < m; ++t) {
          for (int r = 0; r < 16; ++r) {
            const size_t i = t * 16 + static_cast<size_t>(r);
            if (r >= n_rows) {
              ASSERT_EQ(y_packed[i], -7.0f) << "wrote outside the panel's rows";
              continue;
            }
            ASSERT_EQ(std::bit_cast<uint32_t>(y_packed[i]), std::bit_cast<uint32_t>(y_gemm[i]))
                << kernel.isa << " " << type_name(type) << " rows " << n_rows << " cols " << cols
                << " m " << m << " row " << r << " token " << t << ": " << y_packed[i] << " vs "
                << y_gemm[i];
          }
        }
      }
    }
  }
}

TEST_P(GemmTest, PackedPanelIsBitIdenticalToGemm) {
  const GgmlType type = GetParam();
  bool any = false;
  for (const GemmKernel& kernel : {gemm_kernel_avx512(type), gemm_kernel_avx2(type)}) {
    if (kernel.pack == nullptr) continue;
    any = true;
    SCOPED_TRACE(kernel.isa);
    check_packed_like_gemm(kernel, type);
  }
  if (!any) GTEST_SKIP() << "no pre-packed panels for this type on this build/CPU";
}

// matmul and matmul_group given a weight's packed panels give what they give from its
// blocks alone, for every m, batch policy and thread count (the panels stand in for the
// GEMM and its twin; the dot kernels stay where they were).
void check_matmul_reads_packed_panels(GgmlType type) {
  const size_t block = traits(type).block_elements;
  const size_t cols = block == 256 ? 3 * 256 : 19 * 32;
  const size_t rows = 50;
  std::mt19937 rng(15);
  const auto data = random_weights(type, rows, cols, rng);
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    std::vector<std::byte> storage(packed_panels_bytes(type, rows, cols) + 64);
    const size_t pad = (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
    const std::span<std::byte> panels(storage.data() + pad, storage.size() - 64);
    const WeightMatrix plain{type, data, rows, cols};
    pack_panels(plain, panels, pool);
    const WeightMatrix packed{type, data, rows, cols, panels};
    ASSERT_NE(packed_panel_kernel(packed, ActPrecision::int8), nullptr);
    EXPECT_EQ(packed_panel_kernel(packed, ActPrecision::int16), nullptr);
    // Panels stand in for the GEMM and its twin, bit for bit. Where they are fast alone
    // (GemmKernel::packed_fast_alone), weights that have them take that path for every m
    // under `fast` and in matmul: the blocks' results under `all`.
    const bool packed_alone = gemm_kernel(type).packed_fast_alone;
    for (size_t m : {1, 3, 4, 8, 13}) {
      const auto x = random_activations(m * cols, rng);
      std::vector<std::byte> scratch(matmul_scratch_bytes(type, cols, m));
      const GgmlType types[] = {type};
      std::vector<std::byte> group_scratch(matmul_group_scratch_bytes(types, cols, m));
      std::vector<float> y_plain(m * rows), y_packed(m * rows);
      const MatmulTarget from_blocks{plain, y_plain}, from_panels{packed, y_packed};
      if (packed_alone) {
        matmul_group({&from_blocks, 1}, x, m, group_scratch, pool, ActPrecision::int8,
                     BatchGemm::all);
      } else {
        matmul(plain, x, m, y_plain, scratch, pool);
      }
      matmul(packed, x, m, y_packed, scratch, pool);
      ASSERT_EQ(0, std::memcmp(y_plain.data(), y_packed.data(), y_plain.size() * sizeof(float)))
          << "matmul, m " << m;
      for (BatchGemm policy : {BatchGemm::off, BatchGemm::fast, BatchGemm::all}) {
        const BatchGemm blocks_policy =
            policy == BatchGemm::fast && packed_alone ? BatchGemm::all : policy;
        matmul_group({&from_blocks, 1}, x, m, group_scratch, pool, ActPrecision::int8,
                     blocks_policy);
        matmul_group({&from_panels, 1}, x, m, group_scratch, pool, ActPrecision::int8, policy);
        ASSERT_EQ(0, std::memcmp(y_plain.data(), y_packed.data(), y_plain.size() * sizeof(float)))
            << "matmul_group, m " << m << " policy " << static_cast<int>(policy);
      }
    }
  }
  const WeightMatrix short_panels{type, data, rows, cols,
                                  std::span<const std::byte>(data).first(64)};
  EXPECT_THROW(packed_panel_kernel(short_panels, ActPrecision::int8), std::invalid_argument);
}

TEST_P(GemmTest, MatmulReadsPackedPanelsLikeTheBlocks) {
  const GgmlType type = GetParam();
  bool any = false;
  for (Isa isa : {Isa::Avx512, Isa::Avx2}) {
    const ScopedIsaLimit limit(isa);
    if (packed_panels_bytes(type, 50, 768) == 0) continue;
    any = true;
    SCOPED_TRACE(gemm_kernel(type).isa);
    check_matmul_reads_packed_panels(type);
  }
  if (!any) GTEST_SKIP() << "no pre-packed panels for this type on this build/CPU";
}

TEST_P(GemmTest, MatmulAgreesOnEveryIsaPath) {
  const GgmlType type = GetParam();
  const size_t block = traits(type).block_elements;
  for (Isa isa : {Isa::Portable, Isa::Avx2, Isa::Avx512}) {
    const ScopedIsaLimit limit(isa);
    std::mt19937 rng(12);
    for (int threads = 1; threads <= 3; ++threads) {
      ThreadPool pool(threads);
      for (size_t rows : {1, 17, 33, 50}) {
        for (size_t m : {1, 8, 13, 17}) {
          check_matmul(type, rows, block * (rows % 2 + 1), m, pool, rng);
        }
      }
    }
    ThreadPool pool(2);
    check_matmul(type, 40, block == 256 ? 5 * 256 : 33 * 32, 20, pool, rng);
  }
}

TEST(QuantizeAct, SimdIsByteIdenticalToReference) {
  std::mt19937 rng(13);
  for (ActFormat format : {ActFormat::Q8_act, ActFormat::Q8_K}) {
    const size_t block = format == ActFormat::Q8_K ? 256 : 32;
    for (int trial = 0; trial < 40; ++trial) {
      const size_t cols = block * static_cast<size_t>(1 + trial % 5);
      auto x = random_activations(cols, rng);
      if (trial % 4 == 1) std::fill(x.begin(), x.begin() + static_cast<long>(block), 0.0f);
      if (trial % 4 == 2) {
        // Equal magnitudes of both signs: the first one's sign must win, as in the reference.
        x[3] = -9.0f;
        x[block - 2] = 9.0f;
      }
      if (trial % 4 == 3) {
        for (size_t i = 0; i < cols; ++i) x[i] = std::round(x[i] * 4.0f) * 0.5f;  // halves
      }
      const size_t bytes = act_row_bytes(format, cols);
      std::vector<std::byte> simd(bytes + 8, std::byte{0x5A}), ref(bytes + 8, std::byte{0x5A});
      if (!quantize_act_row_avx2(format, x, std::span(simd).first(bytes))) {
        GTEST_SKIP() << "no AVX2 quantizer on this build/CPU";
      }
      quantize_act_row_portable(format, x, std::span(ref).first(bytes));
      ASSERT_EQ(simd, ref) << "format " << static_cast<int>(format) << " trial " << trial;
    }
  }
}

TEST(Gemm, IsaLimitSelectsKernels) {
  {
    const ScopedIsaLimit limit(Isa::Portable);
    EXPECT_STREQ(dot_kernel(GgmlType::Q4_K).isa, "portable");
    EXPECT_EQ(gemm_kernel(GgmlType::Q4_K).fn, nullptr);
  }
  {
    const ScopedIsaLimit limit(Isa::Avx2);
    EXPECT_EQ(gemm_kernel(GgmlType::Q4_K).fn, gemm_kernel_avx2(GgmlType::Q4_K).fn);
    EXPECT_EQ(gemm_kernel(GgmlType::Q8_0).fn, gemm_kernel_avx2(GgmlType::Q8_0).fn);
    // Pre-packed panels for every GEMM type (they serve decode).
    for (GgmlType type : kGemmTypes) {
      EXPECT_EQ(gemm_kernel(type).pack != nullptr, gemm_kernel(type).fn != nullptr);
    }
    if (dot_kernel_avx2(GgmlType::Q4_K).fn != nullptr) {
      EXPECT_STREQ(dot_kernel(GgmlType::Q4_K).isa, "avx2");
    }
  }
  const ScopedIsaLimit limit(Isa::Avx512);
  EXPECT_EQ(gemm_kernel(GgmlType::Q4_K).fn, gemm_kernel_avx512(GgmlType::Q4_K).fn);
  if (dot_kernel_avx512(GgmlType::Q4_K).fn != nullptr) {
    EXPECT_STREQ(dot_kernel(GgmlType::Q4_K).isa, "avx512");
  }
}

INSTANTIATE_TEST_SUITE_P(GemmTypes, GemmTest, ::testing::ValuesIn(kGemmTypes), name_of);

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
