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
// Decode: the same sums from panels pre-packed at load (see "Pre-packed K panels" below), read
// directly for up to 8 tokens, where the per-row dot kernels are bound by arithmetic on such
// a CPU.
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
inline void store(void* p, __m256i v) { _mm256_store_si256(static_cast<__m256i*>(p), v); }

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

// The legacy 32-element types (those with LCodes), or the K types.
template <typename Block>
inline constexpr bool kLegacy = requires {
  LCodes<Block>::kOffset;
};
// The half panel of a block type.
template <typename Block>
using PanelOf = std::conditional_t<kLegacy<Block>, LPanel8, KPanel8>;
// Columns of one block.
template <typename Block>
inline constexpr int kBlockCols = kLegacy<Block> ? QK8_0 : QK_K;

// Every token tile over nb blocks of a repacked chunk that starts at block kb0.
template <typename Block, typename Panel>
void run_tiles(const Panel* panel, int nb, const std::byte* act, size_t act_stride, size_t kb0,
               size_t m, float* y, size_t y_stride, __m256i mask) {
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

// Lanes of the rows < n_rows (of 8).
inline __m256i row_mask(int n_rows) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n_rows), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// One 8-row half (n_rows 1..8) of a panel: each K chunk repacked (codes row by row, then
// transposed 8 dwords of each row at a time), then every token tile.
template <typename Block>
void gemm_half(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
               const std::byte* act, size_t act_stride, size_t m, float* y, size_t y_stride) {
  using Panel = PanelOf<Block>;
  constexpr int kChunk = kChunkCols / kBlockCols<Block>;
  Panel panel[kChunk];
  alignas(32) uint8_t row_codes[kHalfRows][kChunkCols];
  const size_t n_blocks = cols / kBlockCols<Block>;
  const __m256i mask = row_mask(n_rows);
  for (size_t kb0 = 0; kb0 < n_blocks; kb0 += kChunk) {
    const int nb = static_cast<int>(min_size(kChunk, n_blocks - kb0));
    if (n_rows < kHalfRows) {
      std::memset(static_cast<void*>(panel), 0, sizeof(Panel) * nb);
      for (int r = n_rows; r < kHalfRows; ++r) std::memset(row_codes[r], 0, sizeof(row_codes[r]));
    }
    for (int r = 0; r < n_rows; ++r) {
      const auto* blocks = reinterpret_cast<const Block*>(w + static_cast<size_t>(r) * w_row_bytes);
      for (int i = 0; i < nb; ++i) {
        pack_row(blocks[kb0 + i], r, row_codes[r] + i * kBlockCols<Block>, panel[i]);
      }
    }
    for (int i = 0; i < nb; ++i) {
      for (int q = 0; q < kBlockCols<Block> / 32; ++q) {
        uint8_t* dst[8];
        for (int j = 0; j < 8; ++j) dst[j] = &panel[i].codes[8 * q + j][0][0];
        transpose_8x8(&row_codes[0][i * kBlockCols<Block> + 32 * q], kChunkCols, dst);
      }
    }
    run_tiles<Block>(panel, nb, act, act_stride, kb0, m, y, y_stride, mask);
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

// ---- Pre-packed K panels (decode) ------------------------------------------------------
//
// Without VNNI a lone token's dot products are bound by arithmetic, not memory: the per-row
// AVX2 dot kernels read Q4_K at ~35 GB/s from the L3 as from DRAM (kiln-kernel-bench
// matvec/q4_K under KILN_ISA=avx2). These panels are packed once at load (like the AVX-512
// ones) so that a token's products go through the same int16 pair sums and one widening
// vpmaddwd per sub-block as the GEMM above, with each activation broadcast serving 16 rows.
// One 16-row super-block after another, both 8-row halves side by side in every 64-byte line,
// the small fields first so a super-block streams ascending. Up to kPackedDirectTokens
// tokens read them directly (packed_tile); more unpack each chunk into the GEMM's KPanel8 and
// run its tiles. Either way every m gives the GEMM's results bit for bit.
template <typename Block>
struct KPacked8;

// The int16 pair (v, v) in each row's lane, from 8 bytes v (one per row), zero-extended.
inline __m256i dup_u8_pairs(const uint8_t* p) {
  const __m256i control = _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,
                                           4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1);
  int64_t v;
  std::memcpy(&v, p, 8);
  return _mm256_shuffle_epi8(_mm256_set1_epi64x(v), control);
}

// Q4_K and Q5_K: the same nibbles, scales and mins; Q5_K adds a plane of fifth bits.
template <typename Block>
struct KPackedNibbles {
  // 2368 bytes a 16-row Q4_K super-block (the blocks' 2304 with scales and mins as bytes:
  // +2.8%, for 2 instructions a sub-block where the 6-bit fields would take 7), Q5_K 2880:
  //   scales, mins [2 halves][8 sub-blocks][8 rows] u8; d, dmin [16 rows] fp16;
  //   Q5_K: fifth bits [8][2 halves][8 rows][4]: vector k holds qh[4k, +4) of each row, bit
  //   s of a byte belonging to sub-block s (read for every c, so before the codes);
  //   codes [32][2 halves][8 rows][4]: vector 8c + k holds qs[32c + 4k, +4) of each row; its
  //   low nibbles are group 16c + k (sub-block 2c), its high nibbles group 16c + 8 + k.
  static constexpr bool kFifth = std::is_same_v<Block, block_q5_K>;
  static constexpr int kSum = kSum16<Block>;
  static constexpr size_t kScales = 0, kMins = 128, kD = 256, kDmin = 288, kFifthBits = 320;
  static constexpr size_t kCodes = kFifthBits + (kFifth ? 512 : 0);
  static constexpr size_t kBytes = kCodes + 2048;
  static void pack(const Block& b, int r, uint8_t* sb) {
    const int h = r / kHalfRows, rr = r % kHalfRows;
    for (int c = 0; c < 4; ++c) {
      for (int k = 0; k < 8; ++k) {
        std::memcpy(sb + kCodes + 64 * (8 * c + k) + 32 * h + 4 * rr, b.qs + 32 * c + 4 * k, 4);
      }
    }
    if constexpr (kFifth) {
      for (int k = 0; k < 8; ++k) {
        std::memcpy(sb + kFifthBits + 64 * k + 32 * h + 4 * rr, b.qh + 4 * k, 4);
      }
    }
    for (int s = 0; s < 8; ++s) {
      int scale, min;
      scale_min_k4(s, b.scales, scale, min);
      sb[kScales + 64 * h + 8 * s + rr] = static_cast<uint8_t>(scale);
      sb[kMins + 64 * h + 8 * s + rr] = static_cast<uint8_t>(min);
    }
    std::memcpy(sb + kD + 2 * r, &b.d, 2);
    std::memcpy(sb + kDmin + 2 * r, &b.dmin, 2);
  }
  // Codes of group 16c + 8j + k of half h (sub-block s = 2c + j), from its code vector v.
  static __m256i code(const uint8_t* sb, __m256i v, int c, int j, int k, int h) {
    __m256i code = _mm256_and_si256(j == 0 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
    if constexpr (kFifth) {
      const int s = 2 * c + j;
      const __m256i f = load256(sb + kFifthBits + 64 * k + 32 * h);
      const __m256i bit = s <= 4 ? _mm256_slli_epi16(f, 4 - s) : _mm256_srli_epi16(f, s - 4);
      code = _mm256_or_si256(code, _mm256_and_si256(bit, _mm256_set1_epi8(0x10)));
    }
    return code;
  }
  static __m256i codes_vector(const uint8_t* sb, int c, int k, int h) {
    return load256(sb + kCodes + 64 * (8 * c + k) + 32 * h);
  }
  // Half h as the GEMM's KPanel8 (what pack_row and the transpose make of the blocks).
  static void unpack(const uint8_t* sb, int h, KPanel8& p) {
    for (int c = 0; c < 4; ++c) {
      for (int k = 0; k < 8; ++k) {
        const __m256i v = codes_vector(sb, c, k, h);
        store(p.codes[16 * c + k], code(sb, v, c, 0, k, h));
        store(p.codes[16 * c + 8 + k], code(sb, v, c, 1, k, h));
      }
    }
    for (int s = 0; s < 8; ++s) {
      store(p.scales[s], dup_u8_pairs(sb + kScales + 64 * h + 8 * s));
      store(p.mins[s], dup_u8_pairs(sb + kMins + 64 * h + 8 * s));  // min16 2s, 2s + 1: min s
    }
    _mm256_store_ps(p.d, d(sb, h));
    _mm256_store_ps(p.dmin, dmin(sb, h));
  }
  // sum[h][t] = sum_s scale_s (codes . a_t)_s of each row of half h (panel_tile's
  // integers: kSum groups added in int16, then widened with the scale).
  template <int NT>
  static void sums(const uint8_t* sb, const block_q8_K* const (&a)[NT], __m256i (&sum)[2][NT]) {
    for (int h = 0; h < 2; ++h) {
      for (int t = 0; t < NT; ++t) sum[h][t] = _mm256_setzero_si256();
    }
    if constexpr (NT == 1) {
      // Sub-blocks 2c (low nibbles) and 2c + 1 (high) together: each code vector loaded once
      // (6% faster alone than one sub-block at a time, whose registers 2 tokens need).
      for (int c = 0; c < 4; ++c) {
        __m256i even[2], odd[2];
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) {
          const __m256i x_even = broadcast32(a[0]->qs + 4 * (16 * c + k));
          const __m256i x_odd = broadcast32(a[0]->qs + 4 * (16 * c + 8 + k));
          for (int h = 0; h < 2; ++h) {
            const __m256i v = codes_vector(sb, c, k, h);
            const __m256i pe = _mm256_maddubs_epi16(code(sb, v, c, 0, k, h), x_even);
            const __m256i po = _mm256_maddubs_epi16(code(sb, v, c, 1, k, h), x_odd);
            even[h] = k % kSum == 0 ? pe : _mm256_add_epi16(even[h], pe);
            odd[h] = k % kSum == 0 ? po : _mm256_add_epi16(odd[h], po);
          }
          if (k % kSum == kSum - 1) {
            for (int h = 0; h < 2; ++h) {
              const uint8_t* scales = sb + kScales + 64 * h + 16 * c;
              sum[h][0] =
                  _mm256_add_epi32(sum[h][0], _mm256_madd_epi16(even[h], dup_u8_pairs(scales)));
              sum[h][0] =
                  _mm256_add_epi32(sum[h][0], _mm256_madd_epi16(odd[h], dup_u8_pairs(scales + 8)));
            }
          }
        }
      }
      return;
    }
    // Sub-block s = 2c + j: the low (j = 0) or high nibbles of vectors 8c .. 8c + 7, one
    // sub-block at a time so its int16 sums of 2 halves x NT tokens fit the registers.
    for (int s = 0; s < 8; ++s) {
      const int c = s / 2, j = s % 2;
      __m256i part[2][NT];
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        __m256i x[NT];
        for (int t = 0; t < NT; ++t) x[t] = broadcast32(a[t]->qs + 4 * (16 * c + 8 * j + k));
        for (int h = 0; h < 2; ++h) {
          const __m256i w = code(sb, codes_vector(sb, c, k, h), c, j, k, h);
          for (int t = 0; t < NT; ++t) {
            const __m256i prod = _mm256_maddubs_epi16(w, x[t]);
            part[h][t] = k % kSum == 0 ? prod : _mm256_add_epi16(part[h][t], prod);
          }
        }
        if (k % kSum == kSum - 1) {
          for (int h = 0; h < 2; ++h) {
            const __m256i scale = dup_u8_pairs(sb + kScales + 64 * h + 8 * s);
            for (int t = 0; t < NT; ++t) {
              sum[h][t] = _mm256_add_epi32(sum[h][t], _mm256_madd_epi16(part[h][t], scale));
            }
          }
        }
      }
    }
  }
  static __m256i min_pair(const uint8_t* sb, int h, int q) {
    return dup_u8_pairs(sb + kMins + 64 * h + 8 * q);
  }
  static __m256 d(const uint8_t* sb, int h) { return _mm256_cvtph_ps(load128(sb + kD + 16 * h)); }
  static __m256 dmin(const uint8_t* sb, int h) {
    return _mm256_cvtph_ps(load128(sb + kDmin + 16 * h));
  }
};
template <>
struct KPacked8<block_q4_K> : KPackedNibbles<block_q4_K> {};
template <>
struct KPacked8<block_q5_K> : KPackedNibbles<block_q5_K> {};

template <>
struct KPacked8<block_q6_K> {
  // 3392 bytes a 16-row super-block (the blocks' 3360, padded to 64):
  //   scales [2 halves][8 pairs q][8 rows][2] int8: sub-blocks 2q, 2q + 1 of each row;
  //   d [16 rows] fp16, 32 bytes of padding;
  //   codes, for element half n and k = 0..7 three vectors of [2 halves][8 rows][4]: ql[64n +
  //   4k, +4), ql[64n + 32 + 4k, +4) and qh[32n + 4k, +4) of each row. Group 32n + 8i + k
  //   (sub-block 8n + 2i + k / 4) is the low (i = 0, 1) or high (i = 2, 3) nibbles of the
  //   first (i even) or second ql vector, with bits 2i, 2i + 1 of the qh vector on top.
  static constexpr size_t kScales = 0, kD = 256, kCodes = 320;
  static constexpr size_t kBytes = 3392;
  static constexpr size_t code_offset(int n, int k, int v, int h) {
    return kCodes + 192 * (8 * n + k) + 64 * v + 32 * h;
  }
  static void pack(const block_q6_K& b, int r, uint8_t* sb) {
    const int h = r / kHalfRows, rr = r % kHalfRows;
    for (int n = 0; n < 2; ++n) {
      for (int k = 0; k < 8; ++k) {
        std::memcpy(sb + code_offset(n, k, 0, h) + 4 * rr, b.ql + 64 * n + 4 * k, 4);
        std::memcpy(sb + code_offset(n, k, 1, h) + 4 * rr, b.ql + 64 * n + 32 + 4 * k, 4);
        std::memcpy(sb + code_offset(n, k, 2, h) + 4 * rr, b.qh + 32 * n + 4 * k, 4);
      }
    }
    for (int s = 0; s < 16; ++s) {
      sb[kScales + 128 * h + 16 * (s / 2) + 2 * rr + s % 2] = static_cast<uint8_t>(b.scales[s]);
    }
    std::memcpy(sb + kD + 2 * r, &b.d, 2);
  }
  // Code vector (q + 32, unsigned) of group 32n + 8i + k of half h.
  static __m256i codes(const uint8_t* sb, int n, int i, int k, int h) {
    const __m256i ql = load256(sb + code_offset(n, k, i % 2, h));
    const __m256i low =
        _mm256_and_si256(i >= 2 ? _mm256_srli_epi16(ql, 4) : ql, _mm256_set1_epi8(0x0F));
    const __m256i qh = load256(sb + code_offset(n, k, 2, h));
    const __m256i top = i == 0   ? _mm256_slli_epi16(qh, 4)
                        : i == 1 ? _mm256_slli_epi16(qh, 2)
                        : i == 2 ? qh
                                 : _mm256_srli_epi16(qh, 2);
    return _mm256_or_si256(low, _mm256_and_si256(top, _mm256_set1_epi8(0x30)));
  }
  // int16 (scale 2q, scale 2q + 1) of each row of half h.
  static __m256i scale_pair(const uint8_t* sb, int h, int q) {
    return _mm256_cvtepi8_epi16(load128(sb + kScales + 128 * h + 16 * q));
  }
  // (scale s, scale s) of each row, from scale_pair(q = s / 2).
  static __m256i scale_dup(__m256i pair, int s) {
    return s % 2 == 0 ? _mm256_blend_epi16(pair, _mm256_slli_epi32(pair, 16), 0xAA)
                      : _mm256_blend_epi16(_mm256_srli_epi32(pair, 16), pair, 0xAA);
  }
  static void unpack(const uint8_t* sb, int h, KPanel8& p) {
    for (int n = 0; n < 2; ++n) {
      for (int i = 0; i < 4; ++i) {
        for (int k = 0; k < 8; ++k) store(p.codes[32 * n + 8 * i + k], codes(sb, n, i, k, h));
      }
    }
    for (int q = 0; q < 8; ++q) {
      const __m256i pair = scale_pair(sb, h, q);
      store(p.scales[2 * q], scale_dup(pair, 0));
      store(p.scales[2 * q + 1], scale_dup(pair, 1));
      store(p.mins[q], _mm256_slli_epi16(pair, 5));  // min16 = 32 scale
    }
    _mm256_store_ps(p.d, d(sb, h));
    _mm256_store_ps(p.dmin, d(sb, h));
  }
  template <int NT>
  static void sums(const uint8_t* sb, const block_q8_K* const (&a)[NT], __m256i (&sum)[2][NT]) {
    for (int h = 0; h < 2; ++h) {
      for (int t = 0; t < NT; ++t) sum[h][t] = _mm256_setzero_si256();
    }
    for (int n = 0; n < 2; ++n) {
      for (int i = 0; i < 4; ++i) {  // sub-blocks 8n + 2i (k < 4) and 8n + 2i + 1
        __m256i pair_scales[2];
        for (int h = 0; h < 2; ++h) pair_scales[h] = scale_pair(sb, h, 4 * n + i);
        for (int k = 0; k < 8; k += 2) {  // kSum16 = 2 groups in int16
          const int g = 32 * n + 8 * i + k;
          __m256i x0[NT], x1[NT];
          for (int t = 0; t < NT; ++t) {
            x0[t] = broadcast32(a[t]->qs + 4 * g);
            x1[t] = broadcast32(a[t]->qs + 4 * g + 4);
          }
          for (int h = 0; h < 2; ++h) {
            const __m256i c0 = codes(sb, n, i, k, h), c1 = codes(sb, n, i, k + 1, h);
            const __m256i scale = scale_dup(pair_scales[h], k / 4);
            for (int t = 0; t < NT; ++t) {
              const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(c0, x0[t]),
                                                     _mm256_maddubs_epi16(c1, x1[t]));
              sum[h][t] = _mm256_add_epi32(sum[h][t], _mm256_madd_epi16(pairs, scale));
            }
          }
        }
      }
    }
  }
  static __m256i min_pair(const uint8_t* sb, int h, int q) {
    return _mm256_slli_epi16(scale_pair(sb, h, q), 5);
  }
  static __m256 d(const uint8_t* sb, int h) { return _mm256_cvtph_ps(load128(sb + kD + 16 * h)); }
  static __m256 dmin(const uint8_t* sb, int h) { return d(sb, h); }
};

// The direct kernels' ends: a[t] = token t's activation block i; the rows < n_rows of both
// halves' sums stored.
template <typename ActBlock, int NT>
inline void token_blocks(const std::byte* act, size_t act_stride, size_t i,
                         const ActBlock* (&a)[NT]) {
  for (int t = 0; t < NT; ++t) {
    a[t] = reinterpret_cast<const ActBlock*>(act + static_cast<size_t>(t) * act_stride) + i;
  }
}
template <int NT>
inline void store_halves(const __m256 (&acc)[2][NT], int n_rows, float* y, size_t y_stride) {
  for (int h = 0; h < 2; ++h) {
    const __m256i mask = row_mask(n_rows - h * kHalfRows);
    for (int t = 0; t < NT; ++t) {
      _mm256_maskstore_ps(y + t * y_stride + h * kHalfRows, mask, acc[h][t]);
    }
  }
}

// NT tokens over a whole packed panel, both halves at once (each activation broadcast
// serves 16 rows): panel_tile's integer sums and float steps, so y is the GEMM's
// bit for bit.
// Out of line (one call a panel): each instantiation is compiled, and measured, alone.
template <typename Block, int NT>
__attribute__((noinline)) void packed_tile(size_t cols, const uint8_t* panel, int n_rows,
                                           const std::byte* act, size_t act_stride, float* y,
                                           size_t y_stride) {
  using P = KPacked8<Block>;
  __m256 acc[2][NT] = {};
  for (size_t i = 0; i < cols / QK_K; ++i) {
    const uint8_t* sb = panel + i * P::kBytes;
    const block_q8_K* a[NT];
    token_blocks(act, act_stride, i, a);
    __m256i sum[2][NT];
    P::template sums<NT>(sb, a, sum);
    __m256i min_sum[2][NT];
    for (int q = 0; q < 8; ++q) {
      for (int h = 0; h < 2; ++h) {
        const __m256i min_pair = P::min_pair(sb, h, q);
        for (int t = 0; t < NT; ++t) {
          const __m256i m = _mm256_madd_epi16(min_pair, broadcast32(a[t]->bsums + 2 * q));
          min_sum[h][t] = q == 0 ? m : _mm256_add_epi32(min_sum[h][t], m);
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m256 da = _mm256_set1_ps(a[t]->d);
      for (int h = 0; h < 2; ++h) {  // acc += d da main - dmin da min
        acc[h][t] = _mm256_fmadd_ps(_mm256_mul_ps(P::d(sb, h), da), _mm256_cvtepi32_ps(sum[h][t]),
                                    acc[h][t]);
        acc[h][t] = _mm256_fnmadd_ps(_mm256_mul_ps(P::dmin(sb, h), da),
                                     _mm256_cvtepi32_ps(min_sum[h][t]), acc[h][t]);
      }
    }
  }
  store_halves(acc, n_rows, y, y_stride);
}

// ---- Pre-packed legacy panels (decode) ---------------------------------------------------
//
// As the K panels above, for the 32-element types: one 16-row block after another, each
// exactly the 16 blocks' bytes, both 8-row halves side by side:
//   d [16 rows] fp16; m [16] fp16 (Q4_1, Q5_1);
//   fifth bits [2 halves][8 rows][4] (Q5_0, Q5_1): bit g of byte e is element 4g + e's;
//   codes: Q8_0 [8 groups][2 halves][8 rows][4] int8 q; the nibble types [4][2][8][4]:
//   vector k holds qs[4k, +4) of each row, its low nibbles group k, its high group k + 4.
// Records are not 64-byte aligned (18-34 bytes a row); the panel is padded to 64.
template <typename Block>
struct LPacked8 {
  static constexpr bool kSigned = kSignedCodes<Block>;
  static constexpr bool kMin = requires(const Block& b) { b.m; };
  static constexpr bool kFifth = requires(const Block& b) { b.qh; };
  static constexpr size_t kD = 0, kM = 32, kFifthBits = kM + (kMin ? 32 : 0);
  static constexpr size_t kCodes = kFifthBits + (kFifth ? 64 : 0);
  static constexpr size_t kBytes = kCodes + (kSigned ? 512 : 256);  // one 16-row block

  static void pack(const Block& b, int r, uint8_t* rec) {
    const int h = r / kHalfRows, rr = r % kHalfRows;
    std::memcpy(rec + kD + 2 * r, &b.d, 2);
    if constexpr (kMin) std::memcpy(rec + kM + 2 * r, &b.m, 2);
    if constexpr (kSigned) {
      for (int g = 0; g < 8; ++g)
        std::memcpy(rec + kCodes + 64 * g + 32 * h + 4 * rr, b.qs + 4 * g, 4);
    } else {
      for (int k = 0; k < 4; ++k)
        std::memcpy(rec + kCodes + 64 * k + 32 * h + 4 * rr, b.qs + 4 * k, 4);
    }
    if constexpr (kFifth) {
      uint32_t qh;
      std::memcpy(&qh, b.qh, 4);
      for (int e = 0; e < 4; ++e) {
        uint8_t bits = 0;
        for (int g = 0; g < 8; ++g) bits |= static_cast<uint8_t>(((qh >> (4 * g + e)) & 1) << g);
        rec[kFifthBits + 32 * h + 4 * rr + e] = bits;
      }
    }
  }
  // Code vector of group g, half h: q (Q8_0) or q + offset (unsigned).
  static __m256i codes(const uint8_t* rec, int g, int h) {
    if constexpr (kSigned) {
      return load256(rec + kCodes + 64 * g + 32 * h);
    } else {
      const __m256i v = load256(rec + kCodes + 64 * (g % 4) + 32 * h);
      __m256i c = _mm256_and_si256(g < 4 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
      if constexpr (kFifth) {
        const __m256i f = load256(rec + kFifthBits + 32 * h);
        const __m256i bit = g <= 4 ? _mm256_slli_epi16(f, 4 - g) : _mm256_srli_epi16(f, g - 4);
        c = _mm256_or_si256(c, _mm256_and_si256(bit, _mm256_set1_epi8(0x10)));
      }
      return c;
    }
  }
  static __m256 d(const uint8_t* rec, int h) { return _mm256_cvtph_ps(load128(rec + kD + 16 * h)); }
  // LPanel8::c: m, or -offset d (computed as pack_row does).
  static __m256 c(const uint8_t* rec, int h) {
    if constexpr (kMin) return _mm256_cvtph_ps(load128(rec + kM + 16 * h));
    return _mm256_mul_ps(_mm256_set1_ps(-static_cast<float>(kOffset<Block>)), d(rec, h));
  }
  static void unpack(const uint8_t* rec, int h, LPanel8& p) {
    for (int g = 0; g < 8; ++g) store(p.codes[g], codes(rec, g, h));
    _mm256_store_ps(p.d, d(rec, h));
    _mm256_store_ps(p.c, c(rec, h));
  }
};

// packed_tile for the legacy panels (panel_tile's steps for LPanel8).
template <typename Block, int NT>
__attribute__((noinline)) void l_packed_tile(size_t cols, const uint8_t* panel, int n_rows,
                                             const std::byte* act, size_t act_stride, float* y,
                                             size_t y_stride) {
  using P = LPacked8<Block>;
  constexpr int kSum = kLSum16<Block>;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[2][NT] = {};
  for (size_t i = 0; i < cols / QK8_0; ++i) {
    const uint8_t* rec = panel + i * P::kBytes;
    const block_q8_act* a[NT];
    token_blocks(act, act_stride, i, a);
    __m256i sum[2][NT];
    for (int h = 0; h < 2; ++h) {
      for (int t = 0; t < NT; ++t) sum[h][t] = _mm256_setzero_si256();
    }
    for (int g0 = 0; g0 < QK8_0 / 4; g0 += kSum) {
      __m256i pairs[2][NT];
      for (int k = 0; k < kSum; ++k) {
        __m256i x[NT];
        for (int t = 0; t < NT; ++t) x[t] = broadcast32(a[t]->qs + 4 * (g0 + k));
        for (int h = 0; h < 2; ++h) {
          const __m256i w = P::codes(rec, g0 + k, h);
          const __m256i w_abs = P::kSigned ? _mm256_abs_epi8(w) : w;
          for (int t = 0; t < NT; ++t) {
            const __m256i prod =
                _mm256_maddubs_epi16(w_abs, P::kSigned ? _mm256_sign_epi8(x[t], w) : x[t]);
            pairs[h][t] = k == 0 ? prod : _mm256_add_epi16(pairs[h][t], prod);
          }
        }
      }
      for (int h = 0; h < 2; ++h) {
        for (int t = 0; t < NT; ++t) {
          sum[h][t] = _mm256_add_epi32(sum[h][t], _mm256_madd_epi16(pairs[h][t], ones));
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m256 da = _mm256_set1_ps(a[t]->d), s = _mm256_set1_ps(a[t]->s);
      for (int h = 0; h < 2; ++h) {
        const __m256 d = P::d(rec, h);
        if constexpr (kOffset<Block> != 0) {  // acc += d (da sum - offset s)
          const __m256 inner = _mm256_fmadd_ps(
              da, _mm256_cvtepi32_ps(sum[h][t]),
              _mm256_mul_ps(_mm256_set1_ps(-static_cast<float>(kOffset<Block>)), s));
          acc[h][t] = _mm256_fmadd_ps(d, inner, acc[h][t]);
        } else {  // acc += d da sum + c s
          acc[h][t] =
              _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sum[h][t]), acc[h][t]);
          acc[h][t] = _mm256_fmadd_ps(P::c(rec, h), s, acc[h][t]);
        }
      }
    }
  }
  store_halves(acc, n_rows, y, y_stride);
}

// ---- Both families: size, packer, kernel ------------------------------------------------

// A block type's packed record (one block of 16 rows).
template <typename Block>
using PackedOf = std::conditional_t<kLegacy<Block>, LPacked8<Block>, KPacked8<Block>>;
// Bytes of one packed 16-row panel: its records, padded to 64 (the legacy records are
// 18-34 bytes a row; the K records are already multiples of 64).
template <typename Block>
size_t packed_bytes(size_t cols) {
  return (cols / kBlockCols<Block> * PackedOf<Block>::kBytes + 63) / 64 * 64;
}

// GemmPackFn: rows 0..n_rows - 1 of w into one packed 16-row panel (absent rows zero).
template <typename Block>
void pack_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows, std::byte* panel) {
  using P = PackedOf<Block>;
  auto* out = reinterpret_cast<uint8_t*>(panel);
  pack_panel_blocks<Block>(
      cols / kBlockCols<Block>, w, w_row_bytes, n_rows, panel, packed_bytes<Block>(cols),
      [&](const Block& b, int r, size_t i) { P::pack(b, r, out + i * P::kBytes); });
}

// Tokens read from the packed panel directly, up to this many; more go through the GEMM's
// tiles, each chunk of each half unpacked once (TinyLlama decode batches of 2 under
// KILN_ISA=avx2: unpacked for 2 tokens, 44 tokens/s; from the blocks' dot kernels, 72).
constexpr size_t kPackedDirectTokens = 8;

// GemmPackedFn: up to kPackedDirectTokens tokens two at a time (the int16 sums of both
// halves for more tokens would not fit the 16 registers), more through the tiles.
template <typename Block>
void packed_panel(size_t cols, const std::byte* panel, int n_rows, const std::byte* act,
                  size_t act_stride, size_t m, float* y, size_t y_stride) {
  using P = PackedOf<Block>;
  using Panel = PanelOf<Block>;
  const auto* p = reinterpret_cast<const uint8_t*>(panel);
  // Tokens t0 .. t0 + NT - 1.
  const auto direct = [&](size_t t0, auto nt) {
    constexpr int NT = decltype(nt)::value;
    const std::byte* a = act + t0 * act_stride;
    if constexpr (kLegacy<Block>) {
      l_packed_tile<Block, NT>(cols, p, n_rows, a, act_stride, y + t0 * y_stride, y_stride);
    } else {
      packed_tile<Block, NT>(cols, p, n_rows, a, act_stride, y + t0 * y_stride, y_stride);
    }
  };
  if (m <= kPackedDirectTokens) {
    size_t t0 = 0;
    for (; t0 + 2 <= m; t0 += 2) direct(t0, std::integral_constant<int, 2>{});
    if (t0 < m) direct(t0, std::integral_constant<int, 1>{});
    return;
  }
  constexpr int kChunk = kChunkCols / kBlockCols<Block>;
  Panel chunk[kChunk];
  const size_t n_blocks = cols / kBlockCols<Block>;
  for (int h = 0; h * kHalfRows < n_rows; ++h) {
    const __m256i mask = row_mask(n_rows - h * kHalfRows);
    for (size_t kb0 = 0; kb0 < n_blocks; kb0 += kChunk) {
      const int nb = static_cast<int>(min_size(kChunk, n_blocks - kb0));
      for (int i = 0; i < nb; ++i) P::unpack(p + (kb0 + i) * P::kBytes, h, chunk[i]);
      run_tiles<Block>(chunk, nb, act, act_stride, kb0, m, y + h * kHalfRows, y_stride, mask);
    }
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

// A block type's GemmKernel: the GEMM, and pre-packed panels that serve decode
// (packed_fast_alone). `small` is the GEMM itself, for the engine's batching contract:
// weights without panels decode on the dot kernels, as that twin is not fast alone.
template <typename Block>
GemmKernel panels_kernel() {
  return {kLegacy<Block> ? ActFormat::Q8_act : ActFormat::Q8_K,
          gemm_panel<Block>,
          "avx2",
          gemm_panel<Block>,
          false,
          packed_bytes<Block>,
          pack_panel<Block>,
          packed_panel<Block>,
          true};
}

}  // namespace

GemmKernel gemm_kernel_avx2(GgmlType type) {
  if (!cpu_has_avx2_fma_f16c()) return {};
  switch (type) {
    case GgmlType::Q4_K:
      return panels_kernel<block_q4_K>();
    case GgmlType::Q5_K:
      return panels_kernel<block_q5_K>();
    case GgmlType::Q6_K:
      return panels_kernel<block_q6_K>();
    case GgmlType::Q4_0:
      return panels_kernel<block_q4_0>();
    case GgmlType::Q4_1:
      return panels_kernel<block_q4_1>();
    case GgmlType::Q5_0:
      return panels_kernel<block_q5_0>();
    case GgmlType::Q5_1:
      return panels_kernel<block_q5_1>();
    case GgmlType::Q8_0:
      return panels_kernel<block_q8_0>();
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
