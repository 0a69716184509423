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

-- ---------------------------------------------------------------- detach what crosses

do $detach$
declare
  found bigint;
  total bigint := 0;
begin
  with detached as (
    update public.calls c set agent_id = null
    from public.agents a
    where a.id = c.agent_id and a.org_id <> c.org_id
    returning c.id, c.org_id, a.id as ref_id, a.org_id as ref_org
  )
  insert into switchboard_private.cross_org_references
    (table_name, column_name, row_id, org_id, referenced_id, referenced_org_id)
  select 'calls', 'agent_id', id, org_id, ref_id, ref_org from detached;
  get diagnostics found = row_count;
  if found > 0 then
    raise warning 'detached % row(s) of public.calls whose agent_id named an agent of another org (listed in switchboard_private.cross_org_references)', found;
  end if;
  total := total + found;

  with detached as (
    update public.calls c set customer_id = null
    from public.customers cu
    where cu.id = c.customer_id and cu.org_id <> c.org_id
    returning c.id, c.org_id, cu.id as ref_id, cu.org_id as ref_org
  )
  insert into switchboard_private.cross_org_references
    (table_name, column_name, row_id, org_id, referenced_id, referenced_org_id)
  select 'calls', 'customer_id', id, org_id, ref_id, ref_org from detached;
  get diagnostics found = row_count;
  if found > 0 then
    raise warning 'detached % row(s) of public.calls whose customer_id named a customer of another org (listed in switchboard_private.cross_org_references)', found;
  end if;
  total := total + found;

  -- Detached, not deleted: the text belongs to the org that wrote it; it is
  -- kept for that org to review (agent_id null), never fed to the other org.
  with detached as (
    update public.knowledge_base k set agent_id = null
    from public.agents a
    where a.id = k.agent_id and a.org_id <> k.org_id
    returning k.id, k.org_id, a.id as ref_id, a.org_id as ref_org
  )
  insert into switchboard_private.cross_org_references
    (table_name, column_name, row_id, org_id, referenced_id, referenced_org_id)
  select 'knowledge_base', 'agent_id', id, org_id, ref_id, ref_org from detached;
  get diagnostics found = row_count;
  if found > 0 then
    raise warning 'detached % row(s) of public.knowledge_base whose agent_id named an agent of another org (listed in switchboard_private.cross_org_references)', found;
  end if;
  total := total + found;

  raise notice 'same-org references: % cross-org reference(s) detached', total;
end
$detach$;

-- ---------------------------------------------------------------- the keys

do $keys$
declare
  old_key record;
begin
  -- The targets: (id, org_id) unique, so a composite key can point at it.
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.agents'::regclass and conname = 'agents_id_org_id_key') then
    alter table public.agents add constraint agents_id_org_id_key unique (id, org_id);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.customers'::regclass and conname = 'customers_id_org_id_key') then
    alter table public.customers add constraint customers_id_org_id_key unique (id, org_id);
  end if;

  -- The single-column keys 0002 made, whatever they are named.
  for old_key in
    select c.conrelid::regclass as tbl, c.conname
    from pg_catalog.pg_constraint c
    where c.contype = 'f'
      and (c.conrelid, c.confrelid) in (('public.calls'::regclass, 'public.agents'::regclass),
                                        ('public.calls'::regclass, 'public.customers'::regclass),
                                        ('public.knowledge_base'::regclass, 'public.agents'::regclass))
      and cardinality(c.conkey) = 1
  loop
    execute format('alter table %s drop constraint %I', old_key.tbl, old_key.conname);
  end loop;

  -- Named without "org_id_fkey" at the end: the service maps that suffix to
  -- "org_id does not name an organization".
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.calls'::regclass and conname = 'calls_agent_same_org_fkey') then
    alter table public.calls add constraint calls_agent_same_org_fkey
      foreign key (agent_id, org_id) references public.agents (id, org_id)
      on update no action on delete set null (agent_id);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.calls'::regclass and conname = 'calls_customer_same_org_fkey') then
    alter table public.calls add constraint calls_customer_same_org_fkey
      foreign key (customer_id, org_id) references public.customers (id, org_id)
      on update no action on delete set null (customer_id);
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint
                 where conrelid = 'public.knowledge_base'::regclass and conname = 'knowledge_base_agent_same_org_fkey') then
    alter table public.knowledge_base add constraint knowledge_base_agent_same_org_fkey
      foreign key (agent_id, org_id) references public.agents (id, org_id)
      on update no action on delete cascade;
  end if;
end
$keys$;

-- The referencing side, so a delete or move of one agent or customer finds
-- its rows without reading every call.
create index if not exists calls_agent_id_idx on public.calls (agent_id);
create index if not exists calls_customer_id_idx on public.calls (customer_id);
create index if not exists knowledge_base_agent_id_idx on public.knowledge_base (agent_id);

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
