#include "server/structured.h"

#include <algorithm>
#include <mutex>
#include <stdexcept>

#include "sampler/json_schema.h"
#include "server/api.h"

namespace kiln::server {

namespace {

constexpr std::string_view kSchemaParam = "response_format.json_schema.schema";

// Compiled schemas, shared by every request (Grammar is immutable once
// built). Compiling a large schema takes milliseconds; clients tend to send
// the same few schemas over and over.
class GrammarCache {
 public:
  template <typename Build>
  std::shared_ptr<const Grammar> get(const std::string& key, Build&& build) {
    {
      std::lock_guard lk(mu_);
      if (auto it = index_.find(key); it != index_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        return it->second->second;
      }
    }
    // Built outside the lock: a slow schema does not hold up other requests.
    std::shared_ptr<const Grammar> grammar = build();
    std::lock_guard lk(mu_);
    if (index_.count(key) == 0) {
      lru_.emplace_front(key, grammar);
      index_[key] = lru_.begin();
      if (lru_.size() > kCapacity) {
        index_.erase(lru_.back().first);
        lru_.pop_back();
      }
    }
    return grammar;
  }

 private:
  static constexpr size_t kCapacity = 64;
  std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<const Grammar>>> lru_;
  std::unordered_map<std::string, decltype(lru_)::iterator> index_;
};

GrammarCache& grammar_cache() {
  static GrammarCache cache;
  return cache;
}

const nlohmann::ordered_json* field(const nlohmann::ordered_json& obj, const char* name) {
  const auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string string_field(const nlohmann::ordered_json& obj, const char* name,
                         const std::string& param) {
  const auto* v = field(obj, name);
  if (!v) return "";
  if (!v->is_string()) throw invalid_request("'" + param + "' must be a string", param);
  return v->get<std::string>();
}

std::shared_ptr<const Grammar> schema_grammar(const nlohmann::ordered_json& schema,
                                              const std::string& key) {
  try {
    return grammar_cache().get(key, [&] { return JsonGrammar::from_schema(schema); });
  } catch (const UnsupportedSchema& e) {
    throw ApiError(400, std::string("response_format: ") + e.what(), "invalid_request_error",
                   std::string(kSchemaParam), "unsupported_schema");
  } catch (const UnsatisfiableSchema& e) {
    throw ApiError(400, std::string("response_format: ") + e.what(), "invalid_request_error",
                   std::string(kSchemaParam), "unsatisfiable_schema");
  } catch (const std::invalid_argument& e) {
    // Malformed schemas (a "type" that is not a type name, a repetition too
    // large to compile, ...).
    throw ApiError(400, std::string("response_format: invalid JSON Schema: ") + e.what(),
                   "invalid_request_error", std::string(kSchemaParam), "invalid_schema");
  }
}

}  // namespace

ResponseFormat parse_response_format(const nlohmann::ordered_json& value) {
  if (!value.is_object()) {
    throw invalid_request("'response_format' must be an object", "response_format");
  }
  const auto* type = field(value, "type");
  if (!type) throw invalid_request("'response_format.type' is required", "response_format.type");
  if (!type->is_string()) {
    throw invalid_request("'response_format.type' must be a string", "response_format.type");
  }
  const std::string t = type->get<std::string>();
  ResponseFormat f;
  if (t == "text") return f;
  if (t == "json_object") {
    f.kind = ResponseFormat::Kind::kJsonObject;
    f.key = "json_object";
    f.grammar = grammar_cache().get(f.key, [] { return JsonGrammar::any_object(); });
    return f;
  }
  if (t != "json_schema") {
    throw invalid_request(
        "response_format type must be 'text', 'json_object' or 'json_schema', got '" + t + "'",
        "response_format.type");
  }
  f.kind = ResponseFormat::Kind::kJsonSchema;
  const auto* js = field(value, "json_schema");
  if (!js) {
    throw invalid_request("'response_format.json_schema' is required when type is 'json_schema'",
                          "response_format.json_schema");
  }
  if (!js->is_object()) {
    throw invalid_request("'response_format.json_schema' must be an object",
                          "response_format.json_schema");
  }
  f.name = string_field(*js, "name", "response_format.json_schema.name");
  if (const auto* strict = field(*js, "strict")) {
    if (!strict->is_boolean()) {
      throw invalid_request("'response_format.json_schema.strict' must be a boolean",
                            "response_format.json_schema.strict");
    }
    f.strict = strict->get<bool>();
  }
  const auto* schema = field(*js, "schema");
  if (!schema) {
    f.key = "any_value";
    f.grammar = grammar_cache().get(f.key, [] { return JsonGrammar::any_value(); });
    return f;
  }
  if (!schema->is_object() && !schema->is_boolean()) {
    throw invalid_request("'" + std::string(kSchemaParam) + "' must be an object",
                          std::string(kSchemaParam));
  }
  // ordered_json keeps the schema's property order, so the key (and the
  // generated documents) follow the client's order; "schema:" keeps the key
  // apart from the built-in ones.
  f.key = "schema:" + schema->dump();
  f.grammar = schema_grammar(*schema, f.key);
  return f;
}

ConstraintFactory::ConstraintFactory(const Tokenizer& tokenizer, size_t max_cached_grammars)
    : max_cached_(std::max<size_t>(1, max_cached_grammars)) {
  std::vector<std::string> bytes(tokenizer.vocab_size());
  for (size_t id = 0; id < bytes.size(); ++id) {
    const auto t = static_cast<TokenId>(id);
    if (tokenizer.is_eog(t)) eog_.push_back(t);
    // Control tokens stand for no text a document could contain.
    if (tokenizer.is_control(t)) continue;
    bytes[id] = std::string(tokenizer.token_bytes(t));
  }
  trie_ = std::make_shared<const TokenTrie>(TokenTrie::build(bytes, eog_));
}

std::unique_ptr<GrammarConstraint> ConstraintFactory::make(const ResponseFormat& format) {
  if (!format.constrained()) {
    throw std::invalid_argument("ConstraintFactory::make: response_format has no grammar");
  }
  std::shared_ptr<CompiledGrammar> compiled;
  if (auto it = index_.find(format.key); it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    compiled = it->second->second;
  } else {
    compiled = std::make_shared<CompiledGrammar>(format.grammar, trie_, eog_);
    lru_.emplace_front(format.key, compiled);
    index_[format.key] = lru_.begin();
    // Sequences still using an evicted grammar keep it alive until they end.
    if (lru_.size() > max_cached_) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  return std::make_unique<GrammarConstraint>(std::move(compiled));
}

std::optional<ReasoningOptions> reasoning_options_for(std::string_view template_source,
                                                      std::string_view rendered_prompt) {
  ReasoningOptions options;
  if (template_source.find(options.open_tag) == std::string_view::npos) return std::nullopt;
  std::string_view tail = rendered_prompt;
  while (!tail.empty() && (tail.back() == ' ' || tail.back() == '\n' || tail.back() == '\t' ||
                           tail.back() == '\r')) {
    tail.remove_suffix(1);
  }
  options.starts_in_reasoning = tail.ends_with(options.open_tag);
  return options;
}

ChatOutputSplitter::ChatOutputSplitter(std::optional<ReasoningOptions> options) {
  if (options) splitter_.emplace(std::move(*options));
}

ReasoningDelta ChatOutputSplitter::feed(std::string_view text) {
  if (splitter_) return splitter_->feed(text);
  return {"", std::string(text)};
}

ReasoningDelta ChatOutputSplitter::finish() {
  if (splitter_) return splitter_->finish();
  return {};
}

}  // namespace kiln::server
