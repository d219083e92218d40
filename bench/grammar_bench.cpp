// Cost of grammar-constrained sampling per generated token, on the default
// model's 49152-token vocabulary (the gpt-2 test vocabulary when models/ lacks
// it), for a few JSON schemas.
//
// Each schema comes with a document; the document is split into tokens the
// way a model would write it (greedy longest allowed token), and one
// iteration replays that token sequence: compute_mask() on a logits row, then
// accept_token(). Reported per token:
//   cold: a fresh GrammarConstraint per document (the automaton and the mask
//         cache start empty, as for every new request);
//   warm: the same constraint rolled back to the start (every mask cached).
// BM_TrieWalk is one uncached walk from the inside-a-string state, the
// worst case (almost every token is allowed there, so almost nothing prunes).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gguf/gguf.h"
#include "sampler/json_schema.h"
#include "sampler/token_trie.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;

struct Vocabulary {
  std::shared_ptr<const kiln::TokenTrie> trie;
  std::vector<int32_t> eog;
  std::unordered_map<std::string, int32_t> id_of;
  size_t max_len = 0;
};

// What the server does: control tokens get no bytes (a grammar never allows
// them), end-of-generation ids are passed separately.
const Vocabulary& vocabulary() {
  static const Vocabulary v = [] {
    const fs::path root = KILN_SOURCE_DIR;
    fs::path path = root / "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if (!fs::exists(path)) path = root / "tests/data/vocab/ggml-vocab-gpt-2.gguf";
    const auto file = kiln::gguf::File::open(path);
    const auto tok = kiln::Tokenizer::from_gguf(file);
    Vocabulary out;
    std::vector<std::string> bytes(tok.vocab_size());
    for (size_t id = 0; id < bytes.size(); ++id) {
      const auto t = static_cast<kiln::TokenId>(id);
      if (tok.is_eog(t)) out.eog.push_back(static_cast<int32_t>(id));
      if (tok.token_type(t) == kiln::TokenType::CONTROL) continue;
      bytes[id] = std::string(tok.token_bytes(t));
      out.id_of.emplace(bytes[id], static_cast<int32_t>(id));
      out.max_len = std::max(out.max_len, bytes[id].size());
    }
    out.trie = std::make_shared<const kiln::TokenTrie>(kiln::TokenTrie::build(bytes, out.eog));
    return out;
  }();
  return v;
}

struct Case {
  const char* schema;  // nullptr: json_object
  const char* document;
};

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> c = {
      {"person",
       {R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
           "hobbies":{"type":"array","items":{"type":"string"},"maxItems":5},
           "email":{"type":"string","format":"uuid"},"city":{"type":"string","maxLength":40}},
           "required":["name","age","hobbies"]})",
        R"({"name": "Ada Lovelace", "age": 36, "hobbies": ["mathematics", "poetry", "analytical engines"], "city": "London, United Kingdom"})"}},
      {"array_of_objects",
       {R"({"type":"array","items":{"type":"object","properties":{"id":{"type":"integer"},
           "title":{"type":"string"},"done":{"type":"boolean"},
           "priority":{"enum":["low","medium","high"]}},"required":["id","title","done","priority"]}})",
        R"([{"id": 1, "title": "Write the grammar compiler", "done": true, "priority": "high"}, {"id": 2, "title": "Benchmark the token mask", "done": false, "priority": "medium"}, {"id": 3, "title": "Sleep", "done": false, "priority": "low"}])"}},
      {"recursive_tree",
       {R"({"$defs":{"node":{"type":"object","properties":{"name":{"type":"string"},
           "children":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["name"]}},
           "$ref":"#/$defs/node"})",
        R"({"name": "root", "children": [{"name": "left", "children": [{"name": "leaf one"}, {"name": "leaf two"}]}, {"name": "right", "children": [{"name": "deep", "children": [{"name": "deeper"}]}]}]})"}},
      {"json_object",
       {nullptr,
        R"({"answer": "The capital of France is Paris.", "confidence": 0.97, "sources": ["encyclopedia", "atlas"], "extra": {"checked": true, "count": 2}})"}},
  };
  return c;
}

std::shared_ptr<const kiln::Grammar> grammar_for(const Case& c) {
  return c.schema ? kiln::JsonGrammar::from_schema_text(c.schema) : kiln::JsonGrammar::any_object();
}

// Greedy longest-allowed-token split of the document, as a model might write it.
std::vector<int32_t> tokenize_document(const Case& c) {
  const Vocabulary& v = vocabulary();
  kiln::GrammarConstraint constraint(grammar_for(c), v.trie, v.eog);
  const std::string doc = c.document;
  std::vector<int32_t> ids;
  for (size_t pos = 0; pos < doc.size();) {
    int32_t chosen = -1;
    size_t len = std::min(v.max_len, doc.size() - pos);
    for (; len > 0; --len) {
      auto it = v.id_of.find(doc.substr(pos, len));
      if (it != v.id_of.end() && constraint.is_allowed(it->second)) {
        chosen = it->second;
        break;
      }
    }
    if (chosen < 0) throw std::runtime_error("document not tokenizable under its schema");
    constraint.accept_token(chosen);
    ids.push_back(chosen);
    pos += len;
  }
  ids.push_back(v.eog.front());
  return ids;
}

// warm: the same constraint rolled back; shared: a new constraint per
// document on the CompiledGrammar an earlier request warmed (a server reusing
// the compiled schema); neither: everything from scratch (a new schema).
void BM_MaskPerToken(benchmark::State& state, const std::string& name, bool warm,
                     bool shared = false) {
  const Case& c = cases().at(name);
  const Vocabulary& v = vocabulary();
  const auto grammar = grammar_for(c);
  const auto ids = tokenize_document(c);
  std::vector<float> logits(v.trie->vocab_size(), 0.0f);
  auto compiled = std::make_shared<kiln::CompiledGrammar>(grammar, v.trie, v.eog);
  kiln::GrammarConstraint reused(compiled);
  const auto start = reused.checkpoint();
  for (int32_t id : ids) {  // fill every cache once
    reused.compute_mask(logits);
    reused.accept_token(id);
  }
  for (auto _ : state) {
    std::unique_ptr<kiln::GrammarConstraint> fresh;
    kiln::GrammarConstraint* c2 = &reused;
    if (warm) {
      reused.rollback(start);
    } else {
      fresh = shared ? std::make_unique<kiln::GrammarConstraint>(compiled)
                     : std::make_unique<kiln::GrammarConstraint>(grammar, v.trie, v.eog);
      c2 = fresh.get();
    }
    for (int32_t id : ids) {
      benchmark::DoNotOptimize(c2->compute_mask(logits));
      c2->accept_token(id);
    }
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * ids.size()));
  state.counters["tokens"] = static_cast<double>(ids.size());
  state.counters["us_per_token"] =
      benchmark::Counter(static_cast<double>(state.iterations() * ids.size()) * 1e-6,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_TrieWalkInString(benchmark::State& state) {
  const Vocabulary& v = vocabulary();
  auto grammar = kiln::JsonGrammar::from_schema_text(R"({"type":"string"})");
  kiln::GrammarAutomaton automaton(grammar);
  const int32_t in_string = automaton.step(automaton.initial_state(), '"');
  std::vector<uint64_t> mask((v.trie->vocab_size() + 63) / 64);
  v.trie->collect_allowed(automaton, in_string, mask);  // warm the transitions
  for (auto _ : state) {
    std::fill(mask.begin(), mask.end(), 0);
    v.trie->collect_allowed(automaton, in_string, mask);
    benchmark::DoNotOptimize(mask.data());
  }
  size_t allowed = 0;
  for (uint64_t w : mask) allowed += static_cast<size_t>(__builtin_popcountll(w));
  state.counters["allowed_tokens"] = static_cast<double>(allowed);
  state.counters["trie_nodes"] = static_cast<double>(v.trie->nodes().size());
}

void BM_ApplyCachedMask(benchmark::State& state) {
  const Vocabulary& v = vocabulary();
  kiln::GrammarConstraint c(kiln::JsonGrammar::any_object(), v.trie, v.eog);
  std::vector<float> logits(v.trie->vocab_size(), 0.0f);
  c.compute_mask(logits);
  for (auto _ : state) benchmark::DoNotOptimize(c.compute_mask(logits));
}

void BM_CompileSchema(benchmark::State& state) {
  const Case& c = cases().at("array_of_objects");
  for (auto _ : state) {
    auto g = kiln::JsonGrammar::from_schema_text(c.schema);
    kiln::GrammarAutomaton a(g);
    benchmark::DoNotOptimize(a.initial_state());
  }
}

void BM_BuildTrie(benchmark::State& state) {
  const Vocabulary& v = vocabulary();
  std::vector<std::string> bytes(v.trie->vocab_size());
  for (size_t id = 0; id < bytes.size(); ++id) bytes[id] = v.trie->token(static_cast<int32_t>(id));
  for (auto _ : state)
    benchmark::DoNotOptimize(kiln::TokenTrie::build(bytes, v.eog).nodes().size());
}

}  // namespace

BENCHMARK_CAPTURE(BM_MaskPerToken, person_cold, std::string("person"), false)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, person_warm, std::string("person"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, person_shared, std::string("person"), false, true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, array_of_objects_cold, std::string("array_of_objects"), false)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, array_of_objects_warm, std::string("array_of_objects"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, recursive_tree_cold, std::string("recursive_tree"), false)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, recursive_tree_warm, std::string("recursive_tree"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, json_object_cold, std::string("json_object"), false)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_MaskPerToken, json_object_warm, std::string("json_object"), true)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TrieWalkInString)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ApplyCachedMask)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CompileSchema)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BuildTrie)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
