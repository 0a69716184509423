//! Redis topologies of a test's own, each a real set of `redis-server`
//! processes (the shared Redis on 6379 is never touched): a 3-master
//! [`Cluster`] and a master + replica + sentinel ([`Sentinels`]).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis::AsyncCommands;

use crate::harness::within_named;

/// One `redis-server` of a test's own, with a scratch directory.
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, dir: &PathBuf, args: &[&str]) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        Node {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGSTOP / SIGCONT: frozen, it answers nothing and replicates nothing.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            crate::redis_server::send_signal(child, signal);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_up(&self) {
        crate::redis_server::wait_until_listening(self.port, Duration::from_secs(5)).await;
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap_or_else(|e| panic!("{e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.url()))
    }

    pub async fn info(&self, section: &str) -> String {
        let mut connection = self.connection().await;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut connection)
            .await
            .unwrap_or_default()
    }

    pub async fn exists(&self, key: &str) -> bool {
        let mut connection = self.connection().await;
        connection.exists(key).await.unwrap_or(false)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` free ports below 30000 (a cluster node also binds port + 10000, so
/// the kernel's ephemeral range, which ends at 60999, is no good).
fn free_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    ports
}

const BASE: [&str; 6] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

/// Three masters, no replicas, slots split evenly by `redis-cli --cluster`.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: Scratch,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = Scratch::new("cluster");
        let mut nodes = Vec::new();
        for port in free_ports(3) {
            let port_arg = port.to_string();
            let conf = format!("nodes-{port}.conf");
            let mut args = vec!["--port", &port_arg, "--cluster-enabled", "yes"];
            args.extend([
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "1000",
            ]);
            args.extend(BASE);
            nodes.push(Node::spawn(port, &dir.0, &args));
        }
        for node in &nodes {
            node.wait_up().await;
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Cluster { nodes, _dir: dir };
        let started = Instant::now();
        'ready: loop {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cluster not ok"
            );
            for node in &cluster.nodes {
                let mut connection = node.connection().await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'ready;
                }
            }
            break;
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub async fn client(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap_or_else(|e| panic!("{e}"))
            .get_async_connection()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Keys matching `pattern` on each node, in node order.
    pub async fn keys_per_node(&self, pattern: &str) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            let mut connection = node.connection().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            all.push(keys);
        }
        all
    }
}

/// A master, its replica, and one sentinel (quorum 1) watching them.
pub struct Sentinels {
    pub master: Node,
    pub replica: Node,
    pub sentinel: Node,
    _dir: Scratch,
}

pub const MASTER_NAME: &str = "switchboard-test";

impl Sentinels {
    pub async fn start() -> Sentinels {
        let dir = Scratch::new("sentinel");
        let ports = free_ports(3);
        let (m, r, s) = (ports[0].to_string(), ports[1].to_string(), ports[2]);
        let master = Node::spawn(ports[0], &dir.0, &[&["--port", &m][..], &BASE].concat());
        master.wait_up().await;
        let replica = Node::spawn(
            ports[1],
            &dir.0,
            &[&["--port", &r, "--replicaof", "127.0.0.1", &m][..], &BASE].concat(),
        );
        replica.wait_up().await;
        within_named("replica linked", Duration::from_secs(10), || async {
            replica
                .info("replication")
                .await
                .contains("master_link_status:up")
        })
        .await;
        let conf = dir.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {s}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {m} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 500\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n",
                dir = dir.0.display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let conf = conf.display().to_string();
        let sentinel = Node::spawn(s, &dir.0, &[conf.as_str(), "--sentinel"]);
        sentinel.wait_up().await;
        let sentinels = Sentinels {
            master,
            replica,
            sentinel,
            _dir: dir,
        };
        // The sentinel must know the replica before it can promote it.
        within_named(
            "sentinel knows the replica",
            Duration::from_secs(15),
            || async {
                let mut connection = sentinels.sentinel.connection().await;
                let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(MASTER_NAME)
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                !replicas.is_empty()
            },
        )
        .await;
        sentinels
    }

    pub async fn master_port(&self) -> Option<u16> {
        let mut connection = self.sentinel.connection().await;
        let address: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query_async(&mut connection)
            .await
            .ok()?;
        address.and_then(|(_, port)| port.parse().ok())
    }
}
