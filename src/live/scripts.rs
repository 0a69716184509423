//! The Lua scripts behind `LiveCalls` (`*.lua` beside this file, also run
//! raw by `benches/load/calls.sh`), and their answers parsed. Each answers
//! a flat array of strings whose first element says which case.
//!
//! A call's hash (`call:<id>`): `called`, `agent`, `outcome`, `reason`,
//! `transfer`, `expires` (ms), `state` (`ringing`, `in_progress`,
//! `decided` for a call that took no slot, `ended`).

use std::sync::LazyLock;

use redis::Script;

use super::{Admission, Counts, Ending, LiveError, Renewal};
use crate::domain::{AgentId, Outcome, Reason};

/// KEYS: active, agent's leases, agents set, call hash, refusals.
/// ARGV: call id, called, agent id, org limit, agent limit (0 none),
/// lease ms, remember ms, refused-for reason ('' to ask for a slot),
/// fallback ('' none), refusals recorded per minute, how long a decision
/// without a slot is remembered (ms).
pub(super) static ADMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("admit.lua")));

/// KEYS: active, agent's leases, agents set, call hash.
/// ARGV: call id, called, agent id, lease ms, remember ms, answered (1/0),
/// rebuild an unknown call (1/0).
pub(super) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("renew.lua")));

/// KEYS: active, agent's leases, call hash.
/// ARGV: call id, called, agent id, how long the end is remembered (ms),
/// mark an unknown call ended (1/0).
pub(super) static END: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("end.lua")));

/// KEYS: active, agents set. ARGV: the prefix of an agent's leases key.
/// The agents' keys are in the org's slot (same hash tag).
pub(super) static COUNT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("count.lua")));

fn shape(answer: &[String]) -> LiveError {
    LiveError::Shape(answer.join(","))
}

fn number<T: std::str::FromStr>(answer: &[String], at: usize) -> Result<T, LiveError> {
    answer
        .get(at)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| shape(answer))
}

fn decision(
    answer: &[String],
) -> Result<(Outcome, Reason, Option<String>, Option<i64>), LiveError> {
    let outcome = answer
        .get(1)
        .and_then(|o| Outcome::from_db(o))
        .ok_or_else(|| shape(answer))?;
    let reason = answer
        .get(2)
        .and_then(|r| Reason::from_db(r))
        .ok_or_else(|| shape(answer))?;
    let transfer = answer.get(3).filter(|t| !t.is_empty()).cloned();
    let expires: i64 = number(answer, 4)?;
    Ok((outcome, reason, transfer, (expires > 0).then_some(expires)))
}

pub(super) fn parse_admission(answer: &[String]) -> Result<Admission, LiveError> {
    match answer.first().map(String::as_str) {
        Some("conflict") => Ok(Admission::Conflict),
        Some("ended") => Ok(Admission::Ended),
        Some("replay") => {
            let (outcome, reason, transfer_to, lease_expires_ms) = decision(answer)?;
            Ok(Admission::Replay {
                outcome,
                reason,
                transfer_to,
                lease_expires_ms,
                // Absent in calls admitted before versions were remembered.
                agent_id: answer.get(5).and_then(|a| AgentId::parse(a).ok()),
                agent_version: answer.get(6).and_then(|v| v.parse().ok()),
            })
        }
        Some("new") => {
            let (outcome, reason, transfer_to, lease_expires_ms) = decision(answer)?;
            Ok(Admission::New {
                outcome,
                reason,
                transfer_to,
                lease_expires_ms,
                expired: number(answer, 5)?,
                record: answer.get(6).is_some_and(|r| r == "1"),
            })
        }
        _ => Err(shape(answer)),
    }
}

pub(super) fn parse_renewal(answer: &[String]) -> Result<Renewal, LiveError> {
    match answer.first().map(String::as_str) {
        Some("alive") => Ok(Renewal::Alive {
            lease_expires_ms: number(answer, 1)?,
            rebuilt: answer.get(2).is_some_and(|r| r == "1"),
        }),
        Some("ended") => Ok(Renewal::Ended),
        Some("no_slot") => Ok(Renewal::NoSlot),
        Some("unknown") => Ok(Renewal::Unknown),
        Some("conflict") => Ok(Renewal::Conflict),
        _ => Err(shape(answer)),
    }
}

pub(super) fn parse_ending(answer: &[String]) -> Result<Ending, LiveError> {
    match answer.first().map(String::as_str) {
        Some("ended") => Ok(Ending::Ended {
            held: answer.get(1).is_some_and(|h| h == "1"),
            answered: answer.get(2).is_some_and(|a| a == "1"),
        }),
        Some("already") => Ok(Ending::AlreadyEnded),
        Some("unknown") => Ok(Ending::Unknown),
        Some("conflict") => Ok(Ending::Conflict),
        _ => Err(shape(answer)),
    }
}

pub(super) fn parse_counts(answer: &[String]) -> Result<Counts, LiveError> {
    if answer.first().map(String::as_str) != Some("counts") {
        return Err(shape(answer));
    }
    let active = number(answer, 1)?;
    let mut agents = Vec::new();
    for pair in answer[2..].chunks(2) {
        let [agent, count] = pair else {
            return Err(shape(answer));
        };
        let agent = AgentId::parse(agent).map_err(|_| shape(answer))?;
        let count = count.parse().map_err(|_| shape(answer))?;
        agents.push((agent, count));
    }
    agents.sort();
    Ok(Counts { active, agents })
}

impl PartialEq for LiveError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn answers_parse_or_are_refused() {
        assert_eq!(
            parse_admission(&strings(&[
                "new", "answer", "answered", "", "1700", "2", "1"
            ])),
            Ok(Admission::New {
                outcome: Outcome::Answer,
                reason: Reason::Answered,
                transfer_to: None,
                lease_expires_ms: Some(1700),
                expired: 2,
                record: true,
            })
        );
        assert_eq!(
            parse_admission(&strings(&[
                "replay",
                "transfer",
                "agent_at_limit",
                "+15550001111",
                "0"
            ])),
            Ok(Admission::Replay {
                outcome: Outcome::Transfer,
                reason: Reason::AgentAtLimit,
                transfer_to: Some("+15550001111".into()),
                lease_expires_ms: None,
                agent_id: None,
                agent_version: None,
            })
        );
        assert_eq!(
            parse_admission(&strings(&[
                "replay",
                "answer",
                "answered",
                "",
                "1700",
                "aa000000-0000-4000-8000-000000000001",
                "3"
            ])),
            Ok(Admission::Replay {
                outcome: Outcome::Answer,
                reason: Reason::Answered,
                transfer_to: None,
                lease_expires_ms: Some(1700),
                agent_id: AgentId::parse("aa000000-0000-4000-8000-000000000001").ok(),
                agent_version: Some(3),
            })
        );
        assert!(parse_admission(&strings(&["new", "maybe"])).is_err());
        assert!(parse_counts(&strings(&["counts", "3", "not-a-uuid", "1"])).is_err());
        assert_eq!(parse_renewal(&strings(&["ended"])), Ok(Renewal::Ended));
    }
}
