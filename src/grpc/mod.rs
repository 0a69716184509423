//! The gRPC transport: thin handlers that parse requests into domain types,
//! call the resolver or the store, and convert the answer back. No SQL, no
//! caching decisions, no tenant filtering here.

mod agents;
mod connection;
pub(crate) mod convert;
mod customers;
mod limits;
mod request_log;

pub use agents::AgentApi;
pub use connection::Connection;
pub use customers::CustomerApi;
pub use limits::{GlobalLimitLayer, Limits, TenantLimitLayer};
pub use request_log::{LoggedOrg, RequestLogLayer};

/// Metadata naming the tier that answered a `ResolveAgent`: memory, redis or db.
pub const CACHE_TIER_HEADER: &str = "x-switchboard-cache";
