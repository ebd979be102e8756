// strata: one binary for every role in a swarm.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "cli/commands.h"

namespace strata::cli {

std::string DefaultModelPath() {
  if (const char* env = std::getenv("STRATA_MODEL")) return env;
  const std::string name = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (auto dir = exe.parent_path(); !dir.empty() && dir != dir.root_path();
         dir = dir.parent_path()) {
      if (std::filesystem::exists(dir / name)) return (dir / name).string();
    }
  }
  return name;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return 1;
}

}  // namespace strata::cli

int main(int argc, char** argv) {
  CLI::App app{"Strata: run one language model across many machines."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "strata 0.1.0");
  int exit_code = 0;
  strata::cli::RegisterGenerate(app, &exit_code);
  strata::cli::RegisterBench(app, &exit_code);
  strata::cli::RegisterCoordinator(app, &exit_code);
  strata::cli::RegisterNode(app, &exit_code);
  strata::cli::RegisterDemo(app, &exit_code);
  strata::cli::RegisterServe(app, &exit_code);
  strata::cli::RegisterChat(app, &exit_code);
  strata::cli::RegisterStatus(app, &exit_code);
  strata::cli::RegisterQuantize(app, &exit_code);
  CLI11_PARSE(app, argc, argv);
  return exit_code;
}
