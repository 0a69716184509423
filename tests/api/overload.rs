//! Overload protection over real gRPC: the global cap sheds at once and
//! spares health, a saturated database sheds its calls but not cache hits,
//! one tenant's flood leaves others served, deadlines are
//! min(server, client), oversized messages and metadata are refused with the
//! limit named; and lookups read the replica while writes go to the primary.

use std::time::{Duration, Instant};

use tonic::{transport::Channel, Code};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::helpers::*;
use switchboard::pb::{
    customer_service_client::CustomerServiceClient, CreateAgentRequest, GetAgentRequest,
    GetCustomerRequest, ListAgentsRequest, ResolveAgentRequest, UpsertCustomerRequest,
};

/// Starts an upsert that will wait on the lock, as `who`.
fn held_upsert(
    channel: &Channel,
    who: Who,
) -> tokio::task::JoinHandle<Result<switchboard::pb::Customer, tonic::Status>> {
    let mut customers = CustomerServiceClient::new(channel.clone());
    tokio::spawn(async move {
        customers
            .upsert_customer(as_who(
                who,
                UpsertCustomerRequest {
                    customer: Some(new_customer("", SHARED_CALLER, "Held")),
                },
            ))
            .await
            .map(|r| r.into_inner())
    })
}

/// Waits until `count` statements of the test database wait on a lock: the
/// held requests are then surely in flight inside the server.
async fn wait_for_lock_waiters(app: &TestApp, count: i64) {
    let started = Instant::now();
    loop {
        let waiting = app.db.lock_waiters().await;
        if waiting >= count {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "only {waiting} of {count} requests reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn assert_serving(channel: &Channel) {
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("health under load: {s:?}"))
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
}

fn resolve(called: &str) -> ResolveAgentRequest {
    ResolveAgentRequest {
        called_number: called.into(),
        caller_number: String::new(),
        ..Default::default()
    }
}

fn get_customer(id: &str) -> GetCustomerRequest {
    GetCustomerRequest { id: id.into() }
}

#[tokio::test]
async fn the_global_cap_sheds_at_once_and_health_still_answers() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            max_concurrent_requests: 2,
            tenant_max_concurrent: 0,
            ..AppOptions::default()
        },
    )
    .await;
    let channel = app.channel().await;
    let mut agents = app.agents().await;
    // Warm the connection and the route, so the timing below is the shed.
    agents
        .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER)))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));

    let blocker = app.db.lock_acme_customer().await;
    let held = [
        held_upsert(&channel, Who::AcmeAdmin),
        held_upsert(&channel, Who::AcmeManager),
    ];
    wait_for_lock_waiters(&app, 2).await;

    // Queued behind the held calls, these would wait as long as the lock
    // is held (indefinitely); shed, they come back at once. The median is
    // asserted, so one scheduling hiccup of a busy CI machine is not a failure.
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            agents.resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER))),
        )
        .await
        .unwrap_or_else(|_| panic!("the call over the cap was queued, not shed"));
        took.push(started.elapsed());
        let message = assert_code(result, Code::ResourceExhausted);
        assert!(
            message.contains("SWITCHBOARD_MAX_CONCURRENT_REQUESTS") && message.contains('2'),
            "{message}"
        );
    }
    took.sort();
    assert!(
        took[took.len() / 2] < Duration::from_millis(50),
        "shed at once, not queued: {took:?}"
    );
    // Health is never shed, however busy.
    for _ in 0..3 {
        assert_serving(&channel).await;
    }

    let _ = blocker.rollback().await;
    for call in held {
        let customer = call
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|s| panic!("held call: {s:?}"));
        assert_eq!(customer.name, "Held");
    }
    // The permits came back.
    agents
        .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER)))
        .await
        .unwrap_or_else(|s| panic!("after the load: {s:?}"));
}

/// A server with one database connection (`adjust` sets the rest), Acme's
/// number warm in its memory tier, and that connection held by an upsert
/// waiting on a row lock until `release`.
struct OneConnectionHeld {
    app: TestApp,
    agents: switchboard::pb::agent_service_client::AgentServiceClient<Channel>,
    blocker: sqlx::Transaction<'static, sqlx::Postgres>,
    held: tokio::task::JoinHandle<Result<switchboard::pb::Customer, tonic::Status>>,
}

impl OneConnectionHeld {
    async fn start(adjust: fn(&mut switchboard::config::ServeArgs)) -> OneConnectionHeld {
        let app = TestApp::spawn_with(
            TestDb::seeded().await,
            AppOptions {
                tenant_max_concurrent: 0,
                serve_args: Some(std::sync::Arc::new(move |args| {
                    args.db_max_connections = 1;
                    adjust(args);
                })),
                ..AppOptions::default()
            },
        )
        .await;
        let mut agents = app.agents().await;
        agents
            .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER)))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        let blocker = app.db.lock_acme_customer().await;
        let held = held_upsert(&app.channel().await, Who::AcmeAdmin);
        wait_for_lock_waiters(&app, 1).await;
        OneConnectionHeld {
            app,
            agents,
            blocker,
            held,
        }
    }

    /// Frees the lock; the held write completes.
    async fn release(self) -> TestApp {
        let _ = self.blocker.rollback().await;
        let customer = self
            .held
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|s| panic!("held call: {s:?}"));
        assert_eq!(customer.name, "Held");
        self.app
    }
}

/// Resolves until answered, for at most a second (sqlx hands a connection
/// back to the pool just after the answer); no failure may be `forbidden`.
async fn served_again(app: &TestApp, who: Who, number: &str, forbidden: Code) {
    let mut agents = app.agents().await;
    let started = Instant::now();
    loop {
        match agents.resolve_agent(as_who(who, resolve(number))).await {
            Ok(_) => return,
            Err(status) => {
                assert_ne!(status.code(), forbidden, "{status:?}");
                assert!(started.elapsed() < Duration::from_secs(1), "{status:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_saturated_database_sheds_its_calls_while_cache_hits_still_answer() {
    // No queue: while the held write owns the only connection, every other
    // call that needs Postgres is shed at once; a cached number is still
    // answered from memory.
    let mut held = OneConnectionHeld::start(|args| args.db_max_waiting = 0).await;
    let agents = &mut held.agents;
    let mut took = Vec::new();
    for who in [Who::AcmeViewer, Who::BluebirdViewer, Who::AcmeViewer] {
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(2),
            agents.resolve_agent(as_who(who, resolve(ACME_NUMBER))),
        )
        .await
        .unwrap_or_else(|_| panic!("the call was queued, not shed"));
        took.push(started.elapsed());
        let message = assert_code(result, Code::ResourceExhausted);
        assert!(
            message.contains("SWITCHBOARD_DB_MAX_WAITING=0")
                && message.contains("all 1 connections"),
            "{message}"
        );
    }
    // An uncached number needs the database too.
    assert_code(
        agents
            .resolve_agent(as_who(Who::Service, resolve(BLUEBIRD_NUMBER)))
            .await,
        Code::ResourceExhausted,
    );
    took.sort();
    assert!(
        took[took.len() / 2] < Duration::from_millis(50),
        "shed at once: {took:?}"
    );
    // The hot path does not touch the database: answered.
    for _ in 0..5 {
        let answer = agents
            .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER)))
            .await
            .unwrap_or_else(|s| panic!("cache hit while the database is saturated: {s:?}"));
        assert_eq!(
            answer
                .metadata()
                .get("x-switchboard-cache")
                .and_then(|v| v.to_str().ok()),
            Some("memory")
        );
    }
    assert_serving(&held.app.channel().await).await;

    let app = held.release().await;
    served_again(&app, Who::AcmeViewer, ACME_NUMBER, Code::Unavailable).await;
}

#[tokio::test]
async fn a_busy_database_is_reported_busy_not_down() {
    // The queue allowed: a call that waits out the acquire timeout is told
    // the database is busy (RESOURCE_EXHAUSTED), and the breaker that
    // answers UNAVAILABLE for a database that is down stays closed.
    let mut held = OneConnectionHeld::start(|args| args.db_acquire_timeout_ms = 200).await;
    for (who, number) in [
        (Who::AcmeViewer, ACME_NUMBER),
        (Who::Service, BLUEBIRD_NUMBER),
        (Who::Service, BLUEBIRD_NUMBER),
    ] {
        let started = Instant::now();
        let message = assert_code(
            held.agents
                .resolve_agent(as_who(who, resolve(number)))
                .await,
            Code::ResourceExhausted,
        );
        assert!(
            message.contains("SWITCHBOARD_DB_ACQUIRE_TIMEOUT_MS"),
            "{message}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "it waited its turn"
        );
    }
    // No breaker was opened: the uncached number resolves as soon as the
    // connection is back.
    let app = held.release().await;
    served_again(&app, Who::Service, BLUEBIRD_NUMBER, Code::Unavailable).await;
}

#[tokio::test]
async fn one_tenant_flooding_does_not_starve_another() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            max_concurrent_requests: 64,
            tenant_max_concurrent: 2,
            ..AppOptions::default()
        },
    )
    .await;
    let channel = app.channel().await;
    let mut customers = app.customers().await;
    let mut agents = app.agents().await;
    // One answer each, and the service knows both Acme users are one org.
    for who in [Who::AcmeAdmin, Who::AcmeManager] {
        customers
            .get_customer(as_who(who, get_customer(ACME_CUSTOMER)))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }

    let blocker = app.db.lock_acme_customer().await;
    let held = [
        held_upsert(&channel, Who::AcmeAdmin),
        held_upsert(&channel, Who::AcmeAdmin),
    ];
    wait_for_lock_waiters(&app, 2).await;

    // Another user of the same org counts against the same share, and is
    // refused at once rather than queued behind the held calls.
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(2),
        customers.get_customer(as_who(Who::AcmeManager, get_customer(ACME_CUSTOMER))),
    )
    .await
    .unwrap_or_else(|_| panic!("the call over the share was queued, not refused"));
    let message = assert_code(result, Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.contains("SWITCHBOARD_TENANT_MAX_CONCURRENT") && message.contains('2'),
        "{message}"
    );
    // The other tenant, and the media servers, are served meanwhile.
    for _ in 0..3 {
        let customer = customers
            .get_customer(as_who(Who::BluebirdAdmin, get_customer(BLUEBIRD_CUSTOMER)))
            .await
            .unwrap_or_else(|s| panic!("bluebird starved: {s:?}"))
            .into_inner();
        assert_eq!(customer.org_id, BLUEBIRD);
    }
    let resolved = agents
        .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER)))
        .await
        .unwrap_or_else(|s| panic!("service_role starved: {s:?}"))
        .into_inner();
    assert_eq!(resolved.agent.map(|a| a.id).as_deref(), Some(ACME_AGENT));

    let _ = blocker.rollback().await;
    for call in held {
        call.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|s| panic!("held call: {s:?}"));
    }
    // The share came back.
    customers
        .get_customer(as_who(Who::AcmeManager, get_customer(ACME_CUSTOMER)))
        .await
        .unwrap_or_else(|s| panic!("after the flood: {s:?}"));
}

#[tokio::test]
async fn the_shorter_of_server_and_client_deadline_applies() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            request_timeout_ms: 400,
            ..AppOptions::default()
        },
    )
    .await;
    let mut customers = app.customers().await;
    let blocker = app.db.lock_acme_customer().await;
    let upsert = |timeout: Option<Duration>| {
        let mut request = as_who(
            Who::AcmeAdmin,
            UpsertCustomerRequest {
                customer: Some(new_customer("", SHARED_CALLER, "Timed Out")),
            },
        );
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
    };

    // No client deadline, or a longer one: the server's 400 ms.
    for client in [None, Some(Duration::from_secs(3))] {
        let started = Instant::now();
        assert_code(
            customers.upsert_customer(upsert(client)).await,
            Code::DeadlineExceeded,
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
            "server deadline with client {client:?}: {took:?}"
        );
    }
    // A shorter client deadline wins. tonic's client enforces it too and
    // may give up (CANCELLED) a moment before the server's answer arrives.
    let started = Instant::now();
    let code = customers
        .upsert_customer(upsert(Some(Duration::from_millis(100))))
        .await
        .err()
        .map(|s| s.code());
    assert!(
        matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled)),
        "{code:?}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(350),
        "client deadline: {took:?}"
    );

    // The client gave up; the server's own 100 ms may end a moment later.
    // Released inside that moment, the lock would let the write finish and
    // commit, which a client's DEADLINE_EXCEEDED never rules out (README,
    // Errors). Wait out the server's deadline and the statement timeout
    // (400 ms) first: then nothing may have been written.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _ = blocker.rollback().await;
    let name: String = sqlx::query_scalar("select name from public.customers where id = $1::uuid")
        .bind(ACME_CUSTOMER)
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(name, "Grace Hopper", "no timed-out write was kept");
}

#[tokio::test]
async fn oversized_messages_are_refused_with_the_limit_named() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            max_message_bytes: 128 * 1024,
            ..AppOptions::default()
        },
    )
    .await;
    let mut agents = app.agents().await;
    let create = |agent: switchboard::pb::Agent| {
        as_who(Who::AcmeAdmin, CreateAgentRequest { agent: Some(agent) })
    };

    let mut huge = new_agent("", "+18005550301");
    huge.voice_id = "v".repeat(200 * 1024);
    let message = assert_code(
        agents.create_agent(create(huge)).await,
        Code::ResourceExhausted,
    );
    assert!(
        message.contains("131072") && message.contains("SWITCHBOARD_MAX_MESSAGE_BYTES"),
        "{message}"
    );

    // Under the message limit, over llm_config's own: its limit is named.
    let mut big_config = new_agent("", "+18005550302");
    big_config.llm_config = Some(to_struct(
        serde_json::json!({ "prompt": "p".repeat(70 * 1024) }),
    ));
    let message = assert_code(
        agents.create_agent(create(big_config)).await,
        Code::InvalidArgument,
    );
    assert!(
        message.contains("llm_config") && message.contains("65536"),
        "{message}"
    );
    let mut deep = serde_json::json!({ "leaf": true });
    for _ in 0..20 {
        deep = serde_json::json!({ "nested": deep });
    }
    let mut deep_config = new_agent("", "+18005550303");
    deep_config.llm_config = Some(to_struct(deep));
    let message = assert_code(
        agents.create_agent(create(deep_config)).await,
        Code::InvalidArgument,
    );
    assert!(
        message.contains("llm_config") && message.contains("16"),
        "{message}"
    );

    let count: i64 = sqlx::query_scalar(
        "select count(*) from public.agents where phone_number like '+1800555030%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count, 0, "nothing refused was written");
    agents
        .create_agent(create(new_agent("", "+18005550304")))
        .await
        .unwrap_or_else(|s| panic!("a normal agent after the refusals: {s:?}"));
}

#[tokio::test]
async fn oversized_metadata_is_refused_cleanly() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            max_header_list_bytes: 10 * 1024,
            ..AppOptions::default()
        },
    )
    .await;
    let padded = |bytes: usize| {
        let mut request = as_who(Who::Service, resolve(ACME_NUMBER));
        let padding = "x".repeat(bytes);
        request.metadata_mut().insert(
            "x-padding",
            padding.parse().unwrap_or_else(|e| panic!("{e}")),
        );
        request
    };
    let mut agents = app.agents().await;
    // Over the limit: a gRPC status that names it.
    let message = assert_code(
        agents.resolve_agent(padded(12 * 1024)).await,
        Code::ResourceExhausted,
    );
    assert!(
        message.contains("10240") && message.contains("SWITCHBOARD_MAX_HEADER_LIST_BYTES"),
        "{message}"
    );
    // Over twice the limit, HTTP/2 itself refuses (HTTP 431), at once.
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        agents.resolve_agent(padded(24 * 1024)),
    )
    .await
    .unwrap_or_else(|_| panic!("an oversized header list must not hang"));
    let status = result
        .err()
        .unwrap_or_else(|| panic!("24 KiB of metadata was accepted"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(status.message().contains("431"), "{status:?}");

    // The server is unharmed, on the same connection and a new one.
    agents
        .resolve_agent(padded(1024))
        .await
        .unwrap_or_else(|s| panic!("after the oversized metadata: {s:?}"));
    assert_serving(&app.channel().await).await;
}

const REPLICA_AGENT: &str = "aa000000-0000-4000-8000-0000000000ee";
const REPLICA_NUMBER: &str = "+18005550999";

#[tokio::test]
async fn lookups_read_the_replica_and_writes_go_to_the_primary() {
    // Two databases stand in for a primary and its replica; only the
    // "replica" has one more agent, so an answer shows where it was read.
    let replica = TestDb::seeded().await;
    replica
        .exec(&format!(
            "insert into public.agents (id, org_id, name, phone_number, voice_id) \
             values ('{REPLICA_AGENT}', '{ACME}', 'Replica Line', '{REPLICA_NUMBER}', 'alloy')"
        ))
        .await;
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            database_read_url: Some(replica.service_url.clone()),
            ..AppOptions::default()
        },
    )
    .await;
    let mut agents = app.agents().await;

    let agent = agents
        .get_agent(as_who(
            Who::AcmeViewer,
            GetAgentRequest {
                id: REPLICA_AGENT.into(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("get from the replica: {s:?}"))
        .into_inner();
    assert_eq!(agent.name, "Replica Line");
    let listed = agents
        .list_agents(as_who(Who::AcmeViewer, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(listed.agents.iter().any(|a| a.id == REPLICA_AGENT));
    let resolved = agents
        .resolve_agent(as_who(Who::AcmeViewer, resolve(REPLICA_NUMBER)))
        .await
        .unwrap_or_else(|s| panic!("tenant resolve from the replica: {s:?}"))
        .into_inner();
    assert_eq!(resolved.agent.map(|a| a.id).as_deref(), Some(REPLICA_AGENT));

    // service_role answers are cached, and invalidation follows the
    // primary: they are read there.
    assert_code(
        agents
            .resolve_agent(as_who(Who::Service, resolve(REPLICA_NUMBER)))
            .await,
        Code::NotFound,
    );

    let created = agents
        .create_agent(as_who(
            Who::AcmeAdmin,
            CreateAgentRequest {
                agent: Some(new_agent("", "+18005550998")),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("write: {s:?}"))
        .into_inner();
    assert_eq!(
        agents_with_id(&app.db.pool, &created.id).await,
        1,
        "on the primary"
    );
    assert_eq!(
        agents_with_id(&replica.pool, &created.id).await,
        0,
        "not on the replica"
    );
}

async fn agents_with_id(pool: &sqlx::PgPool, id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from public.agents where id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
