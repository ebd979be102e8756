// Sub-commands of the `strata` binary. Each Register* adds its sub-command and flags to the app;
// the callback runs the command and sets the process exit code through `*exit_code`.
#pragma once

#include <string>

#include "CLI/CLI.hpp"

namespace strata {
struct SpeculativeOptions;
}

namespace strata::cli {

void RegisterGenerate(CLI::App& app, int* exit_code);
void RegisterBench(CLI::App& app, int* exit_code);
void RegisterCoordinator(CLI::App& app, int* exit_code);
void RegisterNode(CLI::App& app, int* exit_code);
void RegisterDemo(CLI::App& app, int* exit_code);
void RegisterServe(CLI::App& app, int* exit_code);
void RegisterChat(CLI::App& app, int* exit_code);
void RegisterStatus(CLI::App& app, int* exit_code);
void RegisterQuantize(CLI::App& app, int* exit_code);

// The speculative-decoding flags of `generate` and `chat` (--speculative, --spec-mode, ...).
void AddSpeculativeFlags(CLI::App* cmd, SpeculativeOptions* sp);

// The default model: $STRATA_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf next to the
// source tree the binary was built from, else in the current directory.
std::string DefaultModelPath();

// Prints "error: <message>" to stderr; returns 1 for use as an exit code.
int Fail(const std::string& message);

}  // namespace strata::cli
