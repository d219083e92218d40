// kiln template: renders a chat template with messages from a JSON file and
// prints the prompt (a developer tool; the pytest oracle compares it to jinja2).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "gguf/gguf.h"
#include "sampler/json_text.h"
#include "tokenizer/chat_template.h"

namespace kiln::cli {
namespace {

constexpr const char* kUsage =
    R"(usage: kiln template [-m MODEL.gguf] --messages FILE.json [options]

Renders a chat template and prints the prompt text (nothing added after it).

  -m, --model PATH         GGUF model: its tokenizer.chat_template and BOS/EOS tokens
  --messages FILE          JSON list of messages ({"role", "content", ...}), or an
                           object {"messages": [...], "tools": [...], other variables};
                           '-' reads stdin
  --add-generation-prompt  end with the opening of an assistant turn
  --var KEY=JSON           a template variable, e.g. --var enable_thinking=false
                           (a value that is not JSON is taken as a string); repeatable
  --chat-template NAME     a built-in template (overrides the model's), or a path to
                           a .jinja file
  --bos TEXT, --eos TEXT   bos_token/eos_token (default: the model's, else "")
  --segments               print JSON segments [{"text", "special"}] instead, showing
                           which text may contain special tokens
  -h, --help               this help

built-in templates: )";

std::string read_all(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("cannot read '" + path + "'");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string token_text(const gguf::File& file, std::string_view id_key) {
  const auto id = file.get_uint_opt(id_key);
  if (!id) return "";
  const auto tokens = file.get_string_array("tokenizer.ggml.tokens");
  if (*id >= tokens.size()) {
    throw std::invalid_argument(std::string(id_key) + " = " + std::to_string(*id) +
                                " is outside the vocabulary of " + file.path());
  }
  return std::string(tokens[*id]);
}

int run_template(Args args) {
  std::optional<std::string> model_path, messages_path, template_name, bos, eos;
  bool add_generation_prompt = false;
  bool segments_out = false;
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  std::string usage = kUsage;  // ends "built-in templates: ", then their names
  const char* separator = "";
  for (auto n : ChatTemplate::builtin_names()) {
    usage += separator + std::string(n);
    separator = ", ";
  }
  usage += '\n';
  OptionParser parser("template", usage);
  const auto optional_text = [](std::optional<std::string>& target) {
    return [&target](std::string_view, std::string_view v) { target = std::string(v); };
  };
  parser.value({"-m", "--model"}, optional_text(model_path));
  parser.value({"--messages"}, optional_text(messages_path));
  parser.flag({"--add-generation-prompt"}, add_generation_prompt);
  parser.value({"--var"}, [&vars](std::string_view, std::string_view v) {
    const std::string kv(v);
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw std::invalid_argument("--var expects KEY=VALUE, got '" + kv + "'");
    }
    const std::string value = kv.substr(eq + 1);
    if (json_nesting_depth(value) > kMaxJsonNesting) {
      throw std::invalid_argument("--var " + kv.substr(0, eq) + ": JSON nested deeper than " +
                                  std::to_string(kMaxJsonNesting) + " levels");
    }
    auto parsed = nlohmann::ordered_json::parse(value, nullptr, /*allow_exceptions=*/false);
    vars[kv.substr(0, eq)] = parsed.is_discarded() ? nlohmann::ordered_json(value) : parsed;
  });
  parser.value({"--chat-template"}, optional_text(template_name));
  parser.value({"--bos"}, optional_text(bos));
  parser.value({"--eos"}, optional_text(eos));
  parser.flag({"--segments"}, segments_out);
  if (!parser.parse(args)) return 0;
  if (!messages_path) throw std::invalid_argument("--messages FILE is required");
  if (!model_path && !template_name) {
    throw std::invalid_argument("give a model (-m MODEL.gguf) or --chat-template NAME");
  }

  std::optional<gguf::File> model;
  if (model_path) model.emplace(gguf::File::open(*model_path));

  std::optional<ChatTemplate> tmpl;
  if (template_name) {
    const auto names = ChatTemplate::builtin_names();
    if (std::find(names.begin(), names.end(), *template_name) == names.end() &&
        std::filesystem::is_regular_file(*template_name)) {
      tmpl = ChatTemplate::from_source(read_all(*template_name));
    } else {
      tmpl = ChatTemplate::builtin(*template_name);
    }
  } else {
    tmpl = ChatTemplate::from_gguf(*model);
  }
  if (!bos) bos = model ? token_text(*model, "tokenizer.ggml.bos_token_id") : "";
  if (!eos) eos = model ? token_text(*model, "tokenizer.ggml.eos_token_id") : "";

  nlohmann::ordered_json doc;
  const std::string messages_text = read_all(*messages_path);
  if (json_nesting_depth(messages_text) > kMaxJsonNesting) {
    throw std::invalid_argument("--messages " + *messages_path + ": JSON nested deeper than " +
                                std::to_string(kMaxJsonNesting) + " levels");
  }
  try {
    doc = nlohmann::ordered_json::parse(messages_text);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::invalid_argument("--messages " + *messages_path + ": invalid JSON: " + e.what());
  }
  nlohmann::ordered_json message_list;
  if (doc.is_array()) {
    message_list = doc;
  } else if (doc.is_object() && doc.contains("messages")) {
    message_list = doc["messages"];
    for (const auto& [k, v] : doc.items()) {
      if (k != "messages" && !vars.contains(k)) vars[k] = v;
    }
  } else {
    throw std::invalid_argument("--messages " + *messages_path +
                                ": expected a list of messages or an object with \"messages\"");
  }
  if (!message_list.is_array()) throw std::invalid_argument("\"messages\" must be a list");
  std::vector<ChatMessage> messages;
  for (size_t k = 0; k < message_list.size(); ++k) {
    try {
      messages.push_back(ChatMessage::from_json(message_list[k]));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("message " + std::to_string(k) + ": " + e.what());
    }
  }

  if (segments_out) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const auto& s : tmpl->render(messages, add_generation_prompt, vars, *bos, *eos)) {
      out.push_back({{"text", s.text}, {"special", s.parse_special}});
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  const std::string prompt = tmpl->render_string(messages, add_generation_prompt, vars, *bos, *eos);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  return 0;
}

const Command kTemplateCommand("template", "render a chat template with messages from a JSON file",
                               run_template);

}  // namespace
}  // namespace kiln::cli
