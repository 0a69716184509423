-- Issue 16: the tenant path's statement, cheaper, with RLS still deciding.
--
-- Every policy asks `(select switchboard_private.auth_org_id(...))`: one
-- InitPlan per table a statement reads, so `resolve_number` calls it nine
-- times. As a SQL function that Postgres cannot inline (SECURITY DEFINER,
-- SET search_path), each call parsed and planned its body anew: about
-- 0.2 ms each, most of the statement. As plpgsql, the body's plan is
-- cached per connection; each call is an index probe of `profiles`.
-- Same signature, same answer (`profiles.id` is the key: at most one row),
-- same privileges; membership is still read from `profiles` by every
-- statement, for every table it reads.
--
-- `route_extras` had the same cost (a SQL function with SET search_path,
-- planned on every call): plpgsql too, same query.
--
-- And every SECURITY DEFINER function of ours now searches
-- `pg_catalog, pg_temp`, in that order (found by the attack review of this
-- change; true of every earlier migration's functions too). With
-- `search_path = ''` Postgres still searches the session's temporary schema
-- first for tables and types: any role with TEMP (`authenticated` has it)
-- could create `pg_temp.uuid` as a domain whose check runs its own
-- function, and `auth.uid()`'s `::uuid` inside `auth_org_id` would run it as
-- the function's owner. Named last, pg_temp is searched after pg_catalog
-- (never, for functions and operators).
--
-- Re-runnable (create or replace; the alter loop is idempotent).

create or replace function switchboard_private.auth_org_id(roles text[] default array['admin', 'manager', 'viewer'])
returns uuid
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return (select p.org_id
          from public.profiles p
          where p.id = auth.uid() and p.role = any (roles));
end
$$;
revoke all on function switchboard_private.auth_org_id(text[]) from public;
grant execute on function switchboard_private.auth_org_id(text[]) to authenticated, service_role;

create or replace function switchboard_private.route_extras(agent_id uuid, org_id uuid)
returns table (served_versions jsonb, after_hours_agent_number text, caller_rules jsonb)
language plpgsql stable
set search_path = ''
as $$
begin
  return query
  select
    (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
              'version', v.version, 'name', v.name, 'voice_id', v.voice_id,
              'llm_config', v.llm_config, 'published_at', v.published_at) order by v.version)
     from public.agents a
     join public.agent_versions v on v.agent_id = a.id and v.org_id = a.org_id
     where a.id = route_extras.agent_id and a.org_id = route_extras.org_id
       and case
             when a.serving ? 'pinned' then v.version = (a.serving ->> 'pinned')::integer
             when a.serving ? 'split' then v.version in (
               select (e ->> 'version')::integer from pg_catalog.jsonb_array_elements(a.serving -> 'split') e)
             else v.version = a.latest_version
           end),
    (select t.phone_number from public.agents a
     join public.agents t on t.id = a.after_hours_agent_id and t.org_id = a.org_id
     where a.id = route_extras.agent_id and a.org_id = route_extras.org_id),
    (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
              'id', r.id, 'match', r.match, 'pattern', r.pattern, 'action', r.action,
              'agent_id', r.agent_id, 'agent_number', t.phone_number) order by r.id)
     from public.caller_rules r
     left join public.agents t on t.id = r.agent_id and t.org_id = r.org_id
     where r.org_id = route_extras.org_id);
end
$$;
revoke all on function switchboard_private.route_extras(uuid, uuid) from public, anon, authenticated, service_role;
grant execute on function switchboard_private.route_extras(uuid, uuid) to authenticated, service_role;

-- Every SECURITY DEFINER function of ours: pg_temp last (see the top).
do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure
    from pg_catalog.pg_proc p
    join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'switchboard_private' and p.prosecdef
  loop
    execute pg_catalog.format('alter function %s set search_path = pg_catalog, pg_temp', f);
  end loop;
end
$$;
