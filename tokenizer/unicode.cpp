#include "tokenizer/unicode.h"

#include <algorithm>

namespace kiln::unicode {

namespace {

constexpr uint32_t kReplacement = 0xFFFD;

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Strict UTF-8: the byte range allowed right after `lead` (RFC 3629 table 3-7).
struct SecondByteRange {
  unsigned char lo, hi;
};
SecondByteRange second_byte_range(unsigned char lead) {
  switch (lead) {
    case 0xE0:
      return {0xA0, 0xBF};
    case 0xED:
      return {0x80, 0x9F};
    case 0xF0:
      return {0x90, 0xBF};
    case 0xF4:
      return {0x80, 0x8F};
    default:
      return {0x80, 0xBF};
  }
}

// Expected length of a strictly valid sequence starting with `lead`, 0 if the
// byte can never start one.
size_t strict_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Bytes of the maximal prefix at `text[i]` that is a (possibly incomplete)
// strictly valid sequence, and whether it is complete.
struct StrictScan {
  size_t length;
  bool complete;
};
StrictScan strict_scan(std::string_view text, size_t i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  const size_t need = strict_length(lead);
  if (need == 0) return {1, false};
  if (need == 1) return {1, true};
  size_t n = 1;
  while (n < need && i + n < text.size()) {
    const auto c = static_cast<unsigned char>(text[i + n]);
    if (n == 1) {
      const auto range = second_byte_range(lead);
      if (c < range.lo || c > range.hi) break;
    } else if (!is_continuation(c)) {
      break;
    }
    ++n;
  }
  return {n, n == need};
}

}  // namespace

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string sanitize_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    if (b0 < 0x80) {
      out.push_back(static_cast<char>(b0));
      ++i;
      continue;
    }
    // The lenient decoder: the lead byte's high bits give the length, each
    // following byte must be a continuation byte; nothing else is checked.
    size_t len = 0;
    uint32_t cp = 0;
    if ((b0 & 0x40) == 0) {
      len = 0;  // stray continuation byte
    } else if ((b0 & 0x20) == 0) {
      len = 2;
      cp = b0 & 0x1F;
    } else if ((b0 & 0x10) == 0) {
      len = 3;
      cp = b0 & 0x0F;
    } else if ((b0 & 0x08) == 0) {
      len = 4;
      cp = b0 & 0x07;
    }
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      if (!is_continuation(c)) {
        ok = false;
      } else {
        cp = (cp << 6) | (c & 0x3F);
      }
    }
    if (!ok || cp > 0x10FFFF) {
      append_utf8(out, kReplacement);
      ++i;
      continue;
    }
    append_utf8(out, cp);
    i += len;
  }
  return out;
}

bool is_valid_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const StrictScan s = strict_scan(text, i);
    if (!s.complete) return false;
    i += s.length;
  }
  return true;
}

std::string replace_invalid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const StrictScan s = strict_scan(text, i);
    if (s.complete) {
      out.append(text.substr(i, s.length));
    } else {
      append_utf8(out, kReplacement);
    }
    i += s.length;
  }
  return out;
}

size_t complete_prefix_length(std::string_view text) {
  const size_t n = text.size();
  // An incomplete sequence is at most 3 bytes long: look for its lead byte.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t i = n - back;
    const auto c = static_cast<unsigned char>(text[i]);
    if (is_continuation(c)) continue;
    const StrictScan s = strict_scan(text, i);
    // Incomplete and cut only by the end of the text: wait for more bytes.
    if (!s.complete && strict_length(c) > 1 && i + s.length == n) return i;
    return n;
  }
  return n;
}

const ByteLevelMap& ByteLevelMap::get() {
  static const ByteLevelMap map = [] {
    ByteLevelMap m;
    m.cp_to_byte.fill(-1);
    auto printable = [](int b) {
      return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : 256u + next++;
      m.byte_to_cp[b] = cp;
      append_utf8(m.byte_to_utf8[b], cp);
      m.cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return map;
}

std::string byte_level_decode(std::string_view piece) {
  const ByteLevelMap& map = ByteLevelMap::get();
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    const auto b0 = static_cast<unsigned char>(piece[i]);
    const size_t len = std::min(utf8_sequence_length(b0), piece.size() - i);
    uint32_t cp = b0;
    if (len == 2) cp = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(piece[i + 1]) & 0x3Fu);
    if (len == 1 || len == 2) {
      if (cp < map.cp_to_byte.size() && map.cp_to_byte[cp] >= 0) {
        out.push_back(static_cast<char>(map.cp_to_byte[cp]));
        i += len;
        continue;
      }
    }
    out.append(piece.substr(i, len));
    i += len;
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  const ByteLevelMap& map = ByteLevelMap::get();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += map.byte_to_utf8[static_cast<unsigned char>(c)];
  return out;
}

}  // namespace kiln::unicode
