//! What switchboard knows about: organizations, agents, customers, and the
//! answer to "who takes this call".

use chrono::{DateTime, Utc};

use std::collections::BTreeMap;

use super::{
    AfterHours, AgentId, AgentRouting, BusinessHours, CustomerId, LlmConfig, OrgId, PhoneNumber,
    RouteExtras, TransferTarget, VersionServing,
};
use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanTier {
    Starter,
    Pro,
    Enterprise,
}

impl PlanTier {
    /// From the database enum `public.plan_tier`.
    pub(crate) fn from_db(value: &str) -> Option<Self> {
        match value {
            "starter" => Some(PlanTier::Starter),
            "pro" => Some(PlanTier::Pro),
            "enterprise" => Some(PlanTier::Enterprise),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Organization {
    pub(crate) id: OrgId,
    pub(crate) name: String,
    pub(crate) slug: String,
    pub(crate) plan_tier: Option<PlanTier>,
    pub(crate) created_at: DateTime<Utc>,
    /// The concurrent-call limit in force (override, else the plan's).
    pub(crate) max_concurrent_calls: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    pub(crate) id: AgentId,
    pub(crate) org_id: OrgId,
    pub(crate) name: String,
    pub(crate) phone_number: PhoneNumber,
    pub(crate) voice_id: String,
    pub(crate) llm_config: LlmConfig,
    pub(crate) is_active: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    /// The agent's own concurrent-call limit, under the org's.
    pub(crate) max_concurrent_calls: Option<u32>,
    /// Where calls it cannot take go; refused when `None`.
    pub(crate) fallback_destination: Option<TransferTarget>,
    /// Versions, hours, after hours.
    pub(crate) routing: AgentRouting,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub(crate) id: CustomerId,
    pub(crate) org_id: OrgId,
    pub(crate) phone: PhoneNumber,
    pub(crate) name: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    /// For prompt templates (`routing::parse_attributes` bounds them).
    pub(crate) attributes: BTreeMap<String, String>,
}

/// The answer to `ResolveAgent`.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub(crate) agent: Agent,
    pub(crate) organization: Organization,
    /// The caller's record in the agent's organization, when known.
    pub(crate) caller: Option<Customer>,
    /// What the decision pipeline needs beyond the agent and org.
    pub(crate) extras: RouteExtras,
}

/// Text fields a client sets. Bounded like the database's check constraints,
/// so the client learns which field is wrong.
pub fn parse_text(field: &str, value: &str, max: usize) -> Result<String, Error> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    // Postgres text cannot hold U+0000: refuse it here, not as an internal
    // error from the database.
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "{field} must not contain a NUL character"
        )));
    }
    if value.chars().count() > max {
        return Err(Error::invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(value.to_owned())
}

/// Input echoed in an error message is cut short: the message goes back in a
/// gRPC trailer (a long one breaks the client's HTTP/2 header limit) and into
/// the log.
fn shortened(input: &str) -> String {
    const MAX_ECHO_CHARS: usize = 40;
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &input[..end]),
        None => input.to_owned(),
    }
}

pub(crate) fn parse_optional_text(
    field: &str,
    value: &str,
    max: usize,
) -> Result<Option<String>, Error> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        parse_text(field, value, max).map(Some)
    }
}

pub(crate) const MAX_NAME_CHARS: usize = 200;
pub(crate) const MAX_VOICE_ID_CHARS: usize = 200;
pub(crate) const MAX_EMAIL_CHARS: usize = 320;

#[derive(Clone, Debug, PartialEq)]
pub struct NewAgent {
    /// Required for service_role; tenant callers leave it empty and the
    /// database puts the agent in their own org.
    pub(crate) org_id: Option<OrgId>,
    pub(crate) name: String,
    pub(crate) phone_number: PhoneNumber,
    pub(crate) voice_id: String,
    pub(crate) llm_config: LlmConfig,
    pub(crate) is_active: bool,
    pub(crate) max_concurrent_calls: Option<u32>,
    pub(crate) fallback_destination: Option<TransferTarget>,
    pub(crate) hours: Option<BusinessHours>,
    pub(crate) after_hours: AfterHours,
}

/// The fields `UpdateAgent` may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentField {
    Name,
    PhoneNumber,
    VoiceId,
    LlmConfig,
    IsActive,
    MaxConcurrentCalls,
    FallbackDestination,
    Serving,
    BusinessHours,
}

impl AgentField {
    pub const ALL: [AgentField; 9] = [
        AgentField::Name,
        AgentField::PhoneNumber,
        AgentField::VoiceId,
        AgentField::LlmConfig,
        AgentField::IsActive,
        AgentField::MaxConcurrentCalls,
        AgentField::FallbackDestination,
        AgentField::Serving,
        AgentField::BusinessHours,
    ];

    pub fn parse_path(path: &str) -> Result<Self, Error> {
        match path {
            "name" => Ok(AgentField::Name),
            "phone_number" | "phoneNumber" => Ok(AgentField::PhoneNumber),
            "voice_id" | "voiceId" => Ok(AgentField::VoiceId),
            "llm_config" | "llmConfig" => Ok(AgentField::LlmConfig),
            "is_active" | "isActive" => Ok(AgentField::IsActive),
            "max_concurrent_calls" | "maxConcurrentCalls" => Ok(AgentField::MaxConcurrentCalls),
            "fallback_destination" | "fallbackDestination" => Ok(AgentField::FallbackDestination),
            "serving" => Ok(AgentField::Serving),
            "business_hours" | "businessHours" => Ok(AgentField::BusinessHours),
            other => Err(Error::invalid(format!(
                "update_mask path {:?} is not one of: name, phone_number, voice_id, llm_config, is_active, max_concurrent_calls, fallback_destination, serving, business_hours",
                shortened(other)
            ))),
        }
    }
}

/// A partial update: `None` leaves the column as it is; for the two
/// clearable columns, `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentPatch {
    pub(crate) name: Option<String>,
    pub(crate) phone_number: Option<PhoneNumber>,
    pub(crate) voice_id: Option<String>,
    pub(crate) llm_config: Option<LlmConfig>,
    pub(crate) is_active: Option<bool>,
    pub(crate) max_concurrent_calls: Option<Option<u32>>,
    pub(crate) fallback_destination: Option<Option<TransferTarget>>,
    pub(crate) serving: Option<VersionServing>,
    /// `Some((None, _))` clears the hours (always open).
    pub(crate) hours: Option<(Option<BusinessHours>, AfterHours)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CustomerUpsert {
    /// Required for service_role; tenant callers leave it empty.
    pub(crate) org_id: Option<OrgId>,
    pub(crate) phone: PhoneNumber,
    pub(crate) name: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) attributes: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_a_nul_character_is_bad_input() {
        assert_eq!(
            parse_text("name", " Front Desk ", 20),
            Ok("Front Desk".into())
        );
        assert_eq!(
            parse_text("name", "Front\0Desk", 20),
            Err(Error::invalid("name must not contain a NUL character"))
        );
    }

    #[test]
    fn an_unknown_mask_path_is_echoed_short() {
        let message = AgentField::parse_path(&"x".repeat(100_000))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains(&format!("\"{}…\"", "x".repeat(40))),
            "{message}"
        );
        assert!(message.len() < 200, "{} bytes", message.len());
        assert!(AgentField::parse_path("vocie_id")
            .err()
            .is_some_and(|e| e.to_string().contains("\"vocie_id\"")));
    }
}
