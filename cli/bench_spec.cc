// strata bench --nodes N --spec-sweep: speculative decoding through a local swarm (N spans, each
// served by two nodes so that DSI has two disjoint chains), every mode against plain decoding at
// each link delay, on four prompts of the kinds a user sends. Runs go through the client's own
// Generate, as `strata generate --speculative` does; greedy, so every speculative run must give
// exactly the plain tokens, and a mismatch fails the command.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/bench.h"
#include "cli/commands.h"
#include "client/drafter.h"
#include "client/swarm_client.h"
#include "common/status.h"
#include "common/strings.h"
#include "model/llama.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

// One prompt of each kind: a summary, a question about a given text, a code edit, a chat.
const char* const kPrompts[] = {
    "Summarize this paragraph in two sentences:\n\nThe town council voted on Tuesday to close the "
    "old library on Main Street and move its books to the new community center by the end of the "
    "year. Supporters said the new building is larger and easier to reach by bus, while opponents "
    "worried that the historic library building would be sold and torn down.",
    "Read the text and answer the question.\n\nText: The Amazon river flows through Peru, "
    "Colombia and Brazil before it reaches the Atlantic Ocean. It carries more water than any "
    "other river in the world.\n\nQuestion: Which ocean does the Amazon river flow into?",
    "Rename the function avg to mean and make it return 0 for an empty list:\n\n"
    "def avg(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
    "    return total / len(xs)\n",
    "What are three simple ways to sleep better?",
};

// A row of the matrix. M0 is plain decoding; M1-M4 are the speculative modes.
struct Config {
  std::string mode;       // "plain", "chain", "tree", "pipelined" or "dsi"
  std::string drafter;    // "none", "ngram", "self:K" or "oracle:A"
  double accuracy = 0;    // the oracle's probability of a right draft; 0: not the oracle
  bool last_hop = false;  // verified by the last hop
};

bool IsPlain(const Config& c) { return c.mode == "plain" || c.mode == "plain-again"; }

std::string ModeLabel(const std::string& mode) {
  static const std::map<std::string, std::string> kLabels = {{"plain", "M0 plain"},
                                                             {"plain-again", "M0 again"},
                                                             {"chain", "M1 chain"},
                                                             {"tree", "M2 tree"},
                                                             {"pipelined", "M3 pipelined"},
                                                             {"dsi", "M4 dsi"}};
  return kLabels.at(mode);
}

Config Oracle(const std::string& mode, double a) {
  return {mode, absl::StrFormat("oracle:%.1f", a), a};
}

// Whether --spec-modes and --spec-drafters keep row `c`. A drafter entry keeps the drafter of
// that whole name and every drafter of that kind ("draft" keeps "draft:/tmp/d.gguf").
bool Kept(const BenchFlags& f, const Config& c) {
  if (IsPlain(c)) return true;
  if (!f.spec_modes.empty() &&
      std::find(f.spec_modes.begin(), f.spec_modes.end(), c.mode) == f.spec_modes.end()) {
    return false;
  }
  if (f.spec_drafters.empty()) return true;
  return std::any_of(f.spec_drafters.begin(), f.spec_drafters.end(), [&](const std::string& d) {
    return c.drafter == d || c.drafter.starts_with(d + ":");
  });
}

// What runs at each delay (M0 first: it gives the reference tokens and the oracle's truth).
// Full: every mode with ngram and the oracle at 0.7, chain also with self-speculation and the
// oracle at 0.5 and 0.9, and pipelined with the oracle at 0.9. Quick: every mode with the oracle
// at 0.7, and chain with ngram. Every draft model adds M1 and M3 rows, verified at the client and
// by the last hop. M0 runs again last: the two M0 rows bound how much the machine itself drifted
// while the delay's rows ran. --spec-modes and --spec-drafters keep a subset (M0 always runs).
std::vector<Config> Matrix(const BenchFlags& f, const std::string& self) {
  const bool quick = f.spec_quick;
  const std::vector<std::string>& drafts = f.spec_drafts;
  std::vector<Config> m = {{"plain", "none"}};
  for (const std::string& d : drafts) {
    m.push_back({"chain", "draft:" + d});
    m.push_back({"pipelined", "draft:" + d});
    m.push_back({"chain", "draft:" + d, 0, /*last_hop=*/true});
    m.push_back({"pipelined", "draft:" + d, 0, /*last_hop=*/true});
  }
  for (const char* mode : {"chain", "tree", "pipelined", "dsi"}) {
    if (!quick || std::string(mode) == "chain") m.push_back({mode, "ngram"});
    m.push_back(Oracle(mode, 0.7));
  }
  if (!quick) {
    m.push_back({"chain", self});
    m.push_back(Oracle("chain", 0.5));
    m.push_back(Oracle("chain", 0.9));
    m.push_back(Oracle("pipelined", 0.9));
  }
  m.push_back({"plain-again", "none"});
  std::erase_if(m, [&](const Config& c) { return !Kept(f, c); });
  return m;
}

// Expected tokens per pass for a chain of `gamma` drafts, each right independently with
// probability a, the target's own token after the last accepted draft included:
// sum_{i=0..gamma} a^i = (1 - a^(gamma+1)) / (1 - a).
double ExpectedTokensPerPass(double a, int gamma) { return (1 - std::pow(a, gamma + 1)) / (1 - a); }

// A prompt as a user sends it: chat template on, greedy.
GenerateRequest Request(const char* prompt, int max_tokens) {
  GenerateRequest r;
  r.prompt = prompt;
  r.chat = true;
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return r;
}

struct Totals {
  int tokens = 0;
  double wall_s = 0;
  int passes = 0;
  double accepted = 0;  // accepted drafts
  int wasted_rows = 0;
  std::vector<double> gaps_ms;     // between consecutive emitted tokens
  int decode_tokens = 0;           // tokens after each request's first
  double decode_s = 0;             // from each request's first token to its last
  std::vector<double> request_ms;  // each prompt's wall time, in order (the first one learns)
  std::vector<double> first_ms;    // each prompt's time to its first token
  std::vector<double> tail_ms;     // each prompt's time from its last token to the answer
  std::vector<std::vector<int32_t>> outputs;
};

// Whether the client's drafter and the local nodes need more threads than the machine has cores.
bool DrafterSharesCores(const BenchFlags& f) {
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const int node_threads = f.node_threads > 0 ? f.node_threads : cores;
  const int client_threads = f.threads > 0 ? f.threads : cores;
  return 2 * f.nodes * node_threads + client_threads > cores;
}

// Runs every prompt with `config`. `plain` (the M0 outputs, null for M0 itself) is the truth the
// oracle knows.
absl::StatusOr<Totals> RunConfig(client::SwarmClient& client,
                                 const BenchFlags& f,
                                 const Config& config,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const std::vector<std::vector<int32_t>>* plain) {
  Totals t;
  // A draft model loads once per client, not per request: not part of the timed requests.
  // The oracle is passed to each request; every other drafter is named by the request.
  strata::Drafter drafter;
  if (config.accuracy == 0) {
    ASSIGN_OR_RETURN(drafter, strata::ParseDrafter(config.drafter));
    RETURN_IF_ERROR(client.LoadDrafter(drafter));
  }
  strata::SpeculativeMode mode = strata::SpeculativeMode::kChain;
  if (!IsPlain(config)) {
    ASSIGN_OR_RETURN(mode, strata::ParseSpeculativeMode(config.mode));
  }
  // An oracle is made per request (it knows that request's answer); what the requests learn
  // about it carries over from one to the next, as a draft model's does in the client's cache.
  client::DrafterCache::Learned oracle_learned;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest r = Request(kPrompts[i], f.decode_tokens);
    r.speculative.drafter = drafter;
    r.speculative.mode = mode;
    r.speculative.gamma = f.gamma;
    r.speculative.adaptive = !f.fixed_gamma;
    r.speculative.verify_at_last_hop = config.last_hop;
    r.speculative.drafter_shares_cores = DrafterSharesCores(f);
    std::unique_ptr<client::OracleDrafter> oracle;
    if (config.accuracy > 0) {
      std::vector<int32_t> truth = prompts[i];
      truth.insert(truth.end(), (*plain)[i].begin(), (*plain)[i].end());
      // The same seed for every mode and delay: each sees the same right and wrong drafts.
      oracle = std::make_unique<client::OracleDrafter>(
          std::move(truth), config.accuracy, i + 1, client.vocab_size());
    }
    std::vector<absl::Time> emitted;
    const absl::Time start = absl::Now();
    ASSIGN_OR_RETURN(GenerateResult g,
                     client.GenerateWith(
                         r,
                         oracle.get(),
                         [&](int32_t token, std::string_view) {
                           if (token >= 0) emitted.push_back(absl::Now());
                           return true;
                         },
                         &oracle_learned));
    const absl::Time end = absl::Now();
    t.wall_s += absl::ToDoubleSeconds(end - start);
    t.request_ms.push_back(absl::ToDoubleMilliseconds(end - start));
    if (!emitted.empty()) {
      t.first_ms.push_back(absl::ToDoubleMilliseconds(emitted.front() - start));
      t.tail_ms.push_back(absl::ToDoubleMilliseconds(end - emitted.back()));
    }
    for (size_t k = 1; k < emitted.size(); ++k) {
      t.gaps_ms.push_back(absl::ToDoubleMilliseconds(emitted[k] - emitted[k - 1]));
    }
    if (emitted.size() > 1) {
      t.decode_tokens += static_cast<int>(emitted.size()) - 1;
      t.decode_s += absl::ToDoubleSeconds(emitted.back() - emitted.front());
    }
    t.tokens += static_cast<int>(g.token_ids.size());
    t.passes += g.passes;
    t.accepted += g.accepted_per_pass * g.passes;
    t.wasted_rows += g.wasted_rows;
    t.outputs.push_back(std::move(g.token_ids));
  }
  return t;
}

// "draft:/some/dir/model.gguf" is shown as "draft:model.gguf".
std::string DrafterLabel(const std::string& drafter) {
  if (drafter.rfind("draft:", 0) != 0) return drafter;
  return "draft:" + std::filesystem::path(drafter.substr(6)).filename().string();
}

// One row of the table: M0 rows have no speculative columns.
nlohmann::json RowJson(
    double delay, const Config& c, const Totals& t, double plain_tps, bool identical, int gamma) {
  const double tps = t.wall_s > 0 ? t.tokens / t.wall_s : 0;
  nlohmann::json j = {{"delay_ms", delay},
                      {"mode", ModeLabel(c.mode) + (c.last_hop ? ", last hop" : "")},
                      {"drafter", DrafterLabel(c.drafter)},
                      {"tokens", t.tokens},
                      {"wall_s", t.wall_s},
                      {"decode_tokens_per_s", t.decode_s > 0 ? t.decode_tokens / t.decode_s : 0},
                      {"tokens_per_s", tps},
                      {"speedup", plain_tps > 0 ? tps / plain_tps : 1.0},
                      {"itl_p50_ms", Percentile(t.gaps_ms, 50)},
                      {"itl_p95_ms", Percentile(t.gaps_ms, 95)},
                      {"request_ms", t.request_ms},
                      {"first_token_ms", t.first_ms},
                      {"tail_ms", t.tail_ms},
                      {"tokens_identical", identical}};
  if (IsPlain(c)) return j;
  j["passes"] = t.passes;
  j["accepted_per_pass"] = t.passes ? t.accepted / t.passes : 0;
  j["tokens_per_pass"] = t.passes ? double(t.tokens) / t.passes : 0;
  j["passes_per_token"] = t.tokens ? double(t.passes) / t.tokens : 0;
  j["wasted_rows"] = t.wasted_rows;
  if (c.accuracy > 0 && c.mode == "chain") {
    j["expected_tokens_per_pass"] = ExpectedTokensPerPass(c.accuracy, gamma);
  }
  return j;
}

// `row[key]` with `digits` decimals, or "-" when the row has no such column.
std::string Column(const nlohmann::json& row, const char* key, int digits) {
  if (!row.contains(key)) return "-";
  return absl::StrFormat("%.*f", digits, row[key].get<double>());
}

void PrintRow(const nlohmann::json& j) {
  std::printf(
      "%-6.0f %-24s %-11s %-8.1f %-8.1f %-8s %-8s %-9s %-9s %-7s %-9s %-7s %-8.1f %-8.1f "
      "%-4s\n",
      j["delay_ms"].get<double>(),
      j["mode"].get<std::string>().c_str(),
      j["drafter"].get<std::string>().c_str(),
      j["tokens_per_s"].get<double>(),
      j["decode_tokens_per_s"].get<double>(),
      (Column(j, "speedup", 2) + "x").c_str(),
      Column(j, "paired_plain_tokens_per_s", 1).c_str(),
      Column(j, "accepted_per_pass", 2).c_str(),
      Column(j, "tokens_per_pass", 2).c_str(),
      Column(j, "expected_tokens_per_pass", 2).c_str(),
      Column(j, "passes_per_token", 3).c_str(),
      Column(j, "wasted_rows", 0).c_str(),
      j["itl_p50_ms"].get<double>(),
      j["itl_p95_ms"].get<double>(),
      j["tokens_identical"].get<bool>() ? "yes" : "no");
  std::fflush(stdout);
}

void PrintHeader(const BenchFlags& f, int nodes) {
  std::printf(
      "%d prompts (summary, question on a text, code edit, chat), chat template, greedy, "
      "%d tokens each; %d nodes: %d spans, two nodes each\n",
      static_cast<int>(std::size(kPrompts)),
      f.decode_tokens,
      nodes,
      f.nodes);
  std::printf("gamma %d%s; tok/pass includes the target's own token after the accepted drafts\n",
              f.gamma,
              f.fixed_gamma ? " (fixed)" : " at the start, then adaptive");
  std::printf(
      "expect: (1 - a^(gamma+1)) / (1 - a) tok/pass for a chain of gamma drafts each right "
      "with probability a (M1 oracle rows; exact with --fixed-gamma)\n");
  std::printf("%s\n",
              DrafterSharesCores(f)
                  ? "the drafter shares the nodes' cores: it drafts ahead of runs in flight "
                    "only where a draft before a run would pay"
                  : "the drafter has cores of its own: drafting ahead of runs in flight "
                    "costs only the rows");
  if (f.spec_paired) {
    std::printf(
        "paired: each speculative row's speedup is against the M0 run made right before "
        "it (its tok/s under \"M0\")\n");
  }
  std::printf(
      "decode tok/s: tokens after each request's first over the time from its first token "
      "to its last (no session opening, no prompt pass)\n");
  std::printf("%-6s %-24s %-11s %-8s %-8s %-8s %-8s %-9s %-9s %-7s %-9s %-7s %-8s %-8s %-4s\n",
              "delay",
              "mode",
              "drafter",
              "tok/s",
              "decode",
              "speedup",
              "M0",
              "acc/pass",
              "tok/pass",
              "expect",
              "pass/tok",
              "wasted",
              "itl_p50",
              "itl_p95",
              "same");
}

}  // namespace

int RunSpecSweep(const BenchFlags& f) {
  const std::string model = f.model.empty() ? DefaultModelPath() : f.model;
  auto file = model::Model::Open(model);
  if (!file.ok()) return Fail(std::string(file.status().message()));
  // Self-speculation with the first two thirds of the layers (self:20 of 30, as the tests use).
  const std::string self = StrCat("self:", 2 * (*file)->hparams().n_layer / 3);
  const std::vector<Config> matrix = Matrix(f, self);
  if (std::all_of(matrix.begin(), matrix.end(), IsPlain)) {
    return Fail("--spec-modes and --spec-drafters leave no speculative row to run");
  }

  const int nodes = 2 * f.nodes;
  auto swarm = StartBenchSwarm(
      model, f.delays_ms, ReplicatedSpans((*file)->hparams().n_layer, f.nodes, 2, f.node_threads));
  if (!swarm.ok()) return Fail(std::string(swarm.status().message()));
  auto client = client::SwarmClient::Create(BenchClientOptions(**swarm, model, f.threads));
  if (!client.ok()) return Fail(std::string(client.status().message()));
  std::vector<std::vector<int32_t>> prompts;
  for (const char* p : kPrompts) {
    auto ids = (*client)->Tokenize(Request(p, f.decode_tokens));
    if (!ids.ok()) return Fail(std::string(ids.status().message()));
    prompts.push_back(std::move(*ids));
  }

  nlohmann::json out;
  out["model"] = model;
  out["spans"] = f.nodes;
  out["nodes"] = nodes;
  out["prompts"] = std::vector<std::string>(std::begin(kPrompts), std::end(kPrompts));
  out["decode_tokens"] = f.decode_tokens;
  out["gamma"] = f.gamma;
  out["adaptive_gamma"] = !f.fixed_gamma;
  out["drafter_shares_cores"] = DrafterSharesCores(f);
  out["runs"] = nlohmann::json::array();
  out["best"] = nlohmann::json::array();
  if (!f.json) PrintHeader(f, nodes);
  std::vector<std::string> mismatches;
  for (double delay : f.delays_ms) {
    absl::Status st = SetBenchDelay(**swarm, delay);
    if (!st.ok()) return Fail(std::string(st.message()));
    // A fresh client per delay: what its drafters learned about the last delay's links does not
    // carry over to this one.
    client = client::SwarmClient::Create(BenchClientOptions(**swarm, model, f.threads));
    if (!client.ok()) return Fail(std::string(client.status().message()));
    Totals plain;
    double plain_tps = 0;
    // The fastest speculative row with a real drafter, and with the oracle.
    std::map<bool, nlohmann::json> best;
    for (const Config& c : matrix) {
      // Paired: the row is compared with an M0 run made just before it, not the delay's first.
      double reference_tps = plain_tps;
      if (f.spec_paired && !IsPlain(c)) {
        auto p = RunConfig(**client, f, {"plain", "none"}, prompts, nullptr);
        if (!p.ok()) return Fail(StrCat("M0 at ", delay, " ms: ", p.status().message()));
        if (p->outputs != plain.outputs) {
          mismatches.push_back(StrCat("M0 (paired) at ", delay, " ms"));
        }
        reference_tps = p->wall_s > 0 ? p->tokens / p->wall_s : 0;
      }
      auto t = RunConfig(**client, f, c, prompts, IsPlain(c) ? nullptr : &plain.outputs);
      if (!t.ok()) {
        return Fail(StrCat(
            ModeLabel(c.mode), " ", c.drafter, " at ", delay, " ms: ", t.status().message()));
      }
      const bool identical = c.mode == "plain" || t->outputs == plain.outputs;  // M0 again too
      if (!identical) {
        mismatches.push_back(StrCat(ModeLabel(c.mode), " ", c.drafter, " at ", delay, " ms"));
      }
      nlohmann::json j = RowJson(delay, c, *t, reference_tps, identical, f.gamma);
      if (f.spec_paired && !IsPlain(c)) j["paired_plain_tokens_per_s"] = reference_tps;
      if (c.mode == "plain") {
        plain = std::move(*t);
        plain_tps = j["tokens_per_s"].get<double>();
      } else if (!IsPlain(c)) {
        nlohmann::json& b = best[c.accuracy > 0];
        if (b.is_null() || j["tokens_per_s"].get<double>() > b["tokens_per_s"].get<double>()) {
          b = j;
        }
      }
      if (!f.json) PrintRow(j);
      out["runs"].push_back(std::move(j));
    }
    for (const auto& [oracle, b] : best) {
      out["best"].push_back(b);
      if (!f.json) {
        std::printf("best at %.0f ms (%s): %s %s, %.1f tok/s, %.2fx plain\n",
                    delay,
                    oracle ? "oracle" : "real drafters",
                    b["mode"].get<std::string>().c_str(),
                    b["drafter"].get<std::string>().c_str(),
                    b["tokens_per_s"].get<double>(),
                    b["speedup"].get<double>());
      }
    }
  }
  out["tokens_identical"] = mismatches.empty();
  if (f.json) {
    std::cout << out.dump() << std::endl;
  } else {
    std::printf("tokens identical: %s\n", mismatches.empty() ? "yes" : "no");
  }
  if (!mismatches.empty()) {
    std::string rows;
    for (const std::string& m : mismatches) rows += (rows.empty() ? "" : ", ") + m;
    return Fail(StrCat("speculative tokens differ from plain decoding: ", rows));
  }
  return 0;
}

}  // namespace strata::cli
