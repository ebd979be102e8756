// Strata client SDK: generate text with a model served by a swarm.
//
//   strata::ClientOptions options;
//   options.coordinators = {"127.0.0.1:7000"};
//   options.model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
//   auto client = strata::Client::Connect(options);
//   strata::GenerateRequest request;
//   request.prompt = "Why is the sky blue?";
//   request.chat = true;
//   auto result = (*client)->Generate(request, [](int32_t, std::string_view text) {
//     std::cout << text << std::flush;
//     return true;  // false stops the generation
//   });
//
// The client holds only the tokenizer, the embeddings, the final norm and the head (read from
// its local copy of the model file); every transformer layer runs on the swarm's nodes. Sampling
// happens here, so a seed gives the same text whatever route served it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

struct ClientOptions {
  std::vector<std::string> coordinators;  // host:port, tried in order
  std::string model_path;                 // local GGUF file of the swarm's model
  int threads = 0;                        // CPU threads for embeddings and head (0: all)
  int step_timeout_ms = 60000;            // longest wait for one step through the route
  int open_timeout_ms = 5000;             // longest wait for a node to accept a session
};

struct SamplingOptions {
  float temperature = 0.7f;  // 0: greedy
  int top_k = 40;            // 0: off
  float top_p = 0.95f;       // 1: off
  float min_p = 0.05f;       // 0: off
  float repeat_penalty = 1.0f;
  uint64_t seed = 0;  // the draw at position p depends only on (seed, p)
};

// What drafts tokens for speculative decoding, at the client.
struct Drafter {
  enum class Kind {
    kNone,   // no drafts: plain decoding
    kNgram,  // n-grams of the text so far (prompt lookup; no model)
    kModel,  // a small GGUF model sharing the target's vocabulary (`path`)
    kSelf,   // the target's own first `layers` layers (needs the model file at the client)
  };
  Kind kind = Kind::kNone;
  std::string path;  // kModel
  int layers = 0;    // kSelf

  static Drafter None() { return {}; }
  static Drafter Ngram() { return {Kind::kNgram, "", 0}; }
  static Drafter Model(std::string path) { return {Kind::kModel, std::move(path), 0}; }
  static Drafter Self(int layers) { return {Kind::kSelf, "", layers}; }
  bool enabled() const { return kind != Kind::kNone; }
};

// The command line's spelling of a drafter: "none", "ngram", "draft:PATH" or "self:K" (K > 0).
absl::StatusOr<Drafter> ParseDrafter(std::string_view text);
std::string DrafterName(const Drafter& drafter);  // the spelling ParseDrafter reads

enum class SpeculativeMode {
  kChain,      // one run at a time: the unverified tokens plus up to gamma drafts
  kTree,       // one run of a draft tree grown best first up to tree_budget nodes
  kPipelined,  // several runs in flight along the chain, cancelled early on a rejection
  kDsi,        // pipelined runs spread over `replicas` chains of replicated spans
};

// "chain", "tree", "pipelined" or "dsi".
absl::StatusOr<SpeculativeMode> ParseSpeculativeMode(std::string_view text);
std::string_view SpeculativeModeName(SpeculativeMode mode);

// Speculative decoding: drafts made here, verified across the chain in one pass each.
// Greedy and seeded sampling give exactly the tokens of plain decoding.
struct SpeculativeOptions {
  Drafter drafter;  // Drafter::None(): plain decoding
  SpeculativeMode mode = SpeculativeMode::kChain;
  int gamma = 4;  // drafts per pass (start value; adapts to latency/acceptance)
  bool adaptive = true;
  int tree_budget = 16;             // draft nodes per tree
  int max_in_flight = 6;            // most runs in flight (pipelined, dsi)
  int replicas = 2;                 // chains for dsi
  bool rejection_sampling = false;  // accept with p/q instead of exact match
  // The node serving the last layers decides the tokens with the model's head and answers with
  // them instead of hidden states (chain, pipelined, dsi).
  bool verify_at_last_hop = false;
  // The drafter runs on cores the swarm also computes on (a local swarm on this machine): then
  // drafting ahead while runs are in flight slows the runs, and costs as much as drafting before
  // a run. Otherwise (the client on its own machine) it costs only the rows it adds.
  bool drafter_shares_cores = false;
};

struct GenerateRequest {
  std::string prompt;
  bool chat = false;   // wrap the prompt in the model's chat template
  std::string system;  // system message when chat is set
  int max_tokens = 128;
  SamplingOptions sampling;
  std::vector<std::string> stop;  // end before any of these strings
  SpeculativeOptions speculative;
};

// One hop of the route a generation used.
struct RouteHop {
  std::string node_id;
  std::string address;
  int first_layer = 0;  // layers [first_layer, last_layer)
  int last_layer = 0;
};

struct GenerateResult {
  std::string text;
  std::vector<int32_t> token_ids;  // generated ids
  int prompt_tokens = 0;
  double ttft_ms = 0;  // time to the first generated token
  double decode_tokens_per_s = 0;
  std::string finish_reason;  // "stop", "length" or "cancelled"
  std::vector<RouteHop> route;
  // Speculative decoding (zero without it).
  int passes = 0;                // verification passes whose results were used
  double accepted_per_pass = 0;  // accepted drafts per pass
  int wasted_rows = 0;           // rows computed or cancelled and not used
};

// Called with each token and the text it completes ("" while a character or a possible stop
// string is incomplete). Return false to stop.
using TokenCallback = std::function<bool(int32_t token, std::string_view text)>;

// A session over a route: feed tokens, read logits and final hidden states (for research).
class Session {
 public:
  virtual ~Session() = default;
  // Appends tokens and returns the logits of the last one.
  virtual absl::StatusOr<std::span<const float>> Feed(std::span<const int32_t> tokens) = 0;
  // Final hidden states (before the head) of the last row fed, hidden_size() values.
  virtual std::span<const float> hidden() const = 0;
  virtual int position() const = 0;
  virtual std::vector<RouteHop> route() const = 0;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  virtual ~Client() = default;

  virtual absl::StatusOr<GenerateResult> Generate(const GenerateRequest& request,
                                                  const TokenCallback& on_token = nullptr) = 0;
  virtual absl::StatusOr<std::unique_ptr<Session>> OpenSession() = 0;

  // Token ids of a prompt as Generate would feed them.
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(const GenerateRequest& request) const = 0;
  virtual std::string Detokenize(const std::vector<int32_t>& ids) const = 0;
  virtual int hidden_size() const = 0;
  virtual int vocab_size() const = 0;
};

}  // namespace strata
