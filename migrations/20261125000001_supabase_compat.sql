-- Supabase compatibility bootstrap.
--
-- Real Supabase already has the roles anon/authenticated/service_role, the
-- schema `auth` with `auth.users`, `auth.uid()`, `auth.jwt()` and
-- `auth.role()`. Plain Postgres (a laptop, CI) has none of them. Every
-- statement here creates an object only where it is missing, so the same
-- migrations apply unchanged to both, and twice in a row.

do $bootstrap$
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
    execute format('grant anon, authenticated, service_role to %I', current_user);
  end if;
end
$bootstrap$;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- A minimal stand-in for GoTrue's table; only `id` is relied on.
create table if not exists auth.users (
  id uuid primary key,
  email text,
  created_at timestamptz not null default now()
);

do $bootstrap$
begin
  -- Supabase's own definitions: the legacy per-claim setting first, then the
  -- JSON of all claims that PostgREST (and switchboard) sets.
  if pg_catalog.to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
  end if;
  if pg_catalog.to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
  end if;
  if pg_catalog.to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
  end if;
end
$bootstrap$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;

-- The platform's design enables pgvector. Where it is not installed (Debian's
-- Postgres 15 has no package for it) the schema goes on without the
-- embedding column rather than failing.
do $bootstrap$
begin
  if exists (select 1 from pg_catalog.pg_available_extensions where name = 'vector') then
    if exists (select 1 from pg_catalog.pg_namespace where nspname = 'extensions') then
      create extension if not exists vector with schema extensions;
    else
      create extension if not exists vector with schema public;
    end if;
  end if;
end
$bootstrap$;
