// Host side of the CUDA engine: batch validation, sequence bookkeeping and eval, which are
// the same as the CPU Engine's; the device work is in engine_cuda.cu.
#include "engine/cuda/engine_cuda.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/kernels_cuda.h"

namespace kiln {

int cuda_device_count() { return cuda::cuda_device_count(); }

std::string cuda_device_description() { return cuda::cuda_device_description(); }

void CudaEngine::truncate(size_t seq, size_t pos) {
  if (pos > length_.at(seq)) {
    throw std::out_of_range("cannot truncate sequence " + std::to_string(seq) + " to position " +
                            std::to_string(pos) + ": it holds only " +
                            std::to_string(length_[seq]) + " positions");
  }
  length_[seq] = pos;
}

void CudaEngine::validate(const Batch& batch) {
  const ModelConfig& c = config();
  if (batch.size() > max_batch_) {
    throw std::invalid_argument("batch of " + std::to_string(batch.size()) +
                                " entries exceeds the context's max batch " +
                                std::to_string(max_batch_));
  }
  next_pos_ = length_;
  for (const BatchEntry& e : batch.entries) {
    if (e.seq < 0 || static_cast<size_t>(e.seq) >= n_seq_) {
      throw std::invalid_argument("sequence id " + std::to_string(e.seq) +
                                  " is out of range: the context has " + std::to_string(n_seq_) +
                                  " sequences");
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
    if (next >= n_ctx_) {
      throw std::invalid_argument("context full: sequence " + std::to_string(e.seq) +
                                  " already holds " + std::to_string(next) +
                                  " positions, the context size is " + std::to_string(n_ctx_) +
                                  " (raise -c)");
    }
    ++next;
  }
}

std::span<const float> CudaEngine::forward(const Batch& batch) {
  validate(batch);
  n_logits_ = 0;
  if (batch.empty()) return {};
  run_forward(batch);
  // The cache now holds every written position.
  for (const BatchEntry& e : batch.entries) {
    length_[static_cast<size_t>(e.seq)] = static_cast<size_t>(e.pos) + 1;
  }
  return {logits_.data(), n_logits_ * config().n_vocab};
}

std::span<const float> CudaEngine::logits_row(size_t k) const {
  if (k >= n_logits_) {
    throw std::out_of_range("logits row " + std::to_string(k) +
                            " requested, the last forward made " + std::to_string(n_logits_));
  }
  const size_t v = config().n_vocab;
  return {logits_.data() + k * v, v};
}

std::span<const float> CudaEngine::eval(size_t seq, std::span<const int32_t> tokens,
                                        bool all_logits, std::vector<float>* out) {
  return eval_in_batches(*this, seq, length_.at(seq), tokens, all_logits, out);
}

}  // namespace kiln
