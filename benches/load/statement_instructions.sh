#!/usr/bin/env bash
# Instructions per tenant statement inside Postgres (issue 16): the
# statement the tenant path sends, exactly as `claims_statement` writes it
# for pgbench, run N times by a single-user Postgres under callgrind. A
# count this machine's noise does not move (pgbench's rate on the same
# statement moved 2x within an hour), for the one part of a tenant call
# that instructions.sh cannot see.
#
# A private cluster in a temporary directory (initdb, its own socket, no
# TCP), a database per side migrated with psql from migrations/ and seeded
# with supabase/seed.sql, never analyzed: the plans the load scripts' fresh
# databases get. Each case runs twice, 20 and 20 + N statements after the
# same warm-up; the difference over N is one statement. Single-user mode
# prints the row it returns (about 0.19 M instructions for the route's 31
# columns), where a server would send it: the same in every tenant case.
#
#   benches/load/statement_instructions.sh                 # N=100
#   BEFORE=fc9b539 benches/load/statement_instructions.sh  # and that
#                                       # revision's migrations, same run
#
# Needs valgrind, Postgres's server binaries (PGBIN, default: pg_config's),
# python3; as root, runs Postgres as the `postgres` user.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100}
BEFORE=${BEFORE:-}
PGBIN=${PGBIN:-$(pg_config --bindir)}
SECRET=bench-secret-bench-secret-bench-secret-0123
WORK=$(mktemp -d)
trap 'as_pg "$PGBIN/pg_ctl" -D "$WORK/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
if [[ $(id -u) == 0 ]]; then
  chown postgres "$WORK"
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

# The sides: "after" is this checkout; "before" a revision's migrations and
# seed, taken with git.
mkdir -p "$WORK/after"
cp -r migrations supabase "$WORK/after/"
SIDES=(after)
if [[ -n $BEFORE ]]; then
  mkdir -p "$WORK/before"
  git archive "$BEFORE" migrations supabase | tar -x -C "$WORK/before"
  SIDES+=(before)
fi
chmod -R a+rX "$WORK"

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -o "-c listen_addresses='' -k $WORK -c fsync=off" \
  -l "$WORK/log" -w start >/dev/null
for side in "${SIDES[@]}"; do
  psql -q -h "$WORK" -U postgres -c "create database $side" postgres
  for f in "$WORK/$side"/migrations/*.sql; do
    psql -q -h "$WORK" -U postgres -v ON_ERROR_STOP=1 -f "$f" "$side" >/dev/null 2>&1 ||
      { echo "$f failed on $side" >&2; exit 1; }
  done
  psql -q -h "$WORK" -U postgres -v ON_ERROR_STOP=1 -f "$WORK/$side/supabase/seed.sql" "$side" >/dev/null
done
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -w stop >/dev/null

# The statements, one line each (single-user mode ends a query at a newline).
source benches/load/common.sh
SUB=a0000000-0000-4000-8000-000000000003
# What `switchboard token` signs for the load scripts.
SHORT="{\"aud\":\"authenticated\",\"exp\":1796082719,\"iat\":1796079119,\"iss\":\"switchboard-dev\",\"role\":\"authenticated\",\"sub\":\"$SUB\"}"
# A Supabase access token's claims (GoTrue, email sign-in): about 600 bytes.
SUPABASE="{\"aal\":\"aal1\",\"amr\":[{\"method\":\"password\",\"timestamp\":1796079119}],\"app_metadata\":{\"provider\":\"email\",\"providers\":[\"email\"]},\"aud\":\"authenticated\",\"email\":\"grace@acme-dental.example\",\"exp\":1796082719,\"iat\":1796079119,\"is_anonymous\":false,\"iss\":\"https://abcdefghijklmnopqrst.supabase.co/auth/v1\",\"phone\":\"\",\"role\":\"authenticated\",\"session_id\":\"5f0c1a0e-7c2b-4a57-9a7e-2f4b1c3d5e6f\",\"sub\":\"$SUB\",\"user_metadata\":{\"email\":\"grace@acme-dental.example\",\"email_verified\":true,\"full_name\":\"Grace Hopper\",\"phone_verified\":false,\"sub\":\"$SUB\"}}"
SERVICE='{"role":"service_role"}'
statement() { # $1 claims, $2 role: the line
  claims_statement "$1" "$WORK/stmt.sql" "$2"
  sed -e 's/\\;/;/g' "$WORK/stmt.sql" | tr '\n' ' '
}
statement "$SHORT" authenticated >"$WORK/tenant.line"
statement "$SUPABASE" authenticated >"$WORK/supabase.line"
statement "$SERVICE" service_role >"$WORK/service.line"
echo "select a.id, a.org_id, a.voice_id, a.llm_config, o.name from public.agents a join public.organizations o on o.id = a.org_id where a.phone_number = '+18005550100';" >"$WORK/lookup.line"

# $1 side, $2 case, $3 statements after the warm-up: total instructions.
run() {
  local input=$WORK/in.$1.$2.$3
  { for _ in $(seq $((30 + $3))); do cat "$WORK/$2.line"; echo; done; } >"$input"
  chmod a+r "$input"
  as_pg valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$1.$2.$3" \
    "$PGBIN/postgres" --single -D "$WORK/data" "$1" <"$input" >"$WORK/out.$1.$2.$3" 2>"$WORK/err.$1.$2.$3"
  if grep -q "ERROR" "$WORK/out.$1.$2.$3"; then
    grep -m1 ERROR "$WORK/out.$1.$2.$3" >&2
    exit 1
  fi
  if ! grep -q "$4" "$WORK/out.$1.$2.$3"; then
    echo "$1 $2: no answer" >&2
    exit 1
  fi
  sed -n 's/.*Collected : //p' "$WORK/err.$1.$2.$3" | tr -d ' ,'
}
per_statement() { # $1 side, $2 case, $3 a text the answer holds
  local small big
  small=$(run "$1" "$2" 20 "$3")
  big=$(run "$1" "$2" $((20 + N)) "$3")
  echo $(((big - small) / N))
}

declare -A COUNT
for side in "${SIDES[@]}"; do
  for case in tenant supabase service lookup; do
    COUNT[$side.$case]=$(per_statement "$side" "$case" "Acme")
  done
done

fmt() { python3 -c 'import sys; print(f"{int(sys.argv[1]):,}".replace(",", " ") if sys.argv[1] else "")' "${1:-}"; }
echo "## Instructions per statement inside Postgres (single-user, callgrind, $N statements)"
echo
echo "| statement | after | ${BEFORE:+before ($BEFORE) | after / before |}"
echo "|---|---:|${BEFORE:+---:|---:|}"
for case in tenant supabase service lookup; do
  case $case in
    tenant) label="the tenant statement, the load scripts' token (6 claims)" ;;
    supabase) label="the tenant statement, a Supabase access token's claims (17 claims, 600 bytes)" ;;
    service) label="the same statement as service_role (no RLS)" ;;
    lookup) label="floor: the indexed agent+org lookup, no RLS, no function" ;;
  esac
  line="| $label | $(fmt "${COUNT[after.$case]}") |"
  if [[ -n $BEFORE ]]; then
    ratio=$(python3 -c "print(f'{$((COUNT[after.$case])) / $((COUNT[before.$case])):.3f}')")
    line="$line $(fmt "${COUNT[before.$case]}") | $ratio |"
  fi
  echo "$line"
done
