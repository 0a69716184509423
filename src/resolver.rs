//! `ResolveAgent`: the call path. Turns "this number was dialed" into the
//! answer the media server needs, or the reason there is none.
//!
//! Who gets a cached answer: the routes in the cache are facts about a
//! number, fetched by whoever asked first; serving one to a caller must give
//! exactly what RLS would. `service_role` (the media servers) sees every org,
//! so it is served from the cache. A tenant token is resolved by Postgres
//! under its claims every time, because its membership is read from
//! `profiles` on every request (a removed user loses access on the very next
//! call) and no cache of ours can know that sooner than Postgres does.

use std::{sync::Arc, time::Duration};

use tracing::{field::Empty, Instrument};

use crate::{
    auth::Claims,
    cache::{pack, unpack, Breaker, Cache, PackedRoute, Route, Tier},
    domain::{OrgId, PhoneNumber},
    error::Error,
    grpc::convert::{customer_to_pb, resolution_to_pb},
    observability::metrics::Lookups,
    pb,
    store::PgStore,
};

/// A `ResolveAgent` answer and where it came from.
pub struct Resolved {
    pub response: pb::ResolveAgentResponse,
    pub org_id: Option<OrgId>,
    /// Which tier answered for the agent.
    pub tier: Tier,
}

#[derive(Clone)]
pub struct Resolver {
    /// Tenants' lookups: may be a read replica.
    store: PgStore,
    /// Reads whose answer is cached: always the primary, whose NOTIFY drives
    /// invalidation (a lagging replica could refill what was just evicted).
    fill_store: PgStore,
    cache: Cache,
    /// Open while Postgres is unreachable: misses fail at once instead of
    /// each waiting out the pool's acquire timeout.
    database: Arc<Breaker>,
}

/// What the memory tier keeps for a number no agent answers: a flood of
/// calls to unassigned numbers (common on a phone network) is answered from
/// memory instead of each costing a statement. Kept like a route: evicted by
/// the insert or move that assigns the number (its NOTIFY names it), and
/// only while the listener is connected. A real route never encodes to
/// nothing: it always has an agent.
const NO_ROUTE: PackedRoute = PackedRoute::from_static(b"");

fn is_no_route(packed: &PackedRoute) -> bool {
    packed.is_empty()
}

/// Why a memory-tier fill, shared by every call that missed the number
/// meanwhile, put nothing in the tier.
#[derive(Debug)]
enum NotFilled {
    /// The fetch failed: every call that waited on it answers this error.
    Failed(Error),
    /// An eviction happened while it fetched (it began at `generation`), so
    /// its value may predate a write acknowledged before a call joined it.
    /// Calls that began at that generation or before answer it; later ones
    /// fetch on their own.
    Overtaken {
        value: (PackedRoute, Tier),
        generation: u64,
    },
}

/// A fetched route as the memory tier keeps it; "no agent" is `NO_ROUTE`.
fn packed(fetched: Option<(Route, Tier)>) -> (PackedRoute, Tier) {
    match fetched {
        Some((route, tier)) => (pack(&route), tier),
        None => (NO_ROUTE, Tier::Db),
    }
}

fn no_agent() -> Error {
    Error::NotFound("no agent answers this number".into())
}

fn check_active(route: &pb::ResolveAgentResponse) -> Result<(), Error> {
    match route.agent.as_ref().and_then(|a| a.is_active) {
        Some(true) => Ok(()),
        _ => Err(Error::FailedPrecondition(
            "the agent for this number is inactive".into(),
        )),
    }
}

/// A memory-tier lookup, counted and traced. The key (a phone number)
/// stays out of the span.
async fn memory_lookup<K, V>(
    tier: &moka::future::Cache<K, V>,
    key: &K,
    entry: &'static str,
    lookups: &Lookups,
) -> Option<V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let span = tracing::debug_span!(
        target: "switchboard::cache",
        "cache.memory",
        cache.entry = entry,
        cache.hit = Empty,
    );
    let cached = tier.get(key).instrument(span.clone()).await;
    span.record("cache.hit", cached.is_some());
    match cached {
        Some(_) => lookups.hit.inc(),
        None => lookups.miss.inc(),
    }
    cached
}

fn org_of(route: &pb::ResolveAgentResponse) -> Option<OrgId> {
    route
        .organization
        .as_ref()
        .and_then(|o| OrgId::parse(&o.id).ok())
}

impl Resolver {
    pub fn new(store: PgStore, cache: Cache) -> Self {
        Resolver {
            fill_store: store.primary_only(),
            store,
            cache,
            database: Arc::new(Breaker::new(1, Duration::from_millis(1000))),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether cache misses fail at once because Postgres is unreachable.
    pub fn database_breaker_open(&self) -> bool {
        self.database.is_open()
    }

    pub async fn resolve(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Resolved, Error> {
        if !claims.is_service_role() {
            return self.resolve_under_rls(claims, called, caller).await;
        }
        let (route, tier, fetched_caller) = self.route(claims, called, caller).await?;
        check_active(&route)?;
        let org_id = org_of(&route);
        // A route decoded for this call is ours alone: no copy needed.
        let mut response = Arc::try_unwrap(route).unwrap_or_else(|shared| (*shared).clone());
        if let (Some(caller), Some(org_id)) = (caller, org_id) {
            response.caller = match fetched_caller {
                Some(fetched) => fetched.map(|c| (*c).clone()),
                None => self
                    .caller(claims, org_id, caller)
                    .await
                    .map(|c| (*c).clone()),
            };
        }
        Ok(Resolved {
            response,
            org_id,
            tier,
        })
    }

    /// Tenants: one statement under their claims, RLS decides.
    async fn resolve_under_rls(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Resolved, Error> {
        let resolution = self
            .guarded(self.store.resolve_agent(claims, called, caller))
            .await?
            .ok_or_else(no_agent)?;
        let response = resolution_to_pb(&resolution);
        check_active(&response)?;
        Ok(Resolved {
            response,
            org_id: Some(resolution.organization.id),
            tier: Tier::Db,
        })
    }

    /// Fills the memory tier with every route, up to its capacity, in pages
    /// of `page` numbers, so the first call to each number is a memory hit.
    /// Caller records are not preloaded. If anything is invalidated while
    /// it runs, the preload stops and drops what it loaded (a page read
    /// before the change could be stale); calls then fill lazily.
    pub async fn preload(&self, page: i64) -> Result<u64, Error> {
        if !self.cache.memory.enabled || !self.cache.is_listening() {
            return Ok(0);
        }
        let claims = Claims::service();
        let generation = self.cache.generation();
        let capacity = self.cache.memory.capacity();
        let mut loaded: u64 = 0;
        let mut after: Option<String> = None;
        while loaded < capacity {
            let batch = self
                .fill_store
                .routes_after(&claims, after.as_deref(), page)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.agent.phone_number.as_str().to_owned());
            for resolution in &batch {
                let packed = pack(&resolution_to_pb(resolution));
                let key: Arc<str> = resolution.agent.phone_number.as_str().into();
                self.cache
                    .memory
                    .routes
                    .insert(key, (packed, Tier::Db))
                    .await;
            }
            loaded += batch.len() as u64;
            if !self.cache.may_keep(generation) {
                self.cache.drop_memory();
                return Err(Error::Unavailable(
                    "the cache preload saw a change and stopped; calls fill the cache lazily"
                        .into(),
                ));
            }
        }
        Ok(loaded.min(capacity))
    }

    /// Runs a database call behind the breaker.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if !self.database.allow() {
            return Err(Error::Unavailable("the database is unavailable".into()));
        }
        let result = call.await;
        match &result {
            Err(Error::Unavailable(_)) => self.database.record_failure(),
            // Shed (busy): says nothing about whether the database is up.
            Err(Error::ResourceExhausted(_) | Error::DeadlineExceeded(_)) => {}
            _ => self.database.record_success(),
        }
        result
    }

    /// The route for a number: memory, else Redis, else Postgres. Concurrent
    /// misses for one number share one fetch, unless an eviction overtook it
    /// and the call began after that (`NotFilled::Overtaken`). On a Postgres
    /// fill the caller record comes back from the same statement.
    #[allow(clippy::type_complexity)]
    async fn route(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<(Route, Tier, Option<Option<Arc<pb::Customer>>>), Error> {
        let key: Arc<str> = called.as_str().into();
        let cached = memory_lookup(
            &self.cache.memory.routes,
            &key,
            "route",
            &self.cache.metrics.memory_routes,
        )
        .await;
        if let Some((packed, _)) = cached {
            if is_no_route(&packed) {
                return Err(no_agent());
            }
            let route = unpack(&packed).ok_or(Error::Internal)?;
            return Ok((Arc::new(route), Tier::Memory, None));
        }
        let generation = self.cache.generation();
        let mut fetched_caller = None;
        if !self.cache.memory.enabled {
            let (route, tier) = self
                .fetch_route(claims, called, caller, generation, &mut fetched_caller)
                .await?
                .ok_or_else(no_agent)?;
            return Ok((route, tier, fetched_caller));
        }
        let fetch = self.fetch_route(claims, called, caller, generation, &mut fetched_caller);
        let fill = async {
            let value = packed(fetch.await.map_err(NotFilled::Failed)?);
            // Calls that joined this fetch may have begun after an
            // eviction it predates: the tier (and so every joined call)
            // gets only a value no eviction overtook; whether it may stay
            // is checked below, as for any fill.
            if self.cache.generation() == generation {
                Ok(value)
            } else {
                Err(NotFilled::Overtaken { value, generation })
            }
        };
        let filled = self
            .cache
            .memory
            .routes
            .entry(key.clone())
            .or_try_insert_with(fill)
            .await;
        let (packed, filled_from) = match filled {
            Ok(entry) => {
                let value = entry.into_value();
                if !self.cache.may_keep(generation) {
                    // Evicted between the check and the insert, or nothing
                    // would evict it: answer this call, keep nothing (a
                    // route or "no agent" alike).
                    self.cache.memory.routes.invalidate(&key).await;
                }
                value
            }
            Err(not_filled) => match &*not_filled {
                NotFilled::Failed(error) => return Err(error.clone()),
                // Fetched at or after the generation this call began at
                // (its own fetch, or one it joined before the eviction):
                // every write acknowledged before the call began is in it.
                // Kept nowhere.
                NotFilled::Overtaken {
                    value,
                    generation: fetched_at,
                } if *fetched_at >= generation => value.clone(),
                // Joined after an eviction the fetch predates: a fetch of
                // its own.
                NotFilled::Overtaken { .. } => packed(
                    self.fetch_route(claims, called, caller, generation, &mut fetched_caller)
                        .await?,
                ),
            },
        };
        if is_no_route(&packed) {
            return Err(no_agent());
        }
        let route: Route = Arc::new(unpack(&packed).ok_or(Error::Internal)?);
        let tier = if fetched_caller.is_some() || filled_from == Tier::Redis {
            filled_from
        } else {
            Tier::Memory
        };
        if let (Some(caller), Some(org_id), Some(fetched)) =
            (caller, org_of(&route), fetched_caller.as_ref())
        {
            if self.cache.may_keep(generation) {
                self.cache
                    .memory
                    .callers
                    .insert((org_id, caller.as_str().into()), fetched.clone())
                    .await;
            }
        }
        Ok((route, tier, fetched_caller))
    }

    /// A miss of the memory tier: Redis, else Postgres (then Redis is
    /// filled in the background). `fetched_caller` receives the caller
    /// record when Postgres answered, since the same statement fetched it.
    /// `None`: no agent answers the number (kept in memory, not in Redis).
    async fn fetch_route(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
        generation: u64,
        fetched_caller: &mut Option<Option<Arc<pb::Customer>>>,
    ) -> Result<Option<(Route, Tier)>, Error> {
        if let Some(redis) = &self.cache.redis {
            if let Some(route) = redis.get_route(called.as_str()).await {
                return Ok(Some((route, Tier::Redis)));
            }
        }
        let Some(resolution) = self
            .guarded(self.fill_store.resolve_agent(claims, called, caller))
            .await?
        else {
            return Ok(None);
        };
        let mut response = resolution_to_pb(&resolution);
        *fetched_caller = Some(response.caller.take().map(Arc::new));
        let route: Route = Arc::new(response);
        if let Some(redis) = self.cache.redis.clone() {
            let cache = self.cache.clone();
            let number = called.as_str().to_owned();
            let route = route.clone();
            tokio::spawn(async move {
                // A change seen since the fetch began: do not publish a
                // value that may predate it.
                if cache.may_keep(generation) {
                    redis.put_route(&number, &route).await;
                    // A write evicted between the check and the SET landing
                    // would leave this older route in Redis: take it back.
                    if !cache.may_keep(generation) {
                        redis.delete_routes(std::slice::from_ref(&number)).await;
                    }
                }
            });
        }
        Ok(Some((route, Tier::Db)))
    }

    /// The caller's record in the agent's org. If the database cannot say,
    /// the call goes on without it: a missing CRM record must not drop a call.
    async fn caller(
        &self,
        claims: &Claims,
        org_id: OrgId,
        caller: &PhoneNumber,
    ) -> Option<Arc<pb::Customer>> {
        let key = (org_id, Arc::<str>::from(caller.as_str()));
        if !self.cache.memory.enabled {
            return self
                .fetch_caller(claims, org_id, caller)
                .await
                .ok()
                .flatten();
        }
        let cached = memory_lookup(
            &self.cache.memory.callers,
            &key,
            "caller",
            &self.cache.metrics.memory_callers,
        )
        .await;
        if let Some(known) = cached {
            return known;
        }
        let generation = self.cache.generation();
        // A failed lookup answers "no record" for this call only.
        let found = self.fetch_caller(claims, org_id, caller).await.ok()?;
        if self.cache.may_keep(generation) {
            self.cache.memory.callers.insert(key, found.clone()).await;
        }
        found
    }

    async fn fetch_caller(
        &self,
        claims: &Claims,
        org_id: OrgId,
        caller: &PhoneNumber,
    ) -> Result<Option<Arc<pb::Customer>>, Error> {
        match self
            .guarded(
                self.fill_store
                    .lookup_customer(claims, caller, Some(org_id)),
            )
            .await
        {
            Ok(customer) => Ok(Some(Arc::new(customer_to_pb(&customer)))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(error) => {
                tracing::warn!(%error, "caller lookup failed; answering without the caller record");
                Err(error)
            }
        }
    }
}
