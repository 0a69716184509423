//! What switchboard tells its operators: metrics, traces and logs, and the
//! layers that take them from every call.
//!
//! * `metrics`: the registry of one `Application` and its `Snapshot`, the
//!   one list of what is measured; the Prometheus text encoder.
//! * `admin`: the admin HTTP port serving `/metrics`.
//! * `otlp`: the same snapshot pushed as OTLP metrics.
//! * `tracing`: the process-wide subscriber (logs, OTLP traces) and W3C
//!   trace context.
//! * `otel_env`: the one reader of the `OTEL_*` variables, for both.
//! * `layers`: the tower layers around every call (span, counts and log
//!   line, status fixes, deadline, cache-tier trailer).

pub(crate) mod admin;
pub(crate) mod layers;
pub mod metrics;
mod otel_env;
pub mod otlp;
pub mod tracing;

pub use self::tracing::{Telemetry, TelemetryError, TraceExport};
pub use layers::{AnsweredFrom, LoggedOrg, RequestLayers, CACHE_TIER_HEADER};
pub(crate) use layers::{GRPC_MESSAGE, GRPC_STATUS};
pub use otel_env::{OtelEnvError, DEFAULT_SERVICE_NAME};
pub use otlp::MetricsExport;
