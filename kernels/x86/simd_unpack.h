// Helpers shared by the x86 kernel files (avx2_dot.cpp, avx2_dot_precise.cpp, avx512_dot.cpp,
// avx512_gemm.cpp): loads, nibble and Q5 high-bit expansion, the Q4_K scale unpacking, the weight
// bytes of each legacy 32-element block type, and the macro that turns a tile template into a
// DotTileFn.
//
// Include this INSIDE an unnamed namespace, after <immintrin.h> and kernels/blocks.h. Each
// including file is compiled with its own target flags (AVX2, or AVX-512 for the GEMM), so
// these must have internal linkage: an inline function with external linkage would be merged
// across the files by the linker, and an AVX-512 build of it could end up in the AVX2 path
// of a CPU without AVX-512.
#pragma once

inline float half_to_float(half_bits h) { return _cvtsh_ss(h); }
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 16 nibbles -> 32 bytes: the low nibbles (elements 0..15) then the high ones (16..31).
inline __m256i unpack_nibbles_32(const uint8_t* qs) {
  const __m128i q = load128(qs);
  const __m128i low_mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low_mask),
                          _mm_and_si128(q, low_mask));
}

// The 32 bits of a Q5 qh field -> 0x10 in byte j where bit j is set, else 0.
inline __m256i expand_high_bits_32(const uint8_t qh_bytes[4]) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  // Byte j picks qh byte j / 8 (shuffles are per 128-bit lane; every lane holds all of qh).
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(qh)),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i is_set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(is_set, _mm256_set1_epi8(0x10));
}

// The 12 packed scale bytes of a Q4_K/Q5_K block -> 8 scales (bytes 0..7) and 8 mins (bytes
// 8..15), each 6 bits, as get_scale_min_k4 unpacks them. All in vector registers: building
// the words in memory and loading them as one vector stalls on store forwarding (several
// narrow stores feeding one wide load). `packed` must have 4 readable bytes before it (the
// block's d and dmin).
inline __m128i unpack_q4_K_scales_mins(const uint8_t packed[12]) {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed - 4));
  // Words of x: [d dmin, in0, in1, in2].
  const __m128i p = _mm_shuffle_epi32(x, _MM_SHUFFLE(3, 2, 3, 1));  // [in0, in2, in1, in2]
  const __m128i q = _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 2, 1, 1));  // [in0, in0, in1, in1]
  const __m128i k6 = _mm_set1_epi8(0x3f), k4 = _mm_set1_epi8(0x0f), k2 = _mm_set1_epi8(0x03);
  const __m128i low = _mm_and_si128(p, k6);  // words 0 and 2: scales 0..3, mins 0..3
  const __m128i high = _mm_or_si128(         // words 1 and 3: scales 4..7, mins 4..7
      _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)), k4),
      _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(q, 6), k2), 4));
  return _mm_blend_epi32(low, high, 0b1010);
}

// Weight bytes of one legacy block: signed values, or unsigned codes (Q4_1/Q5_1) whose
// min term (m * activation sum) the kernel adds separately.
template <typename Block>
struct Legacy;
template <>
struct Legacy<block_q8_0> {
  static __m256i weights(const block_q8_0& b) { return load256(b.qs); }
  static constexpr bool kUnsigned = false;
};
template <>
struct Legacy<block_q4_0> {
  static __m256i weights(const block_q4_0& b) {
    return _mm256_sub_epi8(unpack_nibbles_32(b.qs), _mm256_set1_epi8(8));
  }
  static constexpr bool kUnsigned = false;
};
template <>
struct Legacy<block_q5_0> {
  static __m256i weights(const block_q5_0& b) {
    const __m256i q = _mm256_or_si256(unpack_nibbles_32(b.qs), expand_high_bits_32(b.qh));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(16));
  }
  static constexpr bool kUnsigned = false;
};
template <>
struct Legacy<block_q4_1> {
  static __m256i weights(const block_q4_1& b) { return unpack_nibbles_32(b.qs); }
  static constexpr bool kUnsigned = true;  // codes 0..15, plus m * s
};
template <>
struct Legacy<block_q5_1> {
  static __m256i weights(const block_q5_1& b) {
    return _mm256_or_si256(unpack_nibbles_32(b.qs), expand_high_bits_32(b.qh));
  }
  static constexpr bool kUnsigned = true;
};

// f(TileSize<N>{}) for N = nt clamped to [kFirst, kMax]: the tile templates take the token
// count as their last template argument so that it is a constant inside.
template <int N>
struct TileSize {
  static constexpr int value = N;
};
template <int kFirst, int kMax, typename F>
inline void with_tile_size(int nt, F&& f) {
  if constexpr (kFirst < kMax) {
    if (nt <= kFirst) return f(TileSize<kFirst>{});
    return with_tile_size<kFirst + 1, kMax>(nt, f);
  } else {
    return f(TileSize<kMax>{});
  }
}

// Defines NAME, a DotTileFn running TEMPLATE<ARGS..., NT> for the runtime nt (1..MAX).
#define KILN_TILE_DISPATCH_UPTO(MAX, NAME, TEMPLATE, ...)                                 \
  void NAME(size_t cols, const std::byte* w, const std::byte* act, size_t stride, int nt, \
            float* out) {                                                                 \
    with_tile_size<1, MAX>(nt, [&](auto n) {                                              \
      TEMPLATE<__VA_ARGS__ __VA_OPT__(, ) decltype(n)::value>(cols, w, act, stride, out); \
    });                                                                                   \
  }
// 4 tokens a call for the AVX2 kernels (16 registers), 8 for the AVX-512 ones (32).
#define KILN_TILE_DISPATCH(NAME, TEMPLATE, ...) \
  KILN_TILE_DISPATCH_UPTO(4, NAME, TEMPLATE __VA_OPT__(, ) __VA_ARGS__)
#define KILN_TILE_DISPATCH_8(NAME, TEMPLATE, ...) \
  KILN_TILE_DISPATCH_UPTO(8, NAME, TEMPLATE __VA_OPT__(, ) __VA_ARGS__)
