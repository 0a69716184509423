//! The `switchboard-bench` binary: ghz's flags in, ghz's report out.

use std::process::ExitCode;

use clap::Parser;
use switchboard_bench::BenchArgs;

/// Load-test any unary method of a gRPC server with reflection, ghz style.
#[derive(Parser)]
#[command(name = "switchboard-bench")]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    match switchboard_bench::run_cli(Cli::parse().args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard-bench: {error}");
            ExitCode::from(2)
        }
    }
}
