// Jinja2 subset interpreter: lexer -> parser (AST) -> tree-walking renderer.
// See jinja.h for the contract; the comments here say where we follow a
// particular jinja2/Python behaviour on purpose.
#include "tokenizer/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <limits>
#include <optional>

namespace kiln::jinja {

// ---------------------------------------------------------------------------
// TString / Value basics

TString::TString(std::string s, bool tainted) : text(std::move(s)) {
  if (tainted && !text.empty()) taint.assign(text.size(), 1);
}

bool TString::any_tainted() const {
  return std::any_of(taint.begin(), taint.end(), [](uint8_t t) { return t != 0; });
}

void TString::append(std::string_view s, bool tainted) {
  if (s.empty()) return;
  if (tainted && taint.empty()) taint.assign(text.size(), 0);
  text.append(s);
  if (!taint.empty()) taint.insert(taint.end(), s.size(), tainted ? 1 : 0);
}

void TString::append(const TString& other) {
  if (other.text.empty()) return;
  if (other.taint.empty()) {
    append(other.text, false);
    return;
  }
  if (taint.empty()) taint.assign(text.size(), 0);
  text.append(other.text);
  taint.insert(taint.end(), other.taint.begin(), other.taint.end());
}

TString TString::substr(size_t pos, size_t len) const {
  TString out;
  pos = std::min(pos, text.size());
  len = std::min(len, text.size() - pos);
  out.text = text.substr(pos, len);
  if (!taint.empty()) {
    out.taint.assign(taint.begin() + static_cast<ptrdiff_t>(pos),
                     taint.begin() + static_cast<ptrdiff_t>(pos + len));
    if (!out.any_tainted()) out.taint.clear();
  }
  return out;
}

const Value* ValueDict::find(std::string_view key) const {
  for (const auto& [k, v] : items) {
    if (k.text == key) return &v;
  }
  return nullptr;
}
Value* ValueDict::find(std::string_view key) {
  for (auto& [k, v] : items) {
    if (k.text == key) return &v;
  }
  return nullptr;
}
void ValueDict::set(TString key, Value v) {
  if (Value* existing = find(key.text)) {
    *existing = std::move(v);
  } else {
    items.emplace_back(std::move(key), std::move(v));
  }
}

Value Value::undefined(std::string name) {
  Value v;
  v.undefined_name = std::move(name);
  return v;
}
Value Value::none() {
  Value v;
  v.type = Type::None;
  return v;
}
Value Value::boolean(bool x) {
  Value v;
  v.type = Type::Bool;
  v.b = x;
  return v;
}
Value Value::integer(int64_t x) {
  Value v;
  v.type = Type::Int;
  v.i = x;
  return v;
}
Value Value::number(double x) {
  Value v;
  v.type = Type::Float;
  v.f = x;
  return v;
}
Value Value::string(TString x) {
  Value v;
  v.type = Type::String;
  v.s = std::move(x);
  return v;
}
Value Value::string(std::string x, bool tainted) { return string(TString(std::move(x), tainted)); }
Value Value::make_list(ValueList x, bool tuple) {
  Value v;
  v.type = Type::List;
  v.list = std::make_shared<ValueList>(std::move(x));
  v.is_tuple = tuple;
  return v;
}
Value Value::make_list() { return make_list(ValueList{}); }
Value Value::make_dict() { return make_dict(ValueDict{}); }
Value Value::make_dict(ValueDict x) {
  Value v;
  v.type = Type::Dict;
  v.dict = std::make_shared<ValueDict>(std::move(x));
  return v;
}

namespace {
// Deeper request JSON is refused: conversion and printing recurse.
constexpr int kMaxJsonDepth = 128;
}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j, bool tainted) {
  return from_json_depth(j, tainted, 0);
}

Value Value::from_json_depth(const nlohmann::ordered_json& j, bool tainted, int depth) {
  if (depth > kMaxJsonDepth) {
    throw Error("JSON value nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  using J = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case J::null:
      return none();
    case J::boolean:
      return boolean(j.get<bool>());
    case J::number_integer:
      return integer(j.get<int64_t>());
    case J::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return number(static_cast<double>(u));
      }
      return integer(static_cast<int64_t>(u));
    }
    case J::number_float:
      return number(j.get<double>());
    case J::string:
      return string(j.get<std::string>(), tainted);
    case J::array: {
      ValueList out;
      out.reserve(j.size());
      for (const auto& e : j) out.push_back(from_json_depth(e, tainted, depth + 1));
      return make_list(std::move(out));
    }
    case J::object: {
      ValueDict d;
      for (const auto& [k, e] : j.items())
        d.set(TString(k, tainted), from_json_depth(e, tainted, depth + 1));
      return make_dict(std::move(d));
    }
    default:
      return none();  // binary / discarded: not produced by JSON text
  }
}

bool Value::truthy() const {
  switch (type) {
    case Type::Undefined:
    case Type::None:
      return false;
    case Type::Bool:
      return b;
    case Type::Int:
      return i != 0;
    case Type::Float:
      return f != 0.0;
    case Type::String:
      return !s.text.empty();
    case Type::List:
      return !list->empty();
    case Type::Dict:
      return is_namespace || !dict->items.empty();
    case Type::Function:
      return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// UTF-8 and Python string helpers. Python indexes strings by code point, so
// slicing, len() and strip() work on code points, not bytes.

namespace {

size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;  // invalid lead byte: treat as one unit
}

// Byte offset of each code point, plus a final entry == size.
std::vector<size_t> cp_offsets(const std::string& s) {
  std::vector<size_t> off;
  off.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    off.push_back(i);
    i += std::min(utf8_len(static_cast<unsigned char>(s[i])), s.size() - i);
  }
  off.push_back(s.size());
  return off;
}

uint32_t decode_cp(const std::string& s, size_t pos, size_t len) {
  const auto c0 = static_cast<unsigned char>(s[pos]);
  if (len == 1) return c0;
  uint32_t cp = c0 & (0xFF >> (len + 1));
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  return cp;
}

void encode_cp(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Python's str.isspace() set (bidi classes WS/B/S and category Zs).
bool is_py_space(uint32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

size_t cp_count(const std::string& s) { return cp_offsets(s).size() - 1; }

// strip/lstrip/rstrip; `chars` null means whitespace (by code point).
TString py_strip(const TString& s, const std::optional<std::string>& chars, bool left, bool right) {
  const auto off = cp_offsets(s.text);
  const size_t n = off.size() - 1;
  std::vector<uint32_t> strip_set;
  if (chars) {
    const auto coff = cp_offsets(*chars);
    for (size_t k = 0; k + 1 < coff.size(); ++k)
      strip_set.push_back(decode_cp(*chars, coff[k], coff[k + 1] - coff[k]));
  }
  auto strippable = [&](size_t k) {
    const uint32_t cp = decode_cp(s.text, off[k], off[k + 1] - off[k]);
    if (!chars) return is_py_space(cp);
    return std::find(strip_set.begin(), strip_set.end(), cp) != strip_set.end();
  };
  size_t b = 0, e = n;
  if (left)
    while (b < e && strippable(b)) ++b;
  if (right)
    while (e > b && strippable(e - 1)) --e;
  return s.substr(off[b], off[e] - off[b]);
}

std::string ascii_lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

// Case mapping is ASCII-only: chat templates apply it to role names and
// keywords. Non-ASCII letters pass through unchanged (Python would map them).
TString map_case(TString s, int mode /*0 lower, 1 upper, 2 title, 3 capitalize*/) {
  bool prev_cased = false;
  for (size_t k = 0; k < s.text.size(); ++k) {
    char& c = s.text[k];
    const bool is_upper = c >= 'A' && c <= 'Z';
    const bool is_lower = c >= 'a' && c <= 'z';
    const bool non_ascii = static_cast<unsigned char>(c) >= 0x80;
    bool to_upper = false;
    switch (mode) {
      case 0:
        to_upper = false;
        break;
      case 1:
        to_upper = true;
        break;
      case 2:
        to_upper = !prev_cased;
        break;
      case 3:
        to_upper = (k == 0);
        break;
    }
    if (to_upper && is_lower) c = static_cast<char>(c - 'a' + 'A');
    if (!to_upper && is_upper) c = static_cast<char>(c - 'A' + 'a');
    prev_cased = is_upper || is_lower || non_ascii;
  }
  return s;
}

TString py_replace(const TString& s, const TString& old, const TString& repl, int64_t count) {
  TString out;
  if (old.text.empty()) {
    // Python inserts `repl` between every code point (and at both ends).
    const auto off = cp_offsets(s.text);
    int64_t done = 0;
    for (size_t k = 0; k + 1 < off.size(); ++k) {
      if (count < 0 || done < count) {
        out.append(repl);
        ++done;
      }
      out.append(s.substr(off[k], off[k + 1] - off[k]));
    }
    if (count < 0 || done < count) out.append(repl);
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t hit = s.text.find(old.text, pos);
    if (hit == std::string::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(repl);
    pos = hit + old.text.size();
    ++done;
  }
  out.append(s.substr(pos, std::string::npos));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Python formatting: float repr, str(), repr(), json.dumps

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci = [-]d[.ddd]e[+-]XX ; shortest round-trip digits.
  const bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  const size_t epos = sci.find('e');
  std::string digits = sci.substr(0, epos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp = std::stoi(sci.substr(epos + 1));
  std::string out = neg ? "-" : "";
  // Python's repr switches to exponent form when decpt <= -4 or decpt > 16.
  if (exp < -4 || exp >= 16) {
    out += digits[0];
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += ebuf;
  } else if (exp < 0) {
    out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else {
    const auto int_digits = static_cast<size_t>(exp + 1);
    if (digits.size() <= int_digits) {
      out += digits + std::string(int_digits - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    }
  }
  return out;
}

namespace {

std::string int_str(int64_t v) { return std::to_string(v); }

void append_py_repr_string(TString& out, const TString& s) {
  const bool has_single = s.text.find('\'') != std::string::npos;
  const bool has_double = s.text.find('"') != std::string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  out.append(std::string_view(&quote, 1), false);
  for (size_t k = 0; k < s.text.size(); ++k) {
    const char c = s.text[k];
    const bool t = s.tainted_at(k);
    char esc[8];
    if (c == quote || c == '\\') {
      esc[0] = '\\';
      esc[1] = c;
      out.append(std::string_view(esc, 2), t);
    } else if (c == '\n') {
      out.append("\\n", t);
    } else if (c == '\r') {
      out.append("\\r", t);
    } else if (c == '\t') {
      out.append("\\t", t);
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      std::snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned char>(c));
      out.append(esc, t);
    } else {
      out.append(std::string_view(&c, 1), t);
    }
  }
  out.append(std::string_view(&quote, 1), false);
}

void append_str(TString& out, const Value& v, bool repr);

void append_container(TString& out, const Value& v) {
  if (v.type == Value::Type::List) {
    out.append(v.is_tuple ? "(" : "[", false);
    for (size_t k = 0; k < v.list->size(); ++k) {
      if (k) out.append(", ", false);
      append_str(out, (*v.list)[k], true);
    }
    if (v.is_tuple && v.list->size() == 1) out.append(",", false);
    out.append(v.is_tuple ? ")" : "]", false);
    return;
  }
  if (v.is_namespace) out.append("<Namespace ", false);
  out.append("{", false);
  bool first = true;
  for (const auto& [k, e] : v.dict->items) {
    if (!first) out.append(", ", false);
    first = false;
    append_py_repr_string(out, k);
    out.append(": ", false);
    append_str(out, e, true);
  }
  out.append("}", false);
  if (v.is_namespace) out.append(">", false);
}

// str(v) (repr=false) or repr(v) (repr=true), keeping string taint.
void append_str(TString& out, const Value& v, bool repr) {
  switch (v.type) {
    case Value::Type::Undefined:
      if (repr) out.append("Undefined", false);
      return;
    case Value::Type::None:
      out.append("None", false);
      return;
    case Value::Type::Bool:
      out.append(v.b ? "True" : "False", false);
      return;
    case Value::Type::Int:
      out.append(int_str(v.i), false);
      return;
    case Value::Type::Float:
      out.append(python_float_repr(v.f), false);
      return;
    case Value::Type::String:
      if (repr) {
        append_py_repr_string(out, v.s);
      } else {
        out.append(v.s);
      }
      return;
    case Value::Type::List:
    case Value::Type::Dict:
      append_container(out, v);
      return;
    case Value::Type::Function:
      out.append("<function>", false);
      return;
  }
}

TString to_str(const Value& v) {
  if (v.type == Value::Type::String) return v.s;
  TString out;
  append_str(out, v, false);
  return out;
}

void append_json_string(TString& out, const TString& s) {
  out.append("\"", false);
  for (size_t k = 0; k < s.text.size(); ++k) {
    const char c = s.text[k];
    const bool t = s.tainted_at(k);
    switch (c) {
      case '"':
        out.append("\\\"", t);
        break;
      case '\\':
        out.append("\\\\", t);
        break;
      case '\n':
        out.append("\\n", t);
        break;
      case '\r':
        out.append("\\r", t);
        break;
      case '\t':
        out.append("\\t", t);
        break;
      case '\b':
        out.append("\\b", t);
        break;
      case '\f':
        out.append("\\f", t);
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned char>(c));
          out.append(esc, t);
        } else {
          out.append(std::string_view(&c, 1), t);
        }
    }
  }
  out.append("\"", false);
}

void append_json(TString& out, const Value& v, int indent, int depth) {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out.append("\n" + std::string(static_cast<size_t>(indent * d), ' '), false);
  };
  switch (v.type) {
    case Value::Type::None:
      out.append("null", false);
      return;
    case Value::Type::Bool:
      out.append(v.b ? "true" : "false", false);
      return;
    case Value::Type::Int:
      out.append(int_str(v.i), false);
      return;
    case Value::Type::Float:
      if (std::isnan(v.f)) {
        out.append("NaN", false);
      } else if (std::isinf(v.f)) {
        out.append(v.f < 0 ? "-Infinity" : "Infinity", false);
      } else {
        out.append(python_float_repr(v.f), false);
      }
      return;
    case Value::Type::String:
      append_json_string(out, v.s);
      return;
    case Value::Type::List: {
      if (v.list->empty()) {
        out.append("[]", false);
        return;
      }
      out.append("[", false);
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out.append(indent < 0 ? ", " : ",", false);
        newline(depth + 1);
        append_json(out, (*v.list)[k], indent, depth + 1);
      }
      newline(depth);
      out.append("]", false);
      return;
    }
    case Value::Type::Dict: {
      if (v.is_namespace) throw Error("tojson: a namespace is not JSON serializable");
      if (v.dict->items.empty()) {
        out.append("{}", false);
        return;
      }
      out.append("{", false);
      bool first = true;
      for (const auto& [k, e] : v.dict->items) {
        if (!first) out.append(indent < 0 ? ", " : ",", false);
        first = false;
        newline(depth + 1);
        append_json_string(out, k);
        out.append(": ", false);
        append_json(out, e, indent, depth + 1);
      }
      newline(depth);
      out.append("}", false);
      return;
    }
    case Value::Type::Undefined:
      throw Error("tojson: an undefined value is not JSON serializable");
    case Value::Type::Function:
      throw Error("tojson: a function is not JSON serializable");
  }
}

}  // namespace

TString to_json(const Value& v, int indent) {
  TString out;
  append_json(out, v, indent, 0);
  return out;
}

// ---------------------------------------------------------------------------
// Lexer

namespace {

struct Token {
  enum class Kind {
    Text,
    VarBegin,
    VarEnd,
    BlockBegin,
    BlockEnd,
    Name,
    String,
    Int,
    Float,
    Op,
    Eof
  };
  Kind kind = Kind::Eof;
  std::string text;  // name / operator / decoded string / raw text
  int64_t ival = 0;
  double fval = 0;
  size_t pos = 0;  // byte offset in the normalized source
};

// jinja2 normalizes \r\n and \r to \n and drops one trailing newline
// (keep_trailing_newline=False), before anything else.
std::string normalize_source(std::string_view src) {
  std::string out;
  out.reserve(src.size());
  for (size_t k = 0; k < src.size(); ++k) {
    if (src[k] == '\r') {
      out += '\n';
      if (k + 1 < src.size() && src[k + 1] == '\n') ++k;
    } else {
      out += src[k];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {}

  std::vector<Token> run() {
    size_t pos = 0;
    const size_t n = src_.size();
    while (pos < n) {
      // Find the next tag opener.
      size_t open = pos;
      char kind = 0;
      while (true) {
        open = src_.find('{', open);
        if (open == std::string::npos || open + 1 >= n) {
          open = std::string::npos;
          break;
        }
        const char c = src_[open + 1];
        if (c == '{' || c == '%' || c == '#') {
          kind = c;
          break;
        }
        ++open;
      }
      if (open == std::string::npos) {
        emit_text(src_.substr(pos), pos);
        break;
      }
      std::string text = src_.substr(pos, open - pos);
      size_t after = open + 2;
      char sign = 0;
      if (after < n && (src_[after] == '-' || src_[after] == '+')) {
        sign = src_[after];
        ++after;
      }
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ascii_space(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop spaces/tabs between a line start and the tag.
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        const bool line_starting = pos == 0 || src_[pos - 1] == '\n';
        if (l_pos > 0 || line_starting) {
          bool all_ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size(); ++k) all_ws = all_ws && is_ascii_space(text[k]);
          if (all_ws) text.resize(l_pos);
        }
      }
      emit_text(std::move(text), pos);
      if (kind == '#') {
        pos = lex_comment(after, open);
      } else {
        pos = lex_tag(after, open, kind == '{');
      }
    }
    Token eof;
    eof.kind = Token::Kind::Eof;
    eof.pos = n;
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

  std::string where(size_t pos) const { return location(src_, pos); }
  static std::string location(const std::string& src, size_t pos) {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < pos && k < src.size(); ++k) {
      if (src[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
  }

 private:
  void emit_text(std::string text, size_t pos) {
    if (text.empty()) return;
    Token t;
    t.kind = Token::Kind::Text;
    t.text = std::move(text);
    t.pos = pos;
    tokens_.push_back(std::move(t));
  }

  // After a closing tag: `-` strips all following whitespace; trim_blocks
  // removes one newline after block and comment tags (not after `}}`).
  size_t after_close(size_t p, char sign, bool is_var) {
    if (sign == '-') {
      while (p < src_.size() && is_ascii_space(src_[p])) ++p;
    } else if (sign != '+' && !is_var && p < src_.size() && src_[p] == '\n') {
      ++p;
    }
    return p;
  }

  size_t lex_comment(size_t p, size_t open) {
    const size_t close = src_.find("#}", p);
    if (close == std::string::npos) throw Error("unterminated comment '{#' at " + where(open));
    char sign = 0;
    if (close > p && (src_[close - 1] == '-' || src_[close - 1] == '+')) sign = src_[close - 1];
    return after_close(close + 2, sign, false);
  }

  size_t lex_tag(size_t p, size_t open, bool is_var) {
    Token begin;
    begin.kind = is_var ? Token::Kind::VarBegin : Token::Kind::BlockBegin;
    begin.pos = open;
    tokens_.push_back(begin);
    std::vector<char> balance;
    const std::string_view close = is_var ? "}}" : "%}";
    const size_t n = src_.size();
    while (true) {
      while (p < n && is_ascii_space(src_[p])) ++p;
      if (p >= n)
        throw Error(std::string("unterminated tag '") + (is_var ? "{{" : "{%") + "' at " +
                    where(open));
      if (balance.empty()) {
        char sign = 0;
        size_t q = p;
        if ((src_[q] == '-' || src_[q] == '+') && src_.compare(q + 1, 2, close) == 0) {
          sign = src_[q];
          ++q;
        }
        if (src_.compare(q, 2, close) == 0) {
          Token end;
          end.kind = is_var ? Token::Kind::VarEnd : Token::Kind::BlockEnd;
          end.pos = p;
          tokens_.push_back(end);
          return after_close(q + 2, sign, is_var);
        }
      }
      p = lex_expr_token(p, balance);
    }
  }

  size_t lex_expr_token(size_t p, std::vector<char>& balance) {
    const size_t n = src_.size();
    const char c = src_[p];
    Token t;
    t.pos = p;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t q = p;
      while (q < n && (std::isalnum(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
      t.kind = Token::Kind::Name;
      t.text = src_.substr(p, q - p);
      tokens_.push_back(std::move(t));
      return q;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t q = p;
      auto digits = [&] {
        while (q < n && (std::isdigit(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
      };
      digits();
      bool is_float = false;
      // No float after a '.', so `x.0.1` stays attribute access.
      const bool after_dot = p > 0 && src_[p - 1] == '.';
      if (!after_dot && q + 1 < n && src_[q] == '.' &&
          std::isdigit(static_cast<unsigned char>(src_[q + 1]))) {
        ++q;
        digits();
        is_float = true;
      }
      if (!after_dot && q < n && (src_[q] == 'e' || src_[q] == 'E')) {
        size_t r = q + 1;
        if (r < n && (src_[r] == '+' || src_[r] == '-')) ++r;
        if (r < n && std::isdigit(static_cast<unsigned char>(src_[r]))) {
          q = r;
          digits();
          is_float = true;
        }
      }
      std::string num = src_.substr(p, q - p);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      if (is_float) {
        t.kind = Token::Kind::Float;
        t.fval = std::strtod(num.c_str(), nullptr);
      } else {
        t.kind = Token::Kind::Int;
        auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), t.ival);
        if (ec != std::errc())
          throw Error("integer literal '" + num + "' out of range at " + where(p));
      }
      t.text = num;
      tokens_.push_back(std::move(t));
      return q;
    }
    if (c == '\'' || c == '"') {
      size_t q = p + 1;
      std::string raw;
      while (q < n && src_[q] != c) {
        if (src_[q] == '\\' && q + 1 < n) {
          raw += src_[q];
          ++q;
        }
        raw += src_[q];
        ++q;
      }
      if (q >= n) throw Error("unterminated string literal at " + where(p));
      t.kind = Token::Kind::String;
      t.text = unescape(raw, p);
      tokens_.push_back(std::move(t));
      return q + 1;
    }
    static const char* const ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                      "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                      ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
    for (const char* op : ops) {
      const size_t len = std::strlen(op);
      if (src_.compare(p, len, op) == 0) {
        t.kind = Token::Kind::Op;
        t.text = op;
        if (len == 1 && (c == '(' || c == '[' || c == '{')) {
          balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
        } else if (len == 1 && (c == ')' || c == ']' || c == '}')) {
          if (balance.empty() || balance.back() != c) {
            throw Error(std::string("unexpected '") + c + "' at " + where(p));
          }
          balance.pop_back();
        }
        tokens_.push_back(std::move(t));
        return p + len;
      }
    }
    throw Error(std::string("unexpected character '") + c + "' at " + where(p));
  }

  // Python "unicode-escape" decoding, as jinja2 applies to string literals.
  std::string unescape(const std::string& raw, size_t pos) {
    std::string out;
    for (size_t k = 0; k < raw.size(); ++k) {
      if (raw[k] != '\\' || k + 1 >= raw.size()) {
        out += raw[k];
        continue;
      }
      const char e = raw[++k];
      auto hex = [&](size_t count) {
        if (k + count >= raw.size()) {
          throw Error("truncated \\x/\\u escape in string literal at " + where(pos));
        }
        uint32_t cp = 0;
        for (size_t h = 0; h < count; ++h) {
          const char d = k + 1 + h < raw.size() ? raw[k + 1 + h] : 'g';
          if (!std::isxdigit(static_cast<unsigned char>(d))) {
            throw Error("bad \\x/\\u escape in string literal at " + where(pos));
          }
          cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(d))
                                                   ? d - '0'
                                                   : (std::tolower(d) - 'a' + 10));
        }
        k += count;
        encode_cp(out, cp);
      };
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          hex(2);
          break;
        case 'u':
          hex(4);
          break;
        case 'U':
          hex(8);
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int d = 0; d < 2 && k + 1 < raw.size() && raw[k + 1] >= '0' && raw[k + 1] <= '7';
                 ++d) {
              cp = cp * 8 + static_cast<uint32_t>(raw[++k] - '0');
            }
            encode_cp(out, cp);
          } else {
            out += '\\';  // unknown escapes stay as written, like Python
            out += e;
          }
      }
    }
    return out;
  }

  const std::string& src_;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------
// AST

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,
    Name,
    List,
    Tuple,
    Dict,
    Attr,
    Index,
    Slice,
    Call,
    Filter,
    Test,
    Neg,
    Pos,
    Not,
    And,
    Or,
    Binary,
    Concat,
    Compare,
    Cond
  };
  Kind kind;
  size_t pos = 0;
  Value literal;
  std::string name;           // Name / Attr / Filter / Test / Binary op
  bool negated = false;       // Test: `is not`
  std::vector<ExprPtr> args;  // operands / positional args / list items
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // Compare: operators between args
  explicit Expr(Kind k, size_t p) : kind(k), pos(p) {}
};

struct Node;
using NodeList = std::vector<std::unique_ptr<Node>>;

struct Node {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Block };
  Kind kind;
  size_t pos = 0;
  std::string text;                                     // Text
  ExprPtr expr;                                         // Output / Set value / For iterable
  std::vector<std::pair<ExprPtr, NodeList>> branches;   // If (cond, body)...
  NodeList body, else_body;                             // For / SetBlock / Macro / Block / If-else
  std::vector<std::string> targets;                     // For / Set names
  std::string attr;                                     // Set ns.attr
  ExprPtr filter;                                       // For `if` filter
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro params (default may be null)
  explicit Node(Kind k, size_t p) : kind(k), pos(p) {}
};

// ---------------------------------------------------------------------------
// Parser

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& src) : toks_(std::move(tokens)), src_(src) {}

  NodeList parse_template() {
    std::string end;
    NodeList nodes = parse_nodes({}, end);
    return nodes;
  }

 private:
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  std::string where(size_t pos) const { return Lexer::location(src_, pos); }
  [[noreturn]] void fail(const std::string& msg, size_t pos) const {
    throw Error(msg + " at " + where(pos));
  }
  bool is_op(std::string_view op) const {
    return cur().kind == Token::Kind::Op && cur().text == op;
  }
  bool is_name(std::string_view n) const {
    return cur().kind == Token::Kind::Name && cur().text == n;
  }
  bool skip_op(std::string_view op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  bool skip_name(std::string_view n) {
    if (!is_name(n)) return false;
    ++i_;
    return true;
  }
  void expect_op(std::string_view op) {
    if (!skip_op(op))
      fail("expected '" + std::string(op) + "', found " + describe(cur()), cur().pos);
  }
  std::string expect_name() {
    if (cur().kind != Token::Kind::Name)
      fail("expected a name, found " + describe(cur()), cur().pos);
    return toks_[i_++].text;
  }
  void expect_block_end() {
    if (cur().kind != Token::Kind::BlockEnd)
      fail("expected end of tag '%}', found " + describe(cur()), cur().pos);
    ++i_;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Token::Kind::Eof:
        return "end of template";
      case Token::Kind::BlockEnd:
        return "'%}'";
      case Token::Kind::VarEnd:
        return "'}}'";
      case Token::Kind::String:
        return "a string";
      case Token::Kind::Text:
        return "template text";
      default:
        return "'" + t.text + "'";
    }
  }

  // Parses nodes until a `{% name %}` with name in `ends` (returned in `end`,
  // the tag left unconsumed after its name).
  NodeList parse_nodes(const std::vector<std::string_view>& ends, std::string& end) {
    NodeList nodes;
    while (true) {
      const Token& t = cur();
      if (t.kind == Token::Kind::Eof) {
        if (!ends.empty()) {
          fail("unexpected end of template, expected '{% " + std::string(ends.back()) + " %}'",
               t.pos);
        }
        end.clear();
        return nodes;
      }
      if (t.kind == Token::Kind::Text) {
        auto n = std::make_unique<Node>(Node::Kind::Text, t.pos);
        n->text = t.text;
        nodes.push_back(std::move(n));
        ++i_;
      } else if (t.kind == Token::Kind::VarBegin) {
        ++i_;
        auto n = std::make_unique<Node>(Node::Kind::Output, t.pos);
        n->expr = parse_tuple(true);
        if (cur().kind != Token::Kind::VarEnd)
          fail("expected '}}', found " + describe(cur()), cur().pos);
        ++i_;
        nodes.push_back(std::move(n));
      } else if (t.kind == Token::Kind::BlockBegin) {
        const size_t begin_pos = t.pos;
        ++i_;
        if (cur().kind != Token::Kind::Name) fail("expected a tag name after '{%'", cur().pos);
        const std::string tag = cur().text;
        if (std::find(ends.begin(), ends.end(), tag) != ends.end()) {
          ++i_;
          end = tag;
          return nodes;
        }
        ++i_;
        nodes.push_back(parse_statement(tag, begin_pos));
      } else {
        fail("unexpected " + describe(t), t.pos);
      }
    }
  }

  std::unique_ptr<Node> parse_statement(const std::string& tag, size_t pos) {
    DepthGuard guard(*this, pos);
    if (tag == "if") return parse_if(pos);
    if (tag == "for") return parse_for(pos);
    if (tag == "set") return parse_set(pos);
    if (tag == "macro") return parse_macro(pos);
    if (tag == "break" || tag == "continue") {
      expect_block_end();
      return std::make_unique<Node>(tag == "break" ? Node::Kind::Break : Node::Kind::Continue, pos);
    }
    if (tag == "generation") {
      // transformers' AssistantTracker tag: only marks assistant spans.
      expect_block_end();
      auto n = std::make_unique<Node>(Node::Kind::Block, pos);
      std::string end;
      n->body = parse_nodes({"endgeneration"}, end);
      expect_block_end();
      return n;
    }
    if (tag.starts_with("end") || tag == "elif" || tag == "else") {
      fail("unexpected '{% " + tag + " %}'", pos);
    }
    fail("unsupported template tag '{% " + tag + " %}'", pos);
  }

  std::unique_ptr<Node> parse_if(size_t pos) {
    auto n = std::make_unique<Node>(Node::Kind::If, pos);
    ExprPtr cond = parse_tuple(true);
    expect_block_end();
    while (true) {
      std::string end;
      NodeList body = parse_nodes({"elif", "else", "endif"}, end);
      n->branches.emplace_back(std::move(cond), std::move(body));
      if (end == "elif") {
        cond = parse_tuple(true);
        expect_block_end();
        continue;
      }
      if (end == "else") {
        expect_block_end();
        n->else_body = parse_nodes({"endif"}, end);
      }
      expect_block_end();
      return n;
    }
  }

  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = skip_op("(");
    names.push_back(expect_name());
    while (skip_op(",")) {
      if (cur().kind != Token::Kind::Name) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  std::unique_ptr<Node> parse_for(size_t pos) {
    auto n = std::make_unique<Node>(Node::Kind::For, pos);
    n->targets = parse_targets();
    if (!skip_name("in")) fail("expected 'in' in for loop, found " + describe(cur()), cur().pos);
    n->expr = parse_tuple(false);
    if (skip_name("if")) n->filter = parse_tuple(true);
    if (is_name("recursive")) fail("unsupported construct: recursive for loops", cur().pos);
    expect_block_end();
    std::string end;
    n->body = parse_nodes({"else", "endfor"}, end);
    if (end == "else") {
      expect_block_end();
      n->else_body = parse_nodes({"endfor"}, end);
    }
    expect_block_end();
    return n;
  }

  std::unique_ptr<Node> parse_set(size_t pos) {
    const size_t target_pos = cur().pos;
    std::string first = expect_name();
    if (skip_op(".")) {
      auto n = std::make_unique<Node>(Node::Kind::Set, pos);
      n->targets = {first};
      n->attr = expect_name();
      expect_op("=");
      n->expr = parse_tuple(true);
      expect_block_end();
      return n;
    }
    std::vector<std::string> names = {first};
    while (skip_op(",")) names.push_back(expect_name());
    if (cur().kind == Token::Kind::BlockEnd) {
      if (names.size() != 1) fail("a block set takes one name", target_pos);
      ++i_;
      auto n = std::make_unique<Node>(Node::Kind::SetBlock, pos);
      n->targets = names;
      std::string end;
      n->body = parse_nodes({"endset"}, end);
      expect_block_end();
      return n;
    }
    if (is_op("|")) fail("unsupported construct: filtered block set", cur().pos);
    expect_op("=");
    auto n = std::make_unique<Node>(Node::Kind::Set, pos);
    n->targets = names;
    n->expr = parse_tuple(true);
    expect_block_end();
    return n;
  }

  std::unique_ptr<Node> parse_macro(size_t pos) {
    auto n = std::make_unique<Node>(Node::Kind::Macro, pos);
    n->targets = {expect_name()};
    expect_op("(");
    while (!is_op(")")) {
      std::string p = expect_name();
      ExprPtr def;
      if (skip_op("=")) def = parse_expression(true);
      n->params.emplace_back(std::move(p), std::move(def));
      if (!skip_op(",")) break;
    }
    expect_op(")");
    expect_block_end();
    std::string end;
    n->body = parse_nodes({"endmacro"}, end);
    if (cur().kind == Token::Kind::Name) ++i_;  // `{% endmacro name %}`
    expect_block_end();
    return n;
  }

  // --- expressions (jinja2 precedence, loosest first) ---

  ExprPtr parse_tuple(bool with_condexpr) {
    const size_t pos = cur().pos;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto t = std::make_unique<Expr>(Expr::Kind::Tuple, pos);
    t->args.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().kind == Token::Kind::BlockEnd || cur().kind == Token::Kind::VarEnd || is_op(")") ||
          is_op("="))
        break;
      t->args.push_back(parse_expression(with_condexpr));
    }
    return t;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    const size_t pos = cur().pos;
    DepthGuard guard(*this, pos);
    ExprPtr e = parse_or();
    while (skip_name("if")) {
      auto c = std::make_unique<Expr>(Expr::Kind::Cond, pos);
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (skip_name("else")) other = parse_condexpr();
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(cond));
      if (other) c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind k, size_t pos, ExprPtr a, ExprPtr b, std::string op = {}) {
    auto e = std::make_unique<Expr>(k, pos);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    const size_t pos = cur().pos;
    ExprPtr e = parse_and();
    while (skip_name("or")) e = binary(Expr::Kind::Or, pos, std::move(e), parse_and());
    return e;
  }
  ExprPtr parse_and() {
    const size_t pos = cur().pos;
    ExprPtr e = parse_not();
    while (skip_name("and")) e = binary(Expr::Kind::And, pos, std::move(e), parse_not());
    return e;
  }
  ExprPtr parse_not() {
    const size_t pos = cur().pos;
    DepthGuard guard(*this, pos);
    if (skip_name("not")) {
      auto e = std::make_unique<Expr>(Expr::Kind::Not, pos);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    const size_t pos = cur().pos;
    ExprPtr first = parse_math1();
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      if (cur().kind == Token::Kind::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        ++i_;
      } else if (is_name("in")) {
        op = "in";
        ++i_;
      } else if (is_name("not") && peek().kind == Token::Kind::Name && peek().text == "in") {
        op = "not in";
        i_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = std::make_unique<Expr>(Expr::Kind::Compare, pos);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  ExprPtr parse_math1() {
    const size_t pos = cur().pos;
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = toks_[i_++].text;
      e = binary(Expr::Kind::Binary, pos, std::move(e), parse_concat(), op);
    }
    return e;
  }
  ExprPtr parse_concat() {
    const size_t pos = cur().pos;
    ExprPtr e = parse_math2();
    if (!is_op("~")) return e;
    auto c = std::make_unique<Expr>(Expr::Kind::Concat, pos);
    c->args.push_back(std::move(e));
    while (skip_op("~")) c->args.push_back(parse_math2());
    return c;
  }
  ExprPtr parse_math2() {
    const size_t pos = cur().pos;
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = toks_[i_++].text;
      e = binary(Expr::Kind::Binary, pos, std::move(e), parse_pow(), op);
    }
    return e;
  }
  ExprPtr parse_pow() {
    const size_t pos = cur().pos;
    ExprPtr e = parse_unary(true);
    while (skip_op("**"))
      e = binary(Expr::Kind::Binary, pos, std::move(e), parse_unary(true), "**");
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    const size_t pos = cur().pos;
    DepthGuard guard(*this, pos);
    ExprPtr e;
    if (skip_op("-")) {
      e = std::make_unique<Expr>(Expr::Kind::Neg, pos);
      e->args.push_back(parse_unary(false));
    } else if (skip_op("+")) {
      e = std::make_unique<Expr>(Expr::Kind::Pos, pos);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    const size_t pos = t.pos;
    switch (t.kind) {
      case Token::Kind::Name: {
        ++i_;
        if (t.text == "true" || t.text == "True") return literal(Value::boolean(true), pos);
        if (t.text == "false" || t.text == "False") return literal(Value::boolean(false), pos);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), pos);
        auto e = std::make_unique<Expr>(Expr::Kind::Name, pos);
        e->name = t.text;
        return e;
      }
      case Token::Kind::String: {
        std::string s;
        while (cur().kind == Token::Kind::String) s += toks_[i_++].text;  // adjacent literals join
        return literal(Value::string(std::move(s)), pos);
      }
      case Token::Kind::Int:
        ++i_;
        return literal(Value::integer(t.ival), pos);
      case Token::Kind::Float:
        ++i_;
        return literal(Value::number(t.fval), pos);
      case Token::Kind::Op:
        if (t.text == "(") {
          ++i_;
          if (skip_op(")")) return std::make_unique<Expr>(Expr::Kind::Tuple, pos);
          ExprPtr e = parse_tuple(true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          ++i_;
          auto e = std::make_unique<Expr>(Expr::Kind::List, pos);
          while (!is_op("]")) {
            e->args.push_back(parse_expression(true));
            if (!skip_op(",")) break;
          }
          expect_op("]");
          return e;
        }
        if (t.text == "{") {
          ++i_;
          auto e = std::make_unique<Expr>(Expr::Kind::Dict, pos);
          while (!is_op("}")) {
            e->args.push_back(parse_expression(true));
            expect_op(":");
            e->args.push_back(parse_expression(true));
            if (!skip_op(",")) break;
          }
          expect_op("}");
          return e;
        }
        break;
      default:
        break;
    }
    fail("unexpected " + describe(t) + " in expression", pos);
  }

  static ExprPtr literal(Value v, size_t pos) {
    auto e = std::make_unique<Expr>(Expr::Kind::Literal, pos);
    e->literal = std::move(v);
    return e;
  }

  void parse_call_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**"))
        fail("unsupported construct: *args/**kwargs in a call", cur().pos);
      if (cur().kind == Token::Kind::Name && peek().kind == Token::Kind::Op && peek().text == "=") {
        std::string key = toks_[i_].text;
        i_ += 2;
        call.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        call.args.push_back(parse_expression(true));
      }
      if (!skip_op(",")) break;
    }
    expect_op(")");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const size_t pos = cur().pos;
      if (skip_op(".")) {
        auto a = std::make_unique<Expr>(Expr::Kind::Attr, pos);
        if (cur().kind == Token::Kind::Int) {
          // `x.0` is x[0] in jinja2.
          a->kind = Expr::Kind::Index;
          a->args.push_back(std::move(e));
          a->args.push_back(literal(Value::integer(toks_[i_++].ival), pos));
        } else {
          a->name = expect_name();
          a->args.push_back(std::move(e));
        }
        e = std::move(a);
      } else if (is_op("[")) {
        ++i_;
        e = parse_subscript(std::move(e), pos);
        expect_op("]");
      } else if (is_op("(")) {
        auto c = std::make_unique<Expr>(Expr::Kind::Call, pos);
        c->args.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, size_t pos) {
    ExprPtr parts[3];
    bool is_slice = false;
    if (!is_op(":")) parts[0] = parse_expression(true);
    if (skip_op(":")) {
      is_slice = true;
      if (!is_op("]") && !is_op(":")) parts[1] = parse_expression(true);
      if (skip_op(":")) {
        if (!is_op("]")) parts[2] = parse_expression(true);
      }
    }
    if (!is_slice) {
      auto e = std::make_unique<Expr>(Expr::Kind::Index, pos);
      e->args.push_back(std::move(obj));
      e->args.push_back(std::move(parts[0]));
      return e;
    }
    auto e = std::make_unique<Expr>(Expr::Kind::Slice, pos);
    e->args.push_back(std::move(obj));
    for (auto& p : parts) e->args.push_back(std::move(p));  // may be null
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      const size_t pos = cur().pos;
      if (skip_op("|")) {
        auto f = std::make_unique<Expr>(Expr::Kind::Filter, pos);
        f->name = expect_name();
        while (skip_op(".")) f->name += "." + expect_name();
        f->args.push_back(std::move(e));
        if (is_op("(")) parse_call_args(*f);
        e = std::move(f);
      } else if (skip_name("is")) {
        auto t = std::make_unique<Expr>(Expr::Kind::Test, pos);
        t->negated = skip_name("not");
        if (cur().kind == Token::Kind::Name) {
          t->name = toks_[i_++].text;
        } else if (cur().kind == Token::Kind::Op &&
                   (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
          t->name = toks_[i_++].text;
        } else {
          fail("expected a test name after 'is', found " + describe(cur()), cur().pos);
        }
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().kind == Token::Kind::Name || cur().kind == Token::Kind::String ||
                    cur().kind == Token::Kind::Int || cur().kind == Token::Kind::Float ||
                    is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          ExprPtr arg = parse_primary();
          t->args.push_back(parse_postfix(std::move(arg)));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  // Bounds recursion so a hostile template cannot overflow the stack.
  struct DepthGuard {
    Parser& p;
    DepthGuard(Parser& parser, size_t pos) : p(parser) {
      if (++p.depth_ > 200) p.fail("template nested too deeply", pos);
    }
    ~DepthGuard() { --p.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;
  };

  std::vector<Token> toks_;
  const std::string& src_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------
// Renderer

struct Function {
  std::string name;
  const Node* macro = nullptr;
};

struct Template::Impl {
  std::string source;  // normalized
  NodeList nodes;
};

namespace {

enum class Flow { Normal, Break, Continue };

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Positional index `idx` or keyword `name`, else `def`.
  Value get(size_t idx, std::string_view name, Value def = Value::undefined()) const {
    for (const auto& [k, v] : kw)
      if (k == name) return v;
    if (idx < pos.size()) return pos[idx];
    return def;
  }
  bool has(size_t idx, std::string_view name) const {
    if (idx < pos.size()) return true;
    return std::any_of(kw.begin(), kw.end(), [&](const auto& p) { return p.first == name; });
  }
};

std::string type_name(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined:
      return "undefined";
    case Value::Type::None:
      return "NoneType";
    case Value::Type::Bool:
      return "bool";
    case Value::Type::Int:
      return "int";
    case Value::Type::Float:
      return "float";
    case Value::Type::String:
      return "str";
    case Value::Type::List:
      return v.is_tuple ? "tuple" : "list";
    case Value::Type::Dict:
      return v.is_namespace ? "Namespace" : "dict";
    case Value::Type::Function:
      return "function";
  }
  return "?";
}

double as_double(const Value& v) {
  switch (v.type) {
    case Value::Type::Bool:
      return v.b ? 1 : 0;
    case Value::Type::Int:
      return static_cast<double>(v.i);
    case Value::Type::Float:
      return v.f;
    default:
      return 0;
  }
}
int64_t as_int(const Value& v) { return v.type == Value::Type::Bool ? (v.b ? 1 : 0) : v.i; }
bool is_intlike(const Value& v) {
  return v.type == Value::Type::Int || v.type == Value::Type::Bool;
}

bool values_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (is_intlike(a) && is_intlike(b)) return as_int(a) == as_int(b);
    return as_double(a) == as_double(b);
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Value::Type::Undefined:
    case Value::Type::None:
      return true;
    case Value::Type::String:
      return a.s.text == b.s.text;
    case Value::Type::List:
      if (a.is_tuple != b.is_tuple || a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!values_equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::Type::Dict:
      if (a.dict == b.dict) return true;
      if (a.is_namespace || b.is_namespace) return false;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k.text);
        if (!other || !values_equal(v, *other)) return false;
      }
      return true;
    case Value::Type::Function:
      return a.fn == b.fn;
    default:
      return false;
  }
}

// Python `<`; throws on unorderable types.
bool values_less(const Value& a, const Value& b, const std::string& where) {
  if (a.is_number() && b.is_number()) {
    if (is_intlike(a) && is_intlike(b)) return as_int(a) < as_int(b);
    return as_double(a) < as_double(b);
  }
  if (a.is_string() && b.is_string()) return a.s.text < b.s.text;
  if (a.type == Value::Type::List && b.type == Value::Type::List) {
    const size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      if (!values_equal((*a.list)[k], (*b.list)[k]))
        return values_less((*a.list)[k], (*b.list)[k], where);
    }
    return a.list->size() < b.list->size();
  }
  throw Error("cannot compare " + type_name(a) + " and " + type_name(b) + " with '<' at " + where);
}

// Items iterated by a for loop / filters: lists, dict keys, string characters.
ValueList iterate(const Value& v, const std::string& where) {
  switch (v.type) {
    case Value::Type::Undefined:
      return {};
    case Value::Type::List:
      return *v.list;
    case Value::Type::Dict: {
      ValueList keys;
      for (const auto& [k, e] : v.dict->items) keys.push_back(Value::string(k));
      return keys;
    }
    case Value::Type::String: {
      ValueList chars;
      const auto off = cp_offsets(v.s.text);
      for (size_t k = 0; k + 1 < off.size(); ++k)
        chars.push_back(Value::string(v.s.substr(off[k], off[k + 1] - off[k])));
      return chars;
    }
    default:
      throw Error("'" + type_name(v) + "' object is not iterable at " + where);
  }
}

// Python slice index normalization for length n.
void slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step_v,
                   int64_t& b, int64_t& e, int64_t& step) {
  step = step_v.is_number() ? as_int(step_v) : 1;
  if (step == 0) throw Error("slice step cannot be zero");
  auto norm = [&](const Value& v, int64_t def, bool is_start) -> int64_t {
    if (!v.is_number()) return def;
    int64_t x = as_int(v);
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    (void)is_start;
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  if (step > 0) {
    b = norm(start, 0, true);
    e = norm(stop, n, false);
  } else {
    b = norm(start, n - 1, true);
    e = norm(stop, -1, false);
  }
}

class Renderer {
 public:
  Renderer(const Template::Impl& t, const std::map<std::string, Value>& vars) : t_(t) {
    frames_.emplace_back();
    for (const auto& [k, v] : vars) frames_.back()[k] = v;
  }

  TString run() {
    TString out;
    render_nodes(t_.nodes, out);
    return out;
  }

 private:
  using Frame = std::map<std::string, Value, std::less<>>;

  std::string where(size_t pos) const { return Lexer::location(t_.source, pos); }
  [[noreturn]] void fail(const std::string& msg, size_t pos) const {
    throw Error(msg + " at " + where(pos));
  }

  const Value* lookup(std::string_view name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return &f->second;
    }
    return nullptr;
  }

  Flow render_nodes(const NodeList& nodes, TString& out) {
    for (const auto& n : nodes) {
      const Flow f = render_node(*n, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow render_node(const Node& n, TString& out) {
    switch (n.kind) {
      case Node::Kind::Text:
        out.append(n.text, false);
        return Flow::Normal;
      case Node::Kind::Output:
        append_str(out, eval(*n.expr), false);
        return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [cond, body] : n.branches) {
          if (eval(*cond).truthy()) return render_nodes(body, out);
        }
        return render_nodes(n.else_body, out);
      case Node::Kind::For:
        return render_for(n, out);
      case Node::Kind::Set: {
        Value v = eval(*n.expr);
        if (!n.attr.empty()) {
          const Value* ns = lookup(n.targets[0]);
          if (!ns || ns->type != Value::Type::Dict || !ns->is_namespace) {
            fail("cannot assign attribute '" + n.attr + "' on '" + n.targets[0] +
                     "': not a namespace",
                 n.pos);
          }
          ns->dict->set(TString(n.attr), std::move(v));
        } else {
          assign(n.targets, std::move(v), n.pos);
        }
        return Flow::Normal;
      }
      case Node::Kind::SetBlock: {
        TString captured;
        render_nodes(n.body, captured);
        frames_.back()[n.targets[0]] = Value::string(std::move(captured));
        return Flow::Normal;
      }
      case Node::Kind::Macro: {
        Value fn;
        fn.type = Value::Type::Function;
        fn.fn = std::make_shared<Function>(Function{n.targets[0], &n});
        frames_.back()[n.targets[0]] = std::move(fn);
        return Flow::Normal;
      }
      case Node::Kind::Break:
        return Flow::Break;
      case Node::Kind::Continue:
        return Flow::Continue;
      case Node::Kind::Block:
        return render_nodes(n.body, out);
    }
    return Flow::Normal;
  }

  void assign(const std::vector<std::string>& targets, Value v, size_t pos) {
    Frame& frame = frames_.back();
    if (targets.size() == 1) {
      frame[targets[0]] = std::move(v);
      return;
    }
    const ValueList items = iterate(v, where(pos));
    if (items.size() != targets.size()) {
      fail("cannot unpack " + std::to_string(items.size()) + " values into " +
               std::to_string(targets.size()) + " names",
           pos);
    }
    for (size_t k = 0; k < targets.size(); ++k) frame[targets[k]] = items[k];
  }

  Flow render_for(const Node& n, TString& out) {
    ValueList items = iterate(eval(*n.expr), where(n.expr->pos));
    if (n.filter) {
      ValueList kept;
      for (auto& item : items) {
        frames_.emplace_back();
        assign(n.targets, item, n.pos);
        const bool keep = eval(*n.filter).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) return render_nodes(n.else_body, out);
    const auto len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      // Each iteration starts from the enclosing scope: sets inside the body do
      // not survive the iteration (jinja2 scoping; namespaces exist for that).
      frames_.emplace_back();
      ValueDict loop;
      loop.set(TString("index"), Value::integer(k + 1));
      loop.set(TString("index0"), Value::integer(k));
      loop.set(TString("revindex"), Value::integer(len - k));
      loop.set(TString("revindex0"), Value::integer(len - k - 1));
      loop.set(TString("first"), Value::boolean(k == 0));
      loop.set(TString("last"), Value::boolean(k == len - 1));
      loop.set(TString("length"), Value::integer(len));
      loop.set(TString("depth"), Value::integer(1));
      loop.set(TString("depth0"), Value::integer(0));
      loop.set(TString("previtem"),
               k > 0 ? items[static_cast<size_t>(k - 1)] : Value::undefined("previtem"));
      loop.set(TString("nextitem"),
               k + 1 < len ? items[static_cast<size_t>(k + 1)] : Value::undefined("nextitem"));
      frames_.back()["loop"] = Value::make_dict(std::move(loop));
      assign(n.targets, items[static_cast<size_t>(k)], n.pos);
      const Flow f = render_nodes(n.body, out);
      frames_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  // --- expressions ---

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal:
        return e.literal;
      case Expr::Kind::Name: {
        if (const Value* v = lookup(e.name)) return *v;
        return Value::undefined(e.name);
      }
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        ValueList items;
        for (const auto& a : e.args) items.push_back(eval(*a));
        return Value::make_list(std::move(items), e.kind == Expr::Kind::Tuple);
      }
      case Expr::Kind::Dict: {
        ValueDict d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k]);
          if (!key.is_string()) fail("dict literal keys must be strings", e.args[k]->pos);
          d.set(key.s, eval(*e.args[k + 1]));
        }
        return Value::make_dict(std::move(d));
      }
      case Expr::Kind::Attr:
        return get_attr(eval(*e.args[0]), e.name, e);
      case Expr::Kind::Index:
        return get_item(eval(*e.args[0]), eval(*e.args[1]), e);
      case Expr::Kind::Slice:
        return slice(e);
      case Expr::Kind::Call:
        return call(e);
      case Expr::Kind::Filter:
        return filter(e);
      case Expr::Kind::Test: {
        const bool r = test(e.name, eval(*e.args[0]), args_from(e, 1), e.pos);
        return Value::boolean(e.negated ? !r : r);
      }
      case Expr::Kind::Neg:
      case Expr::Kind::Pos: {
        Value v = eval(*e.args[0]);
        if (!v.is_number())
          fail("bad operand type for unary " + std::string(e.kind == Expr::Kind::Neg ? "-" : "+") +
                   ": '" + type_name(v) + "'",
               e.pos);
        if (e.kind == Expr::Kind::Pos) return is_intlike(v) ? Value::integer(as_int(v)) : v;
        if (is_intlike(v) && as_int(v) == std::numeric_limits<int64_t>::min()) {
          return Value::number(-static_cast<double>(as_int(v)));
        }
        return is_intlike(v) ? Value::integer(-as_int(v)) : Value::number(-v.f);
      }
      case Expr::Kind::Not:
        return Value::boolean(!eval(*e.args[0]).truthy());
      case Expr::Kind::And: {
        Value a = eval(*e.args[0]);
        return a.truthy() ? eval(*e.args[1]) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.args[0]);
        return a.truthy() ? a : eval(*e.args[1]);
      }
      case Expr::Kind::Concat: {
        TString s;
        for (const auto& a : e.args) s.append(to_str(eval(*a)));
        return Value::string(std::move(s));
      }
      case Expr::Kind::Binary:
        return arith(e.name, eval(*e.args[0]), eval(*e.args[1]), e.pos);
      case Expr::Kind::Compare: {
        Value left = eval(*e.args[0]);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.args[k + 1]);
          if (!compare(e.ops[k], left, right, e.pos)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Kind::Cond: {
        if (eval(*e.args[1]).truthy()) return eval(*e.args[0]);
        if (e.args.size() > 2) return eval(*e.args[2]);
        return Value::undefined();
      }
    }
    return Value::undefined();
  }

  bool compare(const std::string& op, const Value& a, const Value& b, size_t pos) {
    const std::string w = where(pos);
    if (op == "==") return values_equal(a, b);
    if (op == "!=") return !values_equal(a, b);
    if (op == "<") return values_less(a, b, w);
    if (op == ">") return values_less(b, a, w);
    if (op == "<=") return !values_less(b, a, w);
    if (op == ">=") return !values_less(a, b, w);
    if (op == "in") return contains(b, a, pos);
    if (op == "not in") return !contains(b, a, pos);
    fail("unknown comparison '" + op + "'", pos);
  }

  bool contains(const Value& container, const Value& item, size_t pos) {
    switch (container.type) {
      case Value::Type::String:
        if (!item.is_string())
          fail("'in <string>' requires a string as left operand, not " + type_name(item), pos);
        return container.s.text.find(item.s.text) != std::string::npos;
      case Value::Type::List:
        return std::any_of(container.list->begin(), container.list->end(),
                           [&](const Value& v) { return values_equal(v, item); });
      case Value::Type::Dict:
        return item.is_string() && container.dict->find(item.s.text) != nullptr;
      case Value::Type::Undefined:
        return false;
      default:
        fail("argument of type '" + type_name(container) + "' is not iterable", pos);
    }
  }

  Value arith(const std::string& op, const Value& a, const Value& b, size_t pos) {
    if (a.is_number() && b.is_number()) {
      const bool ints = is_intlike(a) && is_intlike(b);
      if (op == "/") {
        if (as_double(b) == 0) fail("division by zero", pos);
        return Value::number(as_double(a) / as_double(b));
      }
      if (ints) {
        const int64_t x = as_int(a), y = as_int(b);
        // Python integers do not overflow; past int64 we fall back to float
        // rather than wrap (or hit undefined behaviour).
        int64_t r = 0;
        if (op == "+") {
          return __builtin_add_overflow(x, y, &r)
                     ? Value::number(static_cast<double>(x) + static_cast<double>(y))
                     : Value::integer(r);
        }
        if (op == "-") {
          return __builtin_sub_overflow(x, y, &r)
                     ? Value::number(static_cast<double>(x) - static_cast<double>(y))
                     : Value::integer(r);
        }
        if (op == "*") {
          return __builtin_mul_overflow(x, y, &r)
                     ? Value::number(static_cast<double>(x) * static_cast<double>(y))
                     : Value::integer(r);
        }
        if (op == "//" || op == "%") {
          if (y == 0) fail("integer division or modulo by zero", pos);
          if (x == std::numeric_limits<int64_t>::min() && y == -1) {
            return op == "//" ? Value::number(-static_cast<double>(x)) : Value::integer(0);
          }
          int64_t q = x / y, r = x % y;
          if (r != 0 && ((r < 0) != (y < 0))) {  // Python floors
            --q;
            r += y;
          }
          return Value::integer(op == "//" ? q : r);
        }
        if (op == "**") {
          if (y < 0) return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
          int64_t p = 1;
          for (int64_t k = 0; k < y; ++k) {
            if (__builtin_mul_overflow(p, x, &p)) {
              return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
            }
          }
          return Value::integer(p);
        }
      } else {
        const double x = as_double(a), y = as_double(b);
        if (op == "+") return Value::number(x + y);
        if (op == "-") return Value::number(x - y);
        if (op == "*") return Value::number(x * y);
        if (op == "**") return Value::number(std::pow(x, y));
        if (op == "//" || op == "%") {
          if (y == 0) fail("float division or modulo by zero", pos);
          const double q = std::floor(x / y);
          return Value::number(op == "//" ? q : x - q * y);
        }
      }
    }
    if (op == "+" && a.is_string() && b.is_string()) {
      TString s = a.s;
      s.append(b.s);
      return Value::string(std::move(s));
    }
    if (op == "+" && a.type == Value::Type::List && b.type == Value::Type::List) {
      ValueList items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(items));
    }
    if (op == "*" && ((a.is_string() && is_intlike(b)) || (is_intlike(a) && b.is_string()))) {
      const Value& s = a.is_string() ? a : b;
      const int64_t count = a.is_string() ? as_int(b) : as_int(a);
      TString out;
      for (int64_t k = 0; k < count && k < 1000000; ++k) out.append(s.s);
      return Value::string(std::move(out));
    }
    if (op == "%" && a.is_string()) fail("unsupported construct: '%' string formatting", pos);
    if (a.is_undefined() || b.is_undefined()) {
      const Value& u = a.is_undefined() ? a : b;
      fail("'" + (u.undefined_name.empty() ? std::string("value") : u.undefined_name) +
               "' is undefined",
           pos);
    }
    fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
             "'",
         pos);
  }

  [[noreturn]] void undefined_error(const Value& v, size_t pos) const {
    fail("'" + (v.undefined_name.empty() ? std::string("value") : v.undefined_name) +
             "' is undefined",
         pos);
  }

  Value get_attr(const Value& obj, const std::string& name, const Expr& e) {
    if (obj.is_undefined()) undefined_error(obj, e.pos);
    if (obj.type == Value::Type::Dict) {
      if (const Value* v = obj.dict->find(name)) return *v;
    }
    return Value::undefined(type_name(obj) + " object has no attribute '" + name + "'");
  }

  Value get_item(const Value& obj, const Value& key, const Expr& e) {
    if (obj.is_undefined()) undefined_error(obj, e.pos);
    if (obj.type == Value::Type::Dict && key.is_string()) {
      if (const Value* v = obj.dict->find(key.s.text)) return *v;
      return Value::undefined("key '" + key.s.text + "'");
    }
    if ((obj.type == Value::Type::List || obj.is_string()) && is_intlike(key)) {
      int64_t idx = as_int(key);
      if (obj.type == Value::Type::List) {
        const auto n = static_cast<int64_t>(obj.list->size());
        if (idx < 0) idx += n;
        if (idx < 0 || idx >= n) return Value::undefined("index " + std::to_string(as_int(key)));
        return (*obj.list)[static_cast<size_t>(idx)];
      }
      const auto off = cp_offsets(obj.s.text);
      const auto n = static_cast<int64_t>(off.size() - 1);
      if (idx < 0) idx += n;
      if (idx < 0 || idx >= n) return Value::undefined("index " + std::to_string(as_int(key)));
      const auto u = static_cast<size_t>(idx);
      return Value::string(obj.s.substr(off[u], off[u + 1] - off[u]));
    }
    return Value::undefined("item");
  }

  Value slice(const Expr& e) {
    Value obj = eval(*e.args[0]);
    if (obj.is_undefined()) undefined_error(obj, e.pos);
    Value parts[3];
    for (int k = 0; k < 3; ++k) {
      if (e.args[static_cast<size_t>(k + 1)]) parts[k] = eval(*e.args[static_cast<size_t>(k + 1)]);
    }
    int64_t b, en, step;
    if (obj.type == Value::Type::List) {
      slice_indices(static_cast<int64_t>(obj.list->size()), parts[0], parts[1], parts[2], b, en,
                    step);
      ValueList out;
      for (int64_t k = b; step > 0 ? k < en : k > en; k += step)
        out.push_back((*obj.list)[static_cast<size_t>(k)]);
      return Value::make_list(std::move(out), obj.is_tuple);
    }
    if (obj.is_string()) {
      const auto off = cp_offsets(obj.s.text);
      slice_indices(static_cast<int64_t>(off.size() - 1), parts[0], parts[1], parts[2], b, en,
                    step);
      TString out;
      for (int64_t k = b; step > 0 ? k < en : k > en; k += step) {
        const auto u = static_cast<size_t>(k);
        out.append(obj.s.substr(off[u], off[u + 1] - off[u]));
      }
      return Value::string(std::move(out));
    }
    fail("'" + type_name(obj) + "' object is not subscriptable with a slice", e.pos);
  }

  CallArgs args_from(const Expr& e, size_t first) {
    CallArgs a;
    for (size_t k = first; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k]));
    for (const auto& [name, ex] : e.kwargs) a.kw.emplace_back(name, eval(*ex));
    return a;
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::Kind::Attr) {
      Value obj = eval(*callee.args[0]);
      if (obj.is_undefined()) undefined_error(obj, callee.pos);
      return call_method(obj, callee.name, args_from(e, 1), e.pos);
    }
    if (callee.kind == Expr::Kind::Name) {
      const Value* v = lookup(callee.name);
      if (v && v->type == Value::Type::Function) return call_macro(*v->fn, args_from(e, 1), e.pos);
      if (!v) return call_global(callee.name, args_from(e, 1), e.pos);
    }
    Value fn = eval(callee);
    if (fn.type == Value::Type::Function) return call_macro(*fn.fn, args_from(e, 1), e.pos);
    fail("'" + type_name(fn) + "' object is not callable", e.pos);
  }

  Value call_macro(const Function& fn, const CallArgs& args, size_t pos) {
    if (++depth_ > 64) fail("macro recursion too deep in '" + fn.name + "'", pos);
    const Node& m = *fn.macro;
    // Macros see the template's top-level variables and their own arguments.
    std::vector<Frame> saved;
    saved.assign(frames_.begin() + 1, frames_.end());
    frames_.resize(1);
    frames_.emplace_back();
    for (size_t k = 0; k < m.params.size(); ++k) {
      const auto& [pname, def] = m.params[k];
      Value v = args.get(k, pname, Value::undefined(pname));
      if (v.is_undefined() && def && !args.has(k, pname)) v = eval(*def);
      frames_.back()[pname] = std::move(v);
    }
    TString out;
    render_nodes(m.body, out);
    frames_.resize(1);
    frames_.insert(frames_.end(), saved.begin(), saved.end());
    --depth_;
    return Value::string(std::move(out));
  }

  Value call_global(const std::string& name, const CallArgs& a, size_t pos) {
    if (name == "raise_exception") {
      const Value msg = a.get(0, "message", Value::string(""));
      throw RaisedException(to_str(msg).text);
    }
    if (name == "range") {
      int64_t start = 0, stop = 0, step = 1;
      for (const auto& v : a.pos)
        if (!is_intlike(v)) fail("range() takes integers, got " + type_name(v), pos);
      if (a.pos.size() == 1) {
        stop = as_int(a.pos[0]);
      } else if (a.pos.size() >= 2) {
        start = as_int(a.pos[0]);
        stop = as_int(a.pos[1]);
        if (a.pos.size() > 2) step = as_int(a.pos[2]);
      } else {
        fail("range() needs at least one argument", pos);
      }
      if (step == 0) fail("range() step must not be zero", pos);
      ValueList out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        if (out.size() >= 1000000) fail("range() longer than 1000000 items", pos);
        out.push_back(Value::integer(k));
      }
      return Value::make_list(std::move(out));
    }
    if (name == "namespace" || name == "dict") {
      ValueDict d;
      if (!a.pos.empty()) {
        if (a.pos[0].type != Value::Type::Dict)
          fail(name + "() takes keyword arguments or one dict", pos);
        d = *a.pos[0].dict;
      }
      for (const auto& [k, v] : a.kw) d.set(TString(k), v);
      Value v = Value::make_dict(std::move(d));
      v.is_namespace = name == "namespace";
      return v;
    }
    if (name == "strftime_now") {
      const std::string fmt = to_str(a.get(0, "format", Value::string("%Y-%m-%d"))).text;
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t len = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
      return Value::string(std::string(buf, len));
    }
    fail("unknown function '" + name + "'", pos);
  }

  static std::optional<std::string> opt_chars(const CallArgs& a, size_t idx,
                                              std::string_view name) {
    Value v = a.get(idx, name);
    if (v.is_string()) return v.s.text;
    return std::nullopt;
  }

  Value split(const TString& s, const CallArgs& a, size_t pos) {
    const Value sep = a.get(0, "sep", Value::none());
    const Value maxv = a.get(1, "maxsplit", Value::integer(-1));
    int64_t maxsplit = is_intlike(maxv) ? as_int(maxv) : -1;
    ValueList parts;
    if (sep.is_none() || sep.is_undefined()) {
      // Whitespace split: runs of whitespace separate, no empty strings.
      const auto off = cp_offsets(s.text);
      const size_t n = off.size() - 1;
      size_t k = 0;
      auto space = [&](size_t c) {
        return is_py_space(decode_cp(s.text, off[c], off[c + 1] - off[c]));
      };
      while (true) {
        while (k < n && space(k)) ++k;
        if (k >= n) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
          size_t e = n;
          while (e > k && space(e - 1)) --e;
          parts.push_back(Value::string(s.substr(off[k], off[e] - off[k])));
          break;
        }
        size_t j = k;
        while (j < n && !space(j)) ++j;
        parts.push_back(Value::string(s.substr(off[k], off[j] - off[k])));
        k = j;
      }
      return Value::make_list(std::move(parts));
    }
    if (!sep.is_string() || sep.s.text.empty())
      fail("split(): separator must be a non-empty string", pos);
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      const size_t hit = s.text.find(sep.s.text, start);
      if (hit == std::string::npos) break;
      parts.push_back(Value::string(s.substr(start, hit - start)));
      start = hit + sep.s.text.size();
    }
    parts.push_back(Value::string(s.substr(start, std::string::npos)));
    return Value::make_list(std::move(parts));
  }

  Value call_method(const Value& obj, const std::string& name, const CallArgs& a, size_t pos) {
    if (obj.is_string()) {
      const TString& s = obj.s;
      if (name == "strip") return Value::string(py_strip(s, opt_chars(a, 0, "chars"), true, true));
      if (name == "lstrip")
        return Value::string(py_strip(s, opt_chars(a, 0, "chars"), true, false));
      if (name == "rstrip")
        return Value::string(py_strip(s, opt_chars(a, 0, "chars"), false, true));
      if (name == "upper") return Value::string(map_case(s, 1));
      if (name == "lower") return Value::string(map_case(s, 0));
      if (name == "title") return Value::string(map_case(s, 2));
      if (name == "capitalize") return Value::string(map_case(s, 3));
      if (name == "split") return split(s, a, pos);
      if (name == "startswith" || name == "endswith") {
        const Value arg = a.get(0, "prefix");
        ValueList options = arg.type == Value::Type::List ? *arg.list : ValueList{arg};
        for (const auto& o : options) {
          if (!o.is_string()) fail(name + "() takes a string or a tuple of strings", pos);
          const std::string& p = o.s.text;
          if (p.size() > s.text.size()) continue;
          if (name == "startswith" ? s.text.compare(0, p.size(), p) == 0
                                   : s.text.compare(s.text.size() - p.size(), p.size(), p) == 0) {
            return Value::boolean(true);
          }
        }
        return Value::boolean(false);
      }
      if (name == "replace") {
        const Value old = a.get(0, "old"), repl = a.get(1, "new"),
                    count = a.get(2, "count", Value::integer(-1));
        if (!old.is_string() || !repl.is_string()) fail("replace() takes two strings", pos);
        return Value::string(py_replace(s, old.s, repl.s, is_intlike(count) ? as_int(count) : -1));
      }
      if (name == "find" || name == "count") {
        const Value sub = a.get(0, "sub");
        if (!sub.is_string()) fail(name + "() takes a string", pos);
        if (name == "find") {
          const size_t hit = s.text.find(sub.s.text);
          if (hit == std::string::npos) return Value::integer(-1);
          return Value::integer(static_cast<int64_t>(cp_count(s.text.substr(0, hit))));
        }
        if (sub.s.text.empty()) return Value::integer(static_cast<int64_t>(cp_count(s.text) + 1));
        int64_t c = 0;
        for (size_t p = s.text.find(sub.s.text); p != std::string::npos;
             p = s.text.find(sub.s.text, p + sub.s.text.size()))
          ++c;
        return Value::integer(c);
      }
      if (name == "join") {
        TString out;
        const ValueList items = iterate(a.get(0, "iterable"), where(pos));
        for (size_t k = 0; k < items.size(); ++k) {
          if (k) out.append(s);
          if (!items[k].is_string())
            fail("join(): sequence item " + std::to_string(k) + ": expected str", pos);
          out.append(items[k].s);
        }
        return Value::string(std::move(out));
      }
      if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum") {
        if (s.text.empty()) return Value::boolean(false);
        for (char c : s.text) {
          const auto u = static_cast<unsigned char>(c);
          const bool ok = name == "isdigit"   ? std::isdigit(u)
                          : name == "isspace" ? is_ascii_space(c)
                          : name == "isalpha" ? std::isalpha(u)
                                              : std::isalnum(u);
          if (!ok) return Value::boolean(false);
        }
        return Value::boolean(true);
      }
      fail("unsupported string method '" + name + "'", pos);
    }
    if (obj.type == Value::Type::Dict && !obj.is_namespace) {
      if (name == "items") return items_of(obj);
      if (name == "keys") return Value::make_list(iterate(obj, where(pos)));
      if (name == "values") {
        ValueList vals;
        for (const auto& [k, v] : obj.dict->items) vals.push_back(v);
        return Value::make_list(std::move(vals));
      }
      if (name == "get") {
        const Value key = a.get(0, "key");
        if (key.is_string()) {
          if (const Value* v = obj.dict->find(key.s.text)) return *v;
        }
        return a.get(1, "default", Value::none());
      }
      if (const Value* v = obj.dict->find(name); v && v->type == Value::Type::Function) {
        return call_macro(*v->fn, a, pos);
      }
      fail("unsupported dict method '" + name + "'", pos);
    }
    if (obj.type == Value::Type::List) {
      if (name == "append" || name == "pop" || name == "insert" || name == "extend" ||
          name == "remove") {
        fail("list." + name +
                 "() is not allowed: templates cannot modify values (immutable sandbox)",
             pos);
      }
      if (name == "index") {
        const Value item = a.get(0, "value");
        for (size_t k = 0; k < obj.list->size(); ++k)
          if (values_equal((*obj.list)[k], item)) return Value::integer(static_cast<int64_t>(k));
        fail("list.index(x): x not in list", pos);
      }
      if (name == "count") {
        const Value item = a.get(0, "value");
        return Value::integer(std::count_if(obj.list->begin(), obj.list->end(),
                                            [&](const Value& v) { return values_equal(v, item); }));
      }
      fail("unsupported list method '" + name + "'", pos);
    }
    fail("'" + type_name(obj) + "' object has no method '" + name + "'", pos);
  }

  // int(x) for a float; values int64 cannot hold give the filter's default.
  static Value float_to_int(double d, const Value& def) {
    if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return def;
    return Value::integer(static_cast<int64_t>(d));
  }

  static Value items_of(const Value& obj) {
    ValueList out;
    if (obj.type == Value::Type::Dict) {
      for (const auto& [k, v] : obj.dict->items)
        out.push_back(Value::make_list({Value::string(k), v}, true));
    }
    return Value::make_list(std::move(out));
  }

  // Attribute lookup by name (dotted path allowed), as selectattr/map use.
  Value attr_path(const Value& item, const std::string& path) {
    Value cur = item;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string part =
          path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (cur.type == Value::Type::Dict) {
        const Value* v = cur.dict->find(part);
        cur = v ? *v : Value::undefined(part);
      } else if (cur.type == Value::Type::List && !part.empty() &&
                 std::all_of(part.begin(), part.end(),
                             [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
        const size_t idx = std::stoul(part);
        cur = idx < cur.list->size() ? (*cur.list)[idx] : Value::undefined(part);
      } else {
        cur = Value::undefined(part);
      }
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Value filter(const Expr& e) {
    const std::string& name = e.name;
    Value v = eval(*e.args[0]);
    const CallArgs a = args_from(e, 1);
    return apply_filter(name, v, a, e.pos);
  }

  Value apply_filter(const std::string& name, const Value& v, const CallArgs& a, size_t pos) {
    if (name == "trim") {
      return Value::string(py_strip(to_str(v), opt_chars(a, 0, "chars"), true, true));
    }
    if (name == "length" || name == "count") {
      switch (v.type) {
        case Value::Type::String:
          return Value::integer(static_cast<int64_t>(cp_count(v.s.text)));
        case Value::Type::List:
          return Value::integer(static_cast<int64_t>(v.list->size()));
        case Value::Type::Dict:
          return Value::integer(static_cast<int64_t>(v.dict->items.size()));
        case Value::Type::Undefined:
          return Value::integer(0);
        default:
          fail("object of type '" + type_name(v) + "' has no len()", pos);
      }
    }
    if (name == "tojson") {
      const Value indent = a.get(0, "indent", Value::none());
      return Value::string(to_json(v, is_intlike(indent) ? static_cast<int>(as_int(indent)) : -1));
    }
    if (name == "items") {
      if (v.is_undefined()) return Value::make_list();
      if (v.type != Value::Type::Dict)
        fail("items filter: can only get item pairs from a mapping", pos);
      return items_of(v);
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      const int mode = name == "lower" ? 0 : name == "upper" ? 1 : name == "title" ? 2 : 3;
      return Value::string(map_case(to_str(v), mode));
    }
    if (name == "default" || name == "d") {
      const bool boolean = a.get(1, "boolean", Value::boolean(false)).truthy();
      if (v.is_undefined() || (boolean && !v.truthy()))
        return a.get(0, "default_value", Value::string(""));
      return v;
    }
    if (name == "first" || name == "last") {
      ValueList items = iterate(v, where(pos));
      if (items.empty()) return Value::undefined(name);
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      const Value sep = a.get(0, "d", Value::string(""));
      const Value attr = a.get(1, "attribute", Value::none());
      TString out;
      const ValueList items = iterate(v, where(pos));
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out.append(to_str(sep));
        out.append(to_str(attr.is_string() ? attr_path(items[k], attr.s.text) : items[k]));
      }
      return Value::string(std::move(out));
    }
    if (name == "replace") {
      const Value old = a.get(0, "old"), repl = a.get(1, "new"),
                  count = a.get(2, "count", Value::none());
      if (!old.is_string() || !repl.is_string()) fail("replace filter takes two strings", pos);
      return Value::string(
          py_replace(to_str(v), old.s, repl.s, is_intlike(count) ? as_int(count) : -1));
    }
    if (name == "string") return Value::string(to_str(v));
    if (name == "safe") return v;
    if (name == "int") {
      const Value def = a.get(0, "default", Value::integer(0));
      if (is_intlike(v)) return Value::integer(as_int(v));
      if (v.type == Value::Type::Float) return float_to_int(v.f, def);
      if (v.is_string()) {
        const std::string t = py_strip(v.s, std::nullopt, true, true).text;
        int64_t out = 0;
        auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
        if (ec == std::errc() && ptr == t.data() + t.size() && !t.empty())
          return Value::integer(out);
        char* end = nullptr;
        const double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && end == t.c_str() + t.size()) return float_to_int(d, def);
      }
      return def;
    }
    if (name == "float") {
      const Value def = a.get(0, "default", Value::number(0.0));
      if (v.is_number()) return Value::number(as_double(v));
      if (v.is_string()) {
        const std::string t = py_strip(v.s, std::nullopt, true, true).text;
        char* end = nullptr;
        const double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && end == t.c_str() + t.size()) return Value::number(d);
      }
      return def;
    }
    if (name == "list") return Value::make_list(iterate(v, where(pos)));
    if (name == "reverse") {
      if (v.is_string()) {
        const auto off = cp_offsets(v.s.text);
        TString out;
        for (size_t k = off.size() - 1; k > 0; --k)
          out.append(v.s.substr(off[k - 1], off[k] - off[k - 1]));
        return Value::string(std::move(out));
      }
      ValueList items = iterate(v, where(pos));
      std::reverse(items.begin(), items.end());
      return Value::make_list(std::move(items));
    }
    if (name == "unique") {
      ValueList out;
      for (auto& item : iterate(v, where(pos))) {
        if (std::none_of(out.begin(), out.end(),
                         [&](const Value& o) { return values_equal(o, item); }))
          out.push_back(item);
      }
      return Value::make_list(std::move(out));
    }
    if (name == "sort") {
      const bool reverse = a.get(0, "reverse", Value::boolean(false)).truthy();
      const bool case_sensitive = a.get(1, "case_sensitive", Value::boolean(false)).truthy();
      const Value attr = a.get(2, "attribute", Value::none());
      ValueList items = iterate(v, where(pos));
      auto key = [&](const Value& item) {
        Value k = attr.is_string() ? attr_path(item, attr.s.text) : item;
        if (!case_sensitive && k.is_string()) k = Value::string(ascii_lower(k.s.text));
        return k;
      };
      const std::string w = where(pos);
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        return reverse ? values_less(key(y), key(x), w) : values_less(key(x), key(y), w);
      });
      return Value::make_list(std::move(items));
    }
    if (name == "map") {
      ValueList out;
      const Value attr = a.get(99, "attribute", Value::none());
      for (const auto& item : iterate(v, where(pos))) {
        if (attr.is_string()) {
          Value r = attr_path(item, attr.s.text);
          if (r.is_undefined() && a.has(99, "default")) r = a.get(99, "default");
          out.push_back(std::move(r));
        } else {
          if (a.pos.empty() || !a.pos[0].is_string())
            fail("map filter needs a filter name or attribute=", pos);
          CallArgs rest;
          rest.pos.assign(a.pos.begin() + 1, a.pos.end());
          rest.kw = a.kw;
          out.push_back(apply_filter(a.pos[0].s.text, item, rest, pos));
        }
      }
      return Value::make_list(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "selectattr" || name == "select";
      const size_t test_idx = by_attr ? 1 : 0;
      std::string attr;
      if (by_attr) {
        if (a.pos.empty() || !a.pos[0].is_string()) fail(name + " needs an attribute name", pos);
        attr = a.pos[0].s.text;
      }
      std::string test_name;
      CallArgs test_args;
      if (a.pos.size() > test_idx) {
        if (!a.pos[test_idx].is_string()) fail(name + ": the test name must be a string", pos);
        test_name = a.pos[test_idx].s.text;
        test_args.pos.assign(a.pos.begin() + static_cast<ptrdiff_t>(test_idx) + 1, a.pos.end());
      }
      ValueList out;
      for (const auto& item : iterate(v, where(pos))) {
        const Value subject = by_attr ? attr_path(item, attr) : item;
        const bool r =
            test_name.empty() ? subject.truthy() : test(test_name, subject, test_args, pos);
        if (r == keep_if) out.push_back(item);
      }
      return Value::make_list(std::move(out));
    }
    if (name == "abs") {
      if (!v.is_number()) fail("abs filter needs a number", pos);
      if (!is_intlike(v)) return Value::number(std::fabs(v.f));
      if (as_int(v) == std::numeric_limits<int64_t>::min())
        return Value::number(-static_cast<double>(as_int(v)));
      return Value::integer(std::llabs(as_int(v)));
    }
    if (name == "round") {
      const int64_t precision = as_int(a.get(0, "precision", Value::integer(0)));
      const std::string method = to_str(a.get(1, "method", Value::string("common"))).text;
      const double scale = std::pow(10.0, static_cast<double>(precision));
      const double x = as_double(v) * scale;
      // Python's round() ("common") rounds halves to even; nearbyint does too.
      const double r = method == "floor"  ? std::floor(x)
                       : method == "ceil" ? std::ceil(x)
                                          : std::nearbyint(x);
      return Value::number(r / scale);
    }
    if (name == "indent") return indent(v, a, pos);
    if (name == "e" || name == "escape") {
      const TString s = to_str(v);
      TString out;
      for (size_t k = 0; k < s.text.size(); ++k) {
        const char c = s.text[k];
        const bool t = s.tainted_at(k);
        switch (c) {
          case '&':
            out.append("&amp;", t);
            break;
          case '<':
            out.append("&lt;", t);
            break;
          case '>':
            out.append("&gt;", t);
            break;
          case '"':
            out.append("&#34;", t);
            break;
          case '\'':
            out.append("&#39;", t);
            break;
          default:
            out.append(std::string_view(&c, 1), t);
        }
      }
      return Value::string(std::move(out));
    }
    fail("unsupported filter '" + name + "'", pos);
  }

  // jinja2's indent(width=4, first=False, blank=False).
  Value indent(const Value& v, const CallArgs& a, size_t pos) {
    const Value w = a.get(0, "width", Value::integer(4));
    const bool first = a.get(1, "first", Value::boolean(false)).truthy();
    const bool blank = a.get(2, "blank", Value::boolean(false)).truthy();
    const TString pad =
        w.is_string()
            ? w.s
            : TString(std::string(static_cast<size_t>(std::max<int64_t>(0, as_int(w))), ' '));
    TString s = to_str(v);
    s.append("\n", false);
    std::vector<TString> lines;
    size_t start = 0;
    for (size_t k = 0; k < s.text.size(); ++k) {
      if (s.text[k] == '\n') {
        lines.push_back(s.substr(start, k - start));
        start = k + 1;
      }
    }
    (void)pos;
    TString out;
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k) {
        out.append("\n", false);
        if (blank || !lines[k].text.empty()) out.append(pad);
      }
      out.append(lines[k]);
    }
    if (first) {
      TString with = pad;
      with.append(out);
      out = std::move(with);
    }
    return Value::string(std::move(out));
  }

  bool test(const std::string& name, const Value& v, const CallArgs& a, size_t pos) {
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.type == Value::Type::Bool;
    if (name == "false") return v.type == Value::Type::Bool && !v.b;
    if (name == "true") return v.type == Value::Type::Bool && v.b;
    if (name == "integer") return v.type == Value::Type::Int;
    if (name == "float") return v.type == Value::Type::Float;
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.type == Value::Type::Dict && !v.is_namespace;
    if (name == "iterable") {
      return v.is_undefined() || v.is_string() || v.type == Value::Type::List ||
             (v.type == Value::Type::Dict && !v.is_namespace);
    }
    if (name == "sequence") {
      return v.is_string() || v.type == Value::Type::List ||
             (v.type == Value::Type::Dict && !v.is_namespace);
    }
    if (name == "callable") return v.type == Value::Type::Function;
    if (name == "odd" || name == "even") {
      if (!is_intlike(v)) fail("'" + name + "' test needs an integer", pos);
      return (((as_int(v) % 2) + 2) % 2 == 1) == (name == "odd");
    }
    if (name == "divisibleby") {
      const Value d = a.get(0, "num");
      if (!is_intlike(v) || !is_intlike(d) || as_int(d) == 0)
        fail("divisibleby needs non-zero integers", pos);
      return as_int(v) % as_int(d) == 0;
    }
    if (name == "lower" || name == "upper") {
      if (!v.is_string()) return false;
      const TString m = map_case(v.s, name == "lower" ? 0 : 1);
      return m.text == v.s.text;
    }
    if (name == "in") return contains(a.get(0, "seq"), v, pos);
    static const std::pair<const char*, const char*> cmp_tests[] = {
        {"equalto", "=="}, {"eq", "=="},         {"==", "=="}, {"ne", "!="}, {"!=", "!="},
        {"lt", "<"},       {"lessthan", "<"},    {"<", "<"},   {"le", "<="}, {"<=", "<="},
        {"gt", ">"},       {"greaterthan", ">"}, {">", ">"},   {"ge", ">="}, {">=", ">="}};
    for (const auto& [tname, op] : cmp_tests) {
      if (name == tname) return compare(op, v, a.get(0, "other"), pos);
    }
    if (name == "sameas") {
      const Value o = a.get(0, "other");
      if (v.type != o.type) return false;
      if (v.type == Value::Type::None || v.type == Value::Type::Undefined) return true;
      if (v.type == Value::Type::Bool) return v.b == o.b;
      if (v.type == Value::Type::List) return v.list == o.list;
      if (v.type == Value::Type::Dict) return v.dict == o.dict;
      return values_equal(v, o);
    }
    fail("unsupported test '" + name + "'", pos);
  }

  const Template::Impl& t_;
  std::vector<Frame> frames_;
  int depth_ = 0;
};

}  // namespace

Template::Template(std::string_view source) : impl_(std::make_unique<Impl>()) {
  impl_->source = normalize_source(source);
  Lexer lexer(impl_->source);
  Parser parser(lexer.run(), impl_->source);
  impl_->nodes = parser.parse_template();
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

TString Template::render(const std::map<std::string, Value>& vars) const {
  Renderer r(*impl_, vars);
  return r.run();
}

}  // namespace kiln::jinja
