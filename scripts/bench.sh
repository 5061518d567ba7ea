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
#                               event not stored or not replayed exactly; then one 1 s round of
#                               the cluster comparison (below), which needs Redis
#   scripts/bench.sh --targets "ours pushpin"   only these targets
#   scripts/bench.sh cluster    only the cluster comparison (below); with --quick or --smoke too
#   scripts/bench.sh payloads   only the large-payload cases (below); with --quick too (the same
#                               cases: they are bounded by their event count, not a duration);
#                               not part of --smoke
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
# Cluster comparison (`cluster`, and one short round in --smoke; not in the default run, as it
# needs Redis): the closed-loop push run (100 users, 32 publishers, 256 B) against two nodes
# started with BROKER=redis, loadgen's WebSockets on node B and its publishers on node A, so
# every delivery crosses Redis; and, in the same run with the same loadgen arguments, against one
# node with the memory broker. Both alternate (memory first in odd rounds, cluster first in even
# rounds), each run on fresh servers (and a fresh REDIS_KEY_PREFIX); the table reports medians.
# Then the same for open-loop pushes at BENCH_CLUSTER_RATE. Nodes (and a Redis started here) are
# pinned to CPU 0 like the single server, so both sides get one core. Redis: 127.0.0.1:6379 when
# it answers PING (keys under a unique prefix, deleted afterwards when redis-cli is there),
# otherwise a throwaway `redis-server --save '' --appendonly no` on a free port, stopped at the
# end. Redis's CPU comes from its INFO (all of Redis's work, so a shared Redis's other clients
# count too). --smoke fails when the cluster delivers nothing, loses, duplicates or misroutes.
#
# Large payloads (`payloads`; ours only, not in the default run): each case on a freshly started
# server, loadgen reading the server's RSS when idle (all users connected), its peak (sampled
# every 10 ms from the first request until 5 s after the last frame) and 5 s after the last frame,
# and checking that every online user got every event exactly once:
#   broadcast-512k-2000       one 512 KiB broadcast (POST /sse/broadcast) to 2,000 users online
#   user-ids-1m-1000-online   one 1 MiB push with user_ids of 1,000 users online
#                             (MAX_BODY_BYTES=4194304: the body is over the 1 MiB default)
#   user-ids-1m-1000-offline  the same with the users offline (history only)
#   broadcast-1k-10000        one 1 KiB broadcast to 10,000 users online (per-frame p99)
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
#   BENCH_CLUSTER_ROUNDS=5       cluster: rounds of (memory, cluster) runs (--quick: 3, --smoke: 1)
#   BENCH_CLUSTER_RATE=N         cluster: open-loop pushes/s for both brokers (default: half the
#                                cluster's median closed-loop delivered/s; no open loop in --smoke)
#   BENCH_REDIS=auto             cluster: `own` always starts a throwaway Redis (pinned to CPU 0
#                                with the nodes) instead of using 127.0.0.1:6379
#   BENCH_PORT_CLUSTER=18180     cluster: node A (node B: +1); BENCH_PORT_REDIS=18379 the first
#                                port tried for a throwaway Redis
#   BENCH_PRESENCE_LEASE=3       cluster: the nodes' PRESENCE_LEASE (a short lease lets node A see
#                                node B within a second of its start)
#
# Exit status: 0 when every run was clean, 1 when any run failed or a server did not start.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

MODE=full
TARGETS="ours fastapi pushpin sockudo"
CLUSTER_ONLY=0
PAYLOADS_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        cluster) CLUSTER_ONLY=1 ;;
        payloads) PAYLOADS_ONLY=1 ;;
        --quick) MODE=quick ;;
        --smoke) MODE=smoke ;;
        --targets) shift; TARGETS="${1:?--targets needs a list}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$PAYLOADS_ONLY" = 1 ] && { [ "$MODE" = smoke ] || [ "$CLUSTER_ONLY" = 1 ]; }; then
    echo "bench.sh: payloads runs alone, with or without --quick (not with --smoke or cluster)" >&2
    exit 2
fi

case "$MODE" in
    full) DURATION="${BENCH_DURATION:-10}"; IDLE_CONNS="${BENCH_IDLE_CONNECTIONS:-10000}" ;;
    quick) DURATION="${BENCH_DURATION:-2}"; IDLE_CONNS="${BENCH_IDLE_CONNECTIONS:-10000}" ;;
    smoke) DURATION=1; IDLE_CONNS=200; TARGETS=ours ;;
esac
case "$MODE" in
    full) CLUSTER_ROUNDS="${BENCH_CLUSTER_ROUNDS:-5}" ;;
    quick) CLUSTER_ROUNDS="${BENCH_CLUSTER_ROUNDS:-3}" ;;
    smoke) CLUSTER_ROUNDS=1 ;;
esac
# Whether this run includes the cluster comparison.
if [ "$CLUSTER_ONLY" = 1 ] || [ "$MODE" = smoke ]; then RUN_CLUSTER=1; else RUN_CLUSTER=0; fi
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
PORT_CLUSTER="${BENCH_PORT_CLUSTER:-18180}"   # node A; node B is +1
PORT_REDIS="${BENCH_PORT_REDIS:-18379}"       # first port tried for a throwaway Redis
PRESENCE_LEASE="${BENCH_PRESENCE_LEASE:-3}"
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
    # The cluster runs' keys in a shared Redis (defined with the cluster comparison below).
    if declare -F cleanup_redis_keys >/dev/null; then cleanup_redis_keys || true; fi
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
LAST_STATUS=0
# Set by the cluster comparison around its runs: where WebSockets connect and publishers POST
# (default: the target's port for both), and a function printing extra fields (`,"key":value…`)
# for the run's record, called once loadgen has finished.
RUN_URL=""
RUN_PUBLISH_URL=""
RUN_EXTRA_FN=""

# run_loadgen <target> <name> <scenario> [loadgen args...]: one pinned loadgen run, recorded.
run_loadgen() {
    local target="$1" name="$2" scenario="$3" url status=0 extra="" urls
    shift 3
    case "$target" in
        ours) url="http://127.0.0.1:$PORT_OURS" ;;
        fastapi) url="http://127.0.0.1:$PORT_FASTAPI" ;;
        pushpin) url="http://127.0.0.1:$PORT_PUSHPIN" ;;
        sockudo) url="http://127.0.0.1:$PORT_SOCKUDO" ;;
    esac
    urls=(--url "${RUN_URL:-$url}")
    [ -z "$RUN_PUBLISH_URL" ] || urls+=(--publish-url "$RUN_PUBLISH_URL")
    log "$target: $name ($scenario $*)"
    # In the background and waited for, so that a signal to this script is handled at once.
    timeout --kill-after=10 $((DURATION + 240)) \
        "${PIN_LOADGEN[@]}" "$LOADGEN_BIN" "$scenario" --target "$target" "${urls[@]}" \
        --server-pid "$SERVER_PID" --json "$@" \
        >"$OUT/$target-$name.json" 2>"$OUT/$target-$name.log" &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || status=$?
    LOADGEN_PID=""
    LAST_STATUS=$status
    LAST_JSON="$(head -c 1000000 "$OUT/$target-$name.json")"
    [ -n "$LAST_JSON" ] || LAST_JSON=null
    [ -z "$RUN_EXTRA_FN" ] || extra="$("$RUN_EXTRA_FN")"
    printf '{"target":"%s","name":"%s","exit_status":%d%s,"result":%s}\n' \
        "$target" "$name" "$status" "$extra" "$LAST_JSON" >>"$RUNS"
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

# --- large payloads -------------------------------------------------------------------------------
# payload_case <name> [VAR=value...] -- <loadgen scenario> [args...]: one case on a freshly started
# server (ours) with those settings.
payload_case() {
    local name="$1" settings=()
    shift
    while [ "$1" != -- ]; do settings+=("$1"); shift; done
    shift
    if ! start_server ours "${settings[@]}"; then FAILED=1; stop_server; return; fi
    sleep 1   # as for idle: a settled RSS before loadgen connects
    run_loadgen ours "$name" "$@"
    stop_server
}

bench_payloads() {
    payload_case broadcast-512k-2000 -- broadcast --users 2000 --payload-bytes 524288
    payload_case user-ids-1m-1000-online MAX_BODY_BYTES=4194304 -- \
        user-ids --users 1000 --payload-bytes 1048576
    payload_case user-ids-1m-1000-offline MAX_BODY_BYTES=4194304 -- \
        user-ids --users 1000 --payload-bytes 1048576 --offline
    payload_case broadcast-1k-10000 -- broadcast --users 10000 --payload-bytes 1024
}

# --- cluster comparison ---------------------------------------------------------------------------
REDIS_PORT=""        # the Redis the nodes use (127.0.0.1)
REDIS_DESC=""        # what it is, for the results
REDIS_PID=""         # a throwaway Redis started here (stopped on exit with the servers)
PREFIX_BASE="wssbench:$STAMP:$$:"   # every run's REDIS_KEY_PREFIX starts with this
CLUSTER_RUNS=0
REDIS_CPU_BEFORE=""
CLUSTER_RECORD=""    # the cluster fields of the current run's record (without redis_cpu_s)

# True when 127.0.0.1:$1 answers PING with +PONG (a Redis that needs a password does not).
redis_ping() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
        printf "PING\r\n" >&3
        IFS= read -r reply <&3
        case "$reply" in "+PONG"*) exit 0 ;; *) exit 1 ;; esac' 2>/dev/null
}

# Redis's own CPU seconds so far (used_cpu_user + used_cpu_sys from INFO cpu); empty if unknown.
redis_cpu_seconds() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$REDIS_PORT"' || exit 1
        printf "INFO cpu\r\n" >&3
        IFS= read -r header <&3
        len="${header#?}"; len="${len%?}"
        case "$len" in ""|*[!0-9]*) exit 1 ;; esac
        head -c "$len" <&3' 2>/dev/null |
        awk -F: '/^used_cpu_(user|sys):/ { s += $2; n++ } END { if (n == 2) printf "%.3f", s }' ||
        true
}

# Picks the Redis for the cluster runs: 127.0.0.1:6379 when it answers (unless BENCH_REDIS=own),
# otherwise a throwaway redis-server on the first free port from BENCH_PORT_REDIS, pinned to CPU
# 0 with the nodes. Fails (loudly) when there is neither.
setup_redis() {
    local port
    if [ "${BENCH_REDIS:-auto}" != own ] && redis_ping 6379; then
        REDIS_PORT=6379
        REDIS_DESC="existing 127.0.0.1:6379 ($(redis_version 6379))"
        log "cluster: using the Redis on 127.0.0.1:6379, keys under $PREFIX_BASE*"
        return 0
    fi
    if ! command -v redis-server >/dev/null; then
        log "cluster: no Redis answers on 127.0.0.1:6379 and redis-server is not installed" \
            "(Debian: apt-get install redis-server)"
        return 1
    fi
    for port in $(seq "$PORT_REDIS" $((PORT_REDIS + 20))); do
        port_busy "$port" || break
    done
    if port_busy "$port"; then
        log "cluster: no free port for Redis in $PORT_REDIS-$((PORT_REDIS + 20))"
        return 1
    fi
    # Not daemonized: a child of this script, stopped on exit like the servers.
    "${PIN_SERVER[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        >"$OUT/redis.log" 2>&1 &
    REDIS_PID=$!
    STARTED+=("$REDIS_PID")
    REDIS_PORT=$port
    for _ in $(seq 100); do
        redis_ping "$port" && break
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! redis_ping "$port"; then
        log "cluster: the throwaway redis-server on port $port did not answer PING; log: $OUT/redis.log"
        tail -n 20 "$OUT/redis.log" >&2 || true
        return 1
    fi
    REDIS_DESC="throwaway redis-server on 127.0.0.1:$port ($(redis_version "$port"), no persistence)"
    log "cluster: started $REDIS_DESC"
}

redis_version() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
        printf "INFO server\r\n" >&3
        IFS= read -r header <&3
        len="${header#?}"; len="${len%?}"
        case "$len" in ""|*[!0-9]*) exit 1 ;; esac
        head -c "$len" <&3' 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version:/Redis /p' || true
}

# Deletes this run's keys from a shared Redis (a throwaway one just goes away).
cleanup_redis_keys() {
    [ -n "$REDIS_PORT" ] && [ -z "$REDIS_PID" ] && [ "$CLUSTER_RUNS" -gt 0 ] || return 0
    if command -v redis-cli >/dev/null; then
        redis-cli -p "$REDIS_PORT" --scan --pattern "$PREFIX_BASE*" |
            xargs -r -d '\n' -n 500 redis-cli -p "$REDIS_PORT" UNLINK >/dev/null 2>&1 || true
    else
        log "cluster: redis-cli not installed: keys under $PREFIX_BASE* are left to expire"
    fi
}

# The /health "cluster"."nodes" count of the node on port $1 (empty before its first heartbeat).
cluster_nodes_seen() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
        printf "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' 2>/dev/null | grep -o '"nodes":[0-9]*' | head -n 1 | cut -d: -f2 || true
}

# start_cluster <key prefix>: node A (PORT_CLUSTER) and node B (+1) with BROKER=redis, both under
# one wrapper process (so loadgen's --server-pid sums the CPU of both), pinned to CPU 0; sets
# SERVER_PID to the wrapper. Ready when both answer /ready and node A counts 2 live nodes.
start_cluster() {
    local prefix="$1" port_a="$PORT_CLUSTER" port_b=$((PORT_CLUSTER + 1)) log_a log_b seen=""
    SERVER_STARTS=$((SERVER_STARTS + 1))
    log_a="$OUT/cluster-node-a-$SERVER_STARTS.log"
    log_b="$OUT/cluster-node-b-$SERVER_STARTS.log"
    for port in "$port_a" "$port_b"; do
        if port_busy "$port"; then
            log "port $port is busy; not starting the cluster"
            return 1
        fi
    done
    local settings=(LOG_LEVEL=warning MAX_CONNECTIONS_PER_USER=1000 BROKER=redis
        "REDIS_URL=redis://127.0.0.1:$REDIS_PORT" "REDIS_KEY_PREFIX=$prefix"
        "PRESENCE_LEASE=$PRESENCE_LEASE")
    # The wrapper passes SIGTERM on to both nodes and, if either exits, stops the other and
    # exits too (so a node that fails at start-up is noticed at once).
    (
        a="" b=""
        trap 'kill -TERM $a $b 2>/dev/null || true; wait || true; exit 0' TERM INT
        env "${settings[@]}" NODE_ID=bench-node-a "${PIN_SERVER[@]}" "$SERVER_BIN" \
            --host 127.0.0.1 --port "$port_a" >"$log_a" 2>&1 &
        a=$!
        env "${settings[@]}" NODE_ID=bench-node-b "${PIN_SERVER[@]}" "$SERVER_BIN" \
            --host 127.0.0.1 --port "$port_b" >"$log_b" 2>&1 &
        b=$!
        wait -n || true
        kill -TERM $a $b 2>/dev/null || true
        wait || true
    ) &
    SERVER_PID=$!
    STARTED+=("$SERVER_PID")
    for _ in $(seq $((READY_TIMEOUT * 10))); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "cluster: a node exited during startup; logs: $log_a $log_b"
            tail -n 20 "$log_a" "$log_b" >&2 || true
            return 1
        fi
        if http_ok "$port_a" /ready && http_ok "$port_b" /ready; then
            seen="$(cluster_nodes_seen "$port_a")"
            [ -n "$seen" ] && [ "$seen" -ge 2 ] && return 0
        fi
        sleep 0.1
    done
    log "cluster: not ready after ${READY_TIMEOUT}s (node A sees ${seen:-no} cluster nodes;" \
        "needs /ready 200 on both and 2 nodes in node A's /health); logs: $log_a $log_b"
    tail -n 20 "$log_a" "$log_b" >&2 || true
    return 1
}

# The extra fields of a cluster run's record: broker, round, loop, Redis CPU over the run.
cluster_record_fields() {
    local after="" used=null
    if [ -n "$REDIS_CPU_BEFORE" ]; then
        after="$(redis_cpu_seconds)"
        [ -z "$after" ] || used="$(awk -v a="$after" -v b="$REDIS_CPU_BEFORE" 'BEGIN { printf "%.3f", a - b }')"
    fi
    printf ',"cluster":{%s,"redis_cpu_s":%s}' "$CLUSTER_RECORD" "$used"
}

# cluster_run <broker> <round> <loop> [loadgen push args...]: one push run on fresh servers:
# memory = one node on PORT_OURS; redis = nodes A and B, WebSockets on B, publishers on A.
cluster_run() {
    local broker="$1" round="$2" loop="$3" name delivered
    shift 3
    name="cluster-$loop-$broker-$round"
    CLUSTER_RECORD="\"broker\":\"$broker\",\"round\":$round,\"loop\":\"$loop\""
    if [ "$broker" = memory ]; then
        if ! start_server ours; then FAILED=1; stop_server; return; fi
        REDIS_CPU_BEFORE=""
    else
        CLUSTER_RUNS=$((CLUSTER_RUNS + 1))
        if ! start_cluster "$PREFIX_BASE$CLUSTER_RUNS:"; then
            FAILED=1
            stop_server
            # Recorded, so that the table shows the failed run.
            printf '{"target":"ours","name":"%s","exit_status":1,"cluster":{%s},"result":null}\n' \
                "$name" "$CLUSTER_RECORD" >>"$RUNS"
            return
        fi
        RUN_URL="http://127.0.0.1:$((PORT_CLUSTER + 1))"
        RUN_PUBLISH_URL="http://127.0.0.1:$PORT_CLUSTER"
        CLUSTER_RECORD="$CLUSTER_RECORD,\"nodes\":2,\"redis\":\"$REDIS_DESC\""
        REDIS_CPU_BEFORE="$(redis_cpu_seconds)"
    fi
    RUN_EXTRA_FN=cluster_record_fields
    run_loadgen ours "$name" push --users 100 --publishers 32 --payload-bytes 256 \
        --duration "$DURATION" "$@"
    RUN_URL="" RUN_PUBLISH_URL="" RUN_EXTRA_FN=""
    if [ "$broker" = redis ]; then
        delivered="$(json_number delivered_frames)"
        if [ "$LAST_STATUS" -ne 0 ] || [ -z "$delivered" ] || [ "$delivered" = 0 ]; then
            FAILED=1
            log "cluster: $name: pushes to node A did not all reach node B's WebSockets" \
                "(loadgen exit $LAST_STATUS, ${delivered:-no} frames delivered); see" \
                "$OUT/ours-$name.log and the node logs in $OUT"
        fi
    fi
    stop_server
}

# Every round runs both brokers, memory first in odd rounds and the cluster first in even ones.
cluster_rounds() {
    local loop="$1" round
    shift
    for round in $(seq "$CLUSTER_ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then
            cluster_run memory "$round" "$loop" "$@"
            cluster_run redis "$round" "$loop" "$@"
        else
            cluster_run redis "$round" "$loop" "$@"
            cluster_run memory "$round" "$loop" "$@"
        fi
    done
}

# The median of the cluster's closed-loop delivered/s so far (empty if none).
cluster_closed_median() {
    { grep -F '"broker":"redis"' "$RUNS" || true; } | { grep -F '"loop":"closed"' || true; } |
        sed -n 's/.*"delivered_per_s":\([0-9.][0-9.]*\).*/\1/p' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%d", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

bench_cluster() {
    local rate
    if ! setup_redis; then FAILED=1; return; fi
    log "cluster: $CLUSTER_ROUNDS round(s) of memory vs redis ($REDIS_DESC), ${DURATION}s each"
    cluster_rounds closed
    if [ "$MODE" != smoke ]; then
        rate="${BENCH_CLUSTER_RATE:-$(cluster_closed_median | awk '{ printf "%d", $1 / 2 }')}"
        if [ -n "$rate" ] && [ "$rate" -ge 1 ]; then
            cluster_rounds open --rate "$rate"
        else
            log "cluster: open loop skipped: no closed-loop cluster rate to halve"
        fi
    fi
    cleanup_redis_keys
}

# --- main -----------------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

RUN_TARGETS=()
[ "$CLUSTER_ONLY" = 1 ] && TARGETS=""
[ "$PAYLOADS_ONLY" = 1 ] && TARGETS=""
for target in $TARGETS; do
    why="$(missing "$target")"
    if [ -n "$why" ]; then
        log "skipping $target: $why"
        continue
    fi
    RUN_TARGETS+=("$target")
done
[ "${#RUN_TARGETS[@]}" -gt 0 ] || [ "$CLUSTER_ONLY" = 1 ] || [ "$PAYLOADS_ONLY" = 1 ] ||
    { log "no target to run"; exit 1; }

busy=""
check_ports=""
for target in "${RUN_TARGETS[@]}"; do check_ports="$check_ports $(ports_of "$target")"; done
if [ "$RUN_CLUSTER" = 1 ]; then
    check_ports="$check_ports $PORT_OURS $PORT_CLUSTER $((PORT_CLUSTER + 1))"
fi
[ "$PAYLOADS_ONLY" = 0 ] || check_ports="$check_ports $PORT_OURS"
# shellcheck disable=SC2086
for port in $(printf '%s\n' $check_ports | sort -un); do
    port_busy "$port" && busy="$busy $port"
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

if [ "$CLUSTER_ONLY" = 1 ]; then
    log "cluster comparison only; ${DURATION}s per run; results in $OUT"
elif [ "$PAYLOADS_ONLY" = 1 ]; then
    log "large payloads only (ours); results in $OUT"
else
    log "targets: ${RUN_TARGETS[*]}; ${DURATION}s per scenario; results in $OUT"
fi
for target in "${RUN_TARGETS[@]}"; do
    bench_target "$target"
    if [ "$target" = ours ] && [ "$MODE" != smoke ]; then bench_nohistory "$target"; fi
    bench_idle "$target"
    bench_churn "$target"
    if [ "$target" = ours ]; then bench_history "$target"; fi
done
if [ "$RUN_CLUSTER" = 1 ]; then bench_cluster; fi
if [ "$PAYLOADS_ONLY" = 1 ]; then bench_payloads; fi

# --- results --------------------------------------------------------------------------------------
{
    printf '{"started_utc":"%s","mode":"%s","duration_s":%s,"idle_connections":%s,' \
        "$STAMP" "$MODE" "$DURATION" "$IDLE_CONNS"
    printf '"churn_concurrency":%s,"history_users":%s,"history_events_per_user":%s,' \
        "$CHURN_CONC" "$HISTORY_USERS" "$HISTORY_EVENTS"
    printf '"payloads_only":%s,' "$([ "$PAYLOADS_ONLY" = 1 ] && echo true || echo false)"
    printf '"git_commit":"%s","git_dirty":%s,"nproc":%s,"kernel":"%s",' \
        "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        "$([ -n "$(git status --porcelain 2>/dev/null)" ] && echo true || echo false)" \
        "$(nproc 2>/dev/null || echo 0)" "$(uname -sr)"
    printf '"cpu_model":"%s",' \
        "$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo 2>/dev/null | head -n 1 | tr -d '"\134')"
    if [ "$RUN_CLUSTER" = 1 ]; then
        printf '"cluster":{"rounds":%s,"redis":"%s","presence_lease_s":"%s"},' \
            "$CLUSTER_ROUNDS" "$REDIS_DESC" "$PRESENCE_LEASE"
    fi
    printf '"runs":['
    sep=""
    while IFS= read -r line; do printf '%s%s' "$sep" "$line"; sep=","; done <"$RUNS"
    printf ']}\n'
} >"$OUT/results.json"
rm -f "$RUNS"

if command -v python3 >/dev/null; then
    python3 - "$OUT/results.json" <<'PY' | tee "$OUT/table.md"
import json, sys

doc = json.load(open(sys.argv[1]))
targets, rows, cells, cluster_runs, payload_runs = [], [], {}, [], []
for run in doc["runs"]:
    if run.get("cluster"):
        cluster_runs.append(run)
        continue
    if run["name"].startswith(("broadcast-", "user-ids-")):
        payload_runs.append(run)
        continue
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

if doc.get("payloads_only"):
    print(f"\nResults: {sys.argv[1]} (payloads: each case one event, on a fresh server)")
else:
    print(f"\nResults: {sys.argv[1]} ({doc['mode']}, {doc['duration_s']} s per scenario)")
if rows:
    print("\n| scenario | " + " | ".join(targets) + " |")
    print("| --- |" + " --- |" * len(targets))
    for name in rows:
        print(f"| {name} | " + " | ".join(
            cell(cells[(name, t)]) if (name, t) in cells else "n/a" for t in targets) + " |")
    print("\ndelivered/s · latency p50 / p99 (ms, end to end) · server CPU seconds per million "
          "deliveries · loss; idle: server RSS per connection · handshakes/s; churn: open+close "
          "cycles/s · WebSocket handshake latency (incl. subscribe) · server RSS growth after a "
          "2 s settle · failed cycles; history: events stored for offline users (256 B each) · "
          "server RSS growth · bytes per stored event · fill rate · sampled users whose replay "
          "from <epoch>:0 was exactly their events in order; push-closed-nohistory: push-closed "
          "on a server started with HISTORY_SIZE=0")
on, off = cells.get(("push-closed", "ours")), cells.get(("push-closed-nohistory", "ours"))
if on and off and on.get("result") and off.get("result"):
    rate_on, rate_off = on["result"].get("delivered_per_s"), off["result"].get("delivered_per_s")
    if rate_on and rate_off:
        print(f"\nours push-closed, history on vs off: {num(rate_on)}/s vs {num(rate_off)}/s "
              f"({(rate_on / rate_off - 1) * 100:+.1f}% with history)")

# The large-payload cases: one row each.
if payload_runs:
    def med_max(d):
        d = d or {}
        if d.get("median") is None:
            return "-"
        if d.get("max") is None or d["max"] == d["median"]:
            return ms(d["median"])
        return f"{ms(d['median'])} (max {ms(d['max'])})"

    def two(value):
        return "-" if value is None else f"{value:.2f}"

    def mib(value, sign=False):
        if value is None:
            return "-"
        return f"{value:+.1f}" if sign else f"{value:.1f}"

    print("\nLarge payloads (ours, a fresh server per case)\n")
    print("| case | request ms | first / last frame ms | frame latency p50 / p99 / max ms "
          "| frames · loss · dup | server RSS idle → peak → settled MiB "
          "| peak − idle · settled − idle MiB | server CPU s | loadgen cores |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in payload_runs:
        r = run.get("result")
        if not r:
            print(f"| {run['name']} | failed (exit {run['exit_status']}) |" + " |" * 7)
            continue
        lat = r.get("latency_ms") or {}
        rss = r.get("server_rss") or {}
        cpu = r.get("cpu") or {}
        online = (r.get("config") or {}).get("online", True)
        frames = (f"{r.get('delivered_frames')}/{r.get('expected_frames')} · {r.get('loss')} · "
                  f"{r.get('duplicates')}") if online else "offline"
        latency = (f"{ms(lat.get('p50'))} / {ms(lat.get('p99'))} / {ms(lat.get('max'))}"
                   if lat.get("count") else "-")
        ok = r.get("ok", False) and run["exit_status"] == 0
        print(f"| {run['name']}{'' if ok else ' · FAILED'} | {med_max(r.get('request_ms'))} "
              f"| {med_max(r.get('to_first_frame_ms'))} / {med_max(r.get('to_last_frame_ms'))} "
              f"| {latency} | {frames} "
              f"| {mib(rss.get('idle_mib'))} → {mib(rss.get('peak_mib'))} → "
              f"{mib(rss.get('settle_mib'))} "
              f"| {mib(rss.get('peak_minus_idle_mib'), True)} · "
              f"{mib(rss.get('settle_minus_idle_mib'), True)} "
              f"| {two(cpu.get('server_s'))} | {two(cpu.get('loadgen_cores'))} |")
    print("\nrequest: POST sent → reply; first / last frame: POST sent → the event's first / last "
          "frame on any connection; frame latency: every frame, POST sent → frame received; "
          "RSS: VmRSS with every user connected before the first POST, the peak sampled every "
          "10 ms until 5 s after the last frame, and at that point; server CPU: first POST → last "
          "frame (last reply when offline); loadgen cores: loadgen's CPU over the same window")

# The cluster comparison: medians over the rounds, per loop (closed, open) and broker.
if cluster_runs:
    from statistics import median

    def med(values):
        values = [v for v in values if v is not None]
        return median(values) if values else None

    def per_million(r, seconds):
        frames = r.get("delivered_frames")
        return seconds / frames * 1e6 if seconds is not None and frames else None

    groups = {}
    for run in cluster_runs:
        c = run["cluster"]
        groups.setdefault((c["loop"], c["broker"]), []).append(run)
    info = doc.get("cluster") or {}
    print(f"\nCluster comparison, median of {info.get('rounds', '?')} round(s) "
          f"({doc['duration_s']} s each, fresh servers each run): memory = 1 node, memory broker; "
          f"redis = 2 nodes, WebSockets on node B, pushes POSTed to node A; Redis: "
          f"{info.get('redis', '?')}\n")
    print("| push run | broker | delivered/s (median, range) | latency p50 / p99 / p99.9 ms "
          "| nodes CPU-s/M | Redis CPU-s/M | loss · dup · misrouted | clean runs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    medians = {}
    for loop in ("closed", "open"):
        for broker in ("memory", "redis"):
            runs = groups.get((loop, broker))
            if not runs:
                continue
            results = [r["result"] for r in runs if r.get("result")]
            rates = [r.get("delivered_per_s") for r in results if r.get("delivered_per_s") is not None]
            lat = [r.get("latency_ms") or {} for r in results]
            p50, p99, p999 = (med([l.get(k) for l in lat]) for k in ("p50", "p99", "p99_9"))
            cpu = med([(r.get("cpu") or {}).get("server_s_per_million_deliveries") for r in results])
            redis_cpu = med([per_million(run.get("result") or {}, run["cluster"].get("redis_cpu_s"))
                             for run in runs])
            busy = med([(r.get("cpu") or {}).get("loadgen_cores") for r in results])
            bad = [sum(r.get(k) or 0 for r in results) for k in ("loss", "duplicates", "misrouted")]
            clean = sum(1 for run in runs
                        if run["exit_status"] == 0 and (run.get("result") or {}).get("ok"))
            rate = med(rates)
            medians[(loop, broker)] = (rate, p99)
            offered = med([(r.get("config") or {}).get("rate_msgs_per_s") for r in results])
            label = "closed loop" if loop == "closed" else f"open loop @{num(offered)}/s"
            rng = f" ({num(min(rates))}–{num(max(rates))})" if len(rates) > 1 else ""
            if rate is None:
                print(f"| {label} | {broker} | failed | - | - | - | - | {clean}/{len(runs)} |")
                continue
            print(f"| {label} | {broker} | {num(rate)}/s{rng}"
                  f"{' ⚠' if busy is not None and busy > 0.9 else ''} "
                  f"| {ms(p50)} / {ms(p99)} / {ms(p999)} "
                  f"| {'-' if cpu is None else f'{cpu:.3g}'} "
                  f"| {'-' if redis_cpu is None else f'{redis_cpu:.3g}'} "
                  f"| {bad[0]} · {bad[1]} · {bad[2]} | {clean}/{len(runs)} |")
    print("\nnodes CPU-s/M: CPU seconds of the server process(es) per million deliveries (both "
          "nodes for redis); Redis CPU-s/M: Redis's own CPU (INFO used_cpu_user + used_cpu_sys) "
          "over the whole loadgen run, per million deliveries; ⚠: loadgen used > 90% of its core")
    for loop in ("closed", "open"):
        mem, red = medians.get((loop, "memory")), medians.get((loop, "redis"))
        if mem and red and mem[0] and red[0]:
            line = (f"{loop} loop, redis cluster vs memory: {num(red[0])}/s vs {num(mem[0])}/s "
                    f"({(red[0] / mem[0] - 1) * 100:+.1f}%)")
            if mem[1] and red[1]:
                line += f"; p99 {ms(red[1])} vs {ms(mem[1])} ms"
            print(line)
PY
else
    log "python3 not found: no table; results in $OUT/results.json"
fi

if [ "$FAILED" -ne 0 ]; then
    log "some runs FAILED (see the logs in $OUT)"
    exit 1
fi
log "all runs clean; results in $OUT/results.json"
