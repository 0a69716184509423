-- Issue 16: the tenant path's statement as one cached plan, reading each
-- table reference once less where it can.
--
-- `resolve_number` joined `route_extras(a.id, a.org_id)`, a plpgsql function
-- of its own: a second function call, SPI and executor start-up for every
-- call, and two more reads of `agents` (one to find the agent's serving rule
-- and latest version, one to find its after-hours target), each under its
-- policy and so each with its own `auth_org_id()` InitPlan: nine in all.
-- Here the three sub-selects sit in `resolve_number`'s own query, correlated
-- with the agent row it has already read under RLS in the same snapshot, so
-- the values are the same: seven table references, seven membership checks,
-- one plan cached per connection. Measured with pgbench on the statement as
-- the service sends it (BENCHMARKS.md, issue 16, fourth sitting): 26 % more
-- statements per second at 16 clients.
--
-- RLS still decides: every table is read as the caller's role with the
-- caller's claims, exactly the references the policies see, and the
-- correlation only narrows (same agent, same org) what they allow.
-- `route_extras` stays for the preload's `routes_after`.
--
-- And the role argument must name an API role (anon, authenticated,
-- service_role): `none`, say, would have run the query as the session user,
-- outside RLS (found by the attack review; the service only ever passes
-- those three).
--
-- Same signature, same columns, same privileges. Re-runnable.

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
  perform pg_catalog.set_config('request.jwt.claim', '', true),
          pg_catalog.set_config('request.jwt.claim.sub', '', true),
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
