#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
install_packages
# The UI tests drive `strata serve` with the official OpenAI client and the dashboard with Selenium.
install_python_packages openai selenium
fetch_model
check_format
build
build_thread_safety
step "Running the test suite"
(cd "$BUILD_DIR" && ctest --output-on-failure -j "$(nproc)" --timeout 900)
if have_cuda; then
  build_cuda
  step "Running the CUDA configuration's tests (the GPU ones skip without a device)"
  (cd "$CUDA_BUILD_DIR" && ctest --output-on-failure -j "$(nproc)" -L gpu --timeout 900)
  (cd "$CUDA_BUILD_DIR" && ctest --output-on-failure -R 'CudaTraits|PlanTensorParallel' --timeout 300)
else
  step "No CUDA toolkit in /usr/local/cuda: the CUDA configuration is not built here"
fi
