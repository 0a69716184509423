-- Issue 16: the tenant statement parses the caller's claims once, and the
-- plan's call limit is planned once per connection instead of per call.
--
-- 1. `auth.uid()` (Supabase's, and the bootstrap's) reads
--    `request.jwt.claim.sub` first and only when that is empty parses the
--    whole `request.jwt.claims` JSON. `resolve_number` blanked the former, so
--    each of the statement's seven membership checks (one per table under
--    RLS, `switchboard_private.auth_org_id()`) parsed the claims again: with
--    a Supabase access token's claims (about 600 bytes: app_metadata,
--    user_metadata, amr, session_id) that was a fifth of the statement.
--    `resolve_number` now sets `request.jwt.claim.sub` from the claims it is
--    given, once, in the same transaction-local way as the rest: the value
--    auth.uid() would have parsed, so every policy reads the same user.
--    Nothing else changes: the claims, the role, the RLS checks, the query.
--
-- 2. `plan_call_limit` was a SQL function with `SET search_path`, which
--    Postgres cannot inline, so every call parsed and planned its body
--    anew (the tenant statement calls it for every org without its own
--    limit; so do StartCall's statements). As plpgsql its one expression is
--    planned once per connection. Same signature, same answers, same
--    privileges.
--
-- Measured instructions per statement under callgrind (single-user
-- Postgres 15, the demo data, BENCHMARKS.md, issue 16, fifth sitting):
-- see there. Re-runnable.

create or replace function switchboard_private.plan_call_limit(tier public.plan_tier)
returns integer
language plpgsql immutable
set search_path = ''
as $$
begin
  return case tier
    when 'starter' then 10
    when 'pro' then 50
    when 'enterprise' then 250
  end;
end
$$;
revoke all on function switchboard_private.plan_call_limit(public.plan_tier) from public;
grant execute on function switchboard_private.plan_call_limit(public.plan_tier) to authenticated, service_role;

create or replace function switchboard_private.resolve_number(
  jwt_claims text, jwt_role text, called_number text, caller_number text
)
returns table (
  agent_id uuid, org_id uuid, agent_name text, phone_number text, voice_id text,
  llm_config jsonb, is_active boolean, agent_created_at timestamptz, agent_updated_at timestamptz,
  agent_max_concurrent_calls integer, fallback_destination text,
  latest_version integer, serving jsonb, business_hours jsonb,
  after_hours_agent_id uuid, after_hours_destination text,
  org_name text, org_slug text, org_plan_tier text, org_created_at timestamptz,
  org_max_concurrent_calls integer,
  customer_id uuid, customer_phone text, customer_name text, customer_email text,
  customer_created_at timestamptz, customer_updated_at timestamptz, customer_attributes jsonb,
  served_versions jsonb, after_hours_agent_number text, caller_rules jsonb
)
language plpgsql volatile
set search_path = ''
as $$
begin
  -- Only the API roles: `none` or another login role would read as the
  -- session user, outside RLS (the service passes one of these three; this
  -- holds for any other caller the owner grants it to).
  if jwt_role is null or jwt_role not in ('anon', 'authenticated', 'service_role') then
    raise exception 'resolve_number: % is not an API role', pg_catalog.quote_nullable(jwt_role)
      using errcode = '42501';
  end if;
  -- `sub` read from the claims once, here: auth.uid() reads
  -- `request.jwt.claim.sub` before it parses `request.jwt.claims`, and every
  -- policy's membership check calls it. Same value it would parse (NULL
  -- stays NULL: '' falls through to the claims, which have none).
  perform pg_catalog.set_config('request.jwt.claim', '', true),
          pg_catalog.set_config('request.jwt.claim.sub',
            coalesce(jwt_claims::pg_catalog.jsonb ->> 'sub', ''), true),
          pg_catalog.set_config('request.jwt.claim.role', '', true),
          pg_catalog.set_config('request.jwt.claim.email', '', true),
          pg_catalog.set_config('request.jwt.claims', jwt_claims, true);
  perform pg_catalog.set_config('role', jwt_role, true);
  return query
    select a.id, a.org_id, a.name, a.phone_number, a.voice_id,
           a.llm_config, a.is_active, a.created_at, a.updated_at,
           a.max_concurrent_calls, a.fallback_destination,
           a.latest_version, a.serving, a.business_hours,
           a.after_hours_agent_id, a.after_hours_destination,
           o.name, o.slug, o.plan_tier::pg_catalog.text, o.created_at,
           coalesce(o.max_concurrent_calls, switchboard_private.plan_call_limit(o.plan_tier)),
           c.id, c.phone, c.name, c.email, c.created_at, c.updated_at, c.attributes,
           -- The versions the agent may serve (route_extras.served_versions).
           (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'version', v.version, 'name', v.name, 'voice_id', v.voice_id,
                     'llm_config', v.llm_config, 'published_at', v.published_at) order by v.version)
            from public.agent_versions v
            where v.agent_id = a.id and v.org_id = a.org_id
              and case
                    when a.serving ? 'pinned' then v.version = (a.serving ->> 'pinned')::integer
                    when a.serving ? 'split' then v.version in (
                      select (e ->> 'version')::integer
                      from pg_catalog.jsonb_array_elements(a.serving -> 'split') e)
                    else v.version = a.latest_version
                  end),
           -- The after-hours agent's number, in the same org.
           (select t.phone_number from public.agents t
            where t.id = a.after_hours_agent_id and t.org_id = a.org_id),
           -- The org's caller rules, with their agents' numbers.
           (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'id', r.id, 'match', r.match, 'pattern', r.pattern, 'action', r.action,
                     'agent_id', r.agent_id, 'agent_number', t.phone_number) order by r.id)
            from public.caller_rules r
            left join public.agents t on t.id = r.agent_id and t.org_id = r.org_id
            where r.org_id = a.org_id)
    from public.agents a
    join public.organizations o on o.id = a.org_id
    left join public.customers c on c.org_id = a.org_id and c.phone = resolve_number.caller_number
    where a.phone_number = resolve_number.called_number;
end
$$;
revoke all on function switchboard_private.resolve_number(text, text, text, text) from public, anon, authenticated, service_role;
