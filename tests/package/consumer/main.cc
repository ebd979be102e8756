// Generates greedily through a swarm with the installed SDK and prints what it got as JSON:
//   consumer COORDINATOR MODEL PROMPT MAX_TOKENS
// Only <strata/client.h> is used, as any program outside the tree would.
#include <strata/client.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

std::string JsonList(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: consumer COORDINATOR MODEL PROMPT MAX_TOKENS\n");
    return 2;
  }
  strata::ClientOptions options;
  options.coordinators = {argv[1]};
  options.threads = 1;
  options.model_path = argv[2];
  absl::StatusOr<std::unique_ptr<strata::Client>> client = strata::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  strata::GenerateRequest request;
  request.prompt = argv[3];
  request.max_tokens = std::atoi(argv[4]);
  request.sampling.temperature = 0;
  // A typed drafter: n-grams of the text, verified through the chain (the same greedy tokens).
  request.speculative.drafter = strata::Drafter::Ngram();
  request.speculative.mode = strata::SpeculativeMode::kPipelined;
  absl::StatusOr<std::vector<int32_t>> prompt = (*client)->Tokenize(request);
  absl::StatusOr<strata::GenerateResult> result = (*client)->Generate(request);
  if (!prompt.ok() || !result.ok()) {
    std::fprintf(stderr,
                 "generate: %s\n",
                 (prompt.ok() ? result.status() : prompt.status()).ToString().c_str());
    return 1;
  }
  std::printf("{\"prompt_ids\": %s, \"token_ids\": %s, \"hops\": %zu}\n",
              JsonList(*prompt).c_str(),
              JsonList(result->token_ids).c_str(),
              result->route.size());
  return 0;
}
