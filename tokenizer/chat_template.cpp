#include "tokenizer/chat_template.h"

#include <stdexcept>
#include <utility>

#include "gguf/gguf.h"

namespace kiln {

namespace {

struct BuiltinTemplate {
  std::string_view name;
  std::string_view source;
};

constexpr BuiltinTemplate kBuiltins[] = {
#include "tokenizer/chat_template_builtins.inc"
};

std::string builtin_list() {
  std::string out;
  for (const auto& b : kBuiltins) {
    if (!out.empty()) out += ", ";
    out += b.name;
  }
  return out;
}

}  // namespace

ChatMessage ChatMessage::from_json(const nlohmann::ordered_json& j) {
  if (!j.is_object()) throw std::invalid_argument("a message must be a JSON object");
  ChatMessage m;
  const auto role = j.find("role");
  if (role == j.end() || !role->is_string()) {
    throw std::invalid_argument("a message needs a string 'role'");
  }
  m.role = role->get<std::string>();
  for (const auto& [key, value] : j.items()) {
    if (key == "role") continue;
    if (key == "content") {
      if (value.is_string()) {
        m.content = value.get<std::string>();
      } else if (value.is_array()) {
        // OpenAI content parts: only text parts can reach a text-only model.
        for (const auto& part : value) {
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
              !part["text"].is_string()) {
            throw std::invalid_argument(
                "message content parts must be {\"type\": \"text\", \"text\": ...}");
          }
          m.content += part["text"].get<std::string>();
        }
      } else if (value.is_null()) {
        m.content_null = true;
      } else {
        throw std::invalid_argument(
            "message 'content' must be a string, an array of parts or null");
      }
    } else if (key == "reasoning_content" && value.is_string()) {
      m.reasoning_content = value.get<std::string>();
    } else {
      m.extra[key] = value;
    }
  }
  return m;
}

ChatTemplate ChatTemplate::from_source(std::string jinja_source) {
  ChatTemplate t;
  t.template_ = std::make_shared<const jinja::Template>(jinja_source);
  t.source_ = std::move(jinja_source);
  return t;
}

ChatTemplate ChatTemplate::from_gguf(const gguf::File& file) {
  const auto source = file.get_string_opt("tokenizer.chat_template");
  if (!source) {
    throw std::invalid_argument(file.path() +
                                " has no tokenizer.chat_template; choose a built-in template with "
                                "--chat-template NAME (one of: " +
                                builtin_list() + ")");
  }
  try {
    return from_source(std::string(*source));
  } catch (const jinja::Error& e) {
    throw jinja::Error("the chat template of " + file.path() + " cannot be used: " + e.what() +
                       " (override it with --chat-template NAME)");
  }
}

ChatTemplate ChatTemplate::builtin(std::string_view name) {
  for (const auto& b : kBuiltins) {
    if (b.name == name) return from_source(std::string(b.source));
  }
  throw std::invalid_argument("unknown chat template '" + std::string(name) +
                              "'; built-in templates: " + builtin_list());
}

std::vector<std::string_view> ChatTemplate::builtin_names() {
  std::vector<std::string_view> names;
  for (const auto& b : kBuiltins) names.push_back(b.name);
  return names;
}

jinja::TString ChatTemplate::render_tainted(std::span<const ChatMessage> messages,
                                            bool add_generation_prompt,
                                            const nlohmann::ordered_json& extra_vars,
                                            std::string_view bos_token,
                                            std::string_view eos_token) const {
  using jinja::TString;
  using jinja::Value;
  std::map<std::string, Value> vars;
  if (!extra_vars.is_null()) {
    if (!extra_vars.is_object())
      throw std::invalid_argument("template variables must be a JSON object");
    for (const auto& [key, value] : extra_vars.items()) vars[key] = Value::from_json(value, true);
  }
  jinja::ValueList list;
  list.reserve(messages.size());
  for (const auto& m : messages) {
    jinja::ValueDict d;
    d.set(TString("role"), Value::string(m.role, true));
    d.set(TString("content"), m.content_null ? Value::none() : Value::string(m.content, true));
    if (m.reasoning_content) {
      d.set(TString("reasoning_content"), Value::string(*m.reasoning_content, true));
    }
    if (m.extra.is_object()) {
      for (const auto& [key, value] : m.extra.items()) {
        d.set(TString(key, true), Value::from_json(value, true));
      }
    } else if (!m.extra.is_null()) {
      throw std::invalid_argument("ChatMessage::extra must be a JSON object");
    }
    list.push_back(Value::make_dict(std::move(d)));
  }
  // transformers always passes these (None when the request has none), and
  // templates test `tools is defined` / `tools is none`, so do the same.
  vars.try_emplace("tools", Value::none());
  vars.try_emplace("documents", Value::none());
  vars["messages"] = Value::make_list(std::move(list));
  vars["add_generation_prompt"] = Value::boolean(add_generation_prompt);
  vars["bos_token"] = Value::string(std::string(bos_token), false);
  vars["eos_token"] = Value::string(std::string(eos_token), false);
  return template_->render(vars);
}

std::vector<TextSegment> ChatTemplate::render(std::span<const ChatMessage> messages,
                                              bool add_generation_prompt,
                                              const nlohmann::ordered_json& extra_vars,
                                              std::string_view bos_token,
                                              std::string_view eos_token) const {
  const jinja::TString out =
      render_tainted(messages, add_generation_prompt, extra_vars, bos_token, eos_token);
  std::vector<TextSegment> segments;
  size_t start = 0;
  for (size_t k = 1; k <= out.text.size(); ++k) {
    if (k == out.text.size() || out.tainted_at(k) != out.tainted_at(start)) {
      segments.push_back(TextSegment{out.text.substr(start, k - start), !out.tainted_at(start)});
      start = k;
    }
  }
  return segments;
}

std::string ChatTemplate::render_string(std::span<const ChatMessage> messages,
                                        bool add_generation_prompt,
                                        const nlohmann::ordered_json& extra_vars,
                                        std::string_view bos_token,
                                        std::string_view eos_token) const {
  return render_tainted(messages, add_generation_prompt, extra_vars, bos_token, eos_token).text;
}

}  // namespace kiln
