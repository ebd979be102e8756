// The link emulator's control language: one command per line, answered by one line,
// `ok[ <data>]` or `error <why>`. Links are named by index in --link order, or `all`.
//
//   delay <link|all> <ms> [jitter_ms]   one-way delay per chunk, each direction (jitter uniform)
//   bandwidth <link|all> <mbit>         cap per direction per link; 0 = unlimited
//   cut <link|all>                      reset every connection and refuse new ones
//   blackhole <link|all>                keep connections, accept new ones, drop all data
//   restore <link|all>                  normal forwarding again
//   stats                               `ok 0:k=v,k=v 1:k=v,...`, one token per link
//   quit                                answer ok, then exit
#pragma once

#include <string_view>

#include "absl/status/statusor.h"

namespace strata::linkem {

enum class CommandKind { kDelay, kBandwidth, kCut, kBlackhole, kRestore, kStats, kQuit };

struct Command {
  CommandKind kind = CommandKind::kStats;
  int link = kAllLinks;       // index, or kAllLinks
  double delay_ms = 0;        // kDelay
  double jitter_ms = 0;       // kDelay; 0 when omitted
  double bandwidth_mbit = 0;  // kBandwidth; 0 = unlimited

  static constexpr int kAllLinks = -1;
};

// Upper bounds that reject typos (a delay of an hour is not a link, it is a cut).
inline constexpr double kMaxDelayMs = 600'000;
inline constexpr double kMaxBandwidthMbit = 1'000'000;

// Parses one line (surrounding whitespace ignored). Link indices must be < num_links.
absl::StatusOr<Command> ParseCommand(std::string_view line, int num_links);

}  // namespace strata::linkem
