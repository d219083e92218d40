// A whole file mapped read-only at a 2 MiB aligned address, and the means to have it on
// 2 MiB pages. The GGUF reader maps models this way; the engine maps its cache of
// pre-packed weight panels the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

namespace kiln::gguf {

// How much of a mapped file sits on 2 MiB pages (page-cache folios of that size, mapped
// by one page-table entry each: streaming the weights then costs far fewer TLB misses).
struct HugePageMapping {
  size_t mapped_bytes = 0;  // the mapping's size (0: a parsed buffer, not a mapped file)
  size_t huge_bytes = 0;    // of which on 2 MiB pages
  bool reread = false;      // the page cache was dropped and re-read to get them
};

class MappedFile {
 public:
  MappedFile();
  MappedFile(MappedFile&&) noexcept;
  MappedFile& operator=(MappedFile&&) noexcept;
  ~MappedFile();

  // Maps the regular file at `path` (advised for huge pages). Throws std::runtime_error
  // naming the file when it cannot be opened, is not a regular file or cannot be mapped.
  static MappedFile open(const std::filesystem::path& path);

  std::span<const std::byte> bytes() const;
  const std::string& path() const;

  // Faults the whole mapping in. Where the page cache holds a tenth or more of the file in
  // small pages (written or read before without the advice) and the file has at least
  // min_reread_bytes, drops the file's unmapped cached pages and faults them in again, so
  // the kernel reads it into 2 MiB folios where the filesystem supports them. Done once;
  // later calls return the first report. Never throws.
  HugePageMapping map_on_huge_pages(size_t min_reread_bytes = size_t{32} << 20) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Fills dst with dst.size() bytes of the file at `path` from `offset`, through pread, so a
// mapping of the same file is never touched (its pages would count in our RSS a second
// time). False when the file cannot be read that way, or its size is not `file_size` (then
// it is not the file the caller mapped).
bool read_file_range(const std::string& path, uint64_t file_size, uint64_t offset,
                     std::span<std::byte> dst);

}  // namespace kiln::gguf
