// The command line's spelling of the public speculative options (strata/client.h).
#include <string>

#include "gtest/gtest.h"
#include "strata/client.h"

namespace strata {
namespace {

TEST(DrafterSpellingTest, EveryKindReadsBackFromItsName) {
  for (const Drafter& d : {Drafter::None(),
                           Drafter::Ngram(),
                           Drafter::Model("/models/draft.q8_0.gguf"),
                           Drafter::Self(20)}) {
    const std::string name = DrafterName(d);
    absl::StatusOr<Drafter> back = ParseDrafter(name);
    ASSERT_TRUE(back.ok()) << name << ": " << back.status();
    EXPECT_EQ(back->kind, d.kind) << name;
    EXPECT_EQ(back->path, d.path) << name;
    EXPECT_EQ(back->layers, d.layers) << name;
  }
  EXPECT_EQ(DrafterName(Drafter::Self(7)), "self:7");
  EXPECT_EQ(DrafterName(Drafter::Model("a.gguf")), "draft:a.gguf");
  EXPECT_FALSE(Drafter::None().enabled());
  EXPECT_TRUE(Drafter::Ngram().enabled());
}

TEST(DrafterSpellingTest, BadSpellingsAreRefusedWithTheirReason) {
  for (const char* bad :
       {"", "nonsense", "self:", "self:0", "self:-2", "self:x", "draft:", "Ngram", "oracle:0.9"}) {
    absl::StatusOr<Drafter> d = ParseDrafter(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
  EXPECT_NE(ParseDrafter("bogus").status().message().find("none, ngram, draft:PATH, self:K"),
            std::string::npos);
}

TEST(SpeculativeModeSpellingTest, EveryModeReadsBackAndOthersAreRefused) {
  for (SpeculativeMode m : {SpeculativeMode::kChain,
                            SpeculativeMode::kTree,
                            SpeculativeMode::kPipelined,
                            SpeculativeMode::kDsi}) {
    absl::StatusOr<SpeculativeMode> back = ParseSpeculativeMode(SpeculativeModeName(m));
    ASSERT_TRUE(back.ok()) << SpeculativeModeName(m);
    EXPECT_EQ(*back, m);
  }
  EXPECT_EQ(SpeculativeModeName(SpeculativeMode::kDsi), "dsi");
  for (const char* bad : {"", "plain", "Chain", "pipeline"}) {
    EXPECT_EQ(ParseSpeculativeMode(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << bad << "'";
  }
}

}  // namespace
}  // namespace strata
