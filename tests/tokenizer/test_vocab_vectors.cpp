// The tokenizer test vectors of llama.cpp (tests/data/vocab): every case of
// every vocabulary must give exactly the expected ids. The expected ids were
// produced by the models' Hugging Face tokenizers, not by this code.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

const std::filesystem::path kVocabDir = std::filesystem::path(KILN_TEST_DATA) / "vocab";

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Case {
  std::string text;
  std::vector<TokenId> ids;
};

// .inp: cases separated by "\n__ggml_vocab_test__\n" (each case, the last
// included, is followed by one); .out: one line of ids per case. This is how
// llama.cpp's test-tokenizer-0 reads them.
std::vector<Case> read_cases(const std::string& name) {
  const std::string inp = read_file(kVocabDir / (name + ".inp"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      texts.push_back(inp.substr(pos));
      break;
    }
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::ifstream out(kVocabDir / (name + ".out"));
  std::vector<Case> cases;
  std::string line;
  for (size_t i = 0; std::getline(out, line); ++i) {
    if (i >= texts.size()) throw std::runtime_error(name + ": more .out lines than .inp cases");
    Case c{texts[i], {}};
    std::istringstream ids(line);
    for (TokenId id; ids >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  if (cases.size() != texts.size()) throw std::runtime_error(name + ": case count mismatch");
  return cases;
}

class VocabVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(VocabVectors, EveryCaseMatches) {
  const std::string name = "ggml-vocab-" + GetParam() + ".gguf";
  if (!std::filesystem::exists(kVocabDir / name)) {
    GTEST_SKIP() << name << " has test vectors but no vocabulary file (too large to ship)";
  }
  const auto file = gguf::File::open(kVocabDir / name);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const std::vector<Case> cases = read_cases(name);
  ASSERT_EQ(cases.size(), 46u);
  for (const Case& c : cases) {
    EXPECT_EQ(tok.encode(c.text, /*add_special=*/false, /*parse_special=*/false), c.ids)
        << "text: '" << c.text << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, VocabVectors,
                         ::testing::Values("gpt-2", "falcon", "deepseek-llm", "llama-spm",
                                           "llama-bpe", "qwen2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace kiln
