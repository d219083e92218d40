// The model options the subcommands that load and run a model take (-m, -t, -c, --kv-type,
// --device, ...), declared once, so the commands agree on spellings, ranges and error
// messages.
#pragma once

#include <climits>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "engine/cuda/any_engine.h"
#include "engine/engine.h"
#include "gguf/ggml_types.h"
#include "kernels/dot.h"

namespace kiln::cli {

// Which of the model options a command takes (the model path, threads and
// --kv-type always).
struct ModelOptionSet {
  bool ctx_size = true;
  bool device = true;
};

struct ModelOptions {
  std::string model_path;                // -m, --model (required)
  int threads = 0;                       // -t, --threads; 0 = physical cores
  size_t n_ctx = 0;                      // -c, --ctx-size; 0 = the command's default
  GgmlType kv_type = GgmlType::F16;      // --kv-type f16|f32|q8_0
  DeviceKind device = DeviceKind::kCpu;  // --device cpu|cuda
  // --precise, --act-precision int8|int16: how the CPU matmuls quantize activations.
  kernels::ActPrecision act_precision = kernels::ActPrecision::int8;
  // --hugepage-weights: copy the weights into huge-page memory (faster decode, a second
  // copy of the weights in memory) instead of reading the memory-mapped file.
  bool hugepage_weights = false;
  // --no-hugepage-mmap clears it: EngineOptions::huge_page_mapping.
  bool hugepage_mmap = true;
  // --panel-cache DIR, --no-panel-cache: EngineOptions::panel_cache_dir (default:
  // default_panel_cache_dir(); "" after --no-panel-cache).
  std::string panel_cache_dir = default_panel_cache_dir().string();
  // --batch-gemm auto|all|off: EngineOptions::batch_gemm.
  kernels::BatchGemm batch_gemm = kernels::BatchGemm::fast;

  void add_to(OptionParser& parser, ModelOptionSet accepts = {});
  // The help lines of what add_to() registers, except -m and -c (each command words those
  // itself): one entry per option, descriptions starting at `column`, so every command
  // describes the shared options in the same words.
  static std::string help(ModelOptionSet accepts, size_t column);
  // The engine options these set (threads, KV type, activations, how the weights are held,
  // batch GEMM); the command adds context size, sequences and batch.
  EngineOptions engine_options() const;
  // Throws "-m MODEL.gguf is required" when no model was given.
  void require_model() const;
};

// "int8" or "int16" (as for --act-precision); anything else throws std::invalid_argument
// naming the option.
kernels::ActPrecision parse_act_precision(std::string_view option, std::string_view value);

}  // namespace kiln::cli
