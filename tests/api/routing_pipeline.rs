//! The decision pipeline's order (docs/routing.md): caller rules, then the
//! agent's hours (and after-hours chain), then the version, then the
//! limits, then the fallback; the hop limit; and ResolveAgent answering
//! what StartCall would.

use tonic::Code;

use crate::calls::start;
use crate::helpers::*;
use switchboard::pb::{
    BusinessHours, CallDecision, CallOutcome, CallReason, CallerAction, CallerMatch, CallerRule,
    CreateAgentRequest, CreateCallerRuleRequest, HoursWindow, PublishAgentRequest,
    ResolveAgentRequest, UpdateAgentRequest, VersionServing, VersionSplit, VersionWeight,
};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Open all week.
fn open() -> BusinessHours {
    BusinessHours {
        time_zone: "Europe/Paris".into(),
        weekly: DAYS
            .iter()
            .map(|d| HoursWindow {
                day: (*d).into(),
                open: "00:00".into(),
                close: "24:00".into(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Never open (no window), going to `after` when set.
fn closed(after_agent: &str, transfer_to: &str) -> BusinessHours {
    BusinessHours {
        time_zone: "Asia/Tokyo".into(),
        after_hours_agent_id: after_agent.into(),
        after_hours_transfer_to: transfer_to.into(),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn create_agent(app: &TestApp, phone: &str, name: &str) -> String {
    let mut agent = new_agent("", phone);
    agent.name = name.into();
    app.agents()
        .await
        .create_agent(as_who(
            Who::AcmeAdmin,
            CreateAgentRequest { agent: Some(agent) },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
        .id
}

async fn set_hours(app: &TestApp, agent: &str, hours: BusinessHours) {
    app.agents()
        .await
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(switchboard::pb::Agent {
                    id: agent.into(),
                    business_hours: Some(hours),
                    ..Default::default()
                }),
                update_mask: mask(&["business_hours"]),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
}

async fn set_limit_and_fallback(app: &TestApp, agent: &str, limit: i32, fallback: &str) {
    app.agents()
        .await
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(switchboard::pb::Agent {
                    id: agent.into(),
                    max_concurrent_calls: Some(limit),
                    fallback_destination: fallback.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["max_concurrent_calls", "fallback_destination"]),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
}

async fn rule(app: &TestApp, matching: CallerMatch, pattern: &str, agent: Option<&str>) {
    let action = if agent.is_some() {
        CallerAction::Route
    } else {
        CallerAction::Block
    };
    app.caller_rules()
        .await
        .create_caller_rule(as_who(
            Who::AcmeManager,
            CreateCallerRuleRequest {
                rule: Some(CallerRule {
                    r#match: matching as i32,
                    pattern: pattern.into(),
                    action: action as i32,
                    agent_id: agent.unwrap_or_default().into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
}

fn agent_of(decision: &CallDecision) -> &str {
    decision.agent.as_ref().map_or("", |a| a.id.as_str())
}

fn outcome(decision: &CallDecision) -> (i32, i32) {
    (decision.outcome, decision.reason)
}

#[tokio::test]
async fn caller_rules_come_before_business_hours() {
    let app = TestApp::spawn().await;
    set_hours(&app, ACME_AGENT, closed("", "")).await;
    rule(&app, CallerMatch::Prefix, "+1900", None).await;

    let blocked = start(&app, ACME_NUMBER, "+19005550100", "order-1").await;
    assert_eq!(
        outcome(&blocked),
        (CallOutcome::Reject as i32, CallReason::CallerBlocked as i32),
        "a blocked caller is refused as blocked even when the agent is closed: {blocked:?}"
    );
    assert_eq!(blocked.sip_status, 603);
    let other = start(&app, ACME_NUMBER, SHARED_CALLER, "order-2").await;
    assert_eq!(
        outcome(&other),
        (CallOutcome::Reject as i32, CallReason::Closed as i32),
        "{other:?}"
    );
    assert_eq!(other.sip_status, 480);
}

#[tokio::test]
async fn a_routed_caller_meets_the_target_agents_hours_then_its_after_hours_agent() {
    let app = TestApp::spawn().await;
    let vip = create_agent(&app, "+18005550111", "VIP Desk").await;
    let night = create_agent(&app, "+18005550112", "Night Desk").await;
    set_hours(&app, &vip, closed(&night, "")).await;
    set_hours(&app, &night, open()).await;
    rule(&app, CallerMatch::Exact, SHARED_CALLER, Some(&vip)).await;

    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "vip-1").await;
    assert_eq!(
        outcome(&decision),
        (CallOutcome::Answer as i32, CallReason::Answered as i32),
        "{decision:?}"
    );
    assert_eq!(agent_of(&decision), night);
    assert_eq!(decision.route_path, ["caller_rule", "after_hours"]);
    assert_eq!(
        decision.variables.get("agent_name").map(String::as_str),
        Some("Night Desk")
    );
    // The caller record is the called number's org's, through every hop.
    assert_eq!(
        decision.caller.as_ref().map(|c| c.id.as_str()),
        Some(ACME_CUSTOMER)
    );
    // Another caller gets the number's own agent, no hop.
    let plain = start(&app, ACME_NUMBER, "+12125550100", "vip-2").await;
    assert_eq!(agent_of(&plain), ACME_AGENT);
    assert!(plain.route_path.is_empty());
}

#[tokio::test]
async fn limits_are_the_answering_agents_then_its_fallback() {
    let app = TestApp::spawn().await;
    let night = create_agent(&app, "+18005550121", "Night Desk").await;
    set_hours(&app, ACME_AGENT, closed(&night, "")).await;
    set_hours(&app, &night, open()).await;
    set_limit_and_fallback(&app, &night, 1, "+18005550199").await;
    // The number's own agent would have room; the answering one has not.
    set_limit_and_fallback(&app, ACME_AGENT, 50, "+18005550188").await;

    let first = start(&app, ACME_NUMBER, SHARED_CALLER, "limit-1").await;
    assert_eq!(
        outcome(&first),
        (CallOutcome::Answer as i32, CallReason::Answered as i32)
    );
    assert_eq!(agent_of(&first), night);
    let second = start(&app, ACME_NUMBER, SHARED_CALLER, "limit-2").await;
    assert_eq!(
        outcome(&second),
        (
            CallOutcome::Transfer as i32,
            CallReason::AgentAtLimit as i32
        ),
        "{second:?}"
    );
    assert_eq!(
        second.transfer_to, "+18005550199",
        "the answering agent's fallback, not the number's own"
    );
}

#[tokio::test]
async fn after_hours_chains_end_within_three_hops() {
    let app = TestApp::spawn().await;
    // ACME_AGENT → a1 → a2 → a3 → a4: each closed and pointing on.
    let mut chain = vec![ACME_AGENT.to_owned()];
    for i in 1..=4 {
        chain.push(create_agent(&app, &format!("+1800555013{i}"), &format!("Hop {i}")).await);
    }
    for pair in chain.windows(2) {
        set_hours(&app, &pair[0], closed(&pair[1], "")).await;
    }
    // Three hops reach a3: open, it answers.
    set_hours(&app, &chain[3], open()).await;
    let three = start(&app, ACME_NUMBER, SHARED_CALLER, "hops-3").await;
    assert_eq!(agent_of(&three), chain[3], "{three:?}");
    assert_eq!(three.route_path.len(), 3);

    // Closed too: a fourth hop is one too many.
    set_hours(&app, &chain[3], closed(&chain[4], "")).await;
    set_hours(&app, &chain[4], open()).await;
    let four = start(&app, ACME_NUMBER, SHARED_CALLER, "hops-4").await;
    assert_eq!(
        outcome(&four),
        (CallOutcome::Reject as i32, CallReason::RoutingLoop as i32),
        "{four:?}"
    );
    assert_eq!(four.sip_status, 480);

    // A loop back to an agent already tried ends at once.
    set_hours(&app, &chain[1], closed(ACME_AGENT, "")).await;
    let back = start(&app, ACME_NUMBER, SHARED_CALLER, "hops-loop").await;
    assert_eq!(
        outcome(&back),
        (CallOutcome::Reject as i32, CallReason::RoutingLoop as i32),
        "{back:?}"
    );
}

/// What ResolveAgent says for a call, as a decision would: `Ok(agent,
/// version)` or the status.
async fn resolved(
    app: &TestApp,
    caller: &str,
    call_id: &str,
) -> Result<(String, i32, Vec<String>), tonic::Status> {
    app.agents()
        .await
        .resolve_agent(as_who(
            Who::Service,
            ResolveAgentRequest {
                called_number: ACME_NUMBER.into(),
                caller_number: caller.into(),
                call_id: call_id.into(),
            },
        ))
        .await
        .map(|r| {
            let r = r.into_inner();
            (
                r.agent.map(|a| a.id).unwrap_or_default(),
                r.agent_version,
                r.route_path,
            )
        })
}

async fn assert_agree(app: &TestApp, caller: &str, call_id: &str) -> CallDecision {
    let before = resolved(app, caller, call_id).await;
    let decision = start(app, ACME_NUMBER, caller, call_id).await;
    match before {
        Ok((agent, version, path)) => {
            assert_eq!(
                decision.outcome,
                CallOutcome::Answer as i32,
                "ResolveAgent answered, StartCall did not: {decision:?}"
            );
            assert_eq!(agent, agent_of(&decision), "{call_id}");
            assert_eq!(version, decision.agent_version, "{call_id}");
            assert_eq!(path, decision.route_path, "{call_id}");
        }
        Err(status) => {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_ne!(decision.outcome, CallOutcome::Answer as i32, "{call_id}");
            if !decision.transfer_to.is_empty() {
                assert!(
                    status.message().contains(&decision.transfer_to),
                    "{}",
                    status.message()
                );
            }
        }
    }
    decision
}

#[tokio::test]
async fn resolve_agent_answers_what_start_call_would() {
    let app = TestApp::spawn().await;
    let night = create_agent(&app, "+18005550141", "Night Desk").await;
    let vip = create_agent(&app, "+18005550142", "VIP Desk").await;
    set_hours(&app, &night, open()).await;

    // Plain, then two versions split 50/50 over many call ids.
    assert_agree(&app, SHARED_CALLER, "agree-plain").await;
    for voice in ["v1", "v2"] {
        app.agents()
            .await
            .update_agent(as_who(Who::AcmeAdmin, set_voice(ACME_AGENT, voice)))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
        app.agents()
            .await
            .publish_agent(as_who(
                Who::AcmeAdmin,
                PublishAgentRequest {
                    agent_id: ACME_AGENT.into(),
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    app.agents()
        .await
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(switchboard::pb::Agent {
                    id: ACME_AGENT.into(),
                    serving: Some(VersionServing {
                        rule: Some(switchboard::pb::version_serving::Rule::Split(
                            VersionSplit {
                                arms: vec![
                                    VersionWeight {
                                        version: 1,
                                        weight: 50,
                                    },
                                    VersionWeight {
                                        version: 2,
                                        weight: 50,
                                    },
                                ],
                            },
                        )),
                    }),
                    ..Default::default()
                }),
                update_mask: mask(&["serving"]),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let mut versions = std::collections::BTreeSet::new();
    for i in 0..20 {
        let decision = assert_agree(&app, SHARED_CALLER, &format!("agree-split-{i}")).await;
        versions.insert(decision.agent_version);
    }
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        [1, 2],
        "20 calls over a 50/50 split meet both versions"
    );

    // Blocked, VIP, closed with a transfer, closed with an after-hours agent.
    rule(&app, CallerMatch::Prefix, "+1900", None).await;
    rule(&app, CallerMatch::Exact, "+12125550100", Some(&vip)).await;
    assert_agree(&app, "+19005550100", "agree-blocked").await;
    assert_eq!(
        agent_of(&assert_agree(&app, "+12125550100", "agree-vip").await),
        vip
    );
    set_hours(&app, ACME_AGENT, closed("", "+18005550199")).await;
    let transfer = assert_agree(&app, SHARED_CALLER, "agree-closed").await;
    assert_eq!(transfer.transfer_to, "+18005550199");
    set_hours(&app, ACME_AGENT, closed(&night, "")).await;
    assert_eq!(
        agent_of(&assert_agree(&app, SHARED_CALLER, "agree-night").await),
        night
    );
}

#[tokio::test]
async fn a_rule_to_the_numbers_own_agent_takes_no_hop() {
    let app = TestApp::spawn().await;
    // Three after-hours hops reach an open agent: the most a decision takes.
    let mut chain = vec![ACME_AGENT.to_owned()];
    for i in 1..=3 {
        chain.push(create_agent(&app, &format!("+1800555015{i}"), &format!("Hop {i}")).await);
    }
    for pair in chain.windows(2) {
        set_hours(&app, &pair[0], closed(&pair[1], "")).await;
    }
    set_hours(&app, &chain[3], open()).await;
    // A VIP rule naming the number's own agent (rules are org-wide: the VIP
    // also calls the VIP agent's own number) must not use up a hop.
    rule(&app, CallerMatch::Exact, SHARED_CALLER, Some(ACME_AGENT)).await;

    let decision = start(&app, ACME_NUMBER, SHARED_CALLER, "own-rule").await;
    assert_eq!(
        outcome(&decision),
        (CallOutcome::Answer as i32, CallReason::Answered as i32),
        "{decision:?}"
    );
    assert_eq!(agent_of(&decision), chain[3]);
    assert_eq!(
        decision.route_path,
        ["after_hours", "after_hours", "after_hours"]
    );
}
