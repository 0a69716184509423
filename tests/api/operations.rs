use std::time::{Duration, Instant};

use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{ListAgentsRequest, ListCustomersRequest, ResolveAgentRequest};

#[tokio::test]
async fn database_down_is_unavailable_at_once() {
    // A port nothing listens on.
    let db = TestDb::seeded().await;
    let app = TestApp::spawn_with(
        db,
        AppOptions {
            database_url: Some("postgres://postgres@127.0.0.1:9/nowhere".into()),
            ..AppOptions::default()
        },
    )
    .await;
    // Start-up is over once health answers (with the database down it
    // waits its bounded time for the listener and Redis): the clock below
    // is the call's alone.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let mut agents = app.agents().await;
    let started = Instant::now();
    let message = assert_code(
        agents
            .resolve_agent(as_who(
                Who::Service,
                ResolveAgentRequest {
                    called_number: ACME_NUMBER.into(),
                    caller_number: String::new(),
                    ..Default::default()
                },
            ))
            .await,
        Code::Unavailable,
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !message.contains("postgres://"),
        "no connection details leak: {message}"
    );
    assert_code(
        agents
            .list_agents(as_who(Who::AcmeAdmin, ListAgentsRequest::default()))
            .await,
        Code::Unavailable,
    );
}

/// Long enough for a warm server to have its write waiting in Postgres well
/// before it passes, even on a loaded machine.
const CLIENT_DEADLINE: Duration = Duration::from_millis(1_000);

#[tokio::test]
async fn the_clients_deadline_is_honoured() {
    // The server's own limit (and so its default statement_timeout) is far
    // longer than the client's deadline and than every wait below: only the
    // client's deadline can stop this write.
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            request_timeout_ms: 60_000,
            ..AppOptions::default()
        },
    )
    .await;
    let mut customers = app.customers().await;
    // A connected channel and a pooled connection: the write below does not
    // spend its deadline on connecting.
    customers
        .list_customers(as_who(Who::AcmeAdmin, ListCustomersRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    // Hold a lock on the row, so the write can only wait, and keep it until
    // Postgres has given up on the write: the lock is never what ends it.
    let blocker = app.db.lock_acme_customer().await;
    let mut request = as_who(
        Who::AcmeAdmin,
        switchboard::pb::UpsertCustomerRequest {
            customer: Some(new_customer("", SHARED_CALLER, "Blocked")),
        },
    );
    request.set_timeout(CLIENT_DEADLINE);
    let call = tokio::spawn(async move { customers.upsert_customer(request).await });
    within_named(
        "the write waits on the lock in Postgres",
        CLIENT_DEADLINE,
        || async { app.db.lock_waiters().await == 1 },
    )
    .await;
    // Nothing but the deadline can end the call now.
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| panic!("the call outlived its deadline by 30 s"))
        .unwrap_or_else(|e| panic!("{e}"));
    let code = result.err().map(|s| s.code());
    assert!(
        matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled)),
        "{code:?}"
    );
    // Postgres stops waiting too, with the lock still held: the
    // transaction's statement_timeout is the time the call had left, not
    // the server's 60 s, so the write does not hold a pooled connection in
    // a lock wait after its call is over.
    within_named(
        "the timed-out write stops waiting in Postgres",
        Duration::from_secs(30),
        || async { app.db.lock_waiters().await == 0 },
    )
    .await;
    // The write was cancelled inside its transaction, which is aborted: it
    // can never commit, whenever the lock goes.
    let _ = blocker.rollback().await;
    let name: String = sqlx::query_scalar("select name from public.customers where id = $1::uuid")
        .bind(ACME_CUSTOMER)
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_default();
    assert_eq!(
        name, "Grace Hopper",
        "the timed-out write left nothing behind"
    );
}

#[tokio::test]
async fn shutdown_goes_not_serving_and_stops() {
    let mut app = TestApp::spawn().await;
    let channel = app.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(serving.status, 1);
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .unwrap_or_else(|_| panic!("shutdown did not finish"));
    let after = tokio::net::TcpStream::connect(app.addr).await;
    assert!(after.is_err(), "the listener is closed after shutdown");
}

#[tokio::test]
async fn a_lookup_past_its_deadline_stops_in_postgres_too() {
    // A tenant's ResolveAgent is one statement on a bare connection; held
    // up by a lock (DDL, TRUNCATE), it must not outlive its call either.
    let app = TestApp::spawn().await;
    let mut blocker = app.db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("lock table public.agents in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut agents = app.agents().await;
    let mut request = as_who(Who::AcmeViewer, resolve_req(ACME_NUMBER, ""));
    request.set_timeout(Duration::from_millis(300));
    let code = agents.resolve_agent(request).await.err().map(|s| s.code());
    assert!(
        matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled)),
        "{code:?}"
    );
    within_named(
        "the timed-out lookup stops waiting in Postgres",
        Duration::from_millis(1500),
        || async { app.db.lock_waiters().await == 0 },
    )
    .await;
    let _ = blocker.rollback().await;
    // And the next call is served as usual.
    agents
        .resolve_agent(as_who(Who::AcmeViewer, resolve_req(ACME_NUMBER, "")))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
}
