#!/usr/bin/env bash
# Calls benchmark (issue 14): StartCall on a warm route (memory tier), with
# its Redis admission and its Postgres record, beside ResolveAgent and the
# raw parts, all in one run, in interleaved rounds:
#   * at a steady offered rate (open loop, RATE/s): ResolveAgent, StartCall,
#     the admission script straight on Redis (redis-benchmark EVALSHA, one
#     client: closed loop with one client leaves Redis as idle between
#     calls as RATE/s does), and the record's upsert straight on Postgres
#     as the service sends it (one simple-protocol batch: role, timeout,
#     upsert) with pgbench at RATE/s;
#   * at saturation (C in flight, closed loop): the same four.
# Target: at the steady rate, StartCall's p99 <= ResolveAgent's p99 + the raw
# admission's p99 + the raw insert's p99. Prints Markdown for BENCHMARKS.md.
#
#   benches/load/calls.sh                 # 3 rounds of 5 s per case
#   ROUNDS=5 SECS=10 RATE=500 benches/load/calls.sh
#
# Needs what benches/load/run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-500}
C=${C:-16}
CONNS=${CONNS:-4}
PORT=${PORT:-29171}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_calls_$$
OUT=$(mktemp -d)
PIDS=()
ACME=0a000000-0000-4000-8000-00000000000a
AGENT=aa000000-0000-4000-8000-000000000001

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG/postgres" -c "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "switchboard:v3:$DB:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  redis-cli --scan --pattern "bench:$DB:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT

cargo build --release --locked --quiet -p switchboard -p switchboard-bench
BIN=target/release/switchboard
BENCH=target/release/switchboard-bench

psql -q "$PG/postgres" -c "create database $DB" >/dev/null
DATABASE_URL="$PG/$DB" "$BIN" migrate >/dev/null
psql -q "$PG/$DB" -f supabase/seed.sql >/dev/null
# A limit no run reaches, and short leases, so the live set stays bounded
# (about RATE x 3 s) and every StartCall is an admission.
psql -q "$PG/$DB" -c "update public.organizations set max_concurrent_calls = 100000 where id = '$ACME'" >/dev/null

export SUPABASE_JWT_SECRET=$SECRET DATABASE_URL="$PG/$DB" SWITCHBOARD_REDIS_NAMESPACE=$DB
export RUST_LOG=warn SWITCHBOARD_CALL_LEASE_SECS=3 SWITCHBOARD_CALL_REMEMBER_SECS=10
env SWITCHBOARD_LISTEN=127.0.0.1:$PORT SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:$((PORT - 10000)) \
  REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT "$BIN" serve >"$OUT/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  "$BENCH" --call grpc.health.v1.Health.Check -n 1 -c 1 -O json 127.0.0.1:$PORT >/dev/null 2>&1 && break
  sleep 0.1
done

SERVICE=$("$BIN" token --role service_role --jwt-secret "$SECRET")
RESOLVE=switchboard.v1.AgentService.ResolveAgent
START=switchboard.v1.CallService.StartCall
# No call_id: each StartCall is a new call (an id is generated).
CALL='{"called_number":"+18005550100","caller_number":"+14155550123"}'

# The admission script, raw: same keys shape (one hash tag), same arguments.
SHA=$(redis-cli -h $REDIS_HOST -p $REDIS_PORT script load "$(cat src/live/admit.lua)")
K="bench:$DB:calls:{$ACME}"
cat >"$OUT/insert.sql" <<SQL
\set n random(1, 2000000000)
SET LOCAL ROLE NONE\; SET LOCAL statement_timeout = '5000ms'\; SET LOCAL ROLE service_role\; insert into public.calls as c (org_id, call_id, called_number, caller_number, agent_id, customer_id, outcome, reason, transfer_to, started_at, answered_at, ended_at, end_status, disconnect_reason) values ('$ACME'::uuid, E'raw-' || :n || '-' || :client_id, E'+18005550100', E'+14155550123', (select a.id from public.agents a where a.id = '$AGENT'::uuid and a.org_id = '$ACME'::uuid), (select u.id from public.customers u where u.id = 'ca000000-0000-4000-8000-000000000001'::uuid and u.org_id = '$ACME'::uuid), E'answer', E'answered', null, now(), null::timestamptz, null::timestamptz, null, null) on conflict (org_id, call_id) do update set caller_number = coalesce(excluded.caller_number, c.caller_number), agent_id = coalesce(excluded.agent_id, c.agent_id), customer_id = coalesce(excluded.customer_id, c.customer_id), outcome = coalesce(c.outcome, excluded.outcome), reason = coalesce(c.reason, excluded.reason), transfer_to = case when c.outcome is null then excluded.transfer_to else c.transfer_to end, started_at = least(c.started_at, excluded.started_at), answered_at = least(c.answered_at, excluded.answered_at), ended_at = least(c.ended_at, excluded.ended_at), end_status = coalesce(c.end_status, excluded.end_status), disconnect_reason = coalesce(c.disconnect_reason, excluded.disconnect_reason);
SQL

# $1 name; then the load tool's flags for the load.
grpc() {
  local name=$1; shift
  "$BENCH" -H "authorization: Bearer $SERVICE" -d "$CALL" --connections "$CONNS" -z "${SECS}s" \
    -O json -o "$OUT/$name.json" "$@" 127.0.0.1:$PORT
}
# $1 name, $2 clients.
raw_redis() {
  redis-benchmark -h $REDIS_HOST -p $REDIS_PORT -c "$2" -n $(( $2 == 1 ? SECS * RATE * 4 : SECS * 20000 )) \
    -r 1000000000 --csv \
    evalsha "$SHA" 5 "$K:active" "$K:agent:$AGENT" "$K:agents" "$K:call:__rand_int__" "$K:refusals" \
    __rand_int__ +18005550100 "$AGENT" 100000 0 3000 10000 "" "" 100 6000 "" >"$OUT/$1.csv" 2>/dev/null
}
# $1 name, then pgbench's flags.
raw_pg() {
  local name=$1; shift
  mkdir -p "$OUT/$name"
  (cd "$OUT/$name" && pgbench -n -j 2 -T "$SECS" -M simple -l -f "$OUT/insert.sql" "$@" "$PG/$DB" >"$OUT/$name.txt" 2>&1)
}

# Warm: the route and caller in memory, pools open.
"$BENCH" --call $START -H "authorization: Bearer $SERVICE" -d "$CALL" -c 4 -z 2s -O json 127.0.0.1:$PORT >/dev/null
"$BENCH" --call $RESOLVE -H "authorization: Bearer $SERVICE" -d "$CALL" -c 4 -z 1s -O json 127.0.0.1:$PORT >/dev/null

for round in $(seq "$ROUNDS"); do
  grpc "r$round-resolve-rate" --call $RESOLVE -c "$C" -r "$RATE"
  grpc "r$round-start-rate" --call $START -c "$C" -r "$RATE"
  raw_redis "r$round-redis-rate" 1
  raw_pg "r$round-pg-rate" -c 4 -R "$RATE"
  grpc "r$round-resolve-sat" --call $RESOLVE -c "$C"
  grpc "r$round-start-sat" --call $START -c "$C"
  raw_redis "r$round-redis-sat" "$C"
  raw_pg "r$round-pg-sat" -c "$C"
done
grep -h "ERROR\|WARN" "$OUT/server.log" | sort | uniq -c | head -5 >&2 || true

python3 - "$OUT" "$ROUNDS" "$RATE" "$C" "$SECS" <<'PY'
import glob, json, os, statistics, sys
out, rounds, rate, c, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def grpc(name):
    r = json.load(open(os.path.join(out, name + ".json")))
    pct = {float(p["percentage"]): p["latency"] / 1e6 for p in r["latencyDistribution"]}
    ok = r["statusCodeDistribution"].get("OK", 0)
    return {"rps": ok / (r["total"] / 1e9), "p50": pct.get(50.0), "p99": pct.get(99.0),
            "p999": pct.get(99.9), "errors": r["count"] - ok}
def redis(name):
    rows = [l for l in open(os.path.join(out, name + ".csv")).read().splitlines() if l and not l.startswith('"test"')]
    cols = [x.strip('"') for x in rows[-1].split(",")]
    # test, rps, avg, min, p50, p95, p99, max
    return {"rps": float(cols[1]), "p50": float(cols[4]), "p99": float(cols[6]), "p999": None, "max": float(cols[7]), "errors": 0}
def pg(name):
    lat = []
    for path in glob.glob(os.path.join(out, name, "pgbench_log.*")):
        for line in open(path):
            f = line.split()
            # client tx time script epoch us [lag]: from when it was due.
            lag = int(f[6]) if len(f) > 6 else 0
            lat.append((int(f[2]) + lag) / 1000.0)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")
    return {"rps": len(lat) / float(secs), "p50": q(50), "p99": q(99), "p999": q(99.9), "errors": 0}
cases = [("resolve", grpc, "ResolveAgent, memory tier"), ("start", grpc, "StartCall, warm route (admission + record)"),
         ("redis", redis, "raw: the admission script on Redis (redis-benchmark EVALSHA)"),
         ("pg", pg, "raw: the record's insert on Postgres as the service runs it (pgbench)")]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x):
    return "n/a" if x is None else f"{x:.3f} ms"
for mode, title in [("rate", f"steady offered rate, {rate}/s (open loop; raw Redis: 1 client)"), ("sat", f"saturation, {c} in flight")]:
    print(f"### {title}; median of {rounds} interleaved rounds of {secs} s\n")
    print("| case | rps | p50 | p99 | p99.9 | errors | p99 per round |")
    print("|---|---:|---:|---:|---:|---:|---|")
    res = {}
    for key, read, label in cases:
        rs = [read(f"r{i}-{key}-{mode}") for i in range(1, rounds + 1)]
        m = {k: med([r[k] for r in rs]) for k in ("rps", "p50", "p99", "p999")}
        m["errors"] = sum(r["errors"] for r in rs)
        res[key] = m
        per = ", ".join(f"{r['p99']:.3f}" for r in rs)
        print(f"| {label} | {m['rps']:.0f} | {fmt(m['p50'])} | {fmt(m['p99'])} | {fmt(m['p999'])} | {m['errors']} | {per} |")
    print()
    if mode == "rate":
        budget = res["resolve"]["p99"] + res["redis"]["p99"] + res["pg"]["p99"]
        print(f"StartCall p99 {res['start']['p99']:.3f} ms vs ResolveAgent p99 + raw admission p99 + raw insert p99 = "
              f"{budget:.3f} ms: {'within' if res['start']['p99'] <= budget else 'OVER'} the target.\n")
    else:
        print(f"StartCall / ResolveAgent throughput at saturation: {res['start']['rps'] / res['resolve']['rps']:.2f}; "
              f"StartCall / raw insert throughput: {res['start']['rps'] / res['pg']['rps']:.2f}.\n")
PY
