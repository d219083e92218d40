// Random weight rows for every matmul type, and the dequantize-then-double-dot oracle.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "gguf/ggml_types.h"
#include "kernels/blocks.h"
#include "kernels/dot.h"
#include "kernels/f16.h"
#include "kernels/quants.h"

namespace kiln::kernels::testing {

inline uint16_t random_half(std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  return fp32_to_fp16(dist(rng));
}

// Overwrites the fp16 fields of every block with sane scales (random bytes there would be
// NaN/Inf/huge); every other byte stays random, which covers all quant codes.
template <typename Block>
void sanitize_blocks(std::span<std::byte> row, std::mt19937& rng) {
  auto* blocks = reinterpret_cast<Block*>(row.data());
  for (size_t i = 0; i < row.size() / sizeof(Block); ++i) {
    Block& b = blocks[i];
    if constexpr (requires { b.d; }) b.d = random_half(rng, -0.05f, 0.05f);
    if constexpr (requires { b.m; }) b.m = random_half(rng, -0.5f, 0.5f);
    if constexpr (requires { b.dmin; }) b.dmin = random_half(rng, 0.0f, 0.02f);
  }
}

// Random rows x cols matrix of `type`.
inline std::vector<std::byte> random_weights(GgmlType type, size_t rows, size_t cols,
                                             std::mt19937& rng) {
  const size_t rb = row_bytes(type, cols);
  std::vector<std::byte> data(rows * rb);
  if (type == GgmlType::F32) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (size_t i = 0; i < rows * cols; ++i) {
      const float v = dist(rng);
      std::memcpy(data.data() + 4 * i, &v, 4);
    }
    return data;
  }
  if (type == GgmlType::F16 || type == GgmlType::BF16) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (size_t i = 0; i < rows * cols; ++i) {
      const float v = dist(rng);
      const uint16_t h = type == GgmlType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(data.data() + 2 * i, &h, 2);
    }
    return data;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : data) b = static_cast<std::byte>(byte(rng));
  const std::span<std::byte> all(data);
  switch (type) {
    case GgmlType::Q4_0:
      sanitize_blocks<block_q4_0>(all, rng);
      break;
    case GgmlType::Q4_1:
      sanitize_blocks<block_q4_1>(all, rng);
      break;
    case GgmlType::Q5_0:
      sanitize_blocks<block_q5_0>(all, rng);
      break;
    case GgmlType::Q5_1:
      sanitize_blocks<block_q5_1>(all, rng);
      break;
    case GgmlType::Q8_0:
      sanitize_blocks<block_q8_0>(all, rng);
      break;
    case GgmlType::Q2_K:
      sanitize_blocks<block_q2_K>(all, rng);
      break;
    case GgmlType::Q3_K:
      sanitize_blocks<block_q3_K>(all, rng);
      break;
    case GgmlType::Q4_K:
      sanitize_blocks<block_q4_K>(all, rng);
      break;
    case GgmlType::Q5_K:
      sanitize_blocks<block_q5_K>(all, rng);
      break;
    case GgmlType::Q6_K:
      sanitize_blocks<block_q6_K>(all, rng);
      break;
    case GgmlType::IQ4_NL:
      sanitize_blocks<block_iq4_nl>(all, rng);
      break;
    case GgmlType::IQ4_XS:
      sanitize_blocks<block_iq4_xs>(all, rng);
      break;
    default:
      break;
  }
  return data;
}

inline std::vector<float> random_activations(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// The activation row as the kernel sees it: quantized with the reference quantizer and
// dequantized again (exact for F32).
inline std::vector<float> activation_as_seen(ActFormat format, std::span<const float> x) {
  std::vector<std::byte> q(act_row_bytes(format, x.size()));
  quantize_act_row(format, x, q);
  std::vector<float> out(x.size());
  switch (format) {
    case ActFormat::F32:
      std::memcpy(out.data(), q.data(), q.size());
      break;
    case ActFormat::Q8_act:
      dequantize_row_q8_act(
          {reinterpret_cast<const block_q8_act*>(q.data()), q.size() / sizeof(block_q8_act)}, out);
      break;
    case ActFormat::Q8_K:
      dequantize_row_q8_K(
          {reinterpret_cast<const block_q8_K*>(q.data()), q.size() / sizeof(block_q8_K)}, out);
      break;
    case ActFormat::Q8_act2:
      dequantize_row_q8_act2(
          {reinterpret_cast<const block_q8_act*>(q.data()), q.size() / sizeof(block_q8_act)}, out);
      break;
    case ActFormat::Q8_K2:
      dequantize_row_q8_K2(
          {reinterpret_cast<const block_q8_K*>(q.data()), q.size() / sizeof(block_q8_K)}, out);
      break;
  }
  return out;
}

struct Reference {
  double value;      // sum of w_i a_i in double
  double magnitude;  // sum of |w_i a_i|: the scale rounding errors are measured against
};

inline Reference reference_dot(std::span<const float> w, std::span<const float> a) {
  Reference r{0.0, 0.0};
  for (size_t i = 0; i < w.size(); ++i) {
    const double p = static_cast<double>(w[i]) * static_cast<double>(a[i]);
    r.value += p;
    r.magnitude += std::fabs(p);
  }
  return r;
}

// Allowed difference: float rounding of the per-block float products and accumulation.
inline double tolerance(const Reference& r) { return 1e-5 * r.magnitude + 1e-6; }

}  // namespace kiln::kernels::testing
