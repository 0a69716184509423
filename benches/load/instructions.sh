#!/usr/bin/env bash
# Instructions per call under callgrind: a measure this machine's noise does
# not move (run.sh's rates moved 2-3x within minutes). Each server runs under
# valgrind; after a warm-up its counters are zeroed, the load tool sends N
# calls one at a time, and the dump's total is divided by N. The cases are
# the ratios of issue 16, side by side:
#   bare-health, health (our health check), bare (the bare tonic server's
#   ResolveAgent, answering our encoded answer), memory (our memory tier),
#   tenant (our tenant path: the user-space side of a Postgres round trip
#   under RLS; no floor), and with BEFORE=<an older switchboard binary> its
#   health, memory tier and tenant path.
# Our server's count includes what it does in the background meanwhile (the
# identity re-read every second, the listener's probes): a few per cent.
#
#   benches/load/instructions.sh            # N=2000 calls per case
#   N=500 BEFORE=/tmp/before/switchboard benches/load/instructions.sh
#   KEEP=/tmp/cg benches/load/instructions.sh   # keep the dumps, for
#                                               # callgrind_annotate
#
# Needs valgrind (callgrind_control) and what benches/load/run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-2000}
WARM=${WARM:-300}
PORT=${PORT:-29291}
BEFORE=${BEFORE:-}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SECRET=bench-secret-bench-secret-bench-secret-0123
DB=switchboard_instr_$$
OUT=$(mktemp -d)
PIDS=()
source benches/load/common.sh
cleanup() {
  stop_started
  drop_scratch "$DB"
  if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$OUT"/cg.* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$OUT"
}
trap cleanup EXIT

build_release
scratch_database "$DB"

# $1 binary, $2 port, $3 "valgrind" or "": serves our service; LAST is its pid.
serve() {
  local wrap=()
  [[ $3 == valgrind ]] && wrap=(valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$2.%p" -q)
  serve_scratch "$1" "$2" "${wrap[@]}"
  LAST=$SERVER
}

# The answer source for the bare server: ours, natively.
serve "$BIN" "$PORT" ""
SERVICE=$("$BIN" token --role service_role --jwt-secret "$SECRET")
CALL='{"called_number":"+18005550100","caller_number":"+14155550123"}'
RESOLVE=switchboard.v1.AgentService.ResolveAgent
HEALTH=(--call grpc.health.v1.Health.Check -d '{}')
MEMORY=(--call $RESOLVE -d "$CALL" -H "authorization: Bearer $SERVICE")
TENANT=(--call $RESOLVE -d "$CALL" -H "authorization: Bearer $("$BIN" token --role authenticated --sub a0000000-0000-4000-8000-000000000003 --jwt-secret "$SECRET")")

# $1 case name, $2 port, $3 pid under valgrind, rest: the load's flags.
# Prints "name instructions-per-call".
count() {
  local name=$1 port=$2 pid=$3
  shift 3
  "$BENCH" "$@" -c 1 -n "$WARM" -O json 127.0.0.1:$port >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  "$BENCH" "$@" -c 1 -n "$N" -O json -o "$OUT/load.json" 127.0.0.1:$port >/dev/null
  local before
  before=$(ls "$OUT" | wc -l)
  callgrind_control -d "$name" "$pid" >/dev/null 2>&1
  # The dump is written asynchronously: wait for the new file.
  for _ in $(seq 300); do
    (( $(ls "$OUT" | wc -l) > before )) && break
    sleep 0.1
  done
  local ok
  ok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['statusCodeDistribution'].get('OK',0))" "$OUT/load.json")
  [[ $ok == "$N" ]] || { echo "$name: $ok of $N calls OK" >&2; exit 1; }
  local file
  file=$(ls -t "$OUT"/cg.$port.* | head -1)
  local total
  # Written last: wait until it is there.
  for _ in $(seq 300); do
    total=$(grep -E '^(summary|totals):' "$file" | head -1 | awk '{print $2}')
    [[ -n $total ]] && break
    sleep 0.1
  done
  echo "$name $((total / N))"
}

RESULTS=()
serve "$BIN" $((PORT + 1)) valgrind
OURS=$LAST
RESULTS+=("$(count health $((PORT + 1)) $OURS "${HEALTH[@]}")")
RESULTS+=("$(count memory $((PORT + 1)) $OURS "${MEMORY[@]}")")
RESULTS+=("$(count tenant $((PORT + 1)) $OURS "${TENANT[@]}")")

valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$((PORT + 2)).%p" -q \
  "$BARE" --listen 127.0.0.1:$((PORT + 2)) --answer-from http://127.0.0.1:$PORT \
  --token "$SERVICE" --called +18005550100 --caller +14155550123 >"$OUT/bare.log" 2>&1 &
PIDS+=($!)
BARE=$!
wait_for_health $((PORT + 2)) 300 0.2
RESULTS+=("$(count bare-health $((PORT + 2)) $BARE "${HEALTH[@]}")")
RESULTS+=("$(count bare $((PORT + 2)) $BARE "${MEMORY[@]}")")

if [[ -n $BEFORE ]]; then
  serve "$BEFORE" $((PORT + 3)) valgrind
  RESULTS+=("$(count before-health $((PORT + 3)) $LAST "${HEALTH[@]}")")
  RESULTS+=("$(count before-memory $((PORT + 3)) $LAST "${MEMORY[@]}")")
  RESULTS+=("$(count before-tenant $((PORT + 3)) $LAST "${TENANT[@]}")")
fi

printf '%s\n' "${RESULTS[@]}" | python3 -c '
import sys
r = dict((k, int(v)) for k, v in (l.split() for l in sys.stdin if l.strip()))
print("| case | instructions per call | bare / case |")
print("|---|---:|---:|")
floor = {"health": "bare-health", "memory": "bare", "before-health": "bare-health", "before-memory": "bare"}
for k, v in r.items():
    f = floor.get(k)
    print(f"| {k} | {v:,} | " + (f"{r[f] / v:.2f}" if f in r else "") + " |")
'
