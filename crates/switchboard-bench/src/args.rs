//! ghz's flags (and grpcurl's `-H`), parsed and checked once into a
//! [`Plan`]. Every mistake is reported before a single call is made.

use std::{path::PathBuf, time::Duration};

use clap::{ArgAction, Args, ValueEnum};
use serde_json::Value;

use super::{duration::parse_go_duration, LoadError};

/// `switchboard-bench [flags] <host>`: ghz's flags, a subset that covers
/// what operators use.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The server, `host:port` (plaintext gRPC), e.g. `127.0.0.1:50051`.
    pub host: String,

    /// The method: `package.Service.Method` or `package.Service/Method`,
    /// e.g. `switchboard.v1.AgentService.ResolveAgent`.
    #[arg(long)]
    pub call: String,

    /// A request as JSON. Repeat the flag, or pass a JSON array, to cycle
    /// through several requests in order.
    #[arg(short = 'd', long = "data", action = ArgAction::Append)]
    pub data: Vec<String>,

    /// A file holding the request JSON (an object, or an array to cycle).
    #[arg(short = 'D', long = "data-file", conflicts_with = "data")]
    pub data_file: Option<PathBuf>,

    /// Request metadata as a JSON object, e.g.
    /// `{"authorization":"Bearer ey…"}`.
    #[arg(short = 'm', long)]
    pub metadata: Option<String>,

    /// A metadata header, grpcurl style: `-H 'authorization: Bearer ey…'`.
    /// Repeatable.
    #[arg(short = 'H', long = "header", action = ArgAction::Append)]
    pub headers: Vec<String>,

    /// Number of calls in flight at once (workers).
    #[arg(short = 'c', long, default_value_t = 50)]
    pub concurrency: usize,

    /// Number of calls to make in all. Ignored when `-z` is given.
    #[arg(short = 'n', long, default_value_t = 200)]
    pub total: u64,

    /// Run for this long instead of a count (Go syntax: `30s`, `1m`).
    #[arg(short = 'z', long)]
    pub duration: Option<String>,

    /// Number of HTTP/2 connections; the workers are spread over them.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,

    /// Open loop: start this many calls per second in all, each counted
    /// from the moment it was due. 0 means as fast as the workers go.
    #[arg(short = 'r', long, default_value_t = 0)]
    pub rps: u64,

    /// Timeout of each call (sent as `grpc-timeout`).
    #[arg(short = 't', long, default_value = "20s")]
    pub timeout: String,

    /// Timeout for connecting and for server reflection.
    #[arg(long = "connect-timeout", default_value = "10s")]
    pub connect_timeout: String,

    /// Output format: `summary` (a table), `json` (ghz's report) or
    /// `pretty` (the same JSON, indented).
    #[arg(short = 'O', long = "format", value_enum, default_value_t = OutputFormat::Summary)]
    pub format: OutputFormat,

    /// Write the report to this file instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,

    /// Accepted for ghz compatibility: connections are plaintext.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Summary,
    Json,
    Pretty,
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Total(u64),
    Duration(Duration),
}

/// A checked load plan.
#[derive(Clone, Debug)]
pub struct Plan {
    /// As the user wrote it, for the report.
    pub host: String,
    /// `http://host:port`.
    pub endpoint: String,
    /// Fully qualified, e.g. `switchboard.v1.AgentService`.
    pub service: String,
    pub method: String,
    /// The requests to cycle through, each a JSON object.
    pub data: Vec<Value>,
    /// Lower-case ASCII keys.
    pub metadata: Vec<(String, String)>,
    pub concurrency: usize,
    pub connections: usize,
    pub stop: Stop,
    /// Calls started per second, open loop.
    pub rps: Option<u64>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub format: OutputFormat,
    pub output: Option<PathBuf>,
}

fn usage(message: impl Into<String>) -> LoadError {
    LoadError::Usage(message.into())
}

impl BenchArgs {
    pub fn into_plan(self) -> Result<Plan, LoadError> {
        let endpoint = endpoint(&self.host)?;
        let (service, method) = split_call(&self.call)?;
        let data = match &self.data_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("-D {}: cannot read it: {e}", path.display())))?;
                requests_from_json(&text, &format!("-D {}", path.display()))?
            }
            None if self.data.is_empty() => vec![Value::Object(Default::default())],
            None => {
                let mut all = Vec::new();
                for (i, text) in self.data.iter().enumerate() {
                    all.extend(requests_from_json(text, &format!("-d #{}", i + 1))?);
                }
                all
            }
        };
        let mut metadata = Vec::new();
        if let Some(json) = &self.metadata {
            metadata.extend(metadata_from_json(json)?);
        }
        for header in &self.headers {
            metadata.push(metadata_from_header(header)?);
        }
        if self.concurrency == 0 {
            return Err(usage("-c (concurrency) must be at least 1"));
        }
        if self.connections == 0 {
            return Err(usage("--connections must be at least 1"));
        }
        if self.connections > self.concurrency {
            return Err(usage(format!(
                "--connections ({}) cannot exceed -c concurrency ({}): each connection needs a worker",
                self.connections, self.concurrency
            )));
        }
        let stop = match &self.duration {
            Some(text) => {
                let duration = parse_go_duration(text).map_err(|e| usage(format!("-z: {e}")))?;
                if duration.is_zero() {
                    return Err(usage("-z must be longer than 0"));
                }
                Stop::Duration(duration)
            }
            None if self.total == 0 => return Err(usage("-n (total) must be at least 1")),
            None => Stop::Total(self.total),
        };
        let timeout = parse_go_duration(&self.timeout).map_err(|e| usage(format!("-t: {e}")))?;
        if timeout.is_zero() {
            return Err(usage("-t must be longer than 0"));
        }
        let connect_timeout = parse_go_duration(&self.connect_timeout)
            .map_err(|e| usage(format!("--connect-timeout: {e}")))?;
        Ok(Plan {
            host: self.host,
            endpoint,
            service,
            method,
            data,
            metadata,
            concurrency: self.concurrency,
            connections: self.connections,
            stop,
            rps: (self.rps > 0).then_some(self.rps),
            timeout,
            connect_timeout,
            format: self.format,
            output: self.output,
        })
    }
}

fn endpoint(host: &str) -> Result<String, LoadError> {
    let host = host.trim();
    if host.is_empty() {
        return Err(usage(
            "the host is empty: give host:port, e.g. 127.0.0.1:50051",
        ));
    }
    if host.starts_with("https://") {
        return Err(usage(
            "TLS is not supported: point switchboard-bench at the plaintext port",
        ));
    }
    let bare = host.strip_prefix("http://").unwrap_or(host);
    let endpoint = format!("http://{bare}");
    match endpoint.parse::<http::Uri>() {
        Ok(uri) if uri.port().is_some() && uri.path() == "/" => Ok(endpoint),
        _ => Err(usage(format!(
            "host {host:?} is not host:port, e.g. 127.0.0.1:50051"
        ))),
    }
}

/// `pkg.Service.Method` or `pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_call(call: &str) -> Result<(String, String), LoadError> {
    let call = call.trim().trim_start_matches('/');
    let split = call.rfind('/').or_else(|| call.rfind('.'));
    let bad = || {
        usage(format!(
            "--call {call:?} is not package.Service.Method, e.g. switchboard.v1.AgentService.ResolveAgent"
        ))
    };
    let at = split.ok_or_else(bad)?;
    let (service, method) = (&call[..at], &call[at + 1..]);
    let is_name = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    if !is_name(service) || !is_name(method) || method.contains('.') {
        return Err(bad());
    }
    Ok((service.to_owned(), method.to_owned()))
}

/// One JSON object, or an array of them.
fn requests_from_json(text: &str, flag: &str) -> Result<Vec<Value>, LoadError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| usage(format!("{flag}: not JSON: {e}")))?;
    let items = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(usage(format!("{flag}: the array holds no request")))
        }
        Value::Array(items) => items,
        other => vec![other],
    };
    for (i, item) in items.iter().enumerate() {
        if !item.is_object() {
            return Err(usage(format!(
                "{flag}: request #{} is not a JSON object",
                i + 1
            )));
        }
    }
    Ok(items)
}

fn checked_pair(key: &str, value: &str, flag: &str) -> Result<(String, String), LoadError> {
    let key = key.trim().to_ascii_lowercase();
    if key.ends_with("-bin") {
        return Err(usage(format!(
            "{flag}: binary metadata ({key}) is not supported"
        )));
    }
    if tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes()).is_err() {
        return Err(usage(format!(
            "{flag}: {key:?} is not a valid metadata key"
        )));
    }
    if tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(value).is_err() {
        return Err(usage(format!(
            "{flag}: the value of {key:?} is not printable ASCII"
        )));
    }
    Ok((key, value.to_owned()))
}

fn metadata_from_json(text: &str) -> Result<Vec<(String, String)>, LoadError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| usage(format!("-m: not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(usage(
            "-m must be a JSON object, e.g. {\"authorization\":\"Bearer ey…\"}",
        ));
    };
    map.iter()
        .map(|(key, value)| match value {
            Value::String(text) => checked_pair(key, text, "-m"),
            _ => Err(usage(format!("-m: the value of {key:?} must be a string"))),
        })
        .collect()
}

fn metadata_from_header(header: &str) -> Result<(String, String), LoadError> {
    let (key, value) = header
        .split_once(':')
        .ok_or_else(|| usage(format!("-H {header:?} is not 'name: value'")))?;
    checked_pair(key, value.trim(), "-H")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(flags: &[&str]) -> Result<Plan, LoadError> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv)
            .map_err(|e| LoadError::Usage(e.to_string()))?
            .args
            .into_plan()
    }

    fn rejected(flags: &[&str]) -> String {
        match plan(flags) {
            Ok(plan) => panic!("{flags:?} was accepted: {plan:?}"),
            Err(error) => error.to_string(),
        }
    }

    const CALL: &str = "--call=switchboard.v1.AgentService.ResolveAgent";

    #[test]
    fn ghz_defaults() {
        let plan = plan(&[CALL, "127.0.0.1:50051"]).unwrap();
        assert_eq!(plan.endpoint, "http://127.0.0.1:50051");
        assert_eq!(plan.service, "switchboard.v1.AgentService");
        assert_eq!(plan.method, "ResolveAgent");
        assert_eq!(plan.concurrency, 50);
        assert_eq!(plan.connections, 1);
        assert_eq!(plan.stop, Stop::Total(200));
        assert_eq!(plan.rps, None);
        assert_eq!(plan.timeout, Duration::from_secs(20));
        assert_eq!(plan.format, OutputFormat::Summary);
        assert_eq!(plan.data, vec![serde_json::json!({})]);
        assert!(plan.metadata.is_empty());
    }

    #[test]
    fn the_method_may_be_written_with_a_slash() {
        let plan = plan(&[
            "--call",
            "switchboard.v1.CustomerService/LookupCustomer",
            "localhost:1",
        ])
        .unwrap();
        assert_eq!(plan.service, "switchboard.v1.CustomerService");
        assert_eq!(plan.method, "LookupCustomer");
    }

    #[test]
    fn all_flags_short_and_long() {
        let plan = plan(&[
            CALL,
            "-d",
            r#"{"called":"+18005550100"}"#,
            "--data",
            r#"[{"called":"+18005550200"},{"called":"+18005550300"}]"#,
            "-m",
            r#"{"Authorization":"Bearer abc"}"#,
            "-H",
            "x-tenant:  acme ",
            "-c",
            "16",
            "-z",
            "1m30s",
            "-n",
            "5",
            "--connections",
            "4",
            "-r",
            "1000",
            "-t",
            "250ms",
            "-O",
            "json",
            "-o",
            "/tmp/report.json",
            "--insecure",
            "http://127.0.0.1:50051",
        ])
        .unwrap();
        assert_eq!(plan.data.len(), 3, "two -d flags, one an array of two");
        assert_eq!(plan.data[2]["called"], "+18005550300");
        assert_eq!(
            plan.metadata,
            vec![
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned())
            ]
        );
        assert_eq!(plan.concurrency, 16);
        assert_eq!(plan.connections, 4);
        assert_eq!(
            plan.stop,
            Stop::Duration(Duration::from_secs(90)),
            "-z wins over -n"
        );
        assert_eq!(plan.rps, Some(1000));
        assert_eq!(plan.timeout, Duration::from_millis(250));
        assert_eq!(plan.format, OutputFormat::Json);
        assert_eq!(plan.output, Some(PathBuf::from("/tmp/report.json")));
    }

    #[test]
    fn a_data_file_is_read() {
        let path =
            std::env::temp_dir().join(format!("switchboard-bench-{}.json", std::process::id()));
        std::fs::write(&path, r#"[{"called":"+1"},{"called":"+2"}]"#).unwrap();
        let plan = plan(&[CALL, "-D", path.to_str().unwrap(), "127.0.0.1:1"]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(plan.data.len(), 2);
        let missing = rejected(&[CALL, "-D", "/nonexistent/requests.json", "127.0.0.1:1"]);
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn mistakes_are_named() {
        for (flags, says) in [
            (vec![CALL], "<HOST>"),
            (vec!["127.0.0.1:1"], "--call"),
            (vec![CALL, "127.0.0.1"], "not host:port"),
            (vec![CALL, "https://example.test:443"], "TLS"),
            (
                vec!["--call", "ResolveAgent", "127.0.0.1:1"],
                "package.Service.Method",
            ),
            (
                vec!["--call", "a.b/c.d", "127.0.0.1:1"],
                "package.Service.Method",
            ),
            (vec![CALL, "-d", "{", "127.0.0.1:1"], "-d #1: not JSON"),
            (vec![CALL, "-d", "[]", "127.0.0.1:1"], "no request"),
            (vec![CALL, "-d", "[1]", "127.0.0.1:1"], "not a JSON object"),
            (
                vec![CALL, "-d", "{}", "-D", "x", "127.0.0.1:1"],
                "cannot be used with",
            ),
            (
                vec![CALL, "-m", "[]", "127.0.0.1:1"],
                "-m must be a JSON object",
            ),
            (
                vec![CALL, "-m", r#"{"a":1}"#, "127.0.0.1:1"],
                "must be a string",
            ),
            (
                vec![CALL, "-m", r#"{"a b":"1"}"#, "127.0.0.1:1"],
                "not a valid metadata key",
            ),
            (
                vec![CALL, "-m", r#"{"a":"\n"}"#, "127.0.0.1:1"],
                "printable ASCII",
            ),
            (vec![CALL, "-H", "novalue", "127.0.0.1:1"], "'name: value'"),
            (
                vec![CALL, "-H", "x-bin: AAA", "127.0.0.1:1"],
                "binary metadata",
            ),
            (vec![CALL, "-c", "0", "127.0.0.1:1"], "concurrency"),
            (vec![CALL, "-c", "-3", "127.0.0.1:1"], "-3"),
            (vec![CALL, "-n", "0", "127.0.0.1:1"], "-n (total)"),
            (
                vec![CALL, "--connections", "0", "127.0.0.1:1"],
                "--connections",
            ),
            (
                vec![CALL, "-c", "2", "--connections", "3", "127.0.0.1:1"],
                "cannot exceed",
            ),
            (vec![CALL, "-z", "10", "127.0.0.1:1"], "-z: duration"),
            (vec![CALL, "-z", "0", "127.0.0.1:1"], "longer than 0"),
            (vec![CALL, "-t", "soon", "127.0.0.1:1"], "-t:"),
            (vec![CALL, "-O", "html", "127.0.0.1:1"], "html"),
        ] {
            let error = rejected(&flags);
            assert!(error.contains(says), "{flags:?} → {error}");
        }
    }
}
