// The block structs must agree with the type table the GGUF reader uses.
#include <gtest/gtest.h>

#include "gguf/ggml_types.h"
#include "kernels/blocks.h"

namespace kiln::kernels {
namespace {

template <typename Block>
void expect_layout(GgmlType type, int elements) {
  EXPECT_EQ(traits(type).block_bytes, sizeof(Block)) << type_name(type);
  EXPECT_EQ(traits(type).block_elements, static_cast<uint32_t>(elements)) << type_name(type);
}

TEST(Blocks, SizesMatchTypeTable) {
  expect_layout<block_q4_0>(GgmlType::Q4_0, QK4_0);
  expect_layout<block_q4_1>(GgmlType::Q4_1, QK4_1);
  expect_layout<block_q5_0>(GgmlType::Q5_0, QK5_0);
  expect_layout<block_q5_1>(GgmlType::Q5_1, QK5_1);
  expect_layout<block_q8_0>(GgmlType::Q8_0, QK8_0);
  expect_layout<block_q8_1>(GgmlType::Q8_1, QK8_1);
  expect_layout<block_q2_K>(GgmlType::Q2_K, QK_K);
  expect_layout<block_q3_K>(GgmlType::Q3_K, QK_K);
  expect_layout<block_q4_K>(GgmlType::Q4_K, QK_K);
  expect_layout<block_q5_K>(GgmlType::Q5_K, QK_K);
  expect_layout<block_q6_K>(GgmlType::Q6_K, QK_K);
  expect_layout<block_q8_K>(GgmlType::Q8_K, QK_K);
  expect_layout<block_iq4_nl>(GgmlType::IQ4_NL, QK4_NL);
  expect_layout<block_iq4_xs>(GgmlType::IQ4_XS, QK_K);
}

}  // namespace
}  // namespace kiln::kernels
