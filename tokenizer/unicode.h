// UTF-8 and byte-level helpers shared by the tokenizers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::unicode {

// Appends the UTF-8 encoding of `cp` (any value up to 0x10FFFF, surrogates
// included, so text that went through a lenient decoder re-encodes byte-exact).
void append_utf8(std::string& out, uint32_t cp);

// Bytes in the sequence announced by a lead byte, by its top four bits
// (1 for ASCII and for stray continuation bytes, 2, 3 or 4 otherwise).
inline size_t utf8_sequence_length(unsigned char lead) {
  static constexpr uint8_t kLength[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLength[lead >> 4];
}

// Decodes text the way llama.cpp does before pre-tokenizing and re-encodes it:
// a byte that does not start a well-formed sequence (lone continuation byte,
// truncated sequence, 0xF8..0xFF) becomes U+FFFD; overlong forms decode to
// their value; code points above U+10FFFF become U+FFFD. Byte-level BPE runs on
// the result, which keeps our ids equal to llama.cpp's on invalid input. The
// result is valid UTF-8 except that encoded surrogates (ED A0..BF xx) pass
// through, as in llama.cpp; PreTokenizer::split keeps them from the regexes.
std::string sanitize_utf8(std::string_view text);

// True when `text` is well-formed UTF-8 (RFC 3629: no overlongs, surrogates
// or values above U+10FFFF).
bool is_valid_utf8(std::string_view text);

// Replaces every ill-formed sequence of `text` with U+FFFD (one per maximal
// ill-formed prefix), so the result is always valid UTF-8.
std::string replace_invalid_utf8(std::string_view text);

// Length of the longest prefix of `text` that does not end inside a sequence
// that could still be completed by more bytes.
size_t complete_prefix_length(std::string_view text);

// GPT-2 byte-level mapping: every byte gets a printable code point; bytes that
// are printable Latin-1 map to themselves, the others to U+0100 and up.
struct ByteLevelMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8{};
  std::array<int16_t, 324> cp_to_byte{};  // -1 where the code point is no byte's image

  static const ByteLevelMap& get();
};

// Maps byte-level text (a vocab piece) back to raw bytes. Code points that are
// no byte's image are copied through as UTF-8.
std::string byte_level_decode(std::string_view piece);
// Maps raw bytes to byte-level text (a vocab piece spelling).
std::string byte_level_encode(std::string_view bytes);

}  // namespace kiln::unicode
