//! Parked connections (`store::postgres::Parked`): a connection that ran
//! the ResolveAgent statement to its end goes to the next caller without
//! sqlx's Sync round trip. Nothing of one caller may reach the next through
//! it: not a claim, not a role, not a result a cut-off statement left
//! behind. Few connections, so every call takes a parked one.

use std::{sync::Arc, time::Duration};

use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{ResolveAgentResponse, UpsertCustomerRequest};

/// Three connections: one parked at most (two stay with sqlx).
async fn app_with_three_connections(request_timeout_ms: u64) -> TestApp {
    TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            request_timeout_ms,
            tenant_max_concurrent: 0,
            serve_args: Some(Arc::new(|args| args.db_max_connections = 3)),
            ..AppOptions::default()
        },
    )
    .await
}

fn org_of(answer: &ResolveAgentResponse) -> String {
    answer
        .organization
        .as_ref()
        .map(|o| o.id.clone())
        .unwrap_or_default()
}

/// Each tenant's resolve, then the other org's number, then a write, in
/// turn across both orgs and `service_role`: each sees its own org only.
#[tokio::test]
async fn a_parked_connection_carries_nothing_to_the_next_caller() {
    let app = app_with_three_connections(5_000).await;
    let mut agents = app.agents().await;
    let mut customers = app.customers().await;
    for round in 0..5 {
        for who in Who::TENANTS {
            let (own, _) = who.orgs();
            let (own_number, other_number) = who.numbers();
            let (answer, tier) = resolve_as(&mut agents, who, own_number, SHARED_CALLER)
                .await
                .unwrap_or_else(|s| panic!("{who:?} round {round}: {s:?}"));
            assert_eq!(org_of(&answer), own, "{who:?} round {round}");
            assert_eq!(tier, "db", "a tenant is always answered by Postgres");
            let caller = answer.caller.unwrap_or_default();
            assert_eq!(caller.org_id, own, "{who:?}: the caller record's org");
            assert_code(
                resolve_as(&mut agents, who, other_number, SHARED_CALLER).await,
                Code::NotFound,
            );
            if who.can_write() {
                let written = customers
                    .upsert_customer(as_who(
                        who,
                        UpsertCustomerRequest {
                            customer: Some(new_customer(
                                "",
                                "+14155550999",
                                &format!("{who:?} {round}"),
                            )),
                        },
                    ))
                    .await
                    .unwrap_or_else(|s| panic!("{who:?} upsert: {s:?}"))
                    .into_inner();
                assert_eq!(written.org_id, own, "{who:?}: a write lands in its own org");
            }
            // service_role between tenants: sees every org, as itself.
            let (answer, _) = resolve_as(&mut agents, Who::Service, other_number, "")
                .await
                .unwrap_or_else(|s| panic!("service: {s:?}"));
            assert_ne!(org_of(&answer), "");
        }
    }
}

/// Statements cut off by the deadline while Postgres holds them on a lock
/// leave their connections behind with an answer still to come: such a
/// connection is never parked, so the next callers read their own answers,
/// never one a cut-off statement left on the wire.
#[tokio::test]
async fn a_statement_cut_off_midway_leaves_nothing_for_the_next_caller() {
    let app = app_with_three_connections(300).await;
    let mut agents = app.agents().await;
    // Warm: connections open and one parked.
    for who in [Who::AcmeViewer, Who::BluebirdViewer] {
        resolve_as(&mut agents, who, who.numbers().0, "")
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    let mut blocker = app.db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("lock table public.agents in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for who in [Who::AcmeViewer, Who::BluebirdViewer, Who::AcmeAdmin] {
        let code = resolve_as(&mut agents, who, who.numbers().0, SHARED_CALLER)
            .await
            .err()
            .map(|s| s.code());
        assert!(
            matches!(code, Some(Code::DeadlineExceeded | Code::Cancelled)),
            "{who:?} behind the lock: {code:?}"
        );
    }
    blocker.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    for round in 0..4 {
        for who in [Who::BluebirdViewer, Who::AcmeViewer, Who::BluebirdAdmin] {
            let (answer, _) = resolve_as(&mut agents, who, who.numbers().0, SHARED_CALLER)
                .await
                .unwrap_or_else(|s| panic!("{who:?} round {round} after the lock: {s:?}"));
            assert_eq!(org_of(&answer), who.orgs().0, "{who:?} round {round}");
        }
    }
}

/// Postgres ends every connection of the service while some are parked:
/// calls fail cleanly (UNAVAILABLE at worst, never a wrong answer) and
/// answer again once the pool has new ones.
#[tokio::test]
async fn parked_connections_the_database_dropped_are_replaced() {
    let app = app_with_three_connections(5_000).await;
    let mut agents = app.agents().await;
    for who in [Who::AcmeViewer, Who::BluebirdViewer, Who::AcmeViewer] {
        resolve_as(&mut agents, who, who.numbers().0, "")
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    let ended: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
         where datname = current_database() and pid <> pg_backend_pid() \
           and backend_type = 'client backend') t",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(ended >= 1, "no connection of the service was ended");
    let failures = std::sync::Mutex::new(Vec::new());
    within_named(
        "a resolve answering after its connections were ended",
        Duration::from_secs(15),
        || {
            let mut agents = agents.clone();
            let failures = &failures;
            async move {
                match resolve_as(&mut agents, Who::BluebirdViewer, BLUEBIRD_NUMBER, "").await {
                    Ok((answer, _)) => {
                        assert_eq!(org_of(&answer), BLUEBIRD);
                        true
                    }
                    Err(status) => {
                        if let Ok(mut failures) = failures.lock() {
                            failures.push(status.code());
                        }
                        false
                    }
                }
            }
        },
    )
    .await;
    let failures = failures.into_inner().unwrap_or_default();
    assert!(
        failures.iter().all(|c| *c == Code::Unavailable),
        "calls on ended connections fail as UNAVAILABLE only: {failures:?}"
    );
    // And every caller after that, on whatever connection it gets.
    for who in Who::TENANTS {
        let (answer, _) = resolve_as(&mut agents, who, who.numbers().0, "")
            .await
            .unwrap_or_else(|s| panic!("{who:?}: {s:?}"));
        assert_eq!(org_of(&answer), who.orgs().0);
    }
}
