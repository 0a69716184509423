//! Redis keys belong to one database: its identity, made at migration, is
//! part of every key, so a database made again with the same numbers or
//! another deployment on the same Redis never reads our routes, and
//! `switchboard retire-database-identity` (after a restore) hides every
//! route cached before it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor, PgConnection};
use switchboard::pb::ResolveAgentResponse;
use tonic::transport::Channel;

use crate::helpers::*;
use switchboard::pb::agent_service_client::AgentServiceClient;

/// The agent that answers Acme's number once the database is made again.
const NEW_AGENT: &str = "ad000000-0000-4000-8000-000000000001";

/// No memory tier: every service resolve shows whether Redis answered.
fn redis_only(namespace: Option<String>) -> AppOptions {
    AppOptions {
        memory_tier: false,
        serve_args: namespace.map(|namespace| -> AdjustArgs {
            Arc::new(move |args| args.redis_namespace = Some(namespace.clone()))
        }),
        ..AppOptions::default()
    }
}

fn agent_id(answer: &ResolveAgentResponse) -> String {
    answer
        .agent
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default()
}

/// Resolves `number` until Redis answers it (the fill is written there in
/// the background, and only once the replica's listener has heard its own
/// probe: on a machine loaded by the whole suite that can take seconds),
/// for at most 30 s.
async fn served_from_redis(
    agents: &mut AgentServiceClient<Channel>,
    number: &str,
) -> ResolveAgentResponse {
    let started = Instant::now();
    loop {
        let (answer, tier) = service_resolve(agents, number)
            .await
            .unwrap_or_else(|s| panic!("resolve {number}: {s:?}"));
        if tier == "redis" {
            return answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{number} never came from Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What `supabase db reset` does: the database dropped and made again with
/// the same name and the same demo numbers; here Acme's number then goes
/// to another agent.
async fn reset(db: &TestDb) {
    let mut admin = PgConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for sql in [
        format!("drop database {} with (force)", db.name),
        format!("create database {}", db.name),
    ] {
        admin
            .execute(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let _ = admin.close().await;
    db.migrate_and_seed().await;
    let mut conn = PgConnection::connect(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::raw_sql(&format!(
        "delete from public.agents where phone_number = '{ACME_NUMBER}';
         insert into public.agents (id, org_id, name, phone_number, voice_id)
         values ('{NEW_AGENT}', '{ACME}', 'After the reset', '{ACME_NUMBER}', 'reset');"
    ))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = conn.close().await;
}

#[tokio::test]
async fn a_database_made_again_with_the_same_numbers_never_reads_the_old_routes() {
    let db = Arc::new(TestDb::seeded().await);
    let mut before = TestApp::spawn_on(db.clone(), redis_only(None)).await;
    let mut agents = before.agents().await;
    let cached = served_from_redis(&mut agents, ACME_NUMBER).await;
    assert_eq!(agent_id(&cached), ACME_AGENT);
    before.stop().await;

    reset(&db).await;

    // Same name, same namespace, same number: a new database all the same.
    let after = TestApp::spawn_on(db.clone(), redis_only(None)).await;
    let mut agents = after.agents().await;
    let (answer, tier) = service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        agent_id(&answer),
        NEW_AGENT,
        "the reset database's agent, not the old one from Redis (answered by {tier})"
    );
    assert_eq!(tier, "db");
    let refilled = served_from_redis(&mut agents, ACME_NUMBER).await;
    assert_eq!(agent_id(&refilled), NEW_AGENT);
}

#[tokio::test]
async fn two_deployments_sharing_one_redis_and_namespace_serve_their_own_routes() {
    let first = TestDb::seeded().await;
    let second = TestDb::seeded().await;
    // The same demo numbers in both; the second one's agent speaks otherwise.
    second
        .exec(&format!(
            "update public.agents set voice_id = 'second-deployment' \
             where phone_number = '{ACME_NUMBER}'"
        ))
        .await;
    // One namespace for both (the first's name: its cleanup takes all keys).
    let namespace = first.name.clone();
    let first = TestApp::spawn_with(first, redis_only(Some(namespace.clone()))).await;
    let second = TestApp::spawn_with(second, redis_only(Some(namespace))).await;
    let mut first_agents = first.agents().await;
    let mut second_agents = second.agents().await;

    let cached = served_from_redis(&mut first_agents, ACME_NUMBER).await;
    assert_eq!(voice(&cached), "alloy");
    let (answer, tier) = service_resolve(&mut second_agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        voice(&answer),
        "second-deployment",
        "the second deployment's own agent (answered by {tier})"
    );
    // Both now cached, each under its own database.
    let second_cached = served_from_redis(&mut second_agents, ACME_NUMBER).await;
    assert_eq!(voice(&second_cached), "second-deployment");
    let first_cached = served_from_redis(&mut first_agents, ACME_NUMBER).await;
    assert_eq!(voice(&first_cached), "alloy");
}

async fn key_exists(key: &str) -> bool {
    let client = redis::Client::open(redis_url()).unwrap_or_else(|e| panic!("{e}"));
    crate::cache::key_exists(&client, key).await
}

#[tokio::test]
async fn after_a_retire_no_replica_reads_the_routes_cached_before() {
    let app = TestApp::spawn_with(TestDb::seeded().await, redis_only(None)).await;
    // Another replica, with a memory tier to forget.
    let warm = app.spawn_replica(AppOptions::default()).await;
    let mut agents = app.agents().await;
    let mut warm_agents = warm.agents().await;
    let cached = served_from_redis(&mut agents, ACME_NUMBER).await;
    assert_eq!(voice(&cached), "alloy");
    let (_, _) = service_resolve(&mut warm_agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let old_key = format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await);
    assert!(key_exists(&old_key).await);

    // A restore: the rows go back to an older state and no trigger fires
    // (none does for a restore), so nothing is evicted.
    app.db
        .exec(&format!(
            "begin; set local session_replication_role = replica; \
             update public.agents set voice_id = 'restored' where phone_number = '{ACME_NUMBER}'; \
             commit;"
        ))
        .await;
    let (stale, tier) = service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        (voice(&stale).as_str(), tier.as_str()),
        ("alloy", "redis"),
        "Redis holds a route newer than the restored database"
    );
    let (stale, tier) = service_resolve(&mut warm_agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!((voice(&stale).as_str(), tier.as_str()), ("alloy", "memory"));

    // What the docs tell operators to run after a restore.
    let retired = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("retire-database-identity")
        .env("DATABASE_URL", &app.db.direct_url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run switchboard: {e}"));
    let stdout = String::from_utf8_lossy(&retired.stdout);
    assert!(
        retired.status.success(),
        "retire-database-identity failed: {}{}",
        stdout,
        String::from_utf8_lossy(&retired.stderr)
    );
    assert!(stdout.contains("retired"), "{stdout}");
    let retired_at = Instant::now();
    assert_ne!(
        format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await),
        old_key
    );

    // Running replicas notice within their identity check (1 s).
    for (name, client) in [("redis-only", &mut agents), ("warm", &mut warm_agents)] {
        let noticed = within_named(
            &format!("the {name} replica serves the restored agent"),
            Duration::from_secs(5),
            || {
                let mut client = client.clone();
                async move {
                    service_resolve(&mut client, ACME_NUMBER)
                        .await
                        .map(|(answer, _)| voice(&answer) == "restored")
                        .unwrap_or(false)
                }
            },
        )
        .await;
        eprintln!(
            "{name} replica: restored agent served {:?} after the retire ({noticed:?} of waiting)",
            retired_at.elapsed()
        );
    }
    // The old route is still in Redis (nothing deleted it: it is out of
    // scope), and never read again.
    assert!(key_exists(&old_key).await);
    for _ in 0..20 {
        for client in [&mut agents, &mut warm_agents] {
            let (answer, tier) = service_resolve(client, ACME_NUMBER)
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
            assert_eq!(voice(&answer), "restored", "answered by {tier}");
        }
    }
    // A replica started now reads the new identity at once.
    let fresh = app.spawn_replica(redis_only(None)).await;
    let (answer, tier) = service_resolve(&mut fresh.agents().await, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(voice(&answer), "restored", "answered by {tier}");
}

#[tokio::test]
async fn the_identity_is_made_once_and_kept_when_migrations_run_again() {
    let db = TestDb::seeded().await;
    let identity = db.redis_prefix().await;
    switchboard::migrate::run(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sql = std::fs::read_to_string("migrations/20261129000004_database_identity.sql")
        .unwrap_or_else(|e| panic!("{e}"));
    db.exec(&sql).await;
    assert_eq!(db.redis_prefix().await, identity, "kept on re-run");
    let rows: i64 =
        sqlx::query_scalar("select count(*) from switchboard_private.database_identity")
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, 1);
    // Not for the API roles.
    for role in ["anon", "authenticated", "service_role"] {
        let readable: bool = sqlx::query_scalar(
            "select has_table_privilege($1, 'switchboard_private.database_identity', 'select')",
        )
        .bind(role)
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!readable, "{role} can read the identity");
    }
    // Another database has another identity.
    let other = TestDb::seeded().await;
    let other_identity = other.redis_prefix().await;
    assert_ne!(
        identity.rsplit(':').nth(1),
        other_identity.rsplit(':').nth(1)
    );
}

/// A replica that keeps running while its database is made again reads the
/// new database's invalidation outbox from its start: the new outbox's
/// numbers begin again below the ones it had read, and an edit made outside
/// the service after the reset still evicts what the replica cached (before:
/// it waited for numbers past the old ones, and served the edit's old value
/// from memory and Redis for the TTL, across restarts too).
#[tokio::test]
async fn a_running_replica_reads_a_database_made_again_from_its_start() {
    let db = Arc::new(TestDb::seeded().await);
    let app = TestApp::spawn_on(db.clone(), AppOptions::default()).await;
    let agents = app.agents().await;
    // Forty outbox rows in the old database: more than the new one starts with.
    db.exec(&format!(
        "do $$ begin for i in 1..40 loop \
           update public.agents set voice_id = 'old-' || i where id = '{BLUEBIRD_AGENT}'; \
         end loop; end $$"
    ))
    .await;
    let client = &agents;
    service_resolves_until(
        client,
        BLUEBIRD_NUMBER,
        "the old database's edits applied",
        Duration::from_secs(5),
        |answer, _| voice(answer) == "old-40",
    )
    .await;

    reset(&db).await;
    service_resolves_until(
        client,
        ACME_NUMBER,
        "the new database's agent",
        Duration::from_secs(10),
        |answer, _| agent_id(answer) == NEW_AGENT,
    )
    .await;
    // Cached again (Redis is filled in the background, memory once the
    // reconnected listener hears its probe).
    service_resolves_until(
        client,
        ACME_NUMBER,
        "the new route cached",
        Duration::from_secs(5),
        |_, tier| tier != "db",
    )
    .await;

    let mut conn = PgConnection::connect(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::raw_sql(&format!(
        "update public.agents set voice_id = 'edited-after-reset' where id = '{NEW_AGENT}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let _ = conn.close().await;
    service_resolves_until(
        client,
        ACME_NUMBER,
        "an edit made outside the service after the reset",
        Duration::from_secs(5),
        |answer, _| voice(answer) == "edited-after-reset",
    )
    .await;
}
