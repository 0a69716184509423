//! `switchboard.v1.ResolveAgentResponse`, written by hand (`build.rs` maps
//! the message here with `extern_path`, and `pb` re-exports it): the fields
//! prost would generate, plus `encoded`, whole fields already in wire form
//! that encoding writes first. A memory hit passes the agent, organization
//! and caller through as the bytes the cache keeps (`route_wire.rs`)
//! instead of decoding them and encoding them again: about a third of a
//! hit's cost above a bare server's (BENCHMARKS.md, issue 16).
//!
//! Decoding fills the ordinary fields only, never `encoded`: a client (or a
//! test) sees the generated shape. `tests` check both encodings against the
//! descriptor the server publishes.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{
    encoding::{self, btree_map, message, string, DecodeContext, WireType},
    DecodeError, Message,
};

use super::pb;

#[derive(Clone, PartialEq, Default, Debug)]
pub struct ResolveAgentResponse {
    /// The message fields are boxed (prost's `boxed`): the answer moves
    /// through every layer, and unboxed they made it 1 KiB, copied at each
    /// move (a memory hit leaves them unset: they travel in `encoded`).
    pub agent: Option<Box<pb::Agent>>,
    pub organization: Option<Box<pb::Organization>>,
    /// Unset when no caller number was given or it is not a known customer
    /// of the agent's organization.
    pub caller: Option<Box<pb::Customer>>,
    /// The version that answers; 0 when the agent was never published.
    pub agent_version: i32,
    pub variables: BTreeMap<String, String>,
    /// Entries of `variables` (field 5) already in wire form
    /// (`VariablesWire`), written just before `variables`, whose keys they
    /// must not repeat. Set by the server only; empty after decoding.
    pub variables_wire: Bytes,
    pub route_path: Vec<String>,
    /// Internal: what the decision pipeline needs, carried with the cached
    /// route. Never set in an answer.
    pub route_data: Option<Box<pb::RouteData>>,
    /// Whole fields (key, length, body) in wire form, written before the
    /// fields above, which must not repeat them. Set by the server only;
    /// empty after decoding.
    pub encoded: Bytes,
}

impl ResolveAgentResponse {
    /// The same answer with `encoded` decoded into the ordinary fields
    /// (what a client would see).
    pub fn decoded(&self) -> Result<ResolveAgentResponse, DecodeError> {
        if self.encoded.is_empty() && self.variables_wire.is_empty() {
            return Ok(self.clone());
        }
        ResolveAgentResponse::decode(self.encode_to_vec().as_slice())
    }
}

/// `variables` entries written as they are made, in wire form: no owned
/// key or value, no map, one buffer per answer. Entries must come in key
/// order (as a `BTreeMap` would write them) for the bytes to be the same
/// as the map's; a decoder takes them in any order.
pub struct VariablesWire(BytesMut);

impl VariablesWire {
    pub fn with_capacity(capacity: usize) -> Self {
        VariablesWire(BytesMut::with_capacity(capacity))
    }

    /// One entry; the key is the concatenation of `key`'s parts. As prost
    /// writes a map entry: an empty key or value is left out of it.
    pub fn entry(&mut self, key: &[&str], value: &[u8]) {
        let key_len: usize = key.iter().map(|part| part.len()).sum();
        let field_len = |len: usize| {
            if len == 0 {
                0
            } else {
                1 + encoding::encoded_len_varint(len as u64) + len
            }
        };
        let out = &mut self.0;
        encoding::encode_key(5, WireType::LengthDelimited, out);
        encoding::encode_varint((field_len(key_len) + field_len(value.len())) as u64, out);
        if key_len > 0 {
            encoding::encode_key(1, WireType::LengthDelimited, out);
            encoding::encode_varint(key_len as u64, out);
            for part in key {
                out.put_slice(part.as_bytes());
            }
        }
        if !value.is_empty() {
            encoding::encode_key(2, WireType::LengthDelimited, out);
            encoding::encode_varint(value.len() as u64, out);
            out.put_slice(value);
        }
    }

    pub fn finish(self) -> Bytes {
        self.0.freeze()
    }
}

impl Message for ResolveAgentResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
        if let Some(agent) = &self.agent {
            message::encode(1, agent, buf);
        }
        if let Some(organization) = &self.organization {
            message::encode(2, organization, buf);
        }
        if let Some(caller) = &self.caller {
            message::encode(3, caller, buf);
        }
        if self.agent_version != 0 {
            encoding::int32::encode(4, &self.agent_version, buf);
        }
        buf.put_slice(&self.variables_wire);
        btree_map::encode(
            string::encode,
            string::encoded_len,
            string::encode,
            string::encoded_len,
            5,
            &self.variables,
            buf,
        );
        string::encode_repeated(6, &self.route_path, buf);
        if let Some(data) = &self.route_data {
            message::encode(15, data, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        const NAME: &str = "ResolveAgentResponse";
        let merged = match tag {
            1 => message::merge(
                wire_type,
                self.agent.get_or_insert_with(Default::default),
                buf,
                ctx,
            )
            .map_err(|e| (e, "agent")),
            2 => message::merge(
                wire_type,
                self.organization.get_or_insert_with(Default::default),
                buf,
                ctx,
            )
            .map_err(|e| (e, "organization")),
            3 => message::merge(
                wire_type,
                self.caller.get_or_insert_with(Default::default),
                buf,
                ctx,
            )
            .map_err(|e| (e, "caller")),
            4 => encoding::int32::merge(wire_type, &mut self.agent_version, buf, ctx)
                .map_err(|e| (e, "agent_version")),
            5 => btree_map::merge(string::merge, string::merge, &mut self.variables, buf, ctx)
                .map_err(|e| (e, "variables")),
            6 => string::merge_repeated(wire_type, &mut self.route_path, buf, ctx)
                .map_err(|e| (e, "route_path")),
            15 => message::merge(
                wire_type,
                self.route_data.get_or_insert_with(Default::default),
                buf,
                ctx,
            )
            .map_err(|e| (e, "route_data")),
            _ => return encoding::skip_field(wire_type, tag, buf, ctx),
        };
        merged.map_err(|(mut error, field)| {
            error.push(NAME, field);
            error
        })
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
            + self
                .agent
                .as_ref()
                .map_or(0, |agent| message::encoded_len(1, agent))
            + self
                .organization
                .as_ref()
                .map_or(0, |org| message::encoded_len(2, org))
            + self
                .caller
                .as_ref()
                .map_or(0, |caller| message::encoded_len(3, caller))
            + if self.agent_version != 0 {
                encoding::int32::encoded_len(4, &self.agent_version)
            } else {
                0
            }
            + self.variables_wire.len()
            + btree_map::encoded_len(string::encoded_len, string::encoded_len, 5, &self.variables)
            + string::encoded_len_repeated(6, &self.route_path)
            + self
                .route_data
                .as_ref()
                .map_or(0, |data| message::encoded_len(15, data))
    }

    fn clear(&mut self) {
        *self = ResolveAgentResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written fields are the proto's: same names, numbers and
    /// kinds as the descriptor the server publishes (reflection).
    #[test]
    fn fields_match_the_published_descriptor() {
        let fields = crate::api::descriptor_fields("ResolveAgentResponse");
        let ours = [
            ("agent", 1),
            ("organization", 2),
            ("caller", 3),
            ("agent_version", 4),
            ("variables", 5),
            ("route_path", 6),
            ("route_data", 15),
        ];
        assert_eq!(
            fields,
            ours.map(|(n, i)| (n.to_owned(), i)).to_vec(),
            "ResolveAgentResponse changed in the proto: update api/answer.rs"
        );
    }

    fn full() -> ResolveAgentResponse {
        ResolveAgentResponse {
            agent: Some(Box::new(pb::Agent {
                id: "a".into(),
                name: "Ada".into(),
                latest_version: 3,
                ..Default::default()
            })),
            organization: Some(Box::new(pb::Organization {
                id: "o".into(),
                name: "Org".into(),
                ..Default::default()
            })),
            caller: Some(Box::new(pb::Customer {
                name: "Cy".into(),
                ..Default::default()
            })),
            agent_version: 2,
            variables: [("k".to_owned(), "v".to_owned()), ("a".into(), "".into())].into(),
            route_path: vec!["caller_rule".into(), "after_hours".into()],
            route_data: Some(Box::new(pb::RouteData {
                caller_rules: "r".into(),
                ..Default::default()
            })),
            encoded: Bytes::new(),
            variables_wire: Bytes::new(),
        }
    }

    /// Entries written in wire form are the bytes the map would write,
    /// and decode into the map (an empty value left out, as prost does).
    #[test]
    fn variables_in_wire_form_are_the_maps_bytes() {
        let answer = full();
        let mut wire = VariablesWire::with_capacity(16);
        wire.entry(&["a"], b"");
        wire.entry(&["k"], b"v");
        let passed = ResolveAgentResponse {
            variables: BTreeMap::new(),
            variables_wire: wire.finish(),
            ..answer.clone()
        };
        assert_eq!(passed.encoded_len(), passed.encode_to_vec().len());
        assert_eq!(passed.encode_to_vec(), answer.encode_to_vec());
        let decoded = passed.decoded().unwrap_or_else(|e| panic!("{e}"));
        assert!(decoded.variables_wire.is_empty());
        assert_eq!(decoded, answer);
        // A key in parts, a long value (a two-byte length).
        let mut wire = VariablesWire::with_capacity(256);
        let long = "x".repeat(200);
        wire.entry(&["caller.", "tier"], long.as_bytes());
        let passed = ResolveAgentResponse {
            variables_wire: wire.finish(),
            ..Default::default()
        };
        let decoded = passed.decoded().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded.variables, [("caller.tier".to_owned(), long)].into());
    }

    #[test]
    fn every_field_round_trips() {
        let answer = full();
        let decoded = ResolveAgentResponse::decode(answer.encode_to_vec().as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decoded, answer);
        assert_eq!(answer.encoded_len(), answer.encode_to_vec().len());
    }

    /// Fields passed through in wire form decode as if they had been set.
    #[test]
    fn encoded_fields_decode_as_ordinary_ones() {
        let answer = full();
        let mut wire = Vec::new();
        message::encode(
            1,
            answer.agent.as_ref().unwrap_or_else(|| unreachable!()),
            &mut wire,
        );
        message::encode(
            2,
            answer
                .organization
                .as_ref()
                .unwrap_or_else(|| unreachable!()),
            &mut wire,
        );
        message::encode(
            3,
            answer.caller.as_ref().unwrap_or_else(|| unreachable!()),
            &mut wire,
        );
        let passed = ResolveAgentResponse {
            agent: None,
            organization: None,
            caller: None,
            encoded: Bytes::from(wire),
            ..answer.clone()
        };
        assert_eq!(passed.encoded_len(), passed.encode_to_vec().len());
        assert_eq!(passed.encode_to_vec(), answer.encode_to_vec());
        let decoded = passed.decoded().unwrap_or_else(|e| panic!("{e}"));
        assert!(decoded.encoded.is_empty());
        assert_eq!(decoded, answer);
    }

    #[test]
    fn a_bad_field_names_itself() {
        // Field 4 (agent_version) as a length-delimited field.
        let error = ResolveAgentResponse::decode(&[0x22, 0x00][..])
            .err()
            .unwrap_or_else(|| panic!("decoded a bad field"));
        assert!(
            error
                .to_string()
                .contains("ResolveAgentResponse.agent_version"),
            "{error}"
        );
    }
}
