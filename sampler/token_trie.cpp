#include "sampler/token_trie.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace kiln {

TokenTrie TokenTrie::build(const std::vector<std::string>& token_bytes,
                           std::span<const int32_t> excluded) {
  TokenTrie t;
  t.vocab_size_ = token_bytes.size();
  t.bytes_ = token_bytes;
  t.in_trie_.assign(token_bytes.size(), false);
  std::vector<bool> skip(token_bytes.size(), false);
  for (int32_t id : excluded) {
    if (id >= 0 && static_cast<size_t>(id) < skip.size()) skip[id] = true;
  }
  std::vector<int32_t> order;
  for (size_t id = 0; id < token_bytes.size(); ++id) {
    if (!skip[id] && !token_bytes[id].empty()) order.push_back(static_cast<int32_t>(id));
  }
  // Sorted byte strings give the preorder directly: each string adds the
  // nodes past its common prefix with the previous one.
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return token_bytes[a] < token_bytes[b] || (token_bytes[a] == token_bytes[b] && a < b);
  });
  std::vector<int32_t> path;                             // node index at each depth - 1
  std::vector<std::pair<int32_t, int32_t>> node_tokens;  // (node, token) in order
  const std::string* prev = nullptr;
  for (int32_t id : order) {
    const std::string& s = token_bytes[id];
    if (s.size() > std::numeric_limits<uint16_t>::max()) {
      throw std::invalid_argument("token " + std::to_string(id) + " is longer than 65535 bytes");
    }
    size_t common = 0;
    if (prev) {
      while (common < prev->size() && common < s.size() && (*prev)[common] == s[common]) ++common;
    }
    path.resize(common);
    for (size_t d = common; d < s.size(); ++d) {
      path.push_back(static_cast<int32_t>(t.nodes_.size()));
      t.nodes_.push_back({static_cast<uint8_t>(s[d]), static_cast<uint16_t>(d + 1), 0, 0, 0});
    }
    node_tokens.push_back({path.back(), id});
    t.in_trie_[id] = true;
    t.max_depth_ = std::max(t.max_depth_, static_cast<int>(s.size()));
    prev = &s;
  }
  // Subtree ends: a node's subtree runs until the next node at its depth or above.
  std::vector<int32_t> open;
  for (size_t i = 0; i < t.nodes_.size(); ++i) {
    while (!open.empty() && t.nodes_[open.back()].depth >= t.nodes_[i].depth) {
      t.nodes_[open.back()].subtree_end = static_cast<int32_t>(i);
      open.pop_back();
    }
    open.push_back(static_cast<int32_t>(i));
  }
  for (int32_t n : open) t.nodes_[n].subtree_end = static_cast<int32_t>(t.nodes_.size());
  // node_tokens is in node order (sorted strings), so each node's tokens are contiguous.
  for (size_t k = 0; k < node_tokens.size();) {
    int32_t node = node_tokens[k].first;
    t.nodes_[node].tokens_begin = static_cast<int32_t>(t.tokens_.size());
    while (k < node_tokens.size() && node_tokens[k].first == node) {
      t.tokens_.push_back(node_tokens[k].second);
      ++k;
    }
    t.nodes_[node].tokens_end = static_cast<int32_t>(t.tokens_.size());
  }
  return t;
}

void TokenTrie::collect_allowed(GrammarAutomaton& automaton, int32_t state,
                                std::span<uint64_t> allowed) const {
  // state_at[d] is the automaton state after the first d bytes of the path.
  std::vector<int32_t> state_at(static_cast<size_t>(max_depth_) + 1);
  state_at[0] = state;
  const ByteSet first = automaton.next_bytes(state);  // a copy: step() may grow the state table
  const size_t n = nodes_.size();
  size_t i = 0;
  while (i < n) {
    const Node& node = nodes_[i];
    if (node.depth == 1 && !first.contains(node.byte)) {
      i = static_cast<size_t>(node.subtree_end);
      continue;
    }
    int32_t s = automaton.step(state_at[node.depth - 1], node.byte);
    if (s == GrammarAutomaton::kDead) {
      i = static_cast<size_t>(node.subtree_end);
      continue;
    }
    state_at[node.depth] = s;
    for (int32_t k = node.tokens_begin; k < node.tokens_end; ++k) {
      const auto id = static_cast<uint32_t>(tokens_[k]);
      allowed[id >> 6] |= uint64_t{1} << (id & 63);
    }
    ++i;
  }
}

// ---------------------------------------------------------------------------

CompiledGrammar::CompiledGrammar(std::shared_ptr<const Grammar> grammar,
                                 std::shared_ptr<const TokenTrie> trie,
                                 std::vector<int32_t> eog_ids)
    : grammar_(std::move(grammar)),
      trie_(std::move(trie)),
      eog_ids_(std::move(eog_ids)),
      automaton_(std::make_unique<GrammarAutomaton>(grammar_)) {
  for (int32_t id : eog_ids_) {
    if (id < 0 || static_cast<size_t>(id) >= trie_->vocab_size()) {
      throw std::invalid_argument("end-of-generation token id " + std::to_string(id) +
                                  " is outside the vocabulary");
    }
  }
}

const std::vector<uint64_t>& CompiledGrammar::mask_for(int32_t state) {
  auto it = masks_.find(state);
  if (it != masks_.end()) return it->second;
  if (masks_.size() >= kMaxCachedMasks) masks_.clear();
  std::vector<uint64_t> mask((trie_->vocab_size() + 63) / 64, 0);
  if (!automaton_->is_final(state)) trie_->collect_allowed(*automaton_, state, mask);
  if (automaton_->is_accepting(state)) {
    for (int32_t id : eog_ids_) mask[id >> 6] |= uint64_t{1} << (id & 63);
  }
  return masks_.emplace(state, std::move(mask)).first->second;
}

void CompiledGrammar::reset_caches() {
  automaton_ = std::make_unique<GrammarAutomaton>(grammar_);
  masks_.clear();
  ++epoch_;
}

// ---------------------------------------------------------------------------

GrammarConstraint::GrammarConstraint(std::shared_ptr<CompiledGrammar> compiled)
    : compiled_(std::move(compiled)),
      state_(compiled_->automaton_->initial_state()),
      epoch_(compiled_->epoch_),
      states_{state_} {}

GrammarConstraint::GrammarConstraint(std::shared_ptr<const Grammar> grammar,
                                     std::shared_ptr<const TokenTrie> trie,
                                     std::vector<int32_t> eog_ids)
    : GrammarConstraint(std::make_shared<CompiledGrammar>(std::move(grammar), std::move(trie),
                                                          std::move(eog_ids))) {}

void GrammarConstraint::sync() const {
  if (epoch_ == compiled_->epoch_) return;
  GrammarAutomaton& a = *compiled_->automaton_;
  states_.assign(1, a.initial_state());
  for (char c : text_) states_.push_back(a.step(states_.back(), static_cast<uint8_t>(c)));
  state_ = states_.back();
  epoch_ = compiled_->epoch_;
}

bool GrammarConstraint::is_complete() const {
  sync();
  return compiled_->automaton_->is_accepting(state_);
}

bool GrammarConstraint::done() const {
  if (eog_accepted_) return true;
  sync();
  return compiled_->automaton_->is_final(state_);
}

std::span<const uint64_t> GrammarConstraint::allowed_mask() {
  sync();
  if (eog_accepted_) {
    no_tokens_.assign((compiled_->trie_->vocab_size() + 63) / 64, 0);
    return no_tokens_;
  }
  return compiled_->mask_for(state_);
}

bool GrammarConstraint::is_allowed(int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= compiled_->trie_->vocab_size()) return false;
  auto mask = allowed_mask();
  return (mask[id >> 6] >> (id & 63)) & 1;
}

size_t GrammarConstraint::compute_mask(std::span<float> logits) {
  auto mask = allowed_mask();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const size_t n = std::min(logits.size(), compiled_->trie_->vocab_size());
  size_t allowed = 0;
  size_t i = 0;
  for (size_t w = 0; i < n; ++w) {
    const uint64_t bits = mask[w];
    const size_t end = std::min(n, i + 64);
    if (bits == ~uint64_t{0} && end - i == 64) {
      allowed += 64;
      i = end;
      continue;
    }
    for (; i < end; ++i) {
      if ((bits >> (i & 63)) & 1) {
        ++allowed;
      } else {
        logits[i] = neg_inf;
      }
    }
  }
  for (; i < logits.size(); ++i) logits[i] = neg_inf;
  return allowed;
}

void GrammarConstraint::accept_token(int32_t id) {
  if (!is_allowed(id)) {
    throw std::invalid_argument("token " + std::to_string(id) +
                                " is not allowed by the grammar here");
  }
  const auto& eog = compiled_->eog_ids_;
  if (std::find(eog.begin(), eog.end(), id) != eog.end()) {
    eog_accepted_ = true;
    return;
  }
  GrammarAutomaton& a = *compiled_->automaton_;
  for (char c : compiled_->trie_->token(id)) {
    state_ = a.step(state_, static_cast<uint8_t>(c));
    if (state_ == GrammarAutomaton::kDead) throw std::logic_error("grammar mask out of sync");
    states_.push_back(state_);
  }
  text_ += compiled_->trie_->token(id);
  if (a.memory_bytes() > CompiledGrammar::kMaxAutomatonBytes) {
    compiled_->reset_caches();
    sync();
  }
}

void GrammarConstraint::rollback(const Checkpoint& c) {
  if (c.text_size > text_.size()) throw std::invalid_argument("rollback to a later checkpoint");
  sync();
  text_.resize(c.text_size);
  states_.resize(c.text_size + 1);
  state_ = states_.back();
  eog_accepted_ = c.eog_accepted;
}

}  // namespace kiln
