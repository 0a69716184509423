-- Cache invalidation: every change to agents, organizations and customers,
-- through switchboard or not (Studio, SQL, PostgREST), notifies channel
-- `switchboard_invalidate` with what to evict. switchboard listens on a
-- direct (session) connection and turns each notification into eviction in
-- Redis and in every replica's memory tier.
--
-- Payloads (JSON, well under NOTIFY's 8000-byte limit):
--   {"kind":"numbers","numbers":["+18005550100", ...]}      routes to evict
--   {"kind":"callers","callers":[{"org_id":"…","phone":"+1…"}]}  caller records
--   {"kind":"all"}                                           flush everything
-- Notifications are delivered at commit, so a rolled-back change evicts
-- nothing.

create or replace function switchboard_private.notify_invalidation()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  numbers text[];
  payload jsonb;
begin
  if tg_level = 'STATEMENT' then
    -- TRUNCATE: no rows to name.
    payload := jsonb_build_object('kind', 'all');
  elsif tg_table_name = 'agents' then
    numbers := array_remove(array[
      case when tg_op <> 'INSERT' then old.phone_number end,
      case when tg_op <> 'DELETE' then new.phone_number end
    ], null);
    payload := jsonb_build_object('kind', 'numbers', 'numbers', to_jsonb(numbers));
  elsif tg_table_name = 'organizations' then
    select coalesce(array_agg(a.phone_number), '{}') into numbers
    from public.agents a
    where a.org_id = case when tg_op = 'DELETE' then old.id else new.id end;
    if cardinality(numbers) > 200 then
      payload := jsonb_build_object('kind', 'all');
    else
      payload := jsonb_build_object('kind', 'numbers', 'numbers', to_jsonb(numbers));
    end if;
  elsif tg_table_name = 'customers' then
    payload := jsonb_build_object('kind', 'callers', 'callers', (
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
  perform pg_catalog.pg_notify('switchboard_invalidate', payload::text);
  return null;
end
$$;
revoke all on function switchboard_private.notify_invalidation() from public;

drop trigger if exists agents_invalidate on public.agents;
create trigger agents_invalidate after insert or update or delete on public.agents
  for each row execute function switchboard_private.notify_invalidation();
drop trigger if exists organizations_invalidate on public.organizations;
create trigger organizations_invalidate after update or delete on public.organizations
  for each row execute function switchboard_private.notify_invalidation();
drop trigger if exists customers_invalidate on public.customers;
create trigger customers_invalidate after insert or update or delete on public.customers
  for each row execute function switchboard_private.notify_invalidation();

drop trigger if exists agents_invalidate_truncate on public.agents;
create trigger agents_invalidate_truncate after truncate on public.agents
  for each statement execute function switchboard_private.notify_invalidation();
drop trigger if exists organizations_invalidate_truncate on public.organizations;
create trigger organizations_invalidate_truncate after truncate on public.organizations
  for each statement execute function switchboard_private.notify_invalidation();
drop trigger if exists customers_invalidate_truncate on public.customers;
create trigger customers_invalidate_truncate after truncate on public.customers
  for each statement execute function switchboard_private.notify_invalidation();
