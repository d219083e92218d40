// kiln-dequant-dump IN.gguf OUTDIR [NAME...]
//
// Writes every tensor of IN.gguf (or only the named ones) that kiln can dequantize to
// OUTDIR/<tensor name>.npy as float32, shape (rows, ne[0]), using the reference
// dequantizers (kernels/quants.h). Tests compare these files with the gguf Python
// package's gguf.quants.dequantize, an implementation independent of ours. Tensors of a
// type we cannot dequantize are listed on stderr and skipped.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "kernels/quants.h"

namespace {

// NumPy .npy format 1.0: magic, header length, a Python dict literal padded with spaces
// to a multiple of 64 bytes (newline last), then the raw little-endian data.
void write_npy(const std::filesystem::path& path, const std::vector<float>& data, uint64_t rows,
               uint64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  const size_t preamble = 10;  // magic (6) + version (2) + header length (2)
  const size_t total = (preamble + header.size() + 1 + 63) / 64 * 64;
  header.append(total - preamble - header.size() - 1, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot create " + path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()),
            static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) throw std::runtime_error("write failed: " + path.string());
}

int run(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: kiln-dequant-dump IN.gguf OUTDIR [TENSOR_NAME...]\n");
    return 2;
  }
  const auto file = kiln::gguf::File::open(argv[1]);
  const std::filesystem::path out_dir(argv[2]);
  std::filesystem::create_directories(out_dir);
  std::vector<std::string> only(argv + 3, argv + argc);
  int written = 0;
  for (const auto& t : file.tensors()) {
    if (!only.empty() && std::find(only.begin(), only.end(), std::string(t.name)) == only.end()) {
      continue;
    }
    if (!kiln::kernels::can_dequantize(t.type)) {
      std::fprintf(stderr, "skipped %.*s: no dequantizer for %.*s\n",
                   static_cast<int>(t.name.size()), t.name.data(),
                   static_cast<int>(kiln::type_name(t.type).size()),
                   kiln::type_name(t.type).data());
      continue;
    }
    const uint64_t cols = t.ne[0];
    const uint64_t rows = t.rows();
    const size_t in_row = kiln::row_bytes(t.type, cols);
    std::vector<float> values(rows * cols);
    for (uint64_t r = 0; r < rows; ++r) {
      kiln::kernels::dequantize_row(t.type, t.data.subspan(r * in_row, in_row),
                                    std::span(values).subspan(r * cols, cols));
    }
    write_npy(out_dir / (std::string(t.name) + ".npy"), values, rows, cols);
    ++written;
  }
  std::printf("%d tensors written to %s\n", written, out_dir.string().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-dequant-dump: error: %s\n", e.what());
    return 1;
  }
}
