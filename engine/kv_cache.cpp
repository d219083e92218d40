#include "engine/kv_cache.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace kiln {

KvCache::KvCache(GgmlType type, size_t n_layers, size_t n_seq, size_t n_ctx, size_t n_kv_heads,
                 size_t head_dim)
    : type_(type),
      n_layers_(n_layers),
      n_seq_(n_seq),
      n_ctx_(n_ctx),
      n_kv_heads_(n_kv_heads),
      head_dim_(head_dim) {
  if (type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::Q8_0) {
    throw std::invalid_argument("KV cache type " + std::string(type_name(type)) +
                                " is not supported (use f16, f32 or q8_0)");
  }
  if (type == GgmlType::Q8_0 && head_dim % 32 != 0) {
    throw std::invalid_argument(
        "a q8_0 KV cache needs a head dimension that is a multiple of 32, got " +
        std::to_string(head_dim));
  }
  if (n_seq == 0 || n_ctx == 0 || n_kv_heads == 0) {
    throw std::invalid_argument("KV cache with no slots, no context or no heads");
  }
  head_bytes_ = kiln::row_bytes(type, head_dim);
  bytes_per_tensor_ = n_layers * n_seq * n_kv_heads * n_ctx * head_bytes_;
  k_ = std::make_unique_for_overwrite<std::byte[]>(bytes_per_tensor_);
  v_ = std::make_unique_for_overwrite<std::byte[]>(bytes_per_tensor_);
  length_.assign(n_seq, 0);
}

void KvCache::clear(size_t seq) { length_.at(seq) = 0; }

void KvCache::truncate(size_t seq, size_t pos) {
  if (pos > length_.at(seq)) {
    throw std::out_of_range("cannot truncate sequence " + std::to_string(seq) + " to position " +
                            std::to_string(pos) + ": it holds only " +
                            std::to_string(length_[seq]) + " positions");
  }
  length_[seq] = pos;
}

void KvCache::set_length(size_t seq, size_t n) { length_.at(seq) = n; }

void KvCache::copy_prefix(size_t src, size_t dst, size_t n) {
  if (src == dst || n > length_.at(src) || dst >= n_seq_) {
    throw std::out_of_range("cannot copy " + std::to_string(n) + " positions of sequence " +
                            std::to_string(src) + " to sequence " + std::to_string(dst));
  }
  // One contiguous run per (layer, head), for K and for V.
  for (size_t layer = 0; layer < n_layers_; ++layer) {
    for (size_t head = 0; head < n_kv_heads_; ++head) {
      std::memcpy(k_.get() + offset(layer, dst, head, 0), k_.get() + offset(layer, src, head, 0),
                  n * head_bytes_);
      std::memcpy(v_.get() + offset(layer, dst, head, 0), v_.get() + offset(layer, src, head, 0),
                  n * head_bytes_);
    }
  }
  length_[dst] = n;
}

GgmlType parse_kv_cache_type(std::string_view name) {
  std::string lower;
  for (char ch : name) lower += static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
  if (lower == "f16") return GgmlType::F16;
  if (lower == "f32") return GgmlType::F32;
  if (lower == "q8_0") return GgmlType::Q8_0;
  throw std::invalid_argument("unknown KV cache type '" + std::string(name) +
                              "' (use f16, f32 or q8_0)");
}

}  // namespace kiln
