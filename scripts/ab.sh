#!/usr/bin/env bash
# A/B benchmark: this tree's server against another revision's, alternating runs of the same
# loadgen scenarios on fresh servers (server pinned to CPU 0, loadgen to CPU 1), then one table
# of medians and ranges. For changes that must not cost speed: quote the ratio of medians.
#
#   scripts/ab.sh BASE_REV [SCENARIO...]      scenarios: push fanout batch push-sse fanout-sse
#                                             (default: all five)
# Environment: AB_ROUNDS=7 (runs per side and scenario), AB_DURATION=5 (seconds per run),
# AB_PORT=18777, AB_OUT=ab-results/<UTC timestamp>. The base is built once in a git worktree
# under target/ab-base (its own target directory, reused by later runs of the same revision).
# Loopback only; every run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_REV=${1:?usage: scripts/ab.sh BASE_REV [SCENARIO...]}
shift
SCENARIOS=("${@:-push fanout batch push-sse fanout-sse}")
read -r -a SCENARIOS <<<"${SCENARIOS[*]}"
ROUNDS=${AB_ROUNDS:-7}
DURATION=${AB_DURATION:-5}
PORT=${AB_PORT:-18777}
OUT=${AB_OUT:-ab-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BASE_TREE="$TARGET_DIR/ab-base/tree"
BASE_TARGET="$TARGET_DIR/ab-base/target"
commit=$(git rev-parse --verify "$BASE_REV^{commit}")
if [ "$(git -C "$BASE_TREE" rev-parse HEAD 2>/dev/null || true)" != "$commit" ]; then
    git worktree remove --force "$BASE_TREE" 2>/dev/null || rm -rf "$BASE_TREE"
    git worktree add --detach "$BASE_TREE" "$commit" >/dev/null
fi
echo "building base $commit and this tree (release)" >&2
(cd "$BASE_TREE" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release -q -p websocket-sse-server)
cargo build --release -q -p websocket-sse-server -p loadgen
BASE_BIN="$BASE_TARGET/release/websocket-sse-server"
NEW_BIN="$TARGET_DIR/release/websocket-sse-server"
LOADGEN="$TARGET_DIR/release/loadgen"

args_of() {
    case "$1" in
        push) echo "push --users 100 --publishers 32 --payload-bytes 256 --duration $DURATION" ;;
        fanout) echo "fanout --connections 1000 --rate 1000 --duration $DURATION" ;;
        batch) echo "batch --users 100 --batch 100 --publishers 32 --payload-bytes 256 --duration $DURATION" ;;
        push-sse) echo "push --transport sse --users 100 --publishers 32 --payload-bytes 256 --duration $DURATION" ;;
        fanout-sse) echo "fanout --transport sse --connections 1000 --rate 1000 --duration $DURATION" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

run_one() { # side binary scenario round
    local side=$1 binary=$2 scenario=$3 round=$4 pid
    taskset -c 0 "$binary" --host 127.0.0.1 --port "$PORT" --max-connections-per-user 5000 \
        --log-level error >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break; sleep 0.1; done
    # shellcheck disable=SC2046
    timeout --kill-after=10 $((DURATION + 120)) taskset -c 1 "$LOADGEN" $(args_of "$scenario") \
        --target ours --url "http://127.0.0.1:$PORT" --server-pid "$pid" --json \
        >"$OUT/$scenario-$side-$round.json" 2>"$OUT/$scenario-$side-$round.log" || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

for scenario in "${SCENARIOS[@]}"; do
    args_of "$scenario" >/dev/null
    for round in $(seq "$ROUNDS"); do
        echo "$scenario: round $round of $ROUNDS" >&2
        if [ $((round % 2)) = 1 ]; then
            run_one base "$BASE_BIN" "$scenario" "$round"; run_one new "$NEW_BIN" "$scenario" "$round"
        else
            run_one new "$NEW_BIN" "$scenario" "$round"; run_one base "$BASE_BIN" "$scenario" "$round"
        fi
    done
done

python3 - "$OUT" "$commit" "${SCENARIOS[@]}" <<'PY'
import glob, json, statistics, sys
out, commit, scenarios = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"base {commit[:7]} vs this tree; medians (ranges) over runs; server CPU-s per million deliveries")
print("| scenario | side | runs | delivered/s | server CPU-s/M | p50 ms | p99 ms | loss, duplicates |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for scenario in scenarios:
    medians = {}
    for side in ("base", "new"):
        runs = []
        for path in sorted(glob.glob(f"{out}/{scenario}-{side}-*.json")):
            try:
                runs.append(json.load(open(path)))
            except ValueError:
                pass
        if not runs:
            print(f"| {scenario} | {side} | 0 | (no result: see {out}) | | | | |")
            continue
        col = lambda get: [get(r) for r in runs if get(r) is not None]
        delivered = col(lambda r: r.get("delivered_per_s"))
        cpu = col(lambda r: r.get("cpu", {}).get("server_s_per_million_deliveries"))
        p50 = col(lambda r: r.get("latency_ms", {}).get("p50"))
        p99 = col(lambda r: r.get("latency_ms", {}).get("p99"))
        bad = sum(r.get("loss", 0) + r.get("duplicates", 0) for r in runs)
        num = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
        span = lambda xs: f"{num(statistics.median(xs))} ({num(min(xs))}–{num(max(xs))})" if xs else "–"
        medians[side] = statistics.median(delivered) if delivered else None
        print(f"| {scenario} | {side} | {len(runs)} | {span(delivered)} | {span(cpu)} | "
              f"{span(p50)} | {span(p99)} | {bad} |")
    if medians.get("base") and medians.get("new"):
        print(f"| {scenario} | new/base | | {medians['new'] / medians['base']:.3f} | | | | |")
PY
