#!/usr/bin/env python3
"""`strata serve` against a real 3-node swarm, with the official `openai` Python client.

Chat and completions, streaming and not; greedy output equal to `strata generate
--temperature 0`; usage counts; stop sequences; the same seed giving the same text; concurrent
requests served at once; and raw HTTP for the error cases (bad JSON, missing or wrong key,
unknown model, unknown URL, n > 1, a swarm that cannot be reached).
"""

import json
import os
import socket
import threading
import time
import urllib.request

import uitest
from uitest import check, log

try:
    import openai
except ImportError:
    uitest.fail("python3 module openai is missing (scripts/test.sh installs it)")

KEY = "test-key-123"
CHAT_PROMPT = "Name three colors of the rainbow."
TEXT_PROMPT = "The three primary colors are"


def start_serve(args, coordinator, name, api_key=KEY):
    cmd = [args.strata, "serve", "--coordinator", coordinator, "--listen", "127.0.0.1:0",
           "--model", args.model, "--threads", "1"]
    if api_key:
        cmd += ["--api-key", api_key]
    p = uitest.Process(cmd, os.path.join(args.out, f"{name}.log"))
    line = p.first_line(60, "serve listening")
    return p, uitest.field(line, "http")


def raw(address, method, path, body=None, key=KEY, headers=None):
    """(status, parsed JSON or text) of a raw request."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"http://{address}{path}", data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def check_error(address, method, path, body, want_status, key=KEY, code=None, param=None):
    status, j = raw(address, method, path, body, key=key)
    check(status == want_status, f"{method} {path} {body!r}: status {status}, want {want_status}: {j}")
    check(isinstance(j, dict) and set(j.get("error", {})) == {"message", "type", "param", "code"},
          f"{method} {path}: not an OpenAI error: {j}")
    if code is not None:
        check(j["error"]["code"] == code, f"{path}: error code {j['error']['code']}, want {code}")
    if param is not None:
        check(j["error"]["param"] == param, f"{path}: param {j['error']['param']}, want {param}")
    return j


def main():
    args = uitest.parse_args(__doc__)
    swarm = uitest.Swarm(args)
    for _ in range(3):
        swarm.add_node(max_layers=10)
    swarm.wait_serving(3)
    serve, address = start_serve(args, swarm.grpc, "serve")
    client = openai.OpenAI(base_url=f"http://{address}/v1", api_key=KEY, max_retries=0,
                           timeout=120)

    models = [m.id for m in client.models.list().data]
    check(len(models) == 1, f"models: {models}")
    model = models[0]
    log(f"model {model}")
    check(client.models.retrieve(model).id == model, "retrieve the model")

    # Greedy chat equals `strata generate --chat --temperature 0`.
    want = swarm.generate(CHAT_PROMPT, max_tokens=32, extra=["--chat", "--temperature", "0"])
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": CHAT_PROMPT}], max_tokens=32,
        temperature=0)
    got = chat.choices[0].message.content
    check(got == want["text"], f"chat differs from strata generate:\n{got!r}\n{want['text']!r}")
    check(chat.usage.prompt_tokens == want["prompt_tokens"],
          f"prompt tokens {chat.usage.prompt_tokens} vs {want['prompt_tokens']}")
    check(chat.usage.completion_tokens == len(want["token_ids"]), "completion tokens")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens,
          "total tokens")
    check(chat.choices[0].finish_reason == ("length" if want["finish_reason"] == "length"
                                            else "stop"), "finish reason")
    check(chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"), "chat shape")

    # Greedy completion equals `strata generate --temperature 0` (no chat template).
    want_text = swarm.generate(TEXT_PROMPT, max_tokens=24, extra=["--temperature", "0"])
    comp = client.completions.create(model=model, prompt=TEXT_PROMPT, max_tokens=24,
                                     temperature=0)
    check(comp.choices[0].text == want_text["text"],
          f"completion differs:\n{comp.choices[0].text!r}\n{want_text['text']!r}")
    check(comp.usage.prompt_tokens == want_text["prompt_tokens"], "completion prompt tokens")
    check(comp.usage.completion_tokens == len(want_text["token_ids"]), "completion tokens")

    # Streaming gives the same text, in several chunks, then a finish reason and usage.
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": CHAT_PROMPT}], max_tokens=32,
        temperature=0, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(pieces) == got, f"streamed chat differs: {''.join(pieces)!r} vs {got!r}")
    check(len(pieces) > 3, f"only {len(pieces)} chunks")
    check(roles == ["assistant"], f"roles {roles}")
    check(finish == chat.choices[0].finish_reason, f"stream finish {finish}")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens,
          f"stream usage {usage}")
    stream = client.completions.create(model=model, prompt=TEXT_PROMPT, max_tokens=24,
                                       temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    check(text == comp.choices[0].text, f"streamed completion differs: {text!r}")

    # Stop sequences end the text before them.
    full = comp.choices[0].text
    stop_at = next((s for s in [",", " and", "."] if s in full), None)
    check(stop_at is not None, f"no stop candidate in {full!r}")
    stopped = client.completions.create(model=model, prompt=TEXT_PROMPT, max_tokens=24,
                                        temperature=0, stop=[stop_at, "@@@"])
    check(stopped.choices[0].text == full[:full.index(stop_at)],
          f"stop {stop_at!r}: {stopped.choices[0].text!r} from {full!r}")
    check(stopped.choices[0].finish_reason == "stop", "stop finish reason")
    stream = client.completions.create(model=model, prompt=TEXT_PROMPT, max_tokens=24,
                                       temperature=0, stop=stop_at, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    check(text == stopped.choices[0].text, f"streamed stop differs: {text!r}")

    # Seeds: the same seed gives the same text; other seeds give other texts.
    def sample(seed):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Write a short poem about rain."}],
            max_tokens=24, temperature=1.0, seed=seed)
        return r.choices[0].message.content
    a, b = sample(1234), sample(1234)
    check(a == b, f"seed 1234 gave two texts:\n{a!r}\n{b!r}")
    check(any(sample(s) != a for s in (1, 2, 3)), "every seed gives the same text")

    # Concurrent requests are served at once: every stream starts before any finishes.
    firsts, dones, results, errors = {}, {}, {}, []

    def worker(i):
        try:
            s = client.completions.create(model=model, prompt=f"Story number {i}:",
                                          max_tokens=48, temperature=0.8, seed=i, stream=True)
            parts = []
            for c in s:
                if c.choices and c.choices[0].text:
                    firsts.setdefault(i, time.monotonic())
                    parts.append(c.choices[0].text)
            dones[i] = time.monotonic()
            results[i] = "".join(parts)
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    check(not errors, f"concurrent requests failed: {errors}")
    check(len(firsts) == 3 and len(dones) == 3, f"concurrent: {firsts} {dones}")
    check(max(firsts.values()) < min(dones.values()),
          "the requests ran one after another, not concurrently")
    for i in range(3):
        again = client.completions.create(model=model, prompt=f"Story number {i}:",
                                          max_tokens=48, temperature=0.8, seed=i)
        check(again.choices[0].text == results[i], f"concurrent result {i} differs from alone")

    # Errors, as raw HTTP.
    body = json.dumps({"model": model, "prompt": "x", "max_tokens": 2})
    check_error(address, "POST", "/v1/completions", "{not json", 400, code="invalid_json")
    check_error(address, "POST", "/v1/completions", body, 401, key=None, code="invalid_api_key")
    check_error(address, "POST", "/v1/completions", body, 401, key="wrong", code="invalid_api_key")
    check_error(address, "GET", "/v1/models", None, 401, key="wrong")
    check_error(address, "POST", "/v1/completions",
                json.dumps({"model": "no-such-model", "prompt": "x"}), 404,
                code="model_not_found", param="model")
    check_error(address, "POST", "/v1/chat/completions",
                json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}],
                            "n": 2}), 400, param="n")
    check_error(address, "POST", "/v1/chat/completions", json.dumps({"model": model}), 400,
                param="messages")
    check_error(address, "POST", "/v1/completions",
                json.dumps({"model": model, "prompt": "x", "temperature": 5}), 400,
                param="temperature")
    check_error(address, "GET", "/v1/nothing", None, 404)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                       n=2)
        uitest.fail("n=2 was accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"n=2: {e}")
    try:
        client.completions.create(model="gpt-4", prompt="x")
        uitest.fail("an unknown model was accepted")
    except openai.NotFoundError:
        pass
    # The raw SSE framing.
    status, text = raw(address, "POST", "/v1/completions",
                       json.dumps({"model": model, "prompt": "Hi", "max_tokens": 3,
                                   "temperature": 0, "stream": True}))
    check(status == 200 and isinstance(text, str), f"stream status {status}")
    events = [e for e in text.split("\n\n") if e]
    check(all(e.startswith("data: ") for e in events), f"bad SSE framing: {text!r}")
    check(events[-1] == "data: [DONE]", f"the stream does not end with [DONE]: {events[-1]!r}")

    # A streaming client that goes away mid-answer: the generation stops, its sessions close and
    # the server goes on.
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        req = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 2000,
                          "temperature": 0.9, "seed": 5, "stream": True})
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: {address}\r\n"
                   f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(req)}\r\n\r\n{req}").encode())
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            check(chunk, "the stream ended early")
            got += chunk
    uitest.wait_for(lambda: sum(n["load"]["active_sessions"] for n in swarm.swarm()["nodes"]) == 0,
                    20, "the abandoned generation's sessions to close")
    check(client.completions.create(model=model, prompt="Hi", max_tokens=2).choices[0].text
          is not None, "serve stopped answering after a client went away")

    # A swarm that cannot be reached: 503 in OpenAI's error shape.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    dead_serve, dead_address = start_serve(args, dead, "serve_dead", api_key=None)
    j = check_error(dead_address, "POST", "/v1/completions", body, 503, key=None)
    check(j["error"]["type"] == "server_error", f"503 type {j['error']['type']}")
    check(serve.stop() == 0 and dead_serve.stop() == 0, "serve did not exit cleanly on SIGTERM")
    log("serve test passed")


if __name__ == "__main__":
    main()
