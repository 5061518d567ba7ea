#!/usr/bin/env bash
# Benchmark harness: runs loadgen's scenarios against this server and, when installed, against the
# reference peers (FastAPI seed, Pushpin, Sockudo) in the same run, then writes every result to
# bench-results/<UTC timestamp>/results.json and prints one markdown table.
#
#   scripts/bench.sh            full run: release build, 10 s per scenario, every installed target
#   scripts/bench.sh --quick    the same with ~2 s per scenario
#   scripts/bench.sh --smoke    CI: debug build, ours only, a 1 s push, 200 idle connections,
#                               1 s of churn with 20 workers and a 200 users × 20 events history
#                               fill with its replay check; fails on any loss, duplicate or
#                               misrouted frame, failed connection, leaked connection, or history
#                               event not stored or not replayed exactly
#   scripts/bench.sh --targets "ours pushpin"   only these targets
#
# Each server is pinned to CPU 0 and loadgen to CPU 1 (taskset), so they do not compete. A
# fresh server is started for the idle scenario, another for churn and (ours) another for
# history, so that their RSS baselines are clean. Ours keeps per-user history by default
# (HISTORY_SIZE=100); to show what that costs, ours is started once more with HISTORY_SIZE=0 for
# the same closed-loop push run (push-closed-nohistory; not in --smoke). The history scenario
# (ours only) stores BENCH_HISTORY_USERS × BENCH_HISTORY_EVENTS events of 256 B for offline users
# and reports the server's RSS per stored event and the fill rate, then checks that 50 sampled
# users resuming from <epoch>:0 get exactly their events, in order.
#
# Environment (all optional):
#   BENCH_DURATION=10            seconds per scenario (--quick: 2)
#   BENCH_IDLE_CONNECTIONS=10000 connections in the idle scenario (--smoke: 200)
#   BENCH_FANOUT_CONNECTIONS=1000, BENCH_FANOUT_RATE=1000   fanout: sockets of one user, pushes/s
#   BENCH_CHURN_CONCURRENCY=100  churn: workers opening and closing connections (--smoke: 20)
#   BENCH_HISTORY_USERS=10000, BENCH_HISTORY_EVENTS=100   history: offline users, events per user
#                                (--smoke: 200 × 20); the server runs with its default
#                                HISTORY_SIZE (100) and HISTORY_MAX_USERS (10000), which must
#                                allow them
#   BENCH_OPEN_RATE=N            open-loop push rate for every target (default: half of that
#                                target's closed-loop delivered/s, measured just before)
#   BENCH_OUT=DIR                where results go (default bench-results/<UTC timestamp>)
#   BENCH_PORT_OURS=18080 BENCH_PORT_FASTAPI=18090 BENCH_PORT_PUSHPIN=18000 (and +1, +2)
#   BENCH_PORT_SOCKUDO=18300
#   PEERS_DIR=/work/shared/peers   the peers' scripts (only read, never written)
#   PEER_VENV=~/.cache/websocket-sse-peers/fastapi_seed    the FastAPI seed's virtualenv
#   SOCKUDO_BIN=~/.cache/websocket-sse-peers/sockudo/bin/sockudo
#
# Exit status: 0 when every run was clean, 1 when any run failed or a server did not start.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODE=full
TARGETS="ours fastapi pushpin sockudo"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --smoke) MODE=smoke ;;
        --targets) shift; TARGETS="${1:?--targets needs a list}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

case "$MODE" in
    full) DURATION="${BENCH_DURATION:-10}"; IDLE_CONNS="${BENCH_IDLE_CONNECTIONS:-10000}" ;;
    quick) DURATION="${BENCH_DURATION:-2}"; IDLE_CONNS="${BENCH_IDLE_CONNECTIONS:-10000}" ;;
    smoke) DURATION=1; IDLE_CONNS=200; TARGETS=ours ;;
esac
if [ "$MODE" = smoke ]; then
    CHURN_CONC=20; HISTORY_USERS=200; HISTORY_EVENTS=20
else
    CHURN_CONC="${BENCH_CHURN_CONCURRENCY:-100}"
    HISTORY_USERS="${BENCH_HISTORY_USERS:-10000}"; HISTORY_EVENTS="${BENCH_HISTORY_EVENTS:-100}"
fi
FANOUT_CONNS="${BENCH_FANOUT_CONNECTIONS:-1000}"
FANOUT_RATE="${BENCH_FANOUT_RATE:-1000}"
PORT_OURS="${BENCH_PORT_OURS:-18080}"
PORT_FASTAPI="${BENCH_PORT_FASTAPI:-18090}"
PORT_PUSHPIN="${BENCH_PORT_PUSHPIN:-18000}"
PORT_SOCKUDO="${BENCH_PORT_SOCKUDO:-18300}"
PEERS_DIR="${PEERS_DIR:-/work/shared/peers}"
FASTAPI_VENV="${PEER_VENV:-${HOME:-/root}/.cache/websocket-sse-peers/fastapi_seed}"
SOCKUDO_BIN="${SOCKUDO_BIN:-${HOME:-/root}/.cache/websocket-sse-peers/sockudo/bin/sockudo}"
READY_TIMEOUT=30   # seconds a server may take to answer its readiness probe
STOP_TIMEOUT=10    # seconds a server may take to exit after SIGTERM

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${BENCH_OUT:-$ROOT/bench-results/$STAMP}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RUNS="$OUT/runs.jsonl"   # one line per loadgen run, assembled into results.json at the end
: > "$RUNS"

log() { printf '== %s\n' "$*" >&2; }

# --- pinning -------------------------------------------------------------------------------------
if command -v taskset >/dev/null && [ "$(nproc 2>/dev/null || echo 1)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_LOADGEN=(taskset -c 1)
else
    log "taskset or a second CPU is missing: server and loadgen run unpinned"
    PIN_SERVER=()
    PIN_LOADGEN=()
fi

# --- process bookkeeping: everything started here is stopped on exit ------------------------------
STARTED=()   # pids of servers (process-tree roots) still running
SERVER_PID=""
LOADGEN_PID=""   # the running loadgen's `timeout` wrapper, if any

# The pids of $1 and all its descendants.
tree_pids() {
    local pids="$1" more
    for _ in 1 2 3 4 5 6 7 8; do
        more="$(ps -e -o pid=,ppid= | awk -v set=" $pids " '
            index(set, " " $2 " ") && !index(set, " " $1 " ") { printf " %s", $1 }')"
        [ -z "$more" ] && break
        pids="$pids$more"
    done
    echo "$pids"
}

# SIGTERM a server's process tree root, wait up to STOP_TIMEOUT, then SIGKILL what is left.
stop_tree() {
    local root="$1" pids
    pids="$(tree_pids "$root")"
    kill -TERM "$root" 2>/dev/null || true
    for _ in $(seq $((STOP_TIMEOUT * 10))); do
        kill -0 "$root" 2>/dev/null || break
        sleep 0.1
    done
    # Anything of the tree still alive (the root ignored SIGTERM, or children were orphaned).
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    wait "$root" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$LOADGEN_PID" ]; then
        kill -TERM "$LOADGEN_PID" 2>/dev/null || true   # timeout passes it on to loadgen
        wait "$LOADGEN_PID" 2>/dev/null || true
    fi
    for pid in "${STARTED[@]}"; do
        [ -n "$pid" ] && stop_tree "$pid"
    done
    # A run that stopped before measuring anything leaves no empty results directory behind.
    if [ ! -e "$OUT/results.json" ] && [ ! -s "$RUNS" ]; then
        rm -f "$RUNS"
        rmdir "$OUT" 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- ports and readiness ------------------------------------------------------------------------
port_busy() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# HTTP GET on loopback; true when the status is 200.
http_ok() {
    timeout 2 bash -c '
        exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "'"$2"'" >&3
        IFS= read -r status <&3
        case "$status" in *" 200 "*) exit 0 ;; *) exit 1 ;; esac' 2>/dev/null
}

ports_of() {
    case "$1" in
        ours) echo "$PORT_OURS" ;;
        fastapi) echo "$PORT_FASTAPI" ;;
        pushpin) echo "$PORT_PUSHPIN $((PORT_PUSHPIN + 1)) $((PORT_PUSHPIN + 2))" ;;
        sockudo) echo "$PORT_SOCKUDO" ;;
    esac
}

# Why a target cannot run (empty when it can).
missing() {
    case "$1" in
        ours) ;;
        fastapi)
            [ -x "$PEERS_DIR/fastapi_seed/run.sh" ] || { echo "no $PEERS_DIR/fastapi_seed/run.sh"; return; }
            [ -x "$FASTAPI_VENV/bin/python" ] || echo "no virtualenv at $FASTAPI_VENV (run fastapi_seed/setup.sh with PEER_VENV)" ;;
        pushpin)
            [ -x "$PEERS_DIR/pushpin/run.sh" ] || { echo "no $PEERS_DIR/pushpin/run.sh"; return; }
            for bin in pushpin condure zurl python3; do
                command -v "$bin" >/dev/null || { echo "'$bin' not installed (run pushpin/setup.sh)"; return; }
            done ;;
        sockudo)
            [ -x "$PEERS_DIR/sockudo/run.sh" ] || { echo "no $PEERS_DIR/sockudo/run.sh"; return; }
            [ -x "$SOCKUDO_BIN" ] || echo "no binary at $SOCKUDO_BIN (set SOCKUDO_BIN)" ;;
        *) echo "unknown target" ;;
    esac
}

# start_server <target> [VAR=value...]: starts the target pinned to CPU 0 (log in
# $OUT/<target>-server-<n>.log), with the extra settings in its environment; sets SERVER_PID.
SERVER_STARTS=0
start_server() {
    local target="$1" logf ready_port ready_path
    shift
    local settings=("$@")
    SERVER_STARTS=$((SERVER_STARTS + 1))
    logf="$OUT/$target-server-$SERVER_STARTS.log"
    for port in $(ports_of "$target"); do
        if port_busy "$port"; then
            log "port $port is busy; not starting $target"
            return 1
        fi
    done
    # Peers run in the results directory so that no stray .env file is picked up.
    case "$target" in
        ours)
            env LOG_LEVEL=warning MAX_CONNECTIONS_PER_USER=1000 "${settings[@]}" \
                "${PIN_SERVER[@]}" "$SERVER_BIN" --host 127.0.0.1 --port "$PORT_OURS" >"$logf" 2>&1 &
            ready_port=$PORT_OURS ready_path=/health ;;
        fastapi)
            (cd "$OUT" && HOST=127.0.0.1 PORT="$PORT_FASTAPI" LOG_LEVEL=warning PEER_VENV="$FASTAPI_VENV" \
                exec env "${settings[@]}" "${PIN_SERVER[@]}" "$PEERS_DIR/fastapi_seed/run.sh") >"$logf" 2>&1 &
            ready_port=$PORT_FASTAPI ready_path=/health ;;
        pushpin)
            (cd "$OUT" && HOST=127.0.0.1 PORT="$PORT_PUSHPIN" PUBLISH_PORT=$((PORT_PUSHPIN + 1)) \
                BACKEND_PORT=$((PORT_PUSHPIN + 2)) LOG_LEVEL=warning \
                exec env "${settings[@]}" "${PIN_SERVER[@]}" "$PEERS_DIR/pushpin/run.sh") >"$logf" 2>&1 &
            ready_port=$PORT_PUSHPIN ready_path=/health ;;
        sockudo)
            (cd "$OUT" && PORT="$PORT_SOCKUDO" LOG_LEVEL=warn SOCKUDO_BIN="$SOCKUDO_BIN" \
                exec env "${settings[@]}" "${PIN_SERVER[@]}" "$PEERS_DIR/sockudo/run.sh") >"$logf" 2>&1 &
            ready_port=$PORT_SOCKUDO ready_path=/up ;;
    esac
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    for _ in $(seq $((READY_TIMEOUT * 10))); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$target exited during startup; log: $logf"
            tail -n 20 "$logf" >&2 || true
            return 1
        fi
        if http_ok "$ready_port" "$ready_path"; then
            # Pushpin's run.sh prints its banner once the publish port answers as well.
            if [ "$target" != pushpin ] || grep -q "ready" "$logf"; then
                return 0
            fi
        fi
        sleep 0.1
    done
    log "$target not ready after ${READY_TIMEOUT}s; log: $logf"
    return 1
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    stop_tree "$SERVER_PID"
    local kept=()
    for pid in "${STARTED[@]}"; do [ "$pid" != "$SERVER_PID" ] && kept+=("$pid"); done
    STARTED=("${kept[@]}")
    SERVER_PID=""
}

# --- loadgen runs ---------------------------------------------------------------------------------
FAILED=0
LAST_JSON=""

# run_loadgen <target> <name> <scenario> [loadgen args...]: one pinned loadgen run, recorded.
run_loadgen() {
    local target="$1" name="$2" scenario="$3" url status=0
    shift 3
    case "$target" in
        ours) url="http://127.0.0.1:$PORT_OURS" ;;
        fastapi) url="http://127.0.0.1:$PORT_FASTAPI" ;;
        pushpin) url="http://127.0.0.1:$PORT_PUSHPIN" ;;
        sockudo) url="http://127.0.0.1:$PORT_SOCKUDO" ;;
    esac
    log "$target: $name ($scenario $*)"
    # In the background and waited for, so that a signal to this script is handled at once.
    timeout --kill-after=10 $((DURATION + 240)) \
        "${PIN_LOADGEN[@]}" "$LOADGEN_BIN" "$scenario" --target "$target" --url "$url" \
        --server-pid "$SERVER_PID" --json "$@" \
        >"$OUT/$target-$name.json" 2>"$OUT/$target-$name.log" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || status=$?
    LOADGEN_PID=""
    LAST_JSON="$(head -c 1000000 "$OUT/$target-$name.json")"
    [ -n "$LAST_JSON" ] || LAST_JSON=null
    printf '{"target":"%s","name":"%s","exit_status":%d,"result":%s}\n' \
        "$target" "$name" "$status" "$LAST_JSON" >>"$RUNS"
    if [ "$status" -ne 0 ]; then
        # A peer losing messages (loadgen exit 2) is a measured result, shown in the table; only
        # our own failures and harness errors fail the run.
        if [ "$target" = ours ] || [ "$status" -ne 2 ]; then FAILED=1; fi
        log "$target: $name FAILED (exit $status); see $OUT/$target-$name.log"
        grep -E "RESULT|error|WARNING" "$OUT/$target-$name.log" | tail -n 5 >&2 || true
    fi
    return 0
}

# A top-level number from the last run's JSON (empty if absent).
json_number() {
    printf '%s' "$LAST_JSON" | sed -n "s/.*\"$1\":\([0-9.][0-9.]*\).*/\1/p" | head -n 1
}

# run_push_closed <target> <name>: the closed-loop single-push run (100 users, 32 publishers).
run_push_closed() {
    run_loadgen "$1" "$2" push --users 100 --publishers 32 --payload-bytes 256 \
        --duration "$DURATION"
}

bench_target() {
    local target="$1" rate
    if ! start_server "$target"; then FAILED=1; stop_server; return; fi
    run_push_closed "$target" push-closed
    if [ "$MODE" = smoke ]; then stop_server; return; fi
    rate="${BENCH_OPEN_RATE:-$(json_number delivered_per_s | awk '{ printf "%d", $1 / 2 }')}"
    if [ -n "$rate" ] && [ "$rate" -ge 1 ]; then
        run_loadgen "$target" push-open push --users 100 --publishers 32 --payload-bytes 256 \
            --duration "$DURATION" --rate "$rate"
    else
        log "$target: push-open skipped: no closed-loop rate to halve"
    fi
    run_loadgen "$target" batch-100 batch --users 100 --batch 100 --publishers 32 \
        --payload-bytes 256 --duration "$DURATION"
    if [ "$target" = ours ]; then
        run_loadgen "$target" batch-1000 batch --users 1000 --batch 1000 --publishers 4 \
            --payload-bytes 256 --duration "$DURATION"
    fi
    run_loadgen "$target" fanout fanout --connections "$FANOUT_CONNS" --rate "$FANOUT_RATE" \
        --publishers 4 --payload-bytes 256 --duration "$DURATION"
    stop_server
}

# Ours again with history off, for the same push-closed run: what keeping history costs.
bench_nohistory() {
    local target="$1"
    if ! start_server "$target" HISTORY_SIZE=0; then FAILED=1; stop_server; return; fi
    run_push_closed "$target" push-closed-nohistory
    stop_server
}

bench_idle() {
    local target="$1"
    if ! start_server "$target"; then FAILED=1; stop_server; return; fi
    sleep 1   # let the fresh server's RSS settle before the baseline is read
    run_loadgen "$target" idle idle --connections "$IDLE_CONNS"
    stop_server
}

bench_churn() {
    local target="$1"
    if ! start_server "$target"; then FAILED=1; stop_server; return; fi
    sleep 1   # as for idle: a settled RSS baseline on a fresh server
    run_loadgen "$target" churn churn --concurrency "$CHURN_CONC" --duration "$DURATION"
    stop_server
}

# Ours only: fill offline users' history on a fresh server (default history settings), RSS per
# stored event and fill rate, then the replay check on a sample of users.
bench_history() {
    local target="$1"
    if ! start_server "$target"; then FAILED=1; stop_server; return; fi
    sleep 1   # as for idle: a settled RSS baseline on a fresh server
    run_loadgen "$target" history history --users "$HISTORY_USERS" --events "$HISTORY_EVENTS" \
        --payload-bytes 256
    stop_server
}

# --- main -----------------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

RUN_TARGETS=()
for target in $TARGETS; do
    why="$(missing "$target")"
    if [ -n "$why" ]; then
        log "skipping $target: $why"
        continue
    fi
    RUN_TARGETS+=("$target")
done
[ "${#RUN_TARGETS[@]}" -gt 0 ] || { log "no target to run"; exit 1; }

busy=""
for target in "${RUN_TARGETS[@]}"; do
    for port in $(ports_of "$target"); do
        port_busy "$port" && busy="$busy $port"
    done
done
if [ -n "$busy" ]; then
    log "refusing to run: port(s)$busy already in use on 127.0.0.1 (set BENCH_PORT_* to move)"
    exit 1
fi

if [ "$MODE" = smoke ]; then
    log "building (debug)"
    cargo build -p websocket-sse-server -p loadgen
    PROFILE=debug
else
    log "building (release)"
    cargo build --release -p websocket-sse-server -p loadgen
    PROFILE=release
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="$TARGET_DIR/$PROFILE/websocket-sse-server"
LOADGEN_BIN="$TARGET_DIR/$PROFILE/loadgen"

log "targets: ${RUN_TARGETS[*]}; ${DURATION}s per scenario; results in $OUT"
for target in "${RUN_TARGETS[@]}"; do
    bench_target "$target"
    if [ "$target" = ours ] && [ "$MODE" != smoke ]; then bench_nohistory "$target"; fi
    bench_idle "$target"
    bench_churn "$target"
    if [ "$target" = ours ]; then bench_history "$target"; fi
done

# --- results --------------------------------------------------------------------------------------
{
    printf '{"started_utc":"%s","mode":"%s","duration_s":%s,"idle_connections":%s,' \
        "$STAMP" "$MODE" "$DURATION" "$IDLE_CONNS"
    printf '"churn_concurrency":%s,"history_users":%s,"history_events_per_user":%s,' \
        "$CHURN_CONC" "$HISTORY_USERS" "$HISTORY_EVENTS"
    printf '"git_commit":"%s","git_dirty":%s,"nproc":%s,"kernel":"%s","runs":[' \
        "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        "$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo true || echo false)" \
        "$(nproc 2>/dev/null || echo 0)" "$(uname -sr)"
    sep=""
    while IFS= read -r line; do printf '%s%s' "$sep" "$line"; sep=","; done <"$RUNS"
    printf ']}\n'
} >"$OUT/results.json"
rm -f "$RUNS"

if command -v python3 >/dev/null; then
    python3 - "$OUT/results.json" <<'PY' | tee "$OUT/table.md"
import json, sys

doc = json.load(open(sys.argv[1]))
targets, rows, cells = [], [], {}
for run in doc["runs"]:
    if run["target"] not in targets:
        targets.append(run["target"])
    if run["name"] not in rows:
        rows.append(run["name"])
    cells[(run["name"], run["target"])] = run
# History on vs off side by side.
if "push-closed-nohistory" in rows and "push-closed" in rows:
    rows.remove("push-closed-nohistory")
    rows.insert(rows.index("push-closed") + 1, "push-closed-nohistory")

def num(value, unit=""):
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value / 1000:.0f}k{unit}"
    if value >= 10_000:
        return f"{value / 1000:.1f}k{unit}"
    return f"{value:.0f}{unit}" if value >= 100 else f"{value:.3g}{unit}"

def ms(value):
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"

def cell(run):
    r = run.get("result")
    if not r:
        return f"failed (exit {run['exit_status']})"
    if r.get("scenario") == "idle":
        rss = r.get("server_rss", {}).get("bytes_per_connection")
        text = (f"{rss / 1024:.1f} KiB/conn · " if rss is not None else "") + \
            f"{num(r.get('handshakes_per_s'))} handshakes/s"
        failed = r.get("connections", {}).get("failed")
        if failed:
            text += f" · {failed} failed"
    elif r.get("scenario") == "history":
        growth = r.get("rss_growth_mib")
        per_event = r.get("bytes_per_stored_event")
        replay = r.get("replay") or {}
        text = (f"{num(r.get('stored_events'))} events stored · "
                f"RSS {'-' if growth is None else f'+{growth:.1f} MiB'} · "
                f"{'-' if per_event is None else f'{per_event:.0f}'} B/event · "
                f"fill {num((r.get('fill') or {}).get('events_per_s'))} events/s · "
                f"replay exact {replay.get('users_exact', '-')}/{replay.get('users_checked', '-')}")
    elif r.get("scenario") == "churn":
        lat = r.get("handshake_ms") or {}
        growth = (r.get("server_rss") or {}).get("growth_mib")
        failed = (r.get("failed_cycles") or {}).get("total")
        text = (f"{num(r.get('cycles_per_s'))} cycles/s · handshake p50 {ms(lat.get('p50'))} / "
                f"p99 {ms(lat.get('p99'))} ms · "
                f"RSS {'-' if growth is None else f'{round(growth, 1) + 0.0:+.1f} MiB'} · "
                f"{'-' if failed is None else failed} failed")
    else:
        lat = r.get("latency_ms") or {}
        cpu = (r.get("cpu") or {}).get("server_s_per_million_deliveries")
        text = (f"{num(r.get('delivered_per_s'))}/s · p50 {ms(lat.get('p50'))} / "
                f"p99 {ms(lat.get('p99'))} ms · "
                f"{'-' if cpu is None else f'{cpu:.3g}'} CPU-s/M · loss {r.get('loss')}")
        rate = (r.get("config") or {}).get("rate_msgs_per_s")
        if run["name"] == "push-open" and rate:
            text = f"@{num(rate)}/s: " + text
    if not r.get("ok", False) or run["exit_status"] != 0:
        text += " · FAILED"
    return text

print(f"\nResults: {sys.argv[1]} ({doc['mode']}, {doc['duration_s']} s per scenario)\n")
print("| scenario | " + " | ".join(targets) + " |")
print("| --- |" + " --- |" * len(targets))
for name in rows:
    print(f"| {name} | " + " | ".join(
        cell(cells[(name, t)]) if (name, t) in cells else "n/a" for t in targets) + " |")
print("\ndelivered/s · latency p50 / p99 (ms, end to end) · server CPU seconds per million "
      "deliveries · loss; idle: server RSS per connection · handshakes/s; churn: open+close "
      "cycles/s · WebSocket handshake latency (incl. subscribe) · server RSS growth after a 2 s "
      "settle · failed cycles; history: events stored for offline users (256 B each) · server "
      "RSS growth · bytes per stored event · fill rate · sampled users whose replay from "
      "<epoch>:0 was exactly their events in order; push-closed-nohistory: push-closed on a "
      "server started with HISTORY_SIZE=0")
on, off = cells.get(("push-closed", "ours")), cells.get(("push-closed-nohistory", "ours"))
if on and off and on.get("result") and off.get("result"):
    rate_on, rate_off = on["result"].get("delivered_per_s"), off["result"].get("delivered_per_s")
    if rate_on and rate_off:
        print(f"\nours push-closed, history on vs off: {num(rate_on)}/s vs {num(rate_off)}/s "
              f"({(rate_on / rate_off - 1) * 100:+.1f}% with history)")
PY
else
    log "python3 not found: no table; results in $OUT/results.json"
fi

if [ "$FAILED" -ne 0 ]; then
    log "some runs FAILED (see the logs in $OUT)"
    exit 1
fi
log "all runs clean; results in $OUT/results.json"
