//! The shared tier on a Redis Cluster and behind Sentinel, each a real set of
//! `redis-server` processes of the test's own (the shared Redis on 6379 is
//! never touched): routes land on the cluster's masters, a flush reaches
//! every master, invalidations fan out through the cluster, a dead master
//! is a miss and not an error, and a Sentinel failover is followed without
//! a restart.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use switchboard_testkit::redis_topology::{Cluster, Sentinels, MASTER_NAME};

use crate::helpers::*;

fn cluster_options(urls: Vec<String>, memory_tier: bool) -> AppOptions {
    AppOptions {
        redis: false,
        memory_tier,
        serve_args: Some(std::sync::Arc::new(move |args| {
            args.redis_cluster_urls = urls.clone();
        })),
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn a_cluster_holds_routes_flushes_every_master_and_fans_out_invalidations() {
    let cluster = Cluster::start().await;
    let db = TestDb::seeded().await;
    // No memory tier: every service resolve shows whether Redis answered.
    let app = TestApp::spawn_with(db, cluster_options(cluster.urls(), false)).await;
    let mut agents = app.agents().await;
    let prefix = app.db.redis_prefix().await;
    let acme_key = format!("{prefix}route:{ACME_NUMBER}");

    let (answer, tier) = service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
    let mut client = cluster.client().await;
    // The tier connects in the background: until it has, a fill is skipped,
    // so ask again until one lands.
    within_named(
        "route filled into the cluster",
        Duration::from_secs(3),
        || {
            let mut client = client.clone();
            let mut agents = agents.clone();
            let key = acme_key.clone();
            async move {
                let _ = service_resolve(&mut agents, ACME_NUMBER).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                client.exists(&key).await.unwrap_or(false)
            }
        },
    )
    .await;
    let (again, tier) = service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "redis");
    assert_eq!(again, answer);

    // Routes on every master (planted directly: 60 keys hash to all three),
    // then a flush of everything must empty every master.
    for i in 0..60 {
        let key = format!("{prefix}route:+1999000{i:04}");
        let _: () = client
            .set(&key, b"stale".as_slice())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let before = cluster.keys_per_node(&format!("{prefix}route:*")).await;
    assert!(
        before.iter().all(|keys| !keys.is_empty()),
        "every master holds routes: {:?}",
        before.iter().map(Vec::len).collect::<Vec<_>>()
    );
    app.db
        // What a TRUNCATE's trigger writes: an "all" row in the outbox.
        .exec(
            r#"insert into switchboard_private.invalidation_outbox (xid, change)
               values (pg_current_xact_id(), '{"kind":"all"}');
               notify switchboard_invalidate"#,
        )
        .await;
    let took = within_named("every master flushed", Duration::from_secs(2), || async {
        cluster
            .keys_per_node(&format!("{prefix}route:*"))
            .await
            .iter()
            .all(Vec::is_empty)
    })
    .await;
    eprintln!("every master flushed after {took:?}");

    // A second replica with a memory tier: an invalidation published on a
    // node it is not subscribed to (its subscriber sits on the first seed)
    // still reaches it through the cluster.
    let replica = app
        .spawn_replica(cluster_options(cluster.urls(), true))
        .await;
    let mut second = replica.agents().await;
    service_resolve(&mut second, BLUEBIRD_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let (_, tier) = service_resolve(&mut second, BLUEBIRD_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "memory");
    let last = cluster.nodes[2].connection().await;
    let payload = format!(r#"{{"kind":"numbers","numbers":["{BLUEBIRD_NUMBER}"]}}"#);
    within_named(
        "replica evicted by a publish on another node",
        Duration::from_secs(2),
        || {
            let mut second = second.clone();
            let mut last = last.clone();
            let channel = format!("{prefix}invalidate");
            let payload = payload.clone();
            async move {
                let _: Result<i64, _> = last.publish(&channel, &payload).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                matches!(service_resolve(&mut second, BLUEBIRD_NUMBER).await,
                Ok((_, tier)) if tier != "memory")
            }
        },
    )
    .await;

    // A write through the service is seen on both replicas.
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'nova' where id = '{ACME_AGENT}'"
        ))
        .await;
    for client in [&mut agents, &mut second] {
        within_named("write seen by each replica", Duration::from_secs(1), || {
            let mut client = client.clone();
            async move {
                service_resolve(&mut client, ACME_NUMBER)
                    .await
                    .map(|(a, _)| voice(&a) == "nova")
                    .unwrap_or(false)
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_dead_cluster_master_is_a_miss_not_an_error() {
    let mut cluster = Cluster::start().await;
    let db = TestDb::seeded().await;
    let app = TestApp::spawn_with(db, cluster_options(cluster.urls(), false)).await;
    let mut agents = app.agents().await;
    let prefix = app.db.redis_prefix().await;
    for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
        service_resolve(&mut agents, number)
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    // Kill the master that holds Acme's route.
    let acme_key = format!("{prefix}route:{ACME_NUMBER}");
    within_named(
        "route filled on some node",
        Duration::from_secs(3),
        || async {
            let _ = service_resolve(&mut agents.clone(), ACME_NUMBER).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            for node in &cluster.nodes {
                let mut connection = node.connection().await;
                let found: Result<bool, _> = connection.exists(&acme_key).await;
                if found.unwrap_or(false) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    let mut holder = None;
    for (i, node) in cluster.nodes.iter().enumerate() {
        if node.exists(&acme_key).await {
            holder = Some(i);
        }
    }
    let holder = holder.unwrap_or_else(|| panic!("no node holds {acme_key}"));
    cluster.nodes[holder].kill();

    let started = Instant::now();
    for _ in 0..30 {
        for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
            let (answer, tier) = service_resolve(&mut agents, number)
                .await
                .unwrap_or_else(|s| panic!("{number}: {s:?}"));
            assert!(answer.agent.is_some());
            assert!(tier == "db" || tier == "redis", "{tier}");
        }
    }
    eprintln!(
        "60 resolves with a master down took {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn sentinel_options(sentinels: &Sentinels) -> AppOptions {
    let url = sentinels.sentinel.url();
    AppOptions {
        redis: false,
        memory_tier: false,
        serve_args: Some(std::sync::Arc::new(move |args| {
            args.redis_sentinel_urls = vec![url.clone()];
            args.redis_sentinel_master = Some(MASTER_NAME.into());
        })),
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_without_errors_or_a_restart() {
    let mut sentinels = Sentinels::start().await;
    let db = TestDb::seeded().await;
    let app = TestApp::spawn_with(db, sentinel_options(&sentinels)).await;
    let mut agents = app.agents().await;
    let key = format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await);

    let (_, tier) = service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "db");
    within_named(
        "route filled on the master",
        Duration::from_secs(3),
        || async {
            let _ = service_resolve(&mut agents.clone(), ACME_NUMBER).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            sentinels.master.exists(&key).await
        },
    )
    .await;
    let (_, tier) = service_resolve(&mut agents, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(tier, "redis");

    // The master dies; the sentinel promotes the replica.
    let old = sentinels.master.port;
    sentinels.master.kill();
    let started = Instant::now();
    let mut answered = 0;
    while sentinels.master_port().await == Some(old) {
        assert!(started.elapsed() < Duration::from_secs(15), "no failover");
        let (answer, _) = service_resolve(&mut agents, ACME_NUMBER)
            .await
            .unwrap_or_else(|s| panic!("during failover: {s:?}"));
        assert_eq!(voice(&answer), "alloy");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "failover took {:?}; {answered} calls answered meanwhile",
        started.elapsed()
    );
    assert_eq!(sentinels.master_port().await, Some(sentinels.replica.port));

    // Changes made after the failover evict on the new master, and fills
    // land there: the tier answers again, with the new voice.
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'nova' where id = '{ACME_AGENT}'"
        ))
        .await;
    let took = within_named(
        "new voice from the new master",
        Duration::from_secs(5),
        || {
            let mut agents = agents.clone();
            async move {
                matches!(service_resolve(&mut agents, ACME_NUMBER).await,
                Ok((answer, tier)) if tier == "redis" && voice(&answer) == "nova")
            }
        },
    )
    .await;
    eprintln!("new master serving the new voice {took:?} after the failover");
    assert!(sentinels.replica.exists(&key).await);
}

#[tokio::test]
async fn a_failover_cannot_bring_back_a_route_the_old_master_had_evicted() {
    // Redis replicates asynchronously: a DEL the master acknowledged can be
    // missing on the replica that takes over. Made certain here: the
    // replica is frozen (so it cannot reconnect) and the master drops its
    // link, the eviction happens, and the master dies before the replica
    // thaws.
    let mut sentinels = Sentinels::start().await;
    let db = TestDb::seeded().await;
    let app = TestApp::spawn_with(db, sentinel_options(&sentinels)).await;
    let agents = app.agents().await;
    let key = format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await);
    within_named(
        "route on master and replica",
        Duration::from_secs(3),
        || async {
            let _ = service_resolve(&mut agents.clone(), ACME_NUMBER).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            sentinels.master.exists(&key).await && sentinels.replica.exists(&key).await
        },
    )
    .await;

    sentinels.replica.signal("-STOP");
    let mut master = sentinels.master.connection().await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut master)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'nova' where id = '{ACME_AGENT}'"
        ))
        .await;
    within_named("evicted on the master", Duration::from_secs(2), || async {
        !sentinels.master.exists(&key).await
    })
    .await;
    let old = sentinels.master.port;
    sentinels.master.kill();
    sentinels.replica.signal("-CONT");
    within_named("failover", Duration::from_secs(20), || async {
        sentinels.master_port().await == Some(sentinels.replica.port)
    })
    .await;
    assert_ne!(old, sentinels.replica.port);
    assert!(
        sentinels.replica.exists(&key).await,
        "the new master holds the route the old one had evicted"
    );

    // Every answer from now on has the new voice: the stale route is never
    // served, and once flushed the tier fills again from Postgres.
    let took = within_named("redis serving again", Duration::from_secs(5), || {
        let mut agents = agents.clone();
        async move {
            let (answer, tier) = service_resolve(&mut agents, ACME_NUMBER)
                .await
                .unwrap_or_else(|s| panic!("{s:?}"));
            assert_eq!(voice(&answer), "nova", "a stale route from {tier}");
            tier == "redis"
        }
    })
    .await;
    eprintln!("the tier served again {took:?} after the failover");
}

#[tokio::test]
async fn a_restarted_redis_is_flushed_before_it_is_trusted() {
    // One node restarted with data older than an eviction it acknowledged
    // (a snapshot reloaded; or a managed Redis failing over behind one DNS
    // name): its new run_id makes the tier flush before reading it.
    let mut redis = crate::redis_server::RedisServer::start().await;
    let db = TestDb::seeded().await;
    let app = TestApp::spawn_with(
        db,
        AppOptions {
            redis_url: Some(redis.url()),
            memory_tier: false,
            ..AppOptions::default()
        },
    )
    .await;
    let agents = app.agents().await;
    let key = format!("{}route:{ACME_NUMBER}", app.db.redis_prefix().await);
    let client = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let old_route: Vec<u8> = loop {
        let _ = service_resolve(&mut agents.clone(), ACME_NUMBER).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
            if let Ok(Some(bytes)) = connection.get::<_, Option<Vec<u8>>>(&key).await {
                break bytes;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "route not filled"
        );
    };

    // The write's eviction succeeds on the running server...
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'nova' where id = '{ACME_AGENT}'"
        ))
        .await;
    within_named("evicted", Duration::from_secs(2), || async {
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        !connection.exists::<_, bool>(&key).await.unwrap_or(true)
    })
    .await;
    // ...then it restarts with the route from before the write.
    redis.stop();
    redis.restart().await;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _: () = connection
        .set(&key, old_route.as_slice())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let took = within_named(
        "the restored route flushed",
        Duration::from_secs(3),
        || async {
            let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let now: Option<Vec<u8>> = connection.get(&key).await.unwrap_or(None);
            now.as_deref() != Some(old_route.as_slice())
        },
    )
    .await;
    eprintln!("a restarted Redis was flushed {took:?} after the stale route appeared");
    let (answer, _) = service_resolve(&mut agents.clone(), ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(voice(&answer), "nova");
}
