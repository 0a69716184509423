//! The decision pipeline: one order, used by `StartCall` and `ResolveAgent`
//! alike, so the two never disagree (docs/routing.md).
//!
//! 1. Caller rules of the number's organization (most specific first): a
//!    block refuses (SIP 603); a route sends the call to the rule's agent.
//! 2. The agent: inactive → refused (its fallback, else SIP 480). Outside its
//!    business hours → its after-hours agent (back to 2 for that agent), or
//!    a transfer to its after-hours destination, or refused (SIP 480).
//! 3. The version the agent serves: pinned, a split by call id, or the
//!    latest published (never published: its own fields).
//! 4. (StartCall only) the limits, for the agent that answers.
//! 5. (StartCall only) the fallback of that agent when a limit is reached.
//!
//! Every step reads only what the cached routes carry: no round trip
//! beyond the route lookups themselves (one per hop, a memory hit when
//! warm). At most `MAX_HOPS` hops, never the same agent twice: a chain that
//! would loop is refused with `RoutingLoop` (SIP 480).

use std::{
    collections::HashMap,
    fmt::Write,
    sync::{Arc, RwLock},
};

use chrono::{DateTime, Datelike, Timelike, Utc};
use prost::Message;

use super::resolve::{Found, ResolveService};
use crate::{
    api::{
        answer::VariablesWire,
        convert::{agent_to_pb, hours_from_pb, indexed_rules, serving_from_pb, IndexedRule},
        pb,
        route_wire::{AgentView, RouteView, VersionView},
    },
    auth::Claims,
    cache::Tier,
    domain::{
        routing::{rule_rank, MAX_HOPS},
        AgentId, BusinessHours, OrgId, PhoneNumber, Reason, TransferTarget,
    },
    error::Error,
};

/// What the pipeline decided before any limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The agent in the answer takes the call (limits permitting).
    Answer,
    /// Nobody takes it: refused for `reason`, or transferred.
    Refuse {
        reason: Reason,
        transfer_to: Option<TransferTarget>,
    },
}

/// A decision before limits.
pub(crate) struct Routed {
    /// The agent that answers (or refuses), with the version it serves
    /// applied; its org; the caller's record; variables; the path. The
    /// agent, org and caller are passed through in wire form (`encoded`):
    /// `decoded()` gives them as fields.
    pub(crate) response: pb::ResolveAgentResponse,
    pub(crate) org_id: OrgId,
    pub(crate) agent_id: AgentId,
    /// The version that answers (`None`: never published).
    pub(crate) agent_version: Option<u32>,
    /// Where the number's route came from.
    pub(crate) tier: Tier,
    pub(crate) verdict: Verdict,
    /// The answering agent's fallback (for a limit reached).
    pub(crate) fallback: Option<TransferTarget>,
}

/// Where calls an agent cannot take go (`None`: refused).
fn fallback_of(agent: &AgentView) -> Option<TransferTarget> {
    (!agent.fallback_destination.is_empty())
        .then(|| TransferTarget::from_db(agent.fallback_destination.clone()))
}

/// The most specific caller rule for `caller`: an exact number, else the
/// longest prefix.
fn caller_rule<'a>(data: &'a pb::RouteData, caller: &str) -> Option<IndexedRule<'a>> {
    indexed_rules(&data.caller_rules)
        .filter_map(|rule| rule_rank(rule.matching, rule.pattern, caller).map(|rank| (rank, rule)))
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, rule)| rule)
}

/// Business hours parsed once per version of an agent, not once per call:
/// keyed by (agent id, `updated_at`), which every change of the agent's row
/// moves (a trigger). Bounded: past `HOURS_MEMO_MAX` entries it starts over.
#[derive(Default)]
pub(crate) struct HoursMemo {
    parsed: RwLock<HashMap<HoursKey, Option<Arc<BusinessHours>>>>,
}

/// (agent id, `updated_at` seconds, nanoseconds).
type HoursKey = (u128, i64, i32);

const HOURS_MEMO_MAX: usize = 4096;

impl HoursMemo {
    /// Whether the route's agent takes calls at `now` (no hours: always).
    /// Hours a route carries were checked when written; any that no longer
    /// parse (a newer zone name and an older build) count as open.
    fn open_at(&self, route: &RouteView, now: DateTime<Utc>) -> bool {
        let (agent, data) = (&route.agent, &route.data);
        if data.business_hours.is_empty() {
            return true;
        }
        let key = uuid::Uuid::parse_str(&agent.id).ok().map(|id| {
            let at = agent.updated_at.unwrap_or_default();
            (id.as_u128(), at.seconds, at.nanos)
        });
        let known = key.and_then(|key| {
            self.parsed
                .read()
                .ok()
                .and_then(|parsed| parsed.get(&key).cloned())
        });
        let parsed = match known {
            Some(parsed) => parsed,
            None => {
                let parsed =
                    <pb::BusinessHours as prost::Message>::decode(&data.business_hours[..])
                        .ok()
                        .and_then(|hours| hours_from_pb("business_hours", &hours).ok())
                        .map(Arc::new);
                if let (Some(key), Ok(mut memo)) = (key, self.parsed.write()) {
                    if memo.len() >= HOURS_MEMO_MAX {
                        memo.clear();
                    }
                    memo.insert(key, parsed.clone());
                }
                parsed
            }
        };
        parsed.is_none_or(|h| h.is_open(now))
    }
}

impl ResolveService {
    /// The pipeline for a ringing call. `None`: no agent has the number.
    /// `call_id` places the call in a version split (empty: as any call
    /// with that id would be).
    pub(crate) async fn decide(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
        call_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Routed>, Error> {
        let Some(first) = self.route(claims, called, caller).await? else {
            return Ok(None);
        };
        let org_id = first.view.org_id;
        let tier = first.tier;
        // Put on the answer by `finish`, whichever agent answers.
        let caller_record = first.caller;
        let mut path: Vec<String> = Vec::new();
        let mut visited: Vec<String> = vec![first.view.agent.id.clone()];
        let mut current = first.view;

        // 1. Caller rules.
        if let Some(caller) = caller {
            let rule = caller_rule(&current.data, caller.as_str())
                .map(|rule| rule.route_to.map(|(a, n)| (a.to_owned(), n.to_owned())));
            if let Some(route_to) = rule {
                match route_to {
                    None => {
                        return self.finish(
                            current,
                            org_id,
                            tier,
                            caller_record,
                            path,
                            Verdict::Refuse {
                                reason: Reason::CallerBlocked,
                                transfer_to: None,
                            },
                            call_id,
                            caller.as_str(),
                            now,
                        );
                    }
                    // To the number's own agent: no hop.
                    Some((agent_id, _)) if visited.contains(&agent_id) => {}
                    Some((agent_id, number)) => {
                        // A rule naming an agent that is gone (evicted
                        // within the second) is passed over.
                        if let Some(next) =
                            Box::pin(self.hop(claims, org_id, &agent_id, &number)).await?
                        {
                            path.push("caller_rule".to_owned());
                            visited.push(agent_id);
                            current = next.view;
                        }
                    }
                }
            }
        }

        // 2. Active, and within hours (or the after-hours chain).
        let verdict = loop {
            let agent = &current.agent;
            if agent.is_active != Some(true) {
                break Verdict::Refuse {
                    reason: Reason::AgentInactive,
                    transfer_to: fallback_of(agent),
                };
            }
            if self.hours().open_at(&current, now) {
                break Verdict::Answer;
            }
            let hours = &current.data;
            if !hours.after_hours_transfer_to.is_empty() {
                break Verdict::Refuse {
                    reason: Reason::Closed,
                    transfer_to: Some(TransferTarget::from_db(
                        hours.after_hours_transfer_to.clone(),
                    )),
                };
            }
            if hours.after_hours_agent_id.is_empty() {
                break Verdict::Refuse {
                    reason: Reason::Closed,
                    transfer_to: None,
                };
            }
            let next_id = hours.after_hours_agent_id.clone();
            if path.len() >= MAX_HOPS || visited.contains(&next_id) {
                break Verdict::Refuse {
                    reason: Reason::RoutingLoop,
                    transfer_to: None,
                };
            }
            let number = hours.after_hours_agent_number.clone();
            match Box::pin(self.hop(claims, org_id, &next_id, &number)).await? {
                Some(next) => {
                    path.push("after_hours".to_owned());
                    visited.push(next_id);
                    current = next.view;
                }
                // Gone since this route was cached: closed, as if none.
                None => {
                    break Verdict::Refuse {
                        reason: Reason::Closed,
                        transfer_to: None,
                    }
                }
            }
        };
        let caller = caller.map(PhoneNumber::as_str).unwrap_or_default();
        self.finish(
            current,
            org_id,
            tier,
            caller_record,
            path,
            verdict,
            call_id,
            caller,
            now,
        )
    }

    /// The route of `agent_id` (at `number`), if it is still that agent's
    /// and in `org_id`.
    async fn hop(
        &self,
        claims: &Claims,
        org_id: OrgId,
        agent_id: &str,
        number: &str,
    ) -> Result<Option<Found>, Error> {
        let Ok(number) = PhoneNumber::parse(number) else {
            return Ok(None);
        };
        let Some(next) = self.route(claims, &number, None).await? else {
            return Ok(None);
        };
        let same = next.view.org_id == org_id && next.view.agent.id == agent_id;
        Ok(same.then_some(next))
    }

    /// Steps 3 and the variables: the version applied to the answering
    /// agent, which is passed through with the org and the caller's record
    /// in wire form (the route's internal data left behind).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        current: RouteView,
        org_id: OrgId,
        tier: Tier,
        caller_record: Option<Arc<pb::Customer>>,
        path: Vec<String>,
        verdict: Verdict,
        call_id: &str,
        caller: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Routed>, Error> {
        let agent = &current.agent;
        let agent_id = AgentId::parse(&agent.id).map_err(|_| Error::Internal)?;
        let mut served = None;
        if verdict == Verdict::Answer && agent.latest_version > 0 {
            let wanted = serving_from_pb(agent.serving.as_ref())
                .pick(&agent.id, call_id)
                .or_else(|| u32::try_from(agent.latest_version).ok());
            let numbers = &current.data.served_version_numbers;
            let at = wanted
                .and_then(|w| {
                    numbers
                        .iter()
                        .position(|n| u32::try_from(*n).ok() == Some(w))
                })
                // Not carried (a split changed under a cached route): the
                // newest the route has.
                .or_else(|| {
                    numbers
                        .iter()
                        .enumerate()
                        .max_by_key(|(_, n)| **n)
                        .map(|(i, _)| i)
                });
            // Only the version served is read, its config left encoded.
            served = at
                .and_then(|i| current.data.served_versions.get(i))
                .and_then(VersionView::read);
        }
        let agent_version = served.as_ref().and_then(|v| u32::try_from(v.version).ok());
        let agent_name = served.as_ref().map_or(&agent.name, |v| &v.name);
        let variables = variables(
            caller_record.as_deref(),
            &current.org_name,
            agent_name,
            agent_version,
            caller,
            &current.data.time_zone,
            now,
        );
        let response = pb::ResolveAgentResponse {
            encoded: current.answer_fields(served.as_ref(), caller_record.as_deref()),
            agent_version: agent_version.map_or(0, |v| i32::try_from(v).unwrap_or(0)),
            route_path: path,
            variables_wire: variables,
            ..Default::default()
        };
        Ok(Some(Routed {
            response,
            org_id,
            agent_id,
            agent_version,
            tier,
            verdict,
            fallback: fallback_of(agent),
        }))
    }

    /// An agent as it answered in `version` (`None`: its own fields), read
    /// from the primary: a retried StartCall gets what its first answer
    /// gave. `None` when it is gone.
    pub(crate) async fn served_agent(
        &self,
        agent_id: AgentId,
        version: Option<u32>,
    ) -> Option<pb::Agent> {
        let claims = Claims::service();
        let store = self.fill_store();
        let mut agent = agent_to_pb(&store.get_agent(&claims, agent_id).await.ok()?);
        if let Some(version) = version {
            let (served, _) = store
                .agent_versions_pair(&claims, agent_id, version, version)
                .await
                .ok()?;
            agent.name = served.name;
            agent.voice_id = served.voice_id;
            agent.llm_config = Some(served.llm_config.to_struct());
        }
        Some(agent)
    }

    /// The agents a call to `called` may be answered by now or after a
    /// change of hours: its own, its caller rules' agents, and the
    /// after-hours chains from each (what a `CallRef` may name).
    pub(crate) async fn reachable_agents(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
    ) -> Result<Option<(OrgId, Vec<String>)>, Error> {
        let Some(first) = self.route(claims, called, None).await? else {
            return Ok(None);
        };
        let org_id = first.view.org_id;
        let mut agents = vec![first.view.agent.id.clone()];
        let routed_to: Vec<(String, String)> = indexed_rules(&first.view.data.caller_rules)
            .filter_map(|rule| rule.route_to)
            .map(|(a, n)| (a.to_owned(), n.to_owned()))
            .collect();
        let mut frontier = vec![first.view];
        for (agent_id, number) in routed_to {
            if !agents.contains(&agent_id) {
                if let Some(next) = self.hop(claims, org_id, &agent_id, &number).await? {
                    agents.push(agent_id);
                    frontier.push(next.view);
                }
            }
        }
        for _ in 0..MAX_HOPS {
            let mut next_frontier = Vec::new();
            for route in &frontier {
                let id = &route.data.after_hours_agent_id;
                if id.is_empty() || agents.contains(id) {
                    continue;
                }
                let number = route.data.after_hours_agent_number.as_str();
                if let Some(next) = self.hop(claims, org_id, id, number).await? {
                    agents.push(id.clone());
                    next_frontier.push(next.view);
                }
            }
            frontier = next_frontier;
        }
        Ok(Some((org_id, agents)))
    }
}

/// Prompt-template variables: the caller's number, name, email and
/// attributes (`caller.<key>`), the organization's and agent's names, the
/// version, and the local date and time in the answering agent's zone (UTC
/// without hours). Only this call's org's data is ever read here.
///
/// Written straight into wire form, in key order (the bytes a `BTreeMap`
/// would give): a dozen owned strings and a map per answer were a fifth of
/// a memory hit's allocations (BENCHMARKS.md, issue 16).
fn variables(
    record: Option<&pb::Customer>,
    org_name: &str,
    agent_name: &str,
    agent_version: Option<u32>,
    caller: &str,
    time_zone: &str,
    now: DateTime<Utc>,
) -> bytes::Bytes {
    let zone = if time_zone.is_empty() {
        chrono_tz::Tz::UTC
    } else {
        time_zone
            .parse::<chrono_tz::Tz>()
            .unwrap_or(chrono_tz::Tz::UTC)
    };
    let local = now.with_timezone(&zone);
    let mut vars = VariablesWire::with_capacity(
        256 + org_name.len() + agent_name.len() + record.map_or(0, Message::encoded_len),
    );
    // In key order: agent_*, caller.*, caller_*, local_*, organization_name,
    // time_zone ('.' sorts before '_').
    vars.entry(&["agent_name"], agent_name.as_bytes());
    if let Some(version) = agent_version.filter(|v| *v > 0) {
        let mut digits = Digits::default();
        let _ = write!(digits, "{version}");
        vars.entry(&["agent_version"], digits.as_bytes());
    }
    if let Some(record) = record {
        if !record.attributes.is_empty() {
            let mut attributes: Vec<_> = record.attributes.iter().collect();
            attributes.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in attributes {
                vars.entry(&["caller.", key], value.as_bytes());
            }
        }
        if !record.email.is_empty() {
            vars.entry(&["caller_email"], record.email.as_bytes());
        }
        if !record.name.is_empty() {
            vars.entry(&["caller_name"], record.name.as_bytes());
        }
    }
    if !caller.is_empty() {
        vars.entry(&["caller_number"], caller.as_bytes());
    }
    // Integers formatted by core: chrono's formatter (`%Y-%m-%d`) parses its
    // pattern on every call.
    let mut date = Digits::default();
    let _ = write!(
        date,
        "{:04}-{:02}-{:02}",
        local.year(),
        local.month(),
        local.day()
    );
    vars.entry(&["local_date"], date.as_bytes());
    let mut time = Digits::default();
    let _ = write!(time, "{:02}:{:02}", local.hour(), local.minute());
    vars.entry(&["local_time"], time.as_bytes());
    vars.entry(
        &["local_weekday"],
        WEEKDAYS[local.weekday().num_days_from_monday() as usize].as_bytes(),
    );
    vars.entry(&["organization_name"], org_name.as_bytes());
    vars.entry(&["time_zone"], zone.name().as_bytes());
    vars.finish()
}

/// A short formatted value on the stack (a date, a time, a version).
#[derive(Default)]
struct Digits {
    buf: [u8; 24],
    len: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Digits {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// chrono's `%A`, in its order (Monday first).
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn decoded_variables(wire: bytes::Bytes) -> BTreeMap<String, String> {
        pb::ResolveAgentResponse {
            variables_wire: wire,
            ..Default::default()
        }
        .decoded()
        .unwrap_or_else(|e| panic!("{e}"))
        .variables
    }

    /// Written in wire form, the variables are the bytes the map they stand
    /// for would give: every key, in its order, attributes among them.
    #[test]
    fn variables_in_wire_form_are_the_maps_bytes() {
        let record = pb::Customer {
            name: "Cy".into(),
            email: "cy@example.com".into(),
            attributes: [
                ("tier".to_owned(), "gold".to_owned()),
                ("a".to_owned(), "".to_owned()),
                ("zz".to_owned(), "last".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let now: DateTime<Utc> = "2026-11-30T18:05:00Z"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let wire = variables(
            Some(&record),
            "Org",
            "Ada",
            Some(7),
            "+14155550123",
            "Europe/Paris",
            now,
        );
        let map: BTreeMap<String, String> = [
            ("agent_name", "Ada"),
            ("agent_version", "7"),
            ("caller.a", ""),
            ("caller.tier", "gold"),
            ("caller.zz", "last"),
            ("caller_email", "cy@example.com"),
            ("caller_name", "Cy"),
            ("caller_number", "+14155550123"),
            ("local_date", "2026-11-30"),
            ("local_time", "19:05"),
            ("local_weekday", "Monday"),
            ("organization_name", "Org"),
            ("time_zone", "Europe/Paris"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let as_map = pb::ResolveAgentResponse {
            variables: map.clone(),
            ..Default::default()
        };
        assert_eq!(decoded_variables(wire.clone()), map);
        assert_eq!(
            pb::ResolveAgentResponse {
                variables_wire: wire,
                ..Default::default()
            }
            .encode_to_vec(),
            as_map.encode_to_vec()
        );
        // No record, no caller, no version: only what is always there.
        let bare = decoded_variables(variables(None, "", "Ada", None, "", "", now));
        let keys: Vec<_> = bare.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "agent_name",
                "local_date",
                "local_time",
                "local_weekday",
                "organization_name",
                "time_zone"
            ]
        );
    }

    /// The date and time written without chrono's formatter are its `%Y-%m-%d`, `%H:%M` and
    /// `%A`, across zones, a leap day and both ends of a day.
    #[test]
    fn clock_variables_match_chronos_formats() {
        for (at, zone) in [
            ("2024-02-29T23:59:00Z", "Asia/Kolkata"),
            ("2026-11-30T00:00:00Z", "America/New_York"),
            ("2026-03-08T07:30:00Z", "America/Los_Angeles"),
            ("0999-01-05T09:05:00Z", ""),
            ("2026-06-01T12:00:00Z", "Pacific/Kiritimati"),
        ] {
            let now: DateTime<Utc> = at.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
            let vars = decoded_variables(variables(None, "", "", None, "", zone, now));
            let tz = zone.parse::<chrono_tz::Tz>().unwrap_or(chrono_tz::Tz::UTC);
            let local = now.with_timezone(&tz);
            assert_eq!(
                vars["local_date"],
                local.format("%Y-%m-%d").to_string(),
                "{at} {zone}"
            );
            assert_eq!(
                vars["local_time"],
                local.format("%H:%M").to_string(),
                "{at} {zone}"
            );
            assert_eq!(
                vars["local_weekday"],
                local.format("%A").to_string(),
                "{at} {zone}"
            );
            assert_eq!(vars["time_zone"], tz.name());
        }
    }
}
