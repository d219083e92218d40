// Reference weight quantizers: float rows -> GGUF blocks.
//
// Scalar and written for clarity, not speed: they run once per model (kiln quantize), and
// they are the spec a faster quantizer would be tested against. Each follows the format's
// usual recipe (the one ggml's reference quantizers use, so files we write quantize the way
// the wider ecosystem expects):
//   Q4_0/Q5_0: symmetric, d = (value of largest magnitude) / -8 (or -16), round to nearest.
//   Q4_1/Q5_1: asymmetric, d = (max - min) / 15 (or 31), m = min.
//   Q4_K/Q5_K: per 32-element sub-block an iterative (scale, min) search weighted towards
//              large values, then the 8 scales and mins quantized to 6 bits against two
//              fp16 super-scales; elements are re-rounded with the final (rounded) scales.
//   Q6_K:      per 16-element sub-block a symmetric scale search, scales quantized to int8
//              against one fp16 super-scale.
// Q8_0 comes from kernels/quants.h (the activation quantizer is the same code).
//
// Shapes: a row x (n,) becomes n / block_elements blocks; n must be a multiple of the
// type's block size (32, or QK_K = 256 for the K types) and the output span must hold
// exactly that many blocks, else std::invalid_argument naming the type and sizes.
// Inputs must be finite; what a NaN or Inf turns into is unspecified.
#pragma once

#include <cstddef>
#include <span>

#include "gguf/ggml_types.h"
#include "kernels/blocks.h"

namespace kiln::kernels {

void quantize_row_q4_0(std::span<const float> x, std::span<block_q4_0> y);
void quantize_row_q4_1(std::span<const float> x, std::span<block_q4_1> y);
void quantize_row_q5_0(std::span<const float> x, std::span<block_q5_0> y);
void quantize_row_q5_1(std::span<const float> x, std::span<block_q5_1> y);
void quantize_row_q4_K(std::span<const float> x, std::span<block_q4_K> y);
void quantize_row_q5_K(std::span<const float> x, std::span<block_q5_K> y);
void quantize_row_q6_K(std::span<const float> x, std::span<block_q6_K> y);

// True where quantize_row can produce `type`: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K.
bool can_quantize(GgmlType type);

// Converts one row x (n,) into `type`; out must be exactly row_bytes(type, n) bytes.
// Throws std::invalid_argument for a type we cannot produce, a row length that is not a
// multiple of the type's block size, or a wrongly sized output.
void quantize_row(GgmlType type, std::span<const float> x, std::span<std::byte> out);

}  // namespace kiln::kernels
