//! Integration tests: the real server over real gRPC, against the real
//! Postgres (a fresh database per test) with real signed tokens.

mod agents;
mod audit;
mod auth;
mod cache;
mod calls;
mod calls_live;
mod calls_records;
mod calls_watch;
mod claims;
mod customers;
mod invalidation;
mod isolation;
mod migrations;
mod operations;
mod overload;
mod parked;
mod policy_matrix;
mod property;
mod redis_freeze;
mod redis_keys;
mod redis_topologies;
mod references;
mod resolve;
mod routing_hours;
mod routing_pipeline;
mod routing_rules;
mod routing_schema;
mod routing_versions;
mod stock_pooler;

// This binary's service talks to Postgres directly; `tests/pooled.rs` runs
// the same test files through PgBouncer in transaction mode.
use switchboard_testkit::direct as helpers;
use switchboard_testkit::{pgbouncer, redis_server};
