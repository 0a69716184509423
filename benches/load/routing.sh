#!/usr/bin/env bash
# Routing benchmark (issue 15): a decision with versions, business hours and
# caller rules on a warm route (memory tier) beside a plain one, for
# ResolveAgent and StartCall, all on one server, in interleaved rounds:
#   * at saturation (C in flight over CONNS connections, closed loop), with
#     the gRPC health check as the floor, and the raw floors of the parts
#     (redis-benchmark GET of a real route key, pgbench on the indexed
#     agent lookup);
#   * at a steady offered rate (open loop, RATE/s), for the tails.
# Numbers:
#   bare   +18005550200  Bluebird's seeded agent: an org with no caller rules,
#                        no versions, no hours (the plain decision);
#   plain  +18005550100  Acme's seeded agent: no versions, no hours, but its
#                        route carries Acme's caller rules (a route carries
#                        its org's rules, scanned on every decision);
#   rich   +18005550101  a second Acme agent: 3 published versions served by
#                        a 90/10 split of versions 2 and 3, business hours (7
#                        weekly windows open all day, America/New_York, 20
#                        closed dates in 2027) with an after-hours agent, and
#                        Acme's 50 caller rules (10 prefix blocks, 39 exact
#                        blocks, 1 exact route), none matching the caller.
# The caller, +14155550123, is a customer of both orgs and matches no rule:
# every decision answers, after scanning the rules and checking the hours.
# Target: rich costs at most 1.2x bare (ResolveAgent, same round).
# Also the encoded route sizes (STRLEN of the Redis route keys, the bytes
# the memory tier keeps): Acme's route before the rules exist, after, and
# the rich route. Prints Markdown for BENCHMARKS.md.
#
#   benches/load/routing.sh                 # 3 rounds of 5 s per case
#   ROUNDS=5 SECS=10 RATE=500 benches/load/routing.sh
#
# Needs what benches/load/run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-5}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-500}
C=${C:-16}
CONNS=${CONNS:-4}
PORT=${PORT:-29181}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_routing_$$
OUT=$(mktemp -d)
PIDS=()
ACME=0a000000-0000-4000-8000-00000000000a
BLUEBIRD=0b000000-0000-4000-8000-00000000000b
PLAIN_AGENT=aa000000-0000-4000-8000-000000000001
RICH_AGENT=aa000000-0000-4000-8000-000000000002
BARE=+18005550200
PLAIN=+18005550100
RICH=+18005550101
CALLER=+14155550123

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG/postgres" -c "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  # Routes under v3, live call keys under v2 (src/live/mod.rs).
  for v in v2 v3; do
    redis-cli --scan --pattern "switchboard:$v:$DB:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
  done
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
psql -q "$PG/$DB" -c "update public.organizations set max_concurrent_calls = 100000 where id in ('$ACME', '$BLUEBIRD')" >/dev/null

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
HEALTH=grpc.health.v1.Health.Check
call() { echo "{\"called_number\":\"$1\",\"caller_number\":\"$CALLER\"}"; }

# $1 number: the bytes of its route in Redis (0 if not there yet). The key
# is switchboard:v3:<namespace>:<database identity>:route:<E.164>.
route_key() { redis-cli -h $REDIS_HOST -p $REDIS_PORT --scan --pattern "switchboard:v3:$DB:*:route:$1" | head -1; }
route_bytes() {
  local key; key=$(route_key "$1")
  [[ -n $key ]] && redis-cli -h $REDIS_HOST -p $REDIS_PORT strlen "$key" || echo 0
}
# $1 number, $2 a size it must differ from (0: any): resolves until its
# route is in Redis with a new size (the fill is asynchronous; after a rule
# change, the eviction too), prints that size.
fill_route() {
  local number=$1 old=$2 size=0
  for _ in $(seq 150); do
    "$BENCH" --call $RESOLVE -H "authorization: Bearer $SERVICE" -d "$(call "$number")" -n 1 -c 1 \
      -O json 127.0.0.1:$PORT >/dev/null
    size=$(route_bytes "$number")
    if [[ $size -gt 0 && $size -ne $old ]]; then echo "$size"; return; fi
    sleep 0.1
  done
  echo "the route of $number did not reach Redis (size $size, old $old):" >&2
  tail -20 "$OUT/server.log" >&2
  exit 1
}

# Sizes before the routing data exists: the seeded routes as section D of
# BENCHMARKS.md measured them (339 B then for Acme's).
PLAIN_BEFORE=$(fill_route $PLAIN 0)
BARE_BYTES=$(fill_route $BARE 0)

# The rich agent, its versions, hours and after-hours agent, and Acme's
# caller rules, by SQL as postgres (the triggers number the versions, copy
# the agent's fields into each, and evict Acme's routes).
psql -q -v ON_ERROR_STOP=1 "$PG/$DB" >/dev/null <<SQL
begin;
insert into public.agents (id, org_id, name, phone_number, voice_id, llm_config) values
  ('$RICH_AGENT', '$ACME', 'Acme Routing', '$RICH', 'alloy',
   '{"model": "gpt-4o-mini", "temperature": 0.3, "system_prompt": "You are the front desk of Acme Dental."}');
insert into public.agent_versions (agent_id, org_id) values ('$RICH_AGENT', '$ACME');
update public.agents set voice_id = 'verse' where id = '$RICH_AGENT';
insert into public.agent_versions (agent_id, org_id) values ('$RICH_AGENT', '$ACME');
update public.agents set voice_id = 'echo' where id = '$RICH_AGENT';
insert into public.agent_versions (agent_id, org_id) values ('$RICH_AGENT', '$ACME');
update public.agents set
  serving = '{"split": [{"version": 2, "weight": 90}, {"version": 3, "weight": 10}]}',
  after_hours_agent_id = '$PLAIN_AGENT',
  business_hours = jsonb_build_object(
    'time_zone', 'America/New_York',
    'weekly', (select jsonb_agg(jsonb_build_object('day', d, 'open', '00:00', 'close', '24:00') order by n)
               from unnest(array['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']) with ordinality as w(d, n)),
    'exceptions', (select jsonb_agg(jsonb_build_object('date', to_char(d, 'YYYY-MM-DD'), 'closed', true) order by d)
                   from generate_series(date '2027-01-01', date '2027-01-01' + 19 * 17, interval '17 days') d))
  where id = '$RICH_AGENT';
-- 10 prefix blocks (premium lines, countries the caller is not in).
insert into public.caller_rules (org_id, match, pattern, action, label)
select '$ACME', 'prefix', p, 'block', 'blocked prefix ' || p
from unnest(array['+1900', '+1976', '+44', '+33', '+49', '+86', '+91', '+7', '+234', '+880']) p;
-- 39 exact blocks.
insert into public.caller_rules (org_id, match, pattern, action, label)
select '$ACME', 'exact', '+1202555' || lpad(n::text, 4, '0'), 'block', 'spam caller ' || n
from generate_series(1, 39) n;
-- 1 exact route, to the seeded agent (not the rich one: no hop to itself).
insert into public.caller_rules (org_id, match, pattern, action, agent_id, label)
values ('$ACME', 'exact', '+12125550199', 'route', '$PLAIN_AGENT', 'VIP line');
commit;
SQL
psql -q -At "$PG/$DB" >"$OUT/setup.txt" <<SQL
select 'rich agent: latest_version ' || latest_version || ', serving ' || serving::text
       || ', weekly windows ' || jsonb_array_length(business_hours -> 'weekly')
       || ', exceptions ' || jsonb_array_length(business_hours -> 'exceptions')
from public.agents where id = '$RICH_AGENT';
select 'versions: ' || string_agg(version || '=' || voice_id, ' ' order by version)
from public.agent_versions where agent_id = '$RICH_AGENT';
select 'Acme caller rules: ' || count(*) || ' (' || count(*) filter (where match = 'prefix') || ' prefix, '
       || count(*) filter (where action = 'route') || ' route); matching the caller: '
       || count(*) filter (where (match = 'exact' and pattern = '$CALLER')
                              or (match = 'prefix' and '$CALLER' like pattern || '%'))
from public.caller_rules where org_id = '$ACME';
SQL
cat "$OUT/setup.txt" >&2

# Sizes with the routing data: Acme's seeded route now carries the rules.
PLAIN_AFTER=$(fill_route $PLAIN "$PLAIN_BEFORE")
RICH_BYTES=$(fill_route $RICH 0)
RULES=$(psql -q -At "$PG/$DB" -c "select count(*) from public.caller_rules where org_id = '$ACME'")
PLAIN_KEY=$(route_key $PLAIN)

# $1 name; then the load tool's flags for the load.
grpc() {
  local name=$1; shift
  "$BENCH" -H "authorization: Bearer $SERVICE" --connections "$CONNS" -z "${SECS}s" \
    -O json -o "$OUT/$name.json" "$@" 127.0.0.1:$PORT
}
raw_redis() {
  redis-benchmark -h $REDIS_HOST -p $REDIS_PORT -c "$C" -n $((SECS * 20000)) --csv \
    get "$PLAIN_KEY" >"$OUT/$1.csv" 2>/dev/null
}
cat >"$OUT/bare.sql" <<'SQL'
select a.id, a.org_id, a.voice_id, a.llm_config, o.name from public.agents a join public.organizations o on o.id = a.org_id where a.phone_number = '+18005550100';
SQL
raw_pg() {
  pgbench -n -c "$C" -j 2 -T "$SECS" -M prepared -f "$OUT/bare.sql" "$PG/$DB" >"$OUT/$1.txt" 2>&1
}

# Warm: the routes and callers in memory, pools open.
for number in $BARE $PLAIN $RICH; do
  "$BENCH" --call $START -H "authorization: Bearer $SERVICE" -d "$(call $number)" -c 4 -z 1s -O json 127.0.0.1:$PORT >/dev/null
  "$BENCH" --call $RESOLVE -H "authorization: Bearer $SERVICE" -d "$(call $number)" -c 4 -z 1s -O json 127.0.0.1:$PORT >/dev/null
done

for round in $(seq "$ROUNDS"); do
  # Odd rounds bare, plain, rich; even rounds the reverse.
  order=(bare plain rich)
  (( round % 2 == 0 )) && order=(rich plain bare)
  grpc "r$round-health-sat" --call $HEALTH -d '{}' -c "$C"
  for method in resolve start; do
    m=$RESOLVE; [[ $method == start ]] && m=$START
    for kind in "${order[@]}"; do
      number=$BARE; [[ $kind == plain ]] && number=$PLAIN; [[ $kind == rich ]] && number=$RICH
      grpc "r$round-$method-$kind-sat" --call $m -d "$(call $number)" -c "$C"
    done
  done
  raw_redis "r$round-redis-sat"
  raw_pg "r$round-pg-sat"
  for method in resolve start; do
    m=$RESOLVE; [[ $method == start ]] && m=$START
    for kind in "${order[@]}"; do
      number=$BARE; [[ $kind == plain ]] && number=$PLAIN; [[ $kind == rich ]] && number=$RICH
      grpc "r$round-$method-$kind-rate" --call $m -d "$(call $number)" -c "$C" -r "$RATE"
    done
  done
done
grep -h "ERROR\|WARN" "$OUT/server.log" | sort | uniq -c | head -5 >&2 || true

# What the StartCalls recorded: every decision answered, the split served.
psql -q -At -F ' ' "$PG/$DB" >"$OUT/calls.txt" <<SQL
select called_number, coalesce(outcome, '-'), coalesce(reason, '-'), coalesce(agent_version::text, '-'), count(*)
from public.calls
group by 1, 2, 3, 4 order by 1, 2, 3, 4;
SQL

python3 - "$OUT" "$ROUNDS" "$RATE" "$C" "$CONNS" "$SECS" \
  "$PLAIN_BEFORE" "$PLAIN_AFTER" "$RICH_BYTES" "$BARE_BYTES" "$RULES" <<'PY'
import json, os, re, statistics, sys
out, rounds, rate, c, conns, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
plain_before, plain_after, rich_bytes, bare_bytes, rules = map(int, sys.argv[7:12])
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
    return {"rps": float(cols[1]), "p50": float(cols[4]), "p99": float(cols[6]), "p999": None, "errors": 0}
def pg(name):
    text = open(os.path.join(out, name + ".txt")).read()
    return {"rps": float(re.search(r"tps = ([0-9.]+)", text).group(1)), "p50": None, "p99": None, "p999": None,
            "avg": float(re.search(r"latency average = ([0-9.]+) ms", text).group(1)), "errors": 0}
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(x):
    return "n/a" if x is None else f"{x:.3f} ms"
labels = {"bare": f"bare (Bluebird, no rules)", "plain": f"plain (Acme, carries {rules} rules)",
          "rich": "rich (versions, hours, rules)"}
data = {}
for mode, title in [("sat", f"saturation, {c} in flight over {conns} connections"),
                    ("rate", f"steady offered rate, {rate}/s (open loop, {c} workers)")]:
    print(f"### {title}; median of {rounds} interleaved rounds of {secs} s\n")
    print("| case | rps | p50 | p99 | p99.9 | errors | rps per round | p99 per round |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    cases = []
    if mode == "sat":
        cases.append(("health", grpc, "floor: grpc.health.v1.Health/Check"))
    for method, mlabel in [("resolve", "ResolveAgent"), ("start", "StartCall")]:
        for kind in ("bare", "plain", "rich"):
            cases.append((f"{method}-{kind}", grpc, f"{mlabel}, {labels[kind]}"))
    if mode == "sat":
        cases.append(("redis", redis, f"raw: redis-benchmark GET of Acme's route key, {c} clients"))
        cases.append(("pg", pg, f"raw: pgbench indexed agent+org lookup, prepared, {c} clients (avg)"))
    for key, read, label in cases:
        rs = [read(f"r{i}-{key}-{mode}") for i in range(1, rounds + 1)]
        data[(key, mode)] = rs
        m = {k: med([r[k] for r in rs]) for k in ("rps", "p50", "p99", "p999")}
        if key == "pg":
            m["p50"] = med([r["avg"] for r in rs])
        errors = sum(r["errors"] for r in rs)
        per_rps = ", ".join(f"{r['rps']:.0f}" for r in rs)
        per_p99 = ", ".join("n/a" if r["p99"] is None else f"{r['p99']:.3f}" for r in rs)
        print(f"| {label} | {m['rps']:.0f} | {fmt(m['p50'])} | {fmt(m['p99'])} | {fmt(m['p999'])} | {errors} | {per_rps} | {per_p99} |")
    print()
    # Ratios within each round, then their median.
    print(f"Ratios, {title}: rich / bare and rich / plain, each round (rps: below 1 is slower; p50, p99: above 1 is slower).\n")
    print("| round | Resolve rich/bare rps | p50 | p99 | Resolve rich/plain rps | p50 | p99 | Start rich/bare rps | p50 | p99 | Start rich/plain rps | p50 | p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cols = []
    for method in ("resolve", "start"):
        for base in ("bare", "plain"):
            for k in ("rps", "p50", "p99"):
                cols.append([data[(f"{method}-rich", mode)][i][k] / data[(f"{method}-{base}", mode)][i][k]
                             for i in range(rounds)])
    for i in range(rounds):
        print(f"| {i + 1} | " + " | ".join(f"{col[i]:.2f}" for col in cols) + " |")
    print("| median | " + " | ".join(f"**{statistics.median(col):.2f}**" for col in cols) + " |")
    print()
calls = open(os.path.join(out, "calls.txt")).read().strip().splitlines()
print("StartCall records (called number, outcome, reason, agent version, count):\n")
print("```")
print("\n".join(calls))
print("```\n")
print("### memory per route: encoded bytes (Redis STRLEN; the memory tier keeps the same bytes)\n")
print("| route | bytes |")
print("|---|---:|")
print(f"| bare: Bluebird's seeded agent (org without rules) | {bare_bytes} |")
print(f"| plain: Acme's seeded agent, before any rule existed | {plain_before} |")
print(f"| plain: Acme's seeded agent, with Acme's {rules} rules | {plain_after} |")
print(f"| rich: versions (2 served), hours (7 windows, 20 exceptions), after-hours agent, {rules} rules | {rich_bytes} |")
print()
per_rule = (plain_after - plain_before) / rules if rules else float("nan")
print(f"The org's {rules} rules add {plain_after - plain_before} B to every route of the org ({per_rule:.1f} B per rule). "
      f"Versions, hours and after-hours agent add {rich_bytes - plain_after} B to the rich agent's route beyond that; "
      f"rich - plain(before rules) = {rich_bytes - plain_before} B.")
PY
