// GGUF reader. Layout (all little-endian):
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//   kv_count x (string key | u32 value_type | value)
//   tensor_count x (string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset)
//   padding to general.alignment (default 32) | tensor data
// A string is u64 length + bytes; an array is u32 element type + u64 count + elements.
//
// Every count and length read from the file is checked against the bytes that
// remain before anything is sized by it, so a hostile file can neither make us
// allocate without bound nor read past the mapping.
#include "gguf/gguf.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace kiln::gguf {

static_assert(std::endian::native == std::endian::little, "kiln reads GGUF on little-endian hosts");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 8;        // nested arrays deeper than this are rejected
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

}  // namespace

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
      return "uint8";
    case ValueType::INT8:
      return "int8";
    case ValueType::UINT16:
      return "uint16";
    case ValueType::INT16:
      return "int16";
    case ValueType::UINT32:
      return "uint32";
    case ValueType::INT32:
      return "int32";
    case ValueType::FLOAT32:
      return "float32";
    case ValueType::BOOL:
      return "bool";
    case ValueType::STRING:
      return "string";
    case ValueType::ARRAY:
      return "array";
    case ValueType::UINT64:
      return "uint64";
    case ValueType::INT64:
      return "int64";
    case ValueType::FLOAT64:
      return "float64";
  }
  return "unknown";
}

size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
      return 8;
    case ValueType::STRING:
    case ValueType::ARRAY:
      return 0;
  }
  return 0;
}

namespace {

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Decodes one scalar of type t at p into the widened variant representation.
void decode_scalar(ValueType t, const std::byte* p, Value& out) {
  out.type = t;
  switch (t) {
    case ValueType::UINT8:
      out.data = uint64_t{load<uint8_t>(p)};
      break;
    case ValueType::UINT16:
      out.data = uint64_t{load<uint16_t>(p)};
      break;
    case ValueType::UINT32:
      out.data = uint64_t{load<uint32_t>(p)};
      break;
    case ValueType::UINT64:
      out.data = load<uint64_t>(p);
      break;
    case ValueType::INT8:
      out.data = int64_t{load<int8_t>(p)};
      break;
    case ValueType::INT16:
      out.data = int64_t{load<int16_t>(p)};
      break;
    case ValueType::INT32:
      out.data = int64_t{load<int32_t>(p)};
      break;
    case ValueType::INT64:
      out.data = load<int64_t>(p);
      break;
    case ValueType::FLOAT32:
      out.data = double{load<float>(p)};
      break;
    case ValueType::FLOAT64:
      out.data = load<double>(p);
      break;
    case ValueType::BOOL:
      out.data = load<uint8_t>(p) != 0;
      break;
    default:
      break;
  }
}

// Bounds-checked cursor over the file bytes; every error names file and offset.
class Reader {
 public:
  Reader(std::span<const std::byte> bytes, const std::string& name) : bytes_(bytes), name_(name) {}

  [[noreturn]] void fail(uint64_t at, const std::string& what) const {
    std::ostringstream os;
    os << name_ << ": at byte " << at << ": " << what;
    throw Error(os.str());
  }
  [[noreturn]] void fail(const std::string& what) const { fail(pos_, what); }

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  const std::byte* take(uint64_t n, const char* what) {
    if (n > remaining()) {
      fail("file is truncated: " + std::string(what) + " needs " + std::to_string(n) +
           " bytes but only " + std::to_string(remaining()) + " remain");
    }
    const std::byte* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read(const char* what) {
    return load<T>(take(sizeof(T), what));
  }
  std::string_view read_string(const char* what) {
    const uint64_t at = pos_;
    const uint64_t len = read<uint64_t>(what);
    if (len > remaining()) {
      fail(at, std::string(what) + " has length " + std::to_string(len) + ", more than the " +
                   std::to_string(remaining()) + " bytes left in the file");
    }
    const auto* p = take(len, what);
    return {reinterpret_cast<const char*>(p), static_cast<size_t>(len)};
  }

  Value read_value(ValueType type, std::string_view key, int depth) {
    Value v;
    v.type = type;
    if (type == ValueType::STRING) {
      v.data = read_string("string value");
      return v;
    }
    if (type != ValueType::ARRAY) {
      if (type == ValueType::BOOL) {
        const uint64_t at = pos_;
        const auto b = read<uint8_t>("bool value");
        if (b > 1)
          fail(at, "key '" + std::string(key) + "': bool value " + std::to_string(b) +
                       " is neither 0 nor 1");
        v.data = b != 0;
        return v;
      }
      decode_scalar(type, take(scalar_size(type), "scalar value"), v);
      return v;
    }
    if (depth >= kMaxArrayDepth) {
      fail("key '" + std::string(key) + "': arrays nested deeper than " +
           std::to_string(kMaxArrayDepth) + " levels");
    }
    Array arr;
    const uint64_t type_at = pos_;
    const uint32_t elem = read<uint32_t>("array element type");
    if (!valid_value_type(elem)) {
      fail(type_at,
           "key '" + std::string(key) + "': unknown array element type " + std::to_string(elem));
    }
    arr.elem_type = static_cast<ValueType>(elem);
    const uint64_t count_at = pos_;
    arr.count = read<uint64_t>("array length");
    // The smallest possible element: a scalar's size, or 8 bytes for a string
    // length / 12 bytes for a nested array header. A count that cannot fit in
    // the rest of the file is rejected before anything is allocated.
    const uint64_t min_elem = arr.elem_type == ValueType::STRING  ? 8
                              : arr.elem_type == ValueType::ARRAY ? 12
                                                                  : scalar_size(arr.elem_type);
    if (arr.count > remaining() / min_elem) {
      fail(count_at, "key '" + std::string(key) + "': array of " + std::to_string(arr.count) + " " +
                         std::string(value_type_name(arr.elem_type)) +
                         " elements cannot fit in the " + std::to_string(remaining()) +
                         " bytes left in the file");
    }
    if (arr.elem_type == ValueType::STRING) {
      arr.strings.reserve(arr.count);
      for (uint64_t i = 0; i < arr.count; ++i) arr.strings.push_back(read_string("array string"));
    } else if (arr.elem_type == ValueType::ARRAY) {
      arr.arrays.reserve(arr.count);
      for (uint64_t i = 0; i < arr.count; ++i) {
        arr.arrays.push_back(read_value(ValueType::ARRAY, key, depth + 1));
      }
    } else {
      const uint64_t n = arr.count * min_elem;
      const uint64_t at = pos_;
      arr.raw = {take(n, "array data"), static_cast<size_t>(n)};
      if (arr.elem_type == ValueType::BOOL) {
        for (uint64_t i = 0; i < arr.count; ++i) {
          if (static_cast<uint8_t>(arr.raw[i]) > 1)
            fail(at + i, "key '" + std::string(key) + "': bool array element is neither 0 nor 1");
        }
      }
    }
    v.data = std::move(arr);
    return v;
  }

 private:
  std::span<const std::byte> bytes_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

// a * b, or nullopt on overflow.
std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

}  // namespace

double Array::number_at(size_t i) const {
  if (i >= count || raw.empty()) throw std::out_of_range("array index out of range");
  Value v;
  decode_scalar(elem_type, raw.data() + i * scalar_size(elem_type), v);
  return std::visit(
      [](const auto& x) -> double {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_arithmetic_v<T>) return static_cast<double>(x);
        return 0.0;
      },
      v.data);
}

int64_t Array::integer_at(size_t i) const { return static_cast<int64_t>(number_at(i)); }

std::string TensorInfo::shape_string() const {
  std::string s = "[";
  for (uint32_t d = 0; d < n_dims; ++d) {
    if (d) s += ", ";
    s += std::to_string(ne[d]);
  }
  return s + "]";
}

File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::filesystem::path& path) {
  File f;
  f.name_ = path.string();
  try {
    f.mapping_ = std::make_unique<MappedFile>(MappedFile::open(path));
  } catch (const std::runtime_error& e) {
    throw Error(e.what());
  }
  f.bytes_ = f.mapping_->bytes();
  f.parse_all();
  return f;
}

HugePageMapping File::map_on_huge_pages(size_t min_reread_bytes) const {
  return mapping_ ? mapping_->map_on_huge_pages(min_reread_bytes) : HugePageMapping{};
}

File File::parse(std::span<const std::byte> bytes, std::string name) {
  File f;
  f.name_ = std::move(name);
  f.bytes_ = bytes;
  f.parse_all();
  return f;
}

void File::parse_all() {
  Reader r(bytes_, name_);
  if (bytes_.size() < 4)
    r.fail(0, "not a GGUF file: only " + std::to_string(bytes_.size()) + " bytes");
  const uint32_t magic = r.read<uint32_t>("magic");
  if (magic != kMagic) r.fail(0, "not a GGUF file: bad magic (expected \"GGUF\")");
  const uint32_t version = r.read<uint32_t>("version");
  if (version == 1) r.fail(4, "GGUF version 1 is not supported (only versions 2 and 3)");
  if (version != 2 && version != 3) {
    r.fail(4, "unsupported GGUF version " + std::to_string(version) + " (only versions 2 and 3)");
  }
  version_ = version;
  const uint64_t tensor_count_at = r.pos();
  const uint64_t tensor_count = r.read<uint64_t>("tensor count");
  const uint64_t kv_count_at = r.pos();
  const uint64_t kv_count = r.read<uint64_t>("metadata count");

  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 (value) bytes.
  if (kv_count > r.remaining() / 13) {
    r.fail(kv_count_at, "metadata count " + std::to_string(kv_count) + " cannot fit in the " +
                            std::to_string(r.remaining()) + " bytes left");
  }
  kv_.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    const uint64_t key_at = r.pos();
    const std::string_view key = r.read_string("metadata key");
    if (key.empty()) r.fail(key_at, "metadata key " + std::to_string(i) + " is empty");
    const uint64_t type_at = r.pos();
    const uint32_t type = r.read<uint32_t>("metadata value type");
    if (!valid_value_type(type)) {
      r.fail(type_at, "key '" + std::string(key) + "': unknown value type " + std::to_string(type));
    }
    Value v = r.read_value(static_cast<ValueType>(type), key, 0);
    if (!kv_index_.emplace(key, kv_.size()).second) {
      r.fail(key_at, "duplicate metadata key '" + std::string(key) + "'");
    }
    kv_.emplace_back(key, std::move(v));
  }

  if (const Value* a = find("general.alignment")) {
    if (a->type != ValueType::UINT32) {
      r.fail("general.alignment has type " + std::string(value_type_name(a->type)) +
             ", expected uint32");
    }
    const uint64_t align = std::get<uint64_t>(a->data);
    if (align == 0 || (align & (align - 1)) != 0) {
      r.fail("general.alignment " + std::to_string(align) + " is not a power of two");
    }
    alignment_ = static_cast<uint32_t>(align);
  }

  // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
  if (tensor_count > r.remaining() / 24) {
    r.fail(tensor_count_at, "tensor count " + std::to_string(tensor_count) + " cannot fit in the " +
                                std::to_string(r.remaining()) + " bytes left");
  }
  tensors_.reserve(tensor_count);
  std::vector<uint64_t> info_offsets;
  info_offsets.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo t;
    const uint64_t info_at = r.pos();
    info_offsets.push_back(info_at);
    t.name = r.read_string("tensor name");
    const std::string who = "tensor '" + std::string(t.name) + "'";
    if (t.name.empty()) r.fail(info_at, "tensor " + std::to_string(i) + " has an empty name");
    const uint64_t dims_at = r.pos();
    t.n_dims = r.read<uint32_t>("tensor dimension count");
    if (t.n_dims == 0 || t.n_dims > kMaxDims) {
      r.fail(dims_at, who + " has " + std::to_string(t.n_dims) + " dimensions (1 to 4 allowed)");
    }
    for (uint32_t d = 0; d < t.n_dims; ++d) t.ne[d] = r.read<uint64_t>("tensor dimension");
    const uint64_t type_at = r.pos();
    const uint32_t type_id = r.read<uint32_t>("tensor type");
    const auto traits = ggml_type_traits(type_id);
    if (!traits) r.fail(type_at, who + " has unknown ggml type id " + std::to_string(type_id));
    t.type = traits->type;
    const uint64_t offset_at = r.pos();
    t.offset = r.read<uint64_t>("tensor data offset");

    // Element count: every product must fit in int64 (ggml's own limit).
    uint64_t n = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      auto m = checked_mul(n, t.ne[d]);
      if (!m || *m > static_cast<uint64_t>(INT64_MAX)) {
        r.fail(dims_at, who + " shape " + t.shape_string() + " overflows the element count");
      }
      n = *m;
    }
    t.n_elements = n;
    if (t.ne[0] % traits->block_elements != 0) {
      r.fail(dims_at, who + " row length " + std::to_string(t.ne[0]) + " is not a multiple of " +
                          std::string(traits->name) + "'s block size " +
                          std::to_string(traits->block_elements));
    }
    auto bytes = checked_mul(n / traits->block_elements, traits->block_bytes);
    if (!bytes) r.fail(dims_at, who + " byte size overflows");
    t.n_bytes = *bytes;
    if (t.offset % alignment_ != 0) {
      r.fail(offset_at, who + " data offset " + std::to_string(t.offset) +
                            " is not a multiple of the alignment " + std::to_string(alignment_));
    }
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
      r.fail(info_at, "duplicate tensor name '" + std::string(t.name) + "'");
    }
    tensors_.push_back(t);
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t header_end = r.pos();
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;
  if (tensors_.empty()) {
    // Vocab-only files may end right after the header, without padding.
    data_offset_ = std::min<uint64_t>(data_offset_, bytes_.size());
    return;
  }
  if (data_offset_ > bytes_.size()) {
    r.fail(header_end, "file is truncated: tensor data should start at byte " +
                           std::to_string(data_offset_) + " but the file has " +
                           std::to_string(bytes_.size()) + " bytes");
  }
  const uint64_t data_size = bytes_.size() - data_offset_;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    auto& t = tensors_[i];
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      r.fail(info_offsets[i], "tensor '" + std::string(t.name) + "' data [" +
                                  std::to_string(data_offset_ + t.offset) + ", " +
                                  std::to_string(data_offset_ + t.offset + t.n_bytes) +
                                  ") lies outside the file of " + std::to_string(bytes_.size()) +
                                  " bytes (truncated?)");
    }
    t.data = bytes_.subspan(data_offset_ + t.offset, t.n_bytes);
  }
  // Overlap check: sort by offset and compare neighbours.
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const auto& prev = tensors_[order[k - 1]];
    const auto& cur = tensors_[order[k]];
    if (prev.n_bytes > 0 && cur.offset < prev.offset + prev.n_bytes) {
      r.fail(info_offsets[order[k]], "tensor '" + std::string(cur.name) +
                                         "' data overlaps tensor '" + std::string(prev.name) + "'");
    }
  }
}

const Value* File::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {
[[noreturn]] void type_error(const std::string& file, std::string_view key,
                             std::string_view expected, ValueType actual) {
  throw Error(file + ": metadata key '" + std::string(key) + "' has type " +
              std::string(value_type_name(actual)) + ", expected " + std::string(expected));
}
}  // namespace

std::optional<std::string_view> File::get_string_opt(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != ValueType::STRING) type_error(name_, key, "string", v->type);
  return std::get<std::string_view>(v->data);
}

std::optional<bool> File::get_bool_opt(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != ValueType::BOOL) type_error(name_, key, "bool", v->type);
  return std::get<bool>(v->data);
}

std::optional<float> File::get_f32_opt(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != ValueType::FLOAT32 && v->type != ValueType::FLOAT64) {
    type_error(name_, key, "float32", v->type);
  }
  return static_cast<float>(std::get<double>(v->data));
}

std::optional<uint64_t> File::get_uint_opt(std::string_view key) const {
  const Value* v = find(key);
  if (!v) return std::nullopt;
  if (const auto* u = std::get_if<uint64_t>(&v->data); u && v->type != ValueType::BOOL) return *u;
  if (const auto* i = std::get_if<int64_t>(&v->data)) {
    if (*i < 0) {
      throw Error(name_ + ": metadata key '" + std::string(key) + "' is " + std::to_string(*i) +
                  ", expected a non-negative integer");
    }
    return static_cast<uint64_t>(*i);
  }
  type_error(name_, key, "an integer", v->type);
}

namespace {
template <typename T>
T require(const std::optional<T>& v, const std::string& file, std::string_view key) {
  if (!v) throw Error(file + ": metadata key '" + std::string(key) + "' is missing");
  return *v;
}
}  // namespace

std::string_view File::get_string(std::string_view key) const {
  return require(get_string_opt(key), name_, key);
}
bool File::get_bool(std::string_view key) const { return require(get_bool_opt(key), name_, key); }
float File::get_f32(std::string_view key) const { return require(get_f32_opt(key), name_, key); }
uint64_t File::get_uint(std::string_view key) const {
  return require(get_uint_opt(key), name_, key);
}

int64_t File::get_int(std::string_view key) const {
  const Value* v = find(key);
  if (!v) throw Error(name_ + ": metadata key '" + std::string(key) + "' is missing");
  if (const auto* i = std::get_if<int64_t>(&v->data)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&v->data); u && v->type != ValueType::BOOL) {
    if (*u > static_cast<uint64_t>(INT64_MAX)) {
      throw Error(name_ + ": metadata key '" + std::string(key) + "' does not fit in int64");
    }
    return static_cast<int64_t>(*u);
  }
  type_error(name_, key, "an integer", v->type);
}

const Array& File::get_array(std::string_view key) const {
  const Value* v = find(key);
  if (!v) throw Error(name_ + ": metadata key '" + std::string(key) + "' is missing");
  if (v->type != ValueType::ARRAY) type_error(name_, key, "array", v->type);
  return std::get<Array>(v->data);
}

std::vector<std::string_view> File::get_string_array(std::string_view key) const {
  const Array& a = get_array(key);
  if (a.elem_type != ValueType::STRING) {
    throw Error(name_ + ": metadata key '" + std::string(key) + "' is an array of " +
                std::string(value_type_name(a.elem_type)) + ", expected an array of string");
  }
  return a.strings;
}

std::vector<float> File::get_f32_array(std::string_view key) const {
  const Array& a = get_array(key);
  if (a.elem_type != ValueType::FLOAT32) {
    throw Error(name_ + ": metadata key '" + std::string(key) + "' is an array of " +
                std::string(value_type_name(a.elem_type)) + ", expected an array of float32");
  }
  std::vector<float> out(a.count);
  std::memcpy(out.data(), a.raw.data(), a.count * sizeof(float));
  return out;
}

std::vector<int32_t> File::get_i32_array(std::string_view key) const {
  const Array& a = get_array(key);
  switch (a.elem_type) {
    case ValueType::INT32:
    case ValueType::UINT32:
    case ValueType::INT16:
    case ValueType::UINT16:
    case ValueType::INT8:
    case ValueType::UINT8:
      break;
    default:
      throw Error(name_ + ": metadata key '" + std::string(key) + "' is an array of " +
                  std::string(value_type_name(a.elem_type)) + ", expected an array of int32");
  }
  std::vector<int32_t> out(a.count);
  for (size_t i = 0; i < a.count; ++i) out[i] = static_cast<int32_t>(a.integer_at(i));
  return out;
}

std::string_view File::architecture() const {
  return get_string_opt("general.architecture").value_or("");
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (!t) throw Error(name_ + ": tensor '" + std::string(name) + "' is missing");
  return *t;
}

std::string to_string(const Value& v, size_t max_items) {
  std::ostringstream os;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, bool>) {
          os << (x ? "true" : "false");
        } else if constexpr (std::is_same_v<T, std::string_view>) {
          os << '"' << x << '"';
        } else if constexpr (std::is_same_v<T, Array>) {
          os << '[';
          const size_t shown = std::min<uint64_t>(x.count, max_items);
          for (size_t i = 0; i < shown; ++i) {
            if (i) os << ", ";
            if (x.elem_type == ValueType::STRING) {
              os << '"' << x.strings[i] << '"';
            } else if (x.elem_type == ValueType::ARRAY) {
              os << to_string(x.arrays[i], max_items);
            } else {
              os << x.number_at(i);
            }
          }
          if (x.count > shown) os << ", ... (" << x.count << " items)";
          os << ']';
        } else {
          os << x;
        }
      },
      v.data);
  return os.str();
}

}  // namespace kiln::gguf
