// kiln serve: the OpenAI-compatible HTTP server.
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "cli/command.h"
#include "cli/model_options.h"
#include "server/http_server.h"

namespace kiln::cli {
namespace {

constexpr ModelOptionSet kModelOptions{.ctx_size = true, .device = true};

std::string usage() {
  return "usage: kiln serve -m MODEL.gguf [options]\n"
         "\n"
         "Serves the model over an OpenAI-compatible HTTP API:\n"
         "  POST /v1/chat/completions, POST /v1/completions, GET /v1/models,\n"
         "  GET /v1/models/{id}, GET /health, GET /metrics (Prometheus).\n"
         "\n"
         "options:\n"
         "  -m, --model FILE       GGUF model\n"
         "  --host ADDR            address to bind (127.0.0.1; 0.0.0.0 exposes the server)\n"
         "  --port N               port (11434; 0 picks a free one)\n"
         "  -c, --ctx-size N       context size of each sequence (default: the model's,\n"
         "                         at most 4096)\n"
         "  --parallel N           sequences decoded together in one batch (4)\n"
         "  --prefill-chunk N      most prompt tokens per engine step (128): long prompts go in\n"
         "                         pieces, so running streams keep getting tokens meanwhile\n"
         "  --no-cache-prompt      compute every prompt from scratch (by default a request\n"
         "                         reuses a free slot's KV cache for the prompt prefix they\n"
         "                         share: faster first token for shared system prompts and\n"
         "                         multi-turn chat, with the same logits as a cold run)\n"
         "  --alias NAME           model id clients use (default: general.name, else the\n"
         "                         file stem)\n"
         "  --api-key KEY          require 'Authorization: Bearer KEY' (all but /health)\n"
         "  --chat-template NAME   use a built-in chat template instead of the model's\n" +
         ModelOptions::help(kModelOptions, 25);
}

int run_serve(Args args) {
  ModelOptions m;
  server::ServerOptions o;
  const std::string help = usage();
  OptionParser parser("serve", help);
  m.add_to(parser, kModelOptions);
  parser.text({"--host"}, o.host);
  parser.integer({"--port"}, o.port, 0, 65535);
  parser.integer({"--parallel", "-np"}, o.parallel, 1, 256);
  parser.integer({"--prefill-chunk"}, o.prefill_chunk, 1, 65536);
  parser.flag({"--cache-prompt"}, o.cache_prompt);  // the default; kept for scripts
  parser.flag({"--no-cache-prompt"}, [&o] { o.cache_prompt = false; });
  parser.text({"--alias"}, o.alias);
  parser.value({"--api-key"}, [&o](std::string_view option, std::string_view v) {
    if (v.empty()) throw std::invalid_argument(std::string(option) + " must not be empty");
    o.api_key = v;
  });
  parser.text({"--chat-template"}, o.chat_template);
  if (!parser.parse(args)) return 0;
  m.require_model();
  // A context shorter than a chat template's framing is no use to a server.
  if (m.n_ctx != 0 && m.n_ctx < 16) throw std::invalid_argument("--ctx-size must be at least 16");
  o.model_path = m.model_path;
  o.n_ctx = m.n_ctx;
  o.device = m.device;
  o.engine = m.engine_options();

  // A client that disconnects must not kill the server with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  // SIGINT/SIGTERM are taken by one thread (blocked everywhere else, so
  // every thread started from here inherits the mask).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  server::HttpServer server(o);
  const int port = server.start();
  std::fprintf(stderr, "kiln serve: listening on http://%s:%d (model loading; /health is 503)\n",
               o.host.c_str(), port);
  std::atomic<bool> loaded{false};
  std::thread signal_waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (!loaded.load()) std::_Exit(128 + sig);  // nothing to wind down yet
    std::fprintf(stderr, "kiln serve: shutting down\n");
    server.stop();
  });
  signal_waiter.detach();
  server.load_model([](std::string_view line) {
    std::fprintf(stderr, "kiln serve: %.*s\n", static_cast<int>(line.size()), line.data());
  });
  loaded = true;
  std::fprintf(stderr, "kiln serve: ready: http://%s:%d/v1 (model id '%s')\n", o.host.c_str(), port,
               server.model_id().c_str());
  server.wait();
  return 0;
}

const Command kServe("serve", "serve a model over an OpenAI-compatible HTTP API", run_serve);

}  // namespace
}  // namespace kiln::cli
