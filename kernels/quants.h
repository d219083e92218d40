// Reference dequantizers (the spec of every block format) and the activation quantizers.
//
// Each dequantize_row_* is a plain scalar loop written to be obviously right; the SIMD dot
// products and (later) the CUDA kernels are tested against them, and they are checked
// against the gguf Python package. Shapes: x holds n / block_elements blocks, y (n,).
// Sizes that disagree throw std::invalid_argument naming the type.
#pragma once

#include <cstddef>
#include <span>

#include "gguf/ggml_types.h"
#include "kernels/blocks.h"

namespace kiln::kernels {

void dequantize_row_f32(std::span<const float> x, std::span<float> y);
void dequantize_row_f16(std::span<const uint16_t> x, std::span<float> y);
void dequantize_row_bf16(std::span<const uint16_t> x, std::span<float> y);
void dequantize_row_q4_0(std::span<const block_q4_0> x, std::span<float> y);
void dequantize_row_q4_1(std::span<const block_q4_1> x, std::span<float> y);
void dequantize_row_q5_0(std::span<const block_q5_0> x, std::span<float> y);
void dequantize_row_q5_1(std::span<const block_q5_1> x, std::span<float> y);
void dequantize_row_q8_0(std::span<const block_q8_0> x, std::span<float> y);
void dequantize_row_q2_K(std::span<const block_q2_K> x, std::span<float> y);
void dequantize_row_q3_K(std::span<const block_q3_K> x, std::span<float> y);
void dequantize_row_q4_K(std::span<const block_q4_K> x, std::span<float> y);
void dequantize_row_q5_K(std::span<const block_q5_K> x, std::span<float> y);
void dequantize_row_q6_K(std::span<const block_q6_K> x, std::span<float> y);
void dequantize_row_iq4_nl(std::span<const block_iq4_nl> x, std::span<float> y);
void dequantize_row_iq4_xs(std::span<const block_iq4_xs> x, std::span<float> y);
// Activation formats (test oracles for the dot products).
void dequantize_row_q8_K(std::span<const block_q8_K> x, std::span<float> y);
void dequantize_row_q8_act(std::span<const block_q8_act> x, std::span<float> y);
// Two-plane rows (x: 2 * y.size() / block elements blocks): y = d q + d2 q2.
void dequantize_row_q8_act2(std::span<const block_q8_act> x, std::span<float> y);
void dequantize_row_q8_K2(std::span<const block_q8_K> x, std::span<float> y);

// True where dequantize_row handles `type`.
bool can_dequantize(GgmlType type);
// One row of `type` (src: row_bytes(type, dst.size()) bytes) -> dst. Throws
// std::invalid_argument naming the type if there is no dequantizer, or if the sizes disagree.
void dequantize_row(GgmlType type, std::span<const std::byte> src, std::span<float> dst);

// Activation quantizers, x (n,) -> n / 32 or n / 256 blocks.
// Q8_0 (ggml's recipe, also used for Q8_0 weights): d = max|x| / 127 stored as fp16,
// q = round(x / d) with the unrounded d.
void quantize_row_q8_0(std::span<const float> x, std::span<block_q8_0> y);
// Q8_K (ggml's recipe): scale from the element of largest magnitude so it maps to -127,
// q = round-half-even(x * scale) clamped to 127, d = 1 / scale, bsums[i] = sum of qs[16 i, 16 i +
// 16).
void quantize_row_q8_K(std::span<const float> x, std::span<block_q8_K> y);
// The matmul's activation format for the legacy types: d = max|x| / 127 (float),
// q = round-half-even(x / d), s = d * sum(q).
void quantize_row_q8_act(std::span<const float> x, std::span<block_q8_act> y);
// The precise (two-plane) activation rows of blocks.h: y holds 2 * n / 32 (2 * n / 256)
// blocks, plane 1 then plane 2. Plane 1: d = max|x| / 127, q = round-half-even(x / d);
// plane 2 the same on the residual r = x - d q: d2 = max|r| / 127, q2 = round(r / d2). All
// |q| <= 127 (the SIMD kernels negate them); s and bsums as in the int8 formats, per plane.
void quantize_row_q8_act2(std::span<const float> x, std::span<block_q8_act> y);
void quantize_row_q8_K2(std::span<const float> x, std::span<block_q8_K> y);

// Unpacks the j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K super-block.
inline void get_scale_min_k4(int j, const uint8_t* scales, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = scales[j] & 63;
    m = scales[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Unpacks the 16 6-bit scales of a Q3_K super-block, each minus 32 (-32..31).
void unpack_q3_K_scales(const uint8_t packed[12], int8_t scales[16]);

}  // namespace kiln::kernels
