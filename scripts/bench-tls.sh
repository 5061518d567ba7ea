#!/usr/bin/env bash
# What TLS and HTTP/2 cost: single pushes to 100 users (one WebSocket each) over plaintext
# (HTTP/1.1 publishers, ws://), TLS with HTTP/1.1 publishers (wss://) and TLS with HTTP/2
# publishers (one connection per publisher), in rotating rounds on a fresh node each; then the
# server's memory per idle WebSocket, plaintext against TLS. The table gives medians and each
# mode's ratio to plaintext measured in the same rounds.
#
#   scripts/bench-tls.sh                                  # 3 rounds of 5 s per mode, 2000 idle
#   BENCH_ROUNDS=5 BENCH_DURATION=10 BENCH_IDLE=5000 scripts/bench-tls.sh
#
# Loopback only; the certificate is a throwaway self-signed one (openssl, P-256). The node is
# pinned to CPU 0 and loadgen to CPU 1 when the machine has two or more. Results:
# bench-results/tls-<UTC stamp>/ (runs.jsonl, and the table printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-5}"
IDLE="${BENCH_IDLE:-2000}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$PWD/bench-results/tls-$STAMP"
mkdir -p "$OUT"
RUNS="$OUT/runs.jsonl"
PIN_NODE=() PIN_LOADGEN=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_NODE=(taskset -c 0) PIN_LOADGEN=(taskset -c 1)
fi
for tool in curl python3 openssl; do
    command -v "$tool" >/dev/null || { echo "bench-tls: $tool is needed" >&2; exit 1; }
done
cargo build --release --workspace --quiet
NODE_BIN=target/release/websocket-sse-server
LOADGEN=target/release/loadgen
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE \
    -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_node <tls: yes|no> <log>: starts a fresh node; sets NODE_PID and NODE_PORT.
start_node() {
    local tls="$1" log="$2" env
    NODE_PORT="$(free_port)"
    env=(LOG_LEVEL=warning HOST=127.0.0.1 "PORT=$NODE_PORT")
    if [ "$tls" = yes ]; then
        env+=("TLS_CERT_FILE=$OUT/cert.pem" "TLS_KEY_FILE=$OUT/key.pem")
    fi
    env "${env[@]}" "${PIN_NODE[@]}" "$NODE_BIN" >"$log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 100); do
        curl -sfk "$( [ "$tls" = yes ] && echo https || echo http )://127.0.0.1:$NODE_PORT/ready" \
            >/dev/null && return
        sleep 0.1
    done
    echo "bench-tls: the node did not start ($log)" >&2
    exit 1
}

stop_node() {
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
}
trap stop_node EXIT

# push_run <mode> <round>
push_run() {
    local mode="$1" round="$2" args
    case "$mode" in
        plain) start_node no "$OUT/node-$mode-$round.log"
               args=(--url "http://127.0.0.1:$NODE_PORT") ;;
        tls-h1) start_node yes "$OUT/node-$mode-$round.log"
                args=(--url "https://127.0.0.1:$NODE_PORT" --tls-ca "$OUT/cert.pem") ;;
        tls-h2) start_node yes "$OUT/node-$mode-$round.log"
                args=(--url "https://127.0.0.1:$NODE_PORT" --tls-ca "$OUT/cert.pem" --http2) ;;
    esac
    "${PIN_LOADGEN[@]}" "$LOADGEN" push "${args[@]}" --users 100 --publishers 32 \
        --duration "$DURATION" --server-pid "$NODE_PID" --json \
        >"$OUT/loadgen-$mode-$round.json" 2>"$OUT/loadgen-$mode-$round.err"
    stop_node
    python3 -c '
import json, sys
path, mode, round_ = sys.argv[1:]
result = json.load(open(path))
cpu = result.get("cpu") or {}
print(json.dumps({"kind": "push", "mode": mode, "round": int(round_),
                  "per_s": result["delivered_per_s"],
                  "server_us": (cpu.get("server_s_per_million_deliveries") or 0),
                  "p50_ms": result["latency_ms"]["p50"], "p99_ms": result["latency_ms"]["p99"],
                  "loss": result["loss"], "duplicates": result["duplicates"]}))
' "$OUT/loadgen-$mode-$round.json" "$mode" "$round" >>"$RUNS"
    echo "bench-tls: $(tail -n 1 "$RUNS")" >&2
}

# idle_run <mode> <round>
idle_run() {
    local mode="$1" round="$2" args
    if [ "$mode" = plain ]; then
        start_node no "$OUT/node-idle-$mode-$round.log"
        args=(--url "http://127.0.0.1:$NODE_PORT")
    else
        start_node yes "$OUT/node-idle-$mode-$round.log"
        args=(--url "https://127.0.0.1:$NODE_PORT" --tls-ca "$OUT/cert.pem")
    fi
    "${PIN_LOADGEN[@]}" "$LOADGEN" idle "${args[@]}" --connections "$IDLE" \
        --server-pid "$NODE_PID" --json \
        >"$OUT/idle-$mode-$round.json" 2>"$OUT/idle-$mode-$round.err"
    stop_node
    python3 -c '
import json, sys
path, mode, round_ = sys.argv[1:]
result = json.load(open(path))
print(json.dumps({"kind": "idle", "mode": mode, "round": int(round_),
                  "bytes_per_connection": result["server_rss"]["bytes_per_connection"],
                  "handshakes_per_s": result["handshakes_per_s"]}))
' "$OUT/idle-$mode-$round.json" "$mode" "$round" >>"$RUNS"
    echo "bench-tls: $(tail -n 1 "$RUNS")" >&2
}

MODES=(plain tls-h1 tls-h2)
for round in $(seq "$ROUNDS"); do
    # Rotate the order each round, so no mode always runs first.
    for i in "${!MODES[@]}"; do
        push_run "${MODES[$(((i + round) % ${#MODES[@]}))]}" "$round"
    done
    idle_run plain "$round"
    idle_run tls "$round"
done

python3 -c '
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
med = statistics.median
push = [r for r in runs if r["kind"] == "push"]
base = med([r["per_s"] for r in push if r["mode"] == "plain"])
base_cpu = med([r["server_us"] for r in push if r["mode"] == "plain"])
print("| publishers, receivers | deliveries/s (median) | vs plaintext | server CPU µs/delivery | vs plaintext | p50 ms | p99 ms | loss · dup |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
names = {"plain": "HTTP/1.1, ws://", "tls-h1": "TLS HTTP/1.1, wss://", "tls-h2": "TLS HTTP/2, wss://"}
for mode in ("plain", "tls-h1", "tls-h2"):
    rs = [r for r in push if r["mode"] == mode]
    rate, cpu = med([r["per_s"] for r in rs]), med([r["server_us"] for r in rs])
    p50, p99 = med([r["p50_ms"] for r in rs]), med([r["p99_ms"] for r in rs])
    loss, dup = sum(r["loss"] for r in rs), sum(r["duplicates"] for r in rs)
    print(f"| {names[mode]} | {rate:,.0f} | {rate / base:.2f}x | {cpu:.1f} | {cpu / base_cpu:.2f}x | {p50:.2f} | {p99:.2f} | {loss} · {dup} |")
idle = [r for r in runs if r["kind"] == "idle"]
plain = med([r["bytes_per_connection"] for r in idle if r["mode"] == "plain"])
tls = med([r["bytes_per_connection"] for r in idle if r["mode"] == "tls"])
hs_plain = med([r["handshakes_per_s"] for r in idle if r["mode"] == "plain"])
hs_tls = med([r["handshakes_per_s"] for r in idle if r["mode"] == "tls"])
print()
print("| idle WebSocket | server RSS per connection (median) | handshakes/s |")
print("| --- | --- | --- |")
print(f"| ws:// | {plain / 1024:.1f} KiB | {hs_plain:,.0f} |")
print(f"| wss:// | {tls / 1024:.1f} KiB ({tls / plain:.2f}x) | {hs_tls:,.0f} |")
' "$RUNS" | tee "$OUT/table.md"
echo "bench-tls: results in $OUT" >&2
