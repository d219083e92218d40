// fp16 (IEEE binary16) and bf16 <-> fp32 conversions.
//
// Scalar conversions are bit exact: float -> half/bf16 rounds to nearest, ties to even;
// subnormals, infinities and NaNs are kept (NaN payloads truncated, quiet bit forced).
// They are constexpr-free plain inline functions so CUDA host code can use them too.
// Row conversions use F16C where the build has it (-mf16c / -march=native), else the scalar
// loop.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>

namespace kiln::kernels {

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(magnitude) | sign);
  }
  if (exponent == 31) {  // inf, or NaN made quiet with its payload kept (as F16C does)
    const uint32_t quiet = mantissa != 0 ? 0x400000u : 0u;
    return std::bit_cast<float>(sign | 0x7f800000u | quiet | (mantissa << 13));
  }
  // Normal: rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t fp32_to_fp16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf stays inf; NaN stays NaN (quiet bit set)
    const uint32_t nan_bits = x > 0x7f800000u ? (0x200u | ((x >> 13) & 0x3ffu)) : 0u;
    return static_cast<uint16_t>(sign | 0x7c00u | nan_bits);
  }
  if (x >= 0x477ff000u) {  // >= 65520 rounds past the largest half (65504)
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (x < 0x38800000u) {
    // Below 2^-14 the result is a half subnormal (or zero) with ulp 2^-24. Adding 0.5
    // puts the value in a binade whose float ulp is also 2^-24, so the FPU does the
    // round-to-nearest-even for us; the mantissa bits are then the half's bits.
    const float shifted = std::bit_cast<float>(x) + 0.5f;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(shifted) - 0x3f000000u));
  }
  // Normal: round the 13 dropped mantissa bits to nearest even (a carry may bump the
  // exponent, which is still right), then rebias the exponent from 127 to 15.
  const uint32_t lsb = (x >> 13) & 1u;
  x += 0xc8000fffu + lsb;  // 0xc8000000 == -(112 << 23)
  return static_cast<uint16_t>(sign | (x >> 13));
}

inline float bf16_to_fp32(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

inline uint16_t fp32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {  // NaN: truncate, force quiet
    return static_cast<uint16_t>((x >> 16) | 0x40u);
  }
  const uint32_t lsb = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7fffu + lsb) >> 16);
}

// Row conversions; src and dst must have the same size (throws std::invalid_argument).
void fp16_to_fp32_row(std::span<const uint16_t> src, std::span<float> dst);
void fp32_to_fp16_row(std::span<const float> src, std::span<uint16_t> dst);
void bf16_to_fp32_row(std::span<const uint16_t> src, std::span<float> dst);
void fp32_to_bf16_row(std::span<const float> src, std::span<uint16_t> dst);

}  // namespace kiln::kernels
