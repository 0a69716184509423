-- switchboard's schema: the platform's data model with tenant isolation that
-- holds for every role in every org.
--
-- What changed from the original design, and why:
-- * `is_super_admin()` is gone. It tested the per-org `admin` role, so every
--   org admin could read and write every tenant. Platform-wide access exists
--   only for `service_role` (BYPASSRLS), never through a per-org role.
-- * Membership and role come from `public.profiles` on every statement, never
--   from claims in the token, so removing a user or changing their role takes
--   effect on their very next request.
-- * Helper functions live in `switchboard_private`, a schema PostgREST does
--   not expose, with `search_path = ''` and fully qualified names.
-- * Every table has RLS and exactly one permissive policy per operation;
--   policies call helpers as `(select fn())`, an init-plan evaluated once per
--   statement, and every `org_id` a policy reads is indexed.
-- * Phone numbers are E.164, enforced by check constraints.

create schema if not exists switchboard_private;
revoke all on schema switchboard_private from public;
grant usage on schema switchboard_private to authenticated, service_role;

-- ---------------------------------------------------------------- tables

do $$
begin
  if to_regtype('public.plan_tier') is null then
    create type public.plan_tier as enum ('starter', 'pro', 'enterprise');
  end if;
end
$$;

create table if not exists public.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null check (length(name) between 1 and 200),
  slug text not null unique check (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  plan_tier public.plan_tier not null default 'starter',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table if not exists public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  org_id uuid not null references public.organizations (id) on delete cascade,
  role text not null default 'viewer' check (role in ('admin', 'manager', 'viewer')),
  full_name text,
  created_at timestamptz not null default now()
);
create index if not exists profiles_org_id_idx on public.profiles (org_id);

-- The caller's organization, and only when their role is one of `roles`.
-- SECURITY DEFINER because the policies on `profiles` call it: as invoker it
-- would recurse into those policies. It reads nothing but the caller's own
-- profile row.
create or replace function switchboard_private.auth_org_id(roles text[] default array['admin', 'manager', 'viewer'])
returns uuid
language sql stable security definer
set search_path = ''
as $$
  select p.org_id
  from public.profiles p
  where p.id = auth.uid() and p.role = any (roles)
$$;
revoke all on function switchboard_private.auth_org_id(text[]) from public;
grant execute on function switchboard_private.auth_org_id(text[]) to authenticated, service_role;

create table if not exists public.agents (
  id uuid primary key default gen_random_uuid(),
  -- A tenant's insert lands in its own org; service_role names the org.
  org_id uuid not null default switchboard_private.auth_org_id()
    references public.organizations (id) on delete cascade,
  name text not null check (length(name) between 1 and 200),
  -- A dialed number routes to exactly one agent on the whole platform.
  phone_number text not null unique check (phone_number ~ '^\+[1-9][0-9]{1,14}$'),
  voice_id text not null check (length(voice_id) between 1 and 200),
  llm_config jsonb not null default '{}'::jsonb check (jsonb_typeof(llm_config) = 'object'),
  is_active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index if not exists agents_org_id_idx on public.agents (org_id);

create table if not exists public.customers (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null default switchboard_private.auth_org_id()
    references public.organizations (id) on delete cascade,
  phone text not null check (phone ~ '^\+[1-9][0-9]{1,14}$'),
  name text check (length(name) <= 200),
  email text check (length(email) <= 320),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- Also the index behind org_id policies and the caller lookup.
  unique (org_id, phone)
);

create table if not exists public.calls (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null default switchboard_private.auth_org_id()
    references public.organizations (id) on delete cascade,
  agent_id uuid references public.agents (id) on delete set null,
  customer_id uuid references public.customers (id) on delete set null,
  called_number text not null check (called_number ~ '^\+[1-9][0-9]{1,14}$'),
  caller_number text check (caller_number ~ '^\+[1-9][0-9]{1,14}$'),
  status text not null default 'ringing'
    check (status in ('ringing', 'in_progress', 'completed', 'failed', 'missed')),
  summary text,
  started_at timestamptz not null default now(),
  ended_at timestamptz
);
create index if not exists calls_org_id_idx on public.calls (org_id);

create table if not exists public.knowledge_base (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null default switchboard_private.auth_org_id()
    references public.organizations (id) on delete cascade,
  agent_id uuid references public.agents (id) on delete cascade,
  title text not null,
  content text not null,
  created_at timestamptz not null default now()
);
create index if not exists knowledge_base_org_id_idx on public.knowledge_base (org_id);

do $vector$
declare
  vector_schema name;
begin
  select n.nspname into vector_schema
  from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
  where e.extname = 'vector';
  if vector_schema is not null then
    execute format('alter table public.knowledge_base add column if not exists embedding %I.vector(1536)', vector_schema);
  end if;
end
$vector$;

create or replace function switchboard_private.touch_updated_at()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

drop trigger if exists organizations_touch_updated_at on public.organizations;
create trigger organizations_touch_updated_at before update on public.organizations
  for each row execute function switchboard_private.touch_updated_at();
drop trigger if exists agents_touch_updated_at on public.agents;
create trigger agents_touch_updated_at before update on public.agents
  for each row execute function switchboard_private.touch_updated_at();
drop trigger if exists customers_touch_updated_at on public.customers;
create trigger customers_touch_updated_at before update on public.customers
  for each row execute function switchboard_private.touch_updated_at();

-- ---------------------------------------------------------------- grants
-- Explicit, so that plain Postgres and Supabase (whose default privileges
-- grant everything to anon) behave the same: anon reaches no table at all.

revoke all on public.organizations, public.profiles, public.agents, public.customers,
  public.calls, public.knowledge_base from anon;
grant select, insert, update, delete on public.organizations, public.profiles, public.agents,
  public.customers, public.calls, public.knowledge_base to authenticated, service_role;

-- ---------------------------------------------------------------- policies
-- Inside an org: viewer reads; manager and admin write agents, customers,
-- calls and the knowledge base; only admin manages profiles; nobody changes
-- their own role or org. Organizations are created and changed by
-- service_role only.

alter table public.organizations enable row level security;
alter table public.profiles enable row level security;
alter table public.agents enable row level security;
alter table public.customers enable row level security;
alter table public.calls enable row level security;
alter table public.knowledge_base enable row level security;

drop policy if exists organizations_select on public.organizations;
create policy organizations_select on public.organizations for select to authenticated
  using (id = (select switchboard_private.auth_org_id()));

drop policy if exists profiles_select on public.profiles;
create policy profiles_select on public.profiles for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists profiles_insert on public.profiles;
create policy profiles_insert on public.profiles for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin'])));
-- An admin may not touch their own profile: no one changes their own role or org.
drop policy if exists profiles_update on public.profiles;
create policy profiles_update on public.profiles for update to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin'])) and id <> (select auth.uid()))
  with check (org_id = (select switchboard_private.auth_org_id(array['admin'])));
drop policy if exists profiles_delete on public.profiles;
create policy profiles_delete on public.profiles for delete to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin'])) and id <> (select auth.uid()));

drop policy if exists agents_select on public.agents;
create policy agents_select on public.agents for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists agents_insert on public.agents;
create policy agents_insert on public.agents for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists agents_update on public.agents;
create policy agents_update on public.agents for update to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])))
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists agents_delete on public.agents;
create policy agents_delete on public.agents for delete to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));

drop policy if exists customers_select on public.customers;
create policy customers_select on public.customers for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists customers_insert on public.customers;
create policy customers_insert on public.customers for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists customers_update on public.customers;
create policy customers_update on public.customers for update to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])))
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists customers_delete on public.customers;
create policy customers_delete on public.customers for delete to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));

drop policy if exists calls_select on public.calls;
create policy calls_select on public.calls for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists calls_insert on public.calls;
create policy calls_insert on public.calls for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists calls_update on public.calls;
create policy calls_update on public.calls for update to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])))
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists calls_delete on public.calls;
create policy calls_delete on public.calls for delete to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));

drop policy if exists knowledge_base_select on public.knowledge_base;
create policy knowledge_base_select on public.knowledge_base for select to authenticated
  using (org_id = (select switchboard_private.auth_org_id()));
drop policy if exists knowledge_base_insert on public.knowledge_base;
create policy knowledge_base_insert on public.knowledge_base for insert to authenticated
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists knowledge_base_update on public.knowledge_base;
create policy knowledge_base_update on public.knowledge_base for update to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])))
  with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
drop policy if exists knowledge_base_delete on public.knowledge_base;
create policy knowledge_base_delete on public.knowledge_base for delete to authenticated
  using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));

-- ---------------------------------------------------------------- the call path
-- ResolveAgent in one statement, so one round trip, through any pooler:
-- applies the caller's claims and role transaction-locally (as PostgREST
-- does), then looks the number up under RLS. The SET clause makes Postgres
-- undo both settings when the function returns.
-- Only switchboard's own login role may call it: it switches role on the
-- caller's say-so.
create or replace function switchboard_private.resolve_agent(
  jwt_claims text, jwt_role text, called_number text, caller_number text
)
returns table (
  agent_id uuid, org_id uuid, agent_name text, phone_number text, voice_id text,
  llm_config jsonb, is_active boolean, agent_created_at timestamptz, agent_updated_at timestamptz,
  org_name text, org_slug text, org_plan_tier text, org_created_at timestamptz,
  customer_id uuid, customer_phone text, customer_name text, customer_email text,
  customer_created_at timestamptz, customer_updated_at timestamptz
)
language plpgsql volatile
set search_path = ''
as $$
begin
  perform pg_catalog.set_config('request.jwt.claims', jwt_claims, true);
  perform pg_catalog.set_config('role', jwt_role, true);
  return query
    select a.id, a.org_id, a.name, a.phone_number, a.voice_id,
           a.llm_config, a.is_active, a.created_at, a.updated_at,
           o.name, o.slug, o.plan_tier::text, o.created_at,
           c.id, c.phone, c.name, c.email, c.created_at, c.updated_at
    from public.agents a
    join public.organizations o on o.id = a.org_id
    left join public.customers c on c.org_id = a.org_id and c.phone = resolve_agent.caller_number
    where a.phone_number = resolve_agent.called_number;
end
$$;
revoke all on function switchboard_private.resolve_agent(text, text, text, text) from public, anon, authenticated, service_role;
