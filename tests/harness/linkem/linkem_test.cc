// Runs the real strata-linkem binary between a client and an echo server on loopback.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <regex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "harness/linkem/linkem_process.h"
#include "tests/harness/linkem/socket_testing.h"

namespace strata::linkem {
namespace {

constexpr absl::Duration kTestDeadline = absl::Seconds(30);

std::unique_ptr<LinkEmulator> StartLinkem(const std::vector<std::string>& targets,
                                          double delay_ms = 0,
                                          double jitter_ms = 0,
                                          double bandwidth_mbit = 0) {
  LinkEmulatorOptions options;
  options.binary = STRATA_LINKEM_PATH;
  for (const std::string& target : targets) options.links.push_back({.target = target});
  options.delay_ms = delay_ms;
  options.jitter_ms = jitter_ms;
  options.bandwidth_mbit = bandwidth_mbit;
  absl::StatusOr<std::unique_ptr<LinkEmulator>> linkem = LinkEmulator::Start(options);
  EXPECT_TRUE(linkem.ok()) << linkem.status();
  return linkem.ok() ? std::move(*linkem) : nullptr;
}

// Polls `stats` until `key` of `link` reaches `at_least` or the deadline passes.
bool WaitForStat(LinkEmulator& linkem,
                 int link,
                 const char* key,
                 double at_least,
                 absl::Duration timeout = absl::Seconds(10)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<double> value = linkem.Stat(link, key);
    if (value.ok() && *value >= at_least) return true;
  }
  return false;
}

// One small echo round trip on an open connection; returns its duration.
absl::Duration PingPong(int fd) {
  absl::Time start = absl::Now();
  std::string reply;
  EXPECT_TRUE(SendAll(fd, "p"));
  EXPECT_EQ(RecvExactly(fd, 1, absl::Now() + absl::Seconds(5), &reply), ReadEnd::kData);
  return absl::Now() - start;
}

TEST(LinkemTest, ReadyLineNamesRealPorts) {
  EchoServer server;
  auto linkem = StartLinkem({server.address(), server.address()});
  ASSERT_NE(linkem, nullptr);
  std::regex pattern(
      "linkem ready control=127\\.0\\.0\\.1:[1-9][0-9]* "
      "links=127\\.0\\.0\\.1:[1-9][0-9]*->(.*),127\\.0\\.0\\.1:[1-9][0-9]*->(.*)");
  std::smatch match;
  ASSERT_TRUE(std::regex_match(linkem->ready_line(), match, pattern)) << linkem->ready_line();
  EXPECT_EQ(match[1], server.address());
  EXPECT_EQ(linkem->num_links(), 2);
  EXPECT_NE(linkem->listen_port(0), linkem->listen_port(1));
}

TEST(LinkemTest, BytesArriveIntactInBothDirectionsOnManyConnections) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()}, /*delay_ms=*/2, /*jitter_ms=*/1);
  ASSERT_NE(linkem, nullptr);
  constexpr int kConnections = 8;
  constexpr size_t kBytes = 3 << 20;  // larger than the proxy's socket buffers
  absl::Time deadline = absl::Now() + kTestDeadline;
  std::vector<std::string> payloads, echoed(kConnections);
  for (int i = 0; i < kConnections; ++i) payloads.push_back(RandomBytes(kBytes + i, i));
  std::vector<std::thread> clients;
  for (int i = 0; i < kConnections; ++i) {
    clients.emplace_back(
        [&, i] { echoed[i] = EchoThrough(linkem->listen_address(0), payloads[i], deadline); });
  }
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kConnections; ++i) {
    EXPECT_EQ(echoed[i].size(), payloads[i].size()) << "connection " << i;
    EXPECT_TRUE(echoed[i] == payloads[i]) << "connection " << i;
  }
  // Both half-closes went through, so every proxied connection is gone.
  EXPECT_TRUE(WaitForStat(*linkem, 0, "accepted", kConnections));
  EXPECT_EQ(*linkem->Stat(0, "c2s_bytes"), kConnections * kBytes + 28);
  EXPECT_EQ(*linkem->Stat(0, "s2c_bytes"), kConnections * kBytes + 28);
}

class LinkemDelayTest : public ::testing::TestWithParam<double> {};

TEST_P(LinkemDelayTest, RoundTripIsTwiceTheOneWayDelay) {
  const double delay_ms = GetParam();
  EchoServer server;
  auto linkem = StartLinkem({server.address()}, delay_ms);
  ASSERT_NE(linkem, nullptr);
  int fd = ConnectTo(linkem->listen_address(0));
  ASSERT_GE(fd, 0);
  PingPong(fd);  // the upstream connect is done
  std::vector<double> rtt_ms;
  for (int i = 0; i < 15; ++i) rtt_ms.push_back(absl::ToDoubleMilliseconds(PingPong(fd)));
  close(fd);
  std::sort(rtt_ms.begin(), rtt_ms.end());
  double median = rtt_ms[rtt_ms.size() / 2];
  std::printf("delay %.0f ms: RTT min %.2f median %.2f max %.2f ms (ideal %.0f)\n",
              delay_ms,
              rtt_ms.front(),
              median,
              rtt_ms.back(),
              2 * delay_ms);
  EXPECT_GE(rtt_ms.front(), 2 * delay_ms);  // each chunk is held at least the delay
  EXPECT_LE(median, 2 * delay_ms + 15);
}

INSTANTIATE_TEST_SUITE_P(Delays, LinkemDelayTest, ::testing::Values(0.0, 5.0, 20.0));

TEST(LinkemTest, DelayCommandChangesTheDelay) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()});
  ASSERT_NE(linkem, nullptr);
  int fd = ConnectTo(linkem->listen_address(0));
  ASSERT_GE(fd, 0);
  PingPong(fd);
  ASSERT_TRUE(linkem->Command("delay 0 20").ok());
  EXPECT_GE(PingPong(fd), absl::Milliseconds(40));
  ASSERT_TRUE(linkem->Command("delay all 0").ok());
  EXPECT_LT(PingPong(fd), absl::Milliseconds(30));
  close(fd);
}

TEST(LinkemTest, JitterNeverReorders) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()}, /*delay_ms=*/5, /*jitter_ms=*/5);
  ASSERT_NE(linkem, nullptr);
  int fd = ConnectTo(linkem->listen_address(0));
  ASSERT_GE(fd, 0);
  constexpr int kMessages = 20000;
  std::thread writer([fd] {
    for (uint32_t i = 0; i < kMessages; ++i) {
      if (!SendAll(fd, std::string(reinterpret_cast<const char*>(&i), sizeof(i)))) break;
    }
  });
  std::string echoed;
  ReadEnd end = RecvExactly(fd, kMessages * 4, absl::Now() + kTestDeadline, &echoed);
  writer.join();
  close(fd);
  ASSERT_EQ(end, ReadEnd::kData);
  for (uint32_t i = 0; i < kMessages; ++i) {
    uint32_t got;
    std::memcpy(&got, echoed.data() + 4 * i, 4);
    ASSERT_EQ(got, i) << "out of order at message " << i;
  }
  // Many chunks were in flight with different delays, so reordering had its chances.
  double chunks = *linkem->Stat(0, "c2s_chunks") + *linkem->Stat(0, "s2c_chunks");
  std::printf("jitter: %.0f chunks carried %d messages in order\n", chunks, 2 * kMessages);
  EXPECT_GT(chunks, 20);
}

TEST(LinkemTest, BandwidthCapPacesTransfers) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()});
  ASSERT_NE(linkem, nullptr);
  ASSERT_TRUE(linkem->Command("bandwidth 0 10").ok());
  const std::string payload = RandomBytes(2'000'000, 7);
  absl::Time start = absl::Now();
  std::string echoed = EchoThrough(linkem->listen_address(0), payload, start + kTestDeadline);
  double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("2 MB echoed at 10 Mbit/s per direction in %.3f s (ideal 1.6)\n", seconds);
  EXPECT_TRUE(echoed == payload);
  EXPECT_GE(seconds, 1.6 * 0.75);
  EXPECT_LE(seconds, 1.6 * 1.25);
}

TEST(LinkemTest, CutResetsConnectionsAndRefusesNewOnes) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()}, /*delay_ms=*/1);
  ASSERT_NE(linkem, nullptr);
  int fd = ConnectTo(linkem->listen_address(0));
  ASSERT_GE(fd, 0);
  PingPong(fd);

  absl::Time cut_at = absl::Now();
  ASSERT_TRUE(linkem->Command("cut 0").ok());
  std::string data;
  ReadEnd end = RecvToEnd(fd, absl::Now() + absl::Seconds(5), &data);
  EXPECT_TRUE(end == ReadEnd::kReset || end == ReadEnd::kEof) << static_cast<int>(end);
  EXPECT_LT(absl::Now() - cut_at, absl::Seconds(1));
  close(fd);
  EXPECT_LT(ConnectTo(linkem->listen_address(0)), 0);
  EXPECT_EQ(errno, ECONNREFUSED);
  EXPECT_EQ(*linkem->Stat(0, "conns"), 0);

  ASSERT_TRUE(linkem->Command("restore 0").ok());
  EXPECT_EQ(EchoThrough(linkem->listen_address(0), "again", absl::Now() + kTestDeadline), "again");
}

TEST(LinkemTest, BlackholeDropsDataButKeepsConnectionsOpen) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()});
  ASSERT_NE(linkem, nullptr);
  int old_fd = ConnectTo(linkem->listen_address(0));
  ASSERT_GE(old_fd, 0);
  PingPong(old_fd);
  const int64_t server_bytes = server.bytes_received();

  ASSERT_TRUE(linkem->Command("blackhole 0").ok());
  int new_fd = ConnectTo(linkem->listen_address(0));  // still accepted
  ASSERT_GE(new_fd, 0);
  ASSERT_TRUE(SendAll(old_fd, std::string(1000, 'x')));
  ASSERT_TRUE(SendAll(new_fd, std::string(500, 'y')));
  EXPECT_TRUE(WaitForStat(*linkem, 0, "c2s_dropped", 1500));  // the proxy read and dropped it
  std::string data;
  // Nothing comes back and neither connection ends: a stuck peer.
  EXPECT_EQ(RecvExactly(old_fd, 1, absl::Now() + absl::Milliseconds(200), &data),
            ReadEnd::kTimeout);
  EXPECT_EQ(RecvExactly(new_fd, 1, absl::Now() + absl::Milliseconds(50), &data), ReadEnd::kTimeout);
  EXPECT_EQ(server.bytes_received(), server_bytes);
  EXPECT_EQ(*linkem->Stat(0, "conns"), 2);

  ASSERT_TRUE(linkem->Command("restore 0").ok());
  for (int fd : {old_fd, new_fd}) {
    ASSERT_TRUE(SendAll(fd, "after"));
    EXPECT_EQ(RecvExactly(fd, 5, absl::Now() + absl::Seconds(5), &data), ReadEnd::kData);
    EXPECT_EQ(data, "after");
    close(fd);
  }
}

TEST(LinkemTest, CommandsAffectOnlyTheirLink) {
  EchoServer server;
  auto linkem = StartLinkem({server.address(), server.address()});
  ASSERT_NE(linkem, nullptr);
  ASSERT_TRUE(linkem->Command("cut 1").ok());
  EXPECT_LT(ConnectTo(linkem->listen_address(1)), 0);
  EXPECT_EQ(EchoThrough(linkem->listen_address(0), "zero", absl::Now() + kTestDeadline), "zero");
  ASSERT_TRUE(linkem->Command("restore all").ok());
  EXPECT_EQ(EchoThrough(linkem->listen_address(1), "one", absl::Now() + kTestDeadline), "one");
}

TEST(LinkemTest, BadCommandsAnswerErrors) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()});
  ASSERT_NE(linkem, nullptr);
  for (const char* line :
       {"frobnicate", "delay 1 10", "delay 0 abc", "delay 0 -5", "bandwidth 0", "cut", "stats x"}) {
    absl::Status status = linkem->Command(line);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << line << ": " << status;
  }
  // The raw protocol, as a Python client would see it.
  int fd = ConnectTo(linkem->control_address());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "bogus 1\ndelay 0 1 1\n"));
  std::string reply;
  const std::string expected = "error unknown command 'bogus'\nok\n";
  ASSERT_EQ(RecvExactly(fd, expected.size(), absl::Now() + absl::Seconds(5), &reply),
            ReadEnd::kData);
  EXPECT_EQ(reply, expected);
  close(fd);
  EXPECT_TRUE(linkem->Command("delay all 0").ok());
}

TEST(LinkemTest, StartFailsCleanlyWithoutTheBinary) {
  LinkEmulatorOptions options;
  options.binary = std::string(STRATA_LINKEM_PATH) + "-missing";
  options.links.push_back({.target = "127.0.0.1:1"});
  absl::StatusOr<std::unique_ptr<LinkEmulator>> linkem = LinkEmulator::Start(options);
  EXPECT_EQ(linkem.status().code(), absl::StatusCode::kUnavailable) << linkem.status();
}

TEST(LinkemTest, QuitExitsTheProcess) {
  EchoServer server;
  auto linkem = StartLinkem({server.address()});
  ASSERT_NE(linkem, nullptr);
  ASSERT_TRUE(linkem->Command("quit").ok());
  // The child becomes a zombie (the destructor reaps it).
  absl::Time deadline = absl::Now() + absl::Seconds(5);
  std::string state;
  while (absl::Now() < deadline && state != "Z") {
    std::ifstream stat("/proc/" + std::to_string(linkem->pid()) + "/stat");
    std::string pid, comm;
    stat >> pid >> comm >> state;
  }
  EXPECT_EQ(state, "Z");
}

}  // namespace
}  // namespace strata::linkem
