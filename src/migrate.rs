//! Applies `migrations/` (embedded at build time), and the dev helpers that
//! create a database and load the demo data.

use std::str::FromStr;

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    ConnectOptions, Connection, Executor, PgConnection,
};

/// The demo data, shared with the Supabase CLI project.
pub const SEED_SQL: &str = include_str!("../supabase/seed.sql");

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The Supabase bootstrap, the one migration whose text was edited after it
/// was released (it learned to look in pg_catalog before creating anything
/// in `auth`, where Supabase no longer lets `postgres` create).
const BOOTSTRAP_VERSION: i64 = 20261125000001;

/// The checksum sqlx recorded wherever the bootstrap's first text was
/// applied: SHA-384 of `git show 3e55f20:migrations/20261125000001_supabase_compat.sql`
/// (`tests/fixtures/20261125000001_supabase_compat.first.sql`), the only text it
/// had before the edit. The edit creates nothing that text did not, so a
/// database that applied it is up to date with the new one and gets the
/// new checksum, instead of sqlx's "previously applied but has been
/// modified". Any other recorded checksum is still refused.
const BOOTSTRAP_FIRST_CHECKSUM: &str = "22511bd9b119f35f91b4a5437b28b641c31da1d4ecc713478c8af66fa09d8fc4f586d01d13cd72010b143def9fded1a0";

/// Applies every migration not yet applied. sqlx records them in
/// `switchboard_private._sqlx_migrations`: a schema PostgREST does not expose,
/// so the bookkeeping table is not readable through Supabase's API.
pub async fn run(database_url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?
        .application_name("switchboard-migrate")
        .extra_float_digits(None)
        .options([("search_path", "switchboard_private")]);
    let mut conn = options.connect().await?;
    conn.execute("create schema if not exists switchboard_private")
        .await?;
    accept_first_bootstrap(&mut conn).await?;
    conn.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Records the current bootstrap's checksum where the first text's is
/// recorded (see `BOOTSTRAP_FIRST_CHECKSUM`). Before sqlx's own run, which
/// compares checksums; harmless if two replicas migrate at once.
async fn accept_first_bootstrap(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let Some(bootstrap) = MIGRATOR
        .iter()
        .find(|migration| migration.version == BOOTSTRAP_VERSION)
    else {
        return Ok(());
    };
    let recorded: bool = sqlx::query_scalar(
        "select pg_catalog.to_regclass('switchboard_private._sqlx_migrations') is not null",
    )
    .fetch_one(&mut *conn)
    .await?;
    if recorded {
        sqlx::query(
            "update switchboard_private._sqlx_migrations set checksum = $1 \
             where version = $2 and checksum = pg_catalog.decode($3, 'hex')",
        )
        .bind(bootstrap.checksum.as_ref())
        .bind(BOOTSTRAP_VERSION)
        .bind(BOOTSTRAP_FIRST_CHECKSUM)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Creates the database named in the URL if it does not exist (dev only).
pub async fn create_database_if_missing(database_url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        admin
            .execute(format!("create database \"{}\"", name.replace('"', "\"\"")).as_str())
            .await?;
    }
    admin.close().await
}

/// Loads the demo organizations, users, agents and customers (idempotent).
pub async fn seed(database_url: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::raw_sql(SEED_SQL).execute(&mut conn).await?;
    conn.close().await
}
