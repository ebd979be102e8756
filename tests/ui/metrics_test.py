#!/usr/bin/env python3
"""Prometheus /metrics of a running swarm: the coordinator's (--http) and every node's
(strata node --http), parsed strictly as the text exposition format.

After a generation through the swarm, every node must count rows and batches and have observed
batch times; the coordinator must show the nodes, full coverage, join events, route planning
times and per-node load. Then a node is killed and a client trips over it: the coordinator counts
the failure report (strata_coordinator_events_total{kind="failure"}).
"""

import math
import subprocess

import uitest
from uitest import check, log, metric, metrics_matching, wait_for


def scrape(address):
    status, body, headers = uitest.http_get(f"http://{address}/metrics")
    check(status == 200, f"/metrics on {address} answered {status}")
    check(headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"),
          f"/metrics content type {headers.get('Content-Type')}")
    return uitest.parse_prometheus(body.decode())


def check_histogram(samples, name, **labels):
    buckets = sorted(((float(d["le"]) if d["le"] != "+Inf" else math.inf, v) for d, v in
                      metrics_matching(samples, name + "_bucket", **labels)))
    check(buckets, f"{name} has no buckets")
    check(all(b[1] <= c[1] for b, c in zip(buckets, buckets[1:])), f"{name} is not cumulative")
    count = metric(samples, name + "_count", **labels)
    check(buckets[-1][0] == math.inf and buckets[-1][1] == count, f"{name}: +Inf != count")
    check(metric(samples, name + "_sum", **labels) is not None, f"{name} has no _sum")
    return count


def main():
    args = uitest.parse_args(__doc__)
    swarm = uitest.Swarm(args, ttl_ms=3000, heartbeat_ms=300)
    nodes = [swarm.add_node(max_layers=10, http=True) for _ in range(3)]
    swarm.wait_serving(3)
    for n in nodes:
        status, body, _ = uitest.http_get(f"http://{n['http']}/healthz")
        check(status == 200 and body == b"ok\n", f"/healthz of {n['id']}: {status} {body!r}")

    result = swarm.generate("Count from one to ten:", max_tokens=20,
                            extra=["--temperature", "0"])
    generated = len(result["token_ids"])
    prompt_tokens = result["prompt_tokens"]
    log(f"generated {generated} tokens after a {prompt_tokens}-token prompt")

    for n in nodes:
        samples, types = scrape(n["http"])
        check(types.get("strata_node_rows_total") == "counter", "rows_total is not a counter")
        check(types.get("strata_node_batch_seconds") == "histogram", "no batch histogram")
        rows = metric(samples, "strata_node_rows_total")
        # Every position of the prompt and of the generated text went through every node (the
        # last generated token need not be fed back; drafts may add rows).
        check(rows >= prompt_tokens + generated - 1,
              f"{n['id']}: {rows} rows, expected at least {prompt_tokens + generated - 1}")
        check(metric(samples, "strata_node_batches_total") >= generated - 1, "too few batches")
        count = wait_for(lambda: check_histogram(scrape(n["http"])[0], "strata_node_batch_seconds"),
                         5, f"{n['id']}'s batch histogram")
        check(count >= 1, "no batch observed")
        check(metric(samples, "strata_node_kv_capacity_bytes") == 128 << 20, "KV capacity")
        check(metric(samples, "strata_node_up_state", state="online") == 1, "not online")
        check(metric(samples, "strata_node_first_layer") == n["first"], "first layer")
        check(metric(samples, "strata_node_last_layer") == n["last"], "last layer")
        check(metrics_matching(samples, "strata_node_info", node_id=n["id"]), "no info")
        for name in ["strata_node_queue_depth", "strata_node_active_sessions",
                     "strata_node_kv_used_bytes", "strata_node_errors_total"]:
            check(metric(samples, name) is not None, f"{n['id']}: no {name}")

    uitest.http_json(swarm.url + "/api/route")  # one route plan over HTTP
    samples, types = scrape(swarm.http)
    check(metric(samples, "strata_swarm_nodes", state="online") == 3, "online nodes")
    check(metric(samples, "strata_swarm_uncovered_layers") == 0, "uncovered layers")
    check(metric(samples, "strata_swarm_layers") == 30, "layers")
    # The coordinator counts events from its once-a-second snapshots.
    wait_for(lambda: metric(scrape(swarm.http)[0], "strata_coordinator_events_total",
                            kind="join") >= 3, 5, "three counted join events")
    check(check_histogram(samples, "strata_coordinator_route_plan_seconds", source="http") >= 1,
          "no route plan observed")
    check(types.get("strata_swarm_node_rows_total") == "counter", "node rows type")
    for n in nodes:
        check(metric(samples, "strata_swarm_node_first_layer", node_id=n["id"]) == n["first"],
              f"coordinator's span of {n['id']}")
        check(metric(samples, "strata_swarm_node_kv_capacity_bytes", node_id=n["id"]) == 128 << 20,
              f"coordinator's KV capacity of {n['id']}")
    # Heartbeats carry the rows the nodes computed.
    wait_for(lambda: all(metric(scrape(swarm.http)[0], "strata_swarm_node_rows_total",
                                node_id=n["id"]) > 0 for n in nodes), 5,
             "heartbeats with the nodes' rows")

    # A node dies in the middle of a generation; the client reports it to the coordinator.
    victim = nodes[2]
    gen = subprocess.Popen([args.strata, "generate", "--coordinator", swarm.grpc, "--model",
                            args.model, "--threads", "1", "--temperature", "0", "--max-tokens",
                            "400", "--prompt", "Once upon a time, in a land far away,"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = gen.stdout.read(8)  # text is streaming: the session is open on every hop
    check(len(first) > 0, "the generation printed nothing")
    victim["process"].kill()
    try:
        gen.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        gen.kill()
        uitest.fail("the generation did not end after its node died")
    log(f"generate with a node killed under it exited {gen.returncode}")
    wait_for(lambda: metric(scrape(swarm.http)[0], "strata_coordinator_events_total",
                            kind="failure") >= 1, 5, "a counted failure report")
    log("metrics test passed")


if __name__ == "__main__":
    main()
