// The HTTP front of `kiln serve`: OpenAI-compatible routes over cpp-httplib.
//
// Lifecycle: start() binds and answers at once (/health says 503 while the
// model loads), load_model() builds the engine and scheduler (then /health
// says 200), wait() blocks until stop(). Handlers parse, tokenize and submit;
// only the scheduler's thread calls the engine.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "engine/cuda/any_engine.h"
#include "engine/engine.h"
#include "gguf/ggml_types.h"
#include "kernels/dot.h"

namespace kiln::server {

struct ServerOptions {
  std::string model_path;
  std::string host = "127.0.0.1";
  int port = 11434;            // 0: any free port (start() returns it)
  size_t n_ctx = 0;            // per sequence; 0: the model's, at most 4096
  size_t parallel = 4;         // sequences decoded together (KV slots)
  size_t prefill_chunk = 128;  // most prompt tokens per engine step (see SchedulerOptions)
  bool cache_prompt = true;    // reuse a free slot's KV for a shared prompt prefix (exact)
  std::string alias;           // model id; default general.name, else the file stem
  std::string api_key;         // required as "Authorization: Bearer KEY" unless empty
  std::string chat_template;   // a built-in template name; "" uses the model's
  DeviceKind device = DeviceKind::kCpu;  // cuda: the whole forward on the GPU
  // Threads, KV type, activations, how the weights are held, batch GEMM; the server sets
  // n_ctx (from the field above), n_seq (parallel) and max_batch (prefill_chunk + n_seq).
  EngineOptions engine;
  size_t max_body_bytes = size_t{8} << 20;
  // A request's line and headers must all arrive within this of its first byte: a client
  // that never finishes them holds one connection thread until then, not 30 s per byte.
  std::chrono::milliseconds header_timeout{10'000};
  // The longest pause between the bytes of a request body (from loopback or a LAN).
  std::chrono::milliseconds body_read_timeout{10'000};
};

class HttpServer {
 public:
  explicit HttpServer(ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port and starts answering on a background thread. Returns the
  // bound port. Throws when the address cannot be bound.
  int start();
  // Loads the model and starts the scheduler; `progress` receives one line
  // at a time. Throws on a bad model file.
  void load_model(const std::function<void(std::string_view)>& progress);
  // Blocks until stop() has been called and the listener has ended.
  void wait();
  // Stops generation (running streams end with an error) and the listener.
  // Safe to call from another thread, more than once.
  void stop();

  const std::string& model_id() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::server
