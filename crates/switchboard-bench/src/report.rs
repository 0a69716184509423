//! ghz's report: the JSON shape its dashboards and scripts read, and the
//! human summary it prints by default.
//!
//! As in ghz: `count`, `average`, `fastest`, `slowest` cover every call;
//! `latencyDistribution` and `histogram` cover the calls that answered OK
//! (the admitted ones, under load shedding). Durations are integer
//! nanoseconds, histogram marks are seconds. We add the 99.9th percentile.
//! Per-call `details` are not kept (memory stays bounded on long runs).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use tonic::Code;

use super::{
    args::{Plan, Stop},
    runner::Recorder,
};

const PERCENTILES: [(u32, u32); 8] = [
    // (per mille, shown as)
    (100, 10),
    (250, 25),
    (500, 50),
    (750, 75),
    (900, 90),
    (950, 95),
    (990, 99),
    (999, 999),
];
const HISTOGRAM_BUCKETS: usize = 10;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub date: String,
    pub end_reason: String,
    pub options: Options,
    pub count: u64,
    pub total: u64,
    pub average: u64,
    pub fastest: u64,
    pub slowest: u64,
    pub rps: f64,
    pub error_distribution: BTreeMap<String, u64>,
    pub status_code_distribution: BTreeMap<String, u64>,
    pub latency_distribution: Vec<LatencyPoint>,
    pub histogram: Vec<Bucket>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    pub call: String,
    pub host: String,
    pub insecure: bool,
    pub total: u64,
    pub concurrency: usize,
    pub connections: usize,
    pub rps: u64,
    /// Nanoseconds, 0 when the run was by count.
    pub duration: u64,
    pub timeout: u64,
    pub data: Value,
    /// Keys only with values, except `authorization`, which is redacted.
    pub metadata: BTreeMap<String, String>,
    /// Not in ghz: how latency was counted.
    pub latency_from: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatencyPoint {
    /// An integer (10 … 99) as in ghz, and 99.9.
    pub percentage: Number,
    /// Nanoseconds.
    pub latency: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    /// Upper bound of the bucket, seconds.
    pub mark: f64,
    pub count: u64,
    pub frequency: f64,
}

/// Go's name for a gRPC code, as ghz prints it (`NotFound`, `Canceled`).
pub struct StatusName(pub &'static str);

impl StatusName {
    pub fn of(code: Code) -> StatusName {
        StatusName(match code {
            Code::Ok => "OK",
            Code::Cancelled => "Canceled",
            Code::Unknown => "Unknown",
            Code::InvalidArgument => "InvalidArgument",
            Code::DeadlineExceeded => "DeadlineExceeded",
            Code::NotFound => "NotFound",
            Code::AlreadyExists => "AlreadyExists",
            Code::PermissionDenied => "PermissionDenied",
            Code::ResourceExhausted => "ResourceExhausted",
            Code::FailedPrecondition => "FailedPrecondition",
            Code::Aborted => "Aborted",
            Code::OutOfRange => "OutOfRange",
            Code::Unimplemented => "Unimplemented",
            Code::Internal => "Internal",
            Code::Unavailable => "Unavailable",
            Code::DataLoss => "DataLoss",
            Code::Unauthenticated => "Unauthenticated",
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Report {
    pub fn new(
        plan: &Plan,
        date: DateTime<Utc>,
        end_reason: &str,
        total: Duration,
        recorded: Recorder,
    ) -> Report {
        let ok = &recorded.ok;
        let latency_distribution = if ok.is_empty() {
            Vec::new()
        } else {
            PERCENTILES
                .iter()
                .map(|&(per_mille, shown)| LatencyPoint {
                    percentage: if shown == 999 {
                        Number::from_f64(99.9).unwrap_or_else(|| Number::from(99))
                    } else {
                        Number::from(shown)
                    },
                    latency: ok.value_at_quantile(f64::from(per_mille) / 1000.0),
                })
                .collect()
        };
        let histogram = histogram(ok);
        let status_code_distribution = recorded
            .statuses
            .iter()
            .map(|(&code, &n)| (StatusName::of(Code::from_i32(code)).0.to_owned(), n))
            .collect();
        let count = recorded.count;
        let seconds = total.as_secs_f64();
        let (duration, total_calls) = match plan.stop {
            Stop::Duration(d) => (nanos(d), 0),
            Stop::Total(n) => (0, n),
        };
        let metadata = plan
            .metadata
            .iter()
            .map(|(k, v)| {
                let shown = if k == "authorization" {
                    "[redacted]".to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect();
        Report {
            date: date.to_rfc3339_opts(SecondsFormat::Secs, true),
            end_reason: end_reason.to_owned(),
            options: Options {
                call: format!("{}.{}", plan.service, plan.method),
                host: plan.host.clone(),
                insecure: true,
                total: total_calls,
                concurrency: plan.concurrency,
                connections: plan.connections,
                rps: plan.rps.unwrap_or(0),
                duration,
                timeout: nanos(plan.timeout),
                data: match plan.data.as_slice() {
                    [one] => one.clone(),
                    many => Value::Array(many.to_vec()),
                },
                metadata,
                latency_from: if plan.rps.is_some() { "due" } else { "send" }.to_owned(),
            },
            count,
            total: nanos(total),
            average: if count == 0 {
                0
            } else {
                u64::try_from(recorded.sum_ns / u128::from(count)).unwrap_or(u64::MAX)
            },
            fastest: if count == 0 { 0 } else { recorded.fastest_ns },
            slowest: recorded.slowest_ns,
            rps: if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            },
            error_distribution: recorded.errors.into_iter().collect(),
            status_code_distribution,
            latency_distribution,
            histogram,
        }
    }

    /// The percentile's latency in nanoseconds, if any call answered OK.
    pub fn percentile(&self, percentage: f64) -> Option<u64> {
        self.latency_distribution
            .iter()
            .find(|p| p.percentage.as_f64() == Some(percentage))
            .map(|p| p.latency)
    }

    /// The table ghz prints by default.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let ms = |ns: u64| format!("{:.3} ms", ns as f64 / 1e6);
        let _ = writeln!(out, "\nSummary:");
        let _ = writeln!(out, "  Count:\t{}", self.count);
        let _ = writeln!(out, "  Total:\t{}", ms(self.total));
        let _ = writeln!(out, "  Slowest:\t{}", ms(self.slowest));
        let _ = writeln!(out, "  Fastest:\t{}", ms(self.fastest));
        let _ = writeln!(out, "  Average:\t{}", ms(self.average));
        let _ = writeln!(out, "  Requests/sec:\t{:.2}", self.rps);
        if !self.histogram.is_empty() {
            let _ = writeln!(out, "\nResponse time histogram (OK calls):");
            let max = self
                .histogram
                .iter()
                .map(|b| b.count)
                .max()
                .unwrap_or(0)
                .max(1);
            for bucket in &self.histogram {
                let bar = "∎".repeat(((bucket.count * 40) / max) as usize);
                let _ = writeln!(out, "  {:.3} [{}]\t|{bar}", bucket.mark * 1e3, bucket.count);
            }
        }
        if !self.latency_distribution.is_empty() {
            let from = if self.options.latency_from == "due" {
                " (counted from when each call was due)"
            } else {
                ""
            };
            let _ = writeln!(out, "\nLatency distribution{from}:");
            for point in &self.latency_distribution {
                let _ = writeln!(out, "  {} % in {}", point.percentage, ms(point.latency));
            }
        }
        let _ = writeln!(out, "\nStatus code distribution:");
        for (name, n) in &self.status_code_distribution {
            let _ = writeln!(out, "  [{name}]\t{n} responses");
        }
        if !self.error_distribution.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (text, n) in &self.error_distribution {
                let _ = writeln!(out, "  [{n}]\t{text}");
            }
        }
        out
    }
}

/// ghz's histogram: 10 equal buckets from the fastest to the slowest OK
/// call, plus one at the slowest; each call counted in the first bucket
/// whose mark is at least its latency.
fn histogram(ok: &hdrhistogram::Histogram<u64>) -> Vec<Bucket> {
    if ok.is_empty() {
        return Vec::new();
    }
    let fastest = ok.min() as f64;
    let slowest = ok.max() as f64;
    let step = (slowest - fastest) / HISTOGRAM_BUCKETS as f64;
    let mut marks: Vec<f64> = (0..HISTOGRAM_BUCKETS)
        .map(|i| fastest + step * i as f64)
        .collect();
    marks.push(slowest);
    let mut counts = vec![0u64; marks.len()];
    let mut bucket = 0;
    for value in ok.iter_recorded() {
        // The low end of the value's HDR bucket: the fastest call lands in
        // the first bucket, whose mark is the fastest, as in ghz.
        let latency = ok.lowest_equivalent(value.value_iterated_to()) as f64;
        while bucket < marks.len() - 1 && latency > marks[bucket] {
            bucket += 1;
        }
        counts[bucket] += value.count_at_value();
    }
    let total = ok.len() as f64;
    marks
        .into_iter()
        .zip(counts)
        .map(|(mark, count)| Bucket {
            mark: mark / 1e9,
            count,
            frequency: count as f64 / total,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::OutputFormat;

    fn plan() -> Plan {
        Plan {
            host: "127.0.0.1:1".into(),
            endpoint: "http://127.0.0.1:1".into(),
            service: "switchboard.v1.AgentService".into(),
            method: "ResolveAgent".into(),
            data: vec![serde_json::json!({"called": "+18005550100"})],
            metadata: vec![
                ("authorization".into(), "Bearer secret-token".into()),
                ("x-trace".into(), "abc".into()),
            ],
            concurrency: 4,
            connections: 1,
            stop: Stop::Total(1000),
            rps: None,
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            format: OutputFormat::Json,
            output: None,
        }
    }

    fn recorded() -> Recorder {
        let mut r = Recorder::new();
        for i in 1..=990u64 {
            r.record(Duration::from_micros(100 + i), Ok(()));
        }
        for _ in 0..7 {
            r.record(
                Duration::from_micros(50),
                Err(tonic::Status::not_found("no agent answers this number")),
            );
        }
        for _ in 0..3 {
            r.record(
                Duration::from_millis(5),
                Err(tonic::Status::unavailable("down")),
            );
        }
        r
    }

    /// A normal end after 500 ms of `recorded()` calls.
    fn half_second_report() -> Report {
        Report::new(
            &plan(),
            Utc::now(),
            "normal",
            Duration::from_millis(500),
            recorded(),
        )
    }

    #[test]
    fn the_json_has_ghz_shape() {
        let report = half_second_report();
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "date",
            "endReason",
            "options",
            "count",
            "total",
            "average",
            "fastest",
            "slowest",
            "rps",
            "errorDistribution",
            "statusCodeDistribution",
            "latencyDistribution",
            "histogram",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["count"], 1000);
        assert_eq!(json["total"], 500_000_000u64);
        assert_eq!(json["rps"], 2000.0);
        assert_eq!(json["fastest"], 50_000);
        assert_eq!(json["slowest"], 5_000_000);
        assert!(json["total"].is_u64() && json["average"].is_u64());
        assert_eq!(
            json["statusCodeDistribution"],
            serde_json::json!({"OK": 990, "NotFound": 7, "Unavailable": 3})
        );
        assert_eq!(
            json["errorDistribution"],
            serde_json::json!({
                "rpc error: code = NotFound desc = no agent answers this number": 7,
                "rpc error: code = Unavailable desc = down": 3
            })
        );
        let points = json["latencyDistribution"].as_array().unwrap();
        let percentages: Vec<String> = points.iter().map(|p| p["percentage"].to_string()).collect();
        assert_eq!(
            percentages,
            ["10", "25", "50", "75", "90", "95", "99", "99.9"],
            "integers as in ghz (Go decodes them into int), then 99.9"
        );
        // Over OK calls only: 101 µs … 1090 µs; p50 ≈ 595 µs within HDR's 0.1 %.
        let p50 = report.percentile(50.0).unwrap();
        assert!((594_000..=597_000).contains(&p50), "p50 {p50}");
        let p999 = report.percentile(99.9).unwrap();
        assert!((1_088_000..=1_091_000).contains(&p999), "p99.9 {p999}");
        let buckets = json["histogram"].as_array().unwrap();
        assert_eq!(buckets.len(), 11);
        let counted: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, 990, "the histogram holds the OK calls");
        assert!(
            buckets[0]["count"].as_u64().unwrap() >= 1,
            "the fastest is in the first bucket"
        );
        let first_mark = buckets[0]["mark"].as_f64().unwrap();
        assert!(
            (first_mark - 0.000101).abs() < 1e-6,
            "marks in seconds: {first_mark}"
        );
        let frequencies: f64 = buckets
            .iter()
            .map(|b| b["frequency"].as_f64().unwrap())
            .sum();
        assert!((frequencies - 1.0).abs() < 1e-9);
        assert_eq!(json["options"]["metadata"]["authorization"], "[redacted]");
        assert_eq!(json["options"]["metadata"]["x-trace"], "abc");
        assert_eq!(json["options"]["total"], 1000);
        assert_eq!(
            json["options"]["call"],
            "switchboard.v1.AgentService.ResolveAgent"
        );
        assert!(!json.to_string().contains("secret-token"));
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report, "the report reads back");
    }

    #[test]
    fn the_summary_is_a_table() {
        let report = half_second_report();
        let text = report.summary();
        for line in [
            "Summary:",
            "  Count:\t1000",
            "  Total:\t500.000 ms",
            "  Requests/sec:\t2000.00",
            "Response time histogram",
            "Latency distribution:",
            "  99.9 % in 1.0",
            "  [OK]\t990 responses",
            "  [NotFound]\t7 responses",
            "  [3]\trpc error: code = Unavailable desc = down",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn no_ok_call_means_no_distribution() {
        let mut r = Recorder::new();
        r.record(
            Duration::from_millis(1),
            Err(tonic::Status::unauthenticated("no")),
        );
        let report = Report::new(&plan(), Utc::now(), "normal", Duration::from_millis(1), r);
        assert!(report.latency_distribution.is_empty());
        assert!(report.histogram.is_empty());
        assert_eq!(report.status_code_distribution["Unauthenticated"], 1);
        assert!(report.summary().contains("[Unauthenticated]"));
    }

    #[test]
    fn codes_have_go_names() {
        for (code, name) in [
            (Code::Ok, "OK"),
            (Code::Cancelled, "Canceled"),
            (Code::NotFound, "NotFound"),
            (Code::ResourceExhausted, "ResourceExhausted"),
            (Code::Unauthenticated, "Unauthenticated"),
        ] {
            assert_eq!(StatusName::of(code).0, name);
        }
    }
}
