// A process that runs only layers [a, b) touches only their weights: the model file stays
// mapped, and only the pages a span reads become resident.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/thread_pool.h"
#include "model/llama.h"
#include "tests/testing/paths.h"

namespace strata {
namespace {

// Resident KiB of the mappings of `path` in this process, from /proc/self/smaps.
int64_t MappedRssKib(const std::string& path) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_file = false;
  int64_t total = 0;
  while (std::getline(smaps, line)) {
    if (line.find('-') != std::string::npos && line.find(' ') != std::string::npos &&
        std::isxdigit(static_cast<unsigned char>(line[0])) && line.find(':') > 20) {
      in_file = line.size() >= path.size() &&
                line.compare(line.size() - path.size(), path.size(), path) == 0;
      continue;
    }
    if (in_file && line.rfind("Rss:", 0) == 0) {
      std::istringstream in(line.substr(4));
      int64_t kib = 0;
      in >> kib;
      total += kib;
    }
  }
  return total;
}

// In a child process: run layers [first, last) over a few rows and report the model file's
// resident KiB and the bytes of the span's weights.
std::pair<int64_t, int64_t> ResidentAfterSpan(int first, int last) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    int64_t out[2] = {-1, -1};
    auto model = model::Model::Open(testkit::DefaultModelPath());
    if (model.ok()) {
      auto span = model::LayerSpan::Load(*model, first, last);
      if (span.ok()) {
        ThreadPool pool(1);
        model::KvPool kv_pool(size_t{64} << 20);
        model::KvCache kv(&kv_pool, (*span)->kv_layout());
        model::ForwardScratch scratch;
        std::vector<float> hidden(4 * (*model)->hparams().n_embd, 0.1f);
        std::vector<model::Row> rows = {{0, 1}, {1, 1}, {2, 1}, {3, 1}};
        if ((*span)->Forward(rows, hidden.data(), kv, pool, scratch).ok()) {
          out[0] = MappedRssKib(testkit::DefaultModelPath());
          out[1] = 0;
          for (const auto& t : (*span)->tensors()) out[1] += static_cast<int64_t>(t.bytes());
        }
      }
    }
    (void)!write(fds[1], out, sizeof(out));
    _exit(0);
  }
  close(fds[1]);
  int64_t out[2] = {-1, -1};
  EXPECT_EQ(read(fds[0], out, sizeof(out)), static_cast<ssize_t>(sizeof(out)));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {out[0], out[1]};
}

TEST(ResidencyTest, ASpanKeepsOnlyItsOwnWeightsResident) {
  ASSERT_TRUE(testkit::DefaultModelPresent());
  auto [span_kib, span_bytes] = ResidentAfterSpan(0, 3);
  auto [all_kib, all_bytes] = ResidentAfterSpan(0, 30);
  ASSERT_GT(span_kib, 0);
  ASSERT_GT(all_kib, 0);
  // Three of thirty layers: resident pages cover their weights (plus the header and page
  // rounding), and far less than the whole span of thirty.
  EXPECT_GE(span_kib * 1024, span_bytes * 9 / 10);
  EXPECT_LE(span_kib * 1024, span_bytes + (int64_t{4} << 20)) << "span touched other weights";
  EXPECT_GE(all_kib * 1024, all_bytes * 9 / 10);
  EXPECT_LT(span_kib * 4, all_kib);
  // The embedding table (28 MB), which no span uses, stays out in both cases.
  EXPECT_LE(all_kib * 1024, all_bytes + (int64_t{4} << 20));
}

}  // namespace
}  // namespace strata
