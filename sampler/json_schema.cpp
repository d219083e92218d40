#include "sampler/json_schema.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "sampler/json_text.h"

namespace kiln {

using ojson = nlohmann::ordered_json;
using Seq = Grammar::Sequence;

UnsupportedSchema::UnsupportedSchema(std::string keyword, std::string path,
                                     const std::string& detail)
    : std::invalid_argument("unsupported JSON Schema keyword '" + keyword + "' at " + path +
                            (detail.empty() ? std::string() : ": " + detail)),
      keyword_(std::move(keyword)),
      path_(std::move(path)) {}

namespace {

constexpr uint32_t kMaxCodepoint = 0x10FFFF;

// Sorted, merged, inclusive code point ranges.
using CodepointRanges = std::vector<std::pair<uint32_t, uint32_t>>;

CodepointRanges normalize(CodepointRanges r) {
  std::sort(r.begin(), r.end());
  CodepointRanges out;
  for (const auto& [lo, hi] : r) {
    if (!out.empty() && lo <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, hi);
    } else {
      out.push_back({lo, hi});
    }
  }
  return out;
}

CodepointRanges complement(const CodepointRanges& r) {
  CodepointRanges out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : r) {
    if (lo > next) out.push_back({next, lo - 1});
    next = hi + 1;
  }
  if (next <= kMaxCodepoint) out.push_back({next, kMaxCodepoint});
  return out;
}

CodepointRanges subtract(const CodepointRanges& a, const CodepointRanges& b) {
  // a minus b = a intersect complement(b)
  CodepointRanges cb = complement(normalize(b));
  CodepointRanges out;
  for (const auto& [alo, ahi] : a) {
    for (const auto& [blo, bhi] : cb) {
      uint32_t lo = std::max(alo, blo), hi = std::min(ahi, bhi);
      if (lo <= hi) out.push_back({lo, hi});
    }
  }
  return normalize(out);
}

int utf8_encode(uint32_t cp, uint8_t out[4]) {
  if (cp < 0x80) {
    out[0] = static_cast<uint8_t>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<uint8_t>(0xC0 | (cp >> 6));
    out[1] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<uint8_t>(0xE0 | (cp >> 12));
    out[1] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<uint8_t>(0xF0 | (cp >> 18));
  out[1] = static_cast<uint8_t>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
  return 4;
}

std::string utf8_string(uint32_t cp) {
  uint8_t b[4];
  int n = utf8_encode(cp, b);
  return std::string(reinterpret_cast<const char*>(b), static_cast<size_t>(n));
}

// Splits [lo, hi] (no surrogates) into sequences of byte ranges whose
// product is exactly the UTF-8 encodings of the range (the standard
// construction: split at encoding-length boundaries, then wherever a
// continuation byte would not span its full 80-BF range).
void utf8_byte_ranges(uint32_t lo, uint32_t hi,
                      std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  static constexpr uint32_t kLengthMax[] = {0x7F, 0x7FF, 0xFFFF};
  for (uint32_t m : kLengthMax) {
    if (lo <= m && hi > m) {
      utf8_byte_ranges(lo, m, out);
      utf8_byte_ranges(m + 1, hi, out);
      return;
    }
  }
  if (hi < 0x80) {
    out.push_back({{static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)}});
    return;
  }
  for (int i = 1; i < 4; ++i) {
    uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_byte_ranges(lo, lo | m, out);
        utf8_byte_ranges((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_byte_ranges(lo, (hi & ~m) - 1, out);
        utf8_byte_ranges(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  int n = utf8_encode(lo, a);
  utf8_encode(hi, b);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int i = 0; i < n; ++i) seq.push_back({a[i], b[i]});
  out.push_back(std::move(seq));
}

// The escaped JSON form we emit for a code point that cannot appear raw.
std::string json_escape_codepoint(uint32_t cp) {
  switch (cp) {
    case '"':
      return "\\\"";
    case '\\':
      return "\\\\";
    case '\b':
      return "\\b";
    case '\f':
      return "\\f";
    case '\n':
      return "\\n";
    case '\r':
      return "\\r";
    case '\t':
      return "\\t";
    default: {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      return buf;
    }
  }
}

bool needs_json_escape(uint32_t cp) { return cp < 0x20 || cp == '"' || cp == '\\'; }

// ---------------------------------------------------------------------------
// Regular expressions (the `pattern` subset), parsed to a small AST over code
// points, then compiled to grammar rules whose bytes are the JSON-string
// encoding of the matched text.

struct Regex {
  enum class Kind { kEmpty, kClass, kConcat, kAlt, kRepeat } kind = Kind::kEmpty;
  CodepointRanges ranges;    // kClass
  std::vector<Regex> items;  // kConcat, kAlt, kRepeat (one item)
  int min = 0, max = -1;     // kRepeat; max -1 = unbounded

  bool nullable() const {
    switch (kind) {
      case Kind::kEmpty:
        return true;
      case Kind::kClass:
        return false;
      case Kind::kConcat:
        return std::all_of(items.begin(), items.end(), [](const Regex& r) { return r.nullable(); });
      case Kind::kAlt:
        return std::any_of(items.begin(), items.end(), [](const Regex& r) { return r.nullable(); });
      case Kind::kRepeat:
        return min == 0 || items[0].nullable();
    }
    return false;
  }
  static Regex cls(CodepointRanges r) {
    Regex x;
    x.kind = Kind::kClass;
    x.ranges = normalize(std::move(r));
    return x;
  }
  static Regex any_text() {
    Regex x;
    x.kind = Kind::kRepeat;
    x.items.push_back(cls({{0, kMaxCodepoint}}));
    return x;
  }
};

const CodepointRanges kDigit = {{'0', '9'}};
const CodepointRanges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const CodepointRanges kSpace = {{'\t', '\r'}, {' ', ' '}};

class RegexParser {
 public:
  RegexParser(std::string_view text, std::string path) : s_(text), path_(std::move(path)) {}

  Regex parse() {
    Regex top = parse_alternation(/*top_level=*/true);
    if (pos_ != s_.size()) fail("unbalanced ')'");
    return top;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw UnsupportedSchema(
        "pattern", path_,
        what + " at offset " + std::to_string(pos_) + " of /" + std::string(s_) + "/");
  }
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return s_[pos_]; }

  Regex parse_alternation(bool top_level) {
    std::vector<Regex> alts;
    for (;;) {
      alts.push_back(parse_concat(top_level));
      if (!at_end() && peek() == '|') {
        ++pos_;
        continue;
      }
      break;
    }
    if (alts.size() == 1) return std::move(alts[0]);
    Regex r;
    r.kind = Regex::Kind::kAlt;
    r.items = std::move(alts);
    return r;
  }

  Regex parse_concat(bool top_level) {
    Regex r;
    r.kind = Regex::Kind::kConcat;
    bool anchored_start = false, anchored_end = false;
    if (top_level && !at_end() && peek() == '^') {
      anchored_start = true;
      ++pos_;
    }
    while (!at_end() && peek() != '|' && peek() != ')') {
      if (peek() == '$') {
        ++pos_;
        if (top_level && (at_end() || peek() == '|')) {
          anchored_end = true;
          break;
        }
        fail("'$' is only supported at the end of the pattern");
      }
      if (peek() == '^') fail("'^' is only supported at the start of the pattern");
      Regex atom = parse_atom();
      r.items.push_back(parse_quantifier(std::move(atom)));
    }
    if (top_level) {
      // JSON Schema patterns search: an unanchored side allows any text.
      if (!anchored_start) r.items.insert(r.items.begin(), Regex::any_text());
      if (!anchored_end) r.items.push_back(Regex::any_text());
    }
    return r;
  }

  int parse_number() {
    if (at_end() || peek() < '0' || peek() > '9') fail("expected a number in {}");
    long v = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + (peek() - '0');
      if (v > Grammar::kMaxRepeat)
        fail("repetition count above " + std::to_string(Grammar::kMaxRepeat));
      ++pos_;
    }
    return static_cast<int>(v);
  }

  Regex parse_quantifier(Regex atom) {
    if (at_end()) return atom;
    int min = 0, max = -1;
    char c = peek();
    if (c == '?') {
      max = 1;
    } else if (c == '*') {
    } else if (c == '+') {
      min = 1;
    } else if (c == '{') {
      size_t save = pos_;
      ++pos_;
      if (at_end() || peek() < '0' || peek() > '9') {
        pos_ = save;  // a literal '{' (as ECMA's Annex B allows)
        return atom;
      }
      min = parse_number();
      if (!at_end() && peek() == ',') {
        ++pos_;
        max = (!at_end() && peek() == '}') ? -1 : parse_number();
      } else {
        max = min;
      }
      if (at_end() || peek() != '}') fail("expected '}'");
      if (max >= 0 && max < min) fail("{n,m} with m < n");
    } else {
      return atom;
    }
    ++pos_;
    if (!at_end() && peek() == '?') ++pos_;  // lazy: same language
    if (!at_end() && (peek() == '*' || peek() == '+' || peek() == '?' || peek() == '{')) {
      fail("possessive or stacked quantifiers");
    }
    if (max < 0 && atom.nullable()) fail("unbounded repetition of something that can be empty");
    Regex r;
    r.kind = Regex::Kind::kRepeat;
    r.min = min;
    r.max = max;
    r.items.push_back(std::move(atom));
    return r;
  }

  uint32_t parse_utf8_char() {
    auto b0 = static_cast<uint8_t>(s_[pos_]);
    int n = b0 < 0x80 ? 1 : b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : b0 >= 0xC0 ? 2 : 0;
    if (n == 0 || pos_ + n > s_.size()) fail("invalid UTF-8");
    uint32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
    for (int i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<uint8_t>(s_[pos_ + i]) & 0x3F);
    pos_ += n;
    return cp;
  }

  uint32_t parse_hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (at_end() || !std::isxdigit(static_cast<unsigned char>(peek()))) fail("bad hex escape");
      char c = peek();
      v = v * 16 + static_cast<uint32_t>(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
      ++pos_;
    }
    return v;
  }

  // After a backslash: a class (\d ...) or one code point.
  CodepointRanges parse_escape(bool in_class) {
    if (at_end()) fail("trailing backslash");
    char c = peek();
    ++pos_;
    switch (c) {
      case 'd':
        return kDigit;
      case 'D':
        return complement(kDigit);
      case 'w':
        return kWord;
      case 'W':
        return complement(kWord);
      case 's':
        return kSpace;
      case 'S':
        return complement(kSpace);
      case 'n':
        return {{'\n', '\n'}};
      case 't':
        return {{'\t', '\t'}};
      case 'r':
        return {{'\r', '\r'}};
      case 'f':
        return {{'\f', '\f'}};
      case 'v':
        return {{'\v', '\v'}};
      case '0':
        return {{0, 0}};
      case 'x': {
        uint32_t v = parse_hex(2);
        return {{v, v}};
      }
      case 'u': {
        uint32_t v = parse_hex(4);
        if (v >= 0xD800 && v <= 0xDFFF) fail("surrogate \\u escapes");
        return {{v, v}};
      }
      case 'b':
        if (in_class) return {{'\b', '\b'}};
        fail("word boundaries (\\b)");
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
          fail(std::string("escape \\") + c);
        }
        --pos_;
        {
          uint32_t cp = parse_utf8_char();
          return {{cp, cp}};
        }
    }
  }

  Regex parse_class() {
    // At the character after '['.
    bool negate = false;
    if (!at_end() && peek() == '^') {
      negate = true;
      ++pos_;
    }
    CodepointRanges ranges;
    bool first = true;
    for (;;) {
      if (at_end()) fail("unterminated character class");
      if (peek() == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      CodepointRanges item;
      if (peek() == '\\') {
        ++pos_;
        item = parse_escape(true);
      } else {
        if (peek() == '[' && pos_ + 1 < s_.size() && s_[pos_ + 1] == ':') fail("POSIX classes");
        uint32_t cp = parse_utf8_char();
        item = {{cp, cp}};
      }
      // A range a-b (a '-' before ']' is a literal).
      if (item.size() == 1 && item[0].first == item[0].second && pos_ + 1 < s_.size() &&
          peek() == '-' && s_[pos_ + 1] != ']') {
        ++pos_;
        CodepointRanges hi_item;
        if (peek() == '\\') {
          ++pos_;
          hi_item = parse_escape(true);
        } else {
          uint32_t cp = parse_utf8_char();
          hi_item = {{cp, cp}};
        }
        if (hi_item.size() != 1 || hi_item[0].first != hi_item[0].second) {
          fail("class shorthand as a range end");
        }
        if (hi_item[0].first < item[0].first) fail("range out of order");
        item = {{item[0].first, hi_item[0].first}};
      }
      ranges.insert(ranges.end(), item.begin(), item.end());
    }
    ranges = normalize(ranges);
    return Regex::cls(negate ? complement(ranges) : ranges);
  }

  Regex parse_atom() {
    char c = peek();
    if (c == '(') {
      ++pos_;
      if (!at_end() && peek() == '?') {
        if (pos_ + 1 < s_.size() && s_[pos_ + 1] == ':') {
          pos_ += 2;
        } else {
          fail("group modifiers other than (?:...) (lookaround, named groups, flags)");
        }
      }
      Regex inner = parse_alternation(false);
      if (at_end() || peek() != ')') fail("missing ')'");
      ++pos_;
      return inner;
    }
    if (c == '[') {
      ++pos_;
      return parse_class();
    }
    if (c == '.') {
      ++pos_;
      return Regex::cls(complement({{'\n', '\n'}}));
    }
    if (c == '\\') {
      ++pos_;
      return Regex::cls(parse_escape(false));
    }
    if (c == '*' || c == '+' || c == '?') fail("quantifier without an operand");
    uint32_t cp = parse_utf8_char();
    return Regex::cls({{cp, cp}});
  }

  std::string_view s_;
  std::string path_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------
// The compiler.

bool is_annotation(std::string_view k) {
  static const std::set<std::string_view> kAnnotations = {
      "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated",
      "readOnly", "writeOnly",
      // OpenAPI's hint naming the property that tells oneOf branches apart
      // (pydantic writes it); validators ignore it, and the branches' own
      // const values carry the constraint.
      "discriminator"};
  return kAnnotations.contains(k);
}

bool is_supported(std::string_view k) {
  static const std::set<std::string_view> kSupported = {"type",
                                                        "enum",
                                                        "const",
                                                        "anyOf",
                                                        "oneOf",
                                                        "allOf",
                                                        "$ref",
                                                        "$defs",
                                                        "definitions",
                                                        "properties",
                                                        "required",
                                                        "additionalProperties",
                                                        "items",
                                                        "prefixItems",
                                                        "additionalItems",
                                                        "minItems",
                                                        "maxItems",
                                                        "minLength",
                                                        "minimum",
                                                        "maximum",
                                                        "exclusiveMinimum",
                                                        "exclusiveMaximum",
                                                        "maxLength",
                                                        "pattern",
                                                        "format"};
  return kSupported.contains(k);
}

std::string pointer_escape(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

class SchemaCompiler {
 public:
  SchemaCompiler(const ojson& root, const JsonGrammarOptions& options)
      : root_(root), options_(options) {
    g_ = std::make_shared<Grammar>();
  }

  std::shared_ptr<const Grammar> compile_root() {
    GrammarElement e = compile(root_, "#");
    finish(e);
    if (!g_->prune_dead_alternatives()) {
      // enum [], false, minLength > maxLength, minimum > maximum, ...: a request with
      // this schema could never finish; say so now rather than fail mid-generation.
      throw UnsatisfiableSchema();
    }
    try {
      g_->validate();
    } catch (const std::invalid_argument& err) {
      throw UnsupportedSchema(
          "$ref", "#",
          std::string("a recursive reference that makes no progress (") + err.what() + ")");
    }
    return g_;
  }

  std::shared_ptr<const Grammar> any_object() {
    finish(generic_object());
    g_->validate();
    return g_;
  }
  std::shared_ptr<const Grammar> any_value() {
    finish(generic_value());
    g_->validate();
    return g_;
  }

 private:
  void finish(GrammarElement e) {
    int32_t root = g_->add_rule("root");
    g_->add_alternative(root, {e});
    g_->set_root(root);
  }

  // --- shared building blocks ------------------------------------------------

  GrammarElement ws() {
    if (ws_ < 0) {
      ws_ = g_->add_rule("ws");
      GrammarElement indent_char = g_->bytes([] {
        ByteSet s;
        s.add(' ');
        s.add('\t');
        return s;
      }());
      g_->add_alternative(ws_, {});
      g_->add_alternative(ws_, {g_->byte(' ')});
      g_->add_alternative(ws_, {g_->byte('\n'), g_->repeat(indent_char, 0, options_.max_indent)});
    }
    return Grammar::ref(ws_);
  }

  GrammarElement empty() {
    if (empty_ < 0) {
      empty_ = g_->add_rule("empty");
      g_->add_alternative(empty_, {});
    }
    return Grammar::ref(empty_);
  }

  GrammarElement nothing() {
    if (nothing_ < 0) nothing_ = g_->add_rule("nothing");  // no alternatives
    return Grammar::ref(nothing_);
  }

  void append_literal(Seq& seq, std::string_view text) {
    for (char c : text) seq.push_back(g_->byte(static_cast<uint8_t>(c)));
  }

  // A rule matching the raw UTF-8 of the given code points (surrogates
  // dropped), plus the escaped forms of those that need escaping in JSON when
  // `escape` is set (otherwise those are dropped too).
  GrammarElement codepoint_class(const CodepointRanges& ranges_in, bool escape) {
    CodepointRanges ranges = subtract(normalize(ranges_in), {{0xD800, 0xDFFF}});
    std::string key;
    for (const auto& [lo, hi] : ranges) key += std::to_string(lo) + "-" + std::to_string(hi) + ",";
    key += escape ? "e" : "r";
    if (auto it = class_cache_.find(key); it != class_cache_.end()) return Grammar::ref(it->second);
    int32_t rule = g_->add_rule("class");
    class_cache_[key] = rule;
    CodepointRanges escaped_cps = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
    CodepointRanges raw = subtract(ranges, escaped_cps);
    std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
    for (const auto& [lo, hi] : raw) utf8_byte_ranges(lo, hi, seqs);
    // Merge single-byte sequences into one byte set (fewer stacks).
    ByteSet single;
    for (const auto& s : seqs) {
      if (s.size() == 1) {
        single.add_range(s[0].first, s[0].second);
      } else {
        Seq seq;
        for (const auto& [a, b] : s) seq.push_back(g_->bytes(ByteSet::range(a, b)));
        g_->add_alternative(rule, std::move(seq));
      }
    }
    if (!single.empty()) g_->add_alternative(rule, {g_->bytes(single)});
    if (escape) {
      for (const auto& [lo, hi] : ranges) {
        for (const auto& [elo, ehi] : escaped_cps) {
          for (uint32_t cp = std::max(lo, elo); cp <= std::min(hi, ehi); ++cp) {
            Seq seq;
            append_literal(seq, json_escape_codepoint(cp));
            g_->add_alternative(rule, std::move(seq));
          }
        }
      }
    }
    return Grammar::ref(rule);
  }

  GrammarElement hex_digit() {
    ByteSet s;
    s.add_range('0', '9');
    s.add_range('a', 'f');
    s.add_range('A', 'F');
    return g_->bytes(s);
  }

  // One character of a JSON string: raw UTF-8 or any escape.
  GrammarElement string_char() {
    if (string_char_ >= 0) return Grammar::ref(string_char_);
    string_char_ = g_->add_rule("char");
    g_->add_alternative(string_char_, {codepoint_class({{0x20, kMaxCodepoint}}, false)});
    GrammarElement hex = hex_digit();
    auto set_of = [&](std::string_view chars) {
      ByteSet s;
      for (char c : chars) s.add(static_cast<uint8_t>(c));
      return g_->bytes(s);
    };
    // \uXXXX outside the surrogates; a high surrogate only followed by a low.
    GrammarElement non_surrogate =
        g_->choice({g_->sequence({set_of("0123456789abcABCefEF"), hex, hex, hex}),
                    g_->sequence({set_of("dD"), set_of("01234567"), hex, hex})});
    GrammarElement high = g_->sequence({set_of("dD"), set_of("89abAB"), hex, hex});
    GrammarElement low = g_->sequence({set_of("dD"), set_of("cdefCDEF"), hex, hex});
    GrammarElement escape_tail =
        g_->choice({set_of("\"\\/bfnrt"), g_->sequence({g_->byte('u'), non_surrogate}),
                    g_->sequence({g_->byte('u'), high, g_->byte('\\'), g_->byte('u'), low})});
    g_->add_alternative(string_char_, {g_->byte('\\'), escape_tail});
    return Grammar::ref(string_char_);
  }

  GrammarElement generic_string() {
    if (string_ < 0) {
      string_ = g_->add_rule("string");
      g_->add_alternative(string_, {g_->byte('"'), g_->star(string_char()), g_->byte('"')});
    }
    return Grammar::ref(string_);
  }

  // Everything after the opening quote of a generic string.
  GrammarElement string_rest() {
    if (string_rest_ < 0) {
      string_rest_ = g_->add_rule("string_rest");
      g_->add_alternative(string_rest_, {g_->star(string_char()), g_->byte('"')});
    }
    return Grammar::ref(string_rest_);
  }

  GrammarElement digits(int min) {
    return g_->repeat(g_->bytes(ByteSet::range('0', '9')), min, -1);
  }

  GrammarElement integer_part() {
    if (int_part_ < 0) {
      int_part_ = g_->add_rule("int");
      g_->add_alternative(int_part_, {g_->optional(g_->byte('-')), g_->byte('0')});
      g_->add_alternative(
          int_part_, {g_->optional(g_->byte('-')), g_->bytes(ByteSet::range('1', '9')), digits(0)});
    }
    return Grammar::ref(int_part_);
  }

  GrammarElement generic_number() {
    if (number_ < 0) {
      number_ = g_->add_rule("number");
      GrammarElement frac = g_->optional(g_->sequence({g_->byte('.'), digits(1)}));
      ByteSet e;
      e.add('e');
      e.add('E');
      ByteSet sign;
      sign.add('+');
      sign.add('-');
      GrammarElement exp =
          g_->optional(g_->sequence({g_->bytes(e), g_->optional(g_->bytes(sign)), digits(1)}));
      g_->add_alternative(number_, {integer_part(), frac, exp});
    }
    return Grammar::ref(number_);
  }

  GrammarElement generic_value() {
    if (value_ >= 0) return Grammar::ref(value_);
    value_ = g_->add_rule("value");
    g_->add_alternative(value_, {generic_object()});
    g_->add_alternative(value_, {generic_array()});
    g_->add_alternative(value_, {generic_string()});
    g_->add_alternative(value_, {generic_number()});
    g_->add_alternative(value_, {g_->literal("true")});
    g_->add_alternative(value_, {g_->literal("false")});
    g_->add_alternative(value_, {g_->literal("null")});
    return Grammar::ref(value_);
  }

  GrammarElement generic_object() {
    if (object_ >= 0) return Grammar::ref(object_);
    object_ = g_->add_rule("object");
    GrammarElement member =
        g_->sequence({generic_string(), ws(), g_->byte(':'), ws(), generic_value()});
    GrammarElement more = g_->star(g_->sequence({ws(), g_->byte(','), ws(), member}));
    g_->add_alternative(object_, {g_->byte('{'), ws(), g_->optional(g_->sequence({member, more})),
                                  ws(), g_->byte('}')});
    return Grammar::ref(object_);
  }

  GrammarElement generic_array() {
    if (array_ >= 0) return Grammar::ref(array_);
    array_ = g_->add_rule("array");
    GrammarElement more = g_->star(g_->sequence({ws(), g_->byte(','), ws(), generic_value()}));
    g_->add_alternative(
        array_, {g_->byte('['), ws(), g_->optional(g_->sequence({generic_value(), more})), ws(),
                 g_->byte(']')});
    return Grammar::ref(array_);
  }

  // --- regex and formats ------------------------------------------------------

  GrammarElement compile_regex(const Regex& r) {
    switch (r.kind) {
      case Regex::Kind::kEmpty:
        return empty();
      case Regex::Kind::kClass:
        return codepoint_class(r.ranges, true);
      case Regex::Kind::kConcat: {
        if (r.items.size() == 1) return compile_regex(r.items[0]);
        Seq seq;
        for (const auto& item : r.items) seq.push_back(compile_regex(item));
        return g_->sequence(std::move(seq));
      }
      case Regex::Kind::kAlt: {
        std::vector<GrammarElement> alts;
        for (const auto& item : r.items) alts.push_back(compile_regex(item));
        return g_->choice(alts);
      }
      case Regex::Kind::kRepeat:
        return g_->repeat(compile_regex(r.items[0]), r.min, r.max);
    }
    return nothing();
  }

  GrammarElement pattern_string(std::string_view pattern, const std::string& path) {
    Regex r = RegexParser(pattern, path).parse();
    return g_->sequence({g_->byte('"'), compile_regex(r), g_->byte('"')});
  }

  GrammarElement format_string(const std::string& format, const std::string& path) {
    static const std::string kYear = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])";
    static const std::string kDate =
        "(?:(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
        "-02-29|" +
        kYear +
        "-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
        "|02-(?:0[1-9]|1[0-9]|2[0-8])))";
    static const std::string kTime =
        "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?"
        "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
    std::string pattern;
    if (format == "date") {
      pattern = "^" + kDate + "$";
    } else if (format == "time") {
      pattern = "^" + kTime + "$";
    } else if (format == "date-time") {
      pattern = "^" + kDate + "T" + kTime + "$";
    } else if (format == "uuid") {
      pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
    } else if (format == "email") {
      // A conservative subset of addresses (ASCII local part, dotted domain).
      pattern = "^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\\.[A-Za-z0-9-]{1,63}){1,8}$";
    } else if (format == "ipv4") {
      static const std::string kOctet = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
      pattern = "^" + kOctet + "(?:\\." + kOctet + "){3}$";
    } else {
      throw UnsupportedSchema(
          "format", path,
          "format '" + format + "' (supported: date, time, date-time, uuid, email, ipv4)");
    }
    return pattern_string(pattern, path);
  }

  // --- schema ---------------------------------------------------------------

  static std::string child(const std::string& path, const std::string& key) {
    return path + "/" + pointer_escape(key);
  }

  int get_count(const ojson& s, const char* key, const std::string& path) {
    const ojson& v = s.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      throw UnsupportedSchema(key, child(path, key), "must be a non-negative integer");
    }
    int64_t n = v.get<int64_t>();
    if (n > Grammar::kMaxRepeat) {
      throw UnsupportedSchema(key, child(path, key),
                              "values above " + std::to_string(Grammar::kMaxRepeat));
    }
    return static_cast<int>(n);
  }

  GrammarElement ref_rule(const std::string& ref, const std::string& path) {
    if (auto it = ref_rules_.find(ref); it != ref_rules_.end()) return Grammar::ref(it->second);
    if (ref.empty() || ref[0] != '#') {
      throw UnsupportedSchema("$ref", path, "only local references ('#...') are supported");
    }
    const ojson* target = nullptr;
    try {
      target = &root_.at(ojson::json_pointer(ref.substr(1)));
    } catch (const std::exception&) {
      throw UnsupportedSchema("$ref", path, "'" + ref + "' does not resolve in this schema");
    }
    int32_t rule = g_->add_rule("ref:" + ref);
    ref_rules_[ref] = rule;
    GrammarElement body = compile(*target, ref);
    g_->add_alternative(rule, {body});
    return Grammar::ref(rule);
  }

  static bool value_has_type(const ojson& v, const std::string& type) {
    if (type == "null") return v.is_null();
    if (type == "boolean") return v.is_boolean();
    if (type == "object") return v.is_object();
    if (type == "array") return v.is_array();
    if (type == "string") return v.is_string();
    if (type == "number") return v.is_number();
    if (type == "integer") return v.is_number_integer();
    return false;
  }

  std::vector<std::string> types_of(const ojson& s, const std::string& path) {
    std::vector<std::string> types;
    if (!s.contains("type")) return types;
    const ojson& t = s.at("type");
    auto add = [&](const ojson& v) {
      static const std::set<std::string> kTypes = {"object",  "array",   "string", "number",
                                                   "integer", "boolean", "null"};
      if (!v.is_string() || !kTypes.contains(v.get<std::string>())) {
        throw UnsupportedSchema("type", child(path, "type"), "unknown type " + v.dump());
      }
      types.push_back(v.get<std::string>());
    };
    if (t.is_array()) {
      for (const auto& v : t) add(v);
      if (types.empty()) throw UnsupportedSchema("type", child(path, "type"), "empty type list");
    } else {
      add(t);
    }
    return types;
  }

  GrammarElement compile(const ojson& s, const std::string& path) {
    if (s.is_boolean()) return s.get<bool>() ? generic_value() : nothing();
    if (!s.is_object()) {
      throw UnsupportedSchema("", path, "a schema must be an object or a boolean, not " + s.dump());
    }
    std::vector<std::string> assertions;  // supported, non-annotation keywords present
    for (const auto& [k, v] : s.items()) {
      if (is_annotation(k)) continue;
      if (!is_supported(k)) throw UnsupportedSchema(k, child(path, k), "");
      if (k != "$defs" && k != "definitions") assertions.push_back(k);
    }
    auto reject_siblings = [&](const std::string& main, const std::set<std::string>& allowed) {
      for (const auto& k : assertions) {
        if (k != main && !allowed.contains(k)) {
          throw UnsupportedSchema(k, child(path, k), "cannot be combined with '" + main + "'");
        }
      }
    };

    if (s.contains("$ref")) {
      reject_siblings("$ref", {});
      const ojson& ref = s.at("$ref");
      if (!ref.is_string()) throw UnsupportedSchema("$ref", child(path, "$ref"), "not a string");
      return ref_rule(ref.get<std::string>(), child(path, "$ref"));
    }
    if (s.contains("const") || s.contains("enum")) {
      // Both may appear (pydantic writes Literal["a"] as const + enum): the
      // values are those in both.
      const std::string key = s.contains("const") ? "const" : "enum";
      reject_siblings(key, {"type", "const", "enum"});
      if (s.contains("enum") && !s.at("enum").is_array()) {
        throw UnsupportedSchema("enum", child(path, "enum"), "must be an array");
      }
      std::vector<ojson> values;
      if (s.contains("const")) {
        values.push_back(s.at("const"));
      } else {
        for (const auto& v : s.at("enum")) values.push_back(v);
      }
      std::vector<std::string> types = types_of(s, path);
      std::vector<GrammarElement> alts;
      for (const auto& v : values) {
        bool ok = types.empty() || std::any_of(types.begin(), types.end(),
                                               [&](const auto& t) { return value_has_type(v, t); });
        if (s.contains("const") && s.contains("enum")) {
          const auto& e = s.at("enum");
          ok = ok && std::find(e.begin(), e.end(), v) != e.end();
        }
        if (ok) alts.push_back(g_->literal(v.dump()));
      }
      return alts.empty() ? nothing() : g_->choice(alts);
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      reject_siblings(key, {});
      const ojson& list = s.at(key);
      if (!list.is_array() || list.empty()) {
        throw UnsupportedSchema(key, child(path, key), "must be a non-empty array");
      }
      std::vector<GrammarElement> alts;
      for (size_t i = 0; i < list.size(); ++i) {
        alts.push_back(compile(list[i], child(path, key) + "/" + std::to_string(i)));
      }
      if (std::string_view(key) == "oneOf") check_exclusive(list, child(path, key));
      return g_->choice(alts);
    }
    if (s.contains("allOf")) {
      reject_siblings("allOf", {});
      const ojson& list = s.at("allOf");
      if (!list.is_array() || list.size() != 1) {
        throw UnsupportedSchema("allOf", child(path, "allOf"),
                                "only a single subschema is supported");
      }
      return compile(list[0], child(path, "allOf") + "/0");
    }

    std::vector<std::string> types = types_of(s, path);
    if (types.empty()) {
      // No type: infer it from the keywords, or allow any value.
      auto has_any = [&](std::initializer_list<const char*> keys) {
        return std::any_of(keys.begin(), keys.end(), [&](const char* k) { return s.contains(k); });
      };
      if (has_any({"properties", "required", "additionalProperties"})) types.push_back("object");
      if (has_any({"items", "prefixItems", "additionalItems", "minItems", "maxItems"})) {
        types.push_back("array");
      }
      if (has_any({"minLength", "maxLength", "pattern", "format"})) types.push_back("string");
      for (const char* k : kBoundKeywords) {
        if (s.contains(k)) {
          throw UnsupportedSchema(k, child(path, k), "bounds need \"type\": \"integer\"");
        }
      }
      if (types.empty()) return generic_value();
    }
    std::vector<GrammarElement> alts;
    for (const auto& t : types) alts.push_back(compile_typed(s, t, path));
    return alts.size() == 1 ? alts[0] : g_->choice(alts);
  }

  // --- oneOf exclusivity -------------------------------------------------------
  //
  // oneOf compiles to the same choice as anyOf, so it is only sound when no
  // value can match two branches: then whatever branch the output follows, it
  // matches exactly one. We prove that statically, over JSON Schema's own
  // semantics (what a validator accepts, not only what our grammar writes),
  // and reject the schema when we cannot. The proofs, all conservative:
  // - the branches admit no common JSON type (integer counts as number);
  // - one side is a finite set of values (const/enum) and none of them can
  //   validate against the other side;
  // - both can only be objects, and a property required by one has value
  //   schemas that are disjoint in the two (a discriminator such as
  //   "kind": {"const": "a"} vs {"const": "b"}, or a name the other side
  //   forbids with additionalProperties: false).
  // Unions inside a branch are disjoint from the other side when each of
  // their branches is; $ref and single-entry allOf are followed.

  enum TypeBits : unsigned {
    kNullBit = 1,
    kBoolBit = 2,
    kObjectBit = 4,
    kArrayBit = 8,
    kStringBit = 16,
    kNumberBit = 32,
    kAnyTypeBits = 63,
  };
  static constexpr int kMaxProofDepth = 24;
  mutable long proof_budget_ = 0;

  static unsigned type_bit(const ojson& v) {
    if (v.is_null()) return kNullBit;
    if (v.is_boolean()) return kBoolBit;
    if (v.is_object()) return kObjectBit;
    if (v.is_array()) return kArrayBit;
    if (v.is_string()) return kStringBit;
    return kNumberBit;
  }

  static unsigned type_bit(const std::string& t) {
    if (t == "null") return kNullBit;
    if (t == "boolean") return kBoolBit;
    if (t == "object") return kObjectBit;
    if (t == "array") return kArrayBit;
    if (t == "string") return kStringBit;
    return kNumberBit;  // number, integer
  }

  static const ojson& true_schema() {
    static const ojson t = true;
    return t;
  }

  // Follows $ref and single-entry allOf; nullptr when a reference cannot be
  // followed (treated as "could be anything").
  const ojson* unwrap(const ojson& schema) const {
    const ojson* s = &schema;
    for (int hops = 0; hops < kMaxProofDepth; ++hops) {
      if (!s->is_object()) return s;
      if (const auto it = s->find("$ref"); it != s->end()) {
        if (!it->is_string()) return nullptr;
        const std::string ref = it->get<std::string>();
        if (ref.empty() || ref[0] != '#') return nullptr;
        try {
          s = &root_.at(ojson::json_pointer(ref.substr(1)));
        } catch (const std::exception&) {
          return nullptr;
        }
        continue;
      }
      if (const auto it = s->find("allOf"); it != s->end() && it->is_array() && it->size() == 1) {
        s = &(*it)[0];
        continue;
      }
      return s;
    }
    return nullptr;
  }

  // The anyOf/oneOf list of a schema, or nullptr.
  static const ojson* union_of(const ojson& s) {
    for (const char* key : {"anyOf", "oneOf"}) {
      if (const auto it = s.find(key); it != s.end() && it->is_array()) return &*it;
    }
    return nullptr;
  }

  // Over-approximates the JSON types of the values valid under `schema`.
  unsigned types_admitted(const ojson& schema, int depth) const {
    if (!spend()) return kAnyTypeBits;
    const ojson* s = unwrap(schema);
    if (s == nullptr || depth > kMaxProofDepth) return kAnyTypeBits;
    if (s->is_boolean()) return s->get<bool>() ? unsigned{kAnyTypeBits} : 0u;
    if (!s->is_object()) return kAnyTypeBits;
    unsigned bits = kAnyTypeBits;
    if (const auto it = s->find("type"); it != s->end()) {
      unsigned t = 0;
      if (it->is_array()) {
        for (const auto& v : *it) t |= v.is_string() ? type_bit(v.get<std::string>()) : 0;
      } else if (it->is_string()) {
        t = type_bit(it->get<std::string>());
      }
      bits &= t;
    }
    if (const auto it = s->find("const"); it != s->end()) bits &= type_bit(*it);
    if (const auto it = s->find("enum"); it != s->end() && it->is_array()) {
      unsigned t = 0;
      for (const auto& v : *it) t |= type_bit(v);
      bits &= t;
    }
    if (const ojson* list = union_of(*s)) {
      unsigned t = 0;
      for (const auto& branch : *list) t |= types_admitted(branch, depth + 1);
      bits &= t;
    }
    return bits;
  }

  // The finite set of values a const/enum schema allows (a superset when both
  // appear), or nullopt.
  static std::optional<std::vector<const ojson*>> finite_values(const ojson& s) {
    if (!s.is_object()) return std::nullopt;
    if (const auto it = s.find("const"); it != s.end()) return std::vector<const ojson*>{&*it};
    if (const auto it = s.find("enum"); it != s.end() && it->is_array()) {
      std::vector<const ojson*> values;
      for (const auto& v : *it) values.push_back(&v);
      return values;
    }
    return std::nullopt;
  }

  // JSON equality as validators see it: object members in any order, 1 == 1.0.
  static bool json_equal(const ojson& a, const ojson& b) {
    if (a.is_structured() && b.is_structured()) {
      // ordered_json compares members in order; the sorted json does not.
      return nlohmann::json::parse(a.dump()) == nlohmann::json::parse(b.dump());
    }
    return a == b;  // scalars (numbers compare by value across int/float), or a mismatch
  }

  // The schema a member named `name` of an object must satisfy under `s`.
  static const ojson& member_schema(const ojson& s, const std::string& name) {
    if (const auto props = s.find("properties"); props != s.end() && props->is_object()) {
      if (const auto it = props->find(name); it != props->end()) return *it;
    }
    if (const auto extra = s.find("additionalProperties"); extra != s.end()) return *extra;
    return true_schema();
  }

  static std::vector<std::string> required_names(const ojson& s) {
    std::vector<std::string> names;
    if (const auto it = s.find("required"); it != s.end() && it->is_array()) {
      for (const auto& n : *it) {
        if (n.is_string()) names.push_back(n.get<std::string>());
      }
    }
    return names;
  }

  // False only when `value` provably fails `schema`.
  bool may_validate(const ojson& value, const ojson& schema, int depth) const {
    if (!spend()) return true;
    const ojson* s = unwrap(schema);
    if (s == nullptr || depth > kMaxProofDepth) return true;
    if (s->is_boolean()) return s->get<bool>();
    if (!s->is_object()) return true;
    if (!(types_admitted(*s, depth) & type_bit(value))) return false;
    if (auto values = finite_values(*s)) {
      if (std::none_of(values->begin(), values->end(),
                       [&](const ojson* v) { return json_equal(*v, value); })) {
        return false;
      }
    }
    if (const ojson* list = union_of(*s)) {
      return std::any_of(list->begin(), list->end(),
                         [&](const ojson& b) { return may_validate(value, b, depth + 1); });
    }
    if (value.is_object()) {
      for (const auto& name : required_names(*s)) {
        if (!value.contains(name)) return false;
      }
      for (const auto& [name, member] : value.items()) {
        if (!may_validate(member, member_schema(*s, name), depth + 1)) return false;
      }
    }
    return true;
  }

  // True only when no value validates against both schemas.
  bool disjoint(const ojson& a_in, const ojson& b_in, int depth) const {
    if (depth > kMaxProofDepth || !spend()) return false;
    const ojson* a = unwrap(a_in);
    const ojson* b = unwrap(b_in);
    if (a == nullptr || b == nullptr) return false;
    const unsigned ta = types_admitted(*a, depth), tb = types_admitted(*b, depth);
    if ((ta & tb) == 0) return true;
    if (!a->is_object() || !b->is_object()) return false;  // `true` against something
    for (const auto& [x, y] : {std::pair{a, b}, std::pair{b, a}}) {
      if (const ojson* list = union_of(*x)) {
        return std::all_of(list->begin(), list->end(),
                           [&](const ojson& branch) { return disjoint(branch, *y, depth + 1); });
      }
    }
    for (const auto& [x, y] : {std::pair{a, b}, std::pair{b, a}}) {
      if (auto values = finite_values(*x)) {
        return std::none_of(values->begin(), values->end(),
                            [&](const ojson* v) { return may_validate(*v, *y, depth + 1); });
      }
    }
    if ((ta & tb) != kObjectBit) return false;
    for (const auto& [x, y] : {std::pair{a, b}, std::pair{b, a}}) {
      for (const auto& name : required_names(*x)) {
        if (disjoint(member_schema(*x, name), member_schema(*y, name), depth + 1)) return true;
      }
    }
    return false;
  }

  // Recursive schemas can make the proofs branch exponentially (a union of
  // references back to itself): the work is bounded, and a proof that runs
  // out of steps fails (the schema is rejected, never accepted unproven).
  bool spend() const { return --proof_budget_ >= 0; }

  void check_exclusive(const ojson& list, const std::string& path) const {
    const long pairs = static_cast<long>(list.size() * (list.size() - 1) / 2);
    proof_budget_ = 100000 + 50 * pairs;
    for (size_t i = 0; i < list.size(); ++i) {
      for (size_t j = i + 1; j < list.size(); ++j) {
        if (!disjoint(list[i], list[j], 0)) {
          throw UnsupportedSchema(
              "oneOf", path,
              "branches " + std::to_string(i) + " and " + std::to_string(j) +
                  " may both match one value (or are too complex to tell apart), and "
                  "exactly-one cannot be enforced there; use "
                  "anyOf, or make the branches provably disjoint (different types, different "
                  "const/enum values, or a required property whose schemas are disjoint)");
        }
      }
    }
  }

  GrammarElement compile_typed(const ojson& s, const std::string& type, const std::string& path) {
    if (type == "null") return g_->literal("null");
    if (type == "boolean") return g_->choice({g_->literal("true"), g_->literal("false")});
    if (type == "integer") return compile_integer(s, path);
    if (type == "number") return compile_number(s, path);
    if (type == "string") return compile_string(s, path);
    if (type == "array") return compile_array(s, path);
    return compile_object(s, path);
  }

  static constexpr const char* kBoundKeywords[] = {"minimum", "maximum", "exclusiveMinimum",
                                                   "exclusiveMaximum"};

  // Integer bounds as inclusive [lo, hi]; nullopt = unbounded on that side.
  std::pair<std::optional<int64_t>, std::optional<int64_t>> integer_bounds(
      const ojson& s, const std::string& path) {
    std::optional<int64_t> lo, hi;
    constexpr double kLimit = 1e17;  // keeps 10^digits within int64 below
    for (const char* k : kBoundKeywords) {
      if (!s.contains(k)) continue;
      const ojson& v = s.at(k);
      if (!v.is_number()) {
        throw UnsupportedSchema(k, child(path, k), "must be a number (draft 6 and later)");
      }
      const double x = v.get<double>();
      if (!(std::abs(x) <= kLimit)) {
        throw UnsupportedSchema(k, child(path, k), "bounds beyond 1e17");
      }
      const std::string_view key = k;
      if (key == "minimum" || key == "exclusiveMinimum") {
        auto b = static_cast<int64_t>(key == "minimum" ? std::ceil(x) : std::floor(x) + 1);
        lo = lo ? std::max(*lo, b) : b;
      } else {
        auto b = static_cast<int64_t>(key == "maximum" ? std::floor(x) : std::ceil(x) - 1);
        hi = hi ? std::min(*hi, b) : b;
      }
    }
    return {lo, hi};
  }

  // Regex for the decimal strings of [lo, hi], both with the same number of
  // digits (the usual split: first digit fixed, middle free, last fixed).
  static std::string same_length_range(const std::string& lo, const std::string& hi) {
    if (lo.size() == 1) return lo == hi ? lo : "[" + lo + "-" + hi + "]";
    if (lo[0] == hi[0]) {
      return lo.substr(0, 1) + "(?:" + same_length_range(lo.substr(1), hi.substr(1)) + ")";
    }
    const size_t n = lo.size() - 1;
    const std::string zeros(n, '0'), nines(n, '9');
    std::vector<std::string> alts;
    char first = lo[0], last = hi[0];
    if (lo.substr(1) != zeros) {
      alts.push_back(lo.substr(0, 1) + "(?:" + same_length_range(lo.substr(1), nines) + ")");
      ++first;
    }
    if (hi.substr(1) != nines) {
      alts.push_back(hi.substr(0, 1) + "(?:" + same_length_range(zeros, hi.substr(1)) + ")");
      --last;
    }
    if (first <= last) {
      alts.push_back(std::string("[") + first + "-" + last + "][0-9]{" + std::to_string(n) + "}");
    }
    std::string out;
    for (const auto& a : alts) out += (out.empty() ? "" : "|") + a;
    return out;
  }

  // Regex for the positive integers in [a, b] (b nullopt: unbounded), a >= 1.
  static std::string positive_range(int64_t a, std::optional<int64_t> b) {
    std::vector<std::string> alts;
    const size_t la = std::to_string(a).size();
    const size_t lb = b ? std::to_string(*b).size() : la;
    int64_t p = 1;  // 10^(L-1)
    for (size_t i = 1; i < la; ++i) p *= 10;
    for (size_t len = la; len <= lb; ++len, p *= 10) {
      const int64_t lo = std::max(a, p);
      const int64_t hi = (!b || len < lb) ? p * 10 - 1 : *b;
      if (lo <= hi) alts.push_back(same_length_range(std::to_string(lo), std::to_string(hi)));
    }
    if (!b) alts.push_back("[1-9][0-9]{" + std::to_string(la) + ",}");
    std::string out;
    for (const auto& x : alts) out += (out.empty() ? "" : "|") + x;
    return out;
  }

  GrammarElement compile_integer(const ojson& s, const std::string& path) {
    auto [lo, hi] = integer_bounds(s, path);
    if (!lo && !hi) return integer_part();
    if (lo && hi && *lo > *hi) return nothing();
    std::vector<std::string> alts;
    // Negative values: [lo, min(hi, -1)] written as "-" and their magnitude.
    const int64_t neg_top = hi ? std::min(*hi, int64_t{-1}) : -1;
    if (!lo || *lo <= neg_top) {
      alts.push_back(
          "-(?:" + positive_range(-neg_top, lo ? std::optional<int64_t>(-*lo) : std::nullopt) +
          ")");
    }
    if ((!lo || *lo <= 0) && (!hi || *hi >= 0)) alts.push_back("-?0");
    const int64_t pos_bottom = lo ? std::max(*lo, int64_t{1}) : 1;
    if (!hi || pos_bottom <= *hi) alts.push_back(positive_range(pos_bottom, hi));
    std::string pattern = "^(?:";
    for (size_t i = 0; i < alts.size(); ++i) pattern += (i ? "|" : "") + alts[i];
    pattern += ")$";
    return compile_regex(RegexParser(pattern, path).parse());
  }

  GrammarElement compile_number(const ojson& s, const std::string& path) {
    // Only "minimum": 0 (non-negative numbers: no minus sign) is supported.
    for (const char* k : kBoundKeywords) {
      if (!s.contains(k)) continue;
      const ojson& v = s.at(k);
      if (std::string_view(k) != "minimum" || !v.is_number() || v.get<double>() != 0.0) {
        throw UnsupportedSchema(k, child(path, k),
                                "on numbers only \"minimum\": 0 is supported (integers take any "
                                "bounds)");
      }
    }
    if (!s.contains("minimum")) return generic_number();
    if (non_negative_number_ < 0) {
      non_negative_number_ = g_->add_rule("non_negative_number");
      GrammarElement int_part = g_->choice(
          {g_->byte('0'), g_->sequence({g_->bytes(ByteSet::range('1', '9')), digits(0)})});
      GrammarElement frac = g_->optional(g_->sequence({g_->byte('.'), digits(1)}));
      ByteSet e, sign;
      e.add('e');
      e.add('E');
      sign.add('+');
      sign.add('-');
      GrammarElement exp =
          g_->optional(g_->sequence({g_->bytes(e), g_->optional(g_->bytes(sign)), digits(1)}));
      g_->add_alternative(non_negative_number_, {int_part, frac, exp});
    }
    return Grammar::ref(non_negative_number_);
  }

  GrammarElement compile_string(const ojson& s, const std::string& path) {
    const bool has_len = s.contains("minLength") || s.contains("maxLength");
    if (s.contains("pattern")) {
      if (has_len || s.contains("format")) {
        throw UnsupportedSchema(s.contains("format") ? "format" : "minLength/maxLength", path,
                                "cannot be combined with 'pattern'");
      }
      const ojson& p = s.at("pattern");
      if (!p.is_string())
        throw UnsupportedSchema("pattern", child(path, "pattern"), "not a string");
      return pattern_string(p.get<std::string>(), child(path, "pattern"));
    }
    if (s.contains("format")) {
      if (has_len) {
        throw UnsupportedSchema("minLength/maxLength", path, "cannot be combined with 'format'");
      }
      const ojson& f = s.at("format");
      if (!f.is_string()) throw UnsupportedSchema("format", child(path, "format"), "not a string");
      return format_string(f.get<std::string>(), child(path, "format"));
    }
    if (!has_len) return generic_string();
    int min = s.contains("minLength") ? get_count(s, "minLength", path) : 0;
    int max = s.contains("maxLength") ? get_count(s, "maxLength", path) : -1;
    if (max >= 0 && max < min) return nothing();
    return g_->sequence({g_->byte('"'), g_->repeat(string_char(), min, max), g_->byte('"')});
  }

  GrammarElement compile_array(const ojson& s, const std::string& path) {
    std::vector<GrammarElement> prefix;
    std::optional<GrammarElement> rest;  // schema for items after the prefix; none = no more
    const ojson* items = s.contains("items") ? &s.at("items") : nullptr;
    if (s.contains("prefixItems") || (items && items->is_array())) {
      const char* key = s.contains("prefixItems") ? "prefixItems" : "items";
      const ojson& list = s.at(key);
      if (!list.is_array()) throw UnsupportedSchema(key, child(path, key), "must be an array");
      for (size_t i = 0; i < list.size(); ++i) {
        prefix.push_back(compile(list[i], child(path, key) + "/" + std::to_string(i)));
      }
      const char* rest_key = s.contains("prefixItems") ? "items" : "additionalItems";
      if (s.contains(rest_key)) {
        const ojson& r = s.at(rest_key);
        if (!(r.is_boolean() && !r.get<bool>())) rest = compile(r, child(path, rest_key));
      } else {
        rest = generic_value();
      }
    } else if (items) {
      if (!(items->is_boolean() && !items->get<bool>()))
        rest = compile(*items, child(path, "items"));
    } else {
      rest = generic_value();
    }
    const int min = s.contains("minItems") ? get_count(s, "minItems", path) : 0;
    int max = s.contains("maxItems") ? get_count(s, "maxItems", path) : -1;
    if (!rest)
      max = max < 0 ? static_cast<int>(prefix.size())
                    : std::min(max, static_cast<int>(prefix.size()));
    if (max >= 0 && max < min) return nothing();

    auto item_at = [&](int i) { return i < static_cast<int>(prefix.size()) ? prefix[i] : *rest; };
    // tail(i): what may follow after i items: stop (when i >= min) or ", item_i" tail(i+1).
    // Past the prefix and the minimum with no maximum, tail is the same rule
    // for every i, so it loops on itself.
    const int loop_from = std::max(static_cast<int>(prefix.size()), min);
    std::map<int, int32_t> tails;
    std::function<GrammarElement(int)> tail = [&](int i) -> GrammarElement {
      const int key = (max < 0 && i >= loop_from) ? loop_from : i;
      if (auto it = tails.find(key); it != tails.end()) return Grammar::ref(it->second);
      int32_t r = g_->add_rule("items_tail");
      tails[key] = r;
      if (i >= min) g_->add_alternative(r, {});
      if (max < 0 || i < max) {
        g_->add_alternative(r, {ws(), g_->byte(','), ws(), item_at(i), tail(i + 1)});
      }
      return Grammar::ref(r);
    };
    Seq body = {g_->byte('['), ws()};
    int32_t content = g_->add_rule("items");
    if (min == 0) g_->add_alternative(content, {});
    if (max != 0) g_->add_alternative(content, {item_at(0), tail(1)});
    body.push_back(Grammar::ref(content));
    body.push_back(ws());
    body.push_back(g_->byte(']'));
    return g_->sequence(std::move(body));
  }

  // A quoted property name that differs from every name in `names` (UTF-8).
  // Walks a trie of the names' code points: at each node the key may go on
  // along a child, close (if no name ends here), or diverge with a raw
  // character that is no child; after diverging anything goes. Escapes are
  // allowed only after diverging, so an escape cannot spell a declared name.
  GrammarElement key_excluding(const std::vector<std::string>& names) {
    if (names.empty()) return generic_string();
    struct Node {
      std::map<uint32_t, int> children;
      bool terminal = false;
    };
    std::vector<Node> trie(1);
    for (const auto& name : names) {
      int n = 0;
      size_t i = 0;
      while (i < name.size()) {
        auto b0 = static_cast<uint8_t>(name[i]);
        int len = b0 < 0x80 ? 1 : b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
        uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 7);
        for (int k = 1; k < len && i + k < name.size(); ++k) {
          cp = (cp << 6) | (static_cast<uint8_t>(name[i + k]) & 0x3F);
        }
        i += static_cast<size_t>(len);
        auto it = trie[n].children.find(cp);
        if (it == trie[n].children.end()) {
          trie.push_back({});
          int c = static_cast<int>(trie.size() - 1);
          trie[n].children[cp] = c;
          n = c;
        } else {
          n = it->second;
        }
      }
      trie[n].terminal = true;
    }
    std::vector<int32_t> rules(trie.size());
    for (auto& r : rules) r = g_->add_rule("key_not_declared");
    for (size_t n = 0; n < trie.size(); ++n) {
      if (!trie[n].terminal) g_->add_alternative(rules[n], {g_->byte('"')});
      CodepointRanges used;
      bool non_ascii_child = false;
      for (const auto& [cp, c] : trie[n].children) {
        Seq seq;
        append_literal(seq, needs_json_escape(cp) ? json_escape_codepoint(cp) : utf8_string(cp));
        seq.push_back(Grammar::ref(rules[c]));
        g_->add_alternative(rules[n], std::move(seq));
        used.push_back({cp, cp});
        non_ascii_child |= cp >= 0x80;
      }
      CodepointRanges diverge = subtract({{0x20, non_ascii_child ? 0x7Fu : kMaxCodepoint}}, used);
      g_->add_alternative(rules[n], {codepoint_class(diverge, false), string_rest()});
    }
    return g_->sequence({g_->byte('"'), Grammar::ref(rules[0])});
  }

  GrammarElement compile_object(const ojson& s, const std::string& path) {
    std::vector<std::pair<std::string, GrammarElement>> props;
    std::set<std::string> required;
    if (s.contains("required")) {
      const ojson& req = s.at("required");
      if (!req.is_array())
        throw UnsupportedSchema("required", child(path, "required"), "not an array");
      for (const auto& r : req) {
        if (!r.is_string()) {
          throw UnsupportedSchema("required", child(path, "required"), "names must be strings");
        }
        required.insert(r.get<std::string>());
      }
    }
    std::set<std::string> declared;
    if (s.contains("properties")) {
      const ojson& p = s.at("properties");
      if (!p.is_object()) {
        throw UnsupportedSchema("properties", child(path, "properties"), "not an object");
      }
      for (const auto& [name, sub] : p.items()) {
        props.push_back({name, compile(sub, child(child(path, "properties"), name))});
        declared.insert(name);
      }
    }
    for (const auto& name : required) {
      if (!declared.contains(name)) {
        props.push_back({name, generic_value()});
        declared.insert(name);
      }
    }
    // Extra properties: the schema for their values, or none.
    std::optional<GrammarElement> extra;
    if (s.contains("additionalProperties")) {
      const ojson& a = s.at("additionalProperties");
      if (!(a.is_boolean() && !a.get<bool>())) {
        extra = compile(a, child(path, "additionalProperties"));
      }
    } else if (!s.contains("properties")) {
      extra = generic_value();
    }

    auto member = [&](GrammarElement key, GrammarElement value) {
      return g_->sequence({key, ws(), g_->byte(':'), ws(), value});
    };
    const size_t n = props.size();
    // first[i]: properties i.. with none written yet; rest[i]: with some
    // written before (so each starts with a comma).
    std::vector<int32_t> first(n + 1), rest(n + 1);
    for (size_t i = 0; i <= n; ++i) {
      first[i] = g_->add_rule("props_first");
      rest[i] = g_->add_rule("props_rest");
    }
    g_->add_alternative(first[n], {});
    g_->add_alternative(rest[n], {});
    if (extra) {
      std::vector<std::string> names(declared.begin(), declared.end());
      GrammarElement extra_member = member(key_excluding(names), *extra);
      g_->add_alternative(rest[n],
                          {ws(), g_->byte(','), ws(), extra_member, Grammar::ref(rest[n])});
      g_->add_alternative(first[n], {extra_member, Grammar::ref(rest[n])});
    }
    for (size_t i = n; i-- > 0;) {
      Seq key;
      append_literal(key, ojson(props[i].first).dump());
      GrammarElement m = member(g_->sequence(std::move(key)), props[i].second);
      const bool optional = !required.contains(props[i].first);
      g_->add_alternative(rest[i], {ws(), g_->byte(','), ws(), m, Grammar::ref(rest[i + 1])});
      if (optional) g_->add_alternative(rest[i], {Grammar::ref(rest[i + 1])});
      g_->add_alternative(first[i], {m, Grammar::ref(rest[i + 1])});
      if (optional) g_->add_alternative(first[i], {Grammar::ref(first[i + 1])});
    }
    return g_->sequence({g_->byte('{'), ws(), Grammar::ref(first[0]), ws(), g_->byte('}')});
  }

  const ojson& root_;
  JsonGrammarOptions options_;
  std::shared_ptr<Grammar> g_;
  std::map<std::string, int32_t> ref_rules_;
  std::map<std::string, int32_t> class_cache_;
  int32_t ws_ = -1, empty_ = -1, nothing_ = -1, string_char_ = -1, string_ = -1, string_rest_ = -1,
          int_part_ = -1, number_ = -1, value_ = -1, object_ = -1, array_ = -1,
          non_negative_number_ = -1;
};

}  // namespace

std::shared_ptr<const Grammar> JsonGrammar::from_schema(const nlohmann::ordered_json& schema,
                                                        const JsonGrammarOptions& options) {
  return SchemaCompiler(schema, options).compile_root();
}

std::shared_ptr<const Grammar> JsonGrammar::from_schema(const nlohmann::json& schema,
                                                        const JsonGrammarOptions& options) {
  return from_schema(nlohmann::ordered_json::parse(schema.dump()), options);
}

std::shared_ptr<const Grammar> JsonGrammar::from_schema_text(std::string_view schema_text,
                                                             const JsonGrammarOptions& options) {
  if (json_nesting_depth(schema_text) > kMaxJsonNesting) {
    throw std::invalid_argument("the schema nests arrays and objects deeper than " +
                                std::to_string(kMaxJsonNesting) + " levels");
  }
  nlohmann::ordered_json schema;
  try {
    schema = nlohmann::ordered_json::parse(schema_text);
  } catch (const nlohmann::json::parse_error& e) {
    throw UnsupportedSchema("", "#", std::string("the schema is not valid JSON: ") + e.what());
  }
  return from_schema(schema, options);
}

std::shared_ptr<const Grammar> JsonGrammar::any_object(const JsonGrammarOptions& options) {
  nlohmann::ordered_json unused;
  return SchemaCompiler(unused, options).any_object();
}

std::shared_ptr<const Grammar> JsonGrammar::any_value(const JsonGrammarOptions& options) {
  nlohmann::ordered_json unused;
  return SchemaCompiler(unused, options).any_value();
}

}  // namespace kiln
