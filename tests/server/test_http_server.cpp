// The HTTP server before a model is loaded: it already answers, /health says
// 503 (so clients can wait for readiness), the API says 503 with OpenAI's
// error body, the API key is checked before anything else, unknown routes are
// 404 JSON. And the HTTP layer: 405 with Allow, CORS, the Bearer scheme, bodies
// without a usable length answered at once, pipelining, slow or half-open
// clients, the log line. Raw sockets, so the test depends on no HTTP client
// library.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "server/http_server.h"

namespace {

struct HttpResult {
  int status = 0;
  std::string body;
};

HttpResult http_get(int port, const std::string& path, const std::string& extra_headers = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  HttpResult r;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    ADD_FAILURE() << "cannot connect to port " << port;
    return r;
  }
  const std::string req =
      "GET " + path + " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + extra_headers + "\r\n";
  EXPECT_EQ(send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) response.append(buf, size_t(n));
  close(fd);
  if (response.size() > 12) r.status = std::stoi(response.substr(9, 3));
  const size_t body = response.find("\r\n\r\n");
  if (body != std::string::npos) r.body = response.substr(body + 4);
  return r;
}

nlohmann::json error_of(const HttpResult& r) {
  const auto j = nlohmann::json::parse(r.body);
  EXPECT_TRUE(j.contains("error")) << r.body;
  const auto& e = j["error"];
  EXPECT_TRUE(e.contains("message") && e.contains("type") && e.contains("param") &&
              e.contains("code"))
      << r.body;
  return e;
}

TEST(HttpServer, AnswersBeforeTheModelIsLoaded) {
  kiln::server::ServerOptions o;
  o.model_path = "unused.gguf";
  o.port = 0;
  kiln::server::HttpServer server(o);
  const int port = server.start();
  ASSERT_GT(port, 0);
  const auto health = http_get(port, "/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(error_of(health)["type"], "unavailable_error");
  EXPECT_EQ(http_get(port, "/v1/models").status, 503);
  const auto missing = http_get(port, "/v1/nothing");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(error_of(missing)["type"], "invalid_request_error");
  EXPECT_EQ(http_get(port, "/metrics").status, 200);
  server.stop();
  server.wait();
}

TEST(HttpServer, ApiKeyIsCheckedFirstButNotForHealth) {
  kiln::server::ServerOptions o;
  o.model_path = "unused.gguf";
  o.port = 0;
  o.api_key = "k3y";
  kiln::server::HttpServer server(o);
  const int port = server.start();
  const auto denied = http_get(port, "/v1/models");
  EXPECT_EQ(denied.status, 401);
  EXPECT_EQ(error_of(denied)["code"], "invalid_api_key");
  EXPECT_EQ(http_get(port, "/v1/models", "Authorization: Bearer wrong\r\n").status, 401);
  EXPECT_EQ(http_get(port, "/v1/models", "Authorization: Bearer k3y\r\n").status, 503);
  EXPECT_EQ(http_get(port, "/health").status, 503);
}

// --- the HTTP layer ------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A client socket, closed when it goes out of scope; reads give up after `timeout`, so a
// server that does not answer fails the test quickly instead of hanging it.
struct Client {
  int fd = -1;
  explicit Client(int port, std::chrono::milliseconds timeout = 3s) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{static_cast<time_t>(timeout.count() / 1000),
               static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ADD_FAILURE() << "cannot connect to port " << port;
    }
  }
  ~Client() { close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  bool send_all(const std::string& s) {
    return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
  }
  // One more byte from the server; false on a timeout or the end of the connection.
  bool fill() {
    char buf[4096];
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    pending.append(buf, static_cast<size_t>(n));
    return true;
  }
  std::string pending;  // received, not yet parsed
};

struct Response {
  int status = 0;                              // 0: none came (a timeout, or the connection ended)
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
  std::string header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// Reads one response with a Content-Length (every non-streamed answer has one).
Response read_response(Client& c) {
  Response r;
  size_t end;
  while ((end = c.pending.find("\r\n\r\n")) == std::string::npos) {
    if (!c.fill()) return r;
  }
  std::istringstream head(c.pending.substr(0, end));
  std::string line;
  std::getline(head, line);
  if (line.size() > 12) r.status = std::stoi(line.substr(9, 3));
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    std::ranges::transform(name, name.begin(), [](unsigned char ch) { return std::tolower(ch); });
    r.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
  }
  const size_t length =
      r.headers.count("content-length") ? std::stoul(r.header("content-length")) : 0;
  while (c.pending.size() < end + 4 + length) {
    if (!c.fill()) return Response{};
  }
  r.body = c.pending.substr(end + 4, length);
  c.pending.erase(0, end + 4 + length);
  return r;
}

Response request(int port, const std::string& raw) {
  Client c(port);
  EXPECT_TRUE(c.send_all(raw));
  return read_response(c);
}

std::string get(const std::string& path, const std::string& headers = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: t\r\n" + headers + "\r\n";
}

kiln::server::ServerOptions test_options() {
  kiln::server::ServerOptions o;
  o.model_path = "unused.gguf";
  o.port = 0;
  return o;
}

TEST(HttpServer, WrongMethodOnAKnownRouteIs405WithAllow) {
  kiln::server::HttpServer server(test_options());
  const int port = server.start();
  const auto chat = request(port, get("/v1/chat/completions"));
  EXPECT_EQ(chat.status, 405);
  EXPECT_EQ(chat.header("allow"), "POST, OPTIONS");
  const auto e = error_of(HttpResult{chat.status, chat.body});
  EXPECT_EQ(e["type"], "invalid_request_error");
  EXPECT_EQ(e["code"], "method_not_allowed");
  EXPECT_TRUE(e["param"].is_null());
  const auto models =
      request(port, "POST /v1/models HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
  EXPECT_EQ(models.status, 405);
  EXPECT_EQ(models.header("allow"), "GET, HEAD, OPTIONS");
  EXPECT_EQ(request(port, "PUT /v1/completions HTTP/1.1\r\nHost: t\r\n\r\n").status, 405);
  EXPECT_EQ(request(port, "DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n").status, 405);
  EXPECT_EQ(request(port, get("/v1/models/some-model")).status, 503);  // GET: allowed
  EXPECT_EQ(request(port, get("/v1/nothing")).status, 404);
}

TEST(HttpServer, CorsPreflightNeedsNoApiKey) {
  auto o = test_options();
  o.api_key = "k3y";
  kiln::server::HttpServer server(o);
  const int port = server.start();
  const auto pre = request(port,
                           "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
                           "Origin: http://example.com\r\n"
                           "Access-Control-Request-Method: POST\r\n"
                           "Access-Control-Request-Headers: x-stainless-os, %0D%0AX-Evil: 1\r\n"
                           "\r\n");
  EXPECT_EQ(pre.status, 204);
  EXPECT_EQ(pre.header("access-control-allow-origin"), "*");
  EXPECT_NE(pre.header("access-control-allow-methods").find("POST"), std::string::npos);
  const std::string allowed = pre.header("access-control-allow-headers");
  for (const char* h : {"Authorization", "Content-Type", "x-stainless-os"}) {
    EXPECT_NE(allowed.find(h), std::string::npos) << allowed;
  }
  EXPECT_EQ(pre.header("x-evil"), "");  // the echoed value cannot add a header
  // Every other answer allows any origin too, refusals included.
  const auto denied = request(port, get("/v1/models"));
  EXPECT_EQ(denied.status, 401);
  EXPECT_EQ(denied.header("access-control-allow-origin"), "*");
  EXPECT_EQ(request(port, get("/health")).header("access-control-allow-origin"), "*");
}

TEST(HttpServer, BearerSchemeIsCaseInsensitive) {
  auto o = test_options();
  o.api_key = "k3y";
  kiln::server::HttpServer server(o);
  const int port = server.start();
  const auto with = [&](const std::string& auth) {
    return request(port, get("/v1/models", "Authorization: " + auth + "\r\n")).status;
  };
  EXPECT_EQ(with("Bearer k3y"), 503);  // past the key: the model is not loaded
  EXPECT_EQ(with("bearer k3y"), 503);
  EXPECT_EQ(with("BEARER k3y"), 503);
  EXPECT_EQ(with("bEaReR   k3y"), 503);
  EXPECT_EQ(with("Bearerk3y"), 401);
  EXPECT_EQ(with("Basic k3y"), 401);
  EXPECT_EQ(with("bearer k3y2"), 401);
  EXPECT_EQ(with("bearer K3Y"), 401);  // the key itself is case-sensitive
}

TEST(HttpServer, HalfOpenConnectionsDoNotStopHealth) {
  kiln::server::HttpServer server(test_options());
  const int port = server.start();
  std::vector<std::unique_ptr<Client>> stuck;
  for (int i = 0; i < 100; ++i) {
    stuck.push_back(std::make_unique<Client>(port));
    ASSERT_TRUE(stuck.back()->send_all("GET /health HTTP/1.1\r\nHost: x\r\n"));
  }
  const auto t0 = Clock::now();
  EXPECT_EQ(request(port, get("/health")).status, 503);
  EXPECT_LT(Clock::now() - t0, 2s);
  // stop() does not wait for the half-open requests' header timeout either.
  const auto t1 = Clock::now();
  server.stop();
  server.wait();
  EXPECT_LT(Clock::now() - t1, 2s);
}

TEST(HttpServer, HeadersMustArriveWithinTheHeaderTimeout) {
  auto o = test_options();
  o.header_timeout = 300ms;
  kiln::server::HttpServer server(o);
  const int port = server.start();
  Client c(port, 100ms);
  ASSERT_TRUE(c.send_all("GET /health HTTP/1.1\r\nHost: x\r\n"));
  // A byte now and then: httplib's read timeout (per read) never fires on this.
  const auto t0 = Clock::now();
  Response r;
  for (int i = 0; i < 30 && r.status == 0; ++i) {
    c.send_all("X");
    r = read_response(c);
  }
  EXPECT_EQ(r.status, 408);
  EXPECT_LT(Clock::now() - t0, 1500ms);
  EXPECT_EQ(error_of(HttpResult{r.status, r.body})["type"], "invalid_request_error");
}

TEST(HttpServer, BodiesWithoutAUsableLengthAreAnsweredAtOnce) {
  kiln::server::HttpServer server(test_options());
  const int port = server.start();
  const std::string post = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
  const auto t0 = Clock::now();
  EXPECT_EQ(request(port, post + "\r\n").status, 411);
  const auto big = request(port, post + "Content-Length: 9000000\r\n\r\n");
  EXPECT_EQ(big.status, 413);
  EXPECT_NE(error_of(HttpResult{big.status, big.body})["message"].get<std::string>().find("8 MiB"),
            std::string::npos);
  EXPECT_EQ(request(port, post + "Content-Length: 99999999999999999999999\r\n\r\n").status, 413);
  EXPECT_EQ(request(port, post + "Content-Length: abc\r\n\r\n").status, 400);
  EXPECT_EQ(request(port, post + "Content-Length: -1\r\n\r\n").status, 400);
  EXPECT_EQ(request(port, post + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}").status, 400);
  EXPECT_EQ(request(port, post + "Transfer-Encoding: gzip\r\n\r\n").status, 400);
  EXPECT_LT(Clock::now() - t0, 2s);
  // A well-formed body gets through to the handler (503: no model).
  EXPECT_EQ(request(port, post + "Content-Length: 2\r\n\r\n{}").status, 503);
}

TEST(HttpServer, ChunkedBodyIsLimitedToo) {
  auto o = test_options();
  o.max_body_bytes = 4096;
  kiln::server::HttpServer server(o);
  const int port = server.start();
  const std::string head =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  EXPECT_EQ(request(port, head + "2\r\n{}\r\n0\r\n\r\n").status, 503);  // read, then no model
  std::string chunks;
  for (int i = 0; i < 4; ++i) chunks += "1000\r\n" + std::string(4096, 'a') + "\r\n";
  EXPECT_EQ(request(port, head + chunks + "0\r\n\r\n").status, 413);
}

TEST(HttpServer, PipelinedRequestsAreAllAnswered) {
  kiln::server::HttpServer server(test_options());
  const int port = server.start();
  Client c(port);
  ASSERT_TRUE(c.send_all(get("/health") + get("/metrics") +
                         "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}" +
                         get("/nothing")));
  EXPECT_EQ(read_response(c).status, 503);
  EXPECT_EQ(read_response(c).status, 200);
  EXPECT_EQ(read_response(c).status, 503);
  EXPECT_EQ(read_response(c).status, 404);
}

// The log lines of `stderr` whose status is `status`.
std::vector<std::string> log_lines(const std::string& stderr_text, int status) {
  std::vector<std::string> out;
  std::istringstream in(stderr_text);
  for (std::string line; std::getline(in, line);) {
    if (line.find(" " + std::to_string(status) + " prompt=") != std::string::npos) {
      out.push_back(line);
    }
  }
  return out;
}

double seconds_of(const std::string& line) { return std::stod(line.substr(line.rfind(' ') + 1)); }

TEST(HttpServer, RejectedRequestsAreLoggedWithTheirOwnStart) {
  kiln::server::HttpServer server(test_options());
  const int port = server.start();
  testing::internal::CaptureStderr();
  {
    // On one connection (one worker thread): a request, a pause, a URL over httplib's
    // limit, which no handler of ours sees before the log line.
    Client c(port);
    ASSERT_TRUE(c.send_all(get("/health")));
    EXPECT_EQ(read_response(c).status, 503);
    std::this_thread::sleep_for(400ms);
    ASSERT_TRUE(c.send_all(get("/" + std::string(9000, 'a'))));
    EXPECT_EQ(read_response(c).status, 414);
    while (c.fill()) {
    }  // the server ends the connection once it has logged
  }
  {
    Client c(port);
    ASSERT_TRUE(c.send_all(get("/health")));
    EXPECT_EQ(read_response(c).status, 503);
    std::this_thread::sleep_for(400ms);
    ASSERT_TRUE(c.send_all(get("/metrics", "X-Big: " + std::string(100'000, 'b') + "\r\n")));
    EXPECT_EQ(read_response(c).status, 400);
    while (c.fill()) {
    }
  }
  const std::string err = testing::internal::GetCapturedStderr();
  const auto long_url = log_lines(err, 414);
  ASSERT_EQ(long_url.size(), 1u) << err;
  EXPECT_TRUE(long_url[0].starts_with("- - 414 ")) << long_url[0];
  EXPECT_LT(seconds_of(long_url[0]), 0.3) << long_url[0];
  const auto big_header = log_lines(err, 400);
  ASSERT_EQ(big_header.size(), 1u) << err;
  EXPECT_TRUE(big_header[0].starts_with("GET /metrics 400 ")) << big_header[0];
  EXPECT_LT(seconds_of(big_header[0]), 0.3) << big_header[0];
}

}  // namespace
