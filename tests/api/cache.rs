//! The cache tiers: which tier answers, invalidation within a second from any
//! write path, isolation on every tier, and what happens when Redis or
//! Postgres goes away while the service runs.

use std::time::{Duration, Instant};

use prost_types::FieldMask;
use tonic::{transport::Channel, Code};

use crate::helpers::*;
use switchboard::pb::{agent_service_client::AgentServiceClient, Agent, UpdateAgentRequest};

/// Changes Acme's voice with plain SQL (as Studio would) and waits, at
/// most a second, until `client` resolves the new voice.
async fn set_acme_voice_out_of_band(
    app: &TestApp,
    client: &AgentServiceClient<Channel>,
    new_voice: &'static str,
) {
    app.db
        .exec(&format!(
            "update public.agents set voice_id = '{new_voice}' where id = '{ACME_AGENT}'"
        ))
        .await;
    within(Duration::from_secs(1), || {
        let mut client = client.clone();
        async move {
            service_resolve(&mut client, ACME_NUMBER)
                .await
                .map(|(a, _)| voice(&a) == new_voice)
                .unwrap_or(false)
        }
    })
    .await;
}

/// Whether `key` is in Redis now (false if Redis cannot be reached).
pub async fn key_exists(client: &redis::Client, key: &str) -> bool {
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let exists: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap_or(0);
    exists == 1
}

#[tokio::test]
async fn tiers_fill_db_then_memory_then_redis_for_a_fresh_replica() {
    let app = TestApp::spawn().await;
    let mut first = app.agents().await;
    let (answer, tier) = service_resolve(&mut first, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
    assert_eq!(voice(&answer), "alloy");
    let (again, tier) = service_resolve(&mut first, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "memory");
    assert_eq!(again, answer);

    // A fresh replica is warm at once from Redis (the fill is written there
    // in the background: give it a moment).
    let replica = app.spawn_replica(AppOptions::default()).await;
    let mut second = replica.agents().await;
    // The fill is written to Redis in the background: wait for the key.
    let client = redis::Client::open(redis_url()).unwrap_or_else(|e| panic!("{e}"));
    let key = format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await);
    within(Duration::from_secs(1), || {
        let client = client.clone();
        let key = key.clone();
        async move { key_exists(&client, &key).await }
    })
    .await;
    let (found, tier) = service_resolve(&mut second, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "redis");
    assert_eq!(found.agent, answer.agent);
    let (_, tier) = service_resolve(&mut second, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "memory");

    // Tenants are answered by Postgres under RLS, every time.
    let (_, tier) = resolve_as(&mut first, Who::AcmeViewer, ACME_NUMBER, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
}

#[tokio::test]
async fn warming_as_one_caller_never_serves_another_tenant() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    // Warm both numbers as the platform, and again as each tenant.
    for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
        service_resolve(&mut agents, number)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        service_resolve(&mut agents, number)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    for who in Who::TENANTS {
        let (own, _) = who.orgs();
        let (own_number, other_number) = who.numbers();
        let (answer, _) = resolve_as(&mut agents, who, own_number, SHARED_CALLER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(answer.organization.unwrap_or_default().id, own);
        assert_eq!(answer.caller.unwrap_or_default().org_id, own);
        // The other org's number is cached, warm, and still NOT_FOUND.
        assert_code(
            agents
                .resolve_agent(as_who(who, resolve_req(other_number, SHARED_CALLER)))
                .await,
            Code::NotFound,
        );
    }
    // Warmed by a tenant, read by the platform and by the other tenant.
    let fresh = TestApp::spawn().await;
    let mut agents = fresh.agents().await;
    resolve_as(&mut agents, Who::AcmeAdmin, ACME_NUMBER, SHARED_CALLER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_code(
        agents
            .resolve_agent(as_who(Who::BluebirdAdmin, resolve_req(ACME_NUMBER, "")))
            .await,
        Code::NotFound,
    );
    // The caller record is per org on every tier: warm Acme's caller, then
    // the same caller on Bluebird's number is Bluebird's customer.
    for _ in 0..2 {
        let (acme, _) = resolve_as(&mut agents, Who::Service, ACME_NUMBER, SHARED_CALLER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(acme.caller.unwrap_or_default().id, ACME_CUSTOMER);
        let (bluebird, _) = resolve_as(&mut agents, Who::Service, BLUEBIRD_NUMBER, SHARED_CALLER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(bluebird.caller.unwrap_or_default().id, BLUEBIRD_CUSTOMER);
    }
}

#[tokio::test]
async fn writes_through_the_service_are_seen_by_every_replica() {
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(AppOptions::default()).await;
    let mut first = app.agents().await;
    let mut second = replica.agents().await;
    for client in [&mut first, &mut second] {
        service_resolve(client, ACME_NUMBER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        let (_, tier) = service_resolve(client, ACME_NUMBER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(tier, "memory");
    }
    first
        .update_agent(as_who(
            Who::AcmeManager,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: ACME_AGENT.into(),
                    voice_id: "nova".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["voice_id".into()],
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    // The writing replica: at once.
    let (answer, _) = service_resolve(&mut first, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(voice(&answer), "nova");
    // The other replica: by the Redis fan-out, sent before the write
    // returned, within the 1 s every invalidation is held to.
    let took = within(Duration::from_secs(1), || {
        let mut second = second.clone();
        async move {
            service_resolve(&mut second, ACME_NUMBER)
                .await
                .map(|(a, _)| voice(&a) == "nova")
                .unwrap_or(false)
        }
    })
    .await;
    eprintln!("replica saw the service write after {took:?}");

    // Moving the number: the old one stops answering everywhere.
    first
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: ACME_AGENT.into(),
                    phone_number: "+18005550101".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["phone_number".into()],
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_code(
        service_resolve(&mut first, ACME_NUMBER).await,
        Code::NotFound,
    );
    within(Duration::from_secs(1), || {
        let mut second = second.clone();
        async move {
            service_resolve(&mut second, ACME_NUMBER)
                .await
                .err()
                .map(|s| s.code())
                == Some(Code::NotFound)
        }
    })
    .await;
}

#[tokio::test]
async fn a_preloaded_replica_answers_the_first_call_from_memory_and_still_sees_changes() {
    let db = TestDb::seeded().await;
    // More numbers than one preload page holds are not needed to prove the
    // paging: a second org's number sorts after the first.
    let app = TestApp::spawn_with(
        db,
        AppOptions {
            redis: false,
            preload: true,
            ..AppOptions::default()
        },
    )
    .await;
    let mut client = app.agents().await;
    for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
        let (answer, tier) = service_resolve(&mut client, number)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(
            tier, "memory",
            "{number}: preloaded, so no first trip to Postgres"
        );
        assert!(answer.agent.is_some() && answer.organization.is_some());
    }
    // The caller is not preloaded, but still comes with the answer.
    let (answer, _) = resolve_as(&mut client, Who::Service, ACME_NUMBER, SHARED_CALLER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(answer.caller.unwrap_or_default().id, ACME_CUSTOMER);
    // Preloaded entries are evicted like any other.
    set_acme_voice_out_of_band(&app, &client, "sage").await;
    // A tenant never gets the cached route: RLS answers.
    let (_, tier) = resolve_as(&mut client, Who::BluebirdViewer, BLUEBIRD_NUMBER, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
    let refused = resolve_as(&mut client, Who::BluebirdViewer, ACME_NUMBER, "").await;
    assert_code(refused, Code::NotFound);
}

#[tokio::test]
async fn writes_that_bypass_the_service_are_seen_within_a_second() {
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(AppOptions::default()).await;
    let mut first = app.agents().await;
    let mut second = replica.agents().await;
    for client in [&mut first, &mut second] {
        for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
            service_resolve(client, number)
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
            service_resolve(client, number)
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
        }
        resolve_as(client, Who::Service, ACME_NUMBER, SHARED_CALLER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }

    // As Supabase Studio or psql would: straight SQL.
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'sage' where id = '{ACME_AGENT}'"
        ))
        .await;
    for client in [&mut first, &mut second] {
        let took = within(Duration::from_secs(1), || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, ACME_NUMBER)
                    .await
                    .map(|(a, _)| voice(&a) == "sage")
                    .unwrap_or(false)
            }
        })
        .await;
        eprintln!("out-of-band update seen after {took:?}");
    }

    // The organization's name is part of the cached answer too.
    app.db
        .exec(&format!(
            "update public.organizations set name = 'Acme Dental & Ortho' where id = '{ACME}'"
        ))
        .await;
    for client in [&mut first, &mut second] {
        within(Duration::from_secs(1), || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, ACME_NUMBER)
                    .await
                    .map(|(a, _)| a.organization.unwrap_or_default().name == "Acme Dental & Ortho")
                    .unwrap_or(false)
            }
        })
        .await;
    }

    // A caller's record, changed out of band.
    app.db
        .exec(&format!(
            "update public.customers set name = 'Rear Admiral Hopper' where id = '{ACME_CUSTOMER}'"
        ))
        .await;
    for client in [&mut first, &mut second] {
        within(Duration::from_secs(1), || {
            let mut client = client.clone();
            async move {
                resolve_as(&mut client, Who::Service, ACME_NUMBER, SHARED_CALLER)
                    .await
                    .map(|(a, _)| a.caller.unwrap_or_default().name == "Rear Admiral Hopper")
                    .unwrap_or(false)
            }
        })
        .await;
    }

    // Deactivated: the media server gets FAILED_PRECONDITION within the second.
    app.db
        .exec(&format!(
            "update public.agents set is_active = false where id = '{ACME_AGENT}'"
        ))
        .await;
    for client in [&mut first, &mut second] {
        within(Duration::from_secs(1), || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, ACME_NUMBER)
                    .await
                    .err()
                    .map(|s| s.code())
                    == Some(Code::FailedPrecondition)
            }
        })
        .await;
    }
    // Deleted: NOT_FOUND within the second.
    app.db
        .exec(&format!(
            "delete from public.agents where id = '{BLUEBIRD_AGENT}'"
        ))
        .await;
    for client in [&mut first, &mut second] {
        within(Duration::from_secs(1), || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, BLUEBIRD_NUMBER)
                    .await
                    .err()
                    .map(|s| s.code())
                    == Some(Code::NotFound)
            }
        })
        .await;
    }
}

#[tokio::test]
async fn redis_down_costs_nothing_and_comes_back_by_itself() {
    let mut redis = crate::redis_server::RedisServer::start().await;
    let db = TestDb::seeded().await;
    let app = TestApp::spawn_with(
        db,
        AppOptions {
            redis_url: Some(redis.url()),
            ..AppOptions::default()
        },
    )
    .await;
    let mut agents = app.agents().await;
    service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));

    redis.stop();
    // Cached numbers from memory, uncached ones from Postgres, no errors.
    let started = Instant::now();
    for _ in 0..50 {
        let (_, tier) = service_resolve(&mut agents, ACME_NUMBER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(tier, "memory");
    }
    let (answer, tier) = service_resolve(&mut agents, BLUEBIRD_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
    assert_eq!(voice(&answer), "verse");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Writes still evict (this replica's memory at least) and succeed.
    set_acme_voice_out_of_band(&app, &agents, "ash").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING while Redis is down");

    // Back: the tier fills again without a restart of ours.
    redis.restart().await;
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("{e}"));
    let key = format!("{}route:+18005550200", app.db.redis_prefix().await);
    within(Duration::from_secs(5), || {
        let mut agents = agents.clone();
        let client = client.clone();
        let key = key.clone();
        let db = app.db.clone();
        async move {
            // Evict from memory (as a write would) so the next call refills.
            db.exec(&format!(
                "update public.agents set name = name where id = '{BLUEBIRD_AGENT}'"
            ))
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = service_resolve(&mut agents, BLUEBIRD_NUMBER).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            key_exists(&client, &key).await
        }
    })
    .await;
}

/// The service's database behind a PgBouncer of the test's own, so the test
/// can take the database away (`stop`) and bring it back (`start`).
pub(crate) struct Pooler {
    bouncer: Option<crate::pgbouncer::PgBouncer>,
    host: String,
    postgres_port: u16,
    port: u16,
}

impl Pooler {
    pub(crate) fn stop(&mut self) {
        if let Some(mut bouncer) = self.bouncer.take() {
            bouncer.stop();
        }
    }

    pub(crate) async fn start(&mut self) {
        self.bouncer = Some(
            crate::pgbouncer::PgBouncer::start_on(&self.host, self.postgres_port, self.port).await,
        );
    }
}

pub(crate) async fn behind_a_pooler() -> (TestApp, Pooler) {
    behind_a_pooler_with(AppOptions::default()).await
}

/// `behind_a_pooler` with the app's other settings given.
pub(crate) async fn behind_a_pooler_with(options: AppOptions) -> (TestApp, Pooler) {
    let (host, postgres_port) = std::str::FromStr::from_str(&admin_url())
        .map(|o: sqlx::postgres::PgConnectOptions| (o.get_host().to_owned(), o.get_port()))
        .unwrap_or_else(|e| panic!("{e}"));
    let bouncer = crate::pgbouncer::PgBouncer::start(&host, postgres_port).await;
    let port = bouncer.port;
    let db = TestDb::seeded().await;
    let through_bouncer = format!("postgres://postgres@127.0.0.1:{port}/{}", db.name);
    let app = TestApp::spawn_with(
        db,
        AppOptions {
            database_url: Some(through_bouncer),
            ..options
        },
    )
    .await;
    let pooler = Pooler {
        bouncer: Some(bouncer),
        host,
        postgres_port,
        port,
    };
    (app, pooler)
}

#[tokio::test]
async fn postgres_down_keeps_cached_numbers_answering() {
    let (app, mut database) = behind_a_pooler().await;
    let mut agents = app.agents().await;
    let (warm, _) = resolve_as(&mut agents, Who::Service, ACME_NUMBER, SHARED_CALLER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));

    database.stop();
    // The database "blinked": cached numbers keep resolving, caller included.
    for _ in 0..20 {
        let (answer, tier) = resolve_as(&mut agents, Who::Service, ACME_NUMBER, SHARED_CALLER)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(tier, "memory");
        assert_eq!(answer, warm);
    }
    // Uncached: UNAVAILABLE, and quickly (after the first, at once).
    for attempt in 0..3 {
        let started = Instant::now();
        assert_code(
            service_resolve(&mut agents, BLUEBIRD_NUMBER).await,
            Code::Unavailable,
        );
        let took = started.elapsed();
        let limit = if attempt == 0 {
            Duration::from_millis(1500)
        } else {
            Duration::from_millis(100)
        };
        assert!(took < limit, "attempt {attempt}: {took:?}");
    }

    // Back: the pool reconnects by itself.
    database.start().await;
    let took = within(Duration::from_secs(5), || {
        let mut agents = agents.clone();
        async move { service_resolve(&mut agents, BLUEBIRD_NUMBER).await.is_ok() }
    })
    .await;
    eprintln!("recovered {took:?} after the pooler came back");
}

#[tokio::test]
async fn an_unassigned_number_is_answered_from_memory_until_an_agent_takes_it() {
    const UNASSIGNED: &str = "+18005550999";
    let (app, mut database) = behind_a_pooler().await;
    let mut agents = app.agents().await;
    let message = assert_code(
        service_resolve(&mut agents, UNASSIGNED).await,
        Code::NotFound,
    );
    assert_eq!(message, "no agent answers this number");

    // With the database gone, the answer is still NOT_FOUND, not
    // UNAVAILABLE: it came from memory, not from a statement.
    database.stop();
    for _ in 0..5 {
        assert_code(
            service_resolve(&mut agents, UNASSIGNED).await,
            Code::NotFound,
        );
    }
    // A number never asked for does need the database.
    assert_code(
        service_resolve(&mut agents, "+18005550998").await,
        Code::Unavailable,
    );

    // Back, an agent takes the number (out of band, as Studio would): its
    // NOTIFY evicts the remembered "no agent" and the next calls find it.
    database.start().await;
    app.db
        .exec(&format!(
            "insert into public.agents (org_id, name, phone_number, voice_id) \
             values ('{ACME}', 'Overflow', '{UNASSIGNED}', 'echo')"
        ))
        .await;
    let took = within(Duration::from_secs(3), || {
        let mut agents = agents.clone();
        async move {
            service_resolve(&mut agents, UNASSIGNED)
                .await
                .map(|(a, _)| voice(&a) == "echo")
                .unwrap_or(false)
        }
    })
    .await;
    eprintln!("the new agent answered {took:?} after its insert");
    // Tenants never see the remembered answer: RLS decides, every time.
    let (answer, tier) = resolve_as(&mut agents, Who::AcmeViewer, UNASSIGNED, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
    assert_eq!(voice(&answer), "echo");
}
