//! `switchboard-bench`, the ghz-compatible load tool, against a real
//! switchboard (the test kit's server over its own database): reflection,
//! JSON requests, metadata, counts and the report.

use std::{process::Output, time::Duration};

use tokio::process::Command;

use clap::Parser;
use serde_json::Value;
use switchboard_bench::{BenchArgs, LoadError, Report};
use switchboard_testkit::direct::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

async fn run(flags: &[&str]) -> Result<Report, LoadError> {
    let mut argv = vec!["bench"];
    argv.extend_from_slice(flags);
    let plan = Cli::try_parse_from(argv)
        .map_err(|e| LoadError::Usage(e.to_string()))?
        .args
        .into_plan()?;
    switchboard_bench::run(&plan).await
}

/// `switchboard-bench …` as a user runs it; killed if it outlives 20 s.
async fn bench_binary(flags: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(flags)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), child)
        .await
        .unwrap_or_else(|_| panic!("switchboard-bench {flags:?} did not finish in 20 s"))
        .unwrap_or_else(|e| panic!("cannot run switchboard-bench: {e}"))
}

const RESOLVE: &str = "--call=switchboard.v1.AgentService.ResolveAgent";

#[tokio::test]
async fn cycles_the_requests_and_counts_every_status() {
    let app = TestApp::spawn().await;
    let host = app.addr.to_string();
    let auth = format!("authorization: Bearer {}", token(Who::Service));
    let report = run(&[
        RESOLVE,
        "-d",
        &format!(r#"{{"called_number":"{ACME_NUMBER}","caller_number":"{SHARED_CALLER}"}}"#),
        "-d",
        &format!(r#"[{{"called_number":"{BLUEBIRD_NUMBER}"}},{{"called_number":"+19995550000"}}]"#),
        "-H",
        &auth,
        "-c",
        "4",
        "-n",
        "90",
        "--connections",
        "2",
        &host,
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.count, 90);
    assert_eq!(report.end_reason, "normal");
    assert_eq!(report.status_code_distribution.get("OK"), Some(&60));
    assert_eq!(
        report.status_code_distribution.get("NotFound"),
        Some(&30),
        "every third request names a number nobody answers"
    );
    assert_eq!(
        report
            .error_distribution
            .get("rpc error: code = NotFound desc = no agent answers this number"),
        Some(&30)
    );
    let latencies: Vec<u64> = report
        .latency_distribution
        .iter()
        .map(|p| p.latency)
        .collect();
    assert_eq!(latencies.len(), 8);
    assert!(latencies.windows(2).all(|w| w[0] <= w[1]), "{latencies:?}");
    assert!(report.fastest > 0 && report.fastest <= report.average);
    assert!(report.average <= report.slowest);
    assert!(report.rps > 0.0);
    let in_histogram: u64 = report.histogram.iter().map(|b| b.count).sum();
    assert_eq!(in_histogram, 60, "the histogram holds the OK calls");
}

#[tokio::test]
async fn the_binary_prints_ghz_json_and_paces_an_open_loop() {
    let app = TestApp::spawn().await;
    let metadata = format!(r#"{{"authorization":"Bearer {}"}}"#, token(Who::AcmeViewer));
    let output = bench_binary(&[
        "--call",
        "switchboard.v1.CustomerService/LookupCustomer",
        "-d",
        &format!(r#"{{"phone":"{SHARED_CALLER}"}}"#),
        "-m",
        &metadata,
        "-c",
        "8",
        "-z",
        "1s",
        "-r",
        "200",
        "-O",
        "json",
        &app.addr.to_string(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(json["endReason"], "timeout");
    let count = json["count"].as_u64().unwrap();
    assert!(
        (180..=201).contains(&count),
        "200 calls per second for one second, paced: {count}"
    );
    assert_eq!(json["statusCodeDistribution"]["OK"].as_u64(), Some(count));
    assert_eq!(json["options"]["latencyFrom"], "due");
    assert_eq!(json["options"]["rps"], 200);
    assert_eq!(json["options"]["duration"], 1_000_000_000u64);
    assert_eq!(json["options"]["metadata"]["authorization"], "[redacted]");
    for key in ["total", "average", "fastest", "slowest"] {
        assert!(
            json[key].is_u64(),
            "{key} is integer nanoseconds: {}",
            json[key]
        );
    }
    let total = json["total"].as_u64().unwrap();
    assert!(
        Duration::from_nanos(total) >= Duration::from_millis(990),
        "the run lasted its -z: {total} ns"
    );
}

#[tokio::test]
async fn a_refused_token_is_counted_not_fatal() {
    let app = TestApp::spawn().await;
    let report = run(&[
        RESOLVE,
        "-d",
        &format!(r#"{{"called_number":"{ACME_NUMBER}"}}"#),
        "-H",
        "authorization: Bearer not-a-token",
        "-c",
        "2",
        "-n",
        "10",
        &app.addr.to_string(),
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.status_code_distribution.get("Unauthenticated"),
        Some(&10)
    );
    assert!(report.latency_distribution.is_empty());
}

#[tokio::test]
async fn mistakes_stop_before_the_first_call_with_a_clear_message() {
    let app = TestApp::spawn().await;
    let host = app.addr.to_string();
    for (flags, says) in [
        (
            vec!["--call=switchboard.v1.AgentService.Resolve", host.as_str()],
            "has no method Resolve (it has: ResolveAgent, GetAgent",
        ),
        (
            vec!["--call=switchboard.v9.Nope.Call", host.as_str()],
            "no service switchboard.v9.Nope",
        ),
        (
            vec![RESOLVE, "-d", r#"{"called":"+1"}"#, host.as_str()],
            "request #1 is not a valid switchboard.v1.ResolveAgentRequest",
        ),
        (
            vec![RESOLVE, "-d", r#"{"called_number":5}"#, host.as_str()],
            "request #1 is not a valid",
        ),
        (
            vec![RESOLVE, "127.0.0.1:9"],
            "cannot connect to 127.0.0.1:9",
        ),
    ] {
        let error = run(&flags).await.map(|r| r.count).unwrap_err().to_string();
        assert!(error.contains(says), "{flags:?}: {error}");
    }
    let output = bench_binary(&["--call=switchboard.v1.AgentService.Nope", &host]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("has no method Nope"));
    assert!(output.stdout.is_empty());
}
