// The CUDA forward against the CPU forward: the same tiny synthetic models (written here with
// our GGUF writer, matrices in several weight types) and the default model, fed the same
// tokens; the logits rows must agree in their top-1 token (>= 99%) and in distribution
// (mean KL(cpu || cuda) < 1e-3). Also: batched decode equals each sequence alone (--precise;
// close to it by default), graph replay equals direct launches, and the load-time errors.
// Tests that need a GPU skip with "no CUDA device"; the error tests for a missing GPU run
// everywhere else.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/engine_cuda.h"
#include "engine/engine.h"
#include "gguf/writer.h"
#include "kernels/quantize.h"
#include "tests/cuda/cuda_test_util.h"

namespace {

namespace fs = std::filesystem;
using kiln::Batch;
using kiln::CudaEngine;
using kiln::Engine;
using kiln::EngineOptions;
using kiln::GgmlType;
using kiln::Model;

struct Spec {
  size_t vocab = 320, dim = 256, layers = 2, heads = 4, kv_heads = 2, ffn = 512, ctx = 320;
  bool tied = false, rope_freqs = false;
  GgmlType matrix_type = GgmlType::F16;
  GgmlType embd_type = GgmlType::Q8_0;
};

// gtest names the parameter of a failing case with this (not the raw bytes).
void PrintTo(const Spec& s, std::ostream* os) {
  *os << type_name(s.matrix_type) << (s.tied ? " tied" : "") << (s.rope_freqs ? " freqs" : "");
}

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("kiln_cuda_test_" + std::to_string(getpid()) + "_" + name);
}

// Writes a Llama model with seeded random weights; each tensor filled row by row.
fs::path write_model(const Spec& s, const std::string& name) {
  const fs::path path = temp_path(name);
  kiln::gguf::Writer w;
  using kiln::gguf::MetaValue;
  const size_t hd = s.dim / s.heads, kv = hd * s.kv_heads;
  w.set("general.architecture", MetaValue::string("llama"));
  w.set("llama.context_length", MetaValue::u32(uint32_t(s.ctx)));
  w.set("llama.embedding_length", MetaValue::u32(uint32_t(s.dim)));
  w.set("llama.block_count", MetaValue::u32(uint32_t(s.layers)));
  w.set("llama.feed_forward_length", MetaValue::u32(uint32_t(s.ffn)));
  w.set("llama.attention.head_count", MetaValue::u32(uint32_t(s.heads)));
  w.set("llama.attention.head_count_kv", MetaValue::u32(uint32_t(s.kv_heads)));
  w.set("llama.rope.freq_base", MetaValue::f32(10000.0f));
  w.set("llama.attention.layer_norm_rms_epsilon", MetaValue::f32(1e-5f));
  uint32_t seed = 1;
  auto add = [&](const std::string& tensor, size_t cols, size_t rows, float mean, float sd,
                 GgmlType type) {
    w.add_tensor(
        tensor, type, rows == 1 ? std::vector<uint64_t>{cols} : std::vector<uint64_t>{cols, rows},
        [=](std::span<std::byte> out) {
          const size_t rb = kiln::row_bytes(type, cols);
          for (size_t r = 0; r < rows; ++r) {
            const auto v = kiln::cuda::testing::random_floats(cols, seed * 7919 + r, mean, sd);
            kiln::kernels::quantize_row(type, v, out.subspan(r * rb, rb));
          }
        });
    ++seed;
  };
  const float inv = 1.0f / std::sqrt(float(s.dim));
  const GgmlType mt = s.matrix_type;
  add("token_embd.weight", s.dim, s.vocab, 0, 1, s.embd_type);
  if (s.rope_freqs) add("rope_freqs.weight", hd / 2, 1, 2.0f, 0.5f, GgmlType::F32);
  for (size_t l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", s.dim, 1, 1.0f, 0.1f, GgmlType::F32);
    add(p + "attn_q.weight", s.dim, s.dim, 0, 2 * inv, mt);
    add(p + "attn_k.weight", s.dim, kv, 0, 2 * inv, mt);
    add(p + "attn_v.weight", s.dim, kv, 0, inv, mt);
    add(p + "attn_output.weight", s.dim, s.dim, 0, inv, mt);
    add(p + "ffn_norm.weight", s.dim, 1, 1.0f, 0.1f, GgmlType::F32);
    add(p + "ffn_gate.weight", s.dim, s.ffn, 0, inv, mt);
    add(p + "ffn_up.weight", s.dim, s.ffn, 0, inv, mt);
    add(p + "ffn_down.weight", s.ffn, s.dim, 0, 1.0f / std::sqrt(float(s.ffn)), mt);
  }
  add("output_norm.weight", s.dim, 1, 1.0f, 0.1f, GgmlType::F32);
  if (!s.tied) add("output.weight", s.dim, s.vocab, 0, 3 * inv, mt);
  w.write(path);
  return path;
}

struct Agreement {
  size_t rows = 0, top1_same = 0;
  double kl_sum = 0;
  double top1_rate() const { return rows ? double(top1_same) / double(rows) : 1.0; }
  double mean_kl() const { return rows ? kl_sum / double(rows) : 0.0; }
};

// Adds rows of (n_vocab) logits: top-1 agreement (a near-tie in the CPU logits, within
// 1e-3, counts as agreeing) and KL(softmax(cpu) || softmax(cuda)).
void compare_rows(std::span<const float> cpu, std::span<const float> gpu, size_t vocab,
                  Agreement& a) {
  ASSERT_EQ(cpu.size(), gpu.size());
  ASSERT_TRUE(kiln::cuda::testing::all_finite(gpu));
  for (size_t r = 0; r < cpu.size() / vocab; ++r) {
    const auto c = cpu.subspan(r * vocab, vocab), g = gpu.subspan(r * vocab, vocab);
    const size_t top_c = size_t(std::max_element(c.begin(), c.end()) - c.begin());
    const size_t top_g = size_t(std::max_element(g.begin(), g.end()) - g.begin());
    a.top1_same += (top_c == top_g || c[top_c] - c[top_g] < 1e-3f) ? 1 : 0;
    const double mc = c[top_c], mg = g[top_g];
    double zc = 0, zg = 0;
    for (size_t i = 0; i < vocab; ++i) {
      zc += std::exp(double(c[i]) - mc);
      zg += std::exp(double(g[i]) - mg);
    }
    double kl = 0;
    for (size_t i = 0; i < vocab; ++i) {
      const double lp = double(c[i]) - mc - std::log(zc), lq = double(g[i]) - mg - std::log(zg);
      kl += std::exp(lp) * (lp - lq);
    }
    a.kl_sum += kl;
    ++a.rows;
  }
}

std::vector<int32_t> some_tokens(size_t n, size_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& v : t) v = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Prefill `prompt` with every row's logits, then `steps` decode steps fed the CPU's greedy
// token, on the CPU reference and on `candidate`.
//
// The CPU reference runs with int16 activations (--precise): the CUDA kernels keep
// activations in float (decode) or fp16 (tensor cores), so the CPU's int8 default would be
// the less accurate of the two and the comparison would measure its rounding, not the CUDA
// kernels'.
template <typename Candidate>
Agreement against_precise_cpu(const Model& model, const EngineOptions& opt, Candidate& candidate,
                              size_t prompt_len, size_t steps) {
  EngineOptions precise = opt;
  precise.act_precision = kiln::kernels::ActPrecision::int16;
  Engine cpu(model, precise);
  const size_t vocab = model.config().n_vocab;
  const auto prompt = some_tokens(prompt_len, vocab, 5);
  Agreement a;
  std::vector<float> cpu_all, other_all;
  cpu.eval(0, prompt, true, &cpu_all);
  candidate.eval(0, prompt, true, &other_all);
  compare_rows(cpu_all, other_all, vocab, a);
  int32_t token = prompt.back();
  for (size_t s = 0; s < steps; ++s) {
    const auto last = std::span<const float>(cpu_all).subspan(cpu_all.size() - vocab);
    token = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    const std::vector<int32_t> one{token};
    const auto c = cpu.eval(0, one, false);
    cpu_all.assign(c.begin(), c.end());
    const auto g = candidate.eval(0, one, false);
    compare_rows(cpu_all, g, vocab, a);
  }
  return a;
}

Agreement run_both(const Model& model, const EngineOptions& opt, size_t prompt_len, size_t steps) {
  CudaEngine gpu(model, opt);
  return against_precise_cpu(model, opt, gpu, prompt_len, steps);
}

class CudaEngineVsCpu : public ::testing::TestWithParam<Spec> {};

TEST_P(CudaEngineVsCpu, LogitsAgree) {
  KILN_REQUIRE_CUDA_DEVICE();
  const Spec s = GetParam();
  const fs::path path = write_model(s, "vs_cpu.gguf");
  const Model model = Model::load(path);
  EngineOptions opt;
  opt.max_batch = 64;  // the 150-token prompt takes three chunks: tiled attention over a cache
  opt.n_threads = 2;
  const Agreement a = run_both(model, opt, 150, 20);
  fs::remove(path);
  EXPECT_GE(a.top1_rate(), 0.99) << a.top1_same << " of " << a.rows;
  EXPECT_LT(a.mean_kl(), 1e-3);
}

Spec typed(GgmlType t, bool tied = false, bool freqs = false) {
  Spec s;
  s.matrix_type = t;
  s.tied = tied;
  s.rope_freqs = freqs;
  return s;
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, CudaEngineVsCpu,
                         ::testing::Values(typed(GgmlType::F16), typed(GgmlType::Q8_0, true),
                                           typed(GgmlType::Q4_0),
                                           typed(GgmlType::Q4_1, false, true),
                                           typed(GgmlType::Q5_0), typed(GgmlType::Q4_K),
                                           typed(GgmlType::Q6_K, true, true)),
                         [](const auto& info) {
                           return std::string(type_name(info.param.matrix_type)) +
                                  (info.param.tied ? "_tied" : "") +
                                  (info.param.rope_freqs ? "_freqs" : "");
                         });

// With --precise every decode size takes the mma kernel: a batch of 3 sequences gives each
// the logits it gets alone.
TEST(CudaEngine, PreciseBatchedDecodeOfSeveralSequencesEqualsEachAloneAndGraphsEqualDirect) {
  KILN_REQUIRE_CUDA_DEVICE();
  const fs::path path = write_model(typed(GgmlType::Q4_K), "batched.gguf");
  const Model model = Model::load(path);
  EngineOptions opt;
  opt.n_seq = 3;
  opt.max_batch = 32;
  opt.act_precision = kiln::kernels::ActPrecision::int16;  // --precise: batch-invariant decode
  CudaEngine batched(model, opt), alone(model, opt);
  alone.set_use_graphs(false);
  const size_t vocab = model.config().n_vocab;
  // Different prompt lengths per sequence, then 5 steps of one token each, all in one batch.
  for (int32_t s = 0; s < 3; ++s) {
    const auto prompt = some_tokens(5 + 7 * size_t(s), vocab, 10 + s);
    batched.eval(size_t(s), prompt, false);
    alone.eval(size_t(s), prompt, false);
  }
  for (int step = 0; step < 5; ++step) {
    Batch b;
    std::vector<int32_t> toks;
    for (int32_t s = 0; s < 3; ++s) {
      toks.push_back(static_cast<int32_t>((step * 31 + s * 17) % int(vocab)));
      b.add(s, static_cast<int32_t>(batched.seq_length(size_t(s))), toks.back(), true);
    }
    const auto together = batched.forward(b);
    const std::vector<float> together_copy(together.begin(), together.end());
    for (int32_t s = 0; s < 3; ++s) {
      const std::vector<int32_t> one{toks[size_t(s)]};
      const auto single = alone.eval(size_t(s), one, false);
      for (size_t i = 0; i < vocab; ++i) {
        ASSERT_NEAR(together_copy[size_t(s) * vocab + i], single[i], 1e-4f)
            << "step " << step << " seq " << s << " token " << i;
      }
    }
  }
  fs::remove(path);
}

// Without batch invariance a lone token of the K types runs the int8 kernel and a batch the
// mma kernel (fp16 x): they agree in the top-1 token (>= 99%) and within what int8 activations
// cost (mean KL < 5e-3: the CPU's int8 path is at 2.7e-3 / 5.1e-3 on the default Q4_1 /
// Q4_K_M model against float64, llama.cpp at 2.8e-3 / 5.0e-3; measured here 2.6e-3); graph
// replay still equals direct launches exactly.
TEST(CudaEngine, DefaultDecodeAloneAgreesWithBatchedAndGraphsEqualDirect) {
  KILN_REQUIRE_CUDA_DEVICE();
  const fs::path path = write_model(typed(GgmlType::Q4_K), "default-decode.gguf");
  const Model model = Model::load(path);
  EngineOptions opt;
  opt.n_seq = 3;
  opt.max_batch = 32;
  CudaEngine batched(model, opt), alone(model, opt), direct(model, opt);
  direct.set_use_graphs(false);
  const size_t vocab = model.config().n_vocab;
  for (int32_t s = 0; s < 3; ++s) {
    const auto prompt = some_tokens(6 + 5 * size_t(s), vocab, 20 + s);
    batched.eval(size_t(s), prompt, false);
    alone.eval(size_t(s), prompt, false);
    direct.eval(size_t(s), prompt, false);
  }
  Agreement a;
  for (int step = 0; step < 5; ++step) {
    Batch b;
    std::vector<int32_t> toks;
    for (int32_t s = 0; s < 3; ++s) {
      toks.push_back(static_cast<int32_t>((step * 37 + s * 13) % int(vocab)));
      b.add(s, static_cast<int32_t>(batched.seq_length(size_t(s))), toks.back(), true);
    }
    const auto together = batched.forward(b);
    const std::vector<float> together_copy(together.begin(), together.end());
    for (int32_t s = 0; s < 3; ++s) {
      const std::vector<int32_t> one{toks[size_t(s)]};
      const auto graphed = alone.eval(size_t(s), one, false);
      const std::vector<float> graphed_copy(graphed.begin(), graphed.end());
      const auto plain = direct.eval(size_t(s), one, false);
      for (size_t i = 0; i < vocab; ++i) {
        ASSERT_EQ(graphed_copy[i], plain[i]) << "step " << step << " seq " << s << " token " << i;
      }
      compare_rows(std::span(together_copy).subspan(size_t(s) * vocab, vocab), graphed_copy, vocab,
                   a);
    }
  }
  EXPECT_GE(a.top1_rate(), 0.99);
  EXPECT_LT(a.mean_kl(), 5e-3);
  fs::remove(path);
}

TEST(CudaEngine, DefaultModelMatchesCpu) {
  KILN_REQUIRE_CUDA_DEVICE();
  const fs::path path = fs::path(KILN_SOURCE_DIR) / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << "default model not present: " << path;
  const Model model = Model::load(path);
  EngineOptions opt;
  opt.n_ctx = 512;
  opt.max_batch = 128;
  const Agreement a = run_both(model, opt, 200, 40);
  EXPECT_GE(a.top1_rate(), 0.99) << a.top1_same << " of " << a.rows;
  EXPECT_LT(a.mean_kl(), 1e-3);
}

// KILN_CUDA_TEST_MODEL: any other model (a GPU machine may hold only synthetic ones). Deep
// models with random weights amplify every rounding difference layer by layer (on the
// default model's shape the CPU's own int8 path is at KL 0.12, top-1 25% from its precise
// path), so the bound is relative: the CUDA forward must be at least as close to the
// precise CPU forward as the CPU's default int8 forward is.
TEST(CudaEngine, OtherModelAtLeastAsCloseAsCpuInt8) {
  KILN_REQUIRE_CUDA_DEVICE();
  const char* other = std::getenv("KILN_CUDA_TEST_MODEL");
  if (other == nullptr || *other == '\0') GTEST_SKIP() << "KILN_CUDA_TEST_MODEL not set";
  const Model model = Model::load(other);
  EngineOptions opt;
  opt.n_ctx = 512;
  opt.max_batch = 128;
  const Agreement gpu = run_both(model, opt, 200, 40);
  Engine int8(model, opt);
  const Agreement cpu = against_precise_cpu(model, opt, int8, 200, 40);
  std::printf("vs precise CPU: CUDA KL %.3g top-1 %.2f%%, CPU int8 KL %.3g top-1 %.2f%%\n",
              gpu.mean_kl(), 100 * gpu.top1_rate(), cpu.mean_kl(), 100 * cpu.top1_rate());
  EXPECT_LE(gpu.mean_kl(), cpu.mean_kl());
  EXPECT_GE(gpu.top1_rate(), cpu.top1_rate());
}

TEST(CudaEngineErrors, MissingGpuOrUnsupportedOptionsAreNamed) {
  const fs::path path = write_model(typed(GgmlType::F16), "errors.gguf");
  const Model model = Model::load(path);
  EngineOptions q8;
  q8.kv_type = GgmlType::Q8_0;
  try {
    CudaEngine e(model, q8);
    ADD_FAILURE() << "a q8_0 KV cache was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("f16"), std::string::npos) << e.what();
  }
  if (kiln::cuda::cuda_device_count() == 0) {
    try {
      CudaEngine e(model, EngineOptions{});
      ADD_FAILURE() << "a CUDA engine was built without a GPU";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
    }
  } else {
    // A context far too large for any GPU: the error names what was needed and what was free.
    EngineOptions huge;
    huge.n_ctx = 1u << 20;
    huge.n_seq = 4096;
    try {
      CudaEngine e(model, huge);
      ADD_FAILURE() << "an impossible KV cache was accepted";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("MiB free"), std::string::npos) << e.what();
    }
  }
  fs::remove(path);
}

}  // namespace
