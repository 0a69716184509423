use std::time::{Duration, Instant};

use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{ListAgentsRequest, ResolveAgentRequest};

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
    let mut agents = app.agents().await;
    let started = Instant::now();
    let message = assert_code(
        agents
            .resolve_agent(as_who(
                Who::Service,
                ResolveAgentRequest {
                    called_number: ACME_NUMBER.into(),
                    caller_number: String::new(),
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

#[tokio::test]
async fn the_clients_deadline_is_honoured() {
    let app = TestApp::spawn().await;
    // Hold a lock on the row so the write waits; the client gives up after
    // 300 ms and the server stops too.
    let blocker = app.db.lock_acme_customer().await;
    let mut customers = app.customers().await;
    let mut request = as_who(
        Who::AcmeAdmin,
        switchboard::pb::UpsertCustomerRequest {
            customer: Some(new_customer("", SHARED_CALLER, "Blocked")),
        },
    );
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let result = customers.upsert_customer(request).await;
    let code = result.err().map(|s| s.code());
    assert!(
        matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled)),
        "{code:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Postgres stops waiting too: the transaction's statement_timeout is the
    // time the call had left, not the server's 5 s, so the write does not
    // hold a pooled connection in a lock wait after its call is over.
    within_named(
        "the timed-out write stops waiting in Postgres",
        Duration::from_millis(1500),
        || async { app.db.lock_waiters().await == 0 },
    )
    .await;
    // The client's timer can fire a moment before the server's (which starts
    // when the request arrives): release the lock only once the server's
    // deadline has certainly passed, so the write had nothing to wait for
    // but the deadline. (Released earlier, a write may still land: a
    // client's DEADLINE_EXCEEDED never proves the server did nothing.)
    tokio::time::sleep(Duration::from_secs(1)).await;
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
