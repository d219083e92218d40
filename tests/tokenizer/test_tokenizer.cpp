// Tokenizer behaviour beyond the llama.cpp vectors: round trips, the BPE merge
// order against a naive oracle, special tokens, streaming, errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

const fs::path kVocabDir = fs::path(KILN_TEST_DATA) / "vocab";
const fs::path kDefaultModel = fs::path(KILN_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf";

Tokenizer load(const fs::path& path) {
  const auto file = gguf::File::open(path);
  return Tokenizer::from_gguf(file);
}
Tokenizer load_vocab(const std::string& name) {
  return load(kVocabDir / ("ggml-vocab-" + name + ".gguf"));
}

// Varied valid UTF-8: prose, code, whitespace runs, digits, CJK, emoji (with
// ZWJ sequences and variation selectors), combining marks, RTL scripts.
std::vector<std::string> text_corpus(size_t n_random) {
  std::vector<std::string> texts = {
      "",
      " ",
      "Hello world",
      " Hello, world!  ",
      "\n\n\t  x\r\n",
      "int main(int argc, char** argv) {\n    return argc > 1 ? 0 : -1;\n}\n",
      "We're   here; they'll say it's   fine... OK?",
      "3.14159 1234567890 0x1F 1e-9",
      "日本語のテキストと中文文本",
      "한국어 텍스트",
      "🦙🚀 emoji 😶‍🌫️ ✅ 👍🏽",
      "Ünïcödé çombining: e\xCC\x81 a\xCC\x8A",
      "עברית العربية Ελληνικά Русский",
      "<|endoftext|> <s> </s> <|im_end|>",
      "                                                  spaces",
      "tabs\t\t\t\tand\u00a0nbsp\u2003em space",
  };
  const std::vector<std::string> pool = {"a",
                                         "b",
                                         "Z",
                                         "q",
                                         "the",
                                         " ",
                                         "  ",
                                         "\n",
                                         "\t",
                                         "\r\n",
                                         "0",
                                         "7",
                                         "42",
                                         ".",
                                         ",",
                                         "'",
                                         "'s",
                                         "\"",
                                         "(",
                                         ")",
                                         "{",
                                         "}",
                                         "<",
                                         ">",
                                         "|",
                                         "_",
                                         "-",
                                         "=",
                                         "é",
                                         "ß",
                                         "ж",
                                         "日",
                                         "本",
                                         "한",
                                         "🦙",
                                         "😀",
                                         "\xE2\x80\x8D",
                                         "\xEF\xB8\x8F",
                                         "\xCC\x81",
                                         "€",
                                         "½",
                                         "\u00a0",
                                         "\u3000",
                                         "ا",
                                         "Ω",
                                         "ﬁ"};
  std::mt19937 rng(1234);
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  std::uniform_int_distribution<int> length(1, 40);
  for (size_t i = 0; i < n_random; ++i) {
    std::string s;
    for (int k = length(rng); k > 0; --k) s += pool[pick(rng)];
    texts.push_back(s);
  }
  return texts;
}

class RoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(RoundTrip, DecodeOfEncodeIsTheText) {
  const Tokenizer tok = load_vocab(GetParam());
  for (const std::string& s : text_corpus(300)) {
    ASSERT_TRUE(unicode::is_valid_utf8(s));
    EXPECT_EQ(tok.decode(tok.encode(s, false, false)), s) << "text: '" << s << "'";
    // SentencePiece adds a space prefix after every special token (llama.cpp
    // and Hugging Face do), which decode cannot tell from a typed space.
    if (tok.kind() == Tokenizer::Kind::BPE) {
      EXPECT_EQ(tok.decode(tok.encode(s, false, true)), s) << "parse_special: '" << s << "'";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, RoundTrip,
                         ::testing::Values("gpt-2", "falcon", "deepseek-llm", "llama-spm"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

TEST(Tokenizer, DefaultModelRoundTripAndSpecials) {
  if (!fs::exists(kDefaultModel)) GTEST_SKIP() << "default model missing: " << kDefaultModel;
  const Tokenizer tok = load(kDefaultModel);
  EXPECT_EQ(tok.pre_name(), "smollm");
  for (const std::string& s : text_corpus(200)) {
    EXPECT_EQ(tok.decode(tok.encode(s, false, false)), s) << "text: '" << s << "'";
  }
  const TokenId im_start = *tok.find_piece("<|im_start|>");
  const TokenId im_end = *tok.find_piece("<|im_end|>");
  EXPECT_TRUE(tok.is_eog(im_end));
  EXPECT_TRUE(tok.is_eog(tok.eos()));
  EXPECT_FALSE(tok.is_eog(im_start));
  EXPECT_TRUE(tok.is_control(im_start));
  EXPECT_FALSE(tok.add_bos());

  // Template markup parses specials, message content does not.
  const std::vector<TextSegment> prompt = {
      {"<|im_start|>user\n", true}, {"hi<|im_end|>", false}, {"<|im_end|>\n", true}};
  const auto ids = tok.encode_segments(prompt);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), im_end), 1);
  EXPECT_EQ(ids.front(), im_start);
  EXPECT_EQ(tok.decode(ids), "<|im_start|>user\nhi<|im_end|><|im_end|>\n");
}

TEST(Tokenizer, SpecialTokensOnlyWhenParsed) {
  const Tokenizer tok = load_vocab("gpt-2");
  const TokenId eot = 50256;
  ASSERT_EQ(tok.token_piece(eot), "<|endoftext|>");
  const auto plain = tok.encode("a<|endoftext|>b", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), eot), 0);
  const auto parsed = tok.encode("a<|endoftext|>b", false, true);
  EXPECT_EQ(parsed.size(), 3u);
  EXPECT_EQ(parsed[1], eot);
  EXPECT_EQ(tok.encode("a", false, false).front(), parsed.front());
  EXPECT_TRUE(tok.is_eog(eot));
  EXPECT_TRUE(tok.is_control(eot));
}

TEST(Tokenizer, SegmentsJoinTextAcrossBoundaries) {
  const Tokenizer tok = load_vocab("gpt-2");
  const std::vector<TextSegment> split = {{"Hel", false}, {"lo wor", true}, {"ld", false}};
  EXPECT_EQ(tok.encode_segments(split), tok.encode("Hello world", false, false));
  const std::vector<TextSegment> user = {{"x", true}, {"<|endoftext|>", false}};
  EXPECT_EQ(tok.encode_segments(user), tok.encode("x<|endoftext|>", false, false));
  const std::vector<TextSegment> markup = {{"x", false}, {"<|endoftext|>", true}};
  EXPECT_EQ(tok.encode_segments(markup), tok.encode("x<|endoftext|>", false, true));
}

TEST(Tokenizer, SentencePieceSpecialsAndSpaces) {
  const Tokenizer tok = load_vocab("llama-spm");
  EXPECT_EQ(tok.kind(), Tokenizer::Kind::SPM);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_TRUE(tok.add_space_prefix());
  const auto ids = tok.encode("Hello", true, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), tok.bos());
  EXPECT_EQ(tok.decode(ids), "<s>Hello");  // BOS rendered; the prefix space removed
  EXPECT_EQ(tok.token_bytes(*tok.find_piece("<0x0A>")), "\n");
  EXPECT_EQ(tok.token_bytes(*tok.find_piece("\xE2\x96\x81Hello")), " Hello");
  // A space prefix is added after a special token too, as llama.cpp does.
  const auto parsed = tok.encode("</s>Hi", false, true);
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0], tok.eos());
  EXPECT_EQ(parsed[1], *tok.find_piece("\xE2\x96\x81Hi"));
  EXPECT_EQ(tok.unk(), std::optional<TokenId>(0));
}

// llama.cpp drops the whitespace after Phi-3's special tokens (by model name).
TEST(Tokenizer, Phi3SpecialTokensEatFollowingWhitespace) {
  const auto spm = gguf::File::open(kVocabDir / "ggml-vocab-llama-spm.gguf");
  gguf::Writer w;
  w.copy_metadata(spm);
  w.set("general.name", gguf::MetaValue::string("Phi-3-mini-4k-instruct"));
  const fs::path path =
      fs::temp_directory_path() / ("kiln_tok_phi3_" + std::to_string(::getpid()) + ".gguf");
  w.write(path);
  const auto file = gguf::File::open(path);
  const Tokenizer phi3 = Tokenizer::from_gguf(file);
  const Tokenizer plain = Tokenizer::from_gguf(spm);
  fs::remove(path);
  const TokenId hi = *plain.find_piece("\xE2\x96\x81Hi");
  EXPECT_EQ(phi3.encode("</s> \n Hi", false, true), (std::vector<TokenId>{plain.eos(), hi}));
  EXPECT_NE(plain.encode("</s> \n Hi", false, true), (std::vector<TokenId>{plain.eos(), hi}));
  // <s> keeps its whitespace.
  EXPECT_EQ(phi3.encode("<s> Hi", false, true), plain.encode("<s> Hi", false, true));
}

TEST(Tokenizer, BadIdsThrow) {
  const Tokenizer tok = load_vocab("gpt-2");
  const std::vector<TokenId> bad = {1, 50257};
  EXPECT_THROW(tok.decode(bad), std::out_of_range);
  EXPECT_THROW(tok.token_bytes(-1), std::out_of_range);
  StreamingDetokenizer detok(tok);
  EXPECT_THROW(detok.push(1 << 30), std::out_of_range);
}

// Arbitrary bytes (invalid UTF-8, NULs, encoded surrogates): nothing crashes;
// byte-level BPE restores the sanitized text, less the bytes the vocabulary
// has no token for (falcon lacks some control bytes; llama.cpp drops them
// too); SentencePiece restores valid UTF-8 exactly. (On invalid UTF-8 its
// character split, by lead byte as in llama.cpp, can swallow a space marker.)
TEST(Tokenizer, ArbitraryBytesRoundTrip) {
  std::mt19937 rng(99);
  const std::vector<std::string> pieces = {
      "\xED\xA0\x80",  "\xC0\x80", "\xF8\x88", "\xE2\x82", "\xF0\x9F\xA6\x99",
      "<|endoftext|>", "<s>",      " ",        "\n"};
  std::vector<std::string> inputs;
  for (int i = 0; i < 300; ++i) {
    std::string s;
    const int n = static_cast<int>(rng() % 24);
    for (int k = 0; k < n; ++k) {
      if (rng() % 4 == 0) {
        s += pieces[rng() % pieces.size()];
      } else {
        s += static_cast<char>(rng() % 256);
      }
    }
    inputs.push_back(s);
  }
  for (const std::string name : {"gpt-2", "falcon", "deepseek-llm", "llama-spm"}) {
    const Tokenizer tok = load_vocab(name);
    std::string missing_bytes;  // bytes without a byte-level token
    for (int b = 0; b < 256; ++b) {
      if (!tok.find_piece(unicode::ByteLevelMap::get().byte_to_utf8[b])) {
        missing_bytes += static_cast<char>(b);
      }
    }
    for (const std::string& s : inputs) {
      const auto ids = tok.encode(s, false, false);
      if (tok.kind() == Tokenizer::Kind::BPE) {
        std::string expected = unicode::sanitize_utf8(s);
        std::erase_if(expected, [&](char c) { return missing_bytes.find(c) != std::string::npos; });
        EXPECT_EQ(tok.decode(ids), expected) << name;
      } else if (unicode::is_valid_utf8(s)) {
        EXPECT_EQ(tok.decode(ids), s) << name;
      }
      const auto special_ids = tok.encode(s, true, true);
      StreamingDetokenizer detok(tok);
      for (TokenId id : special_ids) EXPECT_TRUE(unicode::is_valid_utf8(detok.push(id)));
      EXPECT_TRUE(unicode::is_valid_utf8(detok.flush()));
    }
  }
}

// --- streaming -------------------------------------------------------------

TEST(StreamingDetokenizer, ChunksAreValidUtf8AndConcatenateToDecode) {
  for (const std::string name : {"gpt-2", "llama-spm"}) {
    const Tokenizer tok = load_vocab(name);
    for (const std::string& s : text_corpus(100)) {
      const auto ids = tok.encode(s, false, false);
      StreamingDetokenizer detok(tok);
      std::string streamed;
      for (TokenId id : ids) {
        const std::string chunk = detok.push(id);
        EXPECT_TRUE(unicode::is_valid_utf8(chunk)) << name << ": '" << s << "'";
        streamed += chunk;
      }
      streamed += detok.flush();
      EXPECT_EQ(streamed, tok.decode(ids)) << name << ": '" << s << "'";
    }
  }
}

TEST(StreamingDetokenizer, HoldsBackSplitCharactersAndFlushesReplacement) {
  const Tokenizer tok = load_vocab("gpt-2");
  // gpt-2 spells the llama emoji F0 9F A6 99 with byte tokens.
  const auto byte_token = [&](unsigned char b) {
    return *tok.find_piece(unicode::ByteLevelMap::get().byte_to_utf8[b]);
  };
  StreamingDetokenizer detok(tok);
  EXPECT_EQ(detok.push(byte_token(0xF0)), "");
  EXPECT_EQ(detok.push(byte_token(0x9F)), "");
  EXPECT_EQ(detok.push(byte_token(0xA6)), "");
  EXPECT_EQ(detok.push(byte_token(0x99)), "\xF0\x9F\xA6\x99");
  EXPECT_EQ(detok.push(byte_token(0xE2)), "");
  EXPECT_EQ(detok.flush(), "\xEF\xBF\xBD");
  // An impossible byte is replaced at once, not held.
  StreamingDetokenizer other(tok);
  EXPECT_EQ(other.push(byte_token(0xFF)), "\xEF\xBF\xBD");
}

TEST(StreamingDetokenizer, SentencePieceLeadingSpace) {
  const Tokenizer tok = load_vocab("llama-spm");
  const auto ids = tok.encode("Hello world", true, false);
  StreamingDetokenizer detok(tok);
  std::string out;
  for (TokenId id : ids) out += detok.push(id);
  out += detok.flush();
  EXPECT_EQ(out, "<s>Hello world");
  StreamingDetokenizer no_bos(tok);
  out.clear();
  for (TokenId id : tok.encode("  two", false, false)) out += no_bos.push(id);
  EXPECT_EQ(out + no_bos.flush(), "  two");
}

// --- BPE merging against oracles -------------------------------------------

TEST(BpeMerge, HeapMatchesNaiveRescans) {
  std::mt19937 rng(7);
  for (int table_seed = 0; table_seed < 20; ++table_seed) {
    // Random merges over a 6-symbol alphabet, results numbered from 100.
    bpe::MergeTable table;
    table.reserve(64);
    std::uniform_int_distribution<int32_t> sym(0, 9);
    for (int32_t rank = 0; rank < 40; ++rank) {
      const int32_t l = rank < 10 ? sym(rng) % 6 : sym(rng) + (sym(rng) % 2 ? 100 : 0);
      const int32_t r = sym(rng) % 6 + (rank >= 10 && sym(rng) % 3 == 0 ? 100 : 0);
      table.insert(l, r, {rank, 100 + rank});
    }
    bpe::Scratch scratch;
    std::uniform_int_distribution<int> len(0, 60);
    for (int w = 0; w < 200; ++w) {
      std::vector<int32_t> word(static_cast<size_t>(len(rng)));
      for (auto& s : word) s = sym(rng) % 6;
      std::vector<int32_t> fast = word, slow = word;
      bpe::merge(table, fast, scratch);
      bpe::merge_reference(table, slow);
      ASSERT_EQ(fast, slow);
    }
  }
}

// An independent byte-level BPE encoder: string pairs, a rank map, and full
// rescans, on the same pre-tokenizer words. Checks the id interning, byte
// mapping and merge order of the real encoder on a real vocabulary.
TEST(BpeMerge, EncoderMatchesTextBasedReference) {
  const auto file = gguf::File::open(kVocabDir / "ggml-vocab-gpt-2.gguf");
  const Tokenizer tok = Tokenizer::from_gguf(file);
  std::map<std::pair<std::string, std::string>, size_t> ranks;
  const auto merges = file.get_string_array("tokenizer.ggml.merges");
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string line(merges[i]);
    const size_t sp = line.find(' ', 1);
    ranks.emplace(std::make_pair(line.substr(0, sp), line.substr(sp + 1)), i);
  }
  const auto pre = PreTokenizer::for_pre("gpt-2");
  for (const std::string& s : text_corpus(150)) {
    std::vector<std::string_view> words;
    const std::string clean = unicode::sanitize_utf8(s);
    pre.split(clean, words);
    std::vector<TokenId> expected;
    for (std::string_view w : words) {
      std::vector<std::string> parts;
      for (char c : w)
        parts.push_back(unicode::ByteLevelMap::get().byte_to_utf8[static_cast<unsigned char>(c)]);
      for (;;) {
        size_t best = parts.size(), best_rank = 0;
        for (size_t i = 0; i + 1 < parts.size(); ++i) {
          auto it = ranks.find({parts[i], parts[i + 1]});
          if (it != ranks.end() && (best == parts.size() || it->second < best_rank)) {
            best = i;
            best_rank = it->second;
          }
        }
        if (best == parts.size()) break;
        parts[best] += parts[best + 1];
        parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
      }
      for (const auto& p : parts) expected.push_back(*tok.find_piece(p));
    }
    EXPECT_EQ(tok.encode(s, false, false), expected) << "text: '" << s << "'";
  }
}

// --- errors ------------------------------------------------------------------

fs::path write_vocab(const std::string& model, const std::string& pre) {
  gguf::Writer w;
  w.set("general.architecture", gguf::MetaValue::string("llama"));
  w.set("tokenizer.ggml.model", gguf::MetaValue::string(model));
  if (!pre.empty()) w.set("tokenizer.ggml.pre", gguf::MetaValue::string(pre));
  w.set("tokenizer.ggml.tokens", gguf::MetaValue::string_array({"a", "b", "ab"}));
  w.set("tokenizer.ggml.merges", gguf::MetaValue::string_array({"a b"}));
  const fs::path path = fs::temp_directory_path() / ("kiln_tok_" + model + "_" + pre + "_" +
                                                     std::to_string(::getpid()) + ".gguf");
  w.write(path);
  return path;
}

std::string load_error(const fs::path& path) {
  try {
    const auto file = gguf::File::open(path);
    (void)Tokenizer::from_gguf(file);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Tokenizer, UnsupportedModelOrPreIsNamed) {
  const fs::path bert = write_vocab("bert", "");
  EXPECT_NE(load_error(bert).find("'bert'"), std::string::npos) << load_error(bert);
  fs::remove(bert);
  const fs::path weird = write_vocab("gpt2", "weird-pre");
  EXPECT_NE(load_error(weird).find("'weird-pre'"), std::string::npos) << load_error(weird);
  fs::remove(weird);
  const fs::path ok = write_vocab("gpt2", "gpt-2");
  EXPECT_EQ(load_error(ok), "");
  {
    const auto file = gguf::File::open(ok);
    const Tokenizer tok = Tokenizer::from_gguf(file);
    // "ab" is one word of two bytes whose single-byte spellings are tokens.
    EXPECT_EQ(tok.encode("ab", false, false), (std::vector<TokenId>{2}));
  }
  fs::remove(ok);
}

TEST(Unicode, SanitizeFollowsTheLenientDecoder) {
  EXPECT_EQ(unicode::sanitize_utf8("ok \xC3\xA9"), "ok \xC3\xA9");
  EXPECT_EQ(unicode::sanitize_utf8("\x80"), "\xEF\xBF\xBD");
  EXPECT_EQ(unicode::sanitize_utf8("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::sanitize_utf8("\xFF"
                                   "a"),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(unicode::replace_invalid_utf8("\xE2\x82"
                                          "a"),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(unicode::complete_prefix_length("ab\xE2\x82"), 2u);
  EXPECT_EQ(unicode::complete_prefix_length("ab\xE2\x82\xAC"), 5u);
  EXPECT_EQ(unicode::complete_prefix_length("ab\x80"), 3u);
  for (int b = 0; b < 256; ++b) {
    const std::string raw(1, static_cast<char>(b));
    EXPECT_EQ(unicode::byte_level_decode(unicode::byte_level_encode(raw)), raw);
  }
}

}  // namespace
}  // namespace kiln
