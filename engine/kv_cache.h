// Per-sequence key/value cache.
//
// Storage per layer is [n_seq slots][n_ctx positions][kv_dim] for K and for V,
// in F16 (default), F32 or Q8_0. A sequence id is a slot index; the cache
// tracks how many positions of each sequence are valid, so clearing and
// truncating are O(1) (later writes overwrite the stale rows).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "gguf/ggml_types.h"

namespace kiln {

class KvCache {
 public:
  // kv_dim must be a multiple of 32 for Q8_0.
  KvCache(GgmlType type, size_t n_layers, size_t n_seq, size_t n_ctx, size_t kv_dim);

  GgmlType type() const { return type_; }
  size_t n_seq() const { return n_seq_; }
  size_t n_ctx() const { return n_ctx_; }
  size_t kv_dim() const { return kv_dim_; }
  size_t row_bytes() const { return row_bytes_; }  // bytes of one K (or V) row
  size_t total_bytes() const { return 2 * bytes_per_tensor_; }

  // Valid positions of a sequence: the next token goes at this position.
  size_t length(size_t seq) const { return length_.at(seq); }
  // Forgets a sequence (its slot becomes free for a new one).
  void clear(size_t seq);
  // Keeps positions [0, pos) of a sequence (e.g. a shared prompt prefix).
  void truncate(size_t seq, size_t pos);
  // Marks positions [0, n) valid after the forward wrote them.
  void set_length(size_t seq, size_t n);

  // Row of K or V for (layer, seq, pos), raw bytes in type().
  std::span<std::byte> k_row(size_t layer, size_t seq, size_t pos) {
    return {k_.get() + offset(layer, seq, pos), row_bytes_};
  }
  std::span<std::byte> v_row(size_t layer, size_t seq, size_t pos) {
    return {v_.get() + offset(layer, seq, pos), row_bytes_};
  }
  // All rows [0, n_ctx) of one (layer, seq), contiguous.
  std::span<const std::byte> k_rows(size_t layer, size_t seq) const {
    return {k_.get() + offset(layer, seq, 0), row_bytes_ * n_ctx_};
  }
  std::span<const std::byte> v_rows(size_t layer, size_t seq) const {
    return {v_.get() + offset(layer, seq, 0), row_bytes_ * n_ctx_};
  }

 private:
  size_t offset(size_t layer, size_t seq, size_t pos) const {
    return ((layer * n_seq_ + seq) * n_ctx_ + pos) * row_bytes_;
  }
  GgmlType type_;
  size_t n_layers_, n_seq_, n_ctx_, kv_dim_, row_bytes_, bytes_per_tensor_;
  // Not zero-filled: pages are touched only as positions are written, so a
  // large -c costs address space, not resident memory.
  std::unique_ptr<std::byte[]> k_, v_;
  std::vector<size_t> length_;
};

// Parses "f16", "f32", "q8_0" (case-insensitive) or throws listing them.
GgmlType parse_kv_cache_type(std::string_view name);

}  // namespace kiln
