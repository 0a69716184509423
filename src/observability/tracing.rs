//! The process-wide subscriber (logs and traces) and W3C trace context.
//!
//! * Logs: one line per request (see `layers::call_log`), text or JSON;
//!   `RUST_LOG` filters them.
//! * Traces: our spans (request, auth, each cache tier, each database
//!   statement) are `DEBUG` spans of `switchboard` targets. With
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set
//!   (`otel_env` decides), an OpenTelemetry layer takes them and exports
//!   OTLP over gRPC; the standard `OTEL_*` variables (service name, resource
//!   attributes, sampler, batch sizes, headers, timeout) are read by the
//!   SDK. Without an endpoint no layer wants them, so creating one is a
//!   check of the global max level.
//!
//! What may go into a span: ids and names of our own (org id, method, tier,
//! status, the statement's operation name). Never a token, a claim set, a
//! phone number or SQL (ours inlines claims and numbers as literals). Only
//! spans are exported, not events, so a log message cannot leak into a trace.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    filter::{filter_fn, LevelFilter},
    fmt::{self, MakeWriter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer, Registry,
};

use super::otel_env::{OtelEnv, OtelEnvError, Signal, DEFAULT_SERVICE_NAME};

const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,h2=warn,tower=warn";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Env(#[from] OtelEnvError),
    #[error("the OTLP exporter cannot be built (check OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Where spans go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceExport {
    Off,
    /// OTLP over gRPC. `endpoint: None` leaves it to the `OTEL_*` variables.
    Otlp {
        endpoint: Option<String>,
    },
}

impl TraceExport {
    /// On when an OTLP endpoint is configured and the SDK is not disabled.
    pub fn from_env() -> Result<Self, TelemetryError> {
        Self::read(&OtelEnv::process())
    }

    fn read<F: Fn(&str) -> Option<String>>(env: &OtelEnv<F>) -> Result<Self, TelemetryError> {
        if env.sdk_disabled() || env.endpoint(Signal::Traces).is_none() {
            return Ok(TraceExport::Off);
        }
        env.require_grpc(Signal::Traces)?;
        // The SDK's exporter reads the endpoint and the rest itself.
        Ok(TraceExport::Otlp { endpoint: None })
    }
}

/// Keeps the exporter alive; `shutdown` sends what is still buffered.
#[must_use = "dropping it does not flush the spans still buffered; call shutdown"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now (blocks until the collector answered
    /// or the export timed out).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(error) = provider.force_flush() {
                tracing::warn!(%error, "span export failed");
            }
        }
    }

    /// Flushes and stops the exporter. The export runs on the SDK's own
    /// thread but needs this runtime's I/O, so the wait happens off it.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the process-wide subscriber (logs to stdout). Call once, inside
/// the Tokio runtime (the gRPC exporter's channel lives on it).
pub fn init(log_format: &str, export: TraceExport) -> Result<Telemetry, TelemetryError> {
    init_with_writer(log_format, export, std::io::stdout)
}

/// `init` with the log lines going to `writer` (tests read them back).
pub fn init_with_writer<W>(
    log_format: &str,
    export: TraceExport,
    writer: W,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = fmt::layer().with_target(false).with_writer(writer);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if log_format == "json" {
        logs.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let provider = match export {
        TraceExport::Off => None,
        TraceExport::Otlp { endpoint } => Some(tracer_provider(endpoint)?),
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("switchboard"))
            .with_threads(false)
            .with_location(false)
            .with_filter(
                filter_fn(|meta| meta.is_span() && meta.target().starts_with("switchboard"))
                    .with_max_level_hint(LevelFilter::DEBUG),
            )
    });
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Telemetry { provider })
}

fn tracer_provider(endpoint: Option<String>) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;

    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build()?;
    // OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; otherwise the SDK
    // says `unknown_service:<binary>`, and ours is `switchboard`.
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|name| name.as_str().starts_with("unknown_service"));
    let resource = if unnamed {
        Resource::builder()
            .with_service_name(DEFAULT_SERVICE_NAME)
            .build()
    } else {
        detected
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Continues the caller's trace: the W3C `traceparent` (and `tracestate`)
/// of the request become the parent of `span`. Nothing to do when no layer
/// records the span.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only when no OpenTelemetry layer is installed (logs only).
    let _ = span.set_parent(parent);
}

/// The trace the call being served belongs to, for its log line: the
/// exported request span's trace, else the caller's `traceparent`
/// (`incoming`). Read inside the request span: entering it makes its
/// OpenTelemetry context the current one (tracing-opentelemetry's context
/// activation), so no span handle has to be passed down the layers.
pub fn current_trace_id(incoming: Option<TraceId>) -> Option<TraceId> {
    opentelemetry::Context::map_current(|context| {
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| span_context.trace_id())
    })
    .or(incoming)
}

/// The trace id of a valid W3C `traceparent` header, parsed without
/// allocating: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
pub fn traceparent_trace_id(headers: &http::HeaderMap) -> Option<TraceId> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = is_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && is_hex(trace_id, 32)
        && is_hex(parent_id, 16)
        && is_hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    if !valid {
        return None;
    }
    TraceId::from_hex(trace_id).ok()
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(traceparent: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = traceparent.parse() {
            headers.insert("traceparent", value);
        }
        headers
    }

    #[test]
    fn traceparent_is_parsed_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent_trace_id(&headers(good)).map(|t| t.to_string()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned())
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent_trace_id(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(traceparent_trace_id(&http::HeaderMap::new()), None);
    }
}
