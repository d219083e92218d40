// The full sampling chain of one sequence, as the server uses it:
//
//   raw logits -> logit_bias -> repetition / frequency / presence penalties
//              -> temperature (0: greedy, argmax of the biased, penalised row)
//              -> top_k -> top_p -> min_p -> draw(uniform)
//
// Each step is a free function so tests can hold it against a plain reference.
// No step sorts the whole vocabulary: top_k selects with nth_element, top_p
// sorts only as long a prefix of the distribution as it needs (growing it
// geometrically), min_p needs no order at all.
//
// Penalties follow OpenAI's definition over the tokens generated so far
// (not the prompt):  logit[t] -= frequency * count[t] + presence * (count[t] > 0).
// The repetition penalty (an extension, CTRL-style as in llama.cpp) divides a
// positive logit of a generated token by r and multiplies a negative one by r.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "sampler/sampler.h"

namespace kiln {

struct LogitBias {
  int32_t token = 0;
  float bias = 0.0f;  // added to the raw logit; OpenAI allows [-100, 100]
};

struct SamplingConfig {
  float temperature = 1.0f;         // 0: greedy
  size_t top_k = 0;                 // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<LogitBias> logit_bias;

  // Throws std::invalid_argument naming the first field out of range.
  void validate(size_t n_vocab) const;
};

// How often each token has been generated so far in one sequence.
class TokenCounts {
 public:
  explicit TokenCounts(size_t n_vocab) : counts_(n_vocab, 0) {}
  void add(int32_t token);
  void clear();
  int32_t count(int32_t token) const { return counts_[static_cast<size_t>(token)]; }
  // The distinct tokens seen, in first-seen order (what the penalties visit).
  std::span<const int32_t> seen() const { return seen_; }

 private:
  std::vector<int32_t> counts_;
  std::vector<int32_t> seen_;
};

// logits[b.token] += b.bias for each entry (out-of-range ids are the caller's
// error: SamplingConfig::validate rejects them).
void apply_logit_bias(std::span<float> logits, std::span<const LogitBias> bias);

// The penalties above, touching only the tokens in `counts.seen()`.
void apply_penalties(std::span<float> logits, const TokenCounts& counts, float repetition,
                     float frequency, float presence);

// logits *= 1 / temperature (temperature > 0).
void apply_temperature(std::span<float> logits, float temperature);

// Keeps the k largest candidates, sorted by logit, largest first (k >= size:
// all of them, sorted). Ties keep the lower id first.
void apply_top_k(Candidates& candidates, size_t k);

// Keeps the smallest set of most likely candidates whose softmax mass reaches
// p (at least one), sorted largest first. p >= 1 keeps everything unchanged.
void apply_top_p(Candidates& candidates, float p);

// Drops candidates whose probability is below p times the largest one's
// (p <= 0: unchanged). Order is kept.
void apply_min_p(Candidates& candidates, float p);

// Inverse CDF of the softmax of the candidates at `uniform_draw` in [0, 1).
int32_t draw_from(const Candidates& candidates, float uniform_draw, std::vector<float>& scratch);

// log(sum(exp(logits))), computed stably.
float log_sum_exp(std::span<const float> logits);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// The n most likely tokens under log-softmax(logits) (n clamped to the
// vocabulary), most likely first; lse = log_sum_exp(logits).
void top_logprobs(std::span<const float> logits, size_t n, float lse,
                  std::vector<TokenLogprob>& out);

// One sequence's sampler: owns the configuration, the penalty counts and
// scratch sized to the vocabulary, so sampling does not allocate per token.
class SequenceSampler {
 public:
  SequenceSampler(SamplingConfig config, size_t n_vocab);

  // Chooses the next token from one row of raw logits. uniform_draw in [0, 1)
  // is used only when the temperature is above zero.
  int32_t sample(std::span<const float> logits, float uniform_draw);
  // Records a generated token (for the penalties).
  void accept(int32_t token) { counts_.add(token); }
  void reset() { counts_.clear(); }

  const SamplingConfig& config() const { return config_; }

 private:
  std::optional<int32_t> sparse_greedy(std::span<const float> logits);

  SamplingConfig config_;
  bool needs_work_row_;  // bias or penalties modify the logits
  TokenCounts counts_;
  std::vector<float> work_;
  Candidates candidates_;
  std::vector<float> scratch_;
  std::vector<int32_t> touched_;  // tokens bias or penalties change (sparse_greedy)
};

}  // namespace kiln
