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

constexpr const char* kUsage =
    "usage: kiln serve -m MODEL.gguf [options]\n"
    "\n"
    "Serves the model over an OpenAI-compatible HTTP API:\n"
    "  POST /v1/chat/completions, POST /v1/completions, GET /v1/models,\n"
    "  GET /v1/models/{id}, GET /health, GET /metrics (Prometheus).\n"
    "\n"
    "options:\n"
    "  -m, --model FILE       GGUF model\n"
    "  --host ADDR            address to bind (127.0.0.1; 0.0.0.0 exposes the server)\n"
    "  --port N               port (11434; 0 picks a free one)\n"
    "  -t, --threads N        engine threads (default: physical cores)\n"
    "  -c, --ctx-size N       context size of each sequence (default: the model's, at most 4096)\n"
    "  --parallel N           sequences decoded together in one batch (4)\n"
    "  --prefill-chunk N      most prompt tokens per engine step (128): long prompts go in\n"
    "                         pieces, so running streams keep getting tokens meanwhile\n"
    "  --batch-gemm MODE      weight types whose batched decode goes through the GEMM:\n"
    "                         auto (default: those where a lone stream loses nothing),\n"
    "                         all (the K types' twins too, from the mapping: slower\n"
    "                         here, for experiments),\n"
    "                         off (outputs are the same whatever the mode)\n"
    "  --no-cache-prompt      compute every prompt from scratch (by default a request\n"
    "                         reuses a free slot's KV cache for the prompt prefix they\n"
    "                         share: faster first token for shared system prompts and\n"
    "                         multi-turn chat, with the same logits as a cold run)\n"
    "  --alias NAME           model id clients use (default: general.name, else the file stem)\n"
    "  --api-key KEY          require 'Authorization: Bearer KEY' (all but /health)\n"
    "  --chat-template NAME   use a built-in chat template instead of the model's\n"
    "  --kv-type T            KV cache type: f16 (default), f32, q8_0\n"
    "  --device D             cpu (default) or cuda: the whole forward on an NVIDIA GPU\n"
    "  --precise              int16 activations in the CPU matmuls (two int8 planes):\n"
    "                         logits closer to float, somewhat slower\n"
    "  --act-precision P      int8 (default) or int16 (as --precise)\n"
    "  --hugepage-weights     copy the weights into 2 MiB huge pages, Q4_K, Q6_K and the\n"
    "                         legacy types as pre-packed GEMM panels: faster decode,\n"
    "                         alone and batched (recommended for many streams, and for\n"
    "                         Q4_0/Q8_0-type models), but the weights then take memory\n"
    "                         twice (copy + page cache)\n"
    "  --no-hugepage-mmap     leave the file mapping on 4 KiB pages (default: faulted in\n"
    "                         on 2 MiB pages where the kernel provides them)\n";

int run_serve(Args args) {
  ModelOptions m;
  server::ServerOptions o;
  OptionParser parser("serve", kUsage);
  m.add_to(parser, {.ctx_size = true, .device = true});
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
