// kiln quantize: rewrites a GGUF model with its weight matrices in another type.
//
// Which type each tensor gets follows llama.cpp's llama-quantize (so a "Q4_K_M" from kiln
// is what people expect a Q4_K_M to be): 2-D weight matrices take the file type's default,
// with the usual exceptions (output matrix Q6_K, attn_v/ffn_down of some layers one step
// up), and a row length the type's block does not divide falls back to a 32-element type.
// Norms, biases and other 1-D tensors are copied unchanged.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "kernels/quantize.h"
#include "kernels/quants.h"
#include "kernels/thread_pool.h"

namespace kiln::cli {
namespace {

constexpr const char* kUsage = R"(usage: kiln quantize IN.gguf OUT.gguf TYPE [-t N] [--pure]

Writes a copy of IN.gguf with its weight matrices converted to TYPE. Metadata is
copied and general.file_type is set. Any input type kiln can dequantize works
(F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS).

TYPE (llama.cpp's file types; tensor choices follow llama-quantize):
  Q4_K_M   Q4_K; Q6_K for output.weight and for attn_v / ffn_down of the
           first and last 1/8 of the layers and every third layer between
  Q4_K_S   Q4_K; Q5_K for attn_v of layers 0-3 and ffn_down of the first 1/8
  Q5_K_M   Q5_K; Q6_K where Q4_K_M uses Q6_K
  Q5_K_S   Q5_K; Q6_K for output.weight
  Q6_K     Q6_K everywhere
  Q8_0     Q8_0 everywhere
  Q4_0, Q4_1, Q5_0, Q5_1   the legacy 32-element types (output.weight Q6_K)
  F16, BF16   plain conversion of every weight matrix

Rows whose length is not a multiple of 256 cannot hold K-type blocks; those
tensors fall back as llama.cpp does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0.

  -t N     worker threads (default: physical cores)
  --pure   no per-tensor mixture: every weight matrix gets TYPE's default type
)";

// A llama.cpp file type: the number stored in general.file_type and the type most
// weight matrices get.
struct FileType {
  const char* name;
  uint32_t ftype;
  GgmlType base;
};

constexpr FileType kFileTypes[] = {
    {"F16", 1, GgmlType::F16},      {"BF16", 32, GgmlType::BF16},   {"Q8_0", 7, GgmlType::Q8_0},
    {"Q4_0", 2, GgmlType::Q4_0},    {"Q4_1", 3, GgmlType::Q4_1},    {"Q5_0", 8, GgmlType::Q5_0},
    {"Q5_1", 9, GgmlType::Q5_1},    {"Q4_K_S", 14, GgmlType::Q4_K}, {"Q4_K_M", 15, GgmlType::Q4_K},
    {"Q5_K_S", 16, GgmlType::Q5_K}, {"Q5_K_M", 17, GgmlType::Q5_K}, {"Q6_K", 18, GgmlType::Q6_K},
};

const FileType& parse_file_type(std::string_view text) {
  std::string upper(text);
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  // Q4_K and Q5_K alone mean the _M mixture, as in llama-quantize.
  if (upper == "Q4_K") upper = "Q4_K_M";
  if (upper == "Q5_K") upper = "Q5_K_M";
  for (const auto& ft : kFileTypes) {
    if (upper == ft.name) return ft;
  }
  std::string known;
  for (const auto& ft : kFileTypes) known += std::string(known.empty() ? "" : ", ") + ft.name;
  throw std::invalid_argument("unknown TYPE '" + std::string(text) + "' (known: " + known + ")");
}

bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

// Layer index from a name such as "blk.12.ffn_down.weight"; nullopt for non-layer tensors.
std::optional<int> layer_of(std::string_view name) {
  if (!name.starts_with("blk.")) return std::nullopt;
  int layer = 0;
  size_t i = 4;
  if (i >= name.size() || !std::isdigit(static_cast<unsigned char>(name[i]))) return std::nullopt;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])); ++i) {
    layer = layer * 10 + (name[i] - '0');
  }
  return layer;
}

// Weights the mixture leaves alone even though they are matrices: norms, small
// embeddings and gates llama-quantize also keeps as they are.
bool is_quantizable(const gguf::TensorInfo& t) {
  const std::string_view name = t.name;
  if (!name.ends_with("weight") || t.n_dims < 2) return false;
  for (const char* keep : {"_norm.weight", "ffn_gate_inp.weight", "position_embd.weight",
                           "token_types.weight", "ssm_conv1d.weight", "attn_rel_b.weight"}) {
    if (contains(name, keep)) return false;
  }
  return true;
}

// The first and last eighth of the layers and every third layer between get more bits.
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

struct ModelFacts {
  std::string arch;
  int n_layer = 0;
  int n_attention_wv = 0;
  int n_expert = 0;
  bool has_output = false;
};

ModelFacts model_facts(const gguf::File& in) {
  ModelFacts m;
  m.arch = std::string(in.architecture());
  if (!m.arch.empty()) {
    m.n_layer = static_cast<int>(in.get_uint_opt(m.arch + ".block_count").value_or(0));
    m.n_expert = static_cast<int>(in.get_uint_opt(m.arch + ".expert_count").value_or(0));
  }
  for (const auto& t : in.tensors()) {
    if (contains(t.name, "attn_v.weight") || contains(t.name, "attn_qkv.weight") ||
        contains(t.name, "attn_kv_b.weight")) {
      ++m.n_attention_wv;
    } else if (t.name == "output.weight") {
      m.has_output = true;
    }
  }
  return m;
}

// The K type's fallback when a row is not a multiple of 256 (llama.cpp's choice), and F16
// when even 32 does not divide the row.
GgmlType fallback_type(GgmlType type, uint64_t row_length) {
  GgmlType out = GgmlType::F16;
  switch (type) {
    case GgmlType::Q4_K:
      out = GgmlType::Q5_0;
      break;
    case GgmlType::Q5_K:
      out = GgmlType::Q5_1;
      break;
    case GgmlType::Q6_K:
      out = GgmlType::Q8_0;
      break;
    default:
      break;
  }
  return row_length % traits(out).block_elements == 0 ? out : GgmlType::F16;
}

// llama.cpp's per-tensor choice (llama_tensor_get_type) for the file types we offer.
GgmlType mixture_type(const gguf::TensorInfo& t, const FileType& ft, const ModelFacts& m) {
  const std::string_view name = t.name;
  const int layer = layer_of(name).value_or(0);
  const bool q4_k_m = ft.ftype == 15, q4_k_s = ft.ftype == 14, q5_k_m = ft.ftype == 17;
  GgmlType type = ft.base;
  if (name == "output.weight" || (!m.has_output && name == "token_embd.weight")) {
    // Tied embeddings: the token embedding is also the output matrix.
    if (m.arch == "falcon" || t.ne[0] % traits(type).block_elements != 0) {
      type = GgmlType::Q8_0;
    } else if (type != GgmlType::Q8_0) {
      type = GgmlType::Q6_K;
    }
  } else if (contains(name, "attn_v.weight")) {
    if ((q4_k_m || q5_k_m) && use_more_bits(layer, m.n_attention_wv)) {
      type = GgmlType::Q6_K;
    } else if (q4_k_s && layer < 4) {
      type = GgmlType::Q5_K;
    }
    if (m.n_expert == 8) type = GgmlType::Q8_0;
  } else if (contains(name, "attn_k.weight")) {
    if (m.n_expert == 8) type = GgmlType::Q8_0;
  } else if (contains(name, "ffn_down")) {
    const int n_layer = m.n_layer;
    if (q4_k_m) {
      if (m.arch == "falcon") {
        type = layer < n_layer / 16            ? GgmlType::Q6_K
               : use_more_bits(layer, n_layer) ? GgmlType::Q5_K
                                               : GgmlType::Q4_K;
      } else if (use_more_bits(layer, n_layer)) {
        type = GgmlType::Q6_K;
      }
    } else if (q5_k_m && use_more_bits(layer, n_layer)) {
      type = GgmlType::Q6_K;
    } else if (q4_k_s && m.arch != "falcon" && layer < n_layer / 8) {
      type = GgmlType::Q5_K;
    }
  } else if (contains(name, "attn_output.weight")) {
    if (m.arch != "falcon" && m.n_expert == 8 && (q4_k_m || q4_k_s)) type = GgmlType::Q5_K;
  } else if (contains(name, "attn_qkv.weight")) {
    if (q4_k_m) type = GgmlType::Q5_K;
    if (q5_k_m) type = GgmlType::Q6_K;
  }
  return type;
}

struct Plan {
  GgmlType type;
  bool fallback = false;  // the mixture's type did not fit the row length
};

Plan plan_tensor(const gguf::TensorInfo& t, const FileType& ft, const ModelFacts& m, bool pure) {
  if (!is_quantizable(t)) return {t.type};
  GgmlType type = ft.base;
  const bool base_is_quantized = traits(ft.base).quantized;
  if (!pure && base_is_quantized) type = mixture_type(t, ft, m);
  if (t.ne[0] % traits(type).block_elements != 0) return {fallback_type(type, t.ne[0]), true};
  return {type};
}

// Dequantizes and requantizes the rows [begin, end) of `t` into `out` (whole tensor).
void convert_rows(const gguf::TensorInfo& t, GgmlType to, uint64_t begin, uint64_t end,
                  std::span<std::byte> out, std::vector<float>& row) {
  const uint64_t n = t.ne[0];
  const size_t in_bytes = row_bytes(t.type, n);
  const size_t out_bytes = row_bytes(to, n);
  row.resize(n);
  for (uint64_t r = begin; r < end; ++r) {
    kernels::dequantize_row(t.type, t.data.subspan(r * in_bytes, in_bytes), row);
    for (uint64_t i = 0; i < n; ++i) {
      if (!std::isfinite(row[i])) {
        throw std::runtime_error("tensor '" + std::string(t.name) + "' holds a non-finite value (" +
                                 std::to_string(row[i]) + ") in row " + std::to_string(r) +
                                 ", column " + std::to_string(i) + "; refusing to quantize it");
      }
    }
    kernels::quantize_row(to, row, out.subspan(r * out_bytes, out_bytes));
  }
}

// A one-line progress bar on stderr, redrawn in place on a terminal; elsewhere (logs,
// tests) one line per tenth of the work so the output stays short.
class Progress {
 public:
  explicit Progress(uint64_t total) : total_(std::max<uint64_t>(total, 1)), tty_(isatty(2) != 0) {}
  void advance(uint64_t done_now, std::string_view what) {
    std::lock_guard lock(mutex_);
    done_ += done_now;
    const int percent = static_cast<int>(100 * done_ / total_);
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = percent * kWidth / 100;
      std::fprintf(stderr, "\r[%s%s] %3d%% %-40.40s",
                   std::string(static_cast<size_t>(filled), '#').c_str(),
                   std::string(static_cast<size_t>(kWidth - filled), ' ').c_str(), percent,
                   std::string(what).c_str());
      std::fflush(stderr);
    } else if (percent / 10 > last_tenth_) {
      last_tenth_ = percent / 10;
      std::fprintf(stderr, "quantize: %3d%%\n", percent);
    }
  }
  void finish() {
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  uint64_t total_;
  uint64_t done_ = 0;
  bool tty_;
  int last_tenth_ = 0;
  std::mutex mutex_;
};

double mib(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

int run_quantize(Args args) {
  std::vector<std::string_view> positional;
  int threads = default_thread_count();
  bool pure = false;
  OptionParser parser("quantize", kUsage);
  parser.integer({"-t", "--threads"}, threads, 1, 1024);
  parser.flag({"--pure"}, pure);
  parser.positional([&](std::string_view a) { positional.push_back(a); });
  if (!parser.parse(args)) return 0;
  if (positional.size() != 3) {
    std::fputs(kUsage, stderr);
    throw std::invalid_argument("expected IN.gguf OUT.gguf TYPE, got " +
                                std::to_string(positional.size()) + " arguments");
  }
  const std::filesystem::path in_path(positional[0]);
  const std::filesystem::path out_path(positional[1]);
  const FileType& ft = parse_file_type(positional[2]);

  std::error_code ec;
  if (std::filesystem::exists(out_path, ec) && std::filesystem::equivalent(in_path, out_path, ec)) {
    throw std::invalid_argument("OUT.gguf is the input file; write to a different path");
  }
  const auto parent = out_path.parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
    throw std::invalid_argument("cannot write " + out_path.string() + ": directory " +
                                parent.string() + " does not exist");
  }

  const gguf::File in = gguf::File::open(in_path);
  const ModelFacts facts = model_facts(in);

  // Decide every tensor's type first, so an input we cannot convert fails before any work.
  std::vector<Plan> plans;
  uint64_t work_total = 0;
  for (const auto& t : in.tensors()) {
    Plan p = plan_tensor(t, ft, facts, pure);
    if (p.type != t.type) {
      if (!kernels::can_dequantize(t.type)) {
        throw std::invalid_argument(
            "tensor '" + std::string(t.name) + "' has type " + std::string(type_name(t.type)) +
            ", which kiln cannot dequantize, so it cannot be converted to " +
            std::string(type_name(p.type)));
      }
      if (!kernels::can_quantize(p.type)) {
        throw std::invalid_argument("tensor '" + std::string(t.name) +
                                    "': kiln cannot produce type " +
                                    std::string(type_name(p.type)));
      }
      work_total += t.n_elements;
    }
    plans.push_back(p);
  }

  gguf::Writer writer;
  writer.copy_metadata(in);
  writer.set("general.quantization_version", gguf::MetaValue::u32(2));
  writer.set("general.file_type", gguf::MetaValue::u32(ft.ftype));

  ThreadPool pool(threads);
  Progress progress(work_total);
  const auto& tensors = in.tensors();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    const GgmlType to = plans[k].type;
    std::vector<uint64_t> ne(t.ne.begin(), t.ne.begin() + std::max<uint32_t>(t.n_dims, 1));
    if (to == t.type) {
      writer.add_tensor(std::string(t.name), to, std::move(ne), t.data);
      continue;
    }
    writer.add_tensor(std::string(t.name), to, std::move(ne),
                      [&t, to, &pool, &progress](std::span<std::byte> out) {
                        const uint64_t rows = t.rows();
                        std::mutex error_mutex;
                        std::exception_ptr error;
                        pool.run([&](int thread_index, int n_threads) {
                          // Contiguous row ranges, one per thread: each thread writes its own part
                          // of out.
                          const uint64_t begin = rows * static_cast<uint64_t>(thread_index) /
                                                 static_cast<uint64_t>(n_threads);
                          const uint64_t end = rows * static_cast<uint64_t>(thread_index + 1) /
                                               static_cast<uint64_t>(n_threads);
                          std::vector<float> row;
                          try {
                            convert_rows(t, to, begin, end, out, row);
                          } catch (...) {
                            std::lock_guard lock(error_mutex);
                            if (!error) error = std::current_exception();
                          }
                        });
                        if (error) std::rethrow_exception(error);
                        progress.advance(t.n_elements, t.name);
                      });
  }

  const auto start = std::chrono::steady_clock::now();
  try {
    writer.write(out_path);  // on failure the writer removes its temporary file
  } catch (...) {
    progress.finish();  // end the progress line before main prints the error
    throw;
  }
  progress.finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Summary: how many tensors and bytes of each type, before and after.
  std::map<std::string, std::pair<int, uint64_t>> before, after;
  uint64_t bytes_before = 0, bytes_after = 0;
  int fallbacks = 0;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    const uint64_t new_bytes = row_bytes(plans[k].type, t.ne[0]) * t.rows();
    auto& b = before[std::string(type_name(t.type))];
    ++b.first;
    b.second += t.n_bytes;
    auto& a = after[std::string(type_name(plans[k].type))];
    ++a.first;
    a.second += new_bytes;
    bytes_before += t.n_bytes;
    bytes_after += new_bytes;
    fallbacks += plans[k].fallback ? 1 : 0;
  }
  auto print_mix = [](const char* label, const auto& mix) {
    std::printf("%s", label);
    for (const auto& [type, v] : mix)
      std::printf("  %s: %d (%.2f MiB)", type.c_str(), v.first, mib(v.second));
    std::printf("\n");
  };
  std::printf("quantized %s -> %s as %s (file_type %u) in %.1f s with %d threads\n",
              in_path.string().c_str(), out_path.string().c_str(), ft.name, ft.ftype, seconds,
              threads);
  print_mix("before:", before);
  print_mix("after: ", after);
  std::printf("tensor data: %.2f MiB -> %.2f MiB (%.1f%%)", mib(bytes_before), mib(bytes_after),
              bytes_before
                  ? 100.0 * static_cast<double>(bytes_after) / static_cast<double>(bytes_before)
                  : 100.0);
  if (fallbacks > 0) {
    std::printf("; %d tensors used a fallback type (row length not a multiple of 256)", fallbacks);
  }
  std::printf("\n");
  return 0;
}

const Command kQuantize("quantize",
                        "convert a GGUF model's weights to another type (Q4_K_M, Q8_0, ...)",
                        run_quantize);

}  // namespace
}  // namespace kiln::cli
