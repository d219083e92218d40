// Device side of the CUDA engine: the upload of the weights, the device buffers, and the
// forward pass, step for step the CPU Engine::forward (engine/engine.cpp) with each CPU
// kernel replaced by its CUDA twin (kernels/cuda/launch.h).
#include <algorithm>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "engine/cuda/engine_cuda.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/launch.h"

namespace kiln {

namespace {

constexpr size_t kAlign = 256;                 // every device tensor and buffer starts here
constexpr size_t kSplitQueriesPerLaunch = 64;  // split attention scratch covers this many

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

size_t mib(size_t bytes) { return (bytes + (1u << 20) - 1) >> 20; }

}  // namespace

struct CudaEngine::Device {
  cudaStream_t stream = nullptr;
  std::string name;

  // Weights: one allocation; tensors placed at kAlign offsets (a tied output shares the
  // embedding's bytes).
  cuda::DeviceBuffer weights;
  struct Layer {
    const float* attn_norm;
    cuda::DeviceMatrix attn_q, attn_k, attn_v, attn_output;
    const float* ffn_norm;
    cuda::DeviceMatrix ffn_gate, ffn_up, ffn_down;
  };
  cuda::DeviceMatrix token_embd{};
  std::vector<Layer> layers;
  const float* output_norm = nullptr;
  cuda::DeviceMatrix output{};
  const float* rope_freqs = nullptr;  // null: no frequency factors

  // KV cache: K then V, each [n_layers][n_seq][n_ctx][kv_dim] halves.
  cuda::DeviceBuffer kv;
  uint16_t* k_cache = nullptr;
  uint16_t* v_cache = nullptr;
  size_t layer_halves = 0;  // n_seq * n_ctx * kv_dim

  // Activations (max_batch rows) and scratch, one allocation.
  cuda::DeviceBuffer activations;
  float *x, *xb, *q, *k, *v, *att, *gate, *up, *rope_cos, *rope_sin, *attn_scratch, *logits;
  // xb of a lone token quantized by its norm for the int8 matrix-vector kernel.
  cuda::QuantizedX xb_q8;
  int32_t *tokens, *positions, *sequences, *logit_rows;  // (max_batch) each, device
  int32_t* staging = nullptr;  // pinned host copy of the four index arrays

  // fp16 copies of X and of W for the prefill GEMM (empty when max_batch takes no GEMM).
  cuda::DeviceBuffer gemm_buffer;
  cuda::GemmWorkspace gemm_ws;

  std::map<std::pair<size_t, size_t>, cudaGraphExec_t> graphs;  // (n, n_logits) -> decode step

  ~Device() {
    for (auto& [key, exec] : graphs) (void)cudaGraphExecDestroy(exec);
    if (staging != nullptr) (void)cudaFreeHost(staging);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
  }
};

namespace {

// Places host tensors in one device allocation: first the offsets (plan), then the copy.
class WeightPlacer {
 public:
  // Returns the offset of `data`, reusing it when the same bytes were placed already.
  size_t place(std::span<const std::byte> data) {
    auto it = offsets_.find(data.data());
    if (it != offsets_.end()) return it->second;
    const size_t offset = total_;
    offsets_.emplace(data.data(), offset);
    parts_.push_back({data, offset});
    total_ = align_up(total_ + data.size());
    return offset;
  }
  size_t total() const { return total_; }
  void upload(void* device, cudaStream_t stream) const {
    for (const auto& [data, offset] : parts_) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(static_cast<std::byte*>(device) + offset, data.data(),
                                      data.size(), cudaMemcpyHostToDevice, stream));
    }
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

 private:
  std::map<const void*, size_t> offsets_;
  std::vector<std::pair<std::span<const std::byte>, size_t>> parts_;
  size_t total_ = 0;
};

void check_matrix(const WeightView& w) {
  if (!cuda::has_cuda_matmul(w.type)) {
    throw std::invalid_argument("tensor '" + std::string(w.name) + "' has type " +
                                std::string(type_name(w.type)) +
                                ", which the CUDA backend has no kernel for");
  }
  if (w.cols % 32 != 0) {
    throw std::invalid_argument("tensor '" + std::string(w.name) + "' has " +
                                std::to_string(w.cols) +
                                " columns; the CUDA backend needs a multiple of 32");
  }
}

}  // namespace

CudaEngine::CudaEngine(const Model& model, const EngineOptions& options)
    : model_(model),
      max_batch_(options.max_batch),
      n_ctx_(default_context_length(model.config(), options.n_ctx)),
      n_seq_(options.n_seq),
      // --precise (act_precision int16): fp16 activations in every decode matmul (the mma
      // kernel), which also gives a sequence the same logits alone or batched. By default a
      // lone token of the K types takes the faster int8 kernel, whose rounding of x moves the
      // logits a little from the mma kernel's (mean KL ~3e-3 on a synthetic Q4_K model).
      batch_invariant_(options.act_precision == kernels::ActPrecision::int16) {
  const ModelConfig& c = model.config();
  const Weights& w = model.weights();
  if (max_batch_ == 0) throw std::invalid_argument("max_batch must be at least 1");
  if (n_seq_ == 0 || n_ctx_ == 0)
    throw std::invalid_argument("KV cache with no slots or no context");
  if (options.kv_type != GgmlType::F16) {
    throw std::invalid_argument("the CUDA backend keeps the KV cache in f16; " +
                                std::string(type_name(options.kv_type)) + " was asked for");
  }
  if (c.head_dim > 256 || c.rope_dim % 2 != 0 || c.dim % 32 != 0) {
    throw std::invalid_argument(
        "the CUDA backend needs head_dim <= 256, an even rope dimension "
        "and a width that is a multiple of 32; the model has " +
        c.describe());
  }
  if (n_ctx_ > static_cast<size_t>(INT32_MAX) / 2) throw std::invalid_argument("context too large");
  const int devices = cuda_device_count();
  if (devices == 0) {
    throw std::runtime_error(cuda_device_description() +
                             ": the CUDA backend needs an NVIDIA GPU (use --device cpu)");
  }
  check_matrix(w.token_embd);
  for (const auto& l : w.layers) {
    for (const WeightView* m :
         {&l.attn_q, &l.attn_k, &l.attn_v, &l.attn_output, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) {
      check_matrix(*m);
    }
  }
  check_matrix(w.output);

  device_ = std::make_unique<Device>();
  Device& d = *device_;
  KILN_CUDA_CHECK(cudaSetDevice(0));
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  d.name = prop.name;

  // Plan the weights.
  WeightPlacer placer;
  auto place_vector = [&](std::span<const float> v) { return placer.place(std::as_bytes(v)); };
  struct LayerOffsets {
    size_t attn_norm, q, k, v, o, ffn_norm, gate, up, down;
  };
  std::vector<LayerOffsets> layer_offsets;
  const size_t embd_offset = placer.place(w.token_embd.data);
  for (const auto& l : w.layers) {
    layer_offsets.push_back({place_vector(l.attn_norm), placer.place(l.attn_q.data),
                             placer.place(l.attn_k.data), placer.place(l.attn_v.data),
                             placer.place(l.attn_output.data), place_vector(l.ffn_norm),
                             placer.place(l.ffn_gate.data), placer.place(l.ffn_up.data),
                             placer.place(l.ffn_down.data)});
  }
  const size_t output_norm_offset = place_vector(w.output_norm);
  const size_t output_offset = placer.place(w.output.data);
  const size_t freqs_offset = w.rope_freqs.empty() ? 0 : place_vector(w.rope_freqs);

  // Plan the KV cache and the activations.
  const size_t b = max_batch_, half_rope = c.rope_dim / 2;
  d.layer_halves = n_seq_ * n_ctx_ * c.kv_dim();
  const size_t kv_bytes = 2 * c.n_layers * d.layer_halves * sizeof(uint16_t);
  const cuda::AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim, n_ctx_};
  const size_t split_queries = std::min(b, kSplitQueriesPerLaunch);
  const size_t float_counts[] = {
      b * c.dim, b * c.dim, b * c.q_dim(), b * c.kv_dim(), b * c.kv_dim(), b * c.q_dim(),
      b * c.ffn_dim, b * c.ffn_dim, b * half_rope, b * half_rope,
      cuda::attention_split_scratch_floats(shape, split_queries), b * c.n_vocab,
      // xb_q8: int8 values (as floats' bytes), scales, sums
      cuda::kMatVecInt8MaxTokens * c.dim / sizeof(float), cuda::kMatVecInt8MaxTokens * c.dim / 8,
      cuda::kMatVecInt8MaxTokens * c.dim / 8};
  size_t activation_bytes = 0;
  for (size_t n : float_counts) activation_bytes += align_up(n * sizeof(float));
  activation_bytes += 4 * align_up(b * sizeof(int32_t));
  size_t gemm_bytes = 0;
  if (b > cuda::kMatVecMaxTokens) {
    size_t max_cols = w.output.cols, max_elements = w.output.rows * w.output.cols;
    for (const auto& l : w.layers) {
      for (const WeightView* m :
           {&l.attn_q, &l.attn_k, &l.attn_v, &l.attn_output, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) {
        max_cols = std::max(max_cols, m->cols);
        max_elements = std::max(max_elements, m->rows * m->cols);
      }
    }
    gemm_bytes = cuda::gemm_workspace_bytes(b, max_cols, max_elements);
  }

  // Everything must fit before anything is allocated.
  size_t free_bytes = 0, total_bytes = 0;
  cuda::device_memory_info(free_bytes, total_bytes);
  const size_t needed = placer.total() + kv_bytes + activation_bytes + gemm_bytes;
  if (needed > free_bytes) {
    throw std::runtime_error(
        "the model does not fit on " + d.name + ": it needs " + std::to_string(mib(needed)) +
        " MiB (weights " + std::to_string(mib(placer.total())) + " MiB, KV cache " +
        std::to_string(mib(kv_bytes)) + " MiB for " + std::to_string(n_seq_) + " x " +
        std::to_string(n_ctx_) + " positions, activations " +
        std::to_string(mib(activation_bytes)) + " MiB, prefill GEMM workspace " +
        std::to_string(mib(gemm_bytes)) + " MiB), the device has " +
        std::to_string(mib(free_bytes)) + " MiB free of " + std::to_string(mib(total_bytes)) +
        " MiB (lower -c, --n-seq or --batch)");
  }

  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
  d.weights = cuda::DeviceBuffer(placer.total(), "the weights");
  placer.upload(d.weights.data(), d.stream);
  auto* base = d.weights.as<std::byte>();
  auto matrix = [&](const WeightView& v, size_t offset) {
    return cuda::DeviceMatrix{v.type, base + offset, v.rows, v.cols};
  };
  auto vec = [&](size_t offset) { return reinterpret_cast<const float*>(base + offset); };
  d.token_embd = matrix(w.token_embd, embd_offset);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const LayerOffsets& o = layer_offsets[i];
    d.layers.push_back({vec(o.attn_norm), matrix(l.attn_q, o.q), matrix(l.attn_k, o.k),
                        matrix(l.attn_v, o.v), matrix(l.attn_output, o.o), vec(o.ffn_norm),
                        matrix(l.ffn_gate, o.gate), matrix(l.ffn_up, o.up),
                        matrix(l.ffn_down, o.down)});
  }
  d.output_norm = vec(output_norm_offset);
  d.output = matrix(w.output, output_offset);
  d.rope_freqs = w.rope_freqs.empty() ? nullptr : vec(freqs_offset);

  d.kv = cuda::DeviceBuffer(kv_bytes, "the KV cache");
  d.k_cache = d.kv.as<uint16_t>();
  d.v_cache = d.k_cache + c.n_layers * d.layer_halves;

  d.activations = cuda::DeviceBuffer(activation_bytes, "activations and scratch");
  auto* cursor = d.activations.as<std::byte>();
  float* q8_values = nullptr;
  float** float_buffers[] = {&d.x,
                             &d.xb,
                             &d.q,
                             &d.k,
                             &d.v,
                             &d.att,
                             &d.gate,
                             &d.up,
                             &d.rope_cos,
                             &d.rope_sin,
                             &d.attn_scratch,
                             &d.logits,
                             &q8_values,
                             &d.xb_q8.d,
                             &d.xb_q8.sum};
  for (size_t i = 0; i < std::size(float_counts); ++i) {
    *float_buffers[i] = reinterpret_cast<float*>(cursor);
    cursor += align_up(float_counts[i] * sizeof(float));
  }
  d.xb_q8.q = reinterpret_cast<int8_t*>(q8_values);
  for (int32_t** p : {&d.tokens, &d.positions, &d.sequences, &d.logit_rows}) {
    *p = reinterpret_cast<int32_t*>(cursor);
    cursor += align_up(b * sizeof(int32_t));
  }
  if (gemm_bytes > 0) {
    d.gemm_buffer = cuda::DeviceBuffer(gemm_bytes, "the prefill GEMM's fp16 operands");
    d.gemm_ws = {d.gemm_buffer.data(), d.gemm_buffer.size()};
  }
  // The four index arrays are contiguous on the device (each padded to kAlign): one copy.
  KILN_CUDA_CHECK(
      cudaMallocHost(reinterpret_cast<void**>(&d.staging), 4 * align_up(b * sizeof(int32_t))));

  length_.assign(n_seq_, 0);
  next_pos_.assign(n_seq_, 0);
  logits_.resize(b * c.n_vocab);
}

CudaEngine::~CudaEngine() = default;

size_t CudaEngine::weight_bytes() const { return device_->weights.size(); }
size_t CudaEngine::kv_cache_bytes() const { return device_->kv.size(); }
size_t CudaEngine::device_bytes() const {
  return device_->weights.size() + device_->kv.size() + device_->activations.size() +
         device_->gemm_buffer.size();
}
size_t CudaEngine::kv_bytes_read(size_t n_pos) const {
  return 2 * config().n_layers * n_pos * config().kv_dim() * sizeof(uint16_t);
}
std::string CudaEngine::device_name() const { return device_->name; }

double CudaEngine::measure_copy_bandwidth() {
  const size_t bytes = size_t{256} << 20;
  cuda::DeviceBuffer src(bytes, "the bandwidth test"), dst(bytes, "the bandwidth test");
  cudaStream_t s = device_->stream;
  KILN_CUDA_CHECK(cudaMemsetAsync(src.data(), 1, bytes, s));
  cudaEvent_t start = nullptr, stop = nullptr;
  KILN_CUDA_CHECK(cudaEventCreate(&start));
  KILN_CUDA_CHECK(cudaEventCreate(&stop));
  float best_ms = 0;
  for (int pass = 0; pass < 6; ++pass) {
    KILN_CUDA_CHECK(cudaEventRecord(start, s));
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, s));
    KILN_CUDA_CHECK(cudaEventRecord(stop, s));
    KILN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (pass > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;  // pass 0 warms up
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return 2.0 * static_cast<double>(bytes) / (static_cast<double>(best_ms) * 1e-3);
}

void CudaEngine::run_forward(const Batch& batch) {
  Device& d = *device_;
  const ModelConfig& c = config();
  const size_t n = batch.size();
  const size_t dim = c.dim, q_dim = c.q_dim();
  const size_t b = max_batch_;
  cudaStream_t s = d.stream;

  // Token ids, positions, sequences and the rows that want logits -> device, in one copy.
  const size_t stride = align_up(b * sizeof(int32_t)) / sizeof(int32_t);
  int32_t* tok = d.staging;
  int32_t* pos = d.staging + stride;
  int32_t* seq = d.staging + 2 * stride;
  int32_t* want = d.staging + 3 * stride;
  size_t n_logits = 0;
  bool single_seq = true;
  for (size_t i = 0; i < n; ++i) {
    const BatchEntry& e = batch.entries[i];
    tok[i] = e.token;
    pos[i] = e.pos;
    seq[i] = e.seq;
    if (e.wants_logits) want[n_logits++] = static_cast<int32_t>(i);
    single_seq = single_seq && e.seq == batch.entries[0].seq;
  }
  KILN_CUDA_CHECK(cudaMemcpyAsync(d.tokens, d.staging, 4 * stride * sizeof(int32_t),
                                  cudaMemcpyHostToDevice, s));

  const cuda::AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim, n_ctx_};
  // Decode batches keep to the mma matrix-vector kernel when results must not depend on the
  // batch (the int8 kernel of a lone token rounds x differently); kAuto chooses otherwise.
  const cuda::MatmulPath path = batch_invariant_ && n <= cuda::kMatVecMaxTokens
                                    ? cuda::MatmulPath::kMatVec
                                    : cuda::MatmulPath::kAuto;
  // The norms write an int8 copy of xb where the int8 kernel will read it (a lone token).
  const cuda::QuantizedX xb_q8 = path == cuda::MatmulPath::kAuto &&
                                         n <= cuda::kMatVecInt8MaxTokens &&
                                         dim <= cuda::kRmsnormInt8MaxWidth
                                     ? d.xb_q8
                                     : cuda::QuantizedX{};
  // Prefill of one sequence takes the tiled kernel; decode batches (what graphs hold) the split.
  const bool tiled = single_seq && n > cuda::kMatVecMaxTokens && cuda::can_tile_attention(shape);
  const int32_t seq0 = batch.entries[0].seq;

  auto steps = [&] {
    // Embed: x[i] = token_embd[token_i], dequantized.
    cuda::launch_dequantize_rows(d.token_embd.type, d.token_embd.data, dim, d.tokens, n, d.x, s);

    // RoPE angles of each entry's position, shared by Q and K of every layer.
    cuda::launch_rope_angles(d.positions, n, c.rope_dim, c.rope_freq_base, d.rope_freqs, d.rope_cos,
                             d.rope_sin, s);

    for (size_t layer = 0; layer < c.n_layers; ++layer) {
      const Device::Layer& l = d.layers[layer];

      // Attention input: xb = rmsnorm(x) * attn_norm (for a lone token also quantized to int8
      // for the projections' int8 kernel). From layer 1 on, the previous layer's FFN residual
      // (x += xb, below) is added in the same kernel.
      if (layer == 0) {
        cuda::launch_rmsnorm(d.x, l.attn_norm, c.rms_eps, dim, n, nullptr, d.xb, s, xb_q8);
      } else {
        cuda::launch_add_rmsnorm(d.x, d.xb, l.attn_norm, c.rms_eps, dim, n, d.xb, s, xb_q8);
      }

      // Projections: q (n, q_dim), k and v (n, kv_dim) = xb @ W^T (one kernel for all three
      // for a lone token of the K types).
      cuda::launch_matmul_qkv(l.attn_q, l.attn_k, l.attn_v, d.xb, n, d.q, d.k, d.v, d.gemm_ws, s,
                              path, xb_q8);

      // RoPE on q and k (adjacent-pair layout: the GGUF converter permuted Q/K for it), and
      // k and v stored in the cache at (seq, pos) as F16: one kernel.
      uint16_t* k_layer = d.k_cache + layer * d.layer_halves;
      uint16_t* v_layer = d.v_cache + layer * d.layer_halves;
      cuda::launch_rope_kv_append(d.q, d.k, d.v, n, c.n_heads, c.n_kv_heads, c.head_dim, c.rope_dim,
                                  d.rope_cos, d.rope_sin, d.sequences, d.positions, n_ctx_, k_layer,
                                  v_layer, s);

      // Attention: att = softmax(q k^T / sqrt(head_dim)) v over positions [0, pos] of
      // the entry's own sequence (causal), each query head reading its K/V group (GQA).
      if (tiled) {
        cuda::launch_attention_tiled(d.q, k_layer, v_layer, seq0, d.positions, n, shape, d.att, s);
      } else {
        for (size_t i0 = 0; i0 < n; i0 += kSplitQueriesPerLaunch) {
          const size_t count = std::min(kSplitQueriesPerLaunch, n - i0);
          cuda::launch_attention_split(d.q + i0 * q_dim, k_layer, v_layer, d.sequences + i0,
                                       d.positions + i0, count, shape, d.attn_scratch,
                                       d.att + i0 * q_dim, s);
        }
      }

      // Output projection and residual, then the FFN input (and its int8 copy, as above), in
      // one kernel after the matmul: x += att @ Wo^T; xb = rmsnorm(x) * ffn_norm. (Adding
      // into x in the projections' epilogue instead cost each block a dependent load of x at
      // its end: 1-2 us more per projection on an H100.)
      cuda::launch_matmul(l.attn_output, d.att, n, d.xb, d.gemm_ws, s, path);
      cuda::launch_add_rmsnorm(d.x, d.xb, l.ffn_norm, c.rms_eps, dim, n, d.xb, s, xb_q8);

      // SwiGLU: up = silu(xb @ Wg^T) * (xb @ Wu^T). A lone token of the K types: one kernel
      // (both rows' dots and their product); otherwise gate = xb @ Wg^T, then the up
      // projection applying the product as it writes.
      cuda::launch_matmul_swiglu(l.ffn_gate, l.ffn_up, d.xb, n, d.gate, d.up, d.gemm_ws, s, path,
                                 xb_q8);

      // Down projection: xb = up @ Wd^T. Its residual x += xb is added by the next layer's
      // first norm, or after the last layer.
      cuda::launch_matmul(l.ffn_down, d.up, n, d.xb, d.gemm_ws, s, path);
    }
    // The last layer's FFN residual: x += xb.
    cuda::launch_add(d.x, d.xb, n * dim, s);

    // Final norm of the rows that want logits, packed: xb[k] = rmsnorm(x[i_k]) * output_norm.
    cuda::launch_rmsnorm(d.x, d.output_norm, c.rms_eps, dim, n_logits, d.logit_rows, d.xb, s);

    // Logits: (n_logits, n_vocab) = xb @ output^T.
    cuda::launch_matmul(d.output, d.xb, n_logits, d.logits, d.gemm_ws, s,
                        batch_invariant_ && n_logits <= cuda::kMatVecMaxTokens
                            ? cuda::MatmulPath::kMatVec
                            : cuda::MatmulPath::kAuto);
  };

  // Decode-sized batches run from a graph captured on first use: their kernel grids depend
  // only on (n, n_logits), and every pointer they read is fixed at construction.
  const bool use_graph = use_graphs_ && n <= cuda::kMatVecMaxTokens;
  if (use_graph) {
    const auto key = std::make_pair(n, n_logits);
    auto it = d.graphs.find(key);
    if (it == d.graphs.end()) {
      cudaGraph_t graph = nullptr;
      KILN_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      try {
        steps();
      } catch (...) {
        (void)cudaStreamEndCapture(s, &graph);
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
        throw;
      }
      KILN_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
      (void)cudaGraphDestroy(graph);
      KILN_CUDA_CHECK(err);
      it = d.graphs.emplace(key, exec).first;
    }
    KILN_CUDA_CHECK(cudaGraphLaunch(it->second, s));
  } else {
    steps();
  }

  // Only the wanted logits rows come back.
  n_logits_ = n_logits;
  if (n_logits > 0) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(logits_.data(), d.logits, n_logits * c.n_vocab * sizeof(float),
                                    cudaMemcpyDeviceToHost, s));
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace kiln
