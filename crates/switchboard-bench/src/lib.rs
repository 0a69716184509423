//! `switchboard-bench`: a load tool that speaks ghz's language, for
//! operators who cannot install ghz. A client of any gRPC server with
//! reflection: it depends on nothing of the service (not even its protobuf
//! types), and the service's binary and image do not carry it.
//!
//! Shape: `args` turns ghz-style flags into a validated [`Plan`]; `reflect`
//! asks the server (by gRPC reflection, as ghz does) for the method's input
//! type and encodes the JSON requests once, up front; `runner` drives the
//! calls over a raw-bytes codec, so the client spends no time on protobuf
//! while it measures; `report` turns the recorded results into ghz's JSON
//! report or a human summary.
//!
//! One deliberate difference from ghz: with `--rps` the latency of a call is
//! counted from the instant it was due, not from when it was sent, so a
//! stalled server shows up in the percentiles instead of silently lowering
//! the rate (coordinated omission).

mod args;
mod codec;
mod duration;
mod reflect;
mod report;
mod runner;

use thiserror::Error;

pub use self::{
    args::{BenchArgs, OutputFormat, Plan, Stop},
    duration::parse_go_duration,
    report::{Report, StatusName},
};

/// Why a load run could not start or finish.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("server reflection: {0}")]
    Reflection(String),
    #[error("request data: {0}")]
    Data(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the whole plan: reflect, connect, load, report.
pub async fn run(plan: &Plan) -> Result<Report, LoadError> {
    let method = reflect::resolve_method(plan).await?;
    let requests = method.encode_all(&plan.data)?;
    runner::run(plan, &method.path, requests).await
}

/// Parses the flags, runs, and writes the report where the flags say.
pub async fn run_cli(args: BenchArgs) -> Result<(), LoadError> {
    let plan = args.into_plan()?;
    let report = run(&plan).await?;
    let text = match plan.format {
        OutputFormat::Summary => report.summary(),
        OutputFormat::Json => serde_json::to_string(&report)
            .map_err(|e| LoadError::Data(format!("cannot write the report: {e}")))?,
        OutputFormat::Pretty => serde_json::to_string_pretty(&report)
            .map_err(|e| LoadError::Data(format!("cannot write the report: {e}")))?,
    };
    match &plan.output {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(())
}
