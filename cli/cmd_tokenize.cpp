// kiln tokenize: text from stdin -> token ids, with the model's own tokenizer.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: kiln tokenize -m MODEL.gguf [--add-special] [--parse-special] [--pieces]

Reads all of stdin, byte for byte (no newline is stripped), tokenizes it with
MODEL's tokenizer and prints the ids on one line, separated by spaces.
MODEL may be a vocabulary-only GGUF file.

  -m, --model PATH   the GGUF file
  --add-special      add BOS/EOS as the model's tokenizer.ggml.add_*_token say
  --parse-special    recognise control tokens written in the text
                     (e.g. <|im_end|>); by default they are plain text
  --pieces           print one token per line instead: ID, a tab, and the
                     token's bytes with \n, \t, \\ and non-printable bytes escaped
)";

std::string escape_bytes(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string read_all_stdin() {
  std::string text;
  char buf[65536];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) text.append(buf, n);
  if (std::ferror(stdin)) throw std::runtime_error("cannot read stdin");
  return text;
}

int run_tokenize(Args args) {
  std::string model;
  bool add_special = false, parse_special = false, pieces = false;
  OptionParser parser("tokenize", kUsage);
  parser.text({"-m", "--model"}, model);
  parser.flag({"--add-special"}, add_special);
  parser.flag({"--parse-special"}, parse_special);
  parser.flag({"--pieces"}, pieces);
  if (!parser.parse(args)) return 0;
  if (model.empty()) throw std::invalid_argument("-m MODEL.gguf is required (see --help)");
  const auto file = gguf::File::open(model);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const std::string text = read_all_stdin();
  const std::vector<TokenId> ids = tok.encode(text, add_special, parse_special);
  std::string out;
  if (pieces) {
    for (TokenId id : ids) {
      out += std::to_string(id) + "\t" + escape_bytes(tok.token_bytes(id)) + "\n";
    }
  } else {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) out += ' ';
      out += std::to_string(ids[i]);
    }
    out += '\n';
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

const Command kTokenize("tokenize", "print the token ids of stdin's text", run_tokenize);

}  // namespace
}  // namespace kiln::cli
