// strata serve: an OpenAI-compatible HTTP API in front of a swarm.
//
//   GET  /v1/models, /v1/models/{id}
//   POST /v1/completions, /v1/chat/completions   (stream: true -> server-sent events)
//   GET  /healthz                                 (no key needed)
//
// The first line on stdout is exactly `serve listening http=HOST:PORT`. Requests run
// concurrently on a pool of --max-concurrency HTTP threads, each with its own session through
// the swarm. With --api-key every /v1 request must carry `Authorization: Bearer KEY`.
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/conversation.h"
#include "cli/engine.h"
#include "cli/openai_api.h"
#include "cli/signals.h"
#include "client/generate.h"
#include "coordinator/server.h"
#include "httplib.h"

namespace strata::cli {
namespace {

using nlohmann::json;
using openai::ApiError;
using openai::CompletionRequest;
using openai::Endpoint;

struct ServeFlags {
  std::string coordinators;
  std::string listen = "127.0.0.1:8000";
  std::string api_key;
  std::string model;
  std::string model_name;
  int threads = 0;
  int max_concurrency = 16;
  size_t max_body_bytes = size_t{8} << 20;
};

std::string RandomHex(int n) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < n; ++i) s += hex[rng() % 16];
  return s;
}

// Constant-time comparison, so response timing does not reveal how much of a key matched.
bool SameKey(std::string_view given, std::string_view key) {
  if (key.empty()) return false;
  size_t diff = given.size() ^ key.size();
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i] ^ key[i % key.size()]);
  }
  return diff == 0;
}

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.http_status;
  res.set_content(openai::ErrorJson(e).dump(), "application/json");
}

class Server {
 public:
  Server(ServeFlags flags, std::unique_ptr<Engine> engine, std::string model_name)
      : flags_(std::move(flags)),
        engine_(std::move(engine)),
        model_name_(std::move(model_name)),
        created_(std::time(nullptr)) {}

  void Install(httplib::Server& http) {
    http.new_task_queue = [n = flags_.max_concurrency] { return new httplib::ThreadPool(n); };
    http.set_payload_max_length(flags_.max_body_bytes);
    http.set_keep_alive_timeout(5);
    http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (!Authorized(req, res)) return;
      json data = json::array({openai::ModelJson(model_name_, created_)});
      res.set_content(json{{"object", "list"}, {"data", data}}.dump(), "application/json");
    });
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (!Authorized(req, res)) return;
      const std::string id = req.matches[1];
      if (!KnownModel(id)) return SendError(res, UnknownModel(id));
      res.set_content(openai::ModelJson(model_name_, created_).dump(), "application/json");
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Handle(Endpoint::kCompletions, req, res);
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Handle(Endpoint::kChatCompletions, req, res);
    });
    // Anything else (unknown path, wrong method, a body over the limit): OpenAI's error shape.
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      ApiError e;
      e.http_status = res.status;
      e.message = res.status == 404 ? "Unknown request URL: " + req.method + " " + req.path
                  : res.status == 413
                      ? "the request body is too large"
                      : "the request failed with HTTP status " + std::to_string(res.status);
      e.code = res.status == 404 ? "unknown_url" : "";
      res.set_content(openai::ErrorJson(e).dump(), "application/json");
    });
    http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });
  }

 private:
  bool Authorized(const httplib::Request& req, httplib::Response& res) const {
    if (flags_.api_key.empty()) return true;
    ApiError e;
    e.http_status = 401;
    e.code = "invalid_api_key";
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (header.empty()) {
      e.message =
          "You didn't provide an API key. You need to provide your API key in an Authorization "
          "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
    } else if (header.rfind(kBearer, 0) != 0 ||
               !SameKey(header.substr(kBearer.size()), flags_.api_key)) {
      e.message = "Incorrect API key provided.";
    } else {
      return true;
    }
    SendError(res, e);
    return false;
  }

  bool KnownModel(const std::string& name) const {
    return name == model_name_ || name == engine_->model().id();
  }

  static ApiError UnknownModel(const std::string& name) {
    ApiError e;
    e.http_status = 404;
    e.message = "The model `" + name + "` does not exist or you do not have access to it.";
    e.param = "model";
    e.code = "model_not_found";
    return e;
  }

  // The prompt's token ids, and the request's max_tokens resolved against the context.
  absl::StatusOr<std::vector<int32_t>> PromptIds(const CompletionRequest& r) const {
    const text::Tokenizer& tok = engine_->tokenizer();
    if (r.endpoint == Endpoint::kChatCompletions) return ConversationTokens(tok, r.messages);
    if (r.prompt_is_ids) {
      for (int32_t id : r.prompt_ids) {
        if (id >= tok.vocab_size()) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "token id %d is outside the vocabulary (%d tokens)", id, tok.vocab_size()));
        }
      }
      return r.prompt_ids;
    }
    return tok.Encode(r.prompt, /*add_special=*/true, /*parse_special=*/false);
  }

  void Handle(Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    auto parsed = openai::ParseRequest(endpoint, req.body);
    if (auto* e = std::get_if<ApiError>(&parsed)) return SendError(res, *e);
    auto request = std::make_shared<CompletionRequest>(std::get<CompletionRequest>(parsed));
    if (!KnownModel(request->model)) return SendError(res, UnknownModel(request->model));
    if (!request->seed_given) request->sampling.seed = std::random_device{}();

    absl::StatusOr<std::vector<int32_t>> prompt = PromptIds(*request);
    if (!prompt.ok()) return SendError(res, openai::FromStatus(prompt.status()));
    if (prompt->empty()) {
      return SendError(res,
                       ApiError{400,
                                "the prompt is empty",
                                "invalid_request_error",
                                endpoint == Endpoint::kChatCompletions ? "messages" : "prompt",
                                ""});
    }
    const int context = engine_->context_length();
    const int room = context - static_cast<int>(prompt->size());
    const int max_tokens =
        request->max_tokens.value_or(endpoint == Endpoint::kCompletions ? 16 : std::max(room, 0));
    if (room <= 0 || max_tokens > room) {
      return SendError(
          res,
          ApiError{400,
                   absl::StrFormat("This model's maximum context length is %d tokens. However, "
                                   "you requested %d tokens (%d in the prompt, %d for the "
                                   "completion). Please reduce the prompt or max_tokens.",
                                   context,
                                   prompt->size() + max_tokens,
                                   prompt->size(),
                                   max_tokens),
                   "invalid_request_error",
                   "max_tokens",
                   "context_length_exceeded"});
    }
    client::GenerateOptions options;
    options.max_tokens = max_tokens;
    options.stop = request->stop;
    options.sampling.temperature = request->sampling.temperature;
    options.sampling.top_k = request->sampling.top_k;
    options.sampling.top_p = request->sampling.top_p;
    options.sampling.min_p = request->sampling.min_p;
    options.sampling.repeat_penalty = request->sampling.repeat_penalty;
    options.sampling.seed = request->sampling.seed;
    if (absl::Status valid = options.sampling.Validate(); !valid.ok()) {
      return SendError(res, openai::FromStatus(valid));
    }

    // The route is opened before answering, so an unavailable swarm is a clean 503.
    absl::StatusOr<std::unique_ptr<client::InferenceSession>> session = engine_->NewSession();
    if (!session.ok()) return SendError(res, openai::FromStatus(session.status()));

    const std::string id =
        (endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-") + RandomHex(24);
    const int64_t created = std::time(nullptr);
    if (!request->stream) {
      absl::StatusOr<client::Generation> g =
          client::Generate(**session, engine_->tokenizer(), *prompt, options, nullptr);
      if (!g.ok()) return SendError(res, openai::FromStatus(g.status()));
      const openai::Usage usage{g->prompt_tokens, static_cast<int>(g->tokens.size())};
      json body = openai::CompletionResponse(*request,
                                             id,
                                             created,
                                             model_name_,
                                             g->text,
                                             g->finish_reason == "length" ? "length" : "stop",
                                             usage);
      res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace),
                      "application/json");
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto shared_session = std::shared_ptr<client::InferenceSession>(std::move(*session).release());
    auto prompt_ids = std::make_shared<std::vector<int32_t>>(*std::move(prompt));
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, request, shared_session, prompt_ids, options, id, created, ran = false](
            size_t, httplib::DataSink& sink) mutable {
          // The whole stream is written by the first call; a later call (httplib asks again
          // until done()) only ends it.
          if (ran) return false;
          ran = true;
          return Stream(*request, *shared_session, *prompt_ids, options, id, created, sink);
        });
  }

  // Runs the whole generation inside the content provider, writing one event per piece of text.
  // False when the client went away (the generation is then cancelled).
  bool Stream(const CompletionRequest& request,
              client::InferenceSession& session,
              const std::vector<int32_t>& prompt,
              const client::GenerateOptions& options,
              const std::string& id,
              int64_t created,
              httplib::DataSink& sink) {
    bool first = true;
    bool open = true;
    auto send = [&](const json& j) {
      const std::string event = openai::SseEvent(j);
      open = open && sink.write(event.data(), event.size());
      return open;
    };
    if (request.endpoint == Endpoint::kChatCompletions) {
      send(openai::StreamChunk(request, id, created, model_name_, "", "", true));
      first = false;
    }
    absl::StatusOr<client::Generation> g = client::Generate(
        session, engine_->tokenizer(), prompt, options, [&](int32_t, std::string_view piece) {
          if (piece.empty()) return open;
          return send(openai::StreamChunk(
              request, id, created, model_name_, std::string(piece), "", first));
        });
    if (!open) return false;  // the client went away; the generation was cancelled
    if (!g.ok()) {
      // Headers are gone already: report in the stream, as OpenAI does.
      send(openai::ErrorJson(openai::FromStatus(g.status())));
    } else {
      send(openai::StreamChunk(request,
                               id,
                               created,
                               model_name_,
                               "",
                               g->finish_reason == "length" ? "length" : "stop",
                               false));
      if (request.include_usage) {
        send(openai::UsageChunk(request,
                                id,
                                created,
                                model_name_,
                                {g->prompt_tokens, static_cast<int>(g->tokens.size())}));
      }
    }
    if (open) open = sink.write(openai::kSseDone, sizeof(openai::kSseDone) - 1);
    sink.done();
    return open;
  }

  const ServeFlags flags_;
  std::unique_ptr<Engine> engine_;
  const std::string model_name_;
  const int64_t created_;
};

int RunServe(const ServeFlags& f) {
  const std::string path = f.model.empty() ? DefaultModelPath() : f.model;
  std::vector<std::string> coordinators;
  for (absl::string_view c : absl::StrSplit(f.coordinators, ',', absl::SkipEmpty())) {
    coordinators.emplace_back(c);
  }
  if (coordinators.empty()) return Fail("--coordinator is required");
  auto listen = coordinator::ParseHostPort(f.listen);
  if (!listen.ok()) return Fail(std::string(listen.status().message()));
  if (absl::Status probe = coordinator::ProbeBind(*listen); !probe.ok()) {
    return Fail(std::string(probe.message()));
  }
  // Before any thread starts (the engine's pools too), so that every thread inherits the mask
  // and SIGINT/SIGTERM reach WaitForStopSignal.
  InstallStopSignals();
  auto engine = Engine::Swarm(coordinators, path, f.threads);
  if (!engine.ok()) return Fail(std::string(engine.status().message()));
  const std::string name =
      f.model_name.empty() ? std::filesystem::path(path).stem().string() : f.model_name;

  Server api(f, *std::move(engine), name);
  httplib::Server http;
  http.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  api.Install(http);
  const int port = listen->port == 0
                       ? http.bind_to_any_port(listen->host)
                       : (http.bind_to_port(listen->host, listen->port) ? listen->port : -1);
  if (port <= 0) return Fail("cannot listen on " + f.listen);
  std::thread loop([&http] { http.listen_after_bind(); });
  while (!http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::printf("serve listening http=%s\n",
              coordinator::HostPort{listen->host, port}.ToString().c_str());
  std::fflush(stdout);
  std::fprintf(stderr,
               "serving model '%s' through %s; OpenAI API at http://%s/v1\n",
               name.c_str(),
               f.coordinators.c_str(),
               coordinator::HostPort{listen->host, port}.ToString().c_str());
  WaitForStopSignal();
  http.stop();
  loop.join();
  return 0;
}

}  // namespace

void RegisterServe(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve an OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions) "
      "through a swarm. Prints 'serve listening http=HOST:PORT' once bound.");
  cmd->add_option("--coordinator", flags->coordinators, "Coordinator address(es), comma-separated")
      ->required();
  cmd->add_option("--listen", flags->listen, "HTTP address HOST:PORT (port 0: any free port)")
      ->capture_default_str();
  cmd->add_option("--api-key",
                  flags->api_key,
                  "Require 'Authorization: Bearer KEY' on /v1 requests (default: env "
                  "STRATA_API_KEY, else no key)")
      ->envname("STRATA_API_KEY");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--model-name",
                  flags->model_name,
                  "Model id clients use (default: the file name without .gguf)");
  cmd->add_option("--threads", flags->threads, "CPU threads for embeddings and head (0: all)");
  cmd->add_option("--max-concurrency",
                  flags->max_concurrency,
                  "Requests served at once (HTTP worker threads)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->callback([flags, exit_code] { *exit_code = RunServe(*flags); });
}

}  // namespace strata::cli
