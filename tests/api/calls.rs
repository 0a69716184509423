//! Calls over gRPC: the decision, the lifecycle a media server follows, the
//! record, idempotency.

use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{
    CallDecision, CallOutcome, CallReason, CallRef, CallStatus, DisconnectReason, EndCallRequest,
    EndStatus, GetCallRequest, StartCallRequest,
};

pub(crate) fn start_req(called: &str, caller: &str, call_id: &str) -> StartCallRequest {
    StartCallRequest {
        called_number: called.into(),
        caller_number: caller.into(),
        call_id: call_id.into(),
    }
}

pub(crate) fn call_ref(decision: &CallDecision, called: &str) -> CallRef {
    CallRef {
        call_id: decision.call_id.clone(),
        called_number: called.into(),
        org_id: decision
            .organization
            .as_ref()
            .map(|o| o.id.clone())
            .unwrap_or_default(),
        agent_id: decision
            .agent
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default(),
    }
}

pub(crate) async fn start(
    app: &TestApp,
    called: &str,
    caller: &str,
    call_id: &str,
) -> CallDecision {
    app.calls()
        .await
        .start_call(as_who(Who::Service, start_req(called, caller, call_id)))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

#[tokio::test]
async fn a_media_server_follows_start_answer_keep_alive_end() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;
    let decision = start(&app, "+1 (800) 555-0100", SHARED_CALLER, "1700000000.42").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    assert_eq!(decision.reason, CallReason::Answered as i32);
    assert_eq!(decision.call_id, "1700000000.42");
    assert_eq!(
        decision.agent.as_ref().map(|a| a.id.as_str()),
        Some(ACME_AGENT)
    );
    assert_eq!(
        decision.caller.as_ref().map(|c| c.id.as_str()),
        Some(ACME_CUSTOMER),
        "the caller record of the agent's own org"
    );
    assert!(decision.lease_expires_at.is_some());
    assert_eq!(decision.renew_every.as_ref().map(|d| d.seconds), Some(10));
    assert_eq!(
        decision
            .organization
            .as_ref()
            .map(|o| o.max_concurrent_calls),
        Some(50),
        "Acme is on pro: 50"
    );

    // Recorded before the answer: ringing.
    let record = calls
        .get_call(as_who(
            Who::AcmeViewer,
            GetCallRequest {
                call_id: "1700000000.42".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(record.status, CallStatus::Ringing as i32);
    assert_eq!(record.agent_id, ACME_AGENT);
    assert_eq!(record.customer_id, ACME_CUSTOMER);
    assert_eq!(record.caller_number, SHARED_CALLER);

    let reference = call_ref(&decision, ACME_NUMBER);
    let lease = calls
        .answer_call(as_who(Who::Service, reference.clone()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(!lease.rebuilt);
    let lease = calls
        .keep_call_alive(as_who(Who::Service, reference.clone()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(!lease.rebuilt);

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
    assert_eq!(
        ended.disconnect_reason,
        DisconnectReason::CallerHungUp as i32
    );
    assert!(ended.answered_at.is_some() && ended.ended_at.is_some());

    // A renewal after the end does not bring the slot back.
    assert_code(
        calls
            .keep_call_alive(as_who(Who::Service, reference.clone()))
            .await,
        Code::FailedPrecondition,
    );
    // A second end frees nothing and answers the same record.
    let again = calls
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(reference),
                status: EndStatus::Failed as i32,
                disconnect_reason: DisconnectReason::Error as i32,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(again, ended, "the first end wins");
}

#[tokio::test]
async fn a_retry_replays_the_decision_and_holds_one_slot() {
    let app = TestApp::spawn().await;
    let first = start(&app, ACME_NUMBER, "", "retry-1").await;
    let second = start(&app, ACME_NUMBER, "", "retry-1").await;
    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(first.outcome, second.outcome);
    assert_eq!(first.lease_expires_at, second.lease_expires_at);
    // The same id to another number of the same org is refused; the same id
    // in another org is another call.
    app.db
        .exec(&format!(
            "insert into public.agents (org_id, name, phone_number, voice_id) \
             values ('{ACME}', 'Second line', '+18005550101', 'alloy')"
        ))
        .await;
    let message = assert_code(
        app.calls()
            .await
            .start_call(as_who(
                Who::Service,
                start_req("+18005550101", "", "retry-1"),
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("another number"), "{message}");
    let other_org = start(&app, BLUEBIRD_NUMBER, "", "retry-1").await;
    assert!(
        !other_org.replayed,
        "the same id in another org is another call"
    );
    assert_eq!(other_org.agent.map(|a| a.id), Some(BLUEBIRD_AGENT.into()));
}

#[tokio::test]
async fn a_number_no_one_owns_is_refused_404_and_not_recorded() {
    let app = TestApp::spawn().await;
    let decision = start(&app, "+18005550999", SHARED_CALLER, "").await;
    assert_eq!(decision.outcome, CallOutcome::Reject as i32);
    assert_eq!(decision.reason, CallReason::NumberNotFound as i32);
    assert_eq!(decision.sip_status, 404);
    assert!(!decision.call_id.is_empty(), "an id is generated");
    assert!(decision.agent.is_none() && decision.caller.is_none());
    let count: i64 = sqlx::query_scalar("select count(*) from public.calls")
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count, 0);
}

#[tokio::test]
async fn tenants_may_not_drive_calls() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;
    for who in Who::TENANTS {
        assert_code(
            calls
                .start_call(as_who(who, start_req(ACME_NUMBER, "", "t-1")))
                .await,
            Code::PermissionDenied,
        );
    }
}

/// A reference to a call Redis does not know makes nothing unless it names
/// the called number's own organization and agent: a forged `CallRef` can
/// neither take another organization's slot nor leave a record there.
#[tokio::test]
async fn a_forged_reference_to_an_unknown_call_makes_no_slot_and_no_record() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;
    let forged = CallRef {
        call_id: "ghost-1".into(),
        called_number: ACME_NUMBER.into(),
        org_id: BLUEBIRD.into(),
        agent_id: BLUEBIRD_AGENT.into(),
    };
    for result in [
        calls
            .keep_call_alive(as_who(Who::Service, forged.clone()))
            .await,
        calls
            .answer_call(as_who(Who::Service, forged.clone()))
            .await,
    ] {
        let message = assert_code(result, Code::InvalidArgument);
        assert!(message.contains("no such call"), "{message}");
    }
    assert_code(
        calls
            .end_call(as_who(
                Who::Service,
                EndCallRequest {
                    call: Some(forged),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from public.calls")
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, 0, "no record was made");

    // The number's own org and agent: a call Redis lost is rebuilt.
    let genuine = CallRef {
        call_id: "lost-1".into(),
        called_number: ACME_NUMBER.into(),
        org_id: ACME.into(),
        agent_id: ACME_AGENT.into(),
    };
    let lease = calls
        .keep_call_alive(as_who(Who::Service, genuine))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(lease.rebuilt);
}

/// A StartCall retried after the call was answered and ended gets no slot
/// again; a fallback may not be the agent's own number.
#[tokio::test]
async fn an_ended_call_is_not_started_again_and_a_fallback_is_not_itself() {
    let app = TestApp::spawn().await;
    let mut calls = app.calls().await;
    let decision = start(&app, ACME_NUMBER, "", "once-1").await;
    calls
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(call_ref(&decision, ACME_NUMBER)),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let message = assert_code(
        calls
            .start_call(as_who(Who::Service, start_req(ACME_NUMBER, "", "once-1")))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("ended"), "{message}");

    let mut agents = app.agents().await;
    let mut update = set_voice(ACME_AGENT, "alloy");
    if let Some(agent) = update.agent.as_mut() {
        agent.fallback_destination = "+1 800 555 0100".into();
    }
    update.update_mask = Some(prost_types::FieldMask {
        paths: vec!["fallback_destination".into()],
    });
    let message = assert_code(
        agents.update_agent(as_who(Who::AcmeAdmin, update)).await,
        Code::InvalidArgument,
    );
    assert!(message.contains("own number"), "{message}");
}

/// The database derives the status from the facts, whatever their order:
/// an answer reported after the end is no answer (missed, no duration).
#[tokio::test]
async fn an_answer_after_the_end_is_no_answer() {
    let app = TestApp::spawn().await;
    app.db
        .exec(&format!(
            "insert into public.calls (org_id, call_id, called_number, outcome, reason, started_at) \
               values ('{ACME}', 'late-1', '{ACME_NUMBER}', 'answer', 'answered', now() - interval '1 minute');
             update public.calls set ended_at = now() - interval '30 seconds', end_status = 'completed' \
               where call_id = 'late-1';
             update public.calls set answered_at = now() where call_id = 'late-1';"
        ))
        .await;
    let (status, answered, duration): (String, Option<chrono::DateTime<chrono::Utc>>, Option<i64>) =
        sqlx::query_as(
            "select status, answered_at, duration_ms from public.calls where call_id = 'late-1'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, "missed");
    assert_eq!(answered, None);
    assert_eq!(duration, None);
}

/// A media server behind a load balancer: each request of one call lands
/// on another replica (start on A, answer and renew on B, end on A); the
/// slot is one slot across both and the record is one record.
#[tokio::test]
async fn a_call_is_one_call_across_two_replicas() {
    let a = TestApp::spawn().await;
    let b = a.spawn_replica(AppOptions::default()).await;
    let decision = start(&a, ACME_NUMBER, SHARED_CALLER, "lb-1").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    let replay = start(&b, ACME_NUMBER, SHARED_CALLER, "lb-1").await;
    assert!(replay.replayed, "B knows A's decision");
    let reference = call_ref(&decision, ACME_NUMBER);
    let mut on_b = b.calls().await;
    for answered in [true, false] {
        let lease = if answered {
            on_b.answer_call(as_who(Who::Service, reference.clone()))
                .await
        } else {
            on_b.keep_call_alive(as_who(Who::Service, reference.clone()))
                .await
        }
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
        assert!(!lease.rebuilt, "the slot A made is the one B renews");
    }
    let ended = a
        .calls()
        .await
        .end_call(as_who(
            Who::Service,
            EndCallRequest {
                call: Some(reference.clone()),
                status: EndStatus::Completed as i32,
                disconnect_reason: DisconnectReason::AgentHungUp as i32,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(ended.status, CallStatus::Completed as i32);
    // Ended on A: B refuses to renew it.
    assert_code(
        on_b.keep_call_alive(as_who(Who::Service, reference)).await,
        Code::FailedPrecondition,
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from public.calls where call_id = 'lb-1'")
        .fetch_one(&a.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, 1);
}
