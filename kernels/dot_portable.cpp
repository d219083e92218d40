// Portable dot-product kernels: each weight block is unpacked into plain integers (or
// floats) once, then dotted with every activation row of the tile. Written for clarity; the
// SIMD kernels are checked against these and against dequantize-then-dot.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/blocks.h"
#include "kernels/dot.h"
#include "kernels/f16.h"
#include "kernels/quants.h"

namespace kiln::kernels {
namespace {

// A legacy block unpacked: x = d * q + m.
struct Legacy32 {
  int8_t q[32];
  float d;
  float m;
};

// A K-type super-block unpacked: x = d * scale[e / 16] * q - dmin * min[e / 16].
struct Super256 {
  int8_t q[QK_K];
  int scale[16];
  int min[16];
  float d;
  float dmin;
};

void unpack(const block_q4_0& b, Legacy32& u) {
  for (int j = 0; j < 16; ++j) {
    u.q[j] = static_cast<int8_t>((b.qs[j] & 0xF) - 8);
    u.q[j + 16] = static_cast<int8_t>((b.qs[j] >> 4) - 8);
  }
  u.d = fp16_to_fp32(b.d);
  u.m = 0.0f;
}
void unpack(const block_q4_1& b, Legacy32& u) {
  for (int j = 0; j < 16; ++j) {
    u.q[j] = static_cast<int8_t>(b.qs[j] & 0xF);
    u.q[j + 16] = static_cast<int8_t>(b.qs[j] >> 4);
  }
  u.d = fp16_to_fp32(b.d);
  u.m = fp16_to_fp32(b.m);
}
int q5_bit(const uint8_t qh[4], int j) { return ((qh[j / 8] >> (j % 8)) & 1) << 4; }
void unpack(const block_q5_0& b, Legacy32& u) {
  for (int j = 0; j < 16; ++j) {
    u.q[j] = static_cast<int8_t>(((b.qs[j] & 0xF) | q5_bit(b.qh, j)) - 16);
    u.q[j + 16] = static_cast<int8_t>(((b.qs[j] >> 4) | q5_bit(b.qh, j + 16)) - 16);
  }
  u.d = fp16_to_fp32(b.d);
  u.m = 0.0f;
}
void unpack(const block_q5_1& b, Legacy32& u) {
  for (int j = 0; j < 16; ++j) {
    u.q[j] = static_cast<int8_t>((b.qs[j] & 0xF) | q5_bit(b.qh, j));
    u.q[j + 16] = static_cast<int8_t>((b.qs[j] >> 4) | q5_bit(b.qh, j + 16));
  }
  u.d = fp16_to_fp32(b.d);
  u.m = fp16_to_fp32(b.m);
}
void unpack(const block_q8_0& b, Legacy32& u) {
  std::memcpy(u.q, b.qs, 32);
  u.d = fp16_to_fp32(b.d);
  u.m = 0.0f;
}
void unpack(const block_iq4_nl& b, Legacy32& u) {
  for (int j = 0; j < 16; ++j) {
    u.q[j] = kvalues_iq4nl[b.qs[j] & 0xF];
    u.q[j + 16] = kvalues_iq4nl[b.qs[j] >> 4];
  }
  u.d = fp16_to_fp32(b.d);
  u.m = 0.0f;
}

// Low 2 bits of Q2_K/Q3_K element 128 h + 32 p + l: bit pair p of qs[32 h + l].
void unpack_2bit(const uint8_t* qs, int8_t* q) {
  for (int h = 0; h < 2; ++h) {
    for (int p = 0; p < 4; ++p) {
      for (int l = 0; l < 32; ++l) {
        q[128 * h + 32 * p + l] = static_cast<int8_t>((qs[32 * h + l] >> (2 * p)) & 3);
      }
    }
  }
}

void unpack(const block_q2_K& b, Super256& u) {
  unpack_2bit(b.qs, u.q);
  for (int s = 0; s < 16; ++s) {
    u.scale[s] = b.scales[s] & 0xF;
    u.min[s] = b.scales[s] >> 4;
  }
  u.d = fp16_to_fp32(b.d);
  u.dmin = fp16_to_fp32(b.dmin);
}
void unpack(const block_q3_K& b, Super256& u) {
  unpack_2bit(b.qs, u.q);
  // A clear bit (e / 32) of hmask[e % 32] subtracts 4.
  for (int g = 0; g < 8; ++g) {
    for (int l = 0; l < 32; ++l) {
      u.q[32 * g + l] = static_cast<int8_t>(u.q[32 * g + l] - (((b.hmask[l] >> g) & 1) ? 0 : 4));
    }
  }
  int8_t scales[16];
  unpack_q3_K_scales(b.scales, scales);
  for (int s = 0; s < 16; ++s) {
    u.scale[s] = scales[s];
    u.min[s] = 0;
  }
  u.d = fp16_to_fp32(b.d);
  u.dmin = 0.0f;
}
template <typename Block>
void unpack_q45_K(const Block& b, Super256& u, bool has_high_bit) {
  for (int s = 0; s < 8; ++s) {
    uint8_t sc, m;
    get_scale_min_k4(s, b.scales, sc, m);
    u.scale[2 * s] = u.scale[2 * s + 1] = sc;
    u.min[2 * s] = u.min[2 * s + 1] = m;
    const uint8_t* q = b.qs + 32 * (s / 2);
    for (int l = 0; l < 32; ++l) {
      int v = (s % 2 == 0) ? (q[l] & 0xF) : (q[l] >> 4);
      if constexpr (requires { b.qh; }) {
        if (has_high_bit) v |= ((b.qh[l] >> s) & 1) << 4;
      }
      u.q[32 * s + l] = static_cast<int8_t>(v);
    }
  }
  u.d = fp16_to_fp32(b.d);
  u.dmin = fp16_to_fp32(b.dmin);
}
void unpack(const block_q4_K& b, Super256& u) { unpack_q45_K(b, u, false); }
void unpack(const block_q5_K& b, Super256& u) { unpack_q45_K(b, u, true); }
void unpack(const block_q6_K& b, Super256& u) {
  // Element 128 h + 32 k + l, as in dequantize_row_q6_K.
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t low_byte = b.ql[64 * h + 32 * (k % 2) + l];
        const int low = (k < 2) ? (low_byte & 0xF) : (low_byte >> 4);
        const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
        u.q[128 * h + 32 * k + l] = static_cast<int8_t>((low | (high << 4)) - 32);
      }
    }
  }
  for (int s = 0; s < 16; ++s) {
    u.scale[s] = b.scales[s];
    u.min[s] = 0;
  }
  u.d = fp16_to_fp32(b.d);
  u.dmin = 0.0f;
}
void unpack(const block_iq4_xs& b, Super256& u) {
  for (int s = 0; s < 8; ++s) {
    const int low = (b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF;
    const int high = (b.scales_h >> (2 * s)) & 3;
    u.scale[2 * s] = u.scale[2 * s + 1] = (low | (high << 4)) - 32;
    u.min[2 * s] = u.min[2 * s + 1] = 0;
    for (int j = 0; j < 16; ++j) {
      u.q[32 * s + j] = kvalues_iq4nl[b.qs[16 * s + j] & 0xF];
      u.q[32 * s + j + 16] = kvalues_iq4nl[b.qs[16 * s + j] >> 4];
    }
  }
  u.d = fp16_to_fp32(b.d);
  u.dmin = 0.0f;
}

// Legacy weight blocks x block_q8_act: sum over blocks of d_w d_a sum(q_w q_a) + m_w s_a.
template <typename Block>
void dot_legacy(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride,
                int nt, float* out) {
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const size_t n_blocks = cols / 32;
  float sums[kMaxTileTokens] = {};
  Legacy32 u;
  for (size_t i = 0; i < n_blocks; ++i) {
    unpack(w[i], u);
    for (int t = 0; t < nt; ++t) {
      const auto& a = reinterpret_cast<const block_q8_act*>(act + t * act_stride)[i];
      int sumi = 0;
      for (int j = 0; j < 32; ++j) sumi += u.q[j] * a.qs[j];
      sums[t] += u.d * a.d * static_cast<float>(sumi) + u.m * a.s;
    }
  }
  for (int t = 0; t < nt; ++t) out[t] = sums[t];
}

// K-type weight blocks x block_q8_K: per sub-block of 16, d d_a scale sum(q q_a), minus
// dmin d_a min bsum (the activation sum of that sub-block).
template <typename Block>
void dot_k(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride, int nt,
           float* out) {
  const auto* w = reinterpret_cast<const Block*>(w_row);
  const size_t n_blocks = cols / QK_K;
  float sums[kMaxTileTokens] = {};
  Super256 u;
  for (size_t i = 0; i < n_blocks; ++i) {
    unpack(w[i], u);
    for (int t = 0; t < nt; ++t) {
      const auto& a = reinterpret_cast<const block_q8_K*>(act + t * act_stride)[i];
      int scaled = 0;
      int mins = 0;
      for (int s = 0; s < 16; ++s) {
        int sumi = 0;
        for (int j = 0; j < 16; ++j) sumi += u.q[16 * s + j] * a.qs[16 * s + j];
        scaled += u.scale[s] * sumi;
        mins += u.min[s] * a.bsums[s];
      }
      sums[t] += a.d * (u.d * static_cast<float>(scaled) - u.dmin * static_cast<float>(mins));
    }
  }
  for (int t = 0; t < nt; ++t) out[t] = sums[t];
}

// Float weights x float activations.
template <float (*Load)(const std::byte*, size_t)>
void dot_float(size_t cols, const std::byte* w_row, const std::byte* act, size_t act_stride, int nt,
               float* out) {
  for (int t = 0; t < nt; ++t) {
    const auto* a = reinterpret_cast<const float*>(act + t * act_stride);
    // Eight partial sums: keeps rounding error growth down and lets the compiler vectorize.
    float partial[8] = {};
    size_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      for (int k = 0; k < 8; ++k) partial[k] += Load(w_row, j + k) * a[j + k];
    }
    for (; j < cols; ++j) partial[j % 8] += Load(w_row, j) * a[j];
    float sum = 0.0f;
    for (float p : partial) sum += p;
    out[t] = sum;
  }
}
float load_f32(const std::byte* row, size_t j) {
  float v;
  std::memcpy(&v, row + 4 * j, 4);
  return v;
}
float load_f16(const std::byte* row, size_t j) {
  uint16_t v;
  std::memcpy(&v, row + 2 * j, 2);
  return fp16_to_fp32(v);
}
float load_bf16(const std::byte* row, size_t j) {
  uint16_t v;
  std::memcpy(&v, row + 2 * j, 2);
  return bf16_to_fp32(v);
}

}  // namespace

DotKernel dot_kernel_portable(GgmlType type) {
  constexpr const char* isa = "portable";
  switch (type) {
    case GgmlType::F32:
      return {ActFormat::F32, dot_float<load_f32>, isa};
    case GgmlType::F16:
      return {ActFormat::F32, dot_float<load_f16>, isa};
    case GgmlType::BF16:
      return {ActFormat::F32, dot_float<load_bf16>, isa};
    case GgmlType::Q4_0:
      return {ActFormat::Q8_act, dot_legacy<block_q4_0>, isa};
    case GgmlType::Q4_1:
      return {ActFormat::Q8_act, dot_legacy<block_q4_1>, isa};
    case GgmlType::Q5_0:
      return {ActFormat::Q8_act, dot_legacy<block_q5_0>, isa};
    case GgmlType::Q5_1:
      return {ActFormat::Q8_act, dot_legacy<block_q5_1>, isa};
    case GgmlType::Q8_0:
      return {ActFormat::Q8_act, dot_legacy<block_q8_0>, isa};
    case GgmlType::IQ4_NL:
      return {ActFormat::Q8_act, dot_legacy<block_iq4_nl>, isa};
    case GgmlType::Q2_K:
      return {ActFormat::Q8_K, dot_k<block_q2_K>, isa};
    case GgmlType::Q3_K:
      return {ActFormat::Q8_K, dot_k<block_q3_K>, isa};
    case GgmlType::Q4_K:
      return {ActFormat::Q8_K, dot_k<block_q4_K>, isa};
    case GgmlType::Q5_K:
      return {ActFormat::Q8_K, dot_k<block_q5_K>, isa};
    case GgmlType::Q6_K:
      return {ActFormat::Q8_K, dot_k<block_q6_K>, isa};
    case GgmlType::IQ4_XS:
      return {ActFormat::Q8_K, dot_k<block_iq4_xs>, isa};
    default:
      return {};
  }
}

size_t act_row_bytes(ActFormat format, size_t cols) {
  switch (format) {
    case ActFormat::F32:
      return cols * sizeof(float);
    case ActFormat::Q8_act:
      return cols / QK8_0 * sizeof(block_q8_act);
    case ActFormat::Q8_K:
      return cols / QK_K * sizeof(block_q8_K);
    case ActFormat::Q8_act2:
      return 2 * (cols / QK8_0) * sizeof(block_q8_act);
    case ActFormat::Q8_K2:
      return 2 * (cols / QK_K) * sizeof(block_q8_K);
  }
  return 0;
}

void quantize_act_row_portable(ActFormat format, std::span<const float> x,
                               std::span<std::byte> out) {
  switch (format) {
    case ActFormat::F32:
      std::memcpy(out.data(), x.data(), x.size_bytes());
      return;
    case ActFormat::Q8_act:
      return quantize_row_q8_act(
          x, {reinterpret_cast<block_q8_act*>(out.data()), out.size() / sizeof(block_q8_act)});
    case ActFormat::Q8_K:
      return quantize_row_q8_K(
          x, {reinterpret_cast<block_q8_K*>(out.data()), out.size() / sizeof(block_q8_K)});
    case ActFormat::Q8_act2:
      return quantize_row_q8_act2(
          x, {reinterpret_cast<block_q8_act*>(out.data()), out.size() / sizeof(block_q8_act)});
    case ActFormat::Q8_K2:
      return quantize_row_q8_K2(
          x, {reinterpret_cast<block_q8_K*>(out.data()), out.size() / sizeof(block_q8_K)});
  }
}

}  // namespace kiln::kernels
