#include "engine/model.h"

#include <charconv>
#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include "kernels/matmul.h"
#include "kernels/quants.h"

namespace kiln {

namespace {

std::string shape_of(std::initializer_list<uint64_t> ne) {
  std::string s = "[";
  bool first = true;
  for (uint64_t v : ne) {
    s += (first ? "" : ", ") + std::to_string(v);
    first = false;
  }
  return s + "]";
}

size_t required_uint(const gguf::File& file, const std::string& key) {
  if (!file.has(key)) {
    throw std::runtime_error(file.path() + ": missing metadata key '" + key + "'");
  }
  const uint64_t v = file.get_uint(key);
  if (v == 0) throw std::runtime_error(file.path() + ": metadata '" + key + "' is 0");
  return static_cast<size_t>(v);
}

const gguf::TensorInfo& find_tensor(const gguf::File& file, const std::string& name) {
  const gguf::TensorInfo* t = file.find_tensor(name);
  if (t == nullptr) throw std::runtime_error(file.path() + ": missing tensor '" + name + "'");
  return *t;
}

void check_shape(const gguf::File& file, const gguf::TensorInfo& t,
                 std::initializer_list<uint64_t> expected) {
  bool ok = t.n_dims == expected.size();
  size_t i = 0;
  for (uint64_t v : expected) ok = ok && t.ne[i++] == v;
  if (!ok) {
    throw std::runtime_error(file.path() + ": tensor '" + std::string(t.name) + "' has shape " +
                             t.shape_string() + ", the config expects " + shape_of(expected));
  }
}

// A norm or frequency vector: F32, one dimension of `n`.
std::span<const float> bind_vector(const gguf::File& file, const std::string& name, size_t n) {
  const auto& t = find_tensor(file, name);
  check_shape(file, t, {n});
  if (t.type != GgmlType::F32) {
    throw std::runtime_error(file.path() + ": tensor '" + name + "' has type " +
                             std::string(type_name(t.type)) + "; only F32 is supported here");
  }
  return {reinterpret_cast<const float*>(t.data.data()), n};
}

// A matrix used by matmul: (rows, cols) with a matmul kernel for its type.
WeightView bind_matrix(const gguf::File& file, const std::string& name, size_t rows, size_t cols) {
  const auto& t = find_tensor(file, name);
  check_shape(file, t, {cols, rows});
  if (!kernels::has_matmul_kernel(t.type)) {
    throw std::runtime_error(file.path() + ": tensor '" + name + "' has type " +
                             std::string(type_name(t.type)) + ", which has no matmul kernel");
  }
  return {t.name, t.type, rows, cols, t.data, {}};
}

// An optional float hyper-parameter that must be finite and positive: a NaN, an infinity, zero
// or a negative value makes every logit NaN (rms_norm divides by sqrt(mean + eps); RoPE raises
// freq_base to fractional powers), which the forward would otherwise produce silently.
float positive_f32(const gguf::File& file, const std::string& key, float fallback) {
  const float v = file.get_f32_opt(key).value_or(fallback);
  if (!std::isfinite(v) || v <= 0.0f) {
    std::ostringstream value;
    value << v;
    throw std::runtime_error(file.path() + ": metadata '" + key + "' is " + value.str() +
                             ", expected a finite number > 0");
  }
  return v;
}

// Blocks the tensors describe: one more than the highest N of the "blk.N." names, and the
// number of distinct N (fewer when some block is missing altogether).
struct BlocksFound {
  size_t count = 0;    // distinct N
  size_t highest = 0;  // highest N + 1
};
BlocksFound blocks_in_tensors(const gguf::File& file) {
  std::set<uint64_t> seen;
  for (const auto& t : file.tensors()) {
    const std::string_view name = t.name;
    if (!name.starts_with("blk.")) continue;
    uint64_t n = 0;
    const char* begin = name.data() + 4;
    const auto [end, ec] = std::from_chars(begin, name.data() + name.size(), n);
    if (ec != std::errc() || end == begin || end == name.data() + name.size() || *end != '.') {
      continue;
    }
    seen.insert(n);
  }
  return {seen.size(), seen.empty() ? 0 : static_cast<size_t>(*seen.rbegin()) + 1};
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const gguf::File& file) {
  const std::string_view arch = file.architecture();
  if (arch != "llama") {
    throw std::runtime_error(
        file.path() + ": architecture '" + std::string(arch) +
        "' is not supported; kiln runs: " + std::string(kSupportedArchitectures));
  }
  ModelConfig c;
  c.n_ctx_train = required_uint(file, "llama.context_length");
  c.dim = required_uint(file, "llama.embedding_length");
  c.n_layers = required_uint(file, "llama.block_count");
  // Checked against the tensors before anything is sized by it: the layer vector is resized
  // to n_layers, so a hostile 10^12 would allocate without bound before the first missing
  // tensor is found. Fewer blocks than the file holds would silently skip layers.
  if (const BlocksFound found = blocks_in_tensors(file);
      found.highest != c.n_layers || found.count != c.n_layers) {
    throw std::runtime_error(file.path() + ": metadata 'llama.block_count' is " +
                             std::to_string(c.n_layers) + " but the file's tensors hold " +
                             (found.count == 0
                                  ? std::string("no blocks (no blk.N.* tensors)")
                                  : std::to_string(found.count) + " blocks (blk.N.* with N up to " +
                                        std::to_string(found.highest - 1) + ")"));
  }
  c.ffn_dim = required_uint(file, "llama.feed_forward_length");
  c.n_heads = required_uint(file, "llama.attention.head_count");
  c.n_kv_heads = file.has("llama.attention.head_count_kv")
                     ? required_uint(file, "llama.attention.head_count_kv")
                     : c.n_heads;
  if (c.n_heads % c.n_kv_heads != 0) {
    throw std::runtime_error(file.path() + ": head_count " + std::to_string(c.n_heads) +
                             " is not a multiple of head_count_kv " + std::to_string(c.n_kv_heads));
  }
  c.head_dim = file.has("llama.attention.key_length")
                   ? required_uint(file, "llama.attention.key_length")
                   : c.dim / c.n_heads;
  if (file.has("llama.attention.value_length") &&
      required_uint(file, "llama.attention.value_length") != c.head_dim) {
    throw std::runtime_error(file.path() + ": attention.value_length differs from key_length");
  }
  if (c.head_dim == 0 || c.head_dim % 2 != 0) {
    throw std::runtime_error(file.path() + ": head dimension " + std::to_string(c.head_dim) +
                             " must be even and non-zero");
  }
  c.rope_dim = file.has("llama.rope.dimension_count")
                   ? required_uint(file, "llama.rope.dimension_count")
                   : c.head_dim;
  if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0) {
    throw std::runtime_error(file.path() + ": rope.dimension_count " + std::to_string(c.rope_dim) +
                             " must be even and at most the head dimension " +
                             std::to_string(c.head_dim));
  }
  c.rope_freq_base = positive_f32(file, "llama.rope.freq_base", 10000.0f);
  c.rms_eps = positive_f32(file, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
  // Position scaling other than Llama 3's frequency factors changes the math.
  if (auto scaling = file.get_string_opt("llama.rope.scaling.type");
      scaling && *scaling != "none") {
    const float factor = file.get_f32_opt("llama.rope.scaling.factor").value_or(1.0f);
    if (factor != 1.0f) {
      throw std::runtime_error(file.path() + ": rope scaling '" + std::string(*scaling) +
                               "' with factor " + std::to_string(factor) + " is not supported");
    }
  }
  const auto& embd = find_tensor(file, "token_embd.weight");
  c.n_vocab = static_cast<size_t>(embd.ne[1]);
  if (auto v = file.get_uint_opt("llama.vocab_size"); v && *v != c.n_vocab) {
    throw std::runtime_error(file.path() + ": llama.vocab_size " + std::to_string(*v) +
                             " differs from token_embd rows " + std::to_string(c.n_vocab));
  }
  // Every row of the output can be sampled, so the tokenizer must have a token for each (a
  // shorter vocabulary would fail at the first sampled id past its end, mid-generation). A
  // longer one is left to the engine, which rejects an input id past token_embd's rows.
  if (file.has("tokenizer.ggml.tokens")) {
    const uint64_t n_tokens = file.get_array("tokenizer.ggml.tokens").count;
    if (n_tokens < c.n_vocab) {
      throw std::runtime_error(file.path() + ": tokenizer.ggml.tokens has " +
                               std::to_string(n_tokens) + " tokens, fewer than the " +
                               std::to_string(c.n_vocab) +
                               " rows of token_embd.weight (and of the output)");
    }
  }
  return c;
}

std::string ModelConfig::describe() const {
  std::ostringstream s;
  s << "llama: " << n_layers << " layers, dim " << dim << ", ffn " << ffn_dim << ", heads "
    << n_heads << "/" << n_kv_heads << " (head dim " << head_dim << "), vocab " << n_vocab
    << ", trained ctx " << n_ctx_train;
  return s.str();
}

size_t Weights::bytes_per_token() const {
  size_t total = row_bytes(token_embd.type, token_embd.cols) + output.data.size();
  for (const auto& l : layers) {
    for (const WeightView* w : l.matrices()) total += w->data.size();
    total += (l.attn_norm.size() + l.ffn_norm.size()) * sizeof(float);
  }
  return total + output_norm.size() * sizeof(float);
}

Model Model::load(const std::filesystem::path& path) { return Model(gguf::File::open(path)); }

Model Model::from_file(gguf::File file) { return Model(std::move(file)); }

Model::Model(gguf::File file) : file_(std::move(file)) {
  const gguf::File& f = file_;
  config_ = ModelConfig::from_gguf(f);
  const ModelConfig& c = config_;
  Weights& w = weights_;

  const auto& embd = find_tensor(f, "token_embd.weight");
  check_shape(f, embd, {c.dim, c.n_vocab});
  if (!kernels::can_dequantize(embd.type)) {
    throw std::runtime_error(f.path() + ": tensor 'token_embd.weight' has type " +
                             std::string(type_name(embd.type)) + ", which we cannot dequantize");
  }
  w.token_embd = {embd.name, embd.type, c.n_vocab, c.dim, embd.data, {}};

  w.layers.resize(c.n_layers);
  for (size_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    l.attn_norm = bind_vector(f, p + "attn_norm.weight", c.dim);
    l.attn_q = bind_matrix(f, p + "attn_q.weight", c.q_dim(), c.dim);
    l.attn_k = bind_matrix(f, p + "attn_k.weight", c.kv_dim(), c.dim);
    l.attn_v = bind_matrix(f, p + "attn_v.weight", c.kv_dim(), c.dim);
    l.attn_output = bind_matrix(f, p + "attn_output.weight", c.dim, c.q_dim());
    l.ffn_norm = bind_vector(f, p + "ffn_norm.weight", c.dim);
    l.ffn_gate = bind_matrix(f, p + "ffn_gate.weight", c.ffn_dim, c.dim);
    l.ffn_up = bind_matrix(f, p + "ffn_up.weight", c.ffn_dim, c.dim);
    l.ffn_down = bind_matrix(f, p + "ffn_down.weight", c.dim, c.ffn_dim);
  }
  w.output_norm = bind_vector(f, "output_norm.weight", c.dim);
  if (f.find_tensor("output.weight") != nullptr) {
    w.output = bind_matrix(f, "output.weight", c.n_vocab, c.dim);
  } else {
    w.tied_output = true;
    w.output = bind_matrix(f, "token_embd.weight", c.n_vocab, c.dim);
  }
  if (f.find_tensor("rope_freqs.weight") != nullptr) {
    w.rope_freqs = bind_vector(f, "rope_freqs.weight", c.rope_dim / 2);
  }
}

}  // namespace kiln
