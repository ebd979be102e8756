// strata chat: an interactive conversation in the terminal, through a swarm (--coordinator) or
// with the whole model in this process.
//
// Every turn renders the whole history with the model's chat template and streams the answer.
// Ctrl-C stops the answer being written (the program goes on); at the prompt, Ctrl-C twice in a
// row, Ctrl-D (end of input) or /exit quits; /reset forgets the history. Lines come from stdin, so
// the command can also be driven through a pipe; --json-log then records each turn as one JSON
// line: {"turn", "messages", "prompt_tokens", "prompt_token_ids", "completion_tokens",
// "token_ids", "finish_reason", "text", "ttft_ms"} (or "error" instead of the answer's fields).
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/conversation.h"
#include "cli/engine.h"
#include "client/generate.h"
#include "client/prompt.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace strata::cli {
namespace {

struct ChatFlags {
  std::string coordinators;
  std::string model;
  std::string system;
  int max_tokens = 512;
  float temperature = 0.7f;
  float top_p = 0.95f;
  int top_k = 40;
  float min_p = 0.05f;
  int64_t seed = -1;
  int threads = 0;
  std::string json_log;
  SpeculativeOptions speculative;
};

// SIGINT and SIGTERM, received by a watcher thread (blocked everywhere else) and announced through
// a pipe, so that a blocking wait for input can also wait for them.
class Signals {
 public:
  Signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    if (pipe(pipe_) != 0) pipe_[0] = pipe_[1] = -1;
    std::thread([this, set] {
      for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGINT) interrupts_.fetch_add(1);
        if (sig == SIGTERM) terminated_ = true;
        const char c = sig == SIGINT ? 'i' : 't';
        if (pipe_[1] >= 0) (void)!write(pipe_[1], &c, 1);
      }
    }).detach();
  }
  int fd() const { return pipe_[0]; }
  int interrupts() const { return interrupts_.load(); }
  bool terminated() const { return terminated_.load(); }
  // Drains the pipe; returns the signals read ('i' / 't').
  std::string Take() {
    std::string out;
    char buf[64];
    pollfd p{pipe_[0], POLLIN, 0};
    while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
      const ssize_t n = read(pipe_[0], buf, sizeof(buf));
      if (n <= 0) break;
      out.append(buf, n);
    }
    return out;
  }

 private:
  int pipe_[2] = {-1, -1};
  std::atomic<int> interrupts_{0};
  std::atomic<bool> terminated_{false};
};

// Reads lines from stdin while watching for signals.
class LineReader {
 public:
  enum class Event { kLine, kEof, kInterrupt, kTerminate };

  explicit LineReader(Signals* signals) : signals_(signals) {}

  Event Next(std::string* line) {
    for (;;) {
      if (const size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        *line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return Event::kLine;
      }
      if (eof_) {
        if (buffer_.empty()) return Event::kEof;
        *line = std::move(buffer_);
        buffer_.clear();
        return Event::kLine;
      }
      pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {signals_->fd(), POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        eof_ = true;
        continue;
      }
      if (fds[1].revents & POLLIN) {
        const std::string sigs = signals_->Take();
        if (sigs.find('t') != std::string::npos) return Event::kTerminate;
        if (!sigs.empty()) return Event::kInterrupt;
      }
      if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[4096];
        const ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
        if (n > 0) {
          buffer_.append(buf, n);
        } else if (n == 0 || errno != EINTR) {
          eof_ = true;
        }
      }
    }
  }

 private:
  Signals* signals_;
  std::string buffer_;
  bool eof_ = false;
};

class Chat {
 public:
  Chat(const ChatFlags& flags, std::unique_ptr<Engine> engine, Signals* signals)
      : flags_(flags), engine_(std::move(engine)), signals_(signals) {
    if (!flags.json_log.empty()) json_log_.open(flags.json_log, std::ios::app);
  }

  bool json_log_ok() const { return flags_.json_log.empty() || json_log_.good(); }

  int Run() {
    const bool tty = isatty(STDIN_FILENO);
    if (tty) {
      std::fprintf(stderr,
                   "Chatting with %s%s. Ctrl-C stops an answer; /reset clears the history; "
                   "/exit or Ctrl-D quits.\n",
                   engine_->model().id().c_str(),
                   engine_->local() ? " (local)" : " through the swarm");
    }
    LineReader reader(signals_);
    bool armed = false;  // a Ctrl-C at the prompt: the next one quits
    for (;;) {
      if (tty) {
        std::printf("> ");
        std::fflush(stdout);
      }
      std::string line;
      switch (reader.Next(&line)) {
        case LineReader::Event::kEof:
          if (tty) std::printf("\n");
          return 0;
        case LineReader::Event::kTerminate:
          return 0;
        case LineReader::Event::kInterrupt:
          if (armed) {
            std::printf("\n");
            return 0;
          }
          armed = true;
          std::fprintf(stderr, "\n(Ctrl-C again, Ctrl-D or /exit to quit)\n");
          continue;
        case LineReader::Event::kLine:
          break;
      }
      armed = false;
      const std::string text(absl::StripAsciiWhitespace(line));
      if (text.empty()) continue;
      if (text == "/exit" || text == "/quit") return 0;
      if (text == "/reset") {
        messages_.clear();
        std::fprintf(stderr, "(history cleared)\n");
        continue;
      }
      if (text == "/help") {
        std::fprintf(stderr, "/reset clears the history, /exit quits, Ctrl-C stops an answer\n");
        continue;
      }
      Turn(text);
      if (signals_->terminated()) return 0;
    }
  }

 private:
  std::vector<text::ChatMessage> Conversation() const {
    std::vector<text::ChatMessage> all;
    if (!flags_.system.empty()) all.push_back({"system", flags_.system});
    all.insert(all.end(), messages_.begin(), messages_.end());
    return all;
  }

  // Answers the conversation so far, streaming to stdout until done or Ctrl-C.
  absl::StatusOr<client::Generation> Answer(std::vector<int32_t>* prompt_out) {
    ASSIGN_OR_RETURN(*prompt_out, ConversationTokens(engine_->tokenizer(), Conversation()));
    const std::vector<int32_t>& prompt = *prompt_out;
    const int room = engine_->context_length() - static_cast<int>(prompt.size());
    if (room <= 0) {
      return absl::OutOfRangeError(
          "the conversation fills the model's context; /reset starts a new one");
    }
    GenerateRequest r;
    r.max_tokens = std::min(flags_.max_tokens, room);
    r.sampling.temperature = flags_.temperature;
    r.sampling.top_p = flags_.top_p;
    r.sampling.top_k = flags_.top_k;
    r.sampling.min_p = flags_.min_p;
    r.sampling.seed =
        flags_.seed >= 0 ? static_cast<uint64_t>(flags_.seed) : std::random_device{}();
    r.speculative = flags_.speculative;
    const int interrupts = signals_->interrupts();
    auto show = [&](int32_t, std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return signals_->interrupts() == interrupts && !signals_->terminated();
    };
    absl::StatusOr<client::Generation> g;
    if (r.speculative.drafter.enabled()) {
      g = Speculate(prompt, r, show);
    } else {
      ASSIGN_OR_RETURN(std::unique_ptr<client::InferenceSession> session, engine_->NewSession());
      g = client::Generate(
          *session, engine_->tokenizer(), prompt, client::ToGenerateOptions(r), show);
    }
    signals_->Take();  // a Ctrl-C that stopped this answer is used up
    return g;
  }

  // The answer with speculative decoding: the same tokens as plain decoding, fewer passes.
  absl::StatusOr<client::Generation> Speculate(const std::vector<int32_t>& prompt,
                                               const GenerateRequest& r,
                                               const TokenCallback& show) {
    ASSIGN_OR_RETURN(GenerateResult result, engine_->Speculate(prompt, r, show));
    client::Generation g;
    g.text = std::move(result.text);
    g.tokens = std::move(result.token_ids);
    g.prompt_tokens = result.prompt_tokens;
    g.ttft_ms = result.ttft_ms;
    g.decode_tokens_per_s = result.decode_tokens_per_s;
    g.finish_reason = result.finish_reason;
    return g;
  }

  void Turn(const std::string& text) {
    messages_.push_back({"user", text});
    std::vector<int32_t> prompt;
    absl::StatusOr<client::Generation> g = Answer(&prompt);
    std::printf("\n");
    std::fflush(stdout);
    if (!g.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(g.status().message()).c_str());
      messages_.pop_back();  // not answered: the user may ask again
      Log(prompt, nullptr, g.status());
      return;
    }
    if (g->finish_reason == "cancelled") std::fprintf(stderr, "(stopped)\n");
    // A stopped answer stays in the history as far as it was shown.
    messages_.push_back({"assistant", g->text});
    Log(prompt, &*g, absl::OkStatus());
  }

  void Log(const std::vector<int32_t>& prompt,
           const client::Generation* g,
           const absl::Status& status) {
    if (!json_log_.is_open()) return;
    nlohmann::json j;
    j["turn"] = ++turns_;
    j["messages"] = Conversation().size();
    j["prompt_tokens"] = prompt.size();
    j["prompt_token_ids"] = prompt;
    if (g != nullptr) {
      j["completion_tokens"] = g->tokens.size();
      j["token_ids"] = g->tokens;
      j["finish_reason"] = g->finish_reason;
      j["text"] = g->text;
      j["ttft_ms"] = g->ttft_ms;
    } else {
      j["error"] = std::string(status.message());
    }
    json_log_ << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  }

  const ChatFlags& flags_;
  std::unique_ptr<Engine> engine_;
  Signals* signals_;
  std::vector<text::ChatMessage> messages_;  // user and assistant turns, oldest first
  std::ofstream json_log_;
  int turns_ = 0;
};

int RunChat(const ChatFlags& f) {
  static Signals* signals = new Signals();  // before any thread starts; lives until exit
  const std::string path = f.model.empty() ? DefaultModelPath() : f.model;
  absl::StatusOr<std::unique_ptr<Engine>> engine;
  if (f.coordinators.empty()) {
    engine = Engine::Local(path, f.threads, /*show_progress=*/isatty(STDERR_FILENO));
  } else {
    std::vector<std::string> coordinators;
    for (absl::string_view c : absl::StrSplit(f.coordinators, ',', absl::SkipEmpty())) {
      coordinators.emplace_back(c);
    }
    engine = Engine::Swarm(coordinators, path, f.threads);
  }
  if (!engine.ok()) return Fail(std::string(engine.status().message()));
  Chat chat(f, *std::move(engine), signals);
  if (!chat.json_log_ok()) return Fail("cannot write --json-log " + f.json_log);
  return chat.Run();
}

}  // namespace

void RegisterChat(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ChatFlags>();
  CLI::App* cmd = app.add_subcommand(
      "chat",
      "Chat in the terminal, through a swarm (--coordinator) or locally. Ctrl-C stops an answer; "
      "/reset clears the history; /exit, Ctrl-D or Ctrl-C twice at the prompt quits.");
  cmd->add_option("--coordinator",
                  flags->coordinators,
                  "Chat through a swarm: coordinator address(es), comma-separated "
                  "(default: the whole model in this process)");
  cmd->add_option("--model", flags->model, "GGUF model file (default: the installed model)");
  cmd->add_option("--system", flags->system, "System message");
  cmd->add_option("--max-tokens", flags->max_tokens, "Longest answer, tokens")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", flags->temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", flags->top_k, "Keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  cmd->add_option("--top-p", flags->top_p, "Nucleus sampling mass (1 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--min-p", flags->min_p, "Drop tokens below min-p x the best (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", flags->seed, "Random seed (default: random per answer)");
  cmd->add_option("--threads", flags->threads, "CPU threads (default: all)");
  AddSpeculativeFlags(cmd, &flags->speculative);
  cmd->add_option("--json-log",
                  flags->json_log,
                  "Append one JSON line per turn to this file (token counts, finish reason, text)");
  cmd->callback([flags, exit_code] { *exit_code = RunChat(*flags); });
}

}  // namespace strata::cli
