//! Business hours and the after-hours chain, end to end: hours set with
//! UpdateAgent (mask `business_hours`) and read back canonical; a closed
//! agent refused (SIP 480, recorded) or transferred; an after-hours agent
//! that answers, and whose `CallRef` works; the chain's limits (a loop, more
//! than `MAX_HOPS` hops, an inactive or full after-hours agent); refused
//! input; hours edited in SQL reaching a warm cached route; the zone's local
//! date and time in the variables; the tzdb release on `/metrics`.
//!
//! Hours are relative to the real clock: open is 00:00-24:00 every day;
//! closed is that, with exceptions closing yesterday, today and tomorrow in
//! the zone (so a run across midnight is still closed).

use std::time::Duration;

use chrono::{Days, NaiveDate, NaiveDateTime, Timelike, Utc};
use tonic::{Code, Status};

use crate::{
    calls::{call_ref, start, start_req},
    helpers::*,
};
use switchboard::pb::{
    Agent, BusinessHours, CallDecision, CallOutcome, CallReason, CallRef, CallStatus,
    CreateAgentRequest, DisconnectReason, EndCallRequest, EndStatus, GetAgentRequest,
    GetCallRequest, HoursException, HoursWindow, TimeRange, UpdateAgentRequest,
};

const ZONE: &str = "America/New_York";
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Where the first agent transfers after hours.
const AFTER_HOURS_LINE: &str = "+14155550900";
/// The first agent's own fallback (never used by these chains).
const FIRST_FALLBACK: &str = "+14155550901";
/// The after-hours agent's fallback.
const SECOND_FALLBACK: &str = "+14155550902";

// ---------------------------------------------------------------- helpers

/// 00:00-24:00 on every day of the week.
fn all_week() -> Vec<HoursWindow> {
    DAYS.iter()
        .map(|day| HoursWindow {
            day: (*day).into(),
            open: "00:00".into(),
            close: "24:00".into(),
        })
        .collect()
}

/// Open now, whenever now is.
fn open_hours() -> BusinessHours {
    BusinessHours {
        time_zone: ZONE.into(),
        weekly: all_week(),
        ..Default::default()
    }
}

/// Today's date in the zone.
fn local_today() -> NaiveDate {
    Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive()
}

/// Open all week, but closed yesterday, today and tomorrow in the zone:
/// closed now, across a midnight during the test too.
fn closed_hours() -> BusinessHours {
    let today = local_today();
    let days = [
        today.checked_sub_days(Days::new(1)),
        Some(today),
        today.checked_add_days(Days::new(1)),
    ];
    BusinessHours {
        time_zone: ZONE.into(),
        weekly: all_week(),
        exceptions: days
            .into_iter()
            .flatten()
            .map(|d| HoursException {
                date: d.format("%Y-%m-%d").to_string(),
                closed: true,
                hours: Vec::new(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Closed now, then to another agent.
fn closed_to_agent(agent_id: &str) -> BusinessHours {
    BusinessHours {
        after_hours_agent_id: agent_id.into(),
        ..closed_hours()
    }
}

/// Closed now, then transferred.
fn closed_to_line(target: &str) -> BusinessHours {
    BusinessHours {
        after_hours_transfer_to: target.into(),
        ..closed_hours()
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// UpdateAgent of `agent`'s fields in `paths`, as Acme's admin.
async fn update(app: &TestApp, agent: Agent, paths: &[&str]) -> Result<Agent, Status> {
    app.agents()
        .await
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(agent),
                update_mask: mask(paths),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

/// UpdateAgent of the business hours alone (`None` clears them).
async fn set_hours(
    app: &TestApp,
    agent_id: &str,
    hours: Option<BusinessHours>,
) -> Result<Agent, Status> {
    update(
        app,
        Agent {
            id: agent_id.into(),
            business_hours: hours,
            ..Default::default()
        },
        &["business_hours"],
    )
    .await
}

async fn must_set_hours(app: &TestApp, agent_id: &str, hours: BusinessHours) -> Agent {
    set_hours(app, agent_id, Some(hours))
        .await
        .unwrap_or_else(|s| panic!("hours of {agent_id}: {s:?}"))
}

/// A new Acme agent at `phone` (open: no hours), as Acme's admin.
async fn create_agent(app: &TestApp, agent: Agent) -> Agent {
    app.agents()
        .await
        .create_agent(as_who(
            Who::AcmeAdmin,
            CreateAgentRequest { agent: Some(agent) },
        ))
        .await
        .unwrap_or_else(|s| panic!("CreateAgent: {s:?}"))
        .into_inner()
}

async fn acme_agent(app: &TestApp, phone: &str) -> Agent {
    create_agent(app, new_agent("", phone)).await
}

async fn get_agent(app: &TestApp, id: &str) -> Agent {
    app.agents()
        .await
        .get_agent(as_who(Who::AcmeViewer, GetAgentRequest { id: id.into() }))
        .await
        .unwrap_or_else(|s| panic!("GetAgent {id}: {s:?}"))
        .into_inner()
}

async fn record(app: &TestApp, call_id: &str) -> switchboard::pb::Call {
    app.calls()
        .await
        .get_call(as_who(
            Who::AcmeViewer,
            GetCallRequest {
                call_id: call_id.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("GetCall {call_id}: {s:?}"))
        .into_inner()
}

/// ResolveAgent as the media servers do (service_role), with the tier.
async fn resolve(
    app: &TestApp,
    number: &str,
) -> Result<(switchboard::pb::ResolveAgentResponse, String), Status> {
    service_resolve(&mut app.agents().await, number).await
}

/// The message of ResolveAgent's FAILED_PRECONDITION for `number`.
async fn resolve_refusal(app: &TestApp, number: &str) -> String {
    assert_code(resolve(app, number).await, Code::FailedPrecondition)
}

fn agent_id(decision: &CallDecision) -> &str {
    decision.agent.as_ref().map_or("", |a| a.id.as_str())
}

fn assert_refused(decision: &CallDecision, reason: CallReason, sip: i32, what: &str) {
    assert_eq!(
        (decision.outcome, decision.reason, decision.sip_status),
        (CallOutcome::Reject as i32, reason as i32, sip),
        "{what}: {decision:?}"
    );
    assert!(decision.transfer_to.is_empty(), "{what}: {decision:?}");
}

fn assert_transferred(decision: &CallDecision, reason: CallReason, to: &str, what: &str) {
    assert_eq!(
        (
            decision.outcome,
            decision.reason,
            decision.transfer_to.as_str()
        ),
        (CallOutcome::Transfer as i32, reason as i32, to),
        "{what}: {decision:?}"
    );
}

fn assert_answered_by(decision: &CallDecision, agent: &str, path: &[&str], what: &str) {
    assert_eq!(
        (decision.outcome, decision.reason),
        (CallOutcome::Answer as i32, CallReason::Answered as i32),
        "{what}: {decision:?}"
    );
    assert_eq!(agent_id(decision), agent, "{what}: the answering agent");
    assert_eq!(decision.route_path, path, "{what}: the route path");
}

// ------------------------------------------------------------------ tests

/// Hours sent in any order come back canonical (weekly by day, exceptions
/// by date) from UpdateAgent and GetAgent; open now, the call is answered
/// by the number's own agent and ResolveAgent carries the hours.
#[tokio::test]
async fn hours_are_stored_canonical_and_an_open_agent_answers() {
    let app = TestApp::spawn().await;
    let mut weekly = all_week();
    weekly.reverse();
    let hours = BusinessHours {
        time_zone: ZONE.into(),
        weekly,
        exceptions: vec![
            HoursException {
                date: "2031-12-25".into(),
                closed: true,
                hours: Vec::new(),
            },
            HoursException {
                date: "2031-12-24".into(),
                closed: false,
                hours: vec![
                    TimeRange {
                        open: "14:00".into(),
                        close: "16:00".into(),
                    },
                    TimeRange {
                        open: "09:00".into(),
                        close: "13:00".into(),
                    },
                ],
            },
        ],
        ..Default::default()
    };
    let expected = BusinessHours {
        time_zone: ZONE.into(),
        weekly: all_week(),
        exceptions: vec![
            HoursException {
                date: "2031-12-24".into(),
                closed: false,
                hours: vec![
                    TimeRange {
                        open: "09:00".into(),
                        close: "13:00".into(),
                    },
                    TimeRange {
                        open: "14:00".into(),
                        close: "16:00".into(),
                    },
                ],
            },
            HoursException {
                date: "2031-12-25".into(),
                closed: true,
                hours: Vec::new(),
            },
        ],
        ..Default::default()
    };
    let updated = must_set_hours(&app, ACME_AGENT, hours).await;
    assert_eq!(updated.business_hours.as_ref(), Some(&expected));
    assert_eq!(
        get_agent(&app, ACME_AGENT).await.business_hours,
        Some(expected),
        "GetAgent returns them canonical"
    );

    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "open-1").await;
    assert_answered_by(&decision, ACME_AGENT, &[], "open all week");
    assert!(decision.lease_expires_at.is_some());
    let (answer, _) = resolve(&app, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    // The hours decide; the answer does not repeat them (GetAgent has them).
    assert_eq!(answer.agent.and_then(|a| a.business_hours), None);
    assert_eq!(
        decision
            .agent
            .as_ref()
            .and_then(|a| a.business_hours.clone()),
        None
    );
    assert!(answer.route_path.is_empty());

    // Cleared (unset in the mask): always open, no hours.
    let cleared = set_hours(&app, ACME_AGENT, None)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(cleared.business_hours, None);
}

/// Closed now, no after-hours target: REJECT CLOSED (SIP 480), recorded as
/// refused; ResolveAgent says closed. With an after-hours destination:
/// TRANSFER there (reason CLOSED), and ResolveAgent names it.
#[tokio::test]
async fn a_closed_agent_is_refused_480_or_transferred_to_its_after_hours_line() {
    let app = TestApp::spawn().await;
    must_set_hours(&app, ACME_AGENT, closed_hours()).await;

    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "closed-1").await;
    assert_refused(&decision, CallReason::Closed, 480, "closed today");
    assert!(decision.lease_expires_at.is_none(), "no slot");
    let call = record(&app, "closed-1").await;
    assert_eq!(call.reason, CallReason::Closed as i32);
    assert_eq!(call.outcome, CallOutcome::Reject as i32);
    assert_eq!(call.status, CallStatus::Refused as i32);
    assert_eq!(call.agent_id, ACME_AGENT);
    assert_code(
        app.calls()
            .await
            .keep_call_alive(as_who(Who::Service, call_ref(&decision, ACME_NUMBER)))
            .await,
        Code::FailedPrecondition,
    );
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(message.contains("closed"), "{message}");
    assert!(!message.contains("transfers"), "{message}");

    must_set_hours(&app, ACME_AGENT, closed_to_line(AFTER_HOURS_LINE)).await;
    assert_eq!(
        get_agent(&app, ACME_AGENT)
            .await
            .business_hours
            .map(|h| h.after_hours_transfer_to),
        Some(AFTER_HOURS_LINE.to_owned())
    );
    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "closed-2").await;
    assert_transferred(
        &decision,
        CallReason::Closed,
        AFTER_HOURS_LINE,
        "closed, with an after-hours line",
    );
    let call = record(&app, "closed-2").await;
    assert_eq!(call.status, CallStatus::Transferred as i32);
    assert_eq!(call.transfer_to, AFTER_HOURS_LINE);
    assert_eq!(call.reason, CallReason::Closed as i32);
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(
        message.contains("closed") && message.contains(&format!("transfers to {AFTER_HOURS_LINE}")),
        "{message}"
    );
}

/// Closed with an open after-hours agent: that agent answers (route path
/// `after_hours`, the record is its), its `CallRef` is renewed and ended,
/// and a lost slot naming it is rebuilt; a reference naming an agent off
/// the chain is not a call.
#[tokio::test]
async fn an_after_hours_agent_answers_and_its_call_ref_works() {
    let app = TestApp::spawn().await;
    let night = acme_agent(&app, "+18005550111").await;
    let unrelated = acme_agent(&app, "+18005550112").await;
    must_set_hours(&app, ACME_AGENT, closed_to_agent(&night.id)).await;

    let (answer, _) = resolve(&app, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(answer.agent.map(|a| a.id), Some(night.id.clone()));
    assert_eq!(answer.route_path, ["after_hours"]);
    assert_eq!(answer.organization.map(|o| o.id), Some(ACME.to_owned()));

    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "night-1").await;
    assert_answered_by(&decision, &night.id, &["after_hours"], "after hours");
    assert_eq!(
        decision.caller.as_ref().map(|c| c.id.as_str()),
        Some(ACME_CUSTOMER)
    );
    let call = record(&app, "night-1").await;
    assert_eq!(
        call.agent_id, night.id,
        "the record is the after-hours agent's"
    );
    assert_eq!(call.status, CallStatus::Ringing as i32);

    let reference = call_ref(&decision, ACME_NUMBER);
    assert_eq!(reference.agent_id, night.id);
    let mut calls = app.calls().await;
    for answered in [true, false] {
        let lease = if answered {
            calls
                .answer_call(as_who(Who::Service, reference.clone()))
                .await
        } else {
            calls
                .keep_call_alive(as_who(Who::Service, reference.clone()))
                .await
        }
        .unwrap_or_else(|s| panic!("answered {answered}: {s:?}"))
        .into_inner();
        assert!(!lease.rebuilt, "the slot StartCall took");
    }
    let ended = calls
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(reference.clone()),
                status: EndStatus::Completed as i32,
                disconnect_reason: DisconnectReason::CallerHungUp as i32,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(ended.status, CallStatus::Completed as i32);
    assert_eq!(ended.agent_id, night.id);
    assert_code(
        calls.keep_call_alive(as_who(Who::Service, reference)).await,
        Code::FailedPrecondition,
    );

    // A call Redis lost: a reference naming the after-hours agent is one
    // this number may have; one naming an agent off the chain is not.
    let lost = CallRef {
        call_id: "night-lost".into(),
        called_number: ACME_NUMBER.into(),
        org_id: ACME.into(),
        agent_id: night.id.clone(),
    };
    let lease = calls
        .keep_call_alive(as_who(Who::Service, lost.clone()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(lease.rebuilt);
    let message = assert_code(
        calls
            .keep_call_alive(as_who(
                Who::Service,
                CallRef {
                    call_id: "night-forged".into(),
                    agent_id: unrelated.id,
                    ..lost
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("no such call"), "{message}");
}

/// The after-hours agent closed too, with the first as its after-hours
/// agent: no agent twice, ROUTING_LOOP (SIP 480).
#[tokio::test]
async fn after_hours_agents_closed_back_to_each_other_are_a_routing_loop() {
    let app = TestApp::spawn().await;
    let night = acme_agent(&app, "+18005550111").await;
    must_set_hours(&app, ACME_AGENT, closed_to_agent(&night.id)).await;
    must_set_hours(&app, &night.id, closed_to_agent(ACME_AGENT)).await;

    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "loop-1").await;
    assert_refused(&decision, CallReason::RoutingLoop, 480, "A -> B -> A");
    let call = record(&app, "loop-1").await;
    assert_eq!(call.reason, CallReason::RoutingLoop as i32);
    assert_eq!(call.status, CallStatus::Refused as i32);
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(message.contains("loop"), "{message}");
    // The same from the other end.
    let decision = start(&app, "+18005550111", SHARED_CALLER, "loop-2").await;
    assert_refused(&decision, CallReason::RoutingLoop, 480, "B -> A -> B");
}

/// Three after-hours hops answer; a fourth is past MAX_HOPS: ROUTING_LOOP,
/// though the agent at its end is open.
#[tokio::test]
async fn a_chain_of_more_than_three_after_hours_hops_is_a_routing_loop() {
    let app = TestApp::spawn().await;
    let mut chain = vec![ACME_AGENT.to_owned()];
    for phone in [
        "+18005550111",
        "+18005550112",
        "+18005550113",
        "+18005550114",
    ] {
        chain.push(acme_agent(&app, phone).await.id);
    }
    for pair in chain[..3].windows(2) {
        must_set_hours(&app, &pair[0], closed_to_agent(&pair[1])).await;
    }
    // A -> B -> C -> D (open): three hops.
    must_set_hours(&app, &chain[2], closed_to_agent(&chain[3])).await;
    let decision = start(&app, ACME_NUMBER, "", "hops-3").await;
    assert_answered_by(
        &decision,
        &chain[3],
        &["after_hours", "after_hours", "after_hours"],
        "three hops",
    );
    let (answer, _) = resolve(&app, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(answer.agent.map(|a| a.id), Some(chain[3].clone()));

    // D closed, to E (open): a fourth hop.
    must_set_hours(&app, &chain[3], closed_to_agent(&chain[4])).await;
    let decision = start(&app, ACME_NUMBER, "", "hops-4").await;
    assert_refused(&decision, CallReason::RoutingLoop, 480, "four hops");
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(message.contains("hop limit"), "{message}");
    // E itself is open, and B's chain is three hops: both answer.
    let decision = start(&app, "+18005550114", "", "hops-e").await;
    assert_answered_by(&decision, &chain[4], &[], "E directly");
    let decision = start(&app, "+18005550111", "", "hops-b").await;
    assert_answered_by(
        &decision,
        &chain[4],
        &["after_hours", "after_hours", "after_hours"],
        "B's chain",
    );
}

/// An inactive after-hours agent: AGENT_INACTIVE (480), or a transfer to
/// ITS fallback (not the first agent's).
#[tokio::test]
async fn an_inactive_after_hours_agent_refuses_or_transfers_to_its_fallback() {
    let app = TestApp::spawn().await;
    let night = create_agent(
        &app,
        Agent {
            is_active: Some(false),
            ..new_agent("", "+18005550111")
        },
    )
    .await;
    assert_eq!(night.is_active, Some(false));
    update(
        &app,
        Agent {
            id: ACME_AGENT.into(),
            fallback_destination: FIRST_FALLBACK.into(),
            business_hours: Some(closed_to_agent(&night.id)),
            ..Default::default()
        },
        &["business_hours", "fallback_destination"],
    )
    .await
    .unwrap_or_else(|s| panic!("{s:?}"));

    let decision = start(&app, ACME_NUMBER, "", "inactive-1").await;
    assert_refused(
        &decision,
        CallReason::AgentInactive,
        480,
        "inactive after-hours agent",
    );
    assert_eq!(record(&app, "inactive-1").await.agent_id, night.id);
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(message.contains("inactive"), "{message}");

    update(
        &app,
        Agent {
            id: night.id.clone(),
            fallback_destination: SECOND_FALLBACK.into(),
            ..Default::default()
        },
        &["fallback_destination"],
    )
    .await
    .unwrap_or_else(|s| panic!("{s:?}"));
    let decision = start(&app, ACME_NUMBER, "", "inactive-2").await;
    assert_transferred(
        &decision,
        CallReason::AgentInactive,
        SECOND_FALLBACK,
        "inactive after-hours agent with a fallback",
    );
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(
        message.contains(&format!("transfers to {SECOND_FALLBACK}")),
        "{message}"
    );
}

/// An after-hours agent at its own limit (1, held by an after-hours call):
/// AGENT_AT_LIMIT (486) for the next after-hours call and for a call to its
/// own number; with its fallback set, a transfer there.
#[tokio::test]
async fn an_after_hours_agent_at_its_limit_refuses_or_transfers_to_its_fallback() {
    let app = TestApp::spawn().await;
    let night = create_agent(
        &app,
        Agent {
            max_concurrent_calls: Some(1),
            ..new_agent("", "+18005550111")
        },
    )
    .await;
    update(
        &app,
        Agent {
            id: ACME_AGENT.into(),
            fallback_destination: FIRST_FALLBACK.into(),
            business_hours: Some(closed_to_agent(&night.id)),
            ..Default::default()
        },
        &["business_hours", "fallback_destination"],
    )
    .await
    .unwrap_or_else(|s| panic!("{s:?}"));

    let held = start(&app, ACME_NUMBER, "", "full-1").await;
    assert_answered_by(&held, &night.id, &["after_hours"], "the first call");
    let decision = start(&app, ACME_NUMBER, "", "full-2").await;
    assert_refused(
        &decision,
        CallReason::AgentAtLimit,
        486,
        "after hours, full",
    );
    assert_eq!(
        record(&app, "full-2").await.reason,
        CallReason::AgentAtLimit as i32
    );
    let decision = start(&app, "+18005550111", "", "full-3").await;
    assert_refused(
        &decision,
        CallReason::AgentAtLimit,
        486,
        "its own number: the after-hours call counts",
    );
    // ResolveAgent has no limits: the agent answers.
    let (answer, _) = resolve(&app, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(answer.agent.map(|a| a.id), Some(night.id.clone()));

    update(
        &app,
        Agent {
            id: night.id.clone(),
            fallback_destination: SECOND_FALLBACK.into(),
            ..Default::default()
        },
        &["fallback_destination"],
    )
    .await
    .unwrap_or_else(|s| panic!("{s:?}"));
    let decision = start(&app, ACME_NUMBER, "", "full-4").await;
    assert_transferred(
        &decision,
        CallReason::AgentAtLimit,
        SECOND_FALLBACK,
        "full, with its fallback",
    );

    // The slot freed: the after-hours agent answers again.
    app.calls()
        .await
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(call_ref(&held, ACME_NUMBER)),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let decision = start(&app, ACME_NUMBER, "", "full-5").await;
    assert_answered_by(&decision, &night.id, &["after_hours"], "after the end");
}

/// Refused hours change nothing: an unknown zone, "25:00", open == close,
/// another organization's agent, both targets, the agent itself.
#[tokio::test]
async fn bad_hours_are_invalid_argument_and_change_nothing() {
    let app = TestApp::spawn().await;
    let night = acme_agent(&app, "+18005550111").await;
    let window = |open: &str, close: &str| HoursWindow {
        day: "mon".into(),
        open: open.into(),
        close: close.into(),
    };
    let cases: Vec<(&str, BusinessHours, &str)> = vec![
        (
            "unknown zone",
            BusinessHours {
                time_zone: "Mars/Olympus_Mons".into(),
                ..open_hours()
            },
            "Mars/Olympus_Mons",
        ),
        (
            "25:00",
            BusinessHours {
                weekly: vec![window("09:00", "25:00")],
                ..open_hours()
            },
            "25:00",
        ),
        (
            "open == close",
            BusinessHours {
                weekly: vec![window("09:00", "09:00")],
                ..open_hours()
            },
            "equal",
        ),
        (
            "Bluebird's agent",
            BusinessHours {
                after_hours_agent_id: BLUEBIRD_AGENT.into(),
                ..open_hours()
            },
            "after_hours_agent_id",
        ),
        (
            "no agent at all",
            BusinessHours {
                after_hours_agent_id: "aa000000-0000-4000-8000-0000000000ff".into(),
                ..open_hours()
            },
            "after_hours_agent_id",
        ),
        (
            "both targets",
            BusinessHours {
                after_hours_agent_id: night.id.clone(),
                after_hours_transfer_to: AFTER_HOURS_LINE.into(),
                ..open_hours()
            },
            "not both",
        ),
        (
            "itself",
            BusinessHours {
                after_hours_agent_id: ACME_AGENT.into(),
                ..open_hours()
            },
            "itself",
        ),
        (
            "its own number",
            BusinessHours {
                after_hours_transfer_to: ACME_NUMBER.into(),
                ..open_hours()
            },
            "itself",
        ),
    ];
    for (what, hours, needle) in cases {
        let message = assert_code(
            set_hours(&app, ACME_AGENT, Some(hours)).await,
            Code::InvalidArgument,
        );
        assert!(message.contains("business_hours"), "{what}: {message}");
        assert!(message.contains(needle), "{what}: {message}");
    }
    assert_eq!(
        get_agent(&app, ACME_AGENT).await.business_hours,
        None,
        "nothing was stored"
    );
    // The same on create.
    let message = assert_code(
        app.agents()
            .await
            .create_agent(as_who(
                Who::AcmeAdmin,
                CreateAgentRequest {
                    agent: Some(Agent {
                        business_hours: Some(BusinessHours {
                            time_zone: "Mars/Olympus_Mons".into(),
                            ..open_hours()
                        }),
                        ..new_agent("", "+18005550119")
                    }),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("Mars/Olympus_Mons"), "{message}");
    // A valid one after all that is taken.
    let stored = must_set_hours(&app, ACME_AGENT, closed_to_agent(&night.id)).await;
    assert_eq!(
        stored.business_hours.map(|h| h.after_hours_agent_id),
        Some(night.id)
    );
}

/// Hours edited in SQL (as postgres, not through the service) reach a warm
/// cached route through the outbox and listener: ResolveAgent and StartCall
/// (service_role) see the agent closed, then sent to an after-hours agent,
/// then open again.
#[tokio::test]
async fn hours_edited_in_sql_reach_a_warm_cached_route() {
    let app = TestApp::spawn().await;
    let night = acme_agent(&app, "+18005550111").await;
    let agents = app.agents().await;
    // Warm: resolved until a memory hit (the agent just created evicts
    // routes through the listener too, so the first fills may not stay).
    service_resolves_until(
        &agents,
        ACME_NUMBER,
        "the route in the memory tier",
        Duration::from_secs(5),
        |answer, tier| {
            answer.agent.as_ref().map(|a| a.id.as_str()) == Some(ACME_AGENT) && tier == "memory"
        },
    )
    .await;

    let today = local_today();
    let closed_days: Vec<serde_json::Value> = [
        today.checked_sub_days(Days::new(1)),
        Some(today),
        today.checked_add_days(Days::new(1)),
    ]
    .into_iter()
    .flatten()
    .map(|d| serde_json::json!({"date": d.format("%Y-%m-%d").to_string(), "closed": true}))
    .collect();
    let weekly: Vec<serde_json::Value> = DAYS
        .iter()
        .map(|d| serde_json::json!({"day": d, "open": "00:00", "close": "24:00"}))
        .collect();
    let closed =
        serde_json::json!({"time_zone": ZONE, "weekly": weekly, "exceptions": closed_days});
    app.db
        .exec(&format!(
            "update public.agents set business_hours = '{closed}'::jsonb where id = '{ACME_AGENT}'"
        ))
        .await;
    let took = within_named(
        "ResolveAgent seeing the hours closed",
        Duration::from_secs(5),
        || {
            let mut agents = agents.clone();
            async move {
                matches!(
                    service_resolve(&mut agents, ACME_NUMBER).await,
                    Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("closed")
                )
            }
        },
    )
    .await;
    eprintln!("closed in SQL, seen after {took:?}");
    let decision = start(&app, ACME_NUMBER, "", "sql-1").await;
    assert_refused(&decision, CallReason::Closed, 480, "closed in SQL");

    // The after-hours agent, set in SQL too.
    app.db
        .exec(&format!(
            "update public.agents set after_hours_agent_id = '{}' where id = '{ACME_AGENT}'",
            night.id
        ))
        .await;
    let night_id = night.id.clone();
    service_resolves_until(
        &agents,
        ACME_NUMBER,
        "the after-hours agent set in SQL",
        Duration::from_secs(5),
        |answer, _| {
            answer.agent.as_ref().map(|a| a.id.as_str()) == Some(night_id.as_str())
                && answer.route_path == ["after_hours"]
        },
    )
    .await;
    let decision = start(&app, ACME_NUMBER, "", "sql-2").await;
    assert_answered_by(&decision, &night.id, &["after_hours"], "after hours in SQL");

    // Open again in SQL.
    app.db
        .exec(&format!(
            "update public.agents set business_hours = null, after_hours_agent_id = null \
             where id = '{ACME_AGENT}'"
        ))
        .await;
    service_resolves_until(
        &agents,
        ACME_NUMBER,
        "the hours cleared in SQL",
        Duration::from_secs(5),
        |answer, tier| {
            answer.agent.as_ref().map(|a| a.id.as_str()) == Some(ACME_AGENT)
                && answer.route_path.is_empty()
                && tier == "memory"
        },
    )
    .await;
    let decision = start(&app, ACME_NUMBER, "", "sql-3").await;
    assert_answered_by(&decision, ACME_AGENT, &[], "open again");
}

/// The variables carry the answering agent's zone and the local date, time
/// and weekday there (UTC for an agent without hours).
#[tokio::test]
async fn variables_carry_the_zone_and_local_date_and_time() {
    let app = TestApp::spawn().await;
    let plain = start(&app, BLUEBIRD_NUMBER, "", "vars-0").await;
    assert_eq!(
        plain.variables.get("time_zone").map(String::as_str),
        Some("UTC"),
        "no hours: UTC"
    );

    must_set_hours(&app, ACME_AGENT, open_hours()).await;
    let zone = chrono_tz::America::New_York;
    let minute = |at: chrono::DateTime<Utc>| {
        let local = at.with_timezone(&zone).naive_local();
        local
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(local)
    };
    let before = minute(Utc::now());
    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "vars-1").await;
    // Straight from the server: the test kit's resolve leaves out the
    // clock's variables, which this test is about.
    let answer = app
        .agents()
        .await
        .resolve_agent(as_who(
            Who::Service,
            resolve_req(ACME_NUMBER, SHARED_CALLER),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    let after = minute(Utc::now());
    assert_answered_by(&decision, ACME_AGENT, &[], "open");
    for (what, variables) in [
        ("StartCall", &decision.variables),
        ("ResolveAgent", &answer.variables),
    ] {
        let var = |key: &str| {
            variables
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("{what}: no {key} in {variables:?}"))
        };
        assert_eq!(var("time_zone"), ZONE, "{what}");
        let (date, time) = (var("local_date"), var("local_time"));
        assert_eq!(date.len(), 10, "{what}: {date}");
        assert_eq!(time.len(), 5, "{what}: {time}");
        let local = NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M")
            .unwrap_or_else(|e| panic!("{what}: {date} {time}: {e}"));
        assert!(
            before <= local && local <= after,
            "{what}: {local} not in New York's now ({before}..={after})"
        );
        assert_eq!(
            var("local_weekday"),
            local.format("%A").to_string(),
            "{what}"
        );
    }
}

/// `/metrics` names the tzdb release hours are evaluated with.
#[tokio::test]
async fn metrics_report_the_tzdb_release() {
    let app = TestApp::spawn().await;
    let tzdb = switchboard::domain::TZDB_VERSION;
    let bytes = tzdb.as_bytes();
    assert!(
        bytes.len() == 5
            && bytes[..4].iter().all(u8::is_ascii_digit)
            && bytes[4].is_ascii_lowercase()
            && tzdb >= "2025a",
        "a release like 2025b: {tzdb}"
    );
    assert_eq!(
        metric_at(
            app.admin_addr,
            "switchboard_build_info",
            &[("tzdb", tzdb), ("version", env!("CARGO_PKG_VERSION"))]
        )
        .await,
        Some(1.0)
    );
    let page = metrics_page(app.admin_addr).await;
    let line = page
        .lines()
        .find(|l| l.starts_with("switchboard_build_info{"))
        .unwrap_or_else(|| panic!("no build info in:\n{page}"));
    assert!(
        line.contains(&format!("tzdb=\"{tzdb}\"")) && line.ends_with(" 1"),
        "{line}"
    );
}

/// A call decided closed is replayed closed to a retry, even once the
/// agent is open again (the decision is the call's).
#[tokio::test]
async fn a_retry_of_a_closed_call_replays_closed() {
    let app = TestApp::spawn().await;
    must_set_hours(&app, ACME_AGENT, closed_hours()).await;
    let first = start(&app, ACME_NUMBER, "", "retry-closed").await;
    assert_refused(&first, CallReason::Closed, 480, "closed");
    must_set_hours(&app, ACME_AGENT, open_hours()).await;
    let again = app
        .calls()
        .await
        .start_call(as_who(
            Who::Service,
            start_req(ACME_NUMBER, "", "retry-closed"),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(again.replayed);
    assert_refused(&again, CallReason::Closed, 480, "replayed");
    let fresh = start(&app, ACME_NUMBER, "", "retry-open").await;
    assert_answered_by(&fresh, ACME_AGENT, &[], "a new call, open");
}

/// An after-hours agent (of the first, closed agent) whose route and the
/// first's are warm in the memory tier, then moved to another number with
/// UpdateAgent. Returns its id.
async fn move_a_warm_after_hours_agent(app: &TestApp) -> String {
    let night = acme_agent(app, "+18005550111").await;
    must_set_hours(app, ACME_AGENT, closed_to_agent(&night.id)).await;
    let night_id = night.id.clone();
    service_resolves_until(
        &app.agents().await,
        ACME_NUMBER,
        "the after-hours route in the memory tier",
        Duration::from_secs(5),
        |answer, tier| {
            answer.agent.as_ref().map(|a| a.id.as_str()) == Some(night_id.as_str())
                && tier == "memory"
        },
    )
    .await;
    let moved = update(
        app,
        Agent {
            id: night.id.clone(),
            phone_number: "+18005550121".into(),
            ..Default::default()
        },
        &["phone_number"],
    )
    .await
    .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(moved.phone_number, "+18005550121");
    night.id
}

/// The first agent's cached route carries its after-hours agent's number:
/// when that agent moves to another number through UpdateAgent, the very
/// next call follows it (service writes evict synchronously).
#[tokio::test]
async fn an_after_hours_agent_moved_to_another_number_is_followed_at_once() {
    let app = TestApp::spawn().await;
    let night = move_a_warm_after_hours_agent(&app).await;
    let decision = start(&app, ACME_NUMBER, "", "moved-1").await;
    assert_answered_by(
        &decision,
        &night,
        &["after_hours"],
        "the call right after the move",
    );
}

/// The same move is followed once the database's notification has evicted
/// the org's routes (within the second).
#[tokio::test]
async fn an_after_hours_agent_moved_to_another_number_is_followed_within_a_second() {
    let app = TestApp::spawn().await;
    let night = move_a_warm_after_hours_agent(&app).await;
    let expected = night.clone();
    let took = within_named(
        "ResolveAgent following the moved after-hours agent",
        Duration::from_secs(5),
        || {
            let app = &app;
            let expected = expected.clone();
            async move {
                resolve(app, ACME_NUMBER).await.is_ok_and(|(answer, _)| {
                    answer.agent.map(|a| a.id) == Some(expected)
                        && answer.route_path == ["after_hours"]
                })
            }
        },
    )
    .await;
    eprintln!("the move was followed after {took:?}");
    let decision = start(&app, ACME_NUMBER, "", "moved-2").await;
    assert_answered_by(&decision, &night, &["after_hours"], "after the move");
    assert_eq!(
        decision.agent.map(|a| a.phone_number),
        Some("+18005550121".to_owned())
    );
}

/// An after-hours agent deleted: the first agent's link is cleared (by the
/// database) and its calls are refused CLOSED, as with no target.
#[tokio::test]
async fn a_deleted_after_hours_agent_leaves_the_first_closed() {
    let app = TestApp::spawn().await;
    let night = acme_agent(&app, "+18005550111").await;
    must_set_hours(&app, ACME_AGENT, closed_to_agent(&night.id)).await;
    let decision = start(&app, ACME_NUMBER, "", "deleted-0").await;
    assert_answered_by(&decision, &night.id, &["after_hours"], "before the delete");
    app.agents()
        .await
        .delete_agent(as_who(
            Who::AcmeAdmin,
            switchboard::pb::DeleteAgentRequest {
                id: night.id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let hours = get_agent(&app, ACME_AGENT)
        .await
        .business_hours
        .unwrap_or_else(|| panic!("the hours stay"));
    assert_eq!(hours.after_hours_agent_id, "", "the link is cleared");
    assert_eq!(hours.time_zone, ZONE);
    let decision = start(&app, ACME_NUMBER, "", "deleted-1").await;
    assert_refused(&decision, CallReason::Closed, 480, "after the delete");
    let message = resolve_refusal(&app, ACME_NUMBER).await;
    assert!(message.contains("closed"), "{message}");
}
