#include "server/metrics.h"

#include <cstdio>

namespace kiln::server {

namespace {
std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, const std::string& name, double v) {
  out += name + ' ' + number(v) + '\n';
}
}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) + '\n';
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + '\n';
  out += name + "_sum " + number(sum_) + '\n';
  out += name + "_count " + std::to_string(count_) + '\n';
}

Metrics::Metrics()
    : ttft_({0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      tpot_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void Metrics::count_request(int status) {
  std::lock_guard lk(mu_);
  ++requests_by_status_[status];
}
void Metrics::count_cancelled() {
  std::lock_guard lk(mu_);
  ++cancelled_;
}
void Metrics::add_prompt_tokens(size_t n) {
  std::lock_guard lk(mu_);
  prompt_tokens_ += n;
}

void Metrics::add_cached_prompt_tokens(size_t n) {
  std::lock_guard lk(mu_);
  cached_prompt_tokens_ += n;
}
void Metrics::add_generated_tokens(size_t n) {
  std::lock_guard lk(mu_);
  generated_tokens_ += n;
}
void Metrics::observe_time_to_first_token(double s) {
  std::lock_guard lk(mu_);
  ttft_.observe(s);
}
void Metrics::observe_time_per_output_token(double s) {
  std::lock_guard lk(mu_);
  tpot_.observe(s);
}
void Metrics::set_gauges(const Gauges& g) {
  std::lock_guard lk(mu_);
  gauges_ = g;
}
Gauges Metrics::gauges() const {
  std::lock_guard lk(mu_);
  return gauges_;
}

std::string Metrics::render() const {
  std::lock_guard lk(mu_);
  std::string out;
  header(out, "kiln_requests_total", "counter", "HTTP requests answered, by status code.");
  if (requests_by_status_.empty()) out += "kiln_requests_total{status=\"200\"} 0\n";
  for (const auto& [status, n] : requests_by_status_) {
    out += "kiln_requests_total{status=\"" + std::to_string(status) + "\"} " + std::to_string(n) +
           '\n';
  }
  header(out, "kiln_requests_cancelled_total", "counter",
         "Generations cancelled because the client disconnected.");
  sample(out, "kiln_requests_cancelled_total", double(cancelled_));
  header(out, "kiln_prompt_tokens_total", "counter", "Prompt tokens processed.");
  sample(out, "kiln_prompt_tokens_total", double(prompt_tokens_));
  header(out, "kiln_prompt_tokens_cached_total", "counter",
         "Prompt tokens found in a slot's KV cache (a prefix shared with an earlier request), "
         "so not processed again.");
  sample(out, "kiln_prompt_tokens_cached_total", double(cached_prompt_tokens_));
  header(out, "kiln_generation_tokens_total", "counter", "Tokens generated.");
  sample(out, "kiln_generation_tokens_total", double(generated_tokens_));
  header(out, "kiln_time_to_first_token_seconds", "histogram",
         "Time from a request's arrival in the queue to its first generated token.");
  ttft_.render(out, "kiln_time_to_first_token_seconds");
  header(out, "kiln_time_per_output_token_seconds", "histogram",
         "Time between consecutive generated tokens of one sequence.");
  tpot_.render(out, "kiln_time_per_output_token_seconds");
  header(out, "kiln_queue_depth", "gauge", "Requests waiting for a sequence slot.");
  sample(out, "kiln_queue_depth", double(gauges_.queue_depth));
  header(out, "kiln_active_sequences", "gauge", "Sequences holding a KV cache slot.");
  sample(out, "kiln_active_sequences", double(gauges_.active_sequences));
  header(out, "kiln_kv_cache_used_tokens", "gauge", "Positions held in the KV cache.");
  sample(out, "kiln_kv_cache_used_tokens", double(gauges_.kv_used_tokens));
  header(out, "kiln_kv_cache_capacity_tokens", "gauge", "Positions the KV cache can hold.");
  sample(out, "kiln_kv_cache_capacity_tokens", double(gauges_.kv_capacity_tokens));
  header(out, "kiln_kv_cache_usage_ratio", "gauge", "Used fraction of the KV cache.");
  sample(out, "kiln_kv_cache_usage_ratio",
         gauges_.kv_capacity_tokens
             ? double(gauges_.kv_used_tokens) / double(gauges_.kv_capacity_tokens)
             : 0.0);
  return out;
}

}  // namespace kiln::server
