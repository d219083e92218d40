// The Scheduler owns the one thread that calls the engine.
//
// HTTP threads submit jobs (already tokenized) and get a GenerationStream to
// wait on; they never touch the engine. The engine thread loops:
//   1. admit queued jobs (FIFO) into free KV slots; drop cancelled ones;
//   2. build ONE batch: one token for every decoding sequence, then prompt
//      chunks of newly admitted sequences, up to the engine's max batch;
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

struct SchedulerOptions {
  size_t max_queue = 1024;  // more waiting requests are refused (503)
};

class Scheduler {
 public:
  // The engine, tokenizer and metrics must outlive the scheduler. Starts the
  // engine thread.
  Scheduler(Engine& engine, const Tokenizer& tokenizer, Metrics& metrics,
            SchedulerOptions options = {});
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
  void fail_all(const std::string& message);
  void process_token(size_t slot, std::span<const float> logits);
  void update_gauges();

  Engine& engine_;
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
  uint64_t admitted_ = 0;  // admission counter: prefill goes oldest first
  Batch batch_;
  std::vector<size_t> row_slots_;  // logits row k belongs to slots_[row_slots_[k]]
  std::vector<size_t> prefill_order_;
  std::vector<TokenLogprob> top_scratch_;
  std::optional<ConstraintFactory> constraints_;  // built at the first constrained job
  std::vector<float> masked_logits_;

  std::thread thread_;
};

}  // namespace kiln::server
