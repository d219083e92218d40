// libFuzzer target for the GGUF reader: any input must either parse or be
// rejected with gguf::Error; crashes, hangs, sanitizer reports and other
// exception types are bugs. When it parses, every tensor's data must lie inside
// the input and every accessor must behave.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto f = kiln::gguf::File::parse(bytes, "fuzz");
    for (const auto& t : f.tensors()) {
      if (f.data_offset() + t.offset + t.n_bytes > size) std::abort();
      if (t.n_bytes && t.data.data() + t.n_bytes > bytes.data() + size) std::abort();
    }
    for (const auto& [key, value] : f.metadata()) {
      (void)kiln::gguf::to_string(value, 4);
      try {
        (void)f.get_uint(key);
      } catch (const kiln::gguf::Error&) {
      }
    }
  } catch (const kiln::gguf::Error&) {
  }
  return 0;
}
