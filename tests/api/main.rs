//! Integration tests: the real server over real gRPC, against the real
//! Postgres (a fresh database per test) with real signed tokens.

mod agents;
mod audit;
mod auth;
mod cache;
mod claims;
mod customers;
mod helpers;
mod invalidation;
mod isolation;
mod load_tool;
mod migrations;
mod operations;
mod overload;
mod pgbouncer;
mod policy_matrix;
mod property;
mod redis_freeze;
mod redis_keys;
mod redis_server;
mod redis_topologies;
mod references;
mod resolve;
mod stock_pooler;

/// This binary talks to Postgres directly; `tests/pooled.rs` runs the same
/// tests through PgBouncer in transaction mode.
pub const THROUGH_POOLER: bool = false;
