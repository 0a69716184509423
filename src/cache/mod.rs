//! The hot path's memory: an in-process tier in front of a shared Redis
//! tier, both holding `ResolveAgent` routes (agent + organization by called
//! number), kept correct by invalidation rather than by short TTLs.
//!
//! Invariants:
//! * Only routes and callers are cached, keyed by called number and by
//!   (org, caller number). Who may *see* an entry is decided by the core
//!   (`app::ResolveService`), never by the cache: cached answers are served
//!   to `service_role` only.
//! * The fill rules live in `lookup.rs`, behind `route_or_fill`,
//!   `caller_or_fill` and `preload`; evictions here. `Cache`'s fields are
//!   private: no one outside this module puts anything in a tier.
//! * Every eviction bumps `generation` (but a Redis fill's take-back of
//!   its own number, `take_back`); a fill that started before an eviction
//!   does not stay in the memory tier. An eviction and a fill's
//!   last check with its insert exclude each other (`evicting`): an
//!   eviction that lands between the two would find nothing to evict,
//!   and the older value would be served until the fill saw the bump.
//! * A Redis failure is a miss, never an error.

mod breaker;
pub mod identity;
pub mod invalidation;
mod lookup;
mod memory;
mod redis;
pub mod redis_link;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use tracing::Instrument;

use crate::observability::metrics::{Invalidations, Metrics};

pub use self::{
    breaker::Breaker,
    invalidation::Invalidation,
    lookup::{FoundRoute, Preload},
    memory::{pack, CallerRecord, MemoryTier, PackedRoute, Tier},
    redis::{RedisTier, Scope, KEY_VERSION},
    redis_link::RedisTarget,
};

#[derive(Clone)]
pub struct Cache {
    memory: MemoryTier,
    redis: Option<RedisTier>,
    /// Lookups per tier and invalidations received are counted here.
    metrics: Metrics,
    generation: Arc<AtomicU64>,
    /// Held exclusively by an eviction (bump and evict), shared by a fill
    /// from its generation check through its insert. Hits never take it.
    evicting: Arc<tokio::sync::RwLock<()>>,
    /// True while the Postgres listener is connected and has heard its own
    /// probe. Only then may a fill stay in the memory tier: without the
    /// listener nothing would evict it.
    listening: Arc<AtomicBool>,
    /// True while the listener is connected but its own probe notification
    /// does not arrive (LISTEN through a transaction pooler): `/metrics`.
    deaf: Arc<AtomicBool>,
}

impl Cache {
    pub fn new(memory: MemoryTier, redis: Option<RedisTier>, metrics: Metrics) -> Self {
        let cache = Cache {
            memory,
            redis,
            metrics,
            generation: Arc::new(AtomicU64::new(0)),
            evicting: Arc::new(tokio::sync::RwLock::new(())),
            listening: Arc::new(AtomicBool::new(false)),
            deaf: Arc::new(AtomicBool::new(false)),
        };
        if let Some(redis) = &cache.redis {
            // A Redis failover may have lost evictions: what this replica
            // filled from Redis just before it was seen may be stale.
            let generation = Arc::downgrade(&cache.generation);
            let memory = cache.memory.clone();
            redis.on_new_master(move || {
                if let Some(generation) = generation.upgrade() {
                    generation.fetch_add(1, Ordering::AcqRel);
                    memory.clear();
                }
            });
        }
        cache
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Whether the Redis tier, if there is one, can be reached (start-up
    /// waits a little for it).
    /// The shared Redis, for state that lives beside the cache (`live/`).
    pub(crate) fn redis_tier(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }

    pub fn redis_ready(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.is_connected())
    }

    /// Whether the Redis tier's breaker is open; `None` without a Redis tier.
    pub fn redis_breaker_open(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_open())
    }

    /// Where the listener and the subscriber count what they receive.
    fn invalidations(&self) -> &Invalidations {
        &self.metrics.invalidations
    }

    /// Whether a fill that began at `generation` may be kept.
    fn may_keep(&self, generation: u64) -> bool {
        self.is_listening() && self.generation() == generation
    }

    /// The listener is connected, caught up with the outbox, and heard its
    /// own probe: fills may be kept. (What was cached before stays: the
    /// catch-up evicted whatever changed meanwhile.)
    fn listener_hearing(&self) {
        self.deaf.store(false, Ordering::Release);
        self.listening.store(true, Ordering::Release);
    }

    /// The listener is connected but its own notification did not arrive:
    /// invalidations may be missed for as long as it lasts, so nothing
    /// cached is kept, old or new.
    fn listener_deaf(&self) {
        self.listening.store(false, Ordering::Release);
        self.deaf.store(true, Ordering::Release);
        self.drop_memory();
    }

    pub fn is_listener_deaf(&self) -> bool {
        self.deaf.load(Ordering::Acquire)
    }

    /// The listener lost its connection: keep serving what is cached (a
    /// call must not fail because the database blinked), keep nothing new.
    fn listener_disconnected(&self) {
        self.listening.store(false, Ordering::Release);
        self.deaf.store(false, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Evicts from this replica's memory tier only, with a bump: a step of
    /// `invalidate` and `apply_rows`, and a fan-out message from another
    /// replica (Redis was already dealt with).
    async fn evict_local(&self, invalidation: &Invalidation) {
        let _evicting = self.evicting.write().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        match invalidation {
            Invalidation::Numbers { numbers } => self.memory.evict_numbers(numbers).await,
            Invalidation::Callers { callers } => {
                let keys: Vec<_> = callers
                    .iter()
                    .map(|c| (c.org_id, c.phone.clone()))
                    .collect();
                self.memory.evict_callers(&keys).await
            }
            Invalidation::All => self.memory.clear(),
        }
    }

    /// Evicts everywhere: this replica's memory, Redis, this replica's
    /// memory again, then every other replica's memory (Redis pub/sub).
    ///
    /// Memory before Redis: the bump must come before the DEL, so a
    /// background Redis fill whose SET lands after the DEL sees it and
    /// takes its route back. Memory again after Redis: a miss the first
    /// eviction caused may have read the old route from Redis before the
    /// DEL and kept it under the new generation.
    pub async fn invalidate(&self, invalidation: &Invalidation) {
        self.evict_local(invalidation).await;
        self.evict_shared(invalidation).await;
    }

    /// The rest of `invalidate`, for a caller that evicted this replica's
    /// memory first: Redis, this replica's memory again, the other
    /// replicas.
    async fn evict_shared(&self, invalidation: &Invalidation) {
        if self.evict_redis(invalidation).await {
            self.evict_local(invalidation).await;
        }
        self.publish(invalidation).await;
    }

    /// `invalidate` for a write that committed, in a task of its own: the
    /// call that made the write may be cancelled now (its client gone, its
    /// deadline passed), and must not leave the old value cached. Should
    /// the task fail, this replica's memory tier is dropped.
    pub async fn invalidate_after_write(&self, invalidation: Invalidation) {
        let cache = self.clone();
        let evicted = tokio::spawn(
            async move { cache.invalidate(&invalidation).await }
                .instrument(tracing::Span::current()),
        );
        if let Err(error) = evicted.await {
            tracing::error!(%error, "eviction after a write failed; dropping the memory tier");
            self.drop_memory();
        }
    }

    /// Deletes the routes an invalidation names from Redis; whether it
    /// names any (callers are never in Redis).
    async fn evict_redis(&self, invalidation: &Invalidation) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        match invalidation {
            Invalidation::Numbers { numbers } => {
                redis.delete_routes(numbers).await;
            }
            Invalidation::Callers { .. } => return false,
            Invalidation::All => redis.delete_all_routes().await,
        }
        true
    }

    /// Evicts `number` from this replica's memory without a generation
    /// bump: a Redis fill taking back a route an eviction overtook (a bump
    /// would overtake every fill under way, and theirs every other).
    async fn take_back(&self, number: &str) {
        let _evicting = self.evicting.write().await;
        self.memory.evict_numbers(&[number.to_owned()]).await;
    }

    /// Tells every other replica to evict from its memory (pub/sub).
    async fn publish(&self, invalidation: &Invalidation) {
        let Some(redis) = &self.redis else { return };
        if let Ok(payload) = serde_json::to_string(invalidation) {
            redis.publish(&payload).await;
        }
    }

    /// After a reconnect notifications may have been missed: drop this
    /// replica's memory tier (Redis keeps its entries; they are evicted by
    /// whichever replica's listener saw the change, and expire by TTL).
    fn drop_memory(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.memory.clear();
    }
}
