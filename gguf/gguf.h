// GGUF reader: the file is memory-mapped read-only; metadata is parsed at open,
// tensor data is never read or copied until a caller touches it.
//
// Every malformed input is rejected with a gguf::Error whose message names the
// file, the byte offset and what is wrong. Strings and arrays returned by the
// accessors are views into the mapping and live as long as the File.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "gguf/ggml_types.h"
#include "gguf/mapped_file.h"

namespace kiln::gguf {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Metadata value types, with the ids of the on-disk format.
enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
std::string_view value_type_name(ValueType t);
// Bytes of one scalar of this type; 0 for STRING and ARRAY.
size_t scalar_size(ValueType t);

struct Value;

// An array value. Scalar elements stay in the mapping as raw little-endian
// bytes (`raw`); strings and nested arrays are parsed into `strings`/`arrays`.
struct Array {
  ValueType elem_type = ValueType::UINT8;
  uint64_t count = 0;
  std::span<const std::byte> raw;
  std::vector<std::string_view> strings;
  std::vector<Value> arrays;

  // Element i converted to the requested arithmetic type (scalar arrays only).
  double number_at(size_t i) const;
  int64_t integer_at(size_t i) const;
};

struct Value {
  ValueType type = ValueType::UINT8;
  // Integers are widened to int64/uint64, floats to double, at parse time; the
  // original type is kept in `type` so accessors can be strict.
  std::variant<uint64_t, int64_t, double, bool, std::string_view, Array> data;
};

struct TensorInfo {
  std::string_view name;
  GgmlType type = GgmlType::F32;
  uint32_t n_dims = 0;
  std::array<uint64_t, 4> ne{1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension
  uint64_t offset = 0;                     // relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  std::span<const std::byte> data;  // view into the mapping

  // Rows of ne[0] elements. A tensor with a zero dimension is valid GGUF (ggml allows empty
  // tensors and the reader accepts them, so `kiln info` still shows such files): it has no
  // elements and no rows, whatever its other dimensions say. Every command that walks rows
  // (quantize, the dumps) then simply does nothing for it, instead of dividing by ne[0] == 0.
  uint64_t rows() const { return n_elements == 0 ? 0 : n_elements / ne[0]; }
  std::string shape_string() const;  // e.g. "[576, 49152]"
};

class File {
 public:
  // Maps and parses a file. Throws gguf::Error on any problem.
  static File open(const std::filesystem::path& path);
  // Parses a buffer the caller keeps alive (tests and the fuzzer).
  static File parse(std::span<const std::byte> bytes, std::string name = "<memory>");

  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return bytes_.size(); }
  // The whole file: the mapping, or the buffer given to parse().
  std::span<const std::byte> bytes() const { return bytes_; }

  // Metadata in file order.
  const std::vector<std::pair<std::string_view, Value>>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Strict typed accessors: the key must exist and have exactly this type,
  // otherwise the error names the key, the expected and the actual type.
  std::string_view get_string(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  float get_f32(std::string_view key) const;
  // Any integer type whose value fits; errors name the key and the value.
  uint64_t get_uint(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  const Array& get_array(std::string_view key) const;
  std::vector<std::string_view> get_string_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;
  std::vector<int32_t> get_i32_array(std::string_view key) const;

  // Optional variants: nullopt when the key is absent, an error when present
  // with the wrong type.
  std::optional<std::string_view> get_string_opt(std::string_view key) const;
  std::optional<bool> get_bool_opt(std::string_view key) const;
  std::optional<float> get_f32_opt(std::string_view key) const;
  std::optional<uint64_t> get_uint_opt(std::string_view key) const;

  // "general.architecture", or "" when absent.
  std::string_view architecture() const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;
  const TensorInfo& tensor(std::string_view name) const;  // throws naming the tensor

  // The mapped file's pages on 2 MiB pages (MappedFile::map_on_huge_pages; a parsed buffer
  // reports nothing). Never throws.
  using HugePageMapping = gguf::HugePageMapping;
  HugePageMapping map_on_huge_pages(size_t min_reread_bytes = size_t{32} << 20) const;

 private:
  File() = default;
  void parse_all();

  std::string name_;
  std::unique_ptr<MappedFile> mapping_;
  std::span<const std::byte> bytes_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, Value>> kv_;
  std::map<std::string_view, size_t, std::less<>> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string_view, size_t, std::less<>> tensor_index_;
};

// Human-readable value, arrays abbreviated after `max_items` elements.
std::string to_string(const Value& v, size_t max_items = 8);

}  // namespace kiln::gguf
