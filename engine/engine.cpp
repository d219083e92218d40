#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/quants.h"
#include "kernels/thread_pool.h"

namespace kiln {

namespace {

constexpr size_t kDefaultContextCap = 4096;

kernels::WeightMatrix as_matrix(const WeightView& w) { return {w.type, w.data, w.rows, w.cols}; }

// Row i of a row-major (rows, width) buffer.
std::span<float> row(std::vector<float>& buf, size_t i, size_t width) {
  return {buf.data() + i * width, width};
}

// Rows [0, n) of a row-major buffer, as one span.
std::span<float> rows(std::vector<float>& buf, size_t n, size_t width) {
  return {buf.data(), n * width};
}

// Calls fn(i) for i in [0, n), rows split across the pool when there are
// enough of them to pay for the hand-off (prefill); decode stays on the caller.
template <typename Fn>
void for_each_row(ThreadPool& pool, size_t n, Fn&& fn) {
  if (n < 4 || pool.size() == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool.run([&](int thread_index, int n_threads) {
    const size_t per = (n + static_cast<size_t>(n_threads) - 1) / static_cast<size_t>(n_threads);
    const size_t begin = std::min(n, per * static_cast<size_t>(thread_index));
    const size_t end = std::min(n, begin + per);
    for (size_t i = begin; i < end; ++i) fn(i);
  });
}

}  // namespace

size_t default_context_length(const ModelConfig& config, size_t requested) {
  if (requested != 0) return requested;
  return std::min(config.n_ctx_train, kDefaultContextCap);
}

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model),
      max_batch_(options.max_batch),
      n_threads_(options.n_threads > 0 ? options.n_threads : default_thread_count()),
      pool_(std::make_unique<ThreadPool>(n_threads_)),
      kv_(options.kv_type, model.config().n_layers, options.n_seq,
          default_context_length(model.config(), options.n_ctx), model.config().kv_dim()) {
  const ModelConfig& c = model.config();
  if (max_batch_ == 0) throw std::invalid_argument("max_batch must be at least 1");
  if (options.kv_type == GgmlType::Q8_0 && c.head_dim % 32 != 0) {
    throw std::invalid_argument(
        "a q8_0 KV cache needs a head dimension that is a multiple of 32, "
        "this model has " +
        std::to_string(c.head_dim));
  }
  const size_t b = max_batch_;
  x_.resize(b * c.dim);
  xb_.resize(b * c.dim);
  q_.resize(b * c.q_dim());
  k_.resize(b * c.kv_dim());
  v_.resize(b * c.kv_dim());
  att_.resize(b * c.q_dim());
  gate_.resize(b * c.ffn_dim);
  up_.resize(b * c.ffn_dim);
  rope_cos_.resize(b * (c.rope_dim / 2));
  rope_sin_.resize(b * (c.rope_dim / 2));
  scores_.resize(static_cast<size_t>(n_threads_) * kv_.n_ctx());
  logits_.resize(b * c.n_vocab);
  logit_rows_.reserve(b);
  next_pos_.resize(kv_.n_seq());

  // One scratch buffer big enough for the largest matmul at full batch.
  size_t scratch = 0;
  auto need = [&](const WeightView& w) {
    scratch = std::max(scratch, kernels::matmul_scratch_bytes(w.type, w.cols, b));
  };
  const Weights& w = model.weights();
  for (const auto& l : w.layers) {
    for (const WeightView* m :
         {&l.attn_q, &l.attn_k, &l.attn_v, &l.attn_output, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) {
      need(*m);
    }
  }
  need(w.output);
  matmul_scratch_.resize(scratch);
}

Engine::~Engine() = default;

void Engine::validate(const Batch& batch) {
  const ModelConfig& c = config();
  if (batch.size() > max_batch_) {
    throw std::invalid_argument("batch of " + std::to_string(batch.size()) +
                                " entries exceeds the context's max batch " +
                                std::to_string(max_batch_));
  }
  for (size_t s = 0; s < next_pos_.size(); ++s) next_pos_[s] = kv_.length(s);
  for (const BatchEntry& e : batch.entries) {
    if (e.seq < 0 || static_cast<size_t>(e.seq) >= kv_.n_seq()) {
      throw std::invalid_argument("sequence id " + std::to_string(e.seq) +
                                  " is out of range: the context has " +
                                  std::to_string(kv_.n_seq()) + " sequences");
    }
    if (e.token < 0 || static_cast<size_t>(e.token) >= c.n_vocab) {
      throw std::invalid_argument("token id " + std::to_string(e.token) +
                                  " is out of range: the vocabulary has " +
                                  std::to_string(c.n_vocab) + " tokens");
    }
    size_t& next = next_pos_[static_cast<size_t>(e.seq)];
    if (e.pos < 0 || static_cast<size_t>(e.pos) != next) {
      throw std::invalid_argument("sequence " + std::to_string(e.seq) + " expects position " +
                                  std::to_string(next) + ", the batch gives " +
                                  std::to_string(e.pos));
    }
    if (next >= kv_.n_ctx()) {
      throw std::invalid_argument("context full: sequence " + std::to_string(e.seq) +
                                  " already holds " + std::to_string(next) +
                                  " positions, the context size is " + std::to_string(kv_.n_ctx()) +
                                  " (raise -c)");
    }
    ++next;
  }
}

std::span<const float> Engine::forward(const Batch& batch) {
  validate(batch);
  const ModelConfig& c = config();
  const Weights& w = model_.weights();
  const size_t n = batch.size();
  const size_t dim = c.dim, q_dim = c.q_dim(), kv_dim = c.kv_dim(), ffn = c.ffn_dim;
  const size_t half_rope = c.rope_dim / 2;
  entries_ = batch.entries.data();
  n_logits_ = 0;
  if (n == 0) return {};

  // Embed: x[i] = token_embd[token_i], dequantized.
  const size_t embd_row_bytes = row_bytes(w.token_embd.type, dim);
  for (size_t i = 0; i < n; ++i) {
    const auto src = w.token_embd.data.subspan(
        static_cast<size_t>(batch.entries[i].token) * embd_row_bytes, embd_row_bytes);
    kernels::dequantize_row(w.token_embd.type, src, row(x_, i, dim));
  }

  // RoPE angles of each entry's position, shared by Q and K of every layer.
  for (size_t i = 0; i < n; ++i) {
    kernels::rope_angles(batch.entries[i].pos, c.rope_dim, c.rope_freq_base, w.rope_freqs,
                         row(rope_cos_, i, half_rope), row(rope_sin_, i, half_rope));
  }

  for (size_t layer = 0; layer < c.n_layers; ++layer) {
    const LayerWeights& l = w.layers[layer];

    // Attention input: xb = rmsnorm(x) * attn_norm.
    for_each_row(*pool_, n, [&](size_t i) {
      kernels::rmsnorm(row(x_, i, dim), l.attn_norm, c.rms_eps, row(xb_, i, dim));
    });

    // Projections: q (n, q_dim), k and v (n, kv_dim) = xb @ W^T.
    kernels::matmul(as_matrix(l.attn_q), rows(xb_, n, dim), n, rows(q_, n, q_dim), matmul_scratch_,
                    *pool_);
    kernels::matmul(as_matrix(l.attn_k), rows(xb_, n, dim), n, rows(k_, n, kv_dim), matmul_scratch_,
                    *pool_);
    kernels::matmul(as_matrix(l.attn_v), rows(xb_, n, dim), n, rows(v_, n, kv_dim), matmul_scratch_,
                    *pool_);

    // RoPE on q and k (adjacent-pair layout: the GGUF converter permuted Q/K for it),
    // then k and v stored in the cache at (seq, pos), converted to the cache type.
    for_each_row(*pool_, n, [&](size_t i) {
      const auto cos = row(rope_cos_, i, half_rope), sin = row(rope_sin_, i, half_rope);
      kernels::rope_normal(row(q_, i, q_dim), c.n_heads, c.head_dim, c.rope_dim, cos, sin);
      kernels::rope_normal(row(k_, i, kv_dim), c.n_kv_heads, c.head_dim, c.rope_dim, cos, sin);

      const auto seq = static_cast<size_t>(batch.entries[i].seq);
      const auto pos = static_cast<size_t>(batch.entries[i].pos);
      const auto k_dst = kv_.k_row(layer, seq, pos), v_dst = kv_.v_row(layer, seq, pos);
      switch (kv_.type()) {
        case GgmlType::F32:
          std::memcpy(k_dst.data(), &k_[i * kv_dim], kv_dim * sizeof(float));
          std::memcpy(v_dst.data(), &v_[i * kv_dim], kv_dim * sizeof(float));
          break;
        case GgmlType::F16:
          kernels::f32_to_f16_row(row(k_, i, kv_dim),
                                  {reinterpret_cast<uint16_t*>(k_dst.data()), kv_dim});
          kernels::f32_to_f16_row(row(v_, i, kv_dim),
                                  {reinterpret_cast<uint16_t*>(v_dst.data()), kv_dim});
          break;
        default:  // Q8_0
          kernels::quantize_q8_0(row(k_, i, kv_dim), k_dst);
          kernels::quantize_q8_0(row(v_, i, kv_dim), v_dst);
          break;
      }
    });

    // Attention: att = softmax(q k^T / sqrt(head_dim)) v over positions [0, pos] of
    // the entry's own sequence (causal), each query head reading its K/V group (GQA).
    attention(layer, n);

    // Output projection: xb = att @ Wo^T.
    kernels::matmul(as_matrix(l.attn_output), rows(att_, n, q_dim), n, rows(xb_, n, dim),
                    matmul_scratch_, *pool_);

    // Residual, then the FFN input: x += xb; xb = rmsnorm(x) * ffn_norm.
    for_each_row(*pool_, n, [&](size_t i) {
      kernels::add(row(x_, i, dim), row(xb_, i, dim));
      kernels::rmsnorm(row(x_, i, dim), l.ffn_norm, c.rms_eps, row(xb_, i, dim));
    });

    // SwiGLU: gate = silu(xb @ Wg^T) * (xb @ Wu^T).
    kernels::matmul(as_matrix(l.ffn_gate), rows(xb_, n, dim), n, rows(gate_, n, ffn),
                    matmul_scratch_, *pool_);
    kernels::matmul(as_matrix(l.ffn_up), rows(xb_, n, dim), n, rows(up_, n, ffn), matmul_scratch_,
                    *pool_);
    for_each_row(*pool_, n, [&](size_t i) {
      kernels::silu_mul(row(gate_, i, ffn), row(up_, i, ffn), row(gate_, i, ffn));
    });

    // Down projection and residual: x += gate @ Wd^T.
    kernels::matmul(as_matrix(l.ffn_down), rows(gate_, n, ffn), n, rows(xb_, n, dim),
                    matmul_scratch_, *pool_);
    kernels::add(rows(x_, n, dim), rows(xb_, n, dim));
  }

  // Final norm of the rows that want logits, packed: xb[k] = rmsnorm(x[i_k]) * output_norm.
  for (size_t i = 0; i < n; ++i) {
    if (!batch.entries[i].wants_logits) continue;
    kernels::rmsnorm(row(x_, i, dim), w.output_norm, c.rms_eps, row(xb_, n_logits_, dim));
    ++n_logits_;
  }

  // Logits: (n_logits, n_vocab) = xb @ output^T.
  if (n_logits_ > 0) {
    kernels::matmul(as_matrix(w.output), rows(xb_, n_logits_, dim), n_logits_,
                    rows(logits_, n_logits_, c.n_vocab), matmul_scratch_, *pool_);
  }

  // The cache now holds every written position.
  for (const BatchEntry& e : batch.entries) {
    kv_.set_length(static_cast<size_t>(e.seq), static_cast<size_t>(e.pos) + 1);
  }
  entries_ = nullptr;
  return {logits_.data(), n_logits_ * c.n_vocab};
}

void Engine::attention(size_t layer, size_t n) {
  // Work items are (entry, head) pairs, dealt round-robin: in a prompt later
  // entries see more positions, so contiguous runs would leave threads idle.
  struct Job {
    Engine* self;
    size_t layer, n;
  } job{this, layer, n};
  const Job* jp = &job;
  pool_->run([jp](int thread_index, int n_threads) {
    Engine& e = *jp->self;
    const ModelConfig& c = e.config();
    const size_t hd = c.head_dim, q_dim = c.q_dim();
    const size_t group = c.n_heads / c.n_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const size_t items = jp->n * c.n_heads;
    float* scores = e.scores_.data() + static_cast<size_t>(thread_index) * e.kv_.n_ctx();
    const size_t row_bytes = e.kv_.row_bytes();
    const size_t head_bytes = row_bytes / c.n_kv_heads;  // each head's slice, whole blocks

    for (size_t item = static_cast<size_t>(thread_index); item < items;
         item += static_cast<size_t>(n_threads)) {
      const size_t i = item / c.n_heads, h = item % c.n_heads, g = h / group;
      const BatchEntry& entry = e.entries_[i];
      const auto seq = static_cast<size_t>(entry.seq);
      const size_t n_pos = static_cast<size_t>(entry.pos) + 1;
      const std::span<const float> q{e.q_.data() + i * q_dim + h * hd, hd};
      const std::span<float> out{e.att_.data() + i * q_dim + h * hd, hd};
      const auto k_all = e.kv_.k_rows(jp->layer, seq);
      const auto v_all = e.kv_.v_rows(jp->layer, seq);

      // Scores of every visible position.
      for (size_t p = 0; p < n_pos; ++p) {
        const std::byte* k = k_all.data() + p * row_bytes + g * head_bytes;
        float s;
        switch (e.kv_.type()) {
          case GgmlType::F32:
            s = kernels::dot(q, {reinterpret_cast<const float*>(k), hd});
            break;
          case GgmlType::F16:
            s = kernels::dot_f16(q, {reinterpret_cast<const uint16_t*>(k), hd});
            break;
          default:
            s = kernels::dot_q8_0(q, {k, head_bytes});
            break;
        }
        scores[p] = s * scale;
      }
      kernels::softmax({scores, n_pos});

      // Weighted sum of the values.
      std::fill(out.begin(), out.end(), 0.0f);
      for (size_t p = 0; p < n_pos; ++p) {
        const std::byte* v = v_all.data() + p * row_bytes + g * head_bytes;
        switch (e.kv_.type()) {
          case GgmlType::F32:
            kernels::axpy(scores[p], {reinterpret_cast<const float*>(v), hd}, out);
            break;
          case GgmlType::F16:
            kernels::axpy_f16(scores[p], {reinterpret_cast<const uint16_t*>(v), hd}, out);
            break;
          default:
            kernels::axpy_q8_0(scores[p], {v, head_bytes}, out);
            break;
        }
      }
    }
  });
}

std::span<const float> Engine::logits_row(size_t k) const {
  if (k >= n_logits_) {
    throw std::out_of_range("logits row " + std::to_string(k) +
                            " requested, the last forward made " + std::to_string(n_logits_));
  }
  const size_t v = config().n_vocab;
  return {logits_.data() + k * v, v};
}

std::span<const float> Engine::eval(size_t seq, std::span<const int32_t> tokens, bool all_logits,
                                    std::vector<float>* out) {
  if (tokens.empty()) throw std::invalid_argument("eval: no tokens");
  if (all_logits && out == nullptr) throw std::invalid_argument("eval: all_logits needs `out`");
  const size_t v = config().n_vocab;
  if (all_logits) out->resize(tokens.size() * v);
  Batch batch;
  batch.entries.reserve(std::min(tokens.size(), max_batch_));
  std::span<const float> last;
  for (size_t start = 0; start < tokens.size(); start += max_batch_) {
    const size_t count = std::min(max_batch_, tokens.size() - start);
    batch.clear();
    const size_t pos0 = kv_.length(seq);
    for (size_t j = 0; j < count; ++j) {
      const bool is_last = start + j + 1 == tokens.size();
      batch.add(static_cast<int32_t>(seq), static_cast<int32_t>(pos0 + j), tokens[start + j],
                all_logits || is_last);
    }
    last = forward(batch);
    if (all_logits)
      std::copy(last.begin(), last.end(), out->begin() + static_cast<long>(start * v));
  }
  if (all_logits) return *out;
  return last.subspan(last.size() - v);
}

}  // namespace kiln
