// Byte-pair merging by rank, the core of byte-level BPE (internal header).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln::bpe {

// (left symbol, right symbol) -> (merge rank, merged symbol), an open-addressing
// hash table: the lookup is on the hot path of every merge step.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  void reserve(size_t n_merges);
  // Keeps the first (lowest-rank) entry for a pair; returns false on a repeat.
  bool insert(int32_t left, int32_t right, Merge merge);
  const Merge* find(int32_t left, int32_t right) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t key_of(int32_t left, int32_t right) {
    return (uint64_t{static_cast<uint32_t>(left)} << 32) | static_cast<uint32_t>(right);
  }
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
  }
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
  size_t size_ = 0;
};

// Buffers reused across words so merging allocates nothing per word.
struct Scratch {
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index = position of its first byte
    int32_t right;
    int32_t left_symbol;
    int32_t right_symbol;
  };
  std::vector<int32_t> prev, next;
  std::vector<Candidate> heap;
};

// Applies merges to `symbols` in place until none applies: at each step the
// adjacent pair with the lowest rank merges, the leftmost among equals. A
// binary heap of candidate pairs (stale ones skipped when popped) makes this
// O(n log n) in the word length instead of the naive O(n^2).
void merge(const MergeTable& table, std::vector<int32_t>& symbols, Scratch& scratch);

// The same result by repeated full rescans: the test oracle for merge().
void merge_reference(const MergeTable& table, std::vector<int32_t>& symbols);

}  // namespace kiln::bpe
