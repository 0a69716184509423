//! The invalidation outbox and the listener that proves it hears: gap-safe
//! reads (a lower sequence committing last), forged and garbage
//! notifications, payloads with nothing a tenant could use, reconnects that
//! keep the memory tier (or drop it when the rows were pruned), pruning, and
//! a listener behind a transaction pooler (refused at start-up, reported
//! while running).
//!
//! The listener's connection goes through `NotifyProxy`, a TCP proxy of the
//! test's own that can cut the connection or swallow notifications.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sqlx::{postgres::PgConnectOptions, Connection, Executor, PgConnection};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::{transport::Channel, Code};

use crate::helpers::*;
use switchboard::{
    config::{ServeArgs, ServeConfig},
    pb::agent_service_client::AgentServiceClient,
    startup::{Application, StartupError},
};

// ------------------------------------------------------------------ helpers

/// One sample of `/metrics`: `series` exactly (labels included), or
/// `None`.
async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    series_at(app.admin_addr, series).await
}

async fn tier_of(client: &mut AgentServiceClient<Channel>, number: &str) -> String {
    service_resolve(client, number)
        .await
        .map(|(_, tier)| tier)
        .unwrap_or_else(|s| panic!("{s:?}"))
}

/// Resolves `number` until it is a memory hit.
async fn warm(client: &AgentServiceClient<Channel>, number: &'static str) {
    within_named(
        &format!("{number} in the memory tier"),
        Duration::from_secs(3),
        || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, number)
                    .await
                    .map(|(_, tier)| tier == "memory")
                    .unwrap_or(false)
            }
        },
    )
    .await;
}

async fn voice_becomes(
    client: &AgentServiceClient<Channel>,
    number: &'static str,
    expected: &'static str,
    limit: Duration,
) -> Duration {
    within_named(
        &format!("{number} answering voice {expected}"),
        limit,
        || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, number)
                    .await
                    .map(|(a, _)| voice(&a) == expected)
                    .unwrap_or(false)
            }
        },
    )
    .await
}

fn set_voice_sql(agent: &str, voice_id: &str) -> String {
    format!("update public.agents set voice_id = '{voice_id}' where id = '{agent}'")
}

/// A login role with no privilege at all (an analytics user, a leaked
/// read-only credential), and a direct connection to the test database as it.
struct Stranger {
    role: String,
    conn: PgConnection,
}

impl Stranger {
    async fn connect(db: &TestDb) -> Stranger {
        let role = format!("stranger_{}", &db.name[db.name.len() - 12..]);
        db.exec(&format!(
            "drop role if exists {role}; create role {role} login nosuperuser noinherit"
        ))
        .await;
        let options = PgConnectOptions::from_str(&db.direct_url)
            .unwrap_or_else(|e| panic!("{e}"))
            .username(&role);
        let conn = PgConnection::connect_with(&options)
            .await
            .unwrap_or_else(|e| panic!("connect as {role}: {e}"));
        Stranger { role, conn }
    }

    async fn drop_role(self, db: &TestDb) {
        let _ = self.conn.close().await;
        db.exec(&format!("drop role if exists {}", self.role)).await;
    }
}

/// A TCP proxy in front of Postgres for the listener's connection (plain
/// protocol: the URL it gives says `sslmode=disable`), which the test can
/// switch: pass everything, swallow notifications (a listener that is
/// connected but deaf), or cut every connection and refuse new ones.
struct NotifyProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

const PASS: u8 = 0;
const SWALLOW: u8 = 1;
const REFUSE: u8 = 2;

impl NotifyProxy {
    async fn start() -> NotifyProxy {
        let admin = PgConnectOptions::from_str(&admin_url()).unwrap_or_else(|e| panic!("{e}"));
        let upstream = format!("{}:{}", admin.get_host(), admin.get_port());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let (cut, _) = watch::channel(0u64);
        let task = {
            let mode = mode.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, mode.clone(), cut.subscribe()));
                }
            })
        };
        NotifyProxy {
            port,
            mode,
            cut,
            task,
        }
    }

    /// The test database through this proxy.
    fn url(&self, db: &TestDb) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            self.port, db.name
        )
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == REFUSE {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for NotifyProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Client to server as is; server to client message by message, dropping
/// NotificationResponse ('A') while swallowing.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU8>,
    mut cut: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    let downstream = async {
        loop {
            let mut header = [0u8; 5];
            if server_read.read_exact(&mut header).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; length.saturating_sub(4)];
            if server_read.read_exact(&mut body).await.is_err() {
                return;
            }
            if header[0] == b'A' && mode.load(Ordering::SeqCst) == SWALLOW {
                continue;
            }
            if client_write.write_all(&header).await.is_err()
                || client_write.write_all(&body).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = cut.changed() => {}
    }
}

/// An app whose listener connects through `proxy`.
async fn app_behind(proxy: &NotifyProxy, db: TestDb, redis: bool) -> TestApp {
    let listener_url = proxy.url(&db);
    TestApp::spawn_with(
        db,
        AppOptions {
            redis,
            serve_args: Some(Arc::new(move |args: &mut ServeArgs| {
                args.listener_database_url = Some(listener_url.clone());
            })),
            ..AppOptions::default()
        },
    )
    .await
}

// -------------------------------------------------------------------- tests

/// Sequence numbers commit out of order: n is taken by a transaction that
/// stays open, n+1 commits and is applied, then n commits. A reader that
/// only asks for "after the last applied" would never read n.
#[tokio::test]
async fn a_lower_sequence_that_commits_last_is_still_applied() {
    let app = TestApp::spawn().await;
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    warm(&agents, BLUEBIRD_NUMBER).await;

    let mut late = app.db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    late.execute(set_voice_sql(ACME_AGENT, "late").as_str())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let late_seq: i64 =
        sqlx::query_scalar("select max(seq) from switchboard_private.invalidation_outbox")
            .fetch_one(&mut *late)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    app.db.exec(&set_voice_sql(BLUEBIRD_AGENT, "early")).await;
    let early_seq: i64 =
        sqlx::query_scalar("select max(seq) from switchboard_private.invalidation_outbox")
            .fetch_one(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(early_seq > late_seq, "{early_seq} > {late_seq}");
    voice_becomes(&agents, BLUEBIRD_NUMBER, "early", Duration::from_secs(1)).await;
    // The listener has read past n; Acme's route is still cached (and
    // right: n is not committed).
    let mut client = agents.clone();
    let (answer, tier) = service_resolve(&mut client, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        (voice(&answer).as_str(), tier.as_str()),
        ("alloy", "memory")
    );
    // A few polls of the outbox go by with n still open.
    tokio::time::sleep(Duration::from_millis(300)).await;

    late.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let took = voice_becomes(&agents, ACME_NUMBER, "late", Duration::from_secs(1)).await;
    eprintln!(
        "sequence {late_seq}, committed after {early_seq}, applied {took:?} after its commit"
    );
}

/// 10 000 forged `{"kind":"all"}` and 1 000 garbage notifications from a
/// role with no privilege: each costs at most one indexed read, nothing is
/// flushed (memory tier and Redis keep the route), and real changes are
/// still seen within the second.
#[tokio::test]
async fn forged_and_garbage_notifications_never_flush() {
    const FORGED: usize = 10_000;
    const GARBAGE: usize = 1_000;
    let redis = crate::redis_server::RedisServer::start().await;
    let app = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            redis_url: Some(redis.url()),
            ..AppOptions::default()
        },
    )
    .await;
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    let redis_client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("{e}"));
    let mut redis_conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let route_key = format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await);
    within_named("the route in Redis", Duration::from_secs(2), || {
        let mut conn = redis_conn.clone();
        let key = route_key.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    let command_calls = |stats: &str, command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stats = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("INFO")
                .arg("commandstats")
                .query_async::<String>(&mut conn)
                .await
                .unwrap_or_default()
        }
    };
    let received = "switchboard_invalidation_notifications_total";
    let before = stats(&mut redis_conn).await;
    let received_before = metric(&app, received).await.unwrap_or(0.0);
    let reads_before = metric(&app, "switchboard_invalidation_outbox_reads_total").await;

    let mut stranger = Stranger::connect(&app.db).await;
    let started = Instant::now();
    for _ in 0..FORGED {
        stranger
            .conn
            .execute(r#"NOTIFY switchboard_invalidate, '{"kind":"all"}'"#)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 0..GARBAGE {
        let payload = match i % 4 {
            0 => "garbage".to_owned(),
            1 => r#"{"kind":"numbers","numbers":"#.to_owned(),
            2 => format!(r#"{{"kind":"numbers","numbers":["{ACME_NUMBER}"]}}"#),
            _ => "\u{7f}".repeat(100),
        };
        sqlx::query("select pg_notify('switchboard_invalidate', $1)")
            .bind(payload)
            .execute(&mut stranger.conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let sent = started.elapsed();
    let total = (FORGED + GARBAGE) as f64;
    within_named(
        "every forged notification received",
        Duration::from_secs(120),
        || async { metric(&app, received).await.unwrap_or(0.0) - received_before >= total },
    )
    .await;
    let processed = started.elapsed();
    let after = stats(&mut redis_conn).await;
    let reads = match (
        reads_before,
        metric(&app, "switchboard_invalidation_outbox_reads_total").await,
    ) {
        (Some(before), Some(after)) => format!("{}", after - before),
        _ => "n/a".to_owned(),
    };
    let mut client = agents.clone();
    let tier = tier_of(&mut client, ACME_NUMBER).await;
    let in_redis: i64 = redis::cmd("EXISTS")
        .arg(&route_key)
        .query_async(&mut redis_conn)
        .await
        .unwrap_or(0);
    let scans = command_calls(&after, "scan") - command_calls(&before, "scan");
    let dels = command_calls(&after, "del") - command_calls(&before, "del");
    let publishes = command_calls(&after, "publish") - command_calls(&before, "publish");
    eprintln!(
        "{FORGED} forged + {GARBAGE} garbage notifications: sent in {sent:?} ({:.1} µs each), \
         all received after {processed:?}; outbox reads {reads}; Redis SCAN {scans}, DEL {dels}, \
         PUBLISH {publishes}; Acme's route then from {tier:?}, in Redis: {}",
        sent.as_secs_f64() * 1e6 / total,
        in_redis == 1
    );
    stranger.drop_role(&app.db).await;
    assert_eq!(tier, "memory", "the memory tier was dropped");
    assert_eq!(in_redis, 1, "the route was deleted from Redis");
    assert_eq!((scans, dels, publishes), (0, 0, 0), "Redis was flushed");
    let reads: f64 = reads.parse().unwrap_or(f64::MAX);
    assert!(
        reads <= total + 50.0,
        "{reads} outbox reads for {total} notifications"
    );

    // And the real thing still works.
    app.db.exec(&set_voice_sql(ACME_AGENT, "sage")).await;
    voice_becomes(&agents, ACME_NUMBER, "sage", Duration::from_secs(1)).await;
}

/// Every replica probes its listener every few seconds, and every replica
/// hears every probe. A probe changes nothing, so another replica's (or a
/// payload shaped like one) costs no outbox read: with many replicas on a
/// busy database those reads are what made a listener's own probe come
/// back while it was reading, and count as unheard.
#[tokio::test]
async fn other_replicas_probes_cost_no_outbox_read() {
    const PROBES: usize = 60;
    let app = TestApp::spawn().await;
    let received = "switchboard_invalidation_notifications_total";
    let reads = "switchboard_invalidation_outbox_reads_total";
    let reads_before = metric(&app, reads).await.unwrap_or(0.0);
    let mut stranger = Stranger::connect(&app.db).await;
    // One at a time, each received before the next goes: each would have
    // cost a read of its own (or, arriving during the one before's, a read
    // after it).
    let started = Instant::now();
    for i in 0..PROBES {
        let received_before = metric(&app, received).await.unwrap_or(0.0);
        sqlx::query("select pg_notify('switchboard_invalidate', $1)")
            .bind(format!("probe:{:032x}:{i}", i % 7))
            .execute(&mut stranger.conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        within_named("the probe received", Duration::from_secs(30), || async {
            metric(&app, received).await.unwrap_or(0.0) > received_before
        })
        .await;
    }
    let read = metric(&app, reads).await.unwrap_or(f64::MAX) - reads_before;
    eprintln!(
        "{PROBES} probes of other replicas in {:?}: {read} outbox reads",
        started.elapsed()
    );
    stranger.drop_role(&app.db).await;
    // Its own polls go on (one per PROBE_EVERY, 3 s): far fewer than one a
    // probe.
    assert!(
        read < (PROBES / 4) as f64,
        "{read} outbox reads for {PROBES} probes"
    );
    assert_eq!(
        metric(&app, "switchboard_invalidation_listener_deaf").await,
        Some(0.0)
    );
    // A change still wakes it.
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    app.db.exec(&set_voice_sql(ACME_AGENT, "sage")).await;
    voice_becomes(&agents, ACME_NUMBER, "sage", Duration::from_secs(1)).await;
}

/// A neighbour floods the channel with wake-ups (any login role may
/// NOTIFY): each costs the listener an outbox read, and its own probes
/// came back during those reads, where they prove nothing, and counted as
/// unheard until it was declared deaf and dropped its memory tier. Now it
/// reads nothing while a young probe is on its way, and keeps hearing.
#[tokio::test]
async fn a_flood_of_wake_ups_does_not_make_a_hearing_listener_deaf() {
    const PROBES: usize = 6;
    let app = TestApp::spawn().await;
    let unheard = "switchboard_invalidation_probes_unheard_total";
    let unheard_before = metric(&app, unheard).await.unwrap_or(0.0);
    // The test watches the channel too, to count the app's probes: the
    // event that says its verdicts were reached under the flood.
    let mut watcher = sqlx::postgres::PgListener::connect(&app.db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    watcher
        .listen("switchboard_invalidate")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let Stranger { role, mut conn } = Stranger::connect(&app.db).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                conn.execute("NOTIFY switchboard_invalidate")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sent += 1;
            }
            let _ = conn.close().await;
            sent
        }
    });
    let mut probes = 0;
    let started = Instant::now();
    while probes < PROBES {
        let notification = tokio::time::timeout(Duration::from_secs(60), watcher.try_recv())
            .await
            .unwrap_or_else(|_| panic!("no notification for 60 s"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the watcher lost its connection"));
        if notification.payload().starts_with("probe:") {
            probes += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{probes} probes in 120 s"
        );
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = flood.await.unwrap_or_else(|e| panic!("{e}"));
    app.db.exec(&format!("drop role if exists {role}")).await;
    let unheard = metric(&app, unheard).await.unwrap_or(f64::MAX) - unheard_before;
    eprintln!("{probes} probes in {took:?} beside {sent} wake-ups: {unheard} unheard");
    assert_eq!(unheard, 0.0, "probes counted unheard under the flood");
    assert_eq!(
        metric(&app, "switchboard_invalidation_listener_deaf").await,
        Some(0.0)
    );
}

/// Anyone can LISTEN: what the triggers send must name no number, org or
/// anything else of a tenant's.
#[tokio::test]
async fn notifications_carry_no_tenant_data() {
    let app = TestApp::spawn().await;
    let stranger = Stranger::connect(&app.db).await;
    let options = PgConnectOptions::from_str(&app.db.direct_url)
        .unwrap_or_else(|e| panic!("{e}"))
        .username(&stranger.role);
    let mut listener = sqlx::postgres::PgListener::connect_with(
        &sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    listener
        .listen("switchboard_invalidate")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let new_number = "+18005550177";
    app.db
        .exec(&format!(
            "insert into public.customers (org_id, phone, name) values ('{ACME}', '{new_number}', 'Grace'); \
             {}; \
             update public.organizations set name = 'Acme Dental II' where id = '{ACME}'",
            set_voice_sql(ACME_AGENT, "sage")
        ))
        .await;
    let mut payloads = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), listener.try_recv()).await {
            Ok(Ok(Some(notification))) => payloads.push(notification.payload().to_owned()),
            Ok(_) => break,
            Err(_) if !payloads.is_empty() => break,
            Err(_) => {}
        }
    }
    assert!(!payloads.is_empty(), "no notification at all");
    for payload in &payloads {
        for secret in [new_number, ACME_NUMBER, ACME, "org_id", "phone", "numbers"] {
            assert!(
                !payload.contains(secret),
                "a payload anyone may read names {secret:?}: {payload}"
            );
        }
        // Only the empty wake-up, or a replica's probe.
        assert!(
            payload.is_empty() || payload.starts_with("probe:"),
            "{payload:?}"
        );
    }
    drop(listener);
    stranger.drop_role(&app.db).await;
}

/// Cut the listener, change a number out of band, let it back: it catches
/// up from its cursor, evicts that number, and keeps the rest of the memory
/// tier.
#[tokio::test]
async fn a_reconnected_listener_catches_up_and_keeps_the_memory_tier() {
    let proxy = NotifyProxy::start().await;
    let app = app_behind(&proxy, TestDb::seeded().await, true).await;
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    warm(&agents, BLUEBIRD_NUMBER).await;

    proxy.set(REFUSE);
    let connected = "switchboard_invalidation_listener_connected";
    within_named(
        "the listener disconnected",
        Duration::from_secs(3),
        || async { metric(&app, connected).await == Some(0.0) },
    )
    .await;
    app.db.exec(&set_voice_sql(ACME_AGENT, "sage")).await;
    proxy.set(PASS);
    let took = voice_becomes(&agents, ACME_NUMBER, "sage", Duration::from_secs(5)).await;
    eprintln!("the change made while disconnected was applied {took:?} after the proxy came back");
    let mut client = agents.clone();
    assert_eq!(
        tier_of(&mut client, BLUEBIRD_NUMBER).await,
        "memory",
        "the memory tier was dropped on reconnect"
    );
    within_named("the listener connected", Duration::from_secs(3), || async {
        metric(&app, connected).await == Some(1.0)
    })
    .await;
}

/// The same, but the row the listener missed was pruned meanwhile: it
/// cannot know what changed, so it drops its memory tier.
#[tokio::test]
async fn a_listener_that_missed_pruned_rows_drops_the_memory_tier() {
    let proxy = NotifyProxy::start().await;
    let app = app_behind(&proxy, TestDb::seeded().await, false).await;
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    warm(&agents, BLUEBIRD_NUMBER).await;

    proxy.set(REFUSE);
    within_named(
        "the listener disconnected",
        Duration::from_secs(3),
        || async { metric(&app, "switchboard_invalidation_listener_connected").await == Some(0.0) },
    )
    .await;
    app.db.exec(&set_voice_sql(ACME_AGENT, "sage")).await;
    app.db
        .exec(
            "update switchboard_private.invalidation_outbox set created_at = created_at - interval '1 hour'; \
             select switchboard_private.prune_invalidation_outbox(interval '10 minutes')",
        )
        .await;
    proxy.set(PASS);
    voice_becomes(&agents, ACME_NUMBER, "sage", Duration::from_secs(5)).await;
    let mut client = agents.clone();
    assert_ne!(tier_of(&mut client, BLUEBIRD_NUMBER).await, "memory");
}

/// Every replica's listener prunes rows past the retention (10 minutes),
/// on connecting and every minute, and records how far it went.
#[tokio::test]
async fn the_listener_prunes_the_outbox() {
    let db = TestDb::seeded().await;
    db.exec(&set_voice_sql(ACME_AGENT, "sage")).await;
    db.exec(&set_voice_sql(BLUEBIRD_AGENT, "verse")).await;
    db.exec(
        "update switchboard_private.invalidation_outbox set created_at = created_at - interval '11 minutes'",
    )
    .await;
    let expired: i64 =
        sqlx::query_scalar("select max(seq) from switchboard_private.invalidation_outbox")
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    db.exec(&set_voice_sql(ACME_AGENT, "ash")).await;
    let app = TestApp::spawn_with(db, AppOptions::default()).await;
    within_named(
        "the expired rows pruned",
        Duration::from_secs(3),
        || async {
            let (oldest, upto): (Option<i64>, i64) = sqlx::query_as(
                "select (select min(seq) from switchboard_private.invalidation_outbox), \
                    (select upto from switchboard_private.invalidation_outbox_pruned)",
            )
            .fetch_one(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            oldest.is_some_and(|oldest| oldest > expired) && upto == expired
        },
    )
    .await;
    // The row inside the retention is kept, and the listener still works.
    let kept: i64 =
        sqlx::query_scalar("select count(*) from switchboard_private.invalidation_outbox")
            .fetch_one(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept, 1);
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    app.db.exec(&set_voice_sql(ACME_AGENT, "coral")).await;
    voice_becomes(&agents, ACME_NUMBER, "coral", Duration::from_secs(1)).await;
}

/// DATABASE_URL on a transaction pooler and no listener URL: LISTEN would
/// go through the pooler. Start-up finds out and refuses, naming the
/// setting; the binary exits 2.
#[tokio::test]
async fn a_listener_through_a_transaction_pooler_refuses_to_start() {
    let admin = PgConnectOptions::from_str(&admin_url()).unwrap_or_else(|e| panic!("{e}"));
    let bouncer = crate::pgbouncer::PgBouncer::start(admin.get_host(), admin.get_port()).await;
    let db = TestDb::seeded().await;
    let pooled = format!("postgres://postgres@127.0.0.1:{}/{}", bouncer.port, db.name);
    let args = ServeArgs {
        database_url: Some(pooled.clone()),
        jwt_secret: Some(SECRET.into()),
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        listener_database_url: None,
        ..ServeArgs::defaults()
    };
    let config = ServeConfig::from_args(args).unwrap_or_else(|e| panic!("config: {e}"));
    let app = Application::build(config)
        .await
        .unwrap_or_else(|e| panic!("build: {e}"));
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        app.run_until(std::future::pending()),
    )
    .await;
    let error = match outcome {
        Ok(Err(error)) => error,
        Ok(Ok(())) => panic!("served and stopped"),
        Err(_) => panic!("started and served with a listener that cannot hear"),
    };
    assert!(matches!(error, StartupError::ListenerDeaf), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("SWITCHBOARD_LISTENER_DATABASE_URL") && !message.contains('\n'),
        "{message}"
    );
    eprintln!("refused after {:?}: {message}", started.elapsed());

    // The binary: exit code 2, that line on stderr.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &pooled)
            .env("SUPABASE_JWT_SECRET", SECRET)
            .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "off")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the binary kept serving"))
    .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.lines().any(|line| line.starts_with("switchboard: ")
            && line.contains("SWITCHBOARD_LISTENER_DATABASE_URL")),
        "{stderr}"
    );
}

/// A listener that stops hearing while it runs (its notifications vanish,
/// the connection stays up): the metric says so, nothing is kept in the
/// memory tier meanwhile, and it recovers by itself.
#[tokio::test]
async fn a_listener_that_stops_hearing_is_reported_and_keeps_nothing() {
    let proxy = NotifyProxy::start().await;
    let app = app_behind(&proxy, TestDb::seeded().await, false).await;
    let agents = app.agents().await;
    warm(&agents, ACME_NUMBER).await;
    let deaf = "switchboard_invalidation_listener_deaf";
    assert_eq!(metric(&app, deaf).await, Some(0.0));

    proxy.set(SWALLOW);
    let took = within_named("the deaf gauge", Duration::from_secs(60), || async {
        metric(&app, deaf).await == Some(1.0)
    })
    .await;
    eprintln!("deafness reported {took:?} after notifications stopped arriving");
    assert!(
        metric(&app, "switchboard_invalidation_probes_unheard_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        metric(&app, "switchboard_invalidation_listener_connected").await,
        Some(0.0)
    );
    let mut client = agents.clone();
    for _ in 0..3 {
        assert_eq!(
            tier_of(&mut client, ACME_NUMBER).await,
            "db",
            "kept while deaf"
        );
    }
    // Not hearing is not missing changes for ever: the outbox is still read
    // every few seconds.
    app.db.exec(&set_voice_sql(ACME_AGENT, "sage")).await;
    voice_becomes(&agents, ACME_NUMBER, "sage", Duration::from_secs(1)).await;

    proxy.set(PASS);
    within_named("hearing again", Duration::from_secs(30), || async {
        metric(&app, deaf).await == Some(0.0)
    })
    .await;
    warm(&agents, ACME_NUMBER).await;
    assert_code(
        service_resolve(&mut client, "+18005550998").await,
        Code::NotFound,
    );
}
