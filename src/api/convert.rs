//! Domain → protobuf conversions (and back, where an answer kept encoded
//! is read). Pure functions: no I/O, no transport.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::pb;
use crate::domain::{
    json_to_value, AfterHours, Agent, AgentChange, AgentId, AgentRouting, AgentVersion,
    BusinessHours, CallLimits, CallRecord, CallStatus, CallerAction, CallerMatch, CallerRule,
    ChangeOperation, Customer, Decision, DisconnectReason, FieldChange, OrgId, Organization,
    Outcome, PlanTier, Reason, Resolution, VersionServing,
};
use crate::error::Error;

pub(crate) fn timestamp(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

pub(crate) fn agent_to_pb(agent: &Agent) -> pb::Agent {
    pb::Agent {
        id: agent.id.to_string(),
        org_id: agent.org_id.to_string(),
        name: agent.name.clone(),
        phone_number: agent.phone_number.to_string(),
        voice_id: agent.voice_id.clone(),
        llm_config: Some(agent.llm_config.to_struct()),
        is_active: Some(agent.is_active),
        created_at: timestamp(agent.created_at),
        updated_at: timestamp(agent.updated_at),
        max_concurrent_calls: agent.max_concurrent_calls.map(|l| l as i32),
        fallback_destination: agent
            .fallback_destination
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        latest_version: agent
            .routing
            .latest_version
            .map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX)),
        serving: serving_to_pb(&agent.routing.serving),
        business_hours: hours_to_pb(&agent.routing),
    }
}

fn serving_to_pb(serving: &VersionServing) -> Option<pb::VersionServing> {
    let rule = match serving {
        VersionServing::Latest => return None,
        VersionServing::Pinned(v) => {
            pb::version_serving::Rule::PinnedVersion(i32::try_from(*v).unwrap_or(i32::MAX))
        }
        VersionServing::Split(arms) => pb::version_serving::Rule::Split(pb::VersionSplit {
            arms: arms
                .iter()
                .map(|(v, w)| pb::VersionWeight {
                    version: i32::try_from(*v).unwrap_or(i32::MAX),
                    weight: i32::try_from(*w).unwrap_or(i32::MAX),
                })
                .collect(),
        }),
    };
    Some(pb::VersionServing { rule: Some(rule) })
}

/// The serving rule a route's agent carries (unset: the latest).
pub(crate) fn serving_from_pb(serving: Option<&pb::VersionServing>) -> VersionServing {
    match serving.and_then(|s| s.rule.as_ref()) {
        None => VersionServing::Latest,
        Some(pb::version_serving::Rule::PinnedVersion(v)) => {
            u32::try_from(*v).map_or(VersionServing::Latest, VersionServing::Pinned)
        }
        Some(pb::version_serving::Rule::Split(split)) => VersionServing::Split(
            split
                .arms
                .iter()
                .filter_map(|a| {
                    Some((
                        u32::try_from(a.version).ok()?,
                        u32::try_from(a.weight).ok()?,
                    ))
                })
                .collect(),
        ),
    }
}

fn hours_to_pb(routing: &AgentRouting) -> Option<pb::BusinessHours> {
    let hours = routing.hours.as_ref()?;
    let json = hours.to_json();
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let list = |key: &str| {
        json.get(key)
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    Some(pb::BusinessHours {
        time_zone: hours.time_zone().name().to_owned(),
        weekly: list("weekly")
            .iter()
            .map(|w| pb::HoursWindow {
                day: text(w, "day"),
                open: text(w, "open"),
                close: text(w, "close"),
            })
            .collect(),
        exceptions: list("exceptions")
            .iter()
            .map(|e| pb::HoursException {
                date: text(e, "date"),
                closed: e
                    .get("closed")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
                hours: e
                    .get("hours")
                    .and_then(serde_json::Value::as_array)
                    .map(|ranges| {
                        ranges
                            .iter()
                            .map(|r| pb::TimeRange {
                                open: text(r, "open"),
                                close: text(r, "close"),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
        after_hours_agent_id: match &routing.after_hours {
            AfterHours::Agent(id) => id.to_string(),
            _ => String::new(),
        },
        after_hours_transfer_to: match &routing.after_hours {
            AfterHours::Transfer(target) => target.as_str().to_owned(),
            _ => String::new(),
        },
    })
}

/// Business hours as a client sends them (or a cached route carries them),
/// parsed by the domain's rules. `field` prefixes error messages.
pub(crate) fn hours_from_pb(
    field: &str,
    hours: &pb::BusinessHours,
) -> Result<BusinessHours, Error> {
    let range = |open: &str, close: &str| serde_json::json!({ "open": open, "close": close });
    let json = serde_json::json!({
        "time_zone": hours.time_zone,
        "weekly": hours.weekly.iter().map(|w| serde_json::json!({
            "day": w.day, "open": w.open, "close": w.close,
        })).collect::<Vec<_>>(),
        "exceptions": hours.exceptions.iter().map(|e| {
            let mut exception = serde_json::json!({ "date": e.date, "closed": e.closed });
            if !e.hours.is_empty() {
                exception["hours"] = e.hours.iter().map(|r| range(&r.open, &r.close)).collect();
            }
            exception
        }).collect::<Vec<_>>(),
    });
    BusinessHours::parse(field, &json)
}

pub(crate) fn agent_version_to_pb(version: &AgentVersion) -> pb::AgentVersion {
    pb::AgentVersion {
        agent_id: version.agent_id.to_string(),
        org_id: version.org_id.to_string(),
        version: i32::try_from(version.version).unwrap_or(i32::MAX),
        name: version.name.clone(),
        voice_id: version.voice_id.clone(),
        llm_config: Some(version.llm_config.to_struct()),
        published_at: timestamp(version.published_at),
        published_by: version
            .published_by
            .map(|u| u.to_string())
            .unwrap_or_default(),
    }
}

/// The org's caller rules as a route carries them (`RouteData.caller_rules`):
/// one line a rule, `<e|p>\t<pattern>\t<b|r>\t<agent id>\t<agent number>`.
/// Patterns, ids and numbers hold no tab or newline.
pub(crate) fn rule_index(rules: &[CallerRule]) -> String {
    let mut index = String::new();
    for rule in rules {
        let (action, agent) = match rule.action {
            CallerAction::Block => ("b", String::new()),
            CallerAction::Route(agent) => ("r", agent.to_string()),
        };
        let matching = match rule.matching {
            CallerMatch::Exact => "e",
            CallerMatch::Prefix => "p",
        };
        let number = rule.agent_number.as_ref().map_or("", |n| n.as_str());
        index.push_str(&format!(
            "{matching}\t{}\t{action}\t{agent}\t{number}\n",
            rule.pattern
        ));
    }
    index
}

/// One line of a rule index.
pub(crate) struct IndexedRule<'a> {
    pub(crate) matching: CallerMatch,
    pub(crate) pattern: &'a str,
    /// `None`: block; else the agent's id and number.
    pub(crate) route_to: Option<(&'a str, &'a str)>,
}

/// The rules of an index, skipping any line that is not one.
pub(crate) fn indexed_rules(index: &str) -> impl Iterator<Item = IndexedRule<'_>> {
    index.lines().filter_map(|line| {
        let mut parts = line.split('\t');
        let matching = match parts.next()? {
            "e" => CallerMatch::Exact,
            "p" => CallerMatch::Prefix,
            _ => return None,
        };
        let pattern = parts.next()?;
        let route_to = match (parts.next()?, parts.next()?, parts.next()?) {
            ("b", _, _) => None,
            ("r", agent, number) => Some((agent, number)),
            _ => return None,
        };
        Some(IndexedRule {
            matching,
            pattern,
            route_to,
        })
    })
}

pub(crate) fn caller_rule_to_pb(rule: &CallerRule) -> pb::CallerRule {
    pb::CallerRule {
        id: rule.id.to_string(),
        org_id: rule.org_id.to_string(),
        r#match: match rule.matching {
            CallerMatch::Exact => pb::CallerMatch::Exact,
            CallerMatch::Prefix => pb::CallerMatch::Prefix,
        } as i32,
        pattern: rule.pattern.clone(),
        action: match rule.action {
            CallerAction::Block => pb::CallerAction::Block,
            CallerAction::Route(_) => pb::CallerAction::Route,
        } as i32,
        agent_id: match rule.action {
            CallerAction::Route(agent) => agent.to_string(),
            CallerAction::Block => String::new(),
        },
        label: rule.label.clone().unwrap_or_default(),
        created_at: timestamp(rule.created_at),
        updated_at: timestamp(rule.updated_at),
        agent_number: rule
            .agent_number
            .as_ref()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
    }
}

/// A caller-rule change: the same shape as an agent's, the rule's id in
/// `agent_id`.
pub(crate) fn caller_rule_change_to_pb(change: &AgentChange) -> pb::CallerRuleChange {
    let agent = agent_change_to_pb(change);
    pb::CallerRuleChange {
        id: agent.id,
        rule_id: agent.agent_id,
        org_id: agent.org_id,
        changed_at: agent.changed_at,
        changed_by: agent.changed_by,
        actor_role: agent.actor_role,
        actor_sql_role: agent.actor_sql_role,
        operation: agent.operation,
        fields: agent.fields,
    }
}

pub(crate) fn field_change_to_pb(change: &FieldChange) -> pb::FieldChange {
    pb::FieldChange {
        field: change.field.clone(),
        old_value: change.old.as_ref().map(json_to_value),
        new_value: change.new.as_ref().map(json_to_value),
    }
}

pub(crate) fn agent_change_to_pb(change: &AgentChange) -> pb::AgentChange {
    let operation = match change.operation {
        ChangeOperation::Insert => pb::ChangeOperation::Insert,
        ChangeOperation::Update => pb::ChangeOperation::Update,
        ChangeOperation::Delete => pb::ChangeOperation::Delete,
    };
    pb::AgentChange {
        id: change.seq.0,
        agent_id: change.agent_id.to_string(),
        org_id: change.org_id.to_string(),
        changed_at: timestamp(change.changed_at),
        changed_by: change
            .changed_by
            .map(|user| user.to_string())
            .unwrap_or_default(),
        actor_role: change.actor_role.clone(),
        actor_sql_role: change.actor_sql_role.clone().unwrap_or_default(),
        operation: operation as i32,
        fields: change.fields.iter().map(field_change_to_pb).collect(),
    }
}

pub(crate) fn customer_to_pb(customer: &Customer) -> pb::Customer {
    pb::Customer {
        id: customer.id.to_string(),
        org_id: customer.org_id.to_string(),
        phone: customer.phone.to_string(),
        name: customer.name.clone().unwrap_or_default(),
        email: customer.email.clone().unwrap_or_default(),
        created_at: timestamp(customer.created_at),
        updated_at: timestamp(customer.updated_at),
        attributes: customer
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn organization_to_pb(org: &Organization) -> pb::Organization {
    let plan_tier = match org.plan_tier {
        Some(PlanTier::Starter) => pb::PlanTier::Starter,
        Some(PlanTier::Pro) => pb::PlanTier::Pro,
        Some(PlanTier::Enterprise) => pb::PlanTier::Enterprise,
        None => pb::PlanTier::Unspecified,
    };
    pb::Organization {
        id: org.id.to_string(),
        name: org.name.clone(),
        slug: org.slug.clone(),
        plan_tier: plan_tier as i32,
        created_at: timestamp(org.created_at),
        max_concurrent_calls: org.max_concurrent_calls as i32,
    }
}

pub(crate) fn resolution_to_pb(resolution: &Resolution) -> pb::ResolveAgentResponse {
    let mut agent = agent_to_pb(&resolution.agent);
    // The hours travel encoded in the route's data, out of the answer.
    let hours = agent.business_hours.take();
    pb::ResolveAgentResponse {
        agent: Some(Box::new(agent)),
        organization: Some(Box::new(organization_to_pb(&resolution.organization))),
        caller: resolution
            .caller
            .as_ref()
            .map(|c| Box::new(customer_to_pb(c))),
        route_data: Some(Box::new(pb::RouteData {
            served_versions: resolution
                .extras
                .served_versions
                .iter()
                .map(|v| prost::Message::encode_to_vec(&agent_version_to_pb(v)).into())
                .collect(),
            served_version_numbers: resolution
                .extras
                .served_versions
                .iter()
                .map(|v| i32::try_from(v.version).unwrap_or(i32::MAX))
                .collect(),
            caller_rules: rule_index(&resolution.extras.caller_rules),
            business_hours: hours
                .as_ref()
                .map(|h| prost::Message::encode_to_vec(h).into())
                .unwrap_or_default(),
            after_hours_agent_id: hours
                .as_ref()
                .map(|h| h.after_hours_agent_id.clone())
                .unwrap_or_default(),
            after_hours_transfer_to: hours
                .as_ref()
                .map(|h| h.after_hours_transfer_to.clone())
                .unwrap_or_default(),
            time_zone: hours.map(|h| h.time_zone).unwrap_or_default(),
            after_hours_agent_number: resolution
                .extras
                .after_hours_agent_number
                .as_ref()
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
        })),
        ..Default::default()
    }
}

fn outcome_to_pb(outcome: Outcome) -> pb::CallOutcome {
    match outcome {
        Outcome::Answer => pb::CallOutcome::Answer,
        Outcome::Transfer => pb::CallOutcome::Transfer,
        Outcome::Reject => pb::CallOutcome::Reject,
    }
}

fn reason_to_pb(reason: Reason) -> pb::CallReason {
    match reason {
        Reason::Answered => pb::CallReason::Answered,
        Reason::NumberNotFound => pb::CallReason::NumberNotFound,
        Reason::AgentInactive => pb::CallReason::AgentInactive,
        Reason::OrganizationAtLimit => pb::CallReason::OrganizationAtLimit,
        Reason::AgentAtLimit => pb::CallReason::AgentAtLimit,
        Reason::LimitsUnavailable => pb::CallReason::LimitsUnavailable,
        Reason::CallerBlocked => pb::CallReason::CallerBlocked,
        Reason::Closed => pb::CallReason::Closed,
        Reason::RoutingLoop => pb::CallReason::RoutingLoop,
    }
}

pub(crate) fn call_status_to_pb(status: CallStatus) -> pb::CallStatus {
    match status {
        CallStatus::Ringing => pb::CallStatus::Ringing,
        CallStatus::InProgress => pb::CallStatus::InProgress,
        CallStatus::Completed => pb::CallStatus::Completed,
        CallStatus::Failed => pb::CallStatus::Failed,
        CallStatus::Missed => pb::CallStatus::Missed,
        CallStatus::Refused => pb::CallStatus::Refused,
        CallStatus::Transferred => pb::CallStatus::Transferred,
    }
}

pub(crate) fn call_status_from_pb(status: pb::CallStatus) -> Option<CallStatus> {
    CallStatus::ALL
        .iter()
        .copied()
        .find(|s| call_status_to_pb(*s) == status)
}

pub(crate) fn disconnect_reason_to_pb(reason: DisconnectReason) -> pb::DisconnectReason {
    match reason {
        DisconnectReason::CallerHungUp => pb::DisconnectReason::CallerHungUp,
        DisconnectReason::AgentHungUp => pb::DisconnectReason::AgentHungUp,
        DisconnectReason::Transferred => pb::DisconnectReason::Transferred,
        DisconnectReason::Error => pb::DisconnectReason::Error,
        DisconnectReason::Timeout => pb::DisconnectReason::Timeout,
        DisconnectReason::NoAnswer => pb::DisconnectReason::NoAnswer,
        DisconnectReason::Busy => pb::DisconnectReason::Busy,
        DisconnectReason::Rejected => pb::DisconnectReason::Rejected,
        DisconnectReason::LeaseExpired => pb::DisconnectReason::LeaseExpired,
        DisconnectReason::Other => pb::DisconnectReason::Other,
    }
}

pub(crate) fn disconnect_reason_from_pb(reason: pb::DisconnectReason) -> Option<DisconnectReason> {
    DisconnectReason::ALL
        .iter()
        .copied()
        .find(|r| disconnect_reason_to_pb(*r) == reason)
}

fn millis_timestamp(ms: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

pub(crate) fn duration_to_pb(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

/// `route` is the ResolveAgent answer the decision was made on.
pub(crate) fn decision_to_pb(
    call_id: &str,
    decision: &Decision,
    route: Option<pb::ResolveAgentResponse>,
    lease_expires_ms: Option<i64>,
    renew_every: std::time::Duration,
    replayed: bool,
    limits_unchecked: bool,
) -> pb::CallDecision {
    let route = route.unwrap_or_default();
    let answered = decision.outcome == Outcome::Answer;
    pb::CallDecision {
        outcome: outcome_to_pb(decision.outcome) as i32,
        reason: reason_to_pb(decision.reason) as i32,
        call_id: call_id.to_owned(),
        agent: route.agent.map(|a| *a),
        organization: route.organization.map(|o| *o),
        caller: route.caller.map(|c| *c),
        agent_version: route.agent_version,
        variables: route.variables,
        route_path: route.route_path,
        transfer_to: decision
            .transfer_to
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        sip_status: if decision.outcome == Outcome::Reject {
            i32::from(decision.reason.sip_status())
        } else {
            0
        },
        lease_expires_at: lease_expires_ms.and_then(millis_timestamp),
        renew_every: answered.then(|| duration_to_pb(renew_every)),
        replayed,
        limits_unchecked,
    }
}

pub(crate) fn lease_to_pb(
    expires_ms: i64,
    renew_every: std::time::Duration,
    rebuilt: bool,
) -> pb::CallLease {
    pb::CallLease {
        lease_expires_at: millis_timestamp(expires_ms),
        renew_every: Some(duration_to_pb(renew_every)),
        rebuilt,
    }
}

pub(crate) fn call_to_pb(call: &CallRecord) -> pb::Call {
    pb::Call {
        id: if call.id.is_nil() {
            String::new()
        } else {
            call.id.to_string()
        },
        org_id: call.org_id.to_string(),
        call_id: call.call_id.clone(),
        agent_id: call.agent_id.map(|a| a.to_string()).unwrap_or_default(),
        customer_id: call.customer_id.map(|c| c.to_string()).unwrap_or_default(),
        called_number: call.called_number.clone(),
        caller_number: call.caller_number.clone().unwrap_or_default(),
        outcome: call.outcome.map_or(0, |o| outcome_to_pb(o) as i32),
        reason: call.reason.map_or(0, |r| reason_to_pb(r) as i32),
        transfer_to: call
            .transfer_to
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        status: call.status.map_or(0, |s| call_status_to_pb(s) as i32),
        started_at: timestamp(call.started_at),
        answered_at: call.answered_at.and_then(timestamp),
        ended_at: call.ended_at.and_then(timestamp),
        duration_ms: call.duration_ms.unwrap_or(0),
        disconnect_reason: call
            .disconnect_reason
            .map_or(0, |d| disconnect_reason_to_pb(d) as i32),
        agent_version: call
            .agent_version
            .map_or(0, |v| i32::try_from(v).unwrap_or(i32::MAX)),
    }
}

pub(crate) fn call_limits_to_pb(limits: &CallLimits) -> pb::CallLimits {
    let plan_tier = match limits.plan_tier {
        Some(PlanTier::Starter) => pb::PlanTier::Starter,
        Some(PlanTier::Pro) => pb::PlanTier::Pro,
        Some(PlanTier::Enterprise) => pb::PlanTier::Enterprise,
        None => pb::PlanTier::Unspecified,
    };
    pb::CallLimits {
        org_id: limits.org_id.to_string(),
        plan_tier: plan_tier as i32,
        plan_default: limits.plan_default as i32,
        r#override: limits.override_limit.map(|l| l as i32),
        in_force: limits.in_force as i32,
    }
}

pub(crate) fn active_calls_to_pb(
    org_id: OrgId,
    active: u32,
    limit: u32,
    agents: &[(AgentId, u32, u32)],
) -> pb::ActiveCalls {
    pb::ActiveCalls {
        org_id: org_id.to_string(),
        active: active as i32,
        limit: limit as i32,
        agents: agents
            .iter()
            .map(|(agent, n, l)| pb::AgentActiveCalls {
                agent_id: agent.to_string(),
                active: *n as i32,
                limit: *l as i32,
            })
            .collect(),
        at: timestamp(Utc::now()),
    }
}
