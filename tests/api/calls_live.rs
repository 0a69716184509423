//! Live calls over gRPC against the real Redis: exactly K admitted under a
//! race across replicas, agent limits and fallbacks, leases that run out or
//! are renewed in time, a Redis that restarts empty or is down, the bound on
//! recorded refusals, and the one hash slot of an organization's keys.
//!
//! Nothing here waits on the clock alone: a lease is judged by Redis's own
//! clock (`TIME` on the server the service uses), and every wait is a poll
//! with a bound.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;
use tonic::{transport::Channel, Code};

use crate::{
    calls::{call_ref, start, start_req},
    helpers::*,
    redis_server::RedisServer,
};
use switchboard::{
    config::ServeArgs,
    pb::{
        call_service_client::CallServiceClient, Agent, CallDecision, CallLease, CallOutcome,
        CallReason, CallRef, DisconnectReason, EndCallRequest, EndStatus,
        SetOrganizationCallLimitRequest, UpdateAgentRequest,
    },
};

/// How long any awaited event may take.
const EVENT_LIMIT: Duration = Duration::from_secs(10);

const FALLBACK: &str = "+14155550999";

// ---------------------------------------------------------------- helpers

fn adjust(f: impl Fn(&mut ServeArgs) + Send + Sync + 'static) -> Option<AdjustArgs> {
    Some(Arc::new(f))
}

/// Sets (or clears) an org's override as the platform does, and checks the
/// limit in force it answers.
async fn set_org_limit(app: &TestApp, org: &str, limit: i32) {
    let limits = app
        .calls()
        .await
        .set_organization_call_limit(as_who(
            Who::Service,
            SetOrganizationCallLimitRequest {
                org_id: org.into(),
                max_concurrent_calls: Some(limit),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(limits.in_force, limit);
}

/// Waits until `app` resolves Acme's number with the org limit `limit`
/// (routes carry it; another replica learns of a write by pub/sub).
async fn await_org_limit(app: &TestApp, limit: i32) {
    service_resolves_until(
        &app.agents().await,
        ACME_NUMBER,
        &format!("org limit {limit} in the route"),
        EVENT_LIMIT,
        move |answer, _| {
            answer.organization.as_ref().map(|o| o.max_concurrent_calls) == Some(limit)
        },
    )
    .await;
}

/// `UpdateAgent` of the Acme agent by `who`, of the fields named in `paths`.
async fn update_acme_agent(app: &TestApp, who: Who, agent: Agent, paths: &[&str]) -> Agent {
    app.agents()
        .await
        .update_agent(as_who(
            who,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: ACME_AGENT.into(),
                    ..agent
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

async fn start_on(calls: &mut CallServiceClient<Channel>, call_id: &str) -> CallDecision {
    calls
        .start_call(as_who(Who::Service, start_req(ACME_NUMBER, "", call_id)))
        .await
        .unwrap_or_else(|s| panic!("StartCall {call_id}: {s:?}"))
        .into_inner()
}

async fn keep_alive(
    calls: &mut CallServiceClient<Channel>,
    call: &CallRef,
) -> Result<CallLease, tonic::Status> {
    calls
        .keep_call_alive(as_who(Who::Service, call.clone()))
        .await
        .map(tonic::Response::into_inner)
}

async fn end(calls: &mut CallServiceClient<Channel>, call: &CallRef) {
    calls
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(call.clone()),
                status: EndStatus::Completed as i32,
                disconnect_reason: DisconnectReason::CallerHungUp as i32,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("EndCall: {s:?}"));
}

fn is_answer(decision: &CallDecision) -> bool {
    decision.outcome == CallOutcome::Answer as i32
}

#[track_caller]
fn assert_answered(decision: &CallDecision) {
    assert_eq!(
        (decision.outcome, decision.reason),
        (CallOutcome::Answer as i32, CallReason::Answered as i32),
        "{decision:?}"
    );
    assert!(decision.lease_expires_at.is_some(), "{decision:?}");
    assert!(!decision.limits_unchecked, "{decision:?}");
}

#[track_caller]
fn assert_rejected(decision: &CallDecision, reason: CallReason, sip: i32) {
    assert_eq!(
        (decision.outcome, decision.reason, decision.sip_status),
        (CallOutcome::Reject as i32, reason as i32, sip),
        "{decision:?}"
    );
    assert!(decision.lease_expires_at.is_none(), "{decision:?}");
    assert!(decision.transfer_to.is_empty(), "{decision:?}");
}

/// Milliseconds since the epoch of a lease's end (as Redis computed it).
fn millis(at: Option<&prost_types::Timestamp>) -> i64 {
    let at = at.unwrap_or_else(|| panic!("no lease_expires_at"));
    at.seconds * 1000 + i64::from(at.nanos) / 1_000_000
}

async fn redis_connection(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Redis's clock (`TIME`), in ms: the clock the service's leases run on.
async fn redis_now_ms(redis: &mut MultiplexedConnection) -> i64 {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(redis)
        .await
        .unwrap_or_else(|e| panic!("TIME: {e}"));
    seconds * 1000 + micros / 1000
}

/// `n` StartCalls to Acme's number at once, spread over `clients` in turn,
/// with ids `<prefix>-<i>`; their decisions (any RPC error fails the test).
async fn race(clients: &[CallServiceClient<Channel>], prefix: &str, n: usize) -> Vec<CallDecision> {
    let token = token(Who::Service);
    let mut set = JoinSet::new();
    for i in 0..n {
        let mut client = clients[i % clients.len()].clone();
        let request = authed(&token, start_req(ACME_NUMBER, "", &format!("{prefix}-{i}")));
        set.spawn(async move {
            client
                .start_call(request)
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut decisions = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        let answer = joined.unwrap_or_else(|e| panic!("task: {e}"));
        decisions.push(answer.unwrap_or_else(|s| panic!("StartCall in the race: {s:?}")));
    }
    decisions
}

/// `/metrics` of the replica at `addr`: the series `name` with `labels`.
async fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    metric_at(addr, name, labels).await.map(|v| v as u64)
}

/// The Redis Cluster slot of a key: CRC16/XMODEM of its hash tag (the
/// first `{...}` with something inside), else of the whole key, mod 16384.
fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            bytes[open + 1..]
                .iter()
                .position(|b| *b == b'}')
                .filter(|len| *len > 0)
                .map(|len| &bytes[open + 1..open + 1 + len])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for byte in hashed {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

// ------------------------------------------------------------------ tests

/// Exactly K under a race across two replicas: with Acme's limit set to 7,
/// 300 StartCalls fired at once, half through each replica, admit exactly
/// 7 (none unchecked) and refuse the other 293 as ORGANIZATION_AT_LIMIT
/// (SIP 486). Ending one admitted call frees exactly one slot: of 50 more
/// racing calls, exactly one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_is_admitted_under_a_race_across_two_replicas() {
    // This test is about the race, not about overload: a slow script must
    // not be taken for Redis being down (fail-open answers would not count
    // against the limit), and the burst's record writes must not make a
    // route fetch (the cached route may be evicted again by the write's
    // trigger) be shed for lack of a database connection.
    let options = || AppOptions {
        serve_args: adjust(|a| {
            a.call_redis_timeout_ms = 10_000;
            a.db_max_waiting = 10_000;
            a.db_acquire_timeout_ms = 5_000;
        }),
        ..AppOptions::default()
    };
    let app = TestApp::spawn_with(TestDb::seeded().await, options()).await;
    let replica = app.spawn_replica(options()).await;
    set_org_limit(&app, ACME, 7).await;
    await_org_limit(&app, 7).await;
    await_org_limit(&replica, 7).await;

    let clients = [app.calls().await, replica.calls().await];
    let decisions = race(&clients, "race", 300).await;
    let unchecked: Vec<&str> = decisions
        .iter()
        .filter(|d| d.limits_unchecked)
        .map(|d| d.call_id.as_str())
        .collect();
    assert!(
        unchecked.is_empty(),
        "{} StartCalls were decided without Redis (a script failed or timed out \
         although call_redis_timeout_ms is 10 s): {unchecked:?}",
        unchecked.len()
    );
    let answered: Vec<&CallDecision> = decisions.iter().filter(|d| is_answer(d)).collect();
    assert_eq!(answered.len(), 7, "exactly K admitted: {answered:#?}");
    for decision in &answered {
        assert_answered(decision);
    }
    for decision in decisions.iter().filter(|d| !is_answer(d)) {
        assert_rejected(decision, CallReason::OrganizationAtLimit, 486);
        assert!(!decision.limits_unchecked && !decision.replayed);
    }
    let ids: BTreeSet<&str> = decisions.iter().map(|d| d.call_id.as_str()).collect();
    assert_eq!(ids.len(), 300, "one decision per call");

    // One call ends: one slot, and only one, is free again.
    let mut calls = app.calls().await;
    end(&mut calls, &call_ref(answered[0], ACME_NUMBER)).await;
    let again = race(&clients, "again", 50).await;
    let admitted: Vec<&CallDecision> = again.iter().filter(|d| is_answer(d)).collect();
    assert_eq!(admitted.len(), 1, "exactly the freed slot");
    assert_answered(admitted[0]);
    for decision in again.iter().filter(|d| !is_answer(d)) {
        assert_rejected(decision, CallReason::OrganizationAtLimit, 486);
    }
}

/// An agent's own limit and its fallback, set by a manager through
/// UpdateAgent, apply to the very next StartCall although the route was
/// cached before the write (the write evicts it), and to another replica
/// once it has heard of the write. With `max_concurrent_calls = 2` the third
/// live call is AGENT_AT_LIMIT (486); with a fallback it is a TRANSFER to it
/// that holds no slot (KeepCallAlive: FAILED_PRECONDITION). A call that
/// ends frees its agent's slot.
#[tokio::test]
async fn an_agents_limit_refuses_then_transfers_to_its_fallback() {
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(AppOptions::default()).await;
    let mut calls = app.calls().await;
    let mut replica_calls = replica.calls().await;
    // Both replicas cache the route without an agent limit.
    let first = start_on(&mut calls, "agent-1").await;
    assert_answered(&first);
    assert_eq!(
        first.agent.as_ref().and_then(|a| a.max_concurrent_calls),
        None
    );
    let warm = start_on(&mut replica_calls, "agent-warm").await;
    assert_answered(&warm);
    end(&mut replica_calls, &call_ref(&warm, ACME_NUMBER)).await;

    let updated = update_acme_agent(
        &app,
        Who::AcmeManager,
        Agent {
            max_concurrent_calls: Some(2),
            ..Agent::default()
        },
        &["max_concurrent_calls"],
    )
    .await;
    assert_eq!(updated.max_concurrent_calls, Some(2));

    let second = start_on(&mut calls, "agent-2").await;
    assert_answered(&second);
    assert_eq!(
        second.agent.as_ref().and_then(|a| a.max_concurrent_calls),
        Some(2),
        "the next StartCall sees the limit"
    );
    let third = start_on(&mut calls, "agent-3").await;
    assert_rejected(&third, CallReason::AgentAtLimit, 486);
    assert_eq!(
        third.organization.as_ref().map(|o| o.max_concurrent_calls),
        Some(50),
        "the org (pro, 50) is far from its own limit"
    );

    // The other replica, once it has heard of the write, counts the same
    // agent's calls (held through the first replica).
    service_resolves_until(
        &replica.agents().await,
        ACME_NUMBER,
        "the agent limit on the replica",
        EVENT_LIMIT,
        |answer, _| answer.agent.as_ref().and_then(|a| a.max_concurrent_calls) == Some(2),
    )
    .await;
    let on_replica = start_on(&mut replica_calls, "agent-3-replica").await;
    assert_rejected(&on_replica, CallReason::AgentAtLimit, 486);

    update_acme_agent(
        &app,
        Who::AcmeManager,
        Agent {
            fallback_destination: FALLBACK.into(),
            ..Agent::default()
        },
        &["fallback_destination"],
    )
    .await;
    let fourth = start_on(&mut calls, "agent-4").await;
    assert_eq!(fourth.outcome, CallOutcome::Transfer as i32, "{fourth:?}");
    assert_eq!(fourth.reason, CallReason::AgentAtLimit as i32);
    assert_eq!(fourth.transfer_to, FALLBACK);
    assert_eq!(fourth.sip_status, 0);
    assert!(fourth.lease_expires_at.is_none() && fourth.renew_every.is_none());
    let message = assert_code(
        keep_alive(&mut calls, &call_ref(&fourth, ACME_NUMBER)).await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("no slot"), "{message}");

    // A call ends: its agent has a slot again, and only one.
    end(&mut calls, &call_ref(&first, ACME_NUMBER)).await;
    assert_answered(&start_on(&mut calls, "agent-5").await);
    let sixth = start_on(&mut calls, "agent-6").await;
    assert_eq!(sixth.outcome, CallOutcome::Transfer as i32, "{sixth:?}");
    assert_eq!(sixth.reason, CallReason::AgentAtLimit as i32);
}

/// An inactive agent takes no call: REJECT AGENT_INACTIVE with SIP 480
/// (no slot), and with a fallback set a TRANSFER to it, the reason kept.
#[tokio::test]
async fn an_inactive_agent_refuses_480_or_transfers_to_its_fallback() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;
    assert_answered(&start_on(&mut calls, "before").await);
    update_acme_agent(
        &app,
        Who::AcmeManager,
        Agent {
            is_active: Some(false),
            ..Agent::default()
        },
        &["is_active"],
    )
    .await;
    let refused = start_on(&mut calls, "inactive-1").await;
    assert_rejected(&refused, CallReason::AgentInactive, 480);
    assert_eq!(
        refused.agent.as_ref().map(|a| a.id.as_str()),
        Some(ACME_AGENT)
    );
    assert_code(
        keep_alive(&mut calls, &call_ref(&refused, ACME_NUMBER)).await,
        Code::FailedPrecondition,
    );

    update_acme_agent(
        &app,
        Who::AcmeManager,
        Agent {
            fallback_destination: FALLBACK.into(),
            ..Agent::default()
        },
        &["fallback_destination"],
    )
    .await;
    let transferred = start_on(&mut calls, "inactive-2").await;
    assert_eq!(
        (transferred.outcome, transferred.reason),
        (
            CallOutcome::Transfer as i32,
            CallReason::AgentInactive as i32
        ),
        "{transferred:?}"
    );
    assert_eq!(transferred.transfer_to, FALLBACK);
    assert!(transferred.lease_expires_at.is_none());
    // A retry replays the first decision for that id.
    let retry = start_on(&mut calls, "inactive-1").await;
    assert!(retry.replayed);
    assert_rejected(&retry, CallReason::AgentInactive, 480);
}

/// An app whose leases last 3 s, with Acme limited to one call.
async fn one_call_with_short_leases() -> TestApp {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            serve_args: short_lease(),
            ..AppOptions::default()
        },
    )
    .await;
    set_org_limit(&app, ACME, 1).await;
    app
}

fn short_lease() -> Option<AdjustArgs> {
    adjust(|a| {
        a.call_lease_secs = 3;
        a.call_remember_secs = 60;
    })
}

/// A media server that dies (never renews) loses its slot when the lease
/// runs out: with limit 1 and a 3 s lease a competing call is refused at
/// first and admitted once Redis's clock passes the dead call's lease (not
/// before: the admitted call's own lease starts at or after it), the purge
/// is counted, and the dead call's late renewal puts its slot back
/// (`rebuilt`, even above the limit).
#[tokio::test]
async fn the_slot_of_a_dead_media_server_is_freed_when_its_lease_runs_out() {
    let app = one_call_with_short_leases().await;
    let mut calls = app.calls().await;
    let mut redis = redis_connection(&redis_url()).await;

    let dead = start_on(&mut calls, "dead").await;
    assert_answered(&dead);
    assert_eq!(dead.renew_every.as_ref().map(|d| d.seconds), Some(1));
    let dead_expiry = millis(dead.lease_expires_at.as_ref());

    let first_probe = start_on(&mut calls, "probe-0").await;
    let after = redis_now_ms(&mut redis).await;
    assert!(
        after < dead_expiry,
        "the test itself stalled for a whole lease ({after} >= {dead_expiry})"
    );
    assert_rejected(&first_probe, CallReason::OrganizationAtLimit, 486);

    let started = Instant::now();
    let mut probes = 0;
    let admitted = loop {
        probes += 1;
        let probe = start_on(&mut calls, &format!("probe-{probes}")).await;
        if is_answer(&probe) {
            break probe;
        }
        assert_rejected(&probe, CallReason::OrganizationAtLimit, 486);
        assert!(
            started.elapsed() < EVENT_LIMIT,
            "the dead call's slot not freed within {EVENT_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_answered(&admitted);
    let admitted_at = millis(admitted.lease_expires_at.as_ref()) - 3_000;
    assert!(
        admitted_at >= dead_expiry,
        "admitted at {admitted_at}, before the dead lease ran out at {dead_expiry}"
    );
    assert_eq!(
        metric(
            app.admin_addr,
            "switchboard_calls_lease_expiries_total",
            &[]
        )
        .await,
        Some(1),
        "one expired slot purged"
    );

    // The "dead" server was only partitioned: its renewal rebuilds the
    // slot even though the org is at its limit again.
    let lease = keep_alive(&mut calls, &call_ref(&dead, ACME_NUMBER))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert!(lease.rebuilt, "the lease had run out");
    assert_rejected(
        &start_on(&mut calls, "after-rebuild").await,
        CallReason::OrganizationAtLimit,
        486,
    );
}

/// A lease renewed in time keeps the slot: a call renewed every
/// `renew_every` (1 s of a 3 s lease) keeps a competing call out for longer
/// than one lease period. Each check is judged by Redis's clock, so it is
/// deterministic: a competing StartCall that returned before the held
/// lease's end (by `TIME` read after it) must be refused, and a renewal
/// that returned before it must not report `rebuilt`. The test ends once a
/// competing call begun after the first lease would have ended was refused.
/// (Should the test itself stall for a whole lease, the slot may lapse
/// legitimately: such rounds prove nothing and are not judged.)
#[tokio::test]
async fn a_lease_renewed_in_time_keeps_its_slot() {
    let app = one_call_with_short_leases().await;
    let mut calls = app.calls().await;
    let mut redis = redis_connection(&redis_url()).await;

    let held = start_on(&mut calls, "held").await;
    assert_answered(&held);
    let held_ref = call_ref(&held, ACME_NUMBER);
    let renew_every = held
        .renew_every
        .as_ref()
        .map(|d| Duration::from_secs(u64::try_from(d.seconds).unwrap_or(1)))
        .unwrap_or_else(|| panic!("no renew_every"));
    let first_expiry = millis(held.lease_expires_at.as_ref());
    let mut expiry = first_expiry;

    let started = Instant::now();
    let mut judged = 0;
    let mut round = 0;
    loop {
        round += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no competing call judged after the first lease within 30 s ({judged} judged)"
        );
        let before = redis_now_ms(&mut redis).await;
        let competitor = start_on(&mut calls, &format!("competitor-{round}")).await;
        let after = redis_now_ms(&mut redis).await;
        if after < expiry {
            judged += 1;
            assert_rejected(&competitor, CallReason::OrganizationAtLimit, 486);
            if before > first_expiry {
                break;
            }
        } else if is_answer(&competitor) {
            // Our renewal came too late (the test stalled): free the slot
            // the lapse gave away and go on.
            end(&mut calls, &call_ref(&competitor, ACME_NUMBER)).await;
        }

        let lease = keep_alive(&mut calls, &held_ref)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        let renewed_by = redis_now_ms(&mut redis).await;
        if renewed_by < expiry {
            assert!(!lease.rebuilt, "a renewal in time rebuilt the slot");
        }
        expiry = millis(lease.lease_expires_at.as_ref());
        tokio::time::sleep(renew_every).await;
    }
}

/// A Redis restarted empty (it keeps nothing on disk) forgets every live
/// call; each call's next KeepCallAlive rebuilds its slot (`rebuilt=true`),
/// after which the org is at its limit again and a new call is refused.
#[tokio::test]
async fn a_redis_restarted_empty_is_rebuilt_by_the_renewals() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            redis_url: Some(redis.url()),
            ..AppOptions::default()
        },
    )
    .await;
    set_org_limit(&app, ACME, 3).await;
    let mut calls = app.calls().await;
    let mut live = Vec::new();
    for i in 0..3 {
        let decision = start_on(&mut calls, &format!("live-{i}")).await;
        assert_answered(&decision);
        live.push(call_ref(&decision, ACME_NUMBER));
    }
    assert_rejected(
        &start_on(&mut calls, "over").await,
        CallReason::OrganizationAtLimit,
        486,
    );

    redis.stop();
    redis.restart().await;
    let mut connection = redis_connection(&redis.url()).await;
    // (The backlog's drainer may already have made its stream again.)
    let live_keys: Vec<String> = redis::cmd("KEYS")
        .arg("*calls:{*")
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(live_keys.is_empty(), "restarted empty: {live_keys:?}");

    for call in &live {
        // Until the service has reconnected, a renewal is UNAVAILABLE.
        let started = Instant::now();
        let lease = loop {
            match keep_alive(&mut calls, call).await {
                Ok(lease) => break lease,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    assert!(
                        started.elapsed() < EVENT_LIMIT,
                        "no renewal within {EVENT_LIMIT:?} of the restart: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert!(lease.rebuilt, "Redis lost {}: rebuilt", call.call_id);
    }
    assert_rejected(
        &start_on(&mut calls, "after-restart").await,
        CallReason::OrganizationAtLimit,
        486,
    );
    let lease = keep_alive(&mut calls, &live[0])
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert!(!lease.rebuilt, "the slot is there again");
}

/// With Redis down, StartCall to an active agent answers anyway
/// (`limits_unchecked=true`) by default, counted as
/// `switchboard_calls_admission_failures_total{mode="open"}`; a replica set
/// to `call_admission_when_redis_down = "refuse"` rejects it as
/// LIMITS_UNAVAILABLE (SIP 503), `mode="refused"`, or transfers it to the
/// agent's fallback.
#[tokio::test]
async fn with_redis_down_calls_are_answered_unchecked_or_refused_503() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            redis_url: Some(redis.url()),
            ..AppOptions::default()
        },
    )
    .await;
    let refusing = app
        .spawn_replica(AppOptions {
            redis_url: Some(redis.url()),
            serve_args: adjust(|a| a.call_admission_when_redis_down = "refuse".into()),
            ..AppOptions::default()
        })
        .await;
    let failures = "switchboard_calls_admission_failures_total";
    for replica in [&app, &refusing] {
        assert_eq!(
            metric(replica.admin_addr, failures, &[("mode", "open")]).await,
            Some(0)
        );
        assert_eq!(
            metric(replica.admin_addr, failures, &[("mode", "refused")]).await,
            Some(0)
        );
    }

    redis.stop();
    let mut calls = app.calls().await;
    let open = start_on(&mut calls, "down-1").await;
    assert_eq!(
        (open.outcome, open.reason),
        (CallOutcome::Answer as i32, CallReason::Answered as i32),
        "{open:?}"
    );
    assert!(open.limits_unchecked, "{open:?}");
    assert_eq!(
        metric(app.admin_addr, failures, &[("mode", "open")]).await,
        Some(1)
    );
    assert_eq!(
        metric(app.admin_addr, failures, &[("mode", "refused")]).await,
        Some(0)
    );

    let mut refusing_calls = refusing.calls().await;
    let refused = start_on(&mut refusing_calls, "down-2").await;
    assert_rejected(&refused, CallReason::LimitsUnavailable, 503);
    assert!(refused.limits_unchecked, "{refused:?}");
    assert_eq!(
        metric(refusing.admin_addr, failures, &[("mode", "refused")]).await,
        Some(1)
    );
    assert_eq!(
        metric(refusing.admin_addr, failures, &[("mode", "open")]).await,
        Some(0)
    );

    // With a fallback, the refusing replica transfers instead (it learns of
    // the write through Postgres: Redis pub/sub is down too).
    update_acme_agent(
        &app,
        Who::AcmeManager,
        Agent {
            fallback_destination: FALLBACK.into(),
            ..Agent::default()
        },
        &["fallback_destination"],
    )
    .await;
    service_resolves_until(
        &refusing.agents().await,
        ACME_NUMBER,
        "the fallback on the refusing replica",
        EVENT_LIMIT,
        |answer, _| {
            answer
                .agent
                .as_ref()
                .map(|a| a.fallback_destination.as_str())
                == Some(FALLBACK)
        },
    )
    .await;
    let transferred = start_on(&mut refusing_calls, "down-3").await;
    assert_eq!(
        (transferred.outcome, transferred.reason),
        (
            CallOutcome::Transfer as i32,
            CallReason::LimitsUnavailable as i32
        ),
        "{transferred:?}"
    );
    assert_eq!(transferred.transfer_to, FALLBACK);
    assert_eq!(
        metric(refusing.admin_addr, failures, &[("mode", "refused")]).await,
        Some(2)
    );
}

/// Refusals are recorded at most `call_refusals_recorded_per_minute` per
/// org and reason: with the bound 5, limit 1 and one live call, 20 refused
/// StartCalls leave exactly 5 `organization_at_limit` rows in public.calls
/// and count 15 as `switchboard_calls_records_total{fate="skipped"}`.
#[tokio::test]
async fn a_flood_of_refusals_records_only_the_bound_per_minute() {
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            serve_args: adjust(|a| a.call_refusals_recorded_per_minute = 5),
            ..AppOptions::default()
        },
    )
    .await;
    set_org_limit(&app, ACME, 1).await;
    let mut calls = app.calls().await;
    assert_answered(&start_on(&mut calls, "live").await);
    for i in 0..20 {
        let refused = start_on(&mut calls, &format!("flood-{i}")).await;
        assert_rejected(&refused, CallReason::OrganizationAtLimit, 486);
    }

    let records = "switchboard_calls_records_total";
    let count_refusals = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from public.calls \
             where org_id = $1::uuid and reason = 'organization_at_limit'",
        )
        .bind(ACME)
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    };
    // Written before each answer, or (past the record timeout) through the
    // backlog: wait until nothing is left in it.
    let count = &count_refusals;
    let admin = app.admin_addr;
    within_named("the refusals recorded", EVENT_LIMIT, || async move {
        let backlogged = metric(admin, records, &[("fate", "backlogged")]).await;
        let replayed = metric(admin, records, &[("fate", "replayed")]).await;
        backlogged == replayed && count().await >= 5
    })
    .await;
    assert_eq!(count_refusals().await, 5);
    assert_eq!(
        metric(app.admin_addr, records, &[("fate", "skipped")]).await,
        Some(15)
    );
    let total: i64 =
        sqlx::query_scalar("select count(*) from public.calls where org_id = $1::uuid")
            .bind(ACME)
            .fetch_one(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(total, 6, "the live call and 5 refusals");
}

/// Every live-call key of one org carries the hash tag `{<org id>}`, so all
/// of them (and the admission script's) hash to one Redis Cluster slot:
/// the org's own slot. (Redis here is not a cluster, where CLUSTER KEYSLOT
/// is refused: the slot is computed as Redis does, CRC16/XMODEM mod 16384,
/// checked against Redis's documented values.)
#[tokio::test]
async fn the_keys_of_one_org_share_one_cluster_slot() {
    assert_eq!(key_slot("foo"), 12_182);
    assert_eq!(key_slot("bar"), 5_061);
    assert_eq!(key_slot("{foo}.other"), key_slot("foo"));

    let app = TestApp::spawn().await;
    set_org_limit(&app, ACME, 2).await;
    let mut calls = app.calls().await;
    let a1 = start_on(&mut calls, "a-1").await;
    assert_answered(&a1);
    let a2 = start_on(&mut calls, "a-2").await;
    assert_answered(&a2);
    assert_rejected(
        &start_on(&mut calls, "a-3").await,
        CallReason::OrganizationAtLimit,
        486,
    );
    end(&mut calls, &call_ref(&a2, ACME_NUMBER)).await;
    let b1 = start(&app, BLUEBIRD_NUMBER, "", "b-1").await;
    assert_answered(&b1);

    // Live keys keep their own format version (v2) under the routes' (v3).
    let prefix = app.db.live_prefix().await;
    let mut redis = redis_connection(&redis_url()).await;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*calls:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .unwrap_or_else(|e| panic!("SCAN: {e}"));
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.retain(|key| !key.ends_with("calls:backlog"));
    let expected: BTreeSet<String> = [
        format!("calls:{{{ACME}}}:active"),
        format!("calls:{{{ACME}}}:agents"),
        format!("calls:{{{ACME}}}:agent:{ACME_AGENT}"),
        format!("calls:{{{ACME}}}:call:a-1"),
        format!("calls:{{{ACME}}}:call:a-2"),
        format!("calls:{{{ACME}}}:call:a-3"),
        format!("calls:{{{ACME}}}:refusals"),
        format!("calls:{{{BLUEBIRD}}}:active"),
        format!("calls:{{{BLUEBIRD}}}:agents"),
        format!("calls:{{{BLUEBIRD}}}:agent:{BLUEBIRD_AGENT}"),
        format!("calls:{{{BLUEBIRD}}}:call:b-1"),
    ]
    .into_iter()
    .map(|suffix| format!("{prefix}{suffix}"))
    .collect();
    let found: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(found, expected);

    for org in [ACME, BLUEBIRD] {
        let tag = format!("{{{org}}}");
        let slot = key_slot(&tag);
        let of_org: Vec<&String> = keys.iter().filter(|k| k.contains(&tag)).collect();
        assert!(of_org.len() >= 4, "{of_org:?}");
        for key in of_org {
            assert_eq!(key.matches('{').count(), 1, "one hash tag: {key}");
            assert_eq!(key_slot(key), slot, "{key} is in its org's slot");
        }
    }
}

/// With Redis gone, a replica applies the limits alone to the calls it
/// admits meanwhile, and keeps the refusal-record bound alone: limit 2 and a
/// bound of 3 a minute, ten starts → two answered, eight refused at the
/// organization's limit, of which three are recorded (five rows in all) and
/// five only counted.
#[tokio::test]
async fn with_redis_down_a_replica_applies_the_limits_and_the_record_bound_alone() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            redis_url: Some(redis.url()),
            serve_args: adjust(|a| a.call_refusals_recorded_per_minute = 3),
            ..AppOptions::default()
        },
    )
    .await;
    set_org_limit(&app, ACME, 2).await;
    redis.stop();
    let mut calls = app.calls().await;
    let mut answered = 0;
    let mut refused = 0;
    for i in 0..10 {
        let decision = start_on(&mut calls, &format!("alone-{i}")).await;
        assert!(decision.limits_unchecked, "{decision:?}");
        if decision.outcome == CallOutcome::Answer as i32 {
            answered += 1;
        } else {
            assert_eq!(
                (decision.reason, decision.sip_status),
                (CallReason::OrganizationAtLimit as i32, 486),
                "{decision:?}"
            );
            refused += 1;
        }
    }
    assert_eq!((answered, refused), (2, 8));
    let rows: i64 = sqlx::query_scalar(&format!(
        "select count(*) from public.calls where org_id = '{ACME}' and call_id like 'alone-%'"
    ))
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, 5);
    assert_eq!(
        metric(
            app.admin_addr,
            "switchboard_calls_records_total",
            &[("fate", "skipped")]
        )
        .await,
        Some(5)
    );
}
