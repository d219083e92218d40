// Throughput of the reference quantizers: quantize/<type>/<row length>, items = elements.
// Single-threaded; `kiln quantize` splits rows over threads, so its rate is about this
// times the thread count (plus dequantizing the input).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "gguf/ggml_types.h"
#include "kernels/quantize.h"

namespace {

void quantize_bench(benchmark::State& state, kiln::GgmlType type) {
  const auto n = static_cast<size_t>(state.range(0));
  std::mt19937 rng(42);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  std::vector<std::byte> out(kiln::row_bytes(type, n));
  for (auto _ : state) {
    kiln::kernels::quantize_row(type, x, out);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * sizeof(float)));
}

#define KILN_QUANTIZE_BENCH(TYPE, NAME) \
  BENCHMARK_CAPTURE(quantize_bench, TYPE, kiln::GgmlType::TYPE)->Name("quantize/" NAME)->Arg(4096)

KILN_QUANTIZE_BENCH(F16, "f16");
KILN_QUANTIZE_BENCH(Q8_0, "q8_0");
KILN_QUANTIZE_BENCH(Q4_0, "q4_0");
KILN_QUANTIZE_BENCH(Q4_1, "q4_1");
KILN_QUANTIZE_BENCH(Q5_0, "q5_0");
KILN_QUANTIZE_BENCH(Q5_1, "q5_1");
KILN_QUANTIZE_BENCH(Q4_K, "q4_K");
KILN_QUANTIZE_BENCH(Q5_K, "q5_K");
KILN_QUANTIZE_BENCH(Q6_K, "q6_K");

}  // namespace

BENCHMARK_MAIN();
