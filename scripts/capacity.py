#!/usr/bin/env python3
"""The capacity model of docs/capacity.md, recomputed from measurements.

Reads the Redis cost per event from a `scripts/bench-shards.sh` result (its runs.jsonl; the
newest under bench-results/ by default) and the node's costs from the flags below (their defaults
are the figures BENCHMARKS.md records, with where each comes from), and prints the table of
nodes and Redis shards needed for 1M and 10M connections at 100k and 1M pushes per second.

Usage: scripts/capacity.py [--shards-runs PATH] [--node-cores N] [--node-memory-gib N] ...
"""

import argparse
import glob
import json
import math
import os
import statistics
import sys

# Node figures (BENCHMARKS.md): 5.7 KiB of server RSS per idle WebSocket (10,000 idle, "Results"),
# about 3.5 KiB of kernel memory per idle TCP socket ("A million connections"); 2.9 CPU-µs per
# delivery when pushes come in batches of 100 and 36.6 CPU-µs per single push request (layering
# A/B, memory broker); 26 CPU-µs per delivery for two cluster nodes together on single pushes
# ("Cluster (Redis broker)", 26.2 CPU-s per million deliveries).
DEFAULTS = {
    "conn_kib": 5.7 + 3.5,
    "batch_delivery_us": 2.9,
    "single_push_us": 36.6,
    "cluster_overhead_us": 26.2 - 13.3,
}


def newest_runs():
    paths = sorted(glob.glob("bench-results/shards-*/runs.jsonl"), key=os.path.getmtime)
    if not paths:
        sys.exit("no bench-results/shards-*/runs.jsonl: run scripts/bench-shards.sh first")
    return paths[-1]


def redis_us_per_event(path, scenario):
    """Median Redis CPU µs per event of the one-Redis runs of `scenario` in `path`."""
    values = []
    for line in open(path):
        run = json.loads(line)
        if run["scenario"] == scenario and run["broker"] == "redis-1" and run["delivered"]:
            values.append(sum(s["cpu_s"] for s in run["shards"]) * 1e6 / run["delivered"])
    if not values:
        sys.exit(f"{path}: no one-Redis {scenario} run")
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards-runs", help="a bench-shards runs.jsonl (default: the newest)")
    parser.add_argument("--node-cores", type=float, default=16, help="cores per node")
    parser.add_argument("--node-memory-gib", type=float, default=32, help="memory per node")
    parser.add_argument("--utilisation", type=float, default=0.6,
                        help="share of a core or of memory planned for (headroom for bursts)")
    parser.add_argument("--batch-share", type=float, default=0.5,
                        help="share of pushes that arrive in batches (the rest: single requests)")
    parser.add_argument("--frame-bytes", type=int, default=400, help="bytes of one event frame")
    parser.add_argument("--connections-per-node", type=int, default=250_000,
                        help="most connections planned per node (reconnect storms, descriptors)")
    parser.add_argument("--history-size", type=int, default=100, help="HISTORY_SIZE")
    parser.add_argument("--active-share", type=float, default=0.2,
                        help="share of the users pushed to within HISTORY_TTL (their history is "
                             "in Redis)")
    args = parser.parse_args()
    path = args.shards_runs or newest_runs()
    redis_batch = redis_us_per_event(path, "batch")
    redis_single = redis_us_per_event(path, "push")
    d = DEFAULTS
    redis_us = args.batch_share * redis_batch + (1 - args.batch_share) * redis_single
    node_us = (args.batch_share * d["batch_delivery_us"]
               + (1 - args.batch_share) * d["single_push_us"] + d["cluster_overhead_us"])
    print(f"Inputs: Redis {redis_batch:.1f} µs per event in batches, {redis_single:.1f} µs per "
          f"single push ({path}); node {node_us:.1f} CPU-µs per delivery in a cluster with "
          f"{args.batch_share:.0%} of pushes batched; {d['conn_kib']:.1f} KiB per connection; "
          f"nodes of {args.node_cores:g} cores and {args.node_memory_gib:g} GiB planned at "
          f"{args.utilisation:.0%}.\n")
    print("| connections | pushes/s | nodes for connections · memory · CPU | nodes | Redis shards "
          "for CPU (one core each) | Redis memory for history | delivery traffic |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for connections in (1_000_000, 10_000_000):
        for pushes in (100_000, 1_000_000):
            memory_gib = connections * d["conn_kib"] / 1024 / 1024
            by_memory = math.ceil(memory_gib / (args.node_memory_gib * args.utilisation))
            cores = pushes * node_us / 1e6
            by_cpu = math.ceil(cores / (args.node_cores * args.utilisation))
            shards = math.ceil(pushes * redis_us / 1e6 / args.utilisation)
            by_connections = math.ceil(connections / args.connections_per_node)
            gbit = pushes * args.frame_bytes * 8 / 1e9
            # Per active user (one connection each): the stream's own overhead (about 5 KiB) and
            # HISTORY_SIZE entries of a frame plus about 100 bytes of bookkeeping.
            per_user = 5 * 1024 + args.history_size * (args.frame_bytes + 100)
            history_gib = connections * args.active_share * per_user / 1024**3
            nodes = max(by_connections, by_memory, by_cpu)
            print(f"| {connections:,} | {pushes:,} | {by_connections} · {by_memory} "
                  f"({memory_gib:,.0f} GiB) · {by_cpu} ({cores:,.0f} cores) | {nodes} | {shards} | "
                  f"{history_gib:,.0f} GiB | {gbit:.1f} Gbit/s |")


if __name__ == "__main__":
    main()
