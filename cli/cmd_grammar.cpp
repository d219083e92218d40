// kiln grammar: compile a JSON Schema to the byte grammar used for
// structured generation; print it, or check candidate documents against it.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "sampler/grammar.h"
#include "sampler/json_schema.h"

namespace kiln::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: kiln grammar (--schema FILE | --json-object | --any-value) [--print] [--check]

Compiles a JSON Schema (the response_format json_schema subset: see
sampler/json_schema.h) to the byte grammar that constrains sampling.
An unsupported keyword is an error naming it and where it is.

  --schema FILE      the JSON Schema ('-' reads it from stdin)
  --json-object      response_format json_object: any JSON object
  --any-value        any JSON value
  --max-indent N     spaces/tabs allowed after a newline between tokens (20)
  --print            print the grammar's rules
  --check            read candidate documents from stdin, one per line, each
                     written as hex of its bytes; print "accept" or "reject"
                     per line (accept: the whole document matches the grammar)
With neither --print nor --check, prints "ok" and the rule count.
)";

std::string read_file(const std::string& path) {
  if (path == "-") {
    std::ostringstream s;
    s << std::cin.rdbuf();
    return s.str();
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open schema file '" + path + "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string from_hex(const std::string& line, size_t line_no) {
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw std::invalid_argument("stdin line " + std::to_string(line_no) + " is not hex");
  };
  if (line.size() % 2) {
    throw std::invalid_argument("stdin line " + std::to_string(line_no) + " has odd hex length");
  }
  std::string out;
  for (size_t i = 0; i < line.size(); i += 2) {
    out += static_cast<char>(nibble(line[i]) * 16 + nibble(line[i + 1]));
  }
  return out;
}

int run_grammar(Args args) {
  std::string schema_path;
  bool json_object = false, any_value = false, print = false, check = false;
  JsonGrammarOptions options;
  OptionParser parser("grammar", kUsage);
  parser.text({"--schema"}, schema_path);
  parser.flag({"--json-object"}, json_object);
  parser.flag({"--any-value"}, any_value);
  parser.integer({"--max-indent"}, options.max_indent, 0, 1000);
  parser.flag({"--print"}, print);
  parser.flag({"--check"}, check);
  if (!parser.parse(args)) return 0;
  if ((schema_path.empty() ? 0 : 1) + (json_object ? 1 : 0) + (any_value ? 1 : 0) != 1) {
    throw std::invalid_argument("give exactly one of --schema FILE, --json-object, --any-value");
  }
  if (check && schema_path == "-") {
    throw std::invalid_argument("--check reads candidates from stdin: give --schema a file");
  }
  std::shared_ptr<const Grammar> grammar =
      json_object ? JsonGrammar::any_object(options)
      : any_value ? JsonGrammar::any_value(options)
                  : JsonGrammar::from_schema_text(read_file(schema_path), options);
  if (print) std::fputs(grammar->to_string().c_str(), stdout);
  if (check) {
    auto automaton = std::make_shared<GrammarAutomaton>(grammar);
    std::string line;
    size_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      GrammarMatcher m(automaton);
      const bool ok = m.accept_bytes(from_hex(line, line_no)) && m.is_complete();
      std::fputs(ok ? "accept\n" : "reject\n", stdout);
    }
  }
  if (!print && !check) std::printf("ok: %zu rules\n", grammar->rule_count());
  return 0;
}

const Command kGrammar{"grammar", "compile a JSON Schema to a grammar; print it or check documents",
                       run_grammar};

}  // namespace
}  // namespace kiln::cli
