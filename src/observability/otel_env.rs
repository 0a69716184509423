//! The one reader of the `OTEL_*` variables, for both signals we export.
//!
//! * Traces: the OpenTelemetry SDK's exporter reads its own settings
//!   (endpoint, headers, timeout, compression, sampler, batching, resource).
//!   Here we only decide whether it runs and refuse what it cannot do.
//! * Metrics: our push (`otlp`) reads every setting here. The SDK's parsers
//!   are private to it (and its resource detector does not percent-decode),
//!   so they are not reused.
//!
//! Rules for both: a blank variable is unset; `OTEL_SDK_DISABLED=true` turns
//! every signal off; a signal's own variable wins over the general one;
//! only OTLP over gRPC is built in. A value that may hold a secret (a
//! header, an endpoint with credentials) is never echoed in an error.

use std::time::Duration;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names the service.
pub const DEFAULT_SERVICE_NAME: &str = "switchboard";

/// The specification's defaults for the metrics push.
const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_millis(60_000);
const DEFAULT_METRIC_EXPORT_TIMEOUT: Duration = Duration::from_millis(30_000);

#[derive(Debug, thiserror::Error)]
pub enum OtelEnvError {
    #[error("{var} {value:?} is not supported: switchboard exports OTLP over gRPC (\"grpc\")")]
    Protocol { var: &'static str, value: String },
    #[error(
        "OTEL_METRICS_EXPORTER {0:?} is not supported: \"otlp\" pushes metrics over OTLP; \
         \"none\" or \"prometheus\" does not (/metrics is always served)"
    )]
    MetricsExporter(String),
    #[error(
        "{var} {value:?} is not an http:// URL with a host (OTLP/gRPC without TLS is what is \
         built in: send to a collector agent beside switchboard)"
    )]
    Endpoint { var: &'static str, value: String },
    // The value is never echoed: it holds a password.
    #[error(
        "{var} carries credentials (user:password@); put them in OTEL_EXPORTER_OTLP_HEADERS instead, so they never reach a log line"
    )]
    EndpointCredentials { var: &'static str },
    #[error("{var} {value:?} is not a whole number of milliseconds above 0")]
    Millis { var: &'static str, value: String },
    // The value is never echoed: headers carry API keys.
    #[error(
        "{var}: entry {entry} is not name=value with a valid gRPC metadata name and a \
         percent-encoded ASCII value"
    )]
    Header { var: &'static str, entry: usize },
    #[error("OTEL_RESOURCE_ATTRIBUTES: entry {entry} is not key=value (values percent-encoded)")]
    ResourceAttribute { entry: usize },
}

/// A signal's variables: its own first, then the general one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn endpoint_vars(self) -> [&'static str; 2] {
        match self {
            Signal::Traces => [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
            Signal::Metrics => [
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
        }
    }

    fn protocol_vars(self) -> [&'static str; 2] {
        match self {
            Signal::Traces => [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
            Signal::Metrics => [
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        }
    }

    /// General first: the signal's own headers are applied over them.
    fn header_vars(self) -> [&'static str; 2] {
        match self {
            Signal::Traces => [
                "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            ],
            Signal::Metrics => [
                "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            ],
        }
    }
}

/// The `OTEL_*` variables, looked up through one function: the process
/// environment, or (tests) a map of their own, so no test changes the
/// process's environment.
pub struct OtelEnv<F> {
    lookup: F,
}

impl OtelEnv<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        OtelEnv {
            lookup: |name| std::env::var(name).ok(),
        }
    }
}

impl<F: Fn(&str) -> Option<String>> OtelEnv<F> {
    pub fn from_lookup(lookup: F) -> Self {
        OtelEnv { lookup }
    }

    fn var(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    /// `OTEL_SDK_DISABLED=true` (any case): nothing is exported.
    pub(crate) fn sdk_disabled(&self) -> bool {
        self.var("OTEL_SDK_DISABLED")
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"))
    }

    /// The signal's endpoint and the variable it came from; `None`: the
    /// signal is off.
    pub(crate) fn endpoint(&self, signal: Signal) -> Option<(&'static str, String)> {
        signal
            .endpoint_vars()
            .into_iter()
            .find_map(|name| self.var(name).map(|value| (name, value)))
    }

    /// Refuses any protocol but `grpc` (unset means `grpc`).
    pub(crate) fn require_grpc(&self, signal: Signal) -> Result<(), OtelEnvError> {
        let protocol = signal
            .protocol_vars()
            .into_iter()
            .find_map(|name| self.var(name).map(|value| (name, value)));
        match protocol {
            Some((var, value)) if value.trim() != "grpc" => {
                Err(OtelEnvError::Protocol { var, value })
            }
            _ => Ok(()),
        }
    }

    /// Whether `OTEL_METRICS_EXPORTER` (unset: `otlp`) names `otlp`.
    pub(crate) fn metrics_exporter_is_otlp(&self) -> Result<bool, OtelEnvError> {
        let Some(exporters) = self.var("OTEL_METRICS_EXPORTER") else {
            return Ok(true);
        };
        let mut otlp = false;
        for exporter in exporters.split(',').map(str::trim) {
            match exporter.to_ascii_lowercase().as_str() {
                "otlp" => otlp = true,
                "none" | "prometheus" => {}
                _ => return Err(OtelEnvError::MetricsExporter(exporter.to_owned())),
            }
        }
        Ok(otlp)
    }

    /// `OTEL_METRIC_EXPORT_INTERVAL`: how often metrics are pushed.
    pub(crate) fn metric_export_interval(&self) -> Result<Duration, OtelEnvError> {
        self.millis(
            "OTEL_METRIC_EXPORT_INTERVAL",
            DEFAULT_METRIC_EXPORT_INTERVAL,
        )
    }

    /// `OTEL_METRIC_EXPORT_TIMEOUT`: how long one push may take.
    pub(crate) fn metric_export_timeout(&self) -> Result<Duration, OtelEnvError> {
        self.millis("OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_METRIC_EXPORT_TIMEOUT)
    }

    /// A duration in whole milliseconds above 0, or `default` when unset.
    fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, OtelEnvError> {
        match self.var(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or(OtelEnvError::Millis { var: name, value }),
        }
    }

    /// The general headers, then the signal's own over them (per name).
    pub(crate) fn headers(&self, signal: Signal) -> Result<MetadataMap, OtelEnvError> {
        let mut headers = MetadataMap::new();
        for name in signal.header_vars() {
            let pairs = key_values(&self.var(name).unwrap_or_default())
                .map_err(|entry| OtelEnvError::Header { var: name, entry })?;
            for (index, (key, value)) in pairs.into_iter().enumerate() {
                let bad = || OtelEnvError::Header {
                    var: name,
                    entry: index + 1,
                };
                let key = AsciiMetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                    .map_err(|_| bad())?;
                let value = AsciiMetadataValue::try_from(value).map_err(|_| bad())?;
                headers.insert(key, value);
            }
        }
        Ok(headers)
    }

    /// The resource's attributes: `service.name` first (`OTEL_SERVICE_NAME`,
    /// else the one in `OTEL_RESOURCE_ATTRIBUTES`, else
    /// [`DEFAULT_SERVICE_NAME`]), then the other `OTEL_RESOURCE_ATTRIBUTES`
    /// in the order given.
    pub(crate) fn resource(&self) -> Result<Vec<(String, String)>, OtelEnvError> {
        let mut attributes = key_values(&self.var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
            .map_err(|entry| OtelEnvError::ResourceAttribute { entry })?;
        let named = attributes
            .iter()
            .rev()
            .find(|(key, _)| key == "service.name")
            .map(|(_, name)| name.clone());
        attributes.retain(|(key, _)| key != "service.name");
        let service_name = self
            .var("OTEL_SERVICE_NAME")
            .map(|name| name.trim().to_owned())
            .or(named)
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        Ok(std::iter::once(("service.name".to_owned(), service_name))
            .chain(attributes)
            .collect())
    }
}

/// An endpoint we can send to: `http://` with a host, no credentials in it
/// (it is named in warnings when a push fails).
pub(crate) fn plain_http_endpoint(
    var: &'static str,
    value: String,
) -> Result<http::Uri, OtelEnvError> {
    if http::Uri::try_from(value.trim())
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.as_str().contains('@')))
        .unwrap_or(value.contains('@'))
    {
        return Err(OtelEnvError::EndpointCredentials { var });
    }
    http::Uri::try_from(value.trim())
        .ok()
        .filter(|uri| uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty()))
        .ok_or(OtelEnvError::Endpoint { var, value })
}

/// `key=value,key=value` with percent-encoded values (the format of
/// `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`). Err: the
/// 1-based number of the first bad entry.
fn key_values(text: &str) -> Result<Vec<(String, String)>, usize> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| {
            let (key, value) = entry.split_once('=').ok_or(index + 1)?;
            let key = key.trim();
            if key.is_empty() {
                return Err(index + 1);
            }
            let value = percent_decoded(value.trim()).ok_or(index + 1)?;
            Ok((key.to_owned(), value))
        })
        .collect()
}

/// A percent-encoded value, refused when an escape is not `%` and two hex
/// digits or the result is not UTF-8 (a lenient decode would pass a typo
/// in a credential on to the collector).
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let escapes_valid = bytes
        .iter()
        .enumerate()
        .filter(|&(_, &byte)| byte == b'%')
        .all(|(i, _)| {
            bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        });
    if !escapes_valid {
        return None;
    }
    percent_encoding::percent_decode(bytes)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> OtelEnv<impl Fn(&str) -> Option<String>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtelEnv::from_lookup(move |name| vars.get(name).cloned())
    }

    #[test]
    fn blank_is_unset_and_the_signals_own_variable_wins() {
        let both = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", " "),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
        ]);
        assert_eq!(
            both.endpoint(Signal::Traces),
            Some(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317".into()))
        );
        assert_eq!(
            both.endpoint(Signal::Metrics).map(|(var, _)| var),
            Some("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        );
        assert_eq!(env(&[]).endpoint(Signal::Traces), None);
        assert!(env(&[("OTEL_SDK_DISABLED", " True ")]).sdk_disabled());
        assert!(!env(&[("OTEL_SDK_DISABLED", "false")]).sdk_disabled());
    }

    #[test]
    fn only_grpc_is_accepted() {
        assert!(env(&[]).require_grpc(Signal::Traces).is_ok());
        let traces_http = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert!(matches!(
            traces_http.require_grpc(Signal::Traces),
            Err(OtelEnvError::Protocol {
                var: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                ..
            })
        ));
        assert!(traces_http.require_grpc(Signal::Metrics).is_ok());
    }

    #[test]
    fn percent_escapes_are_strict() {
        assert_eq!(percent_decoded("a%20b%2Cc"), Some("a b,c".into()));
        for bad in ["%zz", "100%", "%4", "%+f", "%ff"] {
            assert_eq!(percent_decoded(bad), None, "{bad:?}");
        }
    }
}
