// Token sampling as a chain of steps over the candidates of one sequence.
//
// The first version has what `kiln run` needs: temperature, then greedy
// (temperature 0) or a draw from the softmax. The chain is open for the steps
// the sampler issue adds (logit bias, penalties, top-k/top-p/min-p): each step
// rewrites the candidate list; the final selection takes the random number as
// an argument, so tests are deterministic and the RNG is per request.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace kiln {

struct TokenCandidate {
  int32_t id;
  float logit;
};

// The candidates after each step: ids with (possibly modified) logits.
struct Candidates {
  std::vector<TokenCandidate> items;
  void reset(std::span<const float> logits);  // every token, logits as given
};

class SamplerStep {
 public:
  virtual ~SamplerStep() = default;
  virtual std::string_view name() const = 0;
  virtual void apply(Candidates& candidates) = 0;
};

// logit /= temperature (temperature > 0).
class TemperatureStep final : public SamplerStep {
 public:
  explicit TemperatureStep(float temperature);
  std::string_view name() const override { return "temperature"; }
  void apply(Candidates& candidates) override;

 private:
  float inv_temperature_;
};

// Deterministic random numbers (xoshiro256**, seeded through splitmix64).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  float uniform();  // in [0, 1)

 private:
  uint64_t s_[4];
};

struct SamplingParams {
  float temperature = 0.8f;  // 0: greedy
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Appends a step to the chain (before the final selection).
  void add_step(std::unique_ptr<SamplerStep> step);
  bool is_greedy() const { return greedy_; }

  // Picks a token from one row of logits. `uniform_draw` in [0, 1) chooses
  // from the final distribution (ignored when greedy).
  int32_t sample(std::span<const float> logits, float uniform_draw);

 private:
  bool greedy_;
  std::vector<std::unique_ptr<SamplerStep>> steps_;
  Candidates candidates_;
  std::vector<float> probs_;
};

// Index of the largest value (the lowest index among ties).
int32_t argmax(std::span<const float> logits);

}  // namespace kiln
