//! Call records that could not reach Postgres, kept in a Redis stream
//! until one can: any replica drains it, so a replica that dies after a
//! call loses nothing that reached the stream.
//!
//! One stream per deployment (`<prefix>calls:backlog`) read by one consumer
//! group, each replica a consumer named by its instance id. A replica reads
//! its own unacknowledged entries first, then new ones, and claims entries
//! another consumer has held for `CLAIM_IDLE` (it died mid-write). An entry
//! is acknowledged and deleted once Postgres has it. Writes are idempotent
//! (the record is an upsert of facts keyed by (org, call id)), so an entry
//! written twice (a replica died between the write and the ack) is still
//! one record with the same content.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::{LiveCalls, LiveError};
use crate::domain::CallFact;

const GROUP: &str = "recorders";
/// An entry held this long by a consumer is taken over (it died).
pub(crate) const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// Entries read per round.
const BATCH: usize = 100;
/// The stream keeps at most about this many entries (the oldest go).
const MAX_ENTRIES: usize = 1_000_000;

/// One entry read: its stream id and the fact, if it parsed.
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fact: Option<CallFact>,
}

fn entry(raw: &StreamId) -> Entry {
    let fact = raw
        .map
        .get("fact")
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .and_then(|json| serde_json::from_str(&json).ok());
    Entry {
        id: raw.id.clone(),
        fact,
    }
}

impl LiveCalls {
    fn backlog_key(prefix: &str) -> String {
        format!("{prefix}calls:backlog")
    }

    /// Keeps `fact` until Postgres takes it.
    pub(crate) async fn push_backlog(&self, fact: &CallFact) -> Result<(), LiveError> {
        let (mut link, prefix) = self.link()?;
        let json = serde_json::to_string(fact).map_err(|e| LiveError::Shape(e.to_string()))?;
        let add = redis::cmd("XADD")
            .arg(Self::backlog_key(&prefix))
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_ENTRIES)
            .arg("*")
            .arg("fact")
            .arg(json)
            .to_owned();
        match tokio::time::timeout(self.settings.timeout, add.query_async::<String>(&mut link))
            .await
        {
            Ok(added) => added.map(|_| ()).map_err(LiveError::from),
            Err(_) => Err(LiveError::Timeout(self.settings.timeout)),
        }
    }

    /// The next entries for `consumer`: its own unacknowledged ones, else
    /// those another consumer left for `CLAIM_IDLE`, else new ones.
    pub(crate) async fn read_backlog(&self, consumer: &str) -> Result<Vec<Entry>, LiveError> {
        let (mut link, prefix) = self.link()?;
        let key = Self::backlog_key(&prefix);
        let timeout = self.settings.timeout.max(Duration::from_secs(1));
        let run = async {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut link)
                .await;
            if let Err(error) = created {
                if error.code() != Some("BUSYGROUP") {
                    return Err(error);
                }
            }
            for start in ["0", ">"] {
                if start == ">" {
                    let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(u64::try_from(CLAIM_IDLE.as_millis()).unwrap_or(u64::MAX))
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut link)
                        .await?;
                    if !claimed.claimed.is_empty() {
                        return Ok(claimed.claimed.iter().map(entry).collect());
                    }
                }
                let read: StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(BATCH)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(start)
                    .query_async(&mut link)
                    .await?;
                let entries: Vec<Entry> = read
                    .keys
                    .iter()
                    .flat_map(|k| k.ids.iter().map(entry))
                    .collect();
                if !entries.is_empty() {
                    return Ok(entries);
                }
            }
            Ok(Vec::new())
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(read) => read.map_err(LiveError::from),
            Err(_) => Err(LiveError::Timeout(timeout)),
        }
    }

    /// Postgres has these: acknowledge and delete them.
    pub(crate) async fn settle_backlog(&self, ids: &[String]) -> Result<(), LiveError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (mut link, prefix) = self.link()?;
        let key = Self::backlog_key(&prefix);
        let run = async {
            redis::cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(ids)
                .query_async::<()>(&mut link)
                .await?;
            redis::cmd("XDEL")
                .arg(&key)
                .arg(ids)
                .query_async::<()>(&mut link)
                .await
        };
        match tokio::time::timeout(self.settings.timeout.max(Duration::from_secs(1)), run).await {
            Ok(done) => done.map_err(LiveError::from),
            Err(_) => Err(LiveError::Timeout(self.settings.timeout)),
        }
    }
}
