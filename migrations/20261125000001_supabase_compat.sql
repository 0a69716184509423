-- Supabase compatibility bootstrap.
--
-- Real Supabase already has the roles anon/authenticated/service_role, the
-- schema `auth` with `auth.users`, `auth.uid()`, `auth.jwt()`, `auth.role()`
-- and `auth.email()`. Plain Postgres (a laptop, CI) has none of them. Every
-- statement here creates or grants something only where it is missing, so
-- the same migrations apply unchanged to both, and twice in a row.
--
-- Missing is checked in pg_catalog first, never left to IF NOT EXISTS: on a
-- current Supabase project `auth` belongs to `supabase_auth_admin` and the
-- migrating role (`postgres`) has no CREATE on it, and Postgres checks that
-- privilege before it looks whether the object exists, so
-- `create table if not exists auth.users` fails there although the table is
-- there. Nothing below touches an object of Supabase's that exists.
--
-- (This file was edited after it was first applied; src/migrate.rs accepts
-- the first text's checksum for it, see `BOOTSTRAP_FIRST_CHECKSUM`.)

do $bootstrap$
declare
  api_role text;
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
    -- As on Supabase: the platform-wide role, the only one that bypasses RLS.
    create role service_role nologin noinherit bypassrls;
  end if;

  -- The login role that runs switchboard switches to these roles
  -- transaction-locally, the way PostgREST's authenticator does. A superuser
  -- needs no grant; on Supabase `postgres` already has them.
  if not exists (
    select 1 from pg_catalog.pg_roles r where r.rolname = current_user and r.rolsuper
  ) then
    foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
      if not pg_catalog.pg_has_role(current_user, api_role, 'member') then
        execute format('grant %I to %I', api_role, current_user);
      end if;
    end loop;
  end if;
end
$bootstrap$;

do $bootstrap$
declare
  api_role text;
begin
  if not exists (select 1 from pg_catalog.pg_namespace where nspname = 'auth') then
    create schema auth;
  end if;
  foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
    if not pg_catalog.has_schema_privilege(api_role, 'auth', 'usage') then
      execute format('grant usage on schema auth to %I', api_role);
    end if;
  end loop;

  -- A minimal stand-in for GoTrue's table; only `id` is relied on.
  if not exists (
    select 1 from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'auth' and c.relname = 'users'
  ) then
    create table auth.users (
      id uuid primary key,
      email text,
      created_at timestamptz not null default now()
    );
  end if;
end
$bootstrap$;

do $bootstrap$
declare
  api_role text;
  fn oid;
begin
  -- Supabase's own definitions: the legacy per-claim setting first, then the
  -- JSON of all claims that PostgREST (and switchboard) sets. switchboard
  -- clears the legacy settings in every transaction it opens, so a value a
  -- pooled connection carries over from another client is never read.
  if not exists (
    select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'auth' and p.proname = 'uid' and p.pronargs = 0
  ) then
    create function auth.uid() returns uuid
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
  end if;
  if not exists (
    select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'auth' and p.proname = 'role' and p.pronargs = 0
  ) then
    create function auth.role() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
  end if;
  if not exists (
    select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'auth' and p.proname = 'email' and p.pronargs = 0
  ) then
    create function auth.email() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.email', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
        )::text
      $f$;
  end if;
  if not exists (
    select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'auth' and p.proname = 'jwt' and p.pronargs = 0
  ) then
    create function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
  end if;

  for fn in
    select p.oid from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'auth' and p.proname in ('uid', 'role', 'email', 'jwt') and p.pronargs = 0
  loop
    foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
      if not pg_catalog.has_function_privilege(api_role, fn, 'execute') then
        execute format('grant execute on function %s to %I', fn::regprocedure, api_role);
      end if;
    end loop;
  end loop;
end
$bootstrap$;

-- The platform's design enables pgvector. Where it is not installed (Debian's
-- Postgres 15 has no package for it) the schema goes on without the
-- embedding column rather than failing.
do $bootstrap$
begin
  if exists (select 1 from pg_catalog.pg_available_extensions where name = 'vector')
     and not exists (select 1 from pg_catalog.pg_extension where extname = 'vector') then
    if exists (select 1 from pg_catalog.pg_namespace where nspname = 'extensions') then
      create extension vector with schema extensions;
    else
      create extension vector with schema public;
    end if;
  end if;
end
$bootstrap$;
