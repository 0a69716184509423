//! Postgres under Row Level Security.
//!
//! Every query on behalf of a caller runs in a transaction that first applies
//! the caller's verified claims the way PostgREST does: `request.jwt.claims`
//! and `role` set transaction-locally, so `auth.uid()` and the policies decide
//! what the caller sees. The service never filters tenants itself.
//!
//! Pooler safety: Supavisor's and PgBouncer's transaction mode hand each
//! transaction a different server connection, so nothing here relies on
//! session state. BEGIN and the claims go in one simple-protocol round trip;
//! statements with parameters are unnamed (`persistent(false)`) and always
//! inside that transaction, so their parse and execute reach the same server;
//! `ResolveAgent` is one simple-protocol statement.
//!
//! Here: the pools and their admission (`acquire`), each store method's
//! statements, and rows into domain types. How a statement runs (the
//! transaction, its spans, the error mapping) is `tx.rs`. Agents and
//! customers are read, listed and deleted by id one way (`Keyed`).

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{
    pool::{PoolConnection, PoolOptions},
    postgres::{PgConnectOptions, PgRow, PgValueFormat},
    ConnectOptions, PgPool, Postgres, Row, ValueRef,
};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    sql_literal::push_sql_literal,
    timestamp_text::utc_timestamp,
    tx::{db_error, Access, PgQuery},
};
use crate::{
    auth::Claims,
    domain::{
        field_changes, AfterHours, Agent, AgentChange, AgentId, AgentPatch, AgentRouting,
        BusinessHours, ChangeOperation, Customer, CustomerId, CustomerUpsert, LlmConfig, NewAgent,
        OrgId, Organization, Page, PageRequest, PhoneNumber, PlanTier, Resolution, Seq,
        TransferTarget, VersionServing,
    },
    error::Error,
};

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub(crate) max_connections: u32,
    /// How long a request waits for a connection before UNAVAILABLE. Short:
    /// a call must not hang on a database that is down.
    pub(crate) acquire_timeout: Duration,
    /// Requests that may queue for a connection once every one is in use;
    /// beyond, RESOURCE_EXHAUSTED at once (0 = never queue).
    pub(crate) max_waiting: u32,
    /// Applied to every statement run for a caller.
    pub(crate) statement_timeout: Duration,
}

#[derive(Clone)]
pub struct PgStore {
    /// The primary: every write, and reads that must see them.
    pool: Pool,
    /// Lookups (`Access::Read`): a replica's pool when one is configured,
    /// else the same pool as `pool`. A replica may lag the primary.
    read_pool: Pool,
    /// The longest a statement may run (`statement_timeout`), also with
    /// more of its call's deadline left.
    pub(super) statement_timeout_ms: u128,
    max_connections: u32,
    max_waiting: u64,
    acquire_timeout: Duration,
}

/// A sqlx pool and what sqlx does not tell about it.
#[derive(Clone)]
struct Pool {
    pool: PgPool,
    gate: Arc<Gate>,
    /// Connections a single statement left clean, kept checked out for the
    /// next acquire (`park`).
    parked: Arc<Parked>,
}

/// Connections kept out of sqlx's pool between calls. sqlx 0.8 sends every
/// connection it gets back a Sync and waits for the answer before another
/// caller may have it (`PoolConnection::return_to_pool`): a second round
/// trip per call, to drain whatever an interrupted query left behind. A
/// statement that ran to its end (`single_statement`: the whole answer
/// read, the implicit transaction over) leaves nothing behind, so its
/// connection is parked here instead, for the next single statement.
/// Anything else (an error, a cancelled call, a transaction) goes back
/// through sqlx as before.
///
/// Fair to everyone else: the park owns at most `max` connections (parked
/// or running a statement), so `RESERVED` always circulate through sqlx,
/// for transactions and the callers that use the pool directly (the
/// invalidation listener's outbox reads and probes, the identity watcher);
/// it adopts a connection from sqlx only while sqlx has another idle one
/// (so nobody waits there for it); and while any of our requests waits in
/// sqlx, a finished statement hands its connection to sqlx (to the longest
/// waiter) instead of parking it.
struct Parked {
    idle: std::sync::Mutex<Vec<ParkedConnection>>,
    /// Connections the park owns: parked, or taken from it and running.
    owned: AtomicU64,
    max: u64,
    /// Counts parkings: every `RECYCLE_EVERY`th connection goes back
    /// through sqlx anyway, so its lifetime checks still see it.
    parkings: AtomicU64,
}

struct ParkedConnection {
    connection: PoolConnection<Postgres>,
    since: std::time::Instant,
}

/// A connection for one statement, and whether the park owns it. Dropped
/// without `Parked::park` (an error, a cancelled call), an owned one is
/// given up: it goes back through sqlx, which drains it.
pub(super) struct StatementConnection {
    /// `None` only once parked.
    connection: Option<PoolConnection<Postgres>>,
    owned_by: Option<Arc<Parked>>,
}

impl StatementConnection {
    pub(super) fn connection(&mut self) -> Option<&mut sqlx::PgConnection> {
        self.connection.as_deref_mut()
    }
}

impl Drop for StatementConnection {
    fn drop(&mut self) {
        if let Some(parked) = self.owned_by.take() {
            parked.owned.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Parked {
    /// Connections that never join the park.
    const RESERVED: u32 = 2;
    /// A connection parked longer goes back to sqlx, which closes idle
    /// connections in its own time.
    const IDLE: Duration = Duration::from_secs(30);
    const RECYCLE_EVERY: u64 = 1000;

    fn new(max_connections: u32) -> Self {
        Parked {
            idle: std::sync::Mutex::new(Vec::new()),
            owned: AtomicU64::new(0),
            max: u64::from(max_connections.saturating_sub(Self::RESERVED)),
            parkings: AtomicU64::new(0),
        }
    }

    /// The connection parked last (the likeliest to be warm).
    fn take(self: &Arc<Self>) -> Option<StatementConnection> {
        let parked = self.idle.lock().ok()?.pop()?;
        Some(StatementConnection {
            connection: Some(parked.connection),
            owned_by: Some(self.clone()),
        })
    }

    /// Keeps the connection of a statement that ran to its end for the
    /// next one, unless requests wait in sqlx (`waiting`), it is this
    /// connection's turn to be recycled, or (a connection from sqlx) the
    /// park owns its share already or sqlx has no other idle connection
    /// (`sqlx_idle`): then it goes back through sqlx. So does the oldest
    /// parked one once idle for `IDLE`. Dropped outside the lock.
    fn park(&self, mut statement: StatementConnection, waiting: u64, sqlx_idle: usize) {
        let recycle = self
            .parkings
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(Self::RECYCLE_EVERY);
        if recycle || waiting > 0 {
            return;
        }
        if statement.owned_by.is_none() {
            if sqlx_idle == 0 {
                return;
            }
            let adopted = self
                .owned
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |owned| {
                    (owned < self.max).then_some(owned + 1)
                });
            if adopted.is_err() {
                return;
            }
        }
        // Counted as the park's from here on: dropping `statement` no
        // longer gives it up.
        statement.owned_by = None;
        let Some(connection) = statement.connection.take() else {
            self.owned.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        let now = std::time::Instant::now();
        let mut released = None;
        let Ok(mut idle) = self.idle.lock() else {
            self.owned.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        if idle
            .first()
            .is_some_and(|oldest| now.duration_since(oldest.since) > Self::IDLE)
        {
            released = Some(idle.remove(0));
            self.owned.fetch_sub(1, Ordering::Relaxed);
        }
        idle.push(ParkedConnection {
            connection,
            since: now,
        });
        drop(idle);
        drop(released);
    }

    fn len(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

struct Gate {
    /// Requests in `acquire` now; sqlx does not expose its wait queue.
    waiting: AtomicU64,
    /// When a connection was last handed out (ms after `since`): a pool
    /// that hands out none for a whole acquire timeout is not busy but
    /// stuck (a database gone without a reset keeps its connections open).
    last_acquired_ms: AtomicU64,
    since: std::time::Instant,
}

impl Pool {
    fn new(pool: PgPool, max_connections: u32) -> Self {
        Pool {
            parked: Arc::new(Parked::new(max_connections)),
            pool,
            gate: Arc::new(Gate {
                waiting: AtomicU64::new(0),
                last_acquired_ms: AtomicU64::new(0),
                since: std::time::Instant::now(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.gate.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn acquired(&self) {
        self.gate
            .last_acquired_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether a connection was handed out within `window`.
    fn moving(&self, window: Duration) -> bool {
        let last = self.gate.last_acquired_ms.load(Ordering::Relaxed);
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        last > 0 && self.now_ms().saturating_sub(last) <= window
    }
}

/// An agent after `update_agent`, with what caches may hold of it.
pub struct AgentUpdated {
    pub(crate) agent: Agent,
    /// The number it had before (its route may be cached under it).
    pub(crate) previous_number: PhoneNumber,
    /// Every number of its org when its number changed (their routes name
    /// it by number); else empty.
    pub(crate) org_numbers: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub(crate) max: u32,
    /// Open connections, in use or idle.
    pub size: u32,
    pub(crate) idle: u32,
    pub(crate) waiting: u64,
}

const AGENT_COLUMNS: &str = "id, org_id, name, phone_number, voice_id, llm_config, is_active, \
     created_at, updated_at, max_concurrent_calls, fallback_destination, latest_version, serving, \
     business_hours, after_hours_agent_id, after_hours_destination";
const CUSTOMER_COLUMNS: &str = "id, org_id, phone, name, email, created_at, updated_at, attributes";

impl PgStore {
    /// Parses the URL now (a bad one stops start-up); connects lazily, so the
    /// service starts, and answers from cache, while the database is down.
    pub(crate) fn connect_lazy(
        database_url: &str,
        settings: &PoolSettings,
    ) -> Result<Self, sqlx::Error> {
        let pool = Pool::new(lazy_pool(database_url, settings)?, settings.max_connections);
        Ok(PgStore {
            read_pool: pool.clone(),
            pool,
            statement_timeout_ms: settings.statement_timeout.as_millis(),
            max_connections: settings.max_connections,
            max_waiting: u64::from(settings.max_waiting),
            acquire_timeout: settings.acquire_timeout,
        })
    }

    /// Lookups go to `read_url` (a replica), writes to the primary. Each
    /// pool has `settings.max_connections`.
    pub(crate) fn with_read_replica(
        self,
        read_url: &str,
        settings: &PoolSettings,
    ) -> Result<Self, sqlx::Error> {
        Ok(PgStore {
            read_pool: Pool::new(lazy_pool(read_url, settings)?, settings.max_connections),
            ..self
        })
    }

    /// The same store with lookups on the primary too: for reads whose
    /// answer is cached. Invalidation follows the primary (its NOTIFY), so a
    /// fill from a lagging replica could put back, for a whole TTL, what an
    /// invalidation just removed.
    pub(crate) fn primary_only(&self) -> Self {
        PgStore {
            read_pool: self.pool.clone(),
            ..self.clone()
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool.pool
    }

    fn pool_for(&self, access: Access) -> &Pool {
        match access {
            Access::Read => &self.read_pool,
            Access::Write => &self.pool,
        }
    }

    /// How long a pool may hand out no connection before it counts as
    /// stuck rather than busy: longer than any call may run.
    fn stuck_after(&self) -> Duration {
        let longest_call =
            Duration::from_millis(u64::try_from(self.statement_timeout_ms).unwrap_or(u64::MAX));
        longest_call.max(self.acquire_timeout.saturating_mul(2))
    }

    /// A connection from the pool; the request counts as waiting
    /// (`switchboard_db_pool_waiting`) until it has one or the acquire
    /// timeout passes. Taking an idle connection is a moment of that, so
    /// the gauge stays at 0 unless requests queue. (`Pool::try_acquire`
    /// first would skip the pool's idle-connection checks.)
    ///
    /// Admission: when no connection is idle, none may be opened, and
    /// `max_waiting` requests already wait, the request is shed at once
    /// rather than queued: a queue in front of a saturated database only
    /// adds its length to every call's latency.
    pub(super) async fn acquire(&self, access: Access) -> Result<PoolConnection<Postgres>, Error> {
        let pool = self.pool_for(access);
        let saturated = || pool.pool.num_idle() == 0 && pool.pool.size() >= self.max_connections;
        let waiting = Waiting::start(&pool.gate.waiting);
        if waiting.ahead >= self.max_waiting && saturated() {
            return Err(Error::ResourceExhausted(format!(
                "the database is busy: all {} connections of this replica are in use and {} requests wait (SWITCHBOARD_DB_MAX_WAITING={}); retry",
                self.max_connections, waiting.ahead, self.max_waiting
            )));
        }
        let acquired = pool
            .pool
            .acquire()
            .instrument(tracing::debug_span!(
                target: "switchboard::store",
                "db.pool.acquire"
            ))
            .await;
        match acquired {
            Ok(connection) => {
                pool.acquired();
                Ok(connection)
            }
            // Every connection open and busy for the whole timeout, while
            // others were handed out: the database is slow or saturated,
            // not gone. RESOURCE_EXHAUSTED, which the resolver's breaker
            // does not count: one slow moment must not turn into a second
            // of UNAVAILABLE for everyone. No connection handed out for
            // longer than any call may take is a database gone, even if
            // its connections look open (UNAVAILABLE, below).
            Err(sqlx::Error::PoolTimedOut) if saturated() && pool.moving(self.stuck_after()) => {
                tracing::warn!("no database connection became free in time");
                Err(Error::ResourceExhausted(format!(
                    "the database is busy: none of this replica's {} connections became free in time (SWITCHBOARD_DB_ACQUIRE_TIMEOUT_MS); retry",
                    self.max_connections
                )))
            }
            Err(error) => Err(db_error(error, "acquire")),
        }
    }

    /// A connection for a single statement: a parked one, else `acquire`.
    pub(super) async fn acquire_for_statement(
        &self,
        access: Access,
    ) -> Result<StatementConnection, Error> {
        let pool = self.pool_for(access);
        if let Some(parked) = pool.parked.take() {
            pool.acquired();
            return Ok(parked);
        }
        Ok(StatementConnection {
            connection: Some(self.acquire(access).await?),
            owned_by: None,
        })
    }

    /// Back for the next single statement: it ran to its end and the
    /// connection holds nothing of it (`Parked`).
    pub(super) fn park(&self, access: Access, statement: StatementConnection) {
        let pool = self.pool_for(access);
        pool.parked.park(
            statement,
            pool.gate.waiting.load(Ordering::Relaxed),
            pool.pool.num_idle(),
        );
    }

    /// Connections open, idle (parked ones included), waited for, and the
    /// limit: for `/metrics`.
    pub(crate) fn pool_stats(&self) -> PoolStats {
        PoolStats {
            max: self.max_connections,
            size: self.pool.pool.size(),
            idle: u32::try_from(self.pool.pool.num_idle() + self.pool.parked.len())
                .unwrap_or(u32::MAX),
            waiting: self.pool.gate.waiting.load(Ordering::Relaxed),
        }
    }

    /// The call path: one statement, one round trip.
    pub(crate) async fn resolve_agent(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Option<Resolution>, Error> {
        // One buffer: the literals are written into the statement.
        let mut sql = String::with_capacity(160 + claims.json.len());
        sql.push_str("select * from switchboard_private.resolve_number(");
        push_sql_literal(&mut sql, &claims.json).ok_or(Error::Internal)?;
        sql.push_str(", '");
        sql.push_str(claims.role.as_str());
        sql.push_str("', ");
        push_sql_literal(&mut sql, called.as_str()).ok_or(Error::Internal)?;
        sql.push_str(", ");
        match caller {
            Some(caller) => push_sql_literal(&mut sql, caller.as_str()).ok_or(Error::Internal)?,
            None => sql.push_str("NULL"),
        }
        sql.push(')');
        // The number is unique: at most one row.
        let rows = self
            .single_statement(Access::Read, "resolve_agent", &sql)
            .await?;
        rows.first().map(resolution_from_row).transpose()
    }

    /// Routes (agent + organization, no caller) for numbers after `after`,
    /// in number order: the cache preload walks all numbers in pages.
    pub(crate) async fn routes_after(
        &self,
        claims: &Claims,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Resolution>, Error> {
        let select = sqlx::query(
            "select a.id as agent_id, a.org_id, a.name as agent_name, a.phone_number, a.voice_id, \
                    a.llm_config, a.is_active, a.created_at as agent_created_at, \
                    a.updated_at as agent_updated_at, \
                    a.max_concurrent_calls as agent_max_concurrent_calls, a.fallback_destination, \
                    a.latest_version, a.serving, a.business_hours, a.after_hours_agent_id, \
                    a.after_hours_destination, \
                    o.name as org_name, o.slug as org_slug, \
                    o.plan_tier::text as org_plan_tier, o.created_at as org_created_at, \
                    coalesce(o.max_concurrent_calls, switchboard_private.plan_call_limit(o.plan_tier)) \
                      as org_max_concurrent_calls, \
                    null::uuid as customer_id, \
                    x.served_versions, x.after_hours_agent_number, x.caller_rules \
             from public.agents a join public.organizations o on o.id = a.org_id \
             cross join lateral switchboard_private.route_extras(a.id, a.org_id) x \
             where $1::text is null or a.phone_number > $1 \
             order by a.phone_number limit $2",
        )
        .bind(after)
        .bind(limit);
        let rows = self
            .transaction(claims, Access::Read, "routes_after", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        rows.iter().map(resolution_from_row).collect()
    }

    pub(crate) async fn create_agent(
        &self,
        claims: &Claims,
        agent: &NewAgent,
    ) -> Result<Agent, Error> {
        let sql = format!(
            "insert into public.agents (org_id, name, phone_number, voice_id, llm_config, is_active, \
                                        max_concurrent_calls, fallback_destination, business_hours, \
                                        after_hours_agent_id, after_hours_destination) \
             values (coalesce($1, switchboard_private.auth_org_id()), $2, $3, $4, $5, $6, $7, $8, \
                     $9, $10, $11) \
             returning {AGENT_COLUMNS}"
        );
        let insert = sqlx::query(&sql)
            .bind(agent.org_id.map(|o| o.as_uuid()))
            .bind(&agent.name)
            .bind(agent.phone_number.as_str())
            .bind(&agent.voice_id)
            .bind(agent.llm_config.as_json())
            .bind(agent.is_active)
            .bind(agent.max_concurrent_calls.map(limit_to_db))
            .bind(
                agent
                    .fallback_destination
                    .as_ref()
                    .map(TransferTarget::as_str),
            )
            .bind(agent.hours.as_ref().map(BusinessHours::to_json))
            .bind(after_hours_agent(&agent.after_hours))
            .bind(after_hours_destination(&agent.after_hours));
        let row = self
            .transaction(claims, Access::Write, "create_agent", async |tx| {
                tx.fetch_one(insert).await
            })
            .await?;
        agent_from_row(&row)
    }

    /// Returns the agent after the update, the number it had before (the
    /// one a cache may hold it under), and, when its number changed, every
    /// number of its org (their routes name it by number: rules, after
    /// hours).
    pub(crate) async fn update_agent(
        &self,
        claims: &Claims,
        id: AgentId,
        patch: &AgentPatch,
    ) -> Result<AgentUpdated, Error> {
        let sql = format!(
            "with before as (select id, phone_number from public.agents where id = $1 for update) \
             update public.agents a set \
               name = coalesce($2, a.name), \
               phone_number = coalesce($3, a.phone_number), \
               voice_id = coalesce($4, a.voice_id), \
               llm_config = coalesce($5, a.llm_config), \
               is_active = coalesce($6, a.is_active), \
               max_concurrent_calls = case when $7 then $8 else a.max_concurrent_calls end, \
               fallback_destination = case when $9 then $10 else a.fallback_destination end, \
               serving = case when $11 then $12 else a.serving end, \
               business_hours = case when $13 then $14 else a.business_hours end, \
               after_hours_agent_id = case when $13 then $15 else a.after_hours_agent_id end, \
               after_hours_destination = case when $13 then $16 else a.after_hours_destination end \
             from before where a.id = before.id \
             returning {cols}, before.phone_number as previous_phone_number",
            cols = AGENT_COLUMNS
                .split(", ")
                .map(|c| format!("a.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let update = sqlx::query(&sql)
            .bind(id.as_uuid())
            .bind(patch.name.as_deref())
            .bind(patch.phone_number.as_ref().map(PhoneNumber::as_str))
            .bind(patch.voice_id.as_deref())
            .bind(patch.llm_config.as_ref().map(LlmConfig::as_json))
            .bind(patch.is_active)
            .bind(patch.max_concurrent_calls.is_some())
            .bind(patch.max_concurrent_calls.flatten().map(limit_to_db))
            .bind(patch.fallback_destination.is_some())
            .bind(
                patch
                    .fallback_destination
                    .as_ref()
                    .and_then(|t| t.as_ref().map(TransferTarget::as_str)),
            )
            .bind(patch.serving.is_some())
            .bind(patch.serving.as_ref().and_then(VersionServing::to_json))
            .bind(patch.hours.is_some())
            .bind(
                patch
                    .hours
                    .as_ref()
                    .and_then(|(h, _)| h.as_ref().map(BusinessHours::to_json)),
            )
            .bind(patch.hours.as_ref().and_then(|(_, a)| after_hours_agent(a)))
            .bind(
                patch
                    .hours
                    .as_ref()
                    .and_then(|(_, a)| after_hours_destination(a)),
            );
        let moved = patch.phone_number.is_some();
        let (row, numbers) = self
            .transaction(claims, Access::Write, "update_agent", async |tx| {
                let Some(row) = tx.fetch_optional(update).await? else {
                    return Err(tx
                        .missing_or_forbidden("agents", id.as_uuid(), "agent")
                        .await);
                };
                let numbers = if moved {
                    let org: Uuid = get(&row, "org_id")?;
                    tx.fetch_all(
                        sqlx::query("select phone_number from public.agents where org_id = $1")
                            .bind(org),
                    )
                    .await?
                } else {
                    Vec::new()
                };
                Ok((row, numbers))
            })
            .await?;
        let previous: String = row
            .try_get("previous_phone_number")
            .map_err(|e| db_error(e, "update_agent"))?;
        let agent = agent_from_row(&row)?;
        let org_numbers = if previous == agent.phone_number.as_str() {
            Vec::new()
        } else {
            numbers
                .iter()
                .map(|r| get::<String>(r, "phone_number"))
                .collect::<Result<_, _>>()?
        };
        Ok(AgentUpdated {
            agent,
            previous_number: phone_from_db(&previous)?,
            org_numbers,
        })
    }

    /// An agent's recorded changes, newest first, as RLS lets the caller see
    /// them. NOT_FOUND when, on the first page, the caller sees neither a
    /// change nor the agent itself; an agent recorded before the trail
    /// existed (or whose changes were all no-ops) is an empty list.
    pub(crate) async fn list_agent_history(
        &self,
        claims: &Claims,
        agent: AgentId,
        page: PageRequest<Seq>,
    ) -> Result<Page<AgentChange>, Error> {
        let select = sqlx::query(
            "select id, org_id, agent_id, changed_at, changed_by, actor_role, actor_sql_role, operation, changes \
             from public.agent_history \
             where agent_id = $1 and ($2::bigint is null or id < $2) order by id desc limit $3",
        )
        .bind(agent.as_uuid())
        .bind(page.after.map(|seq| seq.0))
        .bind(i64::from(page.size) + 1);
        let rows = self
            .transaction(claims, Access::Read, "list_agent_history", async |tx| {
                let rows = tx.fetch_all(select).await?;
                if rows.is_empty()
                    && page.after.is_none()
                    && !tx.visible("agents", agent.as_uuid()).await?
                {
                    return Err(Error::not_found("agent"));
                }
                Ok(rows)
            })
            .await?;
        let changes = rows
            .iter()
            .map(agent_change_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(changes, page, |c| c.seq))
    }

    pub(crate) async fn lookup_customer(
        &self,
        claims: &Claims,
        phone: &PhoneNumber,
        org_id: Option<OrgId>,
    ) -> Result<Customer, Error> {
        // RLS decides what is visible; `org_id` only narrows it (the
        // platform's service_role sees every org).
        let sql = format!(
            "select {CUSTOMER_COLUMNS} from public.customers \
             where phone = $1 and ($2::uuid is null or org_id = $2) order by org_id limit 2"
        );
        let select = sqlx::query(&sql)
            .bind(phone.as_str())
            .bind(org_id.map(|o| o.as_uuid()));
        let rows = self
            .transaction(claims, Access::Read, "lookup_customer", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        match rows.as_slice() {
            [] => Err(Error::not_found("customer")),
            [row] => customer_from_row(row),
            // Only service_role sees several orgs at once.
            _ => Err(Error::FailedPrecondition(
                "customers of several organizations have this phone; name org_id".into(),
            )),
        }
    }

    pub(crate) async fn upsert_customer(
        &self,
        claims: &Claims,
        customer: &CustomerUpsert,
    ) -> Result<Customer, Error> {
        let sql = customer_upsert_sql();
        let upsert = sqlx::query(&sql)
            .bind(customer.org_id.map(|o| o.as_uuid()))
            .bind(customer.phone.as_str())
            .bind(customer.name.as_deref())
            .bind(customer.email.as_deref())
            .bind(serde_json::to_value(&customer.attributes).unwrap_or_default());
        let row = self
            .transaction(claims, Access::Write, "upsert_customer", async |tx| {
                tx.fetch_one(upsert).await
            })
            .await?;
        customer_from_row(&row)
    }

    /// The row `id` of `T`'s table, if the caller sees it.
    async fn get_by_id<T: Keyed>(&self, claims: &Claims, id: Uuid) -> Result<T, Error> {
        let sql = format!(
            "select {} from public.{} where id = $1",
            T::COLUMNS,
            T::TABLE
        );
        let select = sqlx::query(&sql).bind(id);
        let row = self
            .transaction(claims, Access::Read, T::GET, async |tx| {
                tx.fetch_optional(select).await
            })
            .await?;
        row.map(|r| T::from_row(&r))
            .transpose()?
            .ok_or_else(|| Error::not_found(T::WHAT))
    }

    /// A page of the rows of `T`'s table the caller sees, by id.
    async fn list_by_id<T: Keyed>(
        &self,
        claims: &Claims,
        page: PageRequest,
    ) -> Result<Page<T>, Error> {
        let sql = format!(
            "select {} from public.{} \
             where ($1::uuid is null or id > $1) order by id limit $2",
            T::COLUMNS,
            T::TABLE
        );
        let select = sqlx::query(&sql)
            .bind(page.after)
            .bind(i64::from(page.size) + 1);
        let rows = self
            .transaction(claims, Access::Read, T::LIST, async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        let found = rows
            .iter()
            .map(T::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(found, page, T::id))
    }

    /// Deletes the row `id` of `T`'s table; returns it as it was.
    async fn delete_by_id<T: Keyed>(&self, claims: &Claims, id: Uuid) -> Result<T, Error> {
        let sql = format!(
            "delete from public.{} where id = $1 returning {}",
            T::TABLE,
            T::COLUMNS
        );
        let row = self
            .write_by_id::<T>(claims, T::DELETE, id, sqlx::query(&sql).bind(id))
            .await?;
        T::from_row(&row)
    }

    /// Runs `write`, which changes the row `id` of `T`'s table and returns
    /// it: the row, or why there is none (`Tx::missing_or_forbidden`).
    async fn write_by_id<T: Keyed>(
        &self,
        claims: &Claims,
        operation: &'static str,
        id: Uuid,
        write: PgQuery<'_>,
    ) -> Result<PgRow, Error> {
        self.transaction(claims, Access::Write, operation, async |tx| {
            match tx.fetch_optional(write).await? {
                Some(row) => Ok(row),
                None => Err(tx.missing_or_forbidden(T::TABLE, id, T::WHAT).await),
            }
        })
        .await
    }
}

/// A kind of row read, listed and deleted by its `id` the same way.
trait Keyed: Sized {
    /// In `public`.
    const TABLE: &'static str;
    const COLUMNS: &'static str;
    /// What a client calls one (NOT_FOUND, PERMISSION_DENIED).
    const WHAT: &'static str;
    /// Its store methods' names, which name their spans.
    const GET: &'static str;
    const LIST: &'static str;
    const DELETE: &'static str;
    fn from_row(row: &PgRow) -> Result<Self, Error>;
    fn id(&self) -> Uuid;
}

/// A kind of row read, listed and deleted by id: its `Keyed` facts and
/// its three store methods, each named as its operation (its span).
macro_rules! keyed {
    ($kind:ident($id:ty) in $table:literal ($columns:expr), called $what:literal,
     from $from_row:path: $get:ident, $list:ident, $delete:ident) => {
        impl Keyed for $kind {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static str = $columns;
            const WHAT: &'static str = $what;
            const GET: &'static str = stringify!($get);
            const LIST: &'static str = stringify!($list);
            const DELETE: &'static str = stringify!($delete);
            fn from_row(row: &PgRow) -> Result<Self, Error> {
                $from_row(row)
            }
            fn id(&self) -> Uuid {
                self.id.as_uuid()
            }
        }

        impl PgStore {
            pub(crate) async fn $get(&self, claims: &Claims, id: $id) -> Result<$kind, Error> {
                self.get_by_id(claims, id.as_uuid()).await
            }

            pub(crate) async fn $list(
                &self,
                claims: &Claims,
                page: PageRequest,
            ) -> Result<Page<$kind>, Error> {
                self.list_by_id(claims, page).await
            }

            pub(crate) async fn $delete(&self, claims: &Claims, id: $id) -> Result<$kind, Error> {
                self.delete_by_id(claims, id.as_uuid()).await
            }
        }
    };
}

keyed!(Agent(AgentId) in "agents" (AGENT_COLUMNS), called "agent",
    from agent_from_row: get_agent, list_agents, delete_agent);
keyed!(Customer(CustomerId) in "customers" (CUSTOMER_COLUMNS), called "customer",
    from customer_from_row: get_customer, list_customers, delete_customer);

fn lazy_pool(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    // No statement logging by sqlx (it logs slow ones at WARN, SQL in
    // full): ours carries the caller's claims and phone numbers as
    // literals. The `db.statement` spans time them by operation instead.
    // No `extra_float_digits` startup parameter (sqlx sends one by
    // default): a PgBouncer with stock settings refuses the connection for
    // it. Postgres 12+ prints floats shortest-exact without it, and
    // `llm_config` is jsonb (numeric text) anyway.
    let options = PgConnectOptions::from_str(url)?
        .application_name("switchboard")
        .extra_float_digits(None)
        .disable_statement_logging();
    Ok(PoolOptions::<Postgres>::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Counts a request as waiting for a connection until dropped (also when
/// the acquire is cancelled by a deadline).
struct Waiting<'a> {
    count: &'a AtomicU64,
    /// How many were waiting already.
    ahead: u64,
}

impl<'a> Waiting<'a> {
    fn start(count: &'a AtomicU64) -> Self {
        let ahead = count.fetch_add(1, Ordering::Relaxed);
        Waiting { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

fn phone_from_db(value: &str) -> Result<PhoneNumber, Error> {
    PhoneNumber::parse(value).map_err(|_| {
        tracing::error!("database holds a phone number that is not E.164");
        Error::Internal
    })
}

pub(super) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column).map_err(|e| {
        tracing::error!(column, error = %e, "unexpected row shape");
        Error::Internal
    })
}

/// A `timestamptz` column: its UTC text form read directly
/// (`timestamp_text`), anything else (binary, from the extended protocol;
/// another form) decoded by sqlx as before.
fn timestamp(row: &PgRow, column: &str) -> Result<DateTime<Utc>, Error> {
    if let Ok(value) = row.try_get_raw(column) {
        if value.format() == PgValueFormat::Text
            && <DateTime<Utc> as sqlx::Type<Postgres>>::compatible(&value.type_info())
        {
            if let Some(at) = value.as_str().ok().and_then(utc_timestamp) {
                return Ok(at);
            }
        }
    }
    get(row, column)
}

fn agent_from_row(row: &PgRow) -> Result<Agent, Error> {
    agent_from_columns(
        row,
        [
            "id",
            "name",
            "created_at",
            "updated_at",
            "max_concurrent_calls",
        ],
    )
}

/// `[id, name, created_at, updated_at, max_concurrent_calls]` as the row
/// names them.
fn agent_from_columns(
    row: &PgRow,
    [id, name, created, updated, max_calls]: [&str; 5],
) -> Result<Agent, Error> {
    Ok(Agent {
        id: AgentId::from_uuid(get(row, id)?),
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        name: get(row, name)?,
        phone_number: phone_from_db(&get::<String>(row, "phone_number")?)?,
        voice_id: get(row, "voice_id")?,
        llm_config: LlmConfig::from_json(get(row, "llm_config")?),
        is_active: get(row, "is_active")?,
        created_at: timestamp(row, created)?,
        updated_at: timestamp(row, updated)?,
        max_concurrent_calls: get::<Option<i32>>(row, max_calls)?.map(limit_from_db),
        fallback_destination: get::<Option<String>>(row, "fallback_destination")?
            .map(TransferTarget::from_db),
        routing: routing_from_row(row)?,
    })
}

/// A routing column as JSON, or `None` when the service cannot read it (a
/// shape from SQL the checks let through): logged, and read as unset, so
/// one odd row does not fail every read of its agent or a preload page.
pub(super) fn readable_json(row: &PgRow, column: &str) -> Option<serde_json::Value> {
    match row.try_get::<Option<serde_json::Value>, _>(column) {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(column, %error, "a routing column cannot be read; treated as unset");
            None
        }
    }
}

fn after_hours_agent(after: &AfterHours) -> Option<Uuid> {
    match after {
        AfterHours::Agent(id) => Some(id.as_uuid()),
        _ => None,
    }
}

fn after_hours_destination(after: &AfterHours) -> Option<&str> {
    match after {
        AfterHours::Transfer(target) => Some(target.as_str()),
        _ => None,
    }
}

/// An agent's versions, hours and after-hours target as stored. Hours the
/// service cannot read (written from SQL in another shape) are logged and
/// read as none: the agent answers at all times rather than never.
fn routing_from_row(row: &PgRow) -> Result<AgentRouting, Error> {
    let serving = readable_json(row, "serving");
    let hours = match readable_json(row, "business_hours") {
        None => None,
        Some(json) => match BusinessHours::parse("business_hours", &json) {
            Ok(hours) => Some(hours),
            Err(error) => {
                tracing::error!(%error, "an agent's business_hours cannot be read; treated as always open");
                None
            }
        },
    };
    let after_hours = match (
        get::<Option<Uuid>>(row, "after_hours_agent_id")?,
        get::<Option<String>>(row, "after_hours_destination")?,
    ) {
        (Some(id), _) => AfterHours::Agent(AgentId::from_uuid(id)),
        (None, Some(target)) => AfterHours::Transfer(TransferTarget::from_db(target)),
        (None, None) => AfterHours::Refuse,
    };
    Ok(AgentRouting {
        latest_version: get::<Option<i32>>(row, "latest_version")?
            .and_then(|v| u32::try_from(v).ok()),
        serving: VersionServing::from_json(serving.as_ref()),
        hours,
        after_hours,
    })
}

/// Limits are 1..=100 000 (a check constraint): they fit both types.
pub(super) fn limit_to_db(limit: u32) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

pub(super) fn limit_from_db(limit: i32) -> u32 {
    u32::try_from(limit).unwrap_or(0)
}

fn agent_change_from_row(row: &PgRow) -> Result<AgentChange, Error> {
    let operation =
        ChangeOperation::from_db(&get::<String>(row, "operation")?).ok_or_else(|| {
            tracing::error!("agent_history holds an unknown operation");
            Error::Internal
        })?;
    Ok(AgentChange {
        seq: Seq(get(row, "id")?),
        agent_id: AgentId::from_uuid(get(row, "agent_id")?),
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        changed_at: get(row, "changed_at")?,
        changed_by: get(row, "changed_by")?,
        actor_role: get(row, "actor_role")?,
        actor_sql_role: get(row, "actor_sql_role")?,
        operation,
        fields: field_changes(operation, get(row, "changes")?),
    })
}

fn customer_from_row(row: &PgRow) -> Result<Customer, Error> {
    Ok(Customer {
        id: CustomerId::from_uuid(get(row, "id")?),
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        phone: phone_from_db(&get::<String>(row, "phone")?)?,
        name: get(row, "name")?,
        email: get(row, "email")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
        attributes: attributes_from_db(get(row, "attributes")?),
    })
}

/// The check constraint keeps it a flat object of strings.
fn attributes_from_db(
    value: Option<serde_json::Value>,
) -> std::collections::BTreeMap<String, String> {
    match value {
        Some(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => Default::default(),
    }
}

fn resolution_from_row(row: &PgRow) -> Result<Resolution, Error> {
    let agent = agent_from_columns(
        row,
        [
            "agent_id",
            "agent_name",
            "agent_created_at",
            "agent_updated_at",
            "agent_max_concurrent_calls",
        ],
    )?;
    let organization = Organization {
        id: agent.org_id,
        name: get(row, "org_name")?,
        slug: get(row, "org_slug")?,
        plan_tier: PlanTier::from_db(&get::<String>(row, "org_plan_tier")?),
        created_at: timestamp(row, "org_created_at")?,
        max_concurrent_calls: limit_from_db(get(row, "org_max_concurrent_calls")?),
    };
    let caller = match get::<Option<Uuid>>(row, "customer_id")? {
        None => None,
        Some(id) => Some(Customer {
            id: CustomerId::from_uuid(id),
            org_id: agent.org_id,
            phone: phone_from_db(&get::<String>(row, "customer_phone")?)?,
            name: get(row, "customer_name")?,
            email: get(row, "customer_email")?,
            created_at: timestamp(row, "customer_created_at")?,
            updated_at: timestamp(row, "customer_updated_at")?,
            attributes: attributes_from_db(get(row, "customer_attributes")?),
        }),
    };
    let extras = super::routing::extras_from_row(row, &agent)?;
    Ok(Resolution {
        agent,
        organization,
        caller,
        extras,
    })
}

/// One customer per (org, phone): the org named (service_role), else the
/// caller's.
fn customer_upsert_sql() -> String {
    format!(
        "insert into public.customers (org_id, phone, name, email, attributes) \
         values (coalesce($1, switchboard_private.auth_org_id()), $2, $3, $4, $5) \
         on conflict (org_id, phone) do update set name = excluded.name, email = excluded.email, \
           attributes = excluded.attributes \
         returning {CUSTOMER_COLUMNS}"
    )
}
