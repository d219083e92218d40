// Sampler: greedy is argmax; a temperature draw inverts the CDF of
// softmax(logits / T) computed here in double; the RNG is deterministic.
#include <gtest/gtest.h>

#include <cmath>
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
