// The HTTP server before a model is loaded: it already answers, /health says
// 503 (so clients can wait for readiness), the API says 503 with OpenAI's
// error body, the API key is checked before anything else, unknown routes are
// 404 JSON. Raw sockets, so the test depends on no HTTP client library.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <string>

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

}  // namespace
