#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace kiln {

void Candidates::reset(std::span<const float> logits) {
  items.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) items[i] = {static_cast<int32_t>(i), logits[i]};
}

TemperatureStep::TemperatureStep(float temperature) {
  if (!(temperature > 0.0f) || !std::isfinite(temperature)) {
    throw std::invalid_argument("temperature must be a positive number, got " +
                                std::to_string(temperature));
  }
  inv_temperature_ = 1.0f / temperature;
}

void TemperatureStep::apply(Candidates& candidates) {
  for (auto& c : candidates.items) c.logit *= inv_temperature_;
}

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

float Rng::uniform() {
  // The top 24 bits give every float in [0, 1) with spacing 2^-24.
  return static_cast<float>(next() >> 40) * 0x1p-24f;
}

Sampler::Sampler(const SamplingParams& params) : greedy_(params.temperature == 0.0f) {
  if (params.temperature < 0.0f || !std::isfinite(params.temperature)) {
    throw std::invalid_argument("temperature must be >= 0, got " +
                                std::to_string(params.temperature));
  }
  if (!greedy_) steps_.push_back(std::make_unique<TemperatureStep>(params.temperature));
}

void Sampler::add_step(std::unique_ptr<SamplerStep> step) { steps_.push_back(std::move(step)); }

int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) throw std::invalid_argument("argmax of no logits");
  // Two vector passes (the largest value, then its first index) instead of
  // std::max_element's compare-and-branch per element: a 49152-entry row went from ~40 to
  // ~8 us, which counts at greedy decode of many streams (one row per stream and step).
  const size_t n = logits.size();
  const float* x = logits.data();
  size_t i = 0;
  float best = -INFINITY;
#ifdef __AVX2__
  // max(x, acc) returns acc where x is NaN, so a NaN never enters the accumulators.
  __m256 m[4];
  for (auto& v : m) v = _mm256_set1_ps(-INFINITY);
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) m[k] = _mm256_max_ps(_mm256_loadu_ps(x + i + 8 * k), m[k]);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
  for (float l : lanes) best = std::max(best, l);
#endif
  for (; i < n; ++i) best = std::max(best, x[i]);  // a NaN x[i] compares false: skipped
  // NaN entries are never the largest; a row with nothing above -inf gives its first -inf,
  // or index 0.
  for (size_t j = 0; j < n; ++j) {
    if (x[j] == best) return static_cast<int32_t>(j);
  }
  return 0;
}

int32_t Sampler::sample(std::span<const float> logits, float uniform_draw) {
  if (greedy_ && steps_.empty()) return argmax(logits);
  candidates_.reset(logits);
  for (auto& step : steps_) step->apply(candidates_);
  auto& items = candidates_.items;
  if (items.empty()) throw std::runtime_error("sampler chain removed every candidate");
  if (greedy_) {
    return std::max_element(items.begin(), items.end(),
                            [](const auto& a, const auto& b) { return a.logit < b.logit; })
        ->id;
  }
  // Softmax over the survivors, then invert the CDF at the draw.
  float max = -INFINITY;
  for (const auto& c : items) max = std::max(max, c.logit);
  probs_.resize(items.size());
  double sum = 0.0;
  for (size_t i = 0; i < items.size(); ++i) {
    probs_[i] = std::exp(items[i].logit - max);
    sum += probs_[i];
  }
  const double target = static_cast<double>(uniform_draw) * sum;
  double acc = 0.0;
  for (size_t i = 0; i < items.size(); ++i) {
    acc += probs_[i];
    if (target < acc) return items[i].id;
  }
  // Rounding can leave target == sum: the last token with any mass.
  for (size_t i = items.size(); i-- > 0;) {
    if (probs_[i] > 0.0f) return items[i].id;
  }
  return items.back().id;
}

}  // namespace kiln
