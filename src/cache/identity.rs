//! Keeps the Redis tier on the database's own identity.
//!
//! The identity is read at start-up and then every `CHECK_INTERVAL` from the
//! primary. Until it is known every Redis call is a miss and the pub/sub
//! subscriber is not started (its channel is scoped to the identity too).
//! When it changes (`switchboard retire-database-identity` after a restore,
//! or `DATABASE_URL` now reaching another database), this replica moves its
//! keys and channel to the new identity, drops its memory tier (it may
//! hold routes read from Redis under the old one) and subscribes to the new
//! channel. Between the change and this replica's next check, up to
//! `CHECK_INTERVAL`, it still reads the old identity's routes. While the
//! database cannot be reached the last identity stays in use: cached routes
//! keep answering.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::{invalidation, redis::Scope, Cache, RedisTier};
use crate::store::PgStore;

/// How often a replica re-reads the identity: how long after a retire it
/// may still read the old identity's routes. One indexed read of a
/// one-row table per replica per interval.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// One read may take this long before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Aborts the task when dropped: the subscriber stops with the watcher.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the identity until aborted; owns the Redis subscriber.
pub(crate) fn spawn_identity_watcher(
    cache: Cache,
    redis: RedisTier,
    store: PgStore,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut subscriber: Option<AbortOnDrop> = None;
        let mut unreadable = false;
        loop {
            match tokio::time::timeout(READ_TIMEOUT, store.database_identity()).await {
                Ok(Ok(identity)) => {
                    if unreadable {
                        tracing::info!("database identity readable again");
                        unreadable = false;
                    }
                    let scope = redis.set_database_identity(&identity);
                    match scope {
                        Scope::Unchanged => {}
                        Scope::First => {
                            tracing::info!("redis tier scoped to the database identity")
                        }
                        Scope::Changed => {
                            tracing::warn!(
                                "the database identity changed (retired after a restore?): \
                                 routes cached under the old one are no longer read; \
                                 dropping the memory tier"
                            );
                            cache.drop_memory();
                        }
                    }
                    if scope != Scope::Unchanged {
                        // The old one, dropped here, is aborted.
                        subscriber.replace(AbortOnDrop(invalidation::spawn_redis_subscriber(
                            cache.clone(),
                            redis.clone(),
                        )));
                    }
                }
                failed => {
                    if !unreadable {
                        let error = match failed {
                            Ok(Err(error)) => error.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        tracing::warn!(
                            %error,
                            "cannot read the database identity \
                             (switchboard_private.database_identity: is `switchboard migrate` applied?); \
                             until it is read once, the redis tier is a miss"
                        );
                        unreadable = true;
                    }
                }
            }
            tokio::time::sleep(CHECK_INTERVAL).await;
        }
    })
}
