#include "harness/linkem/command.h"

#include <charconv>
#include <cmath>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/strings.h"

namespace strata::linkem {
namespace {

std::vector<std::string_view> SplitWords(std::string_view line) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') ++i;
    if (i > start) words.push_back(line.substr(start, i - start));
  }
  return words;
}

absl::StatusOr<int> ParseLink(std::string_view word, int num_links) {
  if (word == "all") return Command::kAllLinks;
  int link = -1;
  auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), link);
  if (ec != std::errc() || end != word.data() + word.size()) {
    return absl::InvalidArgumentError(StrCat("bad link '", word, "': want an index or 'all'"));
  }
  if (link < 0 || link >= num_links) {
    return absl::InvalidArgumentError(StrCat("no link ", link, " (have ", num_links, ")"));
  }
  return link;
}

absl::StatusOr<double> ParseAmount(std::string_view word, std::string_view what, double max) {
  double value = 0;
  auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), value);
  if (ec != std::errc() || end != word.data() + word.size() || !std::isfinite(value)) {
    return absl::InvalidArgumentError(StrCat("bad ", what, " '", word, "'"));
  }
  if (value < 0 || value > max) {
    return absl::InvalidArgumentError(StrCat(what, " ", word, " out of range [0, ", max, "]"));
  }
  return value;
}

absl::Status CheckArity(const std::vector<std::string_view>& words, size_t min, size_t max) {
  if (words.size() < min || words.size() > max) {
    return absl::InvalidArgumentError(StrCat("'",
                                             words[0],
                                             "' takes ",
                                             min - 1,
                                             max > min ? StrCat("-", max - 1) : std::string(),
                                             " argument(s), got ",
                                             words.size() - 1));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Command> ParseCommand(std::string_view line, int num_links) {
  std::vector<std::string_view> words = SplitWords(line);
  if (words.empty()) return absl::InvalidArgumentError("empty command");
  std::string_view verb = words[0];
  Command command;
  if (verb == "stats" || verb == "quit") {
    if (words.size() != 1)
      return absl::InvalidArgumentError(StrCat("'", verb, "' takes no arguments"));
    command.kind = verb == "stats" ? CommandKind::kStats : CommandKind::kQuit;
    return command;
  }
  if (verb == "delay") {
    command.kind = CommandKind::kDelay;
    RETURN_IF_ERROR(CheckArity(words, 3, 4));
  } else if (verb == "bandwidth") {
    command.kind = CommandKind::kBandwidth;
    RETURN_IF_ERROR(CheckArity(words, 3, 3));
  } else if (verb == "cut" || verb == "blackhole" || verb == "restore") {
    command.kind = verb == "cut"         ? CommandKind::kCut
                   : verb == "blackhole" ? CommandKind::kBlackhole
                                         : CommandKind::kRestore;
    RETURN_IF_ERROR(CheckArity(words, 2, 2));
  } else {
    return absl::InvalidArgumentError(StrCat("unknown command '", verb, "'"));
  }
  ASSIGN_OR_RETURN(command.link, ParseLink(words[1], num_links));
  if (command.kind == CommandKind::kDelay) {
    ASSIGN_OR_RETURN(command.delay_ms, ParseAmount(words[2], "delay_ms", kMaxDelayMs));
    if (words.size() == 4) {
      ASSIGN_OR_RETURN(command.jitter_ms, ParseAmount(words[3], "jitter_ms", kMaxDelayMs));
    }
  } else if (command.kind == CommandKind::kBandwidth) {
    ASSIGN_OR_RETURN(command.bandwidth_mbit, ParseAmount(words[2], "mbit", kMaxBandwidthMbit));
  }
  return command;
}

}  // namespace strata::linkem
