// kiln bench: prompt-processing and generation speed of the forward pass, like
// llama-bench's pp/tg tests: pp runs a random prompt of -p tokens as one
// batch; tg generates -n tokens one at a time; both from an empty context, or
// after -d tokens already in it (llama-bench's depth). Reports mean ± sd over
// -r repetitions after one warm-up, the peak RSS, and generation speed as a
// fraction of the memory-bandwidth bound (weight and KV cache bytes read per
// token / read bandwidth measured here, on the same threads, around every tg
// repetition: the median of each repetition against the bandwidth of its moment).
#include <immintrin.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/model_options.h"
#include "engine/cuda/any_engine.h"
#include "engine/engine.h"
#include "kernels/thread_pool.h"

namespace kiln::cli {
namespace {

constexpr ModelOptionSet kModelOptions{.ctx_size = false, .device = true};

std::string usage() {
  return "usage: kiln bench -m MODEL.gguf [-p 512] [-n 128] [-d 0] [-t N] [-r 5]\n"
         "                  [--decode-batch B] [--device D] [--json]\n"
         "\n"
         "Measures prompt processing (pp: -p random tokens in one batch) and generation\n"
         "(tg: -n tokens one at a time), both from an empty context or after -d tokens\n"
         "already in it, in tokens/s, and tg against the bound of the weights and KV rows\n"
         "read per step over the memory bandwidth measured around each repetition (on\n"
         "cuda: the device-to-device copy bandwidth).\n"
         "\n"
         "options:\n"
         "  -m, --model FILE   GGUF model\n"
         "  -p, --n-prompt N   prompt tokens (512; 0 skips pp)\n"
         "  -n, --n-gen N      generated tokens (128; 0 skips tg)\n"
         "  -d, --depth N      tokens already in the context when pp and tg start, filled\n"
         "                     untimed before each run (0): a server's stream after its\n"
         "                     prompt decodes at this depth\n"
         "  -r, --repetitions N  timed repetitions after one warm-up (5)\n"
         "  --decode-batch B   tg decodes B sequences together, one token each per forward\n"
         "                     (the server's continuous batching); tokens/s counts all B (1)\n"
         "  --json             print one JSON object instead of the table\n" +
         ModelOptions::help(kModelOptions, 21);
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Stats {
  double mean = 0, sd = 0;
};

Stats stats(const std::vector<double>& v) {
  Stats s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
    s.sd = std::sqrt(s.sd / double(v.size() - 1));
  }
  return s;
}

size_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<size_t>(u.ru_maxrss) * 1024;  // Linux reports KiB
}

// Read bandwidth in bytes/s: every thread sums its slice of `memory`, a buffer much larger
// than the caches; best of a few passes. The buffer is in huge pages, like the engine's
// weights: on 4 KiB pages the same sum reads ~15% slower (TLB misses, and the prefetchers
// stop at every page boundary), which would understate the bound.
double measure_read_bandwidth(ThreadPool& pool, const HugePageBuffer& memory) {
  const size_t n = memory.bytes().size() / sizeof(float);
  const std::span<const float> buf{reinterpret_cast<const float*>(memory.bytes().data()), n};
  std::vector<float> sink(static_cast<size_t>(pool.size()) * 16);
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const auto t0 = Clock::now();
    pool.run([&](int ti, int nt) {
      const size_t per = (n / 64 + static_cast<size_t>(nt) - 1) / static_cast<size_t>(nt) * 64;
      const size_t begin = std::min(n, per * static_cast<size_t>(ti));
      const size_t end = std::min(n, begin + per);
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = begin; i + 32 <= end; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(&buf[i]));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(&buf[i + 8]));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(&buf[i + 16]));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(&buf[i + 24]));
      }
      _mm256_storeu_ps(&sink[static_cast<size_t>(ti) * 16],
                       _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    });
    best = std::max(best, double(memory.bytes().size()) / seconds_since(t0));
  }
  return best;
}

// A buffer for measure_read_bandwidth, filled so its pages are really there.
HugePageBuffer bandwidth_buffer() {
  HugePageBuffer memory(size_t{512} << 20);
  const std::span<float> buf{reinterpret_cast<float*>(memory.bytes().data()),
                             memory.bytes().size() / sizeof(float)};
  std::fill(buf.begin(), buf.end(), 1.0f);
  return memory;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
}

int run_bench(Args args) {
  ModelOptions m;
  size_t n_prompt = 512, n_gen = 128, depth = 0, reps = 5, decode_batch = 1;
  bool json = false;
  const std::string help = usage();
  OptionParser parser("bench", help);
  m.add_to(parser, kModelOptions);
  parser.integer({"-p", "--n-prompt"}, n_prompt, 0, 1 << 20);
  parser.integer({"-n", "--n-gen"}, n_gen, 0, 1 << 20);
  parser.integer({"-d", "--depth"}, depth, 0, 1 << 20);
  parser.integer({"-r", "--repetitions"}, reps, 1, 1000);
  parser.integer({"--decode-batch"}, decode_batch, 1, 256);
  parser.flag({"--json"}, json);
  if (!parser.parse(args)) return 0;
  m.require_model();
  const std::string& model_path = m.model_path;
  const DeviceKind device = m.device;

  const Model model = Model::load(model_path);
  const ModelConfig& c = model.config();
  EngineOptions o = m.engine_options();
  o.n_ctx = depth + std::max<size_t>(n_prompt + 1, n_gen + 1);
  o.max_batch = std::max<size_t>(decode_batch, std::min<size_t>(n_prompt, 512));
  o.n_seq = decode_batch;
  AnyEngine engine(model, o, device);

  std::mt19937 rng(42);
  auto random_tokens = [&](size_t n) {
    std::vector<int32_t> t(n);
    for (auto& v : t) v = static_cast<int32_t>(rng() % c.n_vocab);
    return t;
  };

  // Sequence s cleared, then -d random tokens evaluated into it (untimed).
  auto start_at_depth = [&](size_t s) {
    engine.clear(s);
    if (depth > 0) engine.eval(s, random_tokens(depth), false);
  };
  auto run_pp = [&]() {
    start_at_depth(0);
    const auto tokens = random_tokens(n_prompt);
    const auto t0 = Clock::now();
    engine.eval(0, tokens, false);
    return double(n_prompt) / seconds_since(t0);
  };
  // Sequence s decodes token i at position depth + i: B logits rows per forward, as in a
  // server step.
  auto run_tg = [&]() {
    for (size_t s = 0; s < decode_batch; ++s) start_at_depth(s);
    const auto tokens = random_tokens(n_gen * decode_batch);
    Batch batch;
    batch.entries.reserve(decode_batch);
    const auto t0 = Clock::now();
    for (size_t i = 0; i < n_gen; ++i) {
      batch.clear();
      for (size_t s = 0; s < decode_batch; ++s) {
        batch.add(static_cast<int32_t>(s), static_cast<int32_t>(depth + i),
                  tokens[i * decode_batch + s], true);
      }
      engine.forward(batch);
    }
    return double(n_gen * decode_batch) / seconds_since(t0);
  };

  // The machine's memory bandwidth swings within seconds (it is shared), so on the CPU it is
  // measured around every tg repetition and each repetition is compared with the bandwidth
  // of its own moment (the mean of the measurements before and after it).
  Engine* cpu = engine.cpu();
  HugePageBuffer bandwidth_memory;
  std::vector<double> bandwidths;
  const auto sample_bandwidth = [&] {
    if (cpu != nullptr)
      bandwidths.push_back(measure_read_bandwidth(cpu->thread_pool(), bandwidth_memory));
  };
  std::vector<double> pp, tg;
  if (n_prompt > 0) {
    run_pp();  // warm-up: page in the weights, spin up the pool
    for (size_t r = 0; r < reps; ++r) pp.push_back(run_pp());
  }
  if (n_gen > 0) run_tg();              // warm-up
  const size_t rss = peak_rss_bytes();  // before the bandwidth buffer (no allocation after)
  if (cpu != nullptr) bandwidth_memory = bandwidth_buffer();
  sample_bandwidth();
  if (n_gen > 0) {
    for (size_t r = 0; r < reps; ++r) {
      tg.push_back(run_tg());
      sample_bandwidth();
    }
  }
  double bandwidth = median(bandwidths);
  // Bytes one decode step reads: the weights once, and each sequence's K and V rows.
  size_t kv_bytes_per_seq = 0;
  int n_threads = 0;
  std::string device_name = "cpu";
  if (cpu != nullptr) {
    n_threads = cpu->n_threads();
    // The K and V rows attention reads, at the run's mean length.
    const KvCache& kv = cpu->kv_cache();
    kv_bytes_per_seq = 2 * c.n_layers * kv.row_bytes() * (depth + (n_gen + 1) / 2);
  }
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
  if (CudaEngine* gpu = engine.cuda()) {
    // Device memory bandwidth; per token also the KV rows read, at the run's mean length.
    bandwidth = gpu->measure_copy_bandwidth();
    kv_bytes_per_seq = gpu->kv_bytes_read(depth + (n_gen + 1) / 2);
    device_name = gpu->device_name();
  }
#endif
  const Stats pps = stats(pp), tgs = stats(tg);
  const size_t bytes_per_step = model.weights().bytes_per_token() + decode_batch * kv_bytes_per_seq;
  // Tokens/s (of all sequences) if every step only streamed its bytes at the bandwidth.
  const auto bound = [&](double bytes_per_s) {
    return double(decode_batch) * bytes_per_s / double(bytes_per_step);
  };
  const double bound_tps = bound(bandwidth);
  // The median over the repetitions of tg / the bound of its moment (the GPU: one bound).
  std::vector<double> fractions;
  for (size_t r = 0; r < tg.size(); ++r) {
    const double bw =
        bandwidths.size() == tg.size() + 1 ? (bandwidths[r] + bandwidths[r + 1]) / 2 : bandwidth;
    fractions.push_back(tg[r] / bound(bw));
  }
  const double fraction = median(fractions);
  const std::string name = std::filesystem::path(model_path).filename().string();

  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"device\": \"%s\", \"threads\": %d, \"n_prompt\": %zu, \"n_gen\": "
        "%zu, \"n_depth\": %zu, \"decode_batch\": %zu, "
        "\"repetitions\": %zu, \"pp_tps\": %.3f, \"pp_tps_sd\": %.3f, \"tg_tps\": %.3f, "
        "\"tg_tps_sd\": %.3f, \"peak_rss_bytes\": %zu, \"read_bandwidth_bytes_per_s\": %.0f, "
        "\"weight_bytes_per_token\": %zu, \"bytes_per_step\": %zu, \"bandwidth_bound_tps\": %.3f, "
        "\"bandwidth_fraction\": %.4f}\n",
        name.c_str(), device_name.c_str(), n_threads, n_prompt, n_gen, depth, decode_batch, reps,
        pps.mean, pps.sd, tgs.mean, tgs.sd, rss, bandwidth, bytes_per_step / decode_batch,
        bytes_per_step, bound_tps, fraction);
  } else {
    std::printf("model: %s (%s)\ndevice: %s, threads: %d, repetitions: %zu\n", name.c_str(),
                c.describe().c_str(), device_name.c_str(), n_threads, reps);
    // llama-bench's names: pp512, tg128, and with a depth "pp512 @ d256".
    const std::string at = depth > 0 ? " @ d" + std::to_string(depth) : "";
    if (!pp.empty()) {
      std::printf("%-8s %10.2f ± %.2f tokens/s\n", ("pp" + std::to_string(n_prompt) + at).c_str(),
                  pps.mean, pps.sd);
    }
    if (!tg.empty() && decode_batch == 1) {
      std::printf("%-8s %10.2f ± %.2f tokens/s\n", ("tg" + std::to_string(n_gen) + at).c_str(),
                  tgs.mean, tgs.sd);
    } else if (!tg.empty()) {
      std::printf("tg%zu%s x%zu %10.2f ± %.2f tokens/s (all sequences together)\n", n_gen,
                  at.c_str(), decode_batch, tgs.mean, tgs.sd);
    }
    std::printf("peak RSS: %.1f MiB\n", double(rss) / (1 << 20));
    if (const Engine* cpu = engine.cpu()) {
      std::printf("weights: %s\n", cpu->weights_description().c_str());
    }
    std::printf("read bandwidth: %.2f GB/s%s, weights + KV per %s: %.1f MiB -> bound %.1f tokens/s",
                bandwidth / 1e9, bandwidths.size() > 1 ? " (median)" : "",
                decode_batch == 1 ? "token" : "step", double(bytes_per_step) / (1 << 20),
                bound_tps);
    if (!tg.empty()) {
      std::printf(", tg at %.0f%% of it%s", 100.0 * fraction,
                  bandwidths.size() > 1 ? " (median of each repetition against its moment's)" : "");
    }
    std::printf("\n");
  }
  return 0;
}

const Command kBench("bench", "measure prompt and generation speed (tokens/s)", run_bench);

}  // namespace
}  // namespace kiln::cli
