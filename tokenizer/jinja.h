// A small Jinja2 interpreter for chat templates, with taint tracking.
//
// It implements the subset of Jinja2 that real Hugging Face chat templates use,
// with the semantics of jinja2's ImmutableSandboxedEnvironment configured as
// transformers does (trim_blocks, lstrip_blocks, loop controls, the
// raise_exception and strftime_now globals, a json.dumps-compatible tojson).
// Values follow Python's rules (code-point string indexing, repr() printing,
// int/float arithmetic), because the oracle for every template is jinja2.
//
// Taint: every string byte carries a flag saying whether it came from
// untrusted input (message text, request variables) or from the template's own
// text. The flag follows the bytes through concatenation, slicing, filters and
// methods, so the renderer can hand the tokenizer "template text" (special
// tokens allowed) and "user text" (special tokens never recognised) separately,
// without searching the output for markup after the fact.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::jinja {

// Parse and render errors; the message names the line/column and the construct.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// raise_exception(msg) called by a template; what() is msg itself, unprefixed,
// because templates use it to tell the user what is wrong with their messages.
class RaisedException : public Error {
 public:
  using Error::Error;
};

// A string whose bytes each carry a taint flag. `taint` is empty when no byte is
// tainted (the common case for template literals), else it has text.size() entries.
struct TString {
  std::string text;
  std::vector<uint8_t> taint;

  TString() = default;
  explicit TString(std::string s, bool tainted = false);

  bool tainted_at(size_t i) const { return !taint.empty() && taint[i] != 0; }
  bool any_tainted() const;
  void append(std::string_view s, bool tainted);
  void append(const TString& other);
  // Bytes [pos, pos+len) with their taint.
  TString substr(size_t pos, size_t len) const;
};

struct Function;
struct Value;
struct ValueDict;
using ValueList = std::vector<Value>;

struct Value {
  enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Function };
  Type type = Type::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  TString s;
  std::shared_ptr<ValueList> list;  // also tuples (is_tuple)
  std::shared_ptr<ValueDict> dict;  // also namespaces (is_namespace)
  std::shared_ptr<Function> fn;
  bool is_tuple = false;
  bool is_namespace = false;
  std::string undefined_name;  // for "'x' is undefined" messages

  static Value undefined(std::string name = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(TString v);
  static Value string(std::string v, bool tainted = false);
  static Value make_list(ValueList v, bool tuple = false);
  static Value make_list();
  static Value make_dict(ValueDict v);
  static Value make_dict();

  // JSON -> Value; every string (keys too) gets the given taint.
  // Throws jinja::Error for JSON nested deeper than 128 levels.
  static Value from_json(const nlohmann::ordered_json& j, bool tainted);

  bool is_undefined() const { return type == Type::Undefined; }
  bool is_none() const { return type == Type::None; }
  bool is_string() const { return type == Type::String; }
  bool is_number() const { return type == Type::Int || type == Type::Float || type == Type::Bool; }
  bool truthy() const;

 private:
  static Value from_json_depth(const nlohmann::ordered_json& j, bool tainted, int depth);
};

// Insertion-ordered like a Python dict. Keys keep their taint (tool schemas and
// arguments come from the request) so `key + ': '` stays correctly marked.
struct ValueDict {
  std::vector<std::pair<TString, Value>> items;
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(TString key, Value v);
};

// A parsed template. Parsing happens once; render() may run concurrently from
// several threads (it does not mutate the template).
class Template {
 public:
  // Throws jinja::Error naming the line, column and construct on a syntax
  // error or a construct this interpreter lacks.
  explicit Template(std::string_view source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `vars` as the global variables. Throws jinja::Error (or
  // RaisedException for raise_exception) on a runtime error.
  TString render(const std::map<std::string, Value>& vars) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Python-compatible formatting helpers (exposed for tests).
std::string python_float_repr(double v);
// json.dumps(v, ensure_ascii=False, indent=indent) with per-byte taint of strings.
TString to_json(const Value& v, int indent = -1);

}  // namespace kiln::jinja
