#include "gguf/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <stdexcept>

namespace kiln::gguf {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;

// Maps `size` bytes of fd read-only at a 2 MiB aligned address, so that 2 MiB folios of the
// page cache (file offsets that are multiples of 2 MiB) can be mapped whole.
void* map_aligned(int fd, size_t size) {
  void* reserved = mmap(nullptr, size + kHugePage, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserved == MAP_FAILED) return MAP_FAILED;
  const auto base = reinterpret_cast<uintptr_t>(reserved);
  const uintptr_t aligned = (base + kHugePage - 1) / kHugePage * kHugePage;
  void* addr =
      mmap(reinterpret_cast<void*>(aligned), size, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
  if (addr == MAP_FAILED) {
    munmap(reserved, size + kHugePage);
    return MAP_FAILED;
  }
  // Return the reservation around the file mapping.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t end = aligned + (size + page - 1) / page * page;
  if (aligned > base) munmap(reserved, aligned - base);
  if (base + size + kHugePage > end)
    munmap(reinterpret_cast<void*>(end), base + size + kHugePage - end);
  return addr;
}

// FilePmdMapped of the mapping that starts at addr, from /proc/self/smaps (0 if unknown).
size_t file_pmd_mapped_bytes(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  char head[32];
  std::snprintf(head, sizeof head, "%lx-",
                static_cast<unsigned long>(reinterpret_cast<uintptr_t>(addr)));
  std::string line;
  bool in_vma = false;
  while (std::getline(smaps, line)) {
    if (line.rfind(head, 0) == 0) {
      in_vma = true;
    } else if (in_vma && line.rfind("FilePmdMapped:", 0) == 0) {
      return std::strtoull(line.c_str() + 14, nullptr, 10) * 1024;
    }
  }
  return 0;
}

void populate(void* addr, size_t size) {
#ifdef MADV_POPULATE_READ
  madvise(addr, size, MADV_POPULATE_READ);
#else
  const volatile auto* p = static_cast<const volatile unsigned char*>(addr);
  for (size_t i = 0; i < size; i += 4096) (void)p[i];
#endif
}
}  // namespace

struct MappedFile::State {
  std::string path;
  void* addr = nullptr;
  size_t size = 0;
  std::once_flag huge_once;
  HugePageMapping huge;
  ~State() {
    if (addr && size) munmap(addr, size);
  }
};

MappedFile::MappedFile() = default;
MappedFile::MappedFile(MappedFile&&) noexcept = default;
MappedFile& MappedFile::operator=(MappedFile&&) noexcept = default;
MappedFile::~MappedFile() = default;

MappedFile MappedFile::open(const std::filesystem::path& path) {
  MappedFile f;
  f.state_ = std::make_unique<State>();
  State& s = *f.state_;
  s.path = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(s.path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(s.path + ": not a regular file");
  }
  if (st.st_size > 0) {
    void* addr = map_aligned(fd, static_cast<size_t>(st.st_size));
    if (addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(s.path + ": cannot map: " + std::strerror(err));
    }
    s.addr = addr;
    s.size = static_cast<size_t>(st.st_size);
    // Advice only: pages the kernel reads in for this mapping come as 2 MiB folios where it
    // can (see map_on_huge_pages).
    madvise(addr, s.size, MADV_HUGEPAGE);
  }
  ::close(fd);  // the mapping keeps the file alive
  return f;
}

std::span<const std::byte> MappedFile::bytes() const {
  if (!state_) return {};
  return {static_cast<const std::byte*>(state_->addr), state_->size};
}

const std::string& MappedFile::path() const {
  static const std::string none;
  return state_ ? state_->path : none;
}

HugePageMapping MappedFile::map_on_huge_pages(size_t min_reread_bytes) const {
  if (!state_ || state_->addr == nullptr) return {};
  State& m = *state_;
  std::call_once(m.huge_once, [&] {
    m.huge.mapped_bytes = m.size;
    populate(m.addr, m.size);
    m.huge.huge_bytes = file_pmd_mapped_bytes(m.addr);
    // The mapping starts 2 MiB aligned, so all but the last partial 2 MiB can be huge; the
    // page cache re-read below is worth it when a tenth of that or more is not.
    const size_t possible = m.size / kHugePage * kHugePage;
    if (m.huge.huge_bytes >= possible / 10 * 9 || m.size < min_reread_bytes) return;
    // Small folios in the page cache: unmap ours, drop the file's unmapped cached pages
    // (written back first, so nothing is lost; other processes' mapped pages stay) and
    // fault it in again, now read into 2 MiB folios where the filesystem supports them.
    const int fd = ::open(m.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    madvise(m.addr, m.size, MADV_DONTNEED);
    fdatasync(fd);  // a freshly written file's dirty pages cannot be dropped before writeback
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    populate(m.addr, m.size);
    m.huge.huge_bytes = file_pmd_mapped_bytes(m.addr);
    m.huge.reread = true;
  });
  return m.huge;
}

bool read_file_range(const std::string& path, uint64_t file_size, uint64_t offset,
                     std::span<std::byte> dst) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  bool ok =
      fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == file_size;
  size_t done = 0;
  while (ok && done < dst.size()) {
    const ssize_t got =
        ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    ok = got > 0;
    if (ok) done += static_cast<size_t>(got);
  }
  ::close(fd);
  return ok;
}

}  // namespace kiln::gguf
