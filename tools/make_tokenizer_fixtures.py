#!/usr/bin/env python3
"""Generates tests/fixtures/tokenizer_smollm2.json: reference tokenizations and chat prompts.

The reference is llama.cpp itself, through llama-cpp-python (model loaded with vocab_only=True):
every string below is tokenized with llama_tokenize() for each (add_special, parse_special)
combination and detokenized with llama_detokenize(). Chat prompts are rendered with jinja2 the way
transformers' apply_chat_template renders them (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks): the default model's own tokenizer.chat_template, plus the official Llama 2 and
Llama 3 chat templates quoted below.

To check the other code paths against llama.cpp too, the script writes throw-away GGUF files
(vocabulary only) that reuse the default model's BPE vocabulary under other pre-tokenizer names
(llama-bpe, qwen2, gpt-2, default, starcoder), plus a SentencePiece vocabulary derived from it;
their tokenizations are stored under "variants" and "spm".

Usage (from the repository root):
  python3 tools/make_tokenizer_fixtures.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
      [--out tests/fixtures/tokenizer_smollm2.json]

Needs: pip install llama-cpp-python jinja2
"""

import argparse
import ctypes
import hashlib
import json
import os
import random
import re
import struct
import sys
import tempfile

import jinja2
import jinja2.sandbox
import llama_cpp

# Strings chosen to hit the corners of byte-level BPE with the smollm pre-tokenizer (digits split
# one by one, then the GPT-2 pattern with llama.cpp's own handling of `\s+(?!\S)`).
TEXTS = [
    "",
    " ",
    "a",
    "Hello, world!",
    "Hello world. This is a test of the tokenizer.",
    # whitespace runs
    "  ",
    "   ",
    "hello   ",
    "  \n\n  x",
    "\n",
    "\n\n\n",
    "\t",
    "\t\tindented with tabs",
    "a \tb",
    "line1\r\nline2\r\n",
    "          ten spaces before",
    "trailing space \n next",
    "x\u00a0y\u3000z\u2028w\u0085v",  # NBSP, ideographic space, line separator, NEL
    # digits
    "1234567",
    "3.14159",
    "-42",
    "1,000,000 and 0x1F and 1e-9",
    "\u00bd \u00b2 \u216b \u0663\u0664\u0665 \uff11\uff12\uff13",  # other Unicode numbers
    "version 2.0.1-rc3",
    # contractions
    "I'm",
    "don't",
    "'s",
    "He'LL we've they're she'd it's",
    "'",
    "''quoted''",
    "rock 'n' roll",
    # Unicode text
    "\u00c0\u00c9\u00ce\u00d5\u00dc \u00e0\u00e9\u00ee\u00f5\u00fc \u00f1 \u00e7 \u00df",
    "caf\u00e9 vs cafe\u0301",  # precomposed vs combining acute
    "Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d\u0308\u0307l\u036e\u0312\u036bo\u0328\u0317\u0355\u0308",
    "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3001\u30ab\u30bf\u30ab\u30ca",
    "\uc548\ub155\ud558\uc138\uc694",
    "Hello\u4e16\u754c123abc",
    "\u2211\u222b\u221a\u221e\u2260\u2264 \u03c0r\u00b2",
    "zero\u200bwidth\u200djoiner",
    "\ue000 private use \U000e0001 tag",
    "\U00031350\U00031351\u4e00 \U00011f04\U00011f05 \U00011f50\U00011f51\U00011f52",  # Unicode 15
    "a \U00011f50 \U00031350b x\U00031351 9\U00011f51",  # Unicode 15 digit and letters next to spaces
    "\u16ee\u2160\u2161 \u0f33\U00010107",  # letter-numbers and other numbers
    "\x00\x01\x1f\x7f control",
    "a\x04b\x16c\x1d",  # bytes SmolLM2 has no token for: llama.cpp drops them
    # emoji
    "\U0001f600",
    "I \u2764\ufe0f emoji \U0001f44d\U0001f3fd",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5 flags",
    "1\ufe0f\u20e3 keycap",
    # special tokens inside text
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "text<reponame>more<jupyter_code>x = 1",
    "  <|im_end|>  ",
    "<|im_end|>\n\n",
    # code
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <vector>\n\nint main() {\n  std::vector<int> v{1, 2, 3};\n"
    "  for (auto& x : v) {\n    x *= 2;  // double\n  }\n  return 0;\n}\n",
    "if (a && b || !c) { x->y = z[i]; }",
    "https://example.com/path?q=1&r=2#frag",
    "**bold** _it_ `code` [link](url)",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The quick brown fox jumps over the lazy dog. " * 8,
    # corners of the Llama 3 / Qwen2 patterns (case-folded contractions, newline runs)
    "HE'S I'M YOU'RE WE'VE THEY'LL SHE'D",
    "x!!\n\n y?\r\n",
    "a\r\n\r\nb",
    "  \r\n  \n",
    "...\n\n\n",
    "12345678901 and 1234",
    " \n \n",
    "foo \t\n bar",
]


def random_texts(n, seed):
    """Seeded random mixtures of the characters and tokens the patterns treat differently."""
    pool = (list("abcXYZ019 ") + [" ", " ", "  ", "\n", "\t", "\r", "'", "'s", "'LL", "'re"] +
            list(".,!?;:-_()[]{}<>/\\\"#$%&*+=@^`|~") +
            ["\u00e9", "\u00df", "\u00c4", "\u0301", "\u4e2d", "\u6587", "\ud55c",
             "\u0639", "\u0663", "\u00bd", "\U0001f600", "\U0001f44d", "\u200d", "\u00a0",
             "\u3000", "\u2028", "\u0085", "<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(n)]


TEXTS += random_texts(60, seed=20240601)

# Byte strings that are not valid UTF-8 (llama.cpp reads each bad byte as U+FFFD).
BYTE_TEXTS = [
    b"\xff",
    b"abc\xe4\xb8",
    b"\xc3(",
    b"ok \xed\xa0\x80 surrogate",
]

CONVERSATIONS = [
    ("user_only", [{"role": "user", "content": "Hello!"}]),
    ("system_user", [{"role": "system", "content": "You are a pirate."},
                     {"role": "user", "content": "What is 2+2?"}]),
    ("multi_turn", [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke.\nA short one."}]),
    ("system_multi_turn", [{"role": "system", "content": "  Be brief.  "},
                           {"role": "user", "content": " What's up? "},
                           {"role": "assistant", "content": "Not much. "},
                           {"role": "user", "content": "Ok"}]),
    ("empty", []),
]

# Official templates, quoted verbatim from the models' tokenizer_config.json on the Hugging Face
# hub: meta-llama/Llama-2-7b-chat-hf and meta-llama/Meta-Llama-3-8B-Instruct.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")


def tokenize(vocab, data, add_special, parse_special):
    n_max = len(data) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n_max, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed for {data!r}")
    return list(buf[:n])


def detokenize(vocab, ids, unparse_special):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 + 32 * len(ids)
    out = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, size, False, unparse_special)
    if n < 0:
        raise RuntimeError("llama_detokenize buffer too small")
    return out.raw[:n]


def render(template, messages, add_generation_prompt, **extra):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **extra)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def text_entry(vocab, data, combos=((False, False), (False, True), (True, False), (True, True))):
    """Ids for each (add_special, parse_special) in `combos`; the decoded bytes of the last."""
    entry = {}
    try:
        entry["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    entry["hex"] = data.hex()
    for add_special, parse_special in combos:
        key = f"ids_add{int(add_special)}_parse{int(parse_special)}"
        entry[key] = tokenize(vocab, data, add_special, parse_special)
    ids = entry[key]
    # Decoded bytes; left out when equal to the input to keep the file small.
    for name, special in (("decoded_hex", False), ("decoded_special_hex", True)):
        decoded = detokenize(vocab, ids, special).hex()
        if decoded != entry["hex"]:
            entry[name] = decoded
    return entry


def chat_cases(template, conversations, **extra):
    cases = []
    for name, messages in conversations:
        for add_generation_prompt in (False, True):
            cases.append({
                "name": name,
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "rendered": render(template, messages, add_generation_prompt, **extra),
            })
    return cases


# --- minimal GGUF (v3) reading and writing, enough to copy metadata -----------------------------

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9


def gguf_read_metadata(path):
    """Returns [(key, type, value)]; arrays are (elem_type, [values])."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the metadata sits at the front of the file
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        v = data[pos:pos + n].decode("utf-8")
        pos += n
        return v

    def value(t):
        if t == GGUF_STRING:
            return string()
        if t == GGUF_ARRAY:
            et, n = take("<I"), take("<Q")
            return (et, [value(et) for _ in range(n)])
        return take(GGUF_SCALARS[t])

    assert data[:4] == b"GGUF"
    pos = 4
    take("<I")  # version
    take("<Q")  # tensors
    n_kv = take("<Q")
    out = []
    for _ in range(n_kv):
        key = string()
        t = take("<I")
        out.append((key, t, value(t)))
    return out


def gguf_write_metadata(path, kvs):
    """Writes a GGUF v3 file with the given metadata and no tensors."""
    buf = bytearray(b"GGUF")
    buf += struct.pack("<IQQ", 3, 0, len(kvs))

    def string(v):
        b = v.encode("utf-8")
        buf.extend(struct.pack("<Q", len(b)) + b)

    def value(t, v):
        if t == GGUF_STRING:
            string(v)
        elif t == GGUF_ARRAY:
            et, items = v
            buf.extend(struct.pack("<IQ", et, len(items)))
            for item in items:
                value(et, item)
        else:
            buf.extend(struct.pack(GGUF_SCALARS[t], v))

    for key, t, v in kvs:
        string(key)
        buf.extend(struct.pack("<I", t))
        value(t, v)
    buf.extend(b"\0" * (-len(buf) % 32))
    with open(path, "wb") as f:
        f.write(buf)


# Pre-tokenizer names run on the default model's BPE vocabulary. add_bos_token is removed so
# that each name's default applies (llama-bpe adds BOS).
BPE_VARIANTS = ["llama-bpe", "qwen2", "gpt-2", "default", "starcoder"]
SPM_PIECES = 4000  # SentencePiece vocabulary size (before byte and special tokens)


def bpe_token_bytes(text):
    """Maps a byte-level BPE token back to bytes (inverse of GPT-2's bytes_to_unicode)."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + n)] = b
            n += 1
    return bytes(table[c] for c in text)


def spm_vocab(kvs):
    """A SentencePiece vocabulary from the BPE one: <unk> <s> </s>, 256 byte tokens, two
    specials, then the first SPM_PIECES normal tokens (spaces as U+2581), score = -rank."""
    meta = {k: v for k, _, v in kvs}
    bpe_tokens = meta["tokenizer.ggml.tokens"][1]
    bpe_types = meta["tokenizer.ggml.token_type"][1]
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(6)
    tokens += ["<|im_start|>", "<tool>"]
    types += [3, 4]
    seen = set(tokens)
    for text, ttype in zip(bpe_tokens, bpe_types):
        if len(tokens) >= SPM_PIECES + 261 or ttype != 1:
            continue
        try:
            piece = bpe_token_bytes(text).decode("utf-8").replace(" ", "\u2581")
        except (UnicodeDecodeError, KeyError):
            continue
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(1)
    scores = [0.0] * 261 + [float(-i) for i in range(len(tokens) - 261)]
    return tokens, scores, types


def variant_texts(path):
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    combos = ((False, False), (True, True))
    entries = [text_entry(vocab, t.encode("utf-8"), combos) for t in TEXTS] + \
              [text_entry(vocab, b, combos) for b in BYTE_TEXTS]
    info = {"add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "bos_id": llama_cpp.llama_vocab_bos(vocab)}
    for e in entries:  # the text is in the main list already
        e.pop("text", None)
    return info, entries


def variants(model_path, tmpdir):
    kvs = gguf_read_metadata(model_path)
    base = [kv for kv in kvs if kv[0] != "tokenizer.ggml.add_bos_token"]
    out = []
    for pre in BPE_VARIANTS:
        path = os.path.join(tmpdir, f"bpe-{pre}.gguf")
        gguf_write_metadata(path, [(k, t, pre if k == "tokenizer.ggml.pre" else v)
                                   for k, t, v in base])
        info, entries = variant_texts(path)
        out.append({"pre": pre, **info, "texts": entries})

    tokens, scores, types = spm_vocab(kvs)
    spm_kvs = [kv for kv in kvs if not kv[0].startswith("tokenizer.")]
    spm_kvs += [("tokenizer.ggml.model", GGUF_STRING, "llama"),
                ("tokenizer.ggml.tokens", GGUF_ARRAY, (GGUF_STRING, tokens)),
                ("tokenizer.ggml.scores", GGUF_ARRAY, (6, scores)),
                ("tokenizer.ggml.token_type", GGUF_ARRAY, (5, types)),
                ("tokenizer.ggml.bos_token_id", 4, 1),
                ("tokenizer.ggml.eos_token_id", 4, 2),
                ("tokenizer.ggml.unknown_token_id", 4, 0)]
    path = os.path.join(tmpdir, "spm.gguf")
    gguf_write_metadata(path, spm_kvs)
    info, entries = variant_texts(path)
    spm = {"tokens": tokens, "scores": scores, "token_types": types, **info, "texts": entries}
    return out, spm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--out", default="tests/fixtures/tokenizer_smollm2.json")
    args = parser.parse_args()

    llm = llama_cpp.Llama(args.model, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    template = llm.metadata["tokenizer.chat_template"]

    fixture = {
        "generated_by": "tools/make_tokenizer_fixtures.py",
        "reference": f"llama-cpp-python {llama_cpp.__version__} (llama_tokenize / llama_detokenize, "
                     f"vocab_only=True); jinja2 {jinja2.__version__} for chat templates",
        "model": os.path.basename(args.model),
        "model_sha256": sha256(args.model),
        "vocab_size": n_vocab,
        "bos_id": llama_cpp.llama_vocab_bos(vocab),
        "eos_id": llama_cpp.llama_vocab_eos(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "eog_ids": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "texts": [text_entry(vocab, t.encode("utf-8")) for t in TEXTS] +
                 [text_entry(vocab, b) for b in BYTE_TEXTS],
        "chat_templates": [
            {"name": "smollm2", "source": "tokenizer.chat_template of the model",
             "template": template, "bos_token": "", "eos_token": "",
             "cases": chat_cases(template, CONVERSATIONS)},
            {"name": "llama2", "source": "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json",
             "template": LLAMA2_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>",
             "cases": chat_cases(LLAMA2_TEMPLATE,
                                 [c for c in CONVERSATIONS if c[0] != "empty"],
                                 bos_token="<s>", eos_token="</s>")},
            {"name": "llama3",
             "source": "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json",
             "template": LLAMA3_TEMPLATE, "bos_token": "<|begin_of_text|>",
             "eos_token": "<|eot_id|>",
             "cases": chat_cases(LLAMA3_TEMPLATE, CONVERSATIONS,
                                 bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")},
        ],
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        fixture["variants"], fixture["spm"] = variants(args.model, tmpdir)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        text = json.dumps(fixture, ensure_ascii=False, indent=1)
        # One line per list of numbers keeps the file short and diffs readable.
        text = re.sub(r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]",
                      lambda m: "[" + re.sub(r"\s+", "", m.group(1)).replace(",", ", ") + "]",
                      text)
        f.write(text + "\n")
    print(f"wrote {args.out}: {len(fixture['texts'])} texts", file=sys.stderr)


if __name__ == "__main__":
    main()
