// Request parsing and validation field by field, model-name rules, error
// bodies, and the response / SSE chunk shapes (checked against OpenAI's
// documented field lists, not against output captured from this code).
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "server/api.h"

namespace {

using kiln::server::ApiError;
using kiln::server::json;

json chat(json extra = json::object()) {
  json j = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
  for (auto& [k, v] : extra.items()) j[k] = v;
  return j;
}

// The ApiError a parse throws (fails the test when none).
ApiError chat_error(const json& body) {
  try {
    kiln::server::parse_chat_request(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body.dump();
  return ApiError(0, "", "");
}

ApiError completion_error(const json& body) {
  try {
    kiln::server::parse_completion_request(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no error for " << body.dump();
  return ApiError(0, "", "");
}

TEST(Api, MinimalChatRequestHasOpenAiDefaults) {
  const auto r = kiln::server::parse_chat_request(chat());
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "hi");
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.gen.sampling.top_p, 1.0f);
  EXPECT_FALSE(r.gen.max_tokens.has_value());
  EXPECT_FALSE(r.gen.seed.has_value());
  EXPECT_FALSE(r.gen.stream);
  EXPECT_TRUE(r.gen.stop.empty());
}

TEST(Api, EveryFieldIsRead) {
  const auto r =
      kiln::server::parse_chat_request(chat({{"temperature", 0.5},
                                             {"top_p", 0.9},
                                             {"top_k", 40},
                                             {"min_p", 0.05},
                                             {"max_tokens", 7},
                                             {"stop", {"a", "b"}},
                                             {"seed", 99},
                                             {"presence_penalty", 0.5},
                                             {"frequency_penalty", -0.5},
                                             {"logit_bias", {{"12", -100}, {"7", 3.5}}},
                                             {"n", 1},
                                             {"logprobs", true},
                                             {"top_logprobs", 3},
                                             {"stream", true},
                                             {"stream_options", {{"include_usage", true}}},
                                             {"response_format", {{"type", "text"}}},
                                             {"enable_thinking", false},
                                             {"some_unknown_field", {1, 2}}}));
  const auto& s = r.gen.sampling;
  EXPECT_FLOAT_EQ(s.temperature, 0.5f);
  EXPECT_FLOAT_EQ(s.top_p, 0.9f);
  EXPECT_EQ(s.top_k, 40u);
  EXPECT_FLOAT_EQ(s.min_p, 0.05f);
  EXPECT_EQ(r.gen.max_tokens, 7u);
  EXPECT_EQ(r.gen.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.gen.seed, 99u);
  EXPECT_FLOAT_EQ(s.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(s.frequency_penalty, -0.5f);
  ASSERT_EQ(s.logit_bias.size(), 2u);
  EXPECT_TRUE(r.gen.logprobs);
  EXPECT_EQ(r.gen.top_logprobs, 3u);
  EXPECT_TRUE(r.gen.stream);
  EXPECT_TRUE(r.gen.include_usage);
  EXPECT_EQ(r.template_vars["enable_thinking"], false);
}

TEST(Api, MaxCompletionTokensAndStringStop) {
  const auto r = kiln::server::parse_chat_request(
      chat({{"max_completion_tokens", 5}, {"stop", "END"}, {"temperature", nullptr}}));
  EXPECT_EQ(r.gen.max_tokens, 5u);
  EXPECT_EQ(r.gen.stop, std::vector<std::string>{"END"});
  EXPECT_FLOAT_EQ(r.gen.sampling.temperature, 1.0f);  // null is absent
}

TEST(Api, ContentPartsAreConcatenated) {
  json body = chat();
  body["messages"][0]["content"] =
      json::array({{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}});
  EXPECT_EQ(kiln::server::parse_chat_request(body).messages[0].content, "ab");
}

struct WrongType {
  const char* field;
  json value;
};

TEST(Api, WrongTypesNameTheParam) {
  const WrongType cases[] = {
      {"temperature", "hot"},
      {"top_p", true},
      {"top_k", 1.5},
      {"min_p", "x"},
      {"max_tokens", "10"},
      {"max_completion_tokens", 2.5},
      {"stop", 3},
      {"seed", "1"},
      {"presence_penalty", json::array()},
      {"frequency_penalty", "a"},
      {"logit_bias", json::array()},
      {"n", "1"},
      {"logprobs", 1},
      {"stream", "yes"},
      {"stream_options", 1},
      {"response_format", "json"},
      {"enable_thinking", "no"},
      {"messages", "hi"},
      {"model", 3},
  };
  for (const auto& c : cases) {
    json body = chat({{"stream", true}});
    body[c.field] = c.value;
    const ApiError e = chat_error(body);
    EXPECT_EQ(e.status, 400) << c.field;
    EXPECT_EQ(e.type, "invalid_request_error") << c.field;
    EXPECT_EQ(e.param, c.field) << c.field << ": " << e.what();
  }
}

TEST(Api, OutOfRangeValuesNameTheParam) {
  const WrongType cases[] = {
      {"temperature", 2.5},
      {"temperature", -1},
      {"top_p", 1.5},
      {"top_k", -1},
      {"min_p", 2},
      {"max_tokens", 0},
      {"presence_penalty", 3},
      {"frequency_penalty", -3},
      {"n", 2},
      {"top_logprobs", 21},
  };
  for (const auto& c : cases) {
    json body = chat({{"logprobs", true}});
    body[c.field] = c.value;
    const ApiError e = chat_error(body);
    EXPECT_EQ(e.status, 400) << c.field;
    EXPECT_EQ(e.param, c.field) << c.field << ": " << e.what();
  }
}

TEST(Api, MessagesErrors) {
  EXPECT_EQ(chat_error(json{{"model", "m"}}).param, "messages");
  EXPECT_EQ(chat_error(json{{"model", "m"}, {"messages", json::array()}}).param, "messages");
  EXPECT_EQ(chat_error(json{{"messages", chat()["messages"]}}).param, "model");
  json body = chat();
  body["messages"][0]["role"] = "wizard";
  EXPECT_EQ(chat_error(body).param, "messages[0].role");
  body = chat();
  body["messages"][0].erase("role");
  EXPECT_EQ(chat_error(body).param, "messages[0].role");
  body = chat();
  body["messages"][0]["content"] = 5;
  EXPECT_EQ(chat_error(body).param, "messages[0].content");
  body = chat();
  body["messages"][0].erase("content");
  EXPECT_EQ(chat_error(body).param, "messages[0].content");
  body = chat();
  body["messages"][0]["content"] = json::array({{{"type", "image_url"}, {"image_url", "x"}}});
  EXPECT_EQ(chat_error(body).param, "messages[0].content[0].type");
  body = chat();
  body["messages"].push_back(7);
  EXPECT_EQ(chat_error(body).param, "messages[1]");
}

TEST(Api, OtherRules) {
  EXPECT_EQ(chat_error(chat({{"stream_options", {{"include_usage", true}}}})).param,
            "stream_options");
  EXPECT_EQ(chat_error(chat({{"top_logprobs", 2}})).param, "top_logprobs");  // needs logprobs
  EXPECT_EQ(chat_error(chat({{"logit_bias", {{"abc", 1}}}})).param, "logit_bias");
  EXPECT_EQ(chat_error(chat({{"logit_bias", {{"5", 101}}}})).param, "logit_bias");
  EXPECT_EQ(chat_error(chat({{"stop", {"a", 1}}})).param, "stop");
  // json_schema needs its json_schema object (the rest: test_structured.cpp).
  EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "json_schema"}}}})).param,
            "response_format.json_schema");
  EXPECT_EQ(chat_error(chat({{"response_format", {{"type", "xml"}}}})).param,
            "response_format.type");
}

// Seeds take the whole int64 range, as OpenAI's do; a whole number far too big is out of
// range, not "not an integer".
TEST(Api, IntegerRanges) {
  const int64_t lowest = std::numeric_limits<int64_t>::min();
  EXPECT_EQ(kiln::server::parse_chat_request(chat({{"seed", lowest}})).gen.seed,
            static_cast<uint64_t>(lowest));
  EXPECT_EQ(kiln::server::parse_chat_request(chat({{"seed", -1}})).gen.seed, ~uint64_t{0});
  EXPECT_EQ(kiln::server::parse_chat_request(chat({{"seed", 1e17}})).gen.seed,
            uint64_t{100000000000000000});
  for (const json& big : {json(1e300), json(-1e300), json(9223372036854775808.0)}) {
    const ApiError e = chat_error(chat({{"max_tokens", big}}));
    EXPECT_EQ(e.param, "max_tokens");
    EXPECT_NE(std::string(e.what()).find("must be an integer in [1, 16777216]"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(chat_error(chat({{"seed", big}})).what()).find("must be an integer in"),
              std::string::npos);
  }
  EXPECT_NE(std::string(chat_error(chat({{"max_tokens", 2.5}})).what()).find("an integer"),
            std::string::npos);
}

TEST(Api, DeveloperMessagesAreSystemMessages) {
  const auto r = kiln::server::parse_chat_request(
      chat({{"messages", json::array({{{"role", "developer"}, {"content", "be brief"}},
                                      {{"role", "user"}, {"content", "hi"}}})}}));
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].content, "be brief");
}

// Parameters the server cannot honour are refused, not ignored.
TEST(Api, ToolsSuffixAndBestOfAreRefused) {
  const json tool = {{"type", "function"}, {"function", {{"name", "f"}}}};
  EXPECT_EQ(chat_error(chat({{"tools", json::array({tool})}})).param, "tools");
  EXPECT_EQ(chat_error(chat({{"functions", json::array({tool["function"]})}})).param, "functions");
  EXPECT_EQ(chat_error(chat({{"tool_choice", "required"}})).param, "tool_choice");
  EXPECT_EQ(chat_error(chat({{"function_call", "auto"}})).param, "function_call");
  // Asking for no tools is fine.
  EXPECT_NO_THROW(kiln::server::parse_chat_request(
      chat({{"tools", json::array()}, {"tool_choice", "none"}, {"functions", nullptr}})));
  const json prompt = {{"model", "m"}, {"prompt", "x"}};
  auto with = [&](const char* k, json v) {
    json b = prompt;
    b[k] = std::move(v);
    return b;
  };
  EXPECT_EQ(completion_error(with("suffix", " and so on")).param, "suffix");
  EXPECT_EQ(completion_error(with("best_of", 2)).param, "best_of");
  EXPECT_NO_THROW(kiln::server::parse_completion_request(with("suffix", "")));
  EXPECT_NO_THROW(kiln::server::parse_completion_request(with("best_of", 1)));
}

TEST(Api, MalformedBodies) {
  for (const char* body : {"{", "[1,2]", "\"x\"", "", "{\"a\":}"}) {
    try {
      kiln::server::parse_body(body);
      ADD_FAILURE() << body;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_EQ(e.type, "invalid_request_error");
    }
  }
  EXPECT_TRUE(kiln::server::parse_body("{\"a\": 1}").is_object());
}

// A value nested 100,000 deep parses (nlohmann's parser is iterative) but overflowed the
// stack of the thread that first copied it: the body is refused before parsing.
TEST(Api, DeeplyNestedBodiesAreRefusedBeforeParsing) {
  const auto nested = [](size_t depth) {
    return "{\"model\": \"m\", \"x\": " + std::string(depth, '[') + std::string(depth, ']') + "}";
  };
  try {
    kiln::server::parse_body(nested(100000));
    ADD_FAILURE() << "accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("deeper than 512 levels"), std::string::npos) << e.what();
  }
  // The limit counts the body's own object: 511 arrays inside it are fine, 512 are not.
  EXPECT_NO_THROW(kiln::server::parse_body(nested(511)));
  EXPECT_THROW(kiln::server::parse_body(nested(512)), ApiError);
  // Brackets inside strings are text.
  EXPECT_NO_THROW(kiln::server::parse_body("{\"s\": \"" + std::string(100000, '[') + "\"}"));
}

TEST(Api, CompletionPrompts) {
  auto r = kiln::server::parse_completion_request(json{{"model", "m"}, {"prompt", "hello"}});
  EXPECT_EQ(r.prompt, "hello");
  EXPECT_FALSE(r.prompt_is_tokens);
  r = kiln::server::parse_completion_request(json{{"model", "m"}, {"prompt", {"one"}}});
  EXPECT_EQ(r.prompt, "one");
  r = kiln::server::parse_completion_request(
      json{{"model", "m"}, {"prompt", {1, 2, 3}}, {"logprobs", 2}});
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_TRUE(r.gen.logprobs);
  EXPECT_EQ(r.gen.top_logprobs, 2u);
  EXPECT_EQ(completion_error(json{{"model", "m"}}).param, "prompt");
  EXPECT_EQ(completion_error(json{{"model", "m"}, {"prompt", {"a", "b"}}}).param, "prompt");
  EXPECT_EQ(completion_error(json{{"model", "m"}, {"prompt", 5}}).param, "prompt");
  EXPECT_EQ(completion_error(json{{"model", "m"}, {"prompt", "x"}, {"logprobs", 6}}).param,
            "logprobs");
}

TEST(Api, ModelNames) {
  EXPECT_EQ(kiln::server::resolve_model("llama", "llama"), "llama");
  EXPECT_EQ(kiln::server::resolve_model("in-memory::org/llama", "org/llama"), "org/llama");
  try {
    kiln::server::resolve_model("gpt-4", "llama");
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "model");
    EXPECT_EQ(std::string(e.what()), "Model 'gpt-4' not found");
  }
  EXPECT_THROW(kiln::server::resolve_model("in-memory::other", "llama"), ApiError);
}

TEST(Api, ErrorBodyShape) {
  const json e = kiln::server::error_body(kiln::server::invalid_request("bad", "temperature"));
  ASSERT_TRUE(e.contains("error"));
  EXPECT_EQ(e["error"]["message"], "bad");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "temperature");
  EXPECT_TRUE(e["error"]["code"].is_null());
  EXPECT_TRUE(kiln::server::error_body("x", "server_error")["error"]["param"].is_null());
}

TEST(Api, ResponseShapes) {
  const kiln::server::ResponseMeta m{"chatcmpl-abc", 1700000000, "llama"};
  const kiln::server::Usage u{10, 5};
  const json r = kiln::server::chat_completion_json(m, "hello", kiln::server::FinishReason::kStop,
                                                    u, std::nullopt);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"], "chatcmpl-abc");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], "llama");
  EXPECT_EQ(r["choices"][0]["index"], 0);
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "hello");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["usage"]["total_tokens"], 15);
  const json t = kiln::server::text_completion_json(m, "x", kiln::server::FinishReason::kLength, u,
                                                    std::nullopt);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "x");
  EXPECT_EQ(t["choices"][0]["finish_reason"], "length");
}

TEST(Api, SseChunks) {
  const kiln::server::ResponseMeta m{"chatcmpl-abc", 1, "llama"};
  const json first = kiln::server::chat_chunk_json(m, json{{"role", "assistant"}, {"content", ""}},
                                                   std::nullopt, std::nullopt, true);
  const std::string ev = kiln::server::sse_event(first);
  ASSERT_TRUE(ev.starts_with("data: "));
  ASSERT_TRUE(ev.ends_with("\n\n"));
  EXPECT_EQ(ev.find('\n'), ev.size() - 2);  // one line: a newline would split the event
  const json back = json::parse(ev.substr(6));
  EXPECT_EQ(back["object"], "chat.completion.chunk");
  EXPECT_EQ(back["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(back["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(back.contains("usage") && back["usage"].is_null());
  const json last = kiln::server::chat_chunk_json(
      m, json::object(), kiln::server::FinishReason::kStop, std::nullopt, false);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(last.contains("usage"));
  const json usage = kiln::server::usage_chunk_json(m, "chat.completion.chunk", {3, 4});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
  // Text with newlines and invalid UTF-8 still makes one valid event.
  const std::string tricky = kiln::server::sse_event(kiln::server::chat_chunk_json(
      m, json{{"content", "a\nb\xff"}}, std::nullopt, std::nullopt, false));
  EXPECT_EQ(tricky.find('\n'), tricky.size() - 2);
  EXPECT_EQ(std::string(kiln::server::kSseDone), "data: [DONE]\n\n");
}

TEST(Api, LogprobsShapes) {
  std::vector<kiln::server::TokenLogprobs> toks(2);
  toks[0] = {"He", -0.5f, {{"He", -0.5f}, {"Hi", -1.5f}}};
  toks[1] = {"\xC3", -0.1f, {}};  // half a character: text replaced, bytes exact
  const json c = kiln::server::chat_logprobs_json(toks);
  ASSERT_EQ(c["content"].size(), 2u);
  EXPECT_EQ(c["content"][0]["token"], "He");
  EXPECT_EQ(c["content"][0]["bytes"], json({72, 101}));
  EXPECT_EQ(c["content"][0]["top_logprobs"][1]["token"], "Hi");
  EXPECT_EQ(c["content"][1]["bytes"], json({0xC3}));
  size_t offset = 10;  // the prompt's characters
  const json l = kiln::server::completion_logprobs_json(toks, offset);
  EXPECT_EQ(l["tokens"][0], "He");
  EXPECT_EQ(l["tokens"][1], "bytes:\\xc3");
  EXPECT_EQ(l["text_offset"], json({10, 12}));
  EXPECT_EQ(offset, 13u);
  EXPECT_NEAR(l["top_logprobs"][0]["Hi"].get<double>(), -1.5, 1e-6);
}

// Offsets count characters, not bytes; tokens that are not whole UTF-8 keep distinct keys.
TEST(Api, LegacyLogprobsCountCharactersAndKeepPartialTokensApart) {
  std::vector<kiln::server::TokenLogprobs> toks(3);
  toks[0] = {"\xE6\x97", -0.3f, {{"\xE6\x97", -0.3f}, {"\xE6\x9C", -0.9f}, {"x", -2.0f}}};
  toks[1] = {"\xA5\xE6\x9C\xAC", -0.2f, {}};  // the end of 日, all of 本
  toks[2] = {"!", -0.1f, {}};
  size_t offset = 5;
  const json l = kiln::server::completion_logprobs_json(toks, offset);
  EXPECT_EQ(l["text_offset"], json({5, 6, 7}));  // 日 starts in token 0, 本 in token 1
  EXPECT_EQ(offset, 8u);
  EXPECT_EQ(l["top_logprobs"][0].size(), 3u) << l["top_logprobs"][0].dump();
  EXPECT_NEAR(l["top_logprobs"][0]["bytes:\\xe6\\x97"].get<double>(), -0.3, 1e-6);
  EXPECT_NEAR(l["top_logprobs"][0]["bytes:\\xe6\\x9c"].get<double>(), -0.9, 1e-6);
  EXPECT_EQ(l["tokens"][1], "bytes:\\xa5\\xe6\\x9c\\xac");
  EXPECT_EQ(kiln::server::characters_begun("h\xC3\xA9llo"), 5u);
}

}  // namespace
