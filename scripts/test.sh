#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_packages
# The UI tests drive `strata serve` with the official OpenAI client and the dashboard with Selenium.
install_python_packages openai selenium
fetch_model
build
step "Running the test suite"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$(nproc)" --timeout 900
