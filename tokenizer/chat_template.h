// Chat templates: the model's tokenizer.chat_template (Jinja) rendered into the
// prompt text, as segments that say where special tokens may be recognised.
//
// Injection defence: every string that comes from the request (message
// content, roles, tool definitions, extra variables) is tainted, and the taint
// follows it through the template (see tokenizer/jinja.h). Tainted text is
// returned with parse_special = false, so a user who types "<|im_end|>" gets
// those characters as text, never a control token. Only the template's own
// literals and bos_token/eos_token are emitted with parse_special = true.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

namespace gguf {
class File;
}

struct ChatMessage {
  std::string role;
  std::string content;
  // The request's content was null (an assistant turn with only tool_calls):
  // the template sees None, as transformers passes it, rather than "".
  bool content_null = false;
  // Absent (not empty) unless given: templates test `is defined`.
  std::optional<std::string> reasoning_content;
  // Any other fields of the message (tool_calls, tool_call_id, name, ...),
  // passed to the template as they are. Must be a JSON object or null.
  nlohmann::ordered_json extra;

  // Parses an OpenAI-style message object. `content` may be a string, null
  // (rendered as "") or an array of {"type": "text", "text": ...} parts
  // (concatenated). Throws std::invalid_argument naming the bad field.
  static ChatMessage from_json(const nlohmann::ordered_json& j);
};

class ChatTemplate {
 public:
  // The model's tokenizer.chat_template. Throws std::invalid_argument when the
  // file has none (the message lists the built-in names to use instead), or
  // jinja::Error when the template does not parse.
  static ChatTemplate from_gguf(const gguf::File& file);
  // Throws jinja::Error naming the line, column and construct.
  static ChatTemplate from_source(std::string jinja_source);
  // A built-in template by name; an unknown name is an error listing the names.
  static ChatTemplate builtin(std::string_view name);
  static std::vector<std::string_view> builtin_names();

  // Renders the conversation. `extra_vars` must be a JSON object (or null);
  // its keys become template variables (e.g. {"enable_thinking": false},
  // {"tools": [...]}) and its strings are tainted like message text.
  // `tools` and `documents` default to none, as transformers passes them.
  // bos_token/eos_token are trusted (template-side) text.
  // Throws jinja::RaisedException when the template calls raise_exception
  // (what() is the template's message), jinja::Error on other failures.
  std::vector<TextSegment> render(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                  const nlohmann::ordered_json& extra_vars,
                                  std::string_view bos_token, std::string_view eos_token) const;
  // The concatenated text of render().
  std::string render_string(std::span<const ChatMessage> messages, bool add_generation_prompt,
                            const nlohmann::ordered_json& extra_vars, std::string_view bos_token,
                            std::string_view eos_token) const;

  const std::string& source() const { return source_; }

 private:
  jinja::TString render_tainted(std::span<const ChatMessage> messages, bool add_generation_prompt,
                                const nlohmann::ordered_json& extra_vars,
                                std::string_view bos_token, std::string_view eos_token) const;

  std::string source_;
  std::shared_ptr<const jinja::Template> template_;
};

}  // namespace kiln
