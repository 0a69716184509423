# Sourced by the load scripts (run.sh, profile.sh, instructions.sh): the
# release builds, a scratch database with the migrations and the demo data,
# and the clean-up of what a script started. Uses PG, PIDS and DB as the
# scripts set them.

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
