// Device dequantization of the weight types, eight consecutive elements at a time: the one
// place the CUDA kernels learn each block layout. dequant8<T>(row, i0, out) writes elements
// [i0, i0 + 8) of a row (i0 a multiple of 8) exactly as the CPU reference dequantizers in
// kernels/quants.cpp do; the matmul kernels, the embedding gather and the test launcher all
// go through it, so the tests of dequantize_rows cover the layouts of every kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "gguf/ggml_types.h"
#include "kernels/blocks.h"
#include "kernels/cuda/common.cuh"

namespace kiln::cuda {

using kiln::kernels::block_q4_0;
using kiln::kernels::block_q4_1;
using kiln::kernels::block_q4_K;
using kiln::kernels::block_q5_0;
using kiln::kernels::block_q5_1;
using kiln::kernels::block_q5_K;
using kiln::kernels::block_q6_K;
using kiln::kernels::block_q8_0;

// Elements [i0, i0 + 8) of a row of type T starting at `row`. Host and device: the tests run
// the same code on the CPU too, so the layouts are checked even where there is no GPU.
template <GgmlType T>
KILN_HOST_DEVICE void dequant8(const uint8_t* row, int i0, float* out);

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::F32>(const uint8_t* row, int i0, float* out) {
  const float* x = reinterpret_cast<const float*>(row) + i0;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = x[j];
}

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::F16>(const uint8_t* row, int i0, float* out) {
  const uint16_t* x = reinterpret_cast<const uint16_t*>(row) + i0;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = half_bits_to_float(x[j]);
}

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::BF16>(const uint8_t* row, int i0, float* out) {
  const uint16_t* x = reinterpret_cast<const uint16_t*>(row) + i0;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = float_from_bits(static_cast<uint32_t>(x[j]) << 16);
}

// Legacy 32-element blocks keep element o (o < 16) in the low nibble of qs[o] and element
// o + 16 in the high nibble; eight aligned elements never straddle the two halves.
template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q4_0>(const uint8_t* row, int i0, float* out) {
  const block_q4_0* b = reinterpret_cast<const block_q4_0*>(row) + i0 / 32;
  const int o = i0 % 32;
  const float d = half_bits_to_float(b->d);
  const uint8_t* qs = b->qs + (o % 16);
  const int shift = o < 16 ? 0 : 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = d * static_cast<float>(((qs[j] >> shift) & 0xF) - 8);
}

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q4_1>(const uint8_t* row, int i0, float* out) {
  const block_q4_1* b = reinterpret_cast<const block_q4_1*>(row) + i0 / 32;
  const int o = i0 % 32;
  const float d = half_bits_to_float(b->d), m = half_bits_to_float(b->m);
  const uint8_t* qs = b->qs + (o % 16);
  const int shift = o < 16 ? 0 : 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = d * static_cast<float>((qs[j] >> shift) & 0xF) + m;
}

// qh is a little-endian uint32 at a 2-byte aligned offset: read as two halves.
KILN_HOST_DEVICE uint32_t load_qh32(const uint8_t* qh) {
  return static_cast<uint32_t>(load_u16(qh)) | (static_cast<uint32_t>(load_u16(qh + 2)) << 16);
}

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q5_0>(const uint8_t* row, int i0, float* out) {
  const block_q5_0* b = reinterpret_cast<const block_q5_0*>(row) + i0 / 32;
  const int o = i0 % 32;
  const float d = half_bits_to_float(b->d);
  const uint32_t qh = load_qh32(b->qh) >> o;  // bit j: fifth bit of element o + j
  const uint8_t* qs = b->qs + (o % 16);
  const int shift = o < 16 ? 0 : 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) {
    const int q = ((qs[j] >> shift) & 0xF) | (((qh >> j) & 1) << 4);
    out[j] = d * static_cast<float>(q - 16);
  }
}

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q5_1>(const uint8_t* row, int i0, float* out) {
  const block_q5_1* b = reinterpret_cast<const block_q5_1*>(row) + i0 / 32;
  const int o = i0 % 32;
  const float d = half_bits_to_float(b->d), m = half_bits_to_float(b->m);
  const uint32_t qh = load_qh32(b->qh) >> o;
  const uint8_t* qs = b->qs + (o % 16);
  const int shift = o < 16 ? 0 : 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) {
    const int q = ((qs[j] >> shift) & 0xF) | (((qh >> j) & 1) << 4);
    out[j] = d * static_cast<float>(q) + m;
  }
}

template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q8_0>(const uint8_t* row, int i0, float* out) {
  const block_q8_0* b = reinterpret_cast<const block_q8_0*>(row) + i0 / 32;
  const float d = half_bits_to_float(b->d);
  const int8_t* qs = b->qs + i0 % 32;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) out[j] = d * static_cast<float>(qs[j]);
}

// Eight bytes as one 64-bit load (byte j in bits 8j..8j+7). Only for Q4_K/Q5_K quants: their
// blocks (144 and 176 bytes) and the quants' offsets inside them are multiples of 8, and
// every device row of them starts 8-byte aligned (tensors sit at 256-byte offsets).
KILN_HOST_DEVICE uint64_t load_8_bytes(const uint8_t* p) {
#ifdef __CUDA_ARCH__
  return *reinterpret_cast<const uint64_t*>(p);
#else
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
#endif
}

static_assert(sizeof(block_q4_K) % 8 == 0 && offsetof(block_q4_K, qs) % 8 == 0);
static_assert(sizeof(block_q5_K) % 8 == 0 && offsetof(block_q5_K, qs) % 8 == 0 &&
              offsetof(block_q5_K, qh) % 8 == 0);

// The j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K super-block (as get_scale_min_k4).
KILN_HOST_DEVICE void scale_min_k4(int j, const uint8_t* scales, int& sc, int& m) {
  if (j < 4) {
    sc = scales[j] & 63;
    m = scales[j + 4] & 63;
  } else {
    sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// Q4_K: sub-block s (of 32) sits in the low (even s) or high (odd s) nibbles of
// qs[32 (s / 2) .. + 31]; x = d * sc * q - dmin * m.
template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q4_K>(const uint8_t* row, int i0, float* out) {
  const block_q4_K* b = reinterpret_cast<const block_q4_K*>(row) + i0 / 256;
  const int o = i0 % 256, s = o / 32, l0 = o % 32;
  int sc, m;
  scale_min_k4(s, b->scales, sc, m);
  const float scale = half_bits_to_float(b->d) * static_cast<float>(sc);
  const float min = half_bits_to_float(b->dmin) * static_cast<float>(m);
  const uint64_t q = load_8_bytes(b->qs + 32 * (s / 2) + l0);
  const int shift = (s % 2) * 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) {
    out[j] = scale * static_cast<float>((q >> (8 * j + shift)) & 0xF) - min;
  }
}

// Q5_K: as Q4_K; the fifth bit of element l of sub-block s is bit s of qh[l].
template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q5_K>(const uint8_t* row, int i0, float* out) {
  const block_q5_K* b = reinterpret_cast<const block_q5_K*>(row) + i0 / 256;
  const int o = i0 % 256, s = o / 32, l0 = o % 32;
  int sc, m;
  scale_min_k4(s, b->scales, sc, m);
  const float scale = half_bits_to_float(b->d) * static_cast<float>(sc);
  const float min = half_bits_to_float(b->dmin) * static_cast<float>(m);
  const uint64_t q = load_8_bytes(b->qs + 32 * (s / 2) + l0);
  const uint64_t qh = load_8_bytes(b->qh + l0);
  const int shift = (s % 2) * 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) {
    const int v =
        static_cast<int>(((q >> (8 * j + shift)) & 0xF) | (((qh >> (8 * j + s)) & 1) << 4));
    out[j] = scale * static_cast<float>(v) - min;
  }
}

// Q6_K: element e has half h = e / 128, quarter k = (e % 128) / 32, lane l = e % 32; its
// low 4 bits are a nibble of ql[64 h + 32 (k % 2) + l] (low for k < 2), its high 2 bits the
// bit pair k of qh[32 h + l]; the scale is scales[e / 16]. Eight aligned elements share
// h, k and the scale.
template <>
KILN_HOST_DEVICE void dequant8<GgmlType::Q6_K>(const uint8_t* row, int i0, float* out) {
  const block_q6_K* b = reinterpret_cast<const block_q6_K*>(row) + i0 / 256;
  const int e = i0 % 256, h = e / 128, k = (e % 128) / 32, l0 = e % 32;
  const float scale = half_bits_to_float(b->d) * static_cast<float>(b->scales[e / 16]);
  const uint8_t* ql = b->ql + 64 * h + 32 * (k % 2) + l0;
  const uint8_t* qh = b->qh + 32 * h + l0;
  const int low_shift = k < 2 ? 0 : 4;
  KILN_UNROLL
  for (int j = 0; j < 8; ++j) {
    const int q = (((ql[j] >> low_shift) & 0xF) | (((qh[j] >> (2 * k)) & 3) << 4)) - 32;
    out[j] = scale * static_cast<float>(q);
  }
}

// Calls f(std::integral_constant<GgmlType, T>{}) for a type with a device dequantizer;
// throws std::invalid_argument naming the type otherwise. Host side.
template <typename F>
void dispatch_weight_type(GgmlType type, const char* what, F&& f) {
  switch (type) {
    case GgmlType::F32:
      return f(std::integral_constant<GgmlType, GgmlType::F32>{});
    case GgmlType::F16:
      return f(std::integral_constant<GgmlType, GgmlType::F16>{});
    case GgmlType::BF16:
      return f(std::integral_constant<GgmlType, GgmlType::BF16>{});
    case GgmlType::Q4_0:
      return f(std::integral_constant<GgmlType, GgmlType::Q4_0>{});
    case GgmlType::Q4_1:
      return f(std::integral_constant<GgmlType, GgmlType::Q4_1>{});
    case GgmlType::Q5_0:
      return f(std::integral_constant<GgmlType, GgmlType::Q5_0>{});
    case GgmlType::Q5_1:
      return f(std::integral_constant<GgmlType, GgmlType::Q5_1>{});
    case GgmlType::Q8_0:
      return f(std::integral_constant<GgmlType, GgmlType::Q8_0>{});
    case GgmlType::Q4_K:
      return f(std::integral_constant<GgmlType, GgmlType::Q4_K>{});
    case GgmlType::Q5_K:
      return f(std::integral_constant<GgmlType, GgmlType::Q5_K>{});
    case GgmlType::Q6_K:
      return f(std::integral_constant<GgmlType, GgmlType::Q6_K>{});
    default:
      throw std::invalid_argument(std::string(what) + ": weight type " +
                                  std::string(type_name(type)) + " has no CUDA kernel");
  }
}

}  // namespace kiln::cuda
