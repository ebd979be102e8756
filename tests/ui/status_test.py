#!/usr/bin/env python3
"""Operator views in the terminal: `strata status` (nodes, coverage and gaps, the route; --json)
against a real swarm before and after a node dies, and the live one-line status that
`strata node` redraws on stderr when stderr is a terminal.
"""

import json
import os
import pty
import select
import subprocess
import time

import uitest
from uitest import check, log, wait_for


def status(args, coordinator, *extra):
    out = subprocess.run([args.strata, "status", "--coordinator", coordinator, *extra],
                         capture_output=True, timeout=30)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def read_pty(fd, seconds):
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace")


def main():
    args = uitest.parse_args(__doc__)
    swarm = uitest.Swarm(args, ttl_ms=2000, heartbeat_ms=300)
    nodes = [swarm.add_node(max_layers=10) for _ in range(3)]
    swarm.wait_serving(3)

    rc, out, err = status(args, swarm.grpc)
    log(out)
    check(rc == 0, f"strata status exited {rc}: {err}")
    for n in nodes:
        check(n["id"] in out, f"{n['id']} missing from the table")
    check("all 30 layers served" in out, "no full-coverage line")
    route = next((l for l in out.splitlines() if l.startswith("route:")), "")
    check(all(n["id"] in route for n in nodes), f"route line {route!r}")
    check("NODE" in out and "LAYERS" in out and "KV" in out, "no table header")

    rc, out, err = status(args, swarm.grpc, "--json")
    check(rc == 0, f"status --json exited {rc}: {err}")
    j = json.loads(out)
    check(sorted(n["id"] for n in j["nodes"]) == sorted(n["id"] for n in nodes), "json nodes")
    check(j["uncovered"] == [] and len(j["route"]["route"]["hops"]) == 3, "json route/coverage")

    # A node dies: after its TTL the table shows the gap and no route.
    victim = nodes[1]
    victim["process"].kill()
    gap = f"layers {victim['first']}-{victim['last'] - 1}"
    def gap_shown():
        rc, out, _ = status(args, swarm.grpc)
        return out if rc == 0 and "GAP" in out else None
    out = wait_for(gap_shown, 15, "the gap in strata status")
    log(out)
    check(victim["id"] not in out, "the dead node is still listed")
    check(gap in out, f"the gap line does not name {gap}")
    check("route: none" in out, "a route is shown through a gap")

    # No coordinator: a clear error, exit 1.
    rc, out, err = status(args, "127.0.0.1:1", "--timeout-ms", "1000")
    check(rc == 1 and "no coordinator answered" in err, f"dead coordinator: {rc} {err!r}")

    # The node's live status line, with stderr on a terminal.
    master, slave = pty.openpty()
    node = subprocess.Popen(
        [args.strata, "node", "--coordinator", swarm.grpc, "--model", args.model,
         "--max-layers", "10", "--threads", "1", "--kv-memory", "64"],
        stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    uitest._processes.append(node)
    os.close(slave)
    line = node.stdout.readline().decode()
    check(line.startswith("node listening"), f"node line {line!r}")
    text = read_pty(master, 3.5)
    node.terminate()
    node.wait(timeout=30)
    os.close(master)
    check("loading layers" in text, "no loading progress on the terminal")
    redraws = text.count("\r\x1b[K")
    check(redraws >= 2, f"the status line was drawn {redraws} times in 3.5 s")
    status_lines = [s for s in text.split("\r\x1b[K") if "rows/s" in s]
    check(status_lines, f"no status line in {text[-500:]!r}")
    sample = status_lines[-1].strip()
    log(f"node status line: {sample}")
    for word in ["layers", "tok/s", "rows/s", "sessions", "KV", "MiB"]:
        check(word in sample, f"{word!r} missing from the status line {sample!r}")
    check(all("\n" not in l.strip() for l in status_lines[:-1]),
          "a status line spans several lines")
    log("status test passed")


if __name__ == "__main__":
    main()
