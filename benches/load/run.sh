#!/usr/bin/env bash
# The load benchmark (issue 16): every case beside its floor, in
# interleaved rounds, with the load tool (`switchboard-bench`, ghz's flags
# and report). One command gives every figure of BENCHMARKS.md's "Issue 16":
#   * floors: a bare tonic server (benches/bare/: no layers, no auth,
#     answering switchboard's own encoded answer to the same call, to a
#     request carrying the same bearer), its health check, and pgbench
#     running the tenant path's statement exactly as the service sends it;
#   * cases: our health check, ResolveAgent from each tier (memory, Redis,
#     Postgres as service_role, Postgres under RLS with a tenant token), the
#     tenant path and the health check at 2 in flight;
#   * with BEFORE=<an older switchboard binary>: its health, memory-tier and
#     tenant cases in the same rounds, on a database of its own;
#   * then, once: the raw Redis GET and bare pgbench lookup, the overload
#     cases, and (CALLS=1, the default) benches/load/calls.sh, StartCall
#     beside its raw parts.
# Ratios are taken within each round, then the median of the rounds.
#
#   benches/load/run.sh                     # 7 rounds of 4 s per case
#   ROUNDS=3 SECS=3 CALLS=0 benches/load/run.sh
#   BEFORE=/tmp/before/release/switchboard benches/load/run.sh
#
# Needs: Postgres on 127.0.0.1:5432 (user postgres, trust) and Redis on
# 127.0.0.1:6379, as the tests do; redis-benchmark, pgbench, psql, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-4}
ROUNDS=${ROUNDS:-7}
C=${C:-16}
CONNS=${CONNS:-4}
CALLS=${CALLS:-1}
BEFORE=${BEFORE:-}
# Below the ephemeral port range, so a client socket cannot hold them.
BASE_PORT=${BASE_PORT:-2916}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS:-redis://127.0.0.1:6379}
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_load_$$
OUT=$(mktemp -d)
PIDS=()
DBS=($DB)

source benches/load/common.sh
cleanup() {
  stop_started
  for db in "${DBS[@]}"; do drop_scratch "$db"; done
  rm -rf "$OUT"
}
trap cleanup EXIT

build_release

# $1 database, $2 binary: migrated and seeded.
database() {
  psql -q "$PG/postgres" -c "create database $1" >/dev/null
  DATABASE_URL="$PG/$1" "$2" migrate >/dev/null
  psql -q "$PG/$1" -f supabase/seed.sql >/dev/null
}
database "$DB" "$BIN"

export SUPABASE_JWT_SECRET=$SECRET DATABASE_URL="$PG/$DB" SWITCHBOARD_REDIS_NAMESPACE=$DB
export RUST_LOG=warn
# One tenant user drives all 16 calls here; the per-tenant share (default 8)
# would shed half of them. This measures the path, not the fairness rule.
export SWITCHBOARD_TENANT_MAX_CONCURRENT=0

# $1 port; waits until it answers health checks.
wait_for() { wait_for_health "$1" 100 0.1 "$OUT/server-$1.log"; }
# $1 port, then env assignments for this server.
serve() {
  local port=$1; shift
  env SWITCHBOARD_LISTEN=127.0.0.1:$port SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:$((port - 10000)) "$@" "${SERVE_BIN:-$BIN}" serve >"$OUT/server-$port.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$OUT/pid-$port"
  wait_for "$port"
}
serve ${BASE_PORT}1 REDIS_URL=$REDIS                                   # memory + Redis + Postgres
serve ${BASE_PORT}2 REDIS_URL=$REDIS SWITCHBOARD_CACHE_MAX_ROUTES=0    # Redis + Postgres
serve ${BASE_PORT}3 SWITCHBOARD_CACHE_MAX_ROUTES=0                     # Postgres only
if [[ -n $BEFORE ]]; then
  DBS+=(${DB}_before)
  database "${DB}_before" "$BEFORE"
  SERVE_BIN=$BEFORE serve ${BASE_PORT}6 REDIS_URL=$REDIS DATABASE_URL="$PG/${DB}_before" SWITCHBOARD_REDIS_NAMESPACE=${DB}_before
fi

SERVICE=$("$BIN" token --role service_role --jwt-secret "$SECRET")
TENANT=$("$BIN" token --role authenticated --sub a0000000-0000-4000-8000-000000000003 --jwt-secret "$SECRET")
CALL='{"called_number":"+18005550100","caller_number":"+14155550123"}'
RESOLVE=switchboard.v1.AgentService.ResolveAgent
HEALTH=grpc.health.v1.Health.Check

# The bare floor answers what switchboard answers to the same call.
"$BARE" --listen 127.0.0.1:${BASE_PORT}0 --answer-from http://127.0.0.1:${BASE_PORT}1 --token "$SERVICE" \
  --called +18005550100 --caller +14155550123 >"$OUT/server-${BASE_PORT}0.log" 2>&1 &
PIDS+=($!)
echo $! >"$OUT/pid-${BASE_PORT}0"
wait_for ${BASE_PORT}0

# The tenant path's statement for pgbench, at the load's connection count.
tenant_statement "$TENANT" "$OUT/claims.sql"

# $1 name, $2 calls in flight, $3 connections, $4 port, $5 token or -,
# $6 method, $7 data
load() {
  local name=$1 c=$2 conns=$3 port=$4 token=$5 method=$6 data=$7
  local auth=()
  [[ $token != - ]] && auth=(-H "authorization: Bearer $token")
  "$BENCH" --call "$method" -d "$data" "${auth[@]}" -c "$c" --connections "$conns" -z "${SECS}s" \
    -O json -o "$OUT/$name.json" 127.0.0.1:$port
}
# $1 name, then load's arguments: a case warmed once (caches, pools), then
# measured in every round.
CASES=()
case_() { CASES+=("$*"); }
# Each ratio's cases run next to each other (this machine's speed drifts
# within seconds): floor, ours, then the older build's.
before() { [[ -z $BEFORE ]] || case_ "$@"; }
case_  bare-health        $C $CONNS ${BASE_PORT}0 -          $HEALTH '{}'
case_  health             $C $CONNS ${BASE_PORT}1 -          $HEALTH '{}'
before before-health      $C $CONNS ${BASE_PORT}6 -          $HEALTH '{}'
case_  bare-resolve       $C $CONNS ${BASE_PORT}0 "$SERVICE" $RESOLVE "$CALL"
case_  memory             $C $CONNS ${BASE_PORT}1 "$SERVICE" $RESOLVE "$CALL"
before before-memory      $C $CONNS ${BASE_PORT}6 "$SERVICE" $RESOLVE "$CALL"
case_  pg-tenant          $C $CONNS ${BASE_PORT}1 "$TENANT"  $RESOLVE "$CALL"
before before-pg-tenant   $C $CONNS ${BASE_PORT}6 "$TENANT"  $RESOLVE "$CALL"
case_  health-2           2  2        ${BASE_PORT}1 -          $HEALTH '{}'
case_  pg-tenant-2        2  2        ${BASE_PORT}1 "$TENANT"  $RESOLVE "$CALL"
before before-health-2    2  2        ${BASE_PORT}6 -          $HEALTH '{}'
before before-pg-tenant-2 2  2        ${BASE_PORT}6 "$TENANT"  $RESOLVE "$CALL"
# The caller record is cached in memory only: with the memory tier off it
# would come from Postgres, so the Redis case asks for the route alone.
case_  redis              $C $CONNS ${BASE_PORT}2 "$SERVICE" $RESOLVE '{"called_number":"+18005550100"}'
case_  pg-service         $C $CONNS ${BASE_PORT}3 "$SERVICE" $RESOLVE "$CALL"

# Warm up once: caches filled, pool connections open, the bare server's
# and ours alike.
for spec in "${CASES[@]}"; do
  args=($spec)
  SECS=1 load "warm-${args[0]}" "${args[@]:1}" >/dev/null
done
pgbench -n -c "$C" -j 2 -T 1 -M simple -f "$OUT/claims.sql" "$PG/$DB" >/dev/null 2>&1

for round in $(seq "$ROUNDS"); do
  # Odd rounds in the listed order, even rounds reversed: the machine's
  # drift within a round hits both sides of each ratio alike.
  order=("${!CASES[@]}")
  if (( round % 2 == 0 )); then
    order=(); for ((i = ${#CASES[@]} - 1; i >= 0; i--)); do order+=("$i"); done
  fi
  for i in "${order[@]}"; do
    args=(${CASES[$i]})
    # The token and JSON in a case hold no spaces, so word splitting is safe.
    load "r$round-${args[0]}" "${args[@]:1}"
    # pgbench on the same statement right after each tenant case, on that
    # build's own database (its own functions and policies).
    case ${args[0]} in
      pg-tenant) side= db=$DB ;;
      before-pg-tenant) side=before- db=${DB}_before ;;
      *) continue ;;
    esac
    pgbench -n -c "$C" -j 2 -T "$SECS" -M simple -f "$OUT/claims.sql" "$PG/$db" >"$OUT/r$round-${side}pgbench.txt" 2>&1
  done
done

# Overload: twice the tenant path's measured capacity, open loop, 64
# workers. Latency of admitted calls counts from when each call was due.
# Case 1, database admission: 2 connections and no queue for them
# (SWITCHBOARD_DB_MAX_WAITING=0), the global cap at its default; cache hits
# (service_role, memory tier) run beside the flood. Case 2, the global cap:
# 4 calls in flight, the pool at its default.
CAPACITY=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(r["statusCodeDistribution"].get("OK",0)/(r["total"]/1e9)))' "$OUT/r1-pg-tenant.json")
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
  "$BENCH" --call $HEALTH -c 1 -r 20 -z "${SECS}s" -O json -o "$OUT/$name-health.json" 127.0.0.1:$port
  wait "${pids[@]}"
}
overload overload-db ${BASE_PORT}4
overload overload-global ${BASE_PORT}5
# Their pools would leave pgbench short of Postgres connections.
kill "$(cat "$OUT/pid-${BASE_PORT}4")" "$(cat "$OUT/pid-${BASE_PORT}5")" 2>/dev/null || true

# Raw floors of the parts.
redis-cli set "switchboard:v3:$DB:floor" "$(head -c 300 /dev/zero | tr '\0' x)" >/dev/null
redis-benchmark -h 127.0.0.1 -p 6379 -c "$C" -n $((SECS * 30000)) --csv \
  get "switchboard:v3:$DB:floor" >"$OUT/redis-get.csv" 2>/dev/null
cat >"$OUT/bare.sql" <<'SQL'
select a.id, a.org_id, a.voice_id, a.llm_config, o.name from public.agents a join public.organizations o on o.id = a.org_id where a.phone_number = '+18005550100';
SQL
pgbench -n -c "$C" -j 2 -T "$SECS" -M prepared -f "$OUT/bare.sql" "$PG/$DB" >"$OUT/pg-bare.txt" 2>&1
for port in ${BASE_PORT}1 ${BASE_PORT}6; do
  if [[ -f $OUT/pid-$port ]]; then grep VmHWM "/proc/$(cat "$OUT/pid-$port")/status" | awk '{print $2}' >"$OUT/hwm-$port"; fi
done
grep -h "ERROR\|WARN" "$OUT"/server-*.log | sort | uniq -c | head -5 >&2 || true

python3 - "$OUT" "$ROUNDS" "$C" "$CONNS" "$SECS" "$BASE_PORT" "${BEFORE:+1}" <<'PY'
import json, os, re, statistics, sys
out, rounds, c, conns, secs, base, before = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7] == "1"
def rep(name):
    with open(os.path.join(out, name + ".json")) as f:
        r = json.load(f)
    ok = r["statusCodeDistribution"].get("OK", 0)
    pct = {float(p["percentage"]): p["latency"] / 1e6 for p in r["latencyDistribution"]}
    r.update(ok=ok, rps=ok / (r["total"] / 1e9), errors=r["count"] - ok,
             p50=pct.get(50.0, float("nan")), p99=pct.get(99.0, float("nan")), p999=pct.get(99.9, float("nan")))
    return r
def pgbench(path):
    text = open(path).read()
    return float(re.search(r"tps = ([0-9.]+)", text).group(1)), float(re.search(r"latency average = ([0-9.]+) ms", text).group(1))
def hwm(port):
    try:
        return int(open(os.path.join(out, f"hwm-{base}{port}")).read().strip() or 0) / 1024
    except OSError:
        return float("nan")
med = statistics.median
def per_round(rs):
    return ', '.join(f"{r['rps']:.0f}" for r in rs)
R = range(1, rounds + 1)
cases = [("bare-health", "floor: bare tonic server, grpc.health.v1.Health/Check"),
         ("health", "our grpc.health.v1.Health/Check"),
         ("bare-resolve", "floor: bare tonic server, ResolveAgent (fixed answer, same bytes)"),
         ("memory", "ResolveAgent, memory tier (service_role)"),
         ("redis", "ResolveAgent, Redis tier (memory off; route only, no caller)"),
         ("pg-service", "ResolveAgent, Postgres (service_role, no cache)"),
         ("pg-tenant", "ResolveAgent, Postgres under RLS (tenant token)"),
         ("health-2", "our health check, 2 in flight"),
         ("pg-tenant-2", "ResolveAgent, tenant token, 2 in flight")]
if before:
    cases += [("before-" + k, "before: " + l) for k, l in cases if k in ("health", "memory", "pg-tenant", "health-2", "pg-tenant-2")]
print(f"## gRPC, {c} in flight over {conns} connections unless said, {secs} s per case, median of {rounds} interleaved rounds (switchboard-bench)\n")
print("| case | OK rps | p50 | p99 | p99.9 | errors | rps per round |")
print("|---|---:|---:|---:|---:|---:|---|")
for name, label in cases:
    rs = [rep(f"r{i}-{name}") for i in R]
    print(f"| {label} | {med(r['rps'] for r in rs):.0f} | {med(r['p50'] for r in rs):.3f} ms | {med(r['p99'] for r in rs):.3f} ms | "
          f"{med(r['p999'] for r in rs):.3f} ms | {sum(r['errors'] for r in rs)} | {per_round(rs)} |")
for side in ("", "before-") if before else ("",):
    tps = [pgbench(os.path.join(out, f"r{i}-{side}pgbench.txt")) for i in R]
    label = "before: " if side else "floor: "
    print(f"| {label}pgbench, the tenant path's statement as the service sends it (simple protocol, {c} clients) | {med(t for t, _ in tps):.0f} | avg {med(l for _, l in tps):.3f} ms | | | | {', '.join(f'{t:.0f}' for t, _ in tps)} |")
print(f"\nServer peak RSS: {hwm(1):.1f} MiB (the memory/tenant server)" + (f", before: {hwm(6):.1f} MiB" if before else "") + "\n")

def ratio(label, target, fn, sides=("",)):
    cells = []
    for side in sides:
        vals = [fn(side, i) for i in R]
        cells.append((side, vals, med(vals)))
    row = f"| {label} | {target} |"
    for side, vals, m in cells:
        row += f" **{m:.2f}** ({', '.join(f'{v:.2f}' for v in vals)}) |"
    print(row)
sides = ("", "before-") if before else ("",)
print("## ratios, each taken within a round; median of the rounds (each round's value in brackets)\n")
print("| ratio | target |" + (" after | before |" if before else " value |"))
print("|---|---|" + ("---|---|" if before else "---|"))
rps = lambda name, i: rep(f"r{i}-{name}")["rps"]
p99 = lambda name, i: rep(f"r{i}-{name}")["p99"]
ratio("our health / bare health (rps)", ">= 0.95", lambda s, i: rps(s + "health", i) / rps("bare-health", i), sides)
ratio("ResolveAgent memory tier / bare ResolveAgent (rps)", ">= 0.85", lambda s, i: rps(s + "memory", i) / rps("bare-resolve", i), sides)
ratio("ResolveAgent memory tier / our health (rps)", "", lambda s, i: rps(s + "memory", i) / rps(s + "health", i), sides)
ratio("tenant p99 / health p99, 2 in flight", "<= 4", lambda s, i: p99(s + "pg-tenant-2", i) / p99(s + "health-2", i), sides)
ratio(f"tenant ResolveAgent / pgbench same statement, same database (rps, {c} in flight)", ">= 0.80", lambda s, i: rps(s + "pg-tenant", i) / pgbench(os.path.join(out, f"r{i}-{s}pgbench.txt"))[0], sides)
if before:
    ratio("tenant ResolveAgent rps, after / before", "", lambda s, i: rps("pg-tenant", i) / rps("before-pg-tenant", i), ("",))
print()

print(f"## raw floors of the parts, {c} clients, same run\n")
print("| floor | ops/s | average latency | p50 | p99 |")
print("|---|---:|---:|---:|---:|")
try:
    rows = [l for l in open(os.path.join(out, "redis-get.csv")).read().splitlines() if l and not l.startswith('"test"')]
    cols = [x.strip('"') for x in rows[-1].split(",")]
    # redis-benchmark --csv: test, rps, avg, min, p50, p95, p99, max
    print(f"| redis-benchmark GET (300-byte value) | {float(cols[1]):.0f} | {float(cols[2]):.3f} ms | {float(cols[4]):.3f} ms | {float(cols[6]):.3f} ms |")
except Exception as e:
    print(f"| redis-benchmark GET | n/a ({e}) | | | |")
t, l = pgbench(os.path.join(out, "pg-bare.txt"))
print(f"| pgbench: indexed agent+org lookup, prepared, no RLS | {t:.0f} | {l:.3f} ms | | |")
print()
tenant = rep("r1-pg-tenant")["rps"]
print(f"## overload: tenant ResolveAgent offered at 2x the {tenant:.0f}/s of round 1\n")
print("| limit | offered | admitted (OK) | shed (RESOURCE_EXHAUSTED) | other errors | admitted p50 | admitted p99 | admitted p99.9 | health checks beside it | cache hits beside it |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label in [("overload-db", "database: 2 connections, `SWITCHBOARD_DB_MAX_WAITING=0`"),
                    ("overload-global", "global: `SWITCHBOARD_MAX_CONCURRENT_REQUESTS=4`")]:
    o = rep(name)
    h = rep(name + "-health")
    shed = o["statusCodeDistribution"].get("ResourceExhausted", 0)
    other = o["count"] - o["ok"] - shed
    hits = "-"
    if os.path.exists(os.path.join(out, name + "-hits.json")):
        x = rep(name + "-hits")
        hits = f"{x['ok']}/{x['count']} OK, p99 {x['p99']:.3f} ms"
    print(f"| {label} | {o['count']} ({o['options']['rps']}/s) | {o['ok']} ({o['rps']:.0f}/s) | {shed} ({100*shed/max(o['count'],1):.0f} %) | {other} | {o['p50']:.3f} ms | {o['p99']:.3f} ms | {o['p999']:.3f} ms | "
          f"{h['ok']}/{h['count']} OK, p99 {h['p99']:.3f} ms | {hits} |")
print()
PY

if [[ $CALLS == 1 ]]; then
  # StartCall beside ResolveAgent and its raw parts (its target from issue 14).
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  echo "## StartCall on a warm route (benches/load/calls.sh, same sitting)"
  echo
  ROUNDS=$(( ROUNDS < 3 ? ROUNDS : 3 )) benches/load/calls.sh
fi
