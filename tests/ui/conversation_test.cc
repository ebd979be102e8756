// Multi-turn prompts for `strata chat` / `strata serve` agree with the SDK's single-turn prompts.
#include "cli/conversation.h"

#include "client/prompt.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/llama.h"
#include "tests/testing/paths.h"

namespace strata::cli {
namespace {

class ConversationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testkit::DefaultModelPresent()) << testkit::DefaultModelPath();
    auto model = model::Model::Open(testkit::DefaultModelPath());
    ASSERT_TRUE(model.ok()) << model.status();
    auto tok = text::Tokenizer::FromGguf((*model)->gguf());
    ASSERT_TRUE(tok.ok()) << tok.status();
    model_ = *std::move(model);
    tokenizer_ = *std::move(tok);
  }

  std::vector<int32_t> Sdk(const std::string& prompt, const std::string& system = "") {
    GenerateRequest r;
    r.prompt = prompt;
    r.chat = true;
    r.system = system;
    auto ids = client::PromptTokens(*tokenizer_, r);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  std::vector<int32_t> Conv(const std::vector<text::ChatMessage>& messages) {
    auto ids = ConversationTokens(*tokenizer_, messages);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  std::shared_ptr<const model::Model> model_;
  std::unique_ptr<text::Tokenizer> tokenizer_;
};

TEST_F(ConversationTest, OneTurnIsWhatTheSdkFeeds) {
  EXPECT_EQ(Conv({{"user", "Why is the sky blue?"}}), Sdk("Why is the sky blue?"));
  EXPECT_EQ(Conv({{"system", "Be brief."}, {"user", "Hi"}}), Sdk("Hi", "Be brief."));
}

TEST_F(ConversationTest, LaterTurnsExtendTheEarlierPrompt) {
  const std::vector<int32_t> first = Conv({{"user", "My name is Alice."}});
  const std::vector<int32_t> second = Conv({{"user", "My name is Alice."},
                                            {"assistant", "Nice to meet you, Alice."},
                                            {"user", "What is my name?"}});
  ASSERT_GT(second.size(), first.size() + 8);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), second.begin()));
  // The assistant turn is closed with the end-of-turn token before the next user turn.
  EXPECT_NE(std::find(second.begin() + first.size(), second.end(), tokenizer_->eot_id()),
            second.end());
}

TEST_F(ConversationTest, EmptyConversationIsAnError) {
  auto ids = ConversationTokens(*tokenizer_, {});
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::cli
