//! OTLP metrics: the numbers `/metrics` serves, pushed to an OpenTelemetry
//! collector over gRPC every `OTEL_METRIC_EXPORT_INTERVAL` and once more at
//! shutdown, after the drain.
//!
//! Why a push built from the `/metrics` snapshot, not the OpenTelemetry SDK's
//! instruments: the request path already counts everything once, in atomics
//! fixed at start-up (`metrics`). SDK instruments would count it all a second
//! time, with an attribute-set lookup (hashing, a lock) per recording, behind
//! a process-global meter provider that every test server in one process
//! would share. Instead each push reads `Registry::snapshot`, the same list
//! of series the Prometheus page renders, and encodes it: the call path is
//! untouched, and the two outputs cannot drift apart, because neither keeps
//! its own list of series.
//!
//! Encoding (OTLP's data model, as an SDK's cumulative reader would send it):
//! * counters: cumulative, monotonic Sums; gauges: Gauges (integers);
//! * latency: cumulative explicit-bucket Histograms, unit `s`, with the
//!   bounds of `/metrics` (50 µs … 5 s);
//! * attributes: the Prometheus labels, same names and values;
//! * start time: when the server's registry was made, so a collector sees a
//!   restart as a reset;
//! * names in OpenTelemetry style (`switchboard.grpc.requests`, unit
//!   `{request}`): a collector re-exporting to Prometheus derives exactly the
//!   names `/metrics` has (`switchboard_grpc_requests_total`);
//! * resource: `service.name` (`OTEL_SERVICE_NAME`, else the one in
//!   `OTEL_RESOURCE_ATTRIBUTES`, else `switchboard`) and the other
//!   `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! Transport: opentelemetry-proto's tonic client on a lazily connected
//! channel (a collector that is down at start-up does not stop start-up);
//! one push in flight at most, each bounded by `OTEL_METRIC_EXPORT_TIMEOUT`.
//! A failed push is a warning, at most one a minute (saying how many were
//! not logged). The next push carries the same cumulative totals, so an
//! outage costs resolution, not counts. Only OTLP over gRPC without TLS is
//! built in, as for traces.
//!
//! Without an endpoint (or with `OTEL_SDK_DISABLED=true`,
//! `OTEL_METRICS_EXPORTER=none`) nothing runs: no task, no channel, no
//! snapshot.

use std::{fmt, time::Duration};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
    },
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use tokio::{
    sync::oneshot,
    task::JoinHandle,
    time::{Instant, MissedTickBehavior},
};
use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

use super::{
    admin,
    metrics::{latency_bounds_seconds, Family, Kind, Series, Snapshot, Value},
    otel_env::{self, OtelEnv, OtelEnvError, Signal},
};

/// The push at shutdown waits at most this (or the export timeout, if
/// shorter): a pod's whole grace period is about 20 s.
const FINAL_PUSH_WAIT: Duration = Duration::from_secs(5);
/// At most one warning per this while pushes keep failing.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether, and where, metrics are pushed.
#[derive(Clone, Debug, Default)]
pub enum MetricsExport {
    #[default]
    Off,
    /// Boxed: the settings are large, and `Off` is the common case.
    Otlp(Box<OtlpMetrics>),
}

/// A checked OTLP/gRPC metrics destination.
#[derive(Clone)]
pub struct OtlpMetrics {
    endpoint: Endpoint,
    interval: Duration,
    timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_HEADERS`, then `..._METRICS_HEADERS` over them.
    headers: MetadataMap,
    resource: Vec<KeyValue>,
}

impl fmt::Debug for OtlpMetrics {
    // Header values are left out: they are usually credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self
            .headers
            .keys()
            .map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => key.as_str(),
                tonic::metadata::KeyRef::Binary(key) => key.as_str(),
            })
            .collect();
        f.debug_struct("OtlpMetrics")
            .field("endpoint", self.endpoint.uri())
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("header_names", &header_names)
            .field("resource", &self.resource)
            .finish()
    }
}

impl MetricsExport {
    /// From the process's `OTEL_*` variables.
    pub fn from_env() -> Result<Self, OtelEnvError> {
        Self::read(&OtelEnv::process())
    }

    /// From `OTEL_*` variables looked up by `var` (tests pass their own
    /// rather than change the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, OtelEnvError> {
        Self::read(&OtelEnv::from_lookup(var))
    }

    fn read<F: Fn(&str) -> Option<String>>(env: &OtelEnv<F>) -> Result<Self, OtelEnvError> {
        if env.sdk_disabled() || !env.metrics_exporter_is_otlp()? {
            return Ok(MetricsExport::Off);
        }
        let Some((endpoint_var, endpoint)) = env.endpoint(Signal::Metrics) else {
            return Ok(MetricsExport::Off);
        };
        env.require_grpc(Signal::Metrics)?;
        let interval = env.metric_export_interval()?;
        let timeout = env.metric_export_timeout()?;
        let headers = env.headers(Signal::Metrics)?;
        let resource = env
            .resource()?
            .into_iter()
            .map(|(key, value)| string_attribute(key, value))
            .collect();
        let endpoint = otel_env::plain_http_endpoint(endpoint_var, endpoint)?;
        Ok(MetricsExport::Otlp(Box::new(OtlpMetrics {
            endpoint: Endpoint::from(endpoint),
            interval,
            timeout,
            headers,
            resource,
        })))
    }
}

fn string_attribute(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The OTLP request for one snapshot. Families with no series (no call of
/// any method yet) are left out.
pub fn export_request(
    snapshot: &Snapshot<'_>,
    resource: &[KeyValue],
) -> ExportMetricsServiceRequest {
    let start = unix_nanos(snapshot.start);
    let time = unix_nanos(snapshot.time);
    let metrics = snapshot
        .families
        .iter()
        .filter(|family| !family.series.is_empty())
        .map(|family| metric(family, start, time))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "switchboard".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn metric(family: &Family<'_>, start: u64, time: u64) -> Metric {
    let attributes = |series: &Series<'_>| -> Vec<KeyValue> {
        series
            .labels
            .iter()
            .map(|&(key, value)| string_attribute(key, value))
            .collect()
    };
    // A gauge has no start; a counter's is when counting began.
    let numbers = |start: u64| -> Vec<NumberDataPoint> {
        family
            .series
            .iter()
            .filter_map(|series| match series.value {
                Value::Number(value) => Some(NumberDataPoint {
                    attributes: attributes(series),
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(
                        i64::try_from(value).unwrap_or(i64::MAX),
                    )),
                    ..Default::default()
                }),
                Value::Histogram(_) => None,
            })
            .collect()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match family.kind {
        Kind::Counter => Data::Sum(Sum {
            data_points: numbers(start),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        Kind::Gauge => Data::Gauge(Gauge {
            data_points: numbers(0),
        }),
        Kind::Histogram => Data::Histogram(Histogram {
            data_points: family
                .series
                .iter()
                .filter_map(|series| match &series.value {
                    Value::Histogram(histogram) => Some(HistogramDataPoint {
                        attributes: attributes(series),
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        count: histogram.count(),
                        sum: Some(histogram.sum_seconds()),
                        bucket_counts: histogram.counts.to_vec(),
                        explicit_bounds: latency_bounds_seconds().collect(),
                        ..Default::default()
                    }),
                    Value::Number(_) => None,
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
    };
    Metric {
        name: family.name.into(),
        description: family.help.into(),
        unit: family.unit.into(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

fn unix_nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("the collector rejected {points} data points: {message}")]
    Rejected { points: i64, message: String },
}

/// The running push task. Dropping it stops the pushes too (after a last
/// one), but `stop` also waits for that last push.
pub(crate) struct MetricsPusher {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl MetricsPusher {
    /// Pushes once more (what the drained calls added) and stops.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let mut handle = self.handle;
        if tokio::time::timeout(FINAL_PUSH_WAIT + Duration::from_secs(1), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}

impl OtlpMetrics {
    /// Starts pushing what `sources` would show on `/metrics`. Call inside
    /// the runtime (the channel's connection task runs on it).
    pub(crate) fn spawn(self, sources: admin::Sources) -> MetricsPusher {
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(self.run(sources, stopped));
        MetricsPusher { stop, handle }
    }

    async fn run(self, sources: admin::Sources, mut stop: oneshot::Receiver<()>) {
        let channel = self.endpoint.connect_lazy();
        let mut client = MetricsServiceClient::new(channel);
        let mut failures = Failures {
            endpoint: self.endpoint.uri().to_string(),
            ..Failures::default()
        };
        let mut ticks = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        // A slow collector delays the next push; pushes never pile up.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // `stop` is polled only until it first completes: each arm that sees
        // it leaves the loop.
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                // The push at shutdown sends the same totals and more.
                _ = &mut stop => break,
                result = self.push(&mut client, &sources, self.timeout) => failures.record(result),
            }
        }
        let result = self
            .push(&mut client, &sources, self.timeout.min(FINAL_PUSH_WAIT))
            .await;
        if let Err(error) = result {
            tracing::warn!(
                %error,
                endpoint = failures.endpoint,
                "OTLP metrics: the push at shutdown failed"
            );
        }
    }

    async fn push(
        &self,
        client: &mut MetricsServiceClient<Channel>,
        sources: &admin::Sources,
        timeout: Duration,
    ) -> Result<(), PushError> {
        let message = export_request(&sources.snapshot(), &self.resource);
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.headers.clone();
        request.set_timeout(timeout);
        let response = tokio::time::timeout(timeout, client.export(request))
            .await
            .map_err(|_| PushError::Timeout(timeout))??;
        match response.into_inner().partial_success {
            Some(partial) if partial.rejected_data_points > 0 => Err(PushError::Rejected {
                points: partial.rejected_data_points,
                message: partial.error_message,
            }),
            _ => Ok(()),
        }
    }
}

/// Failed pushes, logged at most once per `WARN_EVERY`.
#[derive(Default)]
struct Failures {
    /// The collector, named in the log lines.
    endpoint: String,
    last_warning: Option<Instant>,
    /// Failures since the last warning that were not logged.
    unlogged: u64,
    failing: bool,
}

impl Failures {
    fn record(&mut self, result: Result<(), PushError>) {
        match result {
            Ok(()) => {
                if self.failing {
                    tracing::info!(
                        endpoint = self.endpoint,
                        "OTLP metrics: pushes succeed again"
                    );
                }
                self.failing = false;
            }
            Err(error) => {
                self.failing = true;
                let now = Instant::now();
                if self
                    .last_warning
                    .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
                {
                    tracing::warn!(
                        %error,
                        endpoint = self.endpoint,
                        failures_not_logged = self.unlogged,
                        "OTLP metrics push failed; serving is not affected"
                    );
                    self.last_warning = Some(now);
                    self.unlogged = 0;
                } else {
                    self.unlogged += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::observability::metrics::{Gauges, Metrics};

    fn export(vars: &[(&str, &str)]) -> Result<MetricsExport, OtelEnvError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        MetricsExport::from_vars(|name| vars.get(name).cloned())
    }

    fn settings(vars: &[(&str, &str)]) -> OtlpMetrics {
        match export(vars) {
            Ok(MetricsExport::Otlp(settings)) => *settings,
            other => panic!("expected OTLP settings, got {other:?}"),
        }
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(matches!(export(&[]), Ok(MetricsExport::Off)));
        assert!(matches!(
            export(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317")]),
            Ok(MetricsExport::Off)
        ));
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
        ] {
            assert!(
                matches!(export(&[ENDPOINT, off]), Ok(MetricsExport::Off)),
                "{off:?}"
            );
        }
    }

    #[test]
    fn settings_are_read_with_the_specifications_defaults() {
        let defaults = settings(&[ENDPOINT]);
        assert_eq!(defaults.interval, Duration::from_secs(60));
        assert_eq!(defaults.timeout, Duration::from_secs(30));
        assert_eq!(
            defaults.endpoint.uri().to_string(),
            "http://collector:4317/"
        );
        assert_eq!(
            defaults.resource,
            vec![string_attribute("service.name", "switchboard")]
        );

        let set = settings(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRICS_EXPORTER", "otlp,prometheus"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "50"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Api-Key=a%20b,x-both=general"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-both=metrics"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attributes,deployment.environment=prod%2Ceu",
            ),
        ]);
        assert_eq!(set.endpoint.uri().host(), Some("metrics"));
        assert_eq!(set.interval, Duration::from_millis(200));
        assert_eq!(set.timeout, Duration::from_millis(50));
        let header = |name: &str| set.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("api-key"), Some("a b"));
        assert_eq!(header("x-both"), Some("metrics"));
        assert_eq!(
            set.resource,
            vec![
                string_attribute("service.name", "from-attributes"),
                string_attribute("deployment.environment", "prod,eu"),
            ]
        );
        assert!(
            !format!("{set:?}").contains("a b"),
            "Debug leaves header values out"
        );
        let named = settings(&[
            ENDPOINT,
            ("OTEL_SERVICE_NAME", "switchboard-eu"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored"),
        ]);
        assert_eq!(
            named.resource,
            vec![string_attribute("service.name", "switchboard-eu")]
        );
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let refused = |vars: &[(&str, &str)]| match export(vars) {
            Err(error) => error.to_string(),
            Ok(export) => panic!("accepted {vars:?}: {export:?}"),
        };
        assert!(
            refused(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
                .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL \"http/protobuf\" is not supported")
        );
        // The signal's own protocol wins over the general one.
        assert!(refused(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
        ])
        .starts_with("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"));
        assert!(refused(&[ENDPOINT, ("OTEL_METRICS_EXPORTER", "console")]).contains("console"));
        for endpoint in ["collector:4317", "https://collector:4317", "http://"] {
            assert!(
                refused(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)])
                    .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT"),
                "{endpoint}"
            );
        }
        let with_password = refused(&[(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "http://user:hunter2@collector:4317",
        )]);
        assert!(
            with_password.starts_with("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT carries credentials")
                && !with_password.contains("hunter2"),
            "{with_password}"
        );
        for interval in ["0", "-1", "1s"] {
            assert!(
                refused(&[ENDPOINT, ("OTEL_METRIC_EXPORT_INTERVAL", interval)])
                    .starts_with("OTEL_METRIC_EXPORT_INTERVAL")
            );
        }
        assert!(refused(&[ENDPOINT, ("OTEL_METRIC_EXPORT_TIMEOUT", "soon")])
            .starts_with("OTEL_METRIC_EXPORT_TIMEOUT"));
        let secret = refused(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_HEADERS", "ok=1,api-key=s3cret%zz"),
        ]);
        assert!(secret.contains("entry 2"), "{secret}");
        assert!(!secret.contains("s3cret"), "a header value is never echoed");
        assert!(refused(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "bad name=1")
        ])
        .starts_with("OTEL_EXPORTER_OTLP_METRICS_HEADERS: entry 1"));
        assert!(
            refused(&[ENDPOINT, ("OTEL_RESOURCE_ATTRIBUTES", "novalue")])
                .starts_with("OTEL_RESOURCE_ATTRIBUTES: entry 1")
        );
    }

    #[test]
    fn the_push_carries_every_series_of_the_prometheus_page() {
        let metrics = Metrics::new();
        let resolve = metrics.method("/switchboard.v1.AgentService/ResolveAgent");
        metrics.record_request(
            resolve,
            tonic::Code::Ok,
            Some(b"memory"),
            Duration::from_micros(80),
        );
        metrics.record_request(
            resolve,
            tonic::Code::Ok,
            Some(b"memory"),
            Duration::from_secs(9),
        );
        metrics.memory_routes.hit.inc();
        metrics.calls.decided(
            crate::domain::Outcome::Answer,
            crate::domain::Reason::Answered,
        );
        let gauges = Gauges {
            pool_max: 4,
            pool_size: 3,
            pool_idle: 1,
            redis_breaker_open: Some(false),
            ..Gauges::default()
        };
        let snapshot = metrics.snapshot(&gauges);
        let request = export_request(&snapshot, &[string_attribute("service.name", "s")]);
        let [resource_metrics] = request.resource_metrics.as_slice() else {
            panic!("one resource");
        };
        let [scope] = resource_metrics.scope_metrics.as_slice() else {
            panic!("one scope");
        };
        // Every family the page has (they all have series here), by the
        // name a Prometheus exporter would derive.
        let page = metrics.render(&gauges);
        assert_eq!(scope.metrics.len(), snapshot.families.len());
        for (metric, family) in scope.metrics.iter().zip(&snapshot.families) {
            assert!(page.contains(&format!("# TYPE {} ", family.prometheus_name())));
            assert_eq!(metric.name, family.name);
        }
        let find = |name: &str| {
            scope
                .metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.data.as_ref())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let Data::Sum(requests) = find("switchboard.grpc.requests") else {
            panic!("requests are a sum");
        };
        assert!(requests.is_monotonic);
        assert_eq!(
            requests.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let [point] = requests.data_points.as_slice() else {
            panic!("one series: {:?}", requests.data_points);
        };
        assert_eq!(
            point.attributes,
            vec![
                string_attribute("method", "switchboard.v1.AgentService/ResolveAgent"),
                string_attribute("code", "OK"),
            ]
        );
        assert_eq!(point.value, Some(number_data_point::Value::AsInt(2)));
        assert!(
            point.start_time_unix_nano > 0 && point.start_time_unix_nano <= point.time_unix_nano
        );

        let Data::Histogram(latency) = find("switchboard.grpc.request.duration") else {
            panic!("latency is a histogram");
        };
        let [point] = latency.data_points.as_slice() else {
            panic!("one series");
        };
        assert_eq!(point.count, 2);
        assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
        assert_eq!(point.bucket_counts.first(), Some(&0));
        assert_eq!(
            point.bucket_counts.get(1),
            Some(&1),
            "80 µs is in (50, 100]"
        );
        assert_eq!(
            point.bucket_counts.last(),
            Some(&1),
            "9 s is above every bound"
        );
        assert_eq!(point.explicit_bounds.first(), Some(&0.00005));
        assert_eq!(point.sum, Some(9.00008));

        let Data::Gauge(pool) = find("switchboard.db.pool.connections") else {
            panic!("the pool is a gauge");
        };
        let values: Vec<_> = pool
            .data_points
            .iter()
            .map(|p| (p.attributes.clone(), p.value))
            .collect();
        assert_eq!(
            values,
            vec![
                (
                    vec![string_attribute("state", "in_use")],
                    Some(number_data_point::Value::AsInt(2))
                ),
                (
                    vec![string_attribute("state", "idle")],
                    Some(number_data_point::Value::AsInt(1))
                ),
            ]
        );
    }
}
