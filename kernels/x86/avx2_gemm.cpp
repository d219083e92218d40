// AVX2 GEMM panels for prompt processing on CPUs without AVX-512 VNNI: the K types (Q4_K,
// Q5_K, Q6_K) and the legacy 32-element types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
//
// The plan of the AVX-512 panels (avx512_gemm.cpp) at half the width: each K chunk of 8
// weight rows is repacked so that one 256-bit vector holds 4 consecutive codes of each row
// (one int32 lane per row), then for every token
//   vpmaddubsw  codes (u8) x broadcast(4 activation bytes) (s8) -> a pair sum per int16 lane
// and, AVX2 having no vpdpbusd, the widening to int32 is where the layout pays: the int16
// pair sums of several groups of one sub-block are added first, and one
//   vpmaddwd  sums x the rows' sub-block scale (in both int16 halves) -> int32
// widens and scales them together. Per 32 products that is 1 + 1 / kSum16 multiplies,
// where the per-row dot kernels (avx2_dot.cpp) spend 2. The int16 sums are exact: a pair is
// at most 2 * c * 128 for codes up to c, so kSum16 pairs fit while 2 c 128 kSum16 < 2^15
// (Q4_K, Q4_0, Q4_1: c = 15, 8; Q5_K, Q5_0, Q5_1: 31, 4; Q6_K: 63, 2), and everything after is
// int32 and exact, so results differ from the dot kernels' only by float rounding order.
// Q8_0's codes stay signed (q + 128 would saturate the pairs) and go in as
// |q| * (a * sign(q)), one group at a time. The legacy types' per-block float step (d, and the
// offset or min term through the activation block's sum, as in the AVX-512 panels) serves 8
// rows per instruction, where the dot kernels spend one per row.
// 16-row panels (kGemmPanelRows) run as two 8-row halves.
//
// Compiled only when the build targets AVX2+FMA+F16C; gemm_kernel_avx2 also checks the
// running CPU once.
#include "kernels/dot.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/blocks.h"

namespace kiln::kernels {
namespace {

#include "kernels/x86/gemm_block_codes.h"
#include "kernels/x86/simd_unpack.h"

constexpr int kHalfRows = 8;      // one int32 lane of a 256-bit vector per weight row
constexpr int kTile = 4;          // tokens per register tile (16 registers)
constexpr int kChunkCols = 1024;  // columns repacked at a time, as in the AVX-512 panels

// Local helpers only (this file has its own target flags; see simd_unpack.h).
inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }
inline __m256i broadcast32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// A tile's start: token t's activation blocks from block kb0 on, and its running sums (zero
// where the chunk starts them, else what y holds, for the rows in `mask`). tile_end stores them.
template <typename ActBlock, int NT>
inline void tile_begin(const std::byte* act, size_t act_stride, size_t kb0, const float* y,
                       size_t y_stride, __m256i mask, bool first, const ActBlock* (&a)[NT],
                       __m256 (&acc)[NT]) {
  for (int t = 0; t < NT; ++t) {
    a[t] = reinterpret_cast<const ActBlock*>(act + static_cast<size_t>(t) * act_stride) + kb0;
    acc[t] = first ? _mm256_setzero_ps() : _mm256_maskload_ps(y + t * y_stride, mask);
  }
}
template <int NT>
inline void tile_end(const __m256 (&acc)[NT], float* y, size_t y_stride, __m256i mask) {
  for (int t = 0; t < NT; ++t) _mm256_maskstore_ps(y + t * y_stride, mask, acc[t]);
}

// sum[t] += the products of groups g .. g + kSum - 1 (4 codes of each row) with token t's
// activations: vpmaddubsw pair sums added in int16, then widened by one vpmaddwd with `scale`
// (the rows' sub-block scale in both int16 halves, or ones). kSigned: codes are int8 q, taken
// as |q| * (a * sign(q)).
template <bool kSigned, int kSum, int NT, typename ActBlock>
inline void add_groups(const uint8_t (*codes)[kHalfRows][4], int g, const ActBlock* const (&a)[NT],
                       int i, __m256i scale, __m256i (&sum)[NT]) {
  __m256i pairs[NT];
  for (int k = 0; k < kSum; ++k) {
    const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(codes[g + k]));
    const __m256i w_abs = kSigned ? _mm256_abs_epi8(w) : w;
    for (int t = 0; t < NT; ++t) {
      __m256i x = broadcast32(a[t][i].qs + 4 * (g + k));
      if constexpr (kSigned) x = _mm256_sign_epi8(x, w);
      const __m256i prod = _mm256_maddubs_epi16(w_abs, x);
      pairs[t] = k == 0 ? prod : _mm256_add_epi16(pairs[t], prod);
    }
  }
  for (int t = 0; t < NT; ++t)
    sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(pairs[t], scale));
}

// One super-block of an 8-row half panel.
struct alignas(32) KPanel8 {
  uint8_t codes[QK_K / 4][kHalfRows][4];  // group g: codes 4g..4g+3 of each row
  int32_t scales[16][kHalfRows];          // [sub-block][row]: the scale in both int16 halves
  int32_t mins[8][kHalfRows];  // [pair p][row]: int16 min16 of groups 2p (low), 2p + 1 (high)
  float d[kHalfRows];
  float dmin[kHalfRows];
};

// Groups of 4 codes whose int16 pair sums may be added before widening (header comment).
template <typename Block>
inline constexpr int kSum16 = std::is_same_v<Block, block_q4_K>   ? 8
                              : std::is_same_v<Block, block_q5_K> ? 4
                                                                  : 2;

inline int32_t int16_pair(int lo, int hi) {
  return static_cast<int32_t>(static_cast<uint16_t>(static_cast<int16_t>(lo)) |
                              (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16));
}

// Transposes 8 rows of 8 dwords (src, rows src_stride bytes apart): dst[j] gets dword j of
// every row, row r in lane r.
inline void transpose_8x8(const uint8_t* src, size_t src_stride, uint8_t* const dst[8]) {
  __m256i r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = load256(src + static_cast<size_t>(i) * src_stride);
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  // In each 128-bit lane L: u[4h + e] holds rows 4h..4h+3 of column 4L + e.
  __m256i u[8];
  for (int h = 0; h < 2; ++h) {
    u[4 * h] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
    u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
    u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
  for (int e = 0; e < 4; ++e) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst[e]),
                       _mm256_permute2x128_si256(u[e], u[4 + e], 0x20));
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst[4 + e]),
                       _mm256_permute2x128_si256(u[e], u[4 + e], 0x31));
  }
}

// Row r of the half panel from one block: codes row-major (transposed afterwards), scales,
// mins, d and dmin.
template <typename Block>
inline void pack_row(const Block& b, int r, uint8_t* codes, KPanel8& p) {
  KCodes<Block>::codes(b, codes);
  const KScales k = KCodes<Block>::scales(b);
  for (int s = 0; s < KCodes<Block>::kSubBlocks; ++s)
    p.scales[s][r] = int16_pair(k.scale[s], k.scale[s]);
  for (int i = 0; i < 8; ++i) p.mins[i][r] = int16_pair(k.min16[2 * i], k.min16[2 * i + 1]);
  p.d[r] = k.d;
  p.dmin[r] = k.dmin;
}

// NT tokens over nb super-blocks of a packed chunk: y[t * y_stride + r] (+)= the rows' dots,
// for the rows in `mask`; first: the chunk starts the sums.
template <typename Block, int NT>
void panel_tile(const KPanel8* panel, int nb, const std::byte* act, size_t act_stride, size_t kb0,
                float* y, size_t y_stride, __m256i mask, bool first) {
  constexpr int kSubBlocks = KCodes<Block>::kSubBlocks;
  constexpr int kGroups = QK_K / 4 / kSubBlocks;  // 4-code groups per sub-block
  constexpr int kSum = kSum16<Block>;
  const block_q8_K* a[NT];
  __m256 acc[NT];
  tile_begin(act, act_stride, kb0, y, y_stride, mask, first, a, acc);
  for (int i = 0; i < nb; ++i) {
    const KPanel8& p = panel[i];
    __m256i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm256_setzero_si256();
    for (int s = 0; s < kSubBlocks; ++s) {
      const __m256i scale = _mm256_load_si256(reinterpret_cast<const __m256i*>(p.scales[s]));
      for (int g0 = 0; g0 < kGroups; g0 += kSum) {
        add_groups<false, kSum>(p.codes, s * kGroups + g0, a, i, scale, sum);
      }
    }
    const __m256 d = _mm256_load_ps(p.d);
    const __m256 dmin = _mm256_load_ps(p.dmin);
    for (int t = 0; t < NT; ++t) {
      __m256i min_sum = _mm256_setzero_si256();
      for (int q = 0; q < 8; ++q) {
        min_sum = _mm256_add_epi32(
            min_sum,
            _mm256_madd_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(p.mins[q])),
                              broadcast32(a[t][i].bsums + 2 * q)));
      }
      // acc += d da main - dmin da min
      const __m256 da = _mm256_set1_ps(a[t][i].d);
      acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sum[t]), acc[t]);
      acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(min_sum), acc[t]);
    }
  }
  tile_end(acc, y, y_stride, mask);
}

// ---- Legacy 32-element types ------------------------------------------------------------

struct alignas(32) LPanel8 {
  uint8_t codes[QK8_0 / 4][kHalfRows][4];
  float d[kHalfRows];
  float c[kHalfRows];  // coefficient of the activation block's s = da sum(a): m, or -offset d
};

template <typename Block>
inline constexpr bool kSignedCodes = std::is_same_v<Block, block_q8_0>;
template <typename Block>
inline constexpr int kOffset = kSignedCodes<Block> ? 0 : LCodes<Block>::kOffset;
template <typename Block>
inline constexpr int kLSum16 =
    kSignedCodes<Block>                                                      ? 1
    : std::is_same_v<Block, block_q4_0> || std::is_same_v<Block, block_q4_1> ? 8
                                                                             : 4;

template <typename Block>
inline void pack_row(const Block& b, int r, uint8_t* codes, LPanel8& p) {
  __m256i v = LCodes<Block>::codes(b);
  if constexpr (kSignedCodes<Block>) v = _mm256_xor_si256(v, _mm256_set1_epi8(-128));  // q again
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes), v);
  p.d[r] = half_to_float(b.d);
  if constexpr (requires { b.m; }) {
    p.c[r] = half_to_float(b.m);
  } else {
    p.c[r] = -static_cast<float>(kOffset<Block>) * p.d[r];
  }
}

template <typename Block, int NT>
void panel_tile(const LPanel8* panel, int nb, const std::byte* act, size_t act_stride, size_t kb0,
                float* y, size_t y_stride, __m256i mask, bool first) {
  constexpr int kSum = kLSum16<Block>;
  const __m256i ones = _mm256_set1_epi16(1);
  const block_q8_act* a[NT];
  __m256 acc[NT];
  tile_begin(act, act_stride, kb0, y, y_stride, mask, first, a, acc);
  for (int i = 0; i < nb; ++i) {
    const LPanel8& p = panel[i];
    __m256i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm256_setzero_si256();
    for (int g0 = 0; g0 < QK8_0 / 4; g0 += kSum) {
      add_groups<kSignedCodes<Block>, kSum>(p.codes, g0, a, i, ones, sum);
    }
    const __m256 d = _mm256_load_ps(p.d);
    const __m256 c = _mm256_load_ps(p.c);
    for (int t = 0; t < NT; ++t) {
      const __m256 da = _mm256_set1_ps(a[t][i].d), s = _mm256_set1_ps(a[t][i].s);
      if constexpr (kOffset<Block> != 0) {  // acc += d (da sum - offset s)
        const __m256 inner =
            _mm256_fmadd_ps(da, _mm256_cvtepi32_ps(sum[t]),
                            _mm256_mul_ps(_mm256_set1_ps(-static_cast<float>(kOffset<Block>)), s));
        acc[t] = _mm256_fmadd_ps(d, inner, acc[t]);
      } else {  // acc += d da sum + c s
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sum[t]), acc[t]);
        acc[t] = _mm256_fmadd_ps(c, s, acc[t]);
      }
    }
  }
  tile_end(acc, y, y_stride, mask);
}

// ---- The panel driver, shared by both families -----------------------------------------

// The half panel of a block type: the legacy types' (those with LCodes) or the K types'.
template <typename Block>
using PanelOf = std::conditional_t < requires {
  LCodes<Block>::kOffset;
}
, LPanel8, KPanel8 > ;

// One 8-row half (n_rows 1..8) of a panel: each K chunk repacked (codes row by row, then
// transposed 8 dwords of each row at a time), then every token tile.
template <typename Block>
void gemm_half(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
               const std::byte* act, size_t act_stride, size_t m, float* y, size_t y_stride) {
  using Panel = PanelOf<Block>;
  constexpr int kBlockCols = sizeof(Panel::codes) / kHalfRows;  // a block's codes
  constexpr int kChunk = kChunkCols / kBlockCols;
  Panel panel[kChunk];
  alignas(32) uint8_t row_codes[kHalfRows][kChunkCols];
  const size_t n_blocks = cols / kBlockCols;
  alignas(32) int32_t lanes[kHalfRows];
  for (int r = 0; r < kHalfRows; ++r) lanes[r] = r < n_rows ? -1 : 0;
  const __m256i mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  for (size_t kb0 = 0; kb0 < n_blocks; kb0 += kChunk) {
    const int nb = static_cast<int>(min_size(kChunk, n_blocks - kb0));
    if (n_rows < kHalfRows) {
      std::memset(static_cast<void*>(panel), 0, sizeof(Panel) * nb);
      for (int r = n_rows; r < kHalfRows; ++r) std::memset(row_codes[r], 0, sizeof(row_codes[r]));
    }
    for (int r = 0; r < n_rows; ++r) {
      const auto* blocks = reinterpret_cast<const Block*>(w + static_cast<size_t>(r) * w_row_bytes);
      for (int i = 0; i < nb; ++i) {
        pack_row(blocks[kb0 + i], r, row_codes[r] + i * kBlockCols, panel[i]);
      }
    }
    for (int i = 0; i < nb; ++i) {
      for (int q = 0; q < kBlockCols / 32; ++q) {
        uint8_t* dst[8];
        for (int j = 0; j < 8; ++j) dst[j] = &panel[i].codes[8 * q + j][0][0];
        transpose_8x8(&row_codes[0][i * kBlockCols + 32 * q], kChunkCols, dst);
      }
    }
    const bool first = kb0 == 0;
    size_t t0 = 0;
    for (; t0 + kTile <= m; t0 += kTile) {
      panel_tile<Block, kTile>(panel, nb, act + t0 * act_stride, act_stride, kb0, y + t0 * y_stride,
                               y_stride, mask, first);
    }
    if (t0 < m) {  // the last 1..3 tokens
      with_tile_size<1, kTile - 1>(static_cast<int>(m - t0), [&](auto nt) {
        panel_tile<Block, decltype(nt)::value>(panel, nb, act + t0 * act_stride, act_stride, kb0,
                                               y + t0 * y_stride, y_stride, mask, first);
      });
    }
  }
}

// GemmPanelFn: rows 0..7 of the panel, then 8..n_rows - 1.
template <typename Block>
void gemm_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                const std::byte* act, size_t act_stride, size_t m, float* y, size_t y_stride) {
  for (int r0 = 0; r0 < n_rows; r0 += kHalfRows) {
    const int rows = n_rows - r0 < kHalfRows ? n_rows - r0 : kHalfRows;
    gemm_half<Block>(cols, w + static_cast<size_t>(r0) * w_row_bytes, w_row_bytes, rows, act,
                     act_stride, m, y + r0, y_stride);
  }
}

bool cpu_has_avx2_fma_f16c() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return ok;
}

}  // namespace

GemmKernel gemm_kernel_avx2(GgmlType type) {
  if (!cpu_has_avx2_fma_f16c()) return {};
  constexpr const char* isa = "avx2";
  switch (type) {
    case GgmlType::Q4_K:
      return {ActFormat::Q8_K, gemm_panel<block_q4_K>, isa};
    case GgmlType::Q5_K:
      return {ActFormat::Q8_K, gemm_panel<block_q5_K>, isa};
    case GgmlType::Q6_K:
      return {ActFormat::Q8_K, gemm_panel<block_q6_K>, isa};
    case GgmlType::Q4_0:
      return {ActFormat::Q8_act, gemm_panel<block_q4_0>, isa};
    case GgmlType::Q4_1:
      return {ActFormat::Q8_act, gemm_panel<block_q4_1>, isa};
    case GgmlType::Q5_0:
      return {ActFormat::Q8_act, gemm_panel<block_q5_0>, isa};
    case GgmlType::Q5_1:
      return {ActFormat::Q8_act, gemm_panel<block_q5_1>, isa};
    case GgmlType::Q8_0:
      return {ActFormat::Q8_act, gemm_panel<block_q8_0>, isa};
    default:
      return {};
  }
}

}  // namespace kiln::kernels

#else  // no AVX2/FMA/F16C in this build

namespace kiln::kernels {
GemmKernel gemm_kernel_avx2(GgmlType) { return {}; }
}  // namespace kiln::kernels

#endif
