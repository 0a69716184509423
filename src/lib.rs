//! switchboard: answers "which agent takes this call?" for a multi-tenant
//! voice platform, with tenant isolation enforced by Postgres RLS.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod live;
pub mod migrate;
pub mod observability;
pub mod startup;
pub mod store;

pub use api::pb;
