//! What switchboard's tests and benches share: a database and a server per
//! test with real tokens (`harness`), the processes a test starts of its own
//! (`pgbouncer`, `redis_server`, `redis_topology`), asymmetric test keys
//! (`keys`) and OTLP collectors (`otlp`).
//!
//! A test binary picks how the service reaches Postgres by the prelude it
//! names: `use switchboard_testkit::direct as helpers;` (straight to
//! Postgres) or `use switchboard_testkit::pooled as helpers;` (through a
//! transaction pooler), and its test files `use crate::helpers::*`.

pub mod harness;
pub mod keys;
pub mod otlp;
pub mod pgbouncer;
pub mod redis_server;
pub mod redis_topology;

/// The harness for a binary whose service talks to Postgres directly.
pub mod direct {
    pub use crate::harness::*;

    pub type TestDb = crate::harness::TestDb<crate::harness::Direct>;
    pub type TestApp = crate::harness::TestApp<crate::harness::Direct>;
}

/// The harness for a binary whose service goes through a transaction pooler
/// (PgBouncer in transaction mode, as Supavisor's port 6543).
pub mod pooled {
    pub use crate::harness::*;

    pub type TestDb = crate::harness::TestDb<crate::harness::ThroughPooler>;
    pub type TestApp = crate::harness::TestApp<crate::harness::ThroughPooler>;
}
