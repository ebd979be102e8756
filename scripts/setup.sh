#!/usr/bin/env bash
# Installs what is missing (Debian packages, the default model), builds, and runs the main job.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_packages
fetch_model
build strata strata-linkem
step "Starting a local swarm (a coordinator and 3 nodes) and asking it a question"
"$BUILD_DIR/strata" demo --nodes 3
