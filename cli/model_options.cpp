#include "cli/model_options.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

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
  parser.value({"--panel-cache"}, [this](std::string_view option, std::string_view v) {
    if (v.empty()) throw std::invalid_argument(std::string(option) + ": expected a folder");
    panel_cache_dir = std::string(v);
  });
  parser.flag({"--no-panel-cache"}, [this] { panel_cache_dir.clear(); });
  parser.value({"--batch-gemm"}, [this](std::string_view option, std::string_view v) {
    batch_gemm = kernels::parse_batch_gemm(option, v);
  });
  parser.value({"--act-precision"}, [this](std::string_view option, std::string_view v) {
    act_precision = parse_act_precision(option, v);
  });
}

std::string ModelOptions::help(ModelOptionSet accepts, size_t column) {
  struct Entry {
    const char* names;
    std::vector<const char*> lines;
    bool device_only;
  };
  const Entry entries[] = {
      {"-t, --threads N", {"threads (default: physical cores)"}, false},
      {"--kv-type T", {"KV cache type: f16 (default), f32, q8_0"}, false},
      {"--device D", {"cpu (default) or cuda: the whole forward on an NVIDIA GPU"}, true},
      {"--precise",
       {"int16 activations in the CPU matmuls (two int8 planes):",
        "logits closer to float, somewhat slower; on a GPU, fp16",
        "activations in every decode matmul (no int8 kernel for a lone",
        "token), so a sequence decodes the same alone or batched"},
       false},
      {"--act-precision P", {"int8 (default) or int16 (as --precise)"}, false},
      {"--hugepage-weights",
       {"copy the weights into 2 MiB huge pages, packed at every start",
        "into the same panels as the panel cache (same speed and",
        "logits): for machines without a writable cache folder; a",
        "private copy, not shared with other processes"},
       false},
      {"--panel-cache DIR",
       {"keep the weights as pre-packed GEMM panels in a file there,",
        "memory-mapped: packed on first use (seconds, and disk space",
        "about the size of the model), mapped at once after; decode",
        "~1.2x faster on K-quants (default: $KILN_CACHE_DIR, else",
        "$XDG_CACHE_HOME/kiln, else ~/.cache/kiln)"},
       false},
      {"--no-panel-cache",
       {"no panel cache: decode reads the model's own blocks (slower;",
        "the same logits for the legacy types, the last bits of a",
        "lone K-quant token's differ: its per-row kernels round", "otherwise)"},
       false},
      {"--no-hugepage-mmap",
       {"leave the file mapping on 4 KiB pages (default: faulted in",
        "on 2 MiB pages where the kernel provides them)"},
       false},
      {"--batch-gemm M",
       {"weight types whose batched decode goes through the GEMM:",
        "auto (default: those where a lone stream loses nothing),",
        "all (the K types' twins too: slower here, for experiments),",
        "off (outputs are the same whatever the mode)"},
       false},
  };
  std::string out;
  for (const Entry& e : entries) {
    if (e.device_only && !accepts.device) continue;
    std::string head = std::string("  ") + e.names;
    head.append(head.size() + 1 < column ? column - head.size() : 1, ' ');
    for (size_t i = 0; i < e.lines.size(); ++i) {
      out += (i == 0 ? head : std::string(column, ' ')) + e.lines[i] + "\n";
    }
  }
  return out;
}

EngineOptions ModelOptions::engine_options() const {
  EngineOptions o;
  o.n_threads = threads;
  o.kv_type = kv_type;
  o.act_precision = act_precision;
  o.resident_weights = hugepage_weights;
  o.huge_page_mapping = hugepage_mmap;
  o.panel_cache_dir = panel_cache_dir;
  // A model's first start packs its panel cache: seconds for a 1B model, so say so.
  o.progress = [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
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
