//! The one way a statement runs for a caller.
//!
//! [`PgStore::transaction`] runs the work of a store method in a transaction
//! under the caller's claims; [`PgStore::single_statement`] runs the one
//! statement of `ResolveAgent`, whose function applies the claims itself.
//! Both take their connection through `acquire` (the admission), bound every
//! statement by the call's deadline, give each round trip to Postgres its own
//! `db.statement` span named by operation, and map driver errors in one place
//! (`db_error`). A store method's body is only its statements.

use std::future::Future;

use sqlx::{
    postgres::{PgArguments, PgDatabaseError, PgRow},
    query::Query,
    Executor, Postgres, Transaction,
};
use tracing::Instrument;
use uuid::Uuid;

use super::{sql_literal, PgStore};
use crate::{auth::Claims, error::Error};

/// Read-only transactions let Postgres (and a reader replica) know no write
/// is coming, as PostgREST does for GET. `Read` also picks the read pool.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

/// A statement with its parameters bound, before it runs.
pub(super) type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// The caller's transaction as a store method's work sees it. Every
/// statement run through it is unnamed (`persistent(false)`: its parse and
/// execute reach the same server inside the transaction, behind a
/// transaction pooler too), timed by a span named by the method, and its
/// error mapped.
pub(super) struct Tx {
    transaction: Transaction<'static, Postgres>,
    statements: Statements,
}

/// What the runner knows of a transaction's statements.
struct Statements {
    /// The store method's: names each statement's span.
    operation: &'static str,
    /// A statement failed. The transaction is then dropped, not rolled back
    /// before the answer: the connection may be broken or the deadline gone,
    /// and sqlx sends the ROLLBACK when the connection goes back to the pool.
    failed: bool,
}

/// The search path of every statement the store sends, set
/// transaction-locally: `pg_catalog` first, so a built-in type or function
/// is always the one meant, and the session's temporary schema last (left
/// out, Postgres searches it first for types and tables). Through a
/// transaction pooler a temporary object outlives the client that made it
/// on the server connection: a `pg_temp.uuid` domain whose check runs a
/// function of that client's would otherwise run inside our caller's
/// transaction, with our caller's claims, at every `::uuid`. Our SQL names
/// every table with its schema.
macro_rules! search_path {
    () => {
        "pg_catalog, pg_temp"
    };
}
pub(super) use search_path;
const SEARCH_PATH: &str = search_path!();

impl Statements {
    async fn run<R>(
        &mut self,
        fetch: impl Future<Output = Result<R, sqlx::Error>>,
    ) -> Result<R, Error> {
        self.settle(round_trip(self.operation, fetch).await)
    }

    fn settle<R>(&mut self, result: Result<R, Error>) -> Result<R, Error> {
        self.failed |= result.is_err();
        result
    }
}

impl Tx {
    pub(super) async fn fetch_all(&mut self, query: PgQuery<'_>) -> Result<Vec<PgRow>, Error> {
        self.statements
            .run(self.transaction.fetch_all(query.persistent(false)))
            .await
    }

    pub(super) async fn fetch_optional(
        &mut self,
        query: PgQuery<'_>,
    ) -> Result<Option<PgRow>, Error> {
        self.statements
            .run(self.transaction.fetch_optional(query.persistent(false)))
            .await
    }

    pub(super) async fn fetch_one(&mut self, query: PgQuery<'_>) -> Result<PgRow, Error> {
        self.statements
            .run(self.transaction.fetch_one(query.persistent(false)))
            .await
    }

    /// Whether the caller sees the row `id` of `public.{table}`: what RLS
    /// lets them read, for telling a refused write from a missing row.
    pub(super) async fn visible(&mut self, table: &'static str, id: Uuid) -> Result<bool, Error> {
        let sql = format!("select exists (select 1 from public.{table} where id = $1)");
        let fetch = sqlx::query_scalar::<_, bool>(&sql)
            .persistent(false)
            .bind(id)
            .fetch_one(&mut *self.transaction);
        let visible = round_trip("visibility_check", fetch).await;
        self.statements.settle(visible)
    }

    /// A write touched no row. RLS still decides: if the caller can see the
    /// row but not change it, their role may not write (PERMISSION_DENIED);
    /// if they cannot see it, it does not exist for them (NOT_FOUND),
    /// exactly like a missing row.
    pub(super) async fn missing_or_forbidden(
        &mut self,
        table: &'static str,
        id: Uuid,
        what: &str,
    ) -> Error {
        match self.visible(table, id).await {
            Ok(true) => Error::PermissionDenied(format!("your role may not change this {what}")),
            Ok(false) => Error::not_found(what),
            Err(error) => error,
        }
    }
}

impl PgStore {
    /// Runs `work` in one transaction under `claims`, on the pool `access`
    /// names: BEGIN and the claims in one round trip, then the work's
    /// statements, then COMMIT if the work succeeded. A refusal of the
    /// work's own (not found, permission denied) rolls back before the
    /// answer; a failed statement leaves the rollback to sqlx (see `Tx`).
    ///
    /// Not on `ResolveAgent`'s path (that is `single_statement`), so the
    /// generic async closure costs the hot path nothing.
    pub(super) async fn transaction<T>(
        &self,
        claims: &Claims,
        access: Access,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut Tx) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = Tx {
            transaction: self.begin_as(claims, access).await?,
            statements: Statements {
                operation,
                failed: false,
            },
        };
        match work(&mut tx).await {
            Ok(done) => {
                round_trip("commit", tx.transaction.commit()).await?;
                Ok(done)
            }
            Err(error) if tx.statements.failed => Err(error),
            Err(error) => {
                let _ = tx
                    .transaction
                    .rollback()
                    .instrument(statement_span("rollback"))
                    .await;
                Err(error)
            }
        }
    }

    /// Runs `sql` as one simple-protocol statement, so in one implicit
    /// transaction and one round trip: no BEGIN, for a function that
    /// applies the caller's claims itself. `SET LOCAL` bounds it by the
    /// call's deadline and ends with it (transaction poolers included).
    /// `ROLE NONE`: a role another client of the pooler left set for the
    /// session must not decide who may call the function (it sets the
    /// caller's role itself). `search_path` with `pg_temp` last: a
    /// temporary type another client left on the server connection (a
    /// `pg_temp.uuid` domain whose check runs its own function, say) must
    /// not stand in for a built-in one in our casts; see [`SEARCH_PATH`].
    pub(super) async fn single_statement(
        &self,
        access: Access,
        operation: &'static str,
        sql: &str,
    ) -> Result<Vec<PgRow>, Error> {
        let mut statement = self.acquire_for_statement(access).await?;
        let connection = statement.connection().ok_or(Error::Internal)?;
        let sql = format!(
            "SET LOCAL ROLE NONE; SET LOCAL search_path = {SEARCH_PATH}; \
             SET LOCAL statement_timeout = '{timeout}ms'; {sql}",
            timeout = self.statement_timeout_ms()?,
        );
        // Through `Executor` (a boxed future): `RawSql::fetch_all` on a
        // connection is not `Send` for every lifetime, which tonic needs.
        // (`RawSql::fetch_optional` in sqlx 0.8 errors on zero rows.)
        let rows = round_trip(
            operation,
            Executor::fetch_all(connection, sqlx::raw_sql(&sql)),
        )
        .await?;
        // Read to its end: the connection holds nothing of this statement.
        // (An error, or this future dropped midway, returns it through
        // sqlx instead, which drains it.)
        self.park(access, statement);
        Ok(rows)
    }

    async fn begin_as(
        &self,
        claims: &Claims,
        access: Access,
    ) -> Result<Transaction<'static, Postgres>, Error> {
        let claims_literal = sql_literal(&claims.json).ok_or(Error::Internal)?;
        let mode = match access {
            Access::Read => "READ ONLY",
            Access::Write => "READ WRITE",
        };
        let connection = self.acquire(access).await?;
        let timeout_ms = self.statement_timeout_ms()?;
        // The legacy per-claim settings are blanked: auth.uid(), auth.role(),
        // auth.email() and auth.jwt() read them before `request.jwt.claims`,
        // and through a transaction pooler another client may have left one
        // set for the session on this server connection. Same round trip.
        let begin = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED {mode}; \
             SELECT pg_catalog.set_config('request.jwt.claims', {claims_literal}, true), \
                    pg_catalog.set_config('request.jwt.claim', '', true), \
                    pg_catalog.set_config('request.jwt.claim.sub', '', true), \
                    pg_catalog.set_config('request.jwt.claim.role', '', true), \
                    pg_catalog.set_config('request.jwt.claim.email', '', true), \
                    pg_catalog.set_config('role', '{role}', true), \
                    pg_catalog.set_config('search_path', '{SEARCH_PATH}', true), \
                    pg_catalog.set_config('statement_timeout', '{timeout}ms', true)",
            role = claims.role.as_str(),
            timeout = timeout_ms,
        );
        // `Pool::begin_with` is exactly this, minus the acquire we count.
        round_trip("begin", Transaction::begin(connection, Some(begin.into()))).await
    }

    /// No statement may outlive its call: Postgres stops it when the call's
    /// deadline passes, lock waits included. Read after the connection is
    /// acquired, so a wait for one is not counted twice.
    fn statement_timeout_ms(&self) -> Result<u128, Error> {
        match crate::deadline::remaining() {
            Some(left) if left.is_zero() => {
                Err(Error::DeadlineExceeded("deadline exceeded".into()))
            }
            Some(left) => Ok(left.as_millis().clamp(1, self.statement_timeout_ms.max(1))),
            None => Ok(self.statement_timeout_ms),
        }
    }
}

/// One round trip to Postgres: in its span, its error mapped.
async fn round_trip<R>(
    operation: &'static str,
    fetch: impl Future<Output = Result<R, sqlx::Error>>,
) -> Result<R, Error> {
    fetch
        .instrument(statement_span(operation))
        .await
        .map_err(|error| db_error(error, operation))
}

/// The span of one round trip to Postgres. Named by our operation, never by
/// its SQL: ours carries the caller's claims and phone numbers as literals.
fn statement_span(operation: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: "switchboard::store",
        "db.statement",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
    )
}

/// Maps a driver error to what a client may see. The details go to the log.
pub(super) fn db_error(error: sqlx::Error, operation: &'static str) -> Error {
    match &error {
        sqlx::Error::Database(db) => {
            let pg = db.try_downcast_ref::<PgDatabaseError>();
            let code = db.code().unwrap_or_default();
            let constraint = db.constraint().unwrap_or_default();
            let column = pg.and_then(|p| p.column()).unwrap_or_default();
            tracing::debug!(operation, code = %code, constraint, column, "database refused");
            match code.as_ref() {
                "23505" if constraint == "caller_rules_one_per_pattern" => Error::AlreadyExists(
                    "a caller rule with this match and pattern already exists".into(),
                ),
                "23503" if constraint == "agents_after_hours_same_org_fkey" => Error::invalid(
                    "business_hours.after_hours_agent_id does not name an agent of this organization",
                ),
                "23503" if constraint == "caller_rules_agent_same_org_fkey" => {
                    Error::invalid("rule.agent_id does not name an agent of this organization")
                }
                "23503" if constraint == "agent_versions_agent_same_org_fkey" => {
                    Error::not_found("agent")
                }
                "23514" if constraint == "agents_after_hours_not_itself" => Error::invalid(
                    "business_hours: the after-hours agent or destination may not be the agent itself",
                ),
                // Raised by our own triggers, with messages written for clients.
                "23514"
                    if matches!(
                        constraint,
                        "agents_serving_versions_exist" | "agents_latest_version_by_publishing"
                    ) =>
                {
                    Error::invalid(db.message().to_owned())
                }
                "23514"
                    if matches!(
                        constraint,
                        "caller_rules_per_org" | "agent_versions_version_check"
                    ) =>
                {
                    Error::FailedPrecondition(db.message().to_owned())
                }
                "23505" if constraint == "agents_phone_number_key" => {
                    Error::AlreadyExists("phone number is already taken by an agent".into())
                }
                "23505" => Error::AlreadyExists("a row with these values already exists".into()),
                "42501" => Error::PermissionDenied("your role may not do this".into()),
                "23502" if column == "org_id" => {
                    Error::PermissionDenied("you are not a member of any organization".into())
                }
                "23502" => Error::invalid(format!("{column} is required")),
                "23503" if constraint.ends_with("org_id_fkey") => {
                    Error::invalid("org_id does not name an organization")
                }
                "23503" => Error::invalid("a referenced row does not exist"),
                "23514" if constraint == "agents_fallback_not_itself" => {
                    Error::invalid("fallback_destination may not be the agent's own number")
                }
                "23514" => Error::invalid(format!("a value breaks the rule {constraint}")),
                "22P02" | "22023" | "22001" | "22008" | "22003" => {
                    Error::invalid("a value is not valid")
                }
                // Read-only after a failover, serialization and deadlock
                // failures, lock timeouts, resources: worth retrying.
                "25006" | "40001" | "40P01" | "55P03" => {
                    tracing::warn!(operation, error = %error, "database refused for now");
                    Error::Unavailable("database unavailable".into())
                }
                c if c.starts_with("53") || c.starts_with("58") => {
                    tracing::warn!(operation, error = %error, "database unavailable");
                    Error::Unavailable("database unavailable".into())
                }
                "57014" => Error::DeadlineExceeded("the database query timed out".into()),
                c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                    tracing::warn!(operation, error = %error, "database unavailable");
                    Error::Unavailable("database unavailable".into())
                }
                _ => {
                    tracing::error!(operation, error = %error, "database error");
                    Error::Internal
                }
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => {
            tracing::warn!(operation, error = %error, "database unavailable");
            Error::Unavailable("database unavailable".into())
        }
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            tracing::warn!(operation, error = %error, "database connection failed");
            Error::Unavailable("database unavailable".into())
        }
        _ => {
            tracing::error!(operation, error = %error, "database error");
            Error::Internal
        }
    }
}
