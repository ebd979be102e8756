#!/usr/bin/env bash
# The GPU check, in one run on a lent GPU machine (H100, 16 cores; nothing reachable from it):
#   1. nvidia-smi, for the record
#   2. the binaries: a carried bundle (build-cuda/gpu-bundle, made here by tools/gpu_bundle.sh)
#      when present, else configure + build with -DSTRATA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90
#      into build-cuda (ninja -j16; needs the project's build dependencies on that machine)
#   3. the GPU tests (ctest -L gpu --output-on-failure, or the test binaries of the bundle)
#   4. random models in /tmp: 7B shapes (Q4_0, 4 layers; F16, 2 layers) and SmolLM2's shape
#      (Q4_1, 30 layers) standing in for the default model when models/ did not travel
#   5. the GPU benchmark (JSON)
#   6. the NCCL smoke test, verbose
#   6b. the Q4 decode GEMV variants on the 7B shapes (into bench.log)
#   7. a mixed route: a coordinator, a CUDA node (layers 0-14) and a CPU node (15-29) serving the
#      SmolLM2-shaped model, and `strata generate` through them; then the CPU node is replaced by
#      a tensor-parallel node (--devices cuda:0,cuda:0,cuda:0) and generation goes through it (bundle
#      mode only)
# Everything lands in $OUT (default ./gpu-check-out): gpu_check.log (all of the above), build.log,
# tests.log, nccl.log, models.log, bench.log, gpu_bench.json, summary.txt (8 files).
# Budget: a few minutes; every step has a timeout. Exit status: 0 when the tests passed.
#
#   OUT=/some/dir tools/gpu_check.sh
#
# The whole run is held to STRATA_GPU_CHECK_BUDGET seconds (default 450): each step's timeout is
# what is left of it (with a floor), so a hang cannot eat the machine's time.
set -u -o pipefail
nvidia-smi

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + ${STRATA_GPU_CHECK_BUDGET:-450}))
step() { echo; echo "=== [$(( $(date +%s) - START ))s] $*"; }
# Seconds a step may take: what is left of the budget, at least $1 (default 20).
left() { local l=$((DEADLINE - $(date +%s))); [ "$l" -lt "${1:-20}" ] && l=${1:-20}; echo "$l"; }

main() {
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv || true

# NCCL: the binaries open libnccl.so.2 at run time; on images that ship it only inside a Python
# package, put that directory on the library path.
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl.so.2'; then
  NCCL_DIR=$(timeout 30 find /usr /opt -name 'libnccl.so.2' -printf '%h\n' 2>/dev/null | head -1)
  if [ -n "$NCCL_DIR" ]; then
    export LD_LIBRARY_PATH="$NCCL_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NCCL from $NCCL_DIR"
  else
    echo "NCCL not found: the NCCL tests will skip"
  fi
fi

GPU_BINARIES="strata cuda_kernels_test cuda_span_test cuda_tp_span_test cuda_nccl_test \
  cuda_nccl_handoff_test cuda_traits_test cuda_tp_plan_test strata-random-model strata-gpu-bench"
BUNDLE=$ROOT/build-cuda/gpu-bundle
MODE=${STRATA_GPU_CHECK_MODE:-auto}
if [ "$MODE" = auto ]; then
  if [ -x "$BUNDLE/bin/cuda_span_test" ]; then MODE=bundle; else MODE=build; fi
fi
TESTS_RC=0
if [ "$MODE" = bundle ]; then
  step "using the carried bundle $BUNDLE"
  export LD_LIBRARY_PATH="$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  BIN=$BUNDLE/bin
  for t in $GPU_BINARIES; do
    declare "BIN_${t//-/_}=$BIN/$t"
  done
  echo "build: skipped (bundle mode)" > "$OUT/build.log"
else
  BUILD=$ROOT/build-cuda
  # A build folder carried from another checkout path cannot be reconfigured here.
  if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT\$" "$BUILD/CMakeCache.txt"; then
    BUILD=$ROOT/build-cuda-gpu
  fi
  step "configure + build in $BUILD (sm_90, ninja -j16)"
  TARGETS="$GPU_BINARIES"
  if ! timeout "$(left 60)" bash -c "cmake -S '$ROOT' -B '$BUILD' -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSTRATA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DSTRATA_BUILD_BENCH=OFF && \
        ninja -C '$BUILD' -j16 $TARGETS" > "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    echo "BUILD FAILED (see build.log). If this machine lacks the project's dependencies (abseil,"
    echo "gRPC, GTest, ...), make a bundle on the build machine with tools/gpu_bundle.sh and carry"
    echo "build-cuda/gpu-bundle."
    echo "build: FAILED" > "$OUT/summary.txt"
    return 2
  fi
  tail -3 "$OUT/build.log"
  for t in $GPU_BINARIES; do
    declare "BIN_${t//-/_}=$(find "$BUILD" -type f -name "$t" -perm -u+x | head -1)"
  done
fi

export STRATA_SOURCE_DIR=$ROOT
# Tests that start `strata node` processes look for the binary here.
export STRATA_BINARY_DIR=$(dirname "$BIN_strata")
if [ -z "${STRATA_MODEL:-}" ] && [ -f "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  export STRATA_MODEL=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
fi
# Without the default model (it stays behind when only the bundle travels), a random model of its
# shape and vocabulary size stands in, for the tests that run routes too.
if [ -z "${STRATA_MODEL:-}" ]; then
  step "a SmolLM2-shaped random model for the route tests"
  timeout 60 "$BIN_strata_random_model" --out /tmp/strata-smollm2-shape-q4_1.gguf --preset smollm2 \
    --type q4_1 > "$OUT/models.log" 2>&1 && export STRATA_MODEL=/tmp/strata-smollm2-shape-q4_1.gguf
fi
step "GPU tests"
if [ "$MODE" = build ]; then
  # The NCCL tests run in their own step below.
  timeout "$(left 60)" ctest --test-dir "$BUILD" -L gpu -E '^Nccl' --output-on-failure --timeout 300 -j4 \
    > "$OUT/tests.log" 2>&1
  TESTS_RC=$?
  timeout 60 "$BIN_cuda_traits_test" >> "$OUT/tests.log" 2>&1 || TESTS_RC=1
  timeout 60 "$BIN_cuda_tp_plan_test" >> "$OUT/tests.log" 2>&1 || TESTS_RC=1
else
  : > "$OUT/tests.log"
  for t in "$BIN_cuda_traits_test" "$BIN_cuda_tp_plan_test" "$BIN_cuda_kernels_test" \
           "$BIN_cuda_span_test" "$BIN_cuda_tp_span_test" "$BIN_cuda_nccl_handoff_test"; do
    echo "--- $(basename "$t")" >> "$OUT/tests.log"
    timeout "$(left 30)" "$t" >> "$OUT/tests.log" 2>&1 || TESTS_RC=1
  done
fi
grep -E "tests passed|tests failed|^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|Failed|\*\*\*" \
  "$OUT/tests.log" | tail -40
echo "tests exit status: $TESTS_RC"

step "random models in /tmp"
M7Q=/tmp/strata-llama7b-q4_0-4l.gguf
M7F=/tmp/strata-llama7b-f16-2l.gguf
MSM=${STRATA_MODEL:-/tmp/strata-smollm2-shape-q4_1.gguf}
{
  timeout "$(left 30)" "$BIN_strata_random_model" --out "$M7Q" --preset llama7b --type q4_0 --layers 4 &&
  timeout "$(left 30)" "$BIN_strata_random_model" --out "$M7F" --preset llama7b --type f16 --layers 2 &&
  if [ ! -f "$MSM" ]; then
    timeout "$(left 30)" "$BIN_strata_random_model" --out "$MSM" --preset smollm2 --type q4_1
  fi
} >> "$OUT/models.log" 2>&1
cat "$OUT/models.log"

step "GPU benchmark"
timeout "$(left 60)" "$BIN_strata_gpu_bench" --all-types --model "$MSM" --model "$M7Q" --model "$M7F" \
  --json "$OUT/gpu_bench.json" > "$OUT/bench.log" 2>&1
BENCH_RC=$?
grep -v '^[ {}\[\]]' "$OUT/bench.log" | head -60
echo "benchmark exit status: $BENCH_RC"

step "Q4 decode GEMV variants (7B shapes)"
timeout "$(left 60)" "$BIN_strata_gpu_bench" --gemv-variants >> "$OUT/bench.log" 2>&1
grep -E "^best|default|^ *[0-9]+ " "$OUT/bench.log" | tail -45

step "NCCL smoke test"
NCCL_DEBUG=${NCCL_DEBUG:-WARN} timeout "$(left 30)" "$BIN_cuda_nccl_test" > "$OUT/nccl.log" 2>&1
NCCL_RC=$?
cat "$OUT/nccl.log" | tail -25
[ "$NCCL_RC" = 0 ] || TESTS_RC=1

if [ "$MODE" = bundle ] && [ -f "$MSM" ]; then
  step "mixed route: CUDA node 0-14, CPU node 15-29"
  RUN=$(mktemp -d)
  "$BIN_strata" coordinator --listen 127.0.0.1:0 > "$RUN/coordinator.log" 2>&1 &
  PIDS=($!)
  for _ in $(seq 50); do grep -q "grpc=" "$RUN/coordinator.log" && break; sleep 0.1; done
  CO=$(grep -o 'grpc=[0-9.:]*' "$RUN/coordinator.log" | head -1 | cut -d= -f2)
  "$BIN_strata" node --coordinator "$CO" --model "$MSM" --layers 0:15 --device cuda:0 \
    --listen 127.0.0.1:0 > "$RUN/node-cuda.log" 2>&1 &
  PIDS+=($!)
  "$BIN_strata" node --coordinator "$CO" --model "$MSM" --layers 15:30 --threads 8 \
    --listen 127.0.0.1:0 > "$RUN/node-cpu.log" 2>&1 &
  PIDS+=($!)
  MIXED_RC=1
  for _ in $(seq 30); do
    if timeout 60 "$BIN_strata" generate --coordinator "$CO" --model "$MSM" --threads 4 \
         --prompt "hello" --max-tokens 16 --json > "$RUN/generate.json" 2> "$RUN/generate.err"; then
      MIXED_RC=0
      break
    fi
    kill -0 "${PIDS[1]}" 2>/dev/null || break  # the CUDA node exited
    sleep 1
  done
  cat "$RUN/generate.json" "$RUN/generate.err" | tail -5
  tail -n 3 "$RUN/node-cuda.log" "$RUN/node-cpu.log"
  echo "mixed route exit status: $MIXED_RC"
  [ "$MIXED_RC" = 0 ] || TESTS_RC=1

  # SmolLM2 has 3 KV heads: three shards of one KV head each (one GPU here, so device copies).
  step "tensor-parallel route: --devices cuda:0,cuda:0,cuda:0 for layers 15-29 beside the CUDA node"
  kill "${PIDS[2]}" 2>/dev/null
  "$BIN_strata" node --coordinator "$CO" --model "$MSM" --layers 15:30 --devices cuda:0,cuda:0,cuda:0 \
    --listen 127.0.0.1:0 > "$RUN/node-tp.log" 2>&1 &
  PIDS+=($!)
  TP_RC=1
  for _ in $(seq 30); do
    if timeout 60 "$BIN_strata" generate --coordinator "$CO" --model "$MSM" --threads 4 \
         --prompt "hello" --max-tokens 16 --json > "$RUN/generate-tp.json" 2> "$RUN/generate-tp.err" &&
       grep -q '"completion_tokens"' "$RUN/generate-tp.json"; then
      TP_RC=0
      break
    fi
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 1
  done
  kill "${PIDS[@]}" 2>/dev/null
  wait 2>/dev/null
  cat "$RUN/generate-tp.json" "$RUN/generate-tp.err" | tail -5
  tail -n 6 "$RUN/node-tp.log"
  grep -i "nccl\|hand" "$RUN/node-cuda.log" | head -4
  echo "tensor-parallel route exit status: $TP_RC"
  [ "$TP_RC" = 0 ] || TESTS_RC=1
fi

step "summary"
{
  echo "mode: $MODE"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  echo "tests: exit $TESTS_RC"
  grep -hE "tests passed|tests failed|^\[  PASSED|^\[  FAILED" "$OUT/tests.log" "$OUT/nccl.log" | sort | uniq -c
  echo "benchmark: exit $BENCH_RC"
  grep -E "^gemv|^model|^  prefill" "$OUT/bench.log"
  echo "mixed route: exit ${MIXED_RC:-not run}"
  echo "tensor-parallel route: exit ${TP_RC:-not run}"
  grep -E "^best" "$OUT/bench.log"
  echo "elapsed: $(( $(date +%s) - START )) s"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
rm -f "$M7Q" "$M7F"
return $TESTS_RC
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
