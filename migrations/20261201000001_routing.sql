-- Routing: agent versions, business hours, caller rules, customer attributes.
--
-- * `public.agent_versions`: immutable, numbered snapshots of an agent's
--   name, voice and LLM config. A row is made by inserting (agent_id, org_id)
--   only: the trigger numbers it (1, 2, …, under the agent's row lock),
--   copies the agent's current fields, stamps who and when. No one updates a
--   version; it goes only with its agent (cascade).
-- * `agents.latest_version` is set by that trigger, so publishing is an
--   agent change: recorded in `agent_history` (who published, when) and
--   evicted from the caches like any agent change.
-- * `agents.serving`: null = the latest published version; {"pinned": n};
--   {"split": [{"version": n, "weight": w}, …]}. Every version named exists
--   (trigger). An agent never published serves its own fields.
-- * `agents.business_hours` (jsonb, shape checked by the service, size and
--   counts bounded here), `after_hours_agent_id` (same org, not itself) or
--   `after_hours_destination` (E.164 or sip:), neither = refuse (SIP 480).
-- * `public.caller_rules`: per org, exact number or E.164 prefix → block or
--   route to an agent of the org. At most 200 per org. Audit trail
--   `public.caller_rule_history`, written by trigger like `agent_history`.
-- * `customers.attributes`: a flat object of strings, at most 50 keys of
--   at most 64 characters, 16 KiB in all.
-- * `calls.agent_version`; reasons `caller_blocked`, `closed`,
--   `routing_loop`.
-- * Invalidation: a caller rule change, or an agent's number or org change,
--   evicts every route of the org (routes carry the org's rules and the
--   numbers of the agents they name).
-- * `resolve_number` replaces `resolve_route` (a new result type needs a new
--   name: the earlier file's `create or replace` must still apply).
--
-- Re-runnable.

-- ---------------------------------------------------------------- agents

alter table public.agents
  add column if not exists latest_version integer,
  add column if not exists serving jsonb,
  add column if not exists business_hours jsonb,
  add column if not exists after_hours_agent_id uuid,
  add column if not exists after_hours_destination text;

do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_serving_shape') then
    alter table public.agents add constraint agents_serving_shape check (
      serving is null
      or (jsonb_typeof(serving) = 'object' and (
            (serving ? 'pinned' and jsonb_typeof(serving -> 'pinned') = 'number')
         or (serving ? 'split' and jsonb_typeof(serving -> 'split') = 'array'
             and jsonb_array_length(serving -> 'split') between 2 and 5))));
  end if;
  -- Nesting bounded (the service's JSON reader stops at 128 levels; the
  -- shapes need 5 and 3): a row it cannot read would fail every read of
  -- the agent.
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_routing_json_depth') then
    alter table public.agents add constraint agents_routing_json_depth check (
      not coalesce(jsonb_path_exists(business_hours, 'strict $.**{6 to last}'), false)
      and not coalesce(jsonb_path_exists(serving, 'strict $.**{4 to last}'), false));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_llm_config_depth') then
    -- NOT VALID: rows written before stay (the service bounds what it
    -- writes at 16 levels); new writes from anywhere are checked.
    alter table public.agents add constraint agents_llm_config_depth check (
      not jsonb_path_exists(llm_config, 'strict $.**{64 to last}')) not valid;
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_business_hours_bounds') then
    alter table public.agents add constraint agents_business_hours_bounds check (
      business_hours is null
      or (jsonb_typeof(business_hours) = 'object'
          and pg_catalog.octet_length(business_hours::text) <= 65536
          and jsonb_array_length(coalesce(business_hours -> 'weekly', '[]')) <= 28
          and jsonb_array_length(coalesce(business_hours -> 'exceptions', '[]')) <= 366));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_after_hours_one_target') then
    alter table public.agents add constraint agents_after_hours_one_target
      check (after_hours_agent_id is null or after_hours_destination is null);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_after_hours_not_itself') then
    alter table public.agents add constraint agents_after_hours_not_itself
      check (after_hours_agent_id is distinct from id
             and after_hours_destination is distinct from phone_number);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_after_hours_destination_shape') then
    alter table public.agents add constraint agents_after_hours_destination_shape
      check (after_hours_destination ~ '^\+[1-9][0-9]{1,14}$'
             or after_hours_destination ~ '^sips?:[!-~]{1,250}$');
  end if;
  -- Same org only: another org's agent fails like one that does not exist.
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'agents_after_hours_same_org_fkey') then
    alter table public.agents add constraint agents_after_hours_same_org_fkey
      foreign key (after_hours_agent_id, org_id) references public.agents (id, org_id)
      on update no action on delete set null (after_hours_agent_id);
  end if;
end
$$;
create index if not exists agents_after_hours_agent_id_idx on public.agents (after_hours_agent_id);

-- ---------------------------------------------------------------- versions

create table if not exists public.agent_versions (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null default switchboard_private.auth_org_id(),
  agent_id uuid not null,
  version integer not null check (version between 1 and 1000),
  name text not null,
  voice_id text not null,
  llm_config jsonb not null,
  published_at timestamptz not null default now(),
  published_by uuid,
  unique (agent_id, version),
  constraint agent_versions_agent_same_org_fkey foreign key (agent_id, org_id)
    references public.agents (id, org_id) on update no action on delete cascade
);
create index if not exists agent_versions_org_id_idx on public.agent_versions (org_id);

-- Numbers the version and takes the agent's fields as they are now: what is
-- published is what the agent holds, whatever the insert said.
create or replace function switchboard_private.agent_version_snapshot()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  a record;
begin
  -- A tenant inserting for an org it may not publish in gets RLS's own
  -- answer before anything is looked up: whether another org's agent
  -- exists is not for it to learn.
  if pg_catalog.current_setting('role') = 'authenticated'
     and new.org_id is distinct from switchboard_private.auth_org_id(array['admin', 'manager']) then
    raise exception 'new row violates row-level security policy for table "agent_versions"'
      using errcode = 'insufficient_privilege';
  end if;
  select ag.name, ag.voice_id, ag.llm_config, ag.latest_version into a
  from public.agents ag
  where ag.id = new.agent_id and ag.org_id = new.org_id
  for update;
  if not found then
    raise exception 'agent not found' using errcode = 'foreign_key_violation',
      constraint = 'agent_versions_agent_same_org_fkey';
  end if;
  if coalesce(a.latest_version, 0) >= 1000 then
    raise exception 'an agent has at most 1000 versions' using errcode = 'check_violation',
      constraint = 'agent_versions_version_check';
  end if;
  new.id := pg_catalog.gen_random_uuid();
  new.version := coalesce(a.latest_version, 0) + 1;
  new.name := a.name;
  new.voice_id := a.voice_id;
  new.llm_config := a.llm_config;
  new.published_at := pg_catalog.now();
  new.published_by := switchboard_private.change_actor_uid();
  -- The agent learns its latest version now, so the next row of the same
  -- statement numbers after this one; an agent change (history, caches).
  update public.agents set latest_version = new.version
  where id = new.agent_id and org_id = new.org_id;
  return new;
end
$$;
revoke all on function switchboard_private.agent_version_snapshot() from public, anon, authenticated, service_role;

drop function if exists switchboard_private.agent_version_published() cascade;

-- Versions are immutable: no update ever; a delete only as its agent's
-- cascade or org move (inside another trigger). Whoever owns the table
-- (truncate, disabling triggers) is outside this guarantee.
create or replace function switchboard_private.agent_versions_immutable()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' and pg_catalog.pg_trigger_depth() > 1 then
    return old;
  end if;
  raise exception 'agent versions are immutable: % is not allowed', pg_catalog.lower(tg_op)
    using errcode = 'insufficient_privilege',
          hint = 'publish a new version, or pin an older one';
end
$$;
revoke all on function switchboard_private.agent_versions_immutable() from public;

drop trigger if exists agent_versions_snapshot on public.agent_versions;
create trigger agent_versions_snapshot before insert on public.agent_versions
  for each row execute function switchboard_private.agent_version_snapshot();
drop trigger if exists agent_versions_immutable on public.agent_versions;
create trigger agent_versions_immutable before update or delete on public.agent_versions
  for each row execute function switchboard_private.agent_versions_immutable();
-- TRUNCATE is left to the owner (no API role holds it): `truncate agents
-- cascade` must still empty the versions with their agents.
drop trigger if exists agent_versions_no_truncate on public.agent_versions;

-- Every version `serving` names exists for the agent; `latest_version`
-- changes only through publishing.
create or replace function switchboard_private.agent_serving_check()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  wanted integer[];
  missing integer;
  total bigint;
begin
  -- (An org move clears it: `release_on_org_move` runs first.)
  if tg_op = 'UPDATE' and new.latest_version is distinct from old.latest_version
     and pg_catalog.pg_trigger_depth() < 2 and new.org_id is not distinct from old.org_id then
    raise exception 'latest_version is set by publishing' using errcode = 'check_violation',
      constraint = 'agents_latest_version_by_publishing';
  end if;
  if tg_op = 'INSERT' and new.latest_version is not null then
    raise exception 'latest_version is set by publishing' using errcode = 'check_violation',
      constraint = 'agents_latest_version_by_publishing';
  end if;
  if new.serving is null then
    return new;
  end if;
  -- Numbers only, integers, each version once: what the service reads is
  -- what is stored.
  if exists (
    select 1 from pg_catalog.jsonb_path_query(new.serving, '$.pinned') v
    where pg_catalog.jsonb_typeof(v) <> 'number' or (v #>> '{}') !~ '^[0-9]+$'
  ) or exists (
    select 1 from pg_catalog.jsonb_array_elements(coalesce(new.serving -> 'split', '[]')) e
    where pg_catalog.jsonb_typeof(e) <> 'object'
       or pg_catalog.jsonb_typeof(e -> 'version') is distinct from 'number'
       or pg_catalog.jsonb_typeof(e -> 'weight') is distinct from 'number'
       or (e ->> 'version') !~ '^[0-9]+$' or (e ->> 'weight') !~ '^[0-9]+$'
       or (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(e)) <> 2
  ) or (
    select pg_catalog.count(*) <> pg_catalog.count(distinct e ->> 'version')
    from pg_catalog.jsonb_array_elements(coalesce(new.serving -> 'split', '[]')) e
  ) or (new.serving ? 'pinned' and new.serving ? 'split')
    or exists (select 1 from pg_catalog.jsonb_object_keys(new.serving) k where k not in ('pinned', 'split')) then
    raise exception 'serving is {"pinned": n} or {"split": [{"version": n, "weight": w}, …]} with integers and each version once'
      using errcode = 'check_violation', constraint = 'agents_serving_versions_exist';
  end if;
  if new.serving ? 'pinned' then
    wanted := array[(new.serving ->> 'pinned')::integer];
  else
    select pg_catalog.array_agg((e ->> 'version')::integer), pg_catalog.sum((e ->> 'weight')::integer)
      into wanted, total
    from pg_catalog.jsonb_array_elements(new.serving -> 'split') e;
    if total is null or total < 1 or total > 10000
       or exists (select 1 from pg_catalog.jsonb_array_elements(new.serving -> 'split') e
                  where (e ->> 'weight')::integer < 0 or e ->> 'version' is null) then
      raise exception 'a split needs weights 0..10000 adding up to 1..10000' using errcode = 'check_violation',
        constraint = 'agents_serving_versions_exist';
    end if;
  end if;
  select w into missing from pg_catalog.unnest(wanted) w
  where w is null or not exists (
    select 1 from public.agent_versions v
    where v.agent_id = new.id and v.org_id = new.org_id and v.version = w)
  limit 1;
  if found then
    raise exception 'version % of this agent is not published', coalesce(missing::text, 'null')
      using errcode = 'check_violation', constraint = 'agents_serving_versions_exist';
  end if;
  return new;
end
$$;
revoke all on function switchboard_private.agent_serving_check() from public, anon, authenticated, service_role;

drop trigger if exists agents_serving_check on public.agents;
create trigger agents_serving_check before insert or update on public.agents
  for each row execute function switchboard_private.agent_serving_check();

-- ---------------------------------------------------------------- caller rules

create table if not exists public.caller_rules (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null default switchboard_private.auth_org_id()
    references public.organizations (id) on delete cascade,
  match text not null check (match in ('exact', 'prefix')),
  -- '+' and 1..15 digits: a whole number, a country code, '+1900'.
  pattern text not null check (pattern ~ '^\+[1-9][0-9]{0,14}$'),
  action text not null check (action in ('block', 'route')),
  agent_id uuid,
  label text check (length(label) <= 200),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint caller_rules_route_names_agent check ((action = 'route') = (agent_id is not null)),
  constraint caller_rules_one_per_pattern unique (org_id, match, pattern),
  constraint caller_rules_agent_same_org_fkey foreign key (agent_id, org_id)
    references public.agents (id, org_id) on update no action on delete cascade
);
create index if not exists caller_rules_agent_id_idx on public.caller_rules (agent_id);

-- At most 200 rules per org (they travel with every route of the org).
-- Writers of one org take turns (an advisory lock), then count: a count
-- sees the rows committed before it only at READ COMMITTED (a new snapshot
-- per statement) or SERIALIZABLE (a conflict fails); a REPEATABLE READ
-- transaction counts from its start, so it may not insert rules.
create or replace function switchboard_private.caller_rules_bound()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- A tenant writing into an org it may not write gets RLS's own answer
  -- before anything of that org is locked or counted.
  if pg_catalog.current_setting('role') = 'authenticated'
     and new.org_id is distinct from switchboard_private.auth_org_id(array['admin', 'manager']) then
    raise exception 'new row violates row-level security policy for table "caller_rules"'
      using errcode = 'insufficient_privilege';
  end if;
  if pg_catalog.current_setting('transaction_isolation') = 'repeatable read' then
    raise exception 'caller rules are written at READ COMMITTED or SERIALIZABLE: a REPEATABLE READ count cannot hold the bound'
      using errcode = 'check_violation', constraint = 'caller_rules_per_org';
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('caller_rules:' || new.org_id::text, 0));
  if (select pg_catalog.count(*) from public.caller_rules r where r.org_id = new.org_id and r.id <> new.id) >= 200 then
    raise exception 'an organization has at most 200 caller rules' using errcode = 'check_violation',
      constraint = 'caller_rules_per_org';
  end if;
  return new;
end
$$;
revoke all on function switchboard_private.caller_rules_bound() from public, anon, authenticated, service_role;
drop trigger if exists caller_rules_bound on public.caller_rules;
create trigger caller_rules_bound before insert or update of org_id on public.caller_rules
  for each row execute function switchboard_private.caller_rules_bound();
drop trigger if exists caller_rules_touch_updated_at on public.caller_rules;
create trigger caller_rules_touch_updated_at before update on public.caller_rules
  for each row execute function switchboard_private.touch_updated_at();

-- Audit trail, as agent_history.
create table if not exists public.caller_rule_history (
  id bigint generated always as identity primary key,
  org_id uuid not null,
  rule_id uuid not null,
  changed_at timestamptz not null default now(),
  changed_by uuid,
  actor_role text not null,
  actor_sql_role text,
  operation text not null check (operation in ('insert', 'update', 'delete')),
  changes jsonb not null check (jsonb_typeof(changes) = 'object')
);
create index if not exists caller_rule_history_org_idx on public.caller_rule_history (org_id, id desc);

create or replace function switchboard_private.record_caller_rule_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  changes jsonb := switchboard_private.agent_row_changes(
    case when tg_op <> 'INSERT' then pg_catalog.to_jsonb(old) end,
    case when tg_op <> 'DELETE' then pg_catalog.to_jsonb(new) end
  );
  actor_uid uuid := switchboard_private.change_actor_uid();
  actor text := switchboard_private.change_actor_role();
  actor_sql text := switchboard_private.change_actor_sql_role();
begin
  if changes = '{}'::jsonb then
    return null;
  end if;
  insert into public.caller_rule_history (org_id, rule_id, changed_by, actor_role, actor_sql_role, operation, changes)
  values (
    case when tg_op = 'DELETE' then old.org_id else new.org_id end,
    case when tg_op = 'DELETE' then old.id else new.id end,
    actor_uid, actor, actor_sql, pg_catalog.lower(tg_op), changes
  );
  if tg_op = 'UPDATE' and old.org_id is distinct from new.org_id then
    insert into public.caller_rule_history (org_id, rule_id, changed_by, actor_role, actor_sql_role, operation, changes)
    values (old.org_id, new.id, actor_uid, actor, actor_sql, 'update', changes);
  end if;
  return null;
end
$$;
revoke all on function switchboard_private.record_caller_rule_change() from public, anon, authenticated, service_role;

create or replace function switchboard_private.record_caller_rules_truncate()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.caller_rule_history (org_id, rule_id, changed_by, actor_role, actor_sql_role, operation, changes)
  select r.org_id, r.id, switchboard_private.change_actor_uid(), switchboard_private.change_actor_role(),
         switchboard_private.change_actor_sql_role(),
         'delete', switchboard_private.agent_row_changes(pg_catalog.to_jsonb(r), null)
  from public.caller_rules r;
  return null;
end
$$;
revoke all on function switchboard_private.record_caller_rules_truncate() from public, anon, authenticated, service_role;

drop trigger if exists caller_rules_record_history on public.caller_rules;
create trigger caller_rules_record_history after insert or update or delete on public.caller_rules
  for each row execute function switchboard_private.record_caller_rule_change();
drop trigger if exists caller_rules_record_history_truncate on public.caller_rules;
create trigger caller_rules_record_history_truncate before truncate on public.caller_rules
  for each statement execute function switchboard_private.record_caller_rules_truncate();

create or replace function switchboard_private.caller_rule_history_append_only()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' and pg_catalog.pg_trigger_depth() > 1 then
    return new;
  end if;
  raise exception 'caller_rule_history is append-only: % is not allowed', pg_catalog.lower(tg_op)
    using errcode = 'insufficient_privilege',
          hint = 'rows are written only by the trigger on public.caller_rules';
end
$$;
revoke all on function switchboard_private.caller_rule_history_append_only() from public;
drop trigger if exists caller_rule_history_append_only on public.caller_rule_history;
create trigger caller_rule_history_append_only before insert or update or delete on public.caller_rule_history
  for each row execute function switchboard_private.caller_rule_history_append_only();
drop trigger if exists caller_rule_history_no_truncate on public.caller_rule_history;
create trigger caller_rule_history_no_truncate before truncate on public.caller_rule_history
  for each statement execute function switchboard_private.caller_rule_history_append_only();

-- ---------------------------------------------------------------- customers

-- A flat object of strings: what a prompt template can take as it is.
create or replace function switchboard_private.attributes_ok(attributes jsonb)
returns boolean
language sql immutable
set search_path = ''
as $$
  select pg_catalog.jsonb_typeof(attributes) = 'object'
     and pg_catalog.octet_length(attributes::text) <= 16384
     and (select pg_catalog.count(*) <= 50
             and coalesce(pg_catalog.bool_and(
                   pg_catalog.jsonb_typeof(e.value) = 'string'
                   and e.key ~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$'), true)
          from pg_catalog.jsonb_each(attributes) e)
$$;
revoke all on function switchboard_private.attributes_ok(jsonb) from public;
grant execute on function switchboard_private.attributes_ok(jsonb) to authenticated, service_role;

alter table public.customers add column if not exists attributes jsonb not null default '{}'::jsonb;
do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'customers_attributes_bounds') then
    alter table public.customers add constraint customers_attributes_bounds
      check (switchboard_private.attributes_ok(attributes));
  end if;
end
$$;

-- ---------------------------------------------------------------- calls

alter table public.calls add column if not exists agent_version integer;
alter table public.calls drop constraint if exists calls_reason_values;
alter table public.calls add constraint calls_reason_values check (reason in
  ('answered', 'number_not_found', 'agent_inactive', 'organization_at_limit', 'agent_at_limit',
   'limits_unavailable', 'caller_blocked', 'closed', 'routing_loop'));

-- ---------------------------------------------------------------- grants, RLS

revoke all on public.agent_versions, public.caller_rules, public.caller_rule_history
  from public, anon, authenticated, service_role;
grant select, insert on public.agent_versions to authenticated, service_role;
grant select, insert, update, delete on public.caller_rules to authenticated, service_role;
grant select on public.caller_rule_history to authenticated, service_role;
revoke all on sequence public.caller_rule_history_id_seq from public, anon, authenticated, service_role;

alter table public.agent_versions enable row level security;
alter table public.caller_rules enable row level security;
alter table public.caller_rule_history enable row level security;

drop policy if exists agent_versions_select on public.agent_versions;
create policy agent_versions_select on public.agent_versions for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists agent_versions_insert on public.agent_versions;
create policy agent_versions_insert on public.agent_versions for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));

drop policy if exists caller_rules_select on public.caller_rules;
create policy caller_rules_select on public.caller_rules for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists caller_rules_insert on public.caller_rules;
create policy caller_rules_insert on public.caller_rules for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists caller_rules_update on public.caller_rules;
create policy caller_rules_update on public.caller_rules for update to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])))
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists caller_rules_delete on public.caller_rules;
create policy caller_rules_delete on public.caller_rules for delete to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));

drop policy if exists caller_rule_history_select on public.caller_rule_history;
create policy caller_rule_history_select on public.caller_rule_history for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));

-- ---------------------------------------------------------------- org moves

-- As in 20261129000001, plus: an agent leaving its org takes no versions,
-- after-hours links or caller rules along, and keeps none pointing back.
create or replace function switchboard_private.release_on_org_move()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if tg_table_name = 'agents' then
    update public.calls set agent_id = null
    where agent_id = old.id and org_id = old.org_id;
    delete from public.knowledge_base
    where agent_id = old.id and org_id = old.org_id;
    delete from public.caller_rules
    where agent_id = old.id and org_id = old.org_id;
    update public.agents set after_hours_agent_id = null
    where after_hours_agent_id = old.id and org_id = old.org_id;
    delete from public.agent_versions
    where agent_id = old.id and org_id = old.org_id;
    new.after_hours_agent_id := null;
    new.serving := null;
    new.latest_version := null;
  elsif tg_table_name = 'customers' then
    update public.calls set customer_id = null
    where customer_id = old.id and org_id = old.org_id;
  end if;
  return new;
end
$$;
revoke all on function switchboard_private.release_on_org_move() from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- invalidation

-- As in 20261129000003, plus: caller rules, and an agent's number or org
-- changing, evict every route of the org (its routes carry the rules and
-- the numbers of the agents they name). Agent versions need nothing here:
-- publishing updates the agent row.
create or replace function switchboard_private.notify_invalidation()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  numbers text[];
  orgs uuid[];
  moved_from text;
  own_number_only boolean := false;
  change jsonb;
  writer xid8;
begin
  -- (plpgsql evaluates every field a condition names, so the agents'
  -- fields are read only in a block that runs for agents.)
  if tg_level = 'ROW' and tg_table_name = 'agents' then
    if tg_op <> 'UPDATE' then
      own_number_only := true;
    elsif old.phone_number is not distinct from new.phone_number
          and old.org_id is not distinct from new.org_id then
      own_number_only := true;
    end if;
  end if;
  if tg_level = 'STATEMENT' then
    change := jsonb_build_object('kind', 'all');
  elsif own_number_only then
    numbers := array_remove(array[
      case when tg_op <> 'INSERT' then old.phone_number end,
      case when tg_op <> 'DELETE' then new.phone_number end
    ], null);
    change := jsonb_build_object('kind', 'numbers', 'numbers', to_jsonb(numbers));
  elsif tg_table_name in ('organizations', 'caller_rules', 'agents') then
    if tg_table_name = 'organizations' then
      orgs := array[case when tg_op = 'DELETE' then old.id else new.id end];
    elsif tg_table_name = 'agents' then
      -- Its old number too: no agent holds it any more.
      moved_from := old.phone_number;
      orgs := array[old.org_id, new.org_id];
    else
      orgs := array_remove(array[
        case when tg_op <> 'INSERT' then old.org_id end,
        case when tg_op <> 'DELETE' then new.org_id end
      ], null);
    end if;
    select coalesce(array_agg(distinct n), '{}') into numbers
    from (
      select a.phone_number as n from public.agents a where a.org_id = any (orgs)
      union all
      select moved_from where moved_from is not null
    ) all_numbers;
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
  writer := pg_catalog.pg_current_xact_id();
  insert into switchboard_private.invalidation_outbox (xid, change) values (writer, change);
  perform pg_catalog.pg_notify('switchboard_invalidate', '');
  return null;
end
$$;
revoke all on function switchboard_private.notify_invalidation() from public, anon, authenticated, service_role;

drop trigger if exists caller_rules_invalidate on public.caller_rules;
create trigger caller_rules_invalidate after insert or update or delete on public.caller_rules
  for each row execute function switchboard_private.notify_invalidation();
drop trigger if exists caller_rules_invalidate_truncate on public.caller_rules;
create trigger caller_rules_invalidate_truncate after truncate on public.caller_rules
  for each statement execute function switchboard_private.notify_invalidation();

-- ---------------------------------------------------------------- the call path

-- `resolve_route` plus what the decision pipeline needs, so it travels with
-- the cached route: the agent's serving rule, the versions it may serve,
-- its hours and after-hours target (with that agent's number), the org's
-- caller rules (with their agents' numbers), and the caller's attributes.
drop function if exists switchboard_private.resolve_route(text, text, text, text);
create or replace function switchboard_private.route_extras(agent_id uuid, org_id uuid)
returns table (served_versions jsonb, after_hours_agent_number text, caller_rules jsonb)
language sql stable
set search_path = ''
as $$
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
     where r.org_id = route_extras.org_id)
$$;
revoke all on function switchboard_private.route_extras(uuid, uuid) from public, anon, authenticated, service_role;
grant execute on function switchboard_private.route_extras(uuid, uuid) to authenticated, service_role;

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
           o.name, o.slug, o.plan_tier::text, o.created_at,
           coalesce(o.max_concurrent_calls, switchboard_private.plan_call_limit(o.plan_tier)),
           c.id, c.phone, c.name, c.email, c.created_at, c.updated_at, c.attributes,
           x.served_versions, x.after_hours_agent_number, x.caller_rules
    from public.agents a
    join public.organizations o on o.id = a.org_id
    left join public.customers c on c.org_id = a.org_id and c.phone = resolve_number.caller_number
    cross join lateral switchboard_private.route_extras(a.id, a.org_id) x
    where a.phone_number = resolve_number.called_number;
end
$$;
revoke all on function switchboard_private.resolve_number(text, text, text, text) from public, anon, authenticated, service_role;
