//! Turning changes into evictions.
//!
//! * Postgres: triggers on `agents`, `organizations` and `customers` notify
//!   `switchboard_invalidate` (migration `..._cache_invalidation.sql`). The
//!   listener holds a direct or session-mode connection (LISTEN does not
//!   survive a transaction pooler), evicts from memory and Redis, and fans
//!   the message out on Redis pub/sub.
//! * Redis pub/sub: every replica subscribes and evicts from its memory tier.
//!
//! Either connection may drop. Notifications sent meanwhile are lost, so on
//! every reconnect the memory tier is dropped. While disconnected the tier
//! keeps serving: a call must not fail because the database blinked.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;

use super::{Cache, RedisTier};
use crate::domain::OrgId;

pub const PG_CHANNEL: &str = "switchboard_invalidate";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// Routes of these called numbers.
    Numbers { numbers: Vec<String> },
    /// These caller records.
    Callers { callers: Vec<CallerKey> },
    /// Everything (a TRUNCATE, or an org with very many numbers).
    All,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallerKey {
    pub org_id: OrgId,
    pub phone: String,
}

impl Invalidation {
    pub fn numbers<'a>(numbers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut numbers: Vec<String> = numbers.into_iter().map(str::to_owned).collect();
        numbers.dedup();
        Invalidation::Numbers { numbers }
    }

    /// An unreadable message evicts everything: safe, if not cheap.
    pub fn parse(payload: &str) -> Self {
        serde_json::from_str(payload).unwrap_or_else(|error| {
            tracing::warn!(%error, "unreadable invalidation; dropping the whole cache");
            Invalidation::All
        })
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(4)).min(2_000))
}

/// Listens to Postgres until aborted.
pub fn spawn_pg_listener(cache: Cache, database_url: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            let mut listener = match connect_listener(&database_url).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "invalidation listener cannot connect; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            if attempt > 0 {
                tracing::info!("invalidation listener reconnected; dropping the memory tier");
            }
            cache.listener_connected();
            attempt = 0;
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        cache.metrics.invalidations.postgres.inc();
                        let invalidation = Invalidation::parse(notification.payload());
                        tracing::debug!(?invalidation, "invalidation from postgres");
                        cache.invalidate(&invalidation).await;
                    }
                    Ok(None) => {
                        tracing::warn!("invalidation listener lost its connection");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "invalidation listener failed");
                        break;
                    }
                }
            }
            cache.listener_disconnected();
            attempt += 1;
        }
    })
}

async fn connect_listener(database_url: &str) -> Result<PgListener, sqlx::Error> {
    // `PgListener::connect` without the `extra_float_digits` startup
    // parameter, which a PgBouncer with stock settings refuses.
    let options: sqlx::postgres::PgConnectOptions = database_url.parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options.extra_float_digits(None))
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(PG_CHANNEL).await?;
    Ok(listener)
}

/// Subscribes to the Redis fan-out until aborted.
pub fn spawn_redis_subscriber(cache: Cache, redis: RedisTier) -> JoinHandle<()> {
    tokio::spawn(async move {
        let target = redis.target().clone();
        let channel = redis.channel();
        let mut attempt = 0;
        loop {
            let pubsub = async {
                let client = target.pubsub_client(attempt).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut pubsub = match tokio::time::timeout(Duration::from_secs(2), pubsub).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "redis subscriber cannot connect; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            if attempt > 0 {
                tracing::info!("redis subscriber reconnected; dropping the memory tier");
                cache.drop_memory();
            }
            attempt = 0;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                cache.metrics.invalidations.redis.inc();
                let payload: String = message.get_payload().unwrap_or_default();
                cache.evict_local(&Invalidation::parse(&payload)).await;
            }
            tracing::warn!("redis subscriber lost its connection");
            attempt += 1;
        }
    })
}
