#!/usr/bin/env bash
# What webhooks and acknowledgements cost the push path: single pushes to 100 users (one
# WebSocket each) with webhooks off, with webhooks on (a receiver on loopback), and with
# `"ack": true` on every push and every client acknowledging every event, in alternating rounds
# on a fresh node each. Per run: deliveries per second and the push-to-client latency; the table
# gives medians and each mode's ratio to "off" measured in the same rounds.
#
#   scripts/bench-webhooks.sh                     # memory broker, 3 rounds of 5 s per mode
#   BENCH_ROUNDS=5 BENCH_DURATION=10 scripts/bench-webhooks.sh
#   BENCH_BROKER=redis scripts/bench-webhooks.sh  # one throwaway redis-server (acks cross it)
#
# Loopback only. The node is pinned to CPU 0 and loadgen to CPU 1 when the machine has two or
# more; the receiver (Python's http.server) is not pinned. CLIENT_MESSAGE_RATE=0 in every mode
# (one acknowledgement per event is beyond the default rate). Results:
# bench-results/webhooks-<UTC stamp>/ (runs.jsonl, and the table printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-5}"
BROKER="${BENCH_BROKER:-memory}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$PWD/bench-results/webhooks-$STAMP"
mkdir -p "$OUT"
RUNS="$OUT/runs.jsonl"
PIN_NODE=() PIN_LOADGEN=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_NODE=(taskset -c 0) PIN_LOADGEN=(taskset -c 1)
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "bench-webhooks: $tool is needed" >&2; exit 1; }
done
cargo build --release --workspace --quiet
NODE_BIN=target/release/websocket-sse-server
LOADGEN=target/release/loadgen
SECRET="whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The receiver: answers every POST with 204 and logs each webhook's type.
RECEIVER_PORT="$(free_port)"
python3 -c '
import http.server, json, sys
port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        log.write(json.loads(body)["type"] + "\n")
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
' "$RECEIVER_PORT" "$OUT/received.log" &
PIDS+=($!)

REDIS_URL=""
if [ "$BROKER" = redis ]; then
    command -v redis-server >/dev/null || { echo "bench-webhooks: redis-server is needed" >&2; exit 1; }
    REDIS_PORT="$(free_port)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$OUT" --logfile "$OUT/redis.log" >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.05
    done
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi

# run <mode> <round>: one run on a fresh node.
run() {
    local mode="$1" round="$2" node_port env args metrics node_pid
    node_port="$(free_port)"
    env=(LOG_LEVEL=warning HOST=127.0.0.1 "PORT=$node_port" CLIENT_MESSAGE_RATE=0)
    if [ -n "$REDIS_URL" ]; then
        env+=(BROKER=redis "REDIS_URL=$REDIS_URL" "REDIS_KEY_PREFIX=bench-$mode-$round:")
    fi
    if [ "$mode" != off ]; then
        env+=("WEBHOOK_URL=http://127.0.0.1:$RECEIVER_PORT/hooks" "WEBHOOK_SECRET=$SECRET")
    fi
    env "${env[@]}" "${PIN_NODE[@]}" "$NODE_BIN" >"$OUT/node-$mode-$round.log" 2>&1 &
    node_pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$node_port/ready" >/dev/null && break
        sleep 0.1
    done
    args=(--url "http://127.0.0.1:$node_port" --users 100 --publishers 32 --duration "$DURATION"
        --server-pid "$node_pid" --json)
    if [ "$mode" = ack ]; then args+=(--ack); fi
    "${PIN_LOADGEN[@]}" "$LOADGEN" push "${args[@]}" \
        >"$OUT/loadgen-$mode-$round.json" 2>"$OUT/loadgen-$mode-$round.err"
    sleep 0.5
    metrics="$(curl -sf "http://127.0.0.1:$node_port/metrics")"
    kill "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
    python3 -c '
import json, sys
path, mode, round_, metrics = sys.argv[1:]
result, metrics = json.load(open(path)), json.loads(metrics)
cpu = result.get("cpu") or {}
print(json.dumps({"mode": mode, "round": int(round_), "per_s": result["delivered_per_s"],
                  "server_us": (cpu.get("server_s_per_million_deliveries") or 0),
                  "loadgen_cores": cpu.get("loadgen_cores"),
                  "p50_ms": result["latency_ms"]["p50"], "p99_ms": result["latency_ms"]["p99"],
                  "loss": result["loss"], "duplicates": result["duplicates"],
                  "acked": metrics["acks"]["acked"], "pending": metrics["acks"]["pending"],
                  "webhooks_sent": metrics["webhooks"]["sent"]}))
' "$OUT/loadgen-$mode-$round.json" "$mode" "$round" "$metrics" >>"$RUNS"
    echo "bench-webhooks: $(tail -n 1 "$RUNS")" >&2
}

MODES=(off webhooks ack)
for round in $(seq "$ROUNDS"); do
    # Rotate the order each round, so no mode always runs first.
    for i in "${!MODES[@]}"; do
        run "${MODES[$(((i + round) % ${#MODES[@]}))]}" "$round"
    done
done

python3 -c '
import json, statistics, sys
runs, broker = [json.loads(line) for line in open(sys.argv[1])], sys.argv[2]
med = statistics.median
base = med([r["per_s"] for r in runs if r["mode"] == "off"])
print(f"broker: {broker}")
print("| mode | deliveries/s (median) | vs off | server CPU µs/delivery | loadgen cores | p50 ms | p99 ms | acked (pending at the end) | webhooks sent | loss · dup |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for mode in ("off", "webhooks", "ack"):
    rs = [r for r in runs if r["mode"] == mode]
    rate = med([r["per_s"] for r in rs])
    cpu = med([r["server_us"] for r in rs])
    cores = med([r["loadgen_cores"] or 0 for r in rs])
    p50, p99 = med([r["p50_ms"] for r in rs]), med([r["p99_ms"] for r in rs])
    acked, pending = sum(r["acked"] for r in rs), sum(r["pending"] for r in rs)
    sent = sum(r["webhooks_sent"] for r in rs)
    loss, dup = sum(r["loss"] for r in rs), sum(r["duplicates"] for r in rs)
    print(f"| {mode} | {rate:,.0f} | {rate / base:.2f}x | {cpu:.1f} | {cores:.2f} | {p50:.2f} | {p99:.2f} | {acked} ({pending}) | {sent} | {loss} · {dup} |")
' "$RUNS" "$BROKER" | tee "$OUT/table.md"
echo "bench-webhooks: results in $OUT" >&2
