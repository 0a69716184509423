//! The integration suite again, with every query of the service going
//! through a real PgBouncer in transaction mode (as Supavisor's port 6543
//! does on Supabase) with stock settings: no named prepared statement or
//! session state may be relied on between transactions, and no startup
//! parameter PgBouncer does not know may be sent.

#[path = "api/agents.rs"]
mod agents;
#[path = "api/audit.rs"]
mod audit;
#[path = "api/auth.rs"]
mod auth;
#[path = "api/cache.rs"]
mod cache;
#[path = "api/calls.rs"]
mod calls;
#[path = "api/customers.rs"]
mod customers;
#[path = "api/isolation.rs"]
mod isolation;
#[path = "api/operations.rs"]
mod operations;
#[path = "api/parked.rs"]
mod parked;
#[path = "api/property.rs"]
mod property;
#[path = "api/references.rs"]
mod references;
#[path = "api/resolve.rs"]
mod resolve;
#[path = "api/routing_pipeline.rs"]
mod routing_pipeline;
#[path = "api/stock_pooler.rs"]
mod stock_pooler;

use switchboard_testkit::pooled as helpers;
use switchboard_testkit::{pgbouncer, redis_server};
