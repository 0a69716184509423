//! The gRPC transport: thin handlers that parse requests into domain types,
//! call the core (`app/`), and convert the answer back (`api::convert`).
//! No store, no cache, no SQL, no tenant filtering here.

mod agents;
mod connection;
mod customers;
mod limits;
mod parse;
mod request_log;

pub use agents::AgentApi;
pub use connection::Connection;
pub use customers::CustomerApi;
pub use limits::{GlobalLimitLayer, Limits, TenantLimitLayer};
pub use request_log::{LoggedOrg, RequestLogLayer};

/// Metadata naming the tier that answered a `ResolveAgent`: memory, redis or db.
pub const CACHE_TIER_HEADER: &str = "x-switchboard-cache";
