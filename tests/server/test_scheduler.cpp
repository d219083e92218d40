// The scheduler with the real engine on a tiny synthetic model (kiln synth
// --preset tiny with the GPT-2 test vocabulary). The oracle is the engine
// driven directly, one sequence at a time, with the same sampler and seed:
// continuous batching, chunked prefill and queueing must not change a
// request's tokens.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include "engine/engine.h"
#include "server/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using kiln::Engine;
using kiln::EngineOptions;
using kiln::Model;
using kiln::TokenId;
using kiln::Tokenizer;
using kiln::server::GenerationJob;
using kiln::server::Scheduler;

struct Result {
  std::string text;
  std::vector<std::string> logprob_tokens;  // the tokens that came with logprobs, in order
  std::optional<kiln::server::FinishReason> finish;
  std::string error;
  kiln::server::Usage usage;
};

Result collect(kiln::server::GenerationStream& s) {
  Result r;
  std::vector<kiln::server::GenerationEvent> events;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  bool ended = false;
  while (!ended && std::chrono::steady_clock::now() < deadline) {
    ended = s.wait(events, 200ms);
  }
  EXPECT_TRUE(ended) << "stream did not end";
  for (auto& e : events) {
    r.text += e.text;
    for (const auto& t : e.logprobs) r.logprob_tokens.push_back(t.token);
    if (e.finish) r.finish = e.finish;
    if (!e.error.empty()) r.error = e.error;
  }
  r.usage = s.usage();
  return r;
}

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    path_ = fs::temp_directory_path() / ("kiln_server_test_" + std::to_string(getpid()) + ".gguf");
    const std::string cmd = std::string(KILN_BIN) + " synth --preset tiny --vocab-from " +
                            KILN_TEST_DATA + "/vocab/ggml-vocab-gpt-2.gguf --out " +
                            path_.string() + " > /dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0 || !fs::exists(path_)) return;
    model_ = std::make_unique<Model>(Model::load(path_));
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(model_->file()));
  }
  static void TearDownTestSuite() {
    tokenizer_.reset();
    model_.reset();
    std::error_code ec;
    fs::remove(path_, ec);
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "could not make a tiny model with " << KILN_BIN << " synth";
  }

  static std::unique_ptr<Engine> make_engine(size_t n_seq, size_t max_batch) {
    EngineOptions o;
    o.n_ctx = 128;
    o.n_seq = n_seq;
    o.max_batch = max_batch;
    o.n_threads = 2;
    return std::make_unique<Engine>(*model_, o);
  }

  static std::vector<TokenId> random_prompt(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<TokenId> p(n);
    for (auto& t : p) t = TokenId(rng() % 50000);  // plain BPE tokens, no specials
    return p;
  }

  // The oracle: one sequence on its own engine, the same sampler and seed.
  static std::string reference(const GenerationJob& job) {
    auto engine = make_engine(1, 512);
    kiln::SequenceSampler sampler(job.sampling, model_->config().n_vocab);
    kiln::Rng rng(job.seed);
    kiln::StreamingDetokenizer detok(*tokenizer_);
    auto logits = engine->eval(0, job.prompt, false);
    std::string text;
    for (size_t i = 0; i < job.max_tokens; ++i) {
      const TokenId t = sampler.sample(logits, rng.uniform());
      sampler.accept(t);
      text += detok.push(t);
      if (i + 1 == job.max_tokens) break;
      kiln::Batch b;
      b.add(0, int32_t(engine->seq_length(0)), t, true);
      logits = engine->forward(b);
    }
    return text + detok.flush();
  }

  static GenerationJob job(size_t prompt_len, uint32_t seed, size_t max_tokens,
                           float temperature = 0.0f) {
    GenerationJob j;
    j.prompt = random_prompt(prompt_len, seed);
    j.sampling.temperature = temperature;
    j.seed = seed;
    j.max_tokens = max_tokens;
    j.ignore_eos = true;  // random weights: the end token may come any time
    return j;
  }

  static inline fs::path path_;
  static inline std::unique_ptr<Model> model_;
  static inline std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(SchedulerTest, ConcurrentRequestsMatchRunningAlone) {
  // 3 slots, 6 requests (so some queue), a max batch of 20 (so long prompts
  // are prefilled in chunks across steps, beside decoding sequences).
  auto engine = make_engine(3, 20);
  kiln::server::Metrics metrics;
  Scheduler scheduler(*engine, *tokenizer_, metrics);
  std::vector<GenerationJob> jobs;
  for (uint32_t i = 0; i < 6; ++i) {
    jobs.push_back(job(3 + 17 * i, 10 + i, 8 + i, i % 2 ? 0.8f : 0.0f));
    jobs.back().sampling.top_k = i % 2 ? 20 : 0;
  }
  std::vector<std::shared_ptr<kiln::server::GenerationStream>> streams;
  for (const auto& j : jobs) streams.push_back(scheduler.submit(j));
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Result r = collect(*streams[i]);
    EXPECT_EQ(r.error, "") << i;
    EXPECT_EQ(r.finish, kiln::server::FinishReason::kLength) << i;
    EXPECT_EQ(r.text, reference(jobs[i])) << "request " << i;
    EXPECT_EQ(r.usage.prompt_tokens, jobs[i].prompt.size());
    EXPECT_EQ(r.usage.completion_tokens, jobs[i].max_tokens);
  }
}

TEST_F(SchedulerTest, PrefillChunkFeedsPromptsInPiecesWithoutChangingOutputs) {
  // At most 5 prompt tokens per step: every prompt takes several steps, beside
  // sequences already decoding, and the outputs are still those of running alone.
  auto engine = make_engine(3, 64);
  kiln::server::Metrics metrics;
  kiln::server::SchedulerOptions options;
  options.prefill_chunk = 5;
  Scheduler scheduler(*engine, *tokenizer_, metrics, options);
  std::vector<GenerationJob> jobs;
  for (uint32_t i = 0; i < 5; ++i) jobs.push_back(job(4 + 13 * i, 40 + i, 6 + i));
  std::vector<std::shared_ptr<kiln::server::GenerationStream>> streams;
  for (const auto& j : jobs) streams.push_back(scheduler.submit(j));
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Result r = collect(*streams[i]);
    EXPECT_EQ(r.error, "") << i;
    EXPECT_EQ(r.text, reference(jobs[i])) << "request " << i;
    EXPECT_EQ(r.usage.completion_tokens, jobs[i].max_tokens);
  }
}

// A counter's value in the metrics text.
double metric(const kiln::server::Metrics& m, const std::string& name) {
  const std::string text = m.render();
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

TEST_F(SchedulerTest, PromptPrefixInAFreeSlotIsReused) {
  // Two slots: an unrelated request keeps the other one busy at first.
  auto engine = make_engine(2, 64);
  kiln::server::Metrics metrics;
  kiln::server::SchedulerOptions options;
  options.reuse_prompt_prefix = true;
  Scheduler scheduler(*engine, *tokenizer_, metrics, options);
  const GenerationJob first = job(30, 7, 6);
  GenerationJob other = job(25, 8, 5);
  auto other_stream = scheduler.submit(other);
  EXPECT_EQ(collect(*scheduler.submit(first)).text, reference(first));
  EXPECT_EQ(collect(*other_stream).text, reference(other));
  EXPECT_EQ(metric(metrics, "kiln_prompt_tokens_cached_total"), 0);

  // The same 30 tokens and 12 more: the 30 come from first's slot.
  GenerationJob longer = job(12, 9, 7);
  longer.prompt.insert(longer.prompt.begin(), first.prompt.begin(), first.prompt.end());
  const double processed = metric(metrics, "kiln_prompt_tokens_total");
  EXPECT_EQ(collect(*scheduler.submit(longer)).text, reference(longer));
  const double cached = metric(metrics, "kiln_prompt_tokens_cached_total");
  EXPECT_GE(cached, 30);
  EXPECT_LT(cached, double(longer.prompt.size()));
  EXPECT_EQ(metric(metrics, "kiln_prompt_tokens_total") - processed,
            double(longer.prompt.size()) - cached);

  // A prompt met again in full: all but its last token are reused, and the
  // output is still that of running alone.
  EXPECT_EQ(collect(*scheduler.submit(other)).text, reference(other));
  EXPECT_EQ(metric(metrics, "kiln_prompt_tokens_cached_total") - cached,
            double(other.prompt.size() - 1));
}

TEST_F(SchedulerTest, StopStringEndsWithoutTheStop) {
  GenerationJob j = job(10, 3, 16);
  const std::string full = reference(j);
  ASSERT_GE(full.size(), 8u);
  const std::string stop = full.substr(full.size() / 2, 3);
  j.stop = {stop};
  auto engine = make_engine(2, 64);
  kiln::server::Metrics metrics;
  Scheduler scheduler(*engine, *tokenizer_, metrics);
  const Result r = collect(*scheduler.submit(j));
  EXPECT_EQ(r.finish, kiln::server::FinishReason::kStop);
  EXPECT_EQ(r.text, full.substr(0, full.find(stop)));
}

// Logprobs cover the content and nothing of the stop string: the tokens spell the text,
// except that the last one may run into the stop string (it starts inside the content).
TEST_F(SchedulerTest, StopStringTokensHaveNoLogprobs) {
  GenerationJob j = job(10, 3, 16);
  j.logprobs = true;
  const std::string full = reference(j);
  ASSERT_GE(full.size(), 8u);
  auto engine = make_engine(2, 64);
  kiln::server::Metrics metrics;
  Scheduler scheduler(*engine, *tokenizer_, metrics);
  for (size_t at = 1; at + 2 < full.size(); at += 2) {
    j.stop = {full.substr(at, 2)};
    const Result r = collect(*scheduler.submit(j));
    const std::string content = full.substr(0, full.find(j.stop[0]));
    ASSERT_EQ(r.text, content) << "stop at " << at;
    std::string spelled;
    for (const auto& t : r.logprob_tokens) spelled += t;
    EXPECT_EQ(spelled.substr(0, content.size()), content) << "stop at " << at;
    if (!r.logprob_tokens.empty()) {
      EXPECT_LT(spelled.size() - r.logprob_tokens.back().size(),
                std::max<size_t>(content.size(), 1))
          << "stop at " << at << ": tokens past the content: '" << spelled << "' vs '" << content
          << "'";
    }
  }
}

TEST_F(SchedulerTest, ContextEndIsLength) {
  auto engine = make_engine(1, 256);
  kiln::server::Metrics metrics;
  Scheduler scheduler(*engine, *tokenizer_, metrics);
  GenerationJob j = job(engine->n_ctx() - 3, 4, 0);  // no max_tokens
  const Result r = collect(*scheduler.submit(j));
  EXPECT_EQ(r.finish, kiln::server::FinishReason::kLength);
  // Three free positions: three tokens fed back, plus the last one sampled.
  EXPECT_EQ(r.usage.completion_tokens, 4u);
}

TEST_F(SchedulerTest, PromptsThatDoNotFitAreRefused) {
  auto engine = make_engine(1, 64);
  kiln::server::Metrics metrics;
  Scheduler scheduler(*engine, *tokenizer_, metrics);
  EXPECT_THROW(scheduler.submit(job(engine->n_ctx(), 1, 4)), kiln::server::ApiError);
  EXPECT_THROW(scheduler.submit(job(0, 1, 4)), kiln::server::ApiError);
}

TEST_F(SchedulerTest, CancelFreesTheSlot) {
  auto engine = make_engine(1, 64);
  kiln::server::Metrics metrics;
  Scheduler scheduler(*engine, *tokenizer_, metrics);
  auto stream = scheduler.submit(job(5, 1, 100000));  // runs to the context end unless cancelled
  std::vector<kiln::server::GenerationEvent> events;
  while (events.empty()) stream->wait(events, 100ms);
  stream->cancel();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (metrics.gauges().active_sequences != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(metrics.gauges().active_sequences, 0u);
  EXPECT_NE(metrics.render().find("kiln_requests_cancelled_total 1"), std::string::npos);
  // The one slot is free again: a new request runs to completion.
  const GenerationJob next = job(6, 2, 4);
  const Result r = collect(*scheduler.submit(next));
  EXPECT_EQ(r.finish, kiln::server::FinishReason::kLength);
  EXPECT_EQ(r.text, reference(next));
}

TEST_F(SchedulerTest, ShutdownEndsRunningStreams) {
  auto engine = make_engine(1, 64);
  kiln::server::Metrics metrics;
  auto scheduler = std::make_unique<Scheduler>(*engine, *tokenizer_, metrics);
  auto running = scheduler->submit(job(5, 1, 100000));
  auto queued = scheduler->submit(job(5, 2, 100000));
  scheduler->shutdown();
  EXPECT_NE(collect(*running).error, "");
  EXPECT_NE(collect(*queued).error, "");
  EXPECT_THROW(scheduler->submit(job(5, 3, 4)), kiln::server::ApiError);
}

}  // namespace
