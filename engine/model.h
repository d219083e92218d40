// A Llama-architecture model: hyperparameters read from the GGUF metadata and
// the weight tensors bound by name, as views into the memory-mapped file.
//
// Everything that can be wrong with a file is found here, at load, with a
// message naming it: an architecture we do not run, a missing tensor, a shape
// that disagrees with the config, a tensor type we have no kernel for.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace kiln {

// Architectures this engine runs (general.architecture).
inline constexpr std::string_view kSupportedArchitectures = "llama";

struct ModelConfig {
  size_t n_vocab = 0;        // tokens; rows of token_embd (ne[1])
  size_t n_ctx_train = 0;    // llama.context_length: positions the model was trained on
  size_t dim = 0;            // llama.embedding_length: residual stream width
  size_t n_layers = 0;       // llama.block_count
  size_t ffn_dim = 0;        // llama.feed_forward_length: hidden width of the SwiGLU FFN
  size_t n_heads = 0;        // llama.attention.head_count: query heads
  size_t n_kv_heads = 0;     // llama.attention.head_count_kv: K/V heads (GQA: divides n_heads)
  size_t head_dim = 0;       // llama.attention.key_length, else dim / n_heads
  size_t rope_dim = 0;       // llama.rope.dimension_count, else head_dim: rotated dims per head
  float rope_freq_base = 0;  // llama.rope.freq_base, else 10000
  float rms_eps = 0;         // llama.attention.layer_norm_rms_epsilon, else 1e-5

  size_t q_dim() const { return n_heads * head_dim; }      // width of Q (and attention output)
  size_t kv_dim() const { return n_kv_heads * head_dim; }  // width of K and V per token

  // Reads and validates the llama.* keys; throws naming the key or the problem.
  static ModelConfig from_gguf(const gguf::File& file);
  std::string describe() const;  // one line for logs
};

// A 2-D weight: `rows` output features of `cols` inputs each (GGUF ne = [cols, rows]).
struct WeightView {
  std::string_view name;
  GgmlType type = GgmlType::F32;
  size_t rows = 0;
  size_t cols = 0;
  std::span<const std::byte> data;  // view into the mapping
  // The same weights as pre-packed GEMM panels (kernels::pack_panels), or empty: the engine
  // makes them with resident weights, or maps them from its panel cache, for the types that
  // have them.
  std::span<const std::byte> panels;
};

struct LayerWeights {
  std::span<const float> attn_norm;  // (dim,)
  WeightView attn_q;                 // (q_dim, dim)
  WeightView attn_k;                 // (kv_dim, dim)
  WeightView attn_v;                 // (kv_dim, dim)
  WeightView attn_output;            // (dim, q_dim)
  std::span<const float> ffn_norm;   // (dim,)
  WeightView ffn_gate;               // (ffn_dim, dim)
  WeightView ffn_up;                 // (ffn_dim, dim)
  WeightView ffn_down;               // (dim, ffn_dim)

  // The layer's seven matrices, in forward order.
  std::array<const WeightView*, 7> matrices() const {
    return {&attn_q, &attn_k, &attn_v, &attn_output, &ffn_gate, &ffn_up, &ffn_down};
  }
  std::array<WeightView*, 7> matrices() {
    return {&attn_q, &attn_k, &attn_v, &attn_output, &ffn_gate, &ffn_up, &ffn_down};
  }
};

struct Weights {
  WeightView token_embd;               // (n_vocab, dim)
  std::vector<LayerWeights> layers;    // n_layers
  std::span<const float> output_norm;  // (dim,)
  WeightView output;                   // (n_vocab, dim); token_embd when tied
  bool tied_output = false;            // the file has no `output` tensor
  std::span<const float> rope_freqs;   // (rope_dim/2,) Llama 3 frequency factors, or empty

  // fn(view) for every matmul weight: each layer's matrices, then the output (the embedding
  // again when tied).
  template <typename Fn>
  void for_each_matrix(Fn&& fn) const {
    for (const LayerWeights& l : layers) {
      for (const WeightView* m : l.matrices()) fn(*m);
    }
    fn(output);
  }
  template <typename Fn>
  void for_each_matrix(Fn&& fn) {
    for (LayerWeights& l : layers) {
      for (WeightView* m : l.matrices()) fn(*m);
    }
    fn(output);
  }

  // Bytes of weights read to produce one token (every matrix once; the
  // embedding only one row). Used for the bandwidth bound in kiln bench.
  size_t bytes_per_token() const;
};

class Model {
 public:
  // Opens, maps and validates a GGUF model file.
  static Model load(const std::filesystem::path& path);
  // Binds an already opened file (tests build files in memory).
  static Model from_file(gguf::File file);

  Model(Model&&) noexcept = default;
  Model& operator=(Model&&) noexcept = default;

  const gguf::File& file() const { return file_; }
  const ModelConfig& config() const { return config_; }
  const Weights& weights() const { return weights_; }

 private:
  explicit Model(gguf::File file);
  gguf::File file_;
  ModelConfig config_;
  Weights weights_;
};

}  // namespace kiln
