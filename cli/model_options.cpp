#include "cli/model_options.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "engine/kv_cache.h"

namespace kiln::cli {

void ModelOptions::add_to(OptionParser& parser, ModelOptionSet accepts) {
  parser.text({"-m", "--model"}, model_path);
  parser.integer({"-t", "--threads"}, threads, 1, 1024);
  if (accepts.ctx_size) parser.integer({"-c", "--ctx-size"}, n_ctx, 1, 1 << 24);
  parser.value({"--kv-type"},
               [this](auto, std::string_view v) { kv_type = parse_kv_cache_type(v); });
  if (accepts.device) {
    parser.value({"--device"}, [this](auto, std::string_view v) { device = parse_device(v); });
  }
  parser.flag({"--precise"}, [this] { act_precision = kernels::ActPrecision::int16; });
  parser.flag({"--hugepage-weights"}, [this] { hugepage_weights = true; });
  parser.flag({"--no-hugepage-mmap"}, [this] { hugepage_mmap = false; });
  parser.value({"--batch-gemm"}, [this](std::string_view option, std::string_view v) {
    batch_gemm = kernels::parse_batch_gemm(option, v);
  });
  parser.value({"--act-precision"}, [this](std::string_view option, std::string_view v) {
    act_precision = parse_act_precision(option, v);
  });
}

EngineOptions ModelOptions::engine_options() const {
  EngineOptions o;
  o.n_threads = threads;
  o.kv_type = kv_type;
  o.act_precision = act_precision;
  o.resident_weights = hugepage_weights;
  o.huge_page_mapping = hugepage_mmap;
  o.batch_gemm = batch_gemm;
  return o;
}

kernels::ActPrecision parse_act_precision(std::string_view option, std::string_view value) {
  if (value == "int8") return kernels::ActPrecision::int8;
  if (value == "int16") return kernels::ActPrecision::int16;
  throw std::invalid_argument(std::string(option) + ": expected int8 or int16, got '" +
                              std::string(value) + "'");
}

void ModelOptions::require_model() const {
  if (model_path.empty()) throw std::invalid_argument("-m MODEL.gguf is required");
}

}  // namespace kiln::cli
