#include "sampler/reasoning.h"

#include <algorithm>
#include <stdexcept>

namespace kiln {
namespace {

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

std::string_view trim_right(std::string_view s) {
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Length of the longest proper prefix of `tag` that `text` ends with.
size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  for (size_t k = std::min(text.size(), tag.size() - 1); k > 0; --k) {
    if (text.substr(text.size() - k) == tag.substr(0, k)) return k;
  }
  return 0;
}

}  // namespace

ReasoningSplitter::ReasoningSplitter(ReasoningOptions options)
    : options_(std::move(options)),
      phase_(options_.starts_in_reasoning ? Phase::kReasoning : Phase::kStart) {
  if (options_.open_tag.empty() || options_.close_tag.empty()) {
    throw std::invalid_argument("reasoning tags must not be empty");
  }
}

ReasoningDelta ReasoningSplitter::feed(std::string_view text) {
  pending_.append(text);
  ReasoningDelta out;
  run(out, false);
  return out;
}

ReasoningDelta ReasoningSplitter::finish() {
  ReasoningDelta out;
  run(out, true);
  return out;
}

void ReasoningSplitter::run(ReasoningDelta& out, bool at_end) {
  auto emit_reasoning = [&](std::string_view s) {
    if (!reasoning_started_) {
      while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
      if (s.empty()) return;
      reasoning_started_ = true;
    }
    out.reasoning.append(s);
  };
  const std::string_view open = options_.open_tag, close = options_.close_tag;
  for (;;) {
    switch (phase_) {
      case Phase::kStart: {
        size_t i = 0;
        while (i < pending_.size() && is_space(pending_[i])) ++i;
        const std::string_view rest = std::string_view(pending_).substr(i);
        if (rest.starts_with(open)) {
          pending_.erase(0, i + open.size());
          phase_ = Phase::kReasoning;
          continue;
        }
        if (!at_end && open.starts_with(rest)) return;  // may still become the tag
        phase_ = Phase::kContent;
        continue;
      }
      case Phase::kReasoning: {
        const size_t pos = pending_.find(close);
        if (pos != std::string::npos) {
          emit_reasoning(trim_right(std::string_view(pending_).substr(0, pos)));
          pending_.erase(0, pos + close.size());
          phase_ = Phase::kAfterReasoning;
          continue;
        }
        if (at_end) {
          emit_reasoning(trim_right(pending_));
          pending_.clear();
          return;
        }
        // Hold back a possible start of the close tag and the whitespace before it.
        size_t cut = pending_.size() - partial_tag_suffix(pending_, close);
        while (cut > 0 && is_space(pending_[cut - 1])) --cut;
        emit_reasoning(std::string_view(pending_).substr(0, cut));
        pending_.erase(0, cut);
        return;
      }
      case Phase::kAfterReasoning: {
        size_t i = 0;
        while (i < pending_.size() && is_space(pending_[i])) ++i;
        pending_.erase(0, i);
        if (pending_.empty()) return;
        phase_ = Phase::kContent;
        continue;
      }
      case Phase::kContent:
        out.content.append(pending_);
        pending_.clear();
        return;
    }
  }
}

ReasoningDelta split_reasoning(std::string_view text, const ReasoningOptions& options) {
  ReasoningSplitter splitter(options);
  ReasoningDelta out = splitter.feed(text);
  ReasoningDelta tail = splitter.finish();
  out.reasoning += tail.reasoning;
  out.content += tail.content;
  return out;
}

}  // namespace kiln
