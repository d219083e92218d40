// kiln logits: float32 logits for every position of a prompt, as a .npy file
// of shape (n_tokens, n_vocab). The diffing tools (tools/compare_logits.py,
// the numpy reference, llama.cpp) read these.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/model_options.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

constexpr ModelOptionSet kModelOptions{.ctx_size = true, .device = false};

std::string usage() {
  return "usage: kiln logits -m MODEL.gguf\n"
         "                   (--prompt TEXT | --prompt-file FILE | --tokens \"1 2 3\")\n"
         "                   --out FILE.npy [options]\n"
         "\n"
         "Writes float32 logits of every position, shape (n_tokens, n_vocab), as .npy.\n"
         "\n"
         "options:\n"
         "  -m, --model FILE      GGUF model\n"
         "  --prompt TEXT         text to tokenize (BOS added as the model asks; special\n"
         "                        tokens written in the text are recognised)\n"
         "  --prompt-file FILE    the same, text read from a file\n"
         "  --tokens \"IDS\"        token ids separated by spaces or commas\n"
         "  --out FILE.npy        output file\n"
         "  --save-tokens FILE    also write the token ids, space separated\n"
         "  -c, --ctx-size N      context size (default: the number of tokens)\n"
         "  -b, --batch-size N    tokens per forward call (512)\n" +
         ModelOptions::help(kModelOptions, 24);
}

std::vector<int32_t> parse_token_list(std::string_view text) {
  std::vector<int32_t> ids;
  std::string s(text);
  for (char& ch : s) {
    if (ch == ',') ch = ' ';
  }
  std::istringstream in(s);
  std::string word;
  while (in >> word) {
    ids.push_back(static_cast<int32_t>(parse_int_option("--tokens", word, 0, INT32_MAX)));
  }
  if (ids.empty()) throw std::invalid_argument("--tokens holds no token ids");
  return ids;
}

// NumPy .npy v1.0: magic, header length, a Python dict literal padded with
// spaces to a multiple of 64 bytes, then the raw little-endian data.
void write_npy(const std::string& path, std::span<const float> data, size_t rows, size_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot open '" + path + "' for writing");
  const char magic[] = "\x93NUMPY\x01\x00";
  out.write(magic, 8);
  const auto len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()),
            static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) throw std::runtime_error("failed writing '" + path + "'");
}

int run_logits(Args args) {
  ModelOptions m;
  std::string out_path, save_tokens, prompt;
  std::optional<std::string> tokens_arg;
  bool have_prompt = false;
  size_t batch = 512;
  const std::string help = usage();
  OptionParser parser("logits", help);
  m.add_to(parser, kModelOptions);
  parser.value({"--prompt", "-p"}, [&](auto, std::string_view v) {
    prompt = v;
    have_prompt = true;
  });
  parser.value({"--prompt-file"}, [&](auto, std::string_view v) {
    const std::string file(v);
    // A folder opens as a stream and fails only at the first read, with a message that does
    // not name it; say so up front, and name the path whatever the read error is.
    std::error_code ec;
    if (std::filesystem::is_directory(file, ec)) {
      throw std::invalid_argument("cannot read --prompt-file '" + file + "': it is a directory");
    }
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      throw std::invalid_argument("cannot read --prompt-file '" + file +
                                  "': " + std::strerror(errno));
    }
    try {
      prompt.assign(std::istreambuf_iterator<char>(in), {});
    } catch (const std::exception& e) {
      throw std::invalid_argument("cannot read --prompt-file '" + file + "': " + e.what());
    }
    have_prompt = true;
  });
  parser.value({"--tokens"}, [&](auto, std::string_view v) { tokens_arg = std::string(v); });
  parser.text({"--out", "-o"}, out_path);
  parser.text({"--save-tokens"}, save_tokens);
  parser.integer({"-b", "--batch-size"}, batch, 1, 1 << 16);
  if (!parser.parse(args)) return 0;
  m.require_model();
  if (out_path.empty()) throw std::invalid_argument("--out FILE.npy is required");
  if (have_prompt == tokens_arg.has_value()) {
    throw std::invalid_argument("give exactly one of --prompt, --prompt-file or --tokens");
  }

  const Model model = Model::load(m.model_path);
  std::vector<int32_t> tokens;
  if (tokens_arg) {
    tokens = parse_token_list(*tokens_arg);
  } else {
    const Tokenizer tokenizer = Tokenizer::from_gguf(model.file());
    tokens = tokenizer.encode(prompt, /*add_special=*/true, /*parse_special=*/true);
    if (tokens.empty()) throw std::invalid_argument("the prompt tokenizes to nothing");
  }
  const size_t n_ctx = m.n_ctx == 0 ? tokens.size() : m.n_ctx;
  if (tokens.size() > n_ctx) {
    throw std::invalid_argument(std::to_string(tokens.size()) +
                                " tokens do not fit the context size " + std::to_string(n_ctx) +
                                " (raise -c)");
  }
  EngineOptions o = m.engine_options();
  o.n_ctx = n_ctx;
  o.max_batch = std::min(batch, tokens.size());
  Engine engine(model, o);
  std::vector<float> logits;
  engine.eval(0, tokens, /*all_logits=*/true, &logits);
  write_npy(out_path, logits, tokens.size(), model.config().n_vocab);
  if (!save_tokens.empty()) {
    std::ofstream t(save_tokens);
    for (size_t i = 0; i < tokens.size(); ++i) t << (i ? " " : "") << tokens[i];
    t << "\n";
    if (!t) throw std::runtime_error("failed writing '" + save_tokens + "'");
  }
  std::fprintf(stderr, "kiln logits: %zu positions x %zu logits -> %s\n", tokens.size(),
               model.config().n_vocab, out_path.c_str());
  return 0;
}

const Command kLogits("logits", "write the logits of every prompt position as .npy", run_logits);

}  // namespace
}  // namespace kiln::cli
