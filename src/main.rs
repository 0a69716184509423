//! The `switchboard` binary: parses the command line and calls into the
//! library. Nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use serde_json::Map;
use switchboard::{
    auth::{mint_token, DbRole},
    cache,
    config::{Cli, Command, DevArgs, ServeArgs, ServeConfig, DEV_JWT_SECRET},
    migrate,
    observability::{tracing as telemetry, MetricsExport},
    startup::Application,
    store,
};
use uuid::Uuid;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::TraceExport::from_env()
        .and_then(|export| telemetry::init(&cli.log_format, export))
    {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("switchboard: {error}");
            return ExitCode::from(2);
        }
    };
    let result = run(cli.command).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("switchboard: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Migrate(args) => {
            let url = args
                .database_url
                .ok_or("DATABASE_URL (or --database-url) is not set")?;
            migrate::run(&url)
                .await
                .map_err(|e| format!("migration failed: {e}"))?;
            println!("migrations applied");
            Ok(())
        }
        Command::RetireDatabaseIdentity(args) => {
            let url = args
                .database_url
                .ok_or("DATABASE_URL (or --database-url) is not set")?;
            let (old, new) = store::retire_database_identity(&url).await.map_err(|e| {
                format!(
                    "cannot retire the database identity (is `switchboard migrate` applied?): {e}"
                )
            })?;
            println!(
                "database identity {old} retired; now {new}: running replicas stop reading                  the routes cached under the old one within {} s",
                cache::identity::CHECK_INTERVAL.as_secs()
            );
            Ok(())
        }
        Command::Serve(args) => {
            serve(ServeConfig::from_args(args).map_err(|e| e.to_string())?).await
        }
        Command::Token(args) => {
            let role = DbRole::parse(&args.role)
                .ok_or("--role must be anon, authenticated or service_role")?;
            let sub = args
                .sub
                .map(|s| Uuid::try_parse(&s).map_err(|_| "--sub must be a UUID"))
                .transpose()?;
            if role == DbRole::Authenticated && sub.is_none() {
                return Err("--sub is required for --role authenticated".into());
            }
            let token = mint_token(&args.jwt_secret, role, sub, args.ttl, Map::new())
                .map_err(|e| format!("cannot sign token: {e}"))?;
            println!("{token}");
            Ok(())
        }
        Command::Dev(args) => dev(args).await,
    }
}

async fn serve(config: ServeConfig) -> Result<(), String> {
    let metrics_export = MetricsExport::from_env().map_err(|e| e.to_string())?;
    let app = Application::build(config)
        .await
        .map_err(|e| e.to_string())?
        .with_metrics_export(metrics_export);
    tracing::info!(
        addr = %app.local_addr(),
        admin = %app.admin_addr(),
        tzdb = switchboard::domain::TZDB_VERSION,
        "switchboard serving gRPC; metrics at http://<admin>/metrics"
    );
    app.run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn dev(args: DevArgs) -> Result<(), String> {
    migrate::create_database_if_missing(&args.database_url)
        .await
        .map_err(|e| {
            format!(
                "cannot create the dev database (is Postgres up on {}?): {e}",
                args.database_url
            )
        })?;
    migrate::run(&args.database_url)
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    migrate::seed(&args.database_url)
        .await
        .map_err(|e| format!("seeding failed: {e}"))?;
    let demo_users = [
        ("Acme Dental admin", "a0000000-0000-4000-8000-000000000001"),
        ("Acme Dental viewer", "a0000000-0000-4000-8000-000000000003"),
        (
            "Bluebird Clinic admin",
            "b0000000-0000-4000-8000-000000000001",
        ),
    ];
    println!("\nswitchboard dev: database migrated and seeded; tokens valid for 24 h:\n");
    let service = mint_token(
        DEV_JWT_SECRET,
        DbRole::ServiceRole,
        None,
        86_400,
        Map::new(),
    )
    .map_err(|e| e.to_string())?;
    println!("  export SERVICE_TOKEN={service}   # service_role (media server)");
    for (who, sub) in demo_users {
        let sub = Uuid::try_parse(sub).map_err(|e| e.to_string())?;
        let token = mint_token(
            DEV_JWT_SECRET,
            DbRole::Authenticated,
            Some(sub),
            86_400,
            Map::new(),
        )
        .map_err(|e| e.to_string())?;
        let var = who.to_uppercase().replace(' ', "_");
        println!("  export {var}_TOKEN={token}");
    }
    println!("\n  more: switchboard token --role authenticated --sub <user uuid>\n");
    let config = ServeConfig::from_args(ServeArgs {
        database_url: Some(args.database_url),
        redis_url: Some(args.redis_url),
        jwt_secret: Some(DEV_JWT_SECRET.into()),
        listen: args.listen,
        admin_listen: args.admin_listen,
        db_max_connections: 8,
        db_acquire_timeout_ms: 2000,
        request_timeout_ms: 5000,
        shutdown_timeout_ms: 2000,
        ..ServeArgs::defaults()
    })
    .map_err(|e| e.to_string())?;
    serve(config).await
}

/// SIGTERM (orchestrators) or Ctrl-C (a terminal).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
