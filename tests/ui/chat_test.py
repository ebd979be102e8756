#!/usr/bin/env python3
"""`strata chat` driven through a pipe, against a real 3-node swarm and locally.

Two turns: the second prompt holds the first turn (its token ids start with the first prompt's
and it is longer by at least the first answer); with --speculative the same turns give the same
tokens. A SIGINT while an answer streams stops that
answer and leaves the program running; /reset forgets the history; two Ctrl-Cs at the prompt
quit; end of input quits. The per-turn records come from --json-log.
"""

import json
import os
import signal
import subprocess
import threading
import time

import uitest
from uitest import check, log, wait_for


class Chat:
    def __init__(self, args, extra, name):
        self.log_path = os.path.join(args.out, f"{name}.jsonl")
        if os.path.exists(self.log_path):
            os.remove(self.log_path)
        self.stderr_path = os.path.join(args.out, f"{name}.stderr")
        self.proc = uitest.Process(
            [args.strata, "chat", "--model", args.model, "--threads", "1", "--temperature", "0",
             "--json-log", self.log_path, *extra],
            self.stderr_path, stdin=subprocess.PIPE)
        self.stdout = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        while True:
            line = self.proc.lines.get()
            if line is None:
                return
            self.stdout.append(line)

    def send(self, line):
        self.proc.popen.stdin.write((line + "\n").encode())
        self.proc.popen.stdin.flush()

    def turns(self):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [json.loads(l) for l in f if l.strip()]

    def wait_turn(self, n, timeout=120):
        return wait_for(lambda: len(self.turns()) >= n and self.turns()[n - 1], timeout,
                        f"chat turn {n}")

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


def main():
    args = uitest.parse_args(__doc__)
    swarm = uitest.Swarm(args)
    for _ in range(3):
        swarm.add_node(max_layers=10)
    swarm.wait_serving(3)

    chat = Chat(args, ["--coordinator", swarm.grpc, "--max-tokens", "300"], "chat_swarm")
    chat.send("My name is Alice. Please greet me in one sentence.")
    t1 = chat.wait_turn(1)
    chat.send("What is my name?")
    t2 = chat.wait_turn(2)
    log(f"turn 1: {t1['prompt_tokens']} prompt tokens, answer {t1['text']!r}")
    log(f"turn 2: {t2['prompt_tokens']} prompt tokens, answer {t2['text']!r}")
    check("error" not in t1 and "error" not in t2, f"a turn failed: {t1} {t2}")
    check(t1["messages"] == 2 and t2["messages"] == 4, "history length")
    p1, p2 = t1["prompt_token_ids"], t2["prompt_token_ids"]
    check(p2[:len(p1)] == p1, "the second prompt does not start with the first")
    check(len(p2) >= len(p1) + t1["completion_tokens"],
          f"the second prompt ({len(p2)}) lacks the first answer ({len(p1)} + "
          f"{t1['completion_tokens']})")

    # The same two turns with speculative decoding (n-gram drafts, runs in flight, verified by
    # the last hop; the drafter shares this machine's cores with the nodes): the same tokens as
    # plain decoding.
    spec = Chat(args, ["--coordinator", swarm.grpc, "--max-tokens", "300", "--speculative",
                       "ngram", "--spec-mode", "pipelined", "--verify-at-last-hop",
                       "--drafter-shares-cores"],
                "chat_swarm_speculative")
    spec.send("My name is Alice. Please greet me in one sentence.")
    s1 = spec.wait_turn(1)
    spec.send("What is my name?")
    s2 = spec.wait_turn(2)
    spec.proc.popen.stdin.close()
    check("error" not in s1 and "error" not in s2, f"a speculative turn failed: {s1} {s2}")
    check(s1["token_ids"] == t1["token_ids"] and s2["token_ids"] == t2["token_ids"],
          "speculative chat answered differently from plain chat")
    check(s2["prompt_token_ids"] == p2, "the speculative chat's second prompt differs")
    log("speculative chat gave the plain tokens")

    # Ctrl-C while an answer streams: the answer stops, the program stays.
    before = len("".join(chat.stdout))
    chat.send("Write a very long story about a dragon who learns to bake bread.")
    wait_for(lambda: len("".join(chat.stdout)) > before + 20 or
             (len(chat.turns()) >= 3), 60, "the long answer to start streaming")
    check(len(chat.turns()) < 3, "the long answer finished before it could be interrupted")
    chat.proc.popen.send_signal(signal.SIGINT)
    t3 = chat.wait_turn(3)
    check(t3.get("finish_reason") == "cancelled",
          f"turn 3 finished with {t3.get('finish_reason')}, not cancelled")
    check(t3["completion_tokens"] < 300, "the stopped answer ran to its end")
    time.sleep(0.3)
    check(chat.proc.alive(), "SIGINT during an answer ended the program")
    log(f"interrupted after {t3['completion_tokens']} tokens")

    # /reset forgets everything: the same question is asked afresh.
    chat.send("/reset")
    chat.send("What is my name?")
    t4 = chat.wait_turn(4)
    check(t4["messages"] == 2, f"history after /reset: {t4['messages']} messages")
    check(t4["prompt_tokens"] < t2["prompt_tokens"], "the prompt after /reset is not shorter")
    check(t4["prompt_token_ids"][:10] == p1[:10], "the fresh prompt has another preamble")

    # Two Ctrl-Cs at the prompt quit.
    chat.proc.popen.send_signal(signal.SIGINT)
    wait_for(lambda: "Ctrl-C again" in chat.stderr(), 10, "the hint after one Ctrl-C")
    check(chat.proc.alive(), "one Ctrl-C at the prompt quit")
    chat.proc.popen.send_signal(signal.SIGINT)
    try:
        rc = chat.proc.popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        uitest.fail("two Ctrl-Cs at the prompt did not quit")
    check(rc == 0, f"exit code {rc} after two Ctrl-Cs")

    # Locally (no swarm), ended by end of input.
    local = Chat(args, ["--max-tokens", "8"], "chat_local")
    local.send("Hello!")
    local.proc.popen.stdin.close()
    try:
        rc = local.proc.popen.wait(timeout=120)
    except subprocess.TimeoutExpired:
        uitest.fail("end of input did not end the local chat")
    check(rc == 0, f"local chat exited {rc}: {local.stderr()[-1000:]}")
    turns = local.turns()
    check(len(turns) == 1 and "error" not in turns[0] and turns[0]["completion_tokens"] > 0,
          f"local chat turns: {turns}")
    log("chat test passed")


if __name__ == "__main__":
    main()
