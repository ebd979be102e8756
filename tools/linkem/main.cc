// strata-linkem: a user-space link emulator (delay, jitter, bandwidth cap, cut, blackhole)
// put between Strata hops in tests and benchmarks. See proxy.h and command.h.
//
//   strata-linkem --link 127.0.0.1:0=127.0.0.1:50051 --delay-ms 20 --jitter-ms 2
//
// Prints `linkem ready control=HOST:PORT links=LISTEN->TARGET,...` as its first stdout line.
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "harness/linkem/proxy.h"

int main(int argc, char** argv) {
  using strata::linkem::LinkSpec;
  strata::linkem::ProxyOptions options;
  std::vector<std::string> links;
  bool no_stdin = false;
  double max_queue_mib = 8;
  CLI::App app{"strata-linkem: TCP proxy adding delay, jitter, bandwidth caps and faults"};
  app.add_option("--link", links, "LISTEN=TARGET (host:port each; listen port 0 = any)")
      ->required();
  app.add_option("--control", options.control, "control port host:port ('' = none)")
      ->capture_default_str();
  app.add_option("--delay-ms", options.delay_ms, "one-way delay per direction")
      ->check(CLI::Range(0.0, 600000.0));
  app.add_option("--jitter-ms", options.jitter_ms, "uniform jitter (+/-), never reorders")
      ->check(CLI::Range(0.0, 600000.0));
  app.add_option("--bandwidth-mbit", options.bandwidth_mbit, "cap per direction per link; 0 = none")
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--seed", options.seed, "jitter RNG seed")->capture_default_str();
  app.add_option("--max-queue-mib", max_queue_mib, "per-direction buffer before reads pause")
      ->check(CLI::Range(0.0625, 1024.0))
      ->capture_default_str();
  app.add_flag("--no-stdin", no_stdin, "do not read control commands from stdin");
  CLI11_PARSE(app, argc, argv);

  for (const std::string& link : links) {
    size_t eq = link.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "strata-linkem: --link wants LISTEN=TARGET, got '%s'\n", link.c_str());
      return 2;
    }
    options.links.push_back(LinkSpec{link.substr(0, eq), link.substr(eq + 1)});
  }
  options.control_on_stdin = !no_stdin;
  options.max_queue_bytes = static_cast<size_t>(max_queue_mib * (1 << 20));
  signal(SIGPIPE, SIG_IGN);

  auto proxy = strata::linkem::Proxy::Create(options);
  if (!proxy.ok()) {
    std::fprintf(stderr, "strata-linkem: %s\n", proxy.status().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", (*proxy)->ReadyLine().c_str());
  std::fflush(stdout);
  absl::Status status = (*proxy)->Run();
  if (!status.ok()) {
    STRATA_LOG(Error) << status;
    return 1;
  }
  return 0;
}
