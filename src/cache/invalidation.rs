//! Turning changes into evictions.
//!
//! * Postgres: triggers on `agents`, `organizations` and `customers` append
//!   what changed to `switchboard_private.invalidation_outbox` and NOTIFY
//!   `switchboard_invalidate` with an empty payload (migration
//!   `..._invalidation_outbox.sql`). Any login role can NOTIFY and LISTEN,
//!   so a notification is only a wake-up: the listener reads the outbox
//!   after where it is (`OutboxCursor`), evicts from memory and Redis, and
//!   fans the change out on Redis pub/sub. Its payload is never read, so a
//!   forged one costs one indexed read and evicts nothing.
//! * Redis pub/sub: every replica subscribes and evicts from its memory tier.
//!
//! The listener holds a direct or session-mode connection (LISTEN does not
//! work through a transaction pooler) and proves it hears: right after it
//! connects and every `PROBE_EVERY`, it sends a notification of its own from
//! the store's pool; `DEAF_AFTER` of the last `PROBE_WINDOW` probes not
//! heard within `PROBE_TIMEOUT` of their commit make it *deaf* (metric, log, memory tier
//! dropped, no fill kept) until one is heard again. Only a probe the
//! database took counts: one it did not (unreachable, or an SQL error)
//! proves nothing either way, and a single late one on a loaded machine is
//! not deafness. Nor is one that came back while the listener ran a
//! statement of its own (no proof through a pooler, but no miss either):
//! that one is sent again, and only the third such return in a row counts
//! as unheard. So that a probe finds the listener idle, the listener runs
//! no statement while a young probe is on its way (`PROBE_QUIET`). A
//! probe's notification, this replica's or another's, carries no change, so
//! it never costs an outbox read: with many replicas on one database, each
//! would otherwise read the outbox at every other replica's probe, and its
//! own probe would come back during those reads. Probe ids are random, so
//! nobody who LISTENs can send a copy of the next one ahead of it.
//!
//! Either connection may drop. While the listener is disconnected the
//! memory tier keeps serving (a call must not fail because the database
//! blinked) but keeps no new fill; after a reconnect it catches up from its
//! cursor and keeps the memory tier, unless rows it had not read were pruned
//! meanwhile, then it drops it. The Redis subscriber drops the memory tier
//! when it reconnects (pub/sub has no history).

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{postgres::PgListener, ConnectOptions, PgPool};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{Cache, RedisTier};
use crate::{
    domain::OrgId,
    store::outbox::{self, OutboxRead, OutboxRow},
};

pub(crate) const PG_CHANNEL: &str = "switchboard_invalidate";
/// How every replica's probe payload starts (then its instance and id).
const PROBE_PREFIX: &str = "probe:";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// Routes of these called numbers.
    Numbers { numbers: Vec<String> },
    /// These caller records.
    Callers { callers: Vec<CallerKey> },
    /// Everything (a TRUNCATE, or an org with very many numbers).
    All,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallerKey {
    pub(crate) org_id: OrgId,
    pub(crate) phone: String,
}

impl Invalidation {
    pub(crate) fn numbers<'a>(numbers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut numbers: Vec<String> = numbers.into_iter().map(str::to_owned).collect();
        numbers.dedup();
        Invalidation::Numbers { numbers }
    }

    /// An unreadable message evicts everything: safe, if not cheap.
    pub(crate) fn parse(payload: &str) -> Self {
        serde_json::from_str(payload).unwrap_or_else(|error| {
            tracing::warn!(%error, "unreadable invalidation; dropping the whole cache");
            Invalidation::All
        })
    }
}

/// How long the listener's own probe may take to come back, from its
/// commit, before it counts as unheard. Generous: a false alarm costs the
/// memory tier (and at start-up, the start).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Unheard probes among the last `PROBE_WINDOW` that make the listener
/// deaf. One probe delayed past its timeout (a machine under load) is not
/// deafness. Through a transaction pooler most probes go unheard, but not
/// all: a statement of the listener's that lands on the server connection
/// its LISTEN ran on picks up what waited there. So not "in a row".
pub(crate) const DEAF_AFTER: u32 = 2;
pub(crate) const PROBE_WINDOW: u32 = 3;
/// A probe that came back while the listener ran a statement of its own is
/// no verdict and goes again, at most this many times in a row: the next
/// such return counts as unheard. Through a pooler a deaf listener's probe
/// comes back that way by chance (or by a neighbour's forged copy), so it
/// must not put the verdict off for ever.
const BUSY_AT_MOST: u32 = 2;
/// The least time between a probe that came back busy and the next one: a
/// database too busy to let the listener idle gets no probe storm.
const RESEND_AFTER: Duration = Duration::from_secs(1);
/// After a probe commits (twice this after it is sent, until the pool says
/// it committed), how long the listener puts off reading the outbox for a
/// change that woke it, so that the probe finds it idle: without this,
/// changes (or anyone's NOTIFY, timed to the probe) would make its probes
/// come back during its reads.
const PROBE_QUIET: Duration = Duration::from_millis(250);
/// The longest a connected listener takes to reach a verdict: a window of
/// probes, unheard ones timing out and heard ones waiting `PROBE_EVERY`
/// for the next (a probe follows an unheard one at once), each put off at
/// most `BUSY_AT_MOST` times by a return during a statement.
pub(crate) const VERDICT_WITHIN: Duration = Duration::from_secs(
    PROBE_TIMEOUT.as_secs() * PROBE_WINDOW as u64
        + PROBE_EVERY.as_secs() * 2
        + RESEND_AFTER.as_secs() * (BUSY_AT_MOST * PROBE_WINDOW) as u64,
);
/// How often the listener proves it hears, and reads the outbox even if
/// nothing woke it.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(3);
/// How often it looks whether a probe is overdue or one is due.
const PROBE_TICK: Duration = Duration::from_millis(200);
/// Outbox rows older than this are pruned, every `PRUNE_EVERY`, by every
/// replica's listener. So the outbox holds the changes of the last
/// 11 minutes at most (plus those of transactions still open), and a
/// listener disconnected for less than 10 minutes catches up exactly.
pub(crate) const OUTBOX_RETENTION: Duration = Duration::from_secs(600);
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows read per statement while catching up.
const READ_BATCH: i64 = 1_000;
/// An outbox read slower than this is logged (it was sqlx's statement
/// threshold, with the whole SQL).
const SLOW_OUTBOX_READ: Duration = Duration::from_secs(1);

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(4)).min(2_000))
}

/// What start-up (and anyone watching) learns from the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListenerState {
    /// Never connected yet.
    Starting,
    /// Cannot reach Postgres; retrying (not a reason to refuse to start).
    Unreachable,
    /// Connected; its first probe is on its way.
    Probing,
    /// Connected, caught up, and heard its own probe.
    Hearing,
    /// Connected, but its own probe did not arrive.
    Deaf,
}

/// Where a listener is in the outbox, kept across reconnects.
///
/// Sequence numbers are taken at insert and become visible at commit, so
/// they commit out of order: when `top` (the highest read) is read, a lower
/// one may still be in flight. Every number at or below `top` not read yet
/// is kept in `gaps` and read again, by range, with each later read, until
/// it is read or proven never to come:
///
/// * A gap found by a read R lies below a row R saw committed, so its
///   number was taken before R's snapshot, by a transaction that already
///   had its id (the trigger takes it first, see the migration).
/// * Right after R, `fence` assigns a new transaction id: larger than the
///   id of every transaction that had one before, that gap's included.
/// * A later read whose snapshot's `pg_snapshot_xmin` is above the fence
///   sees every such transaction finished. If the row is still not there,
///   its transaction rolled back: the gap is settled.
///
/// A gap whose transaction is open keeps being read (by range, on the
/// primary key) until it commits or rolls back, however long that takes.
#[derive(Debug, Default)]
pub(crate) struct OutboxCursor {
    /// Every sequence number above it is unread.
    top: i64,
    /// Numbers at or below `top` not read, that may still commit.
    gaps: Vec<Gap>,
    /// The highest number pruned, as last read.
    pruned_upto: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gap {
    first: i64,
    last: i64,
    /// The transaction id assigned after the read that found it; `None`
    /// until taken.
    fence: Option<u64>,
}

impl OutboxCursor {
    fn ranges(&self) -> Vec<(i64, i64)> {
        self.gaps.iter().map(|g| (g.first, g.last)).collect()
    }

    /// Takes in one read. Returns true if rows this cursor had not read may
    /// have been pruned since the last read (then nothing cached can be
    /// trusted).
    fn absorb(&mut self, read: &OutboxRead) -> bool {
        let lowest_unread = self
            .gaps
            .iter()
            .map(|g| g.first)
            .min()
            .unwrap_or(self.top + 1);
        let missed = read.pruned_upto > self.pruned_upto && read.pruned_upto >= lowest_unread;
        self.pruned_upto = self.pruned_upto.max(read.pruned_upto);
        for row in &read.in_ranges {
            self.fill(row.seq);
        }
        // Kept unless settled: every transaction below its fence finished.
        self.gaps
            .retain(|gap| gap.fence.is_none_or(|fence| read.xmin <= fence));
        for row in &read.above {
            if row.seq > self.top + 1 {
                self.gaps.push(Gap {
                    first: self.top + 1,
                    last: row.seq - 1,
                    fence: None,
                });
            }
            self.top = self.top.max(row.seq);
        }
        missed
    }

    /// A number read inside a gap: the gap splits around it.
    fn fill(&mut self, seq: i64) {
        let Some(at) = self
            .gaps
            .iter()
            .position(|g| g.first <= seq && seq <= g.last)
        else {
            return;
        };
        let gap = self.gaps.swap_remove(at);
        if gap.first < seq {
            self.gaps.push(Gap {
                last: seq - 1,
                ..gap
            });
        }
        if seq < gap.last {
            self.gaps.push(Gap {
                first: seq + 1,
                ..gap
            });
        }
    }

    fn needs_fence(&self) -> bool {
        self.gaps.iter().any(|g| g.fence.is_none())
    }

    fn set_fence(&mut self, fence: u64) {
        for gap in self.gaps.iter_mut().filter(|g| g.fence.is_none()) {
            gap.fence = Some(fence);
        }
    }
}

/// Listens to Postgres until aborted; `probe_pool` is the store's pool, the
/// "other connection" the listener's probes come from.
pub(crate) fn spawn_pg_listener(
    cache: Cache,
    database_url: String,
    probe_pool: PgPool,
) -> (JoinHandle<()>, watch::Receiver<ListenerState>) {
    let (state, watched) = watch::channel(ListenerState::Starting);
    let handle = tokio::spawn(async move {
        let mut cursor: Option<OutboxCursor> = None;
        let instance = format!("{PROBE_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let mut attempt = 0;
        loop {
            let mut listener = match connect_listener(&database_url).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "invalidation listener cannot connect; retrying");
                    state.send_replace(ListenerState::Unreachable);
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            if attempt > 0 {
                tracing::info!("invalidation listener reconnected; catching up from the outbox");
            }
            attempt = 0;
            state.send_replace(ListenerState::Probing);
            let mut session = Session {
                cache: &cache,
                listener: &mut listener,
                probe_pool: &probe_pool,
                state: &state,
                probes: Probes::new(&instance),
            };
            match session.run(&mut cursor).await {
                Ok(()) => tracing::warn!("invalidation listener lost its connection"),
                Err(error) => tracing::warn!(%error, "invalidation listener failed"),
            }
            // The state stays as it was until the next connect says more:
            // start-up keeps waiting for the verdict on a listener that
            // connected once.
            cache.listener_disconnected();
            attempt += 1;
        }
    });
    (handle, watched)
}

async fn connect_listener(database_url: &str) -> Result<PgListener, sqlx::Error> {
    // `PgListener::connect` without the `extra_float_digits` startup
    // parameter, which a PgBouncer with stock settings refuses.
    // No statement logging by sqlx, as the store's pools: under load it
    // printed the outbox read's whole SQL at WARN. `catch_up` reports a
    // slow read in one line instead.
    let options: sqlx::postgres::PgConnectOptions = database_url.parse()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options.extra_float_digits(None).disable_statement_logging())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(PG_CHANNEL).await?;
    Ok(listener)
}

/// One connection's life.
struct Session<'a> {
    cache: &'a Cache,
    listener: &'a mut PgListener,
    probe_pool: &'a PgPool,
    state: &'a watch::Sender<ListenerState>,
    probes: Probes,
}

impl Session<'_> {
    /// Until the connection is lost (Ok) or a statement on it fails.
    async fn run(&mut self, cursor: &mut Option<OutboxCursor>) -> Result<(), sqlx::Error> {
        // LISTEN came first, so nothing committed from here on goes unseen.
        // A first connection only learns where the outbox is: its memory
        // tier is empty and keeps nothing until it hears its probe.
        let apply = cursor.is_some();
        let cursor = cursor.get_or_insert_with(OutboxCursor::default);
        self.catch_up(cursor, apply).await?;
        self.prune().await;
        let mut last_prune = Instant::now();
        // A notification that arrived while this listener ran a statement
        // of its own waits in its buffer: a wake-up, but no proof that it
        // hears. Through a transaction pooler that is how notifications
        // reach it, when its statement lands on the server connection its
        // LISTEN ran on. Only one read from the socket while idle proves
        // that it holds that session. So the first probe goes once what
        // woke it meanwhile is read (a few rounds at most: a flood of
        // notifications does not hold it back for ever).
        for _ in 0..3 {
            if !self.drain_buffered() {
                break;
            }
            self.catch_up(cursor, true).await?;
        }
        let (sent_tx, mut sent_rx) = mpsc::channel(4);
        self.probes.send(self.probe_pool, &sent_tx);
        let mut ticker = tokio::time::interval(PROBE_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut woken = self.drain_buffered();
        loop {
            if woken && !self.probes.quiet() {
                self.catch_up(cursor, true).await?;
                woken = self.drain_buffered();
            }
            tokio::select! {
                // Notifications before the timer, so a probe that arrived
                // is seen before it is declared overdue. The buffer is
                // empty here, so this reads the socket.
                biased;
                received = self.listener.try_recv() => {
                    let Some(notification) = received? else { return Ok(()) };
                    self.cache.invalidations().notifications.inc();
                    // The payload is never trusted: at most it is a probe,
                    // which changes nothing. Anything else is a wake-up:
                    // changes come with an empty payload, never with a
                    // probe's, so a forged probe hides none.
                    match self.probes.classify(notification.payload()) {
                        Woken::OurProbe(probe) => {
                            if self.probes.heard(probe) && self.probes.unheard() < DEAF_AFTER {
                                self.hearing();
                            }
                        }
                        Woken::OtherProbe => {}
                        Woken::Change if self.probes.quiet() => woken = true,
                        Woken::Change => {
                            self.catch_up(cursor, true).await?;
                            woken = self.drain_buffered();
                        }
                    }
                }
                Some((probe, sent)) = sent_rx.recv() => {
                    self.probes.sent(probe, sent);
                    // The pool cannot reach the database: nothing is proven
                    // either way, and start-up must not wait for a verdict
                    // (an outage is "start and retry", never "refuse").
                    if sent == ProbeSent::Unreachable
                        && *self.state.borrow() == ListenerState::Probing
                    {
                        self.state.send_replace(ListenerState::Unreachable);
                    }
                }
                _ = ticker.tick() => {
                    if self.probes.overdue() {
                        self.report_unheard();
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY && !self.probes.quiet() {
                        self.prune().await;
                        woken |= self.drain_buffered();
                        last_prune = Instant::now();
                    }
                    if self.probes.due() {
                        // A poll, for a listener that hears nothing; then
                        // the probe, so that it arrives while this listener
                        // is idle (one that arrives during a statement of
                        // its own is no proof).
                        self.catch_up(cursor, true).await?;
                        woken |= self.drain_buffered();
                        self.probes.send(self.probe_pool, &sent_tx);
                    }
                }
            }
        }
    }

    /// Empties the buffer of notifications that arrived during this
    /// listener's own statements; true if any of them may mean a change.
    /// The probe on its way, if it is among them, proves nothing either
    /// way (`Probes::came_back_busy`).
    fn drain_buffered(&mut self) -> bool {
        let mut changed = false;
        while let Some(notification) = self.listener.next_buffered() {
            self.cache.invalidations().notifications.inc();
            match self.probes.classify(notification.payload()) {
                Woken::OurProbe(probe) => {
                    if self.probes.came_back_busy(probe) {
                        self.report_unheard();
                    }
                }
                Woken::OtherProbe => {}
                Woken::Change => changed = true,
            }
        }
        changed
    }

    /// A probe counted as unheard: the metric, and deafness if it is the
    /// `DEAF_AFTER`th of the window.
    fn report_unheard(&self) {
        self.cache.invalidations().probes_unheard.inc();
        if self.probes.unheard() >= DEAF_AFTER {
            self.deaf();
        }
    }

    /// Reads the outbox up to now and applies what this replica had not.
    async fn catch_up(
        &mut self,
        cursor: &mut OutboxCursor,
        apply: bool,
    ) -> Result<(), sqlx::Error> {
        loop {
            self.cache.invalidations().outbox_reads.inc();
            let started = std::time::Instant::now();
            let read = outbox::read_outbox(
                &mut *self.listener,
                cursor.top,
                READ_BATCH,
                &cursor.ranges(),
            )
            .await?;
            let took = started.elapsed();
            if took >= SLOW_OUTBOX_READ {
                tracing::warn!(
                    took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    rows = read.above.len() + read.in_ranges.len(),
                    "reading the invalidation outbox was slow (a busy database, or an outbox not pruned)"
                );
            }
            if read.last_taken < cursor.top {
                // Fewer numbers taken than this replica read: another
                // outbox (the database made again, or restored from a
                // backup). Read it from its start, and trust nothing cached.
                tracing::warn!(
                    "the invalidation outbox started over (database recreated or restored); reading it from the start and dropping the memory tier"
                );
                *cursor = OutboxCursor::default();
                self.cache.drop_memory();
                continue;
            }
            let missed = cursor.absorb(&read);
            if apply {
                if missed {
                    tracing::warn!(
                        "outbox rows this replica had not read were pruned; dropping the memory tier"
                    );
                    self.cache.drop_memory();
                }
                apply_rows(self.cache, &read).await;
            }
            if cursor.needs_fence() {
                let fence = outbox::new_fence(&mut *self.listener).await?;
                cursor.set_fence(fence);
            }
            if i64::try_from(read.above.len()).unwrap_or(i64::MAX) < READ_BATCH {
                return Ok(());
            }
        }
    }

    async fn prune(&mut self) {
        match outbox::prune_outbox(&mut *self.listener, OUTBOX_RETENTION).await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "invalidation outbox pruned"),
            Err(error) => tracing::warn!(%error, "cannot prune the invalidation outbox"),
        }
    }

    fn hearing(&self) {
        if *self.state.borrow() == ListenerState::Deaf {
            tracing::info!("invalidation listener hears its probes again");
        }
        self.cache.listener_hearing();
        self.state.send_replace(ListenerState::Hearing);
    }

    fn deaf(&self) {
        if *self.state.borrow() != ListenerState::Deaf {
            tracing::error!(
                unheard = self.probes.unheard(),
                of_last = PROBE_WINDOW,
                within_s = PROBE_TIMEOUT.as_secs(),
                "{DEAF}; nothing is kept in the memory tier until it hears again"
            );
        }
        self.cache.listener_deaf();
        self.state.send_replace(ListenerState::Deaf);
    }
}

/// Why a deaf listener is deaf, and what to do: for the log and start-up.
pub(crate) const DEAF: &str =
    "the invalidation listener is connected but does not receive its own \
    notifications (LISTEN through a transaction pooler?): set \
    SWITCHBOARD_LISTENER_DATABASE_URL to a direct or session-mode Postgres URL";

/// The listener's probes: one outstanding at a time.
struct Probes {
    /// This listener's prefix: a probe of another replica is a wake-up.
    instance: String,
    /// The probe on its way, and when its NOTIFY committed (`None` until
    /// the pool says it did).
    outstanding: Option<(u64, Option<Instant>)>,
    last_sent: Option<Instant>,
    /// The verdicts on the last probes, newest in bit 0: 1 = not heard in
    /// time, 0 = heard.
    recent: u32,
    /// The last probe came back while the listener was busy: no verdict,
    /// and the next one goes after `RESEND_AFTER`.
    again: bool,
    /// Returns during a statement in a row, for the verdict under way.
    busy: u32,
    /// The last probe counted unheard, while it may still arrive: heard
    /// late, it still proves hearing.
    late: Option<u64>,
}

/// What a notification's payload says, to the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Woken {
    /// One of this listener's probes (its id).
    OurProbe(u64),
    /// Another replica's probe (or a payload shaped like one): no change.
    OtherProbe,
    /// Anything else: read the outbox.
    Change,
}

/// What became of a probe's NOTIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeSent {
    /// Committed: the listener should hear it.
    Committed,
    /// The database was not reached.
    Unreachable,
    /// The database refused the statement: nothing was sent.
    Refused,
}

impl Probes {
    fn new(instance: &str) -> Self {
        Probes {
            instance: instance.to_owned(),
            outstanding: None,
            last_sent: None,
            recent: 0,
            again: false,
            busy: 0,
            late: None,
        }
    }

    fn classify(&self, payload: &str) -> Woken {
        if let Some(rest) = payload.strip_prefix(self.instance.as_str()) {
            if let Some(number) = rest.strip_prefix(':') {
                // Ours by its prefix; an id we did not write matches no
                // probe on its way.
                return Woken::OurProbe(number.parse().unwrap_or(u64::MAX));
            }
        }
        if payload.starts_with(PROBE_PREFIX) {
            Woken::OtherProbe
        } else {
            Woken::Change
        }
    }

    /// No probe on its way, and: the last one came back busy
    /// `RESEND_AFTER` ago; or it went unheard (the next verdict should not
    /// wait); or it is `PROBE_EVERY` old.
    fn due(&self) -> bool {
        let since = |wait| self.last_sent.is_none_or(|t| t.elapsed() >= wait);
        self.outstanding.is_none()
            && if self.again {
                since(RESEND_AFTER)
            } else {
                self.recent & 1 == 1 || since(PROBE_EVERY)
            }
    }

    /// A probe is on its way, sent less than twice `PROBE_QUIET` ago and,
    /// if it committed, committed less than `PROBE_QUIET` ago. The listener
    /// runs no statement of its own meanwhile, so that the probe finds it
    /// idle; a change that woke it is read once this passes.
    fn quiet(&self) -> bool {
        let Some((_, committed)) = self.outstanding else {
            return false;
        };
        self.last_sent
            .is_some_and(|t| t.elapsed() < PROBE_QUIET * 2)
            && committed.is_none_or(|t| t.elapsed() < PROBE_QUIET)
    }

    /// The probe on its way came back while the listener ran a statement of
    /// its own: through a transaction pooler that happens by chance, so it
    /// is not heard; on a busy database it happens to a listener that
    /// hears, so it is not unheard either. It is sent again, `BUSY_AT_MOST`
    /// times in a row; after that it counts as unheard (true).
    fn came_back_busy(&mut self, probe: u64) -> bool {
        if !matches!(self.outstanding, Some((outstanding, _)) if outstanding == probe) {
            return false;
        }
        self.outstanding = None;
        self.busy += 1;
        if self.busy > BUSY_AT_MOST {
            self.busy = 0;
            self.record(true);
            self.late = None;
            true
        } else {
            self.again = true;
            false
        }
    }

    /// Sent from the pool, in a task of its own: a pool that waits for a
    /// connection must not hold up notifications.
    fn send(&mut self, pool: &PgPool, sent: &mpsc::Sender<(u64, ProbeSent)>) {
        let probe = self.begin();
        let pool = pool.clone();
        let payload = format!("{}:{probe}", self.instance);
        let sent = sent.clone();
        tokio::spawn(async move {
            // A connection that hangs without an error must not hold the
            // probe, and with it the regular outbox read, for ever.
            let notified =
                tokio::time::timeout(PROBE_TIMEOUT, outbox::notify(&pool, PG_CHANNEL, &payload));
            let reached = match notified.await.unwrap_or(Err(sqlx::Error::PoolTimedOut)) {
                Ok(()) => ProbeSent::Committed,
                Err(error) if unreachable(&error) => {
                    tracing::debug!(%error, "probe not sent: the database is unreachable from the pool");
                    ProbeSent::Unreachable
                }
                // The database refused the statement (an SQLSTATE): the
                // NOTIFY did not commit, so its absence proves nothing.
                Err(sqlx::Error::Database(error)) => {
                    tracing::warn!(%error, "listener probe refused by the database");
                    ProbeSent::Refused
                }
                // The statement ran and something odd came back. Through a
                // transaction pooler this is typical: the pool's statement
                // lands on the server connection the listener's LISTEN was
                // run on, and gets the notification meant for the listener.
                Err(error) => {
                    tracing::debug!(%error, "probe sent with an error");
                    ProbeSent::Committed
                }
            };
            let _ = sent.send((probe, reached)).await;
        });
    }

    /// A new probe on its way (not yet committed): its id.
    fn begin(&mut self) -> u64 {
        let probe = probe_id();
        self.outstanding = Some((probe, None));
        self.last_sent = Some(Instant::now());
        self.again = false;
        probe
    }

    /// The pool's answer: the NOTIFY committed (the clock starts), or it
    /// did not (proves nothing; the next one goes at the usual time).
    fn sent(&mut self, probe: u64, sent: ProbeSent) {
        if let Some((outstanding, committed)) = &mut self.outstanding {
            if *outstanding == probe {
                if sent == ProbeSent::Committed {
                    *committed = Some(Instant::now());
                } else {
                    self.outstanding = None;
                }
            }
        }
    }

    /// One of this listener's probes arrived while it was idle. True if it
    /// was the probe on its way, or the last one counted unheard; any other
    /// id (an older probe, a forged one) is no verdict.
    fn heard(&mut self, probe: u64) -> bool {
        let outstanding =
            matches!(self.outstanding, Some((outstanding, _)) if outstanding == probe);
        if !outstanding && self.late != Some(probe) {
            return false;
        }
        if outstanding {
            // A verdict on the probe on its way: the busy count starts
            // again. A late one's is no verdict on this one.
            self.outstanding = None;
            self.busy = 0;
        }
        self.late = None;
        self.record(false);
        true
    }

    /// The probe on its way committed more than `PROBE_TIMEOUT` ago: it
    /// counts as unheard, and is no longer waited for.
    fn overdue(&mut self) -> bool {
        let Some((probe, Some(committed))) = self.outstanding else {
            return false;
        };
        if committed.elapsed() <= PROBE_TIMEOUT {
            return false;
        }
        self.outstanding = None;
        self.busy = 0;
        self.late = Some(probe);
        self.record(true);
        true
    }

    fn record(&mut self, unheard: bool) {
        self.recent = ((self.recent << 1) | u32::from(unheard)) & ((1 << PROBE_WINDOW) - 1);
    }

    /// Unheard probes among the last `PROBE_WINDOW`.
    fn unheard(&self) -> u32 {
        self.recent.count_ones()
    }
}

/// A probe's id: random, so that nobody who sees this listener's probes
/// (anyone may LISTEN) can send a copy of the next one before it goes.
fn probe_id() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// An error that says the database was not reached (as opposed to one it
/// answered with).
fn unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// Applies outbox rows as at most three evictions, in `Cache::invalidate`'s
/// order: this replica's memory (counted as received once it is done),
/// Redis, this replica's memory again, then the other replicas. A row that
/// does not parse (only the owner could have written it) evicts
/// everything.
async fn apply_rows(cache: &Cache, read: &OutboxRead) {
    let rows = read.in_ranges.iter().chain(&read.above);
    let count = u64::try_from(read.in_ranges.len() + read.above.len()).unwrap_or(u64::MAX);
    let evictions = evictions(rows);
    for eviction in &evictions {
        cache.evict_local(eviction).await;
    }
    // A notification alone (a probe, or a forged one) is not an
    // invalidation: rows are, once this replica's memory no longer holds
    // what they name.
    cache.invalidations().postgres.add(count);
    for eviction in &evictions {
        cache.evict_shared(eviction).await;
    }
}

fn evictions<'a>(rows: impl Iterator<Item = &'a OutboxRow>) -> Vec<Invalidation> {
    let mut numbers = Vec::new();
    let mut callers = Vec::new();
    for row in rows {
        match serde_json::from_str::<Invalidation>(&row.change) {
            Ok(Invalidation::Numbers { numbers: more }) => numbers.extend(more),
            Ok(Invalidation::Callers { callers: more }) => callers.extend(more),
            Ok(Invalidation::All) => return vec![Invalidation::All],
            Err(error) => {
                tracing::warn!(%error, seq = row.seq, "unreadable outbox row; dropping the whole cache");
                return vec![Invalidation::All];
            }
        }
    }
    let mut evictions = Vec::new();
    if !numbers.is_empty() {
        numbers.sort_unstable();
        numbers.dedup();
        tracing::debug!(count = numbers.len(), "routes changed");
        evictions.push(Invalidation::Numbers { numbers });
    }
    if !callers.is_empty() {
        evictions.push(Invalidation::Callers { callers });
    }
    evictions
}

/// Subscribes to the Redis fan-out until aborted.
pub(crate) fn spawn_redis_subscriber(cache: Cache, redis: RedisTier) -> JoinHandle<()> {
    tokio::spawn(async move {
        let target = redis.target().clone();
        let channel = redis.channel();
        let mut attempt = 0;
        loop {
            let pubsub = async {
                let client = target.pubsub_client(attempt).await?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut pubsub = match tokio::time::timeout(Duration::from_secs(2), pubsub).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "redis subscriber cannot connect; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            if attempt > 0 {
                tracing::info!("redis subscriber reconnected; dropping the memory tier");
                cache.drop_memory();
            }
            attempt = 0;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                cache.invalidations().redis.inc();
                let payload: String = message.get_payload().unwrap_or_default();
                cache.evict_local(&Invalidation::parse(&payload)).await;
            }
            tracing::warn!("redis subscriber lost its connection");
            attempt += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe sent and committed now.
    fn committed(probes: &mut Probes) -> u64 {
        let probe = probes.begin();
        probes.sent(probe, ProbeSent::Committed);
        probe
    }

    #[tokio::test(start_paused = true)]
    async fn two_unheard_among_the_last_three_are_deafness_even_with_one_heard_between() {
        let mut probes = Probes::new("probe:x");
        committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        // Heard by chance (a transaction pooler's server connection).
        let probe = committed(&mut probes);
        assert!(probes.heard(probe));
        assert_eq!(probes.unheard(), 1);
        committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        assert_eq!(probes.unheard(), DEAF_AFTER);
        // Two heard push the misses out of the window.
        for _ in 0..2 {
            let probe = committed(&mut probes);
            assert!(probes.heard(probe));
        }
        assert!(probes.unheard() < DEAF_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn one_late_probe_is_not_deafness_and_two_are() {
        let mut probes = Probes::new("probe:x");
        let first = committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        assert_eq!(probes.unheard(), 1);
        // The next verdict does not wait for PROBE_EVERY.
        assert!(probes.due());
        let second = committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        assert_eq!(probes.unheard(), DEAF_AFTER);
        // Only the last probe counted unheard proves hearing when it comes
        // late; an older one, or a number never sent, is no verdict.
        assert!(!probes.heard(first));
        assert!(!probes.heard(u64::MAX));
        assert_eq!(probes.unheard(), DEAF_AFTER);
        assert!(probes.heard(second));
        assert_eq!(probes.unheard(), DEAF_AFTER);
        assert!(!probes.heard(second), "once");
        let third = committed(&mut probes);
        assert!(probes.heard(third));
        assert_eq!(probes.unheard(), 1);
        // Heard in time: the next probe waits PROBE_EVERY.
        let fourth = committed(&mut probes);
        assert!(probes.heard(fourth));
        assert!(!probes.due());
        tokio::time::advance(PROBE_EVERY).await;
        assert!(probes.due());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_the_database_did_not_take_starts_no_clock() {
        for outcome in [ProbeSent::Refused, ProbeSent::Unreachable] {
            let mut probes = Probes::new("probe:x");
            let probe = probes.begin();
            probes.sent(probe, outcome);
            tokio::time::advance(PROBE_TIMEOUT * 4).await;
            assert!(!probes.overdue(), "{outcome:?}");
            assert_eq!(probes.unheard(), 0, "{outcome:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_in_flight_is_not_late_before_it_commits() {
        let mut probes = Probes::new("probe:x");
        probes.begin();
        tokio::time::advance(PROBE_TIMEOUT * 4).await;
        assert!(!probes.overdue());
    }

    #[test]
    fn only_this_listeners_probes_are_its_own_and_no_probe_is_a_change() {
        let probes = Probes::new("probe:abc");
        assert_eq!(probes.classify("probe:abc:7"), Woken::OurProbe(7));
        assert_eq!(probes.classify("probe:abc:x"), Woken::OurProbe(u64::MAX));
        assert_eq!(probes.classify("probe:abcd:7"), Woken::OtherProbe);
        assert_eq!(probes.classify("probe:other:7"), Woken::OtherProbe);
        assert_eq!(probes.classify(""), Woken::Change);
        assert_eq!(probes.classify("{\"kind\":\"all\"}"), Woken::Change);
        assert_eq!(probes.classify("prob"), Woken::Change);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_back_while_the_listener_was_busy_is_no_verdict_and_goes_again() {
        let mut probes = Probes::new("probe:x");
        let probe = committed(&mut probes);
        // Another number (not the probe on its way) changes nothing.
        assert!(!probes.came_back_busy(probe.wrapping_add(1)));
        assert!(!probes.due());
        assert!(!probes.came_back_busy(probe));
        assert!(!probes.due(), "no storm: not before RESEND_AFTER");
        tokio::time::advance(RESEND_AFTER).await;
        assert!(probes.due(), "sent again, not after PROBE_EVERY");
        tokio::time::advance(PROBE_TIMEOUT * 4).await;
        assert!(!probes.overdue(), "not waited for");
        assert_eq!(probes.unheard(), 0);
        // Sent again and heard while idle: a verdict, the usual wait.
        let probe = committed(&mut probes);
        assert!(!probes.due());
        assert!(probes.heard(probe));
        assert_eq!(probes.unheard(), 0);
        assert!(!probes.due());
        // Sent again and lost (a pooler): the miss counts as before.
        tokio::time::advance(PROBE_EVERY).await;
        committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        assert_eq!(probes.unheard(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_miss_a_busy_return_still_waits_before_it_goes_again() {
        let mut probes = Probes::new("probe:x");
        committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        assert!(probes.due(), "a miss: the next goes at once");
        let probe = committed(&mut probes);
        assert!(!probes.came_back_busy(probe));
        assert!(!probes.due(), "busy: not before RESEND_AFTER, miss or not");
        tokio::time::advance(RESEND_AFTER).await;
        assert!(probes.due());
    }

    #[tokio::test(start_paused = true)]
    async fn the_listener_keeps_quiet_while_its_probe_is_young() {
        let mut probes = Probes::new("probe:x");
        assert!(!probes.quiet(), "nothing on its way");
        let probe = committed(&mut probes);
        assert!(probes.quiet());
        tokio::time::advance(PROBE_QUIET).await;
        assert!(
            !probes.quiet(),
            "a change waits PROBE_QUIET after the commit"
        );
        // Not yet committed: twice that from the send, at most, and a late
        // commit does not make it longer.
        let slow = probes.begin();
        tokio::time::advance(PROBE_QUIET).await;
        assert!(probes.quiet());
        tokio::time::advance(PROBE_QUIET - Duration::from_millis(1)).await;
        probes.sent(slow, ProbeSent::Committed);
        assert!(probes.quiet());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !probes.quiet(),
            "no longer than twice PROBE_QUIET from the send"
        );
        probes.outstanding = None;
        let probe2 = committed(&mut probes);
        assert_ne!(probe, probe2, "ids are not a sequence");
        assert!(probes.heard(probe2));
        assert!(!probes.quiet(), "heard: nothing to keep quiet for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_probe_heard_does_not_reset_the_busy_count_of_the_one_on_its_way() {
        let mut probes = Probes::new("probe:x");
        let late = committed(&mut probes);
        tokio::time::advance(PROBE_TIMEOUT + Duration::from_millis(1)).await;
        assert!(probes.overdue());
        for _ in 0..BUSY_AT_MOST {
            let probe = committed(&mut probes);
            assert!(!probes.came_back_busy(probe));
        }
        let probe = committed(&mut probes);
        assert!(probes.heard(late), "the late one still proves hearing");
        assert!(
            probes.came_back_busy(probe),
            "but not a verdict on this one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn returns_during_statements_put_a_verdict_off_only_so_often() {
        // Through a pooler a deaf listener's probe (or a neighbour's forged
        // copy) comes back during its statements now and then: that must
        // not keep it from being found deaf.
        let mut probes = Probes::new("probe:x");
        for verdict in 1..=DEAF_AFTER {
            for _ in 0..BUSY_AT_MOST {
                let probe = committed(&mut probes);
                assert!(!probes.came_back_busy(probe));
                tokio::time::advance(RESEND_AFTER).await;
            }
            let probe = committed(&mut probes);
            assert!(probes.came_back_busy(probe), "counted unheard");
            assert_eq!(probes.unheard(), verdict);
        }
        // A verdict starts the count again: one heard between busy returns.
        let mut probes = Probes::new("probe:x");
        for _ in 0..3 {
            let probe = committed(&mut probes);
            assert!(!probes.came_back_busy(probe));
            let probe = committed(&mut probes);
            assert!(probes.heard(probe));
        }
        assert_eq!(probes.unheard(), 0);
    }

    #[test]
    fn the_verdict_comes_within_the_start_up_wait() {
        // Miss, heard, miss: the slowest way to a verdict; each put off by
        // returns during statements as often as allowed.
        assert!(
            VERDICT_WITHIN
                >= PROBE_TIMEOUT * 2
                    + PROBE_EVERY
                    + PROBE_TICK * 4
                    + RESEND_AFTER * BUSY_AT_MOST * 3
        );
    }
}
