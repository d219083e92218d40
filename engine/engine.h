// The CPU forward pass of a Llama model over a batch of (sequence, position,
// token) entries, with a per-sequence KV cache.
//
// One Engine is one inference context: it owns the KV cache, the thread pool
// and every activation buffer, all allocated in the constructor (sized by
// max_batch and n_ctx), so forward() never allocates. The same call runs a
// whole prompt of one sequence (prefill, matmul with m = n tokens) or one new
// token for each of several sequences (batched decode for the server).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/panel_cache.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace kiln {

class ThreadPool;

struct BatchEntry {
  int32_t seq = 0;            // sequence id == KV cache slot, in [0, n_seq)
  int32_t pos = 0;            // position in the sequence; must be its next free position
  int32_t token = 0;          // token id, in [0, n_vocab)
  bool wants_logits = false;  // produce a logits row for this entry
};

struct Batch {
  std::vector<BatchEntry> entries;

  void add(int32_t seq, int32_t pos, int32_t token, bool wants_logits) {
    entries.push_back({seq, pos, token, wants_logits});
  }
  void clear() { entries.clear(); }
  size_t size() const { return entries.size(); }
  bool empty() const { return entries.empty(); }
};

struct EngineOptions {
  size_t n_ctx = 0;        // positions per sequence; 0: the model's context length, at most 4096
  size_t n_seq = 1;        // sequences (KV slots) that can be live at once
  size_t max_batch = 512;  // most entries in one forward call
  int n_threads = 0;       // 0: default_thread_count()
  GgmlType kv_type = GgmlType::F16;  // F16, F32 or Q8_0
  // Copy the weights out of the file mapping into anonymous memory backed by 2 MiB
  // transparent huge pages (see Engine). Costs a copy of the tensor data at construction and
  // a second home for the weights (the file's pages stay in the page cache), so it is
  // opt-in (--hugepage-weights); by default the forward reads the memory-mapped file and,
  // with panel_cache_dir, the memory-mapped panel cache.
  bool resident_weights = false;
  // Without resident_weights: fault the file mapping in at construction, on 2 MiB pages
  // where the kernel and filesystem provide them (gguf::File::map_on_huge_pages; the page
  // cache is re-read once if it holds the file in small pages). Decode streams the mapped
  // weights as fast as a huge-page copy then, without the copy (--no-hugepage-mmap: off).
  bool huge_page_mapping = true;
  // Without resident_weights: the folder of the panel cache (engine/panel_cache.h), from
  // which the matrices the forward reads as pre-packed panels are memory-mapped (packed
  // into it on first use); empty: none, the forward reads the model's own blocks. Where
  // the cache can neither be read nor written the engine runs without it and says why
  // (weights_description()). The CLI's default is default_panel_cache_dir().
  std::filesystem::path panel_cache_dir;
  // Told what takes long at construction (packing the panel cache on a model's first use),
  // one line at a time; may be empty.
  std::function<void(std::string_view)> progress;
  // Activation quantization of the matmuls: int16 (two int8 planes) for accuracy close to
  // float activations (issue #5) at some speed cost; int8 is the fast default.
  kernels::ActPrecision act_precision = kernels::ActPrecision::int8;
  // Which weight types a batch of decode tokens sends through the GEMM (kernels::BatchGemm,
  // --batch-gemm): by default those where the GEMM's few-token twin costs a lone token
  // nothing (SmolLM2: a step of 8 sequences ~1.5x faster, one sequence no slower). Outputs
  // stay the same alone or batched whatever the choice.
  kernels::BatchGemm batch_gemm = kernels::BatchGemm::fast;
};

// Anonymous memory, 2 MiB aligned and advised for transparent huge pages (the kernel
// grants them when it can; the bytes are valid either way). Not zero-filled.
class HugePageBuffer {
 public:
  HugePageBuffer() = default;
  explicit HugePageBuffer(size_t bytes);
  ~HugePageBuffer();
  HugePageBuffer(HugePageBuffer&& other) noexcept;
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept;

  std::span<std::byte> bytes() const { return {data_, size_}; }

 private:
  void* mapping_ = nullptr;  // what mmap returned (mapping_size_ bytes)
  size_t mapping_size_ = 0;
  std::byte* data_ = nullptr;  // 2 MiB aligned, inside the mapping
  size_t size_ = 0;
};

class Engine {
 public:
  // The model must outlive the engine.
  Engine(const Model& model, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Runs one batch. Returns the logits of the entries that want them, in batch
  // order, as rows of n_vocab floats (view valid until the next call). Throws
  // std::invalid_argument for a bad entry (unknown sequence, token out of
  // range, a position that is not the sequence's next one, a full context,
  // too many entries) before touching any state.
  std::span<const float> forward(const Batch& batch);

  // Row k of the last forward's logits (k-th entry that wanted logits).
  std::span<const float> logits_row(size_t k) const;

  const Model& model() const { return model_; }
  // The weights the forward reads: the model's, their resident copy, or the model's with
  // panels from the panel cache.
  const Weights& weights() const { return weights_; }
  // Where the forward's weights come from, in one line for logs and benchmarks ("mapped,
  // 578.0 of 636.9 MiB on 2 MiB pages", the panel cache used or made, or why not).
  std::string weights_description() const;
  const PanelCache& panel_cache() const { return panel_cache_; }
  const ModelConfig& config() const { return model_.config(); }
  size_t n_ctx() const { return kv_.n_ctx(); }
  size_t n_seq() const { return kv_.n_seq(); }
  size_t max_batch() const { return max_batch_; }
  int n_threads() const { return n_threads_; }
  KvCache& kv_cache() { return kv_; }
  const KvCache& kv_cache() const { return kv_; }
  ThreadPool& thread_pool() { return *pool_; }

  // A sequence's rows in one forward form runs (consecutive entries of that sequence). From
  // this many rows on, a run's matmuls may take another kernel path than a shorter run's
  // (project(): matmul's GEMM against the per-row kernels, for the weight types whose batch
  // path differs from matmul's under batch_gemm), so a row's logits can differ in their last
  // bits with the length of the run it was computed in. 0: they never do with this model and
  // these options (every row's result is the same however its sequence is fed).
  size_t run_length_threshold() const { return run_length_threshold_; }

  // Sequence management (server slots, prompt-prefix reuse).
  size_t seq_length(size_t seq) const { return kv_.length(seq); }
  void clear(size_t seq) { kv_.clear(seq); }
  void truncate(size_t seq, size_t pos) { kv_.truncate(seq, pos); }
  // Positions [0, n) of sequence dst become a copy of src's (KvCache::copy_prefix).
  void copy_prefix(size_t src, size_t dst, size_t n) { kv_.copy_prefix(src, dst, n); }

  // Evaluates `tokens` for one sequence from its current length on, in chunks
  // of max_batch. Returns the logits of the last token, or of every token
  // (rows in order) when all_logits is set; then the view lives in `out`.
  std::span<const float> eval(size_t seq, std::span<const int32_t> tokens, bool all_logits,
                              std::vector<float>* out = nullptr);

 private:
  void validate(const Batch& batch);
  // Points the packed matrices' panels into the panel cache in `dir`. True when every
  // matrix the forward reads then has its panels there.
  bool attach_panel_cache(const std::filesystem::path& dir,
                          const std::function<void(std::string_view)>& progress);
  void attention(size_t layer, size_t n);
  // y_i = x @ W_i^T for every target, where all the W_i read the same input x (n rows);
  // row_seq[r] is the sequence row r belongs to (it picks the kernel path, see there).
  void project(std::initializer_list<kernels::MatmulTarget> targets, std::span<const float> x,
               size_t n, std::span<const int32_t> row_seq);

  const Model& model_;
  // Decode streams every weight once per token. Read through the file mapping's 4 KiB
  // pages, the TLB misses cost about 15% of the read bandwidth on the 2-core test machine
  // (35 vs 30 GB/s for a plain streaming sum); so with resident_weights the tensor data is
  // copied into huge pages and weights_ points there (by default, at the mapping). The
  // matrices whose GEMM the forward uses for lone tokens too are kept there as pre-packed
  // panels instead (WeightView::panels): the GEMM's results without its per-call repack.
  HugePageBuffer resident_;
  Weights weights_;
  // Panels of the matrices the forward reads packed, mapped from the panel cache file (with
  // panel_cache_dir), and why the cache is not used where it was asked for but failed.
  PanelCache panel_cache_;
  std::string panel_cache_error_;
  std::vector<float> float_copies_;        // the norms, with the panel cache (attach_panel_cache)
  bool model_mapping_faulted_in_ = false;  // on 2 MiB pages where granted (huge_page_mapping)
  size_t run_length_threshold_ = 0;
  size_t max_batch_;
  int n_threads_;
  std::unique_ptr<ThreadPool> pool_;
  KvCache kv_;
  kernels::ActPrecision act_precision_;
  kernels::BatchGemm batch_gemm_;

  // Activations, row-major (max_batch, width).
  std::vector<float> x_;         // (B, dim) residual stream
  std::vector<float> xb_;        // (B, dim) normed input of a sub-layer / its output
  std::vector<float> q_;         // (B, q_dim)
  std::vector<float> k_;         // (B, kv_dim)
  std::vector<float> v_;         // (B, kv_dim)
  std::vector<float> att_;       // (B, q_dim) attention output
  std::vector<float> gate_;      // (B, ffn_dim)
  std::vector<float> up_;        // (B, ffn_dim)
  std::vector<float> rope_cos_;  // (B, rope_dim/2)
  std::vector<float> rope_sin_;  // (B, rope_dim/2)
  std::vector<float> scores_;    // (n_threads, tile rows x heads per KV head, n_ctx) weights
  // Attention split over chunks of positions (lone tokens with long contexts, engine.cpp):
  std::vector<float> split_out_;                    // (n_seq, chunks, q_dim) pieces' V sums
  std::vector<kernels::SoftmaxPiece> split_stats_;  // (n_seq, chunks, n_heads) max and sum
  std::vector<size_t> split_entry_;                 // (n_seq) batch rows split this layer
  std::vector<size_t> split_item_start_;            // (n_seq + 1) first work item of each
  struct AttentionTile {
    size_t first, rows;  // consecutive batch rows of one sequence
  };
  std::vector<AttentionTile> tiles_;  // (B) this layer's attention tiles (engine.cpp)
  std::vector<float> tile_q_;         // (n_threads, tile rows x heads per KV head, head_dim)
  std::vector<float> tile_out_;       // (n_threads, tile rows x heads per KV head, head_dim)
  std::vector<float> kv_row_;         // (n_threads, kv_dim) staging for quantized cache rows
  std::vector<float> logits_;         // (B, n_vocab)
  std::vector<std::byte> matmul_scratch_;
  std::vector<int32_t> row_seq_;    // (B) sequence of each batch row
  std::vector<int32_t> logit_seq_;  // (B) sequence of each packed logits row
  std::vector<size_t> next_pos_;    // (n_seq) validation scratch
  size_t n_logits_ = 0;
  const BatchEntry* entries_ = nullptr;  // batch of the running forward (for attention workers)
};

// Checks a batch before any state changes (the CPU and CUDA engines' forward both start
// here): at most max_batch entries; each sequence id in [0, next_pos.size()), each token in
// [0, n_vocab), each position its sequence's next one (next_pos, advanced as entries are
// read), and room left in n_ctx. Throws std::invalid_argument naming the entry.
void validate_batch(const Batch& batch, size_t n_vocab, size_t max_batch, size_t n_ctx,
                    std::span<size_t> next_pos);

// The body of eval() for any engine with forward(Batch) (the CPU Engine and the CudaEngine):
// `tokens` of sequence `seq` from position pos0 on, in batches of max_batch; returns the last
// token's logits, or every token's in `out` when all_logits is set.
template <typename AnyForward>
std::span<const float> eval_in_batches(AnyForward& engine, size_t seq, size_t pos0,
                                       std::span<const int32_t> tokens, bool all_logits,
                                       std::vector<float>* out) {
  if (tokens.empty()) throw std::invalid_argument("eval: no tokens");
  if (all_logits && out == nullptr) throw std::invalid_argument("eval: all_logits needs `out`");
  const size_t v = engine.config().n_vocab, max_batch = engine.max_batch();
  if (all_logits) out->resize(tokens.size() * v);
  Batch batch;
  batch.entries.reserve(std::min(tokens.size(), max_batch));
  std::span<const float> last;
  for (size_t start = 0; start < tokens.size(); start += max_batch) {
    const size_t count = std::min(max_batch, tokens.size() - start);
    batch.clear();
    for (size_t j = 0; j < count; ++j) {
      const bool is_last = start + j + 1 == tokens.size();
      batch.add(static_cast<int32_t>(seq), static_cast<int32_t>(pos0 + start + j),
                tokens[start + j], all_logits || is_last);
    }
    last = engine.forward(batch);
    if (all_logits)
      std::copy(last.begin(), last.end(), out->begin() + static_cast<long>(start * v));
  }
  if (all_logits) return *out;
  return last.subspan(last.size() - v);
}

// Context size for `requested` (0: model default) capped by the model's own.
size_t default_context_length(const ModelConfig& config, size_t requested);

}  // namespace kiln
