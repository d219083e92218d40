// CUDA kernel benchmarks. Each case times a batch of launches between two CUDA events
// (manual time), and reports the bytes the kernel moves per second (the launcher's
// *_bytes function) and that rate as a fraction of the device-to-device copy bandwidth
// measured at start-up (bytes read + written). Without a GPU: prints "no CUDA device".
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/cuda/launch.h"
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

// Times `launches` calls of f on the default stream; seconds per call.
template <typename F>
double time_launches(F&& f, int launches) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaEventRecord(start, nullptr), "cudaEventRecord");
  for (int i = 0; i < launches; ++i) f();
  check(cudaEventRecord(stop, nullptr), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
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
                                                      cudaMemcpyDeviceToDevice, nullptr),
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

// A random (rows, cols) matrix of `type` on the device.
DeviceBuffer device_matrix(GgmlType type, size_t rows, size_t cols) {
  const size_t rb = kiln::row_bytes(type, cols);
  std::vector<std::byte> host(rows * rb);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  std::vector<float> row(cols);
  for (size_t r = 0; r < rows; ++r) {
    for (float& v : row) v = dist(rng);
    kiln::kernels::quantize_row(type, row, std::span(host).subspan(r * rb, rb));
  }
  DeviceBuffer buf(host.size(), "bench weights");
  check(cudaMemcpy(buf.data(), host.data(), host.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
  return buf;
}

// Args: type, rows, cols, m.
void BM_matmul(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const size_t rows = size_t(state.range(1)), cols = size_t(state.range(2)),
               m = size_t(state.range(3));
  const DeviceBuffer w = device_matrix(type, rows, cols);
  DeviceBuffer x(m * cols * sizeof(float), "x"), y(m * rows * sizeof(float), "y");
  check(cudaMemset(x.data(), 0, x.size()), "cudaMemset");
  const kiln::cuda::DeviceMatrix dm{type, w.data(), rows, cols};
  for (auto _ : state) {
    const double s = time_launches(
        [&] { kiln::cuda::launch_matmul(dm, x.as<float>(), m, y.as<float>(), nullptr); }, 20);
    report(state, s, kiln::cuda::matmul_bytes(dm, m));
  }
  state.SetLabel(std::string(kiln::type_name(type)) + " m=" + std::to_string(m));
}

// Args: n_heads, n_kv_heads, head_dim, n_pos (one decode query at position n_pos - 1).
void BM_attention_decode(benchmark::State& state) {
  const kiln::cuda::AttentionShape shape{size_t(state.range(0)), size_t(state.range(1)),
                                         size_t(state.range(2)), size_t(state.range(3))};
  const size_t kv = shape.n_ctx * shape.n_kv_heads * shape.head_dim;
  DeviceBuffer k(kv * 2, "k"), v(kv * 2, "v"), q(shape.n_heads * shape.head_dim * 4, "q");
  DeviceBuffer out(q.size(), "out");
  DeviceBuffer scratch(kiln::cuda::attention_split_scratch_floats(shape, 1) * 4, "scratch");
  DeviceBuffer idx(2 * sizeof(int32_t), "idx");
  const int32_t host_idx[2] = {0, int32_t(shape.n_ctx) - 1};
  check(cudaMemcpy(idx.data(), host_idx, sizeof host_idx, cudaMemcpyHostToDevice), "cudaMemcpy");
  for (DeviceBuffer* b : {&k, &v, &q}) check(cudaMemset(b->data(), 0, b->size()), "cudaMemset");
  for (auto _ : state) {
    const double s = time_launches(
        [&] {
          kiln::cuda::launch_attention_split(q.as<float>(), k.as<uint16_t>(), v.as<uint16_t>(),
                                             idx.as<int32_t>(), idx.as<int32_t>() + 1, 1, shape,
                                             scratch.as<float>(), out.as<float>(), nullptr);
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
      for (int64_t m : {1, 4, 512}) {
        benchmark::RegisterBenchmark("matmul", BM_matmul)
            ->Args({int64_t(t), s[0], s[1], m})
            ->UseManualTime()
            ->Unit(benchmark::kMicrosecond);
      }
    }
  }
  for (int64_t n_pos : {512, 4096}) {
    benchmark::RegisterBenchmark("attention_decode", BM_attention_decode)
        ->Args({24, 8, 128, n_pos})
        ->UseManualTime()
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
  g_copy_bandwidth = measure_copy_bandwidth();
  std::printf("device-to-device copy bandwidth: %.1f GB/s (read + write)\n",
              g_copy_bandwidth / 1e9);
  register_benchmarks();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
