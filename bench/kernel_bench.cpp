// Kernel benchmarks. Run: build/bin/kiln-kernel-bench [--benchmark_filter=matvec/q4_K]
//
// Before the benchmarks run, the binary measures this machine's memory read bandwidth with a
// streaming sum over a 512 MiB buffer on the same thread pool the kernels use; every
// benchmark reports `bytes_per_second` (weight bytes streamed per second) and `bw_fraction`
// (that divided by the measured read bandwidth). Matvec weights are larger than the 32 MB
// L3 so they stream from DRAM as in decode. Matmul benchmarks also report
// `madds_per_second` (multiply-adds: m * rows * cols per call).
// Threads: KILN_THREADS environment variable, default physical cores. KILN_ISA=avx2 (or
// portable) measures the narrower kernels.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gguf/ggml_types.h"
#include "kernels/blocks.h"
#include "kernels/dot.h"
#include "kernels/f16.h"
#include "kernels/matmul.h"
#include "kernels/thread_pool.h"

namespace {

using kiln::GgmlType;
using namespace kiln::kernels;

int bench_threads() {
  if (const char* env = std::getenv("KILN_THREADS")) return std::max(1, std::atoi(env));
  return kiln::default_thread_count();
}

kiln::ThreadPool& pool() {
  static kiln::ThreadPool instance(bench_threads());
  return instance;
}

double g_read_bandwidth = 0.0;  // bytes/s, measured once at start

// Sums a buffer with 256-bit loads, 4 independent accumulators (read-bound, not add-bound).
uint64_t stream_sum(const std::byte* data, size_t bytes) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    const auto* p = reinterpret_cast<const __m256i*>(data + i);
    acc0 = _mm256_add_epi64(acc0, _mm256_load_si256(p));
    acc1 = _mm256_add_epi64(acc1, _mm256_load_si256(p + 1));
    acc2 = _mm256_add_epi64(acc2, _mm256_load_si256(p + 2));
    acc3 = _mm256_add_epi64(acc3, _mm256_load_si256(p + 3));
  }
  const __m256i sum = _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte[], AlignedFree>;

AlignedBuffer aligned_buffer(size_t bytes) {
  return AlignedBuffer(static_cast<std::byte*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
}

// Fills with pseudo-random bytes quickly (xorshift), so untouched pages are really mapped
// and the compression of zero pages cannot help.
void fill_random(std::byte* data, size_t bytes, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    std::memcpy(data + i, &s, 8);
  }
}

double measure_read_bandwidth() {
  constexpr size_t kBytes = size_t{512} << 20;
  AlignedBuffer buffer = aligned_buffer(kBytes);
  fill_random(buffer.get(), kBytes, 1);
  double best = 0.0;
  uint64_t sink = 0;
  std::vector<uint64_t> partial(static_cast<size_t>(pool().size()) * 8);
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool().run([&](int t, int n) {
      const size_t chunk = kBytes / static_cast<size_t>(n) / 128 * 128;
      partial[static_cast<size_t>(t) * 8] =
          stream_sum(buffer.get() + chunk * static_cast<size_t>(t), chunk);
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (size_t t = 0; t < partial.size(); t += 8) sink += partial[t];
    best = std::max(best, static_cast<double>(kBytes) / seconds);
  }
  benchmark::DoNotOptimize(sink);
  return best;
}

// Random weights of `type`. For the block types every byte is random, scales included: the
// kernels' speed does not depend on the values, and the results are thrown away.
AlignedBuffer make_weights(GgmlType type, size_t rows, size_t cols, size_t& bytes) {
  bytes = rows * kiln::row_bytes(type, cols);
  AlignedBuffer data = aligned_buffer(bytes);
  fill_random(data.get(), bytes, static_cast<uint64_t>(type) + rows);
  if (type == GgmlType::F32) {
    auto* f = reinterpret_cast<float*>(data.get());
    for (size_t i = 0; i < rows * cols; ++i) f[i] = static_cast<float>(i % 17) * 0.01f;
  } else if (type == GgmlType::F16 || type == GgmlType::BF16) {
    auto* h = reinterpret_cast<uint16_t*>(data.get());
    for (size_t i = 0; i < rows * cols; ++i)
      h[i] = fp32_to_fp16(static_cast<float>(i % 17) * 0.01f);
  }
  return data;
}

std::vector<float> make_activations(size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
  return x;
}

void set_counters(benchmark::State& state, double weight_bytes_per_iteration) {
  state.counters["bytes_per_second"] =
      benchmark::Counter(weight_bytes_per_iteration * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["bw_fraction"] = benchmark::Counter(
      weight_bytes_per_iteration * static_cast<double>(state.iterations()) / g_read_bandwidth,
      benchmark::Counter::kIsRate);
}

// One row against one activation row, single thread, in cache: the kernel's raw speed.
void bench_dot(benchmark::State& state, GgmlType type, int tokens) {
  const size_t cols = 4096;
  size_t bytes = 0;
  AlignedBuffer w = make_weights(type, 1, cols, bytes);
  const DotKernel kernel = dot_kernel(type);
  if (tokens > kernel.tile) {
    state.SkipWithError("this CPU's kernel takes fewer tokens per call");
    return;
  }
  const size_t stride = act_row_bytes(kernel.act, cols);
  std::vector<std::byte> act(stride * static_cast<size_t>(tokens));
  const auto x = make_activations(cols);
  for (int t = 0; t < tokens; ++t) {
    quantize_act_row(kernel.act, x,
                     std::span(act).subspan(stride * static_cast<size_t>(t), stride));
  }
  float out[kMaxTileTokens];
  for (auto _ : state) {
    kernel.fn(cols, w.get(), act.data(), stride, tokens, out);
    benchmark::DoNotOptimize(out);
  }
  set_counters(state, static_cast<double>(bytes));
  state.SetLabel(kernel.isa);
}

// Decode: y (rows) = W x, weights streaming from DRAM. Several matrices are rotated so the
// total is well past the L3 even for the smaller types (KILN_NO_ROTATE: one matrix, from the
// L3 where it fits, for the kernels' arithmetic alone).
void bench_matvec(benchmark::State& state, GgmlType type, size_t rows, size_t cols) {
  size_t bytes = 0;
  std::vector<AlignedBuffer> matrices;
  size_t total = 0;
  do {
    matrices.push_back(make_weights(type, rows, cols, bytes));
    total += bytes;
  } while (std::getenv("KILN_NO_ROTATE") == nullptr && total < (size_t{96} << 20));
  const auto x = make_activations(cols);
  std::vector<float> y(rows);
  std::vector<std::byte> scratch(matmul_scratch_bytes(type, cols, 1));
  size_t next = 0;
  for (auto _ : state) {
    const WeightMatrix w{type, {matrices[next].get(), bytes}, rows, cols};
    matmul(w, x, 1, y, scratch, pool());
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % matrices.size();
  }
  set_counters(state, static_cast<double>(bytes));
  state.SetLabel(dot_kernel(type).isa);
}

// Decode from pre-packed GEMM panels (--hugepage-weights): y (rows) = W x for m tokens
// through matmul_group, the way the engine runs a decode step. rows 256 keeps the panels
// in the cache (the kernel's speed); larger shapes rotate matrices past the L3 (unless
// KILN_NO_ROTATE is set: one matrix, from the L3 if it fits, to tell the layout's effect on
// streaming from DRAM apart from the arithmetic).
void bench_matvec_packed(benchmark::State& state, GgmlType type, size_t rows, size_t cols,
                         size_t m) {
  size_t bytes = 0;
  const size_t packed = packed_panels_bytes(type, rows, cols);
  if (packed == 0) {
    state.SkipWithError("no pre-packed panels for this type on this CPU");
    return;
  }
  std::vector<AlignedBuffer> blocks, panels;
  size_t total = 0;
  do {
    blocks.push_back(make_weights(type, rows, cols, bytes));
    panels.push_back(aligned_buffer(packed));
    pack_panels({type, {blocks.back().get(), bytes}, rows, cols}, {panels.back().get(), packed},
                pool());
    total += packed;
  } while (rows > 256 && std::getenv("KILN_NO_ROTATE") == nullptr && total < (size_t{96} << 20));
  const auto x = make_activations(m * cols);
  std::vector<float> y(m * rows);
  const GgmlType types[] = {type};
  std::vector<std::byte> scratch(matmul_group_scratch_bytes(types, cols, m));
  size_t next = 0;
  for (auto _ : state) {
    const MatmulTarget target{
        {type, {blocks[next].get(), bytes}, rows, cols, {panels[next].get(), packed}}, y};
    matmul_group({&target, 1}, x, m, scratch, pool(), ActPrecision::int8, BatchGemm::all);
    benchmark::DoNotOptimize(y.data());
    next = (next + 1) % blocks.size();
  }
  set_counters(state, static_cast<double>(packed));
  state.SetLabel(dot_kernel(type).isa);
}

// Prefill: Y (m, rows) = X (m, cols) W^T.
void bench_matmul(benchmark::State& state, GgmlType type, size_t m, size_t rows, size_t cols) {
  size_t bytes = 0;
  AlignedBuffer w = make_weights(type, rows, cols, bytes);
  const auto x = make_activations(m * cols);
  std::vector<float> y(m * rows);
  std::vector<std::byte> scratch(matmul_scratch_bytes(type, cols, m));
  for (auto _ : state) {
    matmul({type, {w.get(), bytes}, rows, cols}, x, m, y, scratch, pool());
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, static_cast<double>(bytes));
  state.counters["madds_per_second"] = benchmark::Counter(
      static_cast<double>(m * rows * cols) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
  const GemmKernel gemm = gemm_kernel(type);
  state.SetLabel(m >= 8 && gemm.fn != nullptr ? gemm.isa : dot_kernel(type).isa);
}

std::string lower_name(GgmlType type) {
  // Names as ggml spells them ("q4_K", "f16").
  std::string name(kiln::type_name(type));
  for (char& c : name) {
    if (c != 'K') c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return name;
}

void register_benchmarks() {
  const GgmlType types[] = {GgmlType::Q4_K, GgmlType::Q6_K,   GgmlType::Q8_0,  GgmlType::Q4_1,
                            GgmlType::Q5_0, GgmlType::Q4_0,   GgmlType::F16,   GgmlType::F32,
                            GgmlType::Q5_K, GgmlType::Q3_K,   GgmlType::Q2_K,  GgmlType::Q5_1,
                            GgmlType::BF16, GgmlType::IQ4_NL, GgmlType::IQ4_XS};
  for (GgmlType type : types) {
    const std::string name = lower_name(type);
    benchmark::RegisterBenchmark(("dot/" + name).c_str(), bench_dot, type, 1);
    benchmark::RegisterBenchmark(("dot4/" + name).c_str(), bench_dot, type, 4);
    benchmark::RegisterBenchmark(("dot8/" + name).c_str(), bench_dot, type, 8);
  }
  for (GgmlType type : types) {
    const std::string name = lower_name(type);
    benchmark::RegisterBenchmark(("matvec/" + name + "/8192x8192").c_str(), bench_matvec, type,
                                 8192, 8192)
        ->UseRealTime()
        ->MinTime(1.0);
    // The shapes of a 1B-class model's FFN, as decode sees them.
    benchmark::RegisterBenchmark(("matvec/" + name + "/5632x2048").c_str(), bench_matvec, type,
                                 5632, 2048)
        ->UseRealTime();
  }
  // The default model (SmolLM2-135M, Q4_1 with a Q8_0 tied embedding/output): its FFN
  // up/gate and down projections and the output projection over the vocabulary.
  benchmark::RegisterBenchmark("matvec/q4_1/1536x576", bench_matvec, GgmlType::Q4_1, 1536, 576)
      ->UseRealTime();
  benchmark::RegisterBenchmark("matvec/q4_1/576x1536", bench_matvec, GgmlType::Q4_1, 576, 1536)
      ->UseRealTime();
  benchmark::RegisterBenchmark("matvec/q8_0/49152x576", bench_matvec, GgmlType::Q8_0, 49152, 576)
      ->UseRealTime();
  for (GgmlType type :
       {GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_0, GgmlType::Q8_0}) {
    for (size_t m : {1, 2, 3, 8}) {
      for (size_t rows : {256, 5632}) {
        const std::string name = "matvec_packed/" + lower_name(type) + "/" + std::to_string(m) +
                                 "tok/" + std::to_string(rows) + "x2048";
        benchmark::RegisterBenchmark(name.c_str(), bench_matvec_packed, type, rows, 2048, m)
            ->UseRealTime();
      }
    }
  }
  for (GgmlType type : types) {
    const std::string name = lower_name(type);
    benchmark::RegisterBenchmark(("matmul/" + name + "/512tok/2048x2048").c_str(), bench_matmul,
                                 type, 512, 2048, 2048)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  // Prefill of 512 tokens at the real shapes (rows x cols = out x in) and weight types of
  // the two Q4_K_M test models: SmolLM2-135M (cols 576 is not a multiple of 256, so its
  // Q4_K_M falls back to Q5_0 / Q8_0 there) and TinyLlama-1.1B.
  struct Shape {
    GgmlType type;
    size_t rows, cols;
  };
  const Shape prefill_shapes[] = {
      {GgmlType::Q5_0, 576, 576},   {GgmlType::Q5_0, 192, 576},   {GgmlType::Q8_0, 192, 576},
      {GgmlType::Q5_0, 1536, 576},  {GgmlType::Q4_K, 576, 1536},  {GgmlType::Q6_K, 576, 1536},
      {GgmlType::Q4_K, 2048, 2048}, {GgmlType::Q4_K, 256, 2048},  {GgmlType::Q6_K, 256, 2048},
      {GgmlType::Q4_K, 5632, 2048}, {GgmlType::Q4_K, 2048, 5632}, {GgmlType::Q6_K, 2048, 5632},
  };
  // Short prompts, where the GEMM panels' repacking is shared by few tokens (the threshold
  // between them and the dot kernels; compare with KILN_ISA=avx2).
  for (size_t m : {8, 16, 32}) {
    for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q5_0}) {
      const std::string name =
          "prefill/" + lower_name(type) + "/" + std::to_string(m) + "tok/2048x2048";
      benchmark::RegisterBenchmark(name.c_str(), bench_matmul, type, m, 2048, 2048)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
  for (const Shape& shape : prefill_shapes) {
    const std::string name = "prefill/" + lower_name(shape.type) + "/512tok/" +
                             std::to_string(shape.rows) + "x" + std::to_string(shape.cols);
    benchmark::RegisterBenchmark(name.c_str(), bench_matmul, shape.type, 512, shape.rows,
                                 shape.cols)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_read_bandwidth = measure_read_bandwidth();
  benchmark::AddCustomContext("threads", std::to_string(pool().size()));
  benchmark::AddCustomContext("read_bandwidth_GBps", std::to_string(g_read_bandwidth / 1e9));
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
