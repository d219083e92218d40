// The Scheduler owns the one thread that calls the engine.
//
// HTTP threads submit jobs (already tokenized) and get a GenerationStream to
// wait on; they never touch the engine. The engine thread loops:
//   1. admit queued jobs (FIFO) into free KV slots; drop cancelled ones. A
//      free slot still holds the KV of its last request: with
//      reuse_prompt_prefix a new prompt goes to the free slot sharing the
//      longest prefix with it, and that prefix is not computed again (system
//      prompts, multi-turn chat);
//   2. build ONE batch: one token for every decoding sequence, then prompt
//      chunks of newly admitted sequences, at most options.prefill_chunk
//      prompt tokens and the engine's max batch in all;
//   3. Engine::forward; for each logits row: sample, detokenize, check stop
//      conditions, push a text delta to the request's stream.
// Continuous batching falls out of this: sequences join and leave between
// steps. A cancelled stream (client gone) frees its slot at the next step.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "sampler/chain.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/structured.h"
#include "tokenizer/tokenizer.h"

namespace kiln::server {

struct GenerationJob {
  std::vector<TokenId> prompt;
  SamplingConfig sampling;
  uint64_t seed = 0;
  size_t max_tokens = 0;  // 0: until the context ends
  std::vector<std::string> stop;
  bool logprobs = false;
  size_t top_logprobs = 0;
  bool ignore_eos = false;
  // json_object / json_schema: tokens are masked to keep the output a valid
  // document, and it ends (finish "stop") exactly when the document is complete.
  ResponseFormat response_format;
};

struct GenerationEvent {
  std::string text;                     // new content, valid UTF-8 (may be empty)
  std::vector<TokenLogprobs> logprobs;  // tokens whose text this event completes (when asked)
  std::optional<FinishReason> finish;   // set on the last event
  std::string error;                    // set (instead of finish) when generation failed
};

// The channel between one request's HTTP thread and the engine thread.
class GenerationStream {
 public:
  // HTTP side. Waits up to `timeout` for events and moves them into `out`.
  // Returns true once the last event (finish or error) has been delivered.
  bool wait(std::vector<GenerationEvent>& out, std::chrono::milliseconds timeout);
  // The client went away: the engine thread frees the slot at its next step.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  Usage usage() const { return {prompt_tokens_.load(), completion_tokens_.load()}; }

  // Engine side.
  void push(GenerationEvent e);

 private:
  friend class Scheduler;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> events_;
  bool ended_ = false;      // the last event was pushed
  bool delivered_ = false;  // ... and handed to the HTTP side
  std::atomic<bool> cancelled_{false};
  std::atomic<size_t> prompt_tokens_{0};
  std::atomic<size_t> completion_tokens_{0};
};

// What the scheduler needs of an engine. The CPU Engine and the CudaEngine
// share this batch interface without a common base; EngineRef puts either
// behind one type (one virtual call per step is nothing next to a forward).
class BatchEngine {
 public:
  virtual ~BatchEngine() = default;
  virtual std::span<const float> forward(const Batch& batch) = 0;
  virtual std::span<const float> logits_row(size_t k) const = 0;
  virtual size_t seq_length(size_t seq) const = 0;
  virtual void clear(size_t seq) = 0;
  virtual void truncate(size_t seq, size_t pos) = 0;  // keep positions [0, pos)
  virtual size_t n_ctx() const = 0;
  virtual size_t n_seq() const = 0;
  virtual size_t max_batch() const = 0;
  virtual size_t n_vocab() const = 0;
  // Engine::run_length_threshold (0 for an engine without one).
  virtual size_t run_length_threshold() const = 0;
  // Engine::copy_prefix; false (nothing done) for an engine without it.
  virtual bool copy_prefix(size_t src, size_t dst, size_t n) = 0;
};

// A BatchEngine over an engine it does not own (Engine or CudaEngine).
template <class E>
class EngineRef final : public BatchEngine {
 public:
  explicit EngineRef(E& engine) : e_(engine) {}
  std::span<const float> forward(const Batch& batch) override { return e_.forward(batch); }
  std::span<const float> logits_row(size_t k) const override { return e_.logits_row(k); }
  size_t seq_length(size_t seq) const override { return e_.seq_length(seq); }
  void clear(size_t seq) override { e_.clear(seq); }
  void truncate(size_t seq, size_t pos) override { e_.truncate(seq, pos); }
  size_t n_ctx() const override { return e_.n_ctx(); }
  size_t n_seq() const override { return e_.n_seq(); }
  size_t max_batch() const override { return e_.max_batch(); }
  size_t n_vocab() const override { return e_.config().n_vocab; }
  size_t run_length_threshold() const override {
    if constexpr (requires(const E& e) { e.run_length_threshold(); }) {
      return e_.run_length_threshold();
    } else {
      return 0;
    }
  }
  bool copy_prefix(size_t src, size_t dst, size_t n) override {
    if constexpr (requires(E & e) { e.copy_prefix(src, dst, n); }) {
      e_.copy_prefix(src, dst, n);
      return true;
    } else {
      return false;
    }
  }

 private:
  E& e_;
};

struct SchedulerOptions {
  size_t max_queue = 1024;  // more waiting requests are refused (503)
  // The most prompt tokens one step takes (0: what the engine's batch holds).
  // A long prompt is fed in pieces of this size, so sequences already
  // generating get a token between pieces instead of stalling for the whole
  // prefill, and a client that leaves mid-prefill is noticed between them.
  size_t prefill_chunk = 0;
  // Reuse the KV of a slot whose request shares a prompt prefix (only the rest of the
  // prompt is computed): the free slot's own, or, where another slot (free or running)
  // holds more of the prefix, a copy of that one's KV rows. Exact: a prompt is always fed in the
  // pieces a cold run would use (multiples of prefill_chunk from its start), and a cached position
  // is reused only where it was computed in a run of the same kind (BatchEngine::
  // run_length_threshold) as the cold run would compute it, so a request's logits are the
  // same bit for bit with or without the cache.
  bool reuse_prompt_prefix = true;
};

class Scheduler {
 public:
  // The engine, tokenizer and metrics must outlive the scheduler. Starts the
  // engine thread.
  Scheduler(std::unique_ptr<BatchEngine> engine, const Tokenizer& tokenizer, Metrics& metrics,
            SchedulerOptions options = {});
  Scheduler(Engine& engine, const Tokenizer& tokenizer, Metrics& metrics,
            SchedulerOptions options = {})
      : Scheduler(std::make_unique<EngineRef<Engine>>(engine), tokenizer, metrics, options) {}
  ~Scheduler();  // shutdown()
  // Stops the engine thread; unfinished and queued streams get an error event
  // and later submits are refused (503). Idempotent.
  void shutdown();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a job. Throws ApiError: 400 for an empty prompt or one that leaves
  // no room in the context, 503 when the queue is full.
  std::shared_ptr<GenerationStream> submit(GenerationJob job);

  size_t n_ctx() const { return n_ctx_; }
  size_t n_slots() const { return n_slots_; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Queued {
    GenerationJob job;
    std::shared_ptr<GenerationStream> stream;
    Clock::time_point submitted;
  };
  struct Sequence;

  void loop();
  void step();
  void admit();
  void release(size_t slot, bool cancelled);
  void forget_all();  // after a failed step: no slot's cached tokens can be trusted
  void fail_all(const std::string& message);
  void process_token(size_t slot, std::span<const float> logits);
  void update_gauges();
  // Most prompt tokens per step, and the pieces prompts are fed in.
  size_t prefill_chunk() const;
  // The piece [begin, end) a prompt of n tokens feeds position p in: pieces start at
  // multiples of prefill_chunk() from position 0, as in a cold run.
  std::pair<size_t, size_t> prompt_piece(size_t p, size_t n) const;
  // Records that `n` positions were just written to slot s's cache, in one run of n rows.
  void note_cached(size_t s, std::span<const TokenId> tokens);
  // How many of slot s's cached positions a prompt can reuse exactly (shorter than
  // `common`, the cached tokens it shares, where a cold run would compute them otherwise).
  size_t exact_reuse(size_t s, size_t common, const std::vector<TokenId>& prompt) const;

  std::unique_ptr<BatchEngine> engine_owner_;
  BatchEngine& engine_;
  Tokenizer tokenizer_;
  Metrics& metrics_;
  SchedulerOptions options_;
  size_t n_ctx_, n_slots_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool stopping_ = false;

  // Engine thread only.
  std::vector<std::unique_ptr<Sequence>> slots_;
  // The tokens in each slot's KV cache, position by position (kept after a
  // request ends, for prefix reuse); always engine_.seq_length(slot) long
  // between steps.
  std::vector<std::vector<TokenId>> cached_;
  // Per cached position: computed in a run of at least run_length_threshold rows.
  std::vector<std::vector<uint8_t>> cached_long_run_;
  std::vector<size_t> shared_prefix_;  // admit(): tokens each slot's cache shares with a prompt
  uint64_t admitted_ = 0;              // admission counter: prefill goes oldest first
  Batch batch_;
  std::vector<size_t> row_slots_;  // logits row k belongs to slots_[row_slots_[k]]
  std::vector<size_t> prefill_order_;
  std::vector<TokenLogprob> top_scratch_;
  std::optional<ConstraintFactory> constraints_;  // built at the first constrained job
  std::vector<float> masked_logits_;

  std::thread thread_;
};

}  // namespace kiln::server
