// Server metrics, rendered in the Prometheus text exposition format.
//
// Counters and histograms are updated by the HTTP threads (requests by status)
// and the engine thread (tokens, latencies, gauges); one mutex guards them,
// held only for a few additions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // Lines for `name` (_bucket{le=...}, _sum, _count).
  void render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last is +Inf
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

struct Gauges {
  size_t queue_depth = 0;         // requests waiting for a slot
  size_t active_sequences = 0;    // sequences holding a KV slot
  size_t kv_used_tokens = 0;      // positions held in the KV cache
  size_t kv_capacity_tokens = 0;  // n_seq * n_ctx
};

class Metrics {
 public:
  Metrics();
  void count_request(int status);
  void count_cancelled();
  void add_prompt_tokens(size_t n);
  void add_cached_prompt_tokens(size_t n);
  void add_generated_tokens(size_t n);
  void observe_time_to_first_token(double seconds);
  void observe_time_per_output_token(double seconds);
  void set_gauges(const Gauges& g);
  Gauges gauges() const;
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::map<int, uint64_t> requests_by_status_;
  uint64_t cancelled_ = 0;
  uint64_t prompt_tokens_ = 0;
  uint64_t cached_prompt_tokens_ = 0;
  uint64_t generated_tokens_ = 0;
  Histogram ttft_;
  Histogram tpot_;
  Gauges gauges_;
};

}  // namespace kiln::server
