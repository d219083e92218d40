// Sampling cost per token vs one decode step of the default model.
//
// The logits row is the default model's real output after a short prompt
// (peaked the way real distributions are); without the model it falls back to
// a synthetic row of the same vocabulary size. BM_DecodeStep runs one
// single-sequence decode step of the same model, so "sampler / decode" is the
// overhead the server adds per token.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "engine/engine.h"
#include "sampler/chain.h"

namespace {

namespace fs = std::filesystem;

const fs::path kModel = fs::path(KILN_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Fixture {
  std::unique_ptr<kiln::Model> model;
  std::unique_ptr<kiln::Engine> engine;
  std::vector<float> logits;
  size_t prompt_len = 0;
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    if (fs::exists(kModel)) {
      f.model = std::make_unique<kiln::Model>(kiln::Model::load(kModel));
      kiln::EngineOptions o;
      o.n_ctx = 512;
      o.max_batch = 64;
      f.engine = std::make_unique<kiln::Engine>(*f.model, o);
      // Any short prompt of ordinary tokens gives a realistically peaked row.
      std::vector<int32_t> prompt;
      for (int i = 0; i < 32; ++i) prompt.push_back(1000 + 37 * i);
      auto row = f.engine->eval(0, prompt, false);
      f.logits.assign(row.begin(), row.end());
      f.prompt_len = prompt.size();
    } else {
      std::mt19937 rng(1);
      std::normal_distribution<float> d(0.0f, 2.5f);
      f.logits.resize(49152);
      for (auto& l : f.logits) l = d(rng);
    }
    return f;
  }();
  return f;
}

void run_sampler(benchmark::State& state, const kiln::SamplingConfig& cfg, int history) {
  const auto& logits = fixture().logits;
  kiln::SequenceSampler sampler(cfg, logits.size());
  for (int i = 0; i < history; ++i) sampler.accept(100 + 7 * i);
  kiln::Rng rng(7);
  for (auto _ : state) benchmark::DoNotOptimize(sampler.sample(logits, rng.uniform()));
  state.counters["vocab"] = double(logits.size());
}

void BM_Greedy(benchmark::State& state) {
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.0f;
  run_sampler(state, cfg, 0);
}

// Greedy with the end-of-turn tokens banned by logit_bias (what bench/server_load.py asks),
// and with penalties over 32 generated tokens: sparse, without a copy of the row.
void BM_GreedyBiased(benchmark::State& state) {
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.0f;
  for (int32_t t : {0, 1, 2}) cfg.logit_bias.push_back({t, -100.0f});
  run_sampler(state, cfg, 0);
}
void BM_GreedyPenalised(benchmark::State& state) {
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.0f;
  cfg.frequency_penalty = 0.5f;
  run_sampler(state, cfg, 32);
}

// OpenAI's defaults: temperature 1, no truncation (softmax draw over all).
void BM_DefaultTemperature(benchmark::State& state) { run_sampler(state, {}, 0); }

void BM_TopP(benchmark::State& state) {
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.7f;
  cfg.top_p = 0.9f;
  run_sampler(state, cfg, 0);
}

// Everything on: bias, penalties over 256 generated tokens, top-k/p, min-p.
void BM_FullChain(benchmark::State& state) {
  kiln::SamplingConfig cfg;
  cfg.temperature = 0.8f;
  cfg.top_k = 40;
  cfg.top_p = 0.95f;
  cfg.min_p = 0.05f;
  cfg.presence_penalty = 0.5f;
  cfg.frequency_penalty = 0.5f;
  cfg.repetition_penalty = 1.1f;
  for (int i = 0; i < 16; ++i) cfg.logit_bias.push_back({100 * i, -5.0f});
  run_sampler(state, cfg, 256);
}

// logprobs with 20 alternatives (what a logprobs request adds per token).
void BM_TopLogprobs(benchmark::State& state) {
  const auto& logits = fixture().logits;
  std::vector<kiln::TokenLogprob> out;
  for (auto _ : state) {
    const float lse = kiln::log_sum_exp(logits);
    kiln::top_logprobs(logits, 20, lse, out);
    benchmark::DoNotOptimize(out.data());
  }
}

void BM_DecodeStep(benchmark::State& state) {
  Fixture& f = fixture();
  if (!f.engine) {
    state.SkipWithError("default model missing: no decode step to compare with");
    return;
  }
  kiln::Batch batch;
  for (auto _ : state) {
    f.engine->truncate(0, f.prompt_len);
    batch.clear();
    batch.add(0, int32_t(f.prompt_len), 1234, true);
    benchmark::DoNotOptimize(f.engine->forward(batch).data());
  }
}

BENCHMARK(BM_Greedy)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GreedyBiased)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GreedyPenalised)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DefaultTemperature)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TopP)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FullChain)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_TopLogprobs)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeStep)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
