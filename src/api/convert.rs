//! Domain → protobuf conversions (and back, where an answer kept encoded
//! is read). Pure functions: no I/O, no transport.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::pb;
use crate::domain::{
    json_to_value, Agent, AgentChange, ChangeOperation, Customer, OrgId, Organization, PlanTier,
    Resolution,
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
