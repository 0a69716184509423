//! The fill rules: how `ResolveAgent`'s lookups go through the tiers and
//! what a fetch may leave behind. The only code that puts anything in the
//! memory tier or (a route fetched from Postgres) in Redis; the core hands
//! in how to fetch from Postgres, nothing else.
//!
//! Rules (see ARCHITECTURE.md, Cache):
//! * A memory-tier fill is kept only if no eviction happened during the
//!   fetch and the listener is connected and has heard its last probe
//!   (`Cache::may_keep`).
//! * Concurrent misses of one number share one fetch (moka's
//!   `or_try_insert_with`). A call that joined it takes the value only if no
//!   eviction overtook the fetch or the call began at or before the fetch's
//!   generation; else it fetches on its own. So no call answers a route
//!   older than a write acknowledged before it began.
//! * "No agent answers this number" is kept like a route (`NO_ROUTE`), in
//!   memory only.
//! * A Redis fill re-checks the generation after its SET and deletes the
//!   route if an eviction began meanwhile.

use std::{borrow::Borrow, future::Future, hash::Hash, sync::Arc};

use tracing::{field::Empty, Instrument};

use super::{
    memory::{pack, CallerRecord, PackedRoute, Tier},
    Cache,
};
use crate::{
    api::{pb, route_wire::org_of_packed},
    domain::OrgId,
    error::Error,
    observability::metrics::Lookups,
};

/// A route and where it came from.
pub struct FoundRoute {
    /// Agent, organization and route data, encoded as the memory tier
    /// keeps them (`api::route_wire` reads them); no caller.
    pub(crate) route: PackedRoute,
    pub(crate) tier: Tier,
    /// The caller's record, when this call's own fetch from Postgres
    /// brought it along (the statement reads both); `None` when the route
    /// came from memory or Redis or from a fetch another call ran, so the
    /// caller is still to be looked up (`Cache::caller_or_fill`).
    pub(crate) caller: Option<CallerRecord>,
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

/// A fetched route in the memory tier's form ("no agent" is `NO_ROUTE`),
/// and the caller record the fetch brought along.
fn packed(fetched: Option<FoundRoute>) -> ((PackedRoute, Tier), Option<CallerRecord>) {
    match fetched {
        Some(found) => ((found.route, found.tier), found.caller),
        None => ((NO_ROUTE, Tier::Db), None),
    }
}

/// A memory-tier lookup, counted and traced. The key (a phone number)
/// stays out of the span.
async fn memory_lookup<K, V, Q>(
    tier: &moka::future::Cache<K, V>,
    key: &Q,
    entry: &'static str,
    lookups: &Lookups,
) -> Option<V>
where
    K: Borrow<Q> + Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    Q: Hash + Eq + ?Sized,
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

impl Cache {
    /// The route for `called`: memory, else Redis, else `fetch` (Postgres,
    /// the whole answer with the caller's record for `caller`), under the
    /// fill rules above. `None`: no agent answers the number.
    ///
    /// `fetch` runs at most twice: a second time only for a call that
    /// joined a fetch an eviction overtook after the call began.
    pub(crate) async fn route_or_fill<F, Fut>(
        &self,
        called: &str,
        caller: Option<&str>,
        fetch: F,
    ) -> Result<Option<FoundRoute>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<pb::ResolveAgentResponse>, Error>>,
    {
        let cached = memory_lookup(
            &self.memory.routes,
            called,
            "route",
            &self.metrics.memory_routes,
        )
        .await;
        if let Some((packed, _)) = cached {
            if is_no_route(&packed) {
                return Ok(None);
            }
            return Ok(Some(FoundRoute {
                route: packed,
                tier: Tier::Memory,
                caller: None,
            }));
        }
        // A miss is boxed: the hit path's future stays small (tonic boxes
        // it, and every layer moves it), whatever a fill needs.
        Box::pin(self.route_miss(called, caller, fetch)).await
    }

    /// `route_or_fill` after a memory miss.
    async fn route_miss<F, Fut>(
        &self,
        called: &str,
        caller: Option<&str>,
        mut fetch: F,
    ) -> Result<Option<FoundRoute>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<pb::ResolveAgentResponse>, Error>>,
    {
        let generation = self.generation();
        if !self.memory.enabled {
            return self.fetch_route(called, generation, &mut fetch).await;
        }
        let key: Arc<str> = called.into();
        // The caller record of this call's own fetch, never of one it
        // joined: that one may be for another caller number.
        let mut own_caller = None;
        // Held from the generation check until moka has inserted the
        // value: no eviction lands in between (see `Cache::evicting`).
        let mut filling = None;
        let fill = async {
            let fetched = self
                .fetch_route(called, generation, &mut fetch)
                .await
                .map_err(NotFilled::Failed)?;
            let (value, caller) = packed(fetched);
            own_caller = caller;
            // Calls that joined this fetch may have begun after an
            // eviction it predates: the tier (and so every joined call)
            // gets only a value no eviction overtook; whether it may stay
            // is checked below, as for any fill.
            filling = Some(self.evicting.read().await);
            if self.generation() == generation {
                // Where an eviction would land but for `evicting`, here and
                // after the insert: widened for the tests.
                #[cfg(test)]
                tokio::task::yield_now().await;
                Ok(value)
            } else {
                Err(NotFilled::Overtaken { value, generation })
            }
        };
        let filled = self
            .memory
            .routes
            .entry(key.clone())
            .or_try_insert_with(fill)
            .await;
        #[cfg(test)]
        tokio::task::yield_now().await;
        drop(filling);
        let (packed_route, filled_from) = match filled {
            Ok(entry) => {
                let value = entry.into_value();
                if !self.may_keep(generation) {
                    // Flushed whole since the check (`drop_memory` does not
                    // wait for fills), or nothing would evict it: answer
                    // this call, keep nothing (a route or "no agent" alike).
                    self.memory.routes.invalidate(&key).await;
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
                NotFilled::Overtaken { .. } => {
                    let (value, caller) =
                        packed(self.fetch_route(called, generation, &mut fetch).await?);
                    own_caller = caller;
                    value
                }
            },
        };
        if is_no_route(&packed_route) {
            return Ok(None);
        }
        let tier = if own_caller.is_some() || filled_from == Tier::Redis {
            filled_from
        } else {
            Tier::Memory
        };
        if let (Some(caller), Some(org_id), Some(record)) =
            (caller, org_of_packed(&packed_route), own_caller.as_ref())
        {
            self.keep_caller((org_id, caller.into()), record, generation)
                .await;
        }
        Ok(Some(FoundRoute {
            route: packed_route,
            tier,
            caller: own_caller,
        }))
    }

    /// A miss of the memory tier: Redis, else `fetch` (then Redis is filled
    /// in the background, unless an eviction began since `generation`).
    /// `None`: no agent answers the number (kept in memory, never in Redis).
    async fn fetch_route<F, Fut>(
        &self,
        called: &str,
        generation: u64,
        fetch: &mut F,
    ) -> Result<Option<FoundRoute>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<pb::ResolveAgentResponse>, Error>>,
    {
        if let Some(redis) = &self.redis {
            if let Some(route) = redis.get_route(called).await {
                return Ok(Some(FoundRoute {
                    route,
                    tier: Tier::Redis,
                    caller: None,
                }));
            }
        }
        let Some(mut response) = fetch().await? else {
            return Ok(None);
        };
        let caller = response.caller.take().map(|c| Arc::new(*c));
        let route = pack(&response);
        if let Some(redis) = self.redis.clone() {
            let cache = self.clone();
            let number = called.to_owned();
            let route = route.clone();
            tokio::spawn(async move {
                // A change seen since the fetch began: do not publish a
                // value that may predate it.
                if cache.may_keep(generation) {
                    redis.put_route(&number, &route).await;
                    // A write evicted between the check and the SET landing
                    // would leave this older route in Redis: take it back,
                    // and out of this replica's memory, where a miss may
                    // have read it meanwhile.
                    if !cache.may_keep(generation) {
                        redis.delete_routes(std::slice::from_ref(&number)).await;
                        cache.take_back(&number).await;
                    }
                }
            });
        }
        Ok(Some(FoundRoute {
            route,
            tier: Tier::Db,
            caller: Some(caller),
        }))
    }

    /// The record of the caller `number` in `org_id`: memory, else `fetch`.
    /// A failed fetch answers "no record" for this call only and keeps
    /// nothing: a missing CRM record must not drop a call.
    pub(crate) async fn caller_or_fill<F, Fut>(
        &self,
        org_id: OrgId,
        number: &str,
        fetch: F,
    ) -> CallerRecord
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CallerRecord, Error>>,
    {
        let key = (org_id, Arc::<str>::from(number));
        if !self.memory.enabled {
            return fetch().await.ok().flatten();
        }
        let cached = memory_lookup(
            &self.memory.callers,
            &key,
            "caller",
            &self.metrics.memory_callers,
        )
        .await;
        if let Some(known) = cached {
            return known;
        }
        // Boxed, as a route's miss: the hit's future stays small.
        Box::pin(async move {
            let generation = self.generation();
            let found = fetch().await.ok()?;
            self.keep_caller(key, &found, generation).await;
            found
        })
        .await
    }

    /// Keeps a caller record fetched since `generation`, unless an eviction
    /// began meanwhile. The check and the insert hold `evicting`: an
    /// eviction landing between them would find nothing to evict and leave
    /// the older record to calls that began after its write.
    async fn keep_caller(&self, key: (OrgId, Arc<str>), record: &CallerRecord, generation: u64) {
        let _filling = self.evicting.read().await;
        if !self.may_keep(generation) {
            return;
        }
        // Where an eviction would land but for `evicting`, here and after
        // the insert: widened for the tests.
        #[cfg(test)]
        tokio::task::yield_now().await;
        self.memory
            .callers
            .insert(key.clone(), record.clone())
            .await;
        #[cfg(test)]
        tokio::task::yield_now().await;
        // A flush of the whole tier (`drop_memory`) does not wait for
        // fills: look again.
        if !self.may_keep(generation) {
            self.memory.callers.invalidate(&key).await;
        }
    }

    /// Starts filling the memory tier ahead of calls; `None` when it would
    /// keep nothing (no room for routes, or no listener to evict them).
    pub(crate) fn preload(&self) -> Option<Preload<'_>> {
        if !self.memory.enabled || !self.is_listening() {
            return None;
        }
        Some(Preload {
            cache: self,
            generation: self.generation(),
        })
    }
}

/// A preload under way: pages of routes kept as long as nothing is evicted.
pub struct Preload<'a> {
    cache: &'a Cache,
    generation: u64,
}

impl Preload<'_> {
    /// How many routes the memory tier holds at most.
    pub(crate) fn capacity(&self) -> u64 {
        self.cache.memory.capacity()
    }

    /// Keeps a page of routes (number, route without caller). `false`:
    /// something was evicted since the preload began, so a page may predate
    /// it; the memory tier is dropped (everything this preload kept with
    /// it) and the preload must stop.
    pub(crate) async fn keep(&self, routes: &[(&str, pb::ResolveAgentResponse)]) -> bool {
        // Checked before each slice is inserted, under `evicting`: a write
        // that evicted a number before the page reached the tier would
        // otherwise find nothing to evict. In slices, so a write waits for
        // one slice, not a page.
        for slice in routes.chunks(256) {
            let packed: Vec<_> = slice.iter().map(|(n, r)| (*n, pack(r))).collect();
            let filling = self.cache.evicting.read().await;
            if !self.cache.may_keep(self.generation) {
                drop(filling);
                self.cache.drop_memory();
                return false;
            }
            for (number, route) in packed {
                self.cache
                    .memory
                    .insert_route(number.into(), route, Tier::Db)
                    .await;
            }
        }
        // A flush of the whole tier does not wait for fills: look again.
        if self.cache.may_keep(self.generation) {
            return true;
        }
        self.cache.drop_memory();
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use prost::Message;

    use super::*;
    use crate::{
        cache::{invalidation::CallerKey, Invalidation, MemoryTier},
        observability::metrics::Metrics,
    };

    const NUMBER: &str = "+14155550123";

    /// A writer bumps a "database" and then evicts, as `Data::write` does;
    /// six readers fill from it through `read`, whose answer is the value
    /// it got (`None`: none, or not one of ours). Returns how many answers
    /// were older than what was acknowledged when their call began, or
    /// unreadable.
    async fn stale_answers<R, RF>(evicts: Invalidation, read: R) -> u64
    where
        R: Fn(Cache, Arc<AtomicU64>) -> RF + Clone + Send + 'static,
        RF: Future<Output = Option<u64>> + Send,
    {
        let cache = Cache::new(
            MemoryTier::new(100, 100, std::time::Duration::from_secs(60)),
            None,
            Metrics::new(),
        );
        cache.listener_hearing();
        let database = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let writer = {
            let (cache, database, acked) = (cache.clone(), database.clone(), acked.clone());
            tokio::spawn(async move {
                for seq in 1..=10_000u64 {
                    database.store(seq, Ordering::Release);
                    cache.invalidate(&evicts).await;
                    acked.store(seq, Ordering::Release);
                    tokio::task::yield_now().await;
                }
            })
        };
        let readers: Vec<_> = (0..6)
            .map(|_| {
                let (cache, database, acked, read) =
                    (cache.clone(), database.clone(), acked.clone(), read.clone());
                tokio::spawn(async move {
                    let mut stale = 0;
                    for _ in 0..12_000 {
                        let began = acked.load(Ordering::Acquire);
                        let got = read(cache.clone(), database.clone()).await;
                        if got.is_none_or(|seq| seq < began) {
                            stale += 1;
                        }
                    }
                    stale
                })
            })
            .collect();
        let mut stale = 0;
        for reader in readers {
            stale += reader.await.unwrap_or(u64::MAX / 8);
        }
        writer.await.unwrap_or_else(|e| panic!("{e}"));
        stale
    }

    /// The soak's finding, made a rule: a caller record read before a write
    /// must not outlive the write's eviction, however the fill and the
    /// eviction interleave. Checking `may_keep` only before the insert
    /// failed this.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_caller_record_read_before_a_write_never_outlives_its_eviction() {
        let org = OrgId::from_uuid(uuid::Uuid::nil());
        let evicts = Invalidation::Callers {
            callers: vec![CallerKey {
                org_id: org,
                phone: NUMBER.into(),
            }],
        };
        let stale = stale_answers(evicts, move |cache, database| async move {
            let found = cache
                .caller_or_fill(org, NUMBER, || async move {
                    let seq = database.load(Ordering::Acquire);
                    // The statement's round trip: the write may commit
                    // and evict meanwhile.
                    tokio::task::yield_now().await;
                    Ok(Some(Arc::new(pb::Customer {
                        name: format!("n{seq}"),
                        ..Default::default()
                    })))
                })
                .await;
            found?.name.strip_prefix('n')?.parse().ok()
        })
        .await;
        assert_eq!(stale, 0, "stale caller records served");
    }

    /// The same for a route, filled through `route_or_fill`'s single
    /// flight (moka inserts it after the fill's own check).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_route_read_before_a_write_never_outlives_its_eviction() {
        let evicts = Invalidation::numbers([NUMBER]);
        let stale = stale_answers(evicts, |cache, database| async move {
            let found = cache
                .route_or_fill(NUMBER, None, || {
                    let database = database.clone();
                    async move {
                        let seq = database.load(Ordering::Acquire);
                        tokio::task::yield_now().await;
                        Ok(Some(pb::ResolveAgentResponse {
                            agent: Some(Box::new(pb::Agent {
                                name: format!("n{seq}"),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }))
                    }
                })
                .await;
            let route = pb::ResolveAgentResponse::decode(found.ok()??.route).ok()?;
            route.agent?.name.strip_prefix('n')?.parse().ok()
        })
        .await;
        assert_eq!(stale, 0, "stale routes served");
    }
}
