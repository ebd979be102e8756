#include "tests/testing/paths.h"

#include <cstdlib>
#include <filesystem>

namespace strata::testkit {

std::string SourceDir() {
  const char* env = std::getenv("STRATA_SOURCE_DIR");
  return env ? env : STRATA_SOURCE_DIR_DEFAULT;
}

std::string BinaryDir() {
  const char* env = std::getenv("STRATA_BINARY_DIR");
  return env ? env : STRATA_BINARY_DIR_DEFAULT;
}

std::string DefaultModelPath() {
  if (const char* env = std::getenv("STRATA_MODEL")) return env;
  return SourceDir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

bool DefaultModelPresent() { return std::filesystem::exists(DefaultModelPath()); }

}  // namespace strata::testkit
