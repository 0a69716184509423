//! Command line and environment, validated once. A bad or missing setting
//! stops start-up with one line that names it.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    auth::{JwksSettings, JwksSource, MIN_SECRET_LEN},
    cache::RedisTarget,
    grpc::Limits,
    store::PoolSettings,
};

/// The JWT secret of a local Supabase (`supabase start`), used by `dev`.
pub const DEV_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
pub const DEV_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/switchboard_dev";
pub const DEV_REDIS_URL: &str = "redis://127.0.0.1:6379";

#[derive(Parser, Debug)]
#[command(
    name = "switchboard",
    version,
    about = "Resolves the agent for a dialed number, isolated per tenant by Postgres RLS"
)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up and matched once: the size of `Serve` costs
// nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply the migrations in migrations/ to DATABASE_URL (a direct or
    /// session-mode URL, not the transaction pooler).
    Migrate(MigrateArgs),
    /// Give the database a new identity, so no replica reads the Redis
    /// routes cached before. Run it after any restore from backup,
    /// point-in-time recovery or clone of the database.
    RetireDatabaseIdentity(MigrateArgs),
    /// Serve gRPC.
    Serve(ServeArgs),
    /// Mint a development JWT signed with the local secret.
    Token(TokenArgs),
    /// Local development in one command: create and migrate the database,
    /// load the demo data, print tokens, and serve.
    Dev(DevArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Postgres URL for queries (Supavisor's transaction pooler, port 6543, is fine).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL for the shared cache tier (one node). Optional; or use
    /// REDIS_CLUSTER_URLS or REDIS_SENTINEL_URLS instead.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated
    /// (`redis://[:password@]host:port,...`); the rest are discovered.
    #[arg(
        long,
        env = "REDIS_CLUSTER_URLS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub redis_cluster_urls: Vec<String>,
    /// Redis Sentinels, comma-separated (`redis://[:password@]host:26379,...`):
    /// the tier uses the master they name and follows failovers.
    #[arg(
        long,
        env = "REDIS_SENTINEL_URLS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub redis_sentinel_urls: Vec<String>,
    /// The name the sentinels monitor the master by (`sentinel monitor <name> ...`).
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,
    /// Username and password for the master and replicas, when they differ
    /// from none (the sentinels' own go in their URLs).
    #[arg(long, env = "REDIS_SENTINEL_MASTER_USERNAME")]
    pub redis_sentinel_master_username: Option<String>,
    #[arg(long, env = "REDIS_SENTINEL_MASTER_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_master_password: Option<String>,
    /// The Supabase project's JWT secret (HS256).
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A JWKS URL (Supabase: https://<ref>.supabase.co/auth/v1/.well-known/jwks.json):
    /// RS256 and ES256 tokens are verified with its keys, picked by kid.
    #[arg(long, env = "SUPABASE_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// The same as a local JSON file, instead of a URL.
    #[arg(long, env = "SUPABASE_JWKS_FILE")]
    pub jwks_file: Option<String>,
    /// How often the JWKS is reloaded.
    #[arg(long, env = "SWITCHBOARD_JWKS_REFRESH_SECS", default_value_t = 600)]
    pub jwks_refresh_secs: u64,
    /// A token naming an unknown kid triggers a reload, at most this often.
    #[arg(long, env = "SWITCHBOARD_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub jwks_min_refresh_secs: u64,
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// The admin HTTP port: Prometheus metrics at /metrics.
    #[arg(long, env = "SWITCHBOARD_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Postgres connections this replica may hold.
    #[arg(long, env = "SWITCHBOARD_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// How long a request waits for a database connection before UNAVAILABLE.
    #[arg(
        long,
        env = "SWITCHBOARD_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub db_acquire_timeout_ms: u64,
    /// Requests that may queue for a database connection when all are in
    /// use; one more is answered RESOURCE_EXHAUSTED at once. 0 = never
    /// queue: calls beyond the pool are shed, so admitted ones stay fast.
    /// Cache hits never wait here.
    #[arg(long, env = "SWITCHBOARD_DB_MAX_WAITING", default_value_t = 64)]
    pub db_max_waiting: u32,
    /// The longest any request may take; a shorter client deadline wins.
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT_MS", default_value_t = 10000)]
    pub shutdown_timeout_ms: u64,
    /// A direct or session-mode Postgres URL for LISTEN (cache invalidation);
    /// LISTEN does not work through a transaction pooler. Defaults to DATABASE_URL.
    #[arg(
        long,
        env = "SWITCHBOARD_LISTENER_DATABASE_URL",
        hide_env_values = true
    )]
    pub listener_database_url: Option<String>,
    /// Timeout of each Redis call on the call path.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT_MS", default_value_t = 5)]
    pub redis_timeout_ms: u64,
    /// Routes (called numbers) kept in process; 0 turns the memory tier off.
    #[arg(
        long,
        env = "SWITCHBOARD_CACHE_MAX_ROUTES",
        default_value_t = 1_000_000
    )]
    pub cache_max_routes: u64,
    /// Caller records kept in process.
    #[arg(
        long,
        env = "SWITCHBOARD_CACHE_MAX_CALLERS",
        default_value_t = 1_000_000
    )]
    pub cache_max_callers: u64,
    /// Load every route into the memory tier before serving (paged, up to
    /// the tier's capacity), so no first call after a deploy goes to
    /// Postgres. `--cache-preload` alone means true.
    #[arg(
        long,
        env = "SWITCHBOARD_CACHE_PRELOAD",
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub cache_preload: bool,
    /// In-process TTL, a backstop: invalidation keeps entries correct.
    #[arg(long, env = "SWITCHBOARD_CACHE_TTL_SECS", default_value_t = 300)]
    pub cache_ttl_secs: u64,
    /// Separates deployments (or test runs) sharing one Redis:
    /// keys become `switchboard:v3:<namespace>:...`.
    #[arg(long, env = "SWITCHBOARD_REDIS_NAMESPACE")]
    pub redis_namespace: Option<String>,
    /// Redis TTL, a backstop as well.
    #[arg(long, env = "SWITCHBOARD_REDIS_TTL_SECS", default_value_t = 3600)]
    pub redis_ttl_secs: u64,
    /// A read replica (or its pooler) for lookups: tenants' ResolveAgent,
    /// Get, List, Lookup. Writes, and reads that fill the cache, stay on
    /// DATABASE_URL. Defaults to DATABASE_URL.
    #[arg(long, env = "SWITCHBOARD_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// Requests in flight on this replica (health excepted); beyond it,
    /// RESOURCE_EXHAUSTED at once. 0 = no limit.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONCURRENT_REQUESTS",
        default_value_t = 512
    )]
    pub max_concurrent_requests: usize,
    /// Requests in flight for one organization (tenant tokens); beyond it,
    /// RESOURCE_EXHAUSTED. Keep it below SWITCHBOARD_DB_MAX_CONNECTIONS.
    /// 0 = no limit.
    #[arg(long, env = "SWITCHBOARD_TENANT_MAX_CONCURRENT", default_value_t = 8)]
    pub tenant_max_concurrent: usize,
    /// Largest request message accepted.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = 262_144)]
    pub max_message_bytes: usize,
    /// Largest metadata (HTTP/2 header list) of one request.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_HEADER_LIST_BYTES",
        default_value_t = 16_384
    )]
    pub max_header_list_bytes: u32,
    /// A call's slot is freed this long after its last StartCall,
    /// AnswerCall or KeepCallAlive (its media server died). Media servers
    /// renew every third of it.
    #[arg(long, env = "SWITCHBOARD_CALL_LEASE_SECS", default_value_t = 30)]
    pub call_lease_secs: u64,
    /// How long a call's decision is remembered after its last activity:
    /// a StartCall retry within it replays the decision; a renewal after
    /// EndCall within it is refused.
    #[arg(long, env = "SWITCHBOARD_CALL_REMEMBER_SECS", default_value_t = 3600)]
    pub call_remember_secs: u64,
    /// Timeout of each live-call script on Redis (admission, renewal, end).
    #[arg(long, env = "SWITCHBOARD_CALL_REDIS_TIMEOUT_MS", default_value_t = 100)]
    pub call_redis_timeout_ms: u64,
    /// How long StartCall, AnswerCall and EndCall wait for Postgres to take
    /// the call's record before leaving it to the Redis backlog.
    #[arg(
        long,
        env = "SWITCHBOARD_CALL_RECORD_TIMEOUT_MS",
        default_value_t = 250
    )]
    pub call_record_timeout_ms: u64,
    /// Records of refused or transferred calls stored per organization and
    /// reason per minute; the rest are counted only.
    #[arg(
        long,
        env = "SWITCHBOARD_CALL_REFUSALS_RECORDED_PER_MINUTE",
        default_value_t = 100
    )]
    pub call_refusals_recorded_per_minute: u32,
    /// With Redis unreachable, StartCall answers calls to active agents
    /// without checking limits (`answer`) or refuses them (`refuse`: SIP
    /// 503, or the agent's fallback).
    #[arg(
        long,
        env = "SWITCHBOARD_CALL_ADMISSION_WHEN_REDIS_DOWN",
        default_value = "answer",
        value_parser = ["answer", "refuse"]
    )]
    pub call_admission_when_redis_down: String,
    /// How often each replica replays the Redis backlog of call records.
    #[arg(
        long,
        env = "SWITCHBOARD_CALL_BACKLOG_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub call_backlog_interval_ms: u64,
    /// How often a WatchActiveCalls stream reads the counts (changes within
    /// it are sent as one message).
    #[arg(long, env = "SWITCHBOARD_WATCH_INTERVAL_MS", default_value_t = 250)]
    pub watch_interval_ms: u64,
    /// How often a tenant's stream re-checks the caller's membership.
    #[arg(long, env = "SWITCHBOARD_WATCH_RECHECK_SECS", default_value_t = 5)]
    pub watch_recheck_secs: u64,
    /// WatchActiveCalls streams open on this replica; beyond it,
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SWITCHBOARD_WATCH_MAX_STREAMS", default_value_t = 1000)]
    pub watch_max_streams: usize,
    /// WatchActiveCalls streams of one organization on this replica.
    #[arg(long, env = "SWITCHBOARD_WATCH_MAX_PER_ORG", default_value_t = 8)]
    pub watch_max_per_org: usize,
    /// WatchActiveCalls streams of one tenant user on this replica.
    #[arg(long, env = "SWITCHBOARD_WATCH_MAX_PER_USER", default_value_t = 2)]
    pub watch_max_per_user: usize,
}

impl ServeArgs {
    /// The documented defaults, with nothing set: for `dev` and tests. Read
    /// from the clap attributes above, the one place a default is written,
    /// with the environment switched off.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = DefaultsOnly::command().mut_args(|arg| arg.env(None));
        match command
            .try_get_matches_from(["switchboard"])
            .and_then(|matches| DefaultsOnly::from_arg_matches(&matches))
        {
            Ok(defaults) => defaults.args,
            // Every serve flag has a default or is optional: a unit test
            // parses them.
            Err(error) => unreachable!("the serve flags' defaults do not parse: {error}"),
        }
    }
}

/// `ServeArgs` alone, to read its defaults.
#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// anon, authenticated or service_role.
    #[arg(long, default_value = "authenticated")]
    pub role: String,
    /// The user id (`auth.users.id`); required for authenticated.
    #[arg(long)]
    pub sub: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true, default_value = DEV_JWT_SECRET)]
    pub jwt_secret: String,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEV_DATABASE_URL)]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = DEV_REDIS_URL)]
    pub redis_url: String,
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Prometheus metrics at /metrics.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything `serve` needs, validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub database_url: String,
    /// Where lookups go; `None` = `database_url`.
    pub database_read_url: Option<String>,
    /// The shared tier; `None` = memory tier only.
    pub redis: Option<RedisTarget>,
    pub jwt_secret: String,
    pub limits: Limits,
    /// RS256/ES256 keys, beside the HS256 secret.
    pub jwks: Option<JwksSettings>,
    pub pool: PoolSettings,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub listener_database_url: String,
    pub cache: CacheSettings,
    pub calls: CallConfig,
}

/// Calls: leases, records, streams.
#[derive(Clone, Debug)]
pub struct CallConfig {
    pub lease: Duration,
    pub remember: Duration,
    pub redis_timeout: Duration,
    pub record_timeout: Duration,
    pub refusals_recorded_per_minute: u32,
    /// `false`: refuse when Redis is unreachable.
    pub answer_when_redis_down: bool,
    pub backlog_interval: Duration,
    pub watch_interval: Duration,
    pub watch_recheck: Duration,
    pub watch_max_streams: usize,
    pub watch_max_per_org: usize,
    pub watch_max_per_user: usize,
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub redis_namespace: Option<String>,
    pub redis_timeout: Duration,
    pub max_routes: u64,
    pub max_callers: u64,
    pub preload: bool,
    pub memory_ttl: Duration,
    pub redis_ttl: Duration,
}

/// At most one of REDIS_URL, REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS.
fn redis_target(args: &ServeArgs) -> Result<Option<RedisTarget>, ConfigError> {
    fn urls(list: &[String]) -> Vec<String> {
        list.iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }
    let single = args
        .redis_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let cluster = urls(&args.redis_cluster_urls);
    let sentinels = urls(&args.redis_sentinel_urls);
    let set = [single.is_some(), !cluster.is_empty(), !sentinels.is_empty()];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(ConfigError(
            "set only one of REDIS_URL, REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS".into(),
        ));
    }
    let (target, setting) = if let Some(url) = single {
        (RedisTarget::Standalone(url.to_owned()), "REDIS_URL")
    } else if !cluster.is_empty() {
        (RedisTarget::Cluster(cluster), "REDIS_CLUSTER_URLS")
    } else if !sentinels.is_empty() {
        let master = args
            .redis_sentinel_master
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                ConfigError(
                    "REDIS_SENTINEL_URLS is set but REDIS_SENTINEL_MASTER (the monitored master's name) is not"
                        .into(),
                )
            })?;
        let target = RedisTarget::Sentinel {
            sentinels,
            master: master.to_owned(),
            username: args.redis_sentinel_master_username.clone(),
            password: args.redis_sentinel_master_password.clone(),
        };
        (target, "REDIS_SENTINEL_URLS")
    } else {
        return Ok(None);
    };
    let plural = if setting == "REDIS_URL" {
        "is not a valid redis:// URL"
    } else {
        "holds a URL that is not a valid redis:// URL"
    };
    target
        .validate()
        .map_err(|_| ConfigError(format!("{setting} {plural}")))?;
    Ok(Some(target))
}

impl ServeConfig {
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let jwks = jwks_settings(&args)?;
        let redis = redis_target(&args)?;
        let database_url = args
            .database_url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| ConfigError("DATABASE_URL (or --database-url) is not set".into()))?;
        if !is_postgres_url(&database_url) {
            return Err(ConfigError(
                "DATABASE_URL is not a valid postgres:// URL".into(),
            ));
        }
        let jwt_secret = args.jwt_secret.filter(|s| !s.is_empty()).ok_or_else(|| {
            ConfigError("SUPABASE_JWT_SECRET (or --jwt-secret) is not set".into())
        })?;
        if jwt_secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError(format!(
                "SUPABASE_JWT_SECRET must be at least {MIN_SECRET_LEN} characters"
            )));
        }
        let (listen, admin_listen) = (args.listen, args.admin_listen);
        if args.db_max_connections == 0 {
            return Err(ConfigError(
                "SWITCHBOARD_DB_MAX_CONNECTIONS must be at least 1".into(),
            ));
        }
        let listener_database_url =
            match args.listener_database_url.filter(|u| !u.trim().is_empty()) {
                Some(url) => {
                    if !is_postgres_url(&url) {
                        return Err(ConfigError(
                            "SWITCHBOARD_LISTENER_DATABASE_URL is not a valid postgres:// URL"
                                .into(),
                        ));
                    }
                    url
                }
                None => database_url.clone(),
            };
        let database_read_url = args.database_read_url.filter(|u| !u.trim().is_empty());
        if database_read_url
            .as_deref()
            .is_some_and(|url| !is_postgres_url(url))
        {
            return Err(ConfigError(
                "SWITCHBOARD_DATABASE_READ_URL is not a valid postgres:// URL".into(),
            ));
        }
        if args.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(ConfigError(format!(
                "SWITCHBOARD_MAX_MESSAGE_BYTES must be at least {MIN_MESSAGE_BYTES}"
            )));
        }
        if args.max_header_list_bytes < MIN_HEADER_LIST_BYTES {
            return Err(ConfigError(format!(
                "SWITCHBOARD_MAX_HEADER_LIST_BYTES must be at least {MIN_HEADER_LIST_BYTES} \
                 (a token alone may be 8 KiB)"
            )));
        }
        if args.call_lease_secs < 3 {
            return Err(ConfigError(
                "SWITCHBOARD_CALL_LEASE_SECS must be at least 3 (media servers renew every third)"
                    .into(),
            ));
        }
        if args.call_remember_secs < args.call_lease_secs {
            return Err(ConfigError(
                "SWITCHBOARD_CALL_REMEMBER_SECS must be at least SWITCHBOARD_CALL_LEASE_SECS"
                    .into(),
            ));
        }
        if args
            .redis_namespace
            .as_deref()
            .is_some_and(|n| n.contains(['{', '}']))
        {
            return Err(ConfigError(
                "SWITCHBOARD_REDIS_NAMESPACE must not contain { or } (they name Redis Cluster hash slots)"
                    .into(),
            ));
        }
        let calls = CallConfig {
            lease: Duration::from_secs(args.call_lease_secs),
            remember: Duration::from_secs(args.call_remember_secs),
            redis_timeout: Duration::from_millis(args.call_redis_timeout_ms.max(1)),
            record_timeout: Duration::from_millis(args.call_record_timeout_ms.max(1)),
            refusals_recorded_per_minute: args.call_refusals_recorded_per_minute,
            answer_when_redis_down: args.call_admission_when_redis_down != "refuse",
            backlog_interval: Duration::from_millis(args.call_backlog_interval_ms.max(10)),
            watch_interval: Duration::from_millis(args.watch_interval_ms.max(10)),
            watch_recheck: Duration::from_secs(args.watch_recheck_secs.max(1)),
            watch_max_streams: args.watch_max_streams,
            watch_max_per_org: args.watch_max_per_org,
            watch_max_per_user: args.watch_max_per_user,
        };
        Ok(ServeConfig {
            calls,
            listen,
            database_read_url,
            limits: Limits {
                max_concurrent_requests: args.max_concurrent_requests,
                tenant_max_concurrent: args.tenant_max_concurrent,
                max_message_bytes: args.max_message_bytes,
                max_header_list_bytes: args.max_header_list_bytes,
            },
            admin_listen,
            listener_database_url,
            cache: CacheSettings {
                redis_namespace: args.redis_namespace.filter(|n| !n.trim().is_empty()),
                redis_timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
                max_routes: args.cache_max_routes,
                max_callers: args.cache_max_callers.max(1),
                preload: args.cache_preload,
                memory_ttl: Duration::from_secs(args.cache_ttl_secs.max(1)),
                redis_ttl: Duration::from_secs(args.redis_ttl_secs.max(1)),
            },
            database_url,
            redis,
            jwt_secret,
            jwks,
            pool: PoolSettings {
                max_connections: args.db_max_connections,
                acquire_timeout: Duration::from_millis(args.db_acquire_timeout_ms.max(1)),
                max_waiting: args.db_max_waiting,
                statement_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
            },
            request_timeout: Duration::from_millis(args.request_timeout_ms.max(1)),
            shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
        })
    }
}

/// An agent with the largest `llm_config` (64 KiB as JSON) must still fit.
const MIN_MESSAGE_BYTES: usize = 128 * 1024;
const MIN_HEADER_LIST_BYTES: u32 = 10 * 1024;
fn jwks_settings(args: &ServeArgs) -> Result<Option<JwksSettings>, ConfigError> {
    let url = args
        .jwks_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let file = args
        .jwks_file
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty());
    let source = match (url, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError(
                "set SUPABASE_JWKS_URL or SUPABASE_JWKS_FILE, not both".into(),
            ))
        }
        (Some(url), None) => {
            let parsed = reqwest::Url::parse(url).ok();
            if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
                return Err(ConfigError(
                    "SUPABASE_JWKS_URL is not a valid http(s):// URL".into(),
                ));
            }
            JwksSource::Url(url.to_owned())
        }
        (None, Some(file)) => JwksSource::File(file.into()),
    };
    Ok(Some(JwksSettings {
        source,
        refresh: Duration::from_secs(args.jwks_refresh_secs.max(1)),
        min_refresh: Duration::from_secs(args.jwks_min_refresh_secs.max(1)),
    }))
}

fn is_postgres_url(url: &str) -> bool {
    (url.starts_with("postgres://") || url.starts_with("postgresql://"))
        && sqlx::postgres::PgConnectOptions::from_str(url).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_refused_by_the_flag_parser_naming_it() {
        for (flag, value) in [("--listen", "nowhere"), ("--admin-listen", "9090")] {
            let error = match Cli::try_parse_from(["switchboard", "serve", flag, value]) {
                Ok(_) => panic!("{flag} {value} was accepted"),
                Err(error) => error.to_string(),
            };
            assert!(error.contains(flag) && error.contains(value), "{error}");
        }
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let defaults = ServeArgs::defaults();
        assert_eq!(defaults.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(defaults.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(defaults.db_max_connections, 16);
        assert_eq!(defaults.db_acquire_timeout_ms, 1000);
        assert_eq!(defaults.db_max_waiting, 64);
        assert_eq!(defaults.request_timeout_ms, 5000);
        assert_eq!(defaults.shutdown_timeout_ms, 10_000);
        assert_eq!(defaults.redis_timeout_ms, 5);
        assert_eq!(defaults.cache_max_routes, 1_000_000);
        assert_eq!(defaults.cache_max_callers, 1_000_000);
        assert!(!defaults.cache_preload);
        assert_eq!(defaults.cache_ttl_secs, 300);
        assert_eq!(defaults.redis_ttl_secs, 3600);
        assert_eq!(defaults.jwks_refresh_secs, 600);
        assert_eq!(defaults.jwks_min_refresh_secs, 30);
        assert_eq!(defaults.max_concurrent_requests, 512);
        assert_eq!(defaults.tenant_max_concurrent, 8);
        assert_eq!(defaults.max_message_bytes, 262_144);
        assert_eq!(defaults.max_header_list_bytes, 16_384);
        assert!(defaults.database_url.is_none() && defaults.jwt_secret.is_none());
        assert!(defaults.redis_cluster_urls.is_empty());
    }

    fn args() -> ServeArgs {
        ServeArgs {
            database_url: Some("postgres://postgres@127.0.0.1/db".into()),
            redis_url: None,
            jwt_secret: Some(DEV_JWT_SECRET.into()),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_listen: ([127, 0, 0, 1], 0).into(),
            db_max_connections: 4,
            db_acquire_timeout_ms: 100,
            request_timeout_ms: 100,
            shutdown_timeout_ms: 100,
            ..ServeArgs::defaults()
        }
    }

    fn error(args: ServeArgs) -> String {
        ServeConfig::from_args(args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn each_bad_setting_is_named() {
        assert!(ServeConfig::from_args(args()).is_ok());
        assert_eq!(
            error(ServeArgs {
                database_url: None,
                ..args()
            }),
            "DATABASE_URL (or --database-url) is not set"
        );
        assert_eq!(
            error(ServeArgs {
                database_url: Some("mysql://x".into()),
                ..args()
            }),
            "DATABASE_URL is not a valid postgres:// URL"
        );
        assert_eq!(
            error(ServeArgs {
                jwt_secret: None,
                ..args()
            }),
            "SUPABASE_JWT_SECRET (or --jwt-secret) is not set"
        );
        assert!(error(ServeArgs {
            jwt_secret: Some("short".into()),
            ..args()
        })
        .contains("at least 32"));
        assert_eq!(
            error(ServeArgs {
                redis_url: Some("http://x".into()),
                ..args()
            }),
            "REDIS_URL is not a valid redis:// URL"
        );
        assert_eq!(
            error(ServeArgs {
                redis_url: Some("redis://a:6379".into()),
                redis_cluster_urls: vec!["redis://b:7000".into()],
                ..args()
            }),
            "set only one of REDIS_URL, REDIS_CLUSTER_URLS and REDIS_SENTINEL_URLS"
        );
        assert_eq!(
            error(ServeArgs {
                redis_cluster_urls: vec!["redis://b:7000".into(), "b:7001".into()],
                ..args()
            }),
            "REDIS_CLUSTER_URLS holds a URL that is not a valid redis:// URL"
        );
        assert_eq!(
            error(ServeArgs {
                redis_sentinel_urls: vec!["redis://s:26379".into()],
                ..args()
            }),
            "REDIS_SENTINEL_URLS is set but REDIS_SENTINEL_MASTER (the monitored master's name) is not"
        );
        assert_eq!(
            error(ServeArgs {
                database_read_url: Some("mysql://replica".into()),
                ..args()
            }),
            "SWITCHBOARD_DATABASE_READ_URL is not a valid postgres:// URL"
        );
        assert!(error(ServeArgs {
            max_message_bytes: 1024,
            ..args()
        })
        .starts_with("SWITCHBOARD_MAX_MESSAGE_BYTES must be at least"));
        assert!(error(ServeArgs {
            max_header_list_bytes: 1024,
            ..args()
        })
        .starts_with("SWITCHBOARD_MAX_HEADER_LIST_BYTES must be at least"));
        assert_eq!(
            error(ServeArgs {
                jwks_url: Some("https://x.supabase.co/auth/v1/.well-known/jwks.json".into()),
                jwks_file: Some("/etc/jwks.json".into()),
                ..args()
            }),
            "set SUPABASE_JWKS_URL or SUPABASE_JWKS_FILE, not both"
        );
        for bad in ["ftp://x/jwks.json", "jwks.json", "https://"] {
            assert_eq!(
                error(ServeArgs {
                    jwks_url: Some(bad.into()),
                    ..args()
                }),
                "SUPABASE_JWKS_URL is not a valid http(s):// URL",
                "{bad}"
            );
        }
    }

    #[test]
    fn jwks_settings_are_optional_and_validated() {
        let jwks = |args: ServeArgs| ServeConfig::from_args(args).ok().and_then(|c| c.jwks);
        assert_eq!(jwks(args()), None);
        assert_eq!(
            jwks(ServeArgs {
                jwks_url: Some(" https://x.supabase.co/auth/v1/.well-known/jwks.json ".into()),
                jwks_min_refresh_secs: 0,
                ..args()
            }),
            Some(JwksSettings {
                source: JwksSource::Url(
                    "https://x.supabase.co/auth/v1/.well-known/jwks.json".into()
                ),
                refresh: Duration::from_secs(600),
                min_refresh: Duration::from_secs(1),
            })
        );
        assert_eq!(
            jwks(ServeArgs {
                jwks_file: Some("/etc/switchboard/jwks.json".into()),
                jwks_url: Some("".into()),
                ..args()
            })
            .map(|s| s.source),
            Some(JwksSource::File("/etc/switchboard/jwks.json".into()))
        );
    }
}
