//! `WatchActiveCalls` over gRPC: the first view at once, changes pushed
//! (coalesced) from any replica, lease expiries, who may watch what, and how
//! a stream ends (token expiry, lost membership, shutdown) or is refused
//! (caps).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use switchboard::{
    config::ServeArgs,
    pb::{
        call_service_client::CallServiceClient, ActiveCalls, CallOutcome, DisconnectReason,
        EndCallRequest, EndStatus, WatchActiveCallsRequest,
    },
};
use tonic::{transport::Channel, Code, Request, Status, Streaming};

use super::calls::{call_ref, start};
use crate::helpers::*;

/// How long a test waits for any one message it expects.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// Options with the server's settings adjusted by `adjust`.
fn with_args(adjust: impl Fn(&mut ServeArgs) + Send + Sync + 'static) -> AppOptions {
    AppOptions {
        serve_args: Some(Arc::new(adjust)),
        ..AppOptions::default()
    }
}

/// A 50 ms poll, so that pushed changes show up quickly.
fn fast_watch() -> AppOptions {
    with_args(|args| args.watch_interval_ms = 50)
}

fn watch_req(org_id: &str) -> WatchActiveCallsRequest {
    WatchActiveCallsRequest {
        org_id: org_id.into(),
    }
}

/// Opens a stream as `who` on `org_id` ("" = none named).
async fn watch(app: &TestApp, who: Who, org_id: &str) -> Result<Streaming<ActiveCalls>, Status> {
    open(&mut app.calls().await, as_who(who, watch_req(org_id))).await
}

async fn open(
    calls: &mut CallServiceClient<Channel>,
    request: Request<WatchActiveCallsRequest>,
) -> Result<Streaming<ActiveCalls>, Status> {
    calls
        .watch_active_calls(request)
        .await
        .map(|r| r.into_inner())
}

/// The next message; fails if the stream ends, errs or says nothing for
/// `MESSAGE_WAIT`.
async fn next(stream: &mut Streaming<ActiveCalls>) -> ActiveCalls {
    match tokio::time::timeout(MESSAGE_WAIT, stream.message()).await {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => panic!("no message within {MESSAGE_WAIT:?}"),
    }
}

/// Reads messages until one passes `check`, for at most `limit` in all;
/// returns every message read (the last one passes).
async fn read_until(
    stream: &mut Streaming<ActiveCalls>,
    what: &str,
    limit: Duration,
    check: impl Fn(&ActiveCalls) -> bool,
) -> Vec<ActiveCalls> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut read = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(message))) => {
                let done = check(&message);
                read.push(message);
                if done {
                    return read;
                }
            }
            Ok(Ok(None)) => panic!("{what}: the stream ended; read {read:?}"),
            Ok(Err(status)) => panic!("{what}: the stream failed: {status:?}; read {read:?}"),
            Err(_) => panic!("{what}: not within {limit:?}; read {read:?}"),
        }
    }
}

/// Reads until the stream ends with an error, for at most `limit`; the
/// error. A clean end or silence past `limit` fails the test.
async fn read_until_error(
    stream: &mut Streaming<ActiveCalls>,
    what: &str,
    limit: Duration,
) -> Status {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("{what}: the stream ended without an error"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("{what}: the stream did not end within {limit:?}"),
        }
    }
}

/// The live calls the message gives `agent_id`, if it lists the agent.
fn agent_active(message: &ActiveCalls, agent_id: &str) -> Option<i32> {
    message
        .agents
        .iter()
        .find(|a| a.agent_id == agent_id)
        .map(|a| a.active)
}

async fn end(app: &TestApp, reference: switchboard::pb::CallRef) {
    app.calls()
        .await
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(reference),
                status: EndStatus::Completed as i32,
                disconnect_reason: DisconnectReason::CallerHungUp as i32,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
}

/// The first view comes at once (nothing live, Acme's pro limit of 50), and
/// a call started and ended on another replica is pushed to the stream as
/// it happens: the count and the agent's entry go to 1, then back to 0.
#[tokio::test]
async fn the_first_view_comes_at_once_and_changes_on_any_replica_are_pushed() {
    let app = TestApp::spawn_with(TestDb::seeded().await, fast_watch()).await;
    let other = app.spawn_replica(fast_watch()).await;
    let mut stream = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));

    let first = next(&mut stream).await;
    assert_eq!(first.org_id, ACME);
    assert_eq!(first.active, 0);
    assert_eq!(first.limit, 50, "Acme is on pro: 50");
    assert!(first.at.is_some());
    assert!(
        first.agents.iter().all(|a| a.active == 0),
        "{:?}",
        first.agents
    );

    let decision = start(&other, ACME_NUMBER, SHARED_CALLER, "watch-1").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    // One admission is one atomic change: the next view shows all of it.
    let started = next(&mut stream).await;
    assert_eq!(started.org_id, ACME);
    assert_eq!(started.active, 1, "{started:?}");
    assert_eq!(started.limit, 50);
    assert_eq!(agent_active(&started, ACME_AGENT), Some(1), "{started:?}");

    end(&other, call_ref(&decision, ACME_NUMBER)).await;
    let ended = next(&mut stream).await;
    assert_eq!(ended.active, 0, "{ended:?}");
    assert!(
        agent_active(&ended, ACME_AGENT).unwrap_or(0) == 0,
        "{ended:?}"
    );
}

/// Changes within one poll interval are sent as one message: 5 calls started
/// together reach the stream in fewer messages than there were changes.
///
/// Why this is deterministic: the server reads the counts at most once per
/// interval (ticks `I` = 2 s apart, never closer: missed ticks are
/// delayed), and sends a view only when it differs from the last one. A
/// message showing a count between 1 and 4 comes from a read made while the
/// starts were under way, i.e. within the `span` measured from before the
/// first StartCall was sent to after the last one answered. Reads within a
/// window of `span` number at most `span / I + 1`, plus one for the gap
/// between a tick and its read on Redis (a read is bounded by the Redis
/// timeout, far below `I`); then one message shows 5. So a correct server
/// sends at most `span / I + 3` messages after the first, whatever the
/// machine's speed; the test asserts exactly that bound, which is 3 (< 5)
/// whenever the 5 starts take less than `I` together (they are sent
/// concurrently and take milliseconds). A server that sent one message per
/// change would send 5.
#[tokio::test]
async fn changes_within_an_interval_are_coalesced() {
    const INTERVAL_MS: u64 = 2_000;
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        with_args(|args| args.watch_interval_ms = INTERVAL_MS),
    )
    .await;
    let mut stream = watch(&app, Who::Service, ACME)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let first = next(&mut stream).await;
    assert_eq!(first.active, 0);

    let ids: Vec<String> = (0..5).map(|i| format!("burst-{i}")).collect();
    let began = Instant::now();
    let decisions =
        futures_util::future::join_all(ids.iter().map(|id| start(&app, ACME_NUMBER, "", id))).await;
    let span = began.elapsed();
    assert!(
        decisions
            .iter()
            .all(|d| d.outcome == CallOutcome::Answer as i32),
        "{decisions:?}"
    );

    let read = read_until(&mut stream, "5 live calls", Duration::from_secs(20), |m| {
        m.active == 5
    })
    .await;
    let allowed = (span.as_millis() / u128::from(INTERVAL_MS)) as usize + 3;
    assert!(
        read.len() <= allowed,
        "{} messages for 5 changes made within {span:?} (at most {allowed}): {read:?}",
        read.len()
    );
    assert!(
        read.windows(2).all(|w| w[0].active < w[1].active),
        "views only grow while calls start: {read:?}"
    );
}

/// A call whose lease runs out (never renewed, lease 3 s) leaves the count
/// with no other call or request to purge it: the stream goes back to 0, and
/// not before the lease's end.
#[tokio::test]
async fn a_call_whose_lease_ran_out_leaves_the_count() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        with_args(|args| {
            args.watch_interval_ms = 50;
            args.call_lease_secs = 3;
        }),
    )
    .await;
    let mut stream = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut stream).await.active, 0);

    let decision = start(&app, ACME_NUMBER, "", "never-renewed").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    let lease_end = decision
        .lease_expires_at
        .unwrap_or_else(|| panic!("an answered call has a lease: {decision:?}"));
    let live = next(&mut stream).await;
    assert_eq!(live.active, 1, "{live:?}");
    assert_eq!(agent_active(&live, ACME_AGENT), Some(1));

    let read = read_until(
        &mut stream,
        "the expired call gone",
        Duration::from_secs(15),
        |m| m.active == 0,
    )
    .await;
    let gone = &read[read.len() - 1];
    assert!(agent_active(gone, ACME_AGENT).unwrap_or(0) == 0, "{gone:?}");
    // Redis's clock and the server's are the same machine's; a second of
    // slack for the different roundings.
    let at = gone.at.unwrap_or_else(|| panic!("no time: {gone:?}"));
    assert!(
        at.seconds + 1 >= lease_end.seconds,
        "gone at {at:?}, before the lease ended at {lease_end:?}"
    );
}

/// Tenants watch their own organization only, and service_role must name
/// one: a tenant naming another org is refused, service_role without one
/// (or with a malformed one) is invalid, and service_role naming Bluebird
/// sees Bluebird's calls and not Acme's.
#[tokio::test]
async fn each_caller_watches_only_an_organization_it_may_see() {
    let app = TestApp::spawn_with(TestDb::seeded().await, fast_watch()).await;

    let mut acme = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let first = next(&mut acme).await;
    assert_eq!((first.org_id.as_str(), first.limit), (ACME, 50));
    // Naming one's own org is allowed.
    let mut named = watch(&app, Who::AcmeViewer, ACME)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut named).await.org_id, ACME);

    assert_code(
        watch(&app, Who::BluebirdAdmin, ACME).await,
        Code::PermissionDenied,
    );
    assert_code(watch(&app, Who::Service, "").await, Code::InvalidArgument);
    assert_code(
        watch(&app, Who::Service, "not-an-org").await,
        Code::InvalidArgument,
    );

    let mut bluebird = watch(&app, Who::Service, BLUEBIRD)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let first = next(&mut bluebird).await;
    assert_eq!(first.org_id, BLUEBIRD);
    assert_eq!(first.active, 0);
    assert_eq!(first.limit, 10, "Bluebird is on starter: 10");

    // Acme's call first: had it leaked into Bluebird's stream, the next
    // Bluebird view would show it.
    let acme_call = start(&app, ACME_NUMBER, "", "acme-1").await;
    assert_eq!(acme_call.outcome, CallOutcome::Answer as i32);
    let bluebird_call = start(&app, BLUEBIRD_NUMBER, "", "bluebird-1").await;
    assert_eq!(bluebird_call.outcome, CallOutcome::Answer as i32);

    let seen = next(&mut bluebird).await;
    assert_eq!(seen.org_id, BLUEBIRD);
    assert_eq!(seen.active, 1, "{seen:?}");
    assert_eq!(agent_active(&seen, BLUEBIRD_AGENT), Some(1), "{seen:?}");
    assert_eq!(agent_active(&seen, ACME_AGENT), None, "{seen:?}");

    let seen = next(&mut acme).await;
    assert_eq!(seen.org_id, ACME);
    assert_eq!(seen.active, 1, "{seen:?}");
    assert_eq!(agent_active(&seen, ACME_AGENT), Some(1), "{seen:?}");
    assert_eq!(agent_active(&seen, BLUEBIRD_AGENT), None, "{seen:?}");
}

/// The stream ends with UNAUTHENTICATED at the token's `exp` itself: not
/// before it, and not 30 s later (the clock skew allowed when the token is
/// verified does not extend a stream).
#[tokio::test]
async fn the_stream_ends_unauthenticated_when_the_token_expires() {
    let app = TestApp::spawn_with(TestDb::seeded().await, fast_watch()).await;
    let exp = now() + 4;
    let token = token_with(Who::AcmeViewer, json!({ "exp": exp }));
    let mut stream = open(&mut app.calls().await, authed(&token, watch_req("")))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut stream).await.org_id, ACME);

    // 20 s: past `exp`, well before `exp` + 30 s.
    let status = read_until_error(&mut stream, "token expiry", Duration::from_secs(20)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    assert!(now() >= exp, "ended before the token's exp");
}

/// A token already past its `exp` but within the verification's clock skew
/// opens a stream, which ends at once with UNAUTHENTICATED (its `exp` has
/// passed): the skew does not buy a stream 30 s of life.
#[tokio::test]
async fn a_token_past_its_exp_within_the_skew_gets_a_stream_that_ends_at_once() {
    let app = TestApp::spawn_with(TestDb::seeded().await, fast_watch()).await;
    let token = token_with(Who::AcmeViewer, json!({ "exp": now() - 5 }));
    let mut stream = open(&mut app.calls().await, authed(&token, watch_req("")))
        .await
        .unwrap_or_else(|s| panic!("accepted within the clock skew: {s:?}"));
    // 15 s: well before the skew (25 s left) would end it.
    let status = read_until_error(&mut stream, "expired token", Duration::from_secs(15)).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// A tenant removed from the organization while it watches is cut off with
/// PERMISSION_DENIED at the next membership check; another member's stream
/// goes on.
#[tokio::test]
async fn the_stream_ends_permission_denied_when_the_member_leaves() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        with_args(|args| {
            args.watch_interval_ms = 50;
            args.watch_recheck_secs = 1;
        }),
    )
    .await;
    let mut viewer = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut viewer).await.org_id, ACME);
    let mut admin = watch(&app, Who::AcmeAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut admin).await.active, 0);

    let viewer_id = Who::AcmeViewer
        .user_id()
        .unwrap_or_else(|| panic!("a tenant has an id"));
    app.db
        .exec(&format!(
            "delete from public.profiles where id = '{viewer_id}'"
        ))
        .await;

    let status = read_until_error(&mut viewer, "membership lost", Duration::from_secs(15)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("no longer a member"),
        "{status:?}"
    );

    // The admin's stream outlived the same checks and still follows.
    let decision = start(&app, ACME_NUMBER, "", "after-leave").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    assert_eq!(next(&mut admin).await.active, 1);
}

/// An organization may hold `watch_max_per_org` streams on a replica: the
/// next is RESOURCE_EXHAUSTED (another organization is not affected); once a
/// client drops its stream, the slot is freed and a new stream opens, and
/// the cap holds again.
#[tokio::test]
async fn streams_per_organization_are_capped_and_a_dropped_stream_frees_its_slot() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        with_args(|args| {
            args.watch_interval_ms = 50;
            args.watch_max_per_org = 2;
        }),
    )
    .await;
    let mut first = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    next(&mut first).await;
    let mut second = watch(&app, Who::AcmeAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    next(&mut second).await;

    let message = assert_code(
        watch(&app, Who::AcmeManager, "").await,
        Code::ResourceExhausted,
    );
    assert!(message.contains("MAX_PER_ORG"), "{message}");
    // The platform's own view is not counted against the org: a tenant
    // cannot lock service_role out.
    let mut platform = watch(&app, Who::Service, ACME)
        .await
        .unwrap_or_else(|s| panic!("service_role is not capped per org: {s:?}"));
    assert_eq!(next(&mut platform).await.org_id, ACME);
    let mut bluebird = watch(&app, Who::BluebirdViewer, "")
        .await
        .unwrap_or_else(|s| panic!("another org has its own slots: {s:?}"));
    assert_eq!(next(&mut bluebird).await.org_id, BLUEBIRD);

    drop(first);
    // The slot is given back when the server's task notices the client left.
    let limit = Duration::from_secs(10);
    let began = Instant::now();
    let mut third = loop {
        match watch(&app, Who::AcmeManager, "").await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    began.elapsed() < limit,
                    "the dropped stream's slot not freed within {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(next(&mut third).await.org_id, ACME);
    // Two open again: the cap holds.
    assert_code(
        watch(&app, Who::AcmeViewer, "").await,
        Code::ResourceExhausted,
    );
    // Both open streams are still served.
    let decision = start(&app, ACME_NUMBER, "", "capped-1").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    assert_eq!(next(&mut second).await.active, 1);
    assert_eq!(next(&mut third).await.active, 1);
}

/// One user cannot take all of its org's streams: with the per-user cap
/// at 2, a user's third stream is refused while another member of the
/// same org still opens one.
#[tokio::test]
async fn streams_per_user_are_capped() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        with_args(|args| {
            args.watch_interval_ms = 50;
            args.watch_max_per_user = 2;
        }),
    )
    .await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = watch(&app, Who::AcmeViewer, "")
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        next(&mut stream).await;
        open.push(stream);
    }
    let message = assert_code(
        watch(&app, Who::AcmeViewer, "").await,
        Code::ResourceExhausted,
    );
    assert!(message.contains("MAX_PER_USER"), "{message}");
    let mut admin = watch(&app, Who::AcmeAdmin, "")
        .await
        .unwrap_or_else(|s| panic!("another member is not capped by the viewer: {s:?}"));
    assert_eq!(next(&mut admin).await.org_id, ACME);
}

/// Shutdown ends the open streams instead of waiting for them: with a 60 s
/// drain allowed and a token valid for an hour, `stop` returns within 5 s
/// and the client's stream ends.
#[tokio::test]
async fn shutdown_ends_open_streams_without_holding_the_drain() {
    let mut app = TestApp::spawn_with(
        TestDb::seeded().await,
        with_args(|args| {
            args.watch_interval_ms = 50;
            // Long enough that only the streams' ending lets `stop` return
            // within the bound below (the harness's default is 1 s).
            args.shutdown_timeout_ms = 60_000;
        }),
    )
    .await;
    let mut stream = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(next(&mut stream).await.org_id, ACME);

    let bound = Duration::from_secs(5);
    assert!(
        tokio::time::timeout(bound, app.stop()).await.is_ok(),
        "the server did not stop within {bound:?} with a stream open"
    );
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(None)) | Ok(Err(_)) => break,
            // A view sent before the end may still be on its way.
            Ok(Ok(Some(_))) => {}
            Err(_) => panic!("the client's stream did not end within {bound:?}"),
        }
    }
}

/// A stream counts against the replica's in-flight requests for its whole
/// life: with the cap at 2, one open stream holds one, so a unary call is
/// still served (the other), but a second stream is refused (its handler
/// takes the last one and the stream would need another), naming the
/// setting; once the first stream is dropped, the second opens.
#[tokio::test]
async fn a_stream_holds_an_in_flight_request_for_its_life() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            max_concurrent_requests: 2,
            ..fast_watch()
        },
    )
    .await;
    let mut first = watch(&app, Who::AcmeViewer, "")
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    next(&mut first).await;
    let mut agents = app.agents().await;
    service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("one permit is left for a unary call: {s:?}"));
    let message = assert_code(
        watch(&app, Who::AcmeAdmin, "").await,
        Code::ResourceExhausted,
    );
    assert!(message.contains("MAX_CONCURRENT_REQUESTS"), "{message}");

    drop(first);
    let limit = Duration::from_secs(10);
    let began = Instant::now();
    let mut second = loop {
        match watch(&app, Who::AcmeAdmin, "").await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    began.elapsed() < limit,
                    "the dropped stream's permit not given back within {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(next(&mut second).await.org_id, ACME);
}
