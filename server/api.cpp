#include "server/api.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "sampler/json_text.h"

namespace kiln::server {

namespace {

// Bounds on what one request may ask for.
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopLength = 256;
constexpr size_t kMaxLogitBias = 1024;
constexpr size_t kMaxMessages = 4096;

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a number";
    default:
      return "an integer";
  }
}

ApiError wrong_type(const std::string& param, std::string_view expected, const json& v) {
  return invalid_request("Invalid type for '" + param + "': expected " + std::string(expected) +
                             ", but got " + type_name(v) + " instead.",
                         param);
}

// The field's value, or nullptr when it is absent or null.
const json* find(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number_in(const json& v, const std::string& param, double lo, double hi) {
  if (!v.is_number()) throw wrong_type(param, "a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "'%s' must be a number in [%g, %g], got %g", param.c_str(), lo,
                  hi, d);
    throw invalid_request(buf, param);
  }
  return d;
}

int64_t integer_in(const json& v, const std::string& param, int64_t lo, int64_t hi) {
  const auto out_of_range = [&] {
    return invalid_request("'" + param + "' must be an integer in [" + std::to_string(lo) + ", " +
                               std::to_string(hi) + "]",
                           param);
  };
  // 3.0 is accepted as 3 (JSON has one number type); 3.5 is not an integer.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d)) throw wrong_type(param, "an integer", v);
    // 1e300 is a whole number, just far too big (and beyond int64 for the cast below).
    constexpr double kTwoTo63 = 9223372036854775808.0;
    if (d < -kTwoTo63 || d >= kTwoTo63 || d < static_cast<double>(lo) ||
        d > static_cast<double>(hi)) {
      throw out_of_range();
    }
  } else if (!v.is_number()) {
    throw wrong_type(param, "an integer", v);
  }
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    throw out_of_range();
  }
  const int64_t i = v.is_number_float() ? static_cast<int64_t>(v.get<double>()) : v.get<int64_t>();
  if (i < lo || i > hi) {
    throw invalid_request("'" + param + "' must be an integer in [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + "], got " + std::to_string(i),
                          param);
  }
  return i;
}

bool boolean(const json& v, const std::string& param) {
  if (!v.is_boolean()) throw wrong_type(param, "a boolean", v);
  return v.get<bool>();
}

std::string string_of(const json& v, const std::string& param) {
  if (!v.is_string()) throw wrong_type(param, "a string", v);
  return v.get<std::string>();
}

std::string required_model(const json& body) {
  const json* m = find(body, "model");
  if (!m) throw invalid_request("you must provide a model parameter", "model");
  return string_of(*m, "model");
}

// The fields both endpoints share. `max_top_logprobs` differs: chat allows
// 20 alternatives, the legacy completions endpoint 5 (given as `logprobs`).
void parse_common(const json& body, GenerationParams& g) {
  SamplingConfig& s = g.sampling;
  if (const json* v = find(body, "temperature")) {
    s.temperature = static_cast<float>(number_in(*v, "temperature", 0.0, 2.0));
  }
  if (const json* v = find(body, "top_p")) {
    s.top_p = static_cast<float>(number_in(*v, "top_p", 0.0, 1.0));
  }
  if (const json* v = find(body, "top_k")) {
    s.top_k = static_cast<size_t>(integer_in(*v, "top_k", 0, 1 << 20));
  }
  if (const json* v = find(body, "min_p")) {
    s.min_p = static_cast<float>(number_in(*v, "min_p", 0.0, 1.0));
  }
  if (const json* v = find(body, "presence_penalty")) {
    s.presence_penalty = static_cast<float>(number_in(*v, "presence_penalty", -2.0, 2.0));
  }
  if (const json* v = find(body, "frequency_penalty")) {
    s.frequency_penalty = static_cast<float>(number_in(*v, "frequency_penalty", -2.0, 2.0));
  }
  if (const json* v = find(body, "repetition_penalty")) {
    s.repetition_penalty = static_cast<float>(number_in(*v, "repetition_penalty", 0.01, 10.0));
  }
  if (const json* v = find(body, "logit_bias")) {
    if (!v->is_object()) throw wrong_type("logit_bias", "an object", *v);
    if (v->size() > kMaxLogitBias) {
      throw invalid_request(
          "'logit_bias' may have at most " + std::to_string(kMaxLogitBias) + " entries",
          "logit_bias");
    }
    for (const auto& [key, value] : v->items()) {
      int64_t token = -1;
      const char* end = key.data() + key.size();
      const auto [ptr, ec] = std::from_chars(key.data(), end, token);
      if (key.empty() || ec != std::errc() || ptr != end || token < 0 ||
          token > std::numeric_limits<int32_t>::max()) {
        throw invalid_request("'logit_bias' keys must be token ids, got '" + key + "'",
                              "logit_bias");
      }
      const double bias = number_in(value, "logit_bias", -100.0, 100.0);
      s.logit_bias.push_back({static_cast<int32_t>(token), static_cast<float>(bias)});
    }
  }
  if (const json* v = find(body, "seed")) {
    // Any int64, as OpenAI's API takes; negative seeds are as good as any other.
    g.seed = static_cast<uint64_t>(integer_in(*v, "seed", std::numeric_limits<int64_t>::min(),
                                              std::numeric_limits<int64_t>::max()));
  }
  // max_completion_tokens is the newer name; it wins when both are given.
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (const json* v = find(body, name)) {
      g.max_tokens = static_cast<size_t>(integer_in(*v, name, 1, 1 << 24));
    }
  }
  if (const json* v = find(body, "stop")) {
    if (v->is_string()) {
      g.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > kMaxStopStrings) {
        throw invalid_request(
            "'stop' may have at most " + std::to_string(kMaxStopStrings) + " strings", "stop");
      }
      for (const auto& s : *v) g.stop.push_back(string_of(s, "stop"));
    } else {
      throw wrong_type("stop", "a string or an array of strings", *v);
    }
    for (const auto& s : g.stop) {
      if (s.size() > kMaxStopLength) {
        throw invalid_request(
            "stop strings may be at most " + std::to_string(kMaxStopLength) + " bytes", "stop");
      }
    }
  }
  if (const json* v = find(body, "n")) {
    if (integer_in(*v, "n", 1, 128) != 1) {
      throw invalid_request("only n = 1 is supported", "n");
    }
  }
  if (const json* v = find(body, "stream")) g.stream = boolean(*v, "stream");
  if (const json* v = find(body, "stream_options")) {
    if (!v->is_object()) throw wrong_type("stream_options", "an object", *v);
    if (!g.stream) {
      throw invalid_request(
          "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
          "stream_options");
    }
    if (const json* u = find(*v, "include_usage")) {
      g.include_usage = boolean(*u, "stream_options.include_usage");
    }
  }
  if (const json* v = find(body, "response_format")) {
    g.response_format = parse_response_format(*v);
    // A stop string could end a JSON document half-way, and finish_reason
    // "stop" promises a complete one.
    if (g.response_format.constrained() && !g.stop.empty()) {
      throw invalid_request("'stop' cannot be combined with a JSON response_format", "stop");
    }
  }
}

const json* content_of(const json& message) {
  const auto it = message.find("content");
  return it == message.end() ? nullptr : &*it;
}

}  // namespace

ApiError invalid_request(std::string message, std::string param) {
  return ApiError(400, std::move(message), "invalid_request_error", std::move(param));
}

json error_body(std::string_view message, std::string_view type, std::string_view param,
                std::string_view code) {
  json e = json::object();
  e["message"] = message;
  e["type"] = type;
  e["param"] = param.empty() ? json(nullptr) : json(param);
  e["code"] = code.empty() ? json(nullptr) : json(code);
  return json{{"error", std::move(e)}};
}

json error_body(const ApiError& e) { return error_body(e.what(), e.type, e.param, e.code); }

json parse_body(std::string_view body) {
  // Before parsing: a deep value would overflow the stack wherever it is first copied.
  if (json_nesting_depth(body) > kMaxJsonNesting) {
    throw invalid_request("the request body nests arrays and objects deeper than " +
                          std::to_string(kMaxJsonNesting) + " levels");
  }
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw invalid_request(std::string("the request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) {
    throw invalid_request("the request body must be a JSON object, got " + type_name(j));
  }
  return j;
}

ChatRequest parse_chat_request(const json& body) {
  ChatRequest r;
  r.model = required_model(body);
  const json* messages = find(body, "messages");
  if (!messages) throw invalid_request("'messages' is a required property", "messages");
  if (!messages->is_array()) throw wrong_type("messages", "an array", *messages);
  if (messages->empty()) {
    throw invalid_request("'messages' must contain at least one message", "messages");
  }
  if (messages->size() > kMaxMessages) {
    throw invalid_request("'messages' may hold at most " + std::to_string(kMaxMessages),
                          "messages");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw wrong_type(param, "an object", m);
    const json* role = find(m, "role");
    if (!role) throw invalid_request("'" + param + ".role' is required", param + ".role");
    const std::string role_name = string_of(*role, param + ".role");
    if (role_name != "system" && role_name != "user" && role_name != "assistant" &&
        role_name != "developer" && role_name != "tool") {
      throw invalid_request("'" + role_name +
                                "' is not one of ['system', 'developer', 'user', 'assistant', "
                                "'tool'] - '" +
                                param + ".role'",
                            param + ".role");
    }
    const json* content = content_of(m);
    if (content && !content->is_null()) {
      if (content->is_array()) {
        for (size_t k = 0; k < content->size(); ++k) {
          const json& part = (*content)[k];
          const std::string pp = param + ".content[" + std::to_string(k) + "]";
          if (!part.is_object()) throw wrong_type(pp, "an object", part);
          const json* type = find(part, "type");
          if (!type || !type->is_string() || type->get<std::string>() != "text") {
            throw invalid_request(
                "only text content parts are supported ('" + pp + ".type' must be 'text')",
                pp + ".type");
          }
          const json* text = find(part, "text");
          if (!text) throw invalid_request("'" + pp + ".text' is required", pp + ".text");
          string_of(*text, pp + ".text");
        }
      } else if (!content->is_string()) {
        throw wrong_type(param + ".content", "a string or an array of text parts", *content);
      }
    } else if (role_name != "assistant") {
      throw invalid_request("'" + param + ".content' is required", param + ".content");
    }
    try {
      r.messages.push_back(ChatMessage::from_json(m));
    } catch (const std::invalid_argument& e) {
      throw invalid_request(e.what(), param);
    }
    // OpenAI's "developer" messages take the place of system messages; chat templates know
    // only "system" (SmolLM2's would render a "developer" turn and add its default system
    // prompt besides).
    if (r.messages.back().role == "developer") r.messages.back().role = "system";
  }
  parse_common(body, r.gen);
  if (const json* v = find(body, "logprobs")) r.gen.logprobs = boolean(*v, "logprobs");
  if (const json* v = find(body, "top_logprobs")) {
    r.gen.top_logprobs = static_cast<size_t>(integer_in(*v, "top_logprobs", 0, 20));
    if (!r.gen.logprobs) {
      throw invalid_request("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
    }
  }
  // This server answers with text only, never tool_calls: a request that offers tools would
  // get text where it expects a call, so it is refused (as llama.cpp without --jinja does).
  // tool_choice "none" (and empty lists) ask for no tool call: those are fine.
  for (const char* name : {"tools", "functions"}) {
    if (const json* v = find(body, name); v && !v->is_null() && !(v->is_array() && v->empty())) {
      throw invalid_request(
          std::string("'") + name + "' is not supported: this server does not do tool calling",
          name);
    }
  }
  for (const char* name : {"tool_choice", "function_call"}) {
    if (const json* v = find(body, name);
        v && !v->is_null() && !(v->is_string() && v->get<std::string>() == "none")) {
      throw invalid_request(
          std::string("'") + name + "' is not supported: this server does not do tool calling",
          name);
    }
  }
  if (const json* v = find(body, "enable_thinking")) {
    r.template_vars["enable_thinking"] = boolean(*v, "enable_thinking");
  }
  return r;
}

CompletionRequest parse_completion_request(const json& body) {
  CompletionRequest r;
  r.model = required_model(body);
  const json* prompt = find(body, "prompt");
  if (!prompt) throw invalid_request("'prompt' is a required property", "prompt");
  const json* p = prompt;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) {
    p = &(*p)[0];  // a batch of one prompt
  }
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
  } else if (p->is_array()) {
    if (p->empty()) throw invalid_request("'prompt' must not be empty", "prompt");
    for (const json& t : *p) {
      if (!t.is_number_integer()) {
        throw invalid_request(
            "'prompt' must be a string, an array of token ids, or a batch of one of those "
            "(batches of several prompts are not supported)",
            "prompt");
      }
      r.prompt_tokens.push_back(
          static_cast<int32_t>(integer_in(t, "prompt", 0, std::numeric_limits<int32_t>::max())));
    }
    r.prompt_is_tokens = true;
  } else {
    throw wrong_type("prompt", "a string or an array of token ids", *p);
  }
  parse_common(body, r.gen);
  // The legacy endpoint's logprobs is the number of alternatives (0-5).
  if (const json* v = find(body, "logprobs")) {
    if (v->is_boolean()) {
      r.gen.logprobs = v->get<bool>();
    } else {
      r.gen.top_logprobs = static_cast<size_t>(integer_in(*v, "logprobs", 0, 5));
      r.gen.logprobs = true;
    }
  }
  if (const json* v = find(body, "echo")) {
    if (boolean(*v, "echo")) throw invalid_request("'echo' is not supported", "echo");
  }
  // Unsupported, so refused rather than ignored: the answer would not be what was asked.
  if (const json* v = find(body, "suffix"); v && !v->is_null()) {
    if (!v->is_string()) throw wrong_type("suffix", "a string", *v);
    if (!v->get<std::string>().empty()) {
      throw invalid_request("'suffix' (insertion) is not supported", "suffix");
    }
  }
  if (const json* v = find(body, "best_of"); v && !v->is_null()) {
    if (integer_in(*v, "best_of", 1, 128) != 1) {
      throw invalid_request("only best_of = 1 is supported", "best_of");
    }
  }
  return r;
}

std::string resolve_model(std::string_view requested, std::string_view served_id) {
  constexpr std::string_view kPrefix = "in-memory::";
  std::string_view name = requested;
  if (name.starts_with(kPrefix)) name.remove_prefix(kPrefix.size());
  if (name != served_id) {
    throw ApiError(400, "Model '" + std::string(requested) + "' not found", "invalid_request_error",
                   "model", "model_not_found");
  }
  return std::string(name);
}

std::string_view to_string(FinishReason r) { return r == FinishReason::kStop ? "stop" : "length"; }

json usage_json(const Usage& u) {
  return json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

namespace {
json bytes_json(std::string_view s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

// JSON strings must be valid UTF-8; a token may be part of a character, so
// its text is shown with invalid bytes replaced (the exact bytes are in
// "bytes").
std::string display_text(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    }
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}
}  // namespace

size_t characters_begun(std::string_view s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;  // not a continuation byte
  }));
}

std::string legacy_token_text(std::string_view s) {
  if (display_text(s) == s) return std::string(s);
  std::string out = "bytes:";
  for (const char c : s) {
    char hex[5];
    std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned char>(c));
    out += hex;
  }
  return out;
}

json chat_logprobs_json(const std::vector<TokenLogprobs>& tokens) {
  json content = json::array();
  for (const auto& t : tokens) {
    json top = json::array();
    for (const auto& [tok, lp] : t.top) {
      top.push_back(
          json{{"token", display_text(tok)}, {"logprob", lp}, {"bytes", bytes_json(tok)}});
    }
    content.push_back(json{{"token", display_text(t.token)},
                           {"logprob", t.logprob},
                           {"bytes", bytes_json(t.token)},
                           {"top_logprobs", std::move(top)}});
  }
  return json{{"content", std::move(content)}, {"refusal", nullptr}};
}

json completion_logprobs_json(const std::vector<TokenLogprobs>& tokens, size_t& text_offset) {
  json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const auto& t : tokens) {
    toks.push_back(legacy_token_text(t.token));
    lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [tok, lp] : t.top) top[legacy_token_text(tok)] = lp;
    tops.push_back(std::move(top));
    offs.push_back(text_offset);
    text_offset += characters_begun(t.token);
  }
  return json{{"tokens", std::move(toks)},
              {"token_logprobs", std::move(lps)},
              {"top_logprobs", std::move(tops)},
              {"text_offset", std::move(offs)}};
}

std::string new_response_id(std::string_view prefix) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id(prefix);
  for (int i = 0; i < 24; ++i) id += kAlphabet[rng() % (sizeof kAlphabet - 1)];
  return id;
}

json chat_completion_json(const ResponseMeta& m, const std::string& content, FinishReason finish,
                          const Usage& usage, const std::optional<json>& logprobs) {
  json choice = json::object();
  choice["index"] = 0;
  choice["message"] = json{{"role", "assistant"}, {"content", content}, {"refusal", nullptr}};
  choice["logprobs"] = logprobs ? *logprobs : json(nullptr);
  choice["finish_reason"] = to_string(finish);
  return json{{"id", m.id},
              {"object", "chat.completion"},
              {"created", m.created},
              {"model", m.model},
              {"choices", json::array({std::move(choice)})},
              {"usage", usage_json(usage)},
              {"system_fingerprint", nullptr}};
}

json text_completion_json(const ResponseMeta& m, const std::string& text, FinishReason finish,
                          const Usage& usage, const std::optional<json>& logprobs) {
  json choice = json::object();
  choice["text"] = text;
  choice["index"] = 0;
  choice["logprobs"] = logprobs ? *logprobs : json(nullptr);
  choice["finish_reason"] = to_string(finish);
  return json{{"id", m.id},
              {"object", "text_completion"},
              {"created", m.created},
              {"model", m.model},
              {"choices", json::array({std::move(choice)})},
              {"usage", usage_json(usage)},
              {"system_fingerprint", nullptr}};
}

json chat_chunk_json(const ResponseMeta& m, const json& delta, std::optional<FinishReason> finish,
                     const std::optional<json>& logprobs, bool include_usage) {
  json choice = json::object();
  choice["index"] = 0;
  choice["delta"] = delta;
  choice["logprobs"] = logprobs ? *logprobs : json(nullptr);
  choice["finish_reason"] = finish ? json(to_string(*finish)) : json(nullptr);
  json j{{"id", m.id},
         {"object", "chat.completion.chunk"},
         {"created", m.created},
         {"model", m.model},
         {"system_fingerprint", nullptr},
         {"choices", json::array({std::move(choice)})}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json text_chunk_json(const ResponseMeta& m, const std::string& text,
                     std::optional<FinishReason> finish, const std::optional<json>& logprobs,
                     bool include_usage) {
  json choice = json::object();
  choice["text"] = text;
  choice["index"] = 0;
  choice["logprobs"] = logprobs ? *logprobs : json(nullptr);
  choice["finish_reason"] = finish ? json(to_string(*finish)) : json(nullptr);
  json j{{"id", m.id},
         {"object", "text_completion"},
         {"created", m.created},
         {"model", m.model},
         {"system_fingerprint", nullptr},
         {"choices", json::array({std::move(choice)})}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json usage_chunk_json(const ResponseMeta& m, std::string_view object, const Usage& usage) {
  return json{{"id", m.id},
              {"object", object},
              {"created", m.created},
              {"model", m.model},
              {"system_fingerprint", nullptr},
              {"choices", json::array()},
              {"usage", usage_json(usage)}};
}

std::string sse_event(const json& j) {
  // replace: invalid UTF-8 can never make dump() throw mid-stream.
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace kiln::server
