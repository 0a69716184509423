//! The gRPC transport: thin handlers that parse requests into domain types,
//! call the resolver or the store, and convert the answer back. No SQL, no
//! caching decisions, no tenant filtering here.

mod agents;
mod connection;
pub(crate) mod convert;
mod customers;
mod limits;

/// Handlers put these in a response for the request layers: the org for the
/// log line, the cache tier for the log, the metrics and the trailer.
pub use crate::observability::{LoggedOrg, CACHE_TIER_HEADER};
pub use agents::AgentApi;
pub use connection::Connection;
pub use customers::CustomerApi;
pub use limits::{GlobalLimitLayer, Limits, TenantLimitLayer};
