#include "engine/panel_cache.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "kernels/matmul_rows.h"
#include "kernels/quants.h"

namespace kiln {
namespace {

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'P', 'N', 'L', '\0'};
// 2: the model's path after the entries; 3: Q4_K panels of the blocks' size (6-bit scales);
// 4: a checksum of each matrix's panels in its entry.
constexpr uint32_t kFormatVersion = 4;
// Formats from this one on share the header, the entries and the model's path (only panel
// layouts changed), so a file of any of them names its model.
constexpr uint32_t kFirstFormatWithModelPath = 2;
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMatrixAlign = 4096;

struct PanelCacheHeader {
  char magic[8];
  uint32_t version;
  uint32_t n_matrices;
  uint64_t model_size;        // bytes of the model file
  int64_t model_mtime_ns;     // its modification time
  uint64_t model_head_hash;   // FNV-1a of its bytes before the tensor data
  uint64_t data_offset;       // first panel byte, 2 MiB aligned
  uint64_t file_size;         // bytes of this file
  uint32_t model_path_bytes;  // the model's absolute path, after the entries (not terminated)
  uint32_t reserved;
};
static_assert(sizeof(PanelCacheHeader) == 64);

struct PanelCacheEntry {
  uint32_t type;      // GgmlType
  uint32_t checksum;  // panel_checksum of the panels (0 before format 4)
  uint64_t rows, cols;
  uint64_t offset;  // of the panels in this file, 4 KiB aligned
  uint64_t bytes;   // packed_panels_bytes(type, rows, cols)
  char layout[24];  // packed_panels_layout(type), zero padded
};
static_assert(sizeof(PanelCacheEntry) == 64);

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

uint64_t fnv1a(std::span<const std::byte> bytes, uint64_t h = 14695981039346656037ull) {
  for (const std::byte b : bytes) {
    h ^= static_cast<uint8_t>(b);
    h *= 1099511628211ull;
  }
  return h;
}

// A checksum of a matrix's panels, so that a cache file damaged after it was written (a bad
// block on the disk, a stray write) is packed again instead of feeding the kernels garbage:
// the header, the entries and each first panel are compared exactly, but the rest of the
// panels only through this. Fletcher-style sums over 64-bit words (a changed, zeroed or
// moved block changes them) in eight independent lanes, so it runs at memory speed.
uint32_t panel_checksum(std::span<const std::byte> bytes) {
  constexpr size_t kLanes = 8;
  uint64_t sum[kLanes] = {}, sum_of_sums[kLanes] = {};
  const size_t words = bytes.size() / 8;
  size_t i = 0;
  for (; i + kLanes <= words; i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) {
      uint64_t w;
      std::memcpy(&w, bytes.data() + (i + l) * 8, 8);
      sum[l] += w;
      sum_of_sums[l] += sum[l];
    }
  }
  for (; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, bytes.data() + i * 8, 8);
    sum[i % kLanes] += w;
    sum_of_sums[i % kLanes] += sum[i % kLanes];
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + words * 8, bytes.size() - words * 8);  // < 8 bytes
  uint64_t h = 14695981039346656037ull ^ tail ^ bytes.size();
  for (size_t l = 0; l < kLanes; ++l) {
    h = (h ^ sum[l]) * 1099511628211ull;
    h = (h ^ sum_of_sums[l]) * 1099511628211ull;
  }
  return static_cast<uint32_t>(h ^ (h >> 32));
}

std::string mib(size_t bytes) { return std::to_string((bytes + (1 << 19)) >> 20) + " MiB"; }

// The header and entries a valid cache file for these matrices has, byte for byte.
struct Expected {
  PanelCacheHeader header{};
  std::vector<PanelCacheEntry> entries;
  std::string model_path;  // absolute
};

// Modification time of a stat'd file in nanoseconds.
int64_t mtime_ns(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
}

std::string absolute_path(const std::filesystem::path& p) {
  std::error_code ec;
  const std::filesystem::path a = std::filesystem::absolute(p, ec);
  return (ec ? p : a).lexically_normal().string();
}

Expected expected_layout(const gguf::File& model, std::span<const kernels::WeightMatrix> matrices) {
  struct stat st {};
  if (::stat(model.path().c_str(), &st) != 0) {
    throw std::runtime_error(model.path() +
                             ": cannot stat the model file: " + std::strerror(errno));
  }
  Expected e;
  PanelCacheHeader& h = e.header;
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kFormatVersion;
  h.n_matrices = static_cast<uint32_t>(matrices.size());
  h.model_size = model.file_size();
  h.model_mtime_ns = mtime_ns(st);
  h.model_head_hash =
      fnv1a(model.bytes().first(std::min<uint64_t>(model.data_offset(), model.bytes().size())));
  e.model_path = absolute_path(model.path());
  h.model_path_bytes = static_cast<uint32_t>(e.model_path.size());
  h.data_offset = align_up(
      sizeof(PanelCacheHeader) + matrices.size() * sizeof(PanelCacheEntry) + e.model_path.size(),
      kHugePage);
  size_t offset = h.data_offset;
  for (const kernels::WeightMatrix& w : matrices) {
    PanelCacheEntry en{};
    en.type = static_cast<uint32_t>(w.type);
    en.rows = w.rows;
    en.cols = w.cols;
    en.bytes = kernels::packed_panels_bytes(w.type, w.rows, w.cols);
    if (en.bytes == 0) {
      throw std::invalid_argument(std::string("panel cache: no pre-packed panels for ") +
                                  std::string(type_name(w.type)) + " on this CPU");
    }
    const std::string layout = kernels::packed_panels_layout(w.type);
    std::memcpy(en.layout, layout.data(), std::min(layout.size(), sizeof en.layout - 1));
    en.offset = offset;
    offset = align_up(offset + en.bytes, kMatrixAlign);
    e.entries.push_back(en);
  }
  h.file_size =
      e.entries.empty() ? h.data_offset : e.entries.back().offset + e.entries.back().bytes;
  return e;
}

// Where matrix w's blocks start in the model file.
uint64_t file_offset(const gguf::File& model, const kernels::WeightMatrix& w) {
  return static_cast<uint64_t>(w.data.data() - model.bytes().data());
}

// Reads w's first `rows` rows of blocks from the model file (not its mapping).
void read_rows(const gguf::File& model, const kernels::WeightMatrix& w, size_t rows,
               std::vector<std::byte>& out) {
  out.resize(rows * row_bytes(w.type, w.cols));
  if (!gguf::read_file_range(model.path(), model.file_size(), file_offset(model, w), out)) {
    throw std::runtime_error(model.path() + ": cannot read the model file again to pack its " +
                             "weights (was it changed or removed since it was opened?)");
  }
}

// The cache file at `path` matches `e`, and each matrix's first panel is what this build
// packs from the model now: its spans into `file`, or empty.
std::vector<std::span<const std::byte>> check(const gguf::MappedFile& file, const Expected& e,
                                              const gguf::File& model,
                                              std::span<const kernels::WeightMatrix> matrices,
                                              ThreadPool& pool) {
  const std::span<const std::byte> bytes = file.bytes();
  const size_t table = sizeof(PanelCacheHeader) + e.entries.size() * sizeof(PanelCacheEntry);
  if (bytes.size() != e.header.file_size || bytes.size() < table + e.model_path.size()) return {};
  if (std::memcmp(bytes.data(), &e.header, sizeof e.header) != 0) return {};
  // The entries as expected but for their checksums, which only the file knows.
  std::vector<PanelCacheEntry> stored(e.entries.size());
  if (!stored.empty()) {
    std::memcpy(stored.data(), bytes.data() + sizeof e.header,
                stored.size() * sizeof(PanelCacheEntry));
  }
  for (size_t i = 0; i < stored.size(); ++i) {
    PanelCacheEntry en = stored[i];
    en.checksum = e.entries[i].checksum;
    if (std::memcmp(&en, &e.entries[i], sizeof en) != 0) return {};
  }
  if (std::memcmp(bytes.data() + table, e.model_path.data(), e.model_path.size()) != 0) return {};
  std::vector<std::span<const std::byte>> panels;
  std::vector<std::byte> blocks, first;
  for (size_t i = 0; i < matrices.size(); ++i) {
    const kernels::WeightMatrix& w = matrices[i];
    const PanelCacheEntry& en = e.entries[i];
    const size_t rows = std::min(kernels::kUnitRows, w.rows);
    read_rows(model, w, rows, blocks);
    first.assign(kernels::packed_panels_bytes(w.type, rows, w.cols), std::byte{0});
    kernels::pack_panels({w.type, blocks, rows, w.cols}, first, pool);
    const std::span<const std::byte> p = bytes.subspan(en.offset, en.bytes);
    if (std::memcmp(p.data(), first.data(), first.size()) != 0) return {};
    panels.push_back(p);
  }
  // Every panel through its checksum, the matrices shared out across the pool.
  std::atomic<size_t> next{0};
  std::atomic<bool> damaged{false};
  pool.run([&](int, int) {
    for (size_t i = next.fetch_add(1); i < panels.size() && !damaged; i = next.fetch_add(1)) {
      if (panel_checksum(panels[i]) != stored[i].checksum) damaged = true;
    }
  });
  if (damaged) return {};
  return panels;
}

// Closes a descriptor and removes a half-written temporary file unless released.
struct TempFile {
  std::string path;
  int fd = -1;
  void* map = nullptr;
  size_t map_size = 0;
  ~TempFile() {
    if (map != nullptr) munmap(map, map_size);
    if (fd >= 0) ::close(fd);
    if (!path.empty()) ::unlink(path.c_str());
  }
};

[[noreturn]] void fail_write(const std::filesystem::path& what, const std::string& why) {
  throw std::runtime_error("cannot write the panel cache " + what.string() + ": " + why +
                           " (--panel-cache DIR puts it elsewhere; --no-panel-cache reads the "
                           "model's own blocks: slower decode, the same results)");
}

// Removes `path`.tmp.PID-N files whose process is gone (killed while packing): each is as
// large as the cache. A live process's file is left to it.
void remove_abandoned_temporaries(const std::filesystem::path& path) {
  const std::string prefix = path.filename().string() + ".tmp.";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path.parent_path(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(name.c_str() + prefix.size(), &end, 10);
    if (end == nullptr || *end != '-' || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::filesystem::remove(entry.path(), ec);
    }
  }
}

// Removes the cache files in `dir` (other than `keep`, the file now packed for the model at
// `model_path` with panels of `isa`) that no kiln can use again: made from a model file that
// is gone, or that has changed since (any reader would pack it again), by this format or an
// older one that records the model's path (so upgrading kiln does not leave the old files of
// deleted models behind for good); and the model's own older files of the same ISA (named
// before file names carried the ISA: `keep` supersedes them). A file of an older format
// whose model is still there stays (an older kiln may use it), as do the model's files of
// another ISA (a machine sharing this folder may use them), newer formats, files without a
// path and anything unreadable. Runs when a file is packed, so the folder holds about one
// file per model and ISA in use.
void remove_stale_caches(const std::filesystem::path& dir, const std::filesystem::path& keep,
                         const std::string& model_path_now, const std::string& isa) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::filesystem::path& p = entry.path();
    if (p.extension() != ".panels" || p == keep) continue;
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    PanelCacheHeader h{};
    PanelCacheEntry first{};
    std::string model_path;
    bool readable = ::pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
                    std::memcmp(h.magic, kMagic, sizeof kMagic) == 0 &&
                    h.version >= kFirstFormatWithModelPath && h.version <= kFormatVersion &&
                    h.model_path_bytes > 0 && h.model_path_bytes <= 65536 &&
                    h.n_matrices <= (1u << 20);
    if (readable) {
      model_path.resize(h.model_path_bytes);
      const off_t at =
          static_cast<off_t>(sizeof h + size_t{h.n_matrices} * sizeof(PanelCacheEntry));
      readable = ::pread(fd, model_path.data(), model_path.size(), at) ==
                 static_cast<ssize_t>(model_path.size());
      if (readable && h.n_matrices > 0 &&
          ::pread(fd, &first, sizeof first, sizeof h) != static_cast<ssize_t>(sizeof first)) {
        readable = false;
      }
    }
    ::close(fd);
    if (!readable) continue;
    struct stat st {};
    const bool stale =
        ::stat(model_path.c_str(), &st) != 0
            ? errno == ENOENT || errno == ENOTDIR
            : static_cast<uint64_t>(st.st_size) != h.model_size || mtime_ns(st) != h.model_mtime_ns;
    // "avx2/v1" -> "avx2": the ISA of the file's panels (all its matrices share it).
    const std::string layout(first.layout, strnlen(first.layout, sizeof first.layout));
    const bool superseded = h.n_matrices > 0 && model_path == model_path_now && !isa.empty() &&
                            layout.substr(0, layout.find('/')) == isa;
    if (stale || superseded) std::filesystem::remove(p, ec);
  }
}

// Packs the matrices into a new cache file at `path`: written under a temporary name in the
// same folder, synced, then renamed over `path`.
void write_cache(const std::filesystem::path& path, const Expected& e, const gguf::File& model,
                 std::span<const kernels::WeightMatrix> matrices, ThreadPool& pool) {
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) fail_write(path.parent_path(), "cannot create the folder: " + ec.message());
  remove_abandoned_temporaries(path);
  remove_stale_caches(path.parent_path(), path, e.model_path, kernels::packed_panels_isa());
  TempFile tmp;
  // PID-N: unique among processes and among the engines of one process.
  static std::atomic<unsigned> serial{0};
  tmp.path = path.string() + ".tmp." + std::to_string(::getpid()) + "-" +
             std::to_string(serial.fetch_add(1));
  tmp.fd = ::open(tmp.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (tmp.fd < 0) {
    const std::string why = std::strerror(errno);
    tmp.path.clear();
    fail_write(path, why);
  }
  const size_t size = e.header.file_size;
  // Reserve the blocks now: a store into a mapped hole the disk has no room for would kill
  // the process (SIGBUS) instead of failing here.
  if (const int err = posix_fallocate(tmp.fd, 0, static_cast<off_t>(size)); err != 0) {
    fail_write(path, "cannot reserve " + mib(size) + ": " + std::strerror(err));
  }
  tmp.map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, tmp.fd, 0);
  if (tmp.map == MAP_FAILED) {
    tmp.map = nullptr;
    fail_write(path, std::string("cannot map it: ") + std::strerror(errno));
  }
  tmp.map_size = size;
  auto* out = static_cast<std::byte*>(tmp.map);
  std::memcpy(out, &e.header, sizeof e.header);
  std::memcpy(out + sizeof e.header, e.entries.data(), e.entries.size() * sizeof(PanelCacheEntry));
  std::memcpy(out + sizeof e.header + e.entries.size() * sizeof(PanelCacheEntry),
              e.model_path.data(), e.model_path.size());
  std::vector<std::byte> blocks;
  for (size_t i = 0; i < matrices.size(); ++i) {
    const kernels::WeightMatrix& w = matrices[i];
    read_rows(model, w, w.rows, blocks);
    const PanelCacheEntry& en = e.entries[i];
    kernels::pack_panels({w.type, blocks, w.rows, w.cols}, {out + en.offset, en.bytes}, pool);
    const uint32_t checksum = panel_checksum({out + en.offset, en.bytes});
    std::memcpy(
        out + sizeof e.header + i * sizeof(PanelCacheEntry) + offsetof(PanelCacheEntry, checksum),
        &checksum, sizeof checksum);
  }
  munmap(tmp.map, size);
  tmp.map = nullptr;
  if (fdatasync(tmp.fd) != 0) fail_write(path, std::string("sync: ") + std::strerror(errno));
  if (std::rename(tmp.path.c_str(), path.c_str()) != 0) {
    fail_write(path, std::string("rename: ") + std::strerror(errno));
  }
  tmp.path.clear();  // renamed: nothing to remove
}

}  // namespace

std::filesystem::path default_panel_cache_dir() {
  const auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v != nullptr ? v : "";
  };
  if (const std::string dir = env("KILN_CACHE_DIR"); !dir.empty()) return dir;
  if (const std::string xdg = env("XDG_CACHE_HOME"); !xdg.empty()) {
    return std::filesystem::path(xdg) / "kiln";
  }
  if (const std::string home = env("HOME"); !home.empty()) {
    return std::filesystem::path(home) / ".cache" / "kiln";
  }
  return {};
}

std::filesystem::path panel_cache_file(const std::filesystem::path& dir,
                                       const std::filesystem::path& model_path) {
  const std::string key = absolute_path(model_path);
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(fnv1a(std::as_bytes(std::span(key)))));
  // The ISA in the name: panels of one are no use to the other's kernels, and a folder shared
  // by machines of both (a home folder on NFS) keeps a file for each instead of packing the
  // model again at every start on the other kind.
  const std::string isa = kernels::packed_panels_isa();
  return dir /
         (model_path.stem().string() + "-" + hash + (isa.empty() ? "" : "-" + isa) + ".panels");
}

PanelCache PanelCache::open(const gguf::File& model,
                            std::span<const kernels::WeightMatrix> matrices,
                            const std::filesystem::path& dir, ThreadPool& pool,
                            const std::function<void(std::string_view)>& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  PanelCache c;
  c.path_ = panel_cache_file(dir, model.path());
  const Expected e = expected_layout(model, matrices);
  const auto try_map = [&] {
    try {
      c.file_ = gguf::MappedFile::open(c.path_);
    } catch (const std::runtime_error&) {
      return false;  // no file yet (or unreadable): packed again
    }
    c.panels_ = check(c.file_, e, model, matrices, pool);
    return !c.panels_.empty() || matrices.empty();
  };
  if (!try_map()) {
    c.file_ = {};
    if (progress) {
      progress("packing the weights into the panel cache " + c.path_.string() + " (" +
               mib(e.header.file_size) + "; once per model file)");
    }
    write_cache(c.path_, e, model, matrices, pool);
    c.created_ = true;
    if (!try_map()) {
      throw std::runtime_error("the panel cache " + c.path_.string() +
                               " just written does not read back the same (was it changed "
                               "meanwhile?)");
    }
  }
  c.huge_ = c.file_.map_on_huge_pages();
  c.seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return c;
}

}  // namespace kiln
