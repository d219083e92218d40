#include "cli/model_options.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "engine/kv_cache.h"

namespace kiln::cli {

void OptionParser::flag(std::vector<std::string_view> names, bool& target) {
  options_.push_back({std::move(names), false, [&target](auto, auto) { target = true; }});
}

void OptionParser::flag(std::vector<std::string_view> names, std::function<void()> on) {
  options_.push_back({std::move(names), false, [on = std::move(on)](auto, auto) { on(); }});
}

void OptionParser::text(std::vector<std::string_view> names, std::string& target) {
  value(std::move(names), [&target](auto, std::string_view v) { target = v; });
}

void OptionParser::value(std::vector<std::string_view> names, ValueHandler on) {
  options_.push_back({std::move(names), true, std::move(on)});
}

bool OptionParser::parse(Args args) const {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view a = args[i];
    if (is_help_flag(a)) {
      std::fwrite(usage_.data(), 1, usage_.size(), stdout);
      return false;
    }
    const auto match = std::find_if(options_.begin(), options_.end(), [&](const Option& o) {
      return std::find(o.names.begin(), o.names.end(), a) != o.names.end();
    });
    if (match == options_.end()) {
      throw std::invalid_argument("unknown option '" + std::string(a) + "' (see kiln " + command_ +
                                  " --help)");
    }
    match->on(a, match->takes_value ? option_value(args, i) : std::string_view());
  }
  return true;
}

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
