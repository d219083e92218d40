// kernels/ops: each kernel against a plain double-precision formula written
// out here, on random inputs with lengths that exercise the SIMD tails.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/dot.h"
#include "kernels/ops.h"

namespace {

using kiln::kernels::axpy;
using kiln::kernels::dot;

std::vector<float> random_vector(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// IEEE half -> double, from the definition (sign, 5-bit exponent, 10-bit mantissa).
double half_value(uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  if (exp == 31) return mant ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + mant, exp - 25);
}

const size_t kLengths[] = {1, 7, 8, 15, 16, 17, 33, 64, 100, 576};

TEST(Ops, RmsnormMatchesFormula) {
  std::mt19937 rng(1);
  for (size_t n : kLengths) {
    auto x = random_vector(n, rng, 3.0f);
    auto w = random_vector(n, rng);
    std::vector<float> out(n);
    kiln::kernels::rmsnorm(x, w, 1e-5f, out);
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const double scale = 1.0 / std::sqrt(ss / n + 1e-5);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(out[i], x[i] * scale * w[i], 1e-5) << n;
  }
}

TEST(Ops, RmsnormInPlace) {
  std::mt19937 rng(2);
  auto x = random_vector(33, rng);
  auto w = random_vector(33, rng);
  std::vector<float> expected(33);
  kiln::kernels::rmsnorm(x, w, 1e-6f, expected);
  kiln::kernels::rmsnorm(x, w, 1e-6f, x);
  EXPECT_EQ(x, expected);
}

TEST(Ops, SoftmaxMatchesFormulaAndSurvivesLargeInputs) {
  std::mt19937 rng(3);
  for (size_t n : kLengths) {
    auto x = random_vector(n, rng, 5.0f);
    x[0] = 1000.0f;  // exp(1000) overflows unless the max is subtracted
    std::vector<double> ref(n);
    double max = -INFINITY, sum = 0;
    for (float v : x) max = std::max(max, double(v));
    for (size_t i = 0; i < n; ++i) sum += ref[i] = std::exp(double(x[i]) - max);
    kiln::kernels::softmax(x);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(x[i], ref[i] / sum, 1e-6) << n;
  }
}

// Pieces of one softmax, combined by their maxima and sums, give the whole softmax: what
// the engine's attention split over chunks of positions relies on.
TEST(Ops, SoftmaxPiecesCombineIntoTheWholeSoftmax) {
  std::mt19937 rng(13);
  for (size_t n : kLengths) {
    if (n < 2) continue;
    auto x = random_vector(n, rng, 8.0f);
    auto whole = x;
    kiln::kernels::softmax(whole);
    const size_t cut = n / 3 + 1;
    auto a = std::vector<float>(x.begin(), x.begin() + long(cut));
    auto b = std::vector<float>(x.begin() + long(cut), x.end());
    const auto pa = kiln::kernels::softmax_exp(a);
    const auto pb = kiln::kernels::softmax_exp(b);
    EXPECT_EQ(pa.max, *std::max_element(x.begin(), x.begin() + long(cut)));
    const float max = std::max(pa.max, pb.max);
    const float total = std::exp(pa.max - max) * pa.sum + std::exp(pb.max - max) * pb.sum;
    for (size_t i = 0; i < n; ++i) {
      const float piece =
          i < cut ? a[i] * std::exp(pa.max - max) : b[i - cut] * std::exp(pb.max - max);
      EXPECT_NEAR(piece / total, whole[i], 1e-6) << n << " " << i;
    }
  }
  EXPECT_EQ(kiln::kernels::softmax_exp({}).sum, 0.0f);
}

TEST(Ops, SiluMul) {
  std::mt19937 rng(4);
  for (size_t n : kLengths) {
    auto g = random_vector(n, rng, 4.0f);
    auto u = random_vector(n, rng);
    std::vector<float> out(n);
    kiln::kernels::silu_mul(g, u, out);
    for (size_t i = 0; i < n; ++i) {
      const double s = double(g[i]) / (1.0 + std::exp(-double(g[i])));
      EXPECT_NEAR(out[i], s * u[i], 1e-5 * (1 + std::fabs(s * u[i])));
    }
  }
}

TEST(Ops, AddDotAxpy) {
  std::mt19937 rng(5);
  for (size_t n : kLengths) {
    auto a = random_vector(n, rng);
    auto b = random_vector(n, rng);
    double ref = 0;
    for (size_t i = 0; i < n; ++i) ref += double(a[i]) * b[i];
    EXPECT_NEAR(dot(a, b), ref, 1e-4 * std::sqrt(double(n)));

    std::vector<float> y = b;
    axpy(0.5f, a, y);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], b[i] + 0.5 * a[i], 1e-6);

    y = b;
    kiln::kernels::add(y, a);
    for (size_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], b[i] + a[i]);
  }
}

TEST(Ops, HalfConversionsMatchDefinition) {
  // Every finite half round-trips through float exactly.
  std::vector<uint16_t> all;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if (((h >> 10) & 0x1f) != 31) all.push_back(static_cast<uint16_t>(h));
  }
  std::vector<float> f(all.size());
  kiln::kernels::f16_to_f32_row(all, f);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(double(f[i]), half_value(all[i])) << all[i];
  std::vector<uint16_t> back(all.size());
  kiln::kernels::f32_to_f16_row(f, back);
  for (size_t i = 0; i < all.size(); ++i) {
    // -0 and +0 are both fine, everything else must be bit exact.
    if (half_value(all[i]) != 0) {
      ASSERT_EQ(back[i], all[i]);
    }
  }
  // Rounding of a float between two halves goes to the nearest one.
  std::mt19937 rng(6);
  auto x = random_vector(1000, rng, 10.0f);
  std::vector<uint16_t> h(x.size());
  kiln::kernels::f32_to_f16_row(x, h);
  for (size_t i = 0; i < x.size(); ++i) {
    const double err = std::fabs(half_value(h[i]) - x[i]);
    EXPECT_LE(err, std::ldexp(std::fabs(x[i]), -11) + 1e-7) << x[i];
  }
}

TEST(Ops, HalfDotAndAxpy) {
  std::mt19937 rng(7);
  for (size_t n : kLengths) {
    auto a = random_vector(n, rng);
    auto bf = random_vector(n, rng);
    std::vector<uint16_t> b(n);
    kiln::kernels::f32_to_f16_row(bf, b);
    double ref = 0;
    for (size_t i = 0; i < n; ++i) ref += double(a[i]) * half_value(b[i]);
    EXPECT_NEAR(kiln::kernels::dot_f16(a, b), ref, 1e-4 * std::sqrt(double(n)));
    std::vector<float> y(n, 1.0f);
    kiln::kernels::axpy_f16(-2.0f, b, y);
    for (size_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], 1.0 - 2.0 * half_value(b[i]), 1e-5);
  }
}

// The attention kernels against float64 over the rows they read: head sizes with and
// without a 64-wide chunk or an 8-wide tail, position counts around the 4-wide groups, and
// rows strided inside a wider cache row whose other heads must not be read or written.
TEST(Ops, AttentionScoresAndValuesF16) {
  std::mt19937 rng(9);
  for (size_t hd : {8, 24, 64, 72, 128, 130}) {
    for (size_t n_pos : {1, 3, 4, 5, 17, 100}) {
      const size_t stride = hd * 3 + 8;  // other heads and padding between positions
      const size_t offset = hd + 4;      // this head's place in the row
      std::vector<uint16_t> k(n_pos * stride), v(n_pos * stride);
      const auto kf = random_vector(k.size(), rng), vf = random_vector(v.size(), rng);
      kiln::kernels::f32_to_f16_row(kf, k);
      kiln::kernels::f32_to_f16_row(vf, v);
      const auto q = random_vector(hd, rng);
      const float scale = 0.125f;
      std::vector<float> scores(n_pos + 1, -99.0f);
      kiln::kernels::attention_scores_f16(q, k.data() + offset, stride, scale,
                                          std::span(scores).first(n_pos));
      EXPECT_EQ(scores[n_pos], -99.0f) << "wrote past the scores";
      for (size_t p = 0; p < n_pos; ++p) {
        double ref = 0;
        for (size_t i = 0; i < hd; ++i)
          ref += double(q[i]) * half_value(k[p * stride + offset + i]);
        ASSERT_NEAR(scores[p], scale * ref, 1e-4 * std::sqrt(double(hd))) << hd << " " << p;
      }
      const auto weights = random_vector(n_pos, rng);
      std::vector<float> out(hd + 1, -99.0f);
      kiln::kernels::attention_values_f16(weights, v.data() + offset, stride,
                                          std::span(out).first(hd));
      EXPECT_EQ(out[hd], -99.0f) << "wrote past out";
      for (size_t i = 0; i < hd; ++i) {
        double ref = 0;
        for (size_t p = 0; p < n_pos; ++p)
          ref += double(weights[p]) * half_value(v[p * stride + offset + i]);
        ASSERT_NEAR(out[i], ref, 1e-4 * std::sqrt(double(n_pos))) << hd << " " << i;
      }
    }
  }
}

// The GQA-group kernels: every head of the run against float64, on the AVX-512 path and
// the per-head fallback (KILN_ISA-style limit), with guard cells around every output.
TEST(Ops, AttentionGroupF16MatchesEachHead) {
  using kiln::kernels::Isa;
  std::mt19937 rng(10);
  const Isa saved = kiln::kernels::isa_limit();
  for (Isa isa : {Isa::Avx512, Isa::Avx2}) {
    kiln::kernels::set_isa_limit(isa);
    for (size_t hd : {24, 64, 128}) {
      for (size_t n_heads : {1, 3, 4, 5, 8}) {
        for (size_t n_pos : {1, 15, 16, 17, 40}) {
          const size_t stride = hd * 2 + 8;  // another KV head and padding between positions
          const size_t offset = hd + 4;
          std::vector<uint16_t> k(n_pos * stride), v(n_pos * stride);
          const auto kf = random_vector(k.size(), rng), vf = random_vector(v.size(), rng);
          kiln::kernels::f32_to_f16_row(kf, k);
          kiln::kernels::f32_to_f16_row(vf, v);
          const auto q = random_vector(n_heads * hd, rng);
          const size_t row = n_pos + 3;  // scores/weights stride, 3 guard cells per head
          std::vector<float> scores(n_heads * row, -99.0f);
          kiln::kernels::attention_scores_f16_group(q, n_heads, k.data() + offset, stride, n_pos,
                                                    0.125f, scores.data(), row);
          const auto weights = random_vector(n_heads * row, rng);
          std::vector<float> out(n_heads * hd + 1, -99.0f);
          kiln::kernels::attention_values_f16_group(weights.data(), row, n_heads, n_pos,
                                                    v.data() + offset, stride,
                                                    std::span(out).first(n_heads * hd));
          EXPECT_EQ(out.back(), -99.0f) << "wrote past out";
          for (size_t h = 0; h < n_heads; ++h) {
            for (size_t p = 0; p < n_pos; ++p) {
              double ref = 0;
              for (size_t i = 0; i < hd; ++i)
                ref += double(q[h * hd + i]) * half_value(k[p * stride + offset + i]);
              ASSERT_NEAR(scores[h * row + p], 0.125 * ref, 1e-4 * std::sqrt(double(hd)))
                  << hd << " " << n_heads << " " << n_pos << " head " << h << " pos " << p;
            }
            for (size_t p = n_pos; p < row; ++p) ASSERT_EQ(scores[h * row + p], -99.0f);
            for (size_t i = 0; i < hd; ++i) {
              double ref = 0;
              for (size_t p = 0; p < n_pos; ++p)
                ref += double(weights[h * row + p]) * half_value(v[p * stride + offset + i]);
              ASSERT_NEAR(out[h * hd + i], ref, 1e-4 * std::sqrt(double(n_pos)))
                  << hd << " " << n_heads << " " << n_pos << " head " << h << " dim " << i;
            }
          }
        }
      }
    }
  }
  kiln::kernels::set_isa_limit(saved);
}

TEST(Ops, Q8_0QuantizeDotAxpy) {
  std::mt19937 rng(8);
  const size_t n = 128;
  auto x = random_vector(n, rng, 2.0f);
  std::vector<std::byte> blocks(n / 32 * 34);
  kiln::kernels::quantize_q8_0(x, blocks);
  // Decode from the layout definition: fp16 scale then 32 int8 per block.
  std::vector<double> dq(n);
  for (size_t b = 0; b < n / 32; ++b) {
    uint16_t d;
    std::memcpy(&d, &blocks[b * 34], 2);
    for (size_t j = 0; j < 32; ++j) {
      dq[b * 32 + j] = half_value(d) * static_cast<int8_t>(blocks[b * 34 + 2 + j]);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    double amax = 0;
    for (size_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j)
      amax = std::max(amax, double(std::fabs(x[j])));
    EXPECT_NEAR(dq[i], x[i], amax / 127 * 0.51 + 1e-3) << i;
  }
  auto a = random_vector(n, rng);
  double ref = 0;
  for (size_t i = 0; i < n; ++i) ref += a[i] * dq[i];
  EXPECT_NEAR(kiln::kernels::dot_q8_0(a, blocks), ref, 1e-3);
  std::vector<float> y(n, 0.5f);
  kiln::kernels::axpy_q8_0(3.0f, blocks, y);
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], 0.5 + 3.0 * dq[i], 1e-4);
}

// RoPE as complex rotation: pair k of a head is multiplied by e^{i theta_k}.
TEST(Ops, RopeNormalAndNeoxRotatePairs) {
  std::mt19937 rng(9);
  const size_t n_heads = 3, head_dim = 16;
  for (size_t rope_dim : {size_t(16), size_t(8)}) {
    for (bool with_factors : {false, true}) {
      for (int64_t pos : {int64_t(0), int64_t(1), int64_t(37), int64_t(4000)}) {
        std::vector<float> factors;
        if (with_factors) {
          for (size_t i = 0; i < rope_dim / 2; ++i) factors.push_back(1.0f + float(i));
        }
        std::vector<float> cos(rope_dim / 2), sin(rope_dim / 2);
        kiln::kernels::rope_angles(pos, rope_dim, 10000.0f, factors, cos, sin);
        auto x = random_vector(n_heads * head_dim, rng);
        auto normal = x, neox = x;
        kiln::kernels::rope_normal(normal, n_heads, head_dim, rope_dim, cos, sin);
        kiln::kernels::rope_neox(neox, n_heads, head_dim, rope_dim, cos, sin);
        for (size_t h = 0; h < n_heads; ++h) {
          const float* v = &x[h * head_dim];
          for (size_t k = 0; k < rope_dim / 2; ++k) {
            double theta = double(pos) * std::pow(10000.0, -2.0 * k / double(rope_dim));
            if (with_factors) theta /= factors[k];
            const std::complex<double> rot = std::polar(1.0, theta);
            const auto a = std::complex<double>(v[2 * k], v[2 * k + 1]) * rot;
            EXPECT_NEAR(normal[h * head_dim + 2 * k], a.real(), 1e-5);
            EXPECT_NEAR(normal[h * head_dim + 2 * k + 1], a.imag(), 1e-5);
            const size_t half = rope_dim / 2;
            const auto b = std::complex<double>(v[k], v[k + half]) * rot;
            EXPECT_NEAR(neox[h * head_dim + k], b.real(), 1e-5);
            EXPECT_NEAR(neox[h * head_dim + k + half], b.imag(), 1e-5);
          }
          // Dimensions past rope_dim pass through untouched.
          for (size_t d = rope_dim; d < head_dim; ++d) {
            EXPECT_EQ(normal[h * head_dim + d], v[d]);
            EXPECT_EQ(neox[h * head_dim + d], v[d]);
          }
        }
      }
    }
  }
}

}  // namespace
