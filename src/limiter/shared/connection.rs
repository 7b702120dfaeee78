//! Where the shared limiter's Redis is and how it is reached
//! (`rate_limit.shared.redis_url`): one server (`redis://`), a Redis
//! Cluster (`redis+cluster://h1:7000,h2:7001`), or the master that a set
//! of Sentinels names (`redis+sentinel://s1:26379,s2:26379/mymaster`).
//!
//! The limiter sends every script through one [`Connection`], whatever the
//! topology, so the scripts and their callers do not know which it is:
//!
//! - one server: redis-rs's reconnecting connection manager;
//! - a cluster: redis-rs's cluster client, which routes each script by its
//!   first key's slot and follows MOVED/ASK redirections, failovers and
//!   slot migrations itself. A script's keys must then share one slot, which
//!   the limiter's key names see to (hash tags, in `mod.rs`);
//! - Sentinel: redis-rs finds the master through the sentinels, but keeps
//!   no connection that follows a failover. [`SentinelLink`] does: a
//!   connection that fails, times out or lands on a demoted master
//!   (READONLY) is dropped, and the next call asks the sentinels again.
//!
//! URLs are parsed here, by the same function for `tollgate check` and
//! `serve`, so a URL that passes `check` is one `serve` can use.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisResult};

/// Port of a cluster node or a Redis server when the URL names none.
const REDIS_PORT: u16 = 6379;

/// Port of a sentinel when the URL names none.
const SENTINEL_PORT: u16 = 26379;

/// The most one search for the master may take (asking the sentinels, then
/// connecting to it): a master that died leaves its address with the
/// sentinels until they fail over, and a connection to a host that is gone
/// may otherwise wait for the system's TCP timeout.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(1);

/// Why a `rate_limit.shared.redis_url` cannot be used. The texts never
/// quote the password.
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    /// Not one of the schemes tollgate knows.
    #[error(
        "not a Redis URL: expected redis://HOST:PORT[/DB], \
         redis+cluster://HOST:PORT,HOST:PORT,... or \
         redis+sentinel://HOST:PORT,HOST:PORT,.../MASTER[/DB]"
    )]
    Scheme,
    /// A cluster or sentinel URL without a host, or with an empty one
    /// between commas.
    #[error("{0} needs a list of HOST[:PORT], comma-separated, none empty")]
    NoHost(&'static str),
    /// `redis+sentinel://` without the master's name.
    #[error("redis+sentinel:// needs the master's name after the hosts: /mymaster[/DB]")]
    NoMaster,
    /// A path on a cluster URL: a cluster has database 0 only.
    #[error("redis+cluster:// takes no path (a Redis Cluster has database 0 only)")]
    ClusterPath,
    /// What follows the master's name is not a database number.
    #[error("{0:?} after the master's name is not a database number")]
    Database(String),
    /// redis-rs refused the URL, a node's address or the credentials.
    #[error("{}", crate::redact::Scrubbed(.0))]
    Redis(#[from] redis::RedisError),
    /// redis-rs refused one host of a list.
    #[error("{host}: {}", crate::redact::Scrubbed(.source))]
    Host {
        /// The host as the list gives it, port added.
        host: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
}

/// A parsed `rate_limit.shared.redis_url`.
#[derive(Clone)]
pub enum RedisTarget {
    /// `redis://` or `unix://`: one server.
    Single(ConnectionInfo),
    /// `redis+cluster://`: the nodes to learn the cluster's layout from.
    Cluster(Vec<ConnectionInfo>),
    /// `redis+sentinel://`: the sentinels, the master's name, and the
    /// credentials and database for the master.
    Sentinel {
        /// The sentinels, asked in turn.
        sentinels: Vec<ConnectionInfo>,
        /// The name the sentinels know the master by.
        master: String,
        /// Database, user and password on the master.
        node: RedisConnectionInfo,
    },
}

// By hand: the connection details hold the password.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Single"),
            Self::Cluster(nodes) => write!(f, "Cluster({} nodes)", nodes.len()),
            Self::Sentinel {
                sentinels, master, ..
            } => write!(f, "Sentinel({} sentinels, {master:?})", sentinels.len()),
        }
    }
}

/// A URL's parts after `scheme://`: userinfo (with its `@`, or empty),
/// the host list, the path (with its `/`, or empty) and the query (with
/// its `?`, or empty).
struct Parts<'a> {
    userinfo: &'a str,
    hosts: &'a str,
    path: &'a str,
    query: &'a str,
}

impl<'a> Parts<'a> {
    fn of(rest: &'a str) -> Self {
        let (before_query, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
        // The last `@` ends the userinfo: a password may hold `@` or `/`.
        let (userinfo, after) = match before_query.rfind('@') {
            Some(at) => before_query.split_at(at + 1),
            None => ("", before_query),
        };
        let (hosts, path) = after.split_at(after.find('/').unwrap_or(after.len()));
        Self {
            userinfo,
            hosts,
            path,
            query,
        }
    }

    /// Each `HOST[:PORT]` of the list, with `default` where no port is
    /// given.
    fn hosts(&self, scheme: &'static str, default: u16) -> Result<Vec<String>, RedisUrlError> {
        let hosts: Vec<String> = self
            .hosts
            .split(',')
            .map(|h| with_port(h.trim(), default))
            .collect::<Option<_>>()
            .ok_or(RedisUrlError::NoHost(scheme))?;
        Ok(hosts)
    }
}

/// `host` with `:default` added if it names no port (`[::1]` is a host,
/// `[::1]:7000` has a port); `None` for an empty one.
fn with_port(host: &str, default: u16) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    let has_port = match host.strip_prefix('[') {
        Some(v6) => !v6.ends_with(']'),
        None => host.contains(':'),
    };
    Some(if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default}")
    })
}

/// One host's URL read by redis-rs, its failure naming `host`.
fn node(url: String, host: &str) -> Result<ConnectionInfo, RedisUrlError> {
    url.into_connection_info()
        .map_err(|source| RedisUrlError::Host {
            host: host.to_owned(),
            source,
        })
}

impl RedisTarget {
    /// Reads a `rate_limit.shared.redis_url`.
    pub fn parse(url: &str) -> Result<Self, RedisUrlError> {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            return Self::cluster(&Parts::of(rest));
        }
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return Self::sentinel(&Parts::of(rest));
        }
        if url.starts_with("redis://") || url.starts_with("unix://") {
            return Ok(Self::Single(url.into_connection_info()?));
        }
        Err(RedisUrlError::Scheme)
    }

    fn cluster(parts: &Parts<'_>) -> Result<Self, RedisUrlError> {
        if !matches!(parts.path, "" | "/" | "/0") {
            return Err(RedisUrlError::ClusterPath);
        }
        let nodes = parts
            .hosts("redis+cluster://", REDIS_PORT)?
            .iter()
            .map(|h| node(format!("redis://{}{h}{}", parts.userinfo, parts.query), h))
            .collect::<Result<_, _>>()?;
        Ok(Self::Cluster(nodes))
    }

    fn sentinel(parts: &Parts<'_>) -> Result<Self, RedisUrlError> {
        let path = parts.path.trim_start_matches('/');
        let (master, db) = path.split_once('/').unwrap_or((path, ""));
        if master.is_empty() {
            return Err(RedisUrlError::NoMaster);
        }
        let db = db.trim_end_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(RedisUrlError::Database(db.to_owned()));
        }
        let hosts = parts.hosts("redis+sentinel://", SENTINEL_PORT)?;
        let sentinels = hosts
            .iter()
            .map(|h| node(format!("redis://{h}"), h))
            .collect::<Result<_, _>>()?;
        // The master's credentials and database, read by redis-rs's own
        // parser from a URL of the same form as a single server's.
        let node = format!("redis://{}{}/{db}{}", parts.userinfo, hosts[0], parts.query)
            .into_connection_info()?
            .redis_settings()
            .clone();
        Ok(Self::Sentinel {
            sentinels,
            master: master.to_owned(),
            node,
        })
    }

    /// A cluster: every script's keys must share a hash slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The topology's name in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            Self::Cluster(_) => "cluster",
            Self::Sentinel { .. } => "sentinel",
        }
    }
}

/// The way to Redis of one shared limiter, cheap to clone (every call
/// clones it, as redis-rs's connections want `&mut`). Connects lazily:
/// a Redis that is down at start-up only fails calls until it is up.
#[derive(Clone)]
pub(super) enum Connection {
    /// One server.
    Single(redis::aio::ConnectionManager),
    /// A Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
    /// The master the sentinels name.
    Sentinel(Arc<SentinelLink>),
}

impl Connection {
    /// A connection to `target` whose calls wait at most `timeout` for an
    /// answer. Needs the tokio runtime (the cluster client starts its
    /// task at once).
    pub(super) fn open(target: &RedisTarget, timeout: Duration) -> RedisResult<Self> {
        let connect = timeout.max(Duration::from_millis(200));
        match target {
            RedisTarget::Single(info) => {
                let client = redis::Client::open(info.clone())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let manager = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
                Ok(Self::Single(manager))
            }
            RedisTarget::Cluster(nodes) => {
                // A retry waits 10-100 ms, not redis-rs's default of over a
                // second: a check that cannot be answered within its
                // timeout falls to the failure policy anyway.
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(timeout);
                Ok(Self::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            } => Ok(Self::Sentinel(Arc::new(SentinelLink::new(
                sentinels.clone(),
                master.clone(),
                node.clone(),
                connect,
                timeout,
            )?))),
        }
    }

    /// A call on this connection got no answer in time: a Sentinel link
    /// looks for the master again at the next call, since a master that
    /// hangs is one the sentinels may be replacing.
    pub(super) fn stalled(&self) {
        if let Self::Sentinel(link) = self {
            link.forget(None);
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
            Self::Sentinel(link) => Box::pin(link.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(link) => Box::pin(link.commands(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
            Self::Sentinel(link) => link.db,
        }
    }
}

/// A connection to the master that the sentinels name, found again after
/// a failover.
///
/// A failover that the old master lives through (`SENTINEL FAILOVER`, a
/// network split) breaks no connection: the old master goes on taking
/// writes until the sentinels turn it into a replica, which they do only
/// some seconds later. So besides dropping a connection that fails, the
/// link asks a sentinel which master it names at most every
/// [`MASTER_RECHECK`], in the background of a call, and drops a
/// connection to any other.
pub(super) struct SentinelLink {
    /// Finds the master (and checks that it says it is one); one search
    /// at a time (the lock), so that a failover seen by every call at
    /// once costs one search.
    sentinel: Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    /// The master's connection; `None`: search again.
    current: Mutex<Option<Master>>,
    /// Numbers the connections, so that a failure on an old one does not
    /// drop a newer one.
    found: std::sync::atomic::AtomicU64,
    /// For the periodic question: the sentinels, the master's name, a
    /// connection to the sentinel that last answered, and when it was
    /// last asked (ms since `started`; only one asks at a time).
    sentinels: Vec<ConnectionInfo>,
    master: String,
    asking: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    asked_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
    config: redis::AsyncConnectionConfig,
    db: i64,
}

/// How often a Sentinel link asks which master the sentinels name.
pub const MASTER_RECHECK: Duration = Duration::from_millis(250);

/// The master's connection, its number and its address.
#[derive(Clone)]
struct Master {
    number: u64,
    connection: MultiplexedConnection,
    addr: redis::ConnectionAddr,
}

impl SentinelLink {
    fn new(
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: RedisConnectionInfo,
        connect: Duration,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let db = node.db();
        let on_master =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
        let sentinel = redis::sentinel::SentinelClient::build(
            sentinels.clone(),
            master.clone(),
            Some(on_master),
            redis::sentinel::SentinelServerType::Master,
        )?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(timeout));
        Ok(Self {
            sentinel: Arc::new(tokio::sync::Mutex::new(sentinel)),
            current: Mutex::new(None),
            found: std::sync::atomic::AtomicU64::new(0),
            sentinels,
            master,
            asking: Arc::new(tokio::sync::Mutex::new(None)),
            asked_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            config,
            db,
        })
    }

    fn current(&self) -> Option<Master> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops connection `number` (`None`: whichever is current), so that
    /// the next call searches for the master.
    fn forget(&self, number: Option<u64>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if number.is_none() || current.as_ref().map(|m| m.number) == number {
            *current = None;
        }
    }

    /// The master's connection, searched for if there is none. The search
    /// runs in a task of its own: a caller whose timeout ends it does not
    /// cancel it, so a search slower than one check's timeout still ends,
    /// and the next check finds its connection.
    async fn connection(self: &Arc<Self>) -> RedisResult<Master> {
        if let Some(found) = self.current() {
            self.recheck(&found);
            return Ok(found);
        }
        let link = self.clone();
        tokio::spawn(async move { link.search().await })
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the search for the master was cancelled",
                ))
            })?
    }

    async fn search(&self) -> RedisResult<Master> {
        let mut sentinel = self.sentinel.lock().await;
        // Another call found it while this one waited for the lock.
        if let Some(found) = self.current() {
            return Ok(found);
        }
        let search = async {
            let client = sentinel.async_get_client().await?;
            let addr = client.get_connection_info().addr().clone();
            let connection = client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            Ok::<_, redis::RedisError>((addr, connection))
        };
        let (addr, connection) = tokio::time::timeout(DISCOVERY_LIMIT, search)
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no master found through the sentinels in time",
                ))
            })??;
        let number = self
            .found
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        tracing::debug!(master = %addr, "redis master found through the sentinels");
        let master = Master {
            number,
            connection,
            addr,
        };
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(master.clone());
        Ok(master)
    }

    /// Every [`MASTER_RECHECK`], in a task of its own: asks a sentinel for
    /// the master's address and drops `master`'s connection if it names
    /// another.
    fn recheck(self: &Arc<Self>, master: &Master) {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.asked_ms.load(Ordering::Relaxed);
        let every = u64::try_from(MASTER_RECHECK.as_millis()).unwrap_or(u64::MAX);
        // The one call that moves the mark asks.
        if now < last.saturating_add(every)
            || self
                .asked_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (link, master) = (self.clone(), master.clone());
        tokio::spawn(async move {
            let named = tokio::time::timeout(DISCOVERY_LIMIT, link.named()).await;
            if let Ok(Some(named)) = named {
                if named != master.addr {
                    tracing::info!(old = %master.addr, new = %named, "the sentinels name another redis master");
                    link.forget(Some(master.number));
                }
            }
        });
    }

    /// The master's address as the first sentinel that answers names it.
    async fn named(&self) -> Option<redis::ConnectionAddr> {
        let mut asking = self.asking.lock().await;
        let question = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .clone();
        if let Some(connection) = asking.as_mut() {
            if let Ok((host, port)) = question.query_async::<(String, u16)>(connection).await {
                return Some(redis::ConnectionAddr::Tcp(host, port));
            }
            *asking = None;
        }
        for sentinel in &self.sentinels {
            let Ok(client) = redis::Client::open(sentinel.clone()) else {
                continue;
            };
            let Ok(mut connection) = client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
            else {
                continue;
            };
            if let Ok((host, port)) = question.query_async::<(String, u16)>(&mut connection).await {
                *asking = Some(connection);
                return Some(redis::ConnectionAddr::Tcp(host, port));
            }
        }
        None
    }

    /// After a failed call on connection `number`: a broken connection, or
    /// a master that has become a replica (READONLY), is dropped.
    fn failed(&self, number: u64, error: &redis::RedisError) {
        let demoted = error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if demoted
            || error.is_io_error()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error()
        {
            self.forget(Some(number));
        }
    }

    async fn command(self: &Arc<Self>, cmd: &redis::Cmd) -> RedisResult<redis::Value> {
        let mut master = self.connection().await?;
        let answer = master.connection.req_packed_command(cmd).await;
        if let Err(e) = &answer {
            self.failed(master.number, e);
        }
        answer
    }

    async fn commands(
        self: &Arc<Self>,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<redis::Value>> {
        let mut master = self.connection().await?;
        let answer = master
            .connection
            .req_packed_commands(pipeline, offset, count)
            .await;
        if let Err(e) = &answer {
            self.failed(master.number, e);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(info: &ConnectionInfo) -> String {
        info.addr().to_string()
    }

    #[test]
    fn a_single_server_url_is_redis_rs_s_own() {
        let t = RedisTarget::parse("redis://:pw@h:6380/2").expect("valid");
        let RedisTarget::Single(info) = t else {
            panic!("{t:?}")
        };
        assert_eq!(addr(&info), "h:6380");
        assert_eq!(info.redis_settings().db(), 2);
        assert!(!RedisTarget::parse("unix:///tmp/redis.sock")
            .expect("valid")
            .is_cluster());
    }

    #[test]
    fn a_cluster_url_lists_its_seed_nodes() {
        let t =
            RedisTarget::parse("redis+cluster://:pw@h1:7000,h2,[::1]:7002,[::2]").expect("valid");
        let RedisTarget::Cluster(nodes) = &t else {
            panic!("{t:?}")
        };
        let addrs: Vec<_> = nodes.iter().map(addr).collect();
        assert_eq!(addrs, ["h1:7000", "h2:6379", "::1:7002", "::2:6379"]);
        assert!(nodes
            .iter()
            .all(|n| n.redis_settings().password() == Some("pw")));
        assert!(t.is_cluster());
        assert_eq!(t.kind(), "cluster");
        assert!(RedisTarget::parse("redis+cluster://h1:7000/").is_ok());
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_and_the_master() {
        let t = RedisTarget::parse("redis+sentinel://u:pw@s1:26380,s2/mymaster/3").expect("valid");
        let RedisTarget::Sentinel {
            sentinels,
            master,
            node,
        } = &t
        else {
            panic!("{t:?}")
        };
        let addrs: Vec<_> = sentinels.iter().map(addr).collect();
        assert_eq!(addrs, ["s1:26380", "s2:26379"]);
        assert_eq!(master, "mymaster");
        assert_eq!(node.db(), 3);
        assert_eq!(node.username(), Some("u"));
        assert_eq!(node.password(), Some("pw"));
        // The sentinels are asked without the master's credentials.
        assert!(sentinels
            .iter()
            .all(|s| s.redis_settings().password().is_none()));
        assert_eq!(format!("{t:?}"), "Sentinel(2 sentinels, \"mymaster\")");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        let cases = [
            ("http://h", "not a Redis URL"),
            ("redis+cluster://", "list of HOST[:PORT]"),
            ("redis+cluster://h1,,h2", "list of HOST[:PORT]"),
            ("redis+cluster://h1/2", "database 0 only"),
            ("redis+sentinel://s1,s2", "master's name"),
            ("redis+sentinel://s1/", "master's name"),
            ("redis+sentinel://s1/m/x", "not a database number"),
            ("redis+cluster://:secret@h1:99999", "h1:99999: "),
            ("redis+sentinel://:secret@s1:99999/m", "s1:99999: "),
        ];
        for (url, says) in cases {
            let e = RedisTarget::parse(url).expect_err(url).to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }
}
