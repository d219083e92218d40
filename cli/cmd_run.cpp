// kiln run: generate a completion for one prompt, streamed to stdout; prompt
// and generation speed go to stderr.
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/model_options.h"
#include "engine/cuda/any_engine.h"
#include "engine/engine.h"
#include "sampler/sampler.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

constexpr ModelOptionSet kModelOptions{.ctx_size = true, .device = true};

std::string usage() {
  return "usage: kiln run -m MODEL.gguf -p PROMPT [options]\n"
         "\n"
         "Streams the model's continuation of PROMPT to stdout.\n"
         "\n"
         "options:\n"
         "  -m, --model FILE     GGUF model\n"
         "  -p, --prompt TEXT    the prompt\n"
         "  -n, --n-predict N    tokens to generate at most (128)\n"
         "  --temp F             sampling temperature; 0 (or below 1e-30) is greedy (0.8)\n"
         "  --seed N             random seed (default: from the clock)\n"
         "  -c, --ctx-size N     context size (default: the model's, at most 4096)\n"
         "  --chat               apply the model's chat template to the prompt as one user\n"
         "                       message, and stop at the end of the turn\n"
         "  --ignore-eos         keep generating past end-of-generation tokens\n"
         "  --ids-out FILE       write the prompt ids (line 1) and generated ids (line 2)\n" +
         ModelOptions::help(kModelOptions, 23);
}

using Clock = std::chrono::steady_clock;

constexpr float kMinTemperature = 1e-30f;

// A model whose weights hold NaN or infinities, or whose activations overflow, gives
// non-finite logits; sampling would then pick an arbitrary token (<unk> again and again) and
// exit 0. One pass over a row of logits is small next to the forward that made it.
void check_finite(std::span<const float> logits, size_t position) {
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) {
      throw std::runtime_error("the model's logits at position " + std::to_string(position) +
                               " are not finite (token " + std::to_string(i) + ": " +
                               std::to_string(logits[i]) +
                               "): its weights or hyper-parameters are broken");
    }
  }
}

int run_run(Args args) {
  ModelOptions m;
  std::string prompt, ids_out;
  bool have_prompt = false, chat = false, ignore_eos = false;
  size_t n_predict = 128;
  float temperature = 0.8f;
  uint64_t seed = static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  const std::string help = usage();
  OptionParser parser("run", help);
  m.add_to(parser, kModelOptions);
  parser.value({"-p", "--prompt"}, [&](auto, std::string_view v) {
    prompt = v;
    have_prompt = true;
  });
  parser.integer({"-n", "--n-predict"}, n_predict, 0, 1 << 24);
  parser.number({"--temp"}, temperature, 0.0f);
  parser.integer({"--seed"}, seed, 0, LONG_MAX);
  parser.flag({"--chat"}, chat);
  parser.text({"--ids-out"}, ids_out);
  parser.flag({"--ignore-eos"}, ignore_eos);
  if (!parser.parse(args)) return 0;
  m.require_model();
  if (!have_prompt) throw std::invalid_argument("-p PROMPT is required");
  // Sampling divides the logits by the temperature: below kMinTemperature that overflows to
  // infinities (1 / 1e-39 is past FLT_MAX), where the limit it approaches is greedy decoding.
  if (temperature > 0.0f && temperature < kMinTemperature) temperature = 0.0f;

  const Model model = Model::load(m.model_path);
  const Tokenizer tokenizer = Tokenizer::from_gguf(model.file());
  std::vector<TokenId> tokens;
  if (chat) {
    const ChatTemplate tmpl = ChatTemplate::from_gguf(model.file());
    ChatMessage user;
    user.role = "user";
    user.content = prompt;
    const auto bos = tokenizer.bos() >= 0 ? tokenizer.token_piece(tokenizer.bos()) : "";
    const auto eos = tokenizer.eos() >= 0 ? tokenizer.token_piece(tokenizer.eos()) : "";
    const auto segments = tmpl.render(std::span(&user, 1), /*add_generation_prompt=*/true,
                                      nlohmann::ordered_json::object(), bos, eos);
    // The template writes BOS itself where the model wants one.
    tokens = tokenizer.encode_segments(segments, /*add_special=*/false);
  } else {
    tokens = tokenizer.encode(prompt, /*add_special=*/true, /*parse_special=*/true);
  }
  if (tokens.empty()) throw std::invalid_argument("the prompt tokenizes to nothing");

  EngineOptions o = m.engine_options();
  o.n_ctx = default_context_length(model.config(), m.n_ctx);
  o.max_batch = std::min<size_t>(512, tokens.size());
  if (tokens.size() + n_predict > o.n_ctx) {
    throw std::invalid_argument("the prompt (" + std::to_string(tokens.size()) + " tokens) plus " +
                                std::to_string(n_predict) +
                                " tokens to generate do not fit the context size " +
                                std::to_string(o.n_ctx) + " (raise -c or lower -n)");
  }
  // Opened before generating, so an unwritable path fails before any text streams (not after
  // a whole generation whose ids are then lost).
  std::ofstream ids_file;
  if (!ids_out.empty()) {
    ids_file.open(ids_out);
    if (!ids_file) {
      throw std::runtime_error("cannot open --ids-out '" + ids_out +
                               "' for writing: " + std::strerror(errno));
    }
  }
  AnyEngine engine(model, o, m.device);
  SamplingParams sp;
  sp.temperature = temperature;
  Sampler sampler(sp);
  Rng rng(seed);
  StreamingDetokenizer detok(tokenizer);

  // Prompt.
  const auto t0 = Clock::now();
  auto logits = engine.eval(0, tokens, false);
  const double prompt_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // Generation: sample, print, feed back.
  const auto t1 = Clock::now();
  size_t generated = 0;
  std::vector<TokenId> generated_ids;
  generated_ids.reserve(n_predict);
  Batch batch;
  batch.entries.reserve(1);
  for (; generated < n_predict; ++generated) {
    check_finite(logits, engine.seq_length(0) - 1);
    const TokenId next = sampler.sample(logits, rng.uniform());
    if (!ignore_eos && tokenizer.is_eog(next)) break;
    generated_ids.push_back(next);
    const std::string text = detok.push(next);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    if (generated + 1 == n_predict) {
      ++generated;
      break;  // the last token needs no forward
    }
    batch.clear();
    batch.add(0, static_cast<int32_t>(engine.seq_length(0)), next, true);
    logits = engine.forward(batch);
  }
  const std::string rest = detok.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const double gen_s = std::chrono::duration<double>(Clock::now() - t1).count();
  if (!ids_out.empty()) {
    std::ofstream& f = ids_file;
    for (size_t i = 0; i < tokens.size(); ++i) f << (i ? " " : "") << tokens[i];
    f << "\n";
    for (size_t i = 0; i < generated_ids.size(); ++i) f << (i ? " " : "") << generated_ids[i];
    f << "\n";
    f.close();
    if (!f) throw std::runtime_error("failed writing '" + ids_out + "'");
  }
  std::fprintf(stderr, "\nprompt: %zu tokens in %.2f s (%.1f tokens/s)\n", tokens.size(), prompt_s,
               double(tokens.size()) / prompt_s);
  std::fprintf(stderr, "generation: %zu tokens in %.2f s (%.1f tokens/s)\n", generated, gen_s,
               generated > 0 ? double(generated) / gen_s : 0.0);
  if (const Engine* cpu = engine.cpu()) {
    std::fprintf(stderr, "weights: %s\n", cpu->weights_description().c_str());
  }
  return 0;
}

const Command kRun("run", "generate text from a prompt (streams to stdout)", run_run);

}  // namespace
}  // namespace kiln::cli
