//! "Write, then evict": the one way the use cases reach the store and the
//! cache together.

use std::future::Future;

use crate::{
    cache::{invalidation::CallerKey, Cache, Invalidation},
    domain::{Agent, Customer, PhoneNumber},
    error::Error,
    store::PgStore,
};

/// What a write changed that a cache may hold.
pub(crate) trait Evicts {
    fn evictions(&self) -> Invalidation;
}

/// A created or deleted agent: the route of its number.
impl Evicts for Agent {
    fn evictions(&self) -> Invalidation {
        Invalidation::numbers([self.phone_number.as_str()])
    }
}

/// An updated agent and the number it had: both routes (they differ when
/// the update moved it to another number), and then every route of its
/// org, which may name it by its old number (rules, after hours).
impl Evicts for crate::store::AgentUpdated {
    fn evictions(&self) -> Invalidation {
        Invalidation::numbers(
            [
                self.previous_number.as_str(),
                self.agent.phone_number.as_str(),
            ]
            .into_iter()
            .chain(self.org_numbers.iter().map(String::as_str)),
        )
    }
}

/// A published version: its agent's route (the versions it serves).
impl Evicts for (crate::domain::AgentVersion, PhoneNumber) {
    fn evictions(&self) -> Invalidation {
        Invalidation::numbers([self.1.as_str()])
    }
}

/// A caller rule written or deleted, and its org's numbers: every route of
/// the org carries the org's rules.
impl Evicts for (crate::domain::CallerRule, Vec<String>) {
    fn evictions(&self) -> Invalidation {
        Invalidation::numbers(self.1.iter().map(String::as_str))
    }
}

/// A customer written or deleted: its caller record in its org.
impl Evicts for Customer {
    fn evictions(&self) -> Invalidation {
        Invalidation::Callers {
            callers: vec![CallerKey {
                org_id: self.org_id,
                phone: self.phone.as_str().to_owned(),
            }],
        }
    }
}

/// An organization's limit: every route of its numbers carries it.
impl Evicts for crate::store::OrgLimitWritten {
    fn evictions(&self) -> Invalidation {
        Invalidation::numbers(self.numbers.iter().map(String::as_str))
    }
}

/// The store and the cache as the use cases see them. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Data {
    store: PgStore,
    cache: Cache,
}

impl Data {
    pub(super) fn new(store: PgStore, cache: Cache) -> Self {
        Data { store, cache }
    }

    /// The store, for reads. (A write through it would skip the
    /// evictions: writes go through `write`.)
    pub(super) fn reads(&self) -> &PgStore {
        &self.store
    }

    /// Runs a store write, then evicts what it changed from this replica's
    /// memory, Redis and (pub/sub) every replica before returning it. The
    /// trigger's notification follows and is harmless; it still covers
    /// writes that bypass the service. A failed write evicts nothing.
    pub(super) async fn write<'s, T, Fut>(
        &'s self,
        write: impl FnOnce(&'s PgStore) -> Fut,
    ) -> Result<T, Error>
    where
        T: Evicts,
        Fut: Future<Output = Result<T, Error>>,
    {
        let written = write(&self.store).await?;
        self.cache.invalidate_after_write(written.evictions()).await;
        Ok(written)
    }
}
