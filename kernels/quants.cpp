#include "kernels/quants.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/f16.h"

namespace kiln::kernels {
namespace {

[[noreturn]] void throw_size_mismatch(const char* what, size_t blocks, size_t per_block,
                                      size_t out) {
  throw std::invalid_argument(std::string(what) + ": " + std::to_string(blocks) + " blocks of " +
                              std::to_string(per_block) + " elements do not fill " +
                              std::to_string(out) + " outputs");
}

template <typename Block>
void check_blocks(const char* what, std::span<const Block> x, size_t per_block, size_t n) {
  if (x.size() * per_block != n) throw_size_mismatch(what, x.size(), per_block, n);
}

template <typename Block>
void check_blocks_out(const char* what, size_t n, std::span<Block> y, size_t per_block) {
  if (y.size() * per_block != n) throw_size_mismatch(what, y.size(), per_block, n);
}

float h2f(half_bits h) { return fp16_to_fp32(h); }

}  // namespace

void unpack_q3_K_scales(const uint8_t packed[12], int8_t scales[16]) {
  // Scale j: low 4 bits in nibble (j / 8) of byte j % 8, high 2 bits in bit pair (j / 4)
  // of byte 8 + j % 4.
  for (int j = 0; j < 16; ++j) {
    const int low = (packed[j % 8] >> (4 * (j / 8))) & 0xF;
    const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
    scales[j] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
}

void dequantize_row_f32(std::span<const float> x, std::span<float> y) {
  check_blocks("dequantize_row_f32", x, 1, y.size());
  std::copy(x.begin(), x.end(), y.begin());
}

void dequantize_row_f16(std::span<const uint16_t> x, std::span<float> y) {
  check_blocks("dequantize_row_f16", x, 1, y.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = fp16_to_fp32(x[i]);
}

void dequantize_row_bf16(std::span<const uint16_t> x, std::span<float> y) {
  check_blocks("dequantize_row_bf16", x, 1, y.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_to_fp32(x[i]);
}

void dequantize_row_q4_0(std::span<const block_q4_0> x, std::span<float> y) {
  check_blocks("dequantize_row_q4_0", x, QK4_0, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = h2f(x[i].d);
    float* out = y.data() + i * QK4_0;
    for (int j = 0; j < QK4_0 / 2; ++j) {
      out[j] = static_cast<float>((x[i].qs[j] & 0xF) - 8) * d;
      out[j + QK4_0 / 2] = static_cast<float>((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

void dequantize_row_q4_1(std::span<const block_q4_1> x, std::span<float> y) {
  check_blocks("dequantize_row_q4_1", x, QK4_1, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = h2f(x[i].d);
    const float m = h2f(x[i].m);
    float* out = y.data() + i * QK4_1;
    for (int j = 0; j < QK4_1 / 2; ++j) {
      out[j] = static_cast<float>(x[i].qs[j] & 0xF) * d + m;
      out[j + QK4_1 / 2] = static_cast<float>(x[i].qs[j] >> 4) * d + m;
    }
  }
}

namespace {
// Bit j of the 32 high bits of a Q5 block, as the fifth bit (value 16) of element j.
int q5_high_bit(const uint8_t qh[4], int j) { return ((qh[j / 8] >> (j % 8)) & 1) << 4; }
}  // namespace

void dequantize_row_q5_0(std::span<const block_q5_0> x, std::span<float> y) {
  check_blocks("dequantize_row_q5_0", x, QK5_0, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = h2f(x[i].d);
    float* out = y.data() + i * QK5_0;
    for (int j = 0; j < QK5_0 / 2; ++j) {
      const int q0 = (x[i].qs[j] & 0xF) | q5_high_bit(x[i].qh, j);
      const int q1 = (x[i].qs[j] >> 4) | q5_high_bit(x[i].qh, j + QK5_0 / 2);
      out[j] = static_cast<float>(q0 - 16) * d;
      out[j + QK5_0 / 2] = static_cast<float>(q1 - 16) * d;
    }
  }
}

void dequantize_row_q5_1(std::span<const block_q5_1> x, std::span<float> y) {
  check_blocks("dequantize_row_q5_1", x, QK5_1, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = h2f(x[i].d);
    const float m = h2f(x[i].m);
    float* out = y.data() + i * QK5_1;
    for (int j = 0; j < QK5_1 / 2; ++j) {
      const int q0 = (x[i].qs[j] & 0xF) | q5_high_bit(x[i].qh, j);
      const int q1 = (x[i].qs[j] >> 4) | q5_high_bit(x[i].qh, j + QK5_1 / 2);
      out[j] = static_cast<float>(q0) * d + m;
      out[j + QK5_1 / 2] = static_cast<float>(q1) * d + m;
    }
  }
}

void dequantize_row_q8_0(std::span<const block_q8_0> x, std::span<float> y) {
  check_blocks("dequantize_row_q8_0", x, QK8_0, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = h2f(x[i].d);
    for (int j = 0; j < QK8_0; ++j) y[i * QK8_0 + j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void dequantize_row_q2_K(std::span<const block_q2_K> x, std::span<float> y) {
  check_blocks("dequantize_row_q2_K", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const block_q2_K& b = x[i];
    const float d = h2f(b.d);
    const float dmin = h2f(b.dmin);
    float* out = y.data() + i * QK_K;
    // Element e: 128-element half h = e / 128, within it bit pair p = (e % 128) / 32 of
    // byte qs[32 h + e % 32]; sub-block of 16 = e / 16.
    for (int e = 0; e < QK_K; ++e) {
      const int h = e / 128;
      const int pair = (e % 128) / 32;
      const int q = (b.qs[32 * h + e % 32] >> (2 * pair)) & 3;
      const uint8_t sc = b.scales[e / 16];
      out[e] = d * static_cast<float>(sc & 0xF) * static_cast<float>(q) -
               dmin * static_cast<float>(sc >> 4);
    }
  }
}

void dequantize_row_q3_K(std::span<const block_q3_K> x, std::span<float> y) {
  check_blocks("dequantize_row_q3_K", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const block_q3_K& b = x[i];
    const float d = h2f(b.d);
    int8_t scales[16];
    unpack_q3_K_scales(b.scales, scales);
    float* out = y.data() + i * QK_K;
    // Low 2 bits as in Q2_K; the high bit of element e is bit (e / 32) of hmask[e % 32],
    // and a clear high bit means "subtract 4".
    for (int e = 0; e < QK_K; ++e) {
      const int h = e / 128;
      const int pair = (e % 128) / 32;
      const int low = (b.qs[32 * h + e % 32] >> (2 * pair)) & 3;
      const bool high = (b.hmask[e % 32] >> (e / 32)) & 1;
      const int q = low - (high ? 0 : 4);
      out[e] = d * static_cast<float>(scales[e / 16]) * static_cast<float>(q);
    }
  }
}

void dequantize_row_q4_K(std::span<const block_q4_K> x, std::span<float> y) {
  check_blocks("dequantize_row_q4_K", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const block_q4_K& b = x[i];
    const float d = h2f(b.d);
    const float dmin = h2f(b.dmin);
    float* out = y.data() + i * QK_K;
    // Sub-block s (of 32) lives in the low (even s) or high (odd s) nibbles of
    // qs[32 (s / 2) .. 32 (s / 2) + 31].
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      get_scale_min_k4(s, b.scales, sc, m);
      const float scale = d * static_cast<float>(sc);
      const float min = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * (s / 2);
      for (int l = 0; l < 32; ++l) {
        const int v = (s % 2 == 0) ? (q[l] & 0xF) : (q[l] >> 4);
        out[32 * s + l] = scale * static_cast<float>(v) - min;
      }
    }
  }
}

void dequantize_row_q5_K(std::span<const block_q5_K> x, std::span<float> y) {
  check_blocks("dequantize_row_q5_K", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const block_q5_K& b = x[i];
    const float d = h2f(b.d);
    const float dmin = h2f(b.dmin);
    float* out = y.data() + i * QK_K;
    // As Q4_K; the fifth bit of element l of sub-block s is bit s of qh[l].
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      get_scale_min_k4(s, b.scales, sc, m);
      const float scale = d * static_cast<float>(sc);
      const float min = dmin * static_cast<float>(m);
      const uint8_t* q = b.qs + 32 * (s / 2);
      for (int l = 0; l < 32; ++l) {
        const int low = (s % 2 == 0) ? (q[l] & 0xF) : (q[l] >> 4);
        const int v = low | (((b.qh[l] >> s) & 1) << 4);
        out[32 * s + l] = scale * static_cast<float>(v) - min;
      }
    }
  }
}

void dequantize_row_q6_K(std::span<const block_q6_K> x, std::span<float> y) {
  check_blocks("dequantize_row_q6_K", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const block_q6_K& b = x[i];
    const float d = h2f(b.d);
    float* out = y.data() + i * QK_K;
    // Element e: half h = e / 128, quarter k = (e % 128) / 32, lane l = e % 32. Low 4 bits
    // in the low (k < 2) or high nibble of ql[64 h + 32 (k % 2) + l]; high 2 bits are bit
    // pair k of qh[32 h + l]. Scale of the 16-element sub-block e / 16.
    for (int e = 0; e < QK_K; ++e) {
      const int h = e / 128;
      const int k = (e % 128) / 32;
      const int l = e % 32;
      const uint8_t low_byte = b.ql[64 * h + 32 * (k % 2) + l];
      const int low = (k < 2) ? (low_byte & 0xF) : (low_byte >> 4);
      const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
      const int q = (low | (high << 4)) - 32;
      out[e] = d * static_cast<float>(b.scales[e / 16]) * static_cast<float>(q);
    }
  }
}

void dequantize_row_iq4_nl(std::span<const block_iq4_nl> x, std::span<float> y) {
  check_blocks("dequantize_row_iq4_nl", x, QK4_NL, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = h2f(x[i].d);
    float* out = y.data() + i * QK4_NL;
    for (int j = 0; j < QK4_NL / 2; ++j) {
      out[j] = d * static_cast<float>(kvalues_iq4nl[x[i].qs[j] & 0xF]);
      out[j + QK4_NL / 2] = d * static_cast<float>(kvalues_iq4nl[x[i].qs[j] >> 4]);
    }
  }
}

void dequantize_row_iq4_xs(std::span<const block_iq4_xs> x, std::span<float> y) {
  check_blocks("dequantize_row_iq4_xs", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const block_iq4_xs& b = x[i];
    const float d = h2f(b.d);
    float* out = y.data() + i * QK_K;
    for (int s = 0; s < QK_K / 32; ++s) {
      const int low = (b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF;
      const int high = (b.scales_h >> (2 * s)) & 3;
      const float dl = d * static_cast<float>((low | (high << 4)) - 32);
      const uint8_t* q = b.qs + 16 * s;
      for (int j = 0; j < 16; ++j) {
        out[32 * s + j] = dl * static_cast<float>(kvalues_iq4nl[q[j] & 0xF]);
        out[32 * s + j + 16] = dl * static_cast<float>(kvalues_iq4nl[q[j] >> 4]);
      }
    }
  }
}

void dequantize_row_q8_K(std::span<const block_q8_K> x, std::span<float> y) {
  check_blocks("dequantize_row_q8_K", x, QK_K, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    for (int j = 0; j < QK_K; ++j) y[i * QK_K + j] = x[i].d * static_cast<float>(x[i].qs[j]);
  }
}

void dequantize_row_q8_act(std::span<const block_q8_act> x, std::span<float> y) {
  check_blocks("dequantize_row_q8_act", x, QK8_0, y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    for (int j = 0; j < QK8_0; ++j) y[i * QK8_0 + j] = x[i].d * static_cast<float>(x[i].qs[j]);
  }
}

namespace {

template <typename Block>
std::span<const Block> blocks_of(std::span<const std::byte> src) {
  return {reinterpret_cast<const Block*>(src.data()), src.size() / sizeof(Block)};
}

}  // namespace

bool can_dequantize(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::Q8_K:
    case GgmlType::IQ4_NL:
    case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

void dequantize_row(GgmlType type, std::span<const std::byte> src, std::span<float> dst) {
  if (!can_dequantize(type)) {
    throw std::invalid_argument("dequantize_row: no dequantizer for tensor type " +
                                std::string(type_name(type)));
  }
  const auto& t = traits(type);
  if (dst.size() % t.block_elements != 0 || src.size() != row_bytes(type, dst.size())) {
    throw std::invalid_argument(
        "dequantize_row: " + std::string(type_name(type)) + " row of " +
        std::to_string(dst.size()) + " elements needs " +
        (dst.size() % t.block_elements != 0
             ? "a multiple of " + std::to_string(t.block_elements) + " elements"
             : std::to_string(row_bytes(type, dst.size())) + " bytes, got " +
                   std::to_string(src.size())));
  }
  switch (type) {
    case GgmlType::F32:
      return dequantize_row_f32(blocks_of<float>(src), dst);
    case GgmlType::F16:
      return dequantize_row_f16(blocks_of<uint16_t>(src), dst);
    case GgmlType::BF16:
      return dequantize_row_bf16(blocks_of<uint16_t>(src), dst);
    case GgmlType::Q4_0:
      return dequantize_row_q4_0(blocks_of<block_q4_0>(src), dst);
    case GgmlType::Q4_1:
      return dequantize_row_q4_1(blocks_of<block_q4_1>(src), dst);
    case GgmlType::Q5_0:
      return dequantize_row_q5_0(blocks_of<block_q5_0>(src), dst);
    case GgmlType::Q5_1:
      return dequantize_row_q5_1(blocks_of<block_q5_1>(src), dst);
    case GgmlType::Q8_0:
      return dequantize_row_q8_0(blocks_of<block_q8_0>(src), dst);
    case GgmlType::Q2_K:
      return dequantize_row_q2_K(blocks_of<block_q2_K>(src), dst);
    case GgmlType::Q3_K:
      return dequantize_row_q3_K(blocks_of<block_q3_K>(src), dst);
    case GgmlType::Q4_K:
      return dequantize_row_q4_K(blocks_of<block_q4_K>(src), dst);
    case GgmlType::Q5_K:
      return dequantize_row_q5_K(blocks_of<block_q5_K>(src), dst);
    case GgmlType::Q6_K:
      return dequantize_row_q6_K(blocks_of<block_q6_K>(src), dst);
    case GgmlType::Q8_K:
      return dequantize_row_q8_K(blocks_of<block_q8_K>(src), dst);
    case GgmlType::IQ4_NL:
      return dequantize_row_iq4_nl(blocks_of<block_iq4_nl>(src), dst);
    case GgmlType::IQ4_XS:
      return dequantize_row_iq4_xs(blocks_of<block_iq4_xs>(src), dst);
    default:
      break;
  }
  throw std::invalid_argument("dequantize_row: no dequantizer for tensor type " +
                              std::string(type_name(type)));
}

void quantize_row_q8_0(std::span<const float> x, std::span<block_q8_0> y) {
  check_blocks_out("quantize_row_q8_0", x.size(), y, QK8_0);
  for (size_t i = 0; i < y.size(); ++i) {
    const float* v = x.data() + i * QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(v[j] * id));
  }
}

void quantize_row_q8_act(std::span<const float> x, std::span<block_q8_act> y) {
  check_blocks_out("quantize_row_q8_act", x.size(), y, QK8_0);
  for (size_t i = 0; i < y.size(); ++i) {
    const float* v = x.data() + i * QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK8_0; ++j) {
      // Round half to even (nearbyint in the default rounding mode): one instruction, and
      // the loop vectorizes; prefill quantizes every activation row through here.
      const int q = static_cast<int>(std::nearbyint(v[j] * id));
      y[i].qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    y[i].d = d;
    y[i].s = d * static_cast<float>(sum);
  }
}

void quantize_row_q8_K(std::span<const float> x, std::span<block_q8_K> y) {
  check_blocks_out("quantize_row_q8_K", x.size(), y, QK_K);
  for (size_t i = 0; i < y.size(); ++i) {
    const float* v = x.data() + i * QK_K;
    float max = 0.0f;
    float amax = 0.0f;
    for (int j = 0; j < QK_K; ++j) {
      if (std::fabs(v[j]) > amax) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    }
    block_q8_K& b = y[i];
    if (amax == 0.0f) {
      b.d = 0.0f;
      std::memset(b.qs, 0, sizeof(b.qs));
      std::memset(b.bsums, 0, sizeof(b.bsums));
      continue;
    }
    // Negative scale: the largest-magnitude element maps to -127 whatever its sign, so
    // every q lies in [-127, 127] (the SIMD dot products rely on q != -128).
    const float iscale = -127.0f / max;
    for (int j = 0; j < QK_K; ++j) {
      // Round half to even, as ggml's nearest_int does (and it vectorizes).
      const int q = static_cast<int>(std::nearbyint(iscale * v[j]));
      b.qs[j] = static_cast<int8_t>(std::min(127, q));
    }
    for (int s = 0; s < QK_K / 16; ++s) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += b.qs[16 * s + j];
      b.bsums[s] = static_cast<int16_t>(sum);
    }
    b.d = 1.0f / iscale;
  }
}

namespace {

// One block of the precise activation formats: qs/qs2 as documented in quants.h; returns
// {d, d2}. n is 32 or 256.
struct TwoPlaneScales {
  float d;
  float d2;
};
TwoPlaneScales quantize_two_planes(const float* v, int n, int8_t* qs, int8_t* qs2) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(v[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  float rmax = 0.0f;
  for (int j = 0; j < n; ++j) {
    // Clamped: x / d may round a hair above 127 in float.
    const int q = std::clamp(static_cast<int>(std::nearbyint(v[j] * id)), -127, 127);
    qs[j] = static_cast<int8_t>(q);
    // The residual with one rounding (fma), so the SIMD quantizer can match it bit for bit.
    rmax = std::max(rmax, std::fabs(std::fma(-d, static_cast<float>(q), v[j])));
  }
  const float d2 = rmax / 127.0f;
  const float id2 = d2 != 0.0f ? 1.0f / d2 : 0.0f;
  for (int j = 0; j < n; ++j) {
    const float r = std::fma(-d, static_cast<float>(qs[j]), v[j]);
    qs2[j] = static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(r * id2)), -127, 127));
  }
  return {d, d2};
}

}  // namespace

void quantize_row_q8_act2(std::span<const float> x, std::span<block_q8_act> y) {
  const size_t nb = y.size() / 2;
  check_blocks_out("quantize_row_q8_act2", x.size(), y.first(nb), QK8_0);
  if (y.size() != 2 * nb)
    throw_size_mismatch("quantize_row_q8_act2", y.size(), QK8_0 / 2, x.size());
  for (size_t i = 0; i < nb; ++i) {
    block_q8_act& p1 = y[i];
    block_q8_act& p2 = y[nb + i];
    const TwoPlaneScales sc = quantize_two_planes(x.data() + i * QK8_0, QK8_0, p1.qs, p2.qs);
    int sum = 0;
    int sum2 = 0;
    for (int j = 0; j < QK8_0; ++j) {
      sum += p1.qs[j];
      sum2 += p2.qs[j];
    }
    p1.d = sc.d;
    p1.s = sc.d * static_cast<float>(sum);
    p2.d = sc.d2;
    p2.s = sc.d2 * static_cast<float>(sum2);
  }
}

void quantize_row_q8_K2(std::span<const float> x, std::span<block_q8_K> y) {
  const size_t nb = y.size() / 2;
  check_blocks_out("quantize_row_q8_K2", x.size(), y.first(nb), QK_K);
  if (y.size() != 2 * nb) throw_size_mismatch("quantize_row_q8_K2", y.size(), QK_K / 2, x.size());
  for (size_t i = 0; i < nb; ++i) {
    block_q8_K& p1 = y[i];
    block_q8_K& p2 = y[nb + i];
    const TwoPlaneScales sc = quantize_two_planes(x.data() + i * QK_K, QK_K, p1.qs, p2.qs);
    for (int s = 0; s < QK_K / 16; ++s) {
      int sum = 0;
      int sum2 = 0;
      for (int j = 0; j < 16; ++j) {
        sum += p1.qs[16 * s + j];
        sum2 += p2.qs[16 * s + j];
      }
      p1.bsums[s] = static_cast<int16_t>(sum);
      p2.bsums[s] = static_cast<int16_t>(sum2);
    }
    p1.d = sc.d;
    p2.d = sc.d2;
  }
}

namespace {

// y = d q + d2 q2 over a two-plane row of `Block` (x: plane 1 then plane 2).
template <typename Block, int N>
void dequantize_two_planes(const char* what, std::span<const Block> x, std::span<float> y) {
  const size_t nb = x.size() / 2;
  if (x.size() != 2 * nb || nb * N != y.size())
    throw_size_mismatch(what, x.size(), N / 2, y.size());
  for (size_t i = 0; i < nb; ++i) {
    for (int j = 0; j < N; ++j) {
      y[i * N + j] = x[i].d * static_cast<float>(x[i].qs[j]) +
                     x[nb + i].d * static_cast<float>(x[nb + i].qs[j]);
    }
  }
}

}  // namespace

void dequantize_row_q8_act2(std::span<const block_q8_act> x, std::span<float> y) {
  dequantize_two_planes<block_q8_act, QK8_0>("dequantize_row_q8_act2", x, y);
}

void dequantize_row_q8_K2(std::span<const block_q8_K> x, std::span<float> y) {
  dequantize_two_planes<block_q8_K, QK_K>("dequantize_row_q8_K2", x, y);
}

}  // namespace kiln::kernels
