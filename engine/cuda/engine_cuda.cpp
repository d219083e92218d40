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
  next_pos_ = length_;
  validate_batch(batch, config().n_vocab, max_batch_, n_ctx_, next_pos_);
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
