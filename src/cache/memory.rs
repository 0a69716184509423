//! The in-process tier: moka caches, bounded in entries, with a TTL as a
//! backstop (invalidation is what keeps them correct). A hit is a hash lookup
//! and, for a route, decoding its protobuf bytes: no network.
//!
//! Routes are kept encoded (`PackedRoute`, ~340 bytes for a typical agent)
//! rather than as the decoded message (~1.5 KB: a dozen strings and a
//! `BTreeMap` for `llm_config`), so a million numbers fit in well under a
//! GiB. A hit is not decoded whole: the core reads the fields it decides
//! on and passes the agent and organization through to the answer as
//! these bytes (`api::route_wire`, BENCHMARKS.md "Issue 16").

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use moka::future::Cache;

use crate::{
    api::{pb, route_wire::RouteView},
    domain::OrgId,
};

/// A route as the memory tier keeps it: its protobuf encoding.
pub type PackedRoute = Bytes;

/// Encodes a route for the memory tier (and Redis): the form
/// `api::route_wire` reads.
pub fn pack(route: &pb::ResolveAgentResponse) -> PackedRoute {
    RouteView::pack(route)
}

/// Where a route came from on a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
    Db,
}

impl Tier {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
            Tier::Db => "db",
        }
    }
}

/// A caller record as the memory tier keeps it: `None` for a caller the
/// org does not know (remembered too, so an unknown caller costs one read).
pub type CallerRecord = Option<Arc<pb::Customer>>;

/// Fields are the cache's own: what is kept, and when, is decided in
/// `cache/lookup.rs` (fills) and `cache/mod.rs` (evictions) only.
#[derive(Clone)]
pub struct MemoryTier {
    /// False when configured with no room for routes: every call then goes
    /// to Redis or Postgres (for measuring those tiers, or to rule the
    /// memory tier out while debugging).
    pub(super) enabled: bool,
    /// Called number (E.164) → route (encoded) and the tier that filled it.
    pub(super) routes: Cache<Arc<str>, (PackedRoute, Tier)>,
    /// (org, caller number) → that org's customer record, or `None` for a
    /// caller the org does not know. Keyed by org: never shared across tenants.
    pub(super) callers: Cache<(OrgId, Arc<str>), CallerRecord>,
}

impl MemoryTier {
    pub fn new(max_routes: u64, max_callers: u64, ttl: Duration) -> Self {
        MemoryTier {
            enabled: max_routes > 0,
            routes: Cache::builder()
                .max_capacity(max_routes.max(1))
                .time_to_live(ttl)
                .build(),
            callers: Cache::builder()
                .max_capacity(max_callers)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The route kept for `number`, as kept: no span, no counter, no fill
    /// rule (the micro benchmarks measure the bare tier through this).
    pub async fn route(&self, number: &str) -> Option<(PackedRoute, Tier)> {
        self.routes.get(number).await
    }

    /// Keeps a route as is, outside every fill rule (benchmarks; the
    /// service fills through `Cache::route_or_fill` and `Preload`).
    pub async fn insert_route(&self, number: Arc<str>, packed: PackedRoute, tier: Tier) {
        self.routes.insert(number, (packed, tier)).await;
    }

    pub(super) async fn evict_numbers(&self, numbers: &[String]) {
        for number in numbers {
            self.routes.invalidate(number.as_str()).await;
        }
    }

    pub(super) async fn evict_callers(&self, callers: &[(OrgId, String)]) {
        for (org, phone) in callers {
            self.callers
                .invalidate(&(*org, Arc::<str>::from(phone.as_str())))
                .await;
        }
    }

    /// How many routes the tier holds at most.
    pub(super) fn capacity(&self) -> u64 {
        if !self.enabled {
            return 0;
        }
        self.routes.policy().max_capacity().unwrap_or(u64::MAX)
    }

    pub(super) fn clear(&self) {
        self.routes.invalidate_all();
        self.callers.invalidate_all();
    }
}
