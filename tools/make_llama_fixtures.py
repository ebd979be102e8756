#!/usr/bin/env python3
"""Writes tests/fixtures/llama_cpp_greedy.json: llama.cpp's greedy continuations of a fixed set of
prompts on the default model, with the top-10 logits at several steps and the top-2 margin at
every step. The C++ tests feed the same prompt ids to Strata and compare.

Requires llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp from source) and
jinja2. Run from the repository root:

    python3 tools/make_llama_fixtures.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import json
import os
import sys

import numpy as np

STEPS = 64
LOGIT_STEPS = [0, 1, 7, 31, 63]
TOP = 10

# (name, chat?, text). Chat prompts are rendered with the model's own Jinja chat template.
PROMPTS = [
    ("prose", False, "The history of the printing press begins in"),
    ("code", False, "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("list", False, "Shopping list:\n1. Apples\n2. Bread\n3."),
    ("numbers", False, "The first ten prime numbers are 2, 3, 5, 7,"),
    ("chat_capital", True, "What is the capital of France?"),
    ("chat_story", True, "Write a short story about a lighthouse keeper."),
    ("chat_code", True, "Write a C function that reverses a string in place."),
    ("chat_math", True, "If a train travels 120 km in 1.5 hours, what is its average speed?"),
    ("chat_list", True, "List three tips for staying focused while studying."),
    ("unicode", False, "Les élèves ont étudié l'histoire de la Révolution française et"),
]


def render_chat(template_src, user_text):
    import jinja2
    env = jinja2.Environment(loader=jinja2.BaseLoader(), keep_trailing_newline=True)
    tmpl = env.from_string(template_src)
    return tmpl.render(messages=[{"role": "user", "content": user_text}],
                       add_generation_prompt=True, bos_token="", eos_token="")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="tests/fixtures/llama_cpp_greedy.json")
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=args.model, n_ctx=1024, n_batch=512, n_threads=2,
                logits_all=True, verbose=False)
    template = llm.metadata.get("tokenizer.chat_template", "")
    cases = []
    for name, chat, text in PROMPTS:
        prompt_text = render_chat(template, text) if chat else text
        ids = llm.tokenize(prompt_text.encode("utf-8"), add_bos=True, special=chat)
        llm.reset()
        llm.eval(ids)
        generated, margins, logits_at = [], [], []
        for step in range(STEPS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-logits, kind="stable")
            top = order[:TOP]
            margins.append(float(logits[top[0]] - logits[top[1]]))
            if step in LOGIT_STEPS:
                logits_at.append({"step": step,
                                  "ids": [int(t) for t in top],
                                  "logits": [float(logits[t]) for t in top]})
            token = int(top[0])
            generated.append(token)
            llm.eval([token])
        cases.append({"name": name, "chat": chat, "text": text, "prompt_ids": list(map(int, ids)),
                      "greedy_ids": generated, "top2_margin": margins, "top_logits": logits_at})
        print(f"{name}: {len(ids)} prompt tokens, "
              f"{llm.detokenize(generated).decode('utf-8', 'replace')[:60]!r}", file=sys.stderr)

    fixture = {
        "producer": "tools/make_llama_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "kv_cache_type": "f16",
        "steps": STEPS,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
