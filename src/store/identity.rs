//! The database's own identity (`switchboard_private.database_identity`,
//! made by the migration `..._database_identity.sql`): a random id that
//! scopes the Redis tier's keys, so a database made again with the same
//! numbers, or another deployment sharing the Redis, never reads our routes.

use std::{fmt, str::FromStr};

use sqlx::{postgres::PgConnectOptions, Connection, PgConnection, Row};

use super::PgStore;

/// 32 lowercase hex digits (the UUID without dashes): safe in a Redis key
/// and in a SCAN pattern, and no `{`, so no Cluster hash tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseIdentity(String);

impl DatabaseIdentity {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn from_row(row: &sqlx::postgres::PgRow, column: usize) -> Result<Self, sqlx::Error> {
        let id: uuid::Uuid = row.try_get(column)?;
        Ok(DatabaseIdentity(id.simple().to_string()))
    }
}

impl fmt::Display for DatabaseIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// One simple query (one implicit transaction): `ROLE NONE` undoes a role
// another client of a transaction pooler left set for the session, and the
// search path puts its temporary schema last (`tx::SEARCH_PATH`).
const READ: &str = concat!(
    "SET LOCAL ROLE NONE; SET LOCAL search_path = ",
    super::tx::search_path!(),
    "; select id from switchboard_private.database_identity"
);

const RETIRE: &str = "\
    with old as (select id from switchboard_private.database_identity for update) \
    update switchboard_private.database_identity d \
    set id = gen_random_uuid(), created_at = now() \
    from old returning old.id, d.id";

impl PgStore {
    /// The identity as the primary has it now. One simple query (no named
    /// statement), so it works through a transaction pooler.
    pub(crate) async fn database_identity(&self) -> Result<DatabaseIdentity, sqlx::Error> {
        let rows = sqlx::raw_sql(READ).fetch_all(self.pool()).await?;
        let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
        DatabaseIdentity::from_row(row, 0)
    }
}

/// Replaces the identity with a new random one: `(old, new)`. For operators,
/// after a restore or a clone (see the migration's comment).
pub async fn retire_database_identity(
    database_url: &str,
) -> Result<(DatabaseIdentity, DatabaseIdentity), sqlx::Error> {
    let options = PgConnectOptions::from_str(database_url)?
        .application_name("switchboard-retire-database-identity")
        .extra_float_digits(None);
    let mut conn = PgConnection::connect_with(&options).await?;
    let rows = sqlx::raw_sql(RETIRE).fetch_all(&mut conn).await?;
    let _ = conn.close().await;
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    Ok((
        DatabaseIdentity::from_row(row, 0)?,
        DatabaseIdentity::from_row(row, 1)?,
    ))
}
