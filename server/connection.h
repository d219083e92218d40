// Noticing that an HTTP client has gone away while its request is still being
// generated.
//
// cpp-httplib 0.11 (Debian's) hands a handler the request's addresses but not
// its socket, and a write to a socket whose peer has closed usually succeeds
// once before failing. So a request that is still in prefill, or that is not
// streamed at all, would only learn of a disconnect when it finally writes its
// answer. ClientConnection finds the handler's own socket by its address pair
// and polls it for the peer's end of stream (FIN/RST) without consuming
// anything, so a waiting handler can cancel its generation within one engine
// step.
#pragma once

#include <string>

namespace kiln::server {

class ClientConnection {
 public:
  // An accepted TCP connection whose local and peer addresses are these (as
  // cpp-httplib writes them: numeric host, port). When no open socket of this
  // process matches, the connection is treated as alive (never cancels).
  ClientConnection(const std::string& local_addr, int local_port, const std::string& remote_addr,
                   int remote_port);
  // A known socket descriptor (tests).
  explicit ClientConnection(int fd) : fd_(fd) {}

  // True once the peer has closed or reset the connection. Data the client
  // sent meanwhile (a pipelined request) is left unread and does not count.
  // A client that only shuts down its sending side (half-close) counts as
  // gone too: HTTP clients do not do that while waiting for an answer, and
  // later cpp-httplib versions' own liveness check decides the same way.
  bool closed() const;
  bool found() const { return fd_ >= 0; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;  // borrowed: cpp-httplib closes it after the handler returns
};

}  // namespace kiln::server
