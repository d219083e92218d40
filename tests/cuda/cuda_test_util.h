// Shared bits of the CUDA tests: the skip when no device is visible, seeded inputs, and
// finiteness checks.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "kernels/cuda/kernels_cuda.h"

namespace kiln::cuda::testing {

// Every test that launches a kernel starts with this: without a GPU it is skipped.
#define KILN_REQUIRE_CUDA_DEVICE()                \
  do {                                            \
    if (::kiln::cuda::cuda_device_count() == 0) { \
      GTEST_SKIP() << "no CUDA device";           \
    }                                             \
  } while (0)

inline std::vector<float> random_floats(size_t n, uint32_t seed, float mean = 0.0f,
                                        float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, sd);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline bool all_finite(std::span<const float> v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace kiln::cuda::testing
