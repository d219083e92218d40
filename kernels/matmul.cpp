#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/dot.h"
#include "kernels/matmul_rows.h"

namespace kiln::kernels {
namespace {

// Slack so the scratch can be aligned for the activation blocks (float members).
constexpr size_t kScratchAlign = 64;
// Below this many activation rows the caller quantizes them alone (a pool round trip costs
// more than quantizing a few rows).
constexpr size_t kParallelQuantizeRows = 4;

[[noreturn]] void fail(const WeightMatrix& w, const std::string& what) {
  throw std::invalid_argument("matmul: " + std::string(type_name(w.type)) + " weight (" +
                              std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                              "): " + what);
}

}  // namespace

bool has_matmul_kernel(GgmlType type) { return dot_kernel_portable(type).fn != nullptr; }

BatchGemm parse_batch_gemm(std::string_view option, std::string_view value) {
  if (value == "auto") return BatchGemm::fast;
  if (value == "all") return BatchGemm::all;
  if (value == "off") return BatchGemm::off;
  throw std::invalid_argument(std::string(option) + ": expected auto, all or off, got '" +
                              std::string(value) + "'");
}

namespace {
// The GEMM's path costs a lone token nothing: its twin is fast alone, or the weights have
// pre-packed panels (which stand in for it) and those are.
bool fast_alone(const GemmKernel& gemm, bool packed) {
  return gemm.small_fast_alone || (packed && gemm.packed_fast_alone);
}
}  // namespace

GemmPanelFn batch_panel_kernel(GgmlType type, ActPrecision precision, ActFormat dot_act, size_t m,
                               BatchGemm policy, bool packed) {
  if (policy == BatchGemm::off) return nullptr;
  const GemmKernel gemm = gemm_kernel(type, precision);
  // A panel reading another activation format than the dot kernel's would need its own
  // quantized copy of x (the int16 formats): the dot kernels serve those. Without a twin,
  // the GEMM for many rows and the dot kernels for few would round differently.
  if (gemm.act != dot_act || gemm.small == nullptr) return nullptr;
  if (policy == BatchGemm::fast && !fast_alone(gemm, packed)) return nullptr;
  return m <= kSmallMaxTokens ? gemm.small : gemm.fn;
}

size_t packed_panels_bytes(GgmlType type, size_t rows, size_t cols) {
  const GemmKernel gemm = gemm_kernel(type);
  const uint32_t block = traits(type).block_elements;
  if (gemm.pack == nullptr || cols == 0 || cols % block != 0) return 0;
  return (rows + kUnitRows - 1) / kUnitRows * gemm.packed_bytes(cols);
}

std::string packed_panels_layout(GgmlType type) {
  const GemmKernel gemm = gemm_kernel(type);
  if (gemm.pack == nullptr) return "";
  return std::string(gemm.isa) + "/v" + std::to_string(kPackedPanelsVersion);
}

std::string packed_panels_isa() {
  // Every ISA with pre-packed panels has them for Q4_K, the first type they were made for.
  const GemmKernel gemm = gemm_kernel(GgmlType::Q4_K);
  return gemm.pack != nullptr ? gemm.isa : "";
}

void pack_panels(const WeightMatrix& w, std::span<std::byte> out, ThreadPool& pool) {
  const size_t needed = packed_panels_bytes(w.type, w.rows, w.cols);
  if (needed == 0) fail(w, "no pre-packed panels for this tensor type on this CPU");
  if (out.size() < needed) {
    fail(w, "panel buffer has " + std::to_string(out.size()) + " bytes, needs " +
                std::to_string(needed));
  }
  const size_t w_row_bytes = row_bytes(w.type, w.cols);
  if (w.data.size() < w.rows * w_row_bytes) fail(w, "data is smaller than rows x cols");
  const GemmKernel gemm = gemm_kernel(w.type);
  const size_t panel_bytes = gemm.packed_bytes(w.cols);
  const size_t n_units = (w.rows + kUnitRows - 1) / kUnitRows;
  std::atomic<size_t> next{0};
  pool.run([&](int, int) {
    for (size_t u = next.fetch_add(1, std::memory_order_relaxed); u < n_units;
         u = next.fetch_add(1, std::memory_order_relaxed)) {
      const size_t r0 = u * kUnitRows;
      const int n_rows = static_cast<int>(std::min(kUnitRows, w.rows - r0));
      gemm.pack(w.cols, w.data.data() + r0 * w_row_bytes, w_row_bytes, n_rows,
                out.data() + u * panel_bytes);
    }
  });
}

GemmPackedFn packed_panel_kernel(const WeightMatrix& w, ActPrecision precision) {
  if (w.panels.empty() || precision != ActPrecision::int8) return nullptr;
  const GemmKernel gemm = gemm_kernel(w.type);
  if (gemm.packed == nullptr || gemm.act != dot_kernel(w.type).act) return nullptr;
  const size_t needed = packed_panels_bytes(w.type, w.rows, w.cols);
  if (w.panels.size() < needed) {
    fail(w, "panels have " + std::to_string(w.panels.size()) + " bytes, need " +
                std::to_string(needed));
  }
  return gemm.packed;
}

bool matmul_group_runs_like_matmul(GgmlType type, ActPrecision precision, BatchGemm policy,
                                   bool packed) {
  const DotKernel kernel = dot_kernel(type, precision);
  const GemmKernel gemm = gemm_kernel(type, precision);
  const bool matmul_gemm = gemm.fn != nullptr && gemm.act == kernel.act;
  const bool group_gemm =
      batch_panel_kernel(type, precision, kernel.act, kGemmMinTokens, policy, packed) != nullptr;
  return matmul_gemm == group_gemm;
}

RowJob row_job(const WeightMatrix& w, DotKernel dot, GemmPanelFn panel, GemmPackedFn packed) {
  RowJob j;
  j.w = w.data.data();
  j.w_row_bytes = row_bytes(w.type, w.cols);
  j.rows = w.rows;
  j.cols = w.cols;
  j.dot = dot.fn;
  j.dot_tile = dot.tile;
  j.panel = panel;
  j.packed = panel != nullptr ? packed : nullptr;
  if (j.packed != nullptr) {
    j.panels = w.panels.data();
    j.panel_bytes = gemm_kernel(w.type).packed_bytes(w.cols);
  }
  return j;
}

void run_unit(const RowJob& job, size_t unit, size_t m) {
  const size_t r0 = unit * kUnitRows;
  const size_t r1 = std::min(r0 + kUnitRows, job.rows);
  const int n_rows = static_cast<int>(r1 - r0);
  if (job.packed != nullptr) {
    job.packed(job.cols, job.panels + unit * job.panel_bytes, n_rows, job.act, job.act_stride, m,
               job.y + r0, job.rows);
    return;
  }
  if (job.panel != nullptr) {
    job.panel(job.cols, job.w + r0 * job.w_row_bytes, job.w_row_bytes, n_rows, job.act,
              job.act_stride, m, job.y + r0, job.rows);
    return;
  }
  float tile[kMaxTileTokens];
  // Tokens outer, rows inner: 16 rows of weights stay in L1/L2 while the token tiles pass.
  const auto per_call = static_cast<size_t>(job.dot_tile);
  for (size_t t0 = 0; t0 < m; t0 += per_call) {
    const int nt = static_cast<int>(std::min(per_call, m - t0));
    const std::byte* act_tile = job.act + t0 * job.act_stride;
    for (size_t r = r0; r < r1; ++r) {
      job.dot(job.cols, job.w + r * job.w_row_bytes, act_tile, job.act_stride, nt, tile);
      for (int t = 0; t < nt; ++t) job.y[(t0 + static_cast<size_t>(t)) * job.rows + r] = tile[t];
    }
  }
}

size_t matmul_scratch_bytes(GgmlType type, size_t cols, size_t m, ActPrecision precision) {
  const DotKernel kernel = dot_kernel(type, precision);
  if (kernel.fn == nullptr) {
    throw std::invalid_argument("matmul_scratch_bytes: no matmul kernel for tensor type " +
                                std::string(type_name(type)));
  }
  if (kernel.act == ActFormat::F32) return 0;
  return m * act_row_bytes(kernel.act, cols) + kScratchAlign;
}

void matmul(const WeightMatrix& w, std::span<const float> x, size_t m, std::span<float> y,
            std::span<std::byte> scratch, ThreadPool& pool, ActPrecision precision) {
  // int16: two-plane activations (Q8_act2/Q8_K2); a GEMM panel is used only where it reads
  // the same format (gemm.act == kernel.act below), else the per-row dot path.
  const DotKernel kernel = dot_kernel(w.type, precision);
  if (kernel.fn == nullptr) fail(w, "no matmul kernel for this tensor type");
  const uint32_t block = traits(w.type).block_elements;
  if (w.cols == 0 || w.cols % block != 0) {
    fail(w, "cols must be a positive multiple of " + std::to_string(block));
  }
  const size_t w_row_bytes = row_bytes(w.type, w.cols);
  if (w.data.size() < w.rows * w_row_bytes) {
    fail(w, "data has " + std::to_string(w.data.size()) + " bytes, needs " +
                std::to_string(w.rows * w_row_bytes));
  }
  if (x.size() < m * w.cols) {
    fail(w, "x has " + std::to_string(x.size()) +
                " elements, needs m * cols = " + std::to_string(m * w.cols));
  }
  if (y.size() < m * w.rows) {
    fail(w, "y has " + std::to_string(y.size()) +
                " elements, needs m * rows = " + std::to_string(m * w.rows));
  }
  if (m == 0 || w.rows == 0) return;

  // Activation rows in the kernel's format.
  const std::byte* act = nullptr;
  size_t act_stride = 0;
  if (kernel.act == ActFormat::F32) {
    act = reinterpret_cast<const std::byte*>(x.data());
    act_stride = w.cols * sizeof(float);
  } else {
    const size_t needed = matmul_scratch_bytes(w.type, w.cols, m, precision);
    if (scratch.size() < needed) {
      fail(w, "scratch has " + std::to_string(scratch.size()) + " bytes, needs " +
                  std::to_string(needed));
    }
    const auto address = reinterpret_cast<uintptr_t>(scratch.data());
    const size_t pad = (kScratchAlign - address % kScratchAlign) % kScratchAlign;
    std::byte* base = scratch.data() + pad;
    act_stride = act_row_bytes(kernel.act, w.cols);
    const auto quantize_rows = [&](size_t begin, size_t end) {
      for (size_t t = begin; t < end; ++t) {
        quantize_act_row(kernel.act, x.subspan(t * w.cols, w.cols),
                         {base + t * act_stride, act_stride});
      }
    };
    if (m < kParallelQuantizeRows || pool.size() == 1) {
      quantize_rows(0, m);
    } else {
      pool.run([&](int ti, int nt) {
        quantize_rows(m * static_cast<size_t>(ti) / static_cast<size_t>(nt),
                      m * static_cast<size_t>(ti + 1) / static_cast<size_t>(nt));
      });
    }
    act = base;
  }

  // The fastest path for m, whatever its rounding: where the twin beats the dot kernels,
  // it for a few rows and the GEMM beyond; else the GEMM from kGemmMinTokens rows.
  const GemmKernel gemm = gemm_kernel(w.type, precision);
  const GemmPackedFn packed = packed_panel_kernel(w, precision);
  GemmPanelFn panel = nullptr;
  if (gemm.act == kernel.act && fast_alone(gemm, packed != nullptr)) {
    panel = m <= kSmallMaxTokens ? gemm.small : gemm.fn;
  } else if (gemm.act == kernel.act && m >= kGemmMinTokens) {
    panel = gemm.fn;
  }
  RowJob job = row_job(w, kernel, panel, packed);
  job.act = act;
  job.act_stride = act_stride;
  job.y = y.data();
  // Units are handed out in chunks from a shared counter rather than split statically: when
  // another process takes a core away from one of our threads, the others take over its
  // share instead of waiting for it. About 8 chunks per thread keeps the counter traffic
  // negligible.
  const size_t n_units = (w.rows + kUnitRows - 1) / kUnitRows;
  const size_t target_chunks = static_cast<size_t>(pool.size()) * 8;
  const size_t units_per_chunk = std::max<size_t>(1, n_units / target_chunks);
  const size_t n_chunks = (n_units + units_per_chunk - 1) / units_per_chunk;
  std::atomic<size_t> next_chunk{0};
  pool.run([&](int, int) {
    for (size_t c = next_chunk.fetch_add(1, std::memory_order_relaxed); c < n_chunks;
         c = next_chunk.fetch_add(1, std::memory_order_relaxed)) {
      const size_t end = std::min(n_units, (c + 1) * units_per_chunk);
      for (size_t u = c * units_per_chunk; u < end; ++u) run_unit(job, u, m);
    }
  });
}

}  // namespace kiln::kernels
