//! Routing rules, as parsed values and pure functions: which caller rule
//! applies, which agent version a call gets, a customer's attributes. The
//! pipeline that strings them together is `app::routing`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{AgentId, OrgId, PhoneNumber};
use crate::error::Error;

/// How many hops (a caller rule's agent, an after-hours agent) a decision
/// follows at most before it gives up with `RoutingLoop`.
pub const MAX_HOPS: usize = 3;
/// Caller rules per organization (a database trigger holds the same bound).
pub const MAX_CALLER_RULES: usize = 200;
/// Arms of a version split.
pub const MAX_SPLIT_ARMS: usize = 5;
/// The weights of a split add up to at most this.
pub const MAX_SPLIT_TOTAL: u32 = 10_000;
/// Customer attributes: keys, key length, and the whole object as JSON.
pub const MAX_ATTRIBUTES: usize = 50;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;

// ---------------------------------------------------------------- versions

/// Which published version of an agent calls get.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum VersionServing {
    #[default]
    Latest,
    Pinned(u32),
    /// (version, weight), weights adding up to 1..=10 000.
    Split(Vec<(u32, u32)>),
}

impl VersionServing {
    /// Checks a pinned version or a split as a client sends it.
    pub fn pinned(field: &str, version: i32) -> Result<Self, Error> {
        match u32::try_from(version) {
            Ok(v) if v >= 1 => Ok(VersionServing::Pinned(v)),
            _ => Err(Error::invalid(format!(
                "{field}.pinned_version must be 1 or more"
            ))),
        }
    }

    pub fn split(field: &str, arms: &[(i32, i32)]) -> Result<Self, Error> {
        if !(2..=MAX_SPLIT_ARMS).contains(&arms.len()) {
            return Err(Error::invalid(format!(
                "{field}.split needs 2 to {MAX_SPLIT_ARMS} arms"
            )));
        }
        let mut parsed = Vec::with_capacity(arms.len());
        let mut total: u32 = 0;
        for &(version, weight) in arms {
            let version = u32::try_from(version)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| Error::invalid(format!("{field}.split: versions are 1 or more")))?;
            let weight = u32::try_from(weight)
                .ok()
                .filter(|w| *w <= MAX_SPLIT_TOTAL)
                .ok_or_else(|| {
                    Error::invalid(format!("{field}.split: weights are 0 to {MAX_SPLIT_TOTAL}"))
                })?;
            if parsed.iter().any(|(v, _)| *v == version) {
                return Err(Error::invalid(format!(
                    "{field}.split names version {version} twice"
                )));
            }
            total = total.saturating_add(weight);
            parsed.push((version, weight));
        }
        if !(1..=MAX_SPLIT_TOTAL).contains(&total) {
            return Err(Error::invalid(format!(
                "{field}.split: the weights add up to {total}; they must add up to 1 to {MAX_SPLIT_TOTAL}"
            )));
        }
        Ok(VersionServing::Split(parsed))
    }

    /// The stored form (`agents.serving`): null for the latest.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            VersionServing::Latest => None,
            VersionServing::Pinned(v) => Some(serde_json::json!({ "pinned": v })),
            VersionServing::Split(arms) => Some(serde_json::json!({
                "split": arms
                    .iter()
                    .map(|(v, w)| serde_json::json!({ "version": v, "weight": w }))
                    .collect::<Vec<_>>()
            })),
        }
    }

    /// From the stored form; anything unreadable (a write from SQL the
    /// check constraint let through) serves the latest.
    pub fn from_json(value: Option<&serde_json::Value>) -> Self {
        let Some(value) = value else {
            return VersionServing::Latest;
        };
        if let Some(v) = value.get("pinned").and_then(serde_json::Value::as_u64) {
            return u32::try_from(v).map_or(VersionServing::Latest, VersionServing::Pinned);
        }
        let arms: Option<Vec<(u32, u32)>> = value
            .get("split")
            .and_then(serde_json::Value::as_array)
            .map(|arms| {
                arms.iter()
                    .filter_map(|arm| {
                        let v = u32::try_from(arm.get("version")?.as_u64()?).ok()?;
                        let w = u32::try_from(arm.get("weight")?.as_u64()?).ok()?;
                        Some((v, w))
                    })
                    .collect()
            });
        match arms {
            Some(arms) if arms.iter().any(|(_, w)| *w > 0) => VersionServing::Split(arms),
            _ => VersionServing::Latest,
        }
    }

    /// The version a call gets: `None` for the latest. A split is a stable
    /// function of (agent, call id): see [`split_point`].
    pub fn pick(&self, agent_id: &str, call_id: &str) -> Option<u32> {
        match self {
            VersionServing::Latest => None,
            VersionServing::Pinned(v) => Some(*v),
            VersionServing::Split(arms) => {
                let total: u64 = arms.iter().map(|(_, w)| u64::from(*w)).sum();
                if total == 0 {
                    return None;
                }
                let mut point = split_point(agent_id, call_id) % total;
                for (version, weight) in arms {
                    let weight = u64::from(*weight);
                    if point < weight {
                        return Some(*version);
                    }
                    point -= weight;
                }
                arms.last().map(|(v, _)| *v)
            }
        }
    }
}

/// Where a call falls in a split: FNV-1a (64 bit) of the agent id (its
/// hyphenated lowercase UUID), one `:` byte, and the call id, as UTF-8. The
/// arm is the first whose running total of weights exceeds this value
/// modulo the total weight, arms in the order they were set. A documented
/// function of the call alone, so every replica and every build sends a
/// retried call to the same version.
pub fn split_point(agent_id: &str, call_id: &str) -> u64 {
    fnv1a_from(
        fnv1a_from(fnv1a_from(FNV_OFFSET, agent_id.as_bytes()), b":"),
        call_id.as_bytes(),
    )
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a_from(mut hash: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

// ---------------------------------------------------------------- caller rules

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerMatch {
    Exact,
    Prefix,
}

impl CallerMatch {
    pub fn as_db(self) -> &'static str {
        match self {
            CallerMatch::Exact => "exact",
            CallerMatch::Prefix => "prefix",
        }
    }

    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "exact" => Some(CallerMatch::Exact),
            "prefix" => Some(CallerMatch::Prefix),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerAction {
    Block,
    Route(AgentId),
}

impl CallerAction {
    pub fn as_db(self) -> &'static str {
        match self {
            CallerAction::Block => "block",
            CallerAction::Route(_) => "route",
        }
    }
}

/// How specific a rule is for `caller`, when it matches: an exact number
/// beats every prefix, a longer prefix beats a shorter one. `None`: it does
/// not match. Patterns and callers are E.164 (`+` and digits).
pub fn rule_rank(matching: CallerMatch, pattern: &str, caller: &str) -> Option<usize> {
    match matching {
        CallerMatch::Exact => (pattern == caller).then_some(usize::MAX),
        CallerMatch::Prefix => caller.starts_with(pattern).then_some(pattern.len()),
    }
}

/// A caller rule's pattern: `+` and 1 to 15 digits, the first not 0.
pub fn parse_pattern(field: &str, value: &str) -> Result<String, Error> {
    let value = value.trim();
    let digits = value.strip_prefix('+').unwrap_or("");
    let ok = (1..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(format!(
            "{field} must be '+' and 1 to 15 digits (a number or a prefix of one, e.g. +1900)"
        )))
    }
}

/// A rule as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CallerRule {
    pub(crate) id: uuid::Uuid,
    pub(crate) org_id: OrgId,
    pub(crate) matching: CallerMatch,
    pub(crate) pattern: String,
    pub(crate) action: CallerAction,
    pub(crate) label: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    /// The routed agent's number (`Route` only).
    pub(crate) agent_number: Option<PhoneNumber>,
}

/// A rule to create.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCallerRule {
    /// Required for service_role; tenants leave it empty.
    pub(crate) org_id: Option<OrgId>,
    pub(crate) matching: CallerMatch,
    pub(crate) pattern: String,
    pub(crate) action: CallerAction,
    pub(crate) label: Option<String>,
}

// ---------------------------------------------------------------- agents

/// What an agent route carries for the pipeline beyond its own fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRouting {
    /// The newest published version; `None`: never published.
    pub(crate) latest_version: Option<u32>,
    pub(crate) serving: VersionServing,
    /// `None`: always open.
    pub(crate) hours: Option<super::BusinessHours>,
    pub(crate) after_hours: AfterHours,
}

/// Where a call goes outside business hours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AfterHours {
    /// Refused: SIP 480, reason `closed`.
    #[default]
    Refuse,
    Agent(AgentId),
    Transfer(super::TransferTarget),
}

/// A published version of an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentVersion {
    pub(crate) agent_id: AgentId,
    pub(crate) org_id: OrgId,
    pub(crate) version: u32,
    pub(crate) name: String,
    pub(crate) voice_id: String,
    pub(crate) llm_config: super::LlmConfig,
    pub(crate) published_at: DateTime<Utc>,
    pub(crate) published_by: Option<uuid::Uuid>,
}

/// What a route carries for the pipeline: the versions its agent may
/// serve, the after-hours agent's number, the org's caller rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteExtras {
    pub(crate) served_versions: Vec<AgentVersion>,
    pub(crate) after_hours_agent_number: Option<PhoneNumber>,
    pub(crate) caller_rules: Vec<CallerRule>,
}

/// What changed from `from` to `to`: `name`, `voice_id`, and each
/// top-level key of the LLM config as `llm_config.<key>` (absent on one
/// side: `None` there). Sorted by field.
pub fn compare_versions(from: &AgentVersion, to: &AgentVersion) -> Vec<super::FieldChange> {
    use serde_json::Value;
    let mut changes = Vec::new();
    let mut push = |field: String, old: Option<Value>, new: Option<Value>| {
        if old != new {
            changes.push(super::FieldChange { field, old, new });
        }
    };
    push(
        "name".to_owned(),
        Some(Value::String(from.name.clone())),
        Some(Value::String(to.name.clone())),
    );
    push(
        "voice_id".to_owned(),
        Some(Value::String(from.voice_id.clone())),
        Some(Value::String(to.voice_id.clone())),
    );
    let (old, new) = (from.llm_config.as_json(), to.llm_config.as_json());
    let keys: std::collections::BTreeSet<&String> = old
        .as_object()
        .into_iter()
        .chain(new.as_object())
        .flat_map(|m| m.keys())
        .collect();
    for key in keys {
        push(
            format!("llm_config.{key}"),
            old.get(key).cloned(),
            new.get(key).cloned(),
        );
    }
    changes.sort_by(|a, b| a.field.cmp(&b.field));
    changes
}

// ---------------------------------------------------------------- attributes

/// A customer's attributes: a flat map of strings, bounded.
pub fn parse_attributes(
    field: &str,
    attributes: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, Error> {
    let mut parsed = BTreeMap::new();
    let mut bytes = 2usize;
    for (key, value) in attributes {
        let key_ok = key.chars().count() <= MAX_ATTRIBUTE_KEY_CHARS
            && key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(Error::invalid(format!(
                "{field}: keys are letters, digits and '_', not starting with a digit, at most {MAX_ATTRIBUTE_KEY_CHARS} characters"
            )));
        }
        if value.contains('\0') {
            return Err(Error::invalid(format!(
                "{field}.{key} must not contain a NUL character"
            )));
        }
        // As jsonb prints it, roughly: quotes, colon, comma, escapes.
        bytes += key.len() + serde_json::to_string(&value).map_or(value.len(), |s| s.len()) + 4;
        parsed.insert(key, value);
    }
    if parsed.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(format!(
            "{field} has more than {MAX_ATTRIBUTES} keys"
        )));
    }
    if bytes > MAX_ATTRIBUTES_BYTES {
        return Err(Error::invalid(format!(
            "{field} is larger than {MAX_ATTRIBUTES_BYTES} bytes"
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_point_is_fnv1a_of_agent_colon_call() {
        // Published FNV-1a 64 vectors: "" → offset basis, "a", "foobar".
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(split_point("agent", "call-1"), fnv1a(b"agent:call-1"));
    }

    #[test]
    fn a_split_follows_its_weights_and_is_stable() {
        let split = VersionServing::split("serving", &[(1, 90), (2, 10)]).ok();
        let Some(split) = split else {
            panic!("valid split refused")
        };
        let agent = "8f14e45f-ceea-467f-a0a5-6f1b3c2d9e10";
        let mut counts = [0u32; 3];
        for i in 0..10_000 {
            let call = format!("call-{i}");
            let first = split.pick(agent, &call);
            assert_eq!(first, split.pick(agent, &call), "stable per call");
            match first {
                Some(1) => counts[1] += 1,
                Some(2) => counts[2] += 1,
                _ => counts[0] += 1,
            }
        }
        assert_eq!(counts[0], 0);
        assert!((8_700..=9_300).contains(&counts[1]), "{counts:?}");
        assert!((700..=1_300).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn a_weight_of_zero_gets_nothing() {
        let Ok(split) = VersionServing::split("s", &[(1, 0), (2, 5)]) else {
            panic!("valid split refused")
        };
        for i in 0..500 {
            assert_eq!(split.pick("a", &i.to_string()), Some(2));
        }
    }

    #[test]
    fn bad_splits_are_refused() {
        assert!(VersionServing::split("s", &[(1, 100)]).is_err());
        assert!(VersionServing::split("s", &[(1, 50), (1, 50)]).is_err());
        assert!(VersionServing::split("s", &[(1, 0), (2, 0)]).is_err());
        assert!(VersionServing::split("s", &[(1, 9_000), (2, 2_000)]).is_err());
        assert!(VersionServing::split("s", &[(0, 50), (2, 50)]).is_err());
        assert!(VersionServing::split("s", &[(1, -1), (2, 50)]).is_err());
        assert!(VersionServing::pinned("s", 0).is_err());
    }

    #[test]
    fn serving_round_trips_through_its_stored_form() {
        for serving in [
            VersionServing::Latest,
            VersionServing::Pinned(3),
            VersionServing::Split(vec![(1, 90), (2, 10)]),
        ] {
            assert_eq!(
                VersionServing::from_json(serving.to_json().as_ref()),
                serving
            );
        }
        assert_eq!(
            VersionServing::from_json(Some(&serde_json::json!({"split": "x"}))),
            VersionServing::Latest
        );
    }

    #[test]
    fn the_most_specific_rule_ranks_highest() {
        let caller = "+19005550100";
        let exact = rule_rank(CallerMatch::Exact, "+19005550100", caller);
        let long = rule_rank(CallerMatch::Prefix, "+1900", caller);
        let short = rule_rank(CallerMatch::Prefix, "+1", caller);
        assert!(exact > long && long > short && short.is_some());
        assert_eq!(rule_rank(CallerMatch::Prefix, "+44", caller), None);
        assert_eq!(rule_rank(CallerMatch::Exact, "+1900", caller), None);
    }

    #[test]
    fn patterns_are_e164_prefixes() {
        assert!(parse_pattern("p", "+1900").is_ok());
        assert!(parse_pattern("p", "+1").is_ok());
        for bad in ["1900", "+", "+0", "+1234567890123456", "+1-900", "", "+1\0"] {
            assert!(parse_pattern("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn attributes_are_bounded() {
        let ok = parse_attributes("a", [("tier".to_owned(), "gold".to_owned())]);
        assert_eq!(ok.map(|m| m.len()), Ok(1));
        assert!(parse_attributes("a", [("1x".to_owned(), "v".to_owned())]).is_err());
        assert!(parse_attributes("a", [("a-b".to_owned(), "v".to_owned())]).is_err());
        assert!(parse_attributes("a", [("k".repeat(65), "v".to_owned())]).is_err());
        assert!(parse_attributes("a", [("k".to_owned(), "v\0".to_owned())]).is_err());
        let many = (0..51).map(|i| (format!("k{i}"), "v".to_owned()));
        assert!(parse_attributes("a", many).is_err());
        assert!(parse_attributes("a", [("k".to_owned(), "v".repeat(17_000))]).is_err());
    }
}
