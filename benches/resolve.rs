//! `ResolveAgent` end to end over a real tonic server on loopback, against
//! the real Postgres and Redis, beside the floors measured in the same run:
//! a bare gRPC health check on the same server, a raw Redis GET, and a raw
//! indexed Postgres lookup (with and without the RLS claims applied).
//!
//! criterion reports means; every sample is also recorded in an HDR
//! histogram, and the table at the end gives p50 / p99 / p99.9 and the ratio
//! to the health-check floor. The run fails if any p99 exceeds 50 ms (the
//! platform's budget for a call-path lookup).
//!
//! `cargo bench --bench resolve` (needs Postgres on 127.0.0.1:5432 and Redis
//! on 127.0.0.1:6379, as the tests do; override with SWITCHBOARD_TEST_*).

#[path = "bare/service.rs"]
mod bare;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::BTreeMap,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion};
use hdrhistogram::Histogram;
use prost::Message;
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, Executor, PgConnection};
use switchboard::{
    auth::{mint_token, DbRole, Jwks, JwtVerifier},
    config::{ServeArgs, ServeConfig},
    domain::PhoneNumber,
    pb::{self, agent_service_client::AgentServiceClient},
    startup::Application,
};
use switchboard_testkit::{
    direct::{authed, connect, delete_redis_namespace},
    keys,
};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use uuid::Uuid;

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const ACME_NUMBER: &str = "+18005550100";
const ACME_VIEWER: &str = "a0000000-0000-4000-8000-000000000003";
const P99_BUDGET: Duration = Duration::from_millis(50);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

type Recorder = Arc<Mutex<BTreeMap<String, Histogram<u64>>>>;

fn record(recorder: &Recorder, case: &str, latency: Duration) {
    if let Ok(mut map) = recorder.lock() {
        let histogram = map.entry(case.to_owned()).or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap_or_else(|e| panic!("{e}"))
        });
        let _ = histogram.record(latency.as_nanos().max(1) as u64);
    }
}

struct Deployment {
    database: String,
    admin_url: String,
    direct_url: String,
    redis_url: String,
    namespace: String,
}

impl Deployment {
    async fn create() -> Deployment {
        let admin_url = env_or(
            "SWITCHBOARD_TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let redis_url = env_or("SWITCHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379");
        let database = format!("switchboard_bench_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("postgres at {admin_url}: {e}"));
        admin
            .execute(format!("create database {database}").as_str())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let options = PgConnectOptions::from_str(&admin_url).unwrap_or_else(|e| panic!("{e}"));
        let direct_url = format!(
            "postgres://{}@{}:{}/{database}",
            options.get_username(),
            options.get_host(),
            options.get_port()
        );
        switchboard::migrate::run(&direct_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        switchboard::migrate::seed(&direct_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Deployment {
            namespace: database.clone(),
            database,
            admin_url,
            direct_url,
            redis_url,
        }
    }

    /// Settings every server of this deployment shares.
    fn args(&self) -> ServeArgs {
        ServeArgs {
            database_url: Some(self.direct_url.clone()),
            jwt_secret: Some(SECRET.into()),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_listen: ([127, 0, 0, 1], 0).into(),
            db_max_connections: 8,
            redis_namespace: Some(self.namespace.clone()),
            ..ServeArgs::defaults()
        }
    }

    /// Starts a server with `args`, serving until `stop` completes.
    async fn start(
        args: ServeArgs,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::net::SocketAddr {
        let config = ServeConfig::from_args(args).unwrap_or_else(|e| panic!("{e}"));
        let app = Application::build(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = app.local_addr();
        tokio::spawn(app.run_until(stop));
        addr
    }

    /// A server of this deployment; `memory: false` turns its memory tier off.
    async fn serve(&self, memory: bool, redis: bool) -> std::net::SocketAddr {
        let args = ServeArgs {
            redis_url: redis.then(|| self.redis_url.clone()),
            cache_max_routes: if memory { 1_000_000 } else { 0 },
            ..self.args()
        };
        Self::start(args, std::future::pending()).await
    }

    /// A server with the memory tier preloaded from Postgres (no Redis);
    /// stopped when the sender is dropped.
    async fn serve_preloaded(&self) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let args = ServeArgs {
            cache_max_routes: 2_000_000,
            cache_preload: true,
            cache_ttl_secs: 3600,
            ..self.args()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        (Self::start(args, stopped).await, stop)
    }

    /// `n` more agents in Acme, numbers +12000000001 …, bulk-inserted with
    /// triggers off (nothing listens yet).
    async fn add_agents(&self, n: u64) {
        let mut db = PgConnection::connect(&self.direct_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let sql = format!(
            "set session_replication_role = replica; \
             insert into public.agents (org_id, name, phone_number, voice_id, llm_config) \
             select '0a000000-0000-4000-8000-00000000000a', 'Agent ' || i, \
                    '+1' || (2000000000 + i)::text, 'alloy', \
                    '{{\"model\": \"gpt-4o-mini\", \"temperature\": 0.3, \"greeting\": \"Thanks for calling, how can I help?\"}}'::jsonb \
             from generate_series(1, {n}) as i; \
             set session_replication_role = origin; analyze public.agents;"
        );
        db.execute(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn drop_database(&self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(format!("drop database if exists {} with (force)", self.database).as_str())
                .await;
        }
        delete_redis_namespace(&self.redis_url, &self.namespace).await;
    }
}

/// A day-long token signed with the bench's secret.
fn bench_token(role: DbRole, sub: Option<Uuid>) -> String {
    mint_token(SECRET, role, sub, 86_400, Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn resolve_request() -> pb::ResolveAgentRequest {
    pb::ResolveAgentRequest {
        called_number: ACME_NUMBER.into(),
        caller_number: String::new(),
        ..Default::default()
    }
}

/// Resolves once and checks which tier answered, so each case measures
/// what it says.
async fn expect_tier(client: &mut AgentServiceClient<Channel>, token: &str, tier: &str) {
    let response = client
        .resolve_agent(authed(token, resolve_request()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let got = response
        .metadata()
        .get("x-switchboard-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(got, tier, "the case must be served from {tier}");
}

/// One `ResolveAgent` call per invocation, on a clone of `client`.
fn resolve_call(
    client: &AgentServiceClient<Channel>,
    token: &str,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let client = client.clone();
    let token = token.to_owned();
    move || {
        let mut client = client.clone();
        let token = token.clone();
        Box::pin(async move {
            client
                .resolve_agent(authed(&token, resolve_request()))
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
        })
    }
}

fn end_to_end(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    recorder: &Recorder,
) -> Vec<AllocationRow> {
    let deployment = rt.block_on(Deployment::create());
    let service = bench_token(DbRole::ServiceRole, None);
    let tenant = bench_token(DbRole::Authenticated, Uuid::parse_str(ACME_VIEWER).ok());

    let (full_addr, redis_only_addr, db_only_addr) = rt.block_on(async {
        (
            deployment.serve(true, true).await,
            deployment.serve(false, true).await,
            deployment.serve(false, false).await,
        )
    });
    let (full, redis_only, db_only, health, redis, mut pg) = rt.block_on(async {
        let (full, redis_only, db_only) = (full_addr, redis_only_addr, db_only_addr);
        let full_channel = connect(full).await;
        let mut full = AgentServiceClient::new(full_channel.clone());
        let mut redis_only = AgentServiceClient::new(connect(redis_only).await);
        let mut db_only = AgentServiceClient::new(connect(db_only).await);
        // Warm: the first call fills memory and Redis.
        full.resolve_agent(authed(&service, resolve_request()))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        expect_tier(&mut full, &service, "memory").await;
        expect_tier(&mut redis_only, &service, "redis").await;
        expect_tier(&mut db_only, &service, "db").await;
        expect_tier(&mut full, &tenant, "db").await;
        let health = HealthClient::new(full_channel);
        let redis = redis::Client::open(deployment.redis_url.as_str())
            .unwrap_or_else(|e| panic!("{e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pg = PgConnectOptions::from_str(&deployment.direct_url)
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (full, redis_only, db_only, health, redis, pg)
    });
    // Keys are scoped to the database's identity (`cache/redis.rs`).
    let identity: Uuid = rt
        .block_on(
            sqlx::query_scalar("select id from switchboard_private.database_identity")
                .fetch_one(&mut pg),
        )
        .unwrap_or_else(|e| panic!("database identity: {e}"));
    let route_key = format!(
        "switchboard:v3:{}:{}:route:{ACME_NUMBER}",
        deployment.namespace,
        identity.simple()
    );
    let tenant_claims =
        format!(r#"{{"role":"authenticated","sub":"{ACME_VIEWER}","aud":"authenticated"}}"#);

    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(60);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));

    macro_rules! case {
        ($name:literal, $call:expr) => {
            group.bench_function(BenchmarkId::from_parameter($name), |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let recorder = recorder.clone();
                    // Each call clones its client (a channel handle), the
                    // same cost in every case, the floor included.
                    let run = $call;
                    async move {
                        let started = Instant::now();
                        for _ in 0..iters {
                            let t = Instant::now();
                            run().await;
                            record(&recorder, $name, t.elapsed());
                        }
                        started.elapsed()
                    }
                })
            });
        };
    }

    case!("floor: grpc health check", {
        let health = health.clone();
        move || {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"));
            }
        }
    });
    case!("resolve: memory tier", resolve_call(&full, &service));
    case!("resolve: redis tier", resolve_call(&redis_only, &service));
    case!(
        "resolve: postgres, service_role",
        resolve_call(&db_only, &service)
    );
    case!(
        "resolve: postgres, tenant token (RLS)",
        resolve_call(&full, &tenant)
    );
    case!("floor: raw redis GET", {
        let redis = redis.clone();
        let key = route_key.clone();
        move || {
            let mut redis = redis.clone();
            let key = key.clone();
            async move {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(bytes.is_some());
            }
        }
    });
    drop(group);

    // The Postgres floors need `&mut` on one connection: plain loops.
    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(60);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    let pg = &mut pg;
    group.bench_function("floor: raw indexed postgres lookup", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    let row = sqlx::query(
                        "select id, org_id, name, phone_number, voice_id, llm_config, is_active \
                         from public.agents where phone_number = $1",
                    )
                    .bind(ACME_NUMBER)
                    .fetch_optional(&mut *pg)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                    assert!(row.is_some());
                    record(recorder, "floor: raw indexed postgres lookup", t.elapsed());
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("floor: raw postgres lookup with RLS claims", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    let row = sqlx::query(
                        "select * from switchboard_private.resolve_number($1, 'authenticated', $2, null)",
                    )
                    .bind(&tenant_claims)
                    .bind(ACME_NUMBER)
                    .fetch_optional(&mut *pg)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                    assert!(row.is_some());
                    record(recorder, "floor: raw postgres lookup with RLS claims", t.elapsed());
                }
                started.elapsed()
            })
        })
    });
    drop(group);
    let rows = allocations(rt, &deployment, full_addr, redis_only_addr, db_only_addr);
    rt.block_on(deployment.drop_database());
    rows
}

fn micro(c: &mut Criterion) {
    let mut group = c.benchmark_group("micro");
    group.measurement_time(Duration::from_secs(2));
    let verifier = JwtVerifier::new(SECRET);
    let token = bench_token(DbRole::ServiceRole, None);
    group.bench_function("jwt verify (HS256, repeated token)", |b| {
        b.iter(|| verifier.verify(std::hint::black_box(&token)))
    });
    // Asymmetric keys from a JWKS (ES256 is what Supabase issues by default).
    let (ec, rsa) = (keys::ec_key("ec-bench"), keys::rsa_key("rsa-bench"));
    let jwks = Jwks::from_document(keys::jwks_document(&[&ec, &rsa]).as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let with_jwks = JwtVerifier::new(SECRET).with_jwks(jwks);
    let claims = serde_json::json!({
        "role": "service_role",
        "exp": jsonwebtoken::get_current_timestamp() + 86_400,
    });
    for (name, key) in [
        ("jwt verify (ES256, JWKS, repeated token)", &ec),
        ("jwt verify (RS256, JWKS, repeated token)", &rsa),
    ] {
        let token = key.sign(&claims);
        assert!(with_jwks.verify(&token).is_ok(), "{name}");
        group.bench_function(name, |b| {
            b.iter(|| with_jwks.verify(std::hint::black_box(&token)))
        });
    }
    group.bench_function("phone: canonical E.164", |b| {
        b.iter(|| PhoneNumber::parse(std::hint::black_box("+18005550100")))
    });
    group.bench_function("phone: human form", |b| {
        b.iter(|| PhoneNumber::parse(std::hint::black_box("+1 (800) 555-0100")))
    });
    let response = pb::ResolveAgentResponse {
        agent: Some(Box::new(pb::Agent {
            id: Uuid::new_v4().to_string(),
            org_id: Uuid::new_v4().to_string(),
            name: "Acme Reception".into(),
            phone_number: ACME_NUMBER.into(),
            voice_id: "alloy".into(),
            llm_config: Some(prost_types::Struct {
                fields: [
                    (
                        "model".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue("gpt-4o-mini".into())),
                        },
                    ),
                    (
                        "system_prompt".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(
                                "You are the front desk of Acme Dental.".into(),
                            )),
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            }),
            is_active: Some(true),
            ..Default::default()
        })),
        organization: Some(Box::new(pb::Organization {
            id: Uuid::new_v4().to_string(),
            name: "Acme Dental".into(),
            slug: "acme-dental".into(),
            ..Default::default()
        })),
        caller: None,
        ..Default::default()
    };
    group.bench_function("encode ResolveAgent answer", |b| {
        b.iter(|| std::hint::black_box(&response).encode_to_vec())
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let memory = switchboard::cache::MemoryTier::new(1_000_000, 1_000, Duration::from_secs(300));
    let packed = switchboard::cache::pack(&response);
    rt.block_on(async {
        for i in 0..10_000u32 {
            memory
                .insert_route(
                    format!("+1800{i:07}").into(),
                    packed.clone(),
                    switchboard::cache::Tier::Db,
                )
                .await;
        }
    });
    let key: Arc<str> = "+18000004242".into();
    group.bench_function("memory tier hit (lookup + full decode)", |b| {
        b.to_async(&rt).iter(|| async {
            memory
                .route(std::hint::black_box(&key))
                .await
                .and_then(|(packed, _)| pb::ResolveAgentResponse::decode(packed).ok())
        })
    });
    // What telemetry adds per call with no OTLP endpoint (no subscriber
    // here: the spans are disabled, as in production without one).
    let metrics = switchboard::observability::metrics::Metrics::new();
    group.bench_function("telemetry: method lookup + record request", |b| {
        b.iter(|| {
            let method = metrics.method(std::hint::black_box(
                "/switchboard.v1.AgentService/ResolveAgent",
            ));
            metrics.record_request(
                method,
                tonic::Code::Ok,
                Some(b"memory"),
                Duration::from_micros(90),
            );
        })
    });
    group.bench_function("telemetry: memory hit with span + counter", |b| {
        b.to_async(&rt).iter(|| async {
            let span = tracing::debug_span!(target: "switchboard::cache", "cache.memory");
            let found = tracing::Instrument::instrument(
                memory.route(std::hint::black_box(&key)),
                span.clone(),
            )
            .await;
            span.record("cache.hit", found.is_some());
            metrics.memory_routes.hit.inc();
            found
        })
    });
    group.bench_function("telemetry: render /metrics", |b| {
        b.iter(|| metrics.render(&switchboard::observability::metrics::Gauges::default()))
    });
    group.finish();
}

/// Resident set size of this process (server and client), bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

struct ScaleRow {
    agents: u64,
    preload: Duration,
    rss_before: u64,
    rss_after: u64,
}

/// The memory tier at 1 k, 100 k and 1 M agents (override with
/// SWITCHBOARD_BENCH_SCALE=1000,100000): every agent preloaded, then
/// ResolveAgent for numbers spread over all of them, one call in flight.
/// The same server's health check is measured beside it as the floor.
fn scale(rt: &tokio::runtime::Runtime, recorder: &Recorder) -> Vec<ScaleRow> {
    let sizes: Vec<u64> = env_or("SWITCHBOARD_BENCH_SCALE", "1000,100000,1000000")
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let calls: u64 = env_or("SWITCHBOARD_BENCH_SCALE_CALLS", "20000")
        .parse()
        .unwrap_or(20_000);
    let service = bench_token(DbRole::ServiceRole, None);
    let mut rows = Vec::new();
    for agents in sizes {
        rt.block_on(async {
            let deployment = Deployment::create().await;
            deployment.add_agents(agents).await;
            let rss_before = resident_bytes();
            let started = Instant::now();
            let (addr, stop) = deployment.serve_preloaded().await;
            let channel = connect(addr).await;
            let mut client = AgentServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            // The server answers once the preload is done.
            health
                .check(HealthCheckRequest::default())
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
            let preload = started.elapsed();
            let rss_after = resident_bytes();
            // A number far from the start of the range must already be hot.
            let probe = format!("+1{}", 2_000_000_000 + agents);
            let answer = client
                .resolve_agent(authed(
                    &service,
                    pb::ResolveAgentRequest {
                        called_number: probe.clone(),
                        caller_number: String::new(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap_or_else(|s| panic!("{probe}: {s:?}"));
            let tier = answer
                .metadata()
                .get("x-switchboard-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert_eq!(tier, "memory", "preloaded: {probe} must be a memory hit");
            let case = format!("scale: memory tier, {agents} agents");
            let floor = format!("scale: health check beside {agents} agents");
            // A fixed walk over the numbers (an LCG), the same in every run.
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            for _ in 0..calls {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let number = format!("+1{}", 2_000_000_001 + (x >> 11) % agents);
                let request = authed(
                    &service,
                    pb::ResolveAgentRequest {
                        called_number: number,
                        caller_number: String::new(),
                        ..Default::default()
                    },
                );
                let begun = Instant::now();
                client
                    .resolve_agent(request)
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"));
                record(recorder, &case, begun.elapsed());
                let begun = Instant::now();
                health
                    .check(HealthCheckRequest::default())
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"));
                record(recorder, &floor, begun.elapsed());
            }
            drop(stop);
            deployment.drop_database().await;
            rows.push(ScaleRow {
                agents,
                preload,
                rss_before,
                rss_after,
            });
        });
    }
    rows
}

fn report_scale(rows: &[ScaleRow]) {
    if rows.is_empty() {
        return;
    }
    println!("\n## scale: memory tier preloaded with N agents (resident memory of this process: server and client)\n");
    println!("| agents | preload | RSS before | RSS after | added per agent |");
    println!("|---:|---:|---:|---:|---:|");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1_048_576.0);
    for row in rows {
        println!(
            "| {} | {:.2} s | {} | {} | {} B |",
            row.agents,
            row.preload.as_secs_f64(),
            mib(row.rss_before),
            mib(row.rss_after),
            row.rss_after.saturating_sub(row.rss_before) / row.agents.max(1),
        );
    }
}

fn report(recorder: &Recorder) -> bool {
    let Ok(map) = recorder.lock() else {
        return false;
    };
    let floor = map
        .get("floor: grpc health check")
        .map(|h| (h.value_at_quantile(0.5), h.len()));
    println!("\n## end to end, one call in flight (latency from HDR histograms of every sample)\n");
    println!(
        "| case | samples | p50 | p99 | p99.9 | max | calls/s (1 in flight) | p50 / health p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut within_budget = true;
    for (case, h) in map.iter() {
        let us = |ns: u64| format!("{:.1} µs", ns as f64 / 1000.0);
        let p50 = h.value_at_quantile(0.5);
        let p99 = h.value_at_quantile(0.99);
        let ratio = floor
            .map(|(f, _)| format!("{:.2}×", p50 as f64 / f as f64))
            .unwrap_or_default();
        println!(
            "| {case} | {} | {} | {} | {} | {} | {:.0} | {ratio} |",
            h.len(),
            us(p50),
            us(p99),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
            1e9 / h.mean(),
        );
        if Duration::from_nanos(p99) > P99_BUDGET {
            eprintln!("FAIL: {case} p99 {} exceeds the 50 ms budget", us(p99));
            within_budget = false;
        }
    }
    within_budget
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let recorder: Recorder = Arc::default();
    let mut criterion = Criterion::default().configure_from_args();
    micro(&mut criterion);
    let allocated = end_to_end(&mut criterion, &rt, &recorder);
    criterion.final_summary();
    // `cargo test --all-targets` runs this binary without `--bench` (criterion's
    // quick test mode): the scale phase, minutes of setup, is for real runs.
    let benching = std::env::args().any(|a| a == "--bench");
    let scaled = if benching {
        scale(&rt, &recorder)
    } else {
        Vec::new()
    };
    report_scale(&scaled);
    report_allocations(&allocated);
    if !report(&recorder) {
        std::process::exit(1);
    }
}

/// Counts every allocation while `COUNTING` is on, except on threads that
/// said they are the client's (`UNCOUNTED`): the allocation phase measures
/// what the servers, on the bench's runtime, allocate per call.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static UNCOUNTED: Cell<bool> = const { Cell::new(false) };
}

impl CountingAllocator {
    fn count(size: usize) {
        if COUNTING.load(Ordering::Relaxed) && !UNCOUNTED.try_with(Cell::get).unwrap_or(true) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting
// touches only atomics and a const thread-local (no allocation).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// One path's server-side allocations per call.
struct AllocationRow {
    case: &'static str,
    per_call: f64,
    bytes_per_call: f64,
}

/// The servers' allocations per call on each path, beside the bare tonic
/// server's (`benches/bare/`) for the same call: the client runs on a
/// thread of its own that is not counted; the servers run on the bench's
/// runtime, and everything they allocate while a case runs is counted
/// (their background tasks too: a probe every few seconds, negligible over
/// the calls of a case). Calls one at a time, after a warm-up.
fn allocations(
    rt: &tokio::runtime::Runtime,
    deployment: &Deployment,
    full: std::net::SocketAddr,
    redis_only: std::net::SocketAddr,
    db_only: std::net::SocketAddr,
) -> Vec<AllocationRow> {
    let service = bench_token(DbRole::ServiceRole, None);
    let tenant = bench_token(DbRole::Authenticated, Uuid::parse_str(ACME_VIEWER).ok());
    let calls: u64 = if std::env::args().any(|a| a == "--bench") {
        5_000
    } else {
        200
    };
    // StartCall admits every call: no limit reached, so each is the
    // answered path (admission + record).
    rt.block_on(async {
        let mut db = PgConnection::connect(&deployment.direct_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        db.execute("update public.organizations set max_concurrent_calls = 100000")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let bare_addr = rt.block_on(async {
        let mut client = AgentServiceClient::new(connect(full).await);
        let answer = client
            .resolve_agent(authed(&service, resolve_request()))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner()
            .encode_to_vec();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(bare::serve(listener, answer.into()));
        addr
    });
    let client = std::thread::spawn(move || {
        UNCOUNTED.with(|u| u.set(true));
        let client_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        client_rt.block_on(async move {
            let mut rows = Vec::new();
            let mut bare_health = HealthClient::new(connect(bare_addr).await);
            let mut health = HealthClient::new(connect(full).await);
            let mut bare_resolve = AgentServiceClient::new(connect(bare_addr).await);
            let mut full_client = AgentServiceClient::new(connect(full).await);
            let mut redis_client = AgentServiceClient::new(connect(redis_only).await);
            let mut db_client = AgentServiceClient::new(connect(db_only).await);
            let mut calls_client =
                pb::call_service_client::CallServiceClient::new(connect(full).await);
            macro_rules! measure {
                ($case:literal, $call:expr) => {{
                    for _ in 0..50 {
                        $call;
                    }
                    let (count, bytes) = (
                        ALLOCATIONS.load(Ordering::Relaxed),
                        ALLOCATED_BYTES.load(Ordering::Relaxed),
                    );
                    COUNTING.store(true, Ordering::Relaxed);
                    for _ in 0..calls {
                        $call;
                    }
                    COUNTING.store(false, Ordering::Relaxed);
                    rows.push(AllocationRow {
                        case: $case,
                        per_call: (ALLOCATIONS.load(Ordering::Relaxed) - count) as f64
                            / calls as f64,
                        bytes_per_call: (ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes) as f64
                            / calls as f64,
                    });
                }};
            }
            let check = || HealthCheckRequest {
                service: String::new(),
            };
            measure!(
                "bare tonic server: health check",
                bare_health
                    .check(check())
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "health check",
                health
                    .check(check())
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "bare tonic server: ResolveAgent (fixed answer)",
                bare_resolve
                    .resolve_agent(authed(&service, resolve_request()))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "ResolveAgent, memory tier",
                full_client
                    .resolve_agent(authed(&service, resolve_request()))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "ResolveAgent, Redis tier",
                redis_client
                    .resolve_agent(authed(&service, resolve_request()))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "ResolveAgent, Postgres (service_role)",
                db_client
                    .resolve_agent(authed(&service, resolve_request()))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "ResolveAgent, Postgres under RLS (tenant)",
                full_client
                    .resolve_agent(authed(&tenant, resolve_request()))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            measure!(
                "StartCall, warm route (admitted, recorded)",
                calls_client
                    .start_call(authed(
                        &service,
                        pb::StartCallRequest {
                            called_number: ACME_NUMBER.into(),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
            );
            rows
        })
    });
    client
        .join()
        .unwrap_or_else(|_| panic!("the allocation client failed"))
}

fn report_allocations(rows: &[AllocationRow]) {
    println!("\n## allocations per call, server side (counting allocator; calls one at a time)\n");
    println!("| path | allocations per call | bytes allocated per call |");
    println!("|---|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.0} |",
            row.case, row.per_call, row.bytes_per_call
        );
    }
}
