//! A kept route read for a decision without decoding what the decision
//! does not read. The memory tier keeps each route as an encoded
//! `ResolveAgentResponse` (agent, organization, route data); a hit decodes
//! only the few fields the pipeline reads (`AgentView`, `OrgView`, the
//! route data) and keeps the agent and organization as byte slices of the
//! kept route (no copy), which the answer then carries as they are
//! (`answer.rs`). The agent's `llm_config`, the largest and costliest part
//! to decode, is never decoded on this path.
//!
//! The views are prost messages that reuse the proto's field numbers for
//! the fields they declare; prost skips the rest. `tests` check each
//! declared field against the published descriptor.

use bytes::{BufMut, Bytes, BytesMut};
use prost::{
    encoding::{decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType},
    Message,
};

use super::pb;
use crate::domain::OrgId;

/// A `ResolveAgentResponse` with agent and organization left encoded.
#[derive(Clone, PartialEq, Message)]
struct RouteParts {
    #[prost(bytes = "bytes", tag = "1")]
    agent: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    organization: Bytes,
    #[prost(message, optional, tag = "15")]
    route_data: Option<pb::RouteData>,
}

/// What the pipeline reads of an `Agent`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct AgentView {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
    #[prost(string, tag = "3")]
    pub(crate) name: String,
    #[prost(bool, optional, tag = "7")]
    pub(crate) is_active: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub(crate) updated_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "11")]
    pub(crate) fallback_destination: String,
    #[prost(int32, tag = "12")]
    pub(crate) latest_version: i32,
    #[prost(message, optional, tag = "13")]
    pub(crate) serving: Option<pb::VersionServing>,
}

/// What the pipeline reads of an `Organization`.
#[derive(Clone, PartialEq, Message)]
struct OrgView {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    name: String,
}

/// An `AgentVersion` with its `llm_config` left encoded.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct VersionView {
    #[prost(int32, tag = "3")]
    pub(crate) version: i32,
    #[prost(string, tag = "4")]
    pub(crate) name: String,
    #[prost(string, tag = "5")]
    pub(crate) voice_id: String,
    /// Present (maybe empty: `{}`) exactly when the version has a config.
    #[prost(bytes = "bytes", optional, tag = "6")]
    llm_config: Option<Bytes>,
}

/// Agent fields a served version replaces (name, voice_id, llm_config).
const VERSIONED_AGENT_FIELDS: [u32; 3] = [3, 5, 6];

/// A kept route as the pipeline reads it.
pub(crate) struct RouteView {
    pub(crate) agent: AgentView,
    pub(crate) org_id: OrgId,
    pub(crate) org_name: String,
    /// Empty (the default) when the route carries none.
    pub(crate) data: pb::RouteData,
    agent_wire: Bytes,
    org_wire: Bytes,
}

impl RouteView {
    /// `None`: not a route (no agent, or no organization with a valid id),
    /// which the cache never keeps.
    pub(crate) fn read(packed: &Bytes) -> Option<RouteView> {
        let parts = RouteParts::decode(packed.clone()).ok()?;
        if parts.agent.is_empty() {
            return None;
        }
        let agent = AgentView::decode(parts.agent.clone()).ok()?;
        let org = OrgView::decode(parts.organization.clone()).ok()?;
        let org_id = OrgId::parse(&org.id).ok()?;
        Some(RouteView {
            agent,
            org_id,
            org_name: org.name,
            data: parts.route_data.unwrap_or_default(),
            agent_wire: parts.agent,
            org_wire: parts.organization,
        })
    }

    /// A route in the form the cache keeps it (the caller left out).
    pub(crate) fn pack(route: &pb::ResolveAgentResponse) -> Bytes {
        let mut packed = BytesMut::with_capacity(route.encoded_len());
        route.encode_raw(&mut packed);
        packed.freeze()
    }

    /// The answer's `encoded` part: the agent (with `version`'s name, voice
    /// and config in place of its own, if given), the organization and
    /// the caller's record, as fields 1, 2 and 3 of a
    /// `ResolveAgentResponse`.
    pub(crate) fn answer_fields(
        &self,
        version: Option<&VersionView>,
        caller: Option<&pb::Customer>,
    ) -> Bytes {
        let agent_len = match version {
            Some(version) => versioned_len(&self.agent_wire, version),
            None => self.agent_wire.len(),
        };
        let caller_len = caller.map_or(0, Message::encoded_len);
        let mut out = BytesMut::with_capacity(agent_len + self.org_wire.len() + caller_len + 16);
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(agent_len as u64, &mut out);
        match version {
            Some(version) => write_versioned(&self.agent_wire, version, &mut out),
            None => out.put_slice(&self.agent_wire),
        }
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(self.org_wire.len() as u64, &mut out);
        out.put_slice(&self.org_wire);
        if let Some(caller) = caller {
            encode_key(3, WireType::LengthDelimited, &mut out);
            encode_varint(caller_len as u64, &mut out);
            caller.encode_raw(&mut out);
        }
        out.freeze()
    }
}

/// The org of a kept route, read without the rest of it.
pub(crate) fn org_of_packed(packed: &Bytes) -> Option<OrgId> {
    let parts = RouteParts::decode(packed.clone()).ok()?;
    OrgId::parse(&OrgView::decode(parts.organization).ok()?.id).ok()
}

/// A route from outside this process (Redis) in the form the memory tier
/// may keep and pass through: decoded whole (valid UTF-8, valid nested
/// messages, each served version an `AgentVersion`; the agent's id a UUID,
/// its org the organization's, a UUID), then encoded again
/// with only the agent, organization and route data, so nothing unchecked
/// or unknown reaches an answer. `None`: not a route.
pub(crate) fn checked_route(bytes: &[u8]) -> Option<Bytes> {
    let route = pb::ResolveAgentResponse::decode(bytes).ok()?;
    let (Some(agent), Some(organization)) = (route.agent, route.organization) else {
        return None;
    };
    OrgId::parse(&organization.id).ok()?;
    crate::domain::AgentId::parse(&agent.id).ok()?;
    if agent.org_id != organization.id {
        return None;
    }
    if let Some(data) = &route.route_data {
        for version in &data.served_versions {
            pb::AgentVersion::decode(version.clone()).ok()?;
        }
    }
    Some(RouteView::pack(&pb::ResolveAgentResponse {
        agent: Some(agent),
        organization: Some(organization),
        route_data: route.route_data,
        ..Default::default()
    }))
}

impl VersionView {
    /// A served version as the route carries it (an encoded
    /// `AgentVersion`).
    pub(crate) fn read(encoded: &Bytes) -> Option<VersionView> {
        VersionView::decode(encoded.clone()).ok()
    }
}

/// The agent's fields, each as its whole wire form (key included), in
/// order. Stops at the first malformed field (the cache's own bytes never
/// have one).
fn agent_fields(agent: &Bytes) -> impl Iterator<Item = (u32, Bytes)> + '_ {
    let mut rest = agent.clone();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let before = rest.clone();
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?;
        let used = before.len() - rest.len();
        Some((tag, before.slice(..used)))
    })
}

fn version_fields_len(version: &VersionView) -> usize {
    use prost::encoding::{bytes, string};
    let mut len = 0;
    if !version.name.is_empty() {
        len += string::encoded_len(3, &version.name);
    }
    if !version.voice_id.is_empty() {
        len += string::encoded_len(5, &version.voice_id);
    }
    if let Some(config) = &version.llm_config {
        len += bytes::encoded_len(6, config);
    }
    len
}

fn versioned_len(agent: &Bytes, version: &VersionView) -> usize {
    agent_fields(agent)
        .filter(|(tag, _)| !VERSIONED_AGENT_FIELDS.contains(tag))
        .map(|(_, field)| field.len())
        .sum::<usize>()
        + version_fields_len(version)
}

/// The agent's own fields but name, voice and config, then the version's.
/// (The wire has no order: a field may come after a higher-numbered one.)
fn write_versioned(agent: &Bytes, version: &VersionView, out: &mut BytesMut) {
    use prost::encoding::{bytes, string};
    for (tag, field) in agent_fields(agent) {
        if !VERSIONED_AGENT_FIELDS.contains(&tag) {
            out.put_slice(&field);
        }
    }
    if !version.name.is_empty() {
        string::encode(3, &version.name, out);
    }
    if !version.voice_id.is_empty() {
        string::encode(5, &version.voice_id, out);
    }
    if let Some(config) = &version.llm_config {
        bytes::encode(6, config, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::descriptor_fields;

    /// Every field a view declares is the proto's field of that number.
    #[test]
    fn views_use_the_protos_field_numbers() {
        let cases: [(&str, &[(&str, i32)]); 4] = [
            (
                "Agent",
                &[
                    ("id", 1),
                    ("name", 3),
                    ("voice_id", 5),
                    ("llm_config", 6),
                    ("is_active", 7),
                    ("updated_at", 9),
                    ("fallback_destination", 11),
                    ("latest_version", 12),
                    ("serving", 13),
                ],
            ),
            ("Organization", &[("id", 1), ("name", 2)]),
            (
                "AgentVersion",
                &[
                    ("version", 3),
                    ("name", 4),
                    ("voice_id", 5),
                    ("llm_config", 6),
                ],
            ),
            (
                "ResolveAgentResponse",
                &[("agent", 1), ("organization", 2), ("route_data", 15)],
            ),
        ];
        for (message, declared) in cases {
            let fields = descriptor_fields(message);
            for (name, number) in declared {
                assert!(
                    fields.contains(&((*name).to_owned(), *number)),
                    "{message}.{name} is not field {number} in the proto: update api/route_wire.rs"
                );
            }
        }
    }

    fn llm(text: &str) -> prost_types::Struct {
        prost_types::Struct {
            fields: [(
                "prompt".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(text.into())),
                },
            )]
            .into(),
        }
    }

    fn route() -> pb::ResolveAgentResponse {
        pb::ResolveAgentResponse {
            agent: Some(Box::new(pb::Agent {
                id: "6f1c0d2e-0000-4000-8000-000000000001".into(),
                org_id: "6f1c0d2e-0000-4000-8000-0000000000aa".into(),
                name: "Draft".into(),
                phone_number: "+18005550100".into(),
                voice_id: "draft-voice".into(),
                llm_config: Some(llm("draft")),
                is_active: Some(true),
                fallback_destination: "+18005550199".into(),
                latest_version: 2,
                max_concurrent_calls: Some(7),
                ..Default::default()
            })),
            organization: Some(Box::new(pb::Organization {
                id: "6f1c0d2e-0000-4000-8000-0000000000aa".into(),
                name: "Acme".into(),
                slug: "acme".into(),
                max_concurrent_calls: 10,
                ..Default::default()
            })),
            route_data: Some(Box::new(pb::RouteData {
                time_zone: "Europe/Paris".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_view_reads_what_the_route_says() {
        let route = route();
        let view = RouteView::read(&RouteView::pack(&route)).unwrap_or_else(|| panic!("no view"));
        let agent = route.agent.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!(view.agent.id, agent.id);
        assert_eq!(view.agent.name, "Draft");
        assert_eq!(view.agent.is_active, Some(true));
        assert_eq!(view.agent.fallback_destination, agent.fallback_destination);
        assert_eq!(view.agent.latest_version, 2);
        assert_eq!(view.org_name, "Acme");
        assert_eq!(view.org_id.to_string(), agent.org_id);
        assert_eq!(view.data.time_zone, "Europe/Paris");
        assert_eq!(
            org_of_packed(&RouteView::pack(&route)).map(|o| o.to_string()),
            Some(agent.org_id.clone())
        );
    }

    /// The passed-through fields decode to the route's own agent and
    /// organization, and to the caller given; a served version replaces
    /// name, voice and config and nothing else.
    #[test]
    fn answer_fields_decode_to_the_route_with_the_version_applied() {
        let route = route();
        let view = RouteView::read(&RouteView::pack(&route)).unwrap_or_else(|| panic!("no view"));
        let caller = pb::Customer {
            name: "Cy".into(),
            ..Default::default()
        };
        let plain = pb::ResolveAgentResponse::decode(view.answer_fields(None, Some(&caller)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.agent, route.agent);
        assert_eq!(plain.organization, route.organization);
        assert_eq!(plain.caller, Some(Box::new(caller)));
        assert_eq!(plain.route_data, None);

        let version = pb::AgentVersion {
            version: 2,
            name: "Published".into(),
            voice_id: "v2-voice".into(),
            llm_config: Some(llm("published")),
            ..Default::default()
        };
        let served = VersionView::read(&Bytes::from(version.encode_to_vec()))
            .unwrap_or_else(|| panic!("no version view"));
        let fields = view.answer_fields(Some(&served), None);
        let answer =
            pb::ResolveAgentResponse::decode(fields.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut expected = route.agent.clone().unwrap_or_default();
        expected.name = version.name.clone();
        expected.voice_id = version.voice_id.clone();
        expected.llm_config = version.llm_config.clone();
        assert_eq!(answer.agent, Some(expected));
        assert_eq!(answer.caller, None);
        // The length written is the length of what was written.
        let (_, agent_field) = agent_fields(&fields)
            .next()
            .unwrap_or_else(|| panic!("empty"));
        assert_eq!(
            agent_field.len(),
            1 + prost::length_delimiter_len(versioned_len(&view.agent_wire, &served))
                + versioned_len(&view.agent_wire, &served)
        );

        // An empty config stays an empty config.
        let empty = VersionView::read(&Bytes::from(
            pb::AgentVersion {
                version: 4,
                llm_config: Some(prost_types::Struct::default()),
                ..Default::default()
            }
            .encode_to_vec(),
        ))
        .unwrap_or_else(|| panic!("no version view"));
        let answer = pb::ResolveAgentResponse::decode(view.answer_fields(Some(&empty), None))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            answer.agent.unwrap_or_default().llm_config,
            Some(prost_types::Struct::default())
        );

        // A version with no config or voice leaves the agent without one.
        let bare = VersionView::read(&Bytes::from(
            pb::AgentVersion {
                version: 3,
                name: "Only a name".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ))
        .unwrap_or_else(|| panic!("no version view"));
        let answer = pb::ResolveAgentResponse::decode(view.answer_fields(Some(&bare), None))
            .unwrap_or_else(|e| panic!("{e}"));
        let agent = answer.agent.unwrap_or_default();
        assert_eq!(agent.name, "Only a name");
        assert_eq!(agent.voice_id, "");
        assert_eq!(agent.llm_config, None);
    }

    /// What Redis hands back is checked whole before any of it is kept or
    /// passed through: a field the views skip is checked too.
    #[test]
    fn only_a_whole_valid_route_from_outside_is_taken() {
        assert!(checked_route(b"").is_none());
        assert!(checked_route(b"\xff\xff").is_none());
        let mut no_org = route();
        no_org.organization = None;
        assert!(checked_route(&RouteView::pack(&no_org)).is_none());
        let good = RouteView::pack(&route());
        assert_eq!(checked_route(&good), Some(good.clone()));

        // Bad UTF-8 in a field no view reads (agent.phone_number, 4).
        let mut agent = route().agent.unwrap_or_default();
        agent.phone_number = String::new();
        let mut agent_bytes = agent.encode_to_vec();
        agent_bytes.extend_from_slice(&[0x22, 0x02, 0xff, 0xfe]);
        let mut bad = Vec::new();
        prost::encoding::bytes::encode(1, &agent_bytes, &mut bad);
        prost::encoding::message::encode(2, &route().organization.unwrap_or_default(), &mut bad);
        assert!(
            RouteView::read(&Bytes::from(bad.clone())).is_some(),
            "the views skip it"
        );
        assert!(checked_route(&bad).is_none(), "the check does not");

        // An agent whose id is not a UUID, or whose org is another.
        for broken in [
            |a: &mut pb::Agent| a.id = "not-a-uuid".into(),
            |a: &mut pb::Agent| a.id = String::new(),
            |a: &mut pb::Agent| a.org_id = "6f1c0d2e-0000-4000-8000-0000000000bb".into(),
        ] {
            let mut route = route();
            if let Some(agent) = route.agent.as_mut() {
                broken(agent);
            }
            assert!(checked_route(&RouteView::pack(&route)).is_none());
        }

        // A served version that is not an AgentVersion.
        let mut versioned = route();
        if let Some(data) = versioned.route_data.as_mut() {
            data.served_versions = vec![Bytes::from_static(b"\x32\x05ab")];
            data.served_version_numbers = vec![2];
        }
        assert!(checked_route(&RouteView::pack(&versioned)).is_none());

        // Unknown fields and a caller record are dropped, not passed on.
        let mut extra = good.to_vec();
        prost::encoding::string::encode(99, &"smuggled".to_owned(), &mut extra);
        prost::encoding::message::encode(3, &pb::Customer::default(), &mut extra);
        assert_eq!(checked_route(&extra), Some(good));
    }
}
