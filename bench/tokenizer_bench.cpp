// Tokenizer throughput on one core, in bytes of input text per second.
//
// Inputs: English prose (the GPL-3 text Debian ships, 35 KB) and C++ code (a
// libstdc++ header, 216 KB), each once: encode caches repeated words within a
// call, so repeating a text would overstate its speed.
// Vocabularies: the default model (SmolLM2, byte-level BPE, pre=smollm) when
// models/ has it, else the gpt-2 test vocabulary; and llama-spm (SentencePiece).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "gguf/gguf.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const std::string& corpus(const std::string& name) {
  static std::map<std::string, std::string> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  const fs::path path = name == "english" ? fs::path("/usr/share/common-licenses/GPL-3")
                                          : fs::path("/usr/include/c++/12/bits/stl_algo.h");
  return cache[name] = read_file(path);
}

fs::path vocab_path(const std::string& which) {
  const fs::path root = KILN_SOURCE_DIR;
  if (which == "bpe") {
    const fs::path model = root / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
    if (fs::exists(model)) return model;
    return root / "tests/data/vocab/ggml-vocab-gpt-2.gguf";
  }
  return root / "tests/data/vocab/ggml-vocab-llama-spm.gguf";
}

const kiln::Tokenizer& tokenizer(const std::string& which) {
  static std::map<std::string, std::unique_ptr<kiln::Tokenizer>> cache;
  auto& slot = cache[which];
  if (!slot) {
    const auto file = kiln::gguf::File::open(vocab_path(which));
    slot = std::make_unique<kiln::Tokenizer>(kiln::Tokenizer::from_gguf(file));
  }
  return *slot;
}

void BM_Encode(benchmark::State& state, const std::string& vocab, const std::string& text_name) {
  const std::string& text = corpus(text_name);
  if (text.empty()) {
    state.SkipWithError("input text file not found");
    return;
  }
  const kiln::Tokenizer& tok = tokenizer(vocab);
  size_t n_tokens = 0;
  for (auto _ : state) {
    auto ids = tok.encode(text, false, false);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n_tokens);
  state.SetLabel(vocab_path(vocab).filename().string());
}

// The regex split alone (PCRE2 JIT), to show where encode's time goes.
void BM_PreTokenize(benchmark::State& state, const std::string& text_name) {
  const std::string& text = corpus(text_name);
  if (text.empty()) {
    state.SkipWithError("input text file not found");
    return;
  }
  const auto pre = kiln::PreTokenizer::for_pre("smollm");
  const std::string clean = kiln::unicode::sanitize_utf8(text);
  std::vector<std::string_view> words;
  for (auto _ : state) {
    words.clear();
    pre.split(clean, words);
    benchmark::DoNotOptimize(words.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["words"] = static_cast<double>(words.size());
}

void BM_Decode(benchmark::State& state, const std::string& vocab) {
  const std::string& text = corpus("english");
  if (text.empty()) {
    state.SkipWithError("input text file not found");
    return;
  }
  const kiln::Tokenizer& tok = tokenizer(vocab);
  const auto ids = tok.encode(text, false, false);
  for (auto _ : state) {
    kiln::StreamingDetokenizer detok(tok);
    size_t n = 0;
    for (auto id : ids) n += detok.push(id).size();
    n += detok.flush().size();
    benchmark::DoNotOptimize(n);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

BENCHMARK_CAPTURE(BM_Encode, bpe_english, std::string("bpe"), std::string("english"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, bpe_code, std::string("bpe"), std::string("code"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, spm_english, std::string("spm"), std::string("english"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, spm_code, std::string("spm"), std::string("code"))
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PreTokenize, english, std::string("english"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_PreTokenize, code, std::string("code"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, streaming_bpe, std::string("bpe"))->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
