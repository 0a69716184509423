//! How the shared tier reaches Redis: one node, a cluster, or whichever node
//! Sentinel names master. `Link` speaks `aio::ConnectionLike` for all three,
//! so `RedisTier` issues the same GET / SET / DEL / PUBLISH whatever the
//! topology; only the two things that differ are here:
//!
//! * **Deleting every route** walks keys with SCAN, and SCAN is per node: on
//!   a cluster it runs on every master (`scan_targets`). Multi-key DEL is
//!   split by slot by the cluster client.
//! * **Pub/sub** needs a connection of its own (`pubsub_client`). Classic
//!   PUBLISH reaches every node of a cluster and every replica of a master,
//!   so the subscriber may sit on any seed node, or on the current master.
//!
//! Reconnection: `ConnectionManager` (one node) and the cluster client
//! reconnect by themselves. A Sentinel link asks the sentinels for the master
//! every second and at once after a connection error or a READONLY answer
//! (an old master demoted to replica), and moves its connection when the
//! answer changes.
//!
//! Failover: Redis replicates asynchronously, so a promoted replica may
//! lack a DEL the old master acknowledged, and would serve a route older
//! than a write until its TTL. So a new master is reported (`NewMaster`):
//! by the Sentinel link before it uses it; by the others when `masters`
//! (read every second) answers otherwise: a cluster's master ids in
//! `CLUSTER NODES`, one node's `run_id`. The tier then treats every route
//! as unsettled until a flush succeeds.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock, Weak,
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
    AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};
use tokio::sync::Notify;

/// Where the shared tier lives, from `REDIS_URL`, `REDIS_CLUSTER_URLS` or
/// `REDIS_SENTINEL_URLS` (exactly one of them).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Standalone(String),
    /// Seed nodes; the others are discovered.
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        /// The name the sentinels monitor the master by.
        master: String,
        /// For the master and replicas (the sentinels' own are in their URLs).
        username: Option<String>,
        password: Option<String>,
    },
}

/// URLs carry passwords: say only which mode and how many nodes.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Standalone(_) => write!(f, "Standalone"),
            RedisTarget::Cluster(seeds) => write!(f, "Cluster({} seeds)", seeds.len()),
            RedisTarget::Sentinel {
                sentinels, master, ..
            } => write!(
                f,
                "Sentinel({} sentinels, master {master:?})",
                sentinels.len()
            ),
        }
    }
}

impl RedisTarget {
    /// Checks every URL parses, without connecting.
    pub(crate) fn validate(&self) -> RedisResult<()> {
        match self {
            RedisTarget::Standalone(url) => url.as_str().into_connection_info().map(drop),
            RedisTarget::Cluster(seeds) => {
                ClusterClientBuilder::new(seeds.iter().map(String::as_str)).build()?;
                Ok(())
            }
            RedisTarget::Sentinel { .. } => self.sentinel_client().map(drop),
        }
    }

    pub(crate) fn mode(&self) -> &'static str {
        match self {
            RedisTarget::Standalone(_) => "standalone",
            RedisTarget::Cluster(_) => "cluster",
            RedisTarget::Sentinel { .. } => "sentinel",
        }
    }

    fn sentinel_client(&self) -> RedisResult<SentinelClient> {
        let RedisTarget::Sentinel {
            sentinels,
            master,
            username,
            password,
        } = self
        else {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "not a sentinel target",
            )));
        };
        let node = SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(redis::RedisConnectionInfo {
                username: username.clone(),
                password: password.clone(),
                ..Default::default()
            }),
        };
        SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
    }

    /// A client for the node a subscriber should listen on; `attempt`
    /// rotates through a cluster's seeds so one dead seed is not retried
    /// forever.
    pub(crate) async fn pubsub_client(&self, attempt: u32) -> RedisResult<redis::Client> {
        match self {
            RedisTarget::Standalone(url) => redis::Client::open(url.as_str()),
            RedisTarget::Cluster(seeds) => {
                let seed = seeds
                    .get(attempt as usize % seeds.len().max(1))
                    .ok_or_else(|| {
                        RedisError::from((ErrorKind::InvalidClientConfig, "no cluster seed nodes"))
                    })?;
                redis::Client::open(seed.as_str())
            }
            RedisTarget::Sentinel { .. } => self.sentinel_client()?.async_get_client().await,
        }
    }
}

/// Called when a master the link had not used before takes over: what it
/// holds may predate writes the old one acknowledged.
pub(crate) type NewMaster = Arc<dyn Fn() + Send + Sync>;

/// How often a link checks who the masters are, when nothing failed.
const TOPOLOGY_POLL: Duration = Duration::from_secs(1);

/// Per-connection settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkTimeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

/// A connection to the tier, whatever the topology. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Link {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelLink),
}

/// Where one SCAN runs: the link's own node, or the master of a cluster
/// shard, named by a slot it owns, so the cluster client routes it by its
/// own slot map (a node it has no connection for cannot be asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanTarget {
    Link,
    Shard { slot: u16 },
}

/// Slots in a Redis Cluster.
const CLUSTER_SLOTS: u32 = 16_384;

/// One master of a cluster as `CLUSTER NODES` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterMaster {
    pub(crate) id: String,
    /// Inclusive slot ranges it owns.
    pub(crate) slots: Vec<(u16, u16)>,
}

impl Link {
    /// Connects; `new_master` is called on every failover seen afterwards,
    /// until `alive` can no longer be upgraded (the tier is gone).
    pub(crate) async fn connect(
        target: &RedisTarget,
        timeouts: LinkTimeouts,
        new_master: NewMaster,
        alive: Weak<()>,
    ) -> RedisResult<Link> {
        match target {
            RedisTarget::Standalone(url) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                let client = redis::Client::open(url.as_str())?;
                let link =
                    Link::Standalone(ConnectionManager::new_with_config(client, config).await?);
                link.watch_masters(new_master, alive).await
            }
            RedisTarget::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    .connection_timeout(timeouts.connect)
                    .response_timeout(timeouts.response)
                    .retries(1)
                    .build()?;
                let link = Link::Cluster(client.get_async_connection().await?);
                link.watch_masters(new_master, alive).await
            }
            RedisTarget::Sentinel { .. } => Ok(Link::Sentinel(
                SentinelLink::connect(target.sentinel_client()?, timeouts, new_master).await?,
            )),
        }
    }

    /// The masters of a cluster that own slots, sorted by id; an error
    /// unless together they own every slot.
    async fn cluster_masters(&mut self) -> RedisResult<Vec<ClusterMaster>> {
        let Link::Cluster(cluster) = self else {
            return Ok(Vec::new());
        };
        let nodes = cluster
            .route_command(
                redis::cmd("CLUSTER").arg("NODES"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let nodes: String = redis::from_redis_value(&nodes)?;
        let masters = cluster_masters(&nodes);
        let covered: u32 = masters
            .iter()
            .flat_map(|m| &m.slots)
            .map(|(from, to)| u32::from(to.saturating_sub(*from)) + 1)
            .sum();
        if covered != CLUSTER_SLOTS {
            return Err(RedisError::from((
                ErrorKind::ClusterDown,
                "the cluster's masters do not own every slot",
            )));
        }
        Ok(masters)
    }

    /// Where a full SCAN must go: one slot of every master of a cluster
    /// (together they own all slots, else an error: a flush that left a
    /// shard out must not count as done), else the one node.
    pub(crate) async fn scan_targets(&mut self) -> RedisResult<Vec<ScanTarget>> {
        if !matches!(self, Link::Cluster(_)) {
            return Ok(vec![ScanTarget::Link]);
        }
        Ok(self
            .cluster_masters()
            .await?
            .iter()
            .filter_map(|m| {
                m.slots
                    .first()
                    .map(|(slot, _)| ScanTarget::Shard { slot: *slot })
            })
            .collect())
    }

    /// One SCAN step on `target`: the next cursor and the keys found.
    pub(crate) async fn scan(
        &mut self,
        target: &ScanTarget,
        cursor: u64,
        pattern: &str,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500);
        match (self, target) {
            (Link::Cluster(cluster), ScanTarget::Shard { slot }) => {
                let value = cluster
                    .route_command(
                        &command,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                            *slot,
                            SlotAddr::Master,
                        ))),
                    )
                    .await?;
                redis::from_redis_value(&value)
            }
            (Link::Cluster(_), ScanTarget::Link) => Err(RedisError::from((
                ErrorKind::ClientError,
                "a cluster is scanned master by master",
            ))),
            (link, _) => command.query_async(link).await,
        }
    }
}

impl Link {
    /// The master a Sentinel link uses now (`None` for the others).
    pub(crate) fn master_address(&self) -> Option<String> {
        match self {
            Link::Sentinel(sentinel) => sentinel.master_address(),
            Link::Standalone(_) | Link::Cluster(_) => None,
        }
    }

    /// Who serves the tier: the master ids of a cluster that own slots, or
    /// one node's `run_id` (new on every start of the server, and on a
    /// managed Redis failing over behind one DNS name).
    async fn masters(&mut self) -> RedisResult<Vec<String>> {
        if matches!(self, Link::Cluster(_)) {
            let masters = self.cluster_masters().await?;
            return Ok(masters.into_iter().map(|m| m.id).collect());
        }
        Ok(vec![self.run_id().await?])
    }

    /// Reads who the masters are now, then watches for a change in the
    /// background (Sentinel follows its master itself).
    async fn watch_masters(mut self, new_master: NewMaster, alive: Weak<()>) -> RedisResult<Link> {
        let known = self.masters().await?;
        tokio::spawn(poll_masters(self.clone(), known, new_master, alive));
        Ok(self)
    }

    /// The server's `run_id` (`INFO server`): new on every start of it.
    async fn run_id(&mut self) -> RedisResult<String> {
        let info: String = redis::cmd("INFO").arg("server").query_async(self).await?;
        info.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| RedisError::from((ErrorKind::ResponseError, "INFO names no run_id")))
    }
}

/// Reads who the masters are every `TOPOLOGY_POLL` (`Link::masters`);
/// another answer than before is a failover, a restart, or a reshard, all
/// as safe to treat as one.
async fn poll_masters(
    mut link: Link,
    mut known: Vec<String>,
    new_master: NewMaster,
    alive: Weak<()>,
) {
    loop {
        tokio::time::sleep(TOPOLOGY_POLL).await;
        if alive.upgrade().is_none() {
            return;
        }
        let Ok(Ok(masters)) = tokio::time::timeout(TOPOLOGY_POLL, link.masters()).await else {
            continue;
        };
        if masters != known {
            tracing::warn!(
                before = known.len(),
                now = masters.len(),
                "redis: other masters than before (a failover or a restart); flushing routes"
            );
            new_master();
            known = masters;
        }
    }
}

/// The masters in `CLUSTER NODES` output that own slots, sorted by id:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <state> <slot>...`
/// where a slot field is `n`, `n-m`, or `[n->-id]` / `[n-<-id]` (a slot
/// being migrated, still owned here). A master marked failing is kept: if
/// it is down, the SCAN routed to its slots fails, and so does the flush.
pub(crate) fn cluster_masters(nodes: &str) -> Vec<ClusterMaster> {
    let mut masters: Vec<ClusterMaster> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (id, flags) = (fields.first()?, fields.get(2)?);
            if !flags.split(',').any(|f| f == "master") {
                return None;
            }
            let slots: Vec<(u16, u16)> = fields
                .iter()
                .skip(8)
                .filter(|f| !f.starts_with('['))
                .filter_map(|f| match f.split_once('-') {
                    Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
                    None => f.parse().ok().map(|n| (n, n)),
                })
                .filter(|(from, to)| from <= to && u32::from(*to) < CLUSTER_SLOTS)
                .collect();
            (!slots.is_empty()).then(|| ClusterMaster {
                id: (*id).to_owned(),
                slots,
            })
        })
        .collect();
    masters.sort_by(|a, b| a.id.cmp(&b.id));
    masters
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Standalone(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
            Link::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Link::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Standalone(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
            Link::Sentinel(_) => 0,
        }
    }
}

/// The connection to the master Sentinel names, moved when it changes.
#[derive(Clone)]
pub(crate) struct SentinelLink {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The master's address and our connection to it. A `std` lock: never
    /// held across an `.await`.
    master: RwLock<Option<(String, MultiplexedConnection)>>,
    /// Set by a failed call: reconnect even if the address is unchanged.
    broken: AtomicBool,
    wake: Notify,
    timeouts: LinkTimeouts,
    new_master: NewMaster,
}

impl SentinelLink {
    async fn connect(
        sentinel: SentinelClient,
        timeouts: LinkTimeouts,
        new_master: NewMaster,
    ) -> RedisResult<Self> {
        let shared = Arc::new(SentinelShared {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: RwLock::new(None),
            broken: AtomicBool::new(false),
            wake: Notify::new(),
            timeouts,
            new_master,
        });
        shared.refresh().await?;
        tokio::spawn(watch_master(Arc::downgrade(&shared)));
        Ok(SentinelLink { shared })
    }

    /// The address of the master in use, `host:port`.
    pub(crate) fn master_address(&self) -> Option<String> {
        self.shared
            .master
            .read()
            .ok()
            .and_then(|m| m.as_ref().map(|(address, _)| address.clone()))
    }

    fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let master = self.shared.master.read().ok().and_then(|m| m.clone());
        match master {
            Some((_, connection)) => Ok(connection),
            None => {
                self.shared.wake.notify_one();
                Err(RedisError::from((
                    ErrorKind::IoError,
                    "no redis master known yet",
                )))
            }
        }
    }

    fn after<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &result {
            if error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_timeout()
                || error.kind() == ErrorKind::ReadOnly
            {
                self.shared.broken.store(true, Ordering::Release);
                self.shared.wake.notify_one();
            }
        }
        result
    }
}

impl ConnectionLike for SentinelLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let result = connection.req_packed_command(cmd).await;
            self.after(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let result = connection.req_packed_commands(cmd, offset, count).await;
            self.after(result)
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl SentinelShared {
    /// Asks the sentinels for the master (which also checks, with ROLE,
    /// that it is one) and reconnects if it moved or the link broke.
    async fn refresh(&self) -> RedisResult<()> {
        let ask = async { self.sentinel.lock().await.async_get_client().await };
        let client = tokio::time::timeout(self.timeouts.connect, ask)
            .await
            .map_err(|_| {
                RedisError::from((ErrorKind::IoError, "sentinels did not answer in time"))
            })??;
        let address = client.get_connection_info().addr.to_string();
        let current = self
            .master
            .read()
            .ok()
            .and_then(|m| m.as_ref().map(|(a, _)| a.clone()));
        let broken = self.broken.load(Ordering::Acquire);
        if current.as_deref() == Some(address.as_str()) && !broken {
            return Ok(());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeouts.connect)
            .set_response_timeout(self.timeouts.response);
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let moved = current.as_deref().is_some_and(|c| c != address);
        if moved {
            // Before the first command reaches the new master.
            (self.new_master)();
        }
        if let Ok(mut master) = self.master.write() {
            *master = Some((address.clone(), connection));
        }
        self.broken.store(false, Ordering::Release);
        if moved {
            tracing::warn!(master = %address, "redis sentinel: a new master; flushing routes");
        } else if current.is_none() {
            tracing::info!(master = %address, "redis sentinel: using this master");
        }
        Ok(())
    }
}

/// Re-asks the sentinels every `TOPOLOGY_POLL` and at once when a call
/// failed; ends when the link is dropped.
async fn watch_master(shared: Weak<SentinelShared>) {
    loop {
        {
            let Some(strong) = shared.upgrade() else {
                return;
            };
            // Hold only the notification, not the link, while waiting.
            let woken = async {
                tokio::select! {
                    _ = strong.wake.notified() => {}
                    _ = tokio::time::sleep(TOPOLOGY_POLL) => {}
                }
            };
            woken.await;
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if let Err(error) = strong.refresh().await {
            tracing::warn!(%error, "redis sentinel: cannot reach the master; retrying");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_masters_are_read_from_cluster_nodes() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail? - 0 1426238318243 3 connected 10923-16382 16383 [16383->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master - 0 1426238316232 5 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        let masters = cluster_masters(nodes);
        let summary: Vec<(&str, Vec<(u16, u16)>)> = masters
            .iter()
            .map(|m| (&m.id[..4], m.slots.clone()))
            .collect();
        // Sorted by id; the slotless master and the replica left out; a
        // master marked failing kept (its shard must still be scanned).
        assert_eq!(
            summary,
            vec![
                ("292f", vec![(10923, 16382), (16383, 16383)]),
                ("67ed", vec![(5461, 10922)]),
                ("e7d1", vec![(0, 5460)]),
            ]
        );
    }

    #[test]
    fn a_target_never_prints_its_urls() {
        let target = RedisTarget::Cluster(vec!["redis://:hunter2@a:6379".into()]);
        assert_eq!(format!("{target:?}"), "Cluster(1 seeds)");
        let target = RedisTarget::Sentinel {
            sentinels: vec!["redis://:hunter2@s:26379".into()],
            master: "mymaster".into(),
            username: None,
            password: Some("hunter2".into()),
        };
        assert!(!format!("{target:?}").contains("hunter2"));
    }

    #[test]
    fn bad_urls_are_refused_without_connecting() {
        assert!(RedisTarget::Standalone("http://x".into())
            .validate()
            .is_err());
        assert!(
            RedisTarget::Cluster(vec!["redis://a:1".into(), "nope".into()])
                .validate()
                .is_err()
        );
        assert!(RedisTarget::Cluster(vec!["redis://127.0.0.1:7000".into()])
            .validate()
            .is_ok());
        assert!(RedisTarget::Sentinel {
            sentinels: vec!["redis://127.0.0.1:26379".into()],
            master: "mymaster".into(),
            username: None,
            password: None,
        }
        .validate()
        .is_ok());
    }
}
