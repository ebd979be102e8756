#!/usr/bin/env bash
# Engine speed beside llama.cpp on the same GGUF, same thread count, same run.
#   tools/bench_engine.sh PATH/TO/llama-bench [THREADS...]
# llama-bench comes from the llama.cpp sources that llama-cpp-python's source distribution
# carries (pip download --no-binary :all: llama-cpp-python; build vendor/llama.cpp with CMake).
# Prints a Markdown table: prefill (512-token prompt), decode from an empty context and decode
# after 512 tokens, for each thread count.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_BENCH="${1:?usage: $0 PATH/TO/llama-bench [THREADS...]}"
shift
THREADS=("${@:-2}")
STRATA="${STRATA:-$ROOT/build/strata}"
MODEL="${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}"

llama() {  # llama() THREADS ARGS... -> tokens/s of the single test
  "$LLAMA_BENCH" -m "$MODEL" -t "$1" -r 5 -o json "${@:2}" 2>/dev/null |
    python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)[0]["avg_ts"])'
}
strata() {  # strata() THREADS PROMPT DECODE FIELD
  "$STRATA" bench --model "$MODEL" --threads "$1" --prompt-tokens "$2" --decode-tokens "$3" \
    --repeat 5 --json | python3 -c "import json,sys; print('%.1f' % json.load(sys.stdin)['$4'])"
}

echo "| threads | measure | Strata tokens/s | llama.cpp tokens/s | ratio |"
echo "|---|---|---|---|---|"
for t in "${THREADS[@]}"; do
  row() { printf '| %s | %s | %s | %s | %.2f× |\n' "$t" "$1" "$2" "$3" "$(python3 -c "print($2/$3)")"; }
  row "prefill, 512-token prompt" "$(strata "$t" 512 1 prefill_tokens_per_s)" "$(llama "$t" -p 512 -n 0)"
  row "decode 128, empty context" "$(strata "$t" 1 128 decode_tokens_per_s)" "$(llama "$t" -p 0 -n 128)"
  row "decode 128 after 512 tokens" "$(strata "$t" 512 128 decode_tokens_per_s)" "$(llama "$t" -p 0 -n 128 -d 512)"
done
