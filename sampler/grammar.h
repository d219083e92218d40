// Byte-level context-free grammars and an incremental matcher over them.
//
// A Grammar is a set of rules; each rule is a list of alternatives; each
// alternative is a sequence of elements, and an element is either a byte set
// (one input byte out of a 256-bit set) or a reference to another rule. The
// JSON Schema compiler (json_schema.h) builds one; nothing here knows JSON.
//
// Matching is a pushdown automaton: a configuration is a set of stacks of
// grammar positions (several at once where the grammar is ambiguous so far).
// Configurations are interned, and the transition (configuration, byte) ->
// configuration is memoised, so the matcher is a lazily built DFA over the
// PDA's configurations: after warm-up a byte costs one table lookup, and a
// matcher is an (automaton, state id) pair that is free to copy, which is what
// checkpoint/rollback and the token-trie walk need.
//
// Rules must not be left-recursive (Grammar::validate() rejects them), since a
// left-recursive rule would make the stack expansion loop forever.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kiln {

// 256-bit set of bytes.
struct ByteSet {
  std::array<uint64_t, 4> bits{};
  bool contains(uint8_t b) const { return (bits[b >> 6] >> (b & 63)) & 1; }
  void add(uint8_t b) { bits[b >> 6] |= uint64_t{1} << (b & 63); }
  void add_range(uint8_t lo, uint8_t hi) {
    for (int b = lo; b <= hi; ++b) add(static_cast<uint8_t>(b));
  }
  bool empty() const { return (bits[0] | bits[1] | bits[2] | bits[3]) == 0; }
  bool operator==(const ByteSet&) const = default;
  static ByteSet single(uint8_t b) {
    ByteSet s;
    s.add(b);
    return s;
  }
  static ByteSet range(uint8_t lo, uint8_t hi) {
    ByteSet s;
    s.add_range(lo, hi);
    return s;
  }
};

struct GrammarElement {
  enum class Kind : uint8_t { kBytes, kRule };
  Kind kind = Kind::kBytes;
  int32_t index = 0;  // into Grammar::byte_sets (kBytes) or the rule id (kRule)
};

class Grammar {
 public:
  using Sequence = std::vector<GrammarElement>;

  // Rule building. A rule with no alternatives matches nothing.
  int32_t add_rule(std::string name);
  void add_alternative(int32_t rule, Sequence sequence);
  GrammarElement bytes(const ByteSet& set);  // interned
  GrammarElement byte(uint8_t b) { return bytes(ByteSet::single(b)); }
  static GrammarElement ref(int32_t rule) { return {GrammarElement::Kind::kRule, rule}; }

  // Convenience combinators; each returns a reference to a (new) rule.
  GrammarElement literal(std::string_view text);                           // exact bytes
  GrammarElement sequence(Sequence items);                                 // a b c
  GrammarElement choice(const std::vector<GrammarElement>& alternatives);  // a | b | c
  GrammarElement optional(GrammarElement item);                            // a?
  GrammarElement star(GrammarElement item);  // a*  (item must not match "")
  // item{min,max}; max < 0 means unbounded. Throws when the expansion would be
  // huge (max above kMaxRepeat).
  GrammarElement repeat(GrammarElement item, int min, int max);
  static constexpr int kMaxRepeat = 10000;

  void set_root(int32_t rule) { root_ = rule; }
  int32_t root() const { return root_; }

  size_t rule_count() const { return rules_.size(); }
  const std::string& rule_name(int32_t rule) const { return rules_[rule].name; }
  const std::vector<Sequence>& alternatives(int32_t rule) const {
    return rules_[rule].alternatives;
  }
  const ByteSet& byte_set(int32_t index) const { return byte_sets_[index]; }

  // Throws std::invalid_argument naming a left-recursive rule or a repetition
  // of something that can match the empty string (both would make the
  // automaton loop).
  void validate() const;
  // Which rules can match the empty string.
  std::vector<bool> nullable_rules() const;
  // Which rules can match some string (a rule without alternatives, or whose every
  // alternative holds an empty byte set or such a rule, matches nothing).
  std::vector<bool> productive_rules() const;
  // Drops the alternatives that can match nothing, so that every prefix the automaton
  // accepts can be completed: a schema whose optional property allows no value (enum [])
  // must not let the model write that key and then find no next token. Returns whether
  // the root still matches something (false: no document satisfies the grammar).
  bool prune_dead_alternatives();

  // GBNF-like text, for debugging and `kiln grammar --print`.
  std::string to_string() const;

 private:
  struct Rule {
    std::string name;
    std::vector<Sequence> alternatives;
  };
  // The rules some alternative of which has only elements for which holds(element, flags)
  // is true, where flags are this very set (a least fixpoint, from all false).
  template <typename Holds>
  std::vector<bool> rules_with_an_alternative(Holds holds) const;

  std::vector<Rule> rules_;
  std::vector<ByteSet> byte_sets_;
  std::unordered_map<std::string, int32_t> byte_set_index_;
  int32_t root_ = -1;
};

// The lazily built DFA over the PDA configurations of one grammar. Mutable
// (lookups add states); not thread-safe: use one per request.
class GrammarAutomaton {
 public:
  static constexpr int32_t kDead = -1;

  explicit GrammarAutomaton(std::shared_ptr<const Grammar> grammar);

  int32_t initial_state() const { return initial_state_; }
  // The state after `byte`, or kDead when no stack can take it.
  int32_t step(int32_t state, uint8_t byte) {
    int32_t next = transitions_[static_cast<size_t>(state) * 256 + byte];
    return next != kUnknown ? next : compute_step(state, byte);
  }
  // The grammar's root rule has been matched completely (some stack is empty).
  bool is_accepting(int32_t state) const { return states_[state].accepting; }
  // No byte can follow (every stack is empty).
  bool is_final(int32_t state) const { return states_[state].stacks.empty(); }
  // Bytes some stack can take next (an over-approximation of what keeps the
  // document alive: every byte in it does, by construction).
  const ByteSet& next_bytes(int32_t state) const { return states_[state].next_bytes; }

  size_t state_count() const { return states_.size(); }
  size_t memory_bytes() const;
  const Grammar& grammar() const { return *grammar_; }

 private:
  static constexpr int32_t kUnknown = -2;
  // A flattened grammar: alternatives laid out end to end, each closed by an
  // end marker, so a position is one int and "advance" is +1.
  struct FlatElement {
    enum class Kind : uint8_t { kBytes, kRule, kEnd } kind;
    int32_t index;  // byte set index, rule id, or unused
  };
  struct StackNode {
    int32_t position;  // into flat_
    int32_t parent;    // StackNode id, -1 for the bottom
  };
  struct State {
    std::vector<int32_t> stacks;  // sorted StackNode ids whose top is a byte set
    bool accepting = false;
    ByteSet next_bytes;
  };

  int32_t compute_step(int32_t state, uint8_t byte);
  int32_t intern_node(int32_t position, int32_t parent);
  // Adds to `out` every stack reachable from (position, parent) whose top is a
  // byte set; sets `accepting` when the whole stack can be popped.
  void expand(int32_t position, int32_t parent, std::vector<int32_t>& out, bool& accepting,
              int depth);
  int32_t intern_state(std::vector<int32_t> stacks, bool accepting);

  std::shared_ptr<const Grammar> grammar_;
  std::vector<FlatElement> flat_;
  std::vector<std::vector<int32_t>> rule_starts_;  // rule -> flat positions of its alternatives
  std::vector<StackNode> nodes_;
  std::unordered_map<uint64_t, int32_t> node_index_;
  std::vector<State> states_;
  std::unordered_map<std::string, int32_t> state_index_;
  std::vector<int32_t> transitions_;  // state * 256 + byte
  int32_t initial_state_ = kDead;
  std::vector<int32_t> scratch_;
};

// An incremental matcher: a position in the automaton. Copies share the
// automaton (cheap; use copies to look ahead or to roll back).
class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const Grammar> grammar);
  explicit GrammarMatcher(std::shared_ptr<GrammarAutomaton> automaton);

  // Advances by one byte; on rejection returns false and the matcher is
  // unchanged.
  bool accept_byte(uint8_t byte);
  // All or nothing: on rejection the matcher is unchanged.
  bool accept_bytes(std::string_view bytes);
  // Would these bytes be accepted (the matcher is not changed)?
  bool can_accept(std::string_view bytes) const;
  bool is_complete() const { return automaton_->is_accepting(state_); }
  // Complete and nothing more may follow.
  bool is_final() const { return automaton_->is_final(state_); }

  int32_t state() const { return state_; }
  void set_state(int32_t state) { state_ = state; }
  GrammarAutomaton& automaton() const { return *automaton_; }
  const std::shared_ptr<GrammarAutomaton>& automaton_ptr() const { return automaton_; }

 private:
  std::shared_ptr<GrammarAutomaton> automaton_;
  int32_t state_;
};

}  // namespace kiln
