// Sampler: greedy is argmax; a temperature draw inverts the CDF of
// softmax(logits / T) computed here in double; the RNG is deterministic.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "sampler/sampler.h"

namespace {

TEST(Sampler, GreedyPicksTheLargestLogitFirstOnTies) {
  kiln::Sampler s({.temperature = 0.0f});
  EXPECT_TRUE(s.is_greedy());
  const std::vector<float> logits{0.5f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.sample(logits, 0.99f), 1);
  EXPECT_EQ(kiln::argmax(logits), 1);
}

// The vector argmax against a plain scan: every length around the 32-wide blocks, the
// maximum anywhere (ties: the first), NaN entries skipped, and -inf rows.
TEST(Sampler, ArgmaxMatchesAScanAtEveryPlace) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (size_t n : {1, 7, 31, 32, 33, 64, 95, 1000, 49152}) {
    std::vector<float> x(n);
    for (auto& v : x) v = normal(rng);
    for (size_t at : {size_t{0}, n / 2, n - 1}) {
      auto y = x;
      y[at] = 100.0f;
      if (at + 5 < n) y[at + 5] = 100.0f;  // a later tie loses
      EXPECT_EQ(kiln::argmax(y), static_cast<int32_t>(at)) << n << " " << at;
      y[n - 1 - at % n] = std::nanf("");
      if (n - 1 - at % n != at) {
        EXPECT_EQ(kiln::argmax(y), static_cast<int32_t>(at)) << n;
      }
    }
    std::vector<float> low(n, -INFINITY);
    EXPECT_EQ(kiln::argmax(low), 0);
    low[n / 3] = -1e30f;
    EXPECT_EQ(kiln::argmax(low), static_cast<int32_t>(n / 3));
  }
}

TEST(Sampler, TemperatureDrawInvertsTheSoftmaxCdf) {
  const std::vector<float> logits{1.0f, 2.0f, 0.0f, -1.0f, 1.5f};
  for (float temp : {0.5f, 1.0f, 2.0f}) {
    kiln::Sampler s({.temperature = temp});
    std::vector<double> p(logits.size());
    double sum = 0;
    for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] / temp);
    double cdf = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      const double lo = cdf, hi = cdf + p[i] / sum;
      cdf = hi;
      // A draw just inside each interval picks that token.
      EXPECT_EQ(s.sample(logits, static_cast<float>(lo + 0.25 * (hi - lo))), int32_t(i)) << temp;
      EXPECT_EQ(s.sample(logits, static_cast<float>(lo + 0.75 * (hi - lo))), int32_t(i)) << temp;
    }
  }
}

TEST(Sampler, FrequenciesFollowTheDistribution) {
  const std::vector<float> logits{0.0f, std::log(3.0f)};  // p = 1/4, 3/4
  kiln::Sampler s({.temperature = 1.0f});
  kiln::Rng rng(123);
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(logits, rng.uniform());
  EXPECT_NEAR(double(ones) / n, 0.75, 0.015);
}

TEST(Rng, DeterministicAndInRange) {
  kiln::Rng a(5), b(5), c(6);
  std::set<uint64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    seen.insert(x);
    const float u = c.uniform();
    EXPECT_GE(u, 0.0f);
    EXPECT_LT(u, 1.0f);
  }
  EXPECT_EQ(seen.size(), 1000u);
}

TEST(Sampler, RejectsBadTemperature) {
  EXPECT_THROW(kiln::Sampler({.temperature = -1.0f}), std::invalid_argument);
  EXPECT_THROW(kiln::Sampler({.temperature = NAN}), std::invalid_argument);
}

}  // namespace
