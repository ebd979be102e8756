#!/usr/bin/env bash
# Packs the GPU test and benchmark binaries built here (STRATA_CUDA=ON) with the shared libraries
# they need that a bare CUDA machine may lack (abseil, gRPC, protobuf, ...), so tools/gpu_check.sh
# can run them on a lent GPU machine whose image cannot build the project.
#
#   tools/gpu_bundle.sh [BUILD_DIR]     # default build-cuda; writes BUILD_DIR/gpu-bundle
#
# STRATA_BUNDLE_TARGETS replaces the list of binaries, e.g. for the CPU swarm benchmarks on that
# machine's cores: STRATA_BUNDLE_TARGETS="strata strata-linkem" tools/gpu_bundle.sh build
#
# Carry BUILD_DIR/gpu-bundle to the GPU machine (it is under an ignored build* folder); the CUDA
# runtime comes along, the driver (libcuda) and NCCL are taken from the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-cuda}
TARGETS=${STRATA_BUNDLE_TARGETS:-"strata cuda_kernels_test cuda_span_test cuda_nccl_test cuda_nccl_handoff_test cuda_tp_span_test cuda_traits_test cuda_tp_plan_test strata-random-model strata-gpu-bench"}
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="80;90"
fi
ninja -C "$BUILD" -j2 $TARGETS
OUTDIR="$BUILD/gpu-bundle"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/bin" "$OUTDIR/lib"
for t in $TARGETS; do
  f=$(find "$BUILD" -maxdepth 3 -type f -name "$t" -perm -u+x | grep -v gpu-bundle | head -1)
  [ -n "$f" ] || { echo "missing $t" >&2; exit 1; }
  cp "$f" "$OUTDIR/bin/"
  strip --strip-debug "$OUTDIR/bin/$t"
done
# Every library the binaries load, except the C/C++ runtime every Linux has, the GPU driver and
# NCCL (both must come from the GPU machine).
for b in "$OUTDIR"/bin/*; do ldd "$b"; done | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
    libcuda.so*|libnccl.so*|libnvidia*) ;;
    *) cp -L "$lib" "$OUTDIR/lib/" ;;
  esac
done
strip --strip-debug "$OUTDIR"/lib/* 2>/dev/null || true
echo "bundle: $(du -sh "$OUTDIR" | cut -f1) in $OUTDIR ($(ls "$OUTDIR/lib" | wc -l) libraries)"
