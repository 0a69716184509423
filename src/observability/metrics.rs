//! Metrics: counters and histograms the request path updates, and one
//! `Snapshot` of every series that both encoders walk: the Prometheus text
//! exposition (served by `admin`) and the OTLP push (`otlp`). Which
//! series exist, their names, units and labels are decided here once.
//!
//! Why no metrics crate: every series here has a label set fixed at start-up
//! (methods come from the served protobuf descriptors, codes and tiers are
//! closed sets), so each is a plain atomic in a table built once. Updating one
//! is a `fetch_add`: no lock, no hashing of labels, no allocation, which keeps
//! a memory-tier hit (~100 ns of work) cheap. The client crates put a mutex in
//! every histogram (`prometheus-client`) or need a process-global recorder
//! (`metrics`), which would also tie every test server in one process to one
//! set of numbers. Gauges that mirror state owned elsewhere (pool, breakers,
//! listener) are read when scraped, not kept here.

use std::{
    collections::HashMap,
    fmt::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use prost::Message;
use tonic::Code;

use crate::domain::{Outcome, Reason};

/// Upper bounds (inclusive, nanoseconds) of the latency buckets: from a
/// memory hit (~100 µs end to end) to the request timeout.
const LATENCY_BOUNDS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// grpc-go's names, which dashboards and `ghz` reports already use, by
/// code number.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The `tier` label of request latency: which cache tier answered
/// (`ResolveAgent` only), `none` for every other call.
const TIER_NAMES: [&str; 4] = ["none", "memory", "redis", "db"];

/// The method label of a path that names no served method. Bounded: a client
/// cannot grow the number of series by calling made-up paths.
pub const OTHER_METHOD: &str = "other";

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A fixed-bucket histogram of durations. Buckets hold their own counts (not
/// cumulative), so an observation touches one bucket and the sum.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The buckets and the sum now. Each is read once, so the count (their
    /// sum) and the buckets agree even while requests are being recorded.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// Route lookups in one tier, so a hit ratio is `hit / (hit + miss + error)`.
#[derive(Default)]
pub struct Lookups {
    pub hit: Counter,
    pub miss: Counter,
    /// The tier could not answer (Redis down, timed out, breaker open).
    pub error: Counter,
}

#[derive(Default)]
pub struct RedisErrors {
    pub timeout: Counter,
    pub failed: Counter,
}

#[derive(Default)]
pub struct Invalidations {
    /// Outbox rows the Postgres listener applied.
    pub postgres: Counter,
    /// Notifications the Postgres listener received: wake-ups, including
    /// its own probes and any forged by another login role.
    pub notifications: Counter,
    /// Fan-out messages from other replicas over Redis pub/sub.
    pub redis: Counter,
    /// Reads of the Postgres outbox (each notification costs at most one).
    pub outbox_reads: Counter,
    /// Probes sent by this replica that its listener did not hear in time.
    pub probes_unheard: Counter,
}

/// Calls: decisions, admission, leases and records.
#[derive(Default)]
pub struct CallMetrics {
    /// By `Outcome` × `Reason` (their `ALL` order).
    decisions: [[Counter; Reason::ALL.len()]; Outcome::ALL.len()],
    /// Redis could not be asked: answered anyway (open) or refused.
    pub admission_failed_open: Counter,
    pub admission_failed_refused: Counter,
    /// Slots whose lease ran out (the media server stopped renewing).
    pub lease_expiries: Counter,
    /// Records Postgres did not take in time, kept in the Redis backlog.
    pub records_backlogged: Counter,
    /// Records written from the backlog.
    pub records_replayed: Counter,
    /// Records neither Postgres nor the backlog took: lost.
    pub records_lost: Counter,
    /// Refusals past the per-organization bound: counted, not stored.
    pub records_skipped: Counter,
    /// Backlog entries Postgres refused for good (the org deleted, or an
    /// unreadable entry): dropped.
    pub records_dropped: Counter,
}

impl CallMetrics {
    pub fn decided(&self, outcome: Outcome, reason: Reason) {
        let o = Outcome::ALL.iter().position(|x| *x == outcome);
        let r = Reason::ALL.iter().position(|x| *x == reason);
        if let (Some(o), Some(r)) = (o, r) {
            self.decisions[o][r].inc();
        }
    }

    pub fn decisions(&self, outcome: Outcome, reason: Reason) -> u64 {
        let o = Outcome::ALL.iter().position(|x| *x == outcome);
        let r = Reason::ALL.iter().position(|x| *x == reason);
        match (o, r) {
            (Some(o), Some(r)) => self.decisions[o][r].get(),
            _ => 0,
        }
    }
}

/// Per method: calls by status code, latency by answering tier.
struct MethodStats {
    label: Box<str>,
    codes: [Counter; CODE_NAMES.len()],
    latency: [Histogram; TIER_NAMES.len()],
}

impl MethodStats {
    fn new(label: &str) -> Self {
        MethodStats {
            label: label.into(),
            codes: Default::default(),
            latency: Default::default(),
        }
    }
}

/// An index into the method table, resolved once per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodId(usize);

pub struct Registry {
    /// Served methods, then `other` last.
    methods: Box<[MethodStats]>,
    /// `/package.Service/Method` → index in `methods`. Read-only after start.
    by_path: HashMap<Box<str>, usize>,
    pub memory_routes: Lookups,
    pub memory_callers: Lookups,
    pub redis_routes: Lookups,
    pub redis_errors: RedisErrors,
    pub invalidations: Invalidations,
    pub calls: CallMetrics,
    /// When counting began: the start of every cumulative series (OTLP
    /// sends it, so a collector sees a restart as a reset).
    started: SystemTime,
}

/// A cheap handle to one server's metrics. Each `Application` has its own, so
/// servers sharing a process (tests) do not mix their numbers.
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

impl std::ops::Deref for Metrics {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Every method of the services this server registers, as
/// `package.Service/Method`, read from their descriptor sets.
fn served_methods() -> Vec<String> {
    let descriptor_sets = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for bytes in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            tracing::warn!("a descriptor set does not decode; its methods count as `other`");
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    methods.sort();
    methods.dedup();
    methods
}

/// Gauges read at scrape time from the parts that own the state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub pool_max: u32,
    /// Open connections (in use + idle).
    pub pool_size: u32,
    pub pool_idle: u32,
    /// Requests waiting for a connection right now.
    pub pool_waiting: u64,
    pub database_breaker_open: bool,
    /// `None` without a Redis tier (its series are then left out).
    pub redis_breaker_open: Option<bool>,
    pub invalidation_listener_connected: bool,
    /// Connected, but its own probe notification did not arrive.
    pub invalidation_listener_deaf: bool,
}

impl Metrics {
    pub fn new() -> Self {
        let mut methods: Vec<MethodStats> = served_methods()
            .iter()
            .map(|m| MethodStats::new(m))
            .collect();
        let by_path = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("/{}", m.label).into_boxed_str(), i))
            .collect();
        methods.push(MethodStats::new(OTHER_METHOD));
        Metrics(Arc::new(Registry {
            methods: methods.into_boxed_slice(),
            by_path,
            memory_routes: Lookups::default(),
            memory_callers: Lookups::default(),
            redis_routes: Lookups::default(),
            redis_errors: RedisErrors::default(),
            invalidations: Invalidations::default(),
            calls: CallMetrics::default(),
            started: SystemTime::now(),
        }))
    }
}

impl Registry {
    /// The method a request path names (`other` if none).
    pub fn method(&self, path: &str) -> MethodId {
        MethodId(
            self.by_path
                .get(path)
                .copied()
                .unwrap_or(self.methods.len() - 1),
        )
    }

    /// `package.Service/Method`, or `other`.
    pub fn method_label(&self, method: MethodId) -> &str {
        &self.methods[method.0].label
    }

    /// One finished call: `tier` is the `x-switchboard-cache` value, if any.
    pub fn record_request(
        &self,
        method: MethodId,
        code: Code,
        tier: Option<&[u8]>,
        elapsed: Duration,
    ) {
        let stats = &self.methods[method.0];
        let code = usize::try_from(code as i32)
            .ok()
            .filter(|&c| c < CODE_NAMES.len())
            .unwrap_or(Code::Unknown as usize);
        stats.codes[code].inc();
        let tier = match tier {
            Some(b"memory") => 1,
            Some(b"redis") => 2,
            Some(b"db") => 3,
            _ => 0,
        };
        stats.latency[tier].observe(elapsed);
    }

    /// Calls of `method` (a `package.Service/Method` label) that ended with
    /// `code`; for tests and the bench.
    pub fn requests(&self, method: &str, code: Code) -> u64 {
        self.methods
            .iter()
            .find(|m| &*m.label == method)
            .and_then(|m| m.codes.get(code as usize))
            .map_or(0, Counter::get)
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        self.snapshot(gauges).to_prometheus()
    }

    /// Every series, read now: what `/metrics` renders and OTLP pushes. The
    /// one list of what switchboard measures; the encoders only walk it.
    pub fn snapshot(&self, gauges: &Gauges) -> Snapshot<'_> {
        let requests = self
            .methods
            .iter()
            .flat_map(|stats| {
                CODE_NAMES
                    .iter()
                    .zip(&stats.codes)
                    .filter_map(move |(code, counter)| {
                        let value = counter.get();
                        // Series appear on first use: 17 codes × every method
                        // would be mostly zeros.
                        (value > 0).then(|| {
                            Series::labelled(
                                vec![("method", &*stats.label), ("code", code)],
                                Value::Number(value),
                            )
                        })
                    })
            })
            .collect();
        let latency = self
            .methods
            .iter()
            .flat_map(|stats| {
                TIER_NAMES
                    .iter()
                    .zip(&stats.latency)
                    .filter_map(move |(tier, histogram)| {
                        let histogram = histogram.snapshot();
                        (histogram.count() > 0).then(|| {
                            Series::labelled(
                                vec![("method", &*stats.label), ("tier", tier)],
                                Value::Histogram(histogram),
                            )
                        })
                    })
            })
            .collect();
        let mut families = vec![
            Family {
                name: "switchboard.grpc.requests",
                unit: "{request}",
                kind: Kind::Counter,
                help: "gRPC calls finished, by method and status code.",
                series: requests,
            },
            Family {
                name: "switchboard.grpc.request.duration",
                unit: "s",
                kind: Kind::Histogram,
                help: "gRPC call latency in the server, by method and the cache tier that answered (ResolveAgent; none otherwise).",
                series: latency,
            },
            Family {
                name: "switchboard.build.info",
                unit: "",
                kind: Kind::Gauge,
                help: "Always 1: the build's version and the IANA time zone database release business hours are evaluated with (zones change with it).",
                series: vec![Series::labelled(
                    vec![
                        ("version", env!("CARGO_PKG_VERSION")),
                        ("tzdb", crate::domain::TZDB_VERSION),
                    ],
                    Value::Number(1),
                )],
            },
        ];

        let redis = gauges.redis_breaker_open.is_some();
        let lookups = [
            ("memory", "route", &self.memory_routes, false),
            ("memory", "caller", &self.memory_callers, false),
        ]
        .into_iter()
        .chain(redis.then_some(("redis", "route", &self.redis_routes, true)))
        .flat_map(|(tier, entry, counts, can_fail)| {
            let mut results = vec![("hit", &counts.hit), ("miss", &counts.miss)];
            if can_fail {
                results.push(("error", &counts.error));
            }
            results.into_iter().map(move |(result, counter)| {
                Series::labelled(
                    vec![("tier", tier), ("entry", entry), ("result", result)],
                    Value::Number(counter.get()),
                )
            })
        })
        .collect();
        families.push(Family {
            name: "switchboard.cache.lookups",
            unit: "{lookup}",
            kind: Kind::Counter,
            help: "Cache lookups by tier, entry kind and result; hit ratio = hit / sum.",
            series: lookups,
        });
        if let Some(open) = gauges.redis_breaker_open {
            families.push(Family::by_label(
                ("switchboard.redis.errors", "{error}", Kind::Counter),
                "Redis calls that failed, by kind (a failure is a cache miss, never a call error).",
                "kind",
                [
                    ("timeout", self.redis_errors.timeout.get()),
                    ("error", self.redis_errors.failed.get()),
                ],
            ));
            families.push(Family::gauge(
                "switchboard.redis.breaker.open",
                "",
                "1 while the Redis circuit breaker skips Redis.",
                u64::from(open),
            ));
        }
        families.push(Family::gauge(
            "switchboard.database.breaker.open",
            "",
            "1 while the database circuit breaker fails cache misses at once.",
            u64::from(gauges.database_breaker_open),
        ));
        families.push(Family::by_label(
            (
                "switchboard.invalidations.received",
                "{invalidation}",
                Kind::Counter,
            ),
            "Cache invalidations received, by source: outbox rows applied (postgres), fan-out messages (redis).",
            "source",
            [
                ("postgres", self.invalidations.postgres.get()),
                ("redis", self.invalidations.redis.get()),
            ],
        ));
        families.push(Family::gauge(
            "switchboard.invalidation.listener.connected",
            "",
            "1 while the Postgres invalidation listener is connected (only then are new fills kept in memory).",
            u64::from(gauges.invalidation_listener_connected),
        ));
        families.push(Family::gauge(
            "switchboard.invalidation.listener.deaf",
            "",
            "1 while the Postgres invalidation listener is connected but does not hear its own probe notification (LISTEN through a transaction pooler?): nothing is kept in memory meanwhile.",
            u64::from(gauges.invalidation_listener_deaf),
        ));
        families.push(Family::counter(
            "switchboard.invalidation.notifications",
            "{notification}",
            "Notifications the Postgres invalidation listener received: wake-ups only (probes and forged ones included); what changed is read from the outbox.",
            self.invalidations.notifications.get(),
        ));
        families.push(Family::counter(
            "switchboard.invalidation.outbox.reads",
            "{read}",
            "Reads of the Postgres invalidation outbox (at most one per notification, forged ones included).",
            self.invalidations.outbox_reads.get(),
        ));
        families.push(Family::counter(
            "switchboard.invalidation.probes.unheard",
            "{probe}",
            "Probe notifications this replica sent that its own listener did not receive in time.",
            self.invalidations.probes_unheard.get(),
        ));
        let decisions = Outcome::ALL
            .iter()
            .flat_map(|outcome| {
                Reason::ALL.iter().filter_map(move |reason| {
                    let value = self.calls.decisions(*outcome, *reason);
                    (value > 0).then(|| {
                        Series::labelled(
                            vec![("outcome", outcome.as_db()), ("reason", reason.as_db())],
                            Value::Number(value),
                        )
                    })
                })
            })
            .collect();
        families.push(Family {
            name: "switchboard.calls.decisions",
            unit: "{call}",
            kind: Kind::Counter,
            help: "StartCall decisions by outcome and reason (numbers no one owns included; retries not).",
            series: decisions,
        });
        families.push(Family::by_label(
            (
                "switchboard.calls.admission.failures",
                "{call}",
                Kind::Counter,
            ),
            "StartCalls whose limits Redis could not check, by what was done: answered anyway (open) or refused.",
            "mode",
            [
                ("open", self.calls.admission_failed_open.get()),
                ("refused", self.calls.admission_failed_refused.get()),
            ],
        ));
        families.push(Family::counter(
            "switchboard.calls.lease.expiries",
            "{call}",
            "Call slots freed because their lease ran out (no KeepCallAlive in time).",
            self.calls.lease_expiries.get(),
        ));
        families.push(Family::by_label(
            ("switchboard.calls.records", "{record}", Kind::Counter),
            "Call records not written straight to Postgres, by fate: kept in the Redis backlog, replayed from it, skipped (refusals past the per-organization bound), dropped (refused for good), lost (neither store took it).",
            "fate",
            [
                ("backlogged", self.calls.records_backlogged.get()),
                ("replayed", self.calls.records_replayed.get()),
                ("skipped", self.calls.records_skipped.get()),
                ("dropped", self.calls.records_dropped.get()),
                ("lost", self.calls.records_lost.get()),
            ],
        ));
        let in_use = gauges.pool_size.saturating_sub(gauges.pool_idle);
        families.push(Family::by_label(
            (
                "switchboard.db.pool.connections",
                "{connection}",
                Kind::Gauge,
            ),
            "Postgres pool connections by state.",
            "state",
            [("in_use", in_use.into()), ("idle", gauges.pool_idle.into())],
        ));
        families.push(Family::gauge(
            "switchboard.db.pool.max_connections",
            "{connection}",
            "The pool's limit (SWITCHBOARD_DB_MAX_CONNECTIONS).",
            u64::from(gauges.pool_max),
        ));
        families.push(Family::gauge(
            "switchboard.db.pool.waiting",
            "{request}",
            "Requests waiting for a Postgres connection now.",
            gauges.pool_waiting,
        ));
        Snapshot {
            start: self.started,
            time: SystemTime::now(),
            families,
        }
    }
}

/// Every series of one registry, read at one moment.
pub struct Snapshot<'a> {
    /// When the registry was made: where every counter and histogram
    /// started from (they are cumulative since then).
    pub start: SystemTime,
    /// When the series were read.
    pub time: SystemTime,
    pub families: Vec<Family<'a>>,
}

/// One metric and its series.
pub struct Family<'a> {
    /// The OpenTelemetry name. The Prometheus name is derived from it, the
    /// unit and the kind by OpenTelemetry's Prometheus compatibility rules
    /// (see `prometheus_name`), so a collector that turns the OTLP push back
    /// into Prometheus series yields the names `/metrics` serves.
    pub name: &'static str,
    /// UCUM, as OTLP states it: `s`, an annotation such as `{request}`, or
    /// empty for a 0/1 state.
    pub unit: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub series: Vec<Series<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic, cumulative since `Snapshot::start`.
    Counter,
    /// A value now.
    Gauge,
    /// Cumulative since `Snapshot::start`, over `latency_bounds_seconds`.
    Histogram,
}

pub struct Series<'a> {
    /// Label (attribute) names and values, in a fixed order.
    pub labels: Vec<(&'static str, &'a str)>,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A counter's total or a gauge's value.
    Number(u64),
    Histogram(HistogramSnapshot),
}

/// A histogram's buckets read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative: bucket `i` holds those above
    /// bound `i - 1` up to and including bound `i`; the last one those above
    /// every bound. The layout OTLP's explicit-bucket histogram uses.
    pub counts: [u64; LATENCY_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// The sum of the buckets read, so it agrees with them even while
    /// requests are being recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// The latency buckets' upper bounds (inclusive), in seconds.
pub fn latency_bounds_seconds() -> impl ExactSizeIterator<Item = f64> {
    LATENCY_BOUNDS_NS.iter().map(|&bound| bound as f64 / 1e9)
}

impl<'a> Series<'a> {
    fn labelled(labels: Vec<(&'static str, &'a str)>, value: Value) -> Self {
        Series { labels, value }
    }
}

impl Family<'_> {
    /// A gauge of one unlabelled series.
    fn gauge(name: &'static str, unit: &'static str, help: &'static str, value: u64) -> Self {
        Family::unlabelled((name, unit, Kind::Gauge), help, value)
    }

    /// A counter of one unlabelled series.
    fn counter(name: &'static str, unit: &'static str, help: &'static str, value: u64) -> Self {
        Family::unlabelled((name, unit, Kind::Counter), help, value)
    }

    fn unlabelled(
        (name, unit, kind): (&'static str, &'static str, Kind),
        help: &'static str,
        value: u64,
    ) -> Self {
        Family {
            name,
            unit,
            kind,
            help,
            series: vec![Series::labelled(Vec::new(), Value::Number(value))],
        }
    }

    /// Series that differ in one label.
    fn by_label(
        (name, unit, kind): (&'static str, &'static str, Kind),
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (&'static str, u64)>,
    ) -> Self {
        let series = values
            .into_iter()
            .map(|(value, number)| Series::labelled(vec![(label, value)], Value::Number(number)))
            .collect();
        Family {
            name,
            unit,
            kind,
            help,
            series,
        }
    }

    /// Dots become underscores, the unit `s` adds `_seconds`, a counter
    /// `_total`; annotations (`{request}`) add nothing.
    pub fn prometheus_name(&self) -> String {
        let mut name = self.name.replace('.', "_");
        if self.unit == "s" {
            name.push_str("_seconds");
        }
        if self.kind == Kind::Counter {
            name.push_str("_total");
        }
        name
    }
}

impl Snapshot<'_> {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        for family in &self.families {
            // Writing to a String cannot fail.
            let _ = write_family(&mut out, family);
        }
        out
    }
}

fn write_family(out: &mut String, family: &Family<'_>) -> std::fmt::Result {
    let name = family.prometheus_name();
    let kind = match family.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    writeln!(out, "# HELP {name} {}", family.help)?;
    writeln!(out, "# TYPE {name} {kind}")?;
    for series in &family.series {
        let mut labels = String::new();
        for (key, value) in &series.labels {
            if !labels.is_empty() {
                labels.push(',');
            }
            // Label values are our own names (descriptor methods, codes,
            // tiers): nothing to escape.
            write!(labels, "{key}=\"{value}\"")?;
        }
        match &series.value {
            Value::Number(value) if labels.is_empty() => writeln!(out, "{name} {value}")?,
            Value::Number(value) => writeln!(out, "{name}{{{labels}}} {value}")?,
            Value::Histogram(histogram) => write_histogram(out, &name, &labels, histogram)?,
        }
    }
    Ok(())
}

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    histogram: &HistogramSnapshot,
) -> std::fmt::Result {
    let (bucket_prefix, braced) = if labels.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{labels},"), format!("{{{labels}}}"))
    };
    let mut cumulative = 0;
    for (seconds, count) in latency_bounds_seconds().zip(&histogram.counts) {
        cumulative += count;
        writeln!(
            out,
            "{name}_bucket{{{bucket_prefix}le=\"{seconds}\"}} {cumulative}"
        )?;
    }
    let total = histogram.count();
    writeln!(out, "{name}_bucket{{{bucket_prefix}le=\"+Inf\"}} {total}")?;
    writeln!(out, "{name}_sum{braced} {}", histogram.sum_seconds())?;
    writeln!(out, "{name}_count{braced} {total}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptors() {
        let metrics = Metrics::new();
        let resolve = metrics.method("/switchboard.v1.AgentService/ResolveAgent");
        assert_eq!(
            metrics.method_label(resolve),
            "switchboard.v1.AgentService/ResolveAgent"
        );
        let health = metrics.method("/grpc.health.v1.Health/Check");
        assert_eq!(metrics.method_label(health), "grpc.health.v1.Health/Check");
        let made_up = metrics.method("/switchboard.v1.AgentService/Nope");
        assert_eq!(metrics.method_label(made_up), OTHER_METHOD);
        assert_eq!(made_up, metrics.method("/x"));
    }

    #[test]
    fn buckets_are_inclusive_and_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50)); // on the first bound
        histogram.observe(Duration::from_micros(51));
        histogram.observe(Duration::from_secs(60)); // beyond the last
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 3);
        let mut out = String::new();
        write_histogram(&mut out, "h", "m=\"x\"", &snapshot).unwrap_or_default();
        assert!(
            out.contains("h_bucket{m=\"x\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("h_bucket{m=\"x\",le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{m=\"x\",le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{m=\"x\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_count{m=\"x\"} 3\n"), "{out}");
        assert!(out.contains("h_sum{m=\"x\"} 60.000101\n"), "{out}");
    }

    #[test]
    fn requests_are_counted_by_method_code_and_tier() {
        let metrics = Metrics::new();
        let resolve = metrics.method("/switchboard.v1.AgentService/ResolveAgent");
        metrics.record_request(
            resolve,
            Code::Ok,
            Some(b"memory"),
            Duration::from_micros(80),
        );
        metrics.record_request(resolve, Code::NotFound, None, Duration::from_millis(1));
        let text = metrics.render(&Gauges::default());
        assert!(text.contains(
            "switchboard_grpc_requests_total{method=\"switchboard.v1.AgentService/ResolveAgent\",code=\"OK\"} 1\n"
        ));
        assert!(text.contains(
            "switchboard_grpc_requests_total{method=\"switchboard.v1.AgentService/ResolveAgent\",code=\"NotFound\"} 1\n"
        ));
        assert!(text.contains(
            "switchboard_grpc_request_duration_seconds_count{method=\"switchboard.v1.AgentService/ResolveAgent\",tier=\"memory\"} 1\n"
        ));
        assert!(
            !text.contains("ResolveAgent\",tier=\"redis\""),
            "unused series stay out"
        );
        assert_eq!(
            metrics.requests("switchboard.v1.AgentService/ResolveAgent", Code::Ok),
            1
        );
        assert!(
            !text.contains("switchboard_redis_"),
            "no Redis tier, no Redis series"
        );
        let with_redis = metrics.render(&Gauges {
            redis_breaker_open: Some(true),
            ..Gauges::default()
        });
        assert!(with_redis.contains("\nswitchboard_redis_breaker_open 1\n"));
        assert!(with_redis.contains("tier=\"redis\",entry=\"route\",result=\"error\"} 0\n"));
    }
}
