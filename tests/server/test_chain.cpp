// The sampling chain's steps against plain references: full sorts, float64
// softmax, explicit penalty formulas. Nothing here uses the chain's own
// partial-selection code as its oracle.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "sampler/chain.h"

namespace {

using kiln::Candidates;
using kiln::TokenCandidate;

std::vector<float> random_logits(size_t n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Reference order: a full sort by (logit desc, id asc).
std::vector<int32_t> sorted_ids(const std::vector<float>& logits) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  return ids;
}

std::vector<double> softmax(const std::vector<float>& logits) {
  double m = -INFINITY;
  for (float l : logits) m = std::max(m, double(l));
  std::vector<double> p(logits.size());
  double s = 0;
  for (size_t i = 0; i < p.size(); ++i) s += p[i] = std::exp(double(logits[i]) - m);
  for (auto& x : p) x /= s;
  return p;
}

std::vector<int32_t> ids_of(const Candidates& c) {
  std::vector<int32_t> ids;
  for (const auto& t : c.items) ids.push_back(t.id);
  return ids;
}

TEST(SamplerChain, LogitBiasAddsToTheNamedTokens) {
  auto logits = random_logits(50, 1);
  const auto ref = logits;
  const std::vector<kiln::LogitBias> bias = {{3, 5.0f}, {7, -100.0f}, {3, 1.0f}};
  kiln::apply_logit_bias(logits, bias);
  for (size_t i = 0; i < logits.size(); ++i) {
    const float want = ref[i] + (i == 3 ? 6.0f : i == 7 ? -100.0f : 0.0f);
    EXPECT_FLOAT_EQ(logits[i], want) << i;
  }
}

TEST(SamplerChain, PenaltiesFollowTheOpenAiFormula) {
  auto logits = random_logits(40, 2);
  logits[5] = 2.0f;
  logits[6] = -2.0f;
  const auto ref = logits;
  const std::vector<int32_t> generated = {5, 6, 5, 9, 5, 6};
  kiln::TokenCounts counts(logits.size());
  std::map<int32_t, int> ref_counts;
  for (int32_t t : generated) {
    counts.add(t);
    ++ref_counts[t];
  }
  const float rep = 1.3f, freq = 0.5f, pres = 0.25f;
  kiln::apply_penalties(logits, counts, rep, freq, pres);
  for (size_t i = 0; i < logits.size(); ++i) {
    float want = ref[i];
    const auto it = ref_counts.find(int32_t(i));
    if (it != ref_counts.end()) {
      want = want > 0 ? want / rep : want * rep;
      want -= freq * float(it->second) + pres;
    }
    EXPECT_FLOAT_EQ(logits[i], want) << i;
  }
  counts.clear();
  EXPECT_TRUE(counts.seen().empty());
  EXPECT_EQ(counts.count(5), 0);
}

TEST(SamplerChain, TopKKeepsTheKLargestInOrder) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto logits = random_logits(1000, seed);
    const auto ref = sorted_ids(logits);
    for (size_t k : {size_t(1), size_t(5), size_t(40), size_t(999), size_t(1000), size_t(5000)}) {
      Candidates c;
      c.reset(logits);
      kiln::apply_top_k(c, k);
      const std::vector<int32_t> want(ref.begin(), ref.begin() + std::min(k, ref.size()));
      EXPECT_EQ(ids_of(c), want) << "seed " << seed << " k " << k;
    }
  }
}

TEST(SamplerChain, TopKBreaksTiesByLowerId) {
  const std::vector<float> logits = {1, 3, 3, 0, 3};
  Candidates c;
  c.reset(logits);
  kiln::apply_top_k(c, 2);
  EXPECT_EQ(ids_of(c), (std::vector<int32_t>{1, 2}));
}

TEST(SamplerChain, TopPKeepsTheSmallestPrefixReachingP) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    // Scales from peaked to flat, so the cut lands inside and beyond the
    // first 64-candidate chunk.
    const auto logits = random_logits(3000, seed, seed % 2 ? 4.0f : 0.5f);
    const auto ref = sorted_ids(logits);
    const auto p = softmax(logits);
    for (float top_p : {0.0f, 0.1f, 0.5f, 0.9f, 0.99f}) {
      std::vector<int32_t> want;
      double acc = 0;
      for (int32_t id : ref) {
        want.push_back(id);
        acc += p[size_t(id)];
        if (acc >= top_p) break;
      }
      Candidates c;
      c.reset(logits);
      kiln::apply_top_p(c, top_p);
      // The float64 reference and the chain may round the last step
      // differently; allow the cut to differ by one candidate at the edge.
      const auto got = ids_of(c);
      ASSERT_NEAR(double(got.size()), double(want.size()), 1.0)
          << "seed " << seed << " p " << top_p;
      const size_t common = std::min(got.size(), want.size());
      EXPECT_TRUE(std::equal(got.begin(), got.begin() + common, want.begin()))
          << "seed " << seed << " p " << top_p;
    }
  }
}

TEST(SamplerChain, TopPOfOneKeepsEverything) {
  const auto logits = random_logits(100, 3);
  Candidates c;
  c.reset(logits);
  kiln::apply_top_p(c, 1.0f);
  EXPECT_EQ(c.items.size(), 100u);
}

TEST(SamplerChain, MinPDropsTokensBelowAFractionOfTheBest) {
  for (uint32_t seed = 0; seed < 10; ++seed) {
    const auto logits = random_logits(500, seed);
    const auto p = softmax(logits);
    const double pmax = *std::max_element(p.begin(), p.end());
    for (float min_p : {0.0f, 0.01f, 0.1f, 0.5f, 1.0f}) {
      std::vector<int32_t> want;
      for (size_t i = 0; i < p.size(); ++i) {
        if (min_p <= 0 || p[i] >= min_p * pmax * (1 - 1e-6)) want.push_back(int32_t(i));
      }
      Candidates c;
      c.reset(logits);
      kiln::apply_min_p(c, min_p);
      EXPECT_EQ(ids_of(c), want) << "seed " << seed << " min_p " << min_p;
    }
  }
}

TEST(SamplerChain, DrawInvertsTheCdf) {
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  // Probabilities 0.1, 0.2, 0.3, 0.4: CDF edges 0.1, 0.3, 0.6, 1.0.
  Candidates c;
  c.reset(logits);
  std::vector<float> scratch;
  const std::vector<std::pair<float, int32_t>> cases = {{0.0f, 0},  {0.05f, 0}, {0.15f, 1},
                                                        {0.29f, 1}, {0.31f, 2}, {0.59f, 2},
                                                        {0.61f, 3}, {0.999f, 3}};
  for (auto [u, want] : cases) EXPECT_EQ(kiln::draw_from(c, u, scratch), want) << u;
}

TEST(SamplerChain, DrawsMatchTheSoftmaxStatistically) {
  const std::vector<float> logits = {1.0f, 0.0f, -1.0f, 2.0f, 0.5f};
  const auto p = softmax(logits);
  kiln::SamplingConfig cfg;
  cfg.temperature = 1.0f;
  kiln::SequenceSampler sampler(cfg, logits.size());
  kiln::Rng rng(42);
  std::vector<int> hist(logits.size());
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++hist[size_t(sampler.sample(logits, rng.uniform()))];
  for (size_t i = 0; i < p.size(); ++i) {
    // 5 standard deviations of a binomial count.
    const double sd = std::sqrt(n * p[i] * (1 - p[i]));
    EXPECT_NEAR(hist[i], n * p[i], 5 * sd) << i;
  }
}

TEST(SamplerChain, TemperatureZeroIsArgmaxAfterBiasAndPenalties) {
  auto logits = random_logits(200, 9);
  const int32_t best = kiln::argmax(logits);
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.0f;
  {
    kiln::SequenceSampler s(cfg, logits.size());
    EXPECT_EQ(s.sample(logits, 0.3f), best);
    EXPECT_EQ(s.sample(logits, 0.9f), best);  // the draw does not matter
  }
  cfg.logit_bias = {{best, -100.0f}};
  {
    kiln::SequenceSampler s(cfg, logits.size());
    auto ref = logits;
    ref[size_t(best)] -= 100.0f;
    EXPECT_EQ(s.sample(logits, 0.5f), kiln::argmax(ref));
  }
  cfg.logit_bias.clear();
  cfg.presence_penalty = 2.0f;
  cfg.frequency_penalty = 2.0f;
  {
    kiln::SequenceSampler s(cfg, logits.size());
    s.accept(best);
    auto ref = logits;
    ref[size_t(best)] -= 4.0f;
    EXPECT_EQ(s.sample(logits, 0.5f), kiln::argmax(ref));
  }
}

// Greedy with bias or penalties answers without copying the row when it can (sparse_greedy);
// it must pick what argmax of the changed row picks, ties, NaN and -inf included.
TEST(SamplerChain, GreedyWithBiasAndPenaltiesMatchesTheDenseRow) {
  std::mt19937 rng(77);
  const float kSpecial[] = {NAN, -INFINITY, INFINITY, 0.0f, 3.0f};
  for (int trial = 0; trial < 3000; ++trial) {
    const size_t n = 1 + rng() % 300;
    auto logits = random_logits(n, static_cast<unsigned>(trial));
    // Ties, specials and a few coarse values so bias and penalties land on equal values.
    for (size_t i = 0; i < n; ++i) {
      if (rng() % 8 == 0) logits[i] = kSpecial[rng() % 5];
      if (rng() % 4 == 0) logits[i] = static_cast<float>(static_cast<int>(rng() % 5));
    }
    kiln::SamplingConfig cfg;
    cfg.temperature = 0.0f;
    const int n_bias = static_cast<int>(rng() % 6);
    const float kBiases[] = {-100.0f, -1.0f, 1.0f, 0.0f, 2.0f, 100.0f};
    for (int b = 0; b < n_bias; ++b) {
      // Sometimes on the raw argmax (the dense fallback), sometimes twice on one token.
      const int32_t t = rng() % 3 == 0 ? kiln::argmax(logits) : static_cast<int32_t>(rng() % n);
      cfg.logit_bias.push_back({t, kBiases[rng() % 6]});
    }
    if (rng() % 2 == 0) {
      cfg.frequency_penalty = 0.5f * static_cast<float>(rng() % 4);
      cfg.presence_penalty = 0.5f * static_cast<float>(rng() % 4) - 0.5f;
      cfg.repetition_penalty = rng() % 2 == 0 ? 1.0f : 1.3f;
    }
    kiln::SequenceSampler sampler(cfg, n);
    kiln::TokenCounts counts(n);
    const int n_seen = static_cast<int>(rng() % (trial % 10 == 0 ? 90 : 8));
    for (int k = 0; k < n_seen; ++k) {
      const auto t = static_cast<int32_t>(rng() % n);
      sampler.accept(t);
      counts.add(t);
    }
    auto dense = logits;
    kiln::apply_logit_bias(dense, cfg.logit_bias);
    kiln::apply_penalties(dense, counts, cfg.repetition_penalty, cfg.frequency_penalty,
                          cfg.presence_penalty);
    ASSERT_EQ(sampler.sample(logits, 0.5f), kiln::argmax(dense)) << "trial " << trial;
  }
}

TEST(SamplerChain, SameSeedSameTokens) {
  const auto logits = random_logits(1000, 11, 1.0f);
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.9f;
  cfg.top_k = 50;
  cfg.top_p = 0.9f;
  cfg.min_p = 0.01f;
  std::vector<int32_t> runs[2];
  for (auto& run : runs) {
    kiln::SequenceSampler s(cfg, logits.size());
    kiln::Rng rng(1234);
    for (int i = 0; i < 50; ++i) {
      run.push_back(s.sample(logits, rng.uniform()));
      s.accept(run.back());
    }
  }
  EXPECT_EQ(runs[0], runs[1]);
}

TEST(SamplerChain, FullChainMatchesAReference) {
  // Every step at once against a reference that sorts the whole vocabulary.
  for (uint32_t seed = 0; seed < 10; ++seed) {
    const auto raw = random_logits(2000, 100 + seed, 2.0f);
    kiln::SamplingConfig cfg;
    cfg.temperature = 0.7f;
    cfg.top_k = 100;
    cfg.top_p = 0.8f;
    cfg.min_p = 0.02f;
    cfg.presence_penalty = 0.5f;
    cfg.frequency_penalty = 0.3f;
    cfg.logit_bias = {{int32_t(seed), 4.0f}};
    kiln::SequenceSampler s(cfg, raw.size());
    const std::vector<int32_t> history = {int32_t(sorted_ids(raw)[0]), 17, 17};
    for (int32_t t : history) s.accept(t);

    // Reference.
    auto l = raw;
    l[seed] += 4.0f;
    std::map<int32_t, int> counts;
    for (int32_t t : history) ++counts[t];
    for (auto [t, n] : counts) l[size_t(t)] -= 0.3f * float(n) + 0.5f;
    for (auto& x : l) x *= 1.0f / 0.7f;
    auto order = sorted_ids(l);
    order.resize(100);
    std::vector<float> kept;
    for (int32_t id : order) kept.push_back(l[size_t(id)]);
    const auto pk = softmax(kept);
    size_t cut = 0;
    double acc = 0;
    while (cut < pk.size()) {
      acc += pk[cut++];
      if (acc >= 0.8) break;
    }
    order.resize(cut);
    kept.resize(cut);
    const float threshold = kept[0] + std::log(0.02f);
    std::vector<int32_t> ids;
    std::vector<float> vals;
    for (size_t i = 0; i < cut; ++i) {
      if (kept[i] >= threshold) {
        ids.push_back(order[i]);
        vals.push_back(kept[i]);
      }
    }
    const auto p = softmax(vals);
    for (float u : {0.01f, 0.3f, 0.5f, 0.77f, 0.95f}) {
      double c = 0;
      int32_t want = ids.back();
      for (size_t i = 0; i < p.size(); ++i) {
        c += p[i];
        if (u < c) {
          want = ids[i];
          break;
        }
      }
      EXPECT_EQ(s.sample(raw, u), want) << "seed " << seed << " u " << u;
    }
  }
}

TEST(SamplerChain, TopLogprobsAreTheLogSoftmaxOfTheRawLogits) {
  const auto logits = random_logits(5000, 21);
  const auto p = softmax(logits);
  const auto ref = sorted_ids(logits);
  const float lse = kiln::log_sum_exp(logits);
  std::vector<kiln::TokenLogprob> top;
  kiln::top_logprobs(logits, 20, lse, top);
  ASSERT_EQ(top.size(), 20u);
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_EQ(top[i].token, ref[i]);
    EXPECT_NEAR(top[i].logprob, std::log(p[size_t(ref[i])]), 1e-4);
  }
}

TEST(SamplerChain, ValidateNamesTheField) {
  kiln::SamplingConfig cfg;
  cfg.logit_bias = {{100, 1.0f}};
  try {
    cfg.validate(50);
    FAIL() << "no throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("logit_bias"), std::string::npos) << e.what();
  }
  cfg.logit_bias.clear();
  cfg.top_p = 1.5f;
  EXPECT_THROW(cfg.validate(50), std::invalid_argument);
}

}  // namespace
