// Chat template rendering time: the fixture templates of tests/data/templates
// (SmolLM2 ChatML, Qwen3 with its reverse scan and think-block splitting, Llama
// 3.1 with its system header) on conversations of 4 and 200 messages of ~500
// bytes each. Reported per render, with bytes of prompt produced per second.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace {

std::string read_template(const std::string& name) {
  const auto path =
      std::filesystem::path(KILN_SOURCE_DIR) / "tests/data/templates" / (name + ".jinja");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<kiln::ChatMessage> make_conversation(size_t n_messages) {
  std::vector<kiln::ChatMessage> msgs;
  auto message = [](std::string role, std::string content) {
    kiln::ChatMessage m;
    m.role = std::move(role);
    m.content = std::move(content);
    return m;
  };
  msgs.push_back(message("system", "You are a helpful assistant. Answer briefly."));
  std::string filler;
  while (filler.size() < 500) filler += "the quick brown fox jumps over the lazy dog ";
  for (size_t k = 1; k < n_messages; ++k) {
    const bool user = k % 2 == 1 || k + 1 == n_messages;
    std::string text = (user ? "question " : "<think>\nreasoning\n</think>\n\nanswer ") +
                       std::to_string(k) + ": " + filler;
    msgs.push_back(message(user ? "user" : "assistant", text));
  }
  return msgs;
}

void BM_Render(benchmark::State& state, const std::string& name) {
  const auto tmpl = kiln::ChatTemplate::from_source(read_template(name));
  const auto msgs = make_conversation(static_cast<size_t>(state.range(0)));
  size_t bytes = 0;
  for (auto _ : state) {
    auto segments = tmpl.render(msgs, true, nullptr, "<s>", "</s>");
    for (const auto& s : segments) bytes += s.text.size();
    benchmark::DoNotOptimize(segments);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

BENCHMARK_CAPTURE(BM_Render, smollm2, std::string("smollm2"))
    ->Arg(4)
    ->Arg(200)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Render, qwen3, std::string("qwen3"))
    ->Arg(4)
    ->Arg(200)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_Render, llama3_1, std::string("llama3"))
    ->Arg(4)
    ->Arg(200)
    ->Unit(benchmark::kMicrosecond);

void BM_Parse(benchmark::State& state) {
  const std::string src = read_template("qwen3");
  for (auto _ : state) benchmark::DoNotOptimize(kiln::ChatTemplate::from_source(src));
}
BENCHMARK(BM_Parse)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
