// ClientConnection: finding an accepted socket by its address pair and seeing
// the peer leave, on a real loopback TCP connection.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "server/connection.h"

namespace {

using kiln::server::ClientConnection;

// A socket descriptor closed when it goes out of scope.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

int port_of(int fd, bool peer) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (peer) {
    getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len);
  } else {
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  }
  return ntohs(a.sin_port);
}

// Waits (bounded) for the kernel to deliver the peer's FIN or RST.
bool becomes_closed(const ClientConnection& c) {
  for (int i = 0; i < 2000; ++i) {
    if (c.closed()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ASSERT_EQ(bind(listener.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listener.fd, 4), 0);
    addr.sin_port = htons(static_cast<uint16_t>(port_of(listener.fd, false)));
    ASSERT_EQ(connect(client.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    server.fd = accept(listener.fd, nullptr, nullptr);
    ASSERT_GE(server.fd, 0);
  }

  Fd listener{socket(AF_INET, SOCK_STREAM, 0)};
  Fd client{socket(AF_INET, SOCK_STREAM, 0)};
  Fd server{-1};
};

TEST_F(ConnectionTest, FindsTheAcceptedSocketByItsAddresses) {
  const ClientConnection c("127.0.0.1", port_of(server.fd, false), "127.0.0.1",
                           port_of(server.fd, true));
  ASSERT_TRUE(c.found());
  EXPECT_EQ(c.fd(), server.fd);
  EXPECT_FALSE(c.closed());
}

TEST_F(ConnectionTest, UnknownAddressesAreNeverClosed) {
  const ClientConnection c("127.0.0.1", port_of(server.fd, false), "127.0.0.1", 1);
  EXPECT_FALSE(c.found());
  client.reset();
  EXPECT_FALSE(c.closed());
}

TEST_F(ConnectionTest, PendingDataIsNotAClose) {
  const ClientConnection c(server.fd);
  ASSERT_EQ(send(client.fd, "GET", 3, 0), 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(c.closed());
  char buf[3];
  EXPECT_EQ(recv(server.fd, buf, 3, MSG_DONTWAIT), 3);  // nothing was consumed
}

TEST_F(ConnectionTest, PeerCloseIsSeen) {
  const ClientConnection c(server.fd);
  EXPECT_FALSE(c.closed());
  client.reset();
  EXPECT_TRUE(becomes_closed(c));
}

TEST_F(ConnectionTest, PeerCloseIsSeenBehindUnreadData) {
  const ClientConnection c(server.fd);
  ASSERT_EQ(send(client.fd, "x", 1, 0), 1);
  client.reset();
  EXPECT_TRUE(becomes_closed(c));
}

}  // namespace
