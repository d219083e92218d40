// Per-sequence key/value cache.
//
// Storage per layer is [n_seq slots][n_kv_heads][n_ctx positions][head_dim] for K and
// for V, in F16 (default), F32 or Q8_0: one KV head's positions lie together, so attention,
// which reads one head's keys and values position after position, streams them (with the
// heads of a position side by side, each read skipped over the others', and the hardware
// prefetchers followed that poorly). A sequence id is a slot index; the cache tracks how
// many positions of each sequence are valid, so clearing and truncating are O(1) (later
// writes overwrite the stale rows).
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
  // kv_dim = n_kv_heads * head_dim; head_dim must be a multiple of 32 for Q8_0.
  KvCache(GgmlType type, size_t n_layers, size_t n_seq, size_t n_ctx, size_t n_kv_heads,
          size_t head_dim);

  GgmlType type() const { return type_; }
  size_t n_seq() const { return n_seq_; }
  size_t n_ctx() const { return n_ctx_; }
  size_t kv_dim() const { return n_kv_heads_ * head_dim_; }
  size_t n_kv_heads() const { return n_kv_heads_; }
  size_t head_bytes() const { return head_bytes_; }  // one head of one position, K or V
  size_t row_bytes() const { return n_kv_heads_ * head_bytes_; }  // all heads of a position
  size_t total_bytes() const { return 2 * bytes_per_tensor_; }

  // Valid positions of a sequence: the next token goes at this position.
  size_t length(size_t seq) const { return length_.at(seq); }
  // Forgets a sequence (its slot becomes free for a new one).
  void clear(size_t seq);
  // Keeps positions [0, pos) of a sequence (e.g. a shared prompt prefix).
  void truncate(size_t seq, size_t pos);
  // Marks positions [0, n) valid after the forward wrote them.
  void set_length(size_t seq, size_t n);
  // Makes positions [0, n) of sequence dst a copy of src's (a shared prompt prefix computed
  // once): dst then holds n positions. Throws std::out_of_range for a bad slot, dst == src,
  // or n beyond src's length.
  void copy_prefix(size_t src, size_t dst, size_t n);

  // K or V of one head at (layer, seq, pos): head_dim values, raw bytes in type().
  std::span<std::byte> k_head(size_t layer, size_t seq, size_t head, size_t pos) {
    return {k_.get() + offset(layer, seq, head, pos), head_bytes_};
  }
  std::span<std::byte> v_head(size_t layer, size_t seq, size_t head, size_t pos) {
    return {v_.get() + offset(layer, seq, head, pos), head_bytes_};
  }
  // Positions [0, n_ctx) of one head of one (layer, seq): head_bytes() apart, contiguous.
  std::span<const std::byte> k_head_rows(size_t layer, size_t seq, size_t head) const {
    return {k_.get() + offset(layer, seq, head, 0), head_bytes_ * n_ctx_};
  }
  std::span<const std::byte> v_head_rows(size_t layer, size_t seq, size_t head) const {
    return {v_.get() + offset(layer, seq, head, 0), head_bytes_ * n_ctx_};
  }

 private:
  size_t offset(size_t layer, size_t seq, size_t head, size_t pos) const {
    return (((layer * n_seq_ + seq) * n_kv_heads_ + head) * n_ctx_ + pos) * head_bytes_;
  }
  GgmlType type_;
  size_t n_layers_, n_seq_, n_ctx_, n_kv_heads_, head_dim_, head_bytes_, bytes_per_tensor_;
  // Not zero-filled: pages are touched only as positions are written, so a
  // large -c costs address space, not resident memory.
  std::unique_ptr<std::byte[]> k_, v_;
  std::vector<size_t> length_;
};

// Parses "f16", "f32", "q8_0" (case-insensitive) or throws listing them.
GgmlType parse_kv_cache_type(std::string_view name);

}  // namespace kiln
