// Float kernels used by the forward pass: normalisation, activations, RoPE,
// softmax and the small dot/axpy primitives of attention over the KV cache.
//
// All functions work on caller-owned spans and never allocate, so the forward
// pass can call them per token. Shapes are given in the comment of each one;
// a mismatch is a programming error and is checked with assert only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kiln::kernels {

// out (n,) = x (n,) / sqrt(mean(x^2) + eps) * weight (n,). out may alias x.
void rmsnorm(std::span<const float> x, std::span<const float> weight, float eps,
             std::span<float> out);

// x (n,) <- softmax(x), numerically stable (subtracts the max).
void softmax(std::span<float> x);

// The unnormalised half of softmax: x (n,) <- exp(x - max(x)); returns max(x) and the sum
// of the exponentials, so that pieces of one softmax can be combined later (attention
// split over chunks of positions). softmax(x) is this, then x / sum.
struct SoftmaxPiece {
  float max = 0, sum = 0;
};
SoftmaxPiece softmax_exp(std::span<float> x);

// out (n,) = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void silu_mul(std::span<const float> gate, std::span<const float> up, std::span<float> out);

// x (n,) += y (n,)
void add(std::span<float> x, std::span<const float> y);

// returns a (n,) . b (n,)
float dot(std::span<const float> a, std::span<const float> b);

// returns a (n,) . b (n,) with b in IEEE half precision (raw uint16 bits).
float dot_f16(std::span<const float> a, std::span<const uint16_t> b);

// y (n,) += alpha * x (n,)
void axpy(float alpha, std::span<const float> x, std::span<float> y);

// y (n,) += alpha * x (n,) with x in IEEE half precision (raw uint16 bits).
void axpy_f16(float alpha, std::span<const uint16_t> x, std::span<float> y);

// Attention over an F16 KV cache, one query head at a time. Position p's head of hd values
// starts at k + p * stride (v + p * stride), raw fp16 bits.
// scores (n_pos,) = scale * K q: one score per cached position.
void attention_scores_f16(std::span<const float> q, const uint16_t* k, size_t stride, float scale,
                          std::span<float> scores);
// out (hd,) = sum_p weights[p] * V_p over the n_pos = weights.size() positions.
void attention_values_f16(std::span<const float> weights, const uint16_t* v, size_t stride,
                          std::span<float> out);

// The same for n_heads query heads that share one KV head (a GQA group, or part of one),
// in one pass over the keys and values (AVX-512: each fp16 value converted once per group).
// q: (n_heads, hd) row-major. Head h's scores go to scores + h * scores_stride (n_pos each).
void attention_scores_f16_group(std::span<const float> q, size_t n_heads, const uint16_t* k,
                                size_t stride, size_t n_pos, float scale, float* scores,
                                size_t scores_stride);
// out (n_heads, hd) row-major = for each head h, sum_p weights_h[p] * V_p, where head h's
// n_pos weights start at weights + h * weights_stride.
void attention_values_f16_group(const float* weights, size_t weights_stride, size_t n_heads,
                                size_t n_pos, const uint16_t* v, size_t stride,
                                std::span<float> out);

// Q8_0 rows (blocks of 32: one fp16 scale d, 32 int8 q; value = d * q), used
// by the Q8_0 KV cache. n is a multiple of 32; `blocks` holds n/32 * 34 bytes.
// returns a (n,) . dequant(blocks)
float dot_q8_0(std::span<const float> a, std::span<const std::byte> blocks);
// y (n,) += alpha * dequant(blocks)
void axpy_q8_0(float alpha, std::span<const std::byte> blocks, std::span<float> y);
// blocks <- quant(x (n,)), round to nearest, d = max|x| / 127.
void quantize_q8_0(std::span<const float> x, std::span<std::byte> blocks);

// Half <-> float conversions of whole rows (used for the F16 KV cache).
void f32_to_f16_row(std::span<const float> x, std::span<uint16_t> out);
void f16_to_f32_row(std::span<const uint16_t> x, std::span<float> out);

// RoPE angle table for one position:
//   theta_i = pos * base^(-2i / rope_dim) / freq_factors[i],  i in [0, rope_dim/2)
//   cos_out[i] = cos(theta_i), sin_out[i] = sin(theta_i).
// freq_factors is empty (all ones) or has rope_dim/2 entries (Llama 3 scaling,
// the `rope_freqs` tensor).
void rope_angles(int64_t pos, size_t rope_dim, float freq_base, std::span<const float> freq_factors,
                 std::span<float> cos_out, std::span<float> sin_out);

// Rotates the first rope_dim dimensions of each head of x (n_heads * head_dim,)
// by the angles from rope_angles (rope_dim/2 entries each).
// "Normal" layout: pairs are adjacent, (x[2i], x[2i+1]). GGUF llama models use
// it, because the converter permutes the Q/K weight rows to match.
void rope_normal(std::span<float> x, size_t n_heads, size_t head_dim, size_t rope_dim,
                 std::span<const float> cos, std::span<const float> sin);
// "NeoX" layout: pairs are split by half, (x[i], x[i + rope_dim/2]).
void rope_neox(std::span<float> x, size_t n_heads, size_t head_dim, size_t rope_dim,
               std::span<const float> cos, std::span<const float> sin);

}  // namespace kiln::kernels
