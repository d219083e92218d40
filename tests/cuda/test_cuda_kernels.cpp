// Every CUDA kernel against its CPU twin (kernels/ops.h, kernels/quants.h) or, for the matmul
// and attention, against a float64 reference computed here from the CPU dequantizer, on seeded
// random inputs over many shapes. The host launchers surround every device output with guard
// bytes and throw when a kernel writes past its output, so each test also checks bounds.
// Without a GPU every test skips with "no CUDA device".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/kernels_cuda.h"
#include "kernels/f16.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/quantize.h"
#include "kernels/quants.h"
#include "tests/cuda/cuda_test_util.h"

namespace {

using kiln::GgmlType;
using kiln::cuda::AttentionPath;
using kiln::cuda::AttentionShape;
using kiln::cuda::MatmulPath;
using kiln::cuda::testing::all_finite;
using kiln::cuda::testing::random_floats;
namespace kk = kiln::kernels;

const GgmlType kWeightTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                                 GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                                 GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

// A (rows, cols) matrix of `type` quantized from seeded random floats.
std::vector<std::byte> random_matrix(GgmlType type, size_t rows, size_t cols, uint32_t seed) {
  const auto values = random_floats(rows * cols, seed);
  const size_t rb = kiln::row_bytes(type, cols);
  std::vector<std::byte> data(rows * rb);
  for (size_t r = 0; r < rows; ++r) {
    kk::quantize_row(type, std::span(values).subspan(r * cols, cols),
                     std::span(data).subspan(r * rb, rb));
  }
  return data;
}

TEST(CudaDevice, DescriptionNamesTheDeviceOrWhyThereIsNone) {
  const std::string d = kiln::cuda::cuda_device_description();
  EXPECT_FALSE(d.empty());
  if (kiln::cuda::cuda_device_count() == 0) {
    EXPECT_NE(d.find("no CUDA device"), std::string::npos) << d;
  }
}

TEST(CudaKernels, HasMatmulForTheDecodeTypesOnly) {
  for (GgmlType t : kWeightTypes) EXPECT_TRUE(kiln::cuda::has_cuda_matmul(t)) << type_name(t);
  EXPECT_FALSE(kiln::cuda::has_cuda_matmul(GgmlType::Q2_K));
  EXPECT_FALSE(kiln::cuda::has_cuda_matmul(GgmlType::IQ4_XS));
}

class CudaDequantize : public ::testing::TestWithParam<GgmlType> {};

// Runs without a GPU: the device dequantizer's code, executed on the host, against the CPU
// reference. Every CUDA matmul and the embedding gather read weights through it.
TEST_P(CudaDequantize, DeviceCodeOnTheHostMatchesTheCpuReference) {
  const GgmlType type = GetParam();
  for (size_t n : {256u, 512u, 4096u}) {
    const auto data = random_matrix(type, 1, n, static_cast<uint32_t>(n) + 1);
    std::vector<float> cpu(n), dev(n);
    kk::dequantize_row(type, data, cpu);
    kiln::cuda::dequantize_row_host(type, data, dev);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(dev[i], cpu[i], 1e-6f * (1.0f + std::fabs(cpu[i])))
          << type_name(type) << " n=" << n << " i=" << i;
    }
  }
}

TEST_P(CudaDequantize, MatchesTheCpuReference) {
  KILN_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  for (size_t n : {256u, 512u, 4096u}) {
    const auto data = random_matrix(type, 1, n, static_cast<uint32_t>(n));
    std::vector<float> cpu(n), gpu(n);
    kk::dequantize_row(type, data, cpu);
    kiln::cuda::dequantize_row(type, data, gpu);
    for (size_t i = 0; i < n; ++i) {
      // Same float ops; only a fused multiply-add may round differently.
      ASSERT_NEAR(gpu[i], cpu[i], 1e-6f * (1.0f + std::fabs(cpu[i])))
          << type_name(type) << " n=" << n << " i=" << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, CudaDequantize, ::testing::ValuesIn(kWeightTypes),
                         [](const auto& info) { return std::string(type_name(info.param)); });

struct MatmulCase {
  size_t rows, cols, m;
};

// Float64 reference rows of Y = X @ W^T (W dequantized on the CPU) and the error bound of
// the path's rounding, per output: float accumulation; fp16 operands (2^-11 relative each,
// the tensor-core paths); or int8 x, each rounded to a step of its run's max|x| / 127, an
// error of at most max|x| / 254 per element.
enum class Rounding { kFloat, kFp16, kInt8 };
struct ReferenceProduct {
  std::vector<double> y, bound;  // (m, rows)
};
ReferenceProduct reference_product(GgmlType type, const std::vector<std::byte>& w, size_t rows,
                                   size_t cols, const std::vector<float>& x, size_t m,
                                   Rounding rounding) {
  std::vector<float> w_f(rows * cols);
  const size_t rb = kiln::row_bytes(type, cols);
  for (size_t r = 0; r < rows; ++r) {
    kk::dequantize_row(type, std::span(w).subspan(r * rb, rb),
                       std::span(w_f).subspan(r * cols, cols));
  }
  ReferenceProduct out{std::vector<double>(m * rows), std::vector<double>(m * rows)};
  for (size_t t = 0; t < m; ++t) {
    double x_max = 0;
    for (size_t k = 0; k < cols; ++k) x_max = std::max(x_max, double(std::fabs(x[t * cols + k])));
    for (size_t r = 0; r < rows; ++r) {
      double dot = 0, mag = 0, w_abs = 0;
      for (size_t k = 0; k < cols; ++k) {
        const double p = double(w_f[r * cols + k]) * x[t * cols + k];
        dot += p;
        mag += std::fabs(p);
        w_abs += std::fabs(w_f[r * cols + k]);
      }
      out.y[t * rows + r] = dot;
      out.bound[t * rows + r] = (rounding == Rounding::kInt8    ? w_abs * x_max / 254.0 + 1e-5 * mag
                                 : rounding == Rounding::kFloat ? 1e-5 * mag
                                                                : 3e-3 * mag) +
                                1e-6;
    }
  }
  return out;
}

class CudaMatmul : public ::testing::TestWithParam<GgmlType> {};

// Y (m, rows) = X (m, cols) @ W^T in float64 from the CPU-dequantized W. The error bound per
// output scales with sum |w x|: float accumulation for the float matrix-vector kernel, fp16
// operands (2^-11 relative each) for the tensor-core kernels.
TEST_P(CudaMatmul, BothPathsMatchAFloat64Reference) {
  KILN_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const size_t block = kiln::traits(type).block_elements;
  // Includes long rows split across many warps (the mma kernel gives each warp several K
  // steps only when rows are few and K long) and token counts past one mma pass (12).
  const MatmulCase cases[] = {{1, 256, 1},   {7, 512, 1},   {33, 256, 3},   {64, 768, 8},
                              {130, 512, 9}, {96, 256, 17}, {65, 1024, 70}, {200, 256, 130},
                              {40, 3072, 1}, {24, 8192, 2}, {9, 2304, 8},   {17, 4096, 12}};
  uint32_t seed = 1;
  for (const auto& c : cases) {
    const size_t cols = (c.cols + block - 1) / block * block;
    const auto w = random_matrix(type, c.rows, cols, seed++);
    const auto x = random_floats(c.m * cols, seed++);
    const kk::WeightMatrix wm{type, w, c.rows, cols};
    for (MatmulPath path :
         {MatmulPath::kMatVec, MatmulPath::kTensorCore, MatmulPath::kMatVecFloat,
          MatmulPath::kMatVecInt8, MatmulPath::kTensorCoreTiles, MatmulPath::kAuto}) {
      const bool int8_fits =
          kiln::cuda::has_int8_matvec(type) && c.m <= kiln::cuda::kMatVecInt8MaxTokens;
      if (path == MatmulPath::kMatVecInt8 && !int8_fits) continue;
      std::vector<float> y(c.m * c.rows);
      kiln::cuda::matmul(wm, x, c.m, y, path);
      ASSERT_TRUE(all_finite(y));
      const Rounding rounding =
          path == MatmulPath::kMatVecInt8 || (path == MatmulPath::kAuto && int8_fits)
              ? Rounding::kInt8
          : path == MatmulPath::kMatVecFloat ? Rounding::kFloat
                                             : Rounding::kFp16;
      const auto ref = reference_product(type, w, c.rows, cols, x, c.m, rounding);
      for (size_t j = 0; j < y.size(); ++j) {
        ASSERT_NEAR(y[j], ref.y[j], ref.bound[j])
            << type_name(type) << " rows=" << c.rows << " cols=" << cols << " m=" << c.m
            << " path=" << int(path) << " t=" << j / c.rows << " r=" << j % c.rows;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, CudaMatmul, ::testing::ValuesIn(kWeightTypes),
                         [](const auto& info) { return std::string(type_name(info.param)); });

// Rows of rmsnorm(x) * g (eps 1e-5) in float64, rounded to float (what the products read).
std::vector<float> rmsnormed(const std::vector<float>& x, const std::vector<float>& g, size_t m) {
  const size_t n = g.size();
  std::vector<float> out(m * n);
  for (size_t t = 0; t < m; ++t) {
    double ss = 0;
    for (size_t k = 0; k < n; ++k) ss += double(x[t * n + k]) * x[t * n + k];
    const double inv = 1.0 / std::sqrt(ss / double(n) + 1e-5);
    for (size_t k = 0; k < n; ++k) out[t * n + k] = float(x[t * n + k] * inv * g[k]);
  }
  return out;
}

// Q, K and V in one launch (the int8 kernel, one token of K types, V of another type than Q
// and K as in Q4_K_M) or three (other types or more tokens): each output against float64.
TEST(CudaMatmulQkv, EachProjectionMatchesAFloat64Reference) {
  KILN_REQUIRE_CUDA_DEVICE();
  struct Case {
    GgmlType q, k, v;
    size_t m;
  };
  const Case cases[] = {{GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q6_K, 1},
                        {GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q4_K, 1},
                        {GgmlType::Q4_K, GgmlType::Q4_K, GgmlType::Q6_K, 3},
                        {GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0, 1},
                        {GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K, 1}};
  const size_t cols = 768, rows[3] = {70, 17, 33};
  uint32_t seed = 300;
  for (const Case& c : cases) {
    const GgmlType types[3] = {c.q, c.k, c.v};
    const bool int8 = c.m <= kiln::cuda::kMatVecInt8MaxTokens &&
                      std::all_of(types, types + 3, kiln::cuda::has_int8_matvec);
    std::vector<std::byte> w[3];
    std::vector<float> y[3];
    for (int i = 0; i < 3; ++i) {
      w[i] = random_matrix(types[i], rows[i], cols, seed++);
      y[i].resize(c.m * rows[i]);
    }
    const auto x = random_floats(c.m * cols, seed++);
    const auto g = random_floats(cols, seed++, 1.0f);
    // The input as it comes (quantized by the int8 kernel), or normed with its int8 copy
    // made by the norm (as in the forward).
    for (const bool normed : {false, true}) {
      kiln::cuda::matmul_qkv({c.q, w[0], rows[0], cols}, {c.k, w[1], rows[1], cols},
                             {c.v, w[2], rows[2], cols}, x, c.m, y[0], y[1], y[2],
                             normed ? std::span<const float>(g) : std::span<const float>());
      const auto xr = normed ? rmsnormed(x, g, c.m) : x;
      for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(all_finite(y[i]));
        const bool int8_here = int8 || (c.m <= kiln::cuda::kMatVecInt8MaxTokens &&
                                        kiln::cuda::has_int8_matvec(types[i]));
        const auto ref = reference_product(types[i], w[i], rows[i], cols, xr, c.m,
                                           int8_here ? Rounding::kInt8 : Rounding::kFp16);
        for (size_t j = 0; j < y[i].size(); ++j) {
          ASSERT_NEAR(y[i][j], ref.y[j], ref.bound[j])
              << "projection " << i << " " << type_name(types[i]) << " m=" << c.m << " j=" << j
              << " normed=" << normed;
        }
      }
    }
  }
}

// silu(X @ Wgate^T) * (X @ Wup^T): one launch for one token of a K type (rows in pairs, an odd
// count checks the last pair), two launches otherwise.
TEST(CudaMatmulSwiglu, MatchesFloat64ProjectionsThenSiluMul) {
  KILN_REQUIRE_CUDA_DEVICE();
  uint32_t seed = 400;
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0}) {
    for (size_t m : {1, 3}) {
      const size_t rows = 33, cols = 512;
      const auto wg = random_matrix(type, rows, cols, seed++);
      const auto wu = random_matrix(type, rows, cols, seed++);
      const auto x = random_floats(m * cols, seed++);
      const auto norm = random_floats(cols, seed++, 1.0f);
      for (const bool normed : {false, true}) {
        std::vector<float> y(m * rows);
        kiln::cuda::matmul_swiglu({type, wg, rows, cols}, {type, wu, rows, cols}, x, m, y,
                                  normed ? std::span<const float>(norm) : std::span<const float>());
        ASSERT_TRUE(all_finite(y));
        const bool int8 =
            kiln::cuda::has_int8_matvec(type) && m <= kiln::cuda::kMatVecInt8MaxTokens;
        const auto xr = normed ? rmsnormed(x, norm, m) : x;
        const Rounding rounding = int8 ? Rounding::kInt8 : Rounding::kFp16;
        const auto g = reference_product(type, wg, rows, cols, xr, m, rounding);
        const auto u = reference_product(type, wu, rows, cols, xr, m, rounding);
        for (size_t j = 0; j < y.size(); ++j) {
          const double gv = g.y[j], sig = 1.0 / (1.0 + std::exp(-gv)), silu_g = gv * sig;
          const double ref = silu_g * u.y[j];
          // d silu / dg = sig (1 + g (1 - sig)), at most 1.1 in magnitude.
          const double bound = std::fabs(silu_g) * u.bound[j] +
                               1.1 * g.bound[j] * std::fabs(u.y[j]) + g.bound[j] * u.bound[j] +
                               1e-5 * std::fabs(ref) + 1e-6;
          ASSERT_NEAR(y[j], ref, bound)
              << type_name(type) << " m=" << m << " j=" << j << " normed=" << normed;
        }
      }
    }
  }
}

TEST(CudaMatmulShapes, RejectsColumnsNotAMultipleOf32) {
  KILN_REQUIRE_CUDA_DEVICE();
  std::vector<float> w(4 * 40), x(40), y(4);
  const kk::WeightMatrix wm{GgmlType::F32, std::as_bytes(std::span(w)), 4, 40};
  EXPECT_THROW(kiln::cuda::matmul(wm, x, 1, y), std::invalid_argument);
}

// The up projection with the SwiGLU product applied to its output, against a float64 product
// and silu_mul on the CPU, for decode sizes (fused into the matrix-vector kernel) and a
// prefill size (tensor-core kernel, then silu_mul).
TEST(CudaMatmulSiluMul, MatchesAFloat64ProductThenSiluMul) {
  KILN_REQUIRE_CUDA_DEVICE();
  uint32_t seed = 100;
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::F16}) {
    for (size_t m : {1, 3, 8, 12}) {
      const size_t rows = 40, cols = 1024;
      const auto w = random_matrix(type, rows, cols, seed++);
      const auto x = random_floats(m * cols, seed++), gate = random_floats(m * rows, seed++);
      std::vector<float> y(m * rows);
      kiln::cuda::matmul_silu_mul({type, w, rows, cols}, x, gate, m, y);
      ASSERT_TRUE(all_finite(y));
      // The product applied by a matvec epilogue (the mma kernel: the int8 one does not take
      // a gate) or after the GEMM: fp16 operands either way.
      const auto ref = reference_product(type, w, rows, cols, x, m, Rounding::kFp16);
      for (size_t j = 0; j < y.size(); ++j) {
        const double g = gate[j], silu_g = g / (1.0 + std::exp(-g));
        const double want = silu_g * ref.y[j];
        // The product's bound scaled by silu(g), and fast exp/divide rounding.
        ASSERT_NEAR(y[j], want, std::fabs(silu_g) * ref.bound[j] + 1e-5 * std::fabs(want) + 1e-6)
            << type_name(type) << " m=" << m << " j=" << j;
      }
    }
  }
}

const size_t kRowSizes[] = {1, 7, 64, 255, 576, 2048, 3072, 4097, 8192, 16384, 20000};

TEST(CudaOps, RmsnormMatchesCpu) {
  KILN_REQUIRE_CUDA_DEVICE();
  for (size_t n : kRowSizes) {
    const auto x = random_floats(n, 11, 0.5f, 3.0f), w = random_floats(n, 12, 1.0f, 0.2f);
    std::vector<float> cpu(n), gpu(n);
    kk::rmsnorm(x, w, 1e-5f, cpu);
    kiln::cuda::rmsnorm(x, w, 1e-5f, gpu);
    ASSERT_TRUE(all_finite(gpu));
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-5f * (1 + std::fabs(cpu[i])));
  }
}

TEST(CudaOps, AddRmsnormMatchesCpuAddThenRmsnorm) {
  KILN_REQUIRE_CUDA_DEVICE();
  for (size_t n : kRowSizes) {
    const auto x0 = random_floats(n, 21, 0.5f, 3.0f), r = random_floats(n, 22, 0.0f, 2.0f);
    const auto w = random_floats(n, 23, 1.0f, 0.2f);
    std::vector<float> x_cpu = x0, x_gpu = x0, cpu(n), gpu(n);
    kk::add(x_cpu, r);
    kk::rmsnorm(x_cpu, w, 1e-5f, cpu);
    kiln::cuda::add_rmsnorm(x_gpu, r, w, 1e-5f, gpu);
    ASSERT_TRUE(all_finite(gpu));
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(x_gpu[i], x_cpu[i], 1e-6f * (1 + std::fabs(x_cpu[i])));
      ASSERT_NEAR(gpu[i], cpu[i], 1e-5f * (1 + std::fabs(cpu[i])));
    }
  }
}

// The int8 copy the norms write for the int8 matrix-vector kernel: per run of 8 outputs, the
// scale max|out| / 127, each value within half a step of its output, and the float sum.
void expect_int8_copy(std::span<const float> out, const kiln::cuda::Int8Rows& q8) {
  for (size_t g = 0; g < out.size() / 8; ++g) {
    double amax = 0, sum = 0;
    for (size_t i = 8 * g; i < 8 * g + 8; ++i) {
      amax = std::max(amax, double(std::fabs(out[i])));
      sum += out[i];
    }
    ASSERT_NEAR(q8.d[g], amax / 127.0, 1e-6 * amax) << "run " << g;
    ASSERT_NEAR(q8.sum[g], sum, 1e-5 * (1 + amax)) << "run " << g;
    for (size_t i = 8 * g; i < 8 * g + 8; ++i) {
      ASSERT_NEAR(double(q8.q[i]) * q8.d[g], out[i], 0.5001 * q8.d[g] + 1e-12) << "i " << i;
    }
  }
}

TEST(CudaOps, NormsWriteAnInt8CopyForTheInt8Kernel) {
  KILN_REQUIRE_CUDA_DEVICE();
  for (size_t n : kRowSizes) {
    const auto x0 = random_floats(n, 31, 0.5f, 3.0f), r = random_floats(n, 32, 0.0f, 2.0f);
    const auto w = random_floats(n, 33, 1.0f, 0.2f);
    std::vector<float> out(n), x = x0;
    kiln::cuda::Int8Rows q8;
    if (n % 8 != 0 || n > 16384) {  // the copy needs runs of 8 and the register-held row
      EXPECT_THROW(kiln::cuda::rmsnorm(x0, w, 1e-5f, out, &q8), std::invalid_argument) << n;
      continue;
    }
    kiln::cuda::rmsnorm(x0, w, 1e-5f, out, &q8);
    expect_int8_copy(out, q8);
    kiln::cuda::add_rmsnorm(x, r, w, 1e-5f, out, &q8);
    expect_int8_copy(out, q8);
  }
}

TEST(CudaOps, SoftmaxMatchesCpu) {
  KILN_REQUIRE_CUDA_DEVICE();
  for (size_t n : kRowSizes) {
    auto cpu = random_floats(n, 13, 0.0f, 8.0f);
    auto gpu = cpu;
    kk::softmax(cpu);
    kiln::cuda::softmax(gpu);
    ASSERT_TRUE(all_finite(gpu));
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-6f + 1e-5f * cpu[i]);
  }
}

TEST(CudaOps, SiluMulAndAddMatchCpu) {
  KILN_REQUIRE_CUDA_DEVICE();
  for (size_t n : kRowSizes) {
    const auto g = random_floats(n, 14, 0.0f, 4.0f), u = random_floats(n, 15);
    std::vector<float> cpu(n), gpu(n);
    kk::silu_mul(g, u, cpu);
    kiln::cuda::silu_mul(g, u, gpu);
    ASSERT_TRUE(all_finite(gpu));
    for (size_t i = 0; i < n; ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-5f * (1 + std::fabs(cpu[i])));

    auto a_cpu = random_floats(n, 16), a_gpu = a_cpu;
    kk::add(a_cpu, u);
    kiln::cuda::add(a_gpu, u);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(a_gpu[i], a_cpu[i]);
  }
}

TEST(CudaOps, RopeAnglesMatchCpuWithAndWithoutFrequencyFactors) {
  KILN_REQUIRE_CUDA_DEVICE();
  for (size_t rope_dim : {16u, 64u, 128u}) {
    std::vector<float> factors(rope_dim / 2);
    for (size_t i = 0; i < factors.size(); ++i) factors[i] = 1.0f + 0.5f * float(i);
    for (int64_t pos : {0, 1, 17, 4095, 100000}) {
      for (bool with_factors : {false, true}) {
        const std::span<const float> ff =
            with_factors ? std::span<const float>(factors) : std::span<const float>();
        std::vector<float> c0(rope_dim / 2), s0(rope_dim / 2), c1(rope_dim / 2), s1(rope_dim / 2);
        kk::rope_angles(pos, rope_dim, 500000.0f, ff, c0, s0);
        kiln::cuda::rope_angles(pos, rope_dim, 500000.0f, ff, c1, s1);
        for (size_t i = 0; i < c0.size(); ++i) {
          ASSERT_NEAR(c1[i], c0[i], 1e-6f) << "pos " << pos << " i " << i;
          ASSERT_NEAR(s1[i], s0[i], 1e-6f) << "pos " << pos << " i " << i;
        }
      }
    }
  }
}

TEST(CudaOps, RopeNormalMatchesCpuIncludingPartialRotation) {
  KILN_REQUIRE_CUDA_DEVICE();
  struct Case {
    size_t heads, head_dim, rope_dim;
  };
  for (const Case& c : {Case{1, 16, 16}, Case{9, 64, 64}, Case{4, 128, 64}, Case{3, 32, 8}}) {
    std::vector<float> cos(c.rope_dim / 2), sin(c.rope_dim / 2);
    kk::rope_angles(123, c.rope_dim, 10000.0f, {}, cos, sin);
    auto cpu = random_floats(c.heads * c.head_dim, 17), gpu = cpu;
    kk::rope_normal(cpu, c.heads, c.head_dim, c.rope_dim, cos, sin);
    kiln::cuda::rope_normal(gpu, c.heads, c.head_dim, c.rope_dim, cos, sin);
    for (size_t i = 0; i < cpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-6f);
  }
}

// The forward's fused kernel: q rotated in place, k rotated and v stored as F16, against the
// CPU's rope_normal and fp32_to_fp16 (full and partial rotation, GQA shapes).
TEST(CudaOps, RopeKvAppendMatchesCpuRopeAndHalfRows) {
  KILN_REQUIRE_CUDA_DEVICE();
  struct Case {
    size_t heads, kv_heads, head_dim, rope_dim;
  };
  for (const Case& c :
       {Case{9, 3, 64, 64}, Case{24, 8, 128, 128}, Case{4, 4, 128, 64}, Case{6, 2, 32, 8}}) {
    std::vector<float> cos(c.rope_dim / 2), sin(c.rope_dim / 2);
    kk::rope_angles(321, c.rope_dim, 10000.0f, {}, cos, sin);
    const size_t kv_dim = c.kv_heads * c.head_dim;
    auto q_cpu = random_floats(c.heads * c.head_dim, 31), q_gpu = q_cpu;
    auto k_cpu = random_floats(kv_dim, 32);
    const auto k = k_cpu, v = random_floats(kv_dim, 33);
    kk::rope_normal(q_cpu, c.heads, c.head_dim, c.rope_dim, cos, sin);
    kk::rope_normal(k_cpu, c.kv_heads, c.head_dim, c.rope_dim, cos, sin);
    std::vector<uint16_t> k_half(kv_dim), v_half(kv_dim);
    kiln::cuda::rope_kv_append(q_gpu, k, v, c.heads, c.kv_heads, c.head_dim, c.rope_dim, cos, sin,
                               k_half, v_half);
    for (size_t i = 0; i < q_cpu.size(); ++i) ASSERT_NEAR(q_gpu[i], q_cpu[i], 1e-6f) << i;
    for (size_t i = 0; i < kv_dim; ++i) {
      // Rotated k is rounded to half once; a 1e-6 float difference may move it one half ulp.
      ASSERT_NEAR(kk::fp16_to_fp32(k_half[i]), k_cpu[i], 1e-3f * (1 + std::fabs(k_cpu[i]))) << i;
      ASSERT_EQ(v_half[i], kk::fp32_to_fp16(v[i])) << i;
    }
  }
}

TEST(CudaOps, KvAppendConvertsToHalfLikeTheCpu) {
  KILN_REQUIRE_CUDA_DEVICE();
  auto x = random_floats(1024, 18, 0.0f, 100.0f);
  x[0] = 1e-7f;     // subnormal half
  x[1] = 70000.0f;  // rounds to inf
  x[2] = -0.0f;
  std::vector<uint16_t> gpu(x.size());
  kiln::cuda::f32_to_f16_row(x, gpu);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(gpu[i], kk::fp32_to_fp16(x[i])) << i;
}

// Scalar float64 attention over an F16 cache (the math of Engine::attention).
std::vector<float> reference_attention(const std::vector<float>& q, const std::vector<uint16_t>& kc,
                                       const std::vector<uint16_t>& vc,
                                       const std::vector<int32_t>& seq,
                                       const std::vector<int32_t>& pos, const AttentionShape& s) {
  const size_t n = seq.size(), hd = s.head_dim, q_dim = s.n_heads * hd, kv_dim = s.n_kv_heads * hd;
  const size_t group = s.n_heads / s.n_kv_heads;
  std::vector<float> out(n * q_dim);
  for (size_t i = 0; i < n; ++i) {
    for (size_t h = 0; h < s.n_heads; ++h) {
      const size_t g = h / group, n_pos = static_cast<size_t>(pos[i]) + 1;
      const size_t base = static_cast<size_t>(seq[i]) * s.n_ctx * kv_dim + g * hd;
      std::vector<double> scores(n_pos);
      double max = -INFINITY;
      for (size_t p = 0; p < n_pos; ++p) {
        double dot = 0;
        for (size_t d = 0; d < hd; ++d) {
          dot += double(q[i * q_dim + h * hd + d]) * kk::fp16_to_fp32(kc[base + p * kv_dim + d]);
        }
        scores[p] = dot / std::sqrt(double(hd));
        max = std::max(max, scores[p]);
      }
      double sum = 0;
      for (double& sc : scores) sum += (sc = std::exp(sc - max));
      for (size_t d = 0; d < hd; ++d) {
        double acc = 0;
        for (size_t p = 0; p < n_pos; ++p) {
          acc += scores[p] * kk::fp16_to_fp32(vc[base + p * kv_dim + d]);
        }
        out[i * q_dim + h * hd + d] = static_cast<float>(acc / sum);
      }
    }
  }
  return out;
}

struct AttentionCase {
  size_t n_heads, n_kv_heads, head_dim, n_ctx, n_seq;
};

TEST(CudaAttention, SplitAndTiledMatchAFloat64Reference) {
  KILN_REQUIRE_CUDA_DEVICE();
  // Contexts past 2,048 give the split kernel chunks of more than 32 positions (several
  // online-softmax runs per block): 2,500 -> 64, 6,200 -> 128.
  const AttentionCase cases[] = {{4, 2, 16, 40, 2},     {4, 2, 32, 300, 2},  {9, 3, 64, 700, 3},
                                 {8, 8, 128, 520, 1},   {2, 1, 256, 96, 1},  {6, 2, 96, 33, 2},
                                 {24, 8, 128, 2500, 1}, {12, 4, 64, 6200, 1}};
  uint32_t seed = 100;
  for (const auto& c : cases) {
    const AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim, c.n_ctx};
    const size_t kv_dim = c.n_kv_heads * c.head_dim, q_dim = c.n_heads * c.head_dim;
    const size_t cache = c.n_seq * c.n_ctx * kv_dim;
    const auto kf = random_floats(cache, seed++), vf = random_floats(cache, seed++);
    std::vector<uint16_t> kc(cache), vc(cache);
    for (size_t i = 0; i < cache; ++i) {
      kc[i] = kk::fp32_to_fp16(kf[i]);
      vc[i] = kk::fp32_to_fp16(vf[i]);
    }
    // Decode-like: one query per sequence at scattered positions (incl. the first and last).
    {
      std::vector<int32_t> seq, pos;
      for (size_t sidx = 0; sidx < c.n_seq; ++sidx) {
        for (size_t p : {size_t{0}, c.n_ctx / 2, c.n_ctx - 1}) {
          seq.push_back(static_cast<int32_t>(sidx));
          pos.push_back(static_cast<int32_t>(p));
        }
      }
      const auto q = random_floats(seq.size() * q_dim, seed++, 0.0f, 2.0f);
      std::vector<float> out(q.size());
      kiln::cuda::attention(q, kc, vc, seq, pos, shape, out, AttentionPath::kSplit);
      ASSERT_TRUE(all_finite(out));
      const auto ref = reference_attention(q, kc, vc, seq, pos, shape);
      for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_NEAR(out[i], ref[i], 2e-4f) << "split, head_dim " << c.head_dim << " i " << i;
      }
    }
    // Prefill-like: consecutive positions of the last sequence, from an offset.
    {
      const size_t n = std::min<size_t>(c.n_ctx, 70), first = c.n_ctx - n;
      std::vector<int32_t> seq(n, static_cast<int32_t>(c.n_seq - 1)), pos(n);
      for (size_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(first + i);
      const auto q = random_floats(n * q_dim, seed++, 0.0f, 2.0f);
      const auto ref = reference_attention(q, kc, vc, seq, pos, shape);
      for (AttentionPath path : {AttentionPath::kSplit, AttentionPath::kTiled}) {
        if (path == AttentionPath::kTiled && !kiln::cuda::can_tile_attention(shape)) continue;
        std::vector<float> out(q.size());
        kiln::cuda::attention(q, kc, vc, seq, pos, shape, out, path);
        ASSERT_TRUE(all_finite(out));
        for (size_t i = 0; i < out.size(); ++i) {
          ASSERT_NEAR(out[i], ref[i], 2e-4f)
              << "path " << int(path) << ", head_dim " << c.head_dim << " i " << i;
        }
      }
    }
  }
}

}  // namespace
