#!/usr/bin/env bash
# What a Redis shard costs and adds: one node with the memory broker, with one Redis, with two
# Redis shards (REDIS_URL listing both), and with a Redis Cluster of three masters (no replicas;
# REDIS_CLUSTER=true, 12 partitions), under single pushes and batches, in alternating rounds.
# Per run: deliveries per second, and for each shard the Redis CPU per event (INFO cpu around the
# run), the publish script's own time per event (INFO commandstats) and its share of the keys.
#
#   scripts/bench-shards.sh            # 3 rounds of 5 s per (scenario, broker)
#   BENCH_ROUNDS=5 BENCH_DURATION=10 scripts/bench-shards.sh
#   BENCH_BROKERS="redis-1 cluster-3" scripts/bench-shards.sh   # a subset; also redis-1-wait:
#                                  one Redis with a replica and REDIS_WAIT_REPLICAS=1
#
# Loopback only. Throwaway redis-servers on free ports (no persistence), stopped at the end. The
# node is pinned to CPU 0 and loadgen to CPU 1 when the machine has two or more; Redis is not
# pinned. Results: bench-results/shards-<UTC stamp>/ (runs.jsonl, and the table printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-5}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$PWD/bench-results/shards-$STAMP"
mkdir -p "$OUT"
RUNS="$OUT/runs.jsonl"
PIN_NODE=() PIN_LOADGEN=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_NODE=(taskset -c 0) PIN_LOADGEN=(taskset -c 1)
fi
for tool in redis-server redis-cli curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-shards: $tool is needed" >&2; exit 1; }
done
cargo build --release --workspace --quiet
NODE_BIN=target/release/websocket-sse-server
LOADGEN=target/release/loadgen

REDIS_PIDS=()
REDIS_PORT=""
NODE_PID=""
cleanup() {
    [ -z "$NODE_PID" ] || kill "$NODE_PID" 2>/dev/null || true
    for pid in "${REDIS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# A free loopback port below 32768: a Redis Cluster node also listens on its port + 10000.
free_port() {
    python3 -c '
import random, socket
while True:
    port = random.randrange(20000, 32768)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break'
}

# start_redis [ARG...]: a throwaway redis-server on a free port, with its own directory and the
# extra arguments, left in REDIS_PORT (not printed: in a command substitution its pid would be
# lost to the cleanup).
start_redis() {
    REDIS_PORT="$(free_port)"
    mkdir -p "$OUT/redis-$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$OUT/redis-$REDIS_PORT" --logfile "$OUT/redis-$REDIS_PORT.log" "$@" >/dev/null 2>&1 &
    REDIS_PIDS+=($!)
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.05
    done
}

redis_cpu() {
    redis-cli -p "$1" info cpu | tr -d '\r' |
        awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.4f", s }'
}

redis_script_usec() {
    redis-cli -p "$1" info commandstats | tr -d '\r' |
        sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=\([0-9]*\),.*/\1/p'
}

# run <scenario> <broker> <round>: one run on a fresh node (and fresh Redis servers).
run() {
    local scenario="$1" broker="$2" round="$3" shards=0 ports=() urls="" port env=() node_port
    local cluster=() wait_replicas=0
    case "$broker" in
        redis-1) shards=1 ;;
        redis-1-wait) shards=1 wait_replicas=1 ;;
        redis-2) shards=2 ;;
        cluster-3) shards=3 cluster=(--cluster-enabled yes) ;;
    esac
    for _ in $(seq "$shards"); do
        start_redis "${cluster[@]}"
        port="$REDIS_PORT"
        ports+=("$port")
        urls="${urls:+$urls,}redis://127.0.0.1:$port"
    done
    node_port="$(free_port)"
    env=(LOG_LEVEL=warning SHUTDOWN_DRAIN=0 HOST=127.0.0.1 "PORT=$node_port")
    if [ "${#cluster[@]}" -gt 0 ]; then
        local masters=()
        for port in "${ports[@]}"; do masters+=("127.0.0.1:$port"); done
        redis-cli --cluster create "${masters[@]}" --cluster-yes >"$OUT/cluster-create.log" 2>&1
        for _ in $(seq 100); do
            redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break
            sleep 0.1
        done
        env+=(BROKER=redis REDIS_CLUSTER=true "REDIS_URL=redis://127.0.0.1:${ports[0]}")
    elif [ "$shards" != 0 ]; then
        env+=(BROKER=redis "REDIS_URL=$urls")
    fi
    if [ "$wait_replicas" != 0 ]; then
        # A replica of the shard, and pushes answered once it has them (REDIS_WAIT_REPLICAS).
        start_redis --replicaof 127.0.0.1 "${ports[0]}"
        for _ in $(seq 100); do
            redis-cli -p "$REDIS_PORT" info replication | grep -q master_link_status:up && break
            sleep 0.1
        done
        env+=("REDIS_WAIT_REPLICAS=$wait_replicas")
    fi
    env "${env[@]}" "${PIN_NODE[@]}" "$NODE_BIN" >"$OUT/node-$scenario-$broker-$round.log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$node_port/ready" >/dev/null && break
        sleep 0.1
    done
    local before=() scripts_before=()
    for port in "${ports[@]}"; do
        redis-cli -p "$port" config resetstat >/dev/null
        before+=("$(redis_cpu "$port")")
    done
    local args=(--url "http://127.0.0.1:$node_port" --users 100 --duration "$DURATION" --json)
    if [ "$scenario" = batch ]; then
        args+=(--batch 100 --publishers 4)
    else
        args+=(--publishers 32)
    fi
    "${PIN_LOADGEN[@]}" "$LOADGEN" "$scenario" "${args[@]}" \
        >"$OUT/loadgen-$scenario-$broker-$round.json" 2>"$OUT/loadgen-$scenario-$broker-$round.err"
    local shard_fields="" n=0
    for port in "${ports[@]}"; do
        local cpu script keys
        cpu="$(awk -v a="$(redis_cpu "$port")" -v b="${before[$n]}" 'BEGIN { printf "%.4f", a - b }')"
        script="$(redis_script_usec "$port")"
        keys="$(redis-cli -p "$port" dbsize)"
        shard_fields="$shard_fields${shard_fields:+,}{\"cpu_s\":$cpu,\"script_usec\":${script:-0},\"keys\":$keys}"
        n=$((n + 1))
    done
    python3 - "$OUT/loadgen-$scenario-$broker-$round.json" "$scenario" "$broker" "$round" \
        "[$shard_fields]" >>"$RUNS" <<'EOF'
import json, sys
path, scenario, broker, round_, shards = sys.argv[1:]
result = json.load(open(path))
print(json.dumps({"scenario": scenario, "broker": broker, "round": int(round_),
                  "delivered": result["delivered_frames"], "per_s": result["delivered_per_s"],
                  "loss": result["loss"], "duplicates": result["duplicates"],
                  "shards": json.loads(shards)}))
EOF
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=""
    for pid in "${REDIS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    REDIS_PIDS=()
    echo "bench-shards: $(tail -n 1 "$RUNS")" >&2
}

BROKERS=(${BENCH_BROKERS:-memory redis-1 redis-2 cluster-3})
for round in $(seq "$ROUNDS"); do
    for scenario in push batch; do
        # Rotate the order each round, so no broker always runs first.
        for i in "${!BROKERS[@]}"; do
            run "$scenario" "${BROKERS[$(((i + round) % ${#BROKERS[@]}))]}" "$round"
        done
    done
done

python3 - "$RUNS" <<'EOF' | tee "$OUT/table.md"
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def med(values):
    return statistics.median(values) if values else float("nan")
print("| scenario | broker | delivered/s (median) | Redis CPU µs/event (total) | script µs/event (total) | per shard: CPU share · key share | loss · dup |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for scenario in ("push", "batch"):
    for broker in ("memory", "redis-1", "redis-1-wait", "redis-2", "cluster-3"):
        rs = [r for r in runs if r["scenario"] == scenario and r["broker"] == broker]
        if not rs:
            continue
        rate = med([r["per_s"] for r in rs])
        loss = sum(r["loss"] for r in rs)
        dup = sum(r["duplicates"] for r in rs)
        if broker == "memory":
            print(f"| {scenario} | memory | {rate:,.0f} | — | — | — | {loss} · {dup} |")
            continue
        cpu = med([sum(s["cpu_s"] for s in r["shards"]) * 1e6 / r["delivered"] for r in rs])
        script = med([sum(s["script_usec"] for s in r["shards"]) / r["delivered"] for r in rs])
        shares = []
        n = len(rs[0]["shards"])
        for i in range(n):
            cpu_share = med([r["shards"][i]["cpu_s"] / sum(s["cpu_s"] for s in r["shards"]) for r in rs])
            key_share = med([r["shards"][i]["keys"] / max(1, sum(s["keys"] for s in r["shards"])) for r in rs])
            shares.append(f"{cpu_share:.0%} · {key_share:.0%}")
        print(f"| {scenario} | {broker} | {rate:,.0f} | {cpu:.1f} | {script:.1f} | {' / '.join(shares)} | {loss} · {dup} |")
EOF
echo "bench-shards: results in $OUT" >&2
