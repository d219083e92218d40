// The panel cache: a model's matrices as pre-packed GEMM panels (kernels::pack_panels) in a
// file of their own, memory-mapped like the model.
//
// Decode streams every weight once per token. Read as the model's own blocks, a Q4_K row
// costs more vector work per weight than one 16-row panel (1 thread, from the L3: 19.6 vs
// 57 GB/s of weights), enough that decode from the blocks stops following the memory when
// it is fast. Packing at every start costs seconds and an anonymous copy of the weights
// (--hugepage-weights); packing once into a file costs the disk space of the packed
// matrices, and every later start maps the panels in well under a second, shared in the
// page cache between processes like the model itself.
//
// Layout of a cache file (little-endian):
//   PanelCacheHeader | n_matrices x PanelCacheEntry | the model's absolute path |
//   zero padding to data_offset
//   (2 MiB aligned, so 2 MiB folios of the page cache map the panels whole) | panels,
//   each matrix at its entry's offset (4 KiB aligned)
// A file is used only when it was made from this very model file (size, modification time
// and a hash of its header and tensor table) with this build's packing (each matrix's
// type, shape and packed_panels_layout(), and its first panel packed again on load and
// compared byte for byte), whose panels still match the checksums written with them (a file
// damaged on disk since). Anything else is packed again into a new file, written under a
// temporary name and renamed into place, so a reader never sees a partial file. Packing
// also removes the folder's files whose model is gone or has changed since (nothing could
// use them again), so the folder holds about one file per model (and ISA) in use.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"
#include "gguf/mapped_file.h"
#include "kernels/matmul.h"
#include "kernels/thread_pool.h"

namespace kiln {

// Where the panel cache lives unless told otherwise: $KILN_CACHE_DIR, else
// $XDG_CACHE_HOME/kiln, else $HOME/.cache/kiln; empty when none of these is set.
std::filesystem::path default_panel_cache_dir();

// The cache file for the model at `model_path` in `dir`: the model's file stem, a hash of
// its absolute path and the ISA of this CPU's panels (two models of one name in different
// folders get two files, as do AVX-512 and AVX2-only machines sharing the folder; a model
// packed again replaces its own file).
std::filesystem::path panel_cache_file(const std::filesystem::path& dir,
                                       const std::filesystem::path& model_path);

class PanelCache {
 public:
  PanelCache() = default;

  // The panels of `matrices` (blocks from `model`'s mapping; each must have
  // packed_panels_bytes() > 0), from the cache file in `dir`: mapped from a valid file,
  // else packed into a new one and mapped. Packing reads the model through pread, so the
  // model's mapped pages of these matrices are never touched. Throws std::runtime_error
  // with a message a user can act on when the file can neither be used nor written (no
  // such folder and none can be made, no permission, not enough disk space).
  // `progress` (may be empty) is told before a file is packed.
  static PanelCache open(const gguf::File& model, std::span<const kernels::WeightMatrix> matrices,
                         const std::filesystem::path& dir, ThreadPool& pool,
                         const std::function<void(std::string_view)>& progress = {});

  bool empty() const { return panels_.empty(); }
  // Matrix i's panels, in the order given to open().
  std::span<const std::byte> panels(size_t i) const { return panels_.at(i); }
  const std::filesystem::path& path() const { return path_; }
  // The file was packed by this open() (false: an existing one was mapped).
  bool created() const { return created_; }
  // Seconds open() took: packing and writing, or checking and mapping.
  double seconds() const { return seconds_; }
  // The panels' pages, faulted in on open(): how many sit on 2 MiB pages.
  gguf::HugePageMapping huge_pages() const { return huge_; }
  size_t bytes() const { return file_.bytes().size(); }
  // The whole mapped file.
  std::span<const std::byte> file_bytes() const { return file_.bytes(); }

 private:
  gguf::MappedFile file_;
  std::vector<std::span<const std::byte>> panels_;
  std::filesystem::path path_;
  bool created_ = false;
  double seconds_ = 0;
  gguf::HugePageMapping huge_;
};

}  // namespace kiln
