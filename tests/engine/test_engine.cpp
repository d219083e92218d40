// Engine tests on tiny models written with our GGUF writer: logits against a
// naive float64 forward written out below (independent of the engine's
// kernels), batching invariants, sequence management, load-time errors, and
// that forward() never allocates.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "gguf/writer.h"
#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "kernels/quants.h"
#include "tests/engine/alloc_counter.h"

namespace {

namespace fs = std::filesystem;
using kiln::Batch;
using kiln::Engine;
using kiln::EngineOptions;
using kiln::GgmlType;
using kiln::Model;

struct TinySpec {
  size_t vocab = 96, dim = 64, layers = 2, heads = 4, kv_heads = 2, ffn = 96, ctx = 128;
  size_t rope_dim = 0;  // 0: head_dim
  float rope_base = 10000.0f, eps = 1e-5f;
  bool tied = false, rope_freqs = false;
  std::string arch = "llama";
  std::string skip_tensor;       // leave this tensor out
  std::string bad_shape_tensor;  // write this one with one row too many
  size_t block_count = 0;        // llama.block_count written, when not 0 (else `layers`)
  size_t tokenizer_tokens = 0;   // tokenizer.ggml.tokens of this many tokens, when not 0
  GgmlType matrix_type = GgmlType::F32;
  // Quantized matrices: the oracle gets the dequantized values (else the unquantized ones).
  bool oracle_sees_quantized = false;
};

// The weights as float64, kept by the test as its own oracle input.
using Tensors = std::map<std::string, std::vector<double>>;

struct TinyModel {
  fs::path path;
  Tensors tensors;
};

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("kiln_engine_test_" + std::to_string(getpid()) + "_" + name);
}

TinyModel write_tiny_model(const TinySpec& s, const std::string& file_name, uint32_t seed = 7) {
  TinyModel m;
  m.path = temp_path(file_name);
  std::mt19937 rng(seed);
  kiln::gguf::Writer w;
  const size_t hd = s.dim / s.heads, kv = hd * s.kv_heads;
  w.set("general.architecture", kiln::gguf::MetaValue::string(s.arch));
  const std::string a = s.arch + ".";
  w.set(a + "context_length", kiln::gguf::MetaValue::u32(uint32_t(s.ctx)));
  w.set(a + "embedding_length", kiln::gguf::MetaValue::u32(uint32_t(s.dim)));
  w.set(a + "block_count",
        s.block_count > UINT32_MAX
            ? kiln::gguf::MetaValue::u64(s.block_count)
            : kiln::gguf::MetaValue::u32(uint32_t(s.block_count ? s.block_count : s.layers)));
  if (s.tokenizer_tokens) {
    std::vector<std::string> tokens(s.tokenizer_tokens);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = "t" + std::to_string(i);
    w.set("tokenizer.ggml.tokens", kiln::gguf::MetaValue::string_array(std::move(tokens)));
  }
  w.set(a + "feed_forward_length", kiln::gguf::MetaValue::u32(uint32_t(s.ffn)));
  w.set(a + "attention.head_count", kiln::gguf::MetaValue::u32(uint32_t(s.heads)));
  w.set(a + "attention.head_count_kv", kiln::gguf::MetaValue::u32(uint32_t(s.kv_heads)));
  if (s.rope_dim)
    w.set(a + "rope.dimension_count", kiln::gguf::MetaValue::u32(uint32_t(s.rope_dim)));
  w.set(a + "rope.freq_base", kiln::gguf::MetaValue::f32(s.rope_base));
  w.set(a + "attention.layer_norm_rms_epsilon", kiln::gguf::MetaValue::f32(s.eps));

  // Float32 storage that outlives write(); the oracle keeps the same values as double.
  static std::vector<std::vector<float>> storage;
  storage.clear();
  storage.reserve(64);
  static std::vector<std::vector<std::byte>> quantized;  // the same for quantized tensors
  quantized.clear();
  auto add = [&](const std::string& name, std::vector<uint64_t> ne, double mean, double sd,
                 GgmlType type) {
    if (name == s.skip_tensor) return;
    if (name == s.bad_shape_tensor) ne.back() += 1;
    size_t n = 1;
    for (auto v : ne) n *= v;
    std::normal_distribution<float> dist(0.0f, 1.0f);
    auto& data = storage.emplace_back(n);
    auto& ref = m.tensors[name];
    ref.resize(n);
    for (size_t i = 0; i < n; ++i) {
      data[i] = static_cast<float>(mean + sd * dist(rng));
      if (type == GgmlType::F16) {  // the oracle sees exactly what the file holds
        data[i] = static_cast<float>(static_cast<_Float16>(data[i]));
      }
      ref[i] = data[i];
    }
    if (type == GgmlType::F32) {
      w.add_tensor(name, type, ne, std::as_bytes(std::span<const float>(data)));
    } else if (type == GgmlType::F16) {
      w.add_tensor(name, type, ne, [src = std::span<const float>(data)](std::span<std::byte> out) {
        auto* h = reinterpret_cast<_Float16*>(out.data());
        for (size_t i = 0; i < src.size(); ++i) h[i] = static_cast<_Float16>(src[i]);
      });
    } else if (!s.oracle_sees_quantized) {  // the float64 oracle sees the unquantized values
      w.add_tensor(name, type, ne,
                   [src = std::span<const float>(data), type](std::span<std::byte> out) {
                     kiln::kernels::quantize_row(type, src, out);
                   });
    } else {  // the oracle sees the file's values: quantized, then dequantized as the spec says
      auto& q = quantized.emplace_back(kiln::row_bytes(type, n));
      kiln::kernels::quantize_row(type, data, q);
      std::vector<float> back(n);
      kiln::kernels::dequantize_row(type, q, back);
      std::copy(back.begin(), back.end(), ref.begin());
      w.add_tensor(name, type, ne, std::span<const std::byte>(q));
    }
  };
  const GgmlType mt = s.matrix_type;
  const double inv_dim = 1.0 / std::sqrt(double(s.dim));
  add("token_embd.weight", {s.dim, s.vocab}, 0, 1.0, mt);
  if (s.rope_freqs) {
    const size_t half = (s.rope_dim ? s.rope_dim : hd) / 2;
    auto& f = storage.emplace_back(half);
    auto& ref = m.tensors["rope_freqs.weight"];
    for (size_t i = 0; i < half; ++i) {
      f[i] = 1.0f + float(i) * 0.75f;
      ref.push_back(f[i]);
    }
    w.add_tensor("rope_freqs.weight", GgmlType::F32, {half},
                 std::as_bytes(std::span<const float>(f)));
  }
  for (size_t l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {s.dim}, 1.0, 0.1, GgmlType::F32);
    add(p + "attn_q.weight", {s.dim, s.dim}, 0, 2 * inv_dim, mt);
    add(p + "attn_k.weight", {s.dim, kv}, 0, 2 * inv_dim, mt);
    add(p + "attn_v.weight", {s.dim, kv}, 0, inv_dim, mt);
    add(p + "attn_output.weight", {s.dim, s.dim}, 0, inv_dim, mt);
    add(p + "ffn_norm.weight", {s.dim}, 1.0, 0.1, GgmlType::F32);
    add(p + "ffn_gate.weight", {s.dim, s.ffn}, 0, inv_dim, mt);
    add(p + "ffn_up.weight", {s.dim, s.ffn}, 0, inv_dim, mt);
    add(p + "ffn_down.weight", {s.ffn, s.dim}, 0, 1.0 / std::sqrt(double(s.ffn)), mt);
  }
  add("output_norm.weight", {s.dim}, 1.0, 0.1, GgmlType::F32);
  if (!s.tied) add("output.weight", {s.dim, s.vocab}, 0, 3 * inv_dim, mt);
  w.write(m.path);
  return m;
}

// y (rows,) = W (rows, cols) @ x (cols,), W stored row-major as GGUF [cols, rows].
std::vector<double> matvec(const std::vector<double>& w, const std::vector<double>& x,
                           size_t rows) {
  const size_t cols = x.size();
  std::vector<double> y(rows, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) y[r] += w[r * cols + c] * x[c];
  }
  return y;
}

std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<double>& w,
                            double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double s = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * s * w[i];
  return out;
}

// The oracle: the Llama forward over one token sequence, float64, naive loops.
// Returns logits (n_tokens, vocab).
std::vector<std::vector<double>> reference_forward(const TinySpec& s, const Tensors& t,
                                                   const std::vector<int32_t>& tokens) {
  const size_t hd = s.dim / s.heads, kvd = hd * s.kv_heads, rope_dim = s.rope_dim ? s.rope_dim : hd;
  const size_t n = tokens.size();
  std::vector<std::vector<double>> x(n);
  for (size_t i = 0; i < n; ++i) {
    const auto& e = t.at("token_embd.weight");
    x[i].assign(e.begin() + long(tokens[i] * s.dim), e.begin() + long((tokens[i] + 1) * s.dim));
  }
  auto rope = [&](std::vector<double>& v, size_t n_heads, size_t pos) {
    for (size_t h = 0; h < n_heads; ++h) {
      for (size_t i = 0; i < rope_dim / 2; ++i) {
        double theta =
            double(pos) * std::pow(double(s.rope_base), -2.0 * double(i) / double(rope_dim));
        if (s.rope_freqs) theta /= t.at("rope_freqs.weight")[i];
        const double a = v[h * hd + 2 * i], b = v[h * hd + 2 * i + 1];
        v[h * hd + 2 * i] = a * std::cos(theta) - b * std::sin(theta);
        v[h * hd + 2 * i + 1] = a * std::sin(theta) + b * std::cos(theta);
      }
    }
  };
  for (size_t l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (size_t i = 0; i < n; ++i) {
      const auto xb = rmsnorm(x[i], t.at(p + "attn_norm.weight"), s.eps);
      q[i] = matvec(t.at(p + "attn_q.weight"), xb, s.dim);
      k[i] = matvec(t.at(p + "attn_k.weight"), xb, kvd);
      v[i] = matvec(t.at(p + "attn_v.weight"), xb, kvd);
      rope(q[i], s.heads, i);
      rope(k[i], s.kv_heads, i);
    }
    for (size_t i = 0; i < n; ++i) {
      std::vector<double> att(s.dim, 0.0);
      for (size_t h = 0; h < s.heads; ++h) {
        const size_t g = h / (s.heads / s.kv_heads);
        std::vector<double> sc(i + 1);
        double mx = -1e300;
        for (size_t j = 0; j <= i; ++j) {
          double d = 0;
          for (size_t e = 0; e < hd; ++e) d += q[i][h * hd + e] * k[j][g * hd + e];
          sc[j] = d / std::sqrt(double(hd));
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (double& z : sc) sum += z = std::exp(z - mx);
        for (size_t j = 0; j <= i; ++j) {
          for (size_t e = 0; e < hd; ++e) att[h * hd + e] += sc[j] / sum * v[j][g * hd + e];
        }
      }
      const auto o = matvec(t.at(p + "attn_output.weight"), att, s.dim);
      for (size_t e = 0; e < s.dim; ++e) x[i][e] += o[e];
      const auto xb = rmsnorm(x[i], t.at(p + "ffn_norm.weight"), s.eps);
      auto gate = matvec(t.at(p + "ffn_gate.weight"), xb, s.ffn);
      const auto up = matvec(t.at(p + "ffn_up.weight"), xb, s.ffn);
      for (size_t e = 0; e < s.ffn; ++e) gate[e] = gate[e] / (1 + std::exp(-gate[e])) * up[e];
      const auto down = matvec(t.at(p + "ffn_down.weight"), gate, s.dim);
      for (size_t e = 0; e < s.dim; ++e) x[i][e] += down[e];
    }
  }
  std::vector<std::vector<double>> logits(n);
  const auto& out = t.at(s.tied ? "token_embd.weight" : "output.weight");
  for (size_t i = 0; i < n; ++i) {
    logits[i] = matvec(out, rmsnorm(x[i], t.at("output_norm.weight"), s.eps), s.vocab);
  }
  return logits;
}

std::vector<int32_t> some_tokens(size_t n, size_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& v : t) v = int32_t(rng() % vocab);
  return t;
}

double max_abs_diff(std::span<const float> a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

struct Variant {
  std::string name;
  TinySpec spec;
  GgmlType kv;
  double tolerance;
};

class EngineVsReference : public ::testing::TestWithParam<Variant> {};

TEST_P(EngineVsReference, LogitsMatchFloat64Oracle) {
  const Variant& v = GetParam();
  const TinyModel tiny = write_tiny_model(v.spec, v.name + ".gguf");
  const Model model = Model::load(tiny.path);
  const auto tokens = some_tokens(40, v.spec.vocab, 3);
  const auto ref = reference_forward(v.spec, tiny.tensors, tokens);
  for (int threads : {1, 2}) {
    // 16: the 40-token prompt runs in three chunks (prompt-sized batches, matmul per
    // weight); 3 and 1: decode-sized batches (grouped projections).
    for (size_t max_batch : {16, 3, 1}) {
      EngineOptions o;
      o.kv_type = v.kv;
      o.n_threads = threads;
      o.max_batch = max_batch;
      Engine engine(model, o);
      std::vector<float> all;
      engine.eval(0, tokens, true, &all);
      double worst = 0;
      for (size_t i = 0; i < tokens.size(); ++i) {
        worst =
            std::max(worst, max_abs_diff({all.data() + i * v.spec.vocab, v.spec.vocab}, ref[i]));
      }
      EXPECT_LT(worst, v.tolerance) << v.name << " threads " << threads << " batch " << max_batch;
    }
  }
  fs::remove(tiny.path);
}

TinySpec gqa_spec() { return {}; }
TinySpec mha_tied_spec() {
  TinySpec s;
  s.kv_heads = 4;
  s.tied = true;
  return s;
}
TinySpec rope_freqs_spec() {
  TinySpec s;
  s.rope_freqs = true;
  s.rope_base = 500000.0f;
  return s;
}
TinySpec partial_rope_spec() {
  TinySpec s;
  s.rope_dim = 8;
  s.heads = 2;
  s.kv_heads = 1;
  return s;
}
TinySpec wide_head_spec() {  // head_dim 32: what a q8_0 cache needs
  TinySpec s;
  s.heads = 2;
  s.kv_heads = 1;
  return s;
}
TinySpec f16_spec() {
  TinySpec s;
  s.matrix_type = GgmlType::F16;
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, EngineVsReference,
    ::testing::Values(Variant{"gqa_f32kv", gqa_spec(), GgmlType::F32, 1e-3},
                      Variant{"mha_tied_f32kv", mha_tied_spec(), GgmlType::F32, 1e-3},
                      Variant{"rope_freqs_f32kv", rope_freqs_spec(), GgmlType::F32, 1e-3},
                      Variant{"partial_rope_f32kv", partial_rope_spec(), GgmlType::F32, 1e-3},
                      Variant{"f16_weights_f32kv", f16_spec(), GgmlType::F32, 1e-3},
                      // A lossy cache shifts logits by its rounding, so looser bounds.
                      Variant{"gqa_f16kv", gqa_spec(), GgmlType::F16, 2e-2},
                      Variant{"wide_head_q8kv", wide_head_spec(), GgmlType::Q8_0, 0.3}),
    [](const auto& info) { return info.param.name; });

// A lone token over more than 512 positions of an F16 cache has its attention split over
// chunks of positions and the pieces combined (engine.cpp, kSplitMinPositions). Decoded one
// token per call (max_batch 1: every row lone, split from position 512 on) it must match the
// float64 oracle as the unsplit F16 path does, and match the rows of the same positions
// computed unsplit (prompt pieces of 64 rows, whose attention runs in tiles of 8 rows) far
// more closely than the cache's rounding; the tiled rows match the oracle too.
TEST(EngineLongContext, SplitAndTiledAttentionMatchOracleAndEachOther) {
  TinySpec spec;
  spec.ctx = 1024;
  const TinyModel tiny = write_tiny_model(spec, "long_context.gguf");
  const Model model = Model::load(tiny.path);
  const size_t n_tokens = 1000;  // up to 4 chunks of 256
  const auto tokens = some_tokens(n_tokens, spec.vocab, 11);
  const auto ref = reference_forward(spec, tiny.tensors, tokens);
  std::vector<std::vector<float>> runs;
  for (size_t max_batch : {1, 64}) {
    EngineOptions o;
    o.kv_type = GgmlType::F16;
    o.n_threads = 2;
    o.max_batch = max_batch;
    Engine engine(model, o);
    runs.emplace_back();
    engine.eval(0, tokens, true, &runs.back());
  }
  double worst_ref = 0, worst_pair = 0, worst_tiled_ref = 0;
  for (size_t i = 0; i < n_tokens; ++i) {
    const std::span<const float> split{runs[0].data() + i * spec.vocab, spec.vocab};
    const std::span<const float> whole{runs[1].data() + i * spec.vocab, spec.vocab};
    worst_ref = std::max(worst_ref, max_abs_diff(split, ref[i]));
    worst_tiled_ref = std::max(worst_tiled_ref, max_abs_diff(whole, ref[i]));
    for (size_t v = 0; v < spec.vocab; ++v) {
      ASSERT_TRUE(std::isfinite(split[v])) << "position " << i;
      worst_pair = std::max(worst_pair, double(std::fabs(split[v] - whole[v])));
    }
  }
  EXPECT_LT(worst_ref, 2e-2);
  EXPECT_LT(worst_tiled_ref, 2e-2);
  // Lone rows and prompt pieces also take different matmul kernels (dot products against
  // GEMM panels), whose float rounding orders differ: worst pair 7.9e-4 with the AVX-512 and
  // portable kernels, 1.4e-3 under KILN_ISA=avx2; an error in the split's merge would be of
  // the order of the oracle bound or more.
  EXPECT_LT(worst_pair, 2e-3);
  fs::remove(tiny.path);
}

class EngineFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    tiny_ = write_tiny_model(spec_, "fixture.gguf");
    model_ = std::make_unique<Model>(Model::load(tiny_.path));
  }
  void TearDown() override {
    model_.reset();
    fs::remove(tiny_.path);
  }
  TinySpec spec_;
  TinyModel tiny_;
  std::unique_ptr<Model> model_;
};

TEST_F(EngineFixture, BatchedDecodeOfSeveralSequencesEqualsEachAlone) {
  const size_t n_seq = 3;
  std::vector<std::vector<int32_t>> prompts;
  for (size_t s = 0; s < n_seq; ++s) prompts.push_back(some_tokens(5 + 3 * s, spec_.vocab, 10 + s));
  const auto next = some_tokens(n_seq * 4, spec_.vocab, 99);

  // Alone: each sequence in its own engine, token by token.
  std::vector<std::vector<std::vector<float>>> alone(n_seq);
  for (size_t s = 0; s < n_seq; ++s) {
    EngineOptions o;
    o.kv_type = GgmlType::F32;
    Engine e(*model_, o);
    e.eval(0, prompts[s], false);
    for (size_t step = 0; step < 4; ++step) {
      const int32_t tok = next[step * n_seq + s];
      auto l = e.eval(0, std::span(&tok, 1), false);
      alone[s].emplace_back(l.begin(), l.end());
    }
  }

  // Together: prompts of all sequences in one batch, then one token of each per step.
  EngineOptions o;
  o.kv_type = GgmlType::F32;
  o.n_seq = n_seq;
  o.n_threads = 2;
  Engine e(*model_, o);
  Batch batch;
  for (size_t s = 0; s < n_seq; ++s) {
    for (size_t p = 0; p < prompts[s].size(); ++p) {
      batch.add(int32_t(s), int32_t(p), prompts[s][p], p + 1 == prompts[s].size());
    }
  }
  EXPECT_EQ(e.forward(batch).size(), n_seq * spec_.vocab);
  for (size_t step = 0; step < 4; ++step) {
    batch.clear();
    for (size_t s = 0; s < n_seq; ++s) {
      batch.add(int32_t(s), int32_t(prompts[s].size() + step), next[step * n_seq + s], true);
    }
    e.forward(batch);
    for (size_t s = 0; s < n_seq; ++s) {
      const auto row = e.logits_row(s);
      for (size_t v = 0; v < spec_.vocab; ++v) {
        ASSERT_NEAR(row[v], alone[s][step][v], 1e-4) << "seq " << s << " step " << step;
      }
    }
  }
}

// The engine picks the GEMM or the per-row kernels by a sequence's own run of rows, never by
// the batch's size. With quantized weights the two paths round differently, so this is what
// keeps a sequence's logits bit-identical alone and beside others (the server's temperature-0
// outputs rely on it): prompts of 12 tokens (GEMM runs) and then decode steps of 10
// sequences at once (10 rows, but runs of one: per-row kernels, as a single token alone).
// With batch_gemm the 10 decode rows go through the GEMM and a lone token through its
// few-token twin, which must agree bit for bit.
void check_batch_invariance(kiln::kernels::BatchGemm batch_gemm, bool resident = false,
                            GgmlType type = GgmlType::Q8_0, size_t prompt_len = 12,
                            size_t n_seq = 10) {
  TinySpec spec;
  spec.matrix_type = type;
  if (kiln::traits(type).block_elements == 256) spec.dim = spec.ffn = 256;
  const size_t steps = 3;
  spec.ctx = std::max<size_t>(spec.ctx, prompt_len + steps);
  const TinyModel tiny = write_tiny_model(spec, "invariance.gguf");
  const Model model = Model::load(tiny.path);
  std::vector<std::vector<int32_t>> prompts;
  for (size_t s = 0; s < n_seq; ++s) prompts.push_back(some_tokens(prompt_len, spec.vocab, 40 + s));
  const auto next = some_tokens(n_seq * steps, spec.vocab, 7);

  // Alone: one engine per sequence, the prompt in one call, then one token per call.
  std::vector<std::vector<std::vector<float>>> alone(n_seq);
  for (size_t s = 0; s < n_seq; ++s) {
    EngineOptions o;
    o.n_threads = 2;
    o.batch_gemm = batch_gemm;
    o.resident_weights = resident;
    Engine e(model, o);
    // Resident weights get pre-packed panels where the CPU has them.
    if (resident && kiln::kernels::packed_panels_bytes(type, 32, spec.dim) > 0) {
      EXPECT_FALSE(e.weights().layers[0].ffn_up.panels.empty());
    }
    auto l = e.eval(0, prompts[s], false);
    alone[s].emplace_back(l.begin(), l.end());
    for (size_t step = 0; step < steps; ++step) {
      const int32_t tok = next[step * n_seq + s];
      l = e.eval(0, std::span(&tok, 1), false);
      alone[s].emplace_back(l.begin(), l.end());
    }
  }

  EngineOptions o;
  o.n_threads = 2;
  o.n_seq = n_seq;
  o.max_batch = std::max<size_t>(o.max_batch, n_seq * prompt_len);
  o.batch_gemm = batch_gemm;
  o.resident_weights = resident;
  Engine e(model, o);
  Batch batch;
  for (size_t s = 0; s < n_seq; ++s) {
    for (size_t p = 0; p < prompt_len; ++p) {
      batch.add(int32_t(s), int32_t(p), prompts[s][p], p + 1 == prompt_len);
    }
  }
  e.forward(batch);
  const auto expect_same = [&](size_t s, size_t step) {
    const auto row = e.logits_row(s);
    const auto& want = alone[s][step];
    ASSERT_EQ(row.size(), want.size());
    EXPECT_EQ(std::memcmp(row.data(), want.data(), want.size() * sizeof(float)), 0)
        << "sequence " << s << ", step " << step;
  };
  for (size_t s = 0; s < n_seq; ++s) expect_same(s, 0);
  for (size_t step = 0; step < steps; ++step) {
    batch.clear();
    for (size_t s = 0; s < n_seq; ++s) {
      batch.add(int32_t(s), int32_t(prompt_len + step), next[step * n_seq + s], true);
    }
    e.forward(batch);
    for (size_t s = 0; s < n_seq; ++s) expect_same(s, step + 1);
  }
  fs::remove(tiny.path);
}

TEST(EngineBatchInvariance, QuantizedLogitsAreBitIdenticalAloneAndBatched) {
  check_batch_invariance(kiln::kernels::BatchGemm::off);
}

TEST(EngineBatchInvariance, SameWithBatchGemmAuto) {
  check_batch_invariance(kiln::kernels::BatchGemm::fast);
}

TEST(EngineBatchInvariance, SameWithBatchGemmAll) {
  check_batch_invariance(kiln::kernels::BatchGemm::all);
}

TEST(EngineBatchInvariance, SameWithPrePackedPanels) {
  check_batch_invariance(kiln::kernels::BatchGemm::fast, /*resident=*/true);
}

// Pre-packed K panels are read for every m (one token too) under auto.
TEST(EngineBatchInvariance, SameWithPrePackedKPanels) {
  check_batch_invariance(kiln::kernels::BatchGemm::fast, /*resident=*/true, GgmlType::Q4_K);
  check_batch_invariance(kiln::kernels::BatchGemm::fast, /*resident=*/true, GgmlType::Q6_K);
}

// Decode steps past 512 positions split their attention over positions: still the same
// alone and batched (the chunks depend on the position count only).
TEST(EngineBatchInvariance, SameWithAttentionSplitOverLongContexts) {
  check_batch_invariance(kiln::kernels::BatchGemm::fast, /*resident=*/false, GgmlType::Q8_0,
                         /*prompt_len=*/700, /*n_seq=*/3);
}

TEST_F(EngineFixture, TruncateThenReevaluateGivesSameLogits) {
  EngineOptions o;
  o.kv_type = GgmlType::F32;
  Engine e(*model_, o);
  const auto tokens = some_tokens(12, spec_.vocab, 5);
  auto first = e.eval(0, tokens, false);
  const std::vector<float> expected(first.begin(), first.end());
  e.truncate(0, 7);
  EXPECT_EQ(e.seq_length(0), 7u);
  auto again = e.eval(0, std::span(tokens).subspan(7), false);
  for (size_t v = 0; v < spec_.vocab; ++v) ASSERT_NEAR(again[v], expected[v], 1e-5);
  e.clear(0);
  EXPECT_EQ(e.seq_length(0), 0u);
  auto fresh = e.eval(0, tokens, false);
  for (size_t v = 0; v < spec_.vocab; ++v) ASSERT_NEAR(fresh[v], expected[v], 1e-5);
  EXPECT_THROW(e.truncate(0, 13), std::out_of_range);
}

TEST_F(EngineFixture, CopiedPrefixContinuesLikeTheOriginal) {
  EngineOptions o;
  o.kv_type = GgmlType::F32;
  o.n_seq = 3;
  Engine e(*model_, o);
  const auto tokens = some_tokens(12, spec_.vocab, 6);
  auto whole = e.eval(0, tokens, false);
  const std::vector<float> expected(whole.begin(), whole.end());
  // Sequence 2 takes 7 positions of sequence 0 and computes only the rest.
  e.copy_prefix(0, 2, 7);
  EXPECT_EQ(e.seq_length(2), 7u);
  EXPECT_EQ(e.seq_length(0), 12u);
  auto rest = e.eval(2, std::span(tokens).subspan(7), false);
  for (size_t v = 0; v < spec_.vocab; ++v) ASSERT_NEAR(rest[v], expected[v], 1e-5);
  EXPECT_THROW(e.copy_prefix(0, 0, 3), std::out_of_range);  // onto itself
  EXPECT_THROW(e.copy_prefix(1, 2, 1), std::out_of_range);  // more than sequence 1 holds
  EXPECT_THROW(e.copy_prefix(0, 3, 2), std::out_of_range);  // no such slot
  EXPECT_EQ(e.seq_length(2), 12u);                          // the failed copies changed nothing
}

TEST_F(EngineFixture, ResidentWeightsAreACopyWithTheSameLogits) {
  const auto tokens = some_tokens(12, spec_.vocab, 21);
  std::vector<std::vector<float>> logits;
  for (bool resident : {false, true}) {
    EngineOptions o;
    o.resident_weights = resident;
    o.n_threads = 2;
    Engine e(*model_, o);
    const auto& mapped = model_->weights();
    const auto& used = e.weights();
    // Resident: every view points into the engine's own copy, not the file mapping.
    EXPECT_EQ(used.layers[1].ffn_down.data.data() == mapped.layers[1].ffn_down.data.data(),
              !resident);
    EXPECT_EQ(used.output_norm.data() == mapped.output_norm.data(), !resident);
    ASSERT_EQ(used.layers[1].ffn_down.data.size(), mapped.layers[1].ffn_down.data.size());
    EXPECT_TRUE(
        std::equal(used.output.data.begin(), used.output.data.end(), mapped.output.data.begin()));
    std::vector<float> all;
    e.eval(0, tokens, true, &all);
    logits.push_back(all);
  }
  EXPECT_EQ(logits[0], logits[1]);
}

TEST_F(EngineFixture, ForwardNeverAllocates) {
  EngineOptions o;
  o.n_seq = 2;
  o.n_threads = 2;
  o.max_batch = 8;
  Engine e(*model_, o);
  Batch prompt, decode;
  for (int p = 0; p < 8; ++p) prompt.add(0, p, p, p == 7);
  decode.add(0, 8, 3, true);
  decode.add(1, 0, 4, true);
  decode.entries.reserve(8);
  const size_t before = kiln::test::allocation_count();
  e.forward(prompt);
  e.forward(decode);
  EXPECT_EQ(kiln::test::allocation_count(), before) << "forward() allocated";
}

TEST_F(EngineFixture, BadBatchesAreRejectedWithoutChangingState) {
  EngineOptions o;
  o.n_ctx = 6;
  o.max_batch = 4;
  Engine e(*model_, o);
  Batch b;
  b.add(1, 0, 1, true);
  EXPECT_THROW(e.forward(b), std::invalid_argument);  // no sequence 1
  b.clear();
  b.add(0, 1, 1, true);
  EXPECT_THROW(e.forward(b), std::invalid_argument);  // gap: position 0 not written
  b.clear();
  b.add(0, 0, int32_t(spec_.vocab), true);
  EXPECT_THROW(e.forward(b), std::invalid_argument);  // token out of range
  b.clear();
  for (int p = 0; p < 5; ++p) b.add(0, p, 1, false);
  EXPECT_THROW(e.forward(b), std::invalid_argument);  // over max_batch
  EXPECT_EQ(e.seq_length(0), 0u);
  const auto tokens = some_tokens(6, spec_.vocab, 1);
  e.eval(0, tokens, false);
  EXPECT_EQ(e.seq_length(0), 6u);
  try {
    const int32_t one = 1;
    e.eval(0, std::span(&one, 1), false);
    FAIL() << "expected a context-full error";
  } catch (const std::invalid_argument& err) {
    EXPECT_NE(std::string(err.what()).find("context full"), std::string::npos) << err.what();
  }
}

void expect_load_error(const TinySpec& spec, const std::string& needle) {
  const TinyModel tiny = write_tiny_model(spec, "bad.gguf");
  try {
    Model::load(tiny.path);
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  fs::remove(tiny.path);
}

TEST(EngineLoad, ErrorsNameTheProblem) {
  TinySpec s;
  s.arch = "gpt2";
  expect_load_error(s, "architecture 'gpt2' is not supported; kiln runs: llama");
  s = {};
  s.skip_tensor = "blk.1.ffn_up.weight";
  expect_load_error(s, "missing tensor 'blk.1.ffn_up.weight'");
  s = {};
  s.bad_shape_tensor = "blk.0.attn_k.weight";
  expect_load_error(s, "'blk.0.attn_k.weight' has shape [64, 33], the config expects [64, 32]");
  s = {};
  s.skip_tensor = "output.weight";  // absent output: tied to the embedding, not an error
  const TinyModel tiny = write_tiny_model(s, "tied.gguf");
  EXPECT_TRUE(Model::load(tiny.path).weights().tied_output);
  fs::remove(tiny.path);
}

// llama.block_count is checked against the blk.N tensors before anything is sized by it: a
// hostile 10^12 used to die in the layer vector's resize (std::bad_alloc), and 10^7 took
// gigabytes and seconds before the first missing tensor was found.
TEST(EngineLoad, BlockCountMustMatchTheTensors) {
  TinySpec s;
  s.block_count = 1000000000000;
  const auto start = std::chrono::steady_clock::now();
  expect_load_error(s, "'llama.block_count' is 1000000000000 but the file's tensors hold 2 blocks");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  s.block_count = 3;
  expect_load_error(s, "(blk.N.* with N up to 1)");
  s.block_count = 1;  // fewer blocks than the file holds would skip layers silently
  expect_load_error(s, "'llama.block_count' is 1 but the file's tensors hold 2 blocks");
  s = {};
  s.layers = 3;
  s.skip_tensor = "blk.1.attn_norm.weight";  // still 3 blocks: the missing tensor is named
  expect_load_error(s, "missing tensor 'blk.1.attn_norm.weight'");
}

// A NaN, infinite, zero or negative epsilon or RoPE base makes every logit NaN: refused at
// load, naming the key and the value.
TEST(EngineLoad, HyperParametersMustBeFiniteAndPositive) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (float eps : {nan, -1e-5f, 0.0f, inf}) {
    TinySpec s;
    s.eps = eps;
    std::ostringstream v;
    v << eps;
    expect_load_error(s, "metadata 'llama.attention.layer_norm_rms_epsilon' is " + v.str() +
                             ", expected a finite number > 0");
  }
  for (float base : {nan, -10000.0f, 0.0f, inf}) {
    TinySpec s;
    s.rope_base = base;
    std::ostringstream v;
    v << base;
    expect_load_error(
        s, "metadata 'llama.rope.freq_base' is " + v.str() + ", expected a finite number > 0");
  }
}

// Every row of the output can be sampled, so the tokenizer needs a token for each: a shorter
// vocabulary is refused at load, not at the first sampled id past its end.
TEST(EngineLoad, TokenizerMustCoverEveryEmbeddingRow) {
  TinySpec s;  // 96 rows
  s.tokenizer_tokens = 50;
  expect_load_error(s, "tokenizer.ggml.tokens has 50 tokens, fewer than the 96 rows");
  s.tokenizer_tokens = 96;
  const TinyModel tiny = write_tiny_model(s, "vocab96.gguf");
  EXPECT_EQ(Model::load(tiny.path).config().n_vocab, 96u);
  fs::remove(tiny.path);
}

// ---- The panel cache (engine/panel_cache.h) ----

// Logits of a prompt (every row: the GEMM path) and of two decode steps after it (one token:
// the matrix-vector path), with the panel cache in `dir` (empty: none).
struct CacheRun {
  std::vector<float> logits;
  bool cached = false;   // the forward read panels from the cache file
  bool created = false;  // ... which this engine packed
  std::string description;
};

CacheRun run_with_panel_cache(const Model& model, const fs::path& dir, size_t vocab,
                              bool resident = false) {
  EngineOptions o;
  o.n_threads = 2;
  o.panel_cache_dir = dir;
  o.resident_weights = resident;
  Engine e(model, o);
  CacheRun r;
  r.cached = !e.panel_cache().empty();
  r.created = e.panel_cache().created();
  r.description = e.weights_description();
  if (r.cached) {
    // The matrices' panels are views into the cache file's mapping.
    const auto file = e.panel_cache().file_bytes();
    const auto panels = e.weights().layers[0].ffn_up.panels;
    EXPECT_FALSE(panels.empty());
    EXPECT_TRUE(panels.data() >= file.data() &&
                panels.data() + panels.size() <= file.data() + file.size());
  }
  e.eval(0, some_tokens(12, vocab, 3), true, &r.logits);
  for (int32_t tok : some_tokens(2, vocab, 4)) {
    const auto l = e.eval(0, std::span(&tok, 1), false);
    r.logits.insert(r.logits.end(), l.begin(), l.end());
  }
  return r;
}

bool has_panels(GgmlType type) { return kiln::kernels::packed_panels_bytes(type, 32, 256) > 0; }

// A tiny model whose matrices are `type` and 256 wide (a K block).
TinySpec panel_spec(GgmlType type) {
  TinySpec spec;
  spec.matrix_type = type;
  spec.dim = spec.ffn = 256;
  return spec;
}

// Flips one byte of a file at `offset`.
void flip_byte(const fs::path& path, size_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

TEST(EnginePanelCache, PackedOnceThenMappedWithTheSameLogitsAsTheBlocks) {
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0}) {
    if (!has_panels(type)) GTEST_SKIP() << "no pre-packed panels on this CPU";
    SCOPED_TRACE(kiln::type_name(type));
    TinySpec spec = panel_spec(type);
    spec.oracle_sees_quantized = true;
    const TinyModel tiny = write_tiny_model(spec, "panel_cache.gguf");
    const fs::path dir = temp_path("panel_cache_dir");
    fs::remove_all(dir);
    const Model model = Model::load(tiny.path);
    // The same panels packed into anonymous memory (--hugepage-weights): the reference, bit
    // for bit. The model's own blocks: the same integer sums, but a K type's per-row dot
    // kernel rounds and adds the blocks' floats in another order; both must be as close to
    // the float64 oracle (the error is the activations' int8 rounding).
    const CacheRun resident = run_with_panel_cache(model, {}, spec.vocab, /*resident=*/true);
    const CacheRun blocks = run_with_panel_cache(model, {}, spec.vocab);
    EXPECT_FALSE(blocks.cached);
    std::vector<int32_t> all_tokens = some_tokens(12, spec.vocab, 3);
    for (int32_t tok : some_tokens(2, spec.vocab, 4)) all_tokens.push_back(tok);
    const auto ref = reference_forward(spec, tiny.tensors, all_tokens);
    const auto worst = [&](const std::vector<float>& logits) {
      double w = 0;
      for (size_t i = 0; i < all_tokens.size(); ++i) {
        w = std::max(w, max_abs_diff({logits.data() + i * spec.vocab, spec.vocab}, ref[i]));
      }
      return w;
    };
    const double err_blocks = worst(blocks.logits), err_panels = worst(resident.logits);
    std::printf("%s: max |logit - oracle| blocks %.4f, panels %.4f\n",
                std::string(kiln::type_name(type)).c_str(), err_blocks, err_panels);
    EXPECT_LT(err_panels, 1.5 * err_blocks + 1e-3);

    const CacheRun first = run_with_panel_cache(model, dir, spec.vocab);
    EXPECT_TRUE(first.cached && first.created) << first.description;
    EXPECT_NE(first.description.find("packed into"), std::string::npos) << first.description;
    EXPECT_EQ(first.logits, resident.logits);  // bit for bit
    const CacheRun second = run_with_panel_cache(model, dir, spec.vocab);
    EXPECT_TRUE(second.cached);
    EXPECT_FALSE(second.created) << second.description;
    EXPECT_NE(second.description.find("from " + dir.string()), std::string::npos);
    EXPECT_EQ(second.logits, resident.logits);
    // One file, no temporary left behind.
    EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1);
    // A temporary file of a process that died while packing is removed by the next packing;
    // a live process's is not.
    const fs::path cache = kiln::panel_cache_file(dir, tiny.path);
    const fs::path dead = cache.string() + ".tmp.2147483646-0";
    const fs::path live = cache.string() + ".tmp." + std::to_string(getppid()) + "-0";
    std::ofstream(dead) << "half";
    std::ofstream(live) << "mine";
    fs::remove(cache);
    EXPECT_TRUE(run_with_panel_cache(model, dir, spec.vocab).created);
    EXPECT_FALSE(fs::exists(dead));
    EXPECT_TRUE(fs::exists(live));
    EXPECT_TRUE(fs::exists(cache));
    fs::remove_all(dir);
    fs::remove(tiny.path);
  }
}

TEST(EnginePanelCache, StaleOrDamagedFilesArePackedAgain) {
  if (!has_panels(GgmlType::Q4_K)) GTEST_SKIP() << "no pre-packed panels on this CPU";
  const TinySpec spec = panel_spec(GgmlType::Q4_K);
  const fs::path dir = temp_path("panel_cache_stale");
  fs::remove_all(dir);
  TinyModel tiny = write_tiny_model(spec, "panel_cache_stale.gguf", 7);
  fs::path cache;
  {
    const Model model = Model::load(tiny.path);
    EXPECT_TRUE(run_with_panel_cache(model, dir, spec.vocab).created);
    cache = kiln::panel_cache_file(dir, tiny.path);
    ASSERT_TRUE(fs::exists(cache));
  }
  // The same path, other weights (same size and tensor table): packed again, and the logits
  // are the new model's.
  tiny = write_tiny_model(spec, "panel_cache_stale.gguf", 8);
  const Model model = Model::load(tiny.path);
  const CacheRun blocks = run_with_panel_cache(model, {}, spec.vocab, /*resident=*/true);
  const CacheRun repacked = run_with_panel_cache(model, dir, spec.vocab);
  EXPECT_TRUE(repacked.created) << repacked.description;
  EXPECT_EQ(repacked.logits, blocks.logits);
  EXPECT_FALSE(run_with_panel_cache(model, dir, spec.vocab).created);

  const size_t size = fs::file_size(cache);
  // A byte of the header, then of the first matrix's first panel (the panels start at 2 MiB):
  // each makes the file unusable, packed again.
  for (size_t offset : {size_t{20}, (size_t{2} << 20) + 7}) {
    flip_byte(cache, offset);
    const CacheRun r = run_with_panel_cache(model, dir, spec.vocab);
    EXPECT_TRUE(r.created) << "byte " << offset << " flipped: " << r.description;
    EXPECT_EQ(r.logits, blocks.logits);
  }
  // A byte past every first panel (the last of the matrix with the most rows): only the
  // panels' checksums see it.
  {
    std::ifstream f(cache, std::ios::binary);
    uint32_t n_matrices = 0;
    f.seekg(12);
    f.read(reinterpret_cast<char*>(&n_matrices), sizeof n_matrices);
    uint64_t most_rows = 0, last_byte = 0;
    for (uint32_t i = 0; i < n_matrices; ++i) {
      uint64_t rows = 0, offset = 0, bytes = 0;  // entry: type, checksum, rows, cols, offset, bytes
      f.seekg(64 + 64 * std::streamoff(i) + 8);
      f.read(reinterpret_cast<char*>(&rows), 8);
      f.seekg(64 + 64 * std::streamoff(i) + 24);
      f.read(reinterpret_cast<char*>(&offset), 8);
      f.read(reinterpret_cast<char*>(&bytes), 8);
      if (rows > most_rows) most_rows = rows, last_byte = offset + bytes - 1;
    }
    ASSERT_TRUE(f && most_rows > 16) << "the model needs a matrix of more than one panel";
    f.close();
    flip_byte(cache, last_byte);
    const CacheRun r = run_with_panel_cache(model, dir, spec.vocab);
    EXPECT_TRUE(r.created) << "byte " << last_byte << " flipped: " << r.description;
    EXPECT_EQ(r.logits, blocks.logits);
  }
  // Cut short.
  fs::resize_file(cache, size / 2);
  const CacheRun r = run_with_panel_cache(model, dir, spec.vocab);
  EXPECT_TRUE(r.created);
  EXPECT_EQ(r.logits, blocks.logits);
  EXPECT_EQ(fs::file_size(cache), size);
  fs::remove_all(dir);
  fs::remove(tiny.path);
}

// Packing a model's file also removes the folder's files whose model is gone or has changed
// since (nothing could use them again); a file of a model still there, and files that are
// not ours, stay.
TEST(EnginePanelCache, PackingRemovesTheFilesOfModelsGoneOrChanged) {
  if (!has_panels(GgmlType::Q4_K)) GTEST_SKIP() << "no pre-packed panels on this CPU";
  const TinySpec spec = panel_spec(GgmlType::Q4_K);
  const fs::path dir = temp_path("panel_cache_evict");
  fs::remove_all(dir);
  const TinyModel gone = write_tiny_model(spec, "panel_evict_gone.gguf", 1);
  const TinyModel changed = write_tiny_model(spec, "panel_evict_changed.gguf", 2);
  const TinyModel kept = write_tiny_model(spec, "panel_evict_kept.gguf", 3);
  for (const TinyModel* m : {&gone, &changed, &kept}) {
    const Model model = Model::load(m->path);
    EXPECT_TRUE(run_with_panel_cache(model, dir, spec.vocab).created);
    ASSERT_TRUE(fs::exists(kiln::panel_cache_file(dir, m->path)));
  }
  const fs::path foreign = dir / "not-ours.panels", other = dir / "notes.txt";
  std::ofstream(foreign) << "some other program's file";
  std::ofstream(other) << "x";
  // Files of other format versions (the version is the uint32 after the 8-byte magic): an
  // older format (2) of a model that will be gone is removed like a current one; an older
  // format of a model still there stays (an older kiln may use it); a newer format stays.
  const auto copy_as_version = [&](const fs::path& model, const std::string& name,
                                   uint32_t version) {
    const fs::path copy = dir / name;
    fs::copy_file(kiln::panel_cache_file(dir, model), copy);
    std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.write(reinterpret_cast<const char*>(&version), sizeof version);
    return copy;
  };
  const fs::path old_gone = copy_as_version(gone.path, "older-build-gone.panels", 2);
  const fs::path old_kept = copy_as_version(kept.path, "older-build-kept.panels", 2);
  const fs::path newer_gone = copy_as_version(gone.path, "newer-build-gone.panels", 99);

  fs::remove(gone.path);
  fs::last_write_time(changed.path, fs::last_write_time(changed.path) + std::chrono::seconds(5));
  const TinyModel fresh = write_tiny_model(spec, "panel_evict_fresh.gguf", 4);
  {
    const Model model = Model::load(fresh.path);
    EXPECT_TRUE(run_with_panel_cache(model, dir, spec.vocab).created);
  }
  EXPECT_FALSE(fs::exists(kiln::panel_cache_file(dir, gone.path))) << "its model is gone";
  EXPECT_FALSE(fs::exists(kiln::panel_cache_file(dir, changed.path))) << "its model changed";
  EXPECT_TRUE(fs::exists(kiln::panel_cache_file(dir, kept.path)));
  EXPECT_TRUE(fs::exists(kiln::panel_cache_file(dir, fresh.path)));
  EXPECT_TRUE(fs::exists(foreign));
  EXPECT_TRUE(fs::exists(other));
  EXPECT_FALSE(fs::exists(old_gone)) << "an older format's file of a model that is gone";
  EXPECT_TRUE(fs::exists(old_kept)) << "an older format's file of a model still there";
  EXPECT_TRUE(fs::exists(newer_gone)) << "a newer format is not ours to judge";
  {
    // The kept model's file is still used as it is.
    const Model model = Model::load(kept.path);
    EXPECT_FALSE(run_with_panel_cache(model, dir, spec.vocab).created);
  }
  fs::remove_all(dir);
  for (const TinyModel* m : {&changed, &kept, &fresh}) fs::remove(m->path);
}

// AVX-512 and AVX2 panels differ, so each ISA keeps a file of its own (a folder shared by
// machines of both kinds must not pack the model again at every start on the other kind);
// packing removes the model's files of the same ISA under another name (the names before
// they carried the ISA), never the other ISA's.
TEST(EnginePanelCache, EachIsaKeepsItsOwnFile) {
  using kiln::kernels::Isa;
  struct IsaGuard {
    Isa saved = kiln::kernels::isa_limit();
    ~IsaGuard() { kiln::kernels::set_isa_limit(saved); }
  } guard;
  const auto isa_panels = [](Isa isa) {
    kiln::kernels::set_isa_limit(isa);
    return kiln::kernels::packed_panels_isa();
  };
  if (isa_panels(Isa::Avx512) != "avx512" || isa_panels(Isa::Avx2) != "avx2") {
    GTEST_SKIP() << "needs pre-packed panels of both ISAs (an AVX-512 VNNI CPU)";
  }
  const TinySpec spec = panel_spec(GgmlType::Q4_K);
  const fs::path dir = temp_path("panel_cache_isa");
  fs::remove_all(dir);
  const TinyModel tiny = write_tiny_model(spec, "panel_cache_isa.gguf", 5);
  const Model model = Model::load(tiny.path);
  const auto pack = [&](Isa isa) {
    kiln::kernels::set_isa_limit(isa);
    return std::pair{run_with_panel_cache(model, dir, spec.vocab).created,
                     kiln::panel_cache_file(dir, tiny.path)};
  };
  const auto [created512, file512] = pack(Isa::Avx512);
  const auto [created2, file2] = pack(Isa::Avx2);
  EXPECT_TRUE(created512);
  EXPECT_TRUE(created2);
  EXPECT_NE(file512, file2);
  EXPECT_NE(file512.filename().string().find("-avx512.panels"), std::string::npos) << file512;
  EXPECT_NE(file2.filename().string().find("-avx2.panels"), std::string::npos) << file2;
  EXPECT_TRUE(fs::exists(file512) && fs::exists(file2));
  EXPECT_FALSE(pack(Isa::Avx512).first) << "the AVX-512 file is still there and used";
  EXPECT_FALSE(pack(Isa::Avx2).first);

  // The AVX2 file under the name it had before names carried the ISA, the current one gone:
  // packing makes the current one and removes the old-named copy, not the AVX-512 file.
  std::string old_name = file2.filename().string();
  old_name.erase(old_name.find("-avx2.panels"));
  const fs::path old_file = dir / (old_name + ".panels");
  fs::rename(file2, old_file);
  EXPECT_TRUE(pack(Isa::Avx2).first);
  EXPECT_TRUE(fs::exists(file2));
  EXPECT_FALSE(fs::exists(old_file)) << "superseded by " << file2;
  EXPECT_TRUE(fs::exists(file512)) << "another ISA's file stays";
  fs::remove_all(dir);
  fs::remove(tiny.path);
}

TEST(EnginePanelCache, AFolderThatCannotBeWrittenLeavesTheBlocksAndSaysWhy) {
  if (!has_panels(GgmlType::Q4_K)) GTEST_SKIP() << "no pre-packed panels on this CPU";
  const TinySpec spec = panel_spec(GgmlType::Q4_K);
  const TinyModel tiny = write_tiny_model(spec, "panel_cache_unwritable.gguf");
  const Model model = Model::load(tiny.path);
  const CacheRun blocks = run_with_panel_cache(model, {}, spec.vocab);
  // A folder below a regular file cannot be made (even by root).
  const CacheRun r = run_with_panel_cache(model, tiny.path / "cache", spec.vocab);
  EXPECT_FALSE(r.cached);
  EXPECT_NE(r.description.find("no panel cache: cannot write the panel cache"), std::string::npos)
      << r.description;
  EXPECT_EQ(r.logits, blocks.logits);
  fs::remove(tiny.path);
}

}  // namespace
