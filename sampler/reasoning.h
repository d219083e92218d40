// Splits a model's output into reasoning ("<think>...</think>") and content,
// for message.reasoning_content / delta.reasoning_content.
//
// Pure text processing (no server, no tokenizer): feed it the detokenized
// text as it streams; each call returns the newly decided reasoning and
// content bytes. Bytes that could still turn out to be part of a tag (a "<th"
// at the end of a chunk) or whitespace next to a tag are held back until the
// next chunk decides them, so the split never depends on where chunks break:
// the concatenated deltas equal split_reasoning() of the whole text.
//
// Rules (what Qwen3/DeepSeek-R1-style models emit):
// - A reasoning block is recognised only at the very start of the output
//   (after optional whitespace): "<think>" ... "</think>". A "<think>" later
//   in the text is ordinary content (a model may talk about tags).
// - starts_in_reasoning: the chat template already opened the block in the
//   prompt (generation begins inside it), so only "</think>" is looked for.
// - Whitespace right after "<think>", right before "</think>" and right after
//   "</think>" is dropped.
// - An unterminated block (max_tokens ran out while thinking) is all reasoning.
#pragma once

#include <string>
#include <string_view>

namespace kiln {

struct ReasoningDelta {
  std::string reasoning;
  std::string content;
};

struct ReasoningOptions {
  std::string open_tag = "<think>";
  std::string close_tag = "</think>";
  bool starts_in_reasoning = false;
};

class ReasoningSplitter {
 public:
  explicit ReasoningSplitter(ReasoningOptions options = {});

  // Next chunk of output text.
  ReasoningDelta feed(std::string_view text);
  // End of output: releases whatever was held back.
  ReasoningDelta finish();

 private:
  enum class Phase { kStart, kReasoning, kAfterReasoning, kContent };
  void run(ReasoningDelta& out, bool at_end);

  ReasoningOptions options_;
  Phase phase_;
  std::string pending_;             // bytes not yet decided
  bool reasoning_started_ = false;  // some non-space reasoning emitted (keeps inner whitespace)
};

// The whole output at once.
ReasoningDelta split_reasoning(std::string_view text, const ReasoningOptions& options = {});

}  // namespace kiln
