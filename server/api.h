// The OpenAI-compatible wire format: request parsing and validation, error
// bodies, and the response / streaming-chunk JSON shapes.
//
// Everything here is pure (no sockets, no engine), so it is unit-tested
// field by field. A bad request throws ApiError carrying the HTTP status and
// OpenAI's error fields; `param` names the offending field.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "sampler/chain.h"
#include "server/structured.h"
#include "tokenizer/chat_template.h"

namespace kiln::server {

using json = nlohmann::ordered_json;

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type, std::string param = "",
           std::string code = "")
      : std::runtime_error(std::move(message)),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type;   // invalid_request_error, authentication_error, server_error, ...
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};

// 400 invalid_request_error naming `param`.
ApiError invalid_request(std::string message, std::string param = "");

// {"error": {"message", "type", "param", "code"}}
json error_body(const ApiError& e);
json error_body(std::string_view message, std::string_view type, std::string_view param = "",
                std::string_view code = "");

// Parses a request body; malformed JSON or a non-object is a 400.
json parse_body(std::string_view body);

// Everything that steers one generation, shared by both endpoints.
struct GenerationParams {
  SamplingConfig sampling;
  std::optional<uint64_t> seed;
  std::optional<size_t> max_tokens;  // absent: until the context ends
  std::vector<std::string> stop;
  bool logprobs = false;
  size_t top_logprobs = 0;  // alternatives per position (chat: 0-20, completions: 0-5)
  bool stream = false;
  bool include_usage = false;      // stream_options.include_usage
  ResponseFormat response_format;  // json_object / json_schema: a grammar constrains sampling
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  GenerationParams gen;
  json template_vars = json::object();  // enable_thinking, ...
};

struct CompletionRequest {
  std::string model;
  std::string prompt;                  // text prompt, or
  std::vector<int32_t> prompt_tokens;  // token ids given directly
  bool prompt_is_tokens = false;
  GenerationParams gen;
};

// Field-by-field validation. Unknown fields are ignored; null is the same as
// absent. Throws ApiError (400) naming the field.
ChatRequest parse_chat_request(const json& body);
CompletionRequest parse_completion_request(const json& body);

// The served model's id for a request's `model`: an optional "in-memory::"
// backend prefix is dropped; anything else than `served_id` is a 400
// "Model 'NAME' not found" with param "model".
std::string resolve_model(std::string_view requested, std::string_view served_id);

enum class FinishReason { kStop, kLength };
std::string_view to_string(FinishReason r);

struct Usage {
  size_t prompt_tokens = 0;
  size_t completion_tokens = 0;
};
json usage_json(const Usage& u);

// One generated token with its log-probabilities (OpenAI logprobs).
struct TokenLogprobs {
  std::string token;  // the token's bytes (may be part of a UTF-8 character)
  float logprob = 0.0f;
  std::vector<std::pair<std::string, float>> top;  // alternatives, most likely first
};

// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}
json chat_logprobs_json(const std::vector<TokenLogprobs>& tokens);
// Completions (legacy): {"tokens", "token_logprobs", "top_logprobs", "text_offset"}. Offsets
// count characters (code points, as the clients index text) from the start of the prompt:
// `text_offset` is where the first token begins, and is advanced past these tokens. A token
// that is not whole UTF-8 shows as "bytes:\xNN...", as OpenAI writes it (as U+FFFD,
// different tokens would share one key of top_logprobs).
json completion_logprobs_json(const std::vector<TokenLogprobs>& tokens, size_t& text_offset);
// How many characters start in these UTF-8 bytes (the bytes that are not continuations).
size_t characters_begun(std::string_view s);
// A token's text for the legacy logprobs: itself when it is whole UTF-8, else "bytes:\xNN..".
std::string legacy_token_text(std::string_view s);

// Identity of one response (shared by all chunks of a stream).
struct ResponseMeta {
  std::string id;  // chatcmpl-... / cmpl-...
  int64_t created = 0;
  std::string model;
  size_t prompt_characters = 0;  // completions: where the legacy text_offset starts
};
std::string new_response_id(std::string_view prefix);  // prefix + 24 random alphanumerics

json chat_completion_json(const ResponseMeta& m, const std::string& content, FinishReason finish,
                          const Usage& usage, const std::optional<json>& logprobs);
json text_completion_json(const ResponseMeta& m, const std::string& text, FinishReason finish,
                          const Usage& usage, const std::optional<json>& logprobs);

// Streaming chunks. `delta` is e.g. {"role":"assistant","content":""} or
// {"content":"..."}; finish is null until the last chunk. When include_usage
// is set every chunk carries "usage": null, as OpenAI does.
json chat_chunk_json(const ResponseMeta& m, const json& delta, std::optional<FinishReason> finish,
                     const std::optional<json>& logprobs, bool include_usage);
json text_chunk_json(const ResponseMeta& m, const std::string& text,
                     std::optional<FinishReason> finish, const std::optional<json>& logprobs,
                     bool include_usage);
// The final usage chunk: "choices": [] and the usage object.
json usage_chunk_json(const ResponseMeta& m, std::string_view object, const Usage& usage);

// "data: <json>\n\n"
std::string sse_event(const json& j);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace kiln::server
