// kiln synth: writes a Llama-architecture GGUF with random weights and a real
// vocabulary copied from another GGUF. Used for tests (tiny shapes in every
// weight type) and benchmarks (a TinyLlama-1.1B-shaped model we can ship
// without shipping weights).
//
// Tensors are generated row by row inside the writer's fill callbacks, each
// from its own seed, so memory stays at one tensor and the output does not
// depend on the order the writer asks for them.
//
// --chain makes a scripted model instead: the blocks' output projections are
// zero, so the residual stream stays the current token's embedding, and the
// embeddings and output rows are chosen so that each chained token's logits
// put its successor far above everything else. Generation then follows the
// chain whatever the sampler settings, which lets tests drive the whole
// server (chat template, sampling, detokenization, response splitting) with
// an exact token stream.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/model_options.h"
#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "kernels/quantize.h"
#include "kernels/thread_pool.h"

namespace kiln::cli {
namespace {

struct SynthOptions {
  std::string out;
  std::string vocab_from;
  size_t dim = 2048;
  size_t layers = 22;
  size_t heads = 32;
  size_t kv_heads = 4;
  size_t ffn = 5632;
  size_t ctx = 2048;
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  GgmlType type = GgmlType::F16;
  bool tied = false;
  bool rope_freqs = false;
  uint64_t seed = 1;
  int threads = default_thread_count();      // rows of a matrix are filled in parallel
  std::vector<std::string> added_tokens;     // --add-token
  std::string chat_template_file;            // replaces tokenizer.chat_template when set
  std::vector<std::vector<int64_t>> chains;  // --chain: scripted successors
};

struct Preset {
  std::string_view name;
  size_t dim, layers, heads, kv_heads, ffn, ctx;
  float rope_base;
  bool tied, rope_freqs;
};

// Shapes of public models (hyperparameters only; the weights are random).
constexpr Preset kPresets[] = {
    {"tinyllama-1.1b", 2048, 22, 32, 4, 5632, 2048, 10000.0f, false, false},
    {"smollm2-135m", 576, 30, 9, 3, 1536, 8192, 100000.0f, true, false},
    {"llama-3.2-1b", 2048, 16, 32, 8, 8192, 131072, 500000.0f, true, true},
    {"llama-3.2-3b", 3072, 28, 24, 8, 8192, 131072, 500000.0f, true, true},
    {"tiny", 64, 2, 4, 2, 128, 256, 10000.0f, false, false},
};

constexpr const char* kUsage =
    "usage: kiln synth --out FILE.gguf --vocab-from OTHER.gguf [options]\n"
    "\n"
    "Writes a Llama model with random weights (scaled so activations stay finite)\n"
    "and the vocabulary/tokenizer metadata of OTHER.gguf.\n"
    "\n"
    "options:\n"
    "  --preset NAME     tinyllama-1.1b (default shape), smollm2-135m, llama-3.2-1b,\n"
    "                    llama-3.2-3b, tiny\n"
    "  --dim N           embedding width (default 2048)\n"
    "  --layers N        transformer blocks (22)\n"
    "  --heads N         query heads (32)\n"
    "  --kv-heads N      key/value heads (4)\n"
    "  --ffn N           feed-forward width (5632)\n"
    "  --ctx N           training context length written to the metadata (2048)\n"
    "  --rope-base F     RoPE frequency base (10000)\n"
    "  --type T          weight type of the matrices: F32, F16 (default), BF16, Q8_0, Q4_0,\n"
    "                    Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (norms stay F32)\n"
    "  --tied            no output tensor: logits use token_embd\n"
    "  --rope-freqs      add a rope_freqs tensor (Llama 3 style frequency factors)\n"
    "  --seed N          random seed (1)\n"
    "  -t N              threads filling the matrices (default: physical cores; the\n"
    "                    output is the same for any N)\n"
    "  --add-token TEXT  append a user-defined token to the vocabulary (repeatable;\n"
    "                    ids follow the copied ones, in order)\n"
    "  --chat-template FILE  store this Jinja text as tokenizer.chat_template\n"
    "  --chain \"ID ID ...\"  scripted model (repeatable): after token ID[k] the model\n"
    "                    predicts ID[k+1] with a margin no sampler setting overcomes;\n"
    "                    a token may have only one successor, and the chained tokens\n"
    "                    that have one must number at most --dim\n";

// splitmix64: a good 64-bit mix for seeding each tensor and row independently.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Fills `row` with uniform values of the given mean and standard deviation.
void random_row(uint64_t seed, float mean, float stddev, std::span<float> row) {
  uint64_t state = mix(seed);
  const float half_width = stddev * std::sqrt(3.0f);
  for (float& v : row) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;  // LCG, top bits used
    const float u = static_cast<float>(state >> 40) * 0x1p-24f;       // [0, 1)
    v = mean + (2.0f * u - 1.0f) * half_width;
  }
}

class Synthesizer {
 public:
  explicit Synthesizer(const SynthOptions& o) : o_(o), pool_(o.threads) {}

  // A matrix (rows, cols): W ~ U with std 1/sqrt(cols) so W x keeps unit scale.
  void add_matrix(gguf::Writer& w, const std::string& name, size_t rows, size_t cols, GgmlType type,
                  float stddev_scale = 1.0f) {
    check_row_shape(name, cols, type);
    const uint64_t seed = mix(o_.seed ^ mix(tensor_index_++));
    const float stddev = stddev_scale / std::sqrt(static_cast<float>(cols));
    ThreadPool* pool = &pool_;
    w.add_tensor(name, type, {cols, rows}, [=](std::span<std::byte> out) {
      const size_t rb = row_bytes(type, cols);
      // Each row depends only on its own seed, so contiguous row ranges per thread give the
      // same bytes as one thread.
      pool->run([&](int t, int n_threads) {
        std::vector<float> row(cols);
        const size_t begin = rows * size_t(t) / size_t(n_threads);
        const size_t end = rows * size_t(t + 1) / size_t(n_threads);
        for (size_t r = begin; r < end; ++r) {
          random_row(seed + r, 0.0f, stddev, row);
          kernels::quantize_row(type, row, out.subspan(r * rb, rb));
        }
      });
    });
  }

  // A matrix (rows, cols) whose row r is written by fill(r, row) (row starts
  // zeroed).
  using RowFill = std::function<void(size_t, std::span<float>)>;
  void add_matrix_rows(gguf::Writer& w, const std::string& name, size_t rows, size_t cols,
                       GgmlType type, RowFill fill) {
    check_row_shape(name, cols, type);
    ++tensor_index_;  // keeps the other tensors' seeds independent of this one
    w.add_tensor(name, type, {cols, rows}, [=](std::span<std::byte> out) {
      std::vector<float> row(cols);
      const size_t rb = row_bytes(type, cols);
      for (size_t r = 0; r < rows; ++r) {
        std::fill(row.begin(), row.end(), 0.0f);
        fill(r, row);
        kernels::quantize_row(type, row, out.subspan(r * rb, rb));
      }
    });
  }

  // A norm weight (n,), F32, around 1 (exactly 1 with `ones`).
  void add_norm(gguf::Writer& w, const std::string& name, size_t n, bool ones = false) {
    const uint64_t seed = mix(o_.seed ^ mix(tensor_index_++));
    w.add_tensor(name, GgmlType::F32, {n}, [=](std::span<std::byte> out) {
      const std::span<float> v{reinterpret_cast<float*>(out.data()), n};
      if (ones) {
        std::fill(v.begin(), v.end(), 1.0f);
      } else {
        random_row(seed, 1.0f, 0.1f, v);
      }
    });
  }

  static void check_row_shape(const std::string& name, size_t cols, GgmlType type) {
    if (cols % traits(type).block_elements != 0) {
      throw std::invalid_argument(
          "tensor '" + name + "' has rows of " + std::to_string(cols) +
          " elements, not a multiple of the " + std::string(type_name(type)) + " block size " +
          std::to_string(traits(type).block_elements) + " (choose other shapes or another --type)");
    }
  }

 private:
  const SynthOptions& o_;
  ThreadPool pool_;
  uint64_t tensor_index_ = 0;
};

// The scripted model of --chain: each token with a successor gets its own
// embedding dimension (a one-hot embedding row), and the output row of the
// successor reads that dimension.
struct Script {
  std::map<int64_t, int64_t> next;  // token -> successor
  std::map<int64_t, size_t> slot;   // token with a successor -> its dimension

  Script(const std::vector<std::vector<int64_t>>& chains, size_t n_vocab, size_t dim) {
    for (const auto& chain : chains) {
      for (size_t k = 0; k < chain.size(); ++k) {
        if (chain[k] < 0 || static_cast<size_t>(chain[k]) >= n_vocab) {
          throw std::invalid_argument("--chain: token id " + std::to_string(chain[k]) +
                                      " is outside the vocabulary of " + std::to_string(n_vocab));
        }
        if (k + 1 == chain.size()) break;
        auto [it, inserted] = next.emplace(chain[k], chain[k + 1]);
        if (!inserted && it->second != chain[k + 1]) {
          throw std::invalid_argument("--chain: token " + std::to_string(chain[k]) +
                                      " is given two successors (" + std::to_string(it->second) +
                                      " and " + std::to_string(chain[k + 1]) + ")");
        }
        if (inserted) slot.emplace(chain[k], slot.size());
      }
    }
    if (slot.size() > dim) {
      throw std::invalid_argument("--chain: " + std::to_string(slot.size()) +
                                  " tokens with a successor need --dim of at least that (have " +
                                  std::to_string(dim) + ")");
    }
  }
};

std::vector<int64_t> parse_chain(std::string_view text) {
  std::vector<int64_t> ids;
  std::istringstream in{std::string(text)};
  for (std::string word; in >> word;) {
    ids.push_back(parse_int_option("--chain", word, 0, INT32_MAX));
  }
  if (ids.size() < 2) {
    throw std::invalid_argument("--chain needs at least two token ids, got '" + std::string(text) +
                                "'");
  }
  return ids;
}

std::string read_text_file(const std::string& path) {
  // A folder opens as a stream and only its reads fail, which would leave the text empty.
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw std::invalid_argument("cannot read " + path + ": it is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void synthesize(const SynthOptions& o) {
  if (o.out.empty()) throw std::invalid_argument("--out is required");
  if (o.vocab_from.empty()) throw std::invalid_argument("--vocab-from is required");
  if (o.heads == 0 || o.kv_heads == 0 || o.heads % o.kv_heads != 0) {
    throw std::invalid_argument("--heads " + std::to_string(o.heads) +
                                " must be a positive multiple of --kv-heads " +
                                std::to_string(o.kv_heads));
  }
  if (o.dim % o.heads != 0 || (o.dim / o.heads) % 2 != 0) {
    throw std::invalid_argument("--dim " + std::to_string(o.dim) + " must split into --heads " +
                                std::to_string(o.heads) + " heads of even width");
  }
  if (!kernels::can_quantize(o.type)) {
    throw std::invalid_argument("--type " + std::string(type_name(o.type)) + " cannot be written");
  }
  const gguf::File vocab = gguf::File::open(o.vocab_from);
  if (!vocab.has("tokenizer.ggml.tokens")) {
    throw std::invalid_argument(o.vocab_from + " has no tokenizer.ggml.tokens");
  }
  const size_t n_vocab = vocab.get_array("tokenizer.ggml.tokens").count + o.added_tokens.size();
  const size_t head_dim = o.dim / o.heads;
  const size_t kv_dim = head_dim * o.kv_heads;
  const bool scripted = !o.chains.empty();
  if (scripted && o.tied) {
    throw std::invalid_argument("--chain needs an output tensor (drop --tied)");
  }
  const auto script = std::make_shared<const Script>(o.chains, n_vocab, o.dim);

  gguf::Writer w;
  w.set("general.architecture", gguf::MetaValue::string("llama"));
  w.set("general.name", gguf::MetaValue::string("kiln-synth"));
  w.set("general.alignment", gguf::MetaValue::u32(32));
  w.set("llama.context_length", gguf::MetaValue::u32(static_cast<uint32_t>(o.ctx)));
  w.set("llama.embedding_length", gguf::MetaValue::u32(static_cast<uint32_t>(o.dim)));
  w.set("llama.block_count", gguf::MetaValue::u32(static_cast<uint32_t>(o.layers)));
  w.set("llama.feed_forward_length", gguf::MetaValue::u32(static_cast<uint32_t>(o.ffn)));
  w.set("llama.attention.head_count", gguf::MetaValue::u32(static_cast<uint32_t>(o.heads)));
  w.set("llama.attention.head_count_kv", gguf::MetaValue::u32(static_cast<uint32_t>(o.kv_heads)));
  w.set("llama.rope.dimension_count", gguf::MetaValue::u32(static_cast<uint32_t>(head_dim)));
  w.set("llama.rope.freq_base", gguf::MetaValue::f32(o.rope_base));
  w.set("llama.attention.layer_norm_rms_epsilon", gguf::MetaValue::f32(o.rms_eps));
  w.set("llama.vocab_size", gguf::MetaValue::u32(static_cast<uint32_t>(n_vocab)));
  for (const auto& [key, value] : vocab.metadata()) {
    if (key.starts_with("tokenizer.")) w.set(std::string(key), gguf::MetaValue::from(value));
  }
  if (!o.added_tokens.empty()) {
    // New USER_DEFINED tokens after the copied ones (the tokenizer matches
    // them anywhere in text and decodes them verbatim, as Qwen3's <think>).
    std::vector<std::string> tokens;
    for (std::string_view t : vocab.get_string_array("tokenizer.ggml.tokens")) {
      tokens.emplace_back(t);
    }
    const size_t n_copied = tokens.size();
    constexpr int32_t kNormal = 1, kUserDefined = 4;
    std::vector<int32_t> types = vocab.has("tokenizer.ggml.token_type")
                                     ? vocab.get_i32_array("tokenizer.ggml.token_type")
                                     : std::vector<int32_t>(n_copied, kNormal);
    types.resize(n_copied, kNormal);
    for (const auto& t : o.added_tokens) {
      if (std::find(tokens.begin(), tokens.end(), t) != tokens.end()) {
        throw std::invalid_argument("--add-token '" + t + "' is already in the vocabulary");
      }
      tokens.push_back(t);
      types.push_back(kUserDefined);
    }
    w.set("tokenizer.ggml.tokens", gguf::MetaValue::string_array(std::move(tokens)));
    w.set("tokenizer.ggml.token_type", gguf::MetaValue::i32_array(types));
    if (vocab.has("tokenizer.ggml.scores")) {
      std::vector<float> scores = vocab.get_f32_array("tokenizer.ggml.scores");
      scores.resize(n_vocab, 0.0f);
      w.set("tokenizer.ggml.scores", gguf::MetaValue::f32_array(scores));
    }
  }
  if (!o.chat_template_file.empty()) {
    w.set("tokenizer.chat_template", gguf::MetaValue::string(read_text_file(o.chat_template_file)));
  }

  Synthesizer s(o);
  // Embedding rows at unit scale per element / sqrt(dim): norms follow, and a
  // tied output then gives logits of order one.
  if (scripted) {
    s.add_matrix_rows(
        w, "token_embd.weight", n_vocab, o.dim, o.type, [script](size_t r, std::span<float> row) {
          if (auto it = script->slot.find(static_cast<int64_t>(r)); it != script->slot.end()) {
            row[it->second] = 1.0f;
          }
        });
  } else {
    s.add_matrix(w, "token_embd.weight", n_vocab, o.dim, o.type);
  }
  if (o.rope_freqs) {
    // Llama 3 style: factor 1 for high frequencies rising to 8 for the lowest.
    const size_t half = head_dim / 2;
    w.add_tensor("rope_freqs.weight", GgmlType::F32, {half}, [half](std::span<std::byte> out) {
      auto* f = reinterpret_cast<float*>(out.data());
      for (size_t i = 0; i < half; ++i) {
        f[i] =
            1.0f + 7.0f * static_cast<float>(i) / static_cast<float>(std::max<size_t>(1, half - 1));
      }
    });
  }
  for (size_t l = 0; l < o.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    s.add_norm(w, p + "attn_norm.weight", o.dim);
    // Q and K a little larger than unit so attention is not uniform.
    s.add_matrix(w, p + "attn_q.weight", o.dim, o.dim, o.type, 2.0f);
    s.add_matrix(w, p + "attn_k.weight", kv_dim, o.dim, o.type, 2.0f);
    s.add_matrix(w, p + "attn_v.weight", kv_dim, o.dim, o.type);
    if (scripted) {
      // Zero: the blocks add nothing to the residual stream.
      s.add_matrix_rows(w, p + "attn_output.weight", o.dim, o.dim, o.type,
                        [](size_t, std::span<float>) {});
    } else {
      s.add_matrix(w, p + "attn_output.weight", o.dim, o.dim, o.type);
    }
    s.add_norm(w, p + "ffn_norm.weight", o.dim);
    s.add_matrix(w, p + "ffn_gate.weight", o.ffn, o.dim, o.type);
    s.add_matrix(w, p + "ffn_up.weight", o.ffn, o.dim, o.type);
    if (scripted) {
      s.add_matrix_rows(w, p + "ffn_down.weight", o.dim, o.ffn, o.type,
                        [](size_t, std::span<float>) {});
    } else {
      s.add_matrix(w, p + "ffn_down.weight", o.dim, o.ffn, o.type);
    }
  }
  s.add_norm(w, "output_norm.weight", o.dim, /*ones=*/scripted);
  if (scripted) {
    // The final norm scales a one-hot state to sqrt(dim), so the successor's
    // logit is 8 sqrt(dim) (64 at dim 64) and every other logit is 0.
    s.add_matrix_rows(w, "output.weight", n_vocab, o.dim, o.type,
                      [script](size_t r, std::span<float> row) {
                        for (const auto& [token, successor] : script->next) {
                          if (static_cast<size_t>(successor) == r)
                            row[script->slot.at(token)] = 8.0f;
                        }
                      });
  } else if (!o.tied) {
    // Logits of order a few units: peaked enough to have a clear top-1.
    s.add_matrix(w, "output.weight", n_vocab, o.dim, o.type, 3.0f);
  }
  w.write(o.out);
}

int run_synth(Args args) {
  SynthOptions o;
  OptionParser parser("synth", kUsage);
  parser.text({"--out", "-o"}, o.out);
  parser.text({"--vocab-from"}, o.vocab_from);
  parser.value({"--preset"}, [&o](auto, std::string_view name) {
    const Preset* found = nullptr;
    for (const auto& p : kPresets) {
      if (p.name == name) found = &p;
    }
    if (found == nullptr) {
      throw std::invalid_argument(
          "unknown preset '" + std::string(name) +
          "' (tinyllama-1.1b, smollm2-135m, llama-3.2-1b, llama-3.2-3b, tiny)");
    }
    o.dim = found->dim;
    o.layers = found->layers;
    o.heads = found->heads;
    o.kv_heads = found->kv_heads;
    o.ffn = found->ffn;
    o.ctx = found->ctx;
    o.rope_base = found->rope_base;
    o.tied = found->tied;
    o.rope_freqs = found->rope_freqs;
  });
  parser.integer({"--dim"}, o.dim, 1, 1 << 16);
  parser.integer({"--layers"}, o.layers, 1, 1024);
  parser.integer({"--heads"}, o.heads, 1, 1024);
  parser.integer({"--kv-heads"}, o.kv_heads, 1, 1024);
  parser.integer({"--ffn"}, o.ffn, 1, 1 << 18);
  parser.integer({"--ctx"}, o.ctx, 1, 1 << 24);
  parser.value({"--rope-base"}, [&o](std::string_view option, std::string_view value) {
    // RoPE raises the base to fractional powers: 0 or a negative base gives NaN logits.
    o.rope_base = parse_float_option(option, value);
    if (!(o.rope_base > 0.0f)) {
      throw std::invalid_argument(std::string(option) + " expects a number > 0, got '" +
                                  std::string(value) + "'");
    }
  });
  parser.value({"--type"}, [&o](auto, std::string_view t) {
    const auto type = parse_type_name(t);
    if (!type) throw std::invalid_argument("--type: unknown type '" + std::string(t) + "'");
    o.type = *type;
  });
  parser.flag({"--tied"}, o.tied);
  parser.flag({"--rope-freqs"}, o.rope_freqs);
  parser.value({"--add-token"}, [&o](auto, std::string_view t) { o.added_tokens.emplace_back(t); });
  parser.text({"--chat-template"}, o.chat_template_file);
  parser.value({"--chain"}, [&o](auto, std::string_view v) { o.chains.push_back(parse_chain(v)); });
  parser.integer({"--seed"}, o.seed, 0, LONG_MAX);
  parser.integer({"-t", "--threads"}, o.threads, 1, 1024);
  if (!parser.parse(args)) return 0;
  synthesize(o);
  std::fprintf(stderr, "kiln synth: wrote %s\n", o.out.c_str());
  return 0;
}

const Command kSynth("synth", "write a Llama model with random weights (tests, benchmarks)",
                     run_synth);

}  // namespace
}  // namespace kiln::cli
