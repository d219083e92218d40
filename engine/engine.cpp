#include "engine/engine.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/quants.h"
#include "kernels/thread_pool.h"

namespace kiln {

namespace {

constexpr size_t kDefaultContextCap = 4096;
constexpr size_t kHugePage = size_t{2} << 20;
// Rows in a run of at least this many consecutive rows of one sequence (a prompt chunk) call
// matmul() per weight, whose GEMM kernels pay off from about 8 tokens; all other rows
// (decode: one token per sequence) go through matmul_group: one dispatch for the weights
// that share an input, with the activations quantized once.
constexpr size_t kGemmMinRun = 8;

// Attention of a lone token (a decode step: its sequence's only row in the batch) over more
// than kSplitMinPositions positions of an F16 cache is split over chunks of positions, each
// chunk one work item for the KV head's whole group of query heads, the pieces combined by
// their softmax maxima and sums after: a decode token of a model with few KV heads (SmolLM2:
// 3) otherwise had one item per query head, which 2 threads share unevenly and which each
// read the KV head's rows again. The chunks depend on the position count alone, so a
// sequence's logits stay the same alone or batched. Rows of a prompt piece are many already:
// they go in tiles (kTileRows).
constexpr size_t kSplitMinPositions = 512;
constexpr size_t kSplitMinChunk = 256;  // positions
constexpr size_t kMaxSplitChunks = 16;

// Rows of one sequence in a batch (a prompt piece) take their attention in tiles of up to
// kTileRows consecutive rows: one item reads each K row and converts it to float once for
// the tile's rows x heads, where a row at a time read the whole cache again for every row
// (prompt processing at a depth was bound by that traffic). Scores past a row's own
// position get zero weight, so each row's result is what it alone would get.
constexpr size_t kTileRows = 8;

// The chunk length (a multiple of 16 positions) and count for n_pos positions.
std::pair<size_t, size_t> split_chunks(size_t n_pos) {
  const size_t want = std::min(kMaxSplitChunks, (n_pos + kSplitMinChunk - 1) / kSplitMinChunk);
  const size_t len = ((n_pos + want - 1) / want + 15) / 16 * 16;
  return {len, (n_pos + len - 1) / len};
}

// The forward reads this matrix as pre-packed panels where it has them (resident weights or
// the panel cache): the packed kernels read int8 activations (int16 ones keep every matrix
// as blocks), and a type's panels serve a lone token when its GEMM twin is as fast alone or
// its packed kernel is (or under BatchGemm::all, always).
bool reads_panels(const WeightView& v, kernels::ActPrecision precision, kernels::BatchGemm policy) {
  return precision == kernels::ActPrecision::int8 &&
         kernels::packed_panels_bytes(v.type, v.rows, v.cols) > 0 &&
         (kernels::gemm_kernel(v.type).small_fast_alone ||
          kernels::gemm_kernel(v.type).packed_fast_alone || policy == kernels::BatchGemm::all);
}

// The file's bytes behind `src` (a view into f's mapping) into dst, read through pread so
// the mapping's pages are not faulted in (they would count in our RSS a second time); from
// the mapping where the file cannot be read that way.
void copy_out_of_mapping(const gguf::File& f, std::span<const std::byte> src,
                         std::span<std::byte> dst) {
  const auto at = static_cast<uint64_t>(src.data() - f.bytes().data());
  if (!gguf::read_file_range(f.path(), f.file_size(), at, dst)) {
    std::memcpy(dst.data(), src.data(), src.size());
  }
}

// The weights' float vectors: the norms, and the RoPE frequency factors where present.
std::vector<std::span<const float>*> float_vectors(Weights& w) {
  std::vector<std::span<const float>*> floats{&w.output_norm};
  if (!w.rope_freqs.empty()) floats.push_back(&w.rope_freqs);
  for (LayerWeights& l : w.layers) {
    floats.push_back(&l.attn_norm);
    floats.push_back(&l.ffn_norm);
  }
  return floats;
}

// Resident weights: a copy of the model's weights in `buffer` (huge pages), made without
// touching the file mapping's pages (they would count in our RSS a second time).
// A matrix whose type has pre-packed panels that the forward will read (int8 activations,
// and the types whose GEMM twin serves a lone token, or every type under BatchGemm::all) is
// stored only as its panels; its `data` stays on the mapping, read only by paths that do not
// run by default (--batch-gemm off). Everything else the forward reads (norms, the
// embedding table, the other matrices) is copied as is. Without the memory for the copy the
// model's own views are returned: slower, the same results.
Weights copy_weights(const Model& model, kernels::ActPrecision precision, kernels::BatchGemm policy,
                     HugePageBuffer& buffer, ThreadPool& pool) {
  constexpr size_t kAlign = 64;
  const auto aligned = [](size_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  const gguf::File& f = model.file();
  Weights w = model.weights();
  if (std::all_of(f.tensors().begin(), f.tensors().end(),
                  [](const gguf::TensorInfo& t) { return t.data.empty(); })) {
    return w;  // no tensor data to copy
  }

  std::vector<WeightView*> matrices;
  w.for_each_matrix([&](WeightView& m) { matrices.push_back(&m); });
  const auto packs = [&](const WeightView& v) { return reads_panels(v, precision, policy); };
  // The byte spans to copy, each once (a tied output shares the embedding's bytes).
  std::vector<std::span<const std::byte>*> raw;
  const auto add_raw = [&](std::span<const std::byte>& s) {
    if (s.empty()) return;
    for (const auto* r : raw) {
      if (r->data() == s.data()) return;
    }
    raw.push_back(&s);
  };
  add_raw(w.token_embd.data);
  for (WeightView* m : matrices) {
    if (!packs(*m)) add_raw(m->data);
  }
  const std::vector<std::span<const float>*> floats = float_vectors(w);
  size_t total = 0, largest_packed = 0;
  for (const auto* r : raw) total += aligned(r->size());
  for (const auto* fl : floats) total += aligned(fl->size_bytes());
  for (const WeightView* m : matrices) {
    if (!packs(*m)) continue;
    total += aligned(kernels::packed_panels_bytes(m->type, m->rows, m->cols));
    largest_packed = std::max(largest_packed, m->data.size());
  }
  try {
    buffer = HugePageBuffer(total);
  } catch (const std::bad_alloc&) {
    return w;
  }

  size_t offset = 0;
  const auto take = [&](size_t bytes) {
    const std::span<std::byte> out = buffer.bytes().subspan(offset, bytes);
    offset += aligned(bytes);
    return out;
  };
  const auto read = [&](std::span<const std::byte> src, std::span<std::byte> dst) {
    copy_out_of_mapping(f, src, dst);
  };
  const std::byte* embedding = w.token_embd.data.data();
  for (auto* r : raw) {
    const std::span<std::byte> dst = take(r->size());
    read(*r, dst);
    *r = dst;
  }
  // A tied output reads the embedding's copy.
  if (w.output.data.data() == embedding) w.output.data = w.token_embd.data;
  for (auto* fl : floats) {
    const std::span<std::byte> dst = take(fl->size_bytes());
    read(std::as_bytes(*fl), dst);
    *fl = {reinterpret_cast<const float*>(dst.data()), fl->size()};
  }
  // Each packed matrix is read into a staging buffer and packed from there.
  std::vector<std::byte> staging(largest_packed);
  for (WeightView* m : matrices) {
    if (!packs(*m)) continue;
    const std::span<std::byte> blocks(staging.data(), m->data.size());
    read(m->data, blocks);
    const std::span<std::byte> out = take(kernels::packed_panels_bytes(m->type, m->rows, m->cols));
    kernels::pack_panels({m->type, blocks, m->rows, m->cols}, out, pool);
    m->panels = out;
  }
  return w;
}

kernels::WeightMatrix as_matrix(const WeightView& w) {
  return {w.type, w.data, w.rows, w.cols, w.panels};
}

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

HugePageBuffer::HugePageBuffer(size_t bytes) {
  if (bytes == 0) return;
  // One huge page of slack so that a 2 MiB aligned start fits in the mapping.
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  mapping_size_ = rounded + kHugePage;
  mapping_ =
      mmap(nullptr, mapping_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    throw std::bad_alloc();
  }
  const auto address = reinterpret_cast<uintptr_t>(mapping_);
  data_ = static_cast<std::byte*>(mapping_) + (kHugePage - address % kHugePage) % kHugePage;
  size_ = bytes;
  // Advice only: where the kernel has no huge pages to give, 4 KiB pages work the same.
  madvise(data_, rounded, MADV_HUGEPAGE);
#ifdef MADV_POPULATE_WRITE
  // Fault every page in now, in one call, rather than one fault per page on first write
  // (kernels before 5.14 reject this; the pages then fault in as they are written).
  madvise(data_, rounded, MADV_POPULATE_WRITE);
#endif
}

HugePageBuffer::~HugePageBuffer() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

HugePageBuffer::HugePageBuffer(HugePageBuffer&& other) noexcept
    : mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_size_(std::exchange(other.mapping_size_, 0)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

HugePageBuffer& HugePageBuffer::operator=(HugePageBuffer&& other) noexcept {
  if (this != &other) {
    if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

size_t default_context_length(const ModelConfig& config, size_t requested) {
  if (requested != 0) return requested;
  return std::min(config.n_ctx_train, kDefaultContextCap);
}

Engine::Engine(const Model& model, const EngineOptions& options)
    : model_(model),
      weights_(model.weights()),
      max_batch_(options.max_batch),
      n_threads_(options.n_threads > 0 ? options.n_threads : default_thread_count()),
      pool_(std::make_unique<ThreadPool>(n_threads_)),
      kv_(options.kv_type, model.config().n_layers, options.n_seq,
          default_context_length(model.config(), options.n_ctx), model.config().n_kv_heads,
          model.config().head_dim),
      act_precision_(options.act_precision),
      batch_gemm_(options.batch_gemm) {
  const ModelConfig& c = model.config();
  if (max_batch_ == 0) throw std::invalid_argument("max_batch must be at least 1");
  bool every_matrix_packed = false;
  if (options.resident_weights) {
    weights_ = copy_weights(model, act_precision_, batch_gemm_, resident_, *pool_);
  } else if (!options.panel_cache_dir.empty()) {
    every_matrix_packed = attach_panel_cache(options.panel_cache_dir, options.progress);
  }
  // With every matrix read from the panel cache, the model's mapping serves only the
  // embedding rows and the norms: faulted in as read, not all of it.
  if (!options.resident_weights && options.huge_page_mapping && !every_matrix_packed) {
    model.file().map_on_huge_pages();
    model_mapping_faulted_in_ = true;
  }
  // (After the copy: a matrix's path depends on whether it has pre-packed panels.)
  weights_.for_each_matrix([&](const WeightView& m) {
    if (!kernels::matmul_group_runs_like_matmul(m.type, act_precision_, batch_gemm_,
                                                !m.panels.empty())) {
      run_length_threshold_ = kGemmMinRun;
    }
  });
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
  scores_.resize(static_cast<size_t>(n_threads_) * kTileRows * (c.n_heads / c.n_kv_heads) *
                 kv_.n_ctx());
  tile_q_.resize(static_cast<size_t>(n_threads_) * kTileRows * c.q_dim() / c.n_kv_heads);
  tile_out_.resize(tile_q_.size());
  tiles_.resize(max_batch_);
  split_out_.resize(kv_.n_seq() * kMaxSplitChunks * c.q_dim());
  split_stats_.resize(kv_.n_seq() * kMaxSplitChunks * c.n_heads);
  split_entry_.resize(kv_.n_seq());
  split_item_start_.resize(kv_.n_seq() + 1);
  logits_.resize(b * c.n_vocab);
  row_seq_.resize(b);
  logit_seq_.resize(b);
  next_pos_.resize(kv_.n_seq());

  // One scratch buffer big enough for the largest matmul at full batch.
  size_t scratch = 0;
  auto need = [&](const WeightView& w) {
    scratch = std::max(scratch, kernels::matmul_scratch_bytes(w.type, w.cols, b, act_precision_));
  };
  const Weights& w = weights_;
  w.for_each_matrix(need);
  // The grouped decode path, at its largest batch (a batch of single tokens).
  const size_t grouped = b;
  auto need_group = [&](std::initializer_list<const WeightView*> ws) {
    std::array<GgmlType, kernels::kMaxGroupTargets> types{};
    size_t k = 0;
    for (const WeightView* m : ws) types[k++] = m->type;
    scratch =
        std::max(scratch, kernels::matmul_group_scratch_bytes(
                              {types.data(), k}, (*ws.begin())->cols, grouped, act_precision_));
  };
  for (const auto& l : w.layers) {
    need_group({&l.attn_q, &l.attn_k, &l.attn_v});
    need_group({&l.attn_output});
    need_group({&l.ffn_gate, &l.ffn_up});
    need_group({&l.ffn_down});
  }
  need_group({&w.output});
  matmul_scratch_.resize(scratch);
}

Engine::~Engine() = default;

bool Engine::attach_panel_cache(const std::filesystem::path& dir,
                                const std::function<void(std::string_view)>& progress) {
  std::vector<WeightView*> packed;
  bool every = true;
  weights_.for_each_matrix([&](WeightView& m) {
    if (reads_panels(m, act_precision_, batch_gemm_)) {
      packed.push_back(&m);
    } else {
      every = false;
    }
  });
  if (packed.empty()) return false;
  std::vector<kernels::WeightMatrix> matrices;
  for (const WeightView* m : packed) matrices.push_back(as_matrix(*m));
  try {
    panel_cache_ = PanelCache::open(model_.file(), matrices, dir, *pool_, progress);
  } catch (const std::exception& e) {
    panel_cache_error_ = e.what();  // the forward reads the blocks: slower, the same results
    return false;
  }
  for (size_t i = 0; i < packed.size(); ++i) packed[i]->panels = panel_cache_.panels(i);
  // The norms, copied out of the mapping (read through pread): each sits between two
  // matrices in the file, and faulting it in would map the 2 MiB page around it, ~90 MiB of
  // RSS for a 22-layer model whose matrices the forward no longer reads there.
  const std::vector<std::span<const float>*> floats = float_vectors(weights_);
  size_t n = 0;
  for (const auto* f : floats) n += f->size();
  float_copies_.resize(n);
  size_t at = 0;
  for (auto* f : floats) {
    const std::span<float> dst(float_copies_.data() + at, f->size());
    copy_out_of_mapping(model_.file(), std::as_bytes(*f), std::as_writable_bytes(dst));
    *f = dst;
    at += f->size();
  }
  return every;
}

std::string Engine::weights_description() const {
  char line[512];
  // (Empty where resident weights were asked for but could not be copied: then mapped.)
  if (!resident_.bytes().empty()) return "a resident copy on 2 MiB pages (--hugepage-weights)";
  std::string out = "mapped";
  if (model_mapping_faulted_in_) {
    const auto huge = model_.file().map_on_huge_pages();  // the constructor's report
    std::snprintf(line, sizeof line, ", %.1f of %.1f MiB on 2 MiB pages%s",
                  double(huge.huge_bytes) / (1 << 20), double(huge.mapped_bytes) / (1 << 20),
                  huge.reread ? " (page cache re-read once for them)" : "");
    out += line;
  }
  if (!panel_cache_.empty()) {
    const auto huge = panel_cache_.huge_pages();
    std::snprintf(line, sizeof line,
                  "; pre-packed panels %s %s in %.1f s (%.1f MiB, %.1f on 2 MiB pages)",
                  panel_cache_.created() ? "packed into" : "from", panel_cache_.path().c_str(),
                  panel_cache_.seconds(), double(panel_cache_.bytes()) / (1 << 20),
                  double(huge.huge_bytes) / (1 << 20));
    out += line;
  } else if (!panel_cache_error_.empty()) {
    out += "; no panel cache: " + panel_cache_error_;
  }
  return out;
}

void validate_batch(const Batch& batch, size_t n_vocab, size_t max_batch, size_t n_ctx,
                    std::span<size_t> next_pos) {
  if (batch.size() > max_batch) {
    throw std::invalid_argument("batch of " + std::to_string(batch.size()) +
                                " entries exceeds the context's max batch " +
                                std::to_string(max_batch));
  }
  for (const BatchEntry& e : batch.entries) {
    if (e.seq < 0 || static_cast<size_t>(e.seq) >= next_pos.size()) {
      throw std::invalid_argument("sequence id " + std::to_string(e.seq) +
                                  " is out of range: the context has " +
                                  std::to_string(next_pos.size()) + " sequences");
    }
    if (e.token < 0 || static_cast<size_t>(e.token) >= n_vocab) {
      throw std::invalid_argument("token id " + std::to_string(e.token) +
                                  " is out of range: the vocabulary has " +
                                  std::to_string(n_vocab) + " tokens");
    }
    size_t& next = next_pos[static_cast<size_t>(e.seq)];
    if (e.pos < 0 || static_cast<size_t>(e.pos) != next) {
      throw std::invalid_argument("sequence " + std::to_string(e.seq) + " expects position " +
                                  std::to_string(next) + ", the batch gives " +
                                  std::to_string(e.pos));
    }
    if (next >= n_ctx) {
      throw std::invalid_argument("context full: sequence " + std::to_string(e.seq) +
                                  " already holds " + std::to_string(next) +
                                  " positions, the context size is " + std::to_string(n_ctx) +
                                  " (raise -c)");
    }
    ++next;
  }
}

void Engine::validate(const Batch& batch) {
  for (size_t s = 0; s < next_pos_.size(); ++s) next_pos_[s] = kv_.length(s);
  validate_batch(batch, config().n_vocab, max_batch_, kv_.n_ctx(), next_pos_);
}

std::span<const float> Engine::forward(const Batch& batch) {
  validate(batch);
  const ModelConfig& c = config();
  const Weights& w = weights_;
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

  for (size_t i = 0; i < n; ++i) row_seq_[i] = batch.entries[i].seq;
  const std::span<const int32_t> seqs(row_seq_.data(), n);

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
    project({{as_matrix(l.attn_q), rows(q_, n, q_dim)},
             {as_matrix(l.attn_k), rows(k_, n, kv_dim)},
             {as_matrix(l.attn_v), rows(v_, n, kv_dim)}},
            rows(xb_, n, dim), n, seqs);

    // RoPE on q and k (adjacent-pair layout: the GGUF converter permuted Q/K for it),
    // then k and v stored in the cache at (seq, pos), converted to the cache type.
    for_each_row(*pool_, n, [&](size_t i) {
      const auto cos = row(rope_cos_, i, half_rope), sin = row(rope_sin_, i, half_rope);
      kernels::rope_normal(row(q_, i, q_dim), c.n_heads, c.head_dim, c.rope_dim, cos, sin);
      kernels::rope_normal(row(k_, i, kv_dim), c.n_kv_heads, c.head_dim, c.rope_dim, cos, sin);

      const auto seq = static_cast<size_t>(batch.entries[i].seq);
      const auto pos = static_cast<size_t>(batch.entries[i].pos);
      const size_t hd = c.head_dim;
      for (size_t h = 0; h < c.n_kv_heads; ++h) {
        const auto k_src = row(k_, i, kv_dim).subspan(h * hd, hd);
        const auto v_src = row(v_, i, kv_dim).subspan(h * hd, hd);
        const auto k_dst = kv_.k_head(layer, seq, h, pos), v_dst = kv_.v_head(layer, seq, h, pos);
        switch (kv_.type()) {
          case GgmlType::F32:
            std::memcpy(k_dst.data(), k_src.data(), hd * sizeof(float));
            std::memcpy(v_dst.data(), v_src.data(), hd * sizeof(float));
            break;
          case GgmlType::F16:
            kernels::f32_to_f16_row(k_src, {reinterpret_cast<uint16_t*>(k_dst.data()), hd});
            kernels::f32_to_f16_row(v_src, {reinterpret_cast<uint16_t*>(v_dst.data()), hd});
            break;
          default:  // Q8_0
            kernels::quantize_q8_0(k_src, k_dst);
            kernels::quantize_q8_0(v_src, v_dst);
            break;
        }
      }
    });

    // Attention: att = softmax(q k^T / sqrt(head_dim)) v over positions [0, pos] of
    // the entry's own sequence (causal), each query head reading its K/V group (GQA).
    attention(layer, n);

    // Output projection: xb = att @ Wo^T.
    project({{as_matrix(l.attn_output), rows(xb_, n, dim)}}, rows(att_, n, q_dim), n, seqs);

    // Residual, then the FFN input: x += xb; xb = rmsnorm(x) * ffn_norm.
    for_each_row(*pool_, n, [&](size_t i) {
      kernels::add(row(x_, i, dim), row(xb_, i, dim));
      kernels::rmsnorm(row(x_, i, dim), l.ffn_norm, c.rms_eps, row(xb_, i, dim));
    });

    // SwiGLU: gate = silu(xb @ Wg^T) * (xb @ Wu^T).
    project(
        {{as_matrix(l.ffn_gate), rows(gate_, n, ffn)}, {as_matrix(l.ffn_up), rows(up_, n, ffn)}},
        rows(xb_, n, dim), n, seqs);
    for_each_row(*pool_, n, [&](size_t i) {
      kernels::silu_mul(row(gate_, i, ffn), row(up_, i, ffn), row(gate_, i, ffn));
    });

    // Down projection and residual: x += gate @ Wd^T.
    project({{as_matrix(l.ffn_down), rows(xb_, n, dim)}}, rows(gate_, n, ffn), n, seqs);
    kernels::add(rows(x_, n, dim), rows(xb_, n, dim));
  }

  // Final norm of the rows that want logits, packed: xb[k] = rmsnorm(x[i_k]) * output_norm.
  for (size_t i = 0; i < n; ++i) {
    if (!batch.entries[i].wants_logits) continue;
    kernels::rmsnorm(row(x_, i, dim), w.output_norm, c.rms_eps, row(xb_, n_logits_, dim));
    logit_seq_[n_logits_] = batch.entries[i].seq;
    ++n_logits_;
  }

  // Logits: (n_logits, n_vocab) = xb @ output^T.
  if (n_logits_ > 0) {
    project({{as_matrix(w.output), rows(logits_, n_logits_, c.n_vocab)}}, rows(xb_, n_logits_, dim),
            n_logits_, {logit_seq_.data(), n_logits_});
  }

  // The cache now holds every written position.
  for (const BatchEntry& e : batch.entries) {
    kv_.set_length(static_cast<size_t>(e.seq), static_cast<size_t>(e.pos) + 1);
  }
  entries_ = nullptr;
  return {logits_.data(), n_logits_ * c.n_vocab};
}

void Engine::project(std::initializer_list<kernels::MatmulTarget> targets, std::span<const float> x,
                     size_t n, std::span<const int32_t> row_seq) {
  // A row's result must not depend on what else is in the batch: a sequence gets
  // bit-identical logits alone or batched beside others (the server's greedy outputs rely
  // on it), and a prompt chunk the same result whatever runs next to it.
  //   matmul_group gives a row the same result for any m (the GEMM and its bit-identical
  //   few-token twin for the types batch_gemm picks, else the per-row dot kernels);
  //   matmul switches from the dot kernels to the GEMM at kGemmMinTokens rows.
  // Where the two agree for long runs, the whole batch is one matmul_group call (one pass
  // over the weights per step). Otherwise each sequence's run picks its path: runs long
  // enough for the GEMM go to matmul, the rest (lone decode tokens) to matmul_group.
  const size_t cols = targets.begin()->w.cols;
  // (No weight of this model takes another path by run length: always one call.)
  const bool one_call =
      run_length_threshold_ == 0 || std::all_of(targets.begin(), targets.end(), [&](const auto& t) {
        return kernels::matmul_group_runs_like_matmul(t.w.type, act_precision_, batch_gemm_,
                                                      !t.w.panels.empty());
      });
  if (one_call) {
    kernels::matmul_group(targets, x, n, matmul_scratch_, *pool_, act_precision_, batch_gemm_);
    return;
  }
  const auto run_end = [&](size_t i) {
    size_t j = i + 1;
    while (j < n && row_seq[j] == row_seq[i]) ++j;
    return j;
  };
  std::array<kernels::MatmulTarget, kernels::kMaxGroupTargets> part{};
  for (size_t i = 0; i < n;) {
    size_t end = run_end(i);
    const bool gemm = end - i >= kGemmMinRun;
    // Extend over the following runs of the same kind: one call for all of them.
    while (end < n && (run_end(end) - end >= kGemmMinRun) == gemm) end = run_end(end);
    const size_t m = end - i;
    size_t k = 0;
    for (const kernels::MatmulTarget& t : targets) {
      part[k++] = {t.w, t.y.subspan(i * t.w.rows, m * t.w.rows)};
    }
    const auto xs = x.subspan(i * cols, m * cols);
    if (gemm) {
      for (size_t t = 0; t < k; ++t) {
        kernels::matmul(part[t].w, xs, m, part[t].y, matmul_scratch_, *pool_, act_precision_);
      }
    } else {
      kernels::matmul_group({part.data(), k}, xs, m, matmul_scratch_, *pool_, act_precision_,
                            batch_gemm_);
    }
    i = end;
  }
}

void Engine::attention(size_t layer, size_t n) {
  // Work items are (tile, KV head, run of the query heads that share it): one pass over the
  // KV head's cache serves the tile's rows and the whole run. Runs are whole groups when
  // there are enough items to keep every thread busy, else split (a lone decode token of a
  // model with few KV heads). A lone token with a long context is split over positions
  // instead (see kSplitMinPositions): items (split entry, KV head, chunk), first, and no
  // tile. Threads claim items one at a time, so uneven items (later prompt rows see more
  // positions) even out.
  const ModelConfig& c = config();
  const size_t group = c.n_heads / c.n_kv_heads;
  const bool f16 = kv_.type() == GgmlType::F16;
  // One pass over the rows: the split entries (lone rows of their sequence past
  // kSplitMinPositions; at most n_seq of them, one per sequence in any batch the server
  // builds), and tiles of up to kTileRows consecutive rows of one sequence for the rest
  // (F16 cache; else one row each).
  size_t n_tiles = 0, n_split = 0, split_items = 0;
  split_item_start_[0] = 0;
  for (size_t i = 0; i < n; ++i) {
    const int32_t seq = entries_[i].seq;
    const bool after_same = i > 0 && entries_[i - 1].seq == seq;
    const bool lone = !after_same && (i + 1 == n || entries_[i + 1].seq != seq);
    const auto n_pos = static_cast<size_t>(entries_[i].pos) + 1;
    if (f16 && lone && n_pos > kSplitMinPositions && n_split < split_entry_.size()) {
      split_entry_[n_split] = i;
      split_items += c.n_kv_heads * split_chunks(n_pos).second;
      split_item_start_[++n_split] = split_items;
    } else if (after_same && tiles_[n_tiles - 1].rows < (f16 ? kTileRows : 1)) {
      ++tiles_[n_tiles - 1].rows;  // (a split row is lone: the next row is not after_same)
    } else {
      tiles_[n_tiles++] = {i, 1};
    }
  }
  const size_t want_items = 4 * static_cast<size_t>(n_threads_);
  const size_t tile_items = std::max<size_t>(1, n_tiles * c.n_kv_heads);
  const size_t splits = std::min(group, (want_items + tile_items - 1) / tile_items);
  const size_t run = (group + splits - 1) / splits;  // query heads per item

  struct Job {
    Engine* self;
    size_t layer, n_tiles, run, n_split, split_items;
    std::atomic<size_t> next{0};
  } job{this, layer, n_tiles, run, n_split, split_items};
  Job* jp = &job;
  pool_->run([jp](int thread_index, int) {
    Engine& e = *jp->self;
    const ModelConfig& c = e.config();
    const size_t hd = c.head_dim, q_dim = c.q_dim(), n_ctx = e.kv_.n_ctx();
    const size_t group = c.n_heads / c.n_kv_heads;
    const size_t runs_per_group = (group + jp->run - 1) / jp->run;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const size_t items = jp->split_items + jp->n_tiles * c.n_kv_heads * runs_per_group;
    const auto ti = static_cast<size_t>(thread_index);
    float* scores = e.scores_.data() + ti * kTileRows * group * n_ctx;
    float* tile_q = e.tile_q_.data() + ti * kTileRows * group * hd;
    float* tile_out = e.tile_out_.data() + ti * kTileRows * group * hd;
    const size_t head_bytes = e.kv_.head_bytes();  // one position of one KV head

    for (size_t item = jp->next.fetch_add(1, std::memory_order_relaxed); item < items;
         item = jp->next.fetch_add(1, std::memory_order_relaxed)) {
      if (item < jp->split_items) {
        // Chunk `chunk` of split entry `s`, KV head g: the group's unnormalised softmax
        // pieces over the chunk's positions, and their weighted sums of V.
        const size_t s = static_cast<size_t>(
            std::upper_bound(
                e.split_item_start_.begin() + 1,
                e.split_item_start_.begin() + static_cast<std::ptrdiff_t>(jp->n_split) + 1, item) -
            (e.split_item_start_.begin() + 1));
        const size_t i = e.split_entry_[s];
        const BatchEntry& entry = e.entries_[i];
        const auto [len, n_chunks] = split_chunks(static_cast<size_t>(entry.pos) + 1);
        const size_t local = item - e.split_item_start_[s];
        const size_t g = local / n_chunks, chunk = local % n_chunks;
        const size_t p0 = chunk * len;
        const size_t m = std::min(static_cast<size_t>(entry.pos) + 1 - p0, len);
        const auto seq = static_cast<size_t>(entry.seq);
        const auto* k =
            reinterpret_cast<const uint16_t*>(e.kv_.k_head_rows(jp->layer, seq, g).data());
        const auto* v =
            reinterpret_cast<const uint16_t*>(e.kv_.v_head_rows(jp->layer, seq, g).data());
        const std::span<const float> q{e.q_.data() + i * q_dim + g * group * hd, group * hd};
        kernels::attention_scores_f16_group(q, group, k + p0 * hd, hd, m, scale, scores, n_ctx);
        kernels::SoftmaxPiece* stats =
            e.split_stats_.data() + (s * kMaxSplitChunks + chunk) * c.n_heads + g * group;
        for (size_t h = 0; h < group; ++h) stats[h] = kernels::softmax_exp({scores + h * n_ctx, m});
        const std::span<float> out{
            e.split_out_.data() + (s * kMaxSplitChunks + chunk) * q_dim + g * group * hd,
            group * hd};
        kernels::attention_values_f16_group(scores, n_ctx, group, m, v + p0 * hd, hd, out);
        continue;
      }
      const size_t whole = item - jp->split_items;
      const size_t t = whole / (c.n_kv_heads * runs_per_group);
      const size_t i0 = e.tiles_[t].first, rows = e.tiles_[t].rows;
      const size_t g = whole / runs_per_group % c.n_kv_heads;
      const size_t h0 = g * group + whole % runs_per_group * jp->run;  // first query head
      const size_t n_heads = std::min(jp->run, (g + 1) * group - h0);
      const BatchEntry& last = e.entries_[i0 + rows - 1];
      const auto seq = static_cast<size_t>(last.seq);
      const auto k_all = e.kv_.k_head_rows(jp->layer, seq, g);
      const auto v_all = e.kv_.v_head_rows(jp->layer, seq, g);

      if (e.kv_.type() == GgmlType::F16) {
        // The tile's rows x heads query vectors side by side, their scores over the last
        // row's positions, each row's softmax over its own (zero weight past them), values.
        const auto* k = reinterpret_cast<const uint16_t*>(k_all.data());
        const auto* v = reinterpret_cast<const uint16_t*>(v_all.data());
        const size_t n_q = rows * n_heads, max_pos = static_cast<size_t>(last.pos) + 1;
        for (size_t r = 0; r < rows; ++r) {
          std::copy_n(e.q_.data() + (i0 + r) * q_dim + h0 * hd, n_heads * hd,
                      tile_q + r * n_heads * hd);
        }
        kernels::attention_scores_f16_group({tile_q, n_q * hd}, n_q, k, hd, max_pos, scale, scores,
                                            n_ctx);
        for (size_t r = 0; r < rows; ++r) {
          const auto n_pos = static_cast<size_t>(e.entries_[i0 + r].pos) + 1;
          for (size_t h = 0; h < n_heads; ++h) {
            float* row_scores = scores + (r * n_heads + h) * n_ctx;
            kernels::softmax({row_scores, n_pos});
            std::fill(row_scores + n_pos, row_scores + max_pos, 0.0f);
          }
        }
        kernels::attention_values_f16_group(scores, n_ctx, n_q, max_pos, v, hd,
                                            {tile_out, n_q * hd});
        for (size_t r = 0; r < rows; ++r) {
          std::copy_n(tile_out + r * n_heads * hd, n_heads * hd,
                      e.att_.data() + (i0 + r) * q_dim + h0 * hd);
        }
        continue;
      }
      // F32 and Q8_0 caches: tiles of one row.
      const size_t i = i0;
      const size_t n_pos = static_cast<size_t>(last.pos) + 1;
      const std::span<const float> q{e.q_.data() + i * q_dim + h0 * hd, n_heads * hd};
      const std::span<float> out{e.att_.data() + i * q_dim + h0 * hd, n_heads * hd};
      for (size_t h = 0; h < n_heads; ++h) {
        const std::span<const float> qh = q.subspan(h * hd, hd);
        const std::span<float> oh = out.subspan(h * hd, hd);
        // Scores of every visible position.
        for (size_t p = 0; p < n_pos; ++p) {
          const std::byte* k = k_all.data() + p * head_bytes;
          const float s = e.kv_.type() == GgmlType::F32
                              ? kernels::dot(qh, {reinterpret_cast<const float*>(k), hd})
                              : kernels::dot_q8_0(qh, {k, head_bytes});
          scores[p] = s * scale;
        }
        kernels::softmax({scores, n_pos});

        // Weighted sum of the values.
        std::fill(oh.begin(), oh.end(), 0.0f);
        for (size_t p = 0; p < n_pos; ++p) {
          const std::byte* v = v_all.data() + p * head_bytes;
          if (e.kv_.type() == GgmlType::F32) {
            kernels::axpy(scores[p], {reinterpret_cast<const float*>(v), hd}, oh);
          } else {
            kernels::axpy_q8_0(scores[p], {v, head_bytes}, oh);
          }
        }
      }
    }
  });

  // The split entries' pieces combined, chunk by chunk in order: with M the largest chunk
  // maximum, out = sum_c exp(max_c - M) out_c / sum_c exp(max_c - M) sum_c.
  const size_t hd = c.head_dim, q_dim = c.q_dim();
  for (size_t s = 0; s < n_split; ++s) {
    const size_t i = split_entry_[s];
    const size_t n_chunks = split_chunks(static_cast<size_t>(entries_[i].pos) + 1).second;
    for (size_t h = 0; h < c.n_heads; ++h) {
      const auto piece = [&](size_t chunk) {
        return split_stats_[(s * kMaxSplitChunks + chunk) * c.n_heads + h];
      };
      float max = piece(0).max;
      for (size_t chunk = 1; chunk < n_chunks; ++chunk) max = std::max(max, piece(chunk).max);
      float total = 0;
      for (size_t chunk = 0; chunk < n_chunks; ++chunk) {
        total += std::exp(piece(chunk).max - max) * piece(chunk).sum;
      }
      const std::span<float> out{att_.data() + i * q_dim + h * hd, hd};
      std::fill(out.begin(), out.end(), 0.0f);
      for (size_t chunk = 0; chunk < n_chunks; ++chunk) {
        const float w = std::exp(piece(chunk).max - max) / total;
        kernels::axpy(w, {split_out_.data() + (s * kMaxSplitChunks + chunk) * q_dim + h * hd, hd},
                      out);
      }
    }
  }
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
  return eval_in_batches(*this, seq, kv_.length(seq), tokens, all_logits, out);
}

}  // namespace kiln
