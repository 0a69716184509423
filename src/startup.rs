//! Builds the server from a validated config. `main` and the tests start it
//! the same way; tests bind port 0 and read back the address.

use std::{future::Future, net::SocketAddr};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{server::TcpIncoming, Server};
use tonic_health::{server::HealthReporter, ServingStatus};
use tower::ServiceBuilder;

use crate::{
    auth::{AuthLayer, Jwks, JwksError, JwtVerifier},
    cache::{invalidation, Cache, MemoryTier, RedisTier},
    config::ServeConfig,
    grpc::{AgentApi, CustomerApi, RequestLogLayer},
    pb::{
        self, agent_service_server::AgentServiceServer,
        customer_service_server::CustomerServiceServer,
    },
    resolver::Resolver,
    store::PgStore,
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
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
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    config: ServeConfig,
    store: PgStore,
    /// Loaded at build so a bad JWKS setting stops start-up.
    jwks: Option<Jwks>,
}

const LISTENER_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

const SERVICE_NAMES: [&str; 3] = [
    "",
    "switchboard.v1.AgentService",
    "switchboard.v1.CustomerService",
];

impl Application {
    pub async fn build(config: ServeConfig) -> Result<Self, StartupError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartupError::Listen(config.listen, e))?;
        let store = PgStore::connect_lazy(&config.database_url, &config.pool)
            .map_err(StartupError::Database)?;
        let jwks = match &config.jwks {
            Some(settings) => Some(Jwks::load(settings.clone()).await?),
            None => None,
        };
        Ok(Application {
            listener,
            config,
            store,
            jwks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
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
        } = server;
        for task in background {
            task.abort();
        }
        let _ = stop.send(());
        match tokio::time::timeout(drain, handle).await {
            Ok(Ok(result)) => result.map_err(StartupError::Serve),
            Ok(Err(_join)) => Ok(()),
            Err(_) => {
                tracing::warn!("drain timed out; closing remaining connections");
                Ok(())
            }
        }
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

        let settings = &self.config.cache;
        let memory = MemoryTier::new(
            settings.max_routes,
            settings.max_callers,
            settings.memory_ttl,
        );
        let redis = match &self.config.redis_url {
            Some(url) => Some(
                RedisTier::new(
                    url,
                    settings.redis_namespace.as_deref(),
                    settings.redis_timeout,
                    settings.redis_ttl,
                )
                .map_err(StartupError::Redis)?,
            ),
            None => None,
        };
        let cache = Cache::new(memory, redis.clone());
        let mut background = vec![invalidation::spawn_pg_listener(
            cache.clone(),
            self.config.listener_database_url.clone(),
        )];
        if let Some(redis) = redis {
            background.push(invalidation::spawn_redis_subscriber(cache.clone(), redis));
        }
        let mut verifier = JwtVerifier::new(&self.config.jwt_secret);
        if let Some(jwks) = self.jwks {
            background.extend(jwks.spawn_refresher());
            verifier = verifier.with_jwks(jwks);
        }
        // Serve once invalidation is live, so nothing cached in the first
        // moments can miss a change; with the database down, start anyway
        // (nothing is kept in memory until the listener connects).
        let started = std::time::Instant::now();
        while !cache.is_listening() && started.elapsed() < LISTENER_START_WAIT {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let resolver = Resolver::new(self.store.clone(), cache);
        let layers = ServiceBuilder::new()
            .layer(RequestLogLayer {
                max_request_time: Some(self.config.request_timeout),
            })
            .layer(AuthLayer::new(verifier))
            .into_inner();

        let router = Server::builder()
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(AgentServiceServer::new(AgentApi::new(
                resolver,
                self.store.clone(),
            )))
            .add_service(CustomerServiceServer::new(CustomerApi::new(self.store)));

        let (stop, stopped) = oneshot::channel::<()>();
        // Every call is one small request and one small response: without
        // TCP_NODELAY, Nagle and delayed ACKs add ~40 ms to each.
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(60)));
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
            },
        ))
    }
}

struct RunningServer {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
    drain: std::time::Duration,
    /// The invalidation listener and subscriber: stopped with the server.
    background: Vec<JoinHandle<()>>,
}
