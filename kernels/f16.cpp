#include "kernels/f16.h"

#include <stdexcept>
#include <string>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace kiln::kernels {
namespace {

void check_sizes(const char* what, size_t src, size_t dst) {
  if (src != dst) {
    throw std::invalid_argument(std::string(what) + ": source has " + std::to_string(src) +
                                " elements but destination has " + std::to_string(dst));
  }
}

}  // namespace

void fp16_to_fp32_row(std::span<const uint16_t> src, std::span<float> dst) {
  check_sizes("fp16_to_fp32_row", src.size(), dst.size());
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= src.size(); i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src.data() + i));
    _mm256_storeu_ps(dst.data() + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < src.size(); ++i) dst[i] = fp16_to_fp32(src[i]);
}

void fp32_to_fp16_row(std::span<const float> src, std::span<uint16_t> dst) {
  check_sizes("fp32_to_fp16_row", src.size(), dst.size());
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= src.size(); i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src.data() + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst.data() + i), h);
  }
#endif
  for (; i < src.size(); ++i) dst[i] = fp32_to_fp16(src[i]);
}

void bf16_to_fp32_row(std::span<const uint16_t> src, std::span<float> dst) {
  check_sizes("bf16_to_fp32_row", src.size(), dst.size());
  for (size_t i = 0; i < src.size(); ++i) dst[i] = bf16_to_fp32(src[i]);
}

void fp32_to_bf16_row(std::span<const float> src, std::span<uint16_t> dst) {
  check_sizes("fp32_to_bf16_row", src.size(), dst.size());
  for (size_t i = 0; i < src.size(); ++i) dst[i] = fp32_to_bf16(src[i]);
}

}  // namespace kiln::kernels
