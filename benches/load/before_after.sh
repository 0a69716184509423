#!/usr/bin/env bash
# Before/after in one sitting: two builds of the service side by side, each
# with its own database and Redis namespace, measured in interleaved rounds
# (health floor, then ResolveAgent from the memory tier, on one build, then
# on the other), so the machine's drift hits both alike. Prints each
# round's memory/health ratio and the medians.
#
#   benches/load/before_after.sh OLD_BINARY NEW_BINARY
#   ROUNDS=6 SECS=5 benches/load/before_after.sh /work/target-before/release/switchboard target/release/switchboard
#
# Build the old one from a worktree with its own target dir, e.g.
#   git worktree add /tmp/before <rev> && (cd /tmp/before && CARGO_TARGET_DIR=/tmp/target-before cargo build --release -p switchboard)
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=$1
NEW=$2
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-5}
C=${C:-16}
CONNS=${CONNS:-4}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SECRET=bench-secret-bench-secret-bench-secret-0123
OUT=$(mktemp -d)
PIDS=()
DBS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in "${DBS[@]}"; do
    psql -q "$PG/postgres" -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
    redis-cli --scan --pattern "switchboard:*:$db:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  done
  rm -rf "$OUT"
}
trap cleanup EXIT

cargo build --release --locked --quiet -p switchboard-bench
BENCH=target/release/switchboard-bench

# $1 name, $2 binary, $3 port
serve() {
  local name=$1 bin=$2 port=$3 db=switchboard_ba_${1}_$$
  DBS+=("$db")
  psql -q "$PG/postgres" -c "create database $db" >/dev/null
  DATABASE_URL="$PG/$db" "$bin" migrate >/dev/null
  psql -q "$PG/$db" -f supabase/seed.sql >/dev/null
  env SUPABASE_JWT_SECRET=$SECRET DATABASE_URL="$PG/$db" SWITCHBOARD_REDIS_NAMESPACE=$db RUST_LOG=warn \
    REDIS_URL=redis://127.0.0.1:6379 SWITCHBOARD_LISTEN=127.0.0.1:$port SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:$((port - 10000)) \
    "$bin" serve >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    "$BENCH" --call grpc.health.v1.Health.Check -n 1 -c 1 -O json 127.0.0.1:$port >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "$name did not start" >&2; cat "$OUT/$name.log" >&2; exit 1
}
serve before "$OLD" 29181
serve after "$NEW" 29182
SERVICE=$("$NEW" token --role service_role --jwt-secret "$SECRET")
CALL='{"called_number":"+18005550100","caller_number":"+14155550123"}'
RESOLVE=switchboard.v1.AgentService.ResolveAgent

# $1 out name, $2 port, then the load's flags
load() {
  local name=$1 port=$2; shift 2
  "$BENCH" -c "$C" --connections "$CONNS" -z "${SECS}s" -O json -o "$OUT/$name.json" "$@" 127.0.0.1:$port
}
for port in 29181 29182; do
  "$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE" -c 4 -z 1s -O json 127.0.0.1:$port >/dev/null
done
for round in $(seq "$ROUNDS"); do
  # Alternate which build goes first.
  if (( round % 2 )); then order="before:29181 after:29182"; else order="after:29182 before:29181"; fi
  for pair in $order; do
    name=${pair%%:*} port=${pair##*:}
    load "r$round-$name-health" "$port" --call grpc.health.v1.Health.Check -d '{}'
    load "r$round-$name-memory" "$port" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE"
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def rep(name):
    r = json.load(open(os.path.join(out, name + ".json")))
    ok = r["statusCodeDistribution"].get("OK", 0)
    p99 = next((p["latency"] / 1e6 for p in r["latencyDistribution"] if float(p["percentage"]) == 99.0), float("nan"))
    return ok / (r["total"] / 1e9), p99, r["count"] - ok
print("| round | before: health rps | before: memory rps | before: memory / health | after: health rps | after: memory rps | after: memory / health |")
print("|---:|---:|---:|---:|---:|---:|---:|")
ratios = {"before": [], "after": []}
for i in range(1, rounds + 1):
    row = [str(i)]
    for side in ("before", "after"):
        h, _, he = rep(f"r{i}-{side}-health")
        m, _, me = rep(f"r{i}-{side}-memory")
        if he or me:
            print(f"errors in round {i} ({side}): health {he}, memory {me}", file=sys.stderr)
        ratios[side].append(m / h)
        row += [f"{h:.0f}", f"{m:.0f}", f"{m / h:.2f}"]
    print("| " + " | ".join(row) + " |")
print(f"| median | | | {statistics.median(ratios['before']):.2f} | | | {statistics.median(ratios['after']):.2f} |")
PY
