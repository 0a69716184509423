-- Cache invalidation through an outbox (replaces the payloads of 0003).
--
-- Any login role may NOTIFY and LISTEN on any channel, and Postgres cannot
-- revoke either: a notification is untrusted input and its payload is
-- visible to everyone. So the triggers of 0003 (same function, redefined
-- here) append what changed to a private table and NOTIFY
-- `switchboard_invalidate` with an EMPTY payload: a wake-up that carries no
-- number, org id or tenant data. The listener reads the outbox after the
-- last sequence it applied; a forged notification costs it one indexed read
-- of rows it already has.
--
-- `seq` is taken when the row is inserted but becomes visible at commit, so
-- sequence numbers commit out of order. `xid` is the writer's transaction id,
-- taken (assigned) before its `seq`: a reader proves a gap in the sequence
-- is not in flight with it (see src/cache/invalidation.rs). `cache 1`: with a
-- per-session sequence cache, a lower number could be taken after a higher
-- one, which that proof forbids.
--
-- Pruned by the service (`prune_invalidation_outbox`, every minute, rows
-- older than the retention it passes); `invalidation_outbox_pruned.upto` is
-- the highest sequence ever pruned, so a reader that had not read that far
-- knows it missed rows.
--
-- Re-runnable. No privilege for anon, authenticated or service_role.

create table if not exists switchboard_private.invalidation_outbox (
  seq bigint generated always as identity (cache 1) primary key,
  xid xid8 not null,
  created_at timestamptz not null default pg_catalog.clock_timestamp(),
  change jsonb not null
    constraint invalidation_outbox_kind check (change ->> 'kind' in ('numbers', 'callers', 'all'))
);
alter sequence switchboard_private.invalidation_outbox_seq_seq cache 1;
create index if not exists invalidation_outbox_created_at
  on switchboard_private.invalidation_outbox (created_at);

create table if not exists switchboard_private.invalidation_outbox_pruned (
  singleton boolean primary key default true constraint invalidation_outbox_pruned_one check (singleton),
  upto bigint not null default 0
);
insert into switchboard_private.invalidation_outbox_pruned (singleton, upto)
  values (true, 0) on conflict (singleton) do nothing;

revoke all on table switchboard_private.invalidation_outbox from public, anon, authenticated, service_role;
revoke all on sequence switchboard_private.invalidation_outbox_seq_seq from public, anon, authenticated, service_role;
revoke all on table switchboard_private.invalidation_outbox_pruned from public, anon, authenticated, service_role;

-- What changed, as the listener reads it (`change`):
--   {"kind":"numbers","numbers":["+18005550100", ...]}           routes
--   {"kind":"callers","callers":[{"org_id":"…","phone":"+1…"}]}  caller records
--   {"kind":"all"}                                                 everything (TRUNCATE)
create or replace function switchboard_private.notify_invalidation()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  numbers text[];
  change jsonb;
  writer xid8;
begin
  if tg_level = 'STATEMENT' then
    -- TRUNCATE: no rows to name.
    change := jsonb_build_object('kind', 'all');
  elsif tg_table_name = 'agents' then
    numbers := array_remove(array[
      case when tg_op <> 'INSERT' then old.phone_number end,
      case when tg_op <> 'DELETE' then new.phone_number end
    ], null);
    change := jsonb_build_object('kind', 'numbers', 'numbers', to_jsonb(numbers));
  elsif tg_table_name = 'organizations' then
    select coalesce(array_agg(a.phone_number), '{}') into numbers
    from public.agents a
    where a.org_id = case when tg_op = 'DELETE' then old.id else new.id end;
    -- No NOTIFY size limit any more; past this, one flush is cheaper than
    -- naming every number.
    if cardinality(numbers) > 10000 then
      change := jsonb_build_object('kind', 'all');
    else
      change := jsonb_build_object('kind', 'numbers', 'numbers', to_jsonb(numbers));
    end if;
  elsif tg_table_name = 'customers' then
    change := jsonb_build_object('kind', 'callers', 'callers', (
      select coalesce(jsonb_agg(distinct c), '[]'::jsonb)
      from (
        select jsonb_build_object('org_id', old.org_id, 'phone', old.phone) as c
        where tg_op <> 'INSERT'
        union all
        select jsonb_build_object('org_id', new.org_id, 'phone', new.phone)
        where tg_op <> 'DELETE'
      ) changed
    ));
  end if;
  -- The transaction id first (assigning one if needed), then the sequence
  -- number: readers rely on that order.
  writer := pg_catalog.pg_current_xact_id();
  insert into switchboard_private.invalidation_outbox (xid, change) values (writer, change);
  -- Identical notifications of one transaction are folded into one.
  perform pg_catalog.pg_notify('switchboard_invalidate', '');
  return null;
end
$$;
revoke all on function switchboard_private.notify_invalidation() from public, anon, authenticated, service_role;

-- Deletes rows older than `retention` and records how far it went. Rows
-- are deleted by sequence (all at or below the newest expired one), so the
-- recorded bound is exact.
create or replace function switchboard_private.prune_invalidation_outbox(retention interval)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  newest_expired bigint;
  deleted bigint;
begin
  select max(seq) into newest_expired
  from switchboard_private.invalidation_outbox
  where created_at < pg_catalog.clock_timestamp() - retention;
  if newest_expired is null then
    return 0;
  end if;
  delete from switchboard_private.invalidation_outbox where seq <= newest_expired;
  get diagnostics deleted = row_count;
  update switchboard_private.invalidation_outbox_pruned
    set upto = greatest(upto, newest_expired);
  return deleted;
end
$$;
revoke all on function switchboard_private.prune_invalidation_outbox(interval) from public, anon, authenticated, service_role;
