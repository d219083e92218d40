// <think>...</think> splitting: expected splits of whole outputs, and the
// streaming splitter gives the same result wherever the chunks break.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "sampler/reasoning.h"

namespace kiln {
namespace {

ReasoningDelta stream(const std::vector<std::string>& chunks,
                      const ReasoningOptions& options = {}) {
  ReasoningSplitter splitter(options);
  ReasoningDelta all;
  for (const auto& c : chunks) {
    ReasoningDelta d = splitter.feed(c);
    all.reasoning += d.reasoning;
    all.content += d.content;
  }
  ReasoningDelta d = splitter.finish();
  all.reasoning += d.reasoning;
  all.content += d.content;
  return all;
}

struct Case {
  std::string text;
  bool starts_in_reasoning;
  std::string reasoning;
  std::string content;
};

const std::vector<Case> kCases = {
    {"<think>\nLet me add: 2+2=4.\n</think>\n\nThe answer is 4.", false, "Let me add: 2+2=4.",
     "The answer is 4."},
    {"The answer is 4.", false, "", "The answer is 4."},
    {"  <think>a\n\nb</think>c", false, "a\n\nb", "c"},
    {"<think>\n\n</think>\n\nHi", false, "", "Hi"},  // Qwen3 with thinking disabled
    {"Hello <think>not reasoning</think>", false, "", "Hello <think>not reasoning</think>"},
    {"<thin", false, "", "<thin"},
    {"<think>cut off by max_tokens  ", false, "cut off by max_tokens", ""},
    {"<think>a < b and </thinking> is not the tag</think>ok", false,
     "a < b and </thinking> is not the tag", "ok"},
    {"\n", false, "", "\n"},
    {"", false, "", ""},
    {"thinking already open\n</think>\n\nAnswer", true, "thinking already open", "Answer"},
    {"no close tag yet", true, "no close tag yet", ""},
    {"<think>x</think>", false, "x", ""},
    {"<think>日本 😀</think>é", false, "日本 😀", "é"},
};

TEST(Reasoning, WholeOutputs) {
  for (const auto& c : kCases) {
    ReasoningDelta d = split_reasoning(c.text, {.starts_in_reasoning = c.starts_in_reasoning});
    EXPECT_EQ(d.reasoning, c.reasoning) << c.text;
    EXPECT_EQ(d.content, c.content) << c.text;
  }
}

TEST(Reasoning, StreamingMatchesWholeWhereverChunksBreak) {
  for (const auto& c : kCases) {
    ReasoningOptions options{.starts_in_reasoning = c.starts_in_reasoning};
    std::vector<std::string> bytes;
    for (char ch : c.text) bytes.emplace_back(1, ch);
    ReasoningDelta one = stream(bytes, options);
    EXPECT_EQ(one.reasoning, c.reasoning) << c.text;
    EXPECT_EQ(one.content, c.content) << c.text;
    for (size_t i = 0; i <= c.text.size(); ++i) {
      for (size_t j = i; j <= c.text.size(); ++j) {
        ReasoningDelta d =
            stream({c.text.substr(0, i), c.text.substr(i, j - i), c.text.substr(j)}, options);
        ASSERT_EQ(d.reasoning, c.reasoning) << c.text << " split at " << i << "," << j;
        ASSERT_EQ(d.content, c.content) << c.text << " split at " << i << "," << j;
      }
    }
  }
}

TEST(Reasoning, ScriptedTokenStreamDeltas) {
  // Qwen3-style pieces as a detokenizer would hand them over.
  const std::vector<std::string> tokens = {
      "<think>", "\n",    "Okay", ",",    " the", " user", " wants", " JSON", ".", "\n",
      "</",      "think", ">",    "\n\n", "{\"",  "a",     "\":",    " 1",    "}"};
  ReasoningSplitter splitter;
  std::string reasoning, content;
  bool content_before_reasoning_done = false;
  for (const auto& t : tokens) {
    ReasoningDelta d = splitter.feed(t);
    if (!d.content.empty() && reasoning != "Okay, the user wants JSON.") {
      content_before_reasoning_done = true;
    }
    reasoning += d.reasoning;
    content += d.content;
  }
  ReasoningDelta d = splitter.finish();
  reasoning += d.reasoning;
  content += d.content;
  EXPECT_EQ(reasoning, "Okay, the user wants JSON.");
  EXPECT_EQ(content, "{\"a\": 1}");
  EXPECT_FALSE(content_before_reasoning_done);
  // Nothing is held back longer than needed: plain content streams at once.
  ReasoningSplitter plain;
  EXPECT_EQ(plain.feed("Hi").content, "Hi");
  EXPECT_EQ(plain.feed(" there").content, " there");
}

}  // namespace
}  // namespace kiln
