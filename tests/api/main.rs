//! Integration tests: the real server over real gRPC, against the real
//! Postgres (a fresh database per test) with real signed tokens.

mod agents;
mod auth;
mod customers;
mod helpers;
mod isolation;
mod migrations;
mod operations;
mod resolve;
