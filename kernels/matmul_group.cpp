// matmul_group (declared in kernels/matmul.h): several matmuls that share their input, as
// one pool dispatch. Kept in its own file so it can change without touching matmul().
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/dot.h"
#include "kernels/matmul.h"
#include "kernels/matmul_rows.h"

namespace kiln::kernels {
namespace {

// Each activation format's rows start 64-byte aligned in the scratch.
constexpr size_t kAlign = 64;
constexpr size_t kFormats = 5;  // values of ActFormat
// Below this many activation rows the caller quantizes them alone (a pool round trip costs
// more than quantizing a few rows).
constexpr size_t kParallelQuantizeRows = 4;
// Guided scheduling: a claim takes 1/(kClaimDivisor * threads) of the units still left (at
// least one). The first claims are large (few atomic operations), the last ones a single
// unit, so threads run out of work within about one unit of each other; and no claim holds
// so much work that a thread descheduled by the OS keeps the others waiting for long.
// 1: with 2 threads, halves, then quarters, ... Each claim costs a contended atomic and
// restarts the claimer's memory stream somewhere else; SmolLM2's matrices are 36-96 units of
// 4-16 KiB, and 1/8 claims (kClaimDivisor 4) made its decode 20% slower (260-267 vs 320-336
// tokens/s, alternated; TinyLlama 2-3% slower; decode batches of 8 the same).
constexpr size_t kClaimDivisor = 1;

[[noreturn]] void fail(const WeightMatrix& w, const std::string& what) {
  throw std::invalid_argument("matmul_group: " + std::string(type_name(w.type)) + " weight (" +
                              std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                              "): " + what);
}

size_t format_index(ActFormat f) { return static_cast<size_t>(f); }

// Scratch bytes of each activation format used by `kernels` (0 for F32 and unused ones).
std::array<size_t, kFormats> format_bytes(std::span<const DotKernel> kernels, size_t cols,
                                          size_t m) {
  std::array<size_t, kFormats> bytes{};
  for (const DotKernel& k : kernels) {
    if (k.act == ActFormat::F32) continue;
    const size_t region = (m * act_row_bytes(k.act, cols) + kAlign - 1) / kAlign * kAlign;
    bytes[format_index(k.act)] = region;
  }
  return bytes;
}

size_t total_scratch(const std::array<size_t, kFormats>& bytes) {
  size_t total = 0;
  for (size_t b : bytes) total += b;
  return total == 0 ? 0 : total + kAlign;  // slack to align the start
}

// One target, ready to run, and where its units start in the group's unit list.
struct Job {
  RowJob rows;
  size_t first_unit = 0;
};

}  // namespace

size_t matmul_group_scratch_bytes(std::span<const GgmlType> types, size_t cols, size_t m,
                                  ActPrecision precision) {
  std::array<DotKernel, kMaxGroupTargets> kernels{};
  if (types.size() > kMaxGroupTargets) {
    throw std::invalid_argument("matmul_group_scratch_bytes: " + std::to_string(types.size()) +
                                " weights, at most " + std::to_string(kMaxGroupTargets));
  }
  for (size_t i = 0; i < types.size(); ++i) {
    kernels[i] = dot_kernel(types[i], precision);
    if (kernels[i].fn == nullptr) {
      throw std::invalid_argument("matmul_group_scratch_bytes: no matmul kernel for tensor type " +
                                  std::string(type_name(types[i])));
    }
  }
  return total_scratch(format_bytes({kernels.data(), types.size()}, cols, m));
}

void matmul_group(std::span<const MatmulTarget> targets, std::span<const float> x, size_t m,
                  std::span<std::byte> scratch, ThreadPool& pool, ActPrecision precision,
                  BatchGemm batch_gemm) {
  if (targets.empty()) return;
  if (targets.size() > kMaxGroupTargets) {
    throw std::invalid_argument("matmul_group: " + std::to_string(targets.size()) +
                                " weights, at most " + std::to_string(kMaxGroupTargets));
  }
  const size_t cols = targets[0].w.cols;

  // Validate everything before touching any output.
  std::array<DotKernel, kMaxGroupTargets> kernels{};
  for (size_t i = 0; i < targets.size(); ++i) {
    const WeightMatrix& w = targets[i].w;
    kernels[i] = dot_kernel(w.type, precision);
    if (kernels[i].fn == nullptr) fail(w, "no matmul kernel for this tensor type");
    if (w.cols != cols) {
      fail(w, "cols differ within the group (the first weight has " + std::to_string(cols) + ")");
    }
    const uint32_t block = traits(w.type).block_elements;
    if (w.cols == 0 || w.cols % block != 0) {
      fail(w, "cols must be a positive multiple of " + std::to_string(block));
    }
    const size_t needed = w.rows * row_bytes(w.type, w.cols);
    if (w.data.size() < needed) {
      fail(w,
           "data has " + std::to_string(w.data.size()) + " bytes, needs " + std::to_string(needed));
    }
    if (targets[i].y.size() < m * w.rows) {
      fail(w, "y has " + std::to_string(targets[i].y.size()) +
                  " elements, needs m * rows = " + std::to_string(m * w.rows));
    }
  }
  if (x.size() < m * cols) {
    fail(targets[0].w, "x has " + std::to_string(x.size()) +
                           " elements, needs m * cols = " + std::to_string(m * cols));
  }
  const auto region_bytes = format_bytes({kernels.data(), targets.size()}, cols, m);
  const size_t needed_scratch = total_scratch(region_bytes);
  if (scratch.size() < needed_scratch) {
    fail(targets[0].w, "scratch has " + std::to_string(scratch.size()) + " bytes, needs " +
                           std::to_string(needed_scratch));
  }
  if (m == 0) return;

  // Each activation format the group needs, quantized once into its own scratch region.
  std::array<std::byte*, kFormats> region{};
  size_t n_regions = 0;
  {
    const auto address = reinterpret_cast<uintptr_t>(scratch.data());
    std::byte* next = scratch.data() + (kAlign - address % kAlign) % kAlign;
    for (size_t f = 0; f < kFormats; ++f) {
      if (region_bytes[f] == 0) continue;
      region[f] = next;
      next += region_bytes[f];
      ++n_regions;
    }
  }
  const auto quantize_rows = [&](size_t begin, size_t end) {
    for (size_t f = 0; f < kFormats; ++f) {
      if (region[f] == nullptr) continue;
      const auto format = static_cast<ActFormat>(f);
      const size_t stride = act_row_bytes(format, cols);
      for (size_t t = begin; t < end; ++t) {
        quantize_act_row(format, x.subspan(t * cols, cols), {region[f] + t * stride, stride});
      }
    }
  };
  if (n_regions > 0) {
    if (m < kParallelQuantizeRows || pool.size() == 1) {
      quantize_rows(0, m);
    } else {
      pool.run([&](int ti, int nt) {
        quantize_rows(m * static_cast<size_t>(ti) / static_cast<size_t>(nt),
                      m * static_cast<size_t>(ti + 1) / static_cast<size_t>(nt));
      });
    }
  }

  // The units of all targets form one list: target 0's units, then target 1's, ...
  std::array<Job, kMaxGroupTargets> jobs{};
  size_t n_units = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    const WeightMatrix& w = targets[i].w;
    const GemmPackedFn packed = packed_panel_kernel(w, precision);
    jobs[i].rows = row_job(
        w, kernels[i],
        batch_panel_kernel(w.type, precision, kernels[i].act, m, batch_gemm, packed != nullptr),
        packed);
    RowJob& j = jobs[i].rows;
    if (kernels[i].act == ActFormat::F32) {
      j.act = reinterpret_cast<const std::byte*>(x.data());
      j.act_stride = cols * sizeof(float);
    } else {
      j.act = region[format_index(kernels[i].act)];
      j.act_stride = act_row_bytes(kernels[i].act, cols);
    }
    j.y = targets[i].y.data();
    jobs[i].first_unit = n_units;
    n_units += (w.rows + kUnitRows - 1) / kUnitRows;
  }
  if (n_units == 0) return;
  const size_t n_jobs = targets.size();
  const size_t divisor = kClaimDivisor * static_cast<size_t>(pool.size());

  std::atomic<size_t> next_unit{0};
  pool.run([&](int, int) {
    size_t begin = next_unit.load(std::memory_order_relaxed);
    for (;;) {
      if (begin >= n_units) return;
      const size_t count = std::max<size_t>(1, (n_units - begin) / divisor);
      if (!next_unit.compare_exchange_weak(begin, begin + count, std::memory_order_relaxed)) {
        continue;  // begin now holds the current value
      }
      size_t job = 0;
      for (size_t u = begin; u < begin + count; ++u) {
        while (job + 1 < n_jobs && u >= jobs[job + 1].first_unit) ++job;
        run_unit(jobs[job].rows, u - jobs[job].first_unit, m);
      }
      begin = next_unit.load(std::memory_order_relaxed);
    }
  });
}

}  // namespace kiln::kernels
