// kiln detokenize: token ids -> the text bytes they stand for.
#include <cctype>
#include <charconv>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

constexpr const char* kUsage = R"(usage: kiln detokenize -m MODEL.gguf [ID...]

Writes the bytes the token ids stand for, with nothing added (no newline).
The ids come from the arguments, or when there are none from stdin
(separated by whitespace). Control tokens are written as their text
(e.g. <|im_end|>). MODEL may be a vocabulary-only GGUF file.

  -m, --model PATH   the GGUF file
)";

TokenId parse_id(std::string_view s) {
  long long v = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v < 0 || v > INT32_MAX) {
    throw std::invalid_argument("'" + std::string(s) + "' is not a token id");
  }
  return static_cast<TokenId>(v);
}

int run_detokenize(Args args) {
  std::string model;
  std::vector<TokenId> ids;
  bool have_ids = false;
  OptionParser parser("detokenize", kUsage);
  parser.text({"-m", "--model"}, model);
  parser.positional([&](std::string_view a) {
    ids.push_back(parse_id(a));
    have_ids = true;
  });
  if (!parser.parse(args)) return 0;
  if (model.empty()) throw std::invalid_argument("-m MODEL.gguf is required (see --help)");
  if (!have_ids) {
    std::string word;
    for (int c; (c = std::getchar()) != EOF;) {
      if (std::isspace(c)) {
        if (!word.empty()) ids.push_back(parse_id(word));
        word.clear();
      } else {
        word += static_cast<char>(c);
      }
    }
    if (!word.empty()) ids.push_back(parse_id(word));
  }
  const auto file = gguf::File::open(model);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const std::string text = tok.decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

const Command kDetokenize("detokenize", "write the text of token ids", run_detokenize);

}  // namespace
}  // namespace kiln::cli
