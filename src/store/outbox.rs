//! The invalidation outbox (`switchboard_private.invalidation_outbox`, see
//! migration `..._invalidation_outbox.sql`): the SQL the listener runs. Every
//! statement is unnamed (`persistent(false)`) and stands alone, so it works
//! on a direct connection, a session pooler and a transaction pooler alike.

use sqlx::{Executor, PgPool, Postgres, Row};

/// One outbox row: its sequence number and what changed (JSON).
#[derive(Debug)]
pub(crate) struct OutboxRow {
    pub(crate) seq: i64,
    pub(crate) change: String,
}

/// What one read saw, all under one snapshot.
#[derive(Debug)]
pub(crate) struct OutboxRead {
    /// Rows above `after` (at most `limit`, in order), then rows in the
    /// ranges asked for.
    pub(crate) above: Vec<OutboxRow>,
    pub(crate) in_ranges: Vec<OutboxRow>,
    /// `pg_snapshot_xmin` of the read's snapshot: every transaction id
    /// below it had finished when the rows were read.
    pub(crate) xmin: u64,
    /// The highest sequence number ever pruned.
    pub(crate) pruned_upto: i64,
    /// The highest sequence number ever taken (the sequence's own value,
    /// not transactional; 0 before the first). Below what a reader already
    /// read, the outbox is not the one it read: the database was made again
    /// or restored from a backup.
    pub(crate) last_taken: i64,
}

/// Rows with `seq > after` (the first `limit`) and rows with `seq` in any of
/// `ranges` (inclusive), with the snapshot's xmin and the prune mark: one
/// statement, so one snapshot; index scans on the primary key.
pub(crate) async fn read_outbox<'c, E>(
    executor: E,
    after: i64,
    limit: i64,
    ranges: &[(i64, i64)],
) -> Result<OutboxRead, sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
{
    let (froms, tos): (Vec<i64>, Vec<i64>) = ranges.iter().copied().unzip();
    let rows = sqlx::query(
        "with above as ( \
             select seq, change::text as change, false as in_range \
             from switchboard_private.invalidation_outbox \
             where seq > $1 order by seq limit $2), \
         in_ranges as ( \
             select o.seq, o.change::text as change, true as in_range \
             from unnest($3::bigint[], $4::bigint[]) as r(first, last) \
             join switchboard_private.invalidation_outbox o on o.seq between r.first and r.last) \
         select s.xmin::text as xmin, s.last_taken, p.upto, c.seq, c.change, c.in_range \
         from (select pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()) as xmin, \
                      coalesce(pg_catalog.pg_sequence_last_value( \
                          pg_catalog.pg_get_serial_sequence('switchboard_private.invalidation_outbox', 'seq')::regclass), 0) \
                        as last_taken) s \
         cross join switchboard_private.invalidation_outbox_pruned p \
         left join (select * from above union all select * from in_ranges) c on true \
         order by c.in_range, c.seq",
    )
    .persistent(false)
    .bind(after)
    .bind(limit)
    .bind(froms)
    .bind(tos)
    .fetch_all(executor)
    .await?;
    let mut read = OutboxRead {
        above: Vec::new(),
        in_ranges: Vec::new(),
        xmin: 0,
        pruned_upto: 0,
        last_taken: 0,
    };
    for row in rows {
        let xmin: String = row.try_get("xmin")?;
        read.xmin = parse_xid(&xmin)?;
        read.pruned_upto = row.try_get("upto")?;
        read.last_taken = row.try_get("last_taken")?;
        let (Some(seq), Some(change), Some(in_range)) = (
            row.try_get::<Option<i64>, _>("seq")?,
            row.try_get::<Option<String>, _>("change")?,
            row.try_get::<Option<bool>, _>("in_range")?,
        ) else {
            continue;
        };
        let row = OutboxRow { seq, change };
        if in_range {
            read.in_ranges.push(row);
        } else {
            read.above.push(row);
        }
    }
    Ok(read)
}

/// A transaction id assigned now, so larger than that of every transaction
/// that had one before this call (the fence a gap is settled against).
/// Costs one transaction id; run only when a read found a new gap.
pub(crate) async fn new_fence<'c, E>(executor: E) -> Result<u64, sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
{
    let xid: String = sqlx::query_scalar("select pg_catalog.pg_current_xact_id()::text")
        .persistent(false)
        .fetch_one(executor)
        .await?;
    parse_xid(&xid)
}

/// Deletes rows older than `retention`; returns how many went.
pub(crate) async fn prune_outbox<'c, E>(
    executor: E,
    retention: std::time::Duration,
) -> Result<i64, sqlx::Error>
where
    E: Executor<'c, Database = Postgres>,
{
    let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    sqlx::query_scalar(
        "select switchboard_private.prune_invalidation_outbox(make_interval(secs => $1::double precision))",
    )
    .persistent(false)
    .bind(seconds as f64)
    .fetch_one(executor)
    .await
}

/// Sends `payload` on `channel` from a connection of `pool` (not the
/// listener's): the listener proves it hears by receiving it.
pub(crate) async fn notify(pool: &PgPool, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_catalog.pg_notify($1, $2)")
        .persistent(false)
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await
        .map(|_| ())
}

fn parse_xid(text: &str) -> Result<u64, sqlx::Error> {
    text.parse()
        .map_err(|_| sqlx::Error::Protocol(format!("not a transaction id: {text:?}")))
}
