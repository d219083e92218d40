// GGUF v3 writer: metadata, tensor infos, aligned tensor data.
//
// Tensors are produced one at a time through a fill callback while the file
// is written, so quantizing or synthesising a multi-GB model needs memory for
// one tensor, not the whole model. The file appears atomically (written to a
// temporary name, then renamed), so a failure never leaves a partial model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "gguf/gguf.h"

namespace kiln::gguf {

struct MetaValue;

struct MetaArray {
  ValueType elem_type = ValueType::UINT8;
  uint64_t count = 0;
  std::vector<std::byte> raw;        // scalar elements, little-endian
  std::vector<std::string> strings;  // elem_type == STRING
  std::vector<MetaValue> arrays;     // elem_type == ARRAY
};

// An owned metadata value (the reader's Value holds views into a mapping).
struct MetaValue {
  ValueType type = ValueType::UINT8;
  std::variant<uint64_t, int64_t, double, bool, std::string, MetaArray> data;

  static MetaValue u32(uint32_t v) { return {ValueType::UINT32, uint64_t{v}}; }
  static MetaValue u64(uint64_t v) { return {ValueType::UINT64, v}; }
  static MetaValue i32(int32_t v) { return {ValueType::INT32, int64_t{v}}; }
  static MetaValue f32(float v) { return {ValueType::FLOAT32, double{v}}; }
  static MetaValue boolean(bool v) { return {ValueType::BOOL, v}; }
  static MetaValue string(std::string v) { return {ValueType::STRING, std::move(v)}; }
  static MetaValue string_array(std::vector<std::string> v);
  static MetaValue f32_array(std::span<const float> v);
  static MetaValue i32_array(std::span<const int32_t> v);
  // Deep copy of a value read from a file.
  static MetaValue from(const Value& v);
};

class Writer {
 public:
  // Receives the tensor's bytes to fill (exactly its size).
  using Fill = std::function<void(std::span<std::byte> out)>;

  Writer() = default;

  // Sets a key, replacing an existing value in place (file order is kept).
  void set(std::string key, MetaValue value);
  void remove(std::string_view key);
  bool has(std::string_view key) const;
  // Copies every metadata key of `file`, in its order.
  void copy_metadata(const File& file);

  // ne[0] is the row length and must be a multiple of the type's block size.
  void add_tensor(std::string name, GgmlType type, std::vector<uint64_t> ne, Fill fill);
  // Non-owning: `data` must stay alive until write() returns.
  void add_tensor(std::string name, GgmlType type, std::vector<uint64_t> ne,
                  std::span<const std::byte> data);

  size_t tensor_count() const { return tensors_.size(); }

  // Writes the whole file; throws gguf::Error naming the path on I/O failure. An existing
  // `path` must be a regular file, or a symbolic link to one (the link's target is replaced
  // and the link kept); a directory, FIFO, device or socket is refused before anything is
  // written.
  void write(const std::filesystem::path& path) const;

 private:
  struct PendingTensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> ne;
    uint64_t n_bytes;
    Fill fill;
  };
  uint32_t alignment() const;

  std::vector<std::pair<std::string, MetaValue>> kv_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace kiln::gguf
