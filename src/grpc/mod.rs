//! The gRPC transport: thin handlers that parse requests into domain types,
//! call the core (`app/`), and convert the answer back (`api::convert`).
//! No store, no cache, no SQL, no tenant filtering here.

mod agents;
mod caller_rules;
mod calls;
mod connection;
mod customers;
mod limits;
mod parse;

/// Handlers put these in a response for the request layers: the org for the
/// log line, the cache tier for the log, the metrics and the trailer.
pub use crate::observability::{AnsweredFrom, LoggedOrg};
pub use agents::AgentApi;
pub use caller_rules::CallerRuleApi;
pub use calls::CallApi;
pub use connection::Connection;
pub use customers::CustomerApi;
pub use limits::{GlobalLimitLayer, Limits, TenantLimitLayer};
