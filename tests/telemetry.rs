//! Telemetry over the real transports: spans exported over OTLP/gRPC to a
//! collector in this process, `/metrics` scraped over HTTP, the same numbers
//! pushed as OTLP metrics to a collector of the test's own, and the request
//! log as JSON lines.
//!
//! The tracing subscriber and the OpenTelemetry exporter are process-wide,
//! which is why these tests are a binary of their own: it is installed once,
//! pointing at the collector, on a runtime that outlives every test (the
//! exporter's gRPC channel lives on the runtime it was built on).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{any_value::Value as AnyValue, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point, AggregationTemporality, HistogramDataPoint, Metric,
        NumberDataPoint,
    },
    trace::v1::{span::SpanKind, Span},
};
use switchboard::{
    observability::{
        tracing::{self as telemetry, Telemetry, TraceExport},
        MetricsExport,
    },
    pb::{GetAgentRequest, ResolveAgentRequest},
};
use switchboard_testkit::{
    direct::*,
    otlp::{metrics_collector, trace_collector, LogSink, ReceivedMetrics, ReceivedSpans},
};
use tonic::{metadata::MetadataValue, Code, Request};
use uuid::Uuid;

// ---------------------------------------------------------------- harness

struct Harness {
    /// Runs the collector and the exporter's channel for the whole process.
    _runtime: tokio::runtime::Runtime,
    received: ReceivedSpans,
    logs: LogSink,
    telemetry: Telemetry,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // A runtime cannot be started from a test's runtime thread.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            let (addr, received) = runtime.block_on(trace_collector());
            let logs = LogSink::default();
            let writer = logs.clone();
            let telemetry = {
                let _context = runtime.enter();
                telemetry::init_with_writer(
                    "json",
                    TraceExport::Otlp {
                        endpoint: Some(format!("http://{addr}")),
                    },
                    move || writer.clone(),
                )
                .unwrap_or_else(|e| panic!("telemetry: {e}"))
            };
            assert!(telemetry.is_exporting());
            Harness {
                _runtime: runtime,
                received,
                logs,
                telemetry,
            }
        })
        .join()
        .unwrap_or_else(|_| panic!("harness set-up failed"))
    })
}

/// Flushes the exporter until the collector holds spans of `trace_id`
/// satisfying `done`, for at most 10 s; returns them.
async fn spans_of(trace_id: &[u8], done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let harness = harness();
    let started = Instant::now();
    loop {
        tokio::task::spawn_blocking(move || harness.telemetry.flush())
            .await
            .unwrap_or_else(|e| panic!("flush: {e}"));
        let spans: Vec<Span> = harness
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, span)| span.trace_id == trace_id)
            .map(|(_, span)| span.clone())
            .collect();
        if done(&spans) || started.elapsed() > Duration::from_secs(10) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of a trace once every name in `expected` is among them;
/// fails naming the first one missing.
async fn spans_named(trace_id: &[u8], expected: &[&str]) -> Vec<Span> {
    let spans = spans_of(trace_id, |spans| {
        expected
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
    })
    .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for name in expected {
        assert!(names.contains(name), "no {name} span in {names:?}");
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or_else(|e| panic!("hex: {e}")))
        .collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attribute(span: &Span, key: &str) -> Option<String> {
    match attribute(&span.attributes, key) {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Every piece of text a span carries: name, attribute keys and values,
/// event names and attributes, link attributes, status message.
fn texts_of(span: &Span) -> Vec<String> {
    let mut texts = vec![span.name.clone()];
    let mut add = |attributes: &[KeyValue]| {
        for kv in attributes {
            texts.push(kv.key.clone());
            texts.push(format!("{:?}", kv.value));
        }
    };
    add(&span.attributes);
    for event in &span.events {
        add(&event.attributes);
    }
    for link in &span.links {
        add(&link.attributes);
    }
    for event in &span.events {
        texts.push(event.name.clone());
    }
    if let Some(status) = &span.status {
        texts.push(status.message.clone());
    }
    texts
}

/// What must never leave the process in a span or a log line.
fn secrets(token: &str) -> Vec<String> {
    let mut secrets = vec![token.to_owned()];
    // Each part of the JWT (the claims, the signature) on its own.
    secrets.extend(token.split('.').map(str::to_owned));
    for number in [ACME_NUMBER, SHARED_CALLER] {
        let digits = number.trim_start_matches('+');
        secrets.push(number.to_owned());
        secrets.push(digits.to_owned());
        // The national number without the country code.
        secrets.push(digits[1..].to_owned());
    }
    secrets
}

fn traced<T>(message: T, token: &str, traceparent: Option<&str>) -> Request<T> {
    let mut request = authed(token, message);
    if let Some(traceparent) = traceparent {
        let value: MetadataValue<_> = traceparent
            .parse()
            .unwrap_or_else(|e| panic!("traceparent: {e}"));
        request.metadata_mut().insert("traceparent", value);
    }
    request
}

fn resolve_request() -> ResolveAgentRequest {
    ResolveAgentRequest {
        called_number: ACME_NUMBER.into(),
        caller_number: SHARED_CALLER.into(),
        ..Default::default()
    }
}

// ------------------------------------------------------------------ traces

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_agent_spans_reach_the_collector_in_the_callers_trace() {
    let harness = harness();
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let token = token(Who::Service);
    let trace_id = Uuid::new_v4().simple().to_string();
    let parent_id = &Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{trace_id}-{parent_id}-01");

    // Cold: memory miss, Redis miss, one Postgres statement.
    let response = agents
        .resolve_agent(traced(resolve_request(), &token, Some(&traceparent)))
        .await
        .unwrap_or_else(|e| panic!("resolve: {e}"));
    assert_eq!(
        response
            .metadata()
            .get("x-switchboard-cache")
            .and_then(|v| v.to_str().ok()),
        Some("db")
    );

    let trace = from_hex(&trace_id);
    let expected = [
        "switchboard.v1.AgentService/ResolveAgent",
        "auth.verify",
        "cache.memory",
        "cache.redis",
        "resolve_agent",
    ];
    let spans = spans_named(&trace, &expected).await;

    // The request span continues the caller's span and is the server side.
    let request_span = spans
        .iter()
        .find(|s| s.name == "switchboard.v1.AgentService/ResolveAgent")
        .unwrap_or_else(|| panic!("no request span"));
    assert_eq!(hex(&request_span.parent_span_id), parent_id);
    assert_eq!(request_span.kind, SpanKind::Server as i32);
    assert_eq!(
        string_attribute(request_span, "org.id").as_deref(),
        Some(ACME)
    );
    assert_eq!(
        string_attribute(request_span, "rpc.method").as_deref(),
        Some("ResolveAgent")
    );
    assert_eq!(
        string_attribute(request_span, "switchboard.cache_tier").as_deref(),
        Some("db")
    );
    assert!(matches!(
        attribute(&request_span.attributes, "rpc.grpc.status_code"),
        Some(AnyValue::IntValue(0))
    ));
    // Every other span of the call descends from it.
    let ids: Vec<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    for span in spans.iter().filter(|s| s.span_id != request_span.span_id) {
        assert!(
            ids.contains(&span.parent_span_id.as_slice()),
            "{} hangs outside the call's tree",
            span.name
        );
    }
    let statement = spans
        .iter()
        .find(|s| s.name == "resolve_agent")
        .unwrap_or_else(|| panic!("no statement span"));
    assert_eq!(statement.kind, SpanKind::Client as i32);
    assert_eq!(
        string_attribute(statement, "db.system.name").as_deref(),
        Some("postgresql")
    );
    let memory = spans
        .iter()
        .find(|s| s.name == "cache.memory")
        .unwrap_or_else(|| panic!("no memory span"));
    assert!(matches!(
        attribute(&memory.attributes, "cache.hit"),
        Some(AnyValue::BoolValue(false))
    ));

    // The resource names the service.
    let resource = harness
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(_, span)| span.trace_id == trace)
        .map(|(resource, _)| resource.clone())
        .unwrap_or_default();
    assert!(matches!(
        attribute(&resource, "service.name"),
        Some(AnyValue::StringValue(name)) if name == "switchboard"
    ));

    // Warm: answered by memory, in a trace of its own.
    let warm_trace_id = Uuid::new_v4().simple().to_string();
    let warm_parent = format!("00-{warm_trace_id}-{parent_id}-01");
    let response = agents
        .resolve_agent(traced(resolve_request(), &token, Some(&warm_parent)))
        .await
        .unwrap_or_else(|e| panic!("resolve: {e}"));
    assert_eq!(
        response
            .metadata()
            .get("x-switchboard-cache")
            .and_then(|v| v.to_str().ok()),
        Some("memory")
    );
    let warm = spans_of(&from_hex(&warm_trace_id), |spans| {
        spans.iter().any(|s| s.name == "cache.memory")
            && spans.iter().any(|s| s.name.ends_with("/ResolveAgent"))
    })
    .await;
    assert!(
        warm.iter().any(|s| s.name == "cache.memory"
            && matches!(
                attribute(&s.attributes, "cache.hit"),
                Some(AnyValue::BoolValue(true))
            )),
        "a memory hit: {:?}",
        warm.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(
        !warm
            .iter()
            .any(|s| s.name == "cache.redis" || s.name == "resolve_agent"),
        "a memory hit goes nowhere else"
    );

    // Nothing secret in any span this process exported, nor in its log.
    let secrets = secrets(&token);
    let all_spans: Vec<Span> = harness
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, s)| s.clone())
        .collect();
    let mut checked = 0;
    for span in &all_spans {
        for text in texts_of(span) {
            checked += 1;
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "span {} carries {secret:?}: {text}",
                    span.name
                );
            }
        }
    }
    assert!(checked > 20, "only {checked} texts checked");
    let log = harness.logs.text();
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "the log carries {secret:?}");
    }

    // The request's log line carries the caller's trace id.
    let lines = harness.logs.lines();
    let line = lines
        .iter()
        .find(|l| l["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("no log line with trace_id {trace_id}"));
    assert_eq!(line["message"], "request");
    assert_eq!(line["method"], "switchboard.v1.AgentService/ResolveAgent");
    assert_eq!(line["status"], "Ok");
    assert_eq!(line["cache"], "db");
    assert_eq!(line["org"], ACME);
    assert!(line["latency_us"].as_u64().is_some());
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["trace_id"] == trace_id.as_str())
            .count(),
        1,
        "one line per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_traceparent_the_call_starts_a_trace_and_logs_its_id() {
    let harness = harness();
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let missing = GetAgentRequest {
        id: Uuid::new_v4().to_string(),
    };
    let status = agents
        .get_agent(traced(missing, &token(Who::AcmeViewer), None))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(status, Some(Code::NotFound));

    // Its log line (the only GetAgent call of this test binary).
    let started = Instant::now();
    let line = loop {
        let found = harness.logs.lines().into_iter().find(|l| {
            l["method"] == "switchboard.v1.AgentService/GetAgent" && l["status"] == "NotFound"
        });
        if let Some(line) = found {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let trace_id = line["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id in {line}"))
        .to_owned();
    assert_eq!(trace_id.len(), 32);

    // A tenant's read: the claims transaction, the statement, the commit.
    let expected = [
        "switchboard.v1.AgentService/GetAgent",
        "auth.verify",
        "begin",
        "get_agent",
        "commit",
    ];
    let spans = spans_named(&from_hex(&trace_id), &expected).await;
    let request_span = spans
        .iter()
        .find(|s| s.name.ends_with("/GetAgent"))
        .unwrap_or_else(|| panic!("no request span in trace {trace_id}"));
    assert!(request_span.parent_span_id.is_empty(), "a root span");
    assert!(matches!(
        attribute(&request_span.attributes, "rpc.grpc.status_code"),
        Some(AnyValue::IntValue(5))
    ));
    // The role is recorded, and a client error is not the server's failure.
    assert!(spans.iter().any(|s| s.name == "auth.verify"
        && string_attribute(s, "auth.role").as_deref() == Some("authenticated")));
    assert_ne!(
        request_span.status.as_ref().map(|s| s.code),
        Some(2),
        "NOT_FOUND is not an error of the server"
    );
}

// ----------------------------------------------------------------- metrics

/// One sample of the exposition: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Scrape {
    content_type: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels.len() == s.labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

/// Scrapes `/metrics` and parses the text format strictly: every sample
/// belongs to a family declared by `# TYPE` before it.
async fn scrape(app: &TestApp) -> Scrape {
    let (status, head, body) = http_get(app.admin_addr, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad TYPE line: {line}"));
            assert!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line}: {e}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                rest.strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}")),
            ),
            None => (series, ""),
        };
        let mut parsed = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label in {line}"));
            parsed.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| families.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            families.contains_key(family),
            "{name} has no # TYPE before it"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels: parsed,
            value,
        });
    }
    Scrape {
        content_type,
        samples,
    }
}

const RESOLVE: &str = "switchboard.v1.AgentService/ResolveAgent";

fn requests(scrape: &Scrape, code: &str) -> f64 {
    scrape.count(
        "switchboard_grpc_requests_total",
        &[("method", RESOLVE), ("code", code)],
    )
}

/// A histogram's buckets for one label set, checked for shape: bounds
/// ascending, counts cumulative, `+Inf` = `_count`.
fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket_name = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.name == bucket_name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| {
            let le = s.labels.get("le").map(String::as_str).unwrap_or_default();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or_else(|e| panic!("le {le}: {e}"))
            };
            (bound, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10, "{name}{labels:?}: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
    let count = scrape.count(&format!("{name}_count"), labels);
    assert_eq!(
        buckets.last().map(|b| (b.0, b.1)),
        Some((f64::INFINITY, count))
    );
    assert!(scrape.value(&format!("{name}_sum"), labels).is_some());
    buckets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_over_http_and_move_with_calls() {
    harness();
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let before = scrape(&app).await;
    assert_eq!(
        before.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(requests(&before, "OK"), 0.0);

    let service = token(Who::Service);
    for _ in 0..3 {
        agents
            .resolve_agent(authed(&service, resolve_request()))
            .await
            .unwrap_or_else(|e| panic!("resolve: {e}"));
    }
    agents
        .resolve_agent(as_who(Who::AcmeAdmin, resolve_request()))
        .await
        .unwrap_or_else(|e| panic!("tenant resolve: {e}"));
    let unknown = ResolveAgentRequest {
        called_number: "+18005550999".into(),
        caller_number: String::new(),
        ..Default::default()
    };
    let not_found = agents
        .resolve_agent(authed(&service, unknown))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(not_found, Some(Code::NotFound));
    let unauthenticated = agents
        .resolve_agent(authed("not-a-token", resolve_request()))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(unauthenticated, Some(Code::Unauthenticated));

    let after = scrape(&app).await;
    assert_eq!(requests(&after, "OK"), 4.0);
    assert_eq!(requests(&after, "NotFound"), 1.0);
    assert_eq!(requests(&after, "Unauthenticated"), 1.0);

    // Latency by tier: the first service call and the tenant's went to
    // Postgres, the next two were memory hits.
    let duration = "switchboard_grpc_request_duration_seconds";
    let memory = histogram(&after, duration, &[("method", RESOLVE), ("tier", "memory")]);
    assert_eq!(memory.last().map(|b| b.1), Some(2.0));
    let db = histogram(&after, duration, &[("method", RESOLVE), ("tier", "db")]);
    assert_eq!(db.last().map(|b| b.1), Some(2.0));
    // Errors carry no tier.
    let none = histogram(&after, duration, &[("method", RESOLVE), ("tier", "none")]);
    assert_eq!(
        none.last().map(|b| b.1),
        Some(2.0),
        "NotFound + Unauthenticated"
    );
    assert!(
        memory[0].0 <= 0.0001 && db.iter().any(|b| b.0 >= 1.0),
        "buckets from ~100 µs to seconds"
    );

    // Cache lookups per tier, so a hit ratio can be computed.
    let lookups = |tier: &str, entry: &str, result: &str| {
        after.count(
            "switchboard_cache_lookups_total",
            &[("tier", tier), ("entry", entry), ("result", result)],
        )
    };
    assert_eq!(lookups("memory", "route", "hit"), 2.0);
    assert_eq!(lookups("memory", "route", "miss"), 2.0, "cold + unknown");
    // Misses, or errors if Redis was not connected yet: never hits here.
    assert_eq!(
        lookups("redis", "route", "miss") + lookups("redis", "route", "error"),
        2.0
    );
    assert_eq!(lookups("redis", "route", "hit"), 0.0);

    // Pool, breakers, listener.
    assert_eq!(
        after.value("switchboard_db_pool_max_connections", &[]),
        Some(4.0)
    );
    let in_use = after.value("switchboard_db_pool_connections", &[("state", "in_use")]);
    let idle = after.value("switchboard_db_pool_connections", &[("state", "idle")]);
    assert!(
        matches!((in_use, idle), (Some(u), Some(i)) if u + i >= 1.0 && u + i <= 4.0),
        "in use {in_use:?}, idle {idle:?}"
    );
    assert_eq!(after.value("switchboard_db_pool_waiting", &[]), Some(0.0));
    assert_eq!(
        after.value("switchboard_redis_breaker_open", &[]),
        Some(0.0)
    );
    assert_eq!(
        after.value("switchboard_database_breaker_open", &[]),
        Some(0.0)
    );
    assert_eq!(
        after.value("switchboard_invalidation_listener_connected", &[]),
        Some(1.0)
    );
    assert!(after
        .value("switchboard_redis_errors_total", &[("kind", "timeout")])
        .is_some());

    // An out-of-band change: Postgres notifies this replica, which fans
    // the eviction out on Redis and hears it back.
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'echo' where phone_number = '{ACME_NUMBER}'"
        ))
        .await;
    let started = Instant::now();
    loop {
        let now = scrape(&app).await;
        let received = |source: &str| {
            now.count(
                "switchboard_invalidations_received_total",
                &[("source", source)],
            )
        };
        if received("postgres") >= 1.0 && received("redis") >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "invalidations not counted: postgres {}, redis {}",
            received("postgres"),
            received("redis")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Only /metrics is served.
    let (status, _, _) = http_get(app.admin_addr, "/").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_for_a_connection_show_as_waiting() {
    harness();
    let app = TestApp::spawn().await;
    // Hold the agents table so every tenant statement blocks on it, keeping
    // its connection: the pool (4) fills up and the rest wait for one.
    let mut lock = app
        .db
        .pool
        .begin()
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    sqlx::query("lock table public.agents in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut agents = app.agents().await;
        calls.push(tokio::spawn(async move {
            agents
                .resolve_agent(as_who(Who::AcmeAdmin, resolve_request()))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }));
    }
    let started = Instant::now();
    let (in_use, waiting) = loop {
        let now = scrape(&app).await;
        let in_use = now.count("switchboard_db_pool_connections", &[("state", "in_use")]);
        let waiting = now.count("switchboard_db_pool_waiting", &[]);
        if (in_use, waiting) == (4.0, 2.0) || started.elapsed() > Duration::from_millis(900) {
            break (in_use, waiting);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    lock.rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    assert_eq!((in_use, waiting), (4.0, 2.0));
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap_or_else(|e| panic!("join: {e}")));
    }
    // Those holding a connection answer once the lock goes.
    assert!(
        outcomes.iter().filter(|o| o.is_ok()).count() >= 4,
        "{outcomes:?}"
    );
    let after = scrape(&app).await;
    assert_eq!(after.value("switchboard_db_pool_waiting", &[]), Some(0.0));
}

// ------------------------------------------------------------ OTLP metrics

/// The settings the service would read from these `OTEL_*` variables (read
/// from a map, so no test changes the process's environment).
fn metrics_export_to(collector: SocketAddr, interval_ms: u64) -> MetricsExport {
    let vars: BTreeMap<&str, String> = [
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://{collector}"),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", interval_ms.to_string()),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "2000".into()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "x-collector-key=test%20key".into(),
        ),
    ]
    .into_iter()
    .collect();
    MetricsExport::from_vars(|name| vars.get(name).cloned())
        .unwrap_or_else(|e| panic!("metrics export settings: {e}"))
}

/// The service, pushing its metrics to `collector` every `interval_ms`.
async fn app_pushing_to(collector: SocketAddr, interval_ms: u64) -> TestApp {
    TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            metrics_export: metrics_export_to(collector, interval_ms),
            ..AppOptions::default()
        },
    )
    .await
}

fn pushes(
    received: &ReceivedMetrics,
) -> Vec<(tonic::metadata::MetadataMap, ExportMetricsServiceRequest)> {
    received.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn metrics_of(request: &ExportMetricsServiceRequest) -> impl Iterator<Item = &Metric> {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
}

fn data_of<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Data> {
    metrics_of(request)
        .find(|m| m.name == name)
        .and_then(|m| m.data.as_ref())
}

/// Exactly these attributes, all strings.
fn has_attributes(attributes: &[KeyValue], expected: &[(&str, &str)]) -> bool {
    attributes.len() == expected.len()
        && expected.iter().all(|(key, value)| {
            matches!(attribute(attributes, key), Some(AnyValue::StringValue(v)) if v == value)
        })
}

/// A counter's value for one attribute set; the counter must be a
/// cumulative monotonic sum.
fn counter_value(
    request: &ExportMetricsServiceRequest,
    name: &str,
    attributes: &[(&str, &str)],
) -> Option<i64> {
    let Some(Data::Sum(sum)) = data_of(request, name) else {
        return None;
    };
    assert!(sum.is_monotonic, "{name} is monotonic");
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32,
        "{name} is cumulative"
    );
    int_value(&sum.data_points, attributes)
}

fn gauge_value(
    request: &ExportMetricsServiceRequest,
    name: &str,
    attributes: &[(&str, &str)],
) -> Option<i64> {
    let Some(Data::Gauge(gauge)) = data_of(request, name) else {
        return None;
    };
    int_value(&gauge.data_points, attributes)
}

/// The integer of the point with exactly these attributes.
fn int_value(points: &[NumberDataPoint], attributes: &[(&str, &str)]) -> Option<i64> {
    points
        .iter()
        .find(|p| has_attributes(&p.attributes, attributes))
        .and_then(|p| match p.value {
            Some(number_data_point::Value::AsInt(value)) => Some(value),
            _ => None,
        })
}

/// A latency histogram's point, checked for shape: cumulative, one more
/// bucket than bounds, bounds ascending, buckets summing to the count.
fn latency_point<'a>(
    request: &'a ExportMetricsServiceRequest,
    attributes: &[(&str, &str)],
) -> Option<&'a HistogramDataPoint> {
    let name = "switchboard.grpc.request.duration";
    let metric = metrics_of(request).find(|m| m.name == name)?;
    assert_eq!(metric.unit, "s");
    let Some(Data::Histogram(histogram)) = &metric.data else {
        panic!("{name} is not a histogram");
    };
    assert_eq!(
        histogram.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let point = histogram
        .data_points
        .iter()
        .find(|p| has_attributes(&p.attributes, attributes))?;
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert!(point.explicit_bounds.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
    assert!(point.sum.is_some_and(|sum| sum > 0.0));
    Some(point)
}

fn resolve_calls(request: &ExportMetricsServiceRequest, code: &str) -> Option<i64> {
    counter_value(
        request,
        "switchboard.grpc.requests",
        &[("method", RESOLVE), ("code", code)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_are_pushed_every_interval_with_the_numbers_of_the_page() {
    let (collector, received) = metrics_collector().await;
    let app = app_pushing_to(collector, 200).await;
    let mut agents = app.agents().await;
    let service = token(Who::Service);
    // Postgres, then two memory hits.
    for _ in 0..3 {
        agents
            .resolve_agent(authed(&service, resolve_request()))
            .await
            .unwrap_or_else(|e| panic!("resolve: {e}"));
    }
    let unknown = ResolveAgentRequest {
        called_number: "+18005550999".into(),
        caller_number: String::new(),
        ..Default::default()
    };
    let not_found = agents.resolve_agent(authed(&service, unknown)).await;
    assert_eq!(not_found.err().map(|s| s.code()), Some(Code::NotFound));

    // Pushes keep coming; wait for one that counts every call, and two more
    // after it so the interval shows.
    let started = Instant::now();
    let (counted, all) = loop {
        let all = pushes(&received);
        let counted = all.iter().position(|(_, request)| {
            resolve_calls(request, "OK") == Some(3) && resolve_calls(request, "NotFound") == Some(1)
        });
        if let Some(counted) = counted.filter(|&i| all.len() >= i + 3) {
            break (counted, all);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} pushes, none with the calls (OK {:?}, NotFound {:?} in the last)",
            all.len(),
            all.last().and_then(|(_, r)| resolve_calls(r, "OK")),
            all.last().and_then(|(_, r)| resolve_calls(r, "NotFound")),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (metadata, push) = &all[counted];

    // Each push is a fresh reading of cumulative totals since one start.
    let times: Vec<(u64, u64)> = all
        .iter()
        .filter_map(
            |(_, request)| match data_of(request, "switchboard.cache.lookups") {
                Some(Data::Sum(sum)) => sum
                    .data_points
                    .first()
                    .map(|p| (p.start_time_unix_nano, p.time_unix_nano)),
                _ => None,
            },
        )
        .collect();
    assert_eq!(times.len(), all.len());
    assert!(times
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1));
    assert!(times.iter().all(|(start, time)| start < time));
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) / 1_000_000)
        .collect();
    assert!(
        gaps.iter().all(|&ms| ms >= 100),
        "pushes about 200 ms apart: {gaps:?}"
    );

    // The configured headers, and the service in the resource.
    assert_eq!(
        metadata
            .get("x-collector-key")
            .and_then(|v| v.to_str().ok()),
        Some("test key")
    );
    let resource = push
        .resource_metrics
        .first()
        .and_then(|r| r.resource.as_ref())
        .map(|r| r.attributes.clone())
        .unwrap_or_default();
    assert!(matches!(
        attribute(&resource, "service.name"),
        Some(AnyValue::StringValue(name)) if name == "switchboard"
    ));

    // Latency by tier, counted as the calls were.
    let count = |tier: &str| {
        latency_point(push, &[("method", RESOLVE), ("tier", tier)])
            .map(|p| p.count)
            .unwrap_or_else(|| panic!("no latency point for tier {tier}"))
    };
    assert_eq!(count("db"), 1);
    assert_eq!(count("memory"), 2);
    assert_eq!(count("none"), 1, "NotFound carries no tier");
    let memory_hits = counter_value(
        push,
        "switchboard.cache.lookups",
        &[("tier", "memory"), ("entry", "route"), ("result", "hit")],
    );
    assert_eq!(memory_hits, Some(2));

    // The pool's gauges.
    assert_eq!(
        gauge_value(push, "switchboard.db.pool.max_connections", &[]),
        Some(4)
    );
    let in_use = gauge_value(
        push,
        "switchboard.db.pool.connections",
        &[("state", "in_use")],
    );
    let idle = gauge_value(
        push,
        "switchboard.db.pool.connections",
        &[("state", "idle")],
    );
    assert!(
        matches!((in_use, idle), (Some(u), Some(i)) if u + i >= 1 && u + i <= 4),
        "in use {in_use:?}, idle {idle:?}"
    );
    assert_eq!(
        gauge_value(push, "switchboard.db.pool.waiting", &[]),
        Some(0)
    );

    // The page has every pushed metric, under the name a Prometheus
    // exporter derives from the OTLP one, and the same counts.
    let page = scrape(&app).await;
    for metric in metrics_of(push) {
        let mut name = metric.name.replace('.', "_");
        if metric.unit == "s" {
            name.push_str("_seconds");
        }
        match &metric.data {
            Some(Data::Sum(_)) => name.push_str("_total"),
            Some(Data::Histogram(_)) => name.push_str("_count"),
            _ => {}
        }
        assert!(
            page.samples.iter().any(|s| s.name == name),
            "{} pushed, no {name} on /metrics",
            metric.name
        );
    }
    assert_eq!(requests(&page, "OK"), 3.0);
    assert_eq!(requests(&page, "NotFound"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_are_pushed_once_more_at_shutdown() {
    let (collector, received) = metrics_collector().await;
    // An interval no test reaches: only the push at shutdown happens.
    let mut app = app_pushing_to(collector, 3_600_000).await;
    let mut agents = app.agents().await;
    agents
        .resolve_agent(authed(&token(Who::Service), resolve_request()))
        .await
        .unwrap_or_else(|e| panic!("resolve: {e}"));
    assert!(pushes(&received).is_empty(), "nothing before the interval");

    app.stop().await;
    let all = pushes(&received);
    assert_eq!(all.len(), 1, "one push at shutdown");
    assert_eq!(
        all.first().and_then(|(_, r)| resolve_calls(r, "OK")),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_one_warning_a_minute_and_no_call() {
    let harness = harness();
    // A port nothing listens on any more.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"))
    };
    let app = app_pushing_to(closed, 50).await;
    let mut agents = app.agents().await;
    let service = token(Who::Service);
    let warnings = || {
        harness
            .logs
            .lines()
            .into_iter()
            .filter(|line| {
                line["level"] == "WARN"
                    && line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("OTLP metrics push failed"))
                    && line["endpoint"]
                        .as_str()
                        .is_some_and(|e| e.contains(&closed.to_string()))
            })
            .count()
    };
    let started = Instant::now();
    while warnings() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no warning about the push"
        );
        agents
            .resolve_agent(authed(&service, resolve_request()))
            .await
            .unwrap_or_else(|e| panic!("resolve while pushes fail: {e}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // About ten more failed pushes, and calls answered meanwhile.
    for _ in 0..10 {
        agents
            .resolve_agent(authed(&service, resolve_request()))
            .await
            .unwrap_or_else(|e| panic!("resolve while pushes fail: {e}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        warnings(),
        1,
        "one warning per minute, however many pushes fail"
    );
}
