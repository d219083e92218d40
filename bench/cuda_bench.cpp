// CUDA kernel benchmarks. Each case times a batch of launches between two CUDA events
// (manual time), and reports the bytes the kernel moves per second (the launcher's
// *_bytes function) and that rate as a fraction of the device-to-device copy bandwidth
// measured at start-up (bytes read + written). Without a GPU: prints "no CUDA device".
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/cuda/launch.h"
#include "kernels/f16.h"
#include "kernels/quantize.h"

namespace {

using kiln::GgmlType;
using kiln::cuda::DeviceBuffer;

double g_copy_bandwidth = 0;  // bytes/s

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

cudaStream_t g_stream = nullptr;  // every timed launch goes here (capturable, unlike stream 0)

// Seconds per call of f (which launches on g_stream): the `launches` calls are captured in
// a CUDA graph, as the engine runs a decode step, and the graph's second replay is timed
// with events, so the figure is device time and not the host's launch rate (on the VMs
// here a plain launch costs the host ~10 us, more than a small matrix takes).
template <typename F>
double time_launches(F&& f, int launches) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  check(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  for (int i = 0; i < launches; ++i) f();
  check(cudaStreamEndCapture(g_stream, &graph), "cudaStreamEndCapture");
  check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaGraphLaunch(exec, g_stream), "cudaGraphLaunch");  // warm-up
  check(cudaEventRecord(start, g_stream), "cudaEventRecord");
  check(cudaGraphLaunch(exec, g_stream), "cudaGraphLaunch");
  check(cudaEventRecord(stop, g_stream), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  (void)cudaGraphExecDestroy(exec);
  (void)cudaGraphDestroy(graph);
  return double(ms) * 1e-3 / launches;
}

double measure_copy_bandwidth() {
  const size_t bytes = size_t{256} << 20;
  DeviceBuffer a(bytes, "bandwidth"), b(bytes, "bandwidth");
  check(cudaMemset(a.data(), 1, bytes), "cudaMemset");
  double best = 1e30;
  for (int pass = 0; pass < 5; ++pass) {
    best = std::min(best, time_launches(
                              [&] {
                                check(cudaMemcpyAsync(b.data(), a.data(), bytes,
                                                      cudaMemcpyDeviceToDevice, g_stream),
                                      "cudaMemcpyAsync");
                              },
                              2));
  }
  return 2.0 * double(bytes) / best;
}

void report(benchmark::State& state, double seconds, size_t bytes) {
  state.SetIterationTime(seconds);
  state.counters["bytes_per_s"] = double(bytes) / seconds;
  state.counters["bandwidth_fraction"] = double(bytes) / seconds / g_copy_bandwidth;
}

// Random (rows, cols) matrices of `type` on the device: enough copies that one pass over
// them is several times the L2 cache (50 MB on an H100), so a timed launch reads its weights
// from device memory as in a forward pass, not from the L2 a previous launch filled. Built
// once per shape (quantizing on the host is slow) and rotated through by the timed loop.
const std::vector<DeviceBuffer>& device_matrices(GgmlType type, size_t rows, size_t cols) {
  static std::map<std::tuple<GgmlType, size_t, size_t>, std::vector<DeviceBuffer>> cache;
  auto& copies = cache[{type, rows, cols}];
  if (!copies.empty()) return copies;
  const size_t rb = kiln::row_bytes(type, cols);
  std::vector<std::byte> host(rows * rb);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  std::vector<float> row(cols);
  for (size_t r = 0; r < rows; ++r) {
    for (float& v : row) v = dist(rng);
    kiln::kernels::quantize_row(type, row, std::span(host).subspan(r * rb, rb));
  }
  const size_t n_copies = std::clamp<size_t>((size_t{256} << 20) / host.size(), 1, 64);
  for (size_t i = 0; i < n_copies; ++i) {
    copies.emplace_back(host.size(), "bench weights");
    check(cudaMemcpy(copies.back().data(), host.data(), host.size(), cudaMemcpyHostToDevice),
          "cudaMemcpy");
  }
  return copies;
}

// n normal random values on the device, as `convert` stores them (never zeros: they hide
// unwritten or misread data).
template <typename T, typename Convert>
DeviceBuffer device_random(size_t n, uint32_t seed, Convert convert, const char* what) {
  std::vector<T> host(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  for (T& v : host) v = convert(dist(rng));
  DeviceBuffer buf(n * sizeof(T), what);
  check(cudaMemcpy(buf.data(), host.data(), buf.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
  return buf;
}
DeviceBuffer device_floats(size_t n, uint32_t seed) {
  return device_random<float>(
      n, seed, [](float f) { return f; }, "bench activations");
}
DeviceBuffer device_halves(size_t n, uint32_t seed) {
  return device_random<uint16_t>(n, seed, kiln::kernels::fp32_to_fp16, "bench cache");
}

// Args: type, rows, cols, m, path (MatmulPath).
void BM_matmul(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const size_t rows = size_t(state.range(1)), cols = size_t(state.range(2)),
               m = size_t(state.range(3));
  const auto path = static_cast<kiln::cuda::MatmulPath>(state.range(4));
  const auto& w = device_matrices(type, rows, cols);
  const DeviceBuffer x = device_floats(m * cols, 2);
  DeviceBuffer y(m * rows * sizeof(float), "y");
  const DeviceBuffer ws(
      m > kiln::cuda::kMatVecMaxTokens ? kiln::cuda::gemm_workspace_bytes(m, cols, rows * cols) : 0,
      "the GEMM workspace");
  size_t next = 0;
  for (auto _ : state) {
    const double s = time_launches(
        [&] {
          const kiln::cuda::DeviceMatrix dm{type, w[next].data(), rows, cols};
          next = (next + 1) % w.size();
          kiln::cuda::launch_matmul(dm, x.as<float>(), m, y.as<float>(), {ws.data(), ws.size()},
                                    g_stream, path);
        },
        40);
    report(state, s, kiln::cuda::matmul_bytes({type, nullptr, rows, cols}, m));
    state.counters["tflops"] = 2.0 * double(rows * cols * m) / s / 1e12;
  }
  state.SetLabel(std::string(kiln::type_name(type)) + " m=" + std::to_string(m));
}

// Args: n_heads, n_kv_heads, head_dim, n_pos (one decode query at position n_pos - 1).
void BM_attention_decode(benchmark::State& state) {
  const kiln::cuda::AttentionShape shape{size_t(state.range(0)), size_t(state.range(1)),
                                         size_t(state.range(2)), size_t(state.range(3))};
  const size_t kv = shape.n_ctx * shape.n_kv_heads * shape.head_dim;
  const DeviceBuffer k = device_halves(kv, 3), v = device_halves(kv, 4);
  const DeviceBuffer q = device_floats(shape.n_heads * shape.head_dim, 5);
  DeviceBuffer out(q.size(), "out");
  DeviceBuffer scratch(kiln::cuda::attention_split_scratch_floats(shape, 1) * 4, "scratch");
  DeviceBuffer idx(2 * sizeof(int32_t), "idx");
  const int32_t host_idx[2] = {0, int32_t(shape.n_ctx) - 1};
  check(cudaMemcpy(idx.data(), host_idx, sizeof host_idx, cudaMemcpyHostToDevice), "cudaMemcpy");
  for (auto _ : state) {
    const double s = time_launches(
        [&] {
          kiln::cuda::launch_attention_split(q.as<float>(), k.as<uint16_t>(), v.as<uint16_t>(),
                                             idx.as<int32_t>(), idx.as<int32_t>() + 1, 1, shape,
                                             scratch.as<float>(), out.as<float>(), g_stream);
        },
        20);
    report(state, s, kiln::cuda::attention_bytes(shape, 1, shape.n_ctx));
  }
}

void register_benchmarks() {
  const GgmlType types[] = {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::Q5_0,
                            GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::F16};
  // Llama-3.2-3B-like shapes: attn_q/o 3072x3072, ffn 8192x3072 and 3072x8192.
  const int64_t shapes[][2] = {{3072, 3072}, {8192, 3072}, {3072, 8192}};
  for (GgmlType t : types) {
    for (const auto& s : shapes) {
      for (int64_t m : {1, 4, 8, 16, 512}) {
        // Path 0 (auto) for every m; for decode sizes also the other matrix-vector kernels
        // (1 mma, 3 float, 4 int8 where it applies), for prefill the tile kernel (5) that the
        // workspace GEMM replaced.
        using kiln::cuda::MatmulPath;
        for (auto path : {MatmulPath::kAuto, MatmulPath::kMatVec, MatmulPath::kMatVecFloat,
                          MatmulPath::kMatVecInt8, MatmulPath::kTensorCoreTiles}) {
          const bool decode = m <= int64_t(kiln::cuda::kMatVecMaxTokens);
          if (path == MatmulPath::kMatVec || path == MatmulPath::kMatVecFloat) {
            if (!decode) continue;
          } else if (path == MatmulPath::kMatVecInt8) {
            if (!kiln::cuda::has_int8_matvec(t) ||
                m > int64_t(kiln::cuda::kMatVecInt8MaxTokens)) {
              continue;
            }
          } else if (path == MatmulPath::kTensorCoreTiles) {
            if (decode) continue;
          }
          benchmark::RegisterBenchmark("matmul", BM_matmul)
              ->Args({int64_t(t), s[0], s[1], m, int64_t(path)})
              ->UseManualTime()
              ->Iterations(3)
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
  for (int64_t n_pos : {512, 4096}) {
    benchmark::RegisterBenchmark("attention_decode", BM_attention_decode)
        ->Args({24, 8, 128, n_pos})
        ->UseManualTime()
        ->Iterations(3)
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (kiln::cuda::cuda_device_count() == 0) {
    std::printf("%s: nothing to benchmark\n", kiln::cuda::cuda_device_description().c_str());
    return 0;
  }
  std::printf("device: %s\n", kiln::cuda::cuda_device_description().c_str());
  check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  g_copy_bandwidth = measure_copy_bandwidth();
  std::printf("device-to-device copy bandwidth: %.1f GB/s (read + write)\n",
              g_copy_bandwidth / 1e9);
  register_benchmarks();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
