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
    conn.close().await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
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
