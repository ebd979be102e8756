// strata quantize: writes a copy of a model with its weight matrices in another dtype — e.g. a
// draft model for `--speculative draft:PATH`, or a smaller file for nodes short of memory.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "gguf/requantize.h"

namespace strata::cli {
namespace {

struct QuantizeFlags {
  std::string in, out, type;
  bool keep_embeddings = false;
  int layers = 0;
};

int RunQuantize(const QuantizeFlags& f) {
  auto type = kernels::WeightDTypeFromName(f.type);
  if (!type.ok()) return Fail(std::string(type.status().message()));
  gguf::RequantizeOptions options;
  options.type = *type;
  options.keep_embeddings = f.keep_embeddings;
  options.layers = f.layers;
  if (isatty(STDERR_FILENO)) {
    options.progress = [](int done, int total) {
      std::fprintf(stderr, "\rquantizing: %d/%d matrices", done, total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  auto report = gguf::Requantize(f.in, f.out, options);
  if (!report.ok()) return Fail(std::string(report.status().message()));
  std::printf("%s: %d matrices as %s, %d tensors kept",
              f.out.c_str(),
              report->converted,
              f.type.c_str(),
              report->kept);
  if (report->dropped > 0) {
    std::printf(" (the first %d layers: %d tensors left out)", f.layers, report->dropped);
  }
  if (report->unfit > 0) {
    std::printf(
        " (%d matrices whose rows do not split into %s blocks)", report->unfit, f.type.c_str());
  }
  std::printf("; %s -> %s\n",
              absl::StrFormat("%.1f MB", report->bytes_in / 1e6).c_str(),
              absl::StrFormat("%.1f MB", report->bytes_out / 1e6).c_str());
  return 0;
}

}  // namespace

void RegisterQuantize(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* cmd =
      app.add_subcommand("quantize",
                         "Write a copy of a model with its weight matrices in another type (e.g. a "
                         "draft model for --speculative draft:PATH)");
  cmd->add_option("input", flags->in, "The model to read (GGUF)")->required();
  cmd->add_option("output", flags->out, "The file to write")->required();
  cmd->add_option("--type", flags->type, "f32, f16, bf16, q4_0, q4_1, q8_0, q4_K, q6_K")
      ->required();
  cmd->add_flag("--keep-embeddings",
                flags->keep_embeddings,
                "Leave the token embeddings (and a tied output head) as they are");
  cmd->add_option("--layers",
                  flags->layers,
                  "Keep only the first N layers (with the embeddings, final norm and head): "
                  "the model exiting early after N layers")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([flags, exit_code] { *exit_code = RunQuantize(*flags); });
}

}  // namespace strata::cli
