//! The application core: one service per use case, between the transport
//! (`grpc/`) and storage (`store/`, `cache/`, `live/`). Each owns the store and the
//! cache it needs; the transport hands it parsed domain values and gets
//! back domain values, or for `ResolveAgent` the answer in its wire form
//! (the cache keeps answers encoded, so that form is the core's too).
//!
//! Invariants:
//! * Every write of what a cache holds (agents, customers, an org's call
//!   limit) goes through `Data::write`, which evicts what the write
//!   changed from this replica's memory, Redis and every other replica
//!   before it returns, so the write is on the next `ResolveAgent` of any
//!   replica once it is answered. Such a service reads through
//!   `Data::reads` and holds no store of its own to write through. Call
//!   records, which no cache holds, are the one other write
//!   (`CallsService`).
//! * The core decides who gets a cached answer (`service_role` only) and
//!   hands the cache its fetches; the cache decides what it keeps.
//! * Nothing here knows tonic or sqlx.

mod agents;
mod caller_rules;
mod calls;
mod customers;
mod data;
mod local_slots;
mod resolve;
mod routing;
mod watch;

pub use agents::AgentsService;
pub use caller_rules::CallerRulesService;
pub use calls::{
    ActiveCallsView, CallRef, CallSettings, CallsService, Lease, StartedCall, WatchSettings,
    WhenRedisDown,
};
pub use customers::CustomersService;
pub use resolve::{ResolveService, Resolved};
