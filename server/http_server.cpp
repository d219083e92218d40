#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "engine/model.h"
#include "server/api.h"
#include "server/connection.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/structured.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln::server {

namespace {

using Clock = std::chrono::steady_clock;

// How long a waiting handler goes without looking at its client's socket: a
// client that leaves during a prefill, or before a non-streamed answer, is
// noticed this soon (plus one engine step until its slot is free).
constexpr std::chrono::milliseconds kClientCheck{50};

// What the logger prints for the request this worker thread is answering.
struct RequestLog {
  Clock::time_point start = Clock::now();
  size_t prompt_tokens = 0;
  size_t completion_tokens = 0;
};
thread_local RequestLog t_request_log;

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, error_body(e));
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// Reads every page of the weights the CPU forward reads once (pre-packed panels where it
// has them, else the model's blocks; the embedding table), so the first request does not
// pay for page faults, and so loading can report real progress. The model's blocks of a
// matrix read as panels are not touched: they would count in the RSS a second time.
void fault_in_weights(const Weights& w, const std::function<void(std::string_view)>& progress) {
  std::vector<std::span<const std::byte>> spans{w.token_embd.data};
  w.for_each_matrix([&](const WeightView& m) {
    const std::span<const std::byte> bytes = m.panels.empty() ? m.data : m.panels;
    if (bytes.data() != w.token_embd.data.data()) spans.push_back(bytes);  // tied output
  });
  size_t total = 0;
  for (const auto& s : spans) total += s.size();
  size_t done = 0;
  int reported = 0;
  volatile unsigned char sink = 0;
  for (const auto& s : spans) {
    unsigned char acc = 0;
    for (size_t off = 0; off < s.size(); off += 4096) acc ^= static_cast<unsigned char>(s[off]);
    sink = sink ^ acc;
    done += s.size();
    const int pct = total ? static_cast<int>(100 * done / total) : 100;
    if (pct >= reported + 10) {
      reported = pct - pct % 10;
      progress("loading weights: " + std::to_string(reported) + "%");
    }
  }
}

}  // namespace

struct HttpServer::Impl {
  explicit Impl(ServerOptions o) : options(std::move(o)) {}

  ServerOptions options;
  httplib::Server http;
  // The listening socket (set by the socket-options hook), to raise its backlog.
  std::atomic<int> listen_socket{-1};
  std::thread listener;
  std::atomic<bool> ready{false};
  std::atomic<bool> stopped{false};
  std::mutex stop_mu;
  Metrics metrics;

  // Set once by load_model(), before `ready`.
  std::optional<Model> model;
  std::optional<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
  std::string chat_template_error;    // why chat is unavailable, when it is
  std::unique_ptr<AnyEngine> engine;  // the CPU Engine or the CudaEngine (--device)
  std::unique_ptr<Scheduler> scheduler;
  std::string model_id;
  int64_t created = unix_time();

  void routes();
  void require_ready() const {
    if (!ready.load()) throw ApiError(503, "Loading model", "unavailable_error");
  }
  GenerationJob make_job(const GenerationParams& g, std::vector<TokenId> prompt,
                         const char* prompt_param) const;
  void chat_completions(const httplib::Request& req, httplib::Response& res);
  void completions(const httplib::Request& req, httplib::Response& res);
  // `reasoning`: chat output is split into reasoning_content and content.
  void respond(const httplib::Request& req, httplib::Response& res,
               std::shared_ptr<GenerationStream> stream, const GenerationParams& g,
               ResponseMeta meta, bool chat,
               std::optional<ReasoningOptions> reasoning = std::nullopt);
};

HttpServer::HttpServer(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  impl_->routes();
}

HttpServer::~HttpServer() {
  stop();
  wait();
}

const std::string& HttpServer::model_id() const { return impl_->model_id; }

int HttpServer::start() {
  Impl& s = *impl_;
  int port = s.options.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.options.host);
    if (port < 0) throw std::runtime_error("cannot bind " + s.options.host + " to any port");
  } else if (!s.http.bind_to_port(s.options.host, port)) {
    throw std::runtime_error("cannot listen on " + s.options.host + ":" + std::to_string(port) +
                             " (in use? pick another with --port)");
  }
  // cpp-httplib listens with a backlog of 5 (compiled into Debian's library): of a burst of
  // clients connecting at once (8 streams), the SYNs past it were dropped and retried a
  // second later, which showed as a 1 s time to first token. listen() again raises it.
  if (const int sock = s.listen_socket.load(); sock >= 0) ::listen(sock, SOMAXCONN);
  s.listener = std::thread([&s] { s.http.listen_after_bind(); });
  // stop() only takes effect once the accept loop runs: wait for it, so an
  // early stop (a model that fails to load at once) cannot be lost.
  for (int i = 0; i < 5000 && !s.http.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return port;
}

void HttpServer::load_model(const std::function<void(std::string_view)>& progress) {
  Impl& s = *impl_;
  const auto t0 = Clock::now();
  progress("loading " + s.options.model_path);
  s.model.emplace(Model::load(s.options.model_path));
  const gguf::File& file = s.model->file();
  s.tokenizer.emplace(Tokenizer::from_gguf(file));
  try {
    s.chat_template.emplace(s.options.chat_template.empty()
                                ? ChatTemplate::from_gguf(file)
                                : ChatTemplate::builtin(s.options.chat_template));
  } catch (const std::exception& e) {
    if (!s.options.chat_template.empty()) throw;  // a bad --chat-template name
    s.chat_template_error = e.what();
    progress(std::string("warning: /v1/chat/completions is unavailable: ") + e.what());
  }
  if (!s.options.alias.empty()) {
    s.model_id = s.options.alias;
  } else if (auto name = file.get_string_opt("general.name"); name && !name->empty()) {
    s.model_id = std::string(*name);
  } else {
    s.model_id = std::filesystem::path(s.options.model_path).stem().string();
  }
  EngineOptions eo = s.options.engine;
  eo.n_ctx = default_context_length(s.model->config(), s.options.n_ctx);
  eo.n_seq = std::max<size_t>(1, s.options.parallel);
  // Room for one decode token per sequence plus a prompt chunk.
  eo.max_batch = std::max<size_t>(1, s.options.prefill_chunk) + eo.n_seq;
  eo.progress = progress;  // the panel cache says when it packs (a model's first start)
  s.engine = std::make_unique<AnyEngine>(*s.model, eo, s.options.device);
  std::unique_ptr<BatchEngine> batch_engine;
  std::string where;
  if (Engine* cpu = s.engine->cpu()) {
    fault_in_weights(cpu->weights(), progress);
    batch_engine = std::make_unique<EngineRef<Engine>>(*cpu);
    where = std::to_string(cpu->n_threads()) + " threads";
    where += ", weights " + cpu->weights_description();
  }
#if defined(KILN_HAVE_CUDA) && KILN_HAVE_CUDA
  if (CudaEngine* cuda = s.engine->cuda()) {
    batch_engine = std::make_unique<EngineRef<CudaEngine>>(*cuda);
    where = cuda->device_name();
  }
#endif
  SchedulerOptions so;
  so.prefill_chunk = std::max<size_t>(1, s.options.prefill_chunk);
  so.reuse_prompt_prefix = s.options.cache_prompt;
  s.scheduler = std::make_unique<Scheduler>(std::move(batch_engine), *s.tokenizer, s.metrics, so);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  char line[512];
  std::snprintf(line, sizeof line, "model '%s' ready in %.2f s: %s; %zu slots x %zu context, %s",
                s.model_id.c_str(), secs, s.model->config().describe().c_str(), eo.n_seq,
                s.engine->n_ctx(), where.c_str());
  progress(line);
  s.ready = true;
}

void HttpServer::wait() {
  if (impl_->listener.joinable()) impl_->listener.join();
}

void HttpServer::stop() {
  Impl& s = *impl_;
  std::lock_guard lk(s.stop_mu);
  if (s.stopped.exchange(true)) return;
  // Generation first, so streaming handlers end and the listener's workers
  // can be joined.
  if (s.scheduler) s.scheduler->shutdown();
  s.http.stop();
}

void HttpServer::Impl::routes() {
  http.new_task_queue = [n = 4 * options.parallel + 16] { return new httplib::ThreadPool(n); };
  // In place of httplib's default (SO_REUSEPORT, which would let a second server bind the
  // same port and take half its connections): SO_REUSEADDR for quick restarts, and the
  // socket kept so start() can raise its backlog.
  http.set_socket_options([this](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_socket = sock;
  });
  http.set_payload_max_length(options.max_body_bytes);
  http.set_read_timeout(30);
  http.set_write_timeout(30);
  http.set_keep_alive_timeout(5);
  http.set_keep_alive_max_count(1000);
  http.set_tcp_nodelay(true);

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    t_request_log = RequestLog{};
    if (!options.api_key.empty() && req.path != "/health") {
      const std::string auth = req.get_header_value("Authorization");
      if (!constant_time_equal(auth, "Bearer " + options.api_key)) {
        send_error(res, ApiError(401, "Incorrect API key provided.", "invalid_request_error", "",
                                 "invalid_api_key"));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return;
    if (res.status == 404) {
      send_error(res, ApiError(404, "Unknown route: " + req.method + " " + req.path,
                               "invalid_request_error", "", "unknown_url"));
    } else if (res.status == 413) {
      send_error(res, ApiError(413, "The request body is larger than the 8 MiB limit.",
                               "invalid_request_error"));
    } else {
      const int status = res.status;
      send_error(res, ApiError(status, "HTTP error " + std::to_string(status),
                               status >= 500 ? "server_error" : "invalid_request_error"));
    }
  });

  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, ApiError(500, "internal error: " + what, "server_error"));
      });

  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    const RequestLog& log = t_request_log;
    metrics.count_request(res.status);
    const double secs = std::chrono::duration<double>(Clock::now() - log.start).count();
    std::fprintf(stderr, "%s %s %d prompt=%zu completion=%zu %.3fs\n", req.method.c_str(),
                 req.path.c_str(), res.status, log.prompt_tokens, log.completion_tokens, secs);
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (ready.load()) {
      send_json(res, 200, json{{"status", "ok"}});
    } else {
      send_json(res, 503, error_body("Loading model", "unavailable_error"));
    }
  });

  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(), "text/plain; version=0.0.4");
  });

  const auto model_json = [this] {
    return json{{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "kiln"}};
  };
  http.Get("/v1/models", [this, model_json](const httplib::Request&, httplib::Response& res) {
    try {
      require_ready();
      send_json(res, 200, json{{"object", "list"}, {"data", json::array({model_json()})}});
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  });
  http.Get(R"(/v1/models/(.+))",
           [this, model_json](const httplib::Request& req, httplib::Response& res) {
             try {
               require_ready();
               const std::string id = req.matches[1];
               try {
                 resolve_model(id, model_id);
               } catch (const ApiError&) {
                 throw ApiError(404, "The model '" + id + "' does not exist",
                                "invalid_request_error", "model", "model_not_found");
               }
               send_json(res, 200, model_json());
             } catch (const ApiError& e) {
               send_error(res, e);
             }
           });

  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    chat_completions(req, res);
  });
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completions(req, res); });
}

GenerationJob HttpServer::Impl::make_job(const GenerationParams& g, std::vector<TokenId> prompt,
                                         const char* prompt_param) const {
  const size_t n_ctx = scheduler->n_ctx();
  if (prompt.size() >= n_ctx) {
    throw invalid_request("This model's maximum context length is " + std::to_string(n_ctx) +
                              " tokens. However, your prompt has " + std::to_string(prompt.size()) +
                              " tokens, which leaves no room to generate.",
                          prompt_param);
  }
  GenerationJob job;
  job.prompt = std::move(prompt);
  job.sampling = g.sampling;
  try {
    job.sampling.validate(model->config().n_vocab);
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    throw invalid_request(msg, msg.starts_with("logit_bias") ? "logit_bias" : "");
  }
  job.seed = g.seed ? *g.seed : std::random_device{}();
  job.max_tokens = g.max_tokens.value_or(0);
  job.stop = g.stop;
  job.logprobs = g.logprobs;
  job.top_logprobs = g.top_logprobs;
  job.response_format = g.response_format;
  return job;
}

void HttpServer::Impl::chat_completions(const httplib::Request& req, httplib::Response& res) {
  try {
    require_ready();
    const ChatRequest r = parse_chat_request(parse_body(req.body));
    ResponseMeta meta{new_response_id("chatcmpl-"), unix_time(), resolve_model(r.model, model_id)};
    if (!chat_template) {
      throw invalid_request("this model has no chat template (" + chat_template_error +
                            "); use /v1/completions or restart with --chat-template NAME");
    }
    const auto bos = tokenizer->bos() >= 0 ? tokenizer->token_piece(tokenizer->bos()) : "";
    const auto eos = tokenizer->eos() >= 0 ? tokenizer->token_piece(tokenizer->eos()) : "";
    std::vector<TextSegment> segments;
    try {
      segments = chat_template->render(r.messages, /*add_generation_prompt=*/true, r.template_vars,
                                       bos, eos);
    } catch (const std::exception& e) {
      // The template's own checks (e.g. roles must alternate) are the
      // request's fault.
      throw invalid_request(std::string("the chat template rejected the messages: ") + e.what(),
                            "messages");
    }
    // The template writes BOS itself where the model wants one.
    auto prompt = tokenizer->encode_segments(segments, /*add_special=*/false);
    std::string prompt_text;
    for (const auto& seg : segments) prompt_text += seg.text;
    // A JSON response_format constrains the output from its first token, so
    // there is no <think> block to split off.
    std::optional<ReasoningOptions> reasoning;
    if (!r.gen.response_format.constrained()) {
      reasoning = reasoning_options_for(chat_template->source(), prompt_text);
    }
    GenerationJob job = make_job(r.gen, std::move(prompt), "messages");
    t_request_log.prompt_tokens = job.prompt.size();
    respond(req, res, scheduler->submit(std::move(job)), r.gen, std::move(meta), /*chat=*/true,
            std::move(reasoning));
  } catch (const ApiError& e) {
    send_error(res, e);
  }
}

void HttpServer::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  try {
    require_ready();
    const CompletionRequest r = parse_completion_request(parse_body(req.body));
    ResponseMeta meta{new_response_id("cmpl-"), unix_time(), resolve_model(r.model, model_id)};
    std::vector<TokenId> prompt;
    if (r.prompt_is_tokens) {
      for (TokenId t : r.prompt_tokens) {
        if (static_cast<size_t>(t) >= tokenizer->vocab_size()) {
          throw invalid_request("prompt token id " + std::to_string(t) +
                                    " is out of range: the vocabulary has " +
                                    std::to_string(tokenizer->vocab_size()) + " tokens",
                                "prompt");
        }
      }
      prompt = r.prompt_tokens;
    } else {
      // Raw completion prompts are the caller's own text: special tokens
      // written in it are honoured, as llama.cpp's /completion does.
      prompt = tokenizer->encode(r.prompt, /*add_special=*/true, /*parse_special=*/true);
    }
    if (prompt.empty()) throw invalid_request("the prompt is empty", "prompt");
    GenerationJob job = make_job(r.gen, std::move(prompt), "prompt");
    t_request_log.prompt_tokens = job.prompt.size();
    respond(req, res, scheduler->submit(std::move(job)), r.gen, std::move(meta), /*chat=*/false);
  } catch (const ApiError& e) {
    send_error(res, e);
  }
}

void HttpServer::Impl::respond(const httplib::Request& req, httplib::Response& res,
                               std::shared_ptr<GenerationStream> stream, const GenerationParams& g,
                               ResponseMeta meta, bool chat,
                               std::optional<ReasoningOptions> reasoning) {
  using namespace std::chrono_literals;
  const auto connection = std::make_shared<const ClientConnection>(
      req.local_addr, req.local_port, req.remote_addr, req.remote_port);
  const auto logprobs_json = [chat](const std::vector<TokenLogprobs>& t, size_t offset) {
    return chat ? chat_logprobs_json(t) : completion_logprobs_json(t, offset);
  };

  if (!g.stream) {
    std::string text;
    std::vector<TokenLogprobs> logprobs;
    std::optional<FinishReason> finish;
    std::string error;
    std::vector<GenerationEvent> events;
    bool ended = false;
    while (!ended) {
      events.clear();
      ended = stream->wait(events, kClientCheck);
      if (!ended && connection->closed()) {
        stream->cancel();  // nobody to answer: free the slot
        res.status = 499;  // nginx's "client closed request", for the log line
        t_request_log.completion_tokens = stream->usage().completion_tokens;
        return;
      }
      for (auto& ev : events) {
        text += ev.text;
        for (auto& t : ev.logprobs) logprobs.push_back(std::move(t));
        if (ev.finish) finish = ev.finish;
        if (!ev.error.empty()) error = ev.error;
      }
    }
    const Usage usage = stream->usage();
    t_request_log.completion_tokens = usage.completion_tokens;
    if (!error.empty() || !finish) {
      throw ApiError(500, error.empty() ? "generation ended without a result" : error,
                     "server_error");
    }
    std::optional<json> lp;
    if (g.logprobs) lp = logprobs_json(logprobs, 0);
    if (!chat) {
      send_json(res, 200, text_completion_json(meta, text, *finish, usage, lp));
      return;
    }
    ChatOutputSplitter splitter(std::move(reasoning));
    ReasoningDelta split = splitter.feed(text);
    ReasoningDelta rest = splitter.finish();
    split.reasoning += rest.reasoning;
    split.content += rest.content;
    json body = chat_completion_json(meta, split.content, *finish, usage, lp);
    if (!split.reasoning.empty()) {
      body["choices"][0]["message"]["reasoning_content"] = split.reasoning;
    }
    send_json(res, 200, body);
    return;
  }

  struct StreamState {
    std::shared_ptr<GenerationStream> stream;
    ResponseMeta meta;
    bool chat = true, include_usage = false, logprobs = false;
    bool started = false, done = false;
    size_t text_offset = 0;
    std::vector<GenerationEvent> events;
    std::optional<ChatOutputSplitter> splitter;  // chat only
  };
  auto st = std::make_shared<StreamState>();
  st->stream = std::move(stream);
  st->meta = std::move(meta);
  st->chat = chat;
  st->include_usage = g.include_usage;
  st->logprobs = g.logprobs;
  if (chat) st->splitter.emplace(std::move(reasoning));
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, logprobs_json, connection](size_t, httplib::DataSink& sink) {
        if (st->done) {
          sink.done();
          return true;
        }
        std::string out;
        if (!st->started) {
          st->started = true;
          if (st->chat) {
            out += sse_event(chat_chunk_json(st->meta, json{{"role", "assistant"}, {"content", ""}},
                                             std::nullopt, std::nullopt, st->include_usage));
          }
        }
        st->events.clear();
        const bool ended = st->stream->wait(st->events, kClientCheck);
        if (!ended && connection->closed()) {
          st->stream->cancel();  // the client is gone: free its slot
          return false;
        }
        bool failed = false;
        for (auto& ev : st->events) {
          if (!ev.error.empty()) {
            out += sse_event(error_body(ev.error, "server_error"));
            failed = true;
            continue;
          }
          if (st->chat) {
            // Text the splitter holds back (a possible "</think>") comes out
            // with a later event, or at the finish.
            ReasoningDelta d = st->splitter->feed(ev.text);
            if (ev.finish) {
              ReasoningDelta rest = st->splitter->finish();
              d.reasoning += rest.reasoning;
              d.content += rest.content;
            }
            if (!d.reasoning.empty() || !d.content.empty() || !ev.logprobs.empty()) {
              std::optional<json> lp;
              if (st->logprobs) lp = logprobs_json(ev.logprobs, st->text_offset);
              st->text_offset += ev.text.size();
              json delta = json::object();
              if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
              if (!d.content.empty() || d.reasoning.empty()) delta["content"] = d.content;
              out +=
                  sse_event(chat_chunk_json(st->meta, delta, std::nullopt, lp, st->include_usage));
            }
          } else if (!ev.text.empty() || !ev.logprobs.empty()) {
            std::optional<json> lp;
            if (st->logprobs) lp = logprobs_json(ev.logprobs, st->text_offset);
            st->text_offset += ev.text.size();
            out +=
                sse_event(text_chunk_json(st->meta, ev.text, std::nullopt, lp, st->include_usage));
          }
          if (ev.finish) {
            out += sse_event(st->chat ? chat_chunk_json(st->meta, json::object(), ev.finish,
                                                        std::nullopt, st->include_usage)
                                      : text_chunk_json(st->meta, "", ev.finish, std::nullopt,
                                                        st->include_usage));
          }
        }
        const Usage usage = st->stream->usage();
        t_request_log.prompt_tokens = usage.prompt_tokens;
        t_request_log.completion_tokens = usage.completion_tokens;
        if (ended) {
          if (st->include_usage && !failed) {
            out += sse_event(usage_chunk_json(
                st->meta, st->chat ? "chat.completion.chunk" : "text_completion", usage));
          }
          out += kSseDone;
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          st->stream->cancel();  // the client is gone: free its slot
          return false;
        }
        if (ended) {
          st->done = true;
          sink.done();
        }
        return true;
      },
      [st](bool success) {
        if (!success) st->stream->cancel();
      });
}

}  // namespace kiln::server
