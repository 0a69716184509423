-- Claims hygiene (issue 12, item 3). Re-runnable.
--
-- * `resolve_agent` blanks the legacy per-claim settings that auth.uid(),
--   auth.role(), auth.email() and auth.jwt() read before
--   `request.jwt.claims`, and its comment now says what its SET clause
--   restores (search_path only). (The store's other transactions blank
--   them in their first batch: src/store/postgres.rs `begin_as`.)
-- * `agent_history.actor_sql_role`: the SQL role that made a change, beside
--   `actor_role` (the claimed role), whose meaning does not change.
-- * Secret redaction in the trail matches key names without case or
--   separators (`X-Api-Key` is `api_key`), knows more names, and removes
--   credentials from URLs in any string.
-- * The schema bounds what gRPC bounds, so writes from SQL, Studio or
--   PostgREST meet limits too: `agents.llm_config` by size, every free-text
--   column of the tenant tables by length.

-- ---------------------------------------------------------------- the call path

-- ResolveAgent in one statement, so one round trip, through any pooler:
-- applies the caller's claims and role transaction-locally (as PostgREST
-- does), then looks the number up under RLS. First it blanks, also
-- transaction-locally, the legacy settings `request.jwt.claim.sub`, `.role`,
-- `.email` and `request.jwt.claim`, which auth.uid(), auth.role(),
-- auth.email() and auth.jwt() read before `request.jwt.claims`: a
-- session-level value that another client of a transaction pooler left on
-- the connection would otherwise answer auth.uid() for the caller.
-- The SET clause fixes search_path only, and Postgres restores it on
-- return. The claims, the blanked settings and the role last until the end
-- of the caller's transaction: the store calls this as one statement in an
-- implicit transaction of its own, so they end with the call. (Not in the
-- SET clause: Postgres 15 lets only a superuser, or a role granted SET on
-- the parameter, put a custom setting such as `request.jwt.claims` there,
-- and Supabase's `postgres` is neither.)
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
  perform pg_catalog.set_config('request.jwt.claim', '', true),
          pg_catalog.set_config('request.jwt.claim.sub', '', true),
          pg_catalog.set_config('request.jwt.claim.role', '', true),
          pg_catalog.set_config('request.jwt.claim.email', '', true),
          pg_catalog.set_config('request.jwt.claims', jwt_claims, true);
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

-- ---------------------------------------------------------------- who: the SQL role

-- Null for changes recorded before this migration.
alter table public.agent_history add column if not exists actor_sql_role text;

-- The SQL role the session acted as when it made the change: the role it
-- switched to (SET ROLE, or set_config('role', …) as PostgREST and
-- switchboard do), else its login role. Unlike `actor_role`, claims cannot
-- change it: a session of `authenticated` whose claims say `service_role`
-- is `authenticated` here. Called from the SECURITY DEFINER trigger, where
-- current_user is the trigger's owner: the `role` setting and session_user
-- are not changed by SECURITY DEFINER, so they still name the session's
-- role. A change made inside another SECURITY DEFINER function is therefore
-- recorded with the role that called that function, not its owner.
create or replace function switchboard_private.change_actor_sql_role()
returns text
language plpgsql stable
set search_path = ''
as $$
begin
  return coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user);
end
$$;
revoke all on function switchboard_private.change_actor_sql_role() from public;

-- As in 20261125000004_agent_history.sql, plus actor_sql_role.
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
  actor_sql text := switchboard_private.change_actor_sql_role();
begin
  if changes = '{}'::jsonb then
    return null;
  end if;
  insert into public.agent_history (org_id, agent_id, changed_by, actor_role, actor_sql_role, operation, changes)
  values (
    case when tg_op = 'DELETE' then old.org_id else new.org_id end,
    case when tg_op = 'DELETE' then old.id else new.id end,
    actor_uid, actor, actor_sql, pg_catalog.lower(tg_op), changes
  );
  -- An agent moved to another org: the org it left keeps a record too.
  if tg_op = 'UPDATE' and old.org_id is distinct from new.org_id then
    insert into public.agent_history (org_id, agent_id, changed_by, actor_role, actor_sql_role, operation, changes)
    values (old.org_id, new.id, actor_uid, actor, actor_sql, 'update', changes);
  end if;
  return null;
end
$$;
revoke all on function switchboard_private.record_agent_change() from public, anon, authenticated, service_role;

create or replace function switchboard_private.record_agents_truncate()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.agent_history (org_id, agent_id, changed_by, actor_role, actor_sql_role, operation, changes)
  select a.org_id, a.id, switchboard_private.change_actor_uid(), switchboard_private.change_actor_role(),
         switchboard_private.change_actor_sql_role(),
         'delete', switchboard_private.agent_row_changes(pg_catalog.to_jsonb(a), null)
  from public.agents a;
  return null;
end
$$;
revoke all on function switchboard_private.record_agents_truncate() from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- redaction

-- A key names a secret. Case and separators do not count: the name is
-- compared with everything but ASCII letters and digits removed, so
-- `X-Api-Key`, `x_api_key` and `apiKey` are one name. `max_tokens` is not a
-- secret; `token`, `x-auth-token`, `access-token`, `sessionToken`,
-- `idToken`, `pwd`, `signing_key`, `hmacKey`, `client_secret` are.
create or replace function switchboard_private.is_secret_key(key text)
returns boolean
language plpgsql immutable
set search_path = ''
as $$
declare
  name text := pg_catalog.regexp_replace(pg_catalog.lower(key), '[^a-z0-9]+', '', 'g');
begin
  return name ~ '(apikey|secret|passw(or)?d|passphrase|pwd|credential|authorization|bearer|cookie|(private|signing|hmac|access|encryption|master|session|auth)key|token$)'
      or name = 'key';
end
$$;
revoke all on function switchboard_private.is_secret_key(text) from public;

-- A string with the credentials in the URLs it holds replaced: the userinfo
-- of `scheme://user:pass@host` (user too: `https://token@host` is a
-- credential), and the values of query parameters named like secrets
-- (`?token=…`, `&api_key=…`). Anything else is returned as it was.
create or replace function switchboard_private.redact_url_secrets(value text)
returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  redacted text := value;
begin
  if pg_catalog.strpos(redacted, '://') > 0 then
    redacted := pg_catalog.regexp_replace(
      redacted, '([a-z][a-z0-9+.-]*://)[^/?#@[:space:]]+@', '\1[redacted]@', 'gi');
  end if;
  if redacted ~ '[?&;][^=&#?;[:space:]]+=' then
    -- Cut before every ?, & and ;: each piece after the first starts with
    -- one, and is a parameter if a name and = follow.
    select pg_catalog.string_agg(
             case when switchboard_private.is_secret_key(
                         pg_catalog.substring(p.part, '^[?&;]([^=&#?;[:space:]]+)='))
                  then pg_catalog.regexp_replace(
                         p.part, '^([?&;][^=&#?;[:space:]]+=)[^&#;[:space:]]*', '\1[redacted]')
                  else p.part end,
             '' order by p.n)
      into redacted
      from pg_catalog.regexp_split_to_table(redacted, '(?=[?&;])') with ordinality as p(part, n);
  end if;
  return redacted;
end
$$;
revoke all on function switchboard_private.redact_url_secrets(text) from public;

-- As in 20261125000004_agent_history.sql, plus credentials inside strings.
create or replace function switchboard_private.redact_secrets(value jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  original text;
  redacted text;
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
    when 'string' then
      original := value #>> '{}';
      redacted := switchboard_private.redact_url_secrets(original);
      if redacted is distinct from original then
        return pg_catalog.to_jsonb(redacted);
      end if;
      return value;
    else
      return value;
  end case;
end
$$;
revoke all on function switchboard_private.redact_secrets(jsonb) from public;

-- ---------------------------------------------------------------- bounds

-- What gRPC refuses, the database refuses too, whoever writes. Bounds:
-- * agents.llm_config: at most 512 KiB as stored jsonb (binary, before
--   compression). gRPC allows 64 KiB of compact JSON; jsonb takes at most
--   about 3.9 times that (the worst shape measured, arrays nested to gRPC's
--   depth limit around 0.0, is 254 KB), so the database never refuses what gRPC
--   accepts. The binary size, not the text: `1e300` is 5 bytes of JSON and
--   301 of jsonb text, while its binary stays small. `|| '{}'` detoasts
--   the value first: pg_column_size of a value copied from another table
--   (INSERT … SELECT) is its compressed size, which a large repetitive
--   value would pass.
-- * profiles.full_name: 200 characters, like every other name.
-- * calls.summary: 64 KiB (bytes).
-- * knowledge_base.title: 500 characters; knowledge_base.content: 1 MiB
--   (bytes).
-- Bytes are octet_length, which reads a stored value's size without
-- decompressing it.
-- (organizations.name and slug, agents.name and voice_id, customers.name
-- and email, and every phone number and status were bounded in 0002.)
--
-- Rows that already break a bound are kept: the constraint is added NOT
-- VALID (enforced on every new or changed row at once) and validated only
-- when no row breaks it; otherwise a WARNING names it and the count, and a
-- later run of this migration (or VALIDATE CONSTRAINT) validates it once
-- those rows are fixed.
do $bounds$
declare
  bound record;
  violating bigint;
begin
  for bound in
    select * from (values
      ('agents', 'agents_llm_config_size',
       'pg_catalog.pg_column_size(llm_config || ''{}''::jsonb) <= 524288'),
      ('profiles', 'profiles_full_name_length',
       'pg_catalog.char_length(full_name) <= 200'),
      ('calls', 'calls_summary_length',
       'pg_catalog.octet_length(summary) <= 65536'),
      ('knowledge_base', 'knowledge_base_title_length',
       'pg_catalog.char_length(title) <= 500'),
      ('knowledge_base', 'knowledge_base_content_length',
       'pg_catalog.octet_length(content) <= 1048576')
    ) as b(table_name, constraint_name, expression)
  loop
    if not exists (
      select 1 from pg_catalog.pg_constraint
      where conrelid = pg_catalog.format('public.%I', bound.table_name)::regclass
        and conname = bound.constraint_name
    ) then
      execute pg_catalog.format('alter table public.%I add constraint %I check (%s) not valid',
        bound.table_name, bound.constraint_name, bound.expression);
    end if;
    if exists (
      select 1 from pg_catalog.pg_constraint
      where conrelid = pg_catalog.format('public.%I', bound.table_name)::regclass
        and conname = bound.constraint_name and not convalidated
    ) then
      execute pg_catalog.format('select count(*) from public.%I where not (%s)',
        bound.table_name, bound.expression) into violating;
      if violating = 0 then
        execute pg_catalog.format('alter table public.%I validate constraint %I',
          bound.table_name, bound.constraint_name);
      else
        raise warning '% row(s) of public.% break %: kept, and the constraint is enforced on new and changed rows only; validate it once they are fixed',
          violating, bound.table_name, bound.constraint_name;
      end if;
    end if;
  end loop;
end
$bounds$;
