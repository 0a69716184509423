#!/usr/bin/env bash
# Load benchmark with the load tool (`switchboard-bench`, ghz's flags and
# report): ResolveAgent from each tier and the health-check floor
# at 16 concurrent calls, plus the raw floors of the parts (redis-benchmark
# GET, pgbench on the same indexed lookup, bare and claims-applying), all
# in one run on this machine. Prints Markdown for BENCHMARKS.md.
#
#   benches/load/run.sh            # 10 s per case
#   SECS=30 benches/load/run.sh
#
# Needs: Postgres on 127.0.0.1:5432 (user postgres, trust) and Redis on
# 127.0.0.1:6379, as the tests do; redis-benchmark, pgbench, psql, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-10}
C=${C:-16}
CONNS=${CONNS:-4}
# Below the ephemeral port range, so a client socket cannot hold them.
BASE_PORT=${BASE_PORT:-2916}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379}
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_load_$$
OUT=$(mktemp -d)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG/postgres" -c "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "switchboard:v3:$DB:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT

cargo build --release --locked --quiet -p switchboard -p switchboard-bench
BIN=target/release/switchboard
BENCH=target/release/switchboard-bench

psql -q "$PG/postgres" -c "create database $DB" >/dev/null
DATABASE_URL="$PG/$DB" "$BIN" migrate >/dev/null
psql -q "$PG/$DB" -f supabase/seed.sql >/dev/null

export SUPABASE_JWT_SECRET=$SECRET DATABASE_URL="$PG/$DB" SWITCHBOARD_REDIS_NAMESPACE=$DB
export RUST_LOG=warn
# One tenant user drives all 16 calls here; the per-tenant share (default 8)
# would shed half of them. This measures the path, not the fairness rule.
export SWITCHBOARD_TENANT_MAX_CONCURRENT=0

# $1 port, then env assignments for this server.
serve() {
  local port=$1; shift
  env SWITCHBOARD_LISTEN=127.0.0.1:$port SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:$((port - 10000)) "$@" "$BIN" serve >"$OUT/server-$port.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/pid-$port"
  for _ in $(seq 100); do
    "$BENCH" --call grpc.health.v1.Health.Check -n 1 -c 1 -O json 127.0.0.1:$port >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "server on $port did not start:" >&2; cat "$OUT/server-$port.log" >&2; exit 1
}
serve ${BASE_PORT}1 REDIS_URL=$REDIS                                   # memory + Redis + Postgres
serve ${BASE_PORT}2 REDIS_URL=$REDIS SWITCHBOARD_CACHE_MAX_ROUTES=0    # Redis + Postgres
serve ${BASE_PORT}3 SWITCHBOARD_CACHE_MAX_ROUTES=0                     # Postgres only

SERVICE=$("$BIN" token --role service_role --jwt-secret "$SECRET")
TENANT=$("$BIN" token --role authenticated --sub a0000000-0000-4000-8000-000000000003 --jwt-secret "$SECRET")
CALL='{"called_number":"+18005550100","caller_number":"+14155550123"}'

# $1 name, $2 port, $3 token or "", $4 method, $5 data
load() {
  local name=$1 port=$2 token=$3 method=$4 data=$5
  local auth=()
  [[ -n $token ]] && auth=(-H "authorization: Bearer $token")
  # Warm up (fills caches, opens pool connections), then measure.
  "$BENCH" --call "$method" -d "$data" "${auth[@]}" -c "$C" --connections "$CONNS" -z 2s -O json 127.0.0.1:$port >/dev/null
  "$BENCH" --call "$method" -d "$data" "${auth[@]}" -c "$C" --connections "$CONNS" -z "${SECS}s" \
    -O json -o "$OUT/$name.json" 127.0.0.1:$port
  grep VmHWM "/proc/$(cat "$OUT/pid-$port")/status" | awk '{print $2}' >"$OUT/$name.hwm"
}

RESOLVE=switchboard.v1.AgentService.ResolveAgent
load health      ${BASE_PORT}1 ""         grpc.health.v1.Health.Check '{}'
load memory      ${BASE_PORT}1 "$SERVICE" $RESOLVE "$CALL"
# The caller record is cached in memory only: with the memory tier off it
# would come from Postgres, so the Redis case asks for the route alone.
load redis       ${BASE_PORT}2 "$SERVICE" $RESOLVE '{"called_number":"+18005550100"}'
load pg-service  ${BASE_PORT}3 "$SERVICE" $RESOLVE "$CALL"
load pg-tenant   ${BASE_PORT}1 "$TENANT"  $RESOLVE "$CALL"
load health-end  ${BASE_PORT}1 ""         grpc.health.v1.Health.Check '{}'

# Overload: twice the tenant path's measured capacity, open loop, 64
# workers. Latency of admitted calls counts from when each call was due.
# Case 1, database admission: 2 connections and no queue for them
# (SWITCHBOARD_DB_MAX_WAITING=0), the global cap at its default; cache hits
# (service_role, memory tier) run beside the flood. Case 2, the global cap:
# 4 calls in flight, the pool at its default.
CAPACITY=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r["statusCodeDistribution"].get("OK",0)/(r["total"]/1e9)))' "$OUT/pg-tenant.json")
serve ${BASE_PORT}4 REDIS_URL=$REDIS SWITCHBOARD_DB_MAX_CONNECTIONS=2 SWITCHBOARD_DB_MAX_WAITING=0
serve ${BASE_PORT}5 SWITCHBOARD_MAX_CONCURRENT_REQUESTS=${OVERLOAD_LIMIT:-4}
"$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE" -n 100 -c 1 -O json 127.0.0.1:${BASE_PORT}4 >/dev/null
# $1 case name, $2 port, then extra load running beside it (in the background)
overload() {
  local name=$1 port=$2
  "$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $TENANT" -c 16 --connections "$CONNS" -z 1s -O json 127.0.0.1:$port >/dev/null
  "$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $TENANT" -c 64 --connections "$CONNS" \
    -r $((CAPACITY * 2)) -z "${SECS}s" -O json -o "$OUT/$name.json" 127.0.0.1:$port &
  local pids=($!)
  if [[ $name == overload-db ]]; then
    "$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE" -c 4 -r 1000 -z "${SECS}s" \
      -O json -o "$OUT/$name-hits.json" 127.0.0.1:$port &
    pids+=($!)
  fi
  # Health checks beside the overload: probes must keep answering.
  "$BENCH" --call grpc.health.v1.Health.Check -c 1 -r 20 -z "${SECS}s" -O json -o "$OUT/$name-health.json" 127.0.0.1:$port
  wait "${pids[@]}"
}
overload overload-db ${BASE_PORT}4
overload overload-global ${BASE_PORT}5

# Raw floors of the parts.
redis-cli set "switchboard:v3:$DB:floor" "$(head -c 300 /dev/zero | tr '\0' x)" >/dev/null
redis-benchmark -h 127.0.0.1 -p 6379 -c "$C" -n $((SECS * 30000)) -t get --csv -q \
  -r 1 >"$OUT/redis.csv" 2>/dev/null || true
redis-benchmark -h 127.0.0.1 -p 6379 -c "$C" -n $((SECS * 30000)) --csv \
  get "switchboard:v3:$DB:floor" >"$OUT/redis-get.csv" 2>/dev/null
cat >"$OUT/bare.sql" <<'SQL'
select a.id, a.org_id, a.voice_id, a.llm_config, o.name from public.agents a join public.organizations o on o.id = a.org_id where a.phone_number = '+18005550100';
SQL
cat >"$OUT/claims.sql" <<'SQL'
select * from switchboard_private.resolve_number('{"role":"authenticated","sub":"a0000000-0000-4000-8000-000000000003","aud":"authenticated"}', 'authenticated', '+18005550100', '+14155550123');
SQL
pgbench -n -c "$C" -j 2 -T "$SECS" -M prepared -f "$OUT/bare.sql" "$PG/$DB" >"$OUT/pg-bare.txt" 2>&1
pgbench -n -c "$C" -j 2 -T "$SECS" -M simple -f "$OUT/claims.sql" "$PG/$DB" >"$OUT/pg-claims.txt" 2>&1

python3 - "$OUT" "$C" "$CONNS" "$SECS" <<'PY'
import json, os, re, sys
out, c, conns, secs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def rep(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.load(f)
def hwm(name):
    with open(os.path.join(out, name + ".hwm")) as f:
        return int(f.read().strip() or 0) / 1024
def ok_rps(name):
    r = rep(name)
    return r["statusCodeDistribution"].get("OK", 0) / (r["total"] / 1e9)
def pct(r, p):
    for point in r["latencyDistribution"]:
        if float(point["percentage"]) == p:
            return point["latency"] / 1e6
    return float("nan")
health = rep("health")
floor = health["rps"]  # every health call answers OK
print(f"## gRPC, {c} concurrent calls over {conns} connections, {secs} s per case (switchboard-bench)\n")
print("| case | calls | OK rps | p50 | p99 | p99.9 | errors | server peak RSS | rps / health |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
cases = [("health", "floor: grpc.health.v1.Health/Check"),
         ("memory", "ResolveAgent, memory tier (service_role)"),
         ("redis", "ResolveAgent, Redis tier (memory off; route only, no caller)"),
         ("pg-service", "ResolveAgent, Postgres (service_role, no cache)"),
         ("pg-tenant", "ResolveAgent, Postgres under RLS (tenant token)"),
         ("health-end", "floor again, at the end")]
for name, label in cases:
    r = rep(name)
    ok = r["statusCodeDistribution"].get("OK", 0)
    errors = r["count"] - ok
    r["rps"] = ok / (r["total"] / 1e9)
    print(f"| {label} | {r['count']} | {r['rps']:.0f} | {pct(r,50):.3f} ms | {pct(r,99):.3f} ms | "
          f"{pct(r,99.9):.3f} ms | {errors} | {hwm(name):.1f} MiB | {r['rps']/floor:.2f} |")
print()
def redis_rps():
    with open(os.path.join(out, "redis-get.csv")) as f:
        rows = [l for l in f.read().splitlines() if l and not l.startswith('"test"')]
    cols = [x.strip('"') for x in rows[-1].split(",")]
    return float(cols[1]), cols
def pgbench(name):
    text = open(os.path.join(out, name + ".txt")).read()
    tps = float(re.search(r"tps = ([0-9.]+)", text).group(1))
    lat = float(re.search(r"latency average = ([0-9.]+) ms", text).group(1))
    return tps, lat
print(f"## raw floors of the parts, {c} clients, same machine, same run\n")
print("| floor | ops/s | average latency | p50 | p99 |")
print("|---|---:|---:|---:|---:|")
try:
    rps, cols = redis_rps()
    # redis-benchmark --csv: test, rps, avg, min, p50, p95, p99, max
    print(f"| redis-benchmark GET (300-byte value) | {rps:.0f} | {float(cols[2]):.3f} ms | {float(cols[4]):.3f} ms | {float(cols[6]):.3f} ms |")
except Exception as e:
    print(f"| redis-benchmark GET | n/a ({e}) | | | |")
for name, label in [("pg-bare", "pgbench: indexed agent+org lookup, prepared, no RLS"),
                    ("pg-claims", "pgbench: the tenant lookup as the service runs it (claims + role + RLS, one statement)")]:
    tps, lat = pgbench(name)
    print(f"| {label} | {tps:.0f} | {lat:.3f} ms | | |")
tenant = ok_rps("pg-tenant")
claims_tps, _ = pgbench("pg-claims")
print()
print(f"Tenant ResolveAgent throughput / pgbench claims lookup: {tenant/claims_tps:.2f} "
      f"(target: within 2x, i.e. >= 0.50)")
print(f"Memory tier throughput / health floor: {ok_rps('memory')/floor:.2f} (target >= 0.80)")
print()
print(f"## overload: tenant ResolveAgent offered at 2x the {tenant:.0f}/s measured above\n")
print("| limit | offered | admitted (OK) | shed (RESOURCE_EXHAUSTED) | other errors | admitted p50 | admitted p99 | admitted p99.9 | health checks beside it | cache hits beside it |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label in [("overload-db", "database: 2 connections, `SWITCHBOARD_DB_MAX_WAITING=0`"),
                    ("overload-global", "global: `SWITCHBOARD_MAX_CONCURRENT_REQUESTS=4`")]:
    o = rep(name)
    h = rep(name + "-health")
    shed = o["statusCodeDistribution"].get("ResourceExhausted", 0)
    ok = o["statusCodeDistribution"].get("OK", 0)
    other = o["count"] - ok - shed
    hits = "-"
    if os.path.exists(os.path.join(out, name + "-hits.json")):
        x = rep(name + "-hits")
        hits = f"{x['statusCodeDistribution'].get('OK',0)}/{x['count']} OK, p99 {pct(x,99):.3f} ms"
    print(f"| {label} | {o['count']} ({o['options']['rps']}/s) | {ok} ({ok/(o['total']/1e9):.0f}/s) | {shed} ({100*shed/max(o['count'],1):.0f} %) | {other} | {pct(o,50):.3f} ms | {pct(o,99):.3f} ms | {pct(o,99.9):.3f} ms | "
          f"{h['statusCodeDistribution'].get('OK',0)}/{h['count']} OK, p99 {pct(h,99):.3f} ms | {hits} |")
PY
