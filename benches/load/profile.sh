#!/usr/bin/env bash
# Where a call's time goes: `perf record` on the server while the load tool
# drives one case (16 in flight over 4 connections), then the samples
# grouped by who owns the code (kernel, h2, hyper, tonic, tokio, prost,
# the allocator, switchboard, ...) and the top symbols. Prints Markdown.
#
#   benches/load/profile.sh                 # ResolveAgent, memory tier
#   CASE=health benches/load/profile.sh
#   CASE=bare benches/load/profile.sh       # the bare tonic floor's ResolveAgent
#   CASE=bare-health benches/load/profile.sh
#   CASE=tenant SECS=10 benches/load/profile.sh
#
# Needs perf (linux-perf) and what benches/load/run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

CASE=${CASE:-memory}
SECS=${SECS:-8}
PORT=${PORT:-29191}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_profile_$$
OUT=$(mktemp -d)
PIDS=()
source benches/load/common.sh
cleanup() {
  stop_started
  drop_scratch "$DB"
  if [[ -n ${KEEP:-} ]]; then cp "$OUT/report.txt" "$KEEP" 2>/dev/null || true; cp "$OUT/perf.data" "$KEEP.data" 2>/dev/null || true; fi
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
TARGET=$PORT
case $CASE in
  health) LOAD=(--call grpc.health.v1.Health.Check -d '{}') ;;
  memory) LOAD=(--call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE") ;;
  tenant) LOAD=(--call $RESOLVE -d "$CALL" -H "authorization: Bearer $TENANT") ;;
  start)  LOAD=(--call switchboard.v1.CallService.StartCall -d "$CALL" -H "authorization: Bearer $SERVICE")
          psql -q "$PG/$DB" -c "update public.organizations set max_concurrent_calls = 100000" >/dev/null ;;
  bare|bare-health)
    TARGET=$((PORT + 1))
    "$BARE" --listen 127.0.0.1:$TARGET --answer-from http://127.0.0.1:$PORT \
      --token "$SERVICE" --called +18005550100 --caller +14155550123 >"$OUT/bare.log" 2>&1 &
    PIDS+=($!)
    SERVER=$!
    wait_for_health "$TARGET"
    cat "$OUT/bare.log" >&2
    LOAD=(--call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE")
    [[ $CASE == bare-health ]] && LOAD=(--call grpc.health.v1.Health.Check -d '{}')
    ;;
  *) echo "CASE is health, memory, tenant, start, bare or bare-health" >&2; exit 2 ;;
esac
"$BENCH" "${LOAD[@]}" -c "${C:-16}" --connections "${CONNS:-4}" -z 2s -O json 127.0.0.1:$TARGET >/dev/null
"$BENCH" "${LOAD[@]}" -c "${C:-16}" --connections "${CONNS:-4}" -z "$((SECS + 2))s" -O json -o "$OUT/load.json" 127.0.0.1:$TARGET &
PIDS+=($!)
sleep 1
# The server's CPU time (user + system, clock ticks) across the profile.
cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
CPU_BEFORE=$(cpu)
perf record -F 1999 ${CALL_GRAPH:--g} -p "$SERVER" -o "$OUT/perf.data" -- sleep "$SECS" >/dev/null 2>&1
CPU_AFTER=$(cpu)
wait "${PIDS[-1]}"
perf report -i "$OUT/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null >"$OUT/report.txt"

python3 - "$OUT" "$CASE" "$CPU_BEFORE" "$CPU_AFTER" "$SECS" "$(getconf CLK_TCK)" <<'PY'
import json, re, sys, collections
out, case = sys.argv[1], sys.argv[2]
ticks, secs, hz = int(sys.argv[4]) - int(sys.argv[3]), int(sys.argv[5]), int(sys.argv[6])
r = json.load(open(f"{out}/load.json"))
ok = r["statusCodeDistribution"].get("OK", 0)
rps = ok / (r['total'] / 1e9)
print(f"## profile: {case}, {rps:.0f} OK calls/s under the profiler; server CPU {1e6 * ticks / hz / (rps * secs):.1f} µs per call\n")
rows = []
for line in open(f"{out}/report.txt"):
    m = re.match(r"\s+([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
    if m:
        rows.append((float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()))
owners = [("kernel", lambda d, s: d.startswith("[kernel")), ("allocator (malloc/free)", lambda d, s: "libc" in d and re.search(r"malloc|free|realloc|_int_|tcache|cfree", s)),
          ("memcpy/memmove", lambda d, s: "libc" in d and re.search(r"mem(cpy|move|set)", s)),
          ("libc, other", lambda d, s: "libc" in d), ("h2", lambda d, s: "h2::" in s), ("hyper", lambda d, s: "hyper" in s),
          ("tonic", lambda d, s: "tonic" in s), ("tokio", lambda d, s: "tokio" in s), ("prost", lambda d, s: "prost" in s),
          ("moka", lambda d, s: "moka" in s), ("tracing", lambda d, s: "tracing" in s), ("http/bytes", lambda d, s: re.search(r"\bhttp::|bytes::", s)),
          ("chrono (clock variables)", lambda d, s: "chrono" in s), ("formatting (core::fmt)", lambda d, s: "core::fmt" in s),
          ("hash maps", lambda d, s: re.search(r"hashbrown|HashMap|BuildHasher|sip::", s)),
          ("switchboard", lambda d, s: "switchboard" in s), ("sqlx", lambda d, s: "sqlx" in s), ("other", lambda d, s: True)]
total = collections.Counter()
for pct, dso, kind, sym in rows:
    for name, test in owners:
        if test(dso, sym):
            total[name] += pct
            break
print("| owner of the code | self samples |")
print("|---|---:|")
for name, _ in owners:
    if total[name] >= 0.05:
        print(f"| {name} | {total[name]:.1f} % |")
print("\n| top symbols (self) | |")
print("|---|---:|")
for pct, dso, kind, sym in sorted(rows, reverse=True)[:25]:
    print(f"| `{sym[:110]}` | {pct:.1f} % |")
PY
