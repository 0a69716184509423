//! The shared tier: routes as protobuf bytes under versioned keys
//! (`switchboard:v3:[<namespace>:]<database identity>:route:<E.164>`), with
//! a TTL as a backstop only.
//!
//! Keys and the pub/sub channel belong to one database: its identity (a
//! random id made at migration, `store::DatabaseIdentity`) is part of
//! them, so a database dropped and made again with the same numbers, or
//! another deployment on the same Redis, never reads our routes. The
//! namespace is only for humans. Until the identity is known (read at
//! start-up by `identity::spawn_identity_watcher`, then every second)
//! every call is a miss; when it changes (`switchboard
//! retire-database-identity` after a restore) the keys move with it and
//! the old ones are never read again.
//!
//! Every call has a tight timeout and goes through a circuit breaker, and a
//! failure is a miss, never an error: Redis down costs the call path nothing
//! but the trip to Postgres. The connection is made in the background and
//! reconnects by itself (one node, a cluster or Sentinel's master: see
//! `redis_link`); start-up waits at most 2 s for it, then serves anyway.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use tracing::{field::Empty, Instrument};

use super::{
    breaker::Breaker,
    memory::PackedRoute,
    redis_link::{Link, LinkTimeouts, NewMaster, RedisTarget},
};
use crate::{api::route_wire, observability::metrics::Metrics, store::DatabaseIdentity};

/// Every key and channel starts with this; bump the version when the value
/// format changes, so old and new replicas never read each other's bytes.
/// v2: routes carry the concurrent-call limits and the agent's fallback
/// (a v1 route would read as limit 0). v3: routes carry the routing rules
/// (versions, hours, caller rules): a v2 route would read as having none.
pub const KEY_VERSION: &str = "switchboard:v3:";

#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    /// Set once the first connection succeeds; until then every call is a miss.
    connection: OnceCell<Link>,
    breaker: Breaker,
    timeout: Duration,
    ttl_secs: u64,
    /// `switchboard:v3:[<namespace>:]`
    base: String,
    /// `<base><database identity>:`, the start of every key and of the
    /// channel; `None` until the identity is known. Loaded once per call,
    /// and a call that sees it change meanwhile is a miss.
    prefix: ArcSwapOption<String>,
    /// Numbers whose eviction failed (timeout, error, breaker open): Redis
    /// may still hold a route older than the database, so reading one is a
    /// miss until a DEL of it succeeds. A `std` mutex: never held across an
    /// `.await`.
    unsettled: Mutex<HashSet<String>>,
    /// Every route is unsettled while `flushed < flush_wanted`: a flush of
    /// all routes was asked for (an invalidation too large to name its
    /// numbers, a new master after a failover) and has not yet succeeded.
    /// Each reason bumps `flush_wanted`; a flush that succeeds raises
    /// `flushed` to the value it started with, so a reason that arrives
    /// during a flush is not lost.
    flush_wanted: AtomicU64,
    flushed: AtomicU64,
    /// One read-triggered flush at a time; other reads just miss.
    flushing: AtomicBool,
    /// Fast path: false while `unsettled` is empty, so a healthy call path
    /// takes no lock.
    any_unsettled: AtomicBool,
    metrics: Metrics,
    /// Background tasks of the link stop once this is dropped.
    alive: Arc<()>,
    /// Told of every new master, after the flush is owed (`Cache` drops
    /// the memory tier: an entry filled from Redis in the moment before
    /// the failover was seen may be stale).
    on_new_master: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl RedisTier {
    /// `namespace` separates deployments (or tests) that share one Redis.
    pub(crate) fn new(
        target: RedisTarget,
        namespace: Option<&str>,
        timeout: Duration,
        ttl: Duration,
        metrics: Metrics,
    ) -> Result<Self, redis::RedisError> {
        target.validate()?;
        let base = match namespace {
            Some(ns) => format!("{KEY_VERSION}{ns}:"),
            None => KEY_VERSION.to_owned(),
        };
        let tier = RedisTier {
            inner: Arc::new(Inner {
                target,
                connection: OnceCell::new(),
                breaker: Breaker::new(3, Duration::from_millis(500)),
                timeout,
                ttl_secs: ttl.as_secs().max(1),
                base,
                prefix: ArcSwapOption::empty(),
                unsettled: Mutex::new(HashSet::new()),
                flush_wanted: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                flushing: AtomicBool::new(false),
                any_unsettled: AtomicBool::new(false),
                metrics,
                alive: Arc::new(()),
                on_new_master: std::sync::OnceLock::new(),
            }),
        };
        let connecting = tier.clone();
        tokio::spawn(async move { connecting.connect_in_background().await });
        Ok(tier)
    }

    /// Where the tier lives (the subscriber connects on its own).
    pub(crate) fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// Scopes every key and the channel to `identity` from now on.
    pub(crate) fn set_database_identity(&self, identity: &DatabaseIdentity) -> Scope {
        let prefix = format!("{}{identity}:", self.inner.base);
        // Only a change replaces the `Arc`: calls compare it by pointer.
        // One writer (the watcher), so load-then-store does not race.
        let scope = match self.inner.prefix.load().as_deref() {
            None => Scope::First,
            Some(current) if *current == prefix => return Scope::Unchanged,
            Some(_) => Scope::Changed,
        };
        self.inner.prefix.store(Some(Arc::new(prefix)));
        scope
    }

    /// The current `switchboard:v3:[<namespace>:]<identity>:`, if known.
    fn prefix(&self) -> Option<Arc<String>> {
        self.inner.prefix.load_full()
    }

    /// Whether `prefix` is still the current one (a call that began under
    /// another identity must not count).
    fn is_current(&self, prefix: &Arc<String>) -> bool {
        self.inner
            .prefix
            .load()
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(now, prefix))
    }

    fn route_key(prefix: &str, number: &str) -> String {
        format!("{prefix}route:{number}")
    }

    /// The pub/sub channel replicas fan invalidations out on: the current
    /// identity's (the subscriber is started once it is known, and again
    /// when it changes). Before that, a channel no one publishes on.
    pub(crate) fn channel(&self) -> String {
        match self.prefix() {
            Some(prefix) => format!("{prefix}invalidate"),
            None => format!("{}no-database-identity:invalidate", self.inner.base),
        }
    }

    async fn connect_in_background(&self) {
        let mut delay = Duration::from_millis(50);
        loop {
            let timeouts = LinkTimeouts {
                connect: Duration::from_secs(1),
                response: self.inner.timeout.max(Duration::from_millis(50)),
            };
            let tier = Arc::downgrade(&self.inner);
            let new_master: NewMaster = Arc::new(move || {
                if let Some(inner) = tier.upgrade() {
                    // Every route is a miss until a flush of the new
                    // master succeeds (see `get_route`).
                    inner.flush_wanted.fetch_add(1, Ordering::AcqRel);
                    if let Some(tell) = inner.on_new_master.get() {
                        tell();
                    }
                    // Start the flush now, not at the next read.
                    RedisTier { inner }.retry_flush();
                }
            });
            let alive = Arc::downgrade(&self.inner.alive);
            match Link::connect(&self.inner.target, timeouts, new_master, alive).await {
                Ok(connection) => {
                    let _ = self.inner.connection.set(connection);
                    tracing::info!(mode = self.inner.target.mode(), "redis tier connected");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "redis tier not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn connection(&self) -> Option<Link> {
        if !self.inner.breaker.allow() {
            return None;
        }
        self.inner.connection.get().cloned()
    }

    /// The current key prefix (`switchboard:v3:[<ns>:]<identity>:`), for
    /// the live-call state that shares this Redis (`live/`, on a connection
    /// of its own). `None` until the database's identity is known.
    pub(crate) fn key_prefix(&self) -> Option<Arc<String>> {
        self.prefix()
    }

    /// Runs `tell` on every new master from now on (set once).
    pub(crate) fn on_new_master(&self, tell: impl Fn() + Send + Sync + 'static) {
        let _ = self.inner.on_new_master.set(Box::new(tell));
    }

    /// Whether calls can reach the tier: the first connection is made and
    /// the database's identity is known (until then every call is a miss).
    pub(crate) fn is_connected(&self) -> bool {
        self.inner.connection.get().is_some() && self.inner.prefix.load().is_some()
    }

    pub(crate) fn is_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Runs one command under the timeout and the breaker; `None` on any
    /// failure.
    async fn run<T>(
        &self,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.inner.timeout, command).await {
            Ok(Ok(value)) => {
                self.inner.breaker.record_success();
                Some(value)
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis call failed");
                self.inner.metrics.redis_errors.failed.inc();
                self.inner.breaker.record_failure();
                None
            }
            Err(_) => {
                tracing::debug!("redis call timed out");
                self.inner.metrics.redis_errors.timeout.inc();
                self.inner.breaker.record_failure();
                None
            }
        }
    }

    /// Whether a flush of every route is owed.
    fn flush_pending(&self) -> bool {
        self.inner.flushed.load(Ordering::Acquire) < self.inner.flush_wanted.load(Ordering::Acquire)
    }

    /// Whether Redis may hold a stale route for `number`.
    fn is_unsettled(&self, number: &str) -> bool {
        if self.flush_pending() {
            return true;
        }
        if !self.inner.any_unsettled.load(Ordering::Acquire) {
            return false;
        }
        self.inner
            .unsettled
            .lock()
            .map(|set| set.contains(number))
            .unwrap_or(true)
    }

    fn settle(&self, numbers: &[String], deleted: bool) {
        let Ok(mut set) = self.inner.unsettled.lock() else {
            return;
        };
        if deleted {
            for number in numbers {
                set.remove(number);
            }
        } else {
            set.extend(numbers.iter().cloned());
        }
        self.inner
            .any_unsettled
            .store(!set.is_empty(), Ordering::Release);
    }

    /// The route cached for `number`, counted as a hit, a miss, or an error
    /// (Redis could not answer) in `switchboard_cache_lookups_total`.
    pub(crate) async fn get_route(&self, number: &str) -> Option<PackedRoute> {
        let span = tracing::debug_span!(
            target: "switchboard::cache",
            "cache.redis",
            otel.kind = "client",
            db.system.name = "redis",
            cache.hit = Empty,
        );
        let lookups = &self.inner.metrics.redis_routes;
        // Read before the check: a failover reported while the GET is in
        // flight (the link may already use the new master) makes it a miss.
        let epoch = self.inner.flush_wanted.load(Ordering::Acquire);
        if self.is_unsettled(number) {
            // Try the eviction again; either way this read is a miss.
            if self.flush_pending() {
                self.retry_flush();
            } else {
                self.delete_routes(&[number.to_owned()]).await;
            }
            lookups.miss.inc();
            return None;
        }
        let lookup = async {
            let (Some(mut connection), Some(prefix)) = (self.connection(), self.prefix()) else {
                lookups.error.inc();
                return None;
            };
            let key = Self::route_key(&prefix, number);
            let Some(bytes) = self.run(connection.get::<_, Option<Vec<u8>>>(&key)).await else {
                lookups.error.inc();
                return None;
            };
            if self.inner.flush_wanted.load(Ordering::Acquire) != epoch || !self.is_current(&prefix)
            {
                lookups.miss.inc();
                return None;
            }
            // Checked whole and encoded again: the memory tier keeps, and
            // answers pass through, only bytes this process wrote.
            let route = bytes.and_then(|bytes| {
                let checked = route_wire::checked_route(&bytes);
                if checked.is_none() {
                    tracing::warn!("undecodable route in redis; ignoring it");
                }
                checked
            });
            match route {
                Some(_) => lookups.hit.inc(),
                None => lookups.miss.inc(),
            }
            route
        };
        let route = lookup.instrument(span.clone()).await;
        span.record("cache.hit", route.is_some());
        route
    }

    pub(crate) async fn put_route(&self, number: &str, route: &PackedRoute) {
        let (Some(mut connection), Some(prefix)) = (self.connection(), self.prefix()) else {
            return;
        };
        let bytes = route.to_vec();
        let ttl = self.inner.ttl_secs;
        let _: Option<()> = self
            .run(connection.set_ex(Self::route_key(&prefix, number), bytes, ttl))
            .await;
    }

    pub(crate) async fn delete_routes(&self, numbers: &[String]) -> bool {
        if numbers.is_empty() {
            return true;
        }
        // With no identity yet, nothing can be deleted: the numbers stay
        // unsettled, and are deleted under the identity once it is known.
        let deleted = match (self.connection(), self.prefix()) {
            (Some(mut connection), Some(prefix)) => {
                let keys: Vec<String> = numbers
                    .iter()
                    .map(|n| Self::route_key(&prefix, n))
                    .collect();
                let deleted: Option<i64> = self.run(connection.del(keys)).await;
                deleted.is_some()
            }
            _ => false,
        };
        self.settle(numbers, deleted);
        deleted
    }

    /// Deletes every route key (after an invalidation was too large to name
    /// its numbers). SCAN, never KEYS, so Redis is not blocked.
    pub(crate) async fn delete_all_routes(&self) {
        let wanted = self.inner.flush_wanted.fetch_add(1, Ordering::AcqRel) + 1;
        self.flush(wanted).await;
    }

    /// A read found a flush owed: start one in the background, unless one
    /// runs. Never in the call: a flush walks every key (thousands of round
    /// trips for a million routes), and a call's deadline would cut it off
    /// partway, again and again.
    fn retry_flush(&self) {
        if self.inner.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let tier = self.clone();
        tokio::spawn(async move {
            let wanted = tier.inner.flush_wanted.load(Ordering::Acquire);
            tier.flush(wanted).await;
            tier.inner.flushing.store(false, Ordering::Release);
        });
    }

    async fn flush(&self, wanted: u64) {
        if self.try_delete_all_routes().await {
            self.inner.flushed.fetch_max(wanted, Ordering::AcqRel);
        }
    }

    async fn try_delete_all_routes(&self) -> bool {
        let (Some(mut connection), Some(prefix)) = (self.connection(), self.prefix()) else {
            return false;
        };
        // A flush counts for the master it started on only: one that a
        // failover overtook (Sentinel) must run again on the new master.
        let master = connection.master_address();
        let Some(targets) = self.run(connection.scan_targets()).await else {
            return false;
        };
        let pattern = format!("{prefix}route:*");
        for target in &targets {
            let mut cursor: u64 = 0;
            loop {
                let step = self.run(connection.scan(target, cursor, &pattern)).await;
                let Some((next, keys)) = step else {
                    return false;
                };
                if !keys.is_empty() {
                    let deleted: Option<i64> = self.run(connection.del(keys)).await;
                    if deleted.is_none() {
                        return false;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // And for the identity it started under only.
        connection.master_address() == master && self.is_current(&prefix)
    }

    pub(crate) async fn publish(&self, payload: &str) {
        let (Some(mut connection), Some(_)) = (self.connection(), self.prefix()) else {
            return;
        };
        let _: Option<i64> = self.run(connection.publish(self.channel(), payload)).await;
    }
}

/// What `RedisTier::set_database_identity` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The identity is known for the first time.
    First,
    Unchanged,
    /// Another identity than before (retired, or another database behind
    /// the same URL): routes read under the old one may be stale.
    Changed,
}
