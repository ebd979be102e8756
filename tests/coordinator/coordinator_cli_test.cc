// `strata coordinator` as a real process: the listening line, gRPC and HTTP on the bound ports,
// a clear error for a port in use, and a clean exit on SIGTERM.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "strata/v1/coordinator.grpc.pb.h"
#include "tests/coordinator/test_util.h"
#include "tests/testing/paths.h"

extern char** environ;

namespace strata::coordinator {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A child process with its stdout and stderr on pipes.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int out[2], err[2];
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(pipe2(err, O_CLOEXEC), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ), 0) << args[0];
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
    close(err_);
  }

  // The next line of stdout, or nullopt at EOF or after `timeout`.
  std::optional<std::string> ReadLine(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      if (size_t nl = out_buffer_.find('\n'); nl != std::string::npos) {
        std::string line = out_buffer_.substr(0, nl);
        out_buffer_.erase(0, nl + 1);
        return line;
      }
      if (!ReadSome(out_, out_buffer_, deadline)) return std::nullopt;
    }
  }

  // Waits for the exit (stdout and stderr reach EOF first); the exit status, or nullopt on timeout.
  std::optional<int> Wait(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (ReadSome(out_, out_buffer_, deadline)) {
    }
    while (ReadSome(err_, err_text_, deadline)) {
    }
    if (absl::Now() >= deadline) return std::nullopt;
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  void Signal(int sig) { kill(pid_, sig); }
  const std::string& err_text() const { return err_text_; }

 private:
  // Appends what `fd` has to `buffer`; false at EOF or past `deadline`.
  static bool ReadSome(int fd, std::string& buffer, absl::Time deadline) {
    pollfd p{fd, POLLIN, 0};
    const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (wait_ms <= 0 || poll(&p, 1, wait_ms) <= 0) return false;
    char chunk[4096];
    const ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n <= 0) return false;
    buffer.append(chunk, n);
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int err_ = -1;
  std::string out_buffer_;
  std::string err_text_;
};

std::string StrataBinary() { return strata::testkit::BinaryDir() + "/strata"; }

TEST(CoordinatorCliTest, ServesOnTheAnnouncedPortsAndExitsCleanly) {
  Child coordinator({StrataBinary(),
                     "coordinator",
                     "--listen",
                     "127.0.0.1:0",
                     "--http",
                     "127.0.0.1:0",
                     "--model-id",
                     testkit::kModel,
                     "--ttl-ms",
                     "2000",
                     "--heartbeat-ms",
                     "500"});
  std::optional<std::string> line = coordinator.ReadLine(absl::Seconds(30));
  ASSERT_TRUE(line.has_value()) << coordinator.err_text();
  std::smatch m;
  ASSERT_TRUE(std::regex_match(
      *line,
      m,
      std::regex(R"(coordinator listening grpc=127\.0\.0\.1:(\d+) http=127\.0\.0\.1:(\d+))")))
      << *line;
  const std::string grpc_address = "127.0.0.1:" + m[1].str();
  const int http_port = std::stoi(m[2].str());

  auto stub = v1::Coordinator::NewStub(
      grpc::CreateChannel(grpc_address, grpc::InsecureChannelCredentials()));
  auto call = [] {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return context;
  };
  v1::JoinResponse joined;
  grpc::Status st =
      stub->Join(call().get(), testkit::AutoJoin("n1", "127.0.0.1:7001", 30, 10), &joined);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(joined.heartbeat_interval_ms(), 500);
  EXPECT_EQ(joined.ttl_ms(), 2000);
  v1::JoinRequest other = testkit::AutoJoin("n2", "127.0.0.1:7002", 30, 10);
  other.mutable_node()->set_model_id("another-model");
  EXPECT_EQ(stub->Join(call().get(), other, &joined).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  httplib::Client http("127.0.0.1", http_port);
  http.set_read_timeout(10);
  httplib::Result res = http.Get("/api/swarm");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  nlohmann::json swarm = nlohmann::json::parse(res->body);
  ASSERT_EQ(swarm["nodes"].size(), 1u);
  EXPECT_EQ(swarm["nodes"][0]["id"], "n1");

  // A second coordinator on the same port fails with one clear line.
  Child second({StrataBinary(), "coordinator", "--listen", grpc_address});
  EXPECT_EQ(second.Wait(absl::Seconds(30)), 1);
  EXPECT_THAT(second.err_text(), StartsWith("error: "));
  EXPECT_THAT(second.err_text(), HasSubstr("in use"));
  EXPECT_EQ(std::count(second.err_text().begin(), second.err_text().end(), '\n'), 1)
      << second.err_text();

  coordinator.Signal(SIGTERM);
  EXPECT_EQ(coordinator.Wait(absl::Seconds(30)), 0) << coordinator.err_text();
}

TEST(CoordinatorCliTest, BadAddressIsAOneLineError) {
  Child coordinator({StrataBinary(), "coordinator", "--listen", "127.0.0.1:http"});
  EXPECT_EQ(coordinator.Wait(absl::Seconds(30)), 1);
  EXPECT_EQ(coordinator.err_text(),
            "error: bad address '127.0.0.1:http': the port must be a number in 0..65535\n");
}

// A node that cannot start (here: an unknown device, found after the model is opened) exits
// with a one-line error and status 1, not a crash.
TEST(NodeCliTest, BadDeviceIsAOneLineErrorNotACrash) {
  ASSERT_TRUE(strata::testkit::DefaultModelPresent());
  for (const std::string device : {"tpu:0", "cuda:x"}) {
    Child node({StrataBinary(),
                "node",
                "--model",
                strata::testkit::DefaultModelPath(),
                "--layers",
                "0:10",
                "--device",
                device,
                "--listen",
                "127.0.0.1:0"});
    EXPECT_EQ(node.Wait(absl::Seconds(60)), 1) << device << ": " << node.err_text();
    EXPECT_THAT(node.err_text(), StartsWith("error: ")) << device;
    EXPECT_THAT(node.err_text(), HasSubstr(device)) << device;
  }
}

}  // namespace
}  // namespace strata::coordinator
