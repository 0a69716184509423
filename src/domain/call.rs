//! Calls: the decision for a ringing call, its live slot, and its record.
//! The closed sets here are the database's check constraints, spelled the
//! same (`as_db`), and the protobuf enums (`api::convert`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{page::Cursor, AgentId, CustomerId, OrgId, PhoneNumber};
use crate::error::Error;

/// The media server's own id for a call: printable ASCII without spaces,
/// 1 to 128 bytes (Asterisk's `1700000000.42`, FreeSWITCH's UUID, a SIP
/// Call-ID `a84b4c76e66710@pc33.example.com`). Unique only within one
/// organization.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallId(String);

pub(crate) const MAX_CALL_ID_BYTES: usize = 128;

impl CallId {
    pub fn parse(input: &str) -> Result<Self, Error> {
        if input.is_empty() {
            return Err(Error::invalid("call_id is required"));
        }
        if input.len() > MAX_CALL_ID_BYTES {
            return Err(Error::invalid(format!(
                "call_id is longer than {MAX_CALL_ID_BYTES} bytes"
            )));
        }
        if !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "call_id must be printable ASCII without spaces",
            ));
        }
        Ok(CallId(input.to_owned()))
    }

    /// A new id, for a StartCall that sent none.
    pub fn generate() -> Self {
        CallId(Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a call is transferred: E.164, or a `sip:`/`sips:` URI (printable
/// ASCII, no spaces, at most 254 bytes in all), as the database checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferTarget(String);

impl TransferTarget {
    pub fn parse(field: &str, input: &str) -> Result<Self, Error> {
        let input = input.trim();
        if input.starts_with("sip:") || input.starts_with("sips:") {
            let rest = input.split_once(':').map(|(_, r)| r).unwrap_or_default();
            if rest.is_empty() || rest.len() > 250 || !rest.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::invalid(format!(
                    "{field} must be a sip: URI of printable ASCII without spaces, at most 250 characters after the scheme"
                )));
            }
            return Ok(TransferTarget(input.to_owned()));
        }
        PhoneNumber::parse_for_write(input)
            .map(|n| TransferTarget(n.as_str().to_owned()))
            .map_err(|_| Error::invalid(format!("{field} must be an E.164 number or a sip: URI")))
    }

    /// As stored: trusted.
    pub(crate) fn from_db(value: String) -> Self {
        TransferTarget(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A concurrent-call limit: 1 to 100 000, as the database checks.
pub(crate) const MAX_CALL_LIMIT: i32 = 100_000;

pub fn parse_call_limit(field: &str, value: i32) -> Result<u32, Error> {
    if (1..=MAX_CALL_LIMIT).contains(&value) {
        Ok(value as u32)
    } else {
        Err(Error::invalid(format!(
            "{field} must be between 1 and {MAX_CALL_LIMIT}"
        )))
    }
}

macro_rules! db_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $db:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_db(self) -> &'static str {
                match self { $($name::$variant => $db),+ }
            }

            pub fn from_db(value: &str) -> Option<Self> {
                match value { $($db => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

db_enum!(
    /// What happens to a ringing call.
    Outcome { Answer = "answer", Transfer = "transfer", Reject = "reject" }
);

db_enum!(
    /// Why. A closed set that may grow.
    Reason {
        Answered = "answered",
        NumberNotFound = "number_not_found",
        AgentInactive = "agent_inactive",
        OrganizationAtLimit = "organization_at_limit",
        AgentAtLimit = "agent_at_limit",
        LimitsUnavailable = "limits_unavailable",
        CallerBlocked = "caller_blocked",
        Closed = "closed",
        RoutingLoop = "routing_loop",
    }
);

db_enum!(
    /// A record's status through its life (derived by the database from
    /// the facts recorded, see the calls migration).
    CallStatus {
        Ringing = "ringing",
        InProgress = "in_progress",
        Completed = "completed",
        Failed = "failed",
        Missed = "missed",
        Refused = "refused",
        Transferred = "transferred",
    }
);

db_enum!(
    /// How an admitted call ended, as its media server says.
    EndStatus { Completed = "completed", Failed = "failed" }
);

db_enum!(
    DisconnectReason {
        CallerHungUp = "caller_hung_up",
        AgentHungUp = "agent_hung_up",
        Transferred = "transferred",
        Error = "error",
        Timeout = "timeout",
        NoAnswer = "no_answer",
        Busy = "busy",
        Rejected = "rejected",
        LeaseExpired = "lease_expired",
        Other = "other",
    }
);

impl Reason {
    /// The SIP status a media server answers a refused call with.
    pub fn sip_status(self) -> u16 {
        match self {
            Reason::Answered => 200,
            Reason::NumberNotFound => 404,
            Reason::AgentInactive | Reason::Closed | Reason::RoutingLoop => 480,
            Reason::CallerBlocked => 603,
            Reason::OrganizationAtLimit | Reason::AgentAtLimit => 486,
            Reason::LimitsUnavailable => 503,
        }
    }
}

/// The decision for one call, as remembered for its retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub reason: Reason,
    pub transfer_to: Option<TransferTarget>,
}

impl Decision {
    /// What a call the agent cannot take gets: the agent's fallback if it
    /// has one, else refused with the reason.
    pub fn refused(reason: Reason, fallback: Option<&TransferTarget>) -> Self {
        match fallback {
            Some(target) => Decision {
                outcome: Outcome::Transfer,
                reason,
                transfer_to: Some(target.clone()),
            },
            None => Decision {
                outcome: Outcome::Reject,
                reason,
                transfer_to: None,
            },
        }
    }

    pub fn answered() -> Self {
        Decision {
            outcome: Outcome::Answer,
            reason: Reason::Answered,
            transfer_to: None,
        }
    }
}

/// One fact about a call for its record, keyed by (org, call id). Facts
/// merge in any order and any number of times into one row (the store's
/// upsert and the database's status trigger): the decision's fields are
/// the decision's, the first answer and the first end win.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallFact {
    pub org_id: OrgId,
    pub call_id: String,
    pub called_number: String,
    pub at: DateTime<Utc>,
    pub what: Fact,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    Decided {
        caller_number: Option<String>,
        agent_id: Option<AgentId>,
        customer_id: Option<CustomerId>,
        outcome: Outcome,
        reason: Reason,
        transfer_to: Option<String>,
        /// The agent version that answered (absent in facts written before
        /// versions existed).
        #[serde(default)]
        agent_version: Option<u32>,
    },
    Answered,
    Ended {
        status: EndStatus,
        disconnect_reason: Option<DisconnectReason>,
    },
}

/// A call's record as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    pub id: Uuid,
    pub org_id: OrgId,
    pub call_id: String,
    pub agent_id: Option<AgentId>,
    pub customer_id: Option<CustomerId>,
    pub called_number: String,
    pub caller_number: Option<String>,
    pub outcome: Option<Outcome>,
    pub reason: Option<Reason>,
    pub transfer_to: Option<TransferTarget>,
    pub status: Option<CallStatus>,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub disconnect_reason: Option<DisconnectReason>,
    pub agent_version: Option<u32>,
}

/// Which call `GetCall` asks for.
#[derive(Clone, Debug)]
pub enum CallLookup {
    ById(Uuid),
    /// The media server's id; the org narrows it (required for
    /// service_role, implied by RLS for tenants).
    ByCallId {
        org_id: Option<OrgId>,
        call_id: String,
    },
}

/// ListCalls' filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallFilter {
    /// service_role names the org; tenants see their own (RLS).
    pub org_id: Option<OrgId>,
    pub agent_id: Option<AgentId>,
    pub status: Option<CallStatus>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Calls are listed newest first by (started_at, id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallCursor {
    pub started_at_micros: i64,
    pub id: Uuid,
}

impl Cursor for CallCursor {
    fn to_token_text(&self) -> String {
        format!("call:{}:{}", self.started_at_micros, self.id)
    }

    fn from_token_text(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("call:")?;
        let (micros, id) = rest.split_once(':')?;
        if micros.is_empty() || !micros.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return None;
        }
        Some(CallCursor {
            started_at_micros: micros.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// An organization's concurrent-call limit.
#[derive(Clone, Debug, PartialEq)]
pub struct CallLimits {
    pub org_id: OrgId,
    pub plan_tier: Option<super::PlanTier>,
    pub plan_default: u32,
    pub override_limit: Option<u32>,
    pub in_force: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_printable_ascii_without_spaces() {
        for good in ["1700000000.42", "a84b4c76e66710@pc33.example.com", "x"] {
            assert!(CallId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "tab\there", "ünï", &"x".repeat(129)] {
            assert!(CallId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CallId::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn transfer_targets_are_numbers_or_sip_uris() {
        assert_eq!(
            TransferTarget::parse("t", "+1 (415) 555-0123").map(|t| t.0),
            Ok("+14155550123".to_owned())
        );
        assert!(TransferTarget::parse("t", "sip:desk@pbx.example.com").is_ok());
        assert!(TransferTarget::parse("t", "sips:desk@pbx.example.com").is_ok());
        for bad in ["sip:", "sip:has space", "http://x", "12", ""] {
            assert!(TransferTarget::parse("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn closed_sets_round_trip_their_database_spelling() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_db(r.as_db()), Some(*r));
        }
        for d in DisconnectReason::ALL {
            assert_eq!(DisconnectReason::from_db(d.as_db()), Some(*d));
        }
        assert_eq!(Reason::OrganizationAtLimit.sip_status(), 486);
        assert_eq!(Reason::NumberNotFound.sip_status(), 404);
        assert_eq!(Reason::AgentInactive.sip_status(), 480);
    }

    #[test]
    fn call_cursors_round_trip_and_refuse_other_lists() {
        let cursor = CallCursor {
            started_at_micros: 1_700_000_000_123_456,
            id: Uuid::nil(),
        };
        assert_eq!(
            CallCursor::from_token_text(&cursor.to_token_text()),
            Some(cursor)
        );
        assert_eq!(CallCursor::from_token_text("seq:12"), None);
        // The whole token, as a client gets it and sends it back.
        let page = crate::domain::Page::from_rows(
            vec![cursor, cursor],
            crate::domain::PageRequest {
                size: 1,
                after: None,
            },
            |c| *c,
        );
        assert_eq!(
            crate::domain::PageRequest::<CallCursor>::parse(1, &page.next_page_token)
                .map(|p| p.after),
            Ok(Some(cursor))
        );
        assert_eq!(CallCursor::from_token_text("call:12"), None);
    }

    #[test]
    fn call_limits_are_bounded() {
        assert_eq!(parse_call_limit("l", 1), Ok(1));
        assert!(parse_call_limit("l", 0).is_err());
        assert!(parse_call_limit("l", 100_001).is_err());
    }
}
