// Structured output for the server: the request's response_format turned into
// a grammar constraint the scheduler applies while sampling, and the
// <think>...</think> split of chat output into reasoning_content and content.
//
// Threads: parse_response_format() runs on HTTP threads (it compiles the
// schema into an immutable Grammar, so an unsupported keyword is a 400 before
// anything is queued; grammars are shared through a mutex-guarded LRU keyed by
// the schema text). ConstraintFactory belongs to the engine thread: it holds
// the model's token trie and an LRU of CompiledGrammar (automaton + masks per
// state), which are mutable and not thread-safe.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sampler/grammar.h"
#include "sampler/reasoning.h"
#include "sampler/token_trie.h"
#include "tokenizer/tokenizer.h"

namespace kiln::server {

struct ResponseFormat {
  enum class Kind { kText, kJsonObject, kJsonSchema };
  Kind kind = Kind::kText;
  std::string name;     // json_schema.name ("" when absent)
  bool strict = false;  // json_schema.strict (we always enforce the schema)
  // Identifies the grammar: "json_object", or the schema's compact text (so
  // requests with the same schema share compiled masks).
  std::string key;
  std::shared_ptr<const Grammar> grammar;  // null for kText

  bool constrained() const { return grammar != nullptr; }
};

// Parses an OpenAI response_format object:
//   {"type": "text"} | {"type": "json_object"} |
//   {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}.
// A json_schema without "schema" means any JSON value. Throws ApiError (400,
// server/api.h) naming the field; a schema keyword we do not support is a 400
// whose message names the keyword and where it is in the schema (param
// "response_format.json_schema.schema", code "unsupported_schema").
ResponseFormat parse_response_format(const nlohmann::ordered_json& value);

// The constraint factory of one model. Engine thread only.
class ConstraintFactory {
 public:
  // Builds the token trie from the vocabulary: control tokens have no bytes
  // (a grammar never produces them) and end-of-generation tokens are allowed
  // only where the document is complete.
  explicit ConstraintFactory(const Tokenizer& tokenizer, size_t max_cached_grammars = 8);

  // A fresh per-sequence constraint for `format` (which must be constrained).
  // Sequences with the same format.key share one CompiledGrammar.
  std::unique_ptr<GrammarConstraint> make(const ResponseFormat& format);

  const TokenTrie& trie() const { return *trie_; }
  const std::vector<int32_t>& eog_ids() const { return eog_; }
  size_t cached_grammars() const { return lru_.size(); }

 private:
  std::shared_ptr<const TokenTrie> trie_;
  std::vector<int32_t> eog_;
  size_t max_cached_;
  // Most recently used first.
  std::list<std::pair<std::string, std::shared_ptr<CompiledGrammar>>> lru_;
  std::unordered_map<std::string, decltype(lru_)::iterator> index_;
};

// Whether a chat response is split into reasoning and content, and how: only
// when the template knows about "<think>" blocks (a model without thinking is
// left alone, whatever enable_thinking says). When the rendered prompt ends
// inside an opened "<think>" (DeepSeek-R1-style templates open it for the
// model), generation starts in the reasoning part.
std::optional<ReasoningOptions> reasoning_options_for(std::string_view template_source,
                                                      std::string_view rendered_prompt);

// One chat response's output split as it streams (a ReasoningSplitter, or
// everything content when the template has no thinking).
class ChatOutputSplitter {
 public:
  explicit ChatOutputSplitter(std::optional<ReasoningOptions> options);
  ReasoningDelta feed(std::string_view text);
  ReasoningDelta finish();

 private:
  std::optional<ReasoningSplitter> splitter_;
};

}  // namespace kiln::server
