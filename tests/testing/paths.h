// Locations tests need: the source tree (fixtures), the build tree (binaries) and the default
// model.
#pragma once

#include <string>

namespace strata::testkit {

// Root of the source tree (env STRATA_SOURCE_DIR, else the tree this was built from).
std::string SourceDir();
// Root of the build tree (env STRATA_BINARY_DIR, else the tree this was built in).
std::string BinaryDir();
// Path of the default model installed by the setup step (models/SmolLM2-135M-Instruct.Q4_1.gguf),
// or env STRATA_MODEL when set.
std::string DefaultModelPath();
// True when the default model file exists; tests that need it fail loudly otherwise, since the
// test command installs it first.
bool DefaultModelPresent();

}  // namespace strata::testkit
