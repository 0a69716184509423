//! Call records over gRPC: what tenants read (their own organization's
//! calls only, on a cold and a warm cache), how ListCalls orders, filters
//! and pages, what each outcome and end leaves in the record, the records
//! that Postgres could not take at once (an outage, a replica that dies in
//! it, an agent deleted before the record lands), references that stay in
//! their org, and the organization's call limits.
//!
//! Every wait is a poll with a bound on the event (a record's status, a
//! backlog entry in Redis); nothing sleeps and hopes.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use prost::Message;
use tonic::{transport::Channel, Code};

use crate::{
    cache::{behind_a_pooler, behind_a_pooler_with},
    calls::{call_ref, start, start_req},
    helpers::*,
};
use switchboard::{
    config::ServeArgs,
    pb::{
        call_service_client::CallServiceClient, Agent, Call, CallDecision, CallOutcome, CallReason,
        CallRef, CallStatus, DisconnectReason, EndCallRequest, EndStatus, GetCallLimitsRequest,
        GetCallRequest, ListAgentsRequest, ListCallsRequest, ListCallsResponse, PlanTier,
        SetOrganizationCallLimitRequest, UpdateAgentRequest,
    },
};

/// The bound on a record landing once Postgres is back (the drainer runs
/// every second).
const RECORD_LIMIT: Duration = Duration::from_secs(15);
/// Acme's second line, added by the tests that need two agents.
const SECOND_AGENT: &str = "aa000000-0000-4000-8000-000000000002";
const SECOND_NUMBER: &str = "+18005550101";
const FALLBACK: &str = "+14155550999";
/// The service's backlog claim time (`live::backlog::CLAIM_IDLE`, private
/// to it): how long a dead replica's pending records wait for another.
const CLAIM_IDLE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

fn by_id(id: &str) -> GetCallRequest {
    GetCallRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn by_call_id(call_id: &str) -> GetCallRequest {
    GetCallRequest {
        call_id: call_id.into(),
        ..Default::default()
    }
}

/// service_role names the org with a call id.
fn by_call_id_in(org: &str, call_id: &str) -> GetCallRequest {
    GetCallRequest {
        call_id: call_id.into(),
        org_id: org.into(),
        ..Default::default()
    }
}

async fn get_call(
    calls: &mut CallServiceClient<Channel>,
    who: Who,
    request: GetCallRequest,
) -> Result<Call, tonic::Status> {
    calls
        .get_call(as_who(who, request))
        .await
        .map(|r| r.into_inner())
}

async fn list(
    calls: &mut CallServiceClient<Channel>,
    who: Who,
    request: ListCallsRequest,
) -> Result<ListCallsResponse, tonic::Status> {
    calls
        .list_calls(as_who(who, request))
        .await
        .map(|r| r.into_inner())
}

/// Every page of `request` (its page_size), in order; also how many pages.
async fn list_all(
    calls: &mut CallServiceClient<Channel>,
    who: Who,
    request: ListCallsRequest,
) -> (Vec<Call>, usize) {
    let mut all = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            calls,
            who,
            ListCallsRequest {
                page_token: token.clone(),
                ..request.clone()
            },
        )
        .await
        .unwrap_or_else(|s| panic!("ListCalls page {pages} as {who:?}: {s:?}"));
        pages += 1;
        if request.page_size > 0 {
            assert!(
                page.calls.len() <= request.page_size as usize,
                "page {pages} holds {} calls",
                page.calls.len()
            );
        }
        all.extend(page.calls);
        if page.next_page_token.is_empty() {
            return (all, pages);
        }
        assert!(pages < 100, "ListCalls never ends");
        token = page.next_page_token;
    }
}

fn call_ids(calls: &[Call]) -> Vec<String> {
    calls.iter().map(|c| c.call_id.clone()).collect()
}

async fn answer(calls: &mut CallServiceClient<Channel>, reference: &CallRef) {
    calls
        .answer_call(as_who(Who::Service, reference.clone()))
        .await
        .unwrap_or_else(|s| panic!("AnswerCall {}: {s:?}", reference.call_id));
}

async fn end(
    calls: &mut CallServiceClient<Channel>,
    reference: &CallRef,
    status: EndStatus,
    reason: DisconnectReason,
) -> Call {
    calls
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(reference.clone()),
                status: status as i32,
                disconnect_reason: reason as i32,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("EndCall {}: {s:?}", reference.call_id))
        .into_inner()
}

/// Starts, answers and ends a call to `number` (completed).
async fn complete(app: &TestApp, number: &str, caller: &str, call_id: &str) -> CallDecision {
    let decision = start(app, number, caller, call_id).await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32, "{call_id}");
    let reference = call_ref(&decision, number);
    let mut calls = app.calls().await;
    answer(&mut calls, &reference).await;
    end(
        &mut calls,
        &reference,
        EndStatus::Completed,
        DisconnectReason::CallerHungUp,
    )
    .await;
    decision
}

/// The rows Postgres holds for (org, call id), read as the superuser.
async fn rows_for(app: &TestApp, org: &str, call_id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from public.calls where org_id = $1::uuid and call_id = $2")
        .bind(org)
        .bind(call_id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The call ids of an org's records, as the superuser sees them.
async fn call_ids_in(app: &TestApp, org: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("select call_id from public.calls where org_id = $1::uuid")
        .bind(org)
        .fetch_all(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect()
}

/// Polls GetCall (service_role) until the record of (org, call id) passes
/// `check`, for at most `limit`; returns it.
async fn await_record(
    app: &TestApp,
    org: &str,
    call_id: &str,
    limit: Duration,
    check: impl Fn(&Call) -> bool,
) -> Call {
    let calls = app.calls().await;
    let found = std::sync::Mutex::new(None);
    let check = &check;
    let found_ref = &found;
    within_named(&format!("the record of {call_id}"), limit, || {
        let mut calls = calls.clone();
        async move {
            match get_call(&mut calls, Who::Service, by_call_id_in(org, call_id)).await {
                Ok(call) if check(&call) => {
                    if let Ok(mut slot) = found_ref.lock() {
                        *slot = Some(call);
                    }
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    found
        .into_inner()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the record of {call_id} was seen but not kept"))
}

fn adjust(f: impl Fn(&mut ServeArgs) + Send + Sync + 'static) -> Option<AdjustArgs> {
    Some(Arc::new(f))
}

/// `switchboard:v2:<ns>:<identity>:calls:backlog`, the deployment's stream
/// of records waiting for Postgres.
async fn backlog_key(app: &TestApp) -> String {
    format!("{}calls:backlog", app.db.live_prefix().await)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (bounded) until every backlog entry is written and settled.
async fn await_backlog_empty(backlog: &str) {
    within_named("the backlog emptied", RECORD_LIMIT, || async move {
        backlog_len(backlog).await == 0
    })
    .await;
}

/// Entries in the backlog stream now.
async fn backlog_len(key: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut redis().await)
        .await
        .unwrap_or_else(|e| panic!("XLEN: {e}"))
}

/// One sample of `/metrics`: `series` exactly (labels included), or
/// `None`.
async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    series_at(app.admin_addr, series).await
}

/// Resolves `number` (with `caller`, if any) as service_role until the
/// route comes from the memory tier, caller included: what StartCall then
/// finds without Postgres.
async fn warm_route(app: &TestApp, number: &str, caller: &str) {
    let agents = app.agents().await;
    within_named(
        &format!("{number} in the memory tier"),
        Duration::from_secs(5),
        || {
            let mut agents = agents.clone();
            async move {
                resolve_as(&mut agents, Who::Service, number, caller)
                    .await
                    .is_ok_and(|(answer, tier)| {
                        tier == "memory" && (caller.is_empty() || answer.caller.is_some())
                    })
            }
        },
    )
    .await;
}

/// Acme's second agent, on `SECOND_NUMBER`.
async fn add_second_agent(app: &TestApp) {
    app.db
        .exec(&format!(
            "insert into public.agents (id, org_id, name, phone_number, voice_id) \
             values ('{SECOND_AGENT}', '{ACME}', 'Second line', '{SECOND_NUMBER}', 'alloy')"
        ))
        .await;
}

/// `UpdateAgent` of the fields in `paths`, taken from `agent`.
async fn update_agent(app: &TestApp, who: Who, agent: Agent, paths: &[&str]) -> Agent {
    app.agents()
        .await
        .update_agent(as_who(
            who,
            UpdateAgentRequest {
                agent: Some(agent),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("UpdateAgent {paths:?}: {s:?}"))
        .into_inner()
}

async fn set_active(app: &TestApp, agent_id: &str, active: bool) {
    let agent = update_agent(
        app,
        Who::AcmeAdmin,
        Agent {
            id: agent_id.into(),
            is_active: Some(active),
            ..Default::default()
        },
        &["is_active"],
    )
    .await;
    assert_eq!(agent.is_active, Some(active));
}

// ---------------------------------------------------------------- isolation

/// What every tenant may see of the calls: for each of the six seeded users,
/// GetCall of the other org's calls (by record id and by call id) is
/// NOT_FOUND exactly as for a call that does not exist; ListCalls holds all
/// of its own org's records and nothing else; naming an org in ListCalls is
/// refused; a call id both orgs used finds the caller's own call.
async fn assert_isolated(app: &TestApp, phase: &str) {
    let mut calls = app.calls().await;
    let acme = call_ids_in(app, ACME).await;
    let bluebird = call_ids_in(app, BLUEBIRD).await;
    assert!(
        acme.contains("same-id") && bluebird.contains("same-id"),
        "{phase}: both orgs have a call \"same-id\""
    );
    // Record ids by org, as the superuser sees them.
    let records: Vec<(String, String, String)> = sqlx::query_as(
        "select id::text, org_id::text, call_id from public.calls order by started_at",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let absent = assert_code(
        get_call(
            &mut calls,
            Who::AcmeViewer,
            by_id(&uuid::Uuid::new_v4().to_string()),
        )
        .await,
        Code::NotFound,
    );
    let absent_call_id = assert_code(
        get_call(&mut calls, Who::AcmeViewer, by_call_id("no-such-call")).await,
        Code::NotFound,
    );
    for who in Who::TENANTS {
        let (own, other) = who.orgs();
        let (own_ids, other_ids) = if own == ACME {
            (&acme, &bluebird)
        } else {
            (&bluebird, &acme)
        };
        for (id, org, call_id) in &records {
            let got = get_call(&mut calls, who, by_id(id)).await;
            if org == own {
                let call = got.unwrap_or_else(|s| panic!("{phase}: {who:?} own {call_id}: {s:?}"));
                assert_eq!(&call.org_id, own, "{phase}: {who:?}");
                assert_eq!(&call.call_id, call_id, "{phase}: {who:?}");
            } else {
                let message = assert_code(got, Code::NotFound);
                assert_eq!(message, absent, "{phase}: {who:?} by id of {call_id}");
                if !own_ids.contains(call_id) {
                    let message = assert_code(
                        get_call(&mut calls, who, by_call_id(call_id)).await,
                        Code::NotFound,
                    );
                    assert_eq!(
                        message, absent_call_id,
                        "{phase}: {who:?} by call id {call_id}"
                    );
                }
                // Naming the other org finds nothing either.
                let message = assert_code(
                    get_call(&mut calls, who, by_call_id_in(other, call_id)).await,
                    Code::NotFound,
                );
                assert_eq!(message, absent_call_id, "{phase}: {who:?} in {other}");
            }
        }
        // The call id both orgs used: the caller's own.
        let same = get_call(&mut calls, who, by_call_id("same-id"))
            .await
            .unwrap_or_else(|s| panic!("{phase}: {who:?} same-id: {s:?}"));
        assert_eq!(same.org_id, own, "{phase}: {who:?} same-id");
        let own_agent = if own == ACME {
            ACME_AGENT
        } else {
            BLUEBIRD_AGENT
        };
        assert_eq!(same.agent_id, own_agent, "{phase}: {who:?} same-id");

        let (listed, _) = list_all(
            &mut calls,
            who,
            ListCallsRequest {
                page_size: 500,
                ..Default::default()
            },
        )
        .await;
        assert!(
            listed.iter().all(|c| c.org_id == own),
            "{phase}: {who:?} listed another org's call: {listed:#?}"
        );
        let listed: BTreeSet<String> = call_ids(&listed).into_iter().collect();
        assert_eq!(&listed, own_ids, "{phase}: {who:?} lists its org's calls");
        assert!(
            !other_ids.iter().all(|id| listed.contains(id)),
            "{phase}: the other org has calls of its own"
        );

        for org in [own, other] {
            let message = assert_code(
                list(
                    &mut calls,
                    who,
                    ListCallsRequest {
                        org_id: org.into(),
                        ..Default::default()
                    },
                )
                .await,
                Code::InvalidArgument,
            );
            assert!(message.contains("org_id"), "{message}");
        }
    }
    // service_role names the org, and sees only that one.
    assert_code(
        get_call(&mut calls, Who::Service, by_call_id("same-id")).await,
        Code::InvalidArgument,
    );
    for (org, ids) in [(ACME, &acme), (BLUEBIRD, &bluebird)] {
        let same = get_call(&mut calls, Who::Service, by_call_id_in(org, "same-id"))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(same.org_id, org);
        let (listed, _) = list_all(
            &mut calls,
            Who::Service,
            ListCallsRequest {
                org_id: org.into(),
                page_size: 500,
                ..Default::default()
            },
        )
        .await;
        let listed: BTreeSet<String> = call_ids(&listed).into_iter().collect();
        assert_eq!(&listed, ids, "{phase}: service_role lists {org}");
    }
}

/// Tenant isolation of call records over gRPC with real signed tokens, on a
/// cold cache (a fresh app: the routes are fetched by the StartCalls
/// themselves) and a warm one (the routes cached by earlier StartCall and
/// ResolveAgent, then more calls), and read from a fresh replica too: each
/// of the six seeded users sees exactly its own org's records, the other
/// org's calls are NOT_FOUND as if they did not exist (by record id, by
/// call id, naming the other org), naming an org in ListCalls is
/// INVALID_ARGUMENT, and a call id used in both orgs ("same-id") finds the
/// caller's own call.
#[tokio::test]
async fn tenants_read_only_their_own_call_records_on_a_cold_and_a_warm_cache() {
    // Cold: nothing cached; the StartCalls fetch the routes.
    let app = TestApp::spawn().await;
    for (number, id) in [
        (ACME_NUMBER, "acme-cold"),
        (BLUEBIRD_NUMBER, "bluebird-cold"),
        (ACME_NUMBER, "same-id"),
        (BLUEBIRD_NUMBER, "same-id"),
    ] {
        let decision = start(&app, number, SHARED_CALLER, id).await;
        assert_eq!(decision.outcome, CallOutcome::Answer as i32);
        assert!(!decision.replayed, "{id} in its org is a new call");
    }
    assert_isolated(&app, "cold").await;

    // Warm: the routes are in memory now (ResolveAgent says so), and more
    // calls come from there.
    for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
        warm_route(&app, number, SHARED_CALLER).await;
    }
    complete(&app, ACME_NUMBER, SHARED_CALLER, "acme-warm").await;
    complete(&app, BLUEBIRD_NUMBER, SHARED_CALLER, "bluebird-warm").await;
    start(&app, BLUEBIRD_NUMBER, "", "bluebird-warm-2").await;
    assert_isolated(&app, "warm").await;

    // And from a replica that has cached nothing.
    let replica = app.spawn_replica(AppOptions::default()).await;
    assert_isolated(&replica, "fresh replica").await;
}

// ---------------------------------------------------------------- ListCalls

/// ListCalls orders newest first and filters by agent, by status (COMPLETED,
/// RINGING, REFUSED, MISSED) and by a start-time window (start_time
/// inclusive, end_time exclusive), each alone and with paging; page_size=2
/// walks through every row in pages of at most two, no row twice or
/// missing; a page token of ListAgents (or garbage) is INVALID_ARGUMENT.
#[tokio::test]
async fn list_calls_orders_filters_and_pages() {
    let app = TestApp::spawn().await;
    add_second_agent(&app).await;
    let mut calls = app.calls().await;
    // Oldest first: c1 completed (main), c2 ringing (second), c3 missed
    // (main), c4 refused (second, inactive), c5 ringing (main), c6 completed
    // (main). Bluebird's calls are not Acme's to list.
    complete(&app, ACME_NUMBER, "", "c1").await;
    start(&app, SECOND_NUMBER, "", "c2").await;
    let c3 = start(&app, ACME_NUMBER, "", "c3").await;
    end(
        &mut calls,
        &call_ref(&c3, ACME_NUMBER),
        EndStatus::Completed,
        DisconnectReason::NoAnswer,
    )
    .await;
    complete(&app, BLUEBIRD_NUMBER, "", "b1").await;
    set_active(&app, SECOND_AGENT, false).await;
    let c4 = start(&app, SECOND_NUMBER, "", "c4").await;
    assert_eq!(c4.outcome, CallOutcome::Reject as i32);
    start(&app, ACME_NUMBER, "", "c5").await;
    start(&app, BLUEBIRD_NUMBER, "", "b2").await;
    complete(&app, ACME_NUMBER, "", "c6").await;

    let request = |f: fn(&mut ListCallsRequest)| {
        let mut r = ListCallsRequest::default();
        f(&mut r);
        r
    };
    let who = Who::AcmeViewer;
    let (everything, pages) = list_all(&mut calls, who, ListCallsRequest::default()).await;
    assert_eq!(pages, 1);
    assert_eq!(call_ids(&everything), ["c6", "c5", "c4", "c3", "c2", "c1"]);
    for pair in everything.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        let key = |c: &Call| {
            c.started_at
                .as_ref()
                .map(|t| (t.seconds, t.nanos))
                .unwrap_or_default()
        };
        assert!(
            key(newer) >= key(older),
            "newest first: {newer:?} {older:?}"
        );
    }
    let status_of = |id: &str| {
        everything
            .iter()
            .find(|c| c.call_id == id)
            .map(|c| c.status)
            .unwrap_or_default()
    };
    assert_eq!(status_of("c1"), CallStatus::Completed as i32);
    assert_eq!(status_of("c2"), CallStatus::Ringing as i32);
    assert_eq!(status_of("c3"), CallStatus::Missed as i32);
    assert_eq!(status_of("c4"), CallStatus::Refused as i32);

    // By agent.
    for (agent, expected) in [
        (SECOND_AGENT, vec!["c4", "c2"]),
        (ACME_AGENT, vec!["c6", "c5", "c3", "c1"]),
        // Bluebird's agent: nothing of Acme's names it.
        (BLUEBIRD_AGENT, vec![]),
    ] {
        let (listed, _) = list_all(
            &mut calls,
            who,
            ListCallsRequest {
                agent_id: agent.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(call_ids(&listed), expected, "agent {agent}");
    }
    assert_code(
        list(
            &mut calls,
            who,
            request(|r| r.agent_id = "not-a-uuid".into()),
        )
        .await,
        Code::InvalidArgument,
    );

    // By status.
    let by_status = [
        (CallStatus::Completed, vec!["c6", "c1"]),
        (CallStatus::Ringing, vec!["c5", "c2"]),
        (CallStatus::Refused, vec!["c4"]),
        (CallStatus::Missed, vec!["c3"]),
        (CallStatus::Transferred, vec![]),
    ];
    for (status, expected) in &by_status {
        let (listed, _) = list_all(
            &mut calls,
            who,
            ListCallsRequest {
                status: *status as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(call_ids(&listed), *expected, "{status:?}");
    }

    // A window: started at or after c3, before c5.
    let started = |id: &str| {
        everything
            .iter()
            .find(|c| c.call_id == id)
            .and_then(|c| c.started_at)
            .unwrap_or_else(|| panic!("{id} has no started_at"))
    };
    let (listed, _) = list_all(
        &mut calls,
        who,
        ListCallsRequest {
            start_time: Some(started("c3")),
            end_time: Some(started("c5")),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(call_ids(&listed), ["c4", "c3"], "window [c3, c5)");
    let (listed, _) = list_all(
        &mut calls,
        who,
        ListCallsRequest {
            start_time: Some(started("c5")),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(call_ids(&listed), ["c6", "c5"], "from c5 on");
    let (listed, _) = list_all(
        &mut calls,
        who,
        ListCallsRequest {
            end_time: Some(started("c2")),
            agent_id: ACME_AGENT.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(call_ids(&listed), ["c1"], "before c2, main line");

    // Another list's token is not a ListCalls token.
    let agents_page = app
        .agents()
        .await
        .list_agents(as_who(
            who,
            ListAgentsRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(
        !agents_page.next_page_token.is_empty(),
        "Acme has two agents: a next page"
    );
    for token in [agents_page.next_page_token.as_str(), "garbage"] {
        assert_code(
            list(
                &mut calls,
                who,
                ListCallsRequest {
                    page_size: 2,
                    page_token: token.into(),
                    ..Default::default()
                },
            )
            .await,
            Code::InvalidArgument,
        );
    }

    // Paging, last: ListCalls' own next_page_token is accepted on the next
    // page. Pages of two through every row, then each status one by one.
    let first = list(
        &mut calls,
        who,
        ListCallsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|s| panic!("{s:?}"));
    let token = first.next_page_token;
    assert!(!token.is_empty(), "six calls, pages of two: a next page");
    if let Err(status) = list(
        &mut calls,
        who,
        ListCallsRequest {
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        },
    )
    .await
    {
        panic!(
            "ListCalls refuses its own next_page_token {token:?} ({} characters): {status:?}",
            token.len()
        );
    }
    // Pages of two through every row.
    let (paged, pages) = list_all(
        &mut calls,
        who,
        ListCallsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(pages, 3);
    assert_eq!(
        paged, everything,
        "pages of two give the same rows in order"
    );

    for (status, expected) in &by_status {
        let (listed, pages) = list_all(
            &mut calls,
            who,
            ListCallsRequest {
                status: *status as i32,
                page_size: 1,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(call_ids(&listed), *expected, "{status:?} one by one");
        assert_eq!(pages, expected.len().max(1), "{status:?} pages");
    }
}

// ---------------------------------------------------------------- outcomes

/// Refused and transferred calls are recorded with their outcome and
/// reason, readable by the org's viewer and by no one else: an inactive
/// agent (set through UpdateAgent by Acme's admin) → REJECT AGENT_INACTIVE
/// (SIP 480), record REFUSED; with a fallback set by the manager → TRANSFER
/// to it, record TRANSFERRED with transfer_to; an agent at its own limit →
/// TRANSFER AGENT_AT_LIMIT, and without a fallback REJECT AGENT_AT_LIMIT
/// (SIP 486). A refused call holds no slot: KeepCallAlive on it is
/// FAILED_PRECONDITION.
#[tokio::test]
async fn refused_and_transferred_calls_are_recorded_with_outcome_and_reason() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;

    set_active(&app, ACME_AGENT, false).await;
    let refused = start(&app, ACME_NUMBER, SHARED_CALLER, "inactive-1").await;
    assert_eq!(refused.outcome, CallOutcome::Reject as i32);
    assert_eq!(refused.reason, CallReason::AgentInactive as i32);
    assert_eq!(refused.sip_status, 480);
    assert_code(
        calls
            .keep_call_alive(as_who(Who::Service, call_ref(&refused, ACME_NUMBER)))
            .await,
        Code::FailedPrecondition,
    );

    update_agent(
        &app,
        Who::AcmeManager,
        Agent {
            id: ACME_AGENT.into(),
            fallback_destination: FALLBACK.into(),
            ..Default::default()
        },
        &["fallback_destination"],
    )
    .await;
    let transferred = start(&app, ACME_NUMBER, SHARED_CALLER, "inactive-2").await;
    assert_eq!(transferred.outcome, CallOutcome::Transfer as i32);
    assert_eq!(transferred.reason, CallReason::AgentInactive as i32);
    assert_eq!(transferred.transfer_to, FALLBACK);

    // Active again, with a limit of one call of its own.
    update_agent(
        &app,
        Who::AcmeAdmin,
        Agent {
            id: ACME_AGENT.into(),
            is_active: Some(true),
            max_concurrent_calls: Some(1),
            ..Default::default()
        },
        &["is_active", "max_concurrent_calls"],
    )
    .await;
    let holder = start(&app, ACME_NUMBER, "", "holder").await;
    assert_eq!(holder.outcome, CallOutcome::Answer as i32);
    let over = start(&app, ACME_NUMBER, "", "over-1").await;
    assert_eq!(over.outcome, CallOutcome::Transfer as i32);
    assert_eq!(over.reason, CallReason::AgentAtLimit as i32);
    update_agent(
        &app,
        Who::AcmeAdmin,
        Agent {
            id: ACME_AGENT.into(),
            ..Default::default()
        },
        &["fallback_destination"],
    )
    .await;
    let busy = start(&app, ACME_NUMBER, "", "over-2").await;
    assert_eq!(busy.outcome, CallOutcome::Reject as i32);
    assert_eq!(busy.reason, CallReason::AgentAtLimit as i32);
    assert_eq!(busy.sip_status, 486);

    for (call_id, outcome, reason, status, transfer_to) in [
        (
            "inactive-1",
            CallOutcome::Reject,
            CallReason::AgentInactive,
            CallStatus::Refused,
            "",
        ),
        (
            "inactive-2",
            CallOutcome::Transfer,
            CallReason::AgentInactive,
            CallStatus::Transferred,
            FALLBACK,
        ),
        (
            "holder",
            CallOutcome::Answer,
            CallReason::Answered,
            CallStatus::Ringing,
            "",
        ),
        (
            "over-1",
            CallOutcome::Transfer,
            CallReason::AgentAtLimit,
            CallStatus::Transferred,
            FALLBACK,
        ),
        (
            "over-2",
            CallOutcome::Reject,
            CallReason::AgentAtLimit,
            CallStatus::Refused,
            "",
        ),
    ] {
        let record = get_call(&mut calls, Who::AcmeViewer, by_call_id(call_id))
            .await
            .unwrap_or_else(|s| panic!("{call_id}: {s:?}"));
        assert_eq!(
            (record.outcome, record.reason, record.status),
            (outcome as i32, reason as i32, status as i32),
            "{call_id}: {record:?}"
        );
        assert_eq!(record.transfer_to, transfer_to, "{call_id}");
        assert_eq!(record.agent_id, ACME_AGENT, "{call_id}");
        assert_eq!(record.org_id, ACME, "{call_id}");
        assert!(record.answered_at.is_none() && record.ended_at.is_none());
        for who in Who::BLUEBIRD {
            assert_code(
                get_call(&mut calls, who, by_call_id(call_id)).await,
                Code::NotFound,
            );
            assert_code(
                get_call(&mut calls, who, by_id(&record.id)).await,
                Code::NotFound,
            );
        }
    }
    let (refused, _) = list_all(
        &mut calls,
        Who::AcmeViewer,
        ListCallsRequest {
            status: CallStatus::Refused as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(call_ids(&refused), ["over-2", "inactive-1"]);
    assert_eq!(
        refused[1].caller_number, SHARED_CALLER,
        "the caller is recorded on a refusal too"
    );
    assert_eq!(refused[1].customer_id, ACME_CUSTOMER);
}

/// How a call ended decides its status: EndCall without AnswerCall →
/// MISSED (no answered_at, duration 0); with AnswerCall → COMPLETED with
/// answered_at and ended_at set and duration_ms = ended_at − answered_at
/// (≥ 0); EndStatus FAILED → FAILED whether answered or not. EndCall's
/// answer is the record, and GetCall reads the same.
#[tokio::test]
async fn ended_calls_are_missed_completed_or_failed() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;
    let cases = [
        ("missed", false, EndStatus::Completed, CallStatus::Missed),
        (
            "completed",
            true,
            EndStatus::Completed,
            CallStatus::Completed,
        ),
        (
            "failed-answered",
            true,
            EndStatus::Failed,
            CallStatus::Failed,
        ),
        (
            "failed-ringing",
            false,
            EndStatus::Failed,
            CallStatus::Failed,
        ),
        // An unspecified end is a normal one.
        (
            "unspecified",
            true,
            EndStatus::Unspecified,
            CallStatus::Completed,
        ),
    ];
    for (call_id, answered, end_status, expected) in cases {
        let decision = start(&app, ACME_NUMBER, SHARED_CALLER, call_id).await;
        let reference = call_ref(&decision, ACME_NUMBER);
        if answered {
            answer(&mut calls, &reference).await;
            let ringing = get_call(&mut calls, Who::AcmeViewer, by_call_id(call_id))
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
            assert_eq!(ringing.status, CallStatus::InProgress as i32, "{call_id}");
        }
        let ended = end(
            &mut calls,
            &reference,
            end_status,
            DisconnectReason::AgentHungUp,
        )
        .await;
        assert_eq!(ended.status, expected as i32, "{call_id}: {ended:?}");
        assert!(!ended.id.is_empty(), "{call_id}: the record, from Postgres");
        let record = get_call(&mut calls, Who::AcmeViewer, by_id(&ended.id))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(
            record, ended,
            "{call_id}: GetCall reads what EndCall answered"
        );
        assert_eq!(
            record.disconnect_reason,
            DisconnectReason::AgentHungUp as i32
        );
        let ended_at = record
            .ended_at
            .unwrap_or_else(|| panic!("{call_id}: no ended_at"));
        if answered {
            let answered_at = record
                .answered_at
                .unwrap_or_else(|| panic!("{call_id}: no answered_at"));
            let millis = |t: prost_types::Timestamp| {
                i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
            };
            assert!(millis(answered_at) <= millis(ended_at), "{call_id}");
            assert!(record.duration_ms >= 0, "{call_id}");
            let expected_ms = (millis(ended_at) - millis(answered_at)) as f64 / 1e6;
            assert!(
                (record.duration_ms as f64 - expected_ms).abs() <= 1.0,
                "{call_id}: duration {} ms, timestamps say {expected_ms} ms",
                record.duration_ms
            );
        } else {
            assert!(record.answered_at.is_none(), "{call_id}");
            assert_eq!(record.duration_ms, 0, "{call_id}");
        }
    }
}

// ---------------------------------------------------------------- Postgres away

/// Postgres down (the PgBouncer in front of the service's database
/// stopped): a number whose route is cached still gets ANSWER from
/// StartCall (the route from memory, admission on Redis), and AnswerCall and
/// EndCall succeed too, EndCall answering what it knows (COMPLETED, no
/// record id yet). The three facts wait in the Redis backlog; once Postgres
/// is back the drainer writes them, and the record is exactly one row for
/// (org, call id), COMPLETED, with the decision's fields and the answer and
/// end times, in the order they happened.
#[tokio::test]
async fn a_call_during_a_postgres_outage_is_recorded_once_postgres_is_back() {
    let (app, mut database) = behind_a_pooler().await;
    let mut calls = app.calls().await;
    complete(&app, ACME_NUMBER, SHARED_CALLER, "before-outage").await;
    warm_route(&app, ACME_NUMBER, SHARED_CALLER).await;
    let backlog = backlog_key(&app).await;

    database.stop();
    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "during-outage").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    assert!(!decision.limits_unchecked, "Redis checked the limits");
    assert_eq!(
        decision.agent.as_ref().map(|a| a.id.as_str()),
        Some(ACME_AGENT)
    );
    let reference = call_ref(&decision, ACME_NUMBER);
    answer(&mut calls, &reference).await;
    let ended = end(
        &mut calls,
        &reference,
        EndStatus::Completed,
        DisconnectReason::CallerHungUp,
    )
    .await;
    assert_eq!(ended.status, CallStatus::Completed as i32, "{ended:?}");
    assert!(
        ended.id.is_empty(),
        "no record id without Postgres: {ended:?}"
    );
    assert_eq!(ended.call_id, "during-outage");
    assert!(
        backlog_len(&backlog).await >= 3,
        "decision, answer and end wait in the backlog"
    );
    // Readers need Postgres: they are told so, not shown nothing.
    assert_code(
        get_call(&mut calls, Who::AcmeViewer, by_call_id("during-outage")).await,
        Code::Unavailable,
    );

    database.start().await;
    let record = await_record(&app, ACME, "during-outage", RECORD_LIMIT, |c| {
        c.status == CallStatus::Completed as i32
    })
    .await;
    assert_eq!(rows_for(&app, ACME, "during-outage").await, 1);
    assert_eq!(record.outcome, CallOutcome::Answer as i32);
    assert_eq!(record.reason, CallReason::Answered as i32);
    assert_eq!(record.agent_id, ACME_AGENT);
    assert_eq!(record.customer_id, ACME_CUSTOMER);
    assert_eq!(record.caller_number, SHARED_CALLER);
    assert_eq!(
        record.disconnect_reason,
        DisconnectReason::CallerHungUp as i32
    );
    let at = |t: Option<prost_types::Timestamp>| {
        t.map(|t| (t.seconds, t.nanos))
            .unwrap_or_else(|| panic!("a time is missing: {record:?}"))
    };
    assert!(at(record.started_at) <= at(record.answered_at));
    assert!(at(record.answered_at) <= at(record.ended_at));
    // And the org's viewer reads it like any other.
    let seen = get_call(&mut calls, Who::AcmeViewer, by_call_id("during-outage"))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(seen, record);
    await_backlog_empty(&backlog).await;
}

/// An EndCall that reaches Postgres before the call's start does must not
/// leave the call ringing: the decision and the answer wait in the backlog
/// (Postgres down, and this replica's drainer set to run only hourly), the
/// end is written straight to Postgres once it is back, so the row holds an
/// end and no decision; then another replica drains the backlog. The facts
/// merge: one row, COMPLETED, with the decision's fields.
#[tokio::test]
async fn an_end_written_before_the_start_still_makes_one_completed_record() {
    let (app, mut database) = behind_a_pooler_with(AppOptions {
        serve_args: adjust(|a: &mut ServeArgs| {
            a.call_backlog_interval_ms = 3_600_000;
            // Once Postgres is back, the end is written straight away, not
            // left to the backlog by a slow first connection.
            a.call_record_timeout_ms = 5_000;
        }),
        ..AppOptions::default()
    })
    .await;
    let mut calls = app.calls().await;
    complete(&app, ACME_NUMBER, "", "warm").await;
    warm_route(&app, ACME_NUMBER, "").await;

    database.stop();
    let decision = start(&app, ACME_NUMBER, "", "end-first").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    let reference = call_ref(&decision, ACME_NUMBER);
    answer(&mut calls, &reference).await;
    assert_eq!(rows_for(&app, ACME, "end-first").await, 0);

    database.start().await;
    // The app reaches Postgres again (reads go to the same primary).
    within_named("the app reaching Postgres", RECORD_LIMIT, || {
        let mut calls = calls.clone();
        async move {
            get_call(&mut calls, Who::Service, by_call_id_in(ACME, "warm"))
                .await
                .is_ok()
        }
    })
    .await;
    let ended = end(
        &mut calls,
        &reference,
        EndStatus::Completed,
        DisconnectReason::CallerHungUp,
    )
    .await;
    // The end is in Postgres, alone: no decision, no answer yet.
    let (outcome, end_status, status): (Option<String>, Option<String>, String) = sqlx::query_as(
        "select outcome, end_status, status from public.calls \
         where org_id = $1::uuid and call_id = 'end-first'",
    )
    .bind(ACME)
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("the end is not in Postgres ({ended:?}): {e}"));
    assert_eq!(
        (outcome.as_deref(), end_status.as_deref()),
        (None, Some("completed")),
        "the end landed before the start ({status})"
    );

    let drainer = app
        .spawn_replica(AppOptions {
            serve_args: adjust(|a: &mut ServeArgs| a.call_backlog_interval_ms = 50),
            ..AppOptions::default()
        })
        .await;
    let record = await_record(&drainer, ACME, "end-first", RECORD_LIMIT, |c| {
        c.outcome == CallOutcome::Answer as i32 && c.answered_at.is_some()
    })
    .await;
    assert_eq!(record.status, CallStatus::Completed as i32, "{record:?}");
    assert_eq!(record.agent_id, ACME_AGENT);
    assert_eq!(
        record.disconnect_reason,
        DisconnectReason::CallerHungUp as i32
    );
    assert_eq!(rows_for(&app, ACME, "end-first").await, 1);
}

/// The replica that took a call during a Postgres outage dies before
/// Postgres returns: the call's facts are in the Redis backlog, already
/// read (pending) by the dead replica's drainer; another replica, with the
/// database reachable, takes them over once they have been idle for the
/// claim time (30 s) and writes the record: exactly one row, COMPLETED.
///
/// What is lost if Redis is down too: the record. A fact neither Postgres
/// nor the backlog takes is counted as lost
/// (`switchboard_calls_records_total{fate="lost"}`) and logged; the call
/// itself is still answered.
#[tokio::test]
async fn a_replica_that_dies_in_the_outage_loses_no_record() {
    let (mut first, mut database) = behind_a_pooler().await;
    let mut calls = first.calls().await;
    complete(&first, ACME_NUMBER, "", "warm").await;
    warm_route(&first, ACME_NUMBER, "").await;
    let backlog = backlog_key(&first).await;

    database.stop();
    let decision = start(&first, ACME_NUMBER, "", "orphan").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    let reference = call_ref(&decision, ACME_NUMBER);
    answer(&mut calls, &reference).await;
    end(
        &mut calls,
        &reference,
        EndStatus::Completed,
        DisconnectReason::AgentHungUp,
    )
    .await;
    // The dying replica's drainer has read the three facts (pending on it,
    // not acknowledged: Postgres did not take them).
    within_named(
        "the facts pending on the first replica",
        RECORD_LIMIT,
        || {
            let backlog = backlog.clone();
            async move {
                // NOGROUP until the drainer's first read makes the group.
                let pending: Result<redis::streams::StreamPendingReply, _> = redis::cmd("XPENDING")
                    .arg(&backlog)
                    .arg("recorders")
                    .query_async(&mut redis().await)
                    .await;
                pending.is_ok_and(|p| p.count() >= 3)
            }
        },
    )
    .await;
    assert_eq!(
        metric(&first, "switchboard_calls_records_total{fate=\"lost\"}").await,
        Some(0.0),
        "Redis took every fact"
    );
    first.stop().await;
    drop(database);

    let second = first.spawn_replica(AppOptions::default()).await;
    let record = await_record(&second, ACME, "orphan", CLAIM_IDLE + RECORD_LIMIT, |c| {
        c.status == CallStatus::Completed as i32
    })
    .await;
    assert_eq!(record.outcome, CallOutcome::Answer as i32);
    assert_eq!(record.agent_id, ACME_AGENT);
    assert!(record.answered_at.is_some() && record.ended_at.is_some());
    assert_eq!(
        record.disconnect_reason,
        DisconnectReason::AgentHungUp as i32
    );
    assert_eq!(rows_for(&second, ACME, "orphan").await, 1);
    await_backlog_empty(&backlog).await;
}

/// An agent deleted between the call and its record: the call is answered
/// and ended during a Postgres outage; Postgres comes back but this
/// replica's drainer does not run (hourly); the agent is deleted (SQL, as
/// Studio would); then a replica with a short drain interval writes the
/// backlog. The record lands with agent_id empty (the reference is gone,
/// not an error), the rest intact, and the backlog empties: the replay does
/// not fail forever on the missing agent.
#[tokio::test]
async fn an_agent_deleted_before_the_record_lands_leaves_the_record_without_it() {
    let (app, mut database) = behind_a_pooler_with(AppOptions {
        serve_args: adjust(|a: &mut ServeArgs| a.call_backlog_interval_ms = 3_600_000),
        ..AppOptions::default()
    })
    .await;
    let mut calls = app.calls().await;
    complete(&app, ACME_NUMBER, SHARED_CALLER, "warm").await;
    warm_route(&app, ACME_NUMBER, SHARED_CALLER).await;
    let backlog = backlog_key(&app).await;

    database.stop();
    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "agent-gone").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    let reference = call_ref(&decision, ACME_NUMBER);
    answer(&mut calls, &reference).await;
    end(
        &mut calls,
        &reference,
        EndStatus::Completed,
        DisconnectReason::CallerHungUp,
    )
    .await;
    database.start().await;

    app.db
        .exec(&format!(
            "delete from public.agents where id = '{ACME_AGENT}'"
        ))
        .await;
    assert_eq!(
        rows_for(&app, ACME, "agent-gone").await,
        0,
        "nothing drained before the delete"
    );
    assert!(backlog_len(&backlog).await >= 3);

    let drainer = app
        .spawn_replica(AppOptions {
            serve_args: adjust(|a: &mut ServeArgs| a.call_backlog_interval_ms = 50),
            ..AppOptions::default()
        })
        .await;
    let record = await_record(&drainer, ACME, "agent-gone", RECORD_LIMIT, |c| {
        c.status == CallStatus::Completed as i32 && c.outcome == CallOutcome::Answer as i32
    })
    .await;
    assert_eq!(record.agent_id, "", "the deleted agent is not referenced");
    assert_eq!(record.customer_id, ACME_CUSTOMER, "the customer still is");
    assert_eq!(record.caller_number, SHARED_CALLER);
    assert!(record.answered_at.is_some() && record.ended_at.is_some());
    assert_eq!(rows_for(&app, ACME, "agent-gone").await, 1);
    await_backlog_empty(&backlog).await;
    assert_eq!(
        metric(
            &drainer,
            "switchboard_calls_records_total{fate=\"dropped\"}"
        )
        .await,
        Some(0.0),
        "no fact was refused for good"
    );
    assert!(
        metric(
            &drainer,
            "switchboard_calls_records_total{fate=\"replayed\"}"
        )
        .await
        .unwrap_or_default()
            >= 3.0
    );
    // The org's viewer sees it, without an agent.
    let seen = get_call(&mut calls, Who::AcmeViewer, by_call_id("agent-gone"))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(seen.agent_id, "");
}

// ---------------------------------------------------------------- references

/// Every reference of a call stays inside its org: as the superuser, a
/// Bluebird call naming Acme's agent or Acme's customer fails on the
/// composite foreign keys of 20261129000001_same_org_references.sql
/// (23503), on insert and on update, while Bluebird's own agent is
/// accepted; a service_role CallRef for a call Redis does not know that
/// mixes orgs (Bluebird, Acme's agent and number) is INVALID_ARGUMENT and
/// writes nothing. And a tenant cannot write calls at all: CallService has no RPC
/// a tenant may use to write (every writing RPC is PERMISSION_DENIED for
/// each seeded user, and the rows are unchanged); the SQL role
/// `authenticated` holds no INSERT/UPDATE/DELETE on public.calls (the
/// policy matrix). The list of CallService's RPCs is read from the served
/// descriptor, so a new RPC fails here until it is placed.
#[tokio::test]
async fn call_references_stay_in_their_org_and_tenants_cannot_write_calls() {
    let app = TestApp::spawn().await;
    let fails = |sql: String| {
        let pool = app.db.pool.clone();
        async move {
            match sqlx::raw_sql(&sql).execute(&pool).await {
                Err(sqlx::Error::Database(e)) => (
                    e.code().unwrap_or_default().into_owned(),
                    e.constraint().unwrap_or_default().to_owned(),
                ),
                other => panic!("{sql}: expected a refusal, got {other:?}"),
            }
        }
    };
    for sql in [
        format!(
            "insert into public.calls (org_id, agent_id, called_number) \
             values ('{BLUEBIRD}', '{ACME_AGENT}', '{BLUEBIRD_NUMBER}')"
        ),
        format!(
            "insert into public.calls (org_id, agent_id, customer_id, called_number) \
             values ('{BLUEBIRD}', '{BLUEBIRD_AGENT}', '{ACME_CUSTOMER}', '{BLUEBIRD_NUMBER}')"
        ),
    ] {
        let (code, constraint) = fails(sql).await;
        assert_eq!(code, "23503");
        assert!(
            constraint == "calls_agent_same_org_fkey"
                || constraint == "calls_customer_same_org_fkey",
            "{constraint}"
        );
    }
    app.db
        .exec(&format!(
            "insert into public.calls (org_id, agent_id, customer_id, called_number, call_id) \
             values ('{BLUEBIRD}', '{BLUEBIRD_AGENT}', '{BLUEBIRD_CUSTOMER}', '{BLUEBIRD_NUMBER}', 'own-refs')"
        ))
        .await;
    let (code, constraint) = fails(format!(
        "update public.calls set agent_id = '{ACME_AGENT}' where call_id = 'own-refs'"
    ))
    .await;
    assert_eq!(
        (code.as_str(), constraint.as_str()),
        ("23503", "calls_agent_same_org_fkey")
    );

    // Nor through a forged CallRef: a call Redis does not know, named in
    // Bluebird with Acme's agent and number, is refused by every RPC that
    // takes one, and makes no record in either org.
    let mut calls = app.calls().await;
    let forged = CallRef {
        call_id: "forged".into(),
        called_number: ACME_NUMBER.into(),
        org_id: BLUEBIRD.into(),
        agent_id: ACME_AGENT.into(),
    };
    // UNAVAILABLE is these RPCs' "renew again" (the live state not
    // reachable now): asked again until the answer is another.
    for rpc in ["AnswerCall", "KeepCallAlive", "EndCall"] {
        let answer = std::sync::Mutex::new(None);
        let slot = &answer;
        within_named(&format!("{rpc} answered"), Duration::from_secs(5), || {
            let mut calls = calls.clone();
            let forged = forged.clone();
            async move {
                let code = match rpc {
                    "AnswerCall" => calls
                        .answer_call(as_who(Who::Service, forged))
                        .await
                        .map(|_| ()),
                    "KeepCallAlive" => calls
                        .keep_call_alive(as_who(Who::Service, forged))
                        .await
                        .map(|_| ()),
                    _ => calls
                        .end_call(as_who(
                            Who::Service,
                            EndCallRequest {
                                call: Some(forged),
                                status: EndStatus::Completed as i32,
                                disconnect_reason: DisconnectReason::CallerHungUp as i32,
                            },
                        ))
                        .await
                        .map(|_| ()),
                };
                let settled = !matches!(&code, Err(s) if s.code() == Code::Unavailable);
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(code);
                }
                settled
            }
        })
        .await;
        let answer = answer
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{rpc}: no answer"));
        assert_code(answer, Code::InvalidArgument);
    }
    assert_eq!(rows_for(&app, BLUEBIRD, "forged").await, 0);
    assert_eq!(rows_for(&app, ACME, "forged").await, 0);

    // The RPCs CallService serves, from its descriptor.
    let set = prost_types::FileDescriptorSet::decode(switchboard::pb::FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("descriptor: {e}"));
    let served: BTreeSet<String> = set
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "CallService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect();
    let reads = ["GetCall", "ListCalls", "WatchActiveCalls", "GetCallLimits"];
    let writes = [
        "StartCall",
        "AnswerCall",
        "KeepCallAlive",
        "EndCall",
        "SetOrganizationCallLimit",
    ];
    let known: BTreeSet<String> = reads
        .iter()
        .chain(&writes)
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(served, known, "CallService's RPCs: place a new one here");

    // Every writing RPC refuses every tenant, for its own org's call too.
    let acme = start(&app, ACME_NUMBER, "", "tenant-target").await;
    let before: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select call_id, status, end_status from public.calls order by id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let reference = call_ref(&acme, ACME_NUMBER);
    for who in Who::TENANTS {
        let (own, _) = who.orgs();
        let number = if own == ACME {
            ACME_NUMBER
        } else {
            BLUEBIRD_NUMBER
        };
        assert_code(
            calls
                .start_call(as_who(who, start_req(number, "", "by-a-tenant")))
                .await,
            Code::PermissionDenied,
        );
        assert_code(
            calls.answer_call(as_who(who, reference.clone())).await,
            Code::PermissionDenied,
        );
        assert_code(
            calls.keep_call_alive(as_who(who, reference.clone())).await,
            Code::PermissionDenied,
        );
        assert_code(
            calls
                .end_call(as_who(
                    who,
                    EndCallRequest {
                        call: Some(reference.clone()),
                        status: EndStatus::Failed as i32,
                        disconnect_reason: DisconnectReason::Error as i32,
                    },
                ))
                .await,
            Code::PermissionDenied,
        );
        assert_code(
            calls
                .set_organization_call_limit(as_who(
                    who,
                    SetOrganizationCallLimitRequest {
                        org_id: own.into(),
                        max_concurrent_calls: Some(1),
                    },
                ))
                .await,
            Code::PermissionDenied,
        );
    }
    let after: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select call_id, status, end_status from public.calls order by id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before, after, "no tenant changed a call");
}

// ---------------------------------------------------------------- limits

async fn limits(
    calls: &mut CallServiceClient<Channel>,
    who: Who,
    org: &str,
) -> Result<switchboard::pb::CallLimits, tonic::Status> {
    calls
        .get_call_limits(as_who(who, GetCallLimitsRequest { org_id: org.into() }))
        .await
        .map(|r| r.into_inner())
}

async fn set_limit(
    calls: &mut CallServiceClient<Channel>,
    who: Who,
    org: &str,
    limit: Option<i32>,
) -> Result<switchboard::pb::CallLimits, tonic::Status> {
    calls
        .set_organization_call_limit(as_who(
            who,
            SetOrganizationCallLimitRequest {
                org_id: org.into(),
                max_concurrent_calls: limit,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// Polls StartCall on `app` with fresh call ids until the decision's
/// organization.max_concurrent_calls is `limit`, for at most `bound`;
/// each call is ended so none holds a slot.
async fn await_decision_limit(app: &TestApp, limit: i32, bound: Duration) {
    let calls = app.calls().await;
    let next = AtomicUsize::new(0);
    let next = &next;
    // An ended call's id is not reused: each poll has ids of its own.
    let round = uuid::Uuid::new_v4().simple().to_string();
    let round = round.as_str();
    within_named(
        &format!("StartCall showing the org limit {limit}"),
        bound,
        || {
            let mut calls = calls.clone();
            async move {
                let call_id = format!("limit-{round}-{}", next.fetch_add(1, Ordering::Relaxed));
                let decision = calls
                    .start_call(as_who(Who::Service, start_req(ACME_NUMBER, "", &call_id)))
                    .await
                    .unwrap_or_else(|s| panic!("{s:?}"))
                    .into_inner();
                if decision.outcome == CallOutcome::Answer as i32 {
                    end(
                        &mut calls,
                        &call_ref(&decision, ACME_NUMBER),
                        EndStatus::Completed,
                        DisconnectReason::CallerHungUp,
                    )
                    .await;
                }
                decision.organization.map(|o| o.max_concurrent_calls) == Some(limit)
            }
        },
    )
    .await;
}

/// SetOrganizationCallLimit and GetCallLimits: service_role sets Acme's
/// override to 3; Acme's admin reads plan default 50 (pro), override 3, in
/// force 3; Acme's manager and viewer are PERMISSION_DENIED; Bluebird's
/// admin asking for Acme's limits is PERMISSION_DENIED with the same
/// answer as for an org that does not exist (nothing leaks); no tenant may
/// set a limit; 0 and 100001 are INVALID_ARGUMENT; clearing the override
/// brings in force back to 50. The decision StartCall gives on a second
/// replica, whose route was cached before the write, shows the new limit
/// within a second (the write evicts cached routes on every replica).
#[tokio::test]
async fn organization_call_limits_are_set_by_the_platform_and_read_by_admins() {
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(AppOptions::default()).await;
    let mut calls = app.calls().await;
    // The replica has Acme's route cached, with the plan's 50.
    let warm = start(&replica, ACME_NUMBER, "", "limit-warm").await;
    assert_eq!(
        warm.organization.as_ref().map(|o| o.max_concurrent_calls),
        Some(50)
    );
    warm_route(&replica, ACME_NUMBER, "").await;

    let before = limits(&mut calls, Who::AcmeAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        (before.plan_default, before.r#override, before.in_force),
        (50, None, 50)
    );

    let set = set_limit(&mut calls, Who::Service, ACME, Some(3))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!((set.r#override, set.in_force), (Some(3), 3));
    for org in ["", ACME] {
        let read = limits(&mut calls, Who::AcmeAdmin, org)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        assert_eq!(read.org_id, ACME);
        assert_eq!(read.plan_tier, PlanTier::Pro as i32);
        assert_eq!(
            (read.plan_default, read.r#override, read.in_force),
            (50, Some(3), 3)
        );
    }
    let service = limits(&mut calls, Who::Service, ACME)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!((service.r#override, service.in_force), (Some(3), 3));
    assert_code(
        limits(&mut calls, Who::Service, "").await,
        Code::InvalidArgument,
    );
    let nowhere = uuid::Uuid::new_v4().to_string();
    assert_code(
        limits(&mut calls, Who::Service, &nowhere).await,
        Code::NotFound,
    );
    // Bluebird's own limits: the starter plan's.
    let bluebird = limits(&mut calls, Who::BluebirdAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        (
            bluebird.org_id.as_str(),
            bluebird.plan_default,
            bluebird.in_force
        ),
        (BLUEBIRD, 10, 10)
    );

    for who in [
        Who::AcmeManager,
        Who::AcmeViewer,
        Who::BluebirdManager,
        Who::BluebirdViewer,
    ] {
        assert_code(limits(&mut calls, who, "").await, Code::PermissionDenied);
    }
    let theirs = assert_code(
        limits(&mut calls, Who::BluebirdAdmin, ACME).await,
        Code::PermissionDenied,
    );
    let random = assert_code(
        limits(&mut calls, Who::BluebirdAdmin, &nowhere).await,
        Code::PermissionDenied,
    );
    assert_eq!(theirs, random, "another org's limits look like nobody's");
    assert!(!theirs.contains(ACME), "{theirs}");

    for who in Who::TENANTS {
        let (own, _) = who.orgs();
        for limit in [Some(100), None] {
            assert_code(
                set_limit(&mut calls, who, own, limit).await,
                Code::PermissionDenied,
            );
        }
    }
    for out_of_range in [0, -1, 100_001] {
        let message = assert_code(
            set_limit(&mut calls, Who::Service, ACME, Some(out_of_range)).await,
            Code::InvalidArgument,
        );
        assert!(message.contains("max_concurrent_calls"), "{message}");
    }
    assert_code(
        set_limit(&mut calls, Who::Service, &nowhere, Some(5)).await,
        Code::NotFound,
    );
    let unchanged = limits(&mut calls, Who::AcmeAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(unchanged.in_force, 3, "the refused writes changed nothing");

    // The replica's cached route was evicted by the write.
    await_decision_limit(&replica, 3, Duration::from_secs(1)).await;

    let cleared = set_limit(&mut calls, Who::Service, ACME, None)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!((cleared.r#override, cleared.in_force), (None, 50));
    let read = limits(&mut calls, Who::AcmeAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        (read.plan_default, read.r#override, read.in_force),
        (50, None, 50)
    );
    await_decision_limit(&replica, 50, Duration::from_secs(1)).await;
    await_decision_limit(&app, 50, Duration::from_secs(1)).await;
}

/// A replica takes calls from the moment it accepts connections: a call
/// started on one replica is answered and renewed on a replica that has
/// just started (a rolling restart sends a media server's next request
/// anywhere), and its first StartCall is admitted on Redis. A live state
/// that comes up later than the server would refuse those renewals
/// (UNAVAILABLE), let the first calls past the limits (`limits_unchecked`),
/// and lose the record of any of them Postgres does not take then (no
/// backlog to keep it).
#[tokio::test]
async fn a_fresh_replica_takes_calls_from_its_first_request() {
    let app = TestApp::spawn().await;
    let decision = start(&app, ACME_NUMBER, "", "before-restart").await;
    let reference = call_ref(&decision, ACME_NUMBER);

    let replica = app.spawn_replica(AppOptions::default()).await;
    let mut calls = replica.calls().await;
    let answered = calls
        .answer_call(as_who(Who::Service, reference.clone()))
        .await;
    let renewed = calls.keep_call_alive(as_who(Who::Service, reference)).await;
    let first = calls
        .start_call(as_who(
            Who::Service,
            start_req(ACME_NUMBER, "", "after-restart"),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(
        answered.is_ok() && renewed.is_ok() && !first.limits_unchecked,
        "a replica's first requests: AnswerCall {answered:?}, KeepCallAlive {renewed:?}, \
         StartCall limits unchecked: {}",
        first.limits_unchecked
    );
}
