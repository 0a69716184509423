# Sourced by the load scripts (run.sh, profile.sh, instructions.sh,
# cpu_split.sh): the release builds, a scratch database with the migrations
# and the demo data, our server on it, the tenant statement for pgbench, and
# the clean-up of what a script started. Uses PG, PIDS, DB, OUT and SECRET
# as the scripts set them.

# The service, the load tool and the bare floor, release builds; sets BIN,
# BENCH and BARE.
build_release() {
  cargo build --release --locked --quiet -p switchboard -p switchboard-bench
  # Its own invocation: an example brings the dev-dependencies' features,
  # which must not reach the service's binary measured here.
  cargo build --release --locked --quiet -p switchboard --example bare_server
  BIN=target/release/switchboard
  BENCH=target/release/switchboard-bench
  BARE=target/release/examples/bare_server
}

# $1 database: created, migrated by $BIN, seeded with the demo data.
scratch_database() {
  psql -q "$PG/postgres" -c "create database $1" >/dev/null
  DATABASE_URL="$PG/$1" "$BIN" migrate >/dev/null
  psql -q "$PG/$1" -f supabase/seed.sql >/dev/null
}

# Stops every process in PIDS.
stop_started() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# $1 database: dropped, with its routes in Redis.
drop_scratch() {
  psql -q "$PG/postgres" -c "drop database if exists $1 with (force)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "switchboard:*:$1:*" | xargs -r redis-cli del >/dev/null 2>&1 || true
}

# $1 port; waits until a health check answers there. $2 tries (100), $3
# seconds between them (0.1), $4 a log to show if nothing ever answers.
wait_for_health() {
  for _ in $(seq "${2:-100}"); do
    "$BENCH" --call grpc.health.v1.Health.Check -n 1 -c 1 -O json "127.0.0.1:$1" >/dev/null 2>&1 && return
    sleep "${3:-0.1}"
  done
  echo "nothing answers on $1" >&2
  if [[ -n ${4:-} ]]; then cat "$4" >&2; fi
  exit 1
}

# $1 binary, $2 port, then a command to run it under (valgrind, say), if
# any: our service on the scratch database $DB with Redis, in the
# background, logging to $OUT/server.$2.log. Sets SERVER to its pid and
# waits until it answers (a minute, for valgrind's start).
serve_scratch() {
  local bin=$1 port=$2
  shift 2
  env SUPABASE_JWT_SECRET=$SECRET DATABASE_URL="$PG/$DB" SWITCHBOARD_REDIS_NAMESPACE=$DB RUST_LOG=warn \
    SWITCHBOARD_TENANT_MAX_CONCURRENT=0 REDIS_URL=redis://127.0.0.1:6379 \
    SWITCHBOARD_LISTEN=127.0.0.1:$port SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:$((port - 10000)) \
    "$@" "$bin" serve >"$OUT/server.$port.log" 2>&1 &
  PIDS+=($!)
  SERVER=$!
  wait_for_health "$port" 300 0.2 "$OUT/server.$port.log"
}

# $1 a tenant's token, $2 a file: the tenant path's statement exactly as the
# service sends it (one simple-protocol query: `store::tx::single_statement`
# around `store::postgres::resolve_agent`), with the token's own claims,
# written for pgbench (same text, same protocol as the load).
tenant_statement() {
  claims_statement "$(python3 -c 'import base64,sys; p=sys.argv[1].split(".")[1]; print(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)).decode())' "$1")" "$2"
}

# $1 claims (JSON), $2 a file, $3 the role (authenticated): the same
# statement for those claims, compacted with sorted keys as the service
# writes them.
claims_statement() {
  local claims
  claims=$(python3 -c 'import sys,json; print(json.dumps(json.loads(sys.argv[1]), separators=(",", ":"), sort_keys=True).replace("\x27", "\x27\x27"))' "$1")
  cat >"$2" <<SQL
SET LOCAL ROLE NONE\; SET LOCAL search_path = pg_catalog, pg_temp\; SET LOCAL statement_timeout = '5000ms'\; select * from switchboard_private.resolve_number('$claims', '${3:-authenticated}', '+18005550100', '+14155550123');
SQL
}
