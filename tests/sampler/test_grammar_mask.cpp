// Token masking: the trie walk's mask must equal a brute-force check of every
// token's bytes against a copy of the matcher, state after state, on a small
// synthetic vocabulary and on the default model's real 49152-token vocabulary.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "sampler/grammar.h"
#include "sampler/json_schema.h"
#include "sampler/token_trie.h"

namespace kiln {
namespace {

const std::vector<std::string> kSchemas = {
    R"({"type":"object","properties":{"name":{"type":"string","maxLength":12},
        "age":{"type":"integer"},"email":{"type":"string","format":"uuid"},
        "tags":{"type":"array","items":{"enum":["x","yy","zzz"]},"maxItems":3}},
        "required":["name","age"]})",
    R"({"type":"array","items":{"type":"number"}})",
    R"({"$defs":{"n":{"type":"object","properties":{"v":{"type":"boolean"},
        "kids":{"type":"array","items":{"$ref":"#/$defs/n"}}},"required":["v","kids"]}},
        "$ref":"#/$defs/n"})",
    R"({"type":"string","pattern":"^[A-Z][a-z]+( [A-Z][a-z]+)*$"})",
    R"({"type":"object","additionalProperties":{"type":"integer"}})",
};

// The allowed set by brute force: every token's bytes through a matcher copy.
std::vector<bool> brute_force_allowed(const TokenTrie& trie, const GrammarMatcher& matcher,
                                      const std::vector<int32_t>& eog) {
  std::vector<bool> allowed(trie.vocab_size(), false);
  for (size_t id = 0; id < trie.vocab_size(); ++id) {
    const std::string& bytes = trie.token(static_cast<int32_t>(id));
    if (!trie.in_trie(static_cast<int32_t>(id))) continue;
    allowed[id] = matcher.can_accept(bytes);
  }
  if (matcher.is_complete()) {
    for (int32_t id : eog) allowed[id] = true;
  }
  return allowed;
}

// Walks `steps` random allowed tokens, checking the mask against the brute
// force at every state; returns how many walks reached an eog token.
void check_masks(const std::shared_ptr<const TokenTrie>& trie, const std::vector<int32_t>& eog,
                 const std::string& schema, uint32_t seed, int steps) {
  auto grammar = JsonGrammar::from_schema_text(schema);
  GrammarConstraint constraint(grammar, trie, eog);
  GrammarMatcher matcher(grammar);  // independent automaton for the oracle
  std::mt19937 rng(seed);
  std::vector<float> logits(trie->vocab_size() + 5, 0.0f);  // a padded vocabulary
  for (int step = 0; step < steps && !constraint.done(); ++step) {
    std::vector<bool> expected = brute_force_allowed(*trie, matcher, eog);
    std::fill(logits.begin(), logits.end(), 1.0f);
    size_t n_allowed = constraint.compute_mask(logits);
    std::vector<int32_t> allowed_ids, short_ids;
    for (size_t id = 0; id < logits.size(); ++id) {
      const bool got = !std::isinf(logits[id]);
      const bool want = id < expected.size() && expected[id];
      ASSERT_EQ(got, want) << "token " << id << " ('"
                           << (id < trie->vocab_size() ? trie->token(static_cast<int32_t>(id)) : "")
                           << "') after '" << constraint.text() << "' schema " << schema;
      if (got) {
        allowed_ids.push_back(static_cast<int32_t>(id));
        if (trie->token(static_cast<int32_t>(id)).size() <= 1)
          short_ids.push_back(static_cast<int32_t>(id));
      }
    }
    ASSERT_EQ(n_allowed, allowed_ids.size());
    ASSERT_FALSE(allowed_ids.empty()) << "stuck after '" << constraint.text() << "'";
    // Half the time a one-byte token, so walks also close their brackets.
    const auto& pool = (!short_ids.empty() && rng() % 2) ? short_ids : allowed_ids;
    int32_t id = pool[rng() % pool.size()];
    const bool is_eog = std::find(eog.begin(), eog.end(), id) != eog.end();
    constraint.accept_token(id);
    if (!is_eog) {
      ASSERT_TRUE(matcher.accept_bytes(trie->token(id)));
    }
    EXPECT_EQ(constraint.is_complete(), matcher.is_complete());
  }
}

TEST(GrammarMask, SyntheticVocabularyMatchesBruteForce) {
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) vocab.push_back(std::string(1, static_cast<char>(b)));
  for (const char* t :
       {"{\"", "\":", "\",\"", "true", "false",    "null",         "na",       "name", "\"name\"",
        " \"", "  ",  "\n",    "\n  ", "},{",      "[{",           "}]",       "12",   "-0",
        "0.5", "e+",  "\\u",   "\\\"", "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F", "ab",   "Ab",
        " Cd", "\"}", "x\"",   "yy",   "zzz",      "\"x\"",        "-",        "9",    ""}) {
    vocab.push_back(t);
  }
  vocab.push_back("<eos>");
  const int32_t eos = static_cast<int32_t>(vocab.size() - 1);
  std::vector<int32_t> eog = {eos};
  auto trie = std::make_shared<const TokenTrie>(TokenTrie::build(vocab, eog));
  EXPECT_FALSE(trie->in_trie(eos));
  EXPECT_FALSE(trie->in_trie(eos - 1));  // the empty token
  for (size_t i = 0; i < kSchemas.size(); ++i) {
    for (uint32_t seed = 0; seed < 6; ++seed) check_masks(trie, eog, kSchemas[i], seed, 60);
  }
}

TEST(GrammarMask, EogOnlyWhenCompleteAndCheckpoints) {
  std::vector<std::string> vocab = {"{", "}", "\"a\"", ":", "1", "2", "<eos>"};
  std::vector<int32_t> eog = {6};
  auto trie = std::make_shared<const TokenTrie>(TokenTrie::build(vocab, eog));
  auto grammar = JsonGrammar::from_schema_text(
      R"({"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]})");
  GrammarConstraint c(grammar, trie, eog);
  EXPECT_FALSE(c.is_allowed(6));
  EXPECT_TRUE(c.is_allowed(0));
  EXPECT_FALSE(c.is_allowed(1));
  EXPECT_THROW(c.accept_token(1), std::invalid_argument);
  for (int32_t id : {0, 2, 3}) c.accept_token(id);
  auto cp = c.checkpoint();
  c.accept_token(4);
  EXPECT_TRUE(c.is_allowed(5));  // more digits
  c.accept_token(1);
  EXPECT_TRUE(c.is_complete());
  EXPECT_TRUE(c.done());  // nothing can follow '}'
  EXPECT_TRUE(c.is_allowed(6));
  EXPECT_FALSE(c.is_allowed(4));
  c.rollback(cp);
  EXPECT_EQ(c.text(), "{\"a\":");
  EXPECT_FALSE(c.is_complete());
  EXPECT_FALSE(c.is_allowed(1));
  c.accept_token(5);
  c.accept_token(1);
  c.accept_token(6);
  EXPECT_TRUE(c.done());
  EXPECT_EQ(c.text(), "{\"a\":2}");
}

TEST(GrammarMask, SharedCompiledGrammarAcrossRequests) {
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) vocab.push_back(std::string(1, static_cast<char>(b)));
  for (const char* t : {"{\"", "\":", "\",\"", "true", "12", "ab", "\"}", "<eos>"})
    vocab.push_back(t);
  std::vector<int32_t> eog = {static_cast<int32_t>(vocab.size() - 1)};
  auto trie = std::make_shared<const TokenTrie>(TokenTrie::build(vocab, eog));
  auto grammar = JsonGrammar::from_schema_text(kSchemas[0]);
  auto compiled = std::make_shared<CompiledGrammar>(grammar, trie, eog);
  // Two requests interleaved on one CompiledGrammar, with the caches dropped
  // midway; each mask must still equal the brute force for its own state.
  GrammarConstraint a(compiled), b(compiled);
  GrammarMatcher ma(grammar), mb(grammar);
  std::mt19937 rng(5);
  for (int step = 0; step < 80; ++step) {
    if (step == 40) compiled->reset_caches();
    GrammarConstraint& c = step % 2 ? a : b;
    GrammarMatcher& m = step % 2 ? ma : mb;
    if (c.done()) continue;
    auto expected = brute_force_allowed(*trie, m, eog);
    auto mask = c.allowed_mask();
    std::vector<int32_t> allowed;
    for (size_t id = 0; id < vocab.size(); ++id) {
      const bool got = (mask[id >> 6] >> (id & 63)) & 1;
      ASSERT_EQ(got, static_cast<bool>(expected[id])) << "token " << id << " after " << c.text();
      if (got) allowed.push_back(static_cast<int32_t>(id));
    }
    ASSERT_FALSE(allowed.empty());
    int32_t id = allowed[rng() % allowed.size()];
    c.accept_token(id);
    if (id != eog[0]) {
      ASSERT_TRUE(m.accept_bytes(vocab[id]));
    }
    EXPECT_EQ(c.is_complete(), m.is_complete());
  }
  EXPECT_GT(compiled->cached_masks(), 0u);
}

// GPT-2 byte-level BPE stores bytes as printable code points; undo that.
std::string gpt2_token_bytes(std::string_view text) {
  static const std::vector<int> unicode_to_byte = [] {
    std::vector<int> map(512, -1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      map[printable ? b : 256 + extra++] = b;
    }
    return map;
  }();
  std::string out;
  for (size_t i = 0; i < text.size();) {
    auto b0 = static_cast<uint8_t>(text[i]);
    int len = b0 < 0x80 ? 1 : b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
    uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 7);
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<uint8_t>(text[i + k]) & 0x3F);
    if (cp < unicode_to_byte.size() && unicode_to_byte[cp] >= 0) {
      out += static_cast<char>(unicode_to_byte[cp]);
    } else {
      out.append(text.substr(i, static_cast<size_t>(len)));
    }
    i += static_cast<size_t>(len);
  }
  return out;
}

TEST(GrammarMask, DefaultModelVocabularyMatchesBruteForce) {
  const std::filesystem::path model =
      std::filesystem::path(KILN_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(model)) GTEST_SKIP() << "default model missing: " << model;
  auto file = gguf::File::open(model);
  auto tokens = file.get_string_array("tokenizer.ggml.tokens");
  auto types = file.get_i32_array("tokenizer.ggml.token_type");
  std::vector<std::string> vocab;
  std::vector<int32_t> eog;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (types[id] == 3) {  // control tokens have no text bytes
      vocab.emplace_back();
      if (tokens[id] == "<|im_end|>" || tokens[id] == "<|endoftext|>") {
        eog.push_back(static_cast<int32_t>(id));
      }
    } else {
      vocab.push_back(gpt2_token_bytes(tokens[id]));
    }
  }
  ASSERT_EQ(vocab.size(), 49152u);
  ASSERT_FALSE(eog.empty());
  auto trie = std::make_shared<const TokenTrie>(TokenTrie::build(vocab, eog));
  for (size_t i = 0; i < kSchemas.size(); ++i) check_masks(trie, eog, kSchemas[i], 100 + i, 25);
  check_masks(trie, eog, R"({"type":"object"})", 7, 25);
}

}  // namespace
}  // namespace kiln
