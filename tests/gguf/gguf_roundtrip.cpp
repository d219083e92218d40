// Test tool: reads a GGUF with our reader and writes it again with our writer
// (every key and tensor). pytest uses it to cross-check both against the gguf
// Python package.  usage: kiln-gguf-roundtrip IN.gguf OUT.gguf
#include <cstdio>
#include <exception>

#include "gguf/gguf.h"
#include "gguf/writer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN.gguf OUT.gguf\n", argv[0]);
    return 2;
  }
  try {
    const auto in = kiln::gguf::File::open(argv[1]);
    kiln::gguf::Writer w;
    w.copy_metadata(in);
    for (const auto& t : in.tensors()) {
      w.add_tensor(std::string(t.name), t.type, {t.ne.begin(), t.ne.begin() + t.n_dims}, t.data);
    }
    w.write(argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
