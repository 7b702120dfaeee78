//! Private Redis topologies on loopback for the shared limiter's tests: a
//! Redis Cluster (3 masters, 3 replicas) and a Sentinel set (1 master,
//! 1 replica, 3 sentinels), each started from `redis-server` and
//! `redis-cli` on free ports in a temporary directory, with failure
//! detection set low (1 s) so a failover happens within a test. Dropping
//! one kills every process it started and removes its directory, also
//! when the test fails.
//!
//! Without `redis-server` and `redis-cli` a test skips, saying so, unless
//! it runs in CI (`CI` set), where `.ci/run` installs them: their absence
//! there fails the test instead of hiding it. `TOLLGATE_TEST_REDIS_SERVER`
//! and `TOLLGATE_TEST_REDIS_CLI` name other binaries (`valkey-server`,
//! `valkey-cli`), to run the same tests on a Redis-compatible server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Failure detection of the cluster's nodes and of the sentinels.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// The server binary: `redis-server`, or `TOLLGATE_TEST_REDIS_SERVER`.
pub fn server_bin() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// The command-line client: `redis-cli`, or `TOLLGATE_TEST_REDIS_CLI`.
fn cli_bin() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// Whether the Redis tools are here; `false` (the test skips) only
/// outside CI.
pub fn redis_tools() -> bool {
    let here = |bin: String| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if here(server_bin()) && here(cli_bin()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: redis-server and redis-cli must be installed (.ci/run installs them)"
    );
    eprintln!("skipped: redis-server or redis-cli is not installed");
    false
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    super::closed_port().port()
}

/// One `redis-server` process, killed when dropped.
pub struct Node {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, args: &[String]) -> Self {
        let child = Command::new(server_bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        Self {
            port,
            child: Some(child),
        }
    }

    /// Kills it (-9, as a crash), if it runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it has not been killed.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings every private server gets: loopback, no persistence, files
/// in `dir`.
fn base_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--save", "", "--appendonly", "no", "--dir"].map(String::from));
    args.push(dir.display().to_string());
    args
}

/// One command's answer from the server at `port` (a connection of its
/// own, so that a dead node fails this call only).
pub async fn ask<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    command.query_async(&mut c).await
}

/// Polls `check` every 20 ms until it holds, failing after `within`.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Redis Cluster of 3 masters with a replica each.
pub struct Cluster {
    /// Its servers, masters and replicas, as `redis-cli` got them.
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Client port.
    pub port: u16,
    /// A master (else a replica).
    pub master: bool,
    /// Marked failed by the cluster.
    pub failed: bool,
    /// The slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

impl Cluster {
    /// Starts the six servers, makes them a cluster and waits until every
    /// node says `cluster_state:ok` and every replica is in sync.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = (0..6)
            .map(|_| {
                let (port, bus) = (free_port(), free_port());
                let mut args = base_args(port, dir.path());
                args.extend([
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{port}.conf"),
                    "--cluster-port".into(),
                    bus.to_string(),
                    "--cluster-node-timeout".into(),
                    NODE_TIMEOUT_MS.to_string(),
                    // A replica fails over however long it was cut off.
                    "--cluster-replica-validity-factor".into(),
                    "0".into(),
                ]);
                Node::spawn(port, &args)
            })
            .collect();
        for n in &nodes {
            until(
                "a cluster node to answer",
                Duration::from_secs(10),
                || async { ask::<String>(n.port, &redis::cmd("PING")).await.is_ok() },
            )
            .await;
        }
        let mut create = Command::new(cli_bin());
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes, _dir: dir };
        cluster.until_ok(Duration::from_secs(20)).await;
        cluster
    }

    /// `redis+cluster://` with every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every live node says `cluster_state:ok`, sees three
    /// masters that are not failed, and every live replica's link to its
    /// master is up.
    pub async fn until_ok(&self, within: Duration) {
        until("cluster_state:ok on every node", within, || async {
            for n in self.nodes.iter().filter(|n| n.alive()) {
                let Ok(info) = ask::<String>(n.port, redis::cmd("CLUSTER").arg("INFO")).await
                else {
                    return false;
                };
                if !info.contains("cluster_state:ok") {
                    return false;
                }
                let Ok(replication) =
                    ask::<String>(n.port, redis::cmd("INFO").arg("replication")).await
                else {
                    return false;
                };
                if replication.contains("role:slave")
                    && !replication.contains("master_link_status:up")
                {
                    return false;
                }
            }
            let masters = self.layout().await;
            let serving = |n: &&ClusterNode| n.master && !n.failed && !n.slots.is_empty();
            masters.iter().filter(serving).count() == 3
        })
        .await;
    }

    /// `CLUSTER NODES` as a live node sees it.
    pub async fn layout(&self) -> Vec<ClusterNode> {
        for n in self.nodes.iter().filter(|n| n.alive()) {
            if let Ok(text) = ask::<String>(n.port, redis::cmd("CLUSTER").arg("NODES")).await {
                return text.lines().filter_map(parse_node).collect();
            }
        }
        panic!("no cluster node answers");
    }

    /// The port of the master serving `key`'s slot.
    pub async fn master_of(&self, key: &str) -> u16 {
        let live = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        let slot: i64 = ask(live.port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .expect("CLUSTER KEYSLOT");
        let slot = u16::try_from(slot).expect("a slot");
        self.layout()
            .await
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|n| n.port)
            .expect("a master for the slot")
    }

    /// Kills the node on `port` (-9).
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
            .kill();
    }
}

/// A `CLUSTER NODES` line: `id ip:port@bus flags master ping pong epoch
/// link slot...`.
fn parse_node(line: &str) -> Option<ClusterNode> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?;
    let port = address
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    Some(ClusterNode {
        port,
        master: flags.contains("master"),
        failed: flags.contains("fail") && !flags.contains("fail?"),
        slots,
    })
}

/// The name the sentinels know the master by.
pub const MASTER_NAME: &str = "mymaster";

/// A master, its replica and three sentinels watching them.
pub struct Sentinels {
    /// The first master, then its replica.
    pub servers: Vec<Node>,
    /// The sentinels.
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// Starts the servers and sentinels and waits until every sentinel
    /// knows the replica and the other two sentinels (a failover needs
    /// both).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let master_port = free_port();
        let master = Node::spawn(master_port, &base_args(master_port, dir.path()));
        let replica_port = free_port();
        let mut args = base_args(replica_port, dir.path());
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ]);
        let replica = Node::spawn(replica_port, &args);
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                // Sentinels rewrite their config file: one each, writable.
                let conf = dir.path().join(format!("sentinel-{port}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} {NODE_TIMEOUT_MS}\n\
                         sentinel failover-timeout {MASTER_NAME} 10000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir = dir.path().display()
                    ),
                )
                .expect("write sentinel.conf");
                Node::spawn(port, &[conf.display().to_string(), "--sentinel".into()])
            })
            .collect();
        let set = Self {
            servers: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        set.until_ready(Duration::from_secs(30)).await;
        set
    }

    /// `redis+sentinel://` with every sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The master's port as the first sentinel that answers says.
    pub async fn master(&self) -> Option<u16> {
        master_named_by(&self.sentinel_ports()).await
    }

    /// Waits until every sentinel sees the replica in sync and two other
    /// sentinels, so that a failover can be agreed.
    async fn until_ready(&self, within: Duration) {
        until("sentinels ready to fail over", within, || async {
            for s in &self.sentinels {
                let master = redis::cmd("SENTINEL")
                    .arg("master")
                    .arg(MASTER_NAME)
                    .clone();
                let Ok(fields) = ask::<Vec<String>>(s.port, &master).await else {
                    return false;
                };
                let field = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv[0] == name)
                        .map(|kv| kv[1].clone())
                };
                let sentinels = field("num-other-sentinels").and_then(|n| n.parse::<u32>().ok());
                let replicas = field("num-slaves").and_then(|n| n.parse::<u32>().ok());
                if sentinels != Some(2) || replicas != Some(1) {
                    return false;
                }
            }
            let Ok(replication) =
                ask::<String>(self.servers[1].port, redis::cmd("INFO").arg("replication")).await
            else {
                return false;
            };
            replication.contains("master_link_status:up")
        })
        .await;
    }

    /// The server on `port`.
    pub fn server(&mut self, port: u16) -> &mut Node {
        self.servers
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a server on that port")
    }
}

/// The master's port as the first of the sentinels on `ports` that
/// answers says.
pub async fn master_named_by(ports: &[u16]) -> Option<u16> {
    for &port in ports {
        let command = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME)
            .clone();
        if let Ok((_, master)) = ask::<(String, u16)>(port, &command).await {
            return Some(master);
        }
    }
    None
}

/// Scripts run by sha (`EVALSHA`) on the server at `port` since it
/// started: the limiter's checks and leases that reached it (0 while it
/// does not answer).
pub async fn evalsha_calls(port: u16) -> u64 {
    let Ok(stats) = ask::<String>(port, redis::cmd("INFO").arg("commandstats")).await else {
        return 0;
    };
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}
