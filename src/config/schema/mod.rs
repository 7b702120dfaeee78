//! The schema of `config.yaml`: one serde type per section, with its
//! defaults, and the parsers of values that have their own syntax
//! (durations, limits, TLS versions, header names).
//!
//! Values are checked while they are parsed wherever a field alone
//! decides (a duration's unit, a limit's range), so a parsed section
//! holds only usable values; rules across fields live in
//! [`super::validate`].

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::balancer::{BackendUrl, Protocol, StrategyName, Weight};
use crate::limiter::shared::{OnFailure, SharedMode};
use crate::limiter::{Limits, Rate};
use crate::proxy::path::EscapedSlashes;
use crate::tls::server::{Alpn, MinVersion};

mod pools;
mod telemetry;
pub use pools::*;
mod selection;
mod traffic;
pub use selection::*;
pub use telemetry::*;
pub use traffic::*;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "TOLLGATE_CONFIG";

/// The complete configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Public listener.
    pub server: ServerConfig,
    /// Admin API listener.
    pub admin: AdminConfig,
    /// The backend pool.
    pub backends: Vec<BackendConfig>,
    /// Backend selection.
    pub balancing: BalancingConfig,
    /// Upstream timeouts.
    pub proxy: ProxyConfig,
    /// Active health checks.
    pub health_check: HealthCheckConfig,
    /// Per-client rate limiting.
    pub rate_limit: RateLimitConfig,
    /// Client table and bucket snapshots.
    pub store: StoreConfig,
    /// Logging.
    pub log: LogConfig,
    /// Named backend pools besides `default` (the top-level backends).
    pub pools: std::collections::BTreeMap<String, PoolConfig>,
    /// Routes to the pools, first match wins.
    pub routes: Vec<RouteConfig>,
    /// Span export (`telemetry.otlp`).
    pub telemetry: TelemetryConfig,
}

/// `server`: the public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to accept plain HTTP connections on; `None` (`listen:
    /// null`): no plain listener, then `tls` must be set.
    pub listen: Option<SocketAddr>,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// How long a client may take to send its request headers; also how
    /// long a connection may stay open with no request on it.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1 request line and headers,
    /// HTTP/2 header list); larger ones are answered 431.
    pub max_header_bytes: usize,
    /// Client connections open at once, over all proxy threads; `None`:
    /// derived from the open-file limit (see `proxy::server`).
    pub max_connections: Option<NonZeroUsize>,
    /// Longest pause between two pieces of a request body from a client.
    #[serde(deserialize_with = "duration")]
    pub client_body_timeout: Duration,
    /// Longest time a client may leave a response unread.
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: NonZeroU32,
    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// believed only from peers in `rate_limit.trusted_proxies`.
    pub proxy_protocol: bool,
    /// The TLS listener; `None`: none.
    pub tls: Option<TlsConfig>,
    /// The HTTP/3 (QUIC) listener on the TLS listener's certificates;
    /// `None`: none, and no `Alt-Svc` is sent.
    pub http3: Option<Http3Config>,
}

/// `server.http3`: HTTP/3 over QUIC (UDP), advertised by `Alt-Svc` on
/// the TLS listener's responses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    /// UDP address to accept QUIC connections on.
    pub listen: SocketAddr,
    /// `ma` of the `Alt-Svc` header: how long a client may remember that
    /// HTTP/3 is offered.
    #[serde(deserialize_with = "duration")]
    pub alt_svc_max_age: Duration,
}

impl Default for Http3Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            // RFC 7838's own default for `ma`.
            alt_svc_max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// `server.tls`: the TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address to accept TLS connections on.
    pub listen: SocketAddr,
    /// Certificate chains and keys; the first is the default, the others
    /// are picked by SNI against their DNS names.
    pub certificates: Vec<CertificateConfig>,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(deserialize_with = "tls_version")]
    pub min_version: MinVersion,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`);
    /// empty: no ALPN, HTTP/1.1.
    #[serde(deserialize_with = "alpn_list")]
    pub alpn: Vec<Alpn>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            certificates: Vec::new(),
            min_version: MinVersion::Tls12,
            alpn: vec![Alpn::H2, Alpn::Http11],
        }
    }
}

/// One entry of `server.tls.certificates`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `"1.2"` or `"1.3"`; YAML reads an unquoted `1.2` as a number, which is
/// taken too.
fn tls_version<'de, D: Deserializer<'de>>(d: D) -> Result<MinVersion, D::Error> {
    struct Version;
    impl serde::de::Visitor<'_> for Version {
        type Value = MinVersion;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"1.2\" or \"1.3\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MinVersion, E> {
            match v {
                "1.2" => Ok(MinVersion::Tls12),
                "1.3" => Ok(MinVersion::Tls13),
                _ => Err(E::custom(format!("{v:?}: expected \"1.2\" or \"1.3\""))),
            }
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MinVersion, E> {
            self.visit_str(&v.to_string())
        }
    }
    d.deserialize_any(Version)
}

/// ALPN names: `h2` and `http/1.1`, the protocols tollgate serves.
fn alpn_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Alpn>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| match name.as_str() {
            "h2" => Ok(Alpn::H2),
            "http/1.1" => Ok(Alpn::Http11),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: expected h2 or http/1.1"
            ))),
        })
        .collect()
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_connections: None,
            client_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: NonZeroU32::MIN.saturating_add(127),
            proxy_protocol: false,
            tls: None,
            http3: None,
        }
    }
}

/// `admin`: the admin API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub listen: SocketAddr,
    /// Bearer token required on every admin request, if set.
    pub token: Option<String>,
    /// How long an admin client may take to send its request headers.
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// How long an admin client may take to send its request body.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Host names (port ignored) a request's `Host` may carry besides the
    /// loopback names and the listen address; any other gets 421 (a
    /// DNS-rebinding page's requests carry its own name).
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            allowed_hosts: Vec::new(),
        }
    }
}

/// One entry of `backends`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `http://host:port` or `https://host[:port]` of the backend.
    pub url: BackendUrl,
    /// What the admin API, metrics and logs call it; `None`: `host:port`.
    #[serde(default)]
    pub name: Option<String>,
    /// Its share of requests relative to the others (1-1000), honoured
    /// by every strategy.
    #[serde(default)]
    pub weight: Weight,
}

impl BackendConfig {
    /// A backend at `url`, with the default name and weight 1.
    pub fn new(url: BackendUrl) -> Self {
        Self {
            url,
            name: None,
            weight: Weight::ONE,
        }
    }

    /// Its name: as configured, else `host:port`.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| crate::balancer::default_name(&self.url))
    }
}

/// `balancing`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancingConfig {
    /// How a backend is chosen.
    pub strategy: StrategyName,
}

/// `proxy`: upstream timeouts and what is forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Time allowed to open a TCP connection to a backend.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for a backend to answer with response headers.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Longest pause between two pieces of a response body from a backend.
    #[serde(deserialize_with = "duration")]
    pub backend_body_timeout: Duration,
    /// Forward request header names containing `_`; by default they are
    /// dropped (nginx's `underscores_in_headers off`), since backends that
    /// map `_` to `-` would read headers tollgate never looked at.
    pub allow_underscores_in_headers: bool,
    /// Extra CA certificates (PEM) trusted for `https://` backends, on
    /// top of the system's.
    pub ca_file: Option<PathBuf>,
    /// An upgraded (WebSocket) tunnel with no byte either way for this
    /// long is closed.
    #[serde(deserialize_with = "duration")]
    pub upgrade_idle_timeout: Duration,
    /// `%2F` and `%5C` in a request path: refused (400), or forwarded
    /// untouched and matched as text.
    pub escaped_slashes: EscapedSlashes,
    /// The HTTP version the default pool's backends are spoken to in, and
    /// that of every pool that does not set `protocol`.
    pub protocol: Protocol,
    /// Idle keep-alive connections kept per backend and proxy thread
    /// (nginx's `keepalive`, per worker); more are closed as they fall
    /// idle. 0: every backend connection closes after its response.
    pub backend_idle_connections: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            backend_body_timeout: Duration::from_secs(60),
            allow_underscores_in_headers: false,
            ca_file: None,
            upgrade_idle_timeout: Duration::from_secs(600),
            escaped_slashes: EscapedSlashes::Reject,
            protocol: Protocol::Http1,
            backend_idle_connections: DEFAULT_BACKEND_IDLE_CONNECTIONS,
        }
    }
}

/// `proxy.backend_idle_connections` unless set: nginx's usual
/// `keepalive 64`. A burst of N concurrent requests opens N backend
/// connections; only this many per backend and thread stay for the next.
pub const DEFAULT_BACKEND_IDLE_CONNECTIONS: usize = 64;

/// Largest `backend_idle_connections` accepted.
pub const MAX_BACKEND_IDLE_CONNECTIONS: usize = 65_536;

/// `health_check`: active backend checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path requested on every backend.
    pub path: String,
    /// Time between two checks of a backend.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Time allowed for one check.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive failures that take a backend out of the pool.
    pub unhealthy_threshold: NonZeroU32,
    /// Consecutive successes that bring it back.
    pub healthy_threshold: NonZeroU32,
    /// Outlier ejection on answers.
    pub passive: PassiveConfig,
    /// Check with the gRPC health protocol (`grpc.health.v1.Health/Check`,
    /// SERVING = healthy) instead of `GET path`; needs `protocol: http2`.
    pub grpc: bool,
    /// The service named in the gRPC check; empty: the server as a whole.
    pub grpc_service: String,
}

/// `health_check.passive`: outlier ejection on consecutive 5xx answers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// 5xx answers in a row that eject a backend; 0: off.
    pub consecutive_5xx: u32,
    /// How long an ejected backend stays out.
    #[serde(deserialize_with = "duration")]
    pub ejection_time: Duration,
    /// Never eject more than this share of the pool (percent, rounded
    /// down: 1 of 2 at 50).
    pub max_ejected_percent: u8,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 0,
            ejection_time: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: NonZeroU32::MIN.saturating_add(1),
            healthy_threshold: NonZeroU32::MIN.saturating_add(1),
            passive: PassiveConfig::default(),
            grpc: false,
            grpc_service: String::new(),
        }
    }
}

/// `rate_limit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Whether requests are rate limited at all.
    pub enabled: bool,
    /// Header carrying a client's API key.
    pub api_key_header: HeaderName,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// IPv6 clients without an API key are limited by their network of
    /// this prefix length (1-128; 128: every address alone), since one
    /// host usually holds a whole /64.
    #[serde(deserialize_with = "ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Limits of clients that are not in the client table.
    #[serde(deserialize_with = "limits")]
    pub default: Limits,
    /// Period of the refill tick.
    #[serde(deserialize_with = "duration")]
    pub refill_interval: Duration,
    /// Most clients tracked at once (table clients not counted).
    pub max_clients: NonZeroUsize,
    /// A bucket full for this long is forgotten.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// One limit per client across replicas, through Redis.
    pub shared: SharedLimitConfig,
    /// Decide, count and send the headers, but never refuse (every bucket,
    /// every rule).
    pub dry_run: bool,
    /// Extra buckets a request must pass besides its client's.
    pub rules: Vec<RuleConfig>,
}

/// One of `rate_limit.rules`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `[a-z0-9_-]+`, unique; in metrics and `RateLimit-Policy`.
    pub name: String,
    /// Which requests it applies to.
    #[serde(rename = "match", default)]
    pub matcher: RuleMatch,
    /// `client`, `ip` or `header:NAME`.
    #[serde(default = "default_rule_key")]
    pub key: String,
    /// Each bucket's limits (`rate_per_sec` or `rate: N/unit`).
    #[serde(deserialize_with = "limits")]
    pub limits: Limits,
    /// Tokens one request takes.
    #[serde(default = "one")]
    pub cost: u64,
    /// Decide and count, never refuse.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_rule_key() -> String {
    "client".into()
}

fn one() -> u64 {
    1
}

/// `rate_limit.rules[i].match`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleMatch {
    /// Requests whose (normalized) path starts with this (`/` by default:
    /// all).
    pub path_prefix: String,
    /// Methods; empty or absent: every method. `GET` matches `HEAD` too.
    pub methods: Vec<String>,
    /// Compare the path without regard to ASCII case (for backends that
    /// read `/API/search` as `/api/search`).
    pub ignore_case: bool,
    /// Routes whose requests it applies to (by name); empty: every route.
    pub routes: Vec<String>,
    /// Hosts whose requests it applies to (as routes write them).
    pub hosts: Vec<String>,
}

impl Default for RuleMatch {
    fn default() -> Self {
        Self {
            path_prefix: "/".into(),
            methods: Vec::new(),
            ignore_case: false,
            routes: Vec::new(),
            hosts: Vec::new(),
        }
    }
}

/// `rate_limit.shared`: limits shared by replicas through Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedLimitConfig {
    /// `redis://host:port[/db]`; `None`: every replica limits on its own.
    pub redis_url: Option<String>,
    /// What a request gets while Redis cannot answer.
    pub on_failure: OnFailure,
    /// Time Redis has to answer one check.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Prefix of the Redis keys (several deployments can share a Redis).
    pub key_prefix: String,
    /// Leased tokens spent locally (default), or one Redis call per request.
    pub mode: SharedMode,
}

impl Default for SharedLimitConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            on_failure: OnFailure::Local,
            timeout: Duration::from_millis(50),
            key_prefix: "tollgate:".into(),
            mode: SharedMode::default(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            api_key_header: HeaderName(http::HeaderName::from_static("x-api-key")),
            trusted_proxies: Vec::new(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            default: default_limits(),
            refill_interval: Duration::from_millis(100),
            max_clients: NonZeroUsize::MIN.saturating_add(999_999),
            idle_timeout: Duration::from_secs(600),
            shared: SharedLimitConfig::default(),
            dry_run: false,
            rules: Vec::new(),
        }
    }
}

/// `rate_limit.ipv6_prefix` by default: a /64 is what one subscriber or
/// host usually gets, so grouping by it keeps one host from minting fresh
/// buckets from its own address range.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

fn ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = u64::deserialize(d)?;
    u8::try_from(n)
        .ok()
        .filter(|p| (1..=128).contains(p))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{n}: a prefix length is 1 to 128 (128: every address alone)"
            ))
        })
}

fn default_limits() -> Limits {
    match Limits::new(100, 10.0) {
        Ok(l) => l,
        Err(_) => unreachable!("100 tokens at 10/s are valid limits"),
    }
}

fn limits<'de, D: Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
    LimitsSpec::deserialize(d).map(|spec| spec.0)
}

/// Limits as the config writes them, `{capacity: 100, rate_per_sec: 10}`
/// or `{capacity: 1000, rate: 1000/day}`: exactly one of the two rates.
/// Every place that takes limits (`rate_limit.default`, and any limits
/// added later) reads them through this one type, so they accept the same
/// spellings and report the same problems; a problem in `rate` itself is
/// reported on `….rate`, one between the fields on the limits' own path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitsSpec(pub Limits);

impl<'de> Deserialize<'de> for LimitsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            capacity: u64,
            rate_per_sec: Option<f64>,
            rate: Option<Rate>,
        }
        let raw = Raw::deserialize(d)?;
        Limits::from_parts(raw.capacity, raw.rate_per_sec, raw.rate)
            .map(Self)
            .map_err(|first| {
                // Limits stop at the first problem; `check` reports them all.
                let capacity = Limits::new(raw.capacity, 0.0).err();
                let rate = Limits::from_parts(1, raw.rate_per_sec, raw.rate).err();
                match (capacity, rate) {
                    (Some(c), Some(r)) => serde::de::Error::custom(format!("{c}; {r}")),
                    _ => serde::de::Error::custom(first),
                }
            })
    }
}

/// `store`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database URL (`sqlite://file.db`, `postgres://...`).
    pub url: String,
    /// Period of bucket-state snapshots.
    #[serde(deserialize_with = "duration")]
    pub snapshot_interval: Duration,
    /// PostgreSQL only: how often the client table is re-read to pick up
    /// changes other replicas made.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// Longest wait for one database operation (an admin request's wait
    /// for its client's lock included); shutdown is bounded by
    /// `server.drain_timeout` on top.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// PostgreSQL only (accepted and ignored with SQLite, whose table only
    /// this process writes): admin writes announce the client with
    /// `NOTIFY`, and this replica `LISTEN`s and applies announced rows at
    /// once; `reload_interval` stays as the safety net.
    pub notify: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://tollgate.db".into(),
            snapshot_interval: Duration::from_secs(5),
            reload_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            notify: true,
        }
    }
}

/// `log`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Minimum level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG`
    /// overrides it.
    pub level: LogLevel,
    /// Line format.
    pub format: LogFormat,
    /// One line per answered request on stdout (see `access_log`).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel(tracing::Level::INFO),
            format: LogFormat::Text,
            access: false,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A log level, parsed from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub tracing::Level);

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        tracing::Level::from_str(&s).map(LogLevel).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown level {s:?}: expected error, warn, info, debug or trace"
            ))
        })
    }
}

/// A valid HTTP header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderName(pub http::HeaderName);

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        http::HeaderName::from_str(&s)
            .map(HeaderName)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a valid header name")))
    }
}

/// Deserializes a [`Dur`] straight into the `Duration` the running parts
/// take.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Dur::deserialize(d).map(|d| d.0)
}

/// A duration written as `250ms`, `2s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(Duration::from_secs(n))
    }

    /// `n` milliseconds.
    pub const fn millis(n: u64) -> Self {
        Self(Duration::from_millis(n))
    }
}

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?} has no unit: write e.g. 250ms, 2s, 5m, 1h"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("{s:?}: expected a whole number and a unit (250ms, 2s, 5m, 1h)")
        })?;
        let per_unit = match unit {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
        };
        per_unit
            .checked_mul(u32::try_from(n).map_err(|_| format!("{s:?} is too large"))?)
            .map(Dur)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
