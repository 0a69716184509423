-- Calls: every ringing call gets a decision, a record and a live slot.
--
-- * `calls` grows what the decision and the call's life need: the media
--   server's own `call_id` (unique per organization: media servers' ids are
--   not unique across boxes), the outcome and its reason, the transfer
--   target, answered time, the reported end and the disconnect reason, and
--   the statuses refused and transferred. Its status is derived from those
--   facts by a trigger, so writes for one call converge whatever order they
--   arrive in.
-- * `calls` becomes read-only for tenants: the records are written by
--   switchboard (service_role); RLS lets members of the org read them.
-- * Concurrent-call limits: a default per plan tier
--   (`switchboard_private.plan_call_limit`), a per-organization override
--   (`organizations.max_concurrent_calls`, service_role only, as every
--   organization column), and an optional lower limit per agent with a
--   fallback destination (`agents.max_concurrent_calls`,
--   `agents.fallback_destination`, written by admins and managers).
-- * `resolve_route` (was `resolve_agent`) returns the limits and the
--   fallback, so they travel with the cached route.
--
-- Re-runnable.

-- ---------------------------------------------------------------- limits

-- Starter 10: what Vapi gives every account by default, enough for a clinic
-- front desk. Pro 50 and enterprise 250: steps of 5x, a small and a large
-- contact centre. Anything larger is a contract: the per-organization
-- override.
create or replace function switchboard_private.plan_call_limit(tier public.plan_tier)
returns integer
language sql immutable
set search_path = ''
as $$
  select case tier
    when 'starter' then 10
    when 'pro' then 50
    when 'enterprise' then 250
  end
$$;
revoke all on function switchboard_private.plan_call_limit(public.plan_tier) from public;
grant execute on function switchboard_private.plan_call_limit(public.plan_tier) to authenticated, service_role;

alter table public.organizations
  add column if not exists max_concurrent_calls integer;
alter table public.agents
  add column if not exists max_concurrent_calls integer,
  add column if not exists fallback_destination text;

do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'organizations_max_concurrent_calls_range') then
    alter table public.organizations add constraint organizations_max_concurrent_calls_range
      check (max_concurrent_calls between 1 and 100000);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_max_concurrent_calls_range') then
    alter table public.agents add constraint agents_max_concurrent_calls_range
      check (max_concurrent_calls between 1 and 100000);
  end if;
  -- E.164, or a sip:/sips: URI of printable ASCII without spaces.
  -- A fallback to the agent's own number would send the call back to it.
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_fallback_not_itself') then
    alter table public.agents add constraint agents_fallback_not_itself
      check (fallback_destination is distinct from phone_number);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_fallback_destination_shape') then
    alter table public.agents add constraint agents_fallback_destination_shape
      check (fallback_destination ~ '^\+[1-9][0-9]{1,14}$'
             or fallback_destination ~ '^sips?:[!-~]{1,250}$');
  end if;
end
$$;

-- ---------------------------------------------------------------- calls

alter table public.calls
  add column if not exists call_id text,
  add column if not exists outcome text,
  add column if not exists reason text,
  add column if not exists transfer_to text,
  add column if not exists answered_at timestamptz,
  add column if not exists end_status text,
  add column if not exists disconnect_reason text,
  add column if not exists updated_at timestamptz not null default now();

-- Rows from before this migration get an id of their own.
update public.calls set call_id = id::text where call_id is null;
alter table public.calls alter column call_id set default (gen_random_uuid()::text);
alter table public.calls alter column call_id set not null;

-- Conversation time: answered to ended. Null when never answered.
alter table public.calls
  add column if not exists duration_ms bigint
    generated always as ((extract(epoch from (ended_at - answered_at)) * 1000)::bigint) stored;

alter table public.calls drop constraint if exists calls_status_check;

do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_org_call_id_key') then
    alter table public.calls add constraint calls_org_call_id_key unique (org_id, call_id);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_call_id_shape') then
    alter table public.calls add constraint calls_call_id_shape check (call_id ~ '^[!-~]{1,128}$');
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_status_values') then
    alter table public.calls add constraint calls_status_values check (status in
      ('ringing', 'in_progress', 'completed', 'failed', 'missed', 'refused', 'transferred'));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_outcome_values') then
    alter table public.calls add constraint calls_outcome_values
      check (outcome in ('answer', 'transfer', 'reject'));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_reason_values') then
    alter table public.calls add constraint calls_reason_values check (reason in
      ('answered', 'number_not_found', 'agent_inactive', 'organization_at_limit', 'agent_at_limit',
       'limits_unavailable'));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_transfer_to_shape') then
    alter table public.calls add constraint calls_transfer_to_shape
      check (transfer_to ~ '^\+[1-9][0-9]{1,14}$' or transfer_to ~ '^sips?:[!-~]{1,250}$');
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_end_status_values') then
    alter table public.calls add constraint calls_end_status_values
      check (end_status in ('completed', 'failed'));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'calls_disconnect_reason_values') then
    alter table public.calls add constraint calls_disconnect_reason_values check (disconnect_reason in
      ('caller_hung_up', 'agent_hung_up', 'transferred', 'error', 'timeout', 'no_answer',
       'busy', 'rejected', 'lease_expired', 'other'));
  end if;
end
$$;

-- ListCalls: newest first inside an org, by agent and by status.
create index if not exists calls_org_started_idx on public.calls (org_id, started_at desc, id desc);
create index if not exists calls_org_agent_started_idx on public.calls (org_id, agent_id, started_at desc, id desc);

-- The status is what the facts say, so writes converge in any order:
-- the decision (outcome) first, then the reported end, then the answer.
-- Rows without any of these facts (written by hand) keep the status given.
create or replace function switchboard_private.calls_derive_status()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- An answer reported after the end (a late AnswerCall) is not an answer.
  if new.answered_at is not null and new.ended_at is not null and new.answered_at > new.ended_at then
    new.answered_at := null;
  end if;
  if new.outcome is not null or new.end_status is not null or new.answered_at is not null then
    new.status := case
      when new.outcome = 'reject' then 'refused'
      when new.outcome = 'transfer' then 'transferred'
      when new.end_status = 'failed' then 'failed'
      when new.end_status is not null and new.answered_at is not null then 'completed'
      when new.end_status is not null then 'missed'
      when new.answered_at is not null then 'in_progress'
      else 'ringing'
    end;
  end if;
  new.updated_at := pg_catalog.now();
  return new;
end
$$;
revoke all on function switchboard_private.calls_derive_status() from public;

drop trigger if exists calls_derive_status on public.calls;
create trigger calls_derive_status before insert or update on public.calls
  for each row execute function switchboard_private.calls_derive_status();

-- ---------------------------------------------------------------- policies
-- Calls are records of what happened: written by switchboard
-- (service_role), read by the org's members. No tenant writes them.

drop policy if exists calls_insert on public.calls;
drop policy if exists calls_update on public.calls;
drop policy if exists calls_delete on public.calls;
-- All, then SELECT back: on Supabase, default privileges also give
-- REFERENCES and TRIGGER.
revoke all on public.calls from public, anon, authenticated;
grant select on public.calls to authenticated;

-- ---------------------------------------------------------------- the call path
-- `resolve_route` replaces `resolve_agent` (20261129000002_claims_hygiene.sql):
-- the same statement, plus the agent's limit and fallback and the
-- organization's limit in force (the override, else the plan's default).
-- A new name, not a new result type under the old one: the earlier
-- migration's `create or replace` must still apply when the files run
-- again (Postgres cannot change a function's result type in place).
drop function if exists switchboard_private.resolve_agent(text, text, text, text);
create or replace function switchboard_private.resolve_route(
  jwt_claims text, jwt_role text, called_number text, caller_number text
)
returns table (
  agent_id uuid, org_id uuid, agent_name text, phone_number text, voice_id text,
  llm_config jsonb, is_active boolean, agent_created_at timestamptz, agent_updated_at timestamptz,
  agent_max_concurrent_calls integer, fallback_destination text,
  org_name text, org_slug text, org_plan_tier text, org_created_at timestamptz,
  org_max_concurrent_calls integer,
  customer_id uuid, customer_phone text, customer_name text, customer_email text,
  customer_created_at timestamptz, customer_updated_at timestamptz
)
language plpgsql volatile
set search_path = ''
as $$
begin
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
           o.name, o.slug, o.plan_tier::text, o.created_at,
           coalesce(o.max_concurrent_calls, switchboard_private.plan_call_limit(o.plan_tier)),
           c.id, c.phone, c.name, c.email, c.created_at, c.updated_at
    from public.agents a
    join public.organizations o on o.id = a.org_id
    left join public.customers c on c.org_id = a.org_id and c.phone = resolve_route.caller_number
    where a.phone_number = resolve_route.called_number;
end
$$;
revoke all on function switchboard_private.resolve_route(text, text, text, text) from public, anon, authenticated, service_role;
