// Block layouts of the quantized ggml tensor types, byte for byte as stored in GGUF.
//
// Plain structs (no constructors, halves stored as raw uint16_t bits) so the same header
// serves the CPU kernels and, later, CUDA device code. Each struct's size is checked
// against the type table in gguf/ggml_types.h where the type is a file format; the
// activation-only blocks (block_q8_K, block_q8_act) are what the matmul quantizes
// activations into.
//
// Element order inside a block (what the reference dequantizers in quants.cpp spell out):
// the legacy 32-element types keep elements j and j+16 in the low and high nibble of
// qs[j]; the K types (QK_K = 256 elements per super-block) split into sub-blocks with
// their own 6-bit (Q4_K/Q5_K), 4-bit (Q2_K), 6-bit signed (Q3_K) or 8-bit (Q6_K) scales.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln::kernels {

// fp16 bits (IEEE binary16); convert with kernels/f16.h.
using half_bits = uint16_t;

inline constexpr int QK4_0 = 32;
inline constexpr int QK4_1 = 32;
inline constexpr int QK5_0 = 32;
inline constexpr int QK5_1 = 32;
inline constexpr int QK8_0 = 32;
inline constexpr int QK8_1 = 32;
inline constexpr int QK4_NL = 32;
inline constexpr int QK_K = 256;         // elements per K-type super-block
inline constexpr int K_SCALE_SIZE = 12;  // packed 6-bit scales+mins of Q4_K/Q5_K

// x = d * (q - 8), q in 0..15
struct block_q4_0 {
  half_bits d;
  uint8_t qs[QK4_0 / 2];
};
// x = d * q + m, q in 0..15
struct block_q4_1 {
  half_bits d;
  half_bits m;
  uint8_t qs[QK4_1 / 2];
};
// x = d * (q - 16), q = low nibble | (bit j of qh) << 4
struct block_q5_0 {
  half_bits d;
  uint8_t qh[4];  // 32 high bits, little-endian uint32
  uint8_t qs[QK5_0 / 2];
};
// x = d * q + m, q as in Q5_0 but unsigned 0..31
struct block_q5_1 {
  half_bits d;
  half_bits m;
  uint8_t qh[4];
  uint8_t qs[QK5_1 / 2];
};
// x = d * q
struct block_q8_0 {
  half_bits d;
  int8_t qs[QK8_0];
};
// x = d * q; s = d * sum(q) (ggml's activation format for Q4_1/Q5_1)
struct block_q8_1 {
  half_bits d;
  half_bits s;
  int8_t qs[QK8_1];
};

// 16 sub-blocks of 16: x = d * (scales[i] & 0xF) * q - dmin * (scales[i] >> 4), q 2-bit
struct block_q2_K {
  uint8_t scales[QK_K / 16];
  uint8_t qs[QK_K / 4];
  half_bits d;
  half_bits dmin;
};
// 16 sub-blocks of 16: x = d * (scale - 32) * (q - (hmask bit ? 0 : 4)), q 2-bit, scale 6-bit
struct block_q3_K {
  uint8_t hmask[QK_K / 8];
  uint8_t qs[QK_K / 4];
  uint8_t scales[12];
  half_bits d;
};
// 8 sub-blocks of 32: x = d * sc * q - dmin * m, q 4-bit, sc/m 6-bit packed in scales
struct block_q4_K {
  half_bits d;
  half_bits dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qs[QK_K / 2];
};
// as Q4_K with a fifth bit per element in qh
struct block_q5_K {
  half_bits d;
  half_bits dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
// 16 sub-blocks of 16: x = d * scales[i] * (q - 32), q 6-bit = 4 low bits in ql, 2 in qh
struct block_q6_K {
  uint8_t ql[QK_K / 2];
  uint8_t qh[QK_K / 4];
  int8_t scales[QK_K / 16];
  half_bits d;
};
// Activations for the K types: x = d * q, bsums[i] = sum of qs[16 i .. 16 i + 15]
// (lets the min terms of Q2_K/Q4_K/Q5_K be applied per sub-block without touching qs).
struct block_q8_K {
  float d;
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];
};

// Non-linear 4-bit: x = d * kvalues_iq4nl[q]
struct block_iq4_nl {
  half_bits d;
  uint8_t qs[QK4_NL / 2];
};
// 8 sub-blocks of 32 with 6-bit scales (low 4 bits in scales_l, high 2 in scales_h):
// x = d * (scale - 32) * kvalues_iq4nl[q]
struct block_iq4_xs {
  half_bits d;
  uint16_t scales_h;
  uint8_t scales_l[QK_K / 64];
  uint8_t qs[QK_K / 2];
};

// The activation format the matmul uses for the legacy (32-element) weight types: like
// ggml's Q8_1 but with float d and s (s = d * sum(qs)), so the min term of Q4_1/Q5_1 and
// the scale carry no extra fp16 rounding. Internal to the matmul scratch, never on disk.
struct block_q8_act {
  float d;
  float s;
  int8_t qs[QK8_0];
};

// Precise ("int16") activation rows: each activation is held as two int8 terms,
// x ~= d q + d2 q2, where q2 quantizes the residual x - d q with its own scale
// (d2 <= d / 254), cutting the activation rounding error by about 2^8 (issue #5). A row of
// n elements is two rows of the int8 format back to back: n / 32 (or n / 256) blocks of
// plane 1 (block_q8_act with d, s = d sum(q); block_q8_K with d, bsums of q), then as many of
// plane 2 (d2 and the sums of q2). Every term of the dot products is linear in the
// activation, so a plane is an ordinary int8 activation row: the precise dot kernels unpack
// each weight block once for both planes, and the int8 GEMM panels can run once per plane.

// The 16 values of IQ4_NL/IQ4_XS, indexed by the 4-bit code.
inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                             1,    13,   25,  38,  53,  69,  89,  113};

static_assert(sizeof(block_q4_0) == 18);
static_assert(sizeof(block_q4_1) == 20);
static_assert(sizeof(block_q5_0) == 22);
static_assert(sizeof(block_q5_1) == 24);
static_assert(sizeof(block_q8_0) == 34);
static_assert(sizeof(block_q8_1) == 36);
static_assert(sizeof(block_q2_K) == 84);
static_assert(sizeof(block_q3_K) == 110);
static_assert(sizeof(block_q4_K) == 144);
static_assert(sizeof(block_q5_K) == 176);
static_assert(sizeof(block_q6_K) == 210);
static_assert(sizeof(block_q8_K) == 292);
static_assert(sizeof(block_iq4_nl) == 18);
static_assert(sizeof(block_iq4_xs) == 136);
static_assert(sizeof(block_q8_act) == 40);
// The SIMD kernels load d and s of block_q8_act, and d and m of Q4_1/Q5_1, as one pair.
static_assert(offsetof(block_q8_act, s) == offsetof(block_q8_act, d) + 4);
static_assert(offsetof(block_q4_1, m) == 2 && offsetof(block_q5_1, m) == 2);
// Blocks of 2-byte halves only: rows of them may sit at any even offset in a file.
static_assert(alignof(block_q4_K) == 2 && alignof(block_q6_K) == 2 && alignof(block_q8_0) == 2);

}  // namespace kiln::kernels
