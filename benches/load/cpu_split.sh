#!/usr/bin/env bash
# Where the tenant path's CPU goes, by process (issue 16): CPU per call of
# Postgres, the server and the load client, for the tenant path at
# saturation beside pgbench on the same statement, and Postgres's own cost
# per statement with nothing else running and beside gRPC load that never
# touches it (memory-tier calls, open loop, at the tenant path's own rate).
# Interleaved rounds; prints Markdown.
#
#   benches/load/cpu_split.sh              # 3 rounds of 5 s, 16 in flight
#   ROUNDS=5 C=2 benches/load/cpu_split.sh
#
# CPU is read from /proc (user + system, children included, so backends
# that exit with pgbench still count) around each case: Postgres is every
# `postgres` process, the server is ours, the clients are measured with
# getrusage. Needs what benches/load/run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
C=${C:-16}
CONNS=$((C < 4 ? C : 4))
PORT=${PORT:-29201}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_split_$$
OUT=$(mktemp -d)
PIDS=()
source benches/load/common.sh
cleanup() {
  stop_started
  drop_scratch "$DB"
  rm -rf "$OUT"
}
trap cleanup EXIT

build_release
scratch_database "$DB"
serve_scratch "$BIN" "$PORT"

SERVICE=$("$BIN" token --role service_role --jwt-secret "$SECRET")
TENANT=$("$BIN" token --role authenticated --sub a0000000-0000-4000-8000-000000000003 --jwt-secret "$SECRET")
CALL='{"called_number":"+18005550100","caller_number":"+14155550123"}'
RESOLVE=switchboard.v1.AgentService.ResolveAgent
tenant_statement "$TENANT" "$OUT/claims.sql"

# CPU ticks so far: "postgres server idle total".
ticks() {
  python3 - "$SERVER" <<'PY'
import os, sys
pg = server = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    used = sum(int(f) for f in fields[11:15])
    if comm == "postgres":
        pg += used
    elif pid == sys.argv[1]:
        server += used
cpu = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
print(pg, server, cpu[3], sum(cpu))
PY
}
# Runs a client, then prints its CPU seconds (user + system).
client() {
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime)' "$@"
}
ok_calls() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["statusCodeDistribution"].get("OK", 0))' "$1"; }

# $1 case, $2 calls, $3 client CPU seconds, $4 ticks before, $5 after,
# $6 memory-tier calls offered meanwhile (beside only).
record() { echo "$1 $2 $3 $4 $5 ${6:-0}" >>"$OUT/cases.txt"; }
# $1 case, $2 as record's: pgbench on the statement for SECS, recorded.
pgbench_case() {
  local before after cpu
  before=$(ticks)
  cpu=$(client pgbench -n -c "$C" -j 2 -T "$SECS" -M simple -f "$OUT/claims.sql" -l --log-prefix="$OUT/pgb" "$PG/$DB")
  after=$(ticks)
  record "$1" "$(cat "$OUT"/pgb.* | wc -l)" "$cpu" "$before" "$after" "${2:-0}"
  rm -f "$OUT"/pgb.*
}

"$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $TENANT" -c "$C" --connections "$CONNS" -z 1s -O json 127.0.0.1:$PORT >/dev/null
pgbench -n -c "$C" -j 2 -T 1 -M simple -f "$OUT/claims.sql" "$PG/$DB" >/dev/null 2>&1
for round in $(seq "$ROUNDS"); do
  before=$(ticks); cpu=$(client "$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $TENANT" \
    -c "$C" --connections "$CONNS" -z "${SECS}s" -O json -o "$OUT/tenant.json" 127.0.0.1:$PORT); after=$(ticks)
  calls=$(ok_calls "$OUT/tenant.json")
  record tenant "$calls" "$cpu" "$before" "$after"
  rate=$((calls / SECS))

  pgbench_case pgbench

  # The same statements beside gRPC work that never reaches Postgres: the
  # memory tier at the rate the tenant path just ran at.
  "$BENCH" --call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE" -c "$C" --connections "$CONNS" \
    --rps "$rate" -z "$((SECS + 2))s" -O json 127.0.0.1:$PORT >/dev/null &
  beside=$!
  sleep 1
  pgbench_case beside "$((rate * SECS))"
  wait "$beside"
done

python3 - "$OUT/cases.txt" "$SECS" "$C" "$(getconf CLK_TCK)" <<'PY'
import collections, statistics, sys
secs, c, hz = float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    case, calls, client = f[0], int(f[1]), float(f[2])
    b, a = [int(x) for x in f[3:7]], [int(x) for x in f[7:11]]
    us = lambda ticks: 1e6 * ticks / hz / calls
    rows[case].append(dict(rate=calls / secs, pg=us(a[0] - b[0]), server=us(a[1] - b[1]) if case == "tenant" else 0.0,
                           client=1e6 * client / calls, idle=(a[2] - b[2]) / (a[3] - b[3])))
    if case == "beside":
        # Our server's CPU in the same window, per memory-tier call offered.
        rows["memory"].append(dict(rate=int(f[11]) / secs, pg=0.0, server=1e6 * (a[1] - b[1]) / hz / int(f[11]),
                                   client=float("nan"), idle=(a[2] - b[2]) / (a[3] - b[3])))
labels = [("tenant", "ResolveAgent, tenant token: Postgres, our server, the load tool"),
          ("pgbench", "pgbench, the same statement: Postgres, pgbench"),
          ("beside", "pgbench, the same statement, beside memory-tier calls at the tenant path's rate (open loop; their server and client not counted)"),
          ("memory", "those memory-tier calls, same window: our server alone (the gRPC half of a call at this rate)")]
print(f"CPU per call, µs (user + system), {c} in flight; median of {len(rows['tenant'])} interleaved rounds of {secs:.0f} s\n")
print("| case | calls/s | Postgres | our server | client | sum | CPU idle |")
print("|---|---:|---:|---:|---:|---:|---:|")
for key, label in labels:
    m = lambda k: statistics.median(r[k] for r in rows[key])
    if key == "memory":
        print(f"| {label} | {m('rate'):.0f} | | {m('server'):.1f} | | | |")
        continue
    print(f"| {label} | {m('rate'):.0f} | {m('pg'):.1f} | {m('server'):.1f} | {m('client'):.1f} | {m('pg') + m('server') + m('client'):.1f} | {100 * m('idle'):.0f} % |")
PY
