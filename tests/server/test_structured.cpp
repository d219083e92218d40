// Structured output in the server: response_format parsing (400s naming the
// field or the unsupported keyword), the per-model constraint factory, the
// scheduler enforcing a schema on a random-weights model (nlohmann::json and a
// hand-written check of the schema are the judges), and the <think> split of
// chat output on a scripted token stream.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "engine/engine.h"
#include "gguf/gguf.h"
#include "server/api.h"
#include "server/scheduler.h"
#include "server/structured.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using kiln::ChatMessage;
using kiln::ChatTemplate;
using kiln::TokenId;
using kiln::Tokenizer;
using kiln::server::ApiError;
using kiln::server::ConstraintFactory;
using kiln::server::FinishReason;
using kiln::server::parse_response_format;
using kiln::server::ResponseFormat;
using json = nlohmann::ordered_json;

const Tokenizer& gpt2_tokenizer() {
  static const Tokenizer tok = Tokenizer::from_gguf(
      kiln::gguf::File::open(std::string(KILN_TEST_DATA) + "/vocab/ggml-vocab-gpt-2.gguf"));
  return tok;
}

ApiError parse_error(const json& rf) {
  try {
    parse_response_format(rf);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << rf.dump();
  return ApiError(0, "", "");
}

// ---- parse_response_format ------------------------------------------------------------------

TEST(ResponseFormat, TextIsUnconstrained) {
  const auto f = parse_response_format(json{{"type", "text"}});
  EXPECT_EQ(f.kind, ResponseFormat::Kind::kText);
  EXPECT_FALSE(f.constrained());
}

TEST(ResponseFormat, JsonObjectAndSchema) {
  const auto obj = parse_response_format(json{{"type", "json_object"}});
  EXPECT_EQ(obj.kind, ResponseFormat::Kind::kJsonObject);
  EXPECT_TRUE(obj.constrained());

  const json rf = json::parse(R"({"type": "json_schema", "json_schema": {"name": "person",
      "strict": true, "schema": {"type": "object", "properties": {"b": {"type": "integer"},
      "a": {"type": "string"}}, "required": ["b", "a"]}}})");
  const auto f = parse_response_format(rf);
  EXPECT_EQ(f.kind, ResponseFormat::Kind::kJsonSchema);
  EXPECT_EQ(f.name, "person");
  EXPECT_TRUE(f.strict);
  ASSERT_TRUE(f.constrained());
  // The key keeps the schema's property order (b before a).
  EXPECT_LT(f.key.find("\"b\""), f.key.find("\"a\""));
  // The same schema again (other spacing) shares the compiled grammar.
  const auto again = parse_response_format(json::parse(rf.dump(2)));
  EXPECT_EQ(again.grammar.get(), f.grammar.get());
  EXPECT_NE(again.grammar.get(), obj.grammar.get());
}

TEST(ResponseFormat, UnsupportedKeywordIsA400NamingIt) {
  const json rf = json::parse(R"({"type": "json_schema", "json_schema": {"name": "x",
      "schema": {"type": "object", "properties": {"tags": {"type": "array",
      "uniqueItems": true}}}}})");
  const ApiError e = parse_error(rf);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "response_format.json_schema.schema");
  EXPECT_NE(std::string(e.what()).find("uniqueItems"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("#/properties/tags"), std::string::npos) << e.what();
}

TEST(ResponseFormat, MalformedShapesName400Fields) {
  EXPECT_EQ(parse_error(json::array()).param, "response_format");
  EXPECT_EQ(parse_error(json::object()).param, "response_format.type");
  EXPECT_EQ(parse_error(json{{"type", 3}}).param, "response_format.type");
  EXPECT_EQ(parse_error(json{{"type", "xml"}}).param, "response_format.type");
  EXPECT_EQ(parse_error(json{{"type", "json_schema"}}).param, "response_format.json_schema");
  EXPECT_EQ(
      parse_error(json::parse(R"({"type":"json_schema","json_schema":{"strict":"yes"}})")).param,
      "response_format.json_schema.strict");
  EXPECT_EQ(
      parse_error(json::parse(R"({"type":"json_schema","json_schema":{"schema":"x"}})")).param,
      "response_format.json_schema.schema");
}

TEST(ResponseFormat, RequestParsingWiresIt) {
  json body = json::parse(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_object"}})");
  EXPECT_TRUE(kiln::server::parse_chat_request(body).gen.response_format.constrained());
  json completion = json::parse(R"({"model": "m", "prompt": "hi",
      "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "integer"}}}})");
  EXPECT_TRUE(kiln::server::parse_completion_request(completion).gen.response_format.constrained());
  // A stop string could cut the document short: refused.
  body["stop"] = "}";
  try {
    kiln::server::parse_chat_request(body);
    ADD_FAILURE() << "stop with a JSON response_format was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param, "stop");
  }
}

// ---- ConstraintFactory ----------------------------------------------------------------------

TEST(ConstraintFactory, ControlAndEogTokensStayOutOfTheTrie) {
  const Tokenizer& tok = gpt2_tokenizer();
  ConstraintFactory factory(tok);
  ASSERT_FALSE(factory.eog_ids().empty());
  for (int32_t id : factory.eog_ids()) EXPECT_FALSE(factory.trie().in_trie(id)) << id;
  for (size_t id = 0; id < tok.vocab_size(); ++id) {
    const auto t = static_cast<TokenId>(id);
    if (tok.is_control(t)) {
      EXPECT_FALSE(factory.trie().in_trie(t)) << id;
    }
  }
}

TEST(ConstraintFactory, SharesCompiledGrammarsPerSchemaAndEvictsOldOnes) {
  ConstraintFactory factory(gpt2_tokenizer(), /*max_cached_grammars=*/2);
  const auto a = parse_response_format(json{{"type", "json_object"}});
  const auto b = parse_response_format(
      json::parse(R"({"type":"json_schema","json_schema":{"schema":{"type":"boolean"}}})"));
  const auto c = parse_response_format(
      json::parse(R"({"type":"json_schema","json_schema":{"schema":{"type":"null"}}})"));
  auto a1 = factory.make(a);
  auto a2 = factory.make(a);
  EXPECT_EQ(&a1->compiled(), &a2->compiled());
  auto b1 = factory.make(b);
  EXPECT_NE(&a1->compiled(), &b1->compiled());
  auto c1 = factory.make(c);  // evicts a (least recently used)
  EXPECT_EQ(factory.cached_grammars(), 2u);
  auto a3 = factory.make(a);
  EXPECT_NE(&a1->compiled(), &a3->compiled());
  // The evicted grammar still works for the sequence holding it.
  a1->accept_token(gpt2_tokenizer().encode("{", false, false).at(0));
}

// Drives a constraint with random logits, taking the best allowed token each
// step, as the scheduler does.
TEST(ConstraintFactory, RandomLogitsGiveCompleteDocuments) {
  const Tokenizer& tok = gpt2_tokenizer();
  ConstraintFactory factory(tok);
  const auto f = parse_response_format(json{{"type", "json_object"}});
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  // Random logits per step: windows of one pool at random offsets (drawing a
  // fresh vocabulary's worth of normals every step is slow).
  std::vector<float> pool(2 * tok.vocab_size());
  for (auto& l : pool) l = normal(rng);
  std::uniform_int_distribution<size_t> offset(0, tok.vocab_size());
  std::vector<float> logits(tok.vocab_size());
  std::vector<TokenId> closers;
  for (const char* text : {"\"", "}", "\"}"}) {
    const auto ids = tok.encode(text, false, false);
    ASSERT_EQ(ids.size(), 1u) << text;
    closers.push_back(ids[0]);
  }
  int completed = 0;
  for (int run = 0; run < 20; ++run) {
    auto c = factory.make(f);
    std::string text;
    for (int step = 0; step < 200 && !c->done(); ++step) {
      const size_t o = offset(rng);
      std::copy(pool.begin() + o, pool.begin() + o + logits.size(), logits.begin());
      // Favour the end tokens, and more so with each run the tokens that
      // close strings and objects, so that documents of all sizes finish.
      for (int32_t id : factory.eog_ids()) logits[id] = 8.0f;
      for (TokenId id : closers) logits[id] = 3.0f + 0.25f * static_cast<float>(run);
      ASSERT_GT(c->compute_mask(logits), 0u);
      const auto best =
          static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (tok.is_eog(best)) {
        ASSERT_TRUE(c->is_complete()) << text;
      }
      c->accept_token(best);
      if (!tok.is_eog(best)) text += tok.token_bytes(best);
    }
    EXPECT_EQ(text, c->text());
    if (c->done()) {
      ++completed;
      const auto doc = json::parse(text, nullptr, false);
      ASSERT_FALSE(doc.is_discarded()) << text;
      EXPECT_TRUE(doc.is_object()) << text;
    }
  }
  EXPECT_GE(completed, 10);
}

// ---- the scheduler on a tiny random model ---------------------------------------------------

class StructuredSchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    path_ =
        fs::temp_directory_path() / ("kiln_structured_test_" + std::to_string(getpid()) + ".gguf");
    const std::string cmd = std::string(KILN_BIN) + " synth --preset tiny --vocab-from " +
                            KILN_TEST_DATA + "/vocab/ggml-vocab-gpt-2.gguf --out " +
                            path_.string() + " > /dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0 || !fs::exists(path_)) return;
    model_ = std::make_unique<kiln::Model>(kiln::Model::load(path_));
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(model_->file()));
  }
  static void TearDownTestSuite() {
    tokenizer_.reset();
    model_.reset();
    std::error_code ec;
    fs::remove(path_, ec);
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "could not make a tiny model with " << KILN_BIN << " synth";
  }

  struct Result {
    std::string text;
    std::optional<FinishReason> finish;
    std::string error;
  };
  static Result collect(kiln::server::GenerationStream& s) {
    Result r;
    std::vector<kiln::server::GenerationEvent> events;
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    bool ended = false;
    while (!ended && std::chrono::steady_clock::now() < deadline) ended = s.wait(events, 200ms);
    EXPECT_TRUE(ended) << "stream did not end";
    for (auto& e : events) {
      r.text += e.text;
      if (e.finish) r.finish = e.finish;
      if (!e.error.empty()) r.error = e.error;
    }
    return r;
  }

  static std::unique_ptr<kiln::Engine> make_engine() {
    kiln::EngineOptions o;
    o.n_ctx = 256;
    o.n_seq = 4;
    o.max_batch = 64;
    o.n_threads = 2;
    return std::make_unique<kiln::Engine>(*model_, o);
  }

  static kiln::server::GenerationJob job(const ResponseFormat& f, uint64_t seed,
                                         size_t max_tokens) {
    kiln::server::GenerationJob j;
    j.prompt = tokenizer_->encode("Reply in JSON:", false, false);
    j.sampling.temperature = 1.0f;
    j.seed = seed;
    j.max_tokens = max_tokens;
    j.response_format = f;
    return j;
  }

  static inline fs::path path_;
  static inline std::unique_ptr<kiln::Model> model_;
  static inline std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(StructuredSchedulerTest, EveryStopIsAValidDocument) {
  auto engine = make_engine();
  kiln::server::Metrics metrics;
  kiln::server::Scheduler scheduler(*engine, *tokenizer_, metrics);
  // Bounded documents: random weights must still finish them.
  const auto f = parse_response_format(json::parse(R"({"type": "json_schema", "json_schema": {
      "name": "t", "schema": {"type": "object", "properties": {
        "ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99}},
      "required": ["ok", "color", "n"], "additionalProperties": false}}})"));
  std::vector<std::shared_ptr<kiln::server::GenerationStream>> streams;
  for (uint64_t seed = 1; seed <= 8; ++seed) streams.push_back(scheduler.submit(job(f, seed, 150)));
  for (auto& s : streams) {
    const Result r = collect(*s);
    ASSERT_EQ(r.error, "");
    ASSERT_EQ(r.finish, FinishReason::kStop) << r.text;
    const auto doc = json::parse(r.text, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << r.text;
    ASSERT_TRUE(doc.is_object()) << r.text;
    EXPECT_EQ(doc.size(), 3u) << r.text;
    ASSERT_TRUE(doc.contains("ok") && doc["ok"].is_boolean()) << r.text;
    ASSERT_TRUE(doc.contains("color") && doc["color"].is_string()) << r.text;
    const std::string color = doc["color"].get<std::string>();
    EXPECT_TRUE(color == "red" || color == "green" || color == "blue") << r.text;
    ASSERT_TRUE(doc.contains("n") && doc["n"].is_number_integer()) << r.text;
    EXPECT_GE(doc["n"].get<int64_t>(), 0);
    EXPECT_LE(doc["n"].get<int64_t>(), 99);
  }
}

TEST_F(StructuredSchedulerTest, MaxTokensFirstIsLengthWithAPrefix) {
  auto engine = make_engine();
  kiln::server::Metrics metrics;
  kiln::server::Scheduler scheduler(*engine, *tokenizer_, metrics);
  const auto f = parse_response_format(json::parse(R"({"type": "json_schema", "json_schema": {
      "schema": {"type": "object", "properties": {"text": {"type": "string", "minLength": 50}},
      "required": ["text"]}}})"));
  const Result r = collect(*scheduler.submit(job(f, 3, 4)));
  EXPECT_EQ(r.finish, FinishReason::kLength);
  EXPECT_EQ(r.text.substr(0, 1), "{") << r.text;
  EXPECT_TRUE(json::parse(r.text, nullptr, false).is_discarded()) << r.text;
}

// ---- enable_thinking and the reasoning split ------------------------------------------------

std::string read_template(const std::string& name) {
  std::ifstream in(std::string(KILN_TEST_DATA) + "/templates/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string render(const ChatTemplate& t, const json& vars) {
  const std::vector<ChatMessage> messages = {
      ChatMessage::from_json(json{{"role", "user"}, {"content", "What is 2+2?"}})};
  return t.render_string(messages, true, vars, "", "<|im_end|>");
}

TEST(Thinking, Qwen3TemplateHonoursEnableThinking) {
  const std::string source = read_template("qwen3.jinja");
  ASSERT_FALSE(source.empty());
  const ChatTemplate t = ChatTemplate::from_source(source);
  const std::string off = render(t, json{{"enable_thinking", false}});
  const std::string on = render(t, json{{"enable_thinking", true}});
  const std::string unset = render(t, json::object());
  EXPECT_TRUE(off.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n")) << off;
  EXPECT_TRUE(on.ends_with("<|im_start|>assistant\n")) << on;
  EXPECT_EQ(on, unset);
  // The template knows <think>: output is split; the prompt never leaves a
  // block open, so generation starts outside one.
  for (const auto& prompt : {on, off}) {
    const auto o = kiln::server::reasoning_options_for(source, prompt);
    ASSERT_TRUE(o.has_value());
    EXPECT_FALSE(o->starts_in_reasoning);
  }
}

TEST(Thinking, TemplatesWithoutThinkingAreLeftAlone) {
  const std::string source = read_template("chatml.jinja");
  ASSERT_FALSE(source.empty());
  const ChatTemplate t = ChatTemplate::from_source(source);
  // enable_thinking is accepted and changes nothing.
  EXPECT_EQ(render(t, json{{"enable_thinking", true}}), render(t, json::object()));
  EXPECT_FALSE(kiln::server::reasoning_options_for(source, render(t, json::object())));
  kiln::server::ChatOutputSplitter splitter(std::nullopt);
  auto d = splitter.feed("<think>a</think>b");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "<think>a</think>b");
}

TEST(Thinking, DeepSeekR1OpensTheBlockInThePrompt) {
  const std::string source = read_template("deepseek-r1-distill.jinja");
  ASSERT_FALSE(source.empty());
  const ChatTemplate t = ChatTemplate::from_source(source);
  const auto o = kiln::server::reasoning_options_for(source, render(t, json::object()));
  ASSERT_TRUE(o.has_value());
  EXPECT_TRUE(o->starts_in_reasoning);
}

// A scripted model output, tokenized and streamed back one token at a time
// through the detokenizer and the splitter, as the server streams it.
struct Split {
  std::string reasoning, content;
  int reasoning_chunks = 0;
};
Split stream_split(const std::string& output, std::optional<kiln::ReasoningOptions> options) {
  const Tokenizer& tok = gpt2_tokenizer();
  const auto ids = tok.encode(output, false, false);
  EXPECT_GE(ids.size(), 8u);
  kiln::StreamingDetokenizer detok(tok);
  kiln::server::ChatOutputSplitter splitter(std::move(options));
  Split s;
  const auto add = [&](const kiln::ReasoningDelta& d) {
    s.reasoning += d.reasoning;
    s.content += d.content;
    s.reasoning_chunks += !d.reasoning.empty();
  };
  for (TokenId id : ids) add(splitter.feed(detok.push(id)));
  add(splitter.feed(detok.flush()));
  add(splitter.finish());
  return s;
}

TEST(Thinking, ScriptedStreamSplitsIntoReasoningAndContent) {
  const std::string source = read_template("qwen3.jinja");
  const ChatTemplate t = ChatTemplate::from_source(source);
  const auto options =
      kiln::server::reasoning_options_for(source, render(t, json{{"enable_thinking", true}}));
  const Split s = stream_split(
      "<think>\nThe user asks for 2+2. Adding gives 4.\n</think>\n\nThe answer is 4.", options);
  EXPECT_EQ(s.reasoning, "The user asks for 2+2. Adding gives 4.");
  EXPECT_EQ(s.content, "The answer is 4.");
  EXPECT_GT(s.reasoning_chunks, 1);  // streamed, not held back to the end

  // Thinking off: the model answers directly; a later "<think>" is content.
  const Split plain = stream_split("Sure: the tag <think> opens a block.", options);
  EXPECT_EQ(plain.reasoning, "");
  EXPECT_EQ(plain.content, "Sure: the tag <think> opens a block.");

  // Unterminated (max_tokens ran out while thinking): all reasoning.
  const Split cut = stream_split("<think>\nStill thinking about the sum of", options);
  EXPECT_EQ(cut.reasoning, "Still thinking about the sum of");
  EXPECT_EQ(cut.content, "");
}

TEST(Thinking, ScriptedStreamStartingInsideTheBlock) {
  const std::string source = read_template("deepseek-r1-distill.jinja");
  const ChatTemplate t = ChatTemplate::from_source(source);
  const auto options = kiln::server::reasoning_options_for(source, render(t, json::object()));
  const Split s = stream_split("Two plus two is four, so answer 4.\n</think>\n\nIt is 4.", options);
  EXPECT_EQ(s.reasoning, "Two plus two is four, so answer 4.");
  EXPECT_EQ(s.content, "It is 4.");
}

}  // namespace
