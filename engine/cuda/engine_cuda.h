// The CUDA forward pass of a Llama model: the same batch interface and the same steps, in the
// same order and with the same comments, as the CPU Engine (engine/engine.h), run entirely on
// one NVIDIA GPU.
//
// At construction the weights are uploaded once into one device allocation, and the F16 KV
// cache, the activations and the scratch are allocated on the device (plain cudaMalloc);
// forward() then only copies the batch's token ids and positions in and the wanted logits
// rows out. Small batches (decode: up to kMatVecMaxTokens entries) are captured as a CUDA
// graph the first time a batch of that shape is seen and replayed after that.
//
// This header is plain C++: nothing CUDA leaks to the code that includes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model.h"

namespace kiln {

// Number of visible CUDA devices (0 when there is none or no driver; never throws).
int cuda_device_count();
// Name, compute capability and memory of device 0, or why there is none.
std::string cuda_device_description();

class CudaEngine {
 public:
  // The model must outlive the engine. Throws std::runtime_error when there is no CUDA
  // device, or when the model, KV cache and activations do not fit (naming what was needed
  // and what was free); std::invalid_argument for a model or options the CUDA backend does
  // not run (a weight type without a CUDA kernel, a KV cache type other than f16).
  CudaEngine(const Model& model, const EngineOptions& options);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // As Engine::forward: the logits of the entries that want them, in batch order, rows of
  // n_vocab floats in host memory (valid until the next call). Bad entries throw
  // std::invalid_argument before any state changes.
  std::span<const float> forward(const Batch& batch);
  std::span<const float> logits_row(size_t k) const;
  // As Engine::eval.
  std::span<const float> eval(size_t seq, std::span<const int32_t> tokens, bool all_logits,
                              std::vector<float>* out = nullptr);

  const Model& model() const { return model_; }
  const ModelConfig& config() const { return model_.config(); }
  size_t n_ctx() const { return n_ctx_; }
  size_t n_seq() const { return n_seq_; }
  size_t max_batch() const { return max_batch_; }
  size_t seq_length(size_t seq) const { return length_.at(seq); }
  void clear(size_t seq) { length_.at(seq) = 0; }
  void truncate(size_t seq, size_t pos);

  // Replay decode steps from CUDA graphs (default on); off runs every kernel directly.
  void set_use_graphs(bool on) { use_graphs_ = on; }
  // Device bytes held: weights, KV cache, activations and scratch.
  size_t device_bytes() const;
  size_t weight_bytes() const;
  size_t kv_cache_bytes() const;
  // Bytes read from the KV cache by one decode step of a sequence at length `n_pos`.
  size_t kv_bytes_read(size_t n_pos) const;
  std::string device_name() const;
  // Device memory bandwidth in bytes/s: bytes read plus bytes written by a device-to-device
  // copy of a buffer far larger than the L2 cache, best of a few (the bound kiln bench uses).
  double measure_copy_bandwidth();

 private:
  struct Device;  // all CUDA state, defined in engine_cuda.cu

  void validate(const Batch& batch);
  void run_forward(const Batch& batch);  // engine_cuda.cu: fills logits_ and n_logits_

  const Model& model_;
  size_t max_batch_;
  size_t n_ctx_;
  size_t n_seq_;
  bool batch_invariant_ = false;
  bool use_graphs_ = true;
  std::vector<size_t> length_;    // (n_seq) valid positions of each sequence
  std::vector<size_t> next_pos_;  // (n_seq) validation scratch
  std::vector<float> logits_;     // (max_batch, n_vocab) host copy of the wanted rows
  size_t n_logits_ = 0;
  std::unique_ptr<Device> device_;
};

}  // namespace kiln
