-- Security (found by the attack review of 20261204000001; true of earlier
-- migrations): every function of `switchboard_private` now searches
-- `pg_catalog, pg_temp`, in that order, not only the SECURITY DEFINER ones.
--
-- 20261202000001 put `pg_temp` last for the SECURITY DEFINER functions. The
-- others kept `search_path = ''`, under which Postgres still searches the
-- session's temporary schema first for types and tables. Some of them run
-- inside a SECURITY DEFINER trigger, as its owner: `record_agent_change`
-- calls `agent_row_changes`, `change_actor_uid` and `change_actor_role`. So
-- any session that can update an agent (an org's manager with raw SQL as
-- `authenticated`, or the service itself, on a pooled connection where a
-- neighbour left a temporary type behind) could create `pg_temp.jsonb` as a
-- domain whose check calls a function of its own, and that function ran as
-- the owner: it read every org's agents. The rest run as the caller, who may
-- be the service as `service_role` on such a connection.
--
-- With `pg_catalog` first, the built-in types are found before any
-- temporary one, and `pg_temp` is never searched for functions or
-- operators. Every function of the schema, whatever it runs as; a test
-- holds every later one to it. Re-runnable.

do $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure
    from pg_catalog.pg_proc p
    join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'switchboard_private' and p.prokind = 'f'
  loop
    execute pg_catalog.format('alter function %s set search_path = pg_catalog, pg_temp', f);
  end loop;
end
$$;
