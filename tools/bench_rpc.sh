#!/usr/bin/env bash
# A 3-way layer split of the same GGUF through llama.cpp's RPC backend beside Strata's 3-node
# swarm, on loopback, in one run.
#   tools/bench_rpc.sh PATH/TO/llama.cpp/build/bin [THREADS_PER_SERVER] [DECODE_TOKENS]
# The directory must hold llama-bench and ggml-rpc-server built with -DGGML_RPC=ON (the llama.cpp
# sources that llama-cpp-python's source distribution carries). Three ggml-rpc-server processes
# each take a third of the layers (-ngl 99 -ts 1/1/1); Strata runs three nodes the coordinator
# assigns a third each. Both decode DECODE_TOKENS tokens after a one-token prompt; the medians of
# 3 runs are printed as a Markdown row.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:?usage: $0 PATH/TO/llama.cpp/build/bin [THREADS_PER_SERVER] [DECODE_TOKENS]}"
THREADS="${2:-1}"
TOKENS="${3:-128}"
STRATA="${STRATA:-$ROOT/build/strata}"
MODEL="${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}"

PIDS=()
cleanup() { [ "${#PIDS[@]}" -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
SERVERS=""
for port in 50152 50153 50154; do
  "$BIN/ggml-rpc-server" -H 127.0.0.1 -p "$port" -t "$THREADS" >/dev/null 2>&1 &
  PIDS+=($!)
  SERVERS="${SERVERS:+$SERVERS,}127.0.0.1:$port"
done
sleep 2
llama=$("$BIN/llama-bench" -m "$MODEL" --rpc "$SERVERS" -ngl 99 -ts 1/1/1 -t "$THREADS" \
          -p 0 -n "$TOKENS" -r 3 -o json 2>/dev/null |
        python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[0]["avg_ts"])')
cleanup
PIDS=()
ours=$("$STRATA" bench --model "$MODEL" --nodes 3 --node-threads "$THREADS" --threads "$THREADS" \
         --prompt-tokens 1 --decode-tokens "$TOKENS" --repeat 3 --json |
       python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["runs"][0]["decode_tokens_per_s"])')
printf '| %s | %s | %s | %.2f× |\n' "$THREADS" "$ours" "$llama" "$(python3 -c "print($ours/$llama)")"
