#include "sampler/grammar.h"

#include <algorithm>
#include <cstring>
#include <functional>

namespace kiln {

// ---------------------------------------------------------------------------
// Grammar

int32_t Grammar::add_rule(std::string name) {
  rules_.push_back(Rule{std::move(name), {}});
  return static_cast<int32_t>(rules_.size() - 1);
}

void Grammar::add_alternative(int32_t rule, Sequence sequence) {
  rules_.at(rule).alternatives.push_back(std::move(sequence));
}

GrammarElement Grammar::bytes(const ByteSet& set) {
  std::string key(reinterpret_cast<const char*>(set.bits.data()), sizeof(set.bits));
  auto [it, inserted] = byte_set_index_.emplace(key, static_cast<int32_t>(byte_sets_.size()));
  if (inserted) byte_sets_.push_back(set);
  return {GrammarElement::Kind::kBytes, it->second};
}

GrammarElement Grammar::literal(std::string_view text) {
  Sequence seq;
  for (char c : text) seq.push_back(byte(static_cast<uint8_t>(c)));
  int32_t r = add_rule("lit");
  add_alternative(r, std::move(seq));
  return ref(r);
}

GrammarElement Grammar::sequence(Sequence items) {
  int32_t r = add_rule("seq");
  add_alternative(r, std::move(items));
  return ref(r);
}

GrammarElement Grammar::choice(const std::vector<GrammarElement>& alternatives) {
  int32_t r = add_rule("alt");
  for (const auto& a : alternatives) add_alternative(r, {a});
  return ref(r);
}

GrammarElement Grammar::optional(GrammarElement item) {
  int32_t r = add_rule("opt");
  add_alternative(r, {item});
  add_alternative(r, {});
  return ref(r);
}

GrammarElement Grammar::star(GrammarElement item) {
  // Right recursion: the matcher pops the finished tail call, so stacks stay
  // flat however many repetitions there are.
  int32_t r = add_rule("star");
  add_alternative(r, {item, ref(r)});
  add_alternative(r, {});
  return ref(r);
}

GrammarElement Grammar::repeat(GrammarElement item, int min, int max) {
  if (min < 0 || (max >= 0 && max < min)) {
    throw std::invalid_argument("repeat: bad bounds {" + std::to_string(min) + "," +
                                std::to_string(max) + "}");
  }
  if (min > kMaxRepeat || max > kMaxRepeat) {
    throw std::invalid_argument("repeat: bound above " + std::to_string(kMaxRepeat));
  }
  Sequence seq(static_cast<size_t>(min), item);
  if (max < 0) {
    seq.push_back(star(item));
  } else if (max > min) {
    // Nested optionals, (a (a (a)?)?)?, so each step is deterministic.
    int32_t inner = -1;
    for (int k = 0; k < max - min; ++k) {
      int32_t r = add_rule("upto");
      if (inner < 0) {
        add_alternative(r, {item});
      } else {
        add_alternative(r, {item, ref(inner)});
      }
      add_alternative(r, {});
      inner = r;
    }
    seq.push_back(ref(inner));
  }
  return sequence(std::move(seq));
}

template <typename Holds>
std::vector<bool> Grammar::rules_with_an_alternative(Holds holds) const {
  std::vector<bool> flags(rules_.size(), false);
  bool changed = true;
  while (changed) {
    changed = false;
    for (size_t r = 0; r < rules_.size(); ++r) {
      if (flags[r]) continue;
      for (const auto& alt : rules_[r].alternatives) {
        if (std::all_of(alt.begin(), alt.end(),
                        [&](const GrammarElement& e) { return holds(e, flags); })) {
          flags[r] = true;
          changed = true;
          break;
        }
      }
    }
  }
  return flags;
}

std::vector<bool> Grammar::nullable_rules() const {
  return rules_with_an_alternative([](const GrammarElement& e, const std::vector<bool>& nullable) {
    return e.kind == GrammarElement::Kind::kRule && nullable[e.index];
  });
}

std::vector<bool> Grammar::productive_rules() const {
  return rules_with_an_alternative([&](const GrammarElement& e, const std::vector<bool>& prod) {
    return e.kind == GrammarElement::Kind::kRule ? prod[e.index] : !byte_sets_[e.index].empty();
  });
}

bool Grammar::prune_dead_alternatives() {
  const auto productive = productive_rules();
  for (Rule& rule : rules_) {
    std::erase_if(rule.alternatives, [&](const Sequence& alt) {
      return std::any_of(alt.begin(), alt.end(), [&](const GrammarElement& e) {
        return e.kind == GrammarElement::Kind::kRule ? !productive[e.index]
                                                     : byte_sets_[e.index].empty();
      });
    });
  }
  return root_ >= 0 && static_cast<size_t>(root_) < rules_.size() && productive[root_];
}

void Grammar::validate() const {
  if (root_ < 0 || static_cast<size_t>(root_) >= rules_.size()) {
    throw std::invalid_argument("grammar has no root rule");
  }
  const auto nullable = nullable_rules();
  // Edges r -> s where s can be the first thing r expands to (everything
  // before it can be empty). A cycle is left recursion.
  std::vector<std::vector<int32_t>> left(rules_.size());
  for (size_t r = 0; r < rules_.size(); ++r) {
    for (const auto& alt : rules_[r].alternatives) {
      for (const auto& e : alt) {
        if (e.kind == GrammarElement::Kind::kBytes) break;
        left[r].push_back(e.index);
        if (!nullable[e.index]) break;
      }
    }
  }
  // Iterative DFS with colours (grammars can be deep; no recursion).
  std::vector<uint8_t> colour(rules_.size(), 0);  // 0 new, 1 on stack, 2 done
  for (size_t start = 0; start < rules_.size(); ++start) {
    if (colour[start]) continue;
    std::vector<std::pair<int32_t, size_t>> stack{{static_cast<int32_t>(start), 0}};
    colour[start] = 1;
    while (!stack.empty()) {
      auto& [r, i] = stack.back();
      if (i < left[r].size()) {
        int32_t s = left[r][i++];
        if (colour[s] == 1) {
          throw std::invalid_argument("rule '" + rules_[s].name +
                                      "' is left-recursive (it can expand to itself before "
                                      "consuming a byte)");
        }
        if (colour[s] == 0) {
          colour[s] = 1;
          stack.push_back({s, 0});
        }
      } else {
        colour[r] = 2;
        stack.pop_back();
      }
    }
  }
}

namespace {

std::string byte_set_to_string(const ByteSet& set) {
  auto show = [](int b) {
    if (b >= 0x21 && b < 0x7f && b != '\\' && b != ']' && b != '-' && b != '"') {
      return std::string(1, static_cast<char>(b));
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02X", b);
    return std::string(buf);
  };
  int count = 0;
  int only = -1;
  for (int b = 0; b < 256; ++b) {
    if (set.contains(static_cast<uint8_t>(b))) {
      ++count;
      only = b;
    }
  }
  if (count == 1) {
    std::string one = "\"";
    one += show(only);
    one += '"';
    return one;
  }
  std::string out = "[";
  for (int b = 0; b < 256;) {
    if (!set.contains(static_cast<uint8_t>(b))) {
      ++b;
      continue;
    }
    int e = b;
    while (e + 1 < 256 && set.contains(static_cast<uint8_t>(e + 1))) ++e;
    out += show(b);
    if (e > b) {
      out += '-';
      out += show(e);
    }
    b = e + 1;
  }
  return out + "]";
}

}  // namespace

std::string Grammar::to_string() const {
  std::string out;
  for (size_t r = 0; r < rules_.size(); ++r) {
    out += rules_[r].name + "_" + std::to_string(r) + " ::=";
    if (rules_[r].alternatives.empty()) out += " <nothing>";
    for (size_t a = 0; a < rules_[r].alternatives.size(); ++a) {
      if (a > 0) out += " |";
      if (rules_[r].alternatives[a].empty()) out += " \"\"";
      for (const auto& e : rules_[r].alternatives[a]) {
        out += " ";
        if (e.kind == GrammarElement::Kind::kBytes) {
          out += byte_set_to_string(byte_sets_[e.index]);
        } else {
          out += rules_[e.index].name + "_" + std::to_string(e.index);
        }
      }
    }
    out += "\n";
  }
  return out;
}

// ---------------------------------------------------------------------------
// GrammarAutomaton

GrammarAutomaton::GrammarAutomaton(std::shared_ptr<const Grammar> grammar)
    : grammar_(std::move(grammar)) {
  grammar_->validate();
  const Grammar& g = *grammar_;
  rule_starts_.resize(g.rule_count());
  for (size_t r = 0; r < g.rule_count(); ++r) {
    for (const auto& alt : g.alternatives(static_cast<int32_t>(r))) {
      rule_starts_[r].push_back(static_cast<int32_t>(flat_.size()));
      for (const auto& e : alt) {
        flat_.push_back({e.kind == GrammarElement::Kind::kBytes ? FlatElement::Kind::kBytes
                                                                : FlatElement::Kind::kRule,
                         e.index});
      }
      flat_.push_back({FlatElement::Kind::kEnd, 0});
    }
  }
  std::vector<int32_t> stacks;
  bool accepting = false;
  for (int32_t start : rule_starts_[g.root()]) expand(start, -1, stacks, accepting, 0);
  initial_state_ = intern_state(std::move(stacks), accepting);
}

int32_t GrammarAutomaton::intern_node(int32_t position, int32_t parent) {
  uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(position)) << 32) |
                 static_cast<uint32_t>(parent);
  auto [it, inserted] = node_index_.emplace(key, static_cast<int32_t>(nodes_.size()));
  if (inserted) nodes_.push_back({position, parent});
  return it->second;
}

void GrammarAutomaton::expand(int32_t position, int32_t parent, std::vector<int32_t>& out,
                              bool& accepting, int depth) {
  // validate() rules out left recursion, so this depth bound only trips on a
  // grammar bug; it keeps such a bug from overflowing the C++ stack.
  if (depth > 100000) throw std::logic_error("grammar expansion too deep");
  for (;;) {
    const FlatElement& e = flat_[position];
    switch (e.kind) {
      case FlatElement::Kind::kBytes:
        out.push_back(intern_node(position, parent));
        return;
      case FlatElement::Kind::kEnd:
        if (parent < 0) {
          accepting = true;
          return;
        }
        position = nodes_[parent].position;
        parent = nodes_[parent].parent;
        continue;
      case FlatElement::Kind::kRule: {
        // Tail call: when the reference ends its alternative, return straight
        // to the caller's continuation instead of stacking an end marker.
        int32_t continuation = flat_[position + 1].kind == FlatElement::Kind::kEnd
                                   ? parent
                                   : intern_node(position + 1, parent);
        const auto& starts = rule_starts_[e.index];
        for (int32_t start : starts) expand(start, continuation, out, accepting, depth + 1);
        return;
      }
    }
  }
}

int32_t GrammarAutomaton::intern_state(std::vector<int32_t> stacks, bool accepting) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  std::string key(stacks.size() * sizeof(int32_t) + 1, '\0');
  if (!stacks.empty()) std::memcpy(key.data(), stacks.data(), stacks.size() * sizeof(int32_t));
  key.back() = accepting ? 1 : 0;
  auto [it, inserted] = state_index_.emplace(std::move(key), static_cast<int32_t>(states_.size()));
  if (inserted) {
    State s;
    s.accepting = accepting;
    for (int32_t n : stacks) {
      const ByteSet& set = grammar_->byte_set(flat_[nodes_[n].position].index);
      for (int w = 0; w < 4; ++w) s.next_bytes.bits[w] |= set.bits[w];
    }
    s.stacks = std::move(stacks);
    states_.push_back(std::move(s));
    transitions_.resize(states_.size() * 256, kUnknown);
  }
  return it->second;
}

int32_t GrammarAutomaton::compute_step(int32_t state, uint8_t byte) {
  int32_t result = kDead;
  if (states_[state].next_bytes.contains(byte)) {
    std::vector<int32_t> out;
    bool accepting = false;
    // Copy: expand() may grow nodes_, never states_, but keep it obviously safe.
    scratch_ = states_[state].stacks;
    for (int32_t n : scratch_) {
      const StackNode node = nodes_[n];
      if (grammar_->byte_set(flat_[node.position].index).contains(byte)) {
        expand(node.position + 1, node.parent, out, accepting, 0);
      }
    }
    if (!out.empty() || accepting) result = intern_state(std::move(out), accepting);
  }
  transitions_[static_cast<size_t>(state) * 256 + byte] = result;
  return result;
}

size_t GrammarAutomaton::memory_bytes() const {
  size_t total = transitions_.size() * sizeof(int32_t) + nodes_.size() * sizeof(StackNode) * 3;
  for (const auto& s : states_) total += sizeof(State) + s.stacks.size() * sizeof(int32_t) * 3;
  return total;
}

// ---------------------------------------------------------------------------
// GrammarMatcher

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar)
    : GrammarMatcher(std::make_shared<GrammarAutomaton>(std::move(grammar))) {}

GrammarMatcher::GrammarMatcher(std::shared_ptr<GrammarAutomaton> automaton)
    : automaton_(std::move(automaton)), state_(automaton_->initial_state()) {}

bool GrammarMatcher::accept_byte(uint8_t byte) {
  int32_t next = automaton_->step(state_, byte);
  if (next == GrammarAutomaton::kDead) return false;
  state_ = next;
  return true;
}

bool GrammarMatcher::accept_bytes(std::string_view bytes) {
  int32_t s = state_;
  for (char c : bytes) {
    s = automaton_->step(s, static_cast<uint8_t>(c));
    if (s == GrammarAutomaton::kDead) return false;
  }
  state_ = s;
  return true;
}

bool GrammarMatcher::can_accept(std::string_view bytes) const {
  GrammarMatcher copy = *this;
  return copy.accept_bytes(bytes);
}

}  // namespace kiln
