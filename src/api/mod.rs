//! The protobuf layer: the generated `switchboard.v1` types and their
//! conversions from the domain. The transport (`grpc/`), the core (`app/`)
//! and the cache (`cache/`, which keeps answers encoded) all use it, so
//! none of them imports another's types to speak protobuf.
//!
//! Invariant: nothing here knows a transport, a store or a cache: no tonic
//! service, no request or response wrapper, no sqlx. (The generated client
//! and server stubs sit in `pb` because tonic generates them there.)

pub mod answer;
pub mod convert;
pub(crate) mod route_wire;

/// Generated protobuf and gRPC code for `switchboard.v1`.
pub mod pb {
    tonic::include_proto!("switchboard.v1");

    /// Written by hand (`api/answer.rs`), with the generated shape.
    pub use super::answer::ResolveAgentResponse;

    /// Served by gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));
}

/// The fields (name, number) of a `switchboard.v1` message in the
/// descriptor the server publishes: the hand-written messages' tests check
/// their field numbers against it.
#[cfg(test)]
pub(crate) fn descriptor_fields(name: &str) -> Vec<(String, i32)> {
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(pb::FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("descriptor: {e}"));
    set.file
        .iter()
        .filter(|f| f.package() == "switchboard.v1")
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no {name} in the descriptor"))
        .field
        .iter()
        .map(|f| (f.name().to_owned(), f.number()))
        .collect()
}
