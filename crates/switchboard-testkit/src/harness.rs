//! The test harness: a fresh database per test, the real server on a loopback
//! port, real clients and real signed tokens.
//!
//! Environment:
//! * `SWITCHBOARD_TEST_DATABASE_URL`: a superuser URL to the server the tests
//!   create their databases on (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! * `SWITCHBOARD_TEST_POOLER_URL`: for a [`ThroughPooler`] harness (the
//!   `pooled` test binary), a transaction pooler to use (e.g.
//!   `postgres://postgres@127.0.0.1:6543`) instead of the PgBouncer the tests
//!   start themselves. The service's queries go through it; migrations and
//!   fixtures always go direct.
//! * `SWITCHBOARD_TEST_REDIS_URL`: Redis (default `redis://127.0.0.1:6379`).
//!
//! Whether the service reaches Postgres directly or through the pooler is a
//! type parameter of [`TestDb`] and [`TestApp`] ([`Direct`] or
//! [`ThroughPooler`]), fixed once per test binary by the prelude it names
//! (`switchboard_testkit::direct` or `::pooled`), so the same test files run
//! both ways unchanged.

use std::{marker::PhantomData, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use serde_json::{Map, Value};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, Connection, Executor, PgConnection, PgPool,
};
use switchboard::{
    config::{ServeArgs, ServeConfig},
    observability::MetricsExport,
    pb::{
        agent_service_client::AgentServiceClient, call_service_client::CallServiceClient,
        caller_rule_service_client::CallerRuleServiceClient,
        customer_service_client::CustomerServiceClient,
    },
    startup::Application,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{transport::Channel, Code, Request, Status};
use uuid::Uuid;

pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

pub const ACME: &str = "0a000000-0000-4000-8000-00000000000a";
pub const BLUEBIRD: &str = "0b000000-0000-4000-8000-00000000000b";
pub const ACME_AGENT: &str = "aa000000-0000-4000-8000-000000000001";
pub const BLUEBIRD_AGENT: &str = "bb000000-0000-4000-8000-000000000001";
pub const ACME_NUMBER: &str = "+18005550100";
pub const BLUEBIRD_NUMBER: &str = "+18005550200";
pub const ACME_CUSTOMER: &str = "ca000000-0000-4000-8000-000000000001";
pub const BLUEBIRD_CUSTOMER: &str = "cb000000-0000-4000-8000-000000000001";
/// The caller known to both clinics, as a different person in each.
pub const SHARED_CALLER: &str = "+14155550123";

/// Who is calling: a seeded user of one org, or the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    AcmeAdmin,
    AcmeManager,
    AcmeViewer,
    BluebirdAdmin,
    BluebirdManager,
    BluebirdViewer,
    Service,
}

impl Who {
    pub const ACME: [Who; 3] = [Who::AcmeAdmin, Who::AcmeManager, Who::AcmeViewer];
    pub const BLUEBIRD: [Who; 3] = [
        Who::BluebirdAdmin,
        Who::BluebirdManager,
        Who::BluebirdViewer,
    ];
    pub const TENANTS: [Who; 6] = [
        Who::AcmeAdmin,
        Who::AcmeManager,
        Who::AcmeViewer,
        Who::BluebirdAdmin,
        Who::BluebirdManager,
        Who::BluebirdViewer,
    ];

    pub fn user_id(self) -> Option<Uuid> {
        let id = match self {
            Who::AcmeAdmin => "a0000000-0000-4000-8000-000000000001",
            Who::AcmeManager => "a0000000-0000-4000-8000-000000000002",
            Who::AcmeViewer => "a0000000-0000-4000-8000-000000000003",
            Who::BluebirdAdmin => "b0000000-0000-4000-8000-000000000001",
            Who::BluebirdManager => "b0000000-0000-4000-8000-000000000002",
            Who::BluebirdViewer => "b0000000-0000-4000-8000-000000000003",
            Who::Service => return None,
        };
        Uuid::parse_str(id).ok()
    }

    /// The caller's own org and the other one.
    pub fn orgs(self) -> (&'static str, &'static str) {
        if Who::BLUEBIRD.contains(&self) {
            (BLUEBIRD, ACME)
        } else {
            (ACME, BLUEBIRD)
        }
    }

    /// The number of the caller's own org's seeded agent, and the other
    /// org's.
    pub fn numbers(self) -> (&'static str, &'static str) {
        if Who::BLUEBIRD.contains(&self) {
            (BLUEBIRD_NUMBER, ACME_NUMBER)
        } else {
            (ACME_NUMBER, BLUEBIRD_NUMBER)
        }
    }

    pub fn can_write(self) -> bool {
        !matches!(self, Who::AcmeViewer | Who::BluebirdViewer)
    }
}

/// Signs any claims with the test secret (HS256), as Supabase would.
pub fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A token for `who`, with `extra` claims merged over the usual ones (so a
/// test can override `exp`, `role`, ...).
pub fn token_with(who: Who, extra: Value) -> String {
    sign(&claims_for(who, extra))
}

/// The claims `token_with` signs, for tests that sign them otherwise.
pub fn claims_for(who: Who, extra: Value) -> Value {
    let now = now();
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + 3600).into());
    match who.user_id() {
        Some(sub) => {
            claims.insert("role".into(), "authenticated".into());
            claims.insert("aud".into(), "authenticated".into());
            claims.insert("sub".into(), sub.to_string().into());
        }
        None => {
            claims.insert("role".into(), "service_role".into());
        }
    }
    if let Value::Object(extra) = extra {
        claims.extend(extra);
    }
    Value::Object(claims)
}

pub fn token(who: Who) -> String {
    token_with(who, Value::Null)
}

/// Wraps a message with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub fn as_who<T>(who: Who, message: T) -> Request<T> {
    authed(&token(who), message)
}

/// Asserts an RPC failed with `code`, and returns the message.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> String {
    match result {
        Ok(value) => panic!("expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "unexpected status: {}",
                status.message()
            );
            status.message().to_owned()
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub fn admin_url() -> String {
    env_or(
        "SWITCHBOARD_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

pub fn redis_url() -> String {
    env_or("SWITCHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

fn with_database(url: &str, name: &str) -> String {
    let options = PgConnectOptions::from_str(url).unwrap_or_else(|e| panic!("bad test url: {e}"));
    let user = options.get_username();
    let host = options.get_host();
    let port = options.get_port();
    format!("postgres://{user}@{host}:{port}/{name}")
}

/// How the service under test reaches Postgres.
pub trait PoolerMode: Send + Sync + 'static {
    const THROUGH_POOLER: bool;
}

/// The service talks to Postgres directly.
pub enum Direct {}

/// Every query of the service goes through a transaction pooler (a
/// PgBouncer the tests start, or `SWITCHBOARD_TEST_POOLER_URL`).
pub enum ThroughPooler {}

impl PoolerMode for Direct {
    const THROUGH_POOLER: bool = false;
}

impl PoolerMode for ThroughPooler {
    const THROUGH_POOLER: bool = true;
}

/// The transaction pooler every test of a `ThroughPooler` binary shares.
async fn shared_pooler_url() -> String {
    static POOLER: tokio::sync::OnceCell<(String, Option<crate::pgbouncer::PgBouncer>)> =
        tokio::sync::OnceCell::const_new();
    let (url, _) = POOLER
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("SWITCHBOARD_TEST_POOLER_URL") {
                if !url.is_empty() {
                    return (url, None);
                }
            }
            let admin = PgConnectOptions::from_str(&admin_url())
                .unwrap_or_else(|e| panic!("bad test url: {e}"));
            let bouncer =
                crate::pgbouncer::PgBouncer::start(admin.get_host(), admin.get_port()).await;
            let url = format!(
                "postgres://{}@127.0.0.1:{}/postgres",
                admin.get_username(),
                bouncer.port
            );
            (url, Some(bouncer))
        })
        .await;
    url.clone()
}

/// A database of its own for one test, dropped (with force) when it ends.
pub struct TestDb<M: PoolerMode> {
    pub name: String,
    /// Direct connection URL: migrations, fixtures, assertions.
    pub direct_url: String,
    /// What the service uses: the pooler when one is configured.
    pub service_url: String,
    /// A superuser pool on the test database, for fixtures and checks.
    pub pool: PgPool,
    mode: PhantomData<M>,
}

// `TestDb` and `TestApp` are generic over the mode only to pick it; their
// work is done by functions that are not, so a test binary does not compile
// it again.

/// The bootstrap migration's three roles, made once per test process before
/// any test database migrates. Roles belong to the cluster: on a fresh one,
/// tests migrating their databases at once would each find a role missing
/// and race to create it ("duplicate key ... pg_authid_rolname_index"). A
/// deployment migrates one database, under sqlx's lock, and never races.
async fn ensure_api_roles(conn: &mut PgConnection) {
    static MADE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    MADE.get_or_init(|| async {
        for role in [
            "anon nologin noinherit",
            "authenticated nologin noinherit",
            "service_role nologin noinherit bypassrls",
        ] {
            // Another test process may make it at the same moment.
            let make = format!(
                "do $$ begin create role {role}; \
                 exception when duplicate_object or unique_violation then null; end $$"
            );
            conn.execute(make.as_str())
                .await
                .unwrap_or_else(|e| panic!("create role {role}: {e}"));
        }
    })
    .await;
}

/// A new empty database: (name, direct URL, service URL, superuser pool).
async fn create_database(through_pooler: bool) -> (String, String, String, PgPool) {
    let admin = admin_url();
    let name = format!("switchboard_test_{}", Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test Postgres at {admin}: {e}"));
    conn.execute(format!("create database {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("create database: {e}"));
    ensure_api_roles(&mut conn).await;
    let _ = conn.close().await;
    let direct_url = with_database(&admin, &name);
    let service_url = if through_pooler {
        with_database(&shared_pooler_url().await, &name)
    } else {
        direct_url.clone()
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_lazy(&direct_url)
        .unwrap_or_else(|e| panic!("pool: {e}"));
    (name, direct_url, service_url, pool)
}

impl<M: PoolerMode> TestDb<M> {
    /// Creates an empty database (no migrations).
    pub async fn empty() -> TestDb<M> {
        let (name, direct_url, service_url, pool) = create_database(M::THROUGH_POOLER).await;
        TestDb {
            name,
            direct_url,
            service_url,
            pool,
            mode: PhantomData,
        }
    }

    /// A database with the migrations and the demo data.
    pub async fn seeded() -> TestDb<M> {
        let db = TestDb::empty().await;
        db.migrate_and_seed().await;
        db
    }

    /// The migrations and the demo data, on this database as it is.
    pub async fn migrate_and_seed(&self) {
        switchboard::migrate::run(&self.direct_url)
            .await
            .unwrap_or_else(|e| panic!("migrate: {e}"));
        switchboard::migrate::seed(&self.direct_url)
            .await
            .unwrap_or_else(|e| panic!("seed: {e}"));
    }

    /// Runs SQL as the superuser (fixtures, out-of-band changes).
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl<M: PoolerMode> Drop for TestDb<M> {
    fn drop(&mut self) {
        drop_database(self.name.clone());
    }
}

/// Drops a test's database (with force) and its Redis keys.
fn drop_database(name: String) {
    let admin = admin_url();
    cleanup_blocking(async move {
        let Ok(options) = PgConnectOptions::from_str(&admin) else {
            return;
        };
        if let Ok(mut conn) = options.connect().await {
            let _ = conn
                .execute(format!("drop database if exists {name} with (force)").as_str())
                .await;
            let _ = conn.close().await;
        }
        // And the test's Redis keys (its namespace is the db name).
        delete_redis_namespace(&redis_url(), &name).await;
    });
}

/// Runs `cleanup` to its end on a thread and runtime of its own, and waits:
/// for `Drop`, which runs inside a test's runtime and cannot await, so that
/// nothing is left behind.
pub fn cleanup_blocking(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(cleanup);
    })
    .join();
}

/// Changes a test makes to the server's settings.
pub type AdjustArgs = Arc<dyn Fn(&mut ServeArgs) + Send + Sync>;

/// Settings a test may change before the server starts.
pub struct AppOptions {
    pub redis: bool,
    /// Another Redis than the shared one (a test that stops its own).
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub request_timeout_ms: u64,
    /// Warm the memory tier from Postgres before serving.
    pub preload: bool,
    /// False turns the in-process tier off (routes 0), so every
    /// `service_role` resolve goes to Redis or Postgres.
    pub memory_tier: bool,
    /// A second database the service reads lookups from (a "replica").
    pub database_read_url: Option<String>,
    /// 0 = no limit, as in the service's settings.
    pub max_concurrent_requests: usize,
    pub tenant_max_concurrent: usize,
    pub max_message_bytes: usize,
    pub max_header_list_bytes: u32,
    /// Last word on the settings (e.g. a JWKS source), after the above.
    pub serve_args: Option<AdjustArgs>,
    /// OTLP metrics push (off unless a test runs a collector).
    pub metrics_export: MetricsExport,
}

impl Default for AppOptions {
    fn default() -> Self {
        let serve = ServeArgs::defaults();
        AppOptions {
            redis: true,
            redis_url: None,
            database_url: None,
            request_timeout_ms: 5_000,
            preload: false,
            memory_tier: true,
            database_read_url: None,
            max_concurrent_requests: serve.max_concurrent_requests,
            tenant_max_concurrent: serve.tenant_max_concurrent,
            max_message_bytes: serve.max_message_bytes,
            max_header_list_bytes: serve.max_header_list_bytes,
            serve_args: None,
            metrics_export: MetricsExport::Off,
        }
    }
}

/// The service running on a loopback port over its own database.
pub struct TestApp<M: PoolerMode> {
    pub addr: SocketAddr,
    /// The admin HTTP port (`/metrics`).
    pub admin_addr: SocketAddr,
    // Before `db`: fields drop in order, so the server is stopped before
    // the last replica's database is dropped.
    server: Server,
    /// Shared by replicas of the same deployment (`spawn_replica`).
    pub db: Arc<TestDb<M>>,
}

/// The task serving one `TestApp`, stopped on drop.
struct Server {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl<M: PoolerMode> TestApp<M> {
    pub async fn spawn() -> TestApp<M> {
        TestApp::spawn_with(TestDb::seeded().await, AppOptions::default()).await
    }

    pub async fn spawn_with(db: TestDb<M>, options: AppOptions) -> TestApp<M> {
        TestApp::spawn_on(Arc::new(db), options).await
    }

    /// Another replica of the same deployment: same database, same Redis
    /// namespace, its own memory tier.
    pub async fn spawn_replica(&self, options: AppOptions) -> TestApp<M> {
        TestApp::spawn_on(self.db.clone(), options).await
    }

    pub async fn spawn_on(db: Arc<TestDb<M>>, options: AppOptions) -> TestApp<M> {
        let (addr, admin_addr, server) =
            Server::start(&db.name, &db.direct_url, &db.service_url, options).await;
        TestApp {
            addr,
            admin_addr,
            server,
            db,
        }
    }
}

impl Server {
    /// The service over the test database `name`: (gRPC address, admin
    /// address, the running server).
    async fn start(
        name: &str,
        direct_url: &str,
        service_url: &str,
        options: AppOptions,
    ) -> (SocketAddr, SocketAddr, Server) {
        let mut args = ServeArgs {
            database_url: Some(
                options
                    .database_url
                    .clone()
                    .unwrap_or_else(|| service_url.to_owned()),
            ),
            redis_url: options
                .redis
                .then(|| options.redis_url.clone().unwrap_or_else(redis_url)),
            jwt_secret: Some(SECRET.into()),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_listen: ([127, 0, 0, 1], 0).into(),
            db_max_connections: 4,
            db_acquire_timeout_ms: 1_000,
            request_timeout_ms: options.request_timeout_ms,
            shutdown_timeout_ms: 1_000,
            listener_database_url: Some(direct_url.to_owned()),
            // Not the 5 ms default: the whole suite runs in parallel on
            // two cores, and a Redis answer slower than the timeout is a
            // miss, which tests that wait for a Redis hit would take for a
            // failure of the tier (seen under the calls race test's load).
            redis_timeout_ms: 100,
            redis_namespace: Some(name.to_owned()),
            cache_preload: options.preload,
            cache_max_routes: if options.memory_tier {
                ServeArgs::defaults().cache_max_routes
            } else {
                0
            },
            database_read_url: options.database_read_url.clone(),
            max_concurrent_requests: options.max_concurrent_requests,
            tenant_max_concurrent: options.tenant_max_concurrent,
            max_message_bytes: options.max_message_bytes,
            max_header_list_bytes: options.max_header_list_bytes,
            ..ServeArgs::defaults()
        };
        if let Some(adjust) = &options.serve_args {
            adjust(&mut args);
        }
        let config = ServeConfig::from_args(args).unwrap_or_else(|e| panic!("config: {e}"));
        let app = Application::build(config)
            .await
            .unwrap_or_else(|e| panic!("build: {e}"))
            .with_metrics_export(options.metrics_export.clone());
        let addr = app.local_addr();
        let admin_addr = app.admin_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = app
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
            // A start-up refusal shows up as a reset connection in the
            // test: say why, next to it.
            if let Err(error) = served {
                eprintln!("switchboard stopped: {error}");
            }
        });
        let server = Server {
            stop: Some(stop),
            task: Some(task),
        };
        (addr, admin_addr, server)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Every Redis key of a deployment namespace (`switchboard:v3:<namespace>:`),
/// deleted; failures ignored (a clean-up).
pub async fn delete_redis_namespace(redis_url: &str, namespace: &str) {
    let Ok(client) = redis::Client::open(redis_url) else {
        return;
    };
    let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("switchboard:v3:{namespace}:*"))
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
    }
}

/// A channel to a server that may still be starting: retried for 2 s.
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = format!("http://{addr}");
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(endpoint.clone())
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect()
            .await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {endpoint} never accepted a connection");
}

impl<M: PoolerMode> TestApp<M> {
    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    pub async fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel().await)
    }

    pub async fn calls(&self) -> CallServiceClient<Channel> {
        CallServiceClient::new(self.channel().await)
    }

    pub async fn caller_rules(&self) -> CallerRuleServiceClient<Channel> {
        CallerRuleServiceClient::new(self.channel().await)
    }

    pub async fn customers(&self) -> CustomerServiceClient<Channel> {
        CustomerServiceClient::new(self.channel().await)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }
}

/// GET over HTTP/1.1 on a plain TCP connection: (status, headers, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut response = Vec::new();
    // A bound for a hang, not a speed check: 5 s was hit twice while a
    // saturating load benchmark shared this two-core machine with the suite.
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    let response = String::from_utf8(response).unwrap_or_else(|e| panic!("utf-8: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {response}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, head.to_owned(), body.to_owned())
}

/// The `/metrics` page of the admin port at `addr`, now (its body).
pub async fn metrics_page(addr: SocketAddr) -> String {
    let (status, head, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    body
}

/// One sample of `/metrics` at `addr`: the series `name` with every label in
/// `labels` (others may be there too), summed; `None` when no such series
/// is on the page.
pub async fn metric_at(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let page = metrics_page(addr).await;
    let values: Vec<f64> = page
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// One sample of `/metrics` at `addr`: the series written exactly as
/// `series` (labels included, e.g. `name{source="postgres"}`), or `None`.
pub async fn series_at(addr: SocketAddr, series: &str) -> Option<f64> {
    metrics_page(addr).await.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// JSON to `google.protobuf.Struct`, for `llm_config`.
pub fn to_struct(json: Value) -> prost_types::Struct {
    fn kind(value: Value) -> prost_types::Value {
        use prost_types::value::Kind;
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s),
            Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.into_iter().map(kind).collect(),
            }),
            Value::Object(map) => Kind::StructValue(to_struct(Value::Object(map))),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match json {
        Value::Object(map) => prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, kind(v))).collect(),
        },
        _ => prost_types::Struct::default(),
    }
}

/// A new agent for `org_id` ("" = the caller's own org).
pub fn new_agent(org_id: &str, phone: &str) -> switchboard::pb::Agent {
    switchboard::pb::Agent {
        org_id: org_id.into(),
        name: "Night Line".into(),
        phone_number: phone.into(),
        voice_id: "shimmer".into(),
        llm_config: Some(to_struct(
            serde_json::json!({"model": "gpt-4o", "temperature": 0.2}),
        )),
        is_active: Some(true),
        ..Default::default()
    }
}

pub fn new_customer(org_id: &str, phone: &str, name: &str) -> switchboard::pb::Customer {
    switchboard::pb::Customer {
        org_id: org_id.into(),
        phone: phone.into(),
        name: name.into(),
        email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
        ..Default::default()
    }
}

/// `UpdateAgent` of the voice alone.
pub fn set_voice(agent_id: &str, voice_id: &str) -> switchboard::pb::UpdateAgentRequest {
    switchboard::pb::UpdateAgentRequest {
        agent: Some(switchboard::pb::Agent {
            id: agent_id.into(),
            voice_id: voice_id.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["voice_id".into()],
        }),
    }
}

/// `UpdateAgent` of the LLM configuration alone.
pub fn set_llm_config(agent_id: &str, config: Value) -> switchboard::pb::UpdateAgentRequest {
    switchboard::pb::UpdateAgentRequest {
        agent: Some(switchboard::pb::Agent {
            id: agent_id.into(),
            llm_config: Some(to_struct(config)),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["llm_config".into()],
        }),
    }
}

// Resolving as the media servers do, and waiting for a condition: shared by
// the cache and Redis topology tests.

pub fn resolve_req(called: &str, caller: &str) -> switchboard::pb::ResolveAgentRequest {
    switchboard::pb::ResolveAgentRequest {
        called_number: called.into(),
        caller_number: caller.into(),
        ..Default::default()
    }
}

/// Resolves and returns the answer with the tier that served it.
pub async fn resolve_as(
    client: &mut AgentServiceClient<Channel>,
    who: Who,
    called: &str,
    caller: &str,
) -> Result<(switchboard::pb::ResolveAgentResponse, String), tonic::Status> {
    let response = client
        .resolve_agent(as_who(who, resolve_req(called, caller)))
        .await?;
    let tier = response
        .metadata()
        .get("x-switchboard-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut answer = response.into_inner();
    // The clock's variables change by the minute: answers compared whole
    // (cold against warm, before against after) must not depend on when.
    answer
        .variables
        .retain(|key, _| !matches!(key.as_str(), "local_date" | "local_time" | "local_weekday"));
    Ok((answer, tier))
}

pub async fn service_resolve(
    client: &mut AgentServiceClient<Channel>,
    called: &str,
) -> Result<(switchboard::pb::ResolveAgentResponse, String), tonic::Status> {
    resolve_as(client, Who::Service, called, "").await
}

pub fn voice(answer: &switchboard::pb::ResolveAgentResponse) -> String {
    answer
        .agent
        .as_ref()
        .map(|a| a.voice_id.clone())
        .unwrap_or_default()
}

/// Resolves `number` as `service_role` until an answer passes `check`
/// (answer, tier), for at most `limit`, naming `what` when it fails.
pub async fn service_resolves_until(
    agents: &AgentServiceClient<Channel>,
    number: &str,
    what: &str,
    limit: Duration,
    check: impl Fn(&switchboard::pb::ResolveAgentResponse, &str) -> bool,
) {
    let check = &check;
    within_named(what, limit, || {
        let mut agents = agents.clone();
        async move {
            service_resolve(&mut agents, number)
                .await
                .is_ok_and(|(answer, tier)| check(&answer, &tier))
        }
    })
    .await;
}

/// Polls until `check` holds, for at most `limit`; returns how long it took.
pub async fn within<F, Fut>(limit: Duration, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within_named("the condition", limit, check).await
}

/// `within`, naming what was awaited when it fails.
pub async fn within_named<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl<M: PoolerMode> TestDb<M> {
    /// `switchboard:v3:<namespace>:<database identity>:`, how every Redis
    /// key and the channel of a `TestApp` on this database begin.
    /// `switchboard:v2:<namespace>:<database identity>:`: the live calls'
    /// keys and the record backlog keep their own format version.
    pub async fn live_prefix(&self) -> String {
        self.redis_prefix()
            .await
            .replacen("switchboard:v3:", "switchboard:v2:", 1)
    }

    pub async fn redis_prefix(&self) -> String {
        let identity: Uuid =
            sqlx::query_scalar("select id from switchboard_private.database_identity")
                .fetch_one(&self.pool)
                .await
                .unwrap_or_else(|e| panic!("database identity: {e}"));
        format!("switchboard:v3:{}:{}:", self.name, identity.simple())
    }

    /// Holds the lock on Acme's customer for `SHARED_CALLER`, so every
    /// upsert of that (org, phone) waits in Postgres until the returned
    /// transaction rolls back.
    pub async fn lock_acme_customer(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut blocker = self.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("select 1 from public.customers where id = $1::uuid for update")
            .bind(ACME_CUSTOMER)
            .execute(&mut *blocker)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        blocker
    }

    /// Statements of this database waiting on a lock now.
    pub async fn lock_waiters(&self) -> i64 {
        sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}
