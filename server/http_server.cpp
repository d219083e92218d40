#include "server/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <system_error>
#include <thread>
#include <vector>

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

// What the logger prints for the request this worker thread is answering, and what the
// connection loop must do after it. Reset by the connection loop when a request's first
// byte is there, so requests that httplib rejects before any handler runs (414, a bad
// header) are logged with their own start too.
struct RequestLog {
  Clock::time_point start = Clock::now();
  size_t prompt_tokens = 0;
  size_t completion_tokens = 0;
  // Answered before its body was read (an error): the connection cannot be reused.
  bool close_connection = false;
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

bool iequals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

// "Authorization: Bearer KEY". The scheme is case-insensitive (RFC 7235 2.1: "bearer KEY"
// is the same); the key is compared in constant time.
bool bearer_matches(std::string_view header, std::string_view key) {
  constexpr std::string_view kScheme = "bearer";
  if (header.size() <= kScheme.size() || !iequals(header.substr(0, kScheme.size()), kScheme) ||
      (header[kScheme.size()] != ' ' && header[kScheme.size()] != '\t')) {
    return false;
  }
  header.remove_prefix(kScheme.size());
  while (!header.empty() && (header.front() == ' ' || header.front() == '\t')) {
    header.remove_prefix(1);
  }
  return constant_time_equal(header, key);
}

// A request header's value for a response header: httplib has %-decoded it, so it may hold
// CR/LF; only the characters of a header-name list (tokens, commas, spaces) are kept.
std::string header_list(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (std::isalnum(static_cast<unsigned char>(c)) ||
        (c != '\0' && std::strchr("!#$%&'*+-.^_`|~, ", c))) {
      out += c;
    }
  }
  return out;
}

// For the log line: a method or path as printed, "-" when httplib never parsed one, and
// control characters (a %0A in the URL decodes to a newline) escaped.
std::string loggable(std::string_view v) {
  if (v.empty()) return "-";
  std::string out;
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out;
}

// Waits up to `timeout` for `events` on `fd`; false on a timeout or an error.
bool poll_for(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  const int ms = static_cast<int>(std::clamp<int64_t>(timeout.count(), 0, 1'000'000'000));
  int r;
  do {
    r = poll(&p, 1, ms);
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

// httplib answers one connection per task from accept to close, keep-alive waits
// included, so a fixed pool of N threads is taken whole by N idle or slow clients (and
// /health waits behind them). This pool starts a thread whenever every thread is busy, up
// to `max_threads`, and keeps it, asleep, from then on.
class GrowingThreadPool final : public httplib::TaskQueue {
 public:
  explicit GrowingThreadPool(size_t max_threads) : max_threads_(max_threads) {}
  ~GrowingThreadPool() override { shutdown(); }
  GrowingThreadPool(const GrowingThreadPool&) = delete;
  GrowingThreadPool& operator=(const GrowingThreadPool&) = delete;

  void enqueue(std::function<void()> fn) override {
    std::lock_guard lk(mu_);
    jobs_.push_back(std::move(fn));
    if (idle_ < jobs_.size() && threads_.size() < max_threads_) {
      try {
        threads_.emplace_back([this] { work(); });
        ++idle_;  // counted idle until it takes a job
      } catch (const std::system_error&) {
        // No thread to be had (a limit on threads or memory): the busy ones take the job.
      }
    }
    cv_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void work() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, and nothing left to do
      std::function<void()> fn = std::move(jobs_.front());
      jobs_.pop_front();
      --idle_;
      lk.unlock();
      fn();
      lk.lock();
      ++idle_;
    }
  }

  const size_t max_threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

// One accepted connection, read through a buffer that lives as long as the connection.
// httplib 0.11.4's own SocketStream lives for one request and reads ahead 4 KiB, so the
// bytes of a pipelined next request that it had read were dropped with it. Reading the
// request line and headers has a deadline for the whole of them (httplib's read timeout
// is per read: a client sending a byte now and then held its thread forever); a body has
// a timeout per read and a byte budget (httplib does not limit a chunked body).
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int fd, const std::atomic<socket_t>& listening,
                   std::chrono::milliseconds write_timeout)
      : fd_(fd), listening_(listening), write_timeout_(write_timeout) {}

  void read_headers_until(Clock::time_point deadline) {
    deadline_ = deadline;
    idle_timeout_ = std::chrono::milliseconds::max();
    budget_ = kUnlimited;
    timed_out_ = over_budget_ = false;
  }
  void read_body(std::chrono::milliseconds idle_timeout, size_t budget) {
    deadline_ = Clock::time_point::max();
    idle_timeout_ = idle_timeout;
    budget_ = budget;
  }
  bool buffered() const { return pos_ < end_; }
  // The last read failed because the client was too slow / sent more than the budget.
  bool timed_out() const { return timed_out_; }
  bool over_budget() const { return over_budget_; }

  bool is_readable() const override { return buffered() || poll_for(fd_, POLLIN, {}); }
  bool is_writable() const override {
    return poll_for(fd_, POLLOUT, write_timeout_) && !ClientConnection(fd_).closed();
  }

  ssize_t read(char* ptr, size_t size) override {
    if (size == 0) return 0;
    if (budget_ == 0) {
      over_budget_ = true;
      return -1;
    }
    if (!buffered()) {
      if (!wait_readable()) return -1;
      ssize_t n;
      do {
        n = recv(fd_, buf_.data(), buf_.size(), 0);
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      pos_ = 0;
      end_ = static_cast<size_t>(n);
    }
    const size_t n = std::min({size, end_ - pos_, budget_});
    std::memcpy(ptr, buf_.data() + pos_, n);
    pos_ += n;
    if (budget_ != kUnlimited) budget_ -= n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do {
      n = send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (getpeername(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      numeric_endpoint(addr, len, ip, port);
    }
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      numeric_endpoint(addr, len, ip, port);
    }
  }
  socket_t socket() const override { return fd_; }

 private:
  static constexpr size_t kUnlimited = std::numeric_limits<size_t>::max();
  // How often a wait looks whether the server is stopping.
  static constexpr std::chrono::milliseconds kStopCheck{100};

  // As httplib writes them: numeric host, port.
  static void numeric_endpoint(const sockaddr_storage& addr, socklen_t len, std::string& ip,
                               int& port) {
    if (addr.ss_family == AF_INET) {
      port = ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
    } else if (addr.ss_family == AF_INET6) {
      port = ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
    } else {
      return;
    }
    std::array<char, NI_MAXHOST> host{};
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host.data(), host.size(),
                    nullptr, 0, NI_NUMERICHOST) == 0) {
      ip = host.data();
    }
  }

  bool wait_readable() {
    const auto idle_end = idle_timeout_ == std::chrono::milliseconds::max()
                              ? Clock::time_point::max()
                              : Clock::now() + idle_timeout_;
    const auto until = std::min(deadline_, idle_end);
    while (listening_ != INVALID_SOCKET) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now());
      if (left.count() <= 0) {
        timed_out_ = true;
        return false;
      }
      if (poll_for(fd_, POLLIN, std::min(left, kStopCheck))) return true;
    }
    return false;  // the server is stopping
  }

  const int fd_;
  const std::atomic<socket_t>& listening_;
  const std::chrono::milliseconds write_timeout_;
  Clock::time_point deadline_ = Clock::time_point::max();
  std::chrono::milliseconds idle_timeout_ = std::chrono::milliseconds::max();
  size_t budget_ = kUnlimited;
  bool timed_out_ = false;
  bool over_budget_ = false;
  std::array<char, 16 * 1024> buf_;
  size_t pos_ = 0;
  size_t end_ = 0;
};

// The connection stream of the request this worker thread is answering (its handlers find
// the client's socket here, and the error handler why a read failed).
thread_local ConnectionStream* t_stream = nullptr;

// httplib's server with our own connection loop (process_and_close_socket is virtual: the
// SSL server overrides it too). It keeps one ConnectionStream per connection, so pipelined
// requests are all answered; waits for a next request without httplib's 1 ms polling; and
// closes a connection whose request was answered before its body was read, after draining
// what the client still sends, so that the client reads the answer instead of a reset.
class Listener final : public httplib::Server {
 public:
  explicit Listener(const ServerOptions& o)
      : header_timeout_(o.header_timeout),
        body_read_timeout_(o.body_read_timeout),
        // The chunked framing of a body of max_body_bytes, with room to spare.
        body_budget_(o.max_body_bytes + o.max_body_bytes / 8 + 4096) {}

  static constexpr std::chrono::seconds kWriteTimeout{30};

 private:
  bool process_and_close_socket(socket_t sock) override {
    ConnectionStream strm(sock, svr_sock_, kWriteTimeout);
    t_stream = &strm;
    bool ret = false;
    bool linger = false;
    for (size_t count = keep_alive_max_count_; count > 0 && svr_sock_ != INVALID_SOCKET; --count) {
      if (!strm.buffered() && !wait_for_request(sock)) break;
      t_request_log = RequestLog{};
      strm.read_headers_until(Clock::now() + header_timeout_);
      bool headers_read = false;
      bool connection_closed = false;
      ret = process_request(strm, count == 1, connection_closed, [&](httplib::Request&) {
        headers_read = true;
        strm.read_body(body_read_timeout_, body_budget_);
      });
      // After a rejected request line or header, a body not read, or a read that failed,
      // the next bytes are not the start of a request.
      linger = ret && (!headers_read || t_request_log.close_connection || strm.timed_out() ||
                       strm.over_budget());
      if (!ret || connection_closed || linger) break;
    }
    t_stream = nullptr;
    if (linger && svr_sock_ != INVALID_SOCKET) drain(sock);
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return ret;
  }

  bool wait_for_request(int sock) const {
    const auto until = Clock::now() + std::chrono::seconds(keep_alive_timeout_sec_);
    while (svr_sock_ != INVALID_SOCKET) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now());
      if (left.count() <= 0) return false;
      pollfd p{sock, POLLIN, 0};
      const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 100)));
      if (r > 0) return true;
      if (r < 0 && errno != EINTR) return false;
    }
    return false;
  }

  // Closing a socket with unread input resets the connection, and a client still sending
  // (a body over the limit) may then lose the answer it was sent. So: end our side, and
  // read what the client still sends, for a few seconds at most.
  static void drain(int sock) {
    using namespace std::chrono_literals;
    ::shutdown(sock, SHUT_WR);
    const auto until = Clock::now() + 3s;
    std::array<char, 16 * 1024> buf;
    while (Clock::now() < until && poll_for(sock, POLLIN, 1s)) {
      if (recv(sock, buf.data(), buf.size(), 0) <= 0) break;
    }
  }

  const std::chrono::milliseconds header_timeout_;
  const std::chrono::milliseconds body_read_timeout_;
  const size_t body_budget_;
};

// The routes and the methods each answers (HEAD with GET, OPTIONS everywhere), for 405's
// Allow header and CORS preflights.
struct RouteMethods {
  std::regex pattern;
  std::vector<std::string> methods;

  bool allows(const std::string& method) const {
    return std::ranges::find(methods, method) != methods.end() ||
           (method == "HEAD" && std::ranges::find(methods, "GET") != methods.end());
  }
  std::string allow_header() const {
    std::string out;
    for (const auto& m : methods) {
      out += m + ", ";
      if (m == "GET") out += "HEAD, ";
    }
    return out + "OPTIONS";
  }
};

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
  Listener http{options};
  std::vector<RouteMethods> route_table;
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
  // Answers what is decided before the body is read (CORS preflight, API key, route and
  // method, body framing); Handled when `res` is the answer.
  httplib::Server::HandlerResponse before_routing(const httplib::Request& req,
                                                  httplib::Response& res);
  std::string body_limit_message() const {
    const size_t b = options.max_body_bytes;
    return "The request body is larger than the " +
           (b % (size_t{1} << 20) == 0 ? std::to_string(b >> 20) + " MiB"
                                       : std::to_string(b) + "-byte") +
           " limit.";
  }
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
  // Thread per connection (httplib's design), so the pool must outnumber the clients that
  // can be connected at once, idle keep-alive and slow ones included: threads are started
  // as needed and mostly sleep.
  http.new_task_queue = [n = std::max<size_t>(512, 4 * options.parallel + 16)] {
    return new GrowingThreadPool(n);
  };
  // In place of httplib's default (SO_REUSEPORT, which would let a second server bind the
  // same port and take half its connections): SO_REUSEADDR for quick restarts, and the
  // socket kept so start() can raise its backlog.
  http.set_socket_options([this](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_socket = sock;
  });
  http.set_payload_max_length(options.max_body_bytes);
  // httplib applies these to each accepted socket (SO_RCVTIMEO, SO_SNDTIMEO); the
  // connection loop (Listener) times headers and bodies itself. The write timeout is per
  // write: a stream that lasts minutes is fine, a client that stops reading is not.
  http.set_read_timeout(std::chrono::duration_cast<std::chrono::seconds>(
                            std::max(options.header_timeout, options.body_read_timeout)) +
                        std::chrono::seconds(1));
  http.set_write_timeout(Listener::kWriteTimeout);
  http.set_keep_alive_timeout(5);
  http.set_keep_alive_max_count(1000);
  http.set_tcp_nodelay(true);
  // Browsers may call the API from any page (as llama.cpp's server and Ollama allow); the
  // API key, where there is one, is what protects it.
  http.set_default_headers({{"Access-Control-Allow-Origin", "*"}});

  route_table = {
      {std::regex("/health"), {"GET"}},
      {std::regex("/metrics"), {"GET"}},
      {std::regex("/v1/models"), {"GET"}},
      {std::regex(R"(/v1/models/(.+))"), {"GET"}},
      {std::regex("/v1/chat/completions"), {"POST"}},
      {std::regex("/v1/completions"), {"POST"}},
  };

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    return before_routing(req, res);
  });

  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return;
    // httplib says 400 for any read that failed; say why where the stream knows.
    if (res.status == 400 && t_stream && t_stream->timed_out()) res.status = 408;
    if (res.status == 400 && t_stream && t_stream->over_budget()) res.status = 413;
    if (res.status == 404) {
      send_error(res, ApiError(404, "Unknown route: " + req.method + " " + req.path,
                               "invalid_request_error", "", "unknown_url"));
    } else if (res.status == 408) {
      send_error(res, ApiError(408,
                               "The request did not arrive in time: its headers must "
                               "come within " +
                                   std::to_string(options.header_timeout.count()) +
                                   " ms, and a body may pause at most " +
                                   std::to_string(options.body_read_timeout.count()) + " ms.",
                               "invalid_request_error"));
    } else if (res.status == 413) {
      send_error(res, ApiError(413, body_limit_message(), "invalid_request_error"));
    } else if (res.status == 414) {
      send_error(res, ApiError(414, "The request URL is longer than 8192 bytes.",
                               "invalid_request_error"));
    } else if (res.status == 400) {
      send_error(res, ApiError(400,
                               "Malformed HTTP request: a bad request line, a header line "
                               "longer than 8192 bytes, or a body shorter than its "
                               "Content-Length.",
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
    // A stream whose client left (the provider gave up, or a write failed) went out with a
    // 200 status line, but is logged and counted as the non-streamed case is: nginx's 499.
    const bool stream_cut =
        res.is_chunked_content_provider_ && !res.content_provider_success_ && req.method != "HEAD";
    const int status = stream_cut ? 499 : res.status;
    metrics.count_request(status);
    const double secs = std::chrono::duration<double>(Clock::now() - log.start).count();
    std::fprintf(stderr, "%s %s %d prompt=%zu completion=%zu %.3fs\n", loggable(req.method).c_str(),
                 loggable(req.path).c_str(), status, log.prompt_tokens, log.completion_tokens,
                 secs);
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

httplib::Server::HandlerResponse HttpServer::Impl::before_routing(const httplib::Request& req,
                                                                  httplib::Response& res) {
  using httplib::Server;
  const bool body_method = req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
  const bool chunked = req.has_header("Transfer-Encoding");
  const bool has_length = req.has_header("Content-Length");
  // Answered without reading the body: if one is coming, the connection ends after the
  // answer (httplib reads bodies of POST, PUT, PATCH and DELETE only, in routing).
  const auto answer = [&](const ApiError& e) {
    send_error(res, e);
    if (chunked || (has_length && req.get_header_value("Content-Length") != "0")) {
      t_request_log.close_connection = true;
    }
    return Server::HandlerResponse::Handled;
  };
  const auto route = std::ranges::find_if(
      route_table, [&](const RouteMethods& r) { return std::regex_match(req.path, r.pattern); });

  // CORS preflight: before the API key, which a browser never sends with one.
  if (req.method == "OPTIONS") {
    const std::string allow =
        route != route_table.end() ? route->allow_header() : "GET, HEAD, POST, OPTIONS";
    res.status = 204;
    res.set_header("Allow", allow);
    res.set_header("Access-Control-Allow-Methods", allow);
    std::string headers = "Authorization, Content-Type";
    if (const std::string asked =
            header_list(req.get_header_value("Access-Control-Request-Headers"));
        !asked.empty()) {
      headers += ", " + asked;
    }
    res.set_header("Access-Control-Allow-Headers", headers);
    res.set_header("Access-Control-Max-Age", "86400");
    if (chunked || has_length) t_request_log.close_connection = true;
    return Server::HandlerResponse::Handled;
  }
  if (!options.api_key.empty() && req.path != "/health" &&
      !bearer_matches(req.get_header_value("Authorization"), options.api_key)) {
    return answer(ApiError(401, "Incorrect API key provided: send \"Authorization: Bearer KEY\".",
                           "invalid_request_error", "", "invalid_api_key"));
  }
  if (route == route_table.end()) {
    return answer(ApiError(404, "Unknown route: " + req.method + " " + req.path,
                           "invalid_request_error", "", "unknown_url"));
  }
  if (!route->allows(req.method)) {
    res.set_header("Allow", route->allow_header());
    return answer(ApiError(405,
                           "Method " + req.method + " is not allowed for " + req.path +
                               " (allowed: " + route->allow_header() + ")",
                           "invalid_request_error", "", "method_not_allowed"));
  }
  if (!body_method) {
    // httplib would not read a body sent with a GET: its bytes must not pass for a request.
    if (chunked || (has_length && req.get_header_value("Content-Length") != "0")) {
      t_request_log.close_connection = true;
    }
    return Server::HandlerResponse::Unhandled;
  }
  // Decided from the headers, before httplib waits for a body: without a length it would
  // read until the client closes, and over the limit it would read (and drop) it all.
  if (chunked) {
    if (has_length) {
      return answer(ApiError(400,
                             "The request has both Content-Length and Transfer-Encoding; "
                             "send one.",
                             "invalid_request_error"));
    }
    if (!iequals(req.get_header_value("Transfer-Encoding"), "chunked")) {
      return answer(ApiError(400,
                             "Unsupported Transfer-Encoding '" +
                                 req.get_header_value("Transfer-Encoding") +
                                 "': send the body with a Content-Length, or chunked.",
                             "invalid_request_error"));
    }
    return Server::HandlerResponse::Unhandled;  // the stream's budget limits its size
  }
  if (!has_length) {
    return answer(ApiError(411,
                           "A " + req.method +
                               " request needs a Content-Length header (or "
                               "Transfer-Encoding: chunked).",
                           "invalid_request_error"));
  }
  const std::string value = req.get_header_value("Content-Length");
  uint64_t length = 0;
  const auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), length);
  const auto [first, last] = req.headers.equal_range("Content-Length");
  const bool same_everywhere =
      std::all_of(first, last, [&](const auto& h) { return h.second == value; });
  if (err == std::errc::result_out_of_range ||
      (err == std::errc() && end == value.data() + value.size() && same_everywhere &&
       length > options.max_body_bytes)) {
    return answer(ApiError(413, body_limit_message(), "invalid_request_error"));
  }
  if (err != std::errc() || end != value.data() + value.size() || !same_everywhere) {
    return answer(
        ApiError(400, "Bad Content-Length '" + value + "': it must be one decimal number of bytes.",
                 "invalid_request_error"));
  }
  return Server::HandlerResponse::Unhandled;
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
    // The legacy logprobs' text_offset counts from the start of the prompt's text.
    meta.prompt_characters =
        characters_begun(r.prompt_is_tokens ? tokenizer->decode(prompt) : r.prompt);
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
  const auto connection =
      t_stream ? std::make_shared<const ClientConnection>(t_stream->socket())
               : std::make_shared<const ClientConnection>(req.local_addr, req.local_port,
                                                          req.remote_addr, req.remote_port);
  // `offset`: the legacy text_offset of the first token, advanced past them.
  const auto logprobs_json = [chat](const std::vector<TokenLogprobs>& t, size_t& offset) {
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
    size_t text_offset = meta.prompt_characters;
    if (g.logprobs) lp = logprobs_json(logprobs, text_offset);
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
  st->text_offset = st->meta.prompt_characters;
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
              json delta = json::object();
              if (!d.reasoning.empty()) delta["reasoning_content"] = d.reasoning;
              if (!d.content.empty() || d.reasoning.empty()) delta["content"] = d.content;
              out +=
                  sse_event(chat_chunk_json(st->meta, delta, std::nullopt, lp, st->include_usage));
            }
          } else if (!ev.text.empty() || !ev.logprobs.empty()) {
            std::optional<json> lp;
            if (st->logprobs) lp = logprobs_json(ev.logprobs, st->text_offset);
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
