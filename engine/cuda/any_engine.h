// The engine a command asked for with --device: the CPU Engine or, in a build with CUDA, the
// CudaEngine. Header-only and usable in every build: without CUDA, asking for "cuda" throws
// "this kiln was built without CUDA".
#pragma once

#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
#include "engine/cuda/engine_cuda.h"
#endif

namespace kiln {

enum class DeviceKind { kCpu, kCuda };

// "cpu" or "cuda"; throws naming the accepted values.
inline DeviceKind parse_device(std::string_view name) {
  if (name == "cpu") return DeviceKind::kCpu;
  if (name == "cuda") return DeviceKind::kCuda;
  throw std::invalid_argument("unknown device '" + std::string(name) + "' (use cpu or cuda)");
}

inline bool built_with_cuda() {
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

class AnyEngine {
 public:
  AnyEngine(const Model& model, const EngineOptions& options, DeviceKind device) {
    if (device == DeviceKind::kCpu) {
      cpu_ = std::make_unique<Engine>(model, options);
      return;
    }
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
    cuda_ = std::make_unique<CudaEngine>(model, options);
#else
    throw std::invalid_argument(
        "this kiln was built without CUDA (rebuild with -DKILN_CUDA=ON "
        "where nvcc is installed, or use --device cpu)");
#endif
  }

  std::span<const float> forward(const Batch& batch) {
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
    if (cuda_) return cuda_->forward(batch);
#endif
    return cpu_->forward(batch);
  }
  std::span<const float> eval(size_t seq, std::span<const int32_t> tokens, bool all_logits,
                              std::vector<float>* out = nullptr) {
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
    if (cuda_) return cuda_->eval(seq, tokens, all_logits, out);
#endif
    return cpu_->eval(seq, tokens, all_logits, out);
  }
  size_t seq_length(size_t seq) const {
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
    if (cuda_) return cuda_->seq_length(seq);
#endif
    return cpu_->seq_length(seq);
  }
  void clear(size_t seq) {
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
    if (cuda_) return cuda_->clear(seq);
#endif
    cpu_->clear(seq);
  }
  size_t n_ctx() const {
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
    if (cuda_) return cuda_->n_ctx();
#endif
    return cpu_->n_ctx();
  }

  Engine* cpu() { return cpu_.get(); }
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
  CudaEngine* cuda() { return cuda_.get(); }
#endif

 private:
  std::unique_ptr<Engine> cpu_;
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
  std::unique_ptr<CudaEngine> cuda_;
#endif
};

}  // namespace kiln
