"""Shared pieces of the Python UI tests: arguments, a local swarm of real `strata` processes on
loopback, waiting on conditions with deadlines, and a strict Prometheus text parser.

Every test is a script run by ctest as
    python3 X_test.py --strata BUILD/strata --model MODEL.gguf --out OUTPUT_DIR
and exits non-zero on failure. Processes it starts are stopped when it exits, whatever happens.
"""

import argparse
import atexit
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--strata", required=True, help="path of the built strata binary")
    p.add_argument("--model", required=True, help="GGUF model (env STRATA_MODEL overrides)")
    p.add_argument("--out", required=True, help="directory for logs and screenshots")
    args = p.parse_args()
    args.model = os.environ.get("STRATA_MODEL", args.model)
    if not os.path.exists(args.model):
        fail(f"the model {args.model} is missing (scripts/test.sh downloads it)")
    os.makedirs(args.out, exist_ok=True)
    return args


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def log(message):
    print(message, flush=True)


def wait_for(condition, timeout, what, interval=0.1):
    """Polls condition() until it returns a truthy value (returned) or fails after timeout s."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # the condition may race with a starting process
            last_error = e
        time.sleep(interval)
    fail(f"timed out after {timeout} s waiting for {what}" +
         (f" (last error: {last_error})" if last_error else ""))


def http_get(url, timeout=5, headers=None):
    """(status, body bytes, headers) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def http_json(url, timeout=5):
    status, body, _ = http_get(url, timeout)
    check(status == 200, f"GET {url} answered {status}: {body[:200]!r}")
    return json.loads(body)


_processes = []


def _stop_all():
    for p in reversed(_processes):
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10
    for p in reversed(_processes):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


atexit.register(_stop_all)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Process:
    """A child process whose stdout lines are collected by a thread; stderr goes to a log file."""

    def __init__(self, args, log_path, stdin=None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE,
                                      stderr=self._log)
        _processes.append(self.popen)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in iter(self.popen.stdout.readline, b""):
            self.lines.put(line.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def first_line(self, timeout, prefix):
        """The first stdout line (must start with prefix)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None or not line.startswith(prefix):
            self.dump_log()
            fail(f"{' '.join(self.args[:2])}: expected a '{prefix}' line, got {line!r}")
        return line

    def dump_log(self):
        self._log.flush()
        try:
            with open(self.log_path, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            print(f"--- {self.log_path} (tail) ---\n{tail}", file=sys.stderr)
        except OSError:
            pass

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def kill(self):
        self.popen.kill()
        self.popen.wait()

    def stop(self, timeout=15):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def field(line, key):
    m = re.search(r"(?:^| )" + re.escape(key) + r"=(\S+)", line)
    check(m is not None, f"no {key}= in {line!r}")
    return m.group(1)


class Swarm:
    """A coordinator (gRPC + HTTP) and nodes started one at a time, each choosing its span."""

    def __init__(self, args, ttl_ms=2000, heartbeat_ms=300):
        self.args = args
        self.nodes = []  # dicts: process, id, grpc, http, first, last
        self.coordinator = Process(
            [args.strata, "coordinator", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--ttl-ms", str(ttl_ms), "--heartbeat-ms", str(heartbeat_ms)],
            os.path.join(args.out, "coordinator.log"))
        line = self.coordinator.first_line(20, "coordinator listening")
        self.grpc = field(line, "grpc")
        self.http = field(line, "http")
        self.url = f"http://{self.http}"

    def add_node(self, max_layers, node_id=None, http=False, kv_mib=128):
        n = len(self.nodes)
        cmd = [self.args.strata, "node", "--coordinator", self.grpc, "--model", self.args.model,
               "--max-layers", str(max_layers), "--threads", "1", "--kv-memory", str(kv_mib)]
        if node_id is not None:
            cmd += ["--id", node_id]
        if http:
            cmd += ["--http", "127.0.0.1:0"]
        p = Process(cmd, os.path.join(self.args.out, f"node{n}.log"))
        line = p.first_line(120, "node listening")
        layers = field(line, "layers").split(":")
        node = {"process": p, "id": field(line, "id"), "grpc": field(line, "grpc"),
                "http": field(line, "http") if http else None,
                "first": int(layers[0]), "last": int(layers[1])}
        self.nodes.append(node)
        log(f"node {node['id']} serves layers {node['first']}-{node['last'] - 1}")
        return node

    def swarm(self):
        return http_json(self.url + "/api/swarm")

    def wait_serving(self, online, timeout=60):
        def ready():
            s = self.swarm()
            up = [n for n in s["nodes"] if n["state"] == "online"]
            return len(up) >= online and not s["uncovered"] and s["num_layers"] > 0
        wait_for(ready, timeout, f"{online} online nodes covering every layer")

    def generate(self, prompt, max_tokens=16, extra=()):
        """Runs `strata generate --json` through the swarm; returns its JSON."""
        out = subprocess.run(
            [self.args.strata, "generate", "--coordinator", self.grpc, "--model", self.args.model,
             "--threads", "1", "--json", "--prompt", prompt, "--max-tokens", str(max_tokens),
             *extra],
            capture_output=True, timeout=120)
        check(out.returncode == 0, f"strata generate failed: {out.stderr.decode()[-2000:]}")
        return json.loads(out.stdout)


# ---- Prometheus text format -----------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value}, types {family: type}. Fails on a bad line."""
    samples, types = {}, {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            check(len(parts) >= 3 and parts[1] in ("HELP", "TYPE"), f"bad comment line {n}: {line}")
            if parts[1] == "TYPE":
                check(len(parts) == 4 and parts[3] in ("counter", "gauge", "histogram", "summary",
                                                       "untyped"), f"bad TYPE line {n}: {line}")
                types[parts[2]] = parts[3]
            continue
        m = _SAMPLE.match(line)
        check(m is not None, f"line {n} is not a sample: {line!r}")
        labels = {}
        body = m.group(3) or ""
        pos = 0
        while pos < len(body):
            lm = _LABEL.match(body, pos)
            check(lm is not None, f"bad labels on line {n}: {line!r}")
            value = re.sub(r'\\(.)', lambda e: "\n" if e.group(1) == "n" else e.group(1),
                           lm.group(2))
            labels[lm.group(1)] = value
            pos = lm.end()
        raw = m.group(4)
        value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(raw)
        if value is None:
            value = float(raw)
        samples[(m.group(1), frozenset(labels.items()))] = value
    return samples, types


def metric(samples, name, **labels):
    """The value of the sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def metrics_matching(samples, name, **labels):
    """[(labels dict, value)] of `name` whose labels include `labels`."""
    out = []
    for (n, ls), v in samples.items():
        d = dict(ls)
        if n == name and all(d.get(k) == v2 for k, v2 in labels.items()):
            out.append((d, v))
    return out
