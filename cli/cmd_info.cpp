// kiln info: what a GGUF file holds (architecture, shapes, tensor types, tokenizer).
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "cli/option_parser.h"
#include "gguf/gguf.h"

namespace kiln::cli {
namespace {

constexpr const char* kUsage = R"(usage: kiln info MODEL.gguf [--tensors] [--json]

Prints what a GGUF file holds: architecture, name, parameter count, file type,
tensor types, hyperparameters, tokenizer and chat template. Works on any valid
GGUF, including vocabulary-only files.

  --tensors   list every tensor (name, type, shape, offset in the file)
  --json      print one JSON object instead of text
)";

// llama.cpp's file type numbers (general.file_type), named as its tools print them.
std::string file_type_name(uint64_t ft) {
  static const std::map<uint64_t, const char*> names = {
      {0, "ALL_F32"},          {1, "MOSTLY_F16"},     {2, "MOSTLY_Q4_0"},    {3, "MOSTLY_Q4_1"},
      {7, "MOSTLY_Q8_0"},      {8, "MOSTLY_Q5_0"},    {9, "MOSTLY_Q5_1"},    {10, "MOSTLY_Q2_K"},
      {11, "MOSTLY_Q3_K_S"},   {12, "MOSTLY_Q3_K_M"}, {13, "MOSTLY_Q3_K_L"}, {14, "MOSTLY_Q4_K_S"},
      {15, "MOSTLY_Q4_K_M"},   {16, "MOSTLY_Q5_K_S"}, {17, "MOSTLY_Q5_K_M"}, {18, "MOSTLY_Q6_K"},
      {19, "MOSTLY_IQ2_XXS"},  {20, "MOSTLY_IQ2_XS"}, {21, "MOSTLY_Q2_K_S"}, {22, "MOSTLY_IQ3_XS"},
      {23, "MOSTLY_IQ3_XXS"},  {24, "MOSTLY_IQ1_S"},  {25, "MOSTLY_IQ4_NL"}, {26, "MOSTLY_IQ3_S"},
      {27, "MOSTLY_IQ3_M"},    {28, "MOSTLY_IQ2_S"},  {29, "MOSTLY_IQ2_M"},  {30, "MOSTLY_IQ4_XS"},
      {31, "MOSTLY_IQ1_M"},    {32, "MOSTLY_BF16"},   {36, "MOSTLY_TQ1_0"},  {37, "MOSTLY_TQ2_0"},
      {38, "MOSTLY_MXFP4_MOE"}};
  auto it = names.find(ft);
  return it == names.end() ? "unknown (" + std::to_string(ft) + ")" : it->second;
}

nlohmann::json describe(const gguf::File& f) {
  using nlohmann::json;
  json j;
  j["path"] = f.path();
  j["gguf_version"] = f.version();
  j["alignment"] = f.alignment();
  j["file_size"] = f.file_size();
  const std::string arch(f.architecture());
  j["architecture"] = arch.empty() ? json(nullptr) : json(arch);
  auto str = [&](const char* key) -> json {
    auto v = f.get_string_opt(key);
    return v ? json(std::string(*v)) : json(nullptr);
  };
  auto uint = [&](const std::string& key) -> json {
    auto v = f.get_uint_opt(key);
    return v ? json(*v) : json(nullptr);
  };
  j["name"] = str("general.name");
  if (auto ft = f.get_uint_opt("general.file_type")) {
    j["file_type"] = *ft;
    j["file_type_name"] = file_type_name(*ft);
  } else {
    j["file_type"] = nullptr;
    j["file_type_name"] = nullptr;
  }
  const std::string p = arch + ".";
  j["context_length"] = uint(p + "context_length");
  j["embedding_length"] = uint(p + "embedding_length");
  j["block_count"] = uint(p + "block_count");
  j["feed_forward_length"] = uint(p + "feed_forward_length");
  j["head_count"] = uint(p + "attention.head_count");
  j["head_count_kv"] = uint(p + "attention.head_count_kv");

  j["tokenizer_model"] = str("tokenizer.ggml.model");
  j["tokenizer_pre"] = str("tokenizer.ggml.pre");
  json vocab = nullptr;
  if (const auto* v = f.find("tokenizer.ggml.tokens"); v && v->type == gguf::ValueType::ARRAY) {
    vocab = std::get<gguf::Array>(v->data).count;
  } else if (auto n = f.get_uint_opt(p + "vocab_size")) {
    vocab = *n;
  }
  j["vocab_size"] = vocab;
  j["has_chat_template"] = f.has("tokenizer.chat_template");

  uint64_t params = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_type;  // name -> (count, bytes)
  json tensors = json::array();
  for (const auto& t : f.tensors()) {
    params += t.n_elements;
    auto& slot = by_type[std::string(type_name(t.type))];
    slot.first += 1;
    slot.second += t.n_bytes;
    json shape = json::array();
    for (uint32_t d = 0; d < t.n_dims; ++d) shape.push_back(t.ne[d]);
    tensors.push_back({{"name", std::string(t.name)},
                       {"type", std::string(type_name(t.type))},
                       {"shape", shape},
                       {"offset", f.data_offset() + t.offset},
                       {"bytes", t.n_bytes}});
  }
  j["parameter_count"] = params;
  j["tensor_count"] = f.tensors().size();
  json types = json::object();
  for (const auto& [name, cb] : by_type) types[name] = {{"count", cb.first}, {"bytes", cb.second}};
  j["tensor_types"] = types;
  j["tensors"] = tensors;
  j["metadata_count"] = f.metadata().size();
  return j;
}

std::string human_count(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ULL) {
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  } else if (n >= 1000000ULL) {
    std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  }
  return buf;
}

std::string human_bytes(uint64_t n) {
  char buf[32];
  if (n >= (1ULL << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", n / double(1ULL << 30));
  } else if (n >= (1ULL << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", n / double(1ULL << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f KiB", n / 1024.0);
  }
  return buf;
}

void print_text(const nlohmann::json& j, bool list_tensors) {
  auto show = [](const nlohmann::json& v) -> std::string {
    if (v.is_null()) return "-";
    if (v.is_string()) return v.get<std::string>();
    return v.dump();
  };
  std::printf("file:            %s (GGUF v%s, %s)\n", j["path"].get<std::string>().c_str(),
              j["gguf_version"].dump().c_str(), human_bytes(j["file_size"]).c_str());
  std::printf("architecture:    %s\n", show(j["architecture"]).c_str());
  std::printf("name:            %s\n", show(j["name"]).c_str());
  std::printf("parameters:      %s (%s)\n", human_count(j["parameter_count"]).c_str(),
              j["parameter_count"].dump().c_str());
  std::printf("file type:       %s\n", show(j["file_type_name"]).c_str());
  std::printf("context length:  %s\n", show(j["context_length"]).c_str());
  std::printf("embedding:       %s\n", show(j["embedding_length"]).c_str());
  std::printf("layers:          %s\n", show(j["block_count"]).c_str());
  std::printf("feed forward:    %s\n", show(j["feed_forward_length"]).c_str());
  std::printf("heads / kv:      %s / %s\n", show(j["head_count"]).c_str(),
              show(j["head_count_kv"]).c_str());
  std::printf("vocab size:      %s\n", show(j["vocab_size"]).c_str());
  std::printf("tokenizer:       %s (pre: %s)\n", show(j["tokenizer_model"]).c_str(),
              show(j["tokenizer_pre"]).c_str());
  std::printf("chat template:   %s\n", j["has_chat_template"].get<bool>() ? "yes" : "no");
  std::printf("tensors:         %s\n", j["tensor_count"].dump().c_str());
  for (const auto& [type, cb] : j["tensor_types"].items()) {
    std::printf("  %-8s %5s tensors  %s\n", type.c_str(), cb["count"].dump().c_str(),
                human_bytes(cb["bytes"]).c_str());
  }
  if (list_tensors) {
    std::printf("\n%-40s %-8s %-22s %s\n", "name", "type", "shape", "offset");
    for (const auto& t : j["tensors"]) {
      std::printf("%-40s %-8s %-22s %s\n", t["name"].get<std::string>().c_str(),
                  t["type"].get<std::string>().c_str(), t["shape"].dump().c_str(),
                  t["offset"].dump().c_str());
    }
  }
}

int run_info(Args args) {
  std::string path;
  bool json_out = false, list_tensors = false;
  OptionParser parser("info", kUsage);
  parser.flag({"--json"}, json_out);
  parser.flag({"--tensors"}, list_tensors);
  parser.positional([&](std::string_view a) {
    if (!path.empty()) throw std::invalid_argument("more than one model path given");
    path = a;
  });
  if (!parser.parse(args)) return 0;
  if (path.empty()) {
    std::fputs(kUsage, stderr);
    return 1;
  }
  const auto file = gguf::File::open(path);
  auto j = describe(file);
  if (json_out) {
    if (!list_tensors) j.erase("tensors");
    // Names and strings come from the file as bytes and need not be UTF-8 (general.name,
    // tensor names, tokenizer.ggml.pre, ...): invalid bytes become U+FFFD so the output stays
    // valid JSON, where the default dump() would throw on the first one.
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    print_text(j, list_tensors);
  }
  return 0;
}

const Command info_command{"info", "show what a GGUF file holds (architecture, tensors, tokenizer)",
                           run_info};

}  // namespace
}  // namespace kiln::cli
