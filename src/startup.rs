//! Builds the server from a validated config. `main` and the tests start it
//! the same way; tests bind port 0 and read back the address.

use std::{future::Future, net::SocketAddr, time::Duration};

use futures_util::TryStreamExt;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{server::TcpIncoming, Server};
use tonic_health::{server::HealthReporter, ServingStatus};
use tower::ServiceBuilder;

use crate::{
    app::{
        AgentsService, CallSettings, CallerRulesService, CallsService, CustomersService,
        ResolveService, WatchSettings, WhenRedisDown,
    },
    auth::{AuthLayer, Jwks, JwksError, JwtVerifier},
    cache::{
        identity,
        invalidation::{self, ListenerState},
        Cache, MemoryTier, RedisTier,
    },
    config::ServeConfig,
    grpc::{
        AgentApi, CallApi, CallerRuleApi, Connection, CustomerApi, GlobalLimitLayer, Limits,
        TenantLimitLayer,
    },
    live::{LiveCalls, LiveSettings},
    observability::{
        admin,
        metrics::Metrics,
        otlp::{MetricsExport, MetricsPusher},
        RequestLayers,
    },
    pb::{
        self, agent_service_server::AgentServiceServer, call_service_server::CallServiceServer,
        caller_rule_service_server::CallerRuleServiceServer,
        customer_service_server::CustomerServiceServer,
    },
    store::PgStore,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot listen on {0} (SWITCHBOARD_ADMIN_LISTEN): {1}")]
    AdminListen(SocketAddr, std::io::Error),
    #[error("DATABASE_URL is not usable: {0}")]
    Database(sqlx::Error),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("REDIS_URL is not usable: {0}")]
    Redis(redis::RedisError),
    #[error("{0}")]
    Jwks(#[from] JwksError),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Connected to Postgres, but its own notification never arrived: the
    /// service would miss every out-of-band change. (Unreachable is not
    /// this: the service starts and retries.)
    #[error("{}", invalidation::DEAF)]
    ListenerDeaf,
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    /// The admin HTTP port (`/metrics`).
    admin_listener: TcpListener,
    config: ServeConfig,
    store: PgStore,
    /// Loaded at build so a bad JWKS setting stops start-up.
    jwks: Option<Jwks>,
    /// OTLP metrics push; off unless `with_metrics_export` turned it on.
    metrics_export: MetricsExport,
}

/// How long start-up waits for the listener to connect (or the database
/// to be found unreachable) and for Redis; a connected listener then gets
/// its probe's timeout on top, to prove it hears.
const LISTENER_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

const SERVICE_NAMES: [&str; 4] = [
    "",
    "switchboard.v1.AgentService",
    "switchboard.v1.CustomerService",
    "switchboard.v1.CallService",
];

impl Application {
    pub async fn build(config: ServeConfig) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartupError::Listen(config.listen, e))?;
        let admin_listener = TcpListener::bind(config.admin_listen)
            .await
            .map_err(|e| StartupError::AdminListen(config.admin_listen, e))?;
        // Off the runtime, before the first call (`PhoneNumber::load_metadata`).
        let _ = tokio::task::spawn_blocking(crate::domain::PhoneNumber::load_metadata).await;
        let mut store = PgStore::connect_lazy(&config.database_url, &config.pool)
            .map_err(StartupError::Database)?;
        if let Some(read_url) = &config.database_read_url {
            store = store
                .with_read_replica(read_url, &config.pool)
                .map_err(StartupError::Database)?;
        }
        let jwks = match &config.jwks {
            Some(settings) => Some(Jwks::load(settings.clone()).await?),
            None => None,
        };
        Ok(Application {
            listener,
            admin_listener,
            config,
            store,
            jwks,
            metrics_export: MetricsExport::Off,
        })
    }

    /// Also push `/metrics`' numbers over OTLP (`main` passes
    /// `MetricsExport::from_env()`; tests their own collector).
    pub fn with_metrics_export(mut self, export: MetricsExport) -> Self {
        self.metrics_export = export;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Where `/metrics` is served (tests bind port 0 and read it here).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.admin_listen)
    }

    /// Serves until `shutdown` completes, then: health NOT_SERVING, stop
    /// accepting, let in-flight calls finish for at most the shutdown timeout.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let (health, server) = self.spawn().await?;
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
        for name in SERVICE_NAMES {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let RunningServer {
            stop,
            handle,
            drain,
            background,
            admin,
            metrics_push,
            calls,
        } = server;
        for task in background {
            task.abort();
        }
        // Streams would hold the drain until their tokens expire.
        calls.close_streams();
        let _ = stop.send(());
        let served = match tokio::time::timeout(drain, handle).await {
            Ok(Ok(result)) => result.map_err(StartupError::Serve),
            Ok(Err(_join)) => Ok(()),
            Err(_) => {
                tracing::warn!("drain timed out; closing remaining connections");
                Ok(())
            }
        };
        // After the drain, so the last push counts the drained calls.
        if let Some(push) = metrics_push {
            push.stop().await;
        }
        // Metrics stay scrapable through the drain, then the admin port goes.
        admin.stop().await;
        served
    }

    async fn spawn(self) -> Result<(HealthReporter, RunningServer), StartupError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in SERVICE_NAMES {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Two builds: the builder is consumed, and common grpcurl builds
        // speak only v1alpha.
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let metrics = Metrics::new();
        let settings = &self.config.cache;
        let memory = MemoryTier::new(
            settings.max_routes,
            settings.max_callers,
            settings.memory_ttl,
        );
        let redis = match &self.config.redis {
            Some(target) => Some(
                RedisTier::new(
                    target.clone(),
                    settings.redis_namespace.as_deref(),
                    settings.redis_timeout,
                    settings.redis_ttl,
                    metrics.clone(),
                )
                .map_err(StartupError::Redis)?,
            ),
            None => None,
        };
        let cache = Cache::new(memory, redis.clone(), metrics.clone());
        let (pg_listener, listener_state) = invalidation::spawn_pg_listener(
            cache.clone(),
            self.config.listener_database_url.clone(),
            self.store.pool().clone(),
        );
        let mut background = vec![pg_listener];
        if let Some(redis) = redis {
            // Reads the database identity the Redis keys belong to, and
            // starts the Redis subscriber on its channel.
            background.push(identity::spawn_identity_watcher(
                cache.clone(),
                redis,
                self.store.clone(),
            ));
        }
        let call_config = &self.config.calls;
        let live = LiveCalls::new(
            cache.redis_tier().cloned(),
            LiveSettings {
                lease: call_config.lease,
                remember: call_config.remember,
                timeout: call_config.redis_timeout,
                refusals_recorded_per_minute: call_config.refusals_recorded_per_minute,
            },
        );
        let mut verifier = JwtVerifier::new(&self.config.jwt_secret);
        if let Some(jwks) = self.jwks {
            background.extend(jwks.spawn_refresher());
            verifier = verifier.with_jwks(jwks);
        }
        // Serve once invalidation is live, so nothing cached in the first
        // moments can miss a change, and once the Redis tier is connected,
        // so the first calls read and fill it; with the database or Redis
        // down, start anyway after the same short wait (nothing is kept in
        // memory until the listener connects; Redis is a miss until it is).
        //
        // A listener that connected but does not hear its own probe (LISTEN
        // through a transaction pooler) stops start-up: it would never
        // see a change made outside the service.
        let started = std::time::Instant::now();
        loop {
            let state = *listener_state.borrow();
            if state == ListenerState::Deaf {
                for task in background {
                    task.abort();
                }
                return Err(StartupError::ListenerDeaf);
            }
            let waited = started.elapsed();
            let listener_settled = match state {
                ListenerState::Hearing => true,
                // Connected: give the probes their time to reach a verdict.
                ListenerState::Probing => {
                    waited >= LISTENER_START_WAIT + invalidation::VERDICT_WITHIN
                }
                ListenerState::Starting | ListenerState::Unreachable | ListenerState::Deaf => {
                    waited >= LISTENER_START_WAIT
                }
            };
            let redis_ready = cache.redis_ready() && live.is_connected();
            if listener_settled && (redis_ready || waited >= LISTENER_START_WAIT) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let resolve = ResolveService::new(self.store.clone(), cache.clone());
        let global_limit = GlobalLimitLayer::new(&self.config.limits);
        let calls = CallsService::new(
            resolve.clone(),
            live,
            self.store.clone(),
            cache.clone(),
            CallSettings {
                when_redis_down: if call_config.answer_when_redis_down {
                    WhenRedisDown::Answer
                } else {
                    WhenRedisDown::Refuse
                },
                record_timeout: call_config.record_timeout,
            },
            WatchSettings {
                in_flight: global_limit.in_flight(),
                interval: call_config.watch_interval,
                recheck: call_config.watch_recheck,
                max_streams: call_config.watch_max_streams,
                max_per_org: call_config.watch_max_per_org,
                max_per_user: call_config.watch_max_per_user,
            },
            metrics.clone(),
        );
        background.push(spawn_backlog_drainer(
            calls.clone(),
            call_config.backlog_interval,
        ));
        if settings.preload {
            preload(&resolve).await;
        }
        let sources = admin::Sources {
            metrics: metrics.clone(),
            store: self.store.clone(),
            cache: cache.clone(),
            resolve: resolve.clone(),
        };
        let metrics_push = match self.metrics_export {
            MetricsExport::Off => None,
            MetricsExport::Otlp(settings) => Some(settings.spawn(sources.clone())),
        };
        let admin = AdminServer::spawn(self.admin_listener, sources);
        let limits = &self.config.limits;
        // Outermost first: the request layers (span, log, deadline) see every
        // answer, shed ones too; the global cap sheds before any token is
        // verified; the tenant share needs the verified claims.
        let layers = ServiceBuilder::new()
            .layer(RequestLayers {
                max_request_time: self.config.request_timeout,
                metrics,
            })
            .layer(global_limit)
            .layer(AuthLayer::new(verifier))
            .layer(TenantLimitLayer::new(limits))
            .into_inner();

        let router = connection_settings(Server::builder(), limits)
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                AgentServiceServer::new(AgentApi::new(
                    resolve,
                    AgentsService::new(self.store.clone(), cache.clone()),
                ))
                .max_decoding_message_size(limits.max_message_bytes),
            )
            .add_service(
                CallerRuleServiceServer::new(CallerRuleApi::new(CallerRulesService::new(
                    self.store.clone(),
                    cache.clone(),
                )))
                .max_decoding_message_size(limits.max_message_bytes),
            )
            .add_service(
                CustomerServiceServer::new(CustomerApi::new(CustomersService::new(
                    self.store, cache,
                )))
                .max_decoding_message_size(limits.max_message_bytes),
            )
            .add_service(
                CallServiceServer::new(CallApi::new(calls.clone()))
                    .max_decoding_message_size(limits.max_message_bytes),
            );

        let (stop, stopped) = oneshot::channel::<()>();
        // Every call is one small request and one small response: without
        // TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to each.
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE))
            .map_ok(Connection::new);
        let handle = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        Ok((
            health,
            RunningServer {
                stop,
                handle,
                drain: self.config.shutdown_timeout,
                background,
                admin,
                metrics_push,
                calls,
            },
        ))
    }
}

/// Replays the call-record backlog every `interval` (and at once), as
/// the consumer named by this replica's own id.
fn spawn_backlog_drainer(calls: CallsService, interval: Duration) -> JoinHandle<()> {
    let consumer = uuid::Uuid::new_v4().to_string();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match calls.drain_backlog(&consumer).await {
                Ok(0) => {}
                Ok(written) => tracing::info!(written, "call records replayed from the backlog"),
                Err(error) => tracing::debug!(%error, "call-record backlog not read"),
            }
        }
    })
}

/// Warms the memory tier before serving; a failure only means calls fill it
/// lazily.
async fn preload(resolve: &ResolveService) {
    let started = std::time::Instant::now();
    match resolve.preload(PRELOAD_PAGE).await {
        Ok(routes) => tracing::info!(
            routes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache preloaded"
        ),
        Err(error) => tracing::warn!(%error, "cache preload failed; serving with a cold cache"),
    }
}

/// Numbers read per preload statement.
const PRELOAD_PAGE: i64 = 10_000;

/// TCP keepalive: finds peers that vanished without a FIN (a node lost, a
/// NAT entry dropped) on idle connections, where HTTP/2 pings do not run.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 PING on every connection this often, dropped if unanswered within
/// the timeout: a dead client's streams and permits are freed in ≤ 30 s, and
/// load balancers and NATs see traffic (AWS NLB drops idle flows at 350 s).
/// Clients must allow pings this frequent (gRPC's default minimum is 5 min
/// for pings *from* clients; server pings are always allowed).
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one connection may have open. Envoy and the media servers
/// multiplex many calls on few connections; the global cap, not this, is
/// what bounds work. This only stops one connection taking all of it.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Connections are closed (GOAWAY, in-flight calls finish) after this, so
/// clients reconnect and spread over replicas the autoscaler added; a
/// long-lived HTTP/2 connection otherwise pins a client to one pod.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

fn connection_settings(server: Server, limits: &Limits) -> Server {
    server
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .http2_max_header_list_size(limits.http2_max_header_list_bytes())
}

struct RunningServer {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
    drain: std::time::Duration,
    calls: CallsService,
    /// The invalidation listener and subscriber: stopped with the server.
    background: Vec<JoinHandle<()>>,
    admin: AdminServer,
    metrics_push: Option<MetricsPusher>,
}

/// The admin HTTP server and how to stop it.
struct AdminServer {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// A scraper holding a connection open must not hold up shutdown.
    const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

    fn spawn(listener: TcpListener, sources: admin::Sources) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = admin::spawn(listener, sources, async {
            let _ = stopped.await;
        });
        AdminServer { stop, handle }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let mut handle = self.handle;
        match tokio::time::timeout(Self::STOP_WAIT, &mut handle).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "admin server failed"),
            Ok(_) => {}
            Err(_) => handle.abort(),
        }
    }
}
