#include "server/scheduler.h"

#include <algorithm>
#include <cstdio>

#include "server/stop_strings.h"

namespace kiln::server {

bool GenerationStream::wait(std::vector<GenerationEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return !events_.empty() || delivered_; });
  while (!events_.empty()) {
    out.push_back(std::move(events_.front()));
    events_.pop_front();
  }
  if (ended_) delivered_ = true;
  return delivered_;
}

void GenerationStream::push(GenerationEvent e) {
  {
    std::lock_guard lk(mu_);
    if (ended_) return;
    if (e.finish || !e.error.empty()) ended_ = true;
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

// One admitted request: its KV slot, sampler and output state.
struct Scheduler::Sequence {
  Sequence(Queued q, const Tokenizer& tokenizer, size_t n_vocab, uint64_t order)
      : job(std::move(q.job)),
        stream(std::move(q.stream)),
        submitted(q.submitted),
        admitted_order(order),
        sampler(job.sampling, n_vocab),
        rng(job.seed),
        detokenizer(tokenizer),
        stop(job.stop) {}

  GenerationJob job;
  std::shared_ptr<GenerationStream> stream;
  Clock::time_point submitted;
  Clock::time_point last_token_time;
  uint64_t admitted_order;
  size_t prompt_done = 0;  // prompt tokens already in the KV cache
  size_t generated = 0;
  TokenId last_token = -1;  // the token to feed at the next decode step
  SequenceSampler sampler;
  Rng rng;
  StreamingDetokenizer detokenizer;
  StopStringMatcher stop;
  std::vector<TokenLogprobs> pending_logprobs;  // tokens whose text is still held back
  // Where each pending token's text starts in the detokenized text, and how much of that
  // text has been sent as content: on a stop string, the tokens that start at or after the
  // end of the content (the stop string's own) are not part of the answer.
  std::vector<size_t> pending_starts;
  size_t text_bytes = 0;
  size_t content_bytes = 0;
  std::unique_ptr<GrammarConstraint> grammar;  // response_format, when constrained

  bool decoding() const { return prompt_done == job.prompt.size(); }
};

Scheduler::Scheduler(std::unique_ptr<BatchEngine> engine, const Tokenizer& tokenizer,
                     Metrics& metrics, SchedulerOptions options)
    : engine_owner_(std::move(engine)),
      engine_(*engine_owner_),
      tokenizer_(tokenizer),
      metrics_(metrics),
      options_(options),
      n_ctx_(engine_.n_ctx()),
      n_slots_(engine_.n_seq()),
      slots_(engine_.n_seq()),
      cached_(engine_.n_seq()),
      cached_long_run_(engine_.n_seq()) {
  batch_.entries.reserve(engine_.max_batch());
  row_slots_.reserve(engine_.max_batch());
  forget_all();
  update_gauges();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { shutdown(); }

void Scheduler::shutdown() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<GenerationStream> Scheduler::submit(GenerationJob job) {
  if (job.prompt.empty()) throw invalid_request("the prompt is empty", "prompt");
  if (job.prompt.size() >= n_ctx_) {
    throw invalid_request("This model's maximum context length is " + std::to_string(n_ctx_) +
                              " tokens. However, your prompt has " +
                              std::to_string(job.prompt.size()) +
                              " tokens, which leaves no room to generate.",
                          "messages");
  }
  auto stream = std::make_shared<GenerationStream>();
  stream->prompt_tokens_ = job.prompt.size();
  {
    std::lock_guard lk(mu_);
    if (stopping_) throw ApiError(503, "the server is shutting down", "server_error");
    if (queue_.size() >= options_.max_queue) {
      throw ApiError(503, "too many requests are waiting; try again later", "server_error");
    }
    queue_.push_back({std::move(job), stream, Clock::now()});
  }
  cv_.notify_all();
  return stream;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lk(mu_);
      const auto busy = [&] {
        return std::any_of(slots_.begin(), slots_.end(),
                           [](const auto& s) { return s != nullptr; });
      };
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || busy(); });
      if (stopping_) break;
    }
    try {
      step();
    } catch (const std::exception& e) {
      // An engine failure ends every running sequence with a server error;
      // the server itself keeps going.
      std::fprintf(stderr, "kiln serve: inference failed: %s\n", e.what());
      fail_all(std::string("inference failed: ") + e.what());
      forget_all();
    }
  }
  fail_all("the server is shutting down");
  std::lock_guard lk(mu_);
  for (auto& q : queue_) q.stream->push({{}, {}, std::nullopt, "the server is shutting down"});
  queue_.clear();
}

void Scheduler::admit() {
  std::lock_guard lk(mu_);
  while (!queue_.empty()) {
    Queued& front = queue_.front();
    if (front.stream->cancelled()) {
      metrics_.count_cancelled();
      front.stream->push({{}, {}, std::nullopt, "cancelled"});
      queue_.pop_front();
      continue;
    }
    // The free slot whose cached tokens share the longest prefix with the
    // prompt; among equals the one caching least, so a long cache that
    // shares nothing with this prompt is kept for one that might.
    const std::vector<TokenId>& prompt = front.job.prompt;
    // Tokens each slot's cache shares with the prompt (slots are few: computed once for
    // both the choice of slot and the choice of donor below).
    shared_prefix_.resize(slots_.size());
    for (size_t s = 0; s < slots_.size(); ++s) {
      const auto& c = cached_[s];
      const size_t n = std::min(c.size(), prompt.size());
      shared_prefix_[s] = static_cast<size_t>(
          std::mismatch(c.begin(), c.begin() + static_cast<ptrdiff_t>(n), prompt.begin()).first -
          c.begin());
    }
    size_t best = slots_.size(), best_common = 0;
    for (size_t s = 0; s < slots_.size(); ++s) {
      if (slots_[s]) continue;
      const size_t common = shared_prefix_[s];
      if (best == slots_.size() || common > best_common ||
          (common == best_common && cached_[s].size() < cached_[best].size())) {
        best = s;
        best_common = common;
      }
    }
    if (best == slots_.size()) break;  // no free slot
    size_t reuse = options_.reuse_prompt_prefix ? exact_reuse(best, best_common, prompt) : 0;
    // Another slot, running or free, may hold more of the prompt (a shared system prompt,
    // another user's identical start): its KV rows are copied instead of computed again.
    size_t donor = slots_.size(), donor_reuse = reuse;
    for (size_t s = 0; options_.reuse_prompt_prefix && s < slots_.size(); ++s) {
      if (s == best) continue;
      const size_t common = shared_prefix_[s];
      if (common <= donor_reuse) continue;
      const size_t r = exact_reuse(s, common, prompt);
      if (r > donor_reuse) {
        donor = s;
        donor_reuse = r;
      }
    }
    if (donor != slots_.size() && engine_.copy_prefix(donor, best, donor_reuse)) {
      cached_[best].assign(cached_[donor].begin(),
                           cached_[donor].begin() + static_cast<ptrdiff_t>(donor_reuse));
      cached_long_run_[best].assign(
          cached_long_run_[donor].begin(),
          cached_long_run_[donor].begin() + static_cast<ptrdiff_t>(donor_reuse));
      reuse = donor_reuse;
    } else {
      engine_.truncate(best, reuse);
      cached_[best].resize(reuse);
      cached_long_run_[best].resize(reuse);
    }
    slots_[best] =
        std::make_unique<Sequence>(std::move(front), tokenizer_, engine_.n_vocab(), admitted_++);
    queue_.pop_front();
    Sequence& seq = *slots_[best];
    seq.prompt_done = reuse;
    metrics_.add_cached_prompt_tokens(reuse);
    if (seq.job.response_format.constrained()) {
      if (!constraints_) constraints_.emplace(tokenizer_);
      seq.grammar = constraints_->make(seq.job.response_format);
    }
  }
}

size_t Scheduler::exact_reuse(size_t s, size_t common, const std::vector<TokenId>& prompt) const {
  // The last prompt token is always fed again: its logits are the first
  // token's distribution, and the cache keeps no logits.
  size_t reuse = std::min(common, prompt.size() - 1);
  if (reuse == 0 || engine_.run_length_threshold() == 0) return reuse;
  // Exactly as a cold run: every reused position was computed in a run of the
  // kind the cold run computes it in, and the first piece fed, [reuse, end of its
  // cold piece), is as long a run as the cold piece is (else reuse less of it).
  const size_t min_run = engine_.run_length_threshold();
  const auto long_when_cold = [&](size_t p) {
    const auto [begin, end] = prompt_piece(p, prompt.size());
    return end - begin >= min_run;
  };
  const auto& long_run = cached_long_run_[s];
  size_t p = 0;
  while (p < reuse && (long_run[p] != 0) == long_when_cold(p)) ++p;
  reuse = p;
  const auto [begin, end] = prompt_piece(reuse, prompt.size());
  if (end - begin >= min_run && end - reuse < min_run) reuse = end - min_run;
  return reuse;
}

size_t Scheduler::prefill_chunk() const {
  return std::max<size_t>(
      1, std::min(options_.prefill_chunk ? options_.prefill_chunk : engine_.max_batch(),
                  engine_.max_batch() - std::min(engine_.max_batch() - 1, n_slots_)));
}

std::pair<size_t, size_t> Scheduler::prompt_piece(size_t p, size_t n) const {
  const size_t chunk = prefill_chunk();
  const size_t begin = p / chunk * chunk;
  return {begin, std::min(begin + chunk, n)};
}

void Scheduler::note_cached(size_t s, std::span<const TokenId> tokens) {
  const bool long_run = tokens.size() >= engine_.run_length_threshold();
  cached_[s].insert(cached_[s].end(), tokens.begin(), tokens.end());
  cached_long_run_[s].insert(cached_long_run_[s].end(), tokens.size(), long_run ? 1 : 0);
}

void Scheduler::release(size_t slot, bool cancelled) {
  if (cancelled) metrics_.count_cancelled();
  // The slot's KV stays (cached_ says what it holds) for a later prompt
  // that shares a prefix with it.
  slots_[slot].reset();
}

void Scheduler::forget_all() {
  for (size_t s = 0; s < slots_.size(); ++s) {
    engine_.clear(s);
    cached_[s].clear();
    cached_long_run_[s].clear();
  }
}

void Scheduler::fail_all(const std::string& message) {
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (!slots_[s]) continue;
    slots_[s]->stream->push({{}, {}, std::nullopt, message});
    release(s, false);
  }
  update_gauges();
}

void Scheduler::update_gauges() {
  Gauges g;
  {
    std::lock_guard lk(mu_);
    g.queue_depth = queue_.size();
  }
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (!slots_[s]) continue;
    ++g.active_sequences;
    g.kv_used_tokens += engine_.seq_length(s);
  }
  g.kv_capacity_tokens = n_slots_ * n_ctx_;
  metrics_.set_gauges(g);
}

void Scheduler::step() {
  admit();
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (slots_[s] && slots_[s]->stream->cancelled()) release(s, true);
  }
  update_gauges();

  batch_.clear();
  row_slots_.clear();
  // Decoding sequences first: one token each keeps their latency steady.
  for (size_t s = 0; s < slots_.size(); ++s) {
    const auto& seq = slots_[s];
    if (!seq || !seq->decoding()) continue;
    batch_.add(static_cast<int32_t>(s), static_cast<int32_t>(engine_.seq_length(s)),
               seq->last_token, true);
    note_cached(s, {&seq->last_token, 1});
    row_slots_.push_back(s);
  }
  // Then prompt chunks, oldest admission first, in what room is left.
  prefill_order_.clear();
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (slots_[s] && !slots_[s]->decoding()) prefill_order_.push_back(s);
  }
  std::sort(prefill_order_.begin(), prefill_order_.end(), [&](size_t a, size_t b) {
    return slots_[a]->admitted_order < slots_[b]->admitted_order;
  });
  // A prompt is always fed in the same pieces, positions [k chunk, (k + 1) chunk) and the
  // rest, whatever else is running and however much of it came from the cache: the engine
  // picks its matmul path by the length of a sequence's run of rows, so equal pieces keep
  // a request's logits the same alone, beside others or after a cached prefix. A piece
  // that does not fit this step waits for the next (FIFO), never gets cut.
  size_t prompt_budget = prefill_chunk();
  for (size_t s : prefill_order_) {
    Sequence& seq = *slots_[s];
    const size_t n = prompt_piece(seq.prompt_done, seq.job.prompt.size()).second - seq.prompt_done;
    if (n > std::min(engine_.max_batch() - batch_.size(), prompt_budget)) break;
    const size_t start = engine_.seq_length(s);
    for (size_t i = 0; i < n; ++i) {
      const bool last = seq.prompt_done + i + 1 == seq.job.prompt.size();
      batch_.add(static_cast<int32_t>(s), static_cast<int32_t>(start + i),
                 seq.job.prompt[seq.prompt_done + i], last);
      if (last) row_slots_.push_back(s);
    }
    note_cached(s, std::span(seq.job.prompt).subspan(seq.prompt_done, n));
    seq.prompt_done += n;
    prompt_budget -= n;
    metrics_.add_prompt_tokens(n);
  }
  if (batch_.empty()) return;

  engine_.forward(batch_);
  for (size_t k = 0; k < row_slots_.size(); ++k)
    process_token(row_slots_[k], engine_.logits_row(k));
  update_gauges();
}

void Scheduler::process_token(size_t slot, std::span<const float> logits) {
  Sequence& seq = *slots_[slot];
  if (seq.stream->cancelled()) {
    release(slot, true);  // the client left during the forward: drop its token
    return;
  }
  const auto now = Clock::now();
  // The draw is taken every step, greedy or not, so a request's random
  // stream depends only on its own seed and length.
  std::span<const float> row = logits;
  if (seq.grammar) {
    // Tokens that cannot continue the document get -inf before the chain.
    masked_logits_.assign(logits.begin(), logits.end());
    if (seq.grammar->compute_mask(masked_logits_) == 0) {
      seq.stream->push({{}, {}, std::nullopt, "response_format: the grammar allows no next token"});
      release(slot, false);
      return;
    }
    row = masked_logits_;
  }
  const float draw = seq.rng.uniform();
  TokenId token = seq.sampler.sample(row, draw);
  if (seq.grammar) {
    // The chain never picks a -inf token while a finite one is left; this
    // keeps a bias or penalty edge case from breaking the document anyway.
    if (!seq.grammar->is_allowed(token)) token = argmax(row);
    seq.grammar->accept_token(token);
  }
  seq.sampler.accept(token);
  ++seq.generated;
  seq.stream->completion_tokens_ = seq.generated;
  metrics_.add_generated_tokens(1);
  if (seq.generated == 1) {
    metrics_.observe_time_to_first_token(
        std::chrono::duration<double>(now - seq.submitted).count());
  } else {
    metrics_.observe_time_per_output_token(
        std::chrono::duration<double>(now - seq.last_token_time).count());
  }
  seq.last_token_time = now;

  GenerationEvent ev;
  // With a grammar an end-of-turn token was allowed only on a complete document.
  const bool end_of_turn = (!seq.job.ignore_eos || seq.grammar) && tokenizer_.is_eog(token);
  if (seq.job.logprobs && !end_of_turn) {
    TokenLogprobs t;
    const float lse = log_sum_exp(logits);
    t.token = std::string(tokenizer_.token_bytes(token));
    t.logprob = logits[static_cast<size_t>(token)] - lse;
    if (seq.job.top_logprobs > 0) {
      top_logprobs(logits, seq.job.top_logprobs, lse, top_scratch_);
      for (const auto& c : top_scratch_) {
        t.top.emplace_back(std::string(tokenizer_.token_bytes(c.token)), c.logprob);
      }
    }
    seq.pending_logprobs.push_back(std::move(t));
    seq.pending_starts.push_back(seq.text_bytes);
  }
  // The detokenizer's text goes through the stop matcher; its length places each token.
  bool stopped_by_string = false;
  const auto stop_matcher_push = [&](std::string_view text) {
    seq.text_bytes += text.size();
    auto r = seq.stop.push(text);
    stopped_by_string = stopped_by_string || r.stopped;
    return r;
  };

  // Ends the text: whatever the detokenizer and the stop matcher still hold.
  const auto finish_with = [&](FinishReason reason) {
    auto r = stop_matcher_push(seq.detokenizer.flush());
    ev.text += r.text;
    if (r.stopped) {
      ev.finish = FinishReason::kStop;
    } else {
      ev.text += seq.stop.flush();
      ev.finish = reason;
    }
  };

  if (end_of_turn) {
    finish_with(FinishReason::kStop);
  } else {
    auto r = stop_matcher_push(seq.detokenizer.push(token));
    ev.text = std::move(r.text);
    if (r.stopped) {
      ev.finish = FinishReason::kStop;
    } else if (seq.grammar && seq.grammar->done()) {
      finish_with(FinishReason::kStop);  // complete, and nothing may follow
    } else if (seq.job.max_tokens > 0 && seq.generated >= seq.job.max_tokens) {
      finish_with(FinishReason::kLength);
    } else if (engine_.seq_length(slot) >= n_ctx_) {
      finish_with(FinishReason::kLength);  // no room to feed this token back
    }
  }
  if (!ev.text.empty() || ev.finish) {
    seq.content_bytes += ev.text.size();
    if (stopped_by_string) {
      // The stop string is not content, nor are the tokens that spell it.
      size_t keep = 0;
      while (keep < seq.pending_starts.size() && seq.pending_starts[keep] < seq.content_bytes) {
        ++keep;
      }
      seq.pending_logprobs.resize(keep);
    }
    ev.logprobs = std::move(seq.pending_logprobs);
    seq.pending_logprobs.clear();
    seq.pending_starts.clear();
  }
  const bool finished = ev.finish.has_value();
  if (!ev.text.empty() || finished || !ev.logprobs.empty()) seq.stream->push(std::move(ev));
  if (finished) {
    release(slot, false);
  } else {
    seq.last_token = token;
  }
}

}  // namespace kiln::server
