//! The soak's Redis-freeze fault, one interleaving at a time: a redis-server
//! of the test's own is frozen (SIGSTOP) so that a cache fill stays in
//! flight while a change is applied, then thawed (SIGCONT). Every step waits
//! on an event (a counter on `/metrics`, a key in Redis), never on the clock.

use std::{sync::Arc, time::Duration};

use crate::{helpers::*, redis_server::RedisServer};

/// Long enough that a call waiting on the frozen Redis is still waiting
/// when the test thaws it: the interleaving is driven by events, so no
/// command may time out on its own.
const FROZEN_CALL_LIMIT_MS: u64 = 4_000;

/// How long any awaited event may take.
const EVENT_LIMIT: Duration = Duration::from_secs(5);

/// One sample of `/metrics`: the series `name` with every label in
/// `labels`; 0 when absent.
async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> u64 {
    metric_at(app.admin_addr, name, labels)
        .await
        .map_or(0, |v| v as u64)
}

async fn memory_route_misses(app: &TestApp) -> u64 {
    metric(
        app,
        "switchboard_cache_lookups_total",
        &[("tier", "memory"), ("entry", "route"), ("result", "miss")],
    )
    .await
}

async fn postgres_invalidations(app: &TestApp) -> u64 {
    metric(
        app,
        "switchboard_invalidations_received_total",
        &[("source", "postgres")],
    )
    .await
}

/// Whether this Redis holds a route key for `number`, whatever the prefix.
async fn redis_holds_route(redis: &RedisServer, number: &str) -> bool {
    let Ok(client) = redis::Client::open(redis.url()) else {
        return false;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("KEYS")
        .arg(format!("*route:{number}"))
        .query_async::<Vec<String>>(&mut connection)
        .await
        .map(|keys| !keys.is_empty())
        .unwrap_or(false)
}

/// Found by the soak's Redis-freeze fault: concurrent misses of one number
/// share one fetch, and a call that joined a fetch begun before an
/// invalidation answered that fetch's value, older than the change. Here
/// the shared fetch is a Redis GET queued in a frozen Redis, the change an
/// SQL update whose NOTIFY this replica has applied before the second call
/// begins; on thaw the GET returns the old route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_joins_a_fill_begun_before_an_invalidation_gets_the_new_value() {
    let redis = RedisServer::start().await;
    let filler = TestApp::spawn_with(
        TestDb::seeded().await,
        AppOptions {
            redis_url: Some(redis.url()),
            ..AppOptions::default()
        },
    )
    .await;
    // Redis holds the route (filled in the background after a miss).
    let (answer, _) = service_resolve(&mut filler.agents().await, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(voice(&answer), "alloy");
    let own_redis = &redis;
    within_named("the route in redis", EVENT_LIMIT, || async move {
        redis_holds_route(own_redis, ACME_NUMBER).await
    })
    .await;

    // A replica whose memory tier does not hold the number. The filler
    // stops first, so that only this replica's commands reach Redis and
    // they run in the order sent (one connection).
    let frozen_limit: AdjustArgs = Arc::new(|args| args.redis_timeout_ms = FROZEN_CALL_LIMIT_MS);
    let mut replica = filler
        .spawn_replica(AppOptions {
            redis_url: Some(redis.url()),
            serve_args: Some(frozen_limit),
            ..AppOptions::default()
        })
        .await;
    let mut filler = filler;
    filler.stop().await;
    let mut first_client = replica.agents().await;
    let mut second_client = replica.agents().await;
    let observed = &replica;

    redis.pause();
    // The first call misses memory and waits on its Redis GET.
    let first = tokio::spawn(async move { service_resolve(&mut first_client, ACME_NUMBER).await });
    within_named("the first call's memory miss", EVENT_LIMIT, || async move {
        memory_route_misses(observed).await == 1
    })
    .await;
    // The change, applied by this replica (its listener) while that GET waits.
    replica
        .db
        .exec(&format!(
            "update public.agents set voice_id = 'nova' where id = '{ACME_AGENT}'"
        ))
        .await;
    within_named("the invalidation applied", EVENT_LIMIT, || async move {
        postgres_invalidations(observed).await >= 1
    })
    .await;
    // A call that begins after the change misses memory too, and joins the
    // first call's fetch.
    let second =
        tokio::spawn(async move { service_resolve(&mut second_client, ACME_NUMBER).await });
    within_named(
        "the second call's memory miss",
        EVENT_LIMIT,
        || async move { memory_route_misses(observed).await == 2 },
    )
    .await;
    redis.resume();

    let (first, first_tier) = first
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|s| panic!("{s:?}"));
    let (second, second_tier) = second
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|s| panic!("{s:?}"));
    // The first call began before the change: either value is right.
    assert!(
        ["alloy", "nova"].contains(&voice(&first).as_str()),
        "first call: {first:?} from {first_tier}"
    );
    assert_eq!(
        voice(&second),
        "nova",
        "a call that began after the invalidation answered the route from before it (from {second_tier})"
    );
    // And nothing older stayed behind.
    let (after, tier) = service_resolve(&mut replica.agents().await, ACME_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(voice(&after), "nova", "from {tier}");
    replica.stop().await;
}
