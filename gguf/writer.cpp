#include "gguf/writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>

namespace kiln::gguf {

namespace {

template <typename T>
void append_pod(std::vector<std::byte>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void append_string(std::vector<std::byte>& out, std::string_view s) {
  append_pod<uint64_t>(out, s.size());
  const size_t at = out.size();
  out.resize(at + s.size());
  if (!s.empty()) std::memcpy(out.data() + at, s.data(), s.size());
}

void append_scalar(std::vector<std::byte>& out, const MetaValue& v) {
  auto as_u = [&] { return std::get<uint64_t>(v.data); };
  auto as_i = [&] { return std::get<int64_t>(v.data); };
  auto as_f = [&] { return std::get<double>(v.data); };
  switch (v.type) {
    case ValueType::UINT8:
      append_pod<uint8_t>(out, static_cast<uint8_t>(as_u()));
      break;
    case ValueType::UINT16:
      append_pod<uint16_t>(out, static_cast<uint16_t>(as_u()));
      break;
    case ValueType::UINT32:
      append_pod<uint32_t>(out, static_cast<uint32_t>(as_u()));
      break;
    case ValueType::UINT64:
      append_pod<uint64_t>(out, as_u());
      break;
    case ValueType::INT8:
      append_pod<int8_t>(out, static_cast<int8_t>(as_i()));
      break;
    case ValueType::INT16:
      append_pod<int16_t>(out, static_cast<int16_t>(as_i()));
      break;
    case ValueType::INT32:
      append_pod<int32_t>(out, static_cast<int32_t>(as_i()));
      break;
    case ValueType::INT64:
      append_pod<int64_t>(out, as_i());
      break;
    case ValueType::FLOAT32:
      append_pod<float>(out, static_cast<float>(as_f()));
      break;
    case ValueType::FLOAT64:
      append_pod<double>(out, as_f());
      break;
    case ValueType::BOOL:
      append_pod<uint8_t>(out, std::get<bool>(v.data) ? 1 : 0);
      break;
    default:
      break;
  }
}

void append_value(std::vector<std::byte>& out, const MetaValue& v) {
  if (v.type == ValueType::STRING) {
    append_string(out, std::get<std::string>(v.data));
  } else if (v.type == ValueType::ARRAY) {
    const auto& a = std::get<MetaArray>(v.data);
    append_pod<uint32_t>(out, static_cast<uint32_t>(a.elem_type));
    append_pod<uint64_t>(out, a.count);
    if (a.elem_type == ValueType::STRING) {
      for (const auto& s : a.strings) append_string(out, s);
    } else if (a.elem_type == ValueType::ARRAY) {
      for (const auto& sub : a.arrays) append_value(out, sub);
    } else {
      out.insert(out.end(), a.raw.begin(), a.raw.end());
    }
  } else {
    append_scalar(out, v);
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};

std::string_view file_kind(std::filesystem::file_type t) {
  using std::filesystem::file_type;
  switch (t) {
    case file_type::directory:
      return "a directory";
    case file_type::fifo:
      return "a FIFO";
    case file_type::character:
      return "a character device";
    case file_type::block:
      return "a block device";
    case file_type::socket:
      return "a socket";
    default:
      return "not a regular file";
  }
}

// The file that writing `path` should replace. The finished file is renamed into place, and
// rename() replaces whatever directory entry has that name: a FIFO or a device node would be
// swapped for a regular file (as root, `kiln quantize in.gguf /dev/full Q8_0` replaced the
// device), and a symbolic link would become a plain file. So anything but a regular file is
// refused, and a link is followed as the shell's `>` would: the file it points to is replaced
// and the link stays. Returns the path to replace (the link's target, or `path`).
std::filesystem::path replaceable_target(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status link = fs::symlink_status(path, ec);
  if (!fs::exists(link)) return path;  // a new file (a missing folder fails at create)
  fs::path target = path;
  if (fs::is_symlink(link)) {
    target = fs::canonical(path, ec);
    if (ec) {
      throw Error(path.string() + ": is a symbolic link whose target cannot be resolved (" +
                  ec.message() + "); refusing to replace the link with the output");
    }
  }
  const fs::file_status st = fs::status(target, ec);
  if (fs::is_regular_file(st)) return target;
  std::string what = path.string() + ": ";
  if (target != path) what += "is a symbolic link to " + target.string() + ", which ";
  what += "is " + std::string(file_kind(st.type())) +
          "; refusing to replace it with the output (give the path of a new or regular file)";
  throw Error(what);
}

}  // namespace

MetaValue MetaValue::string_array(std::vector<std::string> v) {
  MetaArray a;
  a.elem_type = ValueType::STRING;
  a.count = v.size();
  a.strings = std::move(v);
  return {ValueType::ARRAY, std::move(a)};
}

MetaValue MetaValue::f32_array(std::span<const float> v) {
  MetaArray a;
  a.elem_type = ValueType::FLOAT32;
  a.count = v.size();
  a.raw.resize(v.size_bytes());
  std::memcpy(a.raw.data(), v.data(), v.size_bytes());
  return {ValueType::ARRAY, std::move(a)};
}

MetaValue MetaValue::i32_array(std::span<const int32_t> v) {
  MetaArray a;
  a.elem_type = ValueType::INT32;
  a.count = v.size();
  a.raw.resize(v.size_bytes());
  std::memcpy(a.raw.data(), v.data(), v.size_bytes());
  return {ValueType::ARRAY, std::move(a)};
}

MetaValue MetaValue::from(const Value& v) {
  MetaValue out;
  out.type = v.type;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string_view>) {
          out.data = std::string(x);
        } else if constexpr (std::is_same_v<T, Array>) {
          MetaArray a;
          a.elem_type = x.elem_type;
          a.count = x.count;
          a.raw.assign(x.raw.begin(), x.raw.end());
          a.strings.assign(x.strings.begin(), x.strings.end());
          for (const auto& sub : x.arrays) a.arrays.push_back(from(sub));
          out.data = std::move(a);
        } else {
          out.data = x;
        }
      },
      v.data);
  return out;
}

void Writer::set(std::string key, MetaValue value) {
  for (auto& [k, v] : kv_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  kv_.emplace_back(std::move(key), std::move(value));
}

void Writer::remove(std::string_view key) {
  std::erase_if(kv_, [&](const auto& kv) { return kv.first == key; });
}

bool Writer::has(std::string_view key) const {
  for (const auto& kv : kv_) {
    if (kv.first == key) return true;
  }
  return false;
}

void Writer::copy_metadata(const File& file) {
  for (const auto& [k, v] : file.metadata()) set(std::string(k), MetaValue::from(v));
}

void Writer::add_tensor(std::string name, GgmlType type, std::vector<uint64_t> ne, Fill fill) {
  const auto& t = traits(type);
  if (ne.empty() || ne.size() > 4) {
    throw Error("tensor '" + name + "': " + std::to_string(ne.size()) +
                " dimensions (1 to 4 allowed)");
  }
  if (ne[0] % t.block_elements != 0) {
    throw Error("tensor '" + name + "': row length " + std::to_string(ne[0]) +
                " is not a multiple of " + std::string(t.name) + "'s block size " +
                std::to_string(t.block_elements));
  }
  for (const auto& p : tensors_) {
    if (p.name == name) throw Error("duplicate tensor name '" + name + "'");
  }
  uint64_t n = 1;
  for (auto d : ne) n *= d;
  const uint64_t bytes = n / t.block_elements * t.block_bytes;
  tensors_.push_back({std::move(name), type, std::move(ne), bytes, std::move(fill)});
}

void Writer::add_tensor(std::string name, GgmlType type, std::vector<uint64_t> ne,
                        std::span<const std::byte> data) {
  const std::string copy_of_name = name;
  add_tensor(std::move(name), type, std::move(ne), [data, copy_of_name](std::span<std::byte> out) {
    if (data.size() != out.size()) {
      throw Error("tensor '" + copy_of_name + "': got " + std::to_string(data.size()) +
                  " bytes of data, its shape and type need " + std::to_string(out.size()));
    }
    std::memcpy(out.data(), data.data(), out.size());
  });
}

uint32_t Writer::alignment() const {
  for (const auto& [k, v] : kv_) {
    if (k == "general.alignment" && v.type == ValueType::UINT32) {
      return static_cast<uint32_t>(std::get<uint64_t>(v.data));
    }
  }
  return 32;
}

void Writer::write(const std::filesystem::path& path) const {
  const uint32_t align = alignment();
  if (align == 0 || (align & (align - 1)) != 0)
    throw Error("general.alignment must be a power of two");
  auto pad_to = [align](uint64_t x) { return (x + align - 1) / align * align; };

  std::vector<std::byte> header;
  append_pod<uint32_t>(header, 0x46554747);  // "GGUF"
  append_pod<uint32_t>(header, 3);
  append_pod<uint64_t>(header, tensors_.size());
  append_pod<uint64_t>(header, kv_.size());
  for (const auto& [k, v] : kv_) {
    append_string(header, k);
    append_pod<uint32_t>(header, static_cast<uint32_t>(v.type));
    append_value(header, v);
  }
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const auto& t : tensors_) {
    append_string(header, t.name);
    append_pod<uint32_t>(header, static_cast<uint32_t>(t.ne.size()));
    for (auto d : t.ne) append_pod<uint64_t>(header, d);
    append_pod<uint32_t>(header, static_cast<uint32_t>(t.type));
    append_pod<uint64_t>(header, offset);
    offsets.push_back(offset);
    offset = pad_to(offset + t.n_bytes);
  }
  header.resize(pad_to(header.size()));

  // Checked before any work, so a refused output costs nothing (quantizing can take minutes).
  const std::filesystem::path target = replaceable_target(path);
  // The temporary file sits next to the file it replaces, so the rename stays on one file system.
  const std::filesystem::path tmp = target.string() + ".tmp";
  // A leftover OUT.tmp (an interrupted run) is removed rather than opened: opening it would
  // follow a link or block on a FIFO. O_EXCL then creates a fresh regular file or fails.
  std::error_code tmp_ec;
  if (std::filesystem::symlink_status(tmp, tmp_ec).type() !=
      std::filesystem::file_type::directory) {
    ::unlink(tmp.c_str());
  }
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) {
    throw Error(path.string() + ": cannot create " + tmp.string() + ": " + std::strerror(errno));
  }
  std::unique_ptr<std::FILE, FileCloser> f(::fdopen(fd, "wb"));
  if (!f) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(path.string() + ": cannot create: " + std::strerror(err));
  }
  auto put = [&](const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f.get()) != n) {
      const int err = errno;
      f.reset();
      std::filesystem::remove(tmp);
      throw Error(path.string() + ": write failed: " + std::strerror(err));
    }
  };
  try {
    put(header.data(), header.size());
    std::vector<std::byte> buffer;
    const std::vector<std::byte> zeros(align);
    for (const auto& t : tensors_) {
      buffer.assign(t.n_bytes, std::byte{0});
      t.fill(buffer);
      put(buffer.data(), buffer.size());
      put(zeros.data(), pad_to(t.n_bytes) - t.n_bytes);
    }
    if (std::fflush(f.get()) != 0)
      throw Error(path.string() + ": write failed: " + std::strerror(errno));
  } catch (...) {
    f.reset();
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
  f.reset();
  std::error_code ec;
  std::filesystem::rename(tmp, target, ec);
  if (ec) {
    // The rename's own error for the message: the clean-up must not overwrite it.
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw Error(path.string() + ": cannot rename the finished file into place: " + ec.message());
  }
}

}  // namespace kiln::gguf
