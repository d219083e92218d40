#include "gguf/ggml_types.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <stdexcept>

namespace kiln {
namespace {

// Block sizes follow the C structs in ggml (e.g. Q4_K: d, dmin, 12 scale bytes,
// 128 nibble bytes = 144). Q8_1 is 36 bytes (two halves and 32 int8) as in
// ggml; it is an activation format and never appears in model files.
constexpr std::array kTypes = {
    GgmlTypeTraits{GgmlType::F32, "F32", 1, 4, false},
    GgmlTypeTraits{GgmlType::F16, "F16", 1, 2, false},
    GgmlTypeTraits{GgmlType::Q4_0, "Q4_0", 32, 18, true},
    GgmlTypeTraits{GgmlType::Q4_1, "Q4_1", 32, 20, true},
    GgmlTypeTraits{GgmlType::Q5_0, "Q5_0", 32, 22, true},
    GgmlTypeTraits{GgmlType::Q5_1, "Q5_1", 32, 24, true},
    GgmlTypeTraits{GgmlType::Q8_0, "Q8_0", 32, 34, true},
    GgmlTypeTraits{GgmlType::Q8_1, "Q8_1", 32, 36, true},
    GgmlTypeTraits{GgmlType::Q2_K, "Q2_K", 256, 84, true},
    GgmlTypeTraits{GgmlType::Q3_K, "Q3_K", 256, 110, true},
    GgmlTypeTraits{GgmlType::Q4_K, "Q4_K", 256, 144, true},
    GgmlTypeTraits{GgmlType::Q5_K, "Q5_K", 256, 176, true},
    GgmlTypeTraits{GgmlType::Q6_K, "Q6_K", 256, 210, true},
    GgmlTypeTraits{GgmlType::Q8_K, "Q8_K", 256, 292, true},
    GgmlTypeTraits{GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, true},
    GgmlTypeTraits{GgmlType::IQ2_XS, "IQ2_XS", 256, 74, true},
    GgmlTypeTraits{GgmlType::IQ3_XXS, "IQ3_XXS", 256, 98, true},
    GgmlTypeTraits{GgmlType::IQ1_S, "IQ1_S", 256, 50, true},
    GgmlTypeTraits{GgmlType::IQ4_NL, "IQ4_NL", 32, 18, true},
    GgmlTypeTraits{GgmlType::IQ3_S, "IQ3_S", 256, 110, true},
    GgmlTypeTraits{GgmlType::IQ2_S, "IQ2_S", 256, 82, true},
    GgmlTypeTraits{GgmlType::IQ4_XS, "IQ4_XS", 256, 136, true},
    GgmlTypeTraits{GgmlType::I8, "I8", 1, 1, false},
    GgmlTypeTraits{GgmlType::I16, "I16", 1, 2, false},
    GgmlTypeTraits{GgmlType::I32, "I32", 1, 4, false},
    GgmlTypeTraits{GgmlType::I64, "I64", 1, 8, false},
    GgmlTypeTraits{GgmlType::F64, "F64", 1, 8, false},
    GgmlTypeTraits{GgmlType::IQ1_M, "IQ1_M", 256, 56, true},
    GgmlTypeTraits{GgmlType::BF16, "BF16", 1, 2, false},
    GgmlTypeTraits{GgmlType::TQ1_0, "TQ1_0", 256, 54, true},
    GgmlTypeTraits{GgmlType::TQ2_0, "TQ2_0", 256, 66, true},
    GgmlTypeTraits{GgmlType::MXFP4, "MXFP4", 32, 17, true},
    GgmlTypeTraits{GgmlType::NVFP4, "NVFP4", 64, 36, true},
    GgmlTypeTraits{GgmlType::Q1_0, "Q1_0", 128, 18, true},
};

}  // namespace

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id) {
  for (const auto& t : kTypes) {
    if (static_cast<uint32_t>(t.type) == id) return t;
  }
  return std::nullopt;
}

const GgmlTypeTraits& traits(GgmlType type) {
  for (const auto& t : kTypes) {
    if (t.type == type) return t;
  }
  throw std::logic_error("ggml type id " + std::to_string(static_cast<uint32_t>(type)) +
                         " is not in the type table");
}

std::string_view type_name(GgmlType type) { return traits(type).name; }

std::optional<GgmlType> parse_type_name(std::string_view name) {
  auto lower = [](std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
  };
  const std::string want = lower(name);
  for (const auto& t : kTypes) {
    if (lower(t.name) == want) return t.type;
  }
  return std::nullopt;
}

}  // namespace kiln
