#include "tokenizer/bpe.h"

#include <algorithm>
#include <bit>

namespace kiln::bpe {

void MergeTable::reserve(size_t n_merges) {
  const size_t capacity = std::bit_ceil(std::max<size_t>(16, n_merges * 2));
  slots_.assign(capacity, Slot{kEmpty, {0, 0}});
  mask_ = capacity - 1;
  size_ = 0;
}

bool MergeTable::insert(int32_t left, int32_t right, Merge merge) {
  if ((size_ + 1) * 2 > slots_.size()) {
    // Grow and rehash (only when the caller under-reserved).
    std::vector<Slot> old = std::move(slots_);
    reserve(old.size());
    for (const Slot& s : old) {
      if (s.key != kEmpty)
        insert(static_cast<int32_t>(s.key >> 32), static_cast<int32_t>(s.key), s.merge);
    }
  }
  const uint64_t key = key_of(left, right);
  for (uint64_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    if (slots_[i].key == key) return false;
    if (slots_[i].key == kEmpty) {
      slots_[i] = Slot{key, merge};
      ++size_;
      return true;
    }
  }
}

const MergeTable::Merge* MergeTable::find(int32_t left, int32_t right) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = key_of(left, right);
  for (uint64_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    if (slots_[i].key == key) return &slots_[i].merge;
    if (slots_[i].key == kEmpty) return nullptr;
  }
}

namespace {
// Min-heap order: lower rank first, then the leftmost pair.
bool heap_after(const Scratch::Candidate& a, const Scratch::Candidate& b) {
  return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
}
}  // namespace

void merge(const MergeTable& table, std::vector<int32_t>& symbols, Scratch& scratch) {
  const int32_t n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  auto& prev = scratch.prev;
  auto& next = scratch.next;
  auto& heap = scratch.heap;
  prev.resize(n);
  next.resize(n);
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  // A removed symbol is marked by prev == -2.
  auto try_push = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    if (const auto* m = table.find(symbols[left], symbols[right])) {
      heap.push_back({m->rank, left, right, symbols[left], symbols[right]});
      std::push_heap(heap.begin(), heap.end(), heap_after);
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) try_push(i, i + 1);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_after);
    const Scratch::Candidate c = heap.back();
    heap.pop_back();
    // Stale when either side was merged away or changed since the push: a
    // symbol's value changes exactly when it absorbs its right neighbour.
    if (prev[c.left] == -2 || prev[c.right] == -2 || symbols[c.left] != c.left_symbol ||
        symbols[c.right] != c.right_symbol) {
      continue;
    }
    const auto* m = table.find(c.left_symbol, c.right_symbol);
    symbols[c.left] = m->result;
    const int32_t after = next[c.right];
    next[c.left] = after;
    if (after >= 0) prev[after] = c.left;
    prev[c.right] = -2;
    try_push(prev[c.left], c.left);
    try_push(c.left, after);
  }
  int32_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

void merge_reference(const MergeTable& table, std::vector<int32_t>& symbols) {
  for (;;) {
    size_t best = symbols.size();
    int32_t best_rank = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto* m = table.find(symbols[i], symbols[i + 1]);
      if (m != nullptr && (best == symbols.size() || m->rank < best_rank)) {
        best = i;
        best_rank = m->rank;
      }
    }
    if (best == symbols.size()) return;
    symbols[best] = table.find(symbols[best], symbols[best + 1])->result;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
}

}  // namespace kiln::bpe
