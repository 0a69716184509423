//! switchboard: answers "which agent takes this call?" for a multi-tenant
//! voice platform, with tenant isolation enforced by Postgres RLS.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod migrate;
pub mod otlp_metrics;
pub mod resolver;
pub mod startup;
pub mod store;
pub mod telemetry;

/// Generated protobuf and gRPC code for `switchboard.v1`.
pub mod pb {
    tonic::include_proto!("switchboard.v1");

    /// Served by gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/switchboard_descriptor.bin"));
}
