// AVX-512 VNNI GEMM panels for prompt processing (many activation rows at once).
//
// The dot kernels (avx2_dot.cpp) take one weight row at a time, so every unpacked weight
// vector serves at most 4 tokens and every activation load serves one row. Here a panel of
// 16 weight rows is first repacked, one K chunk at a time, into a layout where one 512-bit
// vector holds 4 consecutive codes of each of the 16 rows (one int32 lane per row). Then
//   vpdpbusd acc, weights, broadcast(4 activation bytes of token t)
// adds 64 products (4 per row) into 16 per-row int32 sums: each weight vector is loaded once
// for a tile of 8 tokens, and each 4-byte activation broadcast feeds 16 rows. Codes are
// stored unsigned (0..255), with the offset or min term of each format folded back in
// through activation sums, so vpdpbusd (u8 x s8) applies to every type:
//   K types (Q4_K, Q5_K, Q6_K): y = d da sum_sb scale_sb (codes . a)_sb
//                                   - dmin da sum_g min16_g bsum_g   (g: 16-element groups)
//     Q6_K's -32 offset is a min term with min16 = 32 scale and dmin = d.
//   legacy (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): y = sum_blocks d da (codes . a) + c s
//     where s = da sum(a) (block_q8_act) and c = m (Q4_1/Q5_1) or -offset d.
// Integer sums are exact (no saturating steps), so results differ from the dot kernels only
// by float rounding order.
//
// Built with AVX-512 F/BW/VL/VNNI flags for this file only; gemm_kernel_avx512 checks the
// running CPU once and returns nothing on a CPU without them.
#include "kernels/dot.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__AVX512VNNI__) && defined(__F16C__)
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the merge source of unmasked
// operations, which -W(maybe-)uninitialized reports (thousands of times) once they are inlined
// in loops: a false positive, gone in GCC 13.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/blocks.h"

namespace kiln::kernels {
namespace {

constexpr int kRows = kGemmPanelRows;  // one int32 lane per weight row
constexpr int kTile = 8;               // tokens per register tile
// Columns repacked at a time: the panel chunk (about 23 KB for the K types, 21 KB for the
// legacy ones, plus, for the K types, 17 KB of row-major codes while packing, all on the stack)
// stays in L1/L2 while every token tile streams past it. 512 was slower and 2048 no faster (prefill
// benchmarks, one thread).
constexpr int kChunkCols = 1024;

// Local helpers only: this file is compiled with AVX-512 flags, so an inline function it
// shares with other files (a std:: template instantiation, say) could be the copy the linker
// keeps and then run on a CPU without AVX-512.
inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }
// run(std::integral_constant<int, N>) for the N in 1..kMax equal to n (none for n == 0):
// the tile kernels take their token count as a template argument.
template <int kMax, typename Run>
inline void with_token_count(size_t n, Run&& run) {
  [&]<int... N>(std::integer_sequence<int, N...>) {
    ((n == static_cast<size_t>(N + 1) ? run(std::integral_constant<int, N + 1>{}) : void()), ...);
  }
  (std::make_integer_sequence<int, kMax>{});
}
// tile(nt, activations, y) over the m tokens: whole tiles of kTile, then one of the rest
// (nt a std::integral_constant, so the tile's token count is a template argument).
template <typename Tile>
inline void for_token_tiles(size_t m, const std::byte* act, size_t act_stride, float* y,
                            size_t y_stride, Tile&& tile) {
  size_t t0 = 0;
  for (; t0 + kTile <= m; t0 += kTile) {
    tile(std::integral_constant<int, kTile>{}, act + t0 * act_stride, y + t0 * y_stride);
  }
  with_token_count<kTile - 1>(m - t0,
                              [&](auto nt) { tile(nt, act + t0 * act_stride, y + t0 * y_stride); });
}
// The panel GEMMs' loop over K chunks of kChunkCols columns: fill(panel, kb0, nb) writes the
// chunk's nb blocks (from block kb0) into panel[0, nb) (the array itself, not a pointer: its
// known bounds keep the compiler from assuming it aliases the fill's own buffers), then tile(nt,
// panel, nb, kb0, first, activations, y) runs for every token tile (first: the chunk starts each
// output's sum).
template <typename Panel, size_t kBlockCols, typename Fill, typename Tile>
inline void for_panel_chunks(size_t cols, size_t m, const std::byte* act, size_t act_stride,
                             float* y, size_t y_stride, Fill&& fill, Tile&& tile) {
  constexpr size_t kChunk = kChunkCols / kBlockCols;
  Panel panel[kChunk];
  const size_t n_blocks = cols / kBlockCols;
  for (size_t kb0 = 0; kb0 < n_blocks; kb0 += kChunk) {
    const int nb = static_cast<int>(min_size(kChunk, n_blocks - kb0));
    fill(panel, kb0, nb);
    for_token_tiles(m, act, act_stride, y, y_stride, [&](auto nt, const std::byte* a, float* yt) {
      tile(nt, panel, nb, kb0, kb0 == 0, a, yt);
    });
  }
}
// A tile's start: token t's activation blocks from block kb0 on, and its 16 running sums
// (zero where the chunk starts the sum, else what y holds). tile_end stores the sums.
template <typename ActBlock, int NT>
inline void tile_begin(const std::byte* act, size_t act_stride, size_t kb0, const float* y,
                       size_t y_stride, __mmask16 mask, bool first, const ActBlock* (&a)[NT],
                       __m512 (&acc)[NT]) {
  for (int t = 0; t < NT; ++t) {
    a[t] = reinterpret_cast<const ActBlock*>(act + static_cast<size_t>(t) * act_stride) + kb0;
    acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, y + t * y_stride);
  }
}
template <int NT>
inline void tile_end(const __m512 (&acc)[NT], float* y, size_t y_stride, __mmask16 mask) {
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * y_stride, mask, acc[t]);
}
#include "kernels/x86/avx512_unpack.h"
#include "kernels/x86/gemm_block_codes.h"
#include "kernels/x86/simd_unpack.h"
inline __m512i load512(const void* p) { return _mm512_load_si512(p); }
inline __m512i broadcast32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// 16 fp16 values in the low (high = false) or high halves of the int32 lanes -> floats.
inline __m512 halves_to_float(__m512i v, bool high) {
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(high ? _mm512_srli_epi32(v, 16) : v));
}

// The float step that ends a block, shared by every path (the GEMM's tiles, their few-token
// twins and the pre-packed panels) so all of them round alike, bit for bit.
// Legacy types: acc += d (da sum - kOffset s), or where kOffset is 0 d da sum + c s.
template <int kOffset>
inline __m512 l_block_step(__m512 acc, __m512 d, __m512 c, __m512i sum, const block_q8_act& a) {
  if constexpr (kOffset != 0) {
    const __m512 inner = _mm512_fmadd_ps(_mm512_set1_ps(a.d), _mm512_cvtepi32_ps(sum),
                                         _mm512_set1_ps(-static_cast<float>(kOffset) * a.s));
    return _mm512_fmadd_ps(d, inner, acc);
  } else {
    acc = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(a.d)), _mm512_cvtepi32_ps(sum), acc);
    return _mm512_fmadd_ps(c, _mm512_set1_ps(a.s), acc);
  }
}
// K types: acc += d da main - dmin da min.
inline __m512 k_block_step(__m512 acc, __m512 d, __m512 dmin, __m512i main, __m512i min,
                           float a_d) {
  const __m512 da = _mm512_set1_ps(a_d);
  acc = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(main), acc);
  return _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(min), acc);
}

// Transposes 16 rows of 16 dwords (src, rows src_stride bytes apart) so that dst[j] gets
// dword j of every row: 4 consecutive codes of each of the 16 weight rows, row r in lane r.
inline void transpose_16x16(const uint8_t* src, size_t src_stride, uint8_t* const dst[16]) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + static_cast<size_t>(i) * src_stride);
  // Within each 128-bit lane: pairs of rows, then quads (lane L of u[4k + e] then holds
  // rows 4k..4k+3 of column 4L + e).
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    r[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    r[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    r[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    r[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  // Across lanes: gather lane L of the four row quads.
  for (int e = 0; e < 4; ++e) {
    const __m512i v0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x88);
    const __m512i v1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xDD);
    const __m512i w0 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x88);
    const __m512i w1 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xDD);
    _mm512_store_si512(dst[e], _mm512_shuffle_i32x4(v0, w0, 0x88));
    _mm512_store_si512(dst[8 + e], _mm512_shuffle_i32x4(v0, w0, 0xDD));
    _mm512_store_si512(dst[4 + e], _mm512_shuffle_i32x4(v1, w1, 0x88));
    _mm512_store_si512(dst[12 + e], _mm512_shuffle_i32x4(v1, w1, 0xDD));
  }
}

// The panels read each row's K chunk, then the next row's: 16 short runs a chunk, a pattern
// the hardware prefetchers follow badly (for a few tokens, where the weights stream from
// DRAM, the GEMM ran slower than the per-row kernels). So while a row's chunk is packed, the
// same row's next chunk (or, after the last chunk, the row 16 further on, which starts the
// next panel) is requested by hand, into the L2 (_MM_HINT_T2): the next chunk of 16 rows
// (11-17 KiB) requested into the L1 pushed out the panel being filled and the activations
// (8-sequence decode of SmolLM2 Q4_K_M from the mapping, `kiln bench -p 0 -n 64 -r 3
// --decode-batch 8`, 12 alternated pairs: 9 faster, median +15%; pp512 unchanged; the
// per-row kernels' stream, one row at a time, keeps T0: with T2 it ran 20% slower).
template <typename Block>
inline void prefetch_next_chunk(const std::byte* w, size_t w_row_bytes, int r, size_t kb0,
                                size_t chunk, size_t n_blocks) {
  const size_t next = kb0 + chunk;
  const std::byte* p = next < n_blocks
                           ? w + static_cast<size_t>(r) * w_row_bytes + next * sizeof(Block)
                           : w + static_cast<size_t>(r + kRows) * w_row_bytes;
  const size_t bytes =
      min_size(chunk, next < n_blocks ? n_blocks - next : n_blocks) * sizeof(Block);
  for (size_t o = 0; o < bytes; o += 64)
    _mm_prefetch(reinterpret_cast<const char*>(p) + o, _MM_HINT_T2);
}

// ---- K types ---------------------------------------------------------------------------

// One super-block of a 16-row panel.
struct alignas(64) KPanel {
  uint8_t codes[QK_K / 4][kRows][4];
  int32_t scales[16][kRows];  // [sub-block][row]; 8 sub-blocks of 32 or 16 of 16
  int32_t mins[8][kRows];     // [pair p][row]: int16 min16 of groups 2p (low), 2p + 1 (high)
  float d[kRows];
  float dmin[kRows];
};

inline void set_min_pairs(KPanel& p, int r, const int min16[16]) {
  for (int i = 0; i < 8; ++i) {
    const auto lo = static_cast<uint16_t>(static_cast<int16_t>(min16[2 * i]));
    const auto hi = static_cast<uint16_t>(static_cast<int16_t>(min16[2 * i + 1]));
    p.mins[i][r] = static_cast<int32_t>(lo | (static_cast<uint32_t>(hi) << 16));
  }
}

// Row r of the panel from one block: its codes (row-major, transposed into the panel later)
// and its scales, mins, d and dmin (gemm_block_codes.h).
template <typename Block>
struct KPack {
  static constexpr int kSubBlocks = KCodes<Block>::kSubBlocks;
  static void pack(const Block& b, int r, uint8_t* codes, KPanel& p) {
    KCodes<Block>::codes(b, codes);
    const KScales k = KCodes<Block>::scales(b);
    for (int s = 0; s < kSubBlocks; ++s) p.scales[s][r] = k.scale[s];
    set_min_pairs(p, r, k.min16);
    p.d[r] = k.d;
    p.dmin[r] = k.dmin;
  }
};

// Tile of NT tokens over nb super-blocks of a packed chunk. y: token t's 16 outputs at
// y + t * y_stride (masked to the panel's rows); first: the chunk starts the sum.
template <int NSB, int NT>
void k_tile(const KPanel* panel, int nb, const std::byte* act, size_t act_stride, size_t kb0,
            float* y, size_t y_stride, __mmask16 mask, bool first) {
  constexpr int kGroups = QK_K / 4 / NSB;  // vpdpbusd steps per sub-block
  const block_q8_K* a[NT];
  __m512 acc[NT];
  tile_begin(act, act_stride, kb0, y, y_stride, mask, first, a, acc);
  for (int i = 0; i < nb; ++i) {
    const KPanel& p = panel[i];
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
    for (int s = 0; s < NSB; ++s) {
      __m512i part[NT];
      for (int t = 0; t < NT; ++t) part[t] = _mm512_setzero_si512();
      for (int g = 0; g < kGroups; ++g) {
        const int group = s * kGroups + g;
        const __m512i w = load512(p.codes[group]);
        for (int t = 0; t < NT; ++t) {
          part[t] = _mm512_dpbusd_epi32(part[t], w, broadcast32(a[t][i].qs + 4 * group));
        }
      }
      const __m512i scale = load512(p.scales[s]);
      for (int t = 0; t < NT; ++t) {
        sum[t] = _mm512_add_epi32(sum[t], _mm512_mullo_epi32(part[t], scale));
      }
    }
    const __m512 d = _mm512_load_ps(p.d);
    const __m512 dmin = _mm512_load_ps(p.dmin);
    for (int t = 0; t < NT; ++t) {
      __m512i min_sum = _mm512_setzero_si512();
      for (int q = 0; q < 8; ++q) {
        min_sum =
            _mm512_dpwssd_epi32(min_sum, load512(p.mins[q]), broadcast32(a[t][i].bsums + 2 * q));
      }
      acc[t] = k_block_step(acc[t], d, dmin, sum[t], min_sum, a[t][i].d);
    }
  }
  tile_end(acc, y, y_stride, mask);
}

// for_panel_chunks' tile step for the K panels: k_tile with the type's sub-block count.
template <typename Block>
inline auto k_tiles(size_t act_stride, size_t y_stride, __mmask16 mask) {
  return [=](auto nt, const KPanel* panel, int nb, size_t kb0, bool first, const std::byte* a,
             float* yt) {
    k_tile<KPack<Block>::kSubBlocks, decltype(nt)::value>(panel, nb, a, act_stride, kb0, yt,
                                                          y_stride, mask, first);
  };
}

template <typename Block>
void k_gemm_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                  const std::byte* act, size_t act_stride, size_t m, float* y, size_t y_stride) {
  constexpr int kChunk = kChunkCols / QK_K;
  KPanel panel[kChunk];
  // Codes row by row first, then transposed into the panel 16 x 16 dwords at a time. Its own
  // chunk loop, not for_panel_chunks: with the panel in the helper's frame, prefill/q4_K/8tok
  // ran 1.5x slower (665 vs 423 us, one thread; most likely the stack layout).
  alignas(64) uint8_t row_codes[kRows][kChunkCols];
  const size_t n_blocks = cols / QK_K;
  const auto mask = static_cast<__mmask16>((1u << n_rows) - 1);
  const auto tile = k_tiles<Block>(act_stride, y_stride, mask);
  for (size_t kb0 = 0; kb0 < n_blocks; kb0 += kChunk) {
    const int nb = static_cast<int>(min_size(kChunk, n_blocks - kb0));
    if (n_rows < kRows) {
      std::memset(static_cast<void*>(panel), 0, sizeof(KPanel) * nb);
      for (int r = n_rows; r < kRows; ++r) std::memset(row_codes[r], 0, sizeof(row_codes[r]));
    }
    for (int r = 0; r < n_rows; ++r) {
      const auto* blocks = reinterpret_cast<const Block*>(w + static_cast<size_t>(r) * w_row_bytes);
      prefetch_next_chunk<Block>(w, w_row_bytes, r, kb0, kChunk, n_blocks);
      for (int i = 0; i < nb; ++i) {
        KPack<Block>::pack(blocks[kb0 + i], r, row_codes[r] + i * QK_K, panel[i]);
      }
    }
    for (int i = 0; i < nb; ++i) {
      for (int q = 0; q < 4; ++q) {
        uint8_t* dst[16];
        for (int j = 0; j < 16; ++j) dst[j] = &panel[i].codes[16 * q + j][0][0];
        transpose_16x16(&row_codes[0][i * QK_K + 64 * q], kChunkCols, dst);
      }
    }
    const bool first = kb0 == 0;
    for_token_tiles(m, act, act_stride, y, y_stride, [&](auto nt, const std::byte* a, float* yt) {
      tile(nt, panel, nb, kb0, first, a, yt);
    });
  }
}

// ---- Legacy 32-element types -----------------------------------------------------------

struct alignas(64) LPanel {
  uint8_t codes[QK8_0 / 4][kRows][4];
  float d[kRows];
  float c[kRows];  // coefficient of the activation block's s = da * sum(a)
};

// kOffset: codes are q + kOffset (c = -kOffset d), so the offset folds into one FMA per
// block as d (da sum - kOffset s); 0: a separate min term c s (Q4_1, Q5_1).
template <int kOffset, int NT>
void l_tile(const LPanel* panel, int nb, const std::byte* act, size_t act_stride, size_t kb0,
            float* y, size_t y_stride, __mmask16 mask, bool first) {
  const block_q8_act* a[NT];
  __m512 acc[NT];
  tile_begin(act, act_stride, kb0, y, y_stride, mask, first, a, acc);
  for (int i = 0; i < nb; ++i) {
    const LPanel& p = panel[i];
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
    for (int g = 0; g < QK8_0 / 4; ++g) {
      const __m512i w = load512(p.codes[g]);
      for (int t = 0; t < NT; ++t) {
        sum[t] = _mm512_dpbusd_epi32(sum[t], w, broadcast32(a[t][i].qs + 4 * g));
      }
    }
    const __m512 d = _mm512_load_ps(p.d);
    const __m512 c = _mm512_load_ps(p.c);
    for (int t = 0; t < NT; ++t) acc[t] = l_block_step<kOffset>(acc[t], d, c, sum[t], a[t][i]);
  }
  tile_end(acc, y, y_stride, mask);
}

// for_panel_chunks' tile step for the legacy panels: l_tile with the type's offset.
template <typename Block>
inline auto l_tiles(size_t act_stride, size_t y_stride, __mmask16 mask) {
  return [=](auto nt, const LPanel* panel, int nb, size_t kb0, bool first, const std::byte* a,
             float* yt) {
    l_tile<LCodes<Block>::kOffset, decltype(nt)::value>(panel, nb, a, act_stride, kb0, yt, y_stride,
                                                        mask, first);
  };
}

// Where the 16 rows of a panel start (rows past n_rows repeat row 0: every load stays inside
// the matrix, and tile_end's mask drops their sums).
struct PanelRows {
  const uint8_t* row[kRows];

  PanelRows(const std::byte* w, size_t w_row_bytes, int n_rows) {
    for (int r = 0; r < kRows; ++r) {
      const size_t src = r < n_rows ? static_cast<size_t>(r) : 0;
      row[r] = reinterpret_cast<const uint8_t*>(w) + src * w_row_bytes;
    }
  }
  // The Word (uint32_t or uint64_t) at byte `at` of each row, row r in element r. Scalar loads
  // through the stack: a vpgatherdd cost more than the rest of a block's repacking (Zen 4).
  template <typename Word>
  void heads(size_t at, Word (&out)[kRows]) const {
    for (int r = 0; r < kRows; ++r) std::memcpy(&out[r], row[r] + at, sizeof(Word));
  }
};

// Dwords 0..3 of the 16 bytes at byte `at` of each row: out[k] holds dword k of row r in lane
// r. Row 4L + j goes to 128-bit lane L of z[j], so a 4 x 4 dword transpose within each lane
// puts rows 4L .. 4L + 3 in order.
inline void gather_rows_16x16B(const PanelRows& rows, size_t at, __m512i out[4]) {
  __m512i z[4];
  for (int j = 0; j < 4; ++j) {
    const auto lane = [&](int l) {
      return _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows.row[4 * l + j] + at));
    };
    __m512i v = _mm512_castsi128_si512(lane(0));
    v = _mm512_inserti32x4(v, lane(1), 1);
    v = _mm512_inserti32x4(v, lane(2), 2);
    z[j] = _mm512_inserti32x4(v, lane(3), 3);
  }
  const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
  out[0] = _mm512_unpacklo_epi64(t0, t2);
  out[1] = _mm512_unpackhi_epi64(t0, t2);
  out[2] = _mm512_unpacklo_epi64(t1, t3);
  out[3] = _mm512_unpackhi_epi64(t1, t3);
}

// Block `block` of the 16 rows into the panel layout. The blocks' packed bytes (16 bytes of
// nibbles, or 32 codes) are transposed across the rows first and unpacked after, 4 columns of
// 16 rows per instruction: a decode batch from the file mapping repacks every weight once a
// step, and this is 20% faster than unpacking row by row then transposing the codes (one
// thread, prefill/q5_0/8tok 435 -> 351 us; 8-sequence decode of SmolLM2 Q4_K_M +6%).
template <typename Block>
inline void l_fill_panel(const PanelRows& rows, size_t block, LPanel& p) {
  constexpr bool kFifth = std::is_same_v<Block, block_q5_0> || std::is_same_v<Block, block_q5_1>;
  constexpr int kOffset = LCodes<Block>::kOffset;
  const size_t base = block * sizeof(Block);
  // The block's head: fp16 d, then fp16 m (Q4_1, Q5_1), then the fifth bits qh (Q5_0, Q5_1).
  static_assert(offsetof(Block, d) == 0);
  __m512 d, m = _mm512_setzero_ps();
  __m512i qh = _mm512_setzero_si512();
  if constexpr (kFifth) {
    alignas(64) uint64_t head[kRows];
    rows.heads(base, head);
    const __m512i lo = _mm512_load_si512(head), hi = _mm512_load_si512(head + 8);
    // The 32 bits from bit `shift` of each row's 8 head bytes, row r in lane r.
    const auto field = [&](int shift) {
      return _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(lo, shift))),
          _mm512_cvtepi64_epi32(_mm512_srli_epi64(hi, shift)), 1);
    };
    const __m512i d_m = field(0);  // d and m (Q5_1; Q5_0: qh's first bytes) as two halves
    d = halves_to_float(d_m, false);
    if constexpr (kOffset == 0) m = halves_to_float(d_m, true);
    qh = field(8 * offsetof(Block, qh));
  } else {
    alignas(64) uint32_t head[kRows];
    rows.heads(base, head);
    const __m512i d_m = _mm512_load_si512(head);
    d = halves_to_float(d_m, false);
    if constexpr (kOffset == 0) m = halves_to_float(d_m, true);
  }
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  __m512i g[8];
  if constexpr (std::is_same_v<Block, block_q8_0>) {
    gather_rows_16x16B(rows, base + offsetof(Block, qs), g);
    gather_rows_16x16B(rows, base + offsetof(Block, qs) + 16, g + 4);
    for (int k = 0; k < 8; ++k) g[k] = _mm512_xor_si512(g[k], _mm512_set1_epi8(-128));
  } else {
    __m512i v[4];
    gather_rows_16x16B(rows, base + offsetof(Block, qs), v);
    for (int k = 0; k < 4; ++k) {
      g[k] = _mm512_and_si512(v[k], low_mask);
      g[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v[k], 4), low_mask);
    }
    if constexpr (kFifth) {
      // Bit c of qh is column c's fifth bit (+16): group k's 4 columns are bits 4k .. 4k + 3,
      // all in byte k / 2 of the row's qh.
      for (int k = 0; k < 8; ++k) {
        const __m512i pick =
            _mm512_add_epi32(_mm512_set1_epi32(0x01010101 * (k / 2)),
                             _mm512_set4_epi32(0x0C0C0C0C, 0x08080808, 0x04040404, 0));
        const __m512i bit = _mm512_set1_epi32(static_cast<int>(0x08040201u << (4 * (k % 2))));
        const __mmask64 set = _mm512_test_epi8_mask(_mm512_shuffle_epi8(qh, pick), bit);
        g[k] = _mm512_mask_add_epi8(g[k], set, g[k], _mm512_set1_epi8(16));
      }
    }
  }
  for (int k = 0; k < 8; ++k) _mm512_store_si512(p.codes[k], g[k]);
  _mm512_store_ps(p.d, d);
  _mm512_store_ps(
      p.c, kOffset == 0 ? m : _mm512_mul_ps(d, _mm512_set1_ps(-static_cast<float>(kOffset))));
}

template <typename Block>
void l_gemm_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                  const std::byte* act, size_t act_stride, size_t m, float* y, size_t y_stride) {
  constexpr int kChunk = kChunkCols / QK8_0;
  const PanelRows rows(w, w_row_bytes, n_rows);
  const size_t n_blocks = cols / QK8_0;
  const auto mask = static_cast<__mmask16>((1u << n_rows) - 1);
  const auto fill = [&](auto& panel, size_t kb0, int nb) {
    // The next chunk of each row (or the next panel) requested a few rows at a time, spread
    // over this chunk's blocks.
    int next_row = 0;
    for (int i = 0; i < nb; ++i) {
      for (const int until = (i + 1) * n_rows / nb; next_row < until; ++next_row) {
        prefetch_next_chunk<Block>(w, w_row_bytes, next_row, kb0, kChunk, n_blocks);
      }
      l_fill_panel<Block>(rows, kb0 + i, panel[i]);
    }
  };
  for_panel_chunks<LPanel, QK8_0>(cols, m, act, act_stride, y, y_stride, fill,
                                  l_tiles<Block>(act_stride, y_stride, mask));
}

// ---- Pre-packed legacy panels: the GEMM without the per-call repack --------------------
//
// Packed once, at load (GemmKernel::pack), into the panels' lane-per-row layout but as
// compact as the blocks they come from: 4-bit codes stay two to a byte (the low nibbles of
// a vector are 4 columns of each row, its high nibbles the 4 columns 16 further on, as in
// the blocks), fifth bits one to a bit, d and m in fp16. A pass over the panels reads the
// bytes a pass over the blocks would, as one forward stream per 16 rows, and each vpdpbusd
// covers 16 rows x 4 columns of a token: for one token a fraction of the instructions of a
// row at a time. The integer sums are the GEMM's (exact) and the float steps l_tile's in
// the same order, so the results are the GEMM's (and its twin's) bit for bit. Blocks go in
// pairs so every vector is 64-byte aligned.

// kCodeVecs: 64-byte code vectors per block (8-bit codes: 8; nibbles: 4); kFifth: a vector
// of fifth bits (byte 4r + c, bit g: column 4g + c of row r); kMin: an fp16 m per row.
template <int CodeVecs, bool Fifth, bool Min>
struct LPackedShape {
  static constexpr int kCodeVecs = CodeVecs;
  static constexpr bool kFifth = Fifth, kMin = Min;
};
template <typename Block>
struct LPacked;
template <>
struct LPacked<block_q8_0> : LPackedShape<8, false, false> {};
template <>
struct LPacked<block_q4_0> : LPackedShape<4, false, false> {};
template <>
struct LPacked<block_q4_1> : LPackedShape<4, false, true> {};
template <>
struct LPacked<block_q5_0> : LPackedShape<4, true, false> {};
template <>
struct LPacked<block_q5_1> : LPackedShape<4, true, true> {};

// Byte offsets within a pair of blocks: codes [2][kCodeVecs][16 rows][4], fifth bits
// [2][16][4], d [2][16] fp16, m [2][16] fp16.
template <typename Block>
struct LPairLayout {
  using P = LPacked<Block>;
  static constexpr size_t kCodes = 0;
  static constexpr size_t kFifth = kCodes + 2 * P::kCodeVecs * 64;
  static constexpr size_t kD = kFifth + (P::kFifth ? 2 * 64 : 0);
  static constexpr size_t kM = kD + 64;
  static constexpr size_t kBytes = kM + (P::kMin ? 64 : 0);
  static_assert(kBytes % 64 == 0);
};

template <typename Block>
size_t l_packed_bytes(size_t cols) {
  return (cols / QK8_0 + 1) / 2 * LPairLayout<Block>::kBytes;
}

template <typename Block>
void l_pack_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                  std::byte* panel) {
  using L = LPairLayout<Block>;
  auto* out = reinterpret_cast<uint8_t*>(panel);
  const auto pack = [&](const Block& b, int r, size_t i) {
    uint8_t* pair = out + i / 2 * L::kBytes;
    const size_t h = i % 2;
    uint8_t* codes = pair + L::kCodes + h * L::P::kCodeVecs * 64 + 4 * r;
    if constexpr (L::P::kCodeVecs == 8) {
      for (int k = 0; k < QK8_0; ++k) {
        codes[k / 4 * 64 + k % 4] = static_cast<uint8_t>(b.qs[k]) ^ 0x80;  // q + 128
      }
    } else {
      for (int k = 0; k < QK8_0 / 2; ++k) codes[k / 4 * 64 + k % 4] = b.qs[k];
    }
    if constexpr (L::P::kFifth) {
      uint32_t qh;
      std::memcpy(&qh, b.qh, 4);
      uint8_t* fifth = pair + L::kFifth + h * 64 + 4 * r;
      for (int k = 0; k < QK8_0; ++k) {
        if ((qh >> k) & 1) fifth[k % 4] |= static_cast<uint8_t>(1 << (k / 4));
      }
    }
    std::memcpy(pair + L::kD + h * 32 + 2 * r, &b.d, 2);
    if constexpr (L::P::kMin) std::memcpy(pair + L::kM + h * 32 + 2 * r, &b.m, 2);
  };
  pack_panel_blocks<Block>(cols / QK8_0, w, w_row_bytes, n_rows, panel, l_packed_bytes<Block>(cols),
                           pack);
}

// The 8 code vectors of block h of a packed pair, as LPanel stores them: vector g holds
// codes 4g .. 4g + 3 of each row (unsigned, q + kOffset).
template <typename Block>
inline void l_packed_codes(const uint8_t* pair, size_t h, __m512i w[8]) {
  using L = LPairLayout<Block>;
  const uint8_t* codes = pair + L::kCodes + h * L::P::kCodeVecs * 64;
  if constexpr (L::P::kCodeVecs == 8) {
    for (int g = 0; g < 8; ++g) w[g] = load512(codes + 64 * g);
  } else {
    const __m512i low_mask = _mm512_set1_epi8(0x0F);
    __m512i fifth = _mm512_setzero_si512();
    if constexpr (L::P::kFifth) fifth = load512(pair + L::kFifth + h * 64);
    for (int j = 0; j < 4; ++j) {
      const __m512i v = load512(codes + 64 * j);
      __m512i lo = _mm512_and_si512(v, low_mask);
      __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_mask);
      if constexpr (L::P::kFifth) {
        const __m512i sixteen = _mm512_set1_epi8(16);
        lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(fifth, _mm512_set1_epi8(1 << j)), lo,
                                  sixteen);
        hi = _mm512_mask_add_epi8(
            hi, _mm512_test_epi8_mask(fifth, _mm512_set1_epi8(static_cast<char>(16 << j))), hi,
            sixteen);
      }
      w[j] = lo;
      w[j + 4] = hi;
    }
  }
}

// A decode batch of 2+ tokens stays on each packed block for NT times the dot products, long
// enough that the hardware prefetchers fall behind the panel stream (perf: the stalls sit on
// the code loads). So these tiles request the block this far ahead into the L2 (11-17 KiB):
// `kiln bench --decode-batch 8`, alternated, SmolLM2 (Q5_0/Q8_0) ~1000 -> ~1400 tokens/s,
// TinyLlama (Q4_K/Q6_K) 155 -> 238; batches of 2-4 +5-25%. A lone token (NT 1) streams fast
// enough on its own, and the same requests made TinyLlama's decode slower: not for NT 1.
constexpr size_t kPackedPrefetchKBlocks = 4;  // K super-blocks of 16 rows: 2368-3392 bytes
constexpr size_t kPackedPrefetchLPairs = 16;  // pairs of legacy blocks of 16 rows: 576-1088
inline void prefetch_l2(const void* p, size_t bytes) {
  const auto* c = static_cast<const char*>(p);
  for (size_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T2);
}

// l_tile over packed blocks [kb0, kb0 + nb) of the panel.
template <typename Block, int NT>
void l_packed_tile(const uint8_t* panel, size_t kb0, size_t nb, const std::byte* act,
                   size_t act_stride, float* y, size_t y_stride, __mmask16 mask, bool first) {
  using L = LPairLayout<Block>;
  constexpr int kOffset = LCodes<Block>::kOffset;
  const block_q8_act* a[NT];
  __m512 acc[NT];
  tile_begin(act, act_stride, kb0, y, y_stride, mask, first, a, acc);
  for (size_t i = 0; i < nb; ++i) {
    const size_t block = kb0 + i;
    const uint8_t* pair = panel + block / 2 * L::kBytes;
    const size_t h = block % 2;
    if constexpr (NT >= 2) {
      if (h == 0 || i == 0) prefetch_l2(pair + kPackedPrefetchLPairs * L::kBytes, L::kBytes);
    }
    __m512i w[8];
    l_packed_codes<Block>(pair, h, w);
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
    for (int g = 0; g < 8; ++g) {
      for (int t = 0; t < NT; ++t) {
        sum[t] = _mm512_dpbusd_epi32(sum[t], w[g], broadcast32(a[t][i].qs + 4 * g));
      }
    }
    const __m512 d = _mm512_cvtph_ps(load256(pair + L::kD + h * 32));
    __m512 c = _mm512_setzero_ps();
    if constexpr (L::P::kMin) c = _mm512_cvtph_ps(load256(pair + L::kM + h * 32));
    for (int t = 0; t < NT; ++t) acc[t] = l_block_step<kOffset>(acc[t], d, c, sum[t], a[t][i]);
  }
  tile_end(acc, y, y_stride, mask);
}

// Many tokens from a packed legacy panel: each chunk unpacked once into l_gemm_panel's LPanel
// layout, then l_tile over every token tile (as k_packed_gemm for the K types).
template <typename Block>
void l_packed_gemm(size_t cols, const uint8_t* packed, int n_rows, const std::byte* act,
                   size_t act_stride, size_t m, float* y, size_t y_stride) {
  using L = LPairLayout<Block>;
  const auto mask = static_cast<__mmask16>((1u << n_rows) - 1);
  const auto fill = [&](auto& panel, size_t kb0, int nb) {
    for (int i = 0; i < nb; ++i) {
      const size_t block = kb0 + static_cast<size_t>(i);
      const uint8_t* pair = packed + block / 2 * L::kBytes;
      const size_t h = block % 2;
      __m512i w[8];
      l_packed_codes<Block>(pair, h, w);
      for (int g = 0; g < 8; ++g) _mm512_store_si512(panel[i].codes[g], w[g]);
      _mm512_store_ps(panel[i].d, _mm512_cvtph_ps(load256(pair + L::kD + h * 32)));
      _mm512_store_ps(panel[i].c, L::P::kMin ? _mm512_cvtph_ps(load256(pair + L::kM + h * 32))
                                             : _mm512_setzero_ps());
    }
  };
  for_panel_chunks<LPanel, QK8_0>(cols, m, act, act_stride, y, y_stride, fill,
                                  l_tiles<Block>(act_stride, y_stride, mask));
}

// ---- Pre-packed K panels -----------------------------------------------------------------
//
// As the legacy ones above: packed once at load, as compact as the blocks (Q4_K: nibbles,
// 6-bit scales and mins as 4 + 2 bits, exactly the blocks' bytes; Q6_K: nibbles plus a plane
// of top bit pairs, int8 scales, 1% more), one 16-row super-block after another; the integer
// sums are k_tile's and the float steps too, so the results are the GEMM's bit for bit.
//
// Per type: kBytes (one 16-row super-block, a multiple of 64), pack (row r of a block into
// it), and for the kernel codes (group g: 4 columns of each row, unsigned), scale (sub-block
// s, int32 per row), min_pair (KPanel::mins[q]), d and dmin.
template <typename Block>
struct KPacked;

template <>
struct KPacked<block_q4_K> {
  // The block's own 144 bytes a row, so a pass over the panels reads what a pass over the
  // blocks would (with the 6-bit scales and mins as bytes, 2368 bytes a super-block, decode
  // read 2.8% more):
  //   low [8][16] u8: scale & 15 | (min & 15) << 4 of sub-block s, row r;
  //   high [16] u32: row r's top two bits of scale s at bits 2s, 2s + 1, of min s at 16 + 2s;
  //   d, dmin [16] fp16;
  //   codes [32][16 rows][4]: vector 8j + k holds qs[32j + 4k, +4) of each row; its low
  //   nibbles are group 16j + k, its high nibbles group 16j + 8 + k.
  // The small fields first: the kernel reads scale 0 right after the first codes, and the
  // super-block then streams from DRAM ascending (see KPacked<block_q6_K>).
  static constexpr size_t kLow = 0, kHigh = 128, kD = 192, kDmin = 224, kCodes = 256;
  static constexpr size_t kBytes = 2304;
  static void pack(const block_q4_K& b, int r, uint8_t* sb) {
    for (int j = 0; j < 4; ++j) {
      for (int k = 0; k < 8; ++k)
        std::memcpy(sb + kCodes + (8 * j + k) * 64 + 4 * r, b.qs + 32 * j + 4 * k, 4);
    }
    uint32_t high = 0;
    for (int s = 0; s < 8; ++s) {
      int scale, min;
      scale_min_k4(s, b.scales, scale, min);
      sb[kLow + 16 * s + r] = static_cast<uint8_t>((scale & 15) | (min & 15) << 4);
      high |= static_cast<uint32_t>(scale >> 4) << (2 * s) | static_cast<uint32_t>(min >> 4)
                                                                 << (16 + 2 * s);
    }
    std::memcpy(sb + kHigh + 4 * r, &high, 4);
    std::memcpy(sb + kD + 2 * r, &b.d, 2);
    std::memcpy(sb + kDmin + 2 * r, &b.dmin, 2);
  }
  static __m512i codes(const uint8_t* sb, int g) {
    const __m512i v = load512(sb + kCodes + (8 * (g / 16) + g % 8) * 64);
    return _mm512_and_si512((g / 8) % 2 != 0 ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(0x0F));
  }
  // Bits `bit`, bit + 1 of each row's high word moved to bits 4, 5 (the rest cleared).
  static __m512i top_bits(const uint8_t* sb, int bit) {
    const __m512i high = load512(sb + kHigh);
    const __m512i moved = bit >= 4 ? _mm512_srl_epi32(high, _mm_cvtsi32_si128(bit - 4))
                                   : _mm512_sll_epi32(high, _mm_cvtsi32_si128(4 - bit));
    return _mm512_and_si512(moved, _mm512_set1_epi32(0x30));
  }
  static __m512i low_bytes(const uint8_t* sb, int s) {
    return _mm512_cvtepu8_epi32(load128(sb + kLow + 16 * s));
  }
  static __m512i scale(const uint8_t* sb, int s) {
    return _mm512_or_si512(_mm512_and_si512(low_bytes(sb, s), _mm512_set1_epi32(15)),
                           top_bits(sb, 2 * s));
  }
  // Groups 2q and 2q + 1 share sub-block q's min.
  static __m512i min_pair(const uint8_t* sb, int q) {
    const __m512i m =
        _mm512_or_si512(_mm512_srli_epi32(low_bytes(sb, q), 4), top_bits(sb, 16 + 2 * q));
    return _mm512_or_si512(m, _mm512_slli_epi32(m, 16));
  }
  static __m512 d(const uint8_t* sb) { return _mm512_cvtph_ps(load256(sb + kD)); }
  static __m512 dmin(const uint8_t* sb) { return _mm512_cvtph_ps(load256(sb + kDmin)); }
};

template <>
struct KPacked<block_q6_K> {
  // Two halves h (groups 32h .. 32h + 31) of kHalf bytes each, then d. Each half is laid out
  // in the order the kernel first reads it, so decode streams it from DRAM ascending (laid
  // out by kind, all low nibbles, then all top bits, then all scales, it ran at half the
  // speed: the hardware prefetchers follow ascending streams):
  //   scales [4][16][2] int8: pair q holds sub-blocks 8h + 2q, 8h + 2q + 1 of each row;
  //   low nibbles, vectors L = 0..15: vector L holds ql[64h + 32j + 4k, +4) (L = 8j + k) of
  //     each row; its low nibbles are group 32h + L, its high nibbles group 32h + 16 + L;
  //   top bits, vectors k = 0..7: qh[32h + 4k, +4); bits 2i, 2i + 1 of a byte top group
  //     32h + 8i + k;
  // in the order scales, low 0-3, top 0-3, low 4-7, top 4-7, low 8-15.
  static constexpr size_t kHalf = 1664, kD = 3328;
  static constexpr size_t kBytes = 3392;  // 3360, padded to 64
  static constexpr size_t low_offset(int l) {
    return l < 4 ? 128 + 64 * l : l < 8 ? 640 + 64 * (l - 4) : 1152 + 64 * (l - 8);
  }
  static constexpr size_t top_offset(int k) { return k < 4 ? 384 + 64 * k : 896 + 64 * (k - 4); }
  static constexpr size_t scale_pair_offset(int q) { return kHalf * (q / 4) + 32 * (q % 4); }
  static void pack(const block_q6_K& b, int r, uint8_t* sb) {
    for (int h = 0; h < 2; ++h) {
      uint8_t* half = sb + kHalf * h;
      for (int k = 0; k < 8; ++k) {
        for (int j = 0; j < 2; ++j) {
          std::memcpy(half + low_offset(8 * j + k) + 4 * r, b.ql + 64 * h + 32 * j + 4 * k, 4);
        }
        std::memcpy(half + top_offset(k) + 4 * r, b.qh + 32 * h + 4 * k, 4);
      }
    }
    for (int q = 0; q < 8; ++q) {
      sb[scale_pair_offset(q) + 2 * r] = static_cast<uint8_t>(b.scales[2 * q]);
      sb[scale_pair_offset(q) + 2 * r + 1] = static_cast<uint8_t>(b.scales[2 * q + 1]);
    }
    std::memcpy(sb + kD + 2 * r, &b.d, 2);
  }
  static __m512i codes(const uint8_t* sb, int g) {
    const int h = g / 32, i = g % 32 / 8, k = g % 8;
    const uint8_t* half = sb + kHalf * h;
    const __m512i n = load512(half + low_offset(8 * (i % 2) + k));
    const __m512i low =
        _mm512_and_si512(i >= 2 ? _mm512_srli_epi16(n, 4) : n, _mm512_set1_epi8(0x0F));
    // Bits 2i, 2i + 1 to bits 4, 5 (what crosses a byte is masked off).
    const __m512i qh = load512(half + top_offset(k));
    const __m512i top = i == 0   ? _mm512_slli_epi16(qh, 4)
                        : i == 1 ? _mm512_slli_epi16(qh, 2)
                        : i == 2 ? qh
                                 : _mm512_srli_epi16(qh, 2);
    return _mm512_or_si512(low, _mm512_and_si512(top, _mm512_set1_epi8(0x30)));
  }
  static __m512i scale(const uint8_t* sb, int s) {
    const __m512i pair = _mm512_cvtepi8_epi16(load256(sb + scale_pair_offset(s / 2)));
    return s % 2 == 0 ? _mm512_srai_epi32(_mm512_slli_epi32(pair, 16), 16)
                      : _mm512_srai_epi32(pair, 16);
  }
  // Codes are q + 32: min16 of group g is 32 * its scale (KPack<block_q6_K>).
  static __m512i min_pair(const uint8_t* sb, int q) {
    return _mm512_slli_epi16(_mm512_cvtepi8_epi16(load256(sb + scale_pair_offset(q))), 5);
  }
  static __m512 d(const uint8_t* sb) { return _mm512_cvtph_ps(load256(sb + kD)); }
  static __m512 dmin(const uint8_t* sb) { return d(sb); }
};

template <typename Block>
size_t k_packed_bytes(size_t cols) {
  return cols / QK_K * KPacked<Block>::kBytes;
}

template <typename Block>
void k_pack_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                  std::byte* panel) {
  auto* out = reinterpret_cast<uint8_t*>(panel);
  pack_panel_blocks<Block>(cols / QK_K, w, w_row_bytes, n_rows, panel, k_packed_bytes<Block>(cols),
                           [&](const Block& b, int r, size_t i) {
                             KPacked<Block>::pack(b, r, out + i * KPacked<Block>::kBytes);
                           });
}

// k_tile over packed super-blocks [kb0, kb0 + nb) of the panel.
template <typename Block, int NT>
void k_packed_tile(const uint8_t* panel, size_t kb0, size_t nb, const std::byte* act,
                   size_t act_stride, float* y, size_t y_stride, __mmask16 mask, bool first) {
  using P = KPacked<Block>;
  constexpr int NSB = KPack<Block>::kSubBlocks;
  constexpr int kGroups = QK_K / 4 / NSB;
  const block_q8_K* a[NT];
  __m512 acc[NT];
  tile_begin(act, act_stride, kb0, y, y_stride, mask, first, a, acc);
  for (size_t i = 0; i < nb; ++i) {
    const uint8_t* sb = panel + (kb0 + i) * P::kBytes;
    if constexpr (NT >= 2) prefetch_l2(sb + kPackedPrefetchKBlocks * P::kBytes, P::kBytes);
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
      // Unrolled, so each group's code vector is found without branches or index arithmetic.
#pragma GCC unroll 16
    for (int s = 0; s < NSB; ++s) {
      __m512i part[NT];
      for (int t = 0; t < NT; ++t) part[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int g = 0; g < kGroups; ++g) {
        const int group = s * kGroups + g;
        const __m512i w = P::codes(sb, group);
        for (int t = 0; t < NT; ++t) {
          part[t] = _mm512_dpbusd_epi32(part[t], w, broadcast32(a[t][i].qs + 4 * group));
        }
      }
      const __m512i scale = P::scale(sb, s);
      for (int t = 0; t < NT; ++t) {
        sum[t] = _mm512_add_epi32(sum[t], _mm512_mullo_epi32(part[t], scale));
      }
    }
    __m512i min_pairs[8];
    for (int q = 0; q < 8; ++q) min_pairs[q] = P::min_pair(sb, q);
    const __m512 d = P::d(sb);
    const __m512 dmin = P::dmin(sb);
    for (int t = 0; t < NT; ++t) {
      __m512i min_sum = _mm512_setzero_si512();
      for (int q = 0; q < 8; ++q) {
        min_sum = _mm512_dpwssd_epi32(min_sum, min_pairs[q], broadcast32(a[t][i].bsums + 2 * q));
      }
      acc[t] = k_block_step(acc[t], d, dmin, sum[t], min_sum, a[t][i].d);
    }
  }
  tile_end(acc, y, y_stride, mask);
}

// Many tokens from a packed K panel: each chunk unpacked once into k_gemm_panel's KPanel
// layout (codes as bytes, scales and mins as the vectors k_tile multiplies by), then k_tile
// over every token tile, as k_gemm_panel does. k_packed_tile would unpack the nibbles again
// for every tile of 8 tokens: prompts ran ~10% slower from packed panels than from blocks.
template <typename Block>
void k_packed_gemm(size_t cols, const uint8_t* packed, int n_rows, const std::byte* act,
                   size_t act_stride, size_t m, float* y, size_t y_stride) {
  using P = KPacked<Block>;
  constexpr int NSB = KPack<Block>::kSubBlocks;
  const auto mask = static_cast<__mmask16>((1u << n_rows) - 1);
  const auto fill = [&](auto& panel, size_t kb0, int nb) {
    for (int i = 0; i < nb; ++i) {
      const uint8_t* sb = packed + (kb0 + static_cast<size_t>(i)) * P::kBytes;
      KPanel& k = panel[i];
#pragma GCC unroll 64
      for (int g = 0; g < QK_K / 4; ++g) _mm512_store_si512(k.codes[g], P::codes(sb, g));
#pragma GCC unroll 16
      for (int sub = 0; sub < NSB; ++sub) _mm512_store_si512(k.scales[sub], P::scale(sb, sub));
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) _mm512_store_si512(k.mins[q], P::min_pair(sb, q));
      _mm512_store_ps(k.d, P::d(sb));
      _mm512_store_ps(k.dmin, P::dmin(sb));
    }
  };
  for_panel_chunks<KPanel, QK_K>(cols, m, act, act_stride, y, y_stride, fill,
                                 k_tiles<Block>(act_stride, y_stride, mask));
}

// GemmPackedFn over a type's packed tiles: token tiles over K chunks as the panel GEMM
// takes them (for a single tile, the whole row at once).
template <typename Block, bool kK>
void packed_panel(size_t cols, const std::byte* panel, int n_rows, const std::byte* act,
                  size_t act_stride, size_t m, float* y, size_t y_stride) {
  constexpr size_t kBlock = kK ? QK_K : QK8_0;
  const auto mask = static_cast<__mmask16>((1u << n_rows) - 1);
  const auto* p = reinterpret_cast<const uint8_t*>(panel);
  if (m > static_cast<size_t>(kTile)) {
    if constexpr (kK) {
      k_packed_gemm<Block>(cols, p, n_rows, act, act_stride, m, y, y_stride);
    } else {
      l_packed_gemm<Block>(cols, p, n_rows, act, act_stride, m, y, y_stride);
    }
    return;
  }
  const size_t n_blocks = cols / kBlock;
  const size_t chunk = m <= static_cast<size_t>(kTile) ? n_blocks : kChunkCols / kBlock;
  for (size_t kb0 = 0; kb0 < n_blocks; kb0 += chunk) {
    const size_t nb = min_size(chunk, n_blocks - kb0);
    for (size_t t0 = 0; t0 < m; t0 += kTile) {
      with_token_count<kTile>(min_size(kTile, m - t0), [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        const std::byte* a = act + t0 * act_stride;
        if constexpr (kK) {
          k_packed_tile<Block, NT>(p, kb0, nb, a, act_stride, y + t0 * y_stride, y_stride, mask,
                                   kb0 == 0);
        } else {
          l_packed_tile<Block, NT>(p, kb0, nb, a, act_stride, y + t0 * y_stride, y_stride, mask,
                                   kb0 == 0);
        }
      });
    }
  }
}

// ---- Few tokens: the panels' results without the repack ----------------------------
//
// For a few tokens the repack costs more than it saves. But a row's result must
// not depend on m: the engine batches the decode tokens of several sequences, and each
// sequence must get the same logits alone or beside others. So these kernels compute the
// very same numbers as the panels above: the same exact integer sums per (row, block), then
// the same float operations in the same order, one lane per row. Only the way to the integer
// sums differs. Each row is read on its own, start to end, like the per-row dot kernels
// (the memory system streams that best; 16 rows read a block at a time each, or in short
// runs, ran up to twice as slow here); its per-block partial vectors are summed 8 blocks at
// a time into one vector of 8 block sums; and once all 16 rows are done, a 16 x 8 transpose
// turns those into one vector per block with a lane per row, for the float steps.

// v[b]: eight int32 partials of block b. Returns lane b = their sum.
inline __m256i reduce_8x8(const __m256i v[8]) {
  __m256i w[4], x[2];
  for (int k = 0; k < 4; ++k) {  // each 128-bit lane: blocks 2k, 2k + 1, 2k, 2k + 1
    w[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
                            _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
  }
  for (int k = 0; k < 2; ++k) {  // each 128-bit lane: blocks 4k .. 4k + 3
    x[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(w[2 * k], w[2 * k + 1]),
                            _mm256_unpackhi_epi64(w[2 * k], w[2 * k + 1]));
  }
  return _mm256_add_epi32(_mm256_permute2x128_si256(x[0], x[1], 0x20),
                          _mm256_permute2x128_si256(x[0], x[1], 0x31));
}

// m[b]: four int32 partials of block b. Returns lane b = their sum.
inline __m256i reduce_8x4(const __m128i m[8]) {
  __m256i y[4];
  for (int k = 0; k < 4; ++k) y[k] = _mm256_set_m128i(m[k + 4], m[k]);
  const __m256i w0 =
      _mm256_add_epi32(_mm256_unpacklo_epi32(y[0], y[1]), _mm256_unpackhi_epi32(y[0], y[1]));
  const __m256i w1 =
      _mm256_add_epi32(_mm256_unpacklo_epi32(y[2], y[3]), _mm256_unpackhi_epi32(y[2], y[3]));
  return _mm256_add_epi32(_mm256_unpacklo_epi64(w0, w1), _mm256_unpackhi_epi64(w0, w1));
}

// s[r]: row r's 8 block sums. out[b]: lane r = s[r][b].
inline void transpose_16x8(const __m256i s[16], __m512i out[8]) {
  __m512i v[8], a[4], b[4], c[4], d[4];
  for (int k = 0; k < 8; ++k) v[k] = _mm512_inserti64x4(_mm512_castsi256_si512(s[k]), s[k + 8], 1);
  // Two 8 x 8 transposes at once (rows 0-7 in the low half, 8-15 in the high half).
  for (int j = 0; j < 4; ++j) {
    a[j] = _mm512_unpacklo_epi32(v[2 * j], v[2 * j + 1]);
    b[j] = _mm512_unpackhi_epi32(v[2 * j], v[2 * j + 1]);
  }
  // c[e], d[e]: 128-bit lanes hold block e (lanes 0, 2) or e + 4 (lanes 1, 3), rows 0-3 (c)
  // or 4-7 (d), plus 8 in the high half.
  c[0] = _mm512_unpacklo_epi64(a[0], a[1]);
  c[1] = _mm512_unpackhi_epi64(a[0], a[1]);
  c[2] = _mm512_unpacklo_epi64(b[0], b[1]);
  c[3] = _mm512_unpackhi_epi64(b[0], b[1]);
  d[0] = _mm512_unpacklo_epi64(a[2], a[3]);
  d[1] = _mm512_unpackhi_epi64(a[2], a[3]);
  d[2] = _mm512_unpacklo_epi64(b[2], b[3]);
  d[3] = _mm512_unpackhi_epi64(b[2], b[3]);
  for (int e = 0; e < 4; ++e) {
    out[e] = _mm512_shuffle_i32x4(_mm512_shuffle_i32x4(c[e], d[e], 0x88),
                                  _mm512_shuffle_i32x4(c[e], d[e], 0x88), 0xD8);
    out[e + 4] = _mm512_shuffle_i32x4(_mm512_shuffle_i32x4(c[e], d[e], 0xDD),
                                      _mm512_shuffle_i32x4(c[e], d[e], 0xDD), 0xD8);
  }
}

// The 16 rows of a call: pointers (rows past n_rows repeat row 0, so every load is valid).
template <typename Block>
struct RowSet {
  const Block* row[kRows];
  __mmask16 mask;

  RowSet(const std::byte* w, size_t w_row_bytes, int n_rows) {
    for (int r = 0; r < kRows; ++r) {
      const size_t src = r < n_rows ? static_cast<size_t>(r) : 0;
      row[r] = reinterpret_cast<const Block*>(w + src * w_row_bytes);
    }
    mask = static_cast<__mmask16>((1u << n_rows) - 1);
  }
};

// The first 4 bytes of a block (a legacy block's fp16 d, and Q4_1/Q5_1's fp16 m; a K block's
// d and dmin), collected per row while the block is at hand.
template <typename Block>
inline int32_t head32(const Block& b) {
  int32_t v;
  std::memcpy(&v, &b, 4);
  return v;
}

// Software prefetch distance: the rows are read one after another, and this keeps the
// stream going into the next row and the next panel.
constexpr size_t kPrefetchBytes = 2048;
// Blocks per group: one vector of block sums per row, group and token.
constexpr size_t kGroup = 8;

template <typename Block>
inline void prefetch_ahead(const Block* b) {
  const char* p = reinterpret_cast<const char*>(b) + kPrefetchBytes;
  for (size_t o = 0; o < sizeof(Block); o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

// Q8_0's codes of blocks b and b + 1 of a row as one vector (q + 128; block b in bytes 0..31,
// b + 1 in 32..63, zero when there is no second block). Two blocks a vpdpbusd, then one
// reduction for 8 blocks, run l_small_tile's Q8_0 rows 1.8x faster from the L3 than a
// 256-bit vector a block (one thread, matvec/q8_0/5632x2048 with KILN_NO_ROTATE: 19-21 ->
// 35-36 GB/s). The nibble types gain nothing so (their unpacking, not the sums, is the
// cost) and keep a vector a block.
inline __m512i q8_0_pair_codes(const block_q8_0* blocks, size_t b, bool second) {
  const __m256i lo = load256(blocks[b].qs);
  const __m256i hi = second ? load256(blocks[b + 1].qs) : _mm256_set1_epi8(-128);
  return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1),
                          _mm512_set1_epi8(-128));
}

// The 8 block sums of 4 pair vectors (v[p]: dwords 0..7 partial sums of block 2p, 8..15 of
// block 2p + 1), in block order: what reduce_8x8 gives for the 8 blocks' 256-bit vectors.
inline __m256i reduce_4_pairs(const __m512i v[4]) {
  // Each 128-bit lane L of t01: [v0, v1, v0, v1] partial sums, pairs of dwords folded.
  const __m512i t01 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
  const __m512i t23 =
      _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
  // Lane L of u: the sums of lane L's 4 dwords of v0, v1, v2, v3. Lanes 0-1 are the first
  // block of each pair (dwords 0-3, 4-7), lanes 2-3 the second.
  const __m512i u =
      _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
  const __m512i w = _mm512_add_epi32(u, _mm512_shuffle_i32x4(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
  // Lane 0 of w: blocks 0, 2, 4, 6; lane 2: blocks 1, 3, 5, 7.
  const __m128i even = _mm512_castsi512_si128(w), odd = _mm512_extracti32x4_epi32(w, 2);
  return _mm256_set_m128i(_mm_unpackhi_epi32(even, odd), _mm_unpacklo_epi32(even, odd));
}

template <typename Block, int NT>
void l_small_tile(const RowSet<Block>& rows, size_t n_blocks, const std::byte* act,
                  size_t act_stride, float* y, size_t y_stride) {
  constexpr int kOffset = LCodes<Block>::kOffset;
  constexpr size_t kGroups = 8;  // per chunk: 64 blocks (2048 columns) of a row in one run
  constexpr size_t kEvery = 64 / sizeof(Block) > 0 ? 64 / sizeof(Block) : 1;
  const block_q8_act* a[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = reinterpret_cast<const block_q8_act*>(act + static_cast<size_t>(t) * act_stride);
  }
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (size_t i0 = 0; i0 < n_blocks; i0 += kGroups * kGroup) {
    const size_t nb = min_size(kGroups * kGroup, n_blocks - i0);
    __m256i sums[NT][kGroups][kRows];  // [token][group][row]: 8 block sums
    alignas(64) int32_t head[kGroups * kGroup][kRows];
    for (int r = 0; r < kRows; ++r) {
      const Block* blocks = rows.row[r] + i0;
      for (size_t g = 0; g * kGroup < nb; ++g) {
        if constexpr (std::is_same_v<Block, block_q8_0>) {
          __m512i part[NT][kGroup / 2];
          for (size_t p = 0; p < kGroup / 2; ++p) {
            const size_t b = g * kGroup + 2 * p;
            if (b >= nb) {
              for (int t = 0; t < NT; ++t) part[t][p] = _mm512_setzero_si512();
              continue;
            }
            const bool second = b + 1 < nb;
            prefetch_ahead(blocks + b);  // 68 bytes a pair: a line or two
            head[b][r] = head32(blocks[b]);
            if (second) head[b + 1][r] = head32(blocks[b + 1]);
            const __m512i codes = q8_0_pair_codes(blocks, b, second);
            for (int t = 0; t < NT; ++t) {
              // A missing second block's activations: the first's again (its codes are 0).
              const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(load256(a[t][i0 + b].qs)),
                                                   load256(a[t][i0 + b + (second ? 1 : 0)].qs), 1);
              part[t][p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, x);
            }
          }
          for (int t = 0; t < NT; ++t) sums[t][g][r] = reduce_4_pairs(part[t]);
        } else {
          __m256i part[NT][kGroup];
          for (size_t k = 0; k < kGroup; ++k) {
            const size_t b = g * kGroup + k;
            if (b >= nb) {
              for (int t = 0; t < NT; ++t) part[t][k] = _mm256_setzero_si256();
              continue;
            }
            if (b % kEvery == 0) prefetch_ahead(blocks + b);
            head[b][r] = head32(blocks[b]);
            const __m256i codes = LCodes<Block>::codes(blocks[b]);
            for (int t = 0; t < NT; ++t) {
              part[t][k] =
                  _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, load256(a[t][i0 + b].qs));
            }
          }
          for (int t = 0; t < NT; ++t) sums[t][g][r] = reduce_8x8(part[t]);
        }
      }
    }
    for (size_t g = 0; g * kGroup < nb; ++g) {
      __m512i block_sums[NT][kGroup];
      for (int t = 0; t < NT; ++t) transpose_16x8(sums[t][g], block_sums[t]);
      for (size_t k = 0; k < kGroup && g * kGroup + k < nb; ++k) {
        const size_t b = g * kGroup + k, i = i0 + b;
        const __m512i d_m = _mm512_load_si512(head[b]);
        const __m512 d = halves_to_float(d_m, false);
        // m of Q4_1/Q5_1 (the other types have codes there, and no use for c).
        const __m512 c = kOffset == 0 ? halves_to_float(d_m, true) : _mm512_setzero_ps();
        for (int t = 0; t < NT; ++t) {
          acc[t] = l_block_step<kOffset>(acc[t], d, c, block_sums[t][k], a[t][i]);
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * y_stride, rows.mask, acc[t]);
}

// Per-type parts of the K kernels. Row: one row's block unpacked; codes (KPack's, four
// vectors of 64) and int16 scale vectors for vpdpwssd after vpmaddubsw give the main sum;
// min_part gives the min term's integer sum (KPanel::mins . bsums) as 4 int32 partials, from
// act_sums(a), the activation sums in the form the type wants (computed once per token).
template <typename Block>
struct KSmall;

template <>
struct KSmall<block_q4_K> {
  struct Consts {
    __m512i nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    __m512i scale_index[4];
    Consts() {
      for (int j = 0; j < 4; ++j) scale_index[j] = word_index(2 * j, 16);
    }
  };
  struct Row {
    __m512i q[4], scale[4];
    __m128i mins;  // 8 int16: min of sub-block s
  };
  static __m512i scales_of(const uint8_t packed[12], Row& row) {
    const __m256i scales_mins = _mm256_cvtepu8_epi16(unpack_q4_K_scales_mins(packed));
    row.mins = _mm256_extracti128_si256(scales_mins, 1);
    return _mm512_zextsi256_si512(scales_mins);
  }
  static void row(const block_q4_K& b, const Consts& k, Row& row) {
    const __m512i scales = scales_of(b.scales, row);
    for (int j = 0; j < 4; ++j) {
      const __m512i q4 = _mm512_broadcast_i64x4(load256(b.qs + 32 * j));
      row.q[j] = _mm512_and_si512(_mm512_srlv_epi64(q4, k.nibble_shift), _mm512_set1_epi8(0x0F));
      row.scale[j] = _mm512_permutexvar_epi16(k.scale_index[j], scales);
    }
  }
  // Sums of the 32-element sub-blocks (pairs of 16-element bsums), in the low 128 bits.
  static __m256i act_sums(const block_q8_K& a) {
    const __m256i bsums = load256(a.bsums);
    return _mm256_castsi128_si256(
        _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1)));
  }
  static __m128i min_part(const Row& row, __m256i sums) {
    return _mm_madd_epi16(row.mins, _mm256_castsi256_si128(sums));
  }
  static int32_t d_dmin(const block_q4_K& b) { return head32(b); }
};

template <>
struct KSmall<block_q5_K> : KSmall<block_q4_K> {
  struct Consts : KSmall<block_q4_K>::Consts {
    __m512i high_shift[4];
    Consts() {
      for (int j = 0; j < 4; ++j) {
        high_shift[j] = _mm512_setr_epi64(2 * j, 2 * j, 2 * j, 2 * j, 2 * j + 1, 2 * j + 1,
                                          2 * j + 1, 2 * j + 1);
      }
    }
  };
  static void row(const block_q5_K& b, const Consts& k, Row& row) {
    const __m512i scales = scales_of(b.scales, row);
    // Bit s of qh[l] is the fifth bit of element l of sub-block s.
    const __m512i qh = _mm512_broadcast_i64x4(load256(b.qh));
    for (int j = 0; j < 4; ++j) {
      const __m512i q4 = _mm512_broadcast_i64x4(load256(b.qs + 32 * j));
      const __m512i low =
          _mm512_and_si512(_mm512_srlv_epi64(q4, k.nibble_shift), _mm512_set1_epi8(0x0F));
      const __m512i fifth = _mm512_slli_epi16(
          _mm512_and_si512(_mm512_srlv_epi64(qh, k.high_shift[j]), _mm512_set1_epi8(1)), 4);
      row.q[j] = _mm512_or_si512(low, fifth);
      row.scale[j] = _mm512_permutexvar_epi16(k.scale_index[j], scales);
    }
  }
  static int32_t d_dmin(const block_q5_K& b) { return head32(b); }
};

template <>
struct KSmall<block_q6_K> {
  struct Consts {
    __m512i shift_first = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2);
    __m512i shift_second = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    __m512i scale_index[4];
    Consts() {
      for (int j = 0; j < 4; ++j) scale_index[j] = word_index(4 * j, 8);
    }
  };
  struct Row {
    __m512i q[4], scale[4];
    __m256i scales16;  // 16 int16: scale of group g
  };
  static void row(const block_q6_K& b, const Consts& k, Row& row) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m_high = _mm512_set1_epi8(0x30);
    row.scales16 = _mm256_cvtepi8_epi16(load128(b.scales));
    const __m512i scales = _mm512_zextsi256_si512(row.scales16);
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(b.ql + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(load256(b.qh + 32 * h));
      row.q[2 * h] = _mm512_or_si512(
          _mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi64(qh, k.shift_first), m_high));
      row.q[2 * h + 1] =
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                          _mm512_and_si512(_mm512_srlv_epi64(qh, k.shift_second), m_high));
    }
    for (int j = 0; j < 4; ++j) row.scale[j] = _mm512_permutexvar_epi16(k.scale_index[j], scales);
  }
  static __m256i act_sums(const block_q8_K& a) { return load256(a.bsums); }
  // Codes are q + 32: min16 of group g is 32 * scale g (KPack<block_q6_K>).
  static __m128i min_part(const Row& row, __m256i bsums) {
    const __m256i p = _mm256_madd_epi16(row.scales16, bsums);
    return _mm_slli_epi32(_mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1)),
                          5);
  }
  // dmin = d (KPack<block_q6_K>).
  static int32_t d_dmin(const block_q6_K& b) {
    return static_cast<int32_t>(b.d | static_cast<uint32_t>(b.d) << 16);
  }
};

template <typename Block, int NT>
void k_small_tile(const RowSet<Block>& rows, size_t n_blocks, const std::byte* act,
                  size_t act_stride, float* y, size_t y_stride) {
  using Type = KSmall<Block>;
  constexpr size_t kGroups = 2;  // per chunk: 16 blocks (4096 columns) of a row in one run
  const typename Type::Consts consts;
  const block_q8_K* a[NT];
  for (int t = 0; t < NT; ++t) {
    a[t] = reinterpret_cast<const block_q8_K*>(act + static_cast<size_t>(t) * act_stride);
  }
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (size_t i0 = 0; i0 < n_blocks; i0 += kGroups * kGroup) {
    const size_t nb = min_size(kGroups * kGroup, n_blocks - i0);
    __m256i act_sums[NT][kGroups * kGroup];
    for (int t = 0; t < NT; ++t) {
      for (size_t b = 0; b < nb; ++b) act_sums[t][b] = Type::act_sums(a[t][i0 + b]);
    }
    // [token][group][row]: 8 block sums of the main term (sub-block scale * (codes . a)) and
    // of the min term.
    __m256i main_sums[NT][kGroups][kRows], min_sums[NT][kGroups][kRows];
    alignas(64) int32_t head[kGroups * kGroup][kRows];  // d and dmin as fp16 pairs
    for (int r = 0; r < kRows; ++r) {
      const Block* blocks = rows.row[r] + i0;
      for (size_t g = 0; g * kGroup < nb; ++g) {
        __m256i main_part[NT][kGroup];
        __m128i min_part[NT][kGroup];
        for (size_t k = 0; k < kGroup; ++k) {
          const size_t b = g * kGroup + k;
          if (b >= nb) {
            for (int t = 0; t < NT; ++t) {
              main_part[t][k] = _mm256_setzero_si256();
              min_part[t][k] = _mm_setzero_si128();
            }
            continue;
          }
          prefetch_ahead(blocks + b);
          head[b][r] = Type::d_dmin(blocks[b]);
          typename Type::Row row;
          Type::row(blocks[b], consts, row);
          for (int t = 0; t < NT; ++t) {
            __m512i sum = _mm512_setzero_si512();
            for (int j = 0; j < 4; ++j) {
              const __m512i qa = _mm512_loadu_si512(a[t][i0 + b].qs + 64 * j);
              sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(row.q[j], qa), row.scale[j]);
            }
            main_part[t][k] =
                _mm256_add_epi32(_mm512_castsi512_si256(sum), _mm512_extracti64x4_epi64(sum, 1));
            min_part[t][k] = Type::min_part(row, act_sums[t][b]);
          }
        }
        for (int t = 0; t < NT; ++t) {
          main_sums[t][g][r] = reduce_8x8(main_part[t]);
          min_sums[t][g][r] = reduce_8x4(min_part[t]);
        }
      }
    }
    for (size_t g = 0; g * kGroup < nb; ++g) {
      __m512i main_block[NT][kGroup], min_block[NT][kGroup];
      for (int t = 0; t < NT; ++t) {
        transpose_16x8(main_sums[t][g], main_block[t]);
        transpose_16x8(min_sums[t][g], min_block[t]);
      }
      for (size_t k = 0; k < kGroup && g * kGroup + k < nb; ++k) {
        const size_t b = g * kGroup + k, i = i0 + b;
        const __m512i d_dmin = _mm512_load_si512(head[b]);
        const __m512 d = halves_to_float(d_dmin, false);
        const __m512 dmin = halves_to_float(d_dmin, true);
        for (int t = 0; t < NT; ++t) {
          acc[t] = k_block_step(acc[t], d, dmin, main_block[t][k], min_block[t][k], a[t][i].d);
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * y_stride, rows.mask, acc[t]);
}

template <typename Block, bool kK, int NT>
void small_tile(const RowSet<Block>& rows, size_t n_blocks, const std::byte* act, size_t act_stride,
                float* y, size_t y_stride) {
  if constexpr (kK) {
    k_small_tile<Block, NT>(rows, n_blocks, act, act_stride, y, y_stride);
  } else {
    l_small_tile<Block, NT>(rows, n_blocks, act, act_stride, y, y_stride);
  }
}

// GemmPanelFn over the few-token tiles.
template <typename Block, bool kK>
void small_panel(size_t cols, const std::byte* w, size_t w_row_bytes, int n_rows,
                 const std::byte* act, size_t act_stride, size_t m, float* y, size_t y_stride) {
  const size_t n_blocks = cols / (kK ? QK_K : QK8_0);
  const RowSet<Block> rows(w, w_row_bytes, n_rows);
  for (size_t t0 = 0; t0 < m; t0 += kTile) {
    const std::byte* a = act + t0 * act_stride;
    float* out = y + t0 * y_stride;
    with_token_count<kTile>(min_size(kTile, m - t0), [&](auto nt) {
      small_tile<Block, kK, decltype(nt)::value>(rows, n_blocks, a, act_stride, out, y_stride);
    });
  }
}

bool cpu_has_avx512_vnni() {
  static const bool supported =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c");
  return supported;
}

}  // namespace

GemmKernel gemm_kernel_avx512(GgmlType type) {
  if (!cpu_has_avx512_vnni()) return {};
  constexpr const char* isa = "avx512";
  switch (type) {
    case GgmlType::Q4_K:
      return {ActFormat::Q8_K,
              k_gemm_panel<block_q4_K>,
              isa,
              small_panel<block_q4_K, true>,
              false,
              k_packed_bytes<block_q4_K>,
              k_pack_panel<block_q4_K>,
              packed_panel<block_q4_K, true>,
              true};
    case GgmlType::Q5_K:
      return {ActFormat::Q8_K, k_gemm_panel<block_q5_K>, isa, small_panel<block_q5_K, true>};
    case GgmlType::Q6_K:
      return {ActFormat::Q8_K,
              k_gemm_panel<block_q6_K>,
              isa,
              small_panel<block_q6_K, true>,
              false,
              k_packed_bytes<block_q6_K>,
              k_pack_panel<block_q6_K>,
              packed_panel<block_q6_K, true>,
              true};
    case GgmlType::Q8_0:
      return {ActFormat::Q8_act,
              l_gemm_panel<block_q8_0>,
              isa,
              small_panel<block_q8_0, false>,
              true,
              l_packed_bytes<block_q8_0>,
              l_pack_panel<block_q8_0>,
              packed_panel<block_q8_0, false>,
              true};
    case GgmlType::Q4_0:
      return {ActFormat::Q8_act,
              l_gemm_panel<block_q4_0>,
              isa,
              small_panel<block_q4_0, false>,
              true,
              l_packed_bytes<block_q4_0>,
              l_pack_panel<block_q4_0>,
              packed_panel<block_q4_0, false>,
              true};
    case GgmlType::Q4_1:
      return {ActFormat::Q8_act,
              l_gemm_panel<block_q4_1>,
              isa,
              small_panel<block_q4_1, false>,
              true,
              l_packed_bytes<block_q4_1>,
              l_pack_panel<block_q4_1>,
              packed_panel<block_q4_1, false>,
              true};
    case GgmlType::Q5_0:
      return {ActFormat::Q8_act,
              l_gemm_panel<block_q5_0>,
              isa,
              small_panel<block_q5_0, false>,
              true,
              l_packed_bytes<block_q5_0>,
              l_pack_panel<block_q5_0>,
              packed_panel<block_q5_0, false>,
              true};
    case GgmlType::Q5_1:
      return {ActFormat::Q8_act,
              l_gemm_panel<block_q5_1>,
              isa,
              small_panel<block_q5_1, false>,
              true,
              l_packed_bytes<block_q5_1>,
              l_pack_panel<block_q5_1>,
              packed_panel<block_q5_1, false>,
              true};
    default:
      return {};
  }
}

}  // namespace kiln::kernels

#else  // this build cannot compile the AVX-512 VNNI kernels: matmul keeps the dot kernels

namespace kiln::kernels {
GemmKernel gemm_kernel_avx512(GgmlType) { return {}; }
}  // namespace kiln::kernels

#endif
