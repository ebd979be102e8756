// The spellings of the public speculative options (strata/client.h).
#include <string>
#include <string_view>

#include "absl/strings/numbers.h"
#include "common/strings.h"
#include "strata/client.h"

namespace strata {

absl::StatusOr<Drafter> ParseDrafter(std::string_view text) {
  if (text == "none") return Drafter::None();
  if (text == "ngram") return Drafter::Ngram();
  if (text.starts_with("draft:")) {
    if (text.size() == 6) return absl::InvalidArgumentError("draft:PATH needs a model file");
    return Drafter::Model(std::string(text.substr(6)));
  }
  if (text.starts_with("self:")) {
    int layers = 0;
    if (!absl::SimpleAtoi(std::string(text.substr(5)), &layers) || layers <= 0) {
      return absl::InvalidArgumentError(StrCat("bad drafter '", text, "' (self:K, K > 0)"));
    }
    return Drafter::Self(layers);
  }
  return absl::InvalidArgumentError(
      StrCat("unknown drafter '", text, "' (none, ngram, draft:PATH, self:K)"));
}

std::string DrafterName(const Drafter& drafter) {
  switch (drafter.kind) {
    case Drafter::Kind::kNone:
      return "none";
    case Drafter::Kind::kNgram:
      return "ngram";
    case Drafter::Kind::kModel:
      return StrCat("draft:", drafter.path);
    case Drafter::Kind::kSelf:
      return StrCat("self:", drafter.layers);
  }
  return "none";
}

absl::StatusOr<SpeculativeMode> ParseSpeculativeMode(std::string_view text) {
  for (SpeculativeMode m : {SpeculativeMode::kChain,
                            SpeculativeMode::kTree,
                            SpeculativeMode::kPipelined,
                            SpeculativeMode::kDsi}) {
    if (text == SpeculativeModeName(m)) return m;
  }
  return absl::InvalidArgumentError(
      StrCat("unknown speculative mode '", text, "' (chain, tree, pipelined, dsi)"));
}

std::string_view SpeculativeModeName(SpeculativeMode mode) {
  switch (mode) {
    case SpeculativeMode::kChain:
      return "chain";
    case SpeculativeMode::kTree:
      return "tree";
    case SpeculativeMode::kPipelined:
      return "pipelined";
    case SpeculativeMode::kDsi:
      return "dsi";
  }
  return "chain";
}

}  // namespace strata
