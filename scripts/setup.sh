#!/usr/bin/env bash
# Installs what is missing (Debian packages, the default model), builds, and runs the main job.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_packages
fetch_model
build
step "Generating text with the default model"
"$BUILD_DIR/strata" generate --chat --max-tokens 96 \
  --prompt "In two sentences, why do layered systems scale?"
