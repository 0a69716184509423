-- The database's own identity: a random id made once, here, that scopes the
-- Redis tier's keys and pub/sub channel
-- (`switchboard:v1:[<namespace>:]<identity>:route:<E.164>`). A database
-- dropped and made again (`supabase db reset`), or another deployment that
-- shares the Redis, has another id, so it never reads these routes.
--
-- A restore from backup (point-in-time recovery, a base backup, a dump, a
-- clone) brings the old id back while Redis may hold routes newer than the
-- restored rows: `switchboard retire-database-identity` replaces it; running
-- replicas notice within a second (they re-read it) and stop reading the
-- old keys, which then expire by their TTL.
--
-- Re-runnable: the row is made once and kept on every later run.

create table if not exists switchboard_private.database_identity (
  -- At most one row.
  singleton boolean primary key default true check (singleton),
  id uuid not null default gen_random_uuid(),
  created_at timestamptz not null default now()
);

insert into switchboard_private.database_identity (singleton)
values (true)
on conflict (singleton) do nothing;

-- Only the owner (migrations, the service's login role, the retire command)
-- reads or replaces it; the API roles have no business with it.
revoke all on switchboard_private.database_identity from public;
do $$
declare
  api_role text;
begin
  foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_roles where rolname = api_role) then
      execute format('revoke all on switchboard_private.database_identity from %I', api_role);
    end if;
  end loop;
end $$;
