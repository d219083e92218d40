#include "sampler/chain.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <xsimd/xsimd.hpp>

namespace kiln {

namespace {

// Larger logit first; among equal logits the lower id, so results never depend
// on how a partial sort happened to order ties.
bool more_likely(const TokenCandidate& a, const TokenCandidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// out[i] = exp(x[i] - shift) (out may be x, or null to only sum); returns
// the sum. Vectorised: a full-vocabulary softmax is most of a draw's cost.
double exp_shifted(const float* x, float* out, size_t n, float shift) {
  // AVX2 explicitly: the project's baseline, and GCC 12's AVX-512 headers
  // warn (falsely) under -march=native on AVX-512 machines.
  using Batch = xsimd::batch<float, xsimd::avx2>;
  constexpr size_t kWidth = Batch::size;
  const Batch vshift(shift);
  Batch acc(0.0f);
  size_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const Batch e = xsimd::exp(Batch::load_unaligned(x + i) - vshift);
    if (out) e.store_unaligned(out + i);
    acc += e;
  }
  double sum = xsimd::hadd(acc);
  for (; i < n; ++i) {
    const float e = std::exp(x[i] - shift);
    if (out) out[i] = e;
    sum += e;
  }
  return sum;
}

void gather_logits(const std::vector<TokenCandidate>& items, std::vector<float>& out) {
  out.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) out[i] = items[i].logit;
}

void require_finite(float v, const char* field) {
  if (!std::isfinite(v)) throw std::invalid_argument(std::string(field) + " must be finite");
}

}  // namespace

void SamplingConfig::validate(size_t n_vocab) const {
  require_finite(temperature, "temperature");
  if (temperature < 0.0f) throw std::invalid_argument("temperature must be >= 0");
  require_finite(top_p, "top_p");
  if (top_p < 0.0f || top_p > 1.0f) throw std::invalid_argument("top_p must be in [0, 1]");
  require_finite(min_p, "min_p");
  if (min_p < 0.0f || min_p > 1.0f) throw std::invalid_argument("min_p must be in [0, 1]");
  require_finite(repetition_penalty, "repetition_penalty");
  if (repetition_penalty <= 0.0f) throw std::invalid_argument("repetition_penalty must be > 0");
  require_finite(presence_penalty, "presence_penalty");
  require_finite(frequency_penalty, "frequency_penalty");
  for (const LogitBias& b : logit_bias) {
    if (b.token < 0 || static_cast<size_t>(b.token) >= n_vocab) {
      throw std::invalid_argument("logit_bias token id " + std::to_string(b.token) +
                                  " is out of range: the vocabulary has " +
                                  std::to_string(n_vocab) + " tokens");
    }
    require_finite(b.bias, "logit_bias value");
  }
}

void TokenCounts::add(int32_t token) {
  int32_t& c = counts_.at(static_cast<size_t>(token));
  if (c == 0) seen_.push_back(token);
  ++c;
}

void TokenCounts::clear() {
  for (int32_t t : seen_) counts_[static_cast<size_t>(t)] = 0;
  seen_.clear();
}

void apply_logit_bias(std::span<float> logits, std::span<const LogitBias> bias) {
  for (const LogitBias& b : bias) logits[static_cast<size_t>(b.token)] += b.bias;
}

namespace {
// sparse_greedy's limit: past a few dozen touched tokens its bookkeeping costs what copying
// the row does.
constexpr size_t kSparseGreedyMaxTouched = 64;

// One generated token's logit after the penalties (count > 0).
float apply_penalty(float l, int32_t count, float repetition, float frequency, float presence) {
  if (repetition != 1.0f) l = l > 0.0f ? l / repetition : l * repetition;
  return l - (frequency * static_cast<float>(count) + presence);
}
}  // namespace

void apply_penalties(std::span<float> logits, const TokenCounts& counts, float repetition,
                     float frequency, float presence) {
  for (int32_t t : counts.seen()) {
    float& l = logits[static_cast<size_t>(t)];
    l = apply_penalty(l, counts.count(t), repetition, frequency, presence);
  }
}

void apply_temperature(std::span<float> logits, float temperature) {
  const float inv = 1.0f / temperature;
  for (float& l : logits) l *= inv;
}

void apply_top_k(Candidates& candidates, size_t k) {
  auto& items = candidates.items;
  if (k == 0) return;
  if (k <= 256 && k < items.size()) {
    // A bounded selection: one comparison per candidate against the current
    // k-th best, insertion into a small sorted array for the few that beat it.
    thread_local std::vector<TokenCandidate> best;
    best.clear();
    for (const auto& c : items) {
      if (best.size() == k && !more_likely(c, best.back())) continue;
      if (best.size() == k) best.pop_back();
      best.insert(std::upper_bound(best.begin(), best.end(), c, more_likely), c);
    }
    items.assign(best.begin(), best.end());
    return;
  }
  if (k < items.size()) {
    std::nth_element(items.begin(), items.begin() + static_cast<ptrdiff_t>(k), items.end(),
                     more_likely);
    items.resize(k);
  }
  std::sort(items.begin(), items.end(), more_likely);
}

void apply_top_p(Candidates& candidates, float p) {
  auto& items = candidates.items;
  const size_t n = items.size();
  if (p >= 1.0f || n <= 1) return;
  float max = -INFINITY;
  for (const auto& c : items) max = std::max(max, c.logit);
  thread_local std::vector<float> scratch;  // sized once per thread, then reused
  gather_logits(items, scratch);
  const double sum = exp_shifted(scratch.data(), scratch.data(), n, max);
  const double target = static_cast<double>(p) * sum;
  // Cheap cut first: if the tokens at least 1/1000 as likely as the best
  // already hold p of the mass, the nucleus is among them (it is a prefix of
  // the likelihood order), so the rest can go before any sorting.
  constexpr float kCut = 1e-3f;
  double mass_above_cut = 0.0;
  for (float e : scratch) mass_above_cut += e >= kCut ? e : 0.0f;
  if (mass_above_cut >= target) {
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      if (scratch[i] >= kCut) items[kept++] = items[i];
    }
    items.resize(kept);
  }
  const size_t m = items.size();
  // Sort a prefix, growing it 8x at a time: the mass is usually in a few
  // dozen tokens, so this is a small sort, not a vocabulary-wide one.
  size_t sorted = 0, chunk = 64;
  double acc = 0.0;
  while (sorted < m) {
    const size_t end = std::min(m, sorted + chunk);
    const auto first = items.begin() + static_cast<ptrdiff_t>(sorted);
    const auto last = items.begin() + static_cast<ptrdiff_t>(end);
    if (end < m) std::nth_element(first, last, items.end(), more_likely);
    std::sort(first, last, more_likely);
    for (size_t i = sorted; i < end; ++i) {
      acc += std::exp(static_cast<double>(items[i].logit - max));
      if (acc >= target) {
        items.resize(i + 1);
        return;
      }
    }
    sorted = end;
    chunk *= 8;
  }
}

void apply_min_p(Candidates& candidates, float p) {
  auto& items = candidates.items;
  if (p <= 0.0f || items.empty()) return;
  float max = -INFINITY;
  for (const auto& c : items) max = std::max(max, c.logit);
  // prob_i >= p * prob_max  <=>  logit_i >= max + log(p)
  const float threshold = max + std::log(p);
  std::erase_if(items, [&](const TokenCandidate& c) { return c.logit < threshold; });
}

int32_t draw_from(const Candidates& candidates, float uniform_draw, std::vector<float>& scratch) {
  const auto& items = candidates.items;
  if (items.empty()) throw std::runtime_error("the sampling chain removed every candidate");
  float max = -INFINITY;
  for (const auto& c : items) max = std::max(max, c.logit);
  if (!std::isfinite(max)) return items.front().id;  // every logit -inf: nothing to weigh
  gather_logits(items, scratch);
  exp_shifted(scratch.data(), scratch.data(), scratch.size(), max);
  // The sum the walk below is compared with must be the same sequential one.
  double sum = 0.0;
  for (float e : scratch) sum += e;
  const double target = static_cast<double>(uniform_draw) * sum;
  double acc = 0.0;
  for (size_t i = 0; i < items.size(); ++i) {
    acc += scratch[i];
    if (target < acc) return items[i].id;
  }
  // Rounding can leave target == sum: the last candidate with any mass.
  for (size_t i = items.size(); i-- > 0;) {
    if (scratch[i] > 0.0f) return items[i].id;
  }
  return items.back().id;
}

float log_sum_exp(std::span<const float> logits) {
  float max = -INFINITY;
  for (float l : logits) max = std::max(max, l);
  if (!std::isfinite(max)) return max;
  const double sum = exp_shifted(logits.data(), nullptr, logits.size(), max);
  return max + static_cast<float>(std::log(sum));
}

void top_logprobs(std::span<const float> logits, size_t n, float lse,
                  std::vector<TokenLogprob>& out) {
  out.clear();
  n = std::min(n, logits.size());
  if (n == 0) return;
  // A bounded selection: keep the n best seen so far in a small sorted array.
  const auto better = [](const TokenLogprob& a, const TokenLogprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
  };
  for (size_t i = 0; i < logits.size(); ++i) {
    const TokenLogprob c{static_cast<int32_t>(i), logits[i]};
    if (out.size() == n && !better(c, out.back())) continue;
    if (out.size() == n) out.pop_back();
    out.insert(std::upper_bound(out.begin(), out.end(), c, better), c);
  }
  for (auto& t : out) t.logprob -= lse;
}

SequenceSampler::SequenceSampler(SamplingConfig config, size_t n_vocab)
    : config_(std::move(config)), counts_(n_vocab) {
  config_.validate(n_vocab);
  needs_work_row_ = !config_.logit_bias.empty() || config_.repetition_penalty != 1.0f ||
                    config_.presence_penalty != 0.0f || config_.frequency_penalty != 0.0f;
  work_.reserve(n_vocab);
  candidates_.items.reserve(n_vocab);
  touched_.reserve(kSparseGreedyMaxTouched);
}

// Greedy over a row that bias and penalties change in a few places, without copying it: the
// raw row's argmax i0 stands for every untouched token (it is the first index of the largest
// raw value, so also of the largest untouched one) unless i0 itself is touched; the touched
// tokens' changed values, computed as the dense path computes them, are then compared with
// it, ties going to the lower id as argmax's. Empty when i0 is touched or not a number (the
// caller then takes the dense path): whenever it answers, argmax of the changed row agrees.
std::optional<int32_t> SequenceSampler::sparse_greedy(std::span<const float> logits) {
  if (config_.logit_bias.size() + counts_.seen().size() > kSparseGreedyMaxTouched) {
    return std::nullopt;
  }
  const int32_t raw = argmax(logits);
  const float raw_value = logits[static_cast<size_t>(raw)];
  if (std::isnan(raw_value)) return std::nullopt;
  touched_.clear();
  for (const LogitBias& b : config_.logit_bias) touched_.push_back(b.token);
  for (int32_t t : counts_.seen()) touched_.push_back(t);
  std::sort(touched_.begin(), touched_.end());
  touched_.erase(std::unique(touched_.begin(), touched_.end()), touched_.end());
  if (std::binary_search(touched_.begin(), touched_.end(), raw)) return std::nullopt;
  int32_t best = raw;
  float best_value = raw_value;
  for (int32_t t : touched_) {
    float v = logits[static_cast<size_t>(t)];
    for (const LogitBias& b : config_.logit_bias) {
      if (b.token == t) v += b.bias;
    }
    if (counts_.count(t) > 0) {
      v = apply_penalty(v, counts_.count(t), config_.repetition_penalty, config_.frequency_penalty,
                        config_.presence_penalty);
    }
    if (v > best_value || (v == best_value && t < best)) {
      best = t;
      best_value = v;
    }
  }
  return best;
}

int32_t SequenceSampler::sample(std::span<const float> logits, float uniform_draw) {
  const bool greedy = config_.temperature == 0.0f;
  if (greedy && !needs_work_row_) return argmax(logits);
  if (greedy) {
    if (const auto token = sparse_greedy(logits)) return *token;
  }
  work_.assign(logits.begin(), logits.end());
  apply_logit_bias(work_, config_.logit_bias);
  apply_penalties(work_, counts_, config_.repetition_penalty, config_.frequency_penalty,
                  config_.presence_penalty);
  if (greedy) return argmax(work_);
  apply_temperature(work_, config_.temperature);
  candidates_.reset(work_);
  apply_top_k(candidates_, config_.top_k);
  apply_top_p(candidates_, config_.top_p);
  apply_min_p(candidates_, config_.min_p);
  return draw_from(candidates_, uniform_draw, scratch_);
}

}  // namespace kiln
