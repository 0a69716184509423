-- Audit trail of agent changes: `public.agent_history`, append-only, written
-- by a trigger on `public.agents`, so every insert, update and delete is
-- recorded whoever makes it: switchboard, PostgREST, Studio, plain SQL as
-- `postgres`.
--
-- * Who: `changed_by` is the token's `sub` (`auth.uid()`'s source) or null;
--   `actor_role` is the token's role (`authenticated`, `service_role`), or,
--   for a change made without claims, the SQL role that made it.
-- * What: `changes` is {"field": {"old": …, "new": …}} for the fields that
--   changed (all of them on insert, old only on delete). Bookkeeping columns
--   (id, created_at, updated_at) are left out; an update that changes nothing
--   else records nothing. Values under secret-looking keys, at any depth of
--   `llm_config` or as a column name, are stored as "[redacted]".
-- * Reading: members of the org, any role, read their org's history (RLS);
--   service_role reads all of it. Nobody updates, deletes or truncates it,
--   not even the table's owner (a guard trigger), and rows come only from the
--   agents trigger: a direct insert is refused, even as `postgres`.
-- * No foreign keys: history outlives the agent it describes (that is when
--   it matters) and must not block, or be cascaded by, deleting an org.
--
-- Also (last section): revokes from tenants the table privileges RLS does not
-- govern (TRUNCATE, REFERENCES, TRIGGER), which Supabase's default
-- privileges hand out; the RLS policy matrix test found them.

create table if not exists public.agent_history (
  id bigint generated always as identity primary key,
  org_id uuid not null,
  agent_id uuid not null,
  changed_at timestamptz not null default now(),
  changed_by uuid,
  actor_role text not null,
  operation text not null check (operation in ('insert', 'update', 'delete')),
  changes jsonb not null check (jsonb_typeof(changes) = 'object')
);
-- ListAgentHistory: one agent, newest first, keyset on id.
create index if not exists agent_history_agent_id_idx on public.agent_history (agent_id, id desc);
-- The select policy reads org_id.
create index if not exists agent_history_org_id_idx on public.agent_history (org_id);

-- ---------------------------------------------------------------- redaction

-- The helpers below are plpgsql, not SQL: a SQL function with a SET clause
-- is never inlined and is planned again at every call, which tripled the
-- trigger's cost; plpgsql keeps its plans for the session.
create or replace function switchboard_private.is_secret_key(key text)
returns boolean
language plpgsql immutable
set search_path = ''
as $$
begin
  -- `max_tokens` is not a secret; `api_key`, `apiKey`, `access_token`,
  -- `client_secret`, `password` are.
  return pg_catalog.lower(key) ~ '(api_?key|secret|passw(or)?d|credential|authorization|bearer|private_?key|(^|_)token$|access_?token|refresh_?token|auth_?token)'
      or pg_catalog.lower(key) in ('key', 'token');
end
$$;
revoke all on function switchboard_private.is_secret_key(text) from public;

create or replace function switchboard_private.redact_secrets(value jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  case pg_catalog.jsonb_typeof(value)
    when 'object' then
      return (
        select coalesce(pg_catalog.jsonb_object_agg(
          e.key,
          case when switchboard_private.is_secret_key(e.key) then '"[redacted]"'::jsonb
               else switchboard_private.redact_secrets(e.value) end
        ), '{}'::jsonb)
        from pg_catalog.jsonb_each(value) e
      );
    when 'array' then
      return (
        select coalesce(pg_catalog.jsonb_agg(switchboard_private.redact_secrets(a.item) order by a.position), '[]'::jsonb)
        from pg_catalog.jsonb_array_elements(value) with ordinality as a(item, position)
      );
    else
      return value;
  end case;
end
$$;
revoke all on function switchboard_private.redact_secrets(jsonb) from public;

-- ---------------------------------------------------------------- who and what

-- {"field": {"old": …, "new": …}} for every column whose value differs
-- between two versions of an agent row (either may be null: insert,
-- delete), bookkeeping columns left out, secrets redacted.
create or replace function switchboard_private.agent_row_changes(old_row jsonb, new_row jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return (
    select coalesce(pg_catalog.jsonb_object_agg(
             f.key,
             pg_catalog.jsonb_build_object(
               'old', case when switchboard_private.is_secret_key(f.key) and old_row -> f.key is not null
                           then '"[redacted]"'::jsonb else switchboard_private.redact_secrets(old_row -> f.key) end,
               'new', case when switchboard_private.is_secret_key(f.key) and new_row -> f.key is not null
                           then '"[redacted]"'::jsonb else switchboard_private.redact_secrets(new_row -> f.key) end
             )), '{}'::jsonb)
    from pg_catalog.jsonb_object_keys(coalesce(new_row, old_row)) as f(key)
    where f.key not in ('id', 'created_at', 'updated_at')
      and (old_row -> f.key) is distinct from (new_row -> f.key)
  );
end
$$;
revoke all on function switchboard_private.agent_row_changes(jsonb, jsonb) from public;

-- The user behind the current statement: the token's `sub` (read in the
-- order auth.uid() reads it), or null. Unlike auth.uid(), a sub that is not
-- a UUID is null rather than an error, so it cannot fail the agent write.
create or replace function switchboard_private.change_actor_uid()
returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  sub text := coalesce(
    nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
    nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
  );
begin
  if sub ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    return sub::uuid;
  end if;
  return null;
end
$$;
revoke all on function switchboard_private.change_actor_uid() from public;

-- The role behind the current statement: the token's, else the SQL role.
-- Called from SECURITY DEFINER code, where current_user is the owner: the
-- `role` setting still names the role the session switched to (`none` if it
-- did not), and session_user the login role.
create or replace function switchboard_private.change_actor_role()
returns text
language plpgsql stable
set search_path = ''
as $$
begin
  return coalesce(
    nullif(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'role', ''),
    nullif(pg_catalog.current_setting('role'), 'none'),
    session_user
  );
end
$$;
revoke all on function switchboard_private.change_actor_role() from public;

-- ---------------------------------------------------------------- the triggers

-- SECURITY DEFINER: the caller (authenticated, service_role) has no insert
-- privilege on agent_history; only these functions, owned by the migration
-- role, write it. Nobody is granted EXECUTE: they run only as triggers.
create or replace function switchboard_private.record_agent_change()
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
begin
  if changes = '{}'::jsonb then
    return null;
  end if;
  insert into public.agent_history (org_id, agent_id, changed_by, actor_role, operation, changes)
  values (
    case when tg_op = 'DELETE' then old.org_id else new.org_id end,
    case when tg_op = 'DELETE' then old.id else new.id end,
    actor_uid, actor, pg_catalog.lower(tg_op), changes
  );
  -- An agent moved to another org: the org it left keeps a record too.
  if tg_op = 'UPDATE' and old.org_id is distinct from new.org_id then
    insert into public.agent_history (org_id, agent_id, changed_by, actor_role, operation, changes)
    values (old.org_id, new.id, actor_uid, actor, 'update', changes);
  end if;
  return null;
end
$$;
revoke all on function switchboard_private.record_agent_change() from public, anon, authenticated, service_role;

-- TRUNCATE fires no row triggers: record a delete for every agent first.
create or replace function switchboard_private.record_agents_truncate()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.agent_history (org_id, agent_id, changed_by, actor_role, operation, changes)
  select a.org_id, a.id, switchboard_private.change_actor_uid(), switchboard_private.change_actor_role(),
         'delete', switchboard_private.agent_row_changes(pg_catalog.to_jsonb(a), null)
  from public.agents a;
  return null;
end
$$;
revoke all on function switchboard_private.record_agents_truncate() from public, anon, authenticated, service_role;

drop trigger if exists agents_record_history on public.agents;
create trigger agents_record_history after insert or update or delete on public.agents
  for each row execute function switchboard_private.record_agent_change();
drop trigger if exists agents_record_history_truncate on public.agents;
create trigger agents_record_history_truncate before truncate on public.agents
  for each statement execute function switchboard_private.record_agents_truncate();

-- ---------------------------------------------------------------- append-only

-- Refuses every change to agent_history except an insert made by the agents
-- trigger (trigger depth 2: the agents trigger, then this one). Holds for the
-- table's owner and superusers too, who bypass grants and RLS.
create or replace function switchboard_private.agent_history_append_only()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' and pg_catalog.pg_trigger_depth() > 1 then
    return new;
  end if;
  raise exception 'agent_history is append-only: % is not allowed', pg_catalog.lower(tg_op)
    using errcode = 'insufficient_privilege',
          hint = 'rows are written only by the trigger on public.agents';
end
$$;
revoke all on function switchboard_private.agent_history_append_only() from public;

drop trigger if exists agent_history_append_only on public.agent_history;
create trigger agent_history_append_only before insert or update or delete on public.agent_history
  for each row execute function switchboard_private.agent_history_append_only();
drop trigger if exists agent_history_no_truncate on public.agent_history;
create trigger agent_history_no_truncate before truncate on public.agent_history
  for each statement execute function switchboard_private.agent_history_append_only();

-- ---------------------------------------------------------------- grants, RLS

revoke all on public.agent_history from public, anon, authenticated, service_role;
grant select on public.agent_history to authenticated, service_role;
-- Supabase's default privileges grant ALL on new sequences to anon and
-- authenticated: setval() on this one would make every later agent write
-- collide on the primary key. Only the owner (the trigger) draws from it.
revoke all on sequence public.agent_history_id_seq from public, anon, authenticated, service_role;

-- The tenant tables, hardened the same way. Supabase's default privileges
-- also give anon and authenticated TRUNCATE (which ignores RLS: every
-- tenant's rows at once), REFERENCES and TRIGGER on every table 0002
-- created; 0002 revoked anon's but only granted authenticated's four. Tenants
-- need select/insert/update/delete and nothing else.
revoke truncate, references, trigger on public.organizations, public.profiles, public.agents,
  public.customers, public.calls, public.knowledge_base from public, anon, authenticated;

alter table public.agent_history enable row level security;

drop policy if exists agent_history_select on public.agent_history;
create policy agent_history_select on public.agent_history for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
