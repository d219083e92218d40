// Token masking for grammar-constrained sampling.
//
// TokenTrie: the vocabulary's token bytes in a byte trie, laid out in preorder
// with each node's subtree end, so a walk can skip a whole subtree (every
// token sharing a rejected prefix) with one jump. Built once per vocabulary.
//
// GrammarConstraint: one request's constraint. compute_mask() walks the trie
// with the grammar automaton (one transition lookup per visited node) and
// caches the resulting bitmask per automaton state, since JSON generation
// revisits the same states constantly (inside a string, after a comma...).
// End-of-generation tokens are allowed exactly when the document is complete.
//
// Wiring (server):
//   once per model:  bytes[id] = tokenizer.token_bytes(id), "" for CONTROL tokens;
//                    eog = ids with tokenizer.is_eog(id);
//                    trie = TokenTrie::build(bytes, eog)
//   per request:     grammar = JsonGrammar::from_schema(schema as ordered_json)
//                    (UnsupportedSchema -> 400 naming e.keyword() and e.path());
//                    constraint = GrammarConstraint(compiled), with `compiled` a
//                    CompiledGrammar(grammar, trie, eog) cached per schema text
//   per step:        constraint.compute_mask(logits) before the sampler chain;
//                    constraint.accept_token(sampled); stop when constraint.done()
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sampler/grammar.h"

namespace kiln {

class TokenTrie {
 public:
  struct Node {
    uint8_t byte;
    uint16_t depth;        // 1 for children of the (implicit) root
    int32_t subtree_end;   // index one past the last node of this subtree
    int32_t tokens_begin;  // tokens ending at this node: tokens_[begin, end)
    int32_t tokens_end;
  };

  // `token_bytes[id]` is what token `id` stands for. Tokens with no bytes
  // (give control tokens an empty string) and the `excluded` ids never enter
  // the trie, so a grammar never allows them.
  static TokenTrie build(const std::vector<std::string>& token_bytes,
                         std::span<const int32_t> excluded = {});

  size_t vocab_size() const { return vocab_size_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  std::span<const int32_t> tokens_at(const Node& n) const {
    return {tokens_.data() + n.tokens_begin, static_cast<size_t>(n.tokens_end - n.tokens_begin)};
  }
  const std::string& token(int32_t id) const { return bytes_[id]; }
  bool in_trie(int32_t id) const { return in_trie_[id]; }
  int max_depth() const { return max_depth_; }

  // Marks in `allowed` (vocab_size bits) every token whose bytes the
  // automaton accepts from `state`. Does not clear `allowed` first.
  void collect_allowed(GrammarAutomaton& automaton, int32_t state,
                       std::span<uint64_t> allowed) const;

 private:
  size_t vocab_size_ = 0;
  std::vector<Node> nodes_;
  std::vector<int32_t> tokens_;
  std::vector<std::string> bytes_;
  std::vector<bool> in_trie_;
  int max_depth_ = 0;
};

// What requests with the same schema can share: the grammar, the automaton
// built so far and the mask per automaton state. A second request with the
// same schema starts warm (every mask it revisits is cached). Not thread-safe:
// share it among constraints used from one thread (the engine thread).
class CompiledGrammar {
 public:
  // `eog_ids`: end-of-generation tokens (EOS, <|im_end|>, ...), allowed only
  // when the document is complete; they should not be in the trie (pass them
  // as `excluded` to TokenTrie::build or give them empty bytes).
  CompiledGrammar(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenTrie> trie,
                  std::vector<int32_t> eog_ids);

  const Grammar& grammar() const { return *grammar_; }
  const TokenTrie& trie() const { return *trie_; }
  const GrammarAutomaton& automaton() const { return *automaton_; }
  size_t cached_masks() const { return masks_.size(); }
  // Drops the automaton and the masks (memory back); constraints sharing this
  // find their place again on their next call.
  void reset_caches();

  // Caps: above these the caches start over (memory stays bounded however
  // long, deep or varied the documents are).
  static constexpr size_t kMaxCachedMasks = 2048;  // 6 KiB each for a 49152-token vocabulary
  static constexpr size_t kMaxAutomatonBytes = size_t{64} << 20;

 private:
  friend class GrammarConstraint;
  const std::vector<uint64_t>& mask_for(int32_t state);

  std::shared_ptr<const Grammar> grammar_;
  std::shared_ptr<const TokenTrie> trie_;
  std::vector<int32_t> eog_ids_;
  std::unique_ptr<GrammarAutomaton> automaton_;
  uint64_t epoch_ = 0;  // bumped by reset_caches(): state ids from before are void
  std::unordered_map<int32_t, std::vector<uint64_t>> masks_;
};

// One request's constraint: where it is in the document.
class GrammarConstraint {
 public:
  explicit GrammarConstraint(std::shared_ptr<CompiledGrammar> compiled);
  // A private CompiledGrammar (nothing shared).
  GrammarConstraint(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const TokenTrie> trie,
                    std::vector<int32_t> eog_ids);

  // Sets logits of tokens that cannot come next to -inf. Tokens past the
  // trie's vocabulary are masked too. Returns how many tokens stay allowed
  // (0 only once done(), or if the grammar is stuck, which a byte-complete
  // vocabulary rules out: the caller should then stop).
  size_t compute_mask(std::span<float> logits);
  // Bitmask of allowed tokens for the current state (vocab_size bits); valid
  // until the next call on any constraint sharing the CompiledGrammar.
  std::span<const uint64_t> allowed_mask();
  bool is_allowed(int32_t id);

  // Advances by a sampled token; throws std::invalid_argument if the token is
  // not allowed (the caller masked with a stale state).
  void accept_token(int32_t id);
  // The document so far is a complete value (an eog token may come now).
  bool is_complete() const;
  // Generation must stop: an eog token was accepted, or the document is
  // complete and nothing can extend it.
  bool done() const;
  const std::string& text() const { return text_; }  // bytes accepted so far

  // Checkpoint / rollback (speculative decoding, retries).
  struct Checkpoint {
    size_t text_size;
    bool eog_accepted;
  };
  Checkpoint checkpoint() const { return {text_.size(), eog_accepted_}; }
  void rollback(const Checkpoint& c);

  const CompiledGrammar& compiled() const { return *compiled_; }

 private:
  // Re-finds the state after the shared automaton restarted.
  void sync() const;

  std::shared_ptr<CompiledGrammar> compiled_;
  mutable int32_t state_;
  mutable uint64_t epoch_;
  bool eog_accepted_ = false;
  std::string text_;
  // state after text_[0, n) for the checkpoints' sake: states_[n]
  mutable std::vector<int32_t> states_;
  std::vector<uint64_t> no_tokens_;  // the mask once an eog token was accepted
};

}  // namespace kiln
