//! `bare_server`: the bare tonic floor of `benches/load/run.sh`
//! (`service.rs` says what it is). At start it asks a running switchboard
//! for its answer to one `ResolveAgent` call, then answers every
//! `ResolveAgent` with those bytes.
//!
//!   cargo build --release --example bare_server
//!   target/release/examples/bare_server --listen 127.0.0.1:29170 \
//!     --answer-from http://127.0.0.1:29161 --token "$SERVICE" \
//!     --called +18005550100 --caller +14155550123

#[path = "service.rs"]
mod service;

use clap::Parser;
use prost::Message;
use switchboard::pb::{self, agent_service_client::AgentServiceClient};

#[derive(Parser)]
struct Args {
    /// Where to serve.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The switchboard whose answer this server repeats.
    #[arg(long)]
    answer_from: String,
    /// A token that switchboard accepts for ResolveAgent.
    #[arg(long)]
    token: String,
    #[arg(long)]
    called: String,
    #[arg(long, default_value = "")]
    caller: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(error) = run(args).await {
        eprintln!("bare_server: {error}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut client = AgentServiceClient::connect(args.answer_from.clone())
        .await
        .map_err(|e| format!("{}: {e}", args.answer_from))?;
    let mut request = tonic::Request::new(pb::ResolveAgentRequest {
        called_number: args.called,
        caller_number: args.caller,
        ..Default::default()
    });
    let bearer = format!("Bearer {}", args.token)
        .parse()
        .map_err(|_| "the token is not a header value".to_owned())?;
    request.metadata_mut().insert("authorization", bearer);
    let answer = client
        .resolve_agent(request)
        .await
        .map_err(|s| format!("ResolveAgent: {s:?}"))?
        .into_inner()
        .encode_to_vec();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("{}: {e}", args.listen))?;
    eprintln!(
        "bare_server on {}: ResolveAgent answers {} bytes",
        args.listen,
        answer.len()
    );
    service::serve(listener, answer.into()).await
}
