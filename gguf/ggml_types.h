// The table of ggml tensor types: id, name, elements per block, bytes per block.
//
// This table is what lets a GGUF file with any known type open and report its
// tensors, even where no kernel exists yet. The ids are fixed by the on-disk
// format; ids that ggml retired (4, 5, 31-33, 36-38) are unknown on purpose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kiln {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;    // as ggml and the gguf Python package spell it
  uint32_t block_elements;  // elements packed into one block
  uint32_t block_bytes;     // bytes one block occupies
  bool quantized;
};

// Traits of a type id read from a file; nullopt for ids ggml never had or retired.
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id);
// Traits of a known type (never fails).
const GgmlTypeTraits& traits(GgmlType type);
std::string_view type_name(GgmlType type);
// Parses a name such as "q4_K" or "Q4_K" (case-insensitive).
std::optional<GgmlType> parse_type_name(std::string_view name);

// Bytes taken by one row of `elements` elements; the caller guarantees that
// elements is a multiple of the block size.
inline size_t row_bytes(GgmlType type, uint64_t elements) {
  const auto& t = traits(type);
  return static_cast<size_t>(elements / t.block_elements * t.block_bytes);
}

}  // namespace kiln
