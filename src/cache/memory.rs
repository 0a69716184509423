//! The in-process tier: moka caches, bounded in entries, with a TTL as a
//! backstop (invalidation is what keeps them correct). A hit is a hash lookup
//! and an `Arc` clone: no network, no allocation beyond the response.

use std::{sync::Arc, time::Duration};

use moka::future::Cache;

use crate::{domain::OrgId, pb};

/// What `ResolveAgent` answers for a number, minus the caller: agent and
/// organization, in wire form so a hit costs no conversion.
pub type Route = Arc<pb::ResolveAgentResponse>;

/// Where a route came from on a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
    Db,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
            Tier::Db => "db",
        }
    }
}

#[derive(Clone)]
pub struct MemoryTier {
    /// False when configured with no room for routes: every call then goes
    /// to Redis or Postgres (for measuring those tiers, or to rule the
    /// memory tier out while debugging).
    pub enabled: bool,
    /// Called number (E.164) → route and the tier that filled it.
    pub routes: Cache<Arc<str>, (Route, Tier)>,
    /// (org, caller number) → that org's customer record, or `None` for a
    /// caller the org does not know. Keyed by org: never shared across tenants.
    pub callers: Cache<(OrgId, Arc<str>), Option<Arc<pb::Customer>>>,
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

    pub async fn evict_numbers(&self, numbers: &[String]) {
        for number in numbers {
            self.routes.invalidate(number.as_str()).await;
        }
    }

    pub async fn evict_callers(&self, callers: &[(OrgId, String)]) {
        for (org, phone) in callers {
            self.callers
                .invalidate(&(*org, Arc::<str>::from(phone.as_str())))
                .await;
        }
    }

    /// How many routes the tier holds at most.
    pub fn capacity(&self) -> u64 {
        if !self.enabled {
            return 0;
        }
        self.routes.policy().max_capacity().unwrap_or(u64::MAX)
    }

    pub fn clear(&self) {
        self.routes.invalidate_all();
        self.callers.invalidate_all();
    }
}
