-- Same-org references: a tenant row may only name a row of its own org.
--
-- Before this file, `calls.agent_id`, `calls.customer_id` and
-- `knowledge_base.agent_id` referenced `id` alone, so an org A manager could
-- attach A's calls and knowledge to org B's agents and customers (and learn
-- whether B's ids exist from success versus a foreign-key error). Now every
-- such key is composite, `(x_id, org_id)` → `(id, org_id)`, so the database
-- itself refuses a reference into another org, with the same error as for an
-- id that does not exist (`Key (agent_id, org_id)=(…) is not present in
-- table "agents"`; under RLS Postgres leaves the values out).
--
-- What happens to the rows that named an agent or customer:
-- * Deleted agent or customer: calls keep their org and lose the reference
--   (`on delete set null (agent_id)`: only that column, never org_id).
--   Knowledge of a deleted agent is deleted with it (`on delete cascade`):
--   it is that agent's prompt material and means nothing without it.
-- * Agent or customer moved to another org (only service_role or the owner
--   can): nothing follows it. Calls stay in their org with the reference
--   detached; the moved agent's knowledge is deleted, as on delete: seen
--   from the org it left, the agent is gone, and detached knowledge would
--   read as org-wide material for every other agent of that org. Postgres 15
--   allows a column list only for ON DELETE, and `on update set null` would
--   null org_id too, so a BEFORE UPDATE trigger does this and the keys stay
--   `on update no action` (a move the trigger did not clear is refused).
-- * Rows that already crossed orgs when this runs: detached (reference set
--   null), recorded in `switchboard_private.cross_org_references`, and
--   counted in a WARNING. The migration never fails for them.
--
-- Re-runnable: every step checks first or is a no-op the second time.

-- ---------------------------------------------------------------- the report

create table if not exists switchboard_private.cross_org_references (
  id bigint generated always as identity primary key,
  detected_at timestamptz not null default now(),
  -- `calls.agent_id`, `calls.customer_id`, `knowledge_base.agent_id`.
  table_name text not null,
  column_name text not null,
  row_id uuid not null,
  org_id uuid not null,
  referenced_id uuid not null,
  referenced_org_id uuid not null
);
revoke all on switchboard_private.cross_org_references from public, anon, authenticated, service_role;
revoke all on sequence switchboard_private.cross_org_references_id_seq from public, anon, authenticated, service_role;

-- The referencing side, so a delete or move of one agent or customer finds
-- its rows without reading every call. Built before the keys change: from
-- the first key change to the commit, agents and customers are locked
-- (ACCESS EXCLUSIVE), so the slow steps go first.
create index if not exists calls_agent_id_idx on public.calls (agent_id);
create index if not exists calls_customer_id_idx on public.calls (customer_id);
create index if not exists knowledge_base_agent_id_idx on public.knowledge_base (agent_id);

-- ---------------------------------------------------------------- the keys

-- The targets: (id, org_id) unique, so a composite key can point at it.
do $targets$
begin
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.agents'::regclass and conname = 'agents_id_org_id_key') then
    alter table public.agents add constraint agents_id_org_id_key unique (id, org_id);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.customers'::regclass and conname = 'customers_id_org_id_key') then
    alter table public.customers add constraint customers_id_org_id_key unique (id, org_id);
  end if;
end
$targets$;

-- Per reference: detach and record the rows that cross orgs, drop the
-- single-column key 0002 made (whatever it is named), add the composite one.
-- Its name does not end in "org_id_fkey": the service maps that suffix to
-- "org_id does not name an organization".
do $references$
declare
  ref record;
  old_key record;
  found bigint;
  total bigint := 0;
begin
  for ref in
    select * from (values
      ('calls', 'agent_id', 'agents', 'calls_agent_same_org_fkey', 'set null (agent_id)'),
      ('calls', 'customer_id', 'customers', 'calls_customer_same_org_fkey', 'set null (customer_id)'),
      -- Detached here, not deleted: the text belongs to the org that wrote
      -- it and stays for it to review (agent_id null), never fed to the other.
      ('knowledge_base', 'agent_id', 'agents', 'knowledge_base_agent_same_org_fkey', 'cascade')
    ) as r(tbl, col, target, key_name, on_delete)
  loop
    execute format(
      $sql$
        with detached as (
          update public.%1$I r set %2$I = null
          from public.%3$I t
          where t.id = r.%2$I and t.org_id <> r.org_id
          returning r.id, r.org_id, t.id as ref_id, t.org_id as ref_org
        )
        insert into switchboard_private.cross_org_references
          (table_name, column_name, row_id, org_id, referenced_id, referenced_org_id)
        select %1$L, %2$L, id, org_id, ref_id, ref_org from detached
      $sql$, ref.tbl, ref.col, ref.target);
    get diagnostics found = row_count;
    if found > 0 then
      raise warning 'detached % row(s) of public.% whose % named a row of public.% in another org (listed in switchboard_private.cross_org_references)',
        found, ref.tbl, ref.col, ref.target;
    end if;
    total := total + found;

    for old_key in
      select c.conname from pg_catalog.pg_constraint c
      where c.contype = 'f' and cardinality(c.conkey) = 1
        and c.conrelid = pg_catalog.format('public.%I', ref.tbl)::regclass
        and c.confrelid = pg_catalog.format('public.%I', ref.target)::regclass
    loop
      execute format('alter table public.%I drop constraint %I', ref.tbl, old_key.conname);
    end loop;

    if not exists (select 1 from pg_catalog.pg_constraint
                   where conrelid = pg_catalog.format('public.%I', ref.tbl)::regclass
                     and conname = ref.key_name) then
      execute format(
        'alter table public.%I add constraint %I foreign key (%I, org_id) references public.%I (id, org_id) '
        'on update no action on delete %s',
        ref.tbl, ref.key_name, ref.col, ref.target, ref.on_delete);
    end if;
  end loop;
  raise notice 'same-org references: % cross-org reference(s) detached', total;
end
$references$;

-- ---------------------------------------------------------------- moves

-- Before an agent or customer changes org, the rows of its old org that
-- name it let go: calls are detached, the agent's knowledge is deleted.
-- SECURITY DEFINER so RLS cannot hide a row from it (a row it missed would
-- make the foreign key refuse the move); nobody is granted EXECUTE.
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
  elsif tg_table_name = 'customers' then
    update public.calls set customer_id = null
    where customer_id = old.id and org_id = old.org_id;
  end if;
  return new;
end
$$;
revoke all on function switchboard_private.release_on_org_move() from public, anon, authenticated, service_role;

drop trigger if exists agents_release_on_org_move on public.agents;
create trigger agents_release_on_org_move before update of org_id on public.agents
  for each row when (old.org_id is distinct from new.org_id)
  execute function switchboard_private.release_on_org_move();
drop trigger if exists customers_release_on_org_move on public.customers;
create trigger customers_release_on_org_move before update of org_id on public.customers
  for each row when (old.org_id is distinct from new.org_id)
  execute function switchboard_private.release_on_org_move();
