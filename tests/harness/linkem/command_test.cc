// In-process tests of the link emulator's parsing and pacing arithmetic.
#include "harness/linkem/command.h"

#include "gtest/gtest.h"
#include "harness/linkem/address.h"
#include "harness/linkem/token_bucket.h"

namespace strata::linkem {
namespace {

TEST(ParseCommandTest, AcceptsEveryVerb) {
  absl::StatusOr<Command> c = ParseCommand("delay 1 20 2.5", 2);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, CommandKind::kDelay);
  EXPECT_EQ(c->link, 1);
  EXPECT_EQ(c->delay_ms, 20);
  EXPECT_EQ(c->jitter_ms, 2.5);

  c = ParseCommand("  delay all 5\r", 2);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->link, Command::kAllLinks);
  EXPECT_EQ(c->jitter_ms, 0);

  c = ParseCommand("bandwidth 0 10", 1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->kind, CommandKind::kBandwidth);
  EXPECT_EQ(c->bandwidth_mbit, 10);

  EXPECT_EQ(ParseCommand("cut all", 1)->kind, CommandKind::kCut);
  EXPECT_EQ(ParseCommand("blackhole 0", 1)->kind, CommandKind::kBlackhole);
  EXPECT_EQ(ParseCommand("restore 0", 1)->kind, CommandKind::kRestore);
  EXPECT_EQ(ParseCommand("stats", 1)->kind, CommandKind::kStats);
  EXPECT_EQ(ParseCommand("quit", 1)->kind, CommandKind::kQuit);
}

TEST(ParseCommandTest, RejectsBadInput) {
  for (const char* line : {"",
                           "frobnicate",
                           "delay",
                           "delay 0",
                           "delay 2 10",
                           "delay -1 10",
                           "delay x 10",
                           "delay 0 abc",
                           "delay 0 -5",
                           "delay 0 10 -1",
                           "delay 0 nan",
                           "delay 0 inf",
                           "delay 0 1e9",
                           "delay 0 1 2 3",
                           "bandwidth 0",
                           "bandwidth 0 -1",
                           "cut",
                           "cut 0 1",
                           "restore 7",
                           "stats 0",
                           "quit now",
                           "DELAY 0 1"}) {
    absl::StatusOr<Command> c = ParseCommand(line, 2);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << "'" << line << "'";
  }
}

TEST(ParseHostPortTest, ParsesForms) {
  absl::StatusOr<HostPort> hp = ParseHostPort("127.0.0.1:8080");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "127.0.0.1");
  EXPECT_EQ(hp->port, 8080);
  hp = ParseHostPort("[::1]:0");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "::1");
  EXPECT_EQ(hp->port, 0);
  for (const char* bad :
       {"", "127.0.0.1", ":80", "host:", "host:65536", "host:-1", "::1:80", "[::1]80", "host:8x"}) {
    EXPECT_FALSE(ParseHostPort(bad).ok()) << bad;
  }
}

TEST(ParseHostPortTest, FormatsResolvedAddresses) {
  absl::StatusOr<SocketAddress> a = Resolve({"127.0.0.1", 80}, /*passive=*/false);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(FormatAddress(*a), "127.0.0.1:80");
  a = Resolve({"::1", 81}, /*passive=*/false);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(FormatAddress(*a), "[::1]:81");
}

TEST(TokenBucketTest, PacesAtTheRate) {
  constexpr int64_t kSecond = 1'000'000'000;
  TokenBucket bucket;
  bucket.SetRate(0, 0);
  EXPECT_TRUE(bucket.unlimited());

  bucket.SetRate(1.25e6, 0);  // 10 Mbit/s
  EXPECT_EQ(bucket.burst_bytes(), TokenBucket::kMinBurstBytes);
  EXPECT_EQ(bucket.Available(0), 16384u);
  bucket.Consume(16384);
  EXPECT_EQ(bucket.Available(0), 0u);
  EXPECT_NEAR(bucket.ReadyAt(12500, 0), kSecond / 100, 2);  // 12.5 kB at 1.25 MB/s: 10 ms
  EXPECT_NEAR(bucket.Available(kSecond / 100 + 2), 12500, 1);
  EXPECT_EQ(bucket.Available(10 * kSecond), 16384u);  // capped at the burst
  // Waiting for more than the burst waits for the burst.
  bucket.Consume(16384);
  EXPECT_NEAR(bucket.ReadyAt(1 << 20, 10 * kSecond), 10 * kSecond + 13107200, 2);

  // Sending 2 MB in quantum-sized steps takes (2 MB - burst) / rate.
  bucket.SetRate(1.25e6, 0);
  int64_t now = 0;
  for (size_t left = 2'000'000; left > 0;) {
    size_t want = std::min(left, bucket.quantum());
    now = bucket.ReadyAt(want, now);
    size_t n = std::min(left, bucket.Available(now));
    bucket.Consume(n);
    left -= n;
  }
  EXPECT_NEAR(now * 1e-9, (2e6 - 16384) / 1.25e6, 1e-3);
}

TEST(TokenBucketTest, BurstGrowsWithTheRate) {
  TokenBucket bucket;
  bucket.SetRate(125e6, 0);  // 1 Gbit/s: 5 ms worth
  EXPECT_DOUBLE_EQ(bucket.burst_bytes(), 625000);
}

}  // namespace
}  // namespace strata::linkem
