//! Domain → protobuf conversions (and back, where an answer kept encoded
//! is read). Pure functions: no I/O, no transport.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::pb;
use crate::domain::{
    json_to_value, Agent, AgentChange, AgentId, CallLimits, CallRecord, CallStatus,
    ChangeOperation, Customer, Decision, DisconnectReason, OrgId, Organization, Outcome, PlanTier,
    Reason, Resolution,
};

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
        fields: change
            .fields
            .iter()
            .map(|f| pb::FieldChange {
                field: f.field.clone(),
                old_value: f.old.as_ref().map(json_to_value),
                new_value: f.new.as_ref().map(json_to_value),
            })
            .collect(),
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
    pb::ResolveAgentResponse {
        agent: Some(agent_to_pb(&resolution.agent)),
        organization: Some(organization_to_pb(&resolution.organization)),
        caller: resolution.caller.as_ref().map(customer_to_pb),
    }
}

/// The org a route answers for (`None` only for a route that is not one of
/// ours: every route `resolution_to_pb` makes names its org).
pub(crate) fn org_of(route: &pb::ResolveAgentResponse) -> Option<OrgId> {
    route
        .organization
        .as_ref()
        .and_then(|o| OrgId::parse(&o.id).ok())
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
        agent: route.agent,
        organization: route.organization,
        caller: route.caller,
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
