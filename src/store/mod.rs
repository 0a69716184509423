//! Storage. Invariant: this module is the only place that writes SQL (beside
//! `migrations/`), and every query on behalf of a caller runs under that
//! caller's claims, so Postgres RLS decides what it sees.

mod calls;
mod identity;
pub mod outbox;
mod postgres;
mod routing;
mod sql_literal;
mod timestamp_text;
mod tx;

pub use calls::OrgLimitWritten;
pub use identity::{retire_database_identity, DatabaseIdentity};
pub use postgres::{AgentUpdated, PgStore, PoolSettings, PoolStats};
pub use sql_literal::sql_literal;
