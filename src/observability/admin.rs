//! The admin HTTP port (`SWITCHBOARD_ADMIN_LISTEN`): `GET /metrics` in the
//! Prometheus text format. A port of its own, so scrapes never queue behind
//! calls, and it can stay off the network the media servers reach.

use std::future::Future;

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use tokio::{net::TcpListener, task::JoinHandle};

use super::metrics::{Gauges, Metrics, Snapshot};
use crate::{app::ResolveService, cache::Cache, store::PgStore};

/// What a scrape (and an OTLP push) reads: the counters, and the parts whose
/// state the gauges mirror (read at scrape time, so they cost the call path
/// nothing).
#[derive(Clone)]
pub struct Sources {
    pub metrics: Metrics,
    pub store: PgStore,
    pub cache: Cache,
    pub resolve: ResolveService,
}

impl Sources {
    /// Every series now.
    pub fn snapshot(&self) -> Snapshot<'_> {
        self.metrics.snapshot(&self.gauges())
    }

    fn gauges(&self) -> Gauges {
        let pool = self.store.pool_stats();
        Gauges {
            pool_max: pool.max,
            pool_size: pool.size,
            pool_idle: pool.idle,
            pool_waiting: pool.waiting,
            database_breaker_open: self.resolve.database_breaker_open(),
            redis_breaker_open: self.cache.redis_breaker_open(),
            invalidation_listener_connected: self.cache.is_listening(),
            invalidation_listener_deaf: self.cache.is_listener_deaf(),
        }
    }
}

/// The version of the text format Prometheus negotiates by default.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(State(sources): State<Sources>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        sources.snapshot().to_prometheus(),
    )
}

/// Serves until `shutdown` completes; any other path is 404.
pub fn spawn(
    listener: TcpListener,
    sources: Sources,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .with_state(sources);
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    })
}
