//! `config.yaml`: every setting, its default, and its validation.
//!
//! Loading happens before any port is opened. Each section is parsed on
//! its own so that one bad section does not hide problems in another, and
//! every problem is reported with its field path (`rate_limit.default.capacity`)
//! and a reason. Values that have their own rules (limits, durations,
//! backend URLs, CIDRs) are validated while they are parsed, so a loaded
//! [`Config`] holds only usable values.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::balancer::{BackendUrl, StrategyName, Weight};
use crate::limiter::rules::{RuleKey, RuleSpec};
use crate::limiter::shared::{OnFailure, SharedMode};
use crate::limiter::{Limits, Rate};
use crate::tls::server::{Alpn, CertificatePaths, MinVersion, PairFile, TlsSettings};

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

/// Bounds of `server.max_header_bytes`: below 1 KiB ordinary browser
/// requests fail; above 1 MiB the limit no longer protects memory.
pub const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;

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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
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

/// Longest backend name accepted.
pub const MAX_BACKEND_NAME: usize = 128;

/// Why `name` cannot be a backend name, if it cannot: it goes into URL
/// paths (`/backends/{name}/drain`), metric labels and log lines.
fn backend_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_BACKEND_NAME {
        return Some(format!(
            "{name:?}: a name is 1 to {MAX_BACKEND_NAME} characters"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!name.chars().all(allowed))
        .then(|| format!("{name:?}: a name is made of letters, digits and - _ . : only"))
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
        }
    }
}

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
    /// Requests whose path starts with this (`/` by default: all).
    pub path_prefix: String,
    /// Methods; empty or absent: every method.
    pub methods: Vec<String>,
}

impl Default for RuleMatch {
    fn default() -> Self {
        Self {
            path_prefix: "/".into(),
            methods: Vec::new(),
        }
    }
}

impl RuleConfig {
    /// The validated rule, or each thing wrong with it as (field under
    /// the rule, reason).
    pub fn spec(&self) -> Result<RuleSpec, Vec<(&'static str, String)>> {
        let mut wrong = Vec::new();
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            wrong.push((
                "name",
                format!(
                    "{:?}: use [a-z0-9_-]+ (it names the rule in metrics and headers)",
                    self.name
                ),
            ));
        } else if self.name == "tollgate" || self.name == "client" {
            wrong.push((
                "name",
                format!("{:?} is reserved for the client's own bucket", self.name),
            ));
        }
        let prefix = &self.matcher.path_prefix;
        if !prefix.starts_with('/')
            || prefix
                .bytes()
                .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
        {
            wrong.push((
                "match.path_prefix",
                format!("{prefix:?}: must start with / and hold no spaces, controls, ? or #"),
            ));
        }
        let mut methods = Vec::new();
        for m in &self.matcher.methods {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => wrong.push(("match.methods", format!("{m:?} is not an HTTP method"))),
            }
        }
        let key = RuleKey::parse(&self.key)
            .map_err(|e| wrong.push(("key", e)))
            .ok();
        let capacity = u64::from(self.limits.capacity());
        let cost = match u32::try_from(self.cost).ok().and_then(NonZeroU32::new) {
            Some(cost) if u64::from(cost.get()) <= capacity => Some(cost),
            _ => {
                wrong.push((
                    "cost",
                    format!(
                        "{} must be between 1 and the capacity ({capacity}): a larger cost could never pass",
                        self.cost
                    ),
                ));
                None
            }
        };
        match (key, cost) {
            (Some(key), Some(cost)) if wrong.is_empty() => Ok(RuleSpec {
                name: self.name.clone(),
                path_prefix: prefix.clone(),
                methods,
                key,
                limits: self.limits,
                cost,
                dry_run: self.dry_run,
            }),
            _ => Err(wrong),
        }
    }
}

impl RateLimitConfig {
    /// The rules, validated (`Config::load` refused a config whose rules
    /// are not valid, so this only drops what it already reported).
    pub fn rule_specs(&self) -> Vec<RuleSpec> {
        self.rules.iter().filter_map(|r| r.spec().ok()).collect()
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://tollgate.db".into(),
            snapshot_interval: Duration::from_secs(5),
            reload_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
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
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
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

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field (`rate_limit.default`), or the file.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Everything wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read.
    pub path: PathBuf,
    /// Each problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.path.display())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Which file to read: `--config`, else `$TOLLGATE_CONFIG`, else `config.yaml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.yaml"))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |field: &str, reason: String| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                field: field.into(),
                reason,
            }],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(&path.display().to_string(), format!("cannot read: {e}")))?;
        Self::parse_and_check_files(&text).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates config text, returning every problem found.
    /// Files the config names (TLS certificates) are not opened: see
    /// [`Config::parse_and_check_files`].
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        Self::parse_text(text, Files::Skip)
    }

    /// [`Config::parse`], and the files the config names (TLS
    /// certificates and keys) loaded as a start would load them; what
    /// [`Config::load`], and so `tollgate check`, does.
    pub fn parse_and_check_files(text: &str) -> Result<Self, Vec<Problem>> {
        Self::parse_text(text, Files::Check)
    }

    fn parse_text(text: &str, files: Files) -> Result<Self, Vec<Problem>> {
        let file_problem = |reason: String| {
            vec![Problem {
                field: "(file)".into(),
                reason,
            }]
        };
        if text.len() > MAX_FILE_BYTES {
            return Err(file_problem(format!(
                "{} bytes: a config file is at most {MAX_FILE_BYTES} bytes",
                text.len()
            )));
        }
        if let Some(line) = too_deep(text) {
            return Err(file_problem(format!(
                "line {line}: [ and {{ nested more than {MAX_FLOW_DEPTH} levels deep"
            )));
        }
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_problem)?;
        let map = match value {
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                return Err(vec![Problem {
                    field: "(file)".into(),
                    reason: "expected a mapping of sections (server:, backends:, ...)".into(),
                }])
            }
        };
        let mut config = Config {
            backends: default_backends(),
            ..Config::default()
        };
        let mut problems = Vec::new();
        for (key, value) in map {
            let Some(name) = key.as_str() else {
                problems.push(Problem {
                    field: format!("{key:?}"),
                    reason: "section names are strings".into(),
                });
                continue;
            };
            match name {
                "server" => section(name, value, &mut config.server, &mut problems),
                "admin" => section(name, value, &mut config.admin, &mut problems),
                "backends" => section(name, value, &mut config.backends, &mut problems),
                "balancing" => section(name, value, &mut config.balancing, &mut problems),
                "proxy" => section(name, value, &mut config.proxy, &mut problems),
                "health_check" => section(name, value, &mut config.health_check, &mut problems),
                "rate_limit" => section(name, value, &mut config.rate_limit, &mut problems),
                "store" => section(name, value, &mut config.store, &mut problems),
                "log" => section(name, value, &mut config.log, &mut problems),
                other => problems.push(Problem {
                    field: other.into(),
                    reason: "unknown section (expected server, admin, backends, balancing, \
                             proxy, health_check, rate_limit, store or log)"
                        .into(),
                }),
            }
        }
        config.check(&mut problems, files);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Rules that involve more than one field.
    fn check(&self, problems: &mut Vec<Problem>, files: Files) {
        let mut add = |field: &str, reason: String| {
            problems.push(Problem {
                field: field.into(),
                reason,
            })
        };
        if self.backends.is_empty() {
            add("backends", "at least one backend is required".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.rate_limit.rules.iter().enumerate() {
            if let Err(wrong) = rule.spec() {
                for (field, reason) in wrong {
                    add(&format!("rate_limit.rules[{i}].{field}"), reason);
                }
            }
            if !names.insert(rule.name.as_str()) {
                add(
                    &format!("rate_limit.rules[{i}].name"),
                    format!(
                        "{:?} names an earlier rule too: names are unique",
                        rule.name
                    ),
                );
            }
        }
        self.check_backends(&mut add);
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            add(
                "admin.token",
                format!(
                    "required because admin.listen ({}) is not a loopback address: \
                     anyone who can reach it could change client limits",
                    self.admin.listen
                ),
            );
        }
        if let Some(token) = &self.admin.token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                add(
                    "admin.token",
                    "must be at least 16 printable ASCII characters without spaces".into(),
                );
            }
        }
        if self.server.listen == Some(self.admin.listen) && self.admin.listen.port() != 0 {
            add(
                "admin.listen",
                format!("same address as server.listen ({})", self.admin.listen),
            );
        }
        if self.server.proxy_protocol && self.rate_limit.trusted_proxies.is_empty() {
            add(
                "server.proxy_protocol",
                "true, but rate_limit.trusted_proxies is empty: PROXY headers are \
                 believed only from trusted proxies, so every connection would be closed"
                    .into(),
            );
        }
        self.check_tls(&mut add, files);
        if !self.health_check.path.starts_with('/') {
            add(
                "health_check.path",
                format!("{:?} must start with /", self.health_check.path),
            );
        }
        let zero = |d: Duration| d.is_zero();
        for (field, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            (
                "server.client_body_timeout",
                self.server.client_body_timeout,
            ),
            ("server.send_timeout", self.server.send_timeout),
            ("proxy.connect_timeout", self.proxy.connect_timeout),
            ("proxy.request_timeout", self.proxy.request_timeout),
            (
                "proxy.backend_body_timeout",
                self.proxy.backend_body_timeout,
            ),
            (
                "proxy.upgrade_idle_timeout",
                self.proxy.upgrade_idle_timeout,
            ),
            ("health_check.interval", self.health_check.interval),
            ("health_check.timeout", self.health_check.timeout),
            (
                "rate_limit.refill_interval",
                self.rate_limit.refill_interval,
            ),
            ("store.snapshot_interval", self.store.snapshot_interval),
            ("store.reload_interval", self.store.reload_interval),
            ("store.timeout", self.store.timeout),
            ("admin.header_read_timeout", self.admin.header_read_timeout),
            ("admin.body_read_timeout", self.admin.body_read_timeout),
            ("rate_limit.shared.timeout", self.rate_limit.shared.timeout),
        ] {
            if zero(d) {
                add(field, "must be greater than 0".into());
            }
        }
        if !MAX_HEADER_BYTES_RANGE.contains(&self.server.max_header_bytes) {
            add(
                "server.max_header_bytes",
                format!(
                    "must be between {} and {}",
                    MAX_HEADER_BYTES_RANGE.start(),
                    MAX_HEADER_BYTES_RANGE.end()
                ),
            );
        }
        if let Some(url) = &self.rate_limit.shared.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                add(
                    "rate_limit.shared.redis_url",
                    format!("{url:?} is not a Redis URL (redis://HOST:PORT[/DB])"),
                );
            } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                // The same parser `serve` uses, so `check` passing means
                // `serve` can use the URL.
                add(
                    "rate_limit.shared.redis_url",
                    format!("{url:?} is not a usable Redis URL: {e}"),
                );
            }
        }
        if !crate::store::is_supported(&self.store.url) {
            add(
                "store.url",
                format!(
                    "{:?} is not a supported database URL (sqlite://FILE or postgres://USER@HOST/DB)",
                    self.store.url
                ),
            );
        }
        if !self.proxy.allow_underscores_in_headers
            && self.rate_limit.api_key_header.0.as_str().contains('_')
        {
            add(
                "rate_limit.api_key_header",
                format!(
                    "{} contains '_', and such headers are dropped; \
                     set proxy.allow_underscores_in_headers: true or use '-'",
                    self.rate_limit.api_key_header.0
                ),
            );
        }
        if let Some(path) = &self.proxy.ca_file {
            // The same reading start-up does, so `check` passing means the
            // file will load.
            if let Err(e) = crate::tls::client::check_ca_file(path) {
                add("proxy.ca_file", e.to_string());
            }
        }
        if self.rate_limit.max_clients.get() > crate::limiter::MAX_CLIENTS {
            add(
                "rate_limit.max_clients",
                format!("must be at most {}", crate::limiter::MAX_CLIENTS),
            );
        }
    }
}

impl Config {
    /// `backends` (URLs and names unique, names usable) and
    /// `health_check.passive`.
    fn check_backends(&self, add: &mut impl FnMut(&str, String)) {
        for (i, a) in self.backends.iter().enumerate() {
            if self.backends[..i].iter().any(|b| b.url == a.url) {
                add(
                    &format!("backends[{i}].url"),
                    format!("{} is listed twice", a.url),
                );
            }
            if let Some(reason) = a.name.as_deref().and_then(backend_name_problem) {
                add(&format!("backends[{i}].name"), reason);
                continue;
            }
            let name = a.name();
            if let Some(j) = self.backends[..i].iter().position(|b| b.name() == name) {
                add(
                    &format!("backends[{i}].name"),
                    format!("{name:?} is already the name of backends[{j}]; names are unique"),
                );
            }
        }
        let passive = &self.health_check.passive;
        if passive.max_ejected_percent > 100 {
            add(
                "health_check.passive.max_ejected_percent",
                format!("{}: a percentage is 0 to 100", passive.max_ejected_percent),
            );
        }
        if passive.consecutive_5xx > 0 && passive.ejection_time.is_zero() {
            add(
                "health_check.passive.ejection_time",
                "must be greater than 0 when consecutive_5xx is set".into(),
            );
        }
    }

    /// `server.listen`, `server.tls`: a listener at all, distinct
    /// addresses, and certificate files a start can load.
    fn check_tls(&self, add: &mut impl FnMut(&str, String), files: Files) {
        let Some(tls) = &self.server.tls else {
            if self.server.listen.is_none() {
                add(
                    "server.tls.listen",
                    "required when server.listen is null: there would be no listener".into(),
                );
            }
            return;
        };
        if tls.listen.port() != 0 {
            if Some(tls.listen) == self.server.listen {
                add(
                    "server.tls.listen",
                    format!("same address as server.listen ({})", tls.listen),
                );
            }
            if tls.listen == self.admin.listen {
                add(
                    "server.tls.listen",
                    format!("same address as admin.listen ({})", tls.listen),
                );
            }
        }
        if tls.certificates.is_empty() {
            add(
                "server.tls.certificates",
                "at least one certificate is required (the first is the default)".into(),
            );
        }
        if files == Files::Skip {
            return;
        }
        for (i, pair) in tls.certificates.iter().enumerate() {
            let paths = CertificatePaths::from(pair);
            if let Err(e) = crate::tls::server::check_pair(&paths) {
                let file = match e.file() {
                    Some(PairFile::Cert) => ".cert",
                    Some(PairFile::Key) => ".key",
                    None => "",
                };
                add(
                    &format!("server.tls.certificates[{i}]{file}"),
                    e.to_string(),
                );
            }
        }
    }
}

/// Whether validation opens the files a config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Files {
    /// The text alone (tests, configs meant for another machine).
    Skip,
    /// Load them as a start would.
    Check,
}

/// Largest config file read.
const MAX_FILE_BYTES: usize = 1 << 20;

/// Deepest nesting of flow collections (`[`, `{`) accepted. The YAML
/// parser's time grows with the square of this depth (100,000 levels took
/// it 30-50 s), and a real config needs three or four.
const MAX_FLOW_DEPTH: usize = 64;

/// The line where `[`/`{` nesting first exceeds [`MAX_FLOW_DEPTH`], found
/// in one pass before the parser sees the text. Quoted scalars and
/// comments are skipped by YAML's rules for where they start (a quote or
/// `#` at the start of a token), so brackets in strings do not count.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut line = 1;
    // Whether the previous byte ends a token, so a quote or `#` here
    // starts a quoted scalar or a comment.
    let mut token_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => line += 1,
            b'#' if token_start => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if token_start => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if b == b'"' => i += 1,
                        b'\n' => line += 1,
                        q if q == b => {
                            // '' inside single quotes is an escaped quote.
                            if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        token_start = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',');
        i += 1;
    }
    None
}

/// A YAML error as a problem. A number too large for any integer type
/// fails in the parser, with the field's path in the message; that one is
/// reported on its field rather than as broken YAML.
fn yaml_problem(e: serde_yaml::Error) -> Vec<Problem> {
    let text = e.to_string();
    if let Some((field, rest)) = text.split_once(": invalid type: integer `") {
        if let Some((number, _)) = rest.split_once('`') {
            let reason = if field.ends_with("capacity") {
                format!(
                    "{number} is too large: capacity must be at most {}",
                    u32::MAX
                )
            } else {
                format!("{number} is too large a number")
            };
            return vec![Problem {
                field: field.to_owned(),
                reason,
            }];
        }
    }
    vec![Problem {
        field: "(file)".into(),
        reason: format!("not valid YAML: {text}"),
    }]
}

fn default_backends() -> Vec<BackendConfig> {
    (9001..=9003)
        .filter_map(|port| BackendUrl::parse(&format!("http://127.0.0.1:{port}")).ok())
        .map(BackendConfig::new)
        .collect()
}

/// Parses one section into `slot`, or records the first problem in it with
/// its full path.
fn section<T: DeserializeOwned>(
    name: &str,
    value: serde_yaml::Value,
    slot: &mut T,
    problems: &mut Vec<Problem>,
) {
    // An empty section (`log:` with nothing under it) keeps the defaults.
    if value.is_null() {
        return;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => *slot = parsed,
        Err(e) => {
            let inner = e.path().to_string();
            let field = if inner == "." || inner.is_empty() {
                name.to_string()
            } else if inner.starts_with('[') {
                format!("{name}{inner}")
            } else {
                format!("{name}.{inner}")
            };
            problems.push(Problem {
                field,
                reason: e.into_inner().to_string(),
            });
        }
    }
}

// ---------------------------------------------------------------------
// Turning a valid config into the settings of the running parts. Start-up
// uses these, and a reload can run them again on a new config.

impl From<&RateLimitConfig> for crate::limiter::RegistryConfig {
    fn from(rl: &RateLimitConfig) -> Self {
        Self {
            default_limits: rl.default,
            max_clients: rl.max_clients,
            idle_timeout: rl.idle_timeout,
            refill_interval: rl.refill_interval,
        }
    }
}

impl From<&RateLimitConfig> for crate::proxy::identity::Identifier {
    fn from(rl: &RateLimitConfig) -> Self {
        Self::new(rl.api_key_header.0.clone(), rl.trusted_proxies.clone())
            .with_ipv6_prefix(rl.ipv6_prefix)
    }
}

impl From<&HealthCheckConfig> for crate::balancer::Thresholds {
    fn from(hc: &HealthCheckConfig) -> Self {
        Self {
            unhealthy: hc.unhealthy_threshold.get(),
            healthy: hc.healthy_threshold.get(),
        }
    }
}

impl From<&PassiveConfig> for crate::balancer::PassiveSettings {
    fn from(p: &PassiveConfig) -> Self {
        Self {
            consecutive_5xx: p.consecutive_5xx,
            ejection_time: p.ejection_time,
            max_ejected_percent: p.max_ejected_percent,
        }
    }
}

impl From<&BackendConfig> for crate::balancer::BackendSpec {
    fn from(b: &BackendConfig) -> Self {
        Self {
            url: b.url.clone(),
            name: b.name().into(),
            weight: b.weight,
        }
    }
}

impl From<&Config> for crate::proxy::ProxySettings {
    fn from(c: &Config) -> Self {
        Self {
            connect_timeout: c.proxy.connect_timeout,
            request_timeout: c.proxy.request_timeout,
            backend_body_timeout: c.proxy.backend_body_timeout,
            client_body_timeout: c.server.client_body_timeout,
            allow_underscores_in_headers: c.proxy.allow_underscores_in_headers,
            upgrade_idle_timeout: c.proxy.upgrade_idle_timeout,
        }
    }
}

impl From<&CertificateConfig> for CertificatePaths {
    fn from(c: &CertificateConfig) -> Self {
        Self {
            cert: c.cert.clone(),
            key: c.key.clone(),
        }
    }
}

impl From<&TlsConfig> for TlsSettings {
    fn from(t: &TlsConfig) -> Self {
        Self {
            certificates: t.certificates.iter().map(CertificatePaths::from).collect(),
            min_version: t.min_version,
            alpn: t.alpn.clone(),
        }
    }
}

impl From<&ServerConfig> for crate::proxy::server::ServeOptions {
    fn from(s: &ServerConfig) -> Self {
        let budget = match s.max_connections {
            Some(n) => crate::proxy::server::ConnectionBudget::new(n),
            None => crate::proxy::server::ConnectionBudget::from_open_file_limit(),
        };
        Self {
            header_read_timeout: s.header_read_timeout,
            drain_timeout: s.drain_timeout,
            max_header_bytes: s.max_header_bytes,
            send_timeout: s.send_timeout,
            http2_max_concurrent_streams: s.http2_max_concurrent_streams.get(),
            budget: Some(budget),
            // Needs the trusted proxies too: see `From<&Config>`.
            proxy_protocol: None,
        }
    }
}

impl From<&Config> for crate::proxy::server::ServeOptions {
    fn from(c: &Config) -> Self {
        Self {
            proxy_protocol: c.server.proxy_protocol.then(|| {
                crate::proxy::proxy_protocol::ProxyProtocol::new(
                    c.rate_limit.trusted_proxies.clone(),
                )
            }),
            ..Self::from(&c.server)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_valid_and_equals_the_defaults() {
        let text = include_str!("../config.yaml");
        let c = Config::parse(text).expect("shipped config.yaml is valid");
        let d = Config::parse("").expect("empty config is valid");
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.backends, d.backends);
        assert_eq!(c.rate_limit.default, d.rate_limit.default);
        assert_eq!(c.rate_limit.ipv6_prefix, d.rate_limit.ipv6_prefix);
        assert_eq!(c.rate_limit.refill_interval, Duration::from_millis(100));
        assert_eq!(c.rate_limit.max_clients.get(), 1_000_000);
        assert_eq!(c.rate_limit.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.health_check.unhealthy_threshold.get(), 2);
        assert_eq!(c.health_check.passive, d.health_check.passive);
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.admin.header_read_timeout, d.admin.header_read_timeout);
        assert_eq!(c.admin.body_read_timeout, d.admin.body_read_timeout);
        assert_eq!(c.store.timeout, d.store.timeout);
        assert_eq!(c.server.max_header_bytes, d.server.max_header_bytes);
        assert_eq!(c.server.max_connections, d.server.max_connections);
        assert_eq!(c.server.client_body_timeout, d.server.client_body_timeout);
        assert_eq!(c.server.send_timeout, d.server.send_timeout);
        assert_eq!(
            c.server.http2_max_concurrent_streams,
            d.server.http2_max_concurrent_streams
        );
        assert_eq!(c.proxy.backend_body_timeout, d.proxy.backend_body_timeout);
        assert_eq!(
            c.proxy.allow_underscores_in_headers,
            d.proxy.allow_underscores_in_headers
        );
        assert_eq!(c.proxy.ca_file, d.proxy.ca_file);
        assert_eq!(c.proxy.upgrade_idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn front_door_limits_are_checked_with_their_field() {
        let problems = Config::parse(
            "server:\n  max_header_bytes: 100\n  send_timeout: 0s\n  client_body_timeout: 0ms\n\
             proxy:\n  backend_body_timeout: 0s\n  upgrade_idle_timeout: 0s\n",
        )
        .expect_err("invalid");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "server.max_header_bytes",
            "server.send_timeout",
            "server.client_body_timeout",
            "proxy.backend_body_timeout",
            "proxy.upgrade_idle_timeout",
        ] {
            assert!(fields.contains(&f), "{f} missing from {problems:?}");
        }
        let problems =
            Config::parse("server:\n  max_connections: 0\n").expect_err("zero connections");
        assert_eq!(problems[0].field, "server.max_connections");
        let problems = Config::parse("server:\n  http2_max_concurrent_streams: 0\n")
            .expect_err("zero streams");
        assert_eq!(problems[0].field, "server.http2_max_concurrent_streams");
        let c = Config::parse("server:\n  max_connections: 5000\n").expect("valid");
        assert_eq!(c.server.max_connections.map(NonZeroUsize::get), Some(5000));
    }

    #[test]
    fn an_api_key_header_with_underscores_needs_them_allowed() {
        let problems =
            Config::parse("rate_limit:\n  api_key_header: X_Api_Key\n").expect_err("dropped");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "rate_limit.api_key_header");
        assert!(problems[0].reason.contains("'_'"), "{}", problems[0]);
        let allowed = "rate_limit:\n  api_key_header: X_Api_Key\n\
                       proxy:\n  allow_underscores_in_headers: true\n";
        assert!(Config::parse(allowed).is_ok());
    }

    /// A self-signed ECDSA certificate for `name`, as PEM files in `dir`.
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k)
    }

    #[test]
    fn tls_problems_are_reported_with_their_field() {
        let problems = Config::parse("server:\n  listen: null\n").expect_err("no listener");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "server.tls.listen");

        let dir = tempfile::tempdir().expect("tempdir");
        let (a_cert, a_key) = pair(dir.path(), "a.test");
        let (_, b_key) = pair(dir.path(), "b.test");
        let missing = dir.path().join("missing.pem");
        let yaml = format!(
            "server:\n  listen: null\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n\
             \x20     - {{cert: {a_cert:?}, key: {missing:?}}}\n\
             \x20     - {{cert: {a_cert:?}, key: {b_key:?}}}\n\
             \x20     - {{cert: {missing:?}, key: {a_key:?}}}\n\
             \x20     - {{cert: {a_key:?}, key: {a_key:?}}}\n"
        );
        assert!(Config::parse(&yaml).is_ok(), "parse alone opens no file");
        let problems = Config::parse_and_check_files(&yaml).expect_err("bad files");
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[0].0, "server.tls.certificates[0].key");
        assert!(found[0].1.contains("missing.pem"), "{found:?}");
        assert_eq!(found[1].0, "server.tls.certificates[1].key");
        assert!(found[1].1.contains("is not the key of"), "{found:?}");
        assert_eq!(found[2].0, "server.tls.certificates[2].cert");
        assert_eq!(found[3].0, "server.tls.certificates[3].cert");

        let good = format!(
            "server:\n  listen: null\n  tls:\n    listen: 127.0.0.1:0\n    min_version: \"1.3\"\n\
             \x20   certificates: [{{cert: {a_cert:?}, key: {a_key:?}}}]\n"
        );
        let c = Config::parse_and_check_files(&good).expect("valid");
        let tls = c.server.tls.expect("tls");
        assert_eq!(c.server.listen, None);
        assert_eq!(tls.min_version, MinVersion::Tls13);
        assert_eq!(tls.alpn, vec![Alpn::H2, Alpn::Http11], "default ALPN");
    }

    #[test]
    fn tls_versions_and_alpn_names_are_checked() {
        let tls = |body: &str| format!("server:\n  tls:\n    certificates: []\n    {body}\n");
        let c = Config::parse(&tls("min_version: 1.3")).map(|c| c.server.tls);
        assert!(
            matches!(c, Err(ref p) if p[0].field == "server.tls.certificates"),
            "{c:?}"
        );
        for (body, field) in [
            ("min_version: \"1.1\"", "server.tls.min_version"),
            ("alpn: [h2, h3]", "server.tls.alpn"),
        ] {
            let problems = Config::parse(&tls(body)).expect_err(body);
            assert_eq!(problems[0].field, field, "{problems:?}");
        }
        let c = Config::parse("server:\n  tls:\n    min_version: 1.3\n    alpn: []\n");
        let problems = c.expect_err("no certificates");
        assert_eq!(problems.len(), 1, "a number 1.3 is a version: {problems:?}");
        let c = Config::parse("").expect("defaults");
        assert!(c.server.tls.is_none(), "no TLS unless configured");
        assert_eq!(
            c.server.listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 8080)))
        );
    }

    #[test]
    fn ca_file_problems_are_reported_on_proxy_ca_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let key_only = dir.path().join("key.pem");
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&key_only, key.serialize_pem()).expect("write key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA");
        std::fs::write(&ca, cert.pem()).expect("write CA");
        let yaml = |p: &Path| format!("proxy:\n  ca_file: {:?}\n", p.display().to_string());
        for (path, says) in [
            (&missing, "cannot read"),
            (&key_only, "no PEM certificate"),
            (&dir.path().to_path_buf(), "cannot read"),
        ] {
            let problems = Config::parse(&yaml(path)).expect_err("bad ca_file");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].field, "proxy.ca_file");
            assert!(problems[0].reason.contains(says), "{}", problems[0]);
        }
        let c = Config::parse(&yaml(&ca)).expect("a CA file");
        assert_eq!(c.proxy.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(Config::parse("").expect("defaults").proxy.ca_file, None);
    }

    #[test]
    fn backend_names_weights_and_passive_checks() {
        let c = Config::parse(
            "backends:\n  - url: http://127.0.0.1:9001\n  - {url: http://127.0.0.1:9002, name: app-2, weight: 3}\n\
             balancing: {strategy: p2c}\n\
             health_check:\n  passive: {consecutive_5xx: 5, ejection_time: 10s, max_ejected_percent: 30}\n",
        )
        .expect("valid");
        assert_eq!(c.backends[0].name(), "127.0.0.1:9001");
        assert_eq!(c.backends[0].weight.get(), 1);
        assert_eq!(c.backends[1].name(), "app-2");
        assert_eq!(c.backends[1].weight.get(), 3);
        assert_eq!(c.balancing.strategy, StrategyName::P2c);
        assert_eq!(c.health_check.passive.consecutive_5xx, 5);
        assert_eq!(
            c.health_check.passive.ejection_time,
            Duration::from_secs(10)
        );
        assert_eq!(c.health_check.passive.max_ejected_percent, 30);
        let d = Config::parse("").expect("defaults");
        assert_eq!(d.health_check.passive, PassiveConfig::default());
        assert_eq!(d.health_check.passive.consecutive_5xx, 0, "off by default");
        assert_eq!(d.balancing.strategy, StrategyName::RoundRobin);

        for (yaml, field, says) in [
            (
                "backends:\n  - {url: http://127.0.0.1:1, weight: 0}\n",
                "backends[0].weight",
                "1 to 1000",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, weight: 1001}\n",
                "backends[0].weight",
                "1 to 1000",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: a}\n  - {url: http://127.0.0.1:2, name: a}\n",
                "backends[1].name",
                "unique",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: 127.0.0.1:2}\n  - {url: http://127.0.0.1:2}\n",
                "backends[1].name",
                "backends[0]",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: \"a/b\"}\n",
                "backends[0].name",
                "letters",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: \"\"}\n",
                "backends[0].name",
                "1 to",
            ),
            (
                "health_check:\n  passive: {max_ejected_percent: 101}\n",
                "health_check.passive.max_ejected_percent",
                "0 to 100",
            ),
            (
                "health_check:\n  passive: {consecutive_5xx: 3, ejection_time: 0s}\n",
                "health_check.passive.ejection_time",
                "greater than 0",
            ),
        ] {
            let problems = Config::parse(yaml).expect_err(yaml);
            assert_eq!(problems.len(), 1, "{yaml}: {problems:?}");
            assert_eq!(problems[0].field, field, "{yaml}: {problems:?}");
            assert!(problems[0].reason.contains(says), "{yaml}: {problems:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!("250ms".parse::<Dur>(), Ok(Dur::millis(250)));
        assert_eq!("2s".parse::<Dur>(), Ok(Dur::secs(2)));
        assert_eq!("5m".parse::<Dur>(), Ok(Dur::secs(300)));
        assert_eq!("1h".parse::<Dur>(), Ok(Dur::secs(3600)));
        assert!("5".parse::<Dur>().is_err());
        assert!("5x".parse::<Dur>().is_err());
        assert!("-1s".parse::<Dur>().is_err());
        assert!("1.5s".parse::<Dur>().is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let text = "
server:
  listen: nowhere
  drain_timeout: 3 parsecs
rate_limit:
  default:
    capacity: 0
    rate_per_sec: 10
backends:
  - url: ftp://example.com:21
balancing:
  strategy: fastest
surprise: true
";
        let problems = Config::parse(text).expect_err("invalid");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"server.listen"), "{problems:?}");
        assert!(fields.contains(&"rate_limit.default"), "{problems:?}");
        assert!(fields.contains(&"backends[0].url"), "{problems:?}");
        assert!(fields.contains(&"balancing.strategy"), "{problems:?}");
        assert!(fields.contains(&"surprise"), "{problems:?}");
        let cap = problems
            .iter()
            .find(|p| p.field == "rate_limit.default")
            .expect("capacity problem");
        assert!(cap.reason.contains("capacity"), "{cap}");
    }

    #[test]
    fn unknown_keys_inside_sections_are_rejected() {
        let problems = Config::parse("proxy:\n  conect_timeout: 2s\n").expect_err("typo");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "proxy.conect_timeout");
        assert!(
            problems[0].reason.contains("unknown field"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn store_urls_name_a_supported_database() {
        for ok in [
            "sqlite://x.db",
            "sqlite::memory:",
            "postgres://u@h/db",
            "postgresql://u:p@h:5432/db",
        ] {
            let c = Config::parse(&format!("store:\n  url: \"{ok}\"\n"));
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
        let problems = Config::parse("store:\n  url: mysql://h/db\n").expect_err("mysql");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "store.url");
        assert!(
            problems[0].reason.contains("postgres://"),
            "{:?}",
            problems[0]
        );
    }

    #[test]
    fn public_admin_needs_a_token() {
        let problems = Config::parse("admin:\n  listen: 0.0.0.0:9090\n").expect_err("no token");
        assert_eq!(problems[0].field, "admin.token");
        let ok = Config::parse("admin:\n  listen: 0.0.0.0:9090\n  token: 0123456789abcdef0123\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn redis_urls_are_parsed_by_check() {
        for bad in ["redis://:::::", "redis://host:99999", "redis://h/notadb"] {
            let problems = Config::parse(&format!(
                "rate_limit:\n  shared:\n    redis_url: \"{bad}\"\n"
            ))
            .expect_err(bad);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].field, "rate_limit.shared.redis_url");
        }
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://h:6379/2",
            "redis://:pw@h",
        ] {
            let c = Config::parse(&format!(
                "rate_limit:\n  shared:\n    redis_url: \"{ok}\"\n"
            ));
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
    }

    #[test]
    fn a_huge_capacity_is_not_called_invalid_yaml() {
        let problems = Config::parse(
            "rate_limit:\n  default:\n    capacity: 12345678901234567890123\n    rate_per_sec: 1\n",
        )
        .expect_err("too large");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(p.field.starts_with("rate_limit.default"), "{p}");
        assert!(!p.reason.contains("YAML"), "{p}");
        assert!(p.reason.contains("4294967295"), "{p}");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        // 100,000 levels took the YAML parser 30-50 s; refused at once.
        let text = format!("backends: {}", "[".repeat(100_000));
        let problems = Config::parse(&text).expect_err("too deep");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].reason.contains("nested"), "{}", problems[0]);
        let text = format!("a: {}", "{a: ".repeat(100_000));
        let problems = Config::parse(&text).expect_err("too deep");
        assert!(problems[0].reason.contains("nested"), "{}", problems[0]);
        // Brackets inside quotes and comments are not nesting.
        let quoted = format!(
            "health_check:\n  path: \"/{}\" # {}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(
            Config::parse(&quoted).is_ok(),
            "{:?}",
            Config::parse(&quoted)
        );
        // Ordinary flow collections are fine.
        assert!(Config::parse("rate_limit: {trusted_proxies: [10.0.0.0/8, {}]}\n").is_err());
        assert!(Config::parse("rate_limit: {trusted_proxies: [10.0.0.0/8]}\n").is_ok());
    }

    #[test]
    fn every_problem_of_a_limits_block_is_reported() {
        let problems =
            Config::parse("rate_limit:\n  default:\n    capacity: 0\n    rate_per_sec: -3\n")
                .expect_err("both bad");
        let all: String = problems.iter().map(ToString::to_string).collect();
        assert!(all.contains("capacity"), "{all}");
        assert!(all.contains("rate_per_sec") && all.contains("-3"), "{all}");
    }

    /// The one problem of `rate_limit: {default: <limits>}`.
    fn limits_problem(limits: &str) -> Problem {
        let problems = Config::parse(&format!("rate_limit:\n  default: {limits}\n"))
            .expect_err("invalid limits");
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems[0].clone()
    }

    #[test]
    fn limits_take_a_rate_per_unit() {
        let c = Config::parse("rate_limit:\n  default:\n    capacity: 1000\n    rate: 1000/day\n")
            .expect("valid");
        let written = "1000/day".parse().expect("rate");
        assert_eq!(
            c.rate_limit.default,
            Limits::with_rate(1000, written).expect("valid")
        );
        // 0/unit is a fixed allowance, as rate_per_sec: 0 is.
        let c = Config::parse("rate_limit:\n  default: {capacity: 5, rate: 0/s}\n").expect("valid");
        assert_eq!(c.rate_limit.default.fill_time(), None);

        for (limits, field, says) in [
            (
                "{capacity: 5, rate: 5/week}",
                "rate_limit.default.rate",
                "unknown unit \"week\"",
            ),
            (
                "{capacity: 5, rate: abc}",
                "rate_limit.default.rate",
                "N/unit",
            ),
            (
                "{capacity: 5, rate: 1.5/s}",
                "rate_limit.default.rate",
                "whole number",
            ),
            (
                "{capacity: 5, rate: 5}",
                "rate_limit.default.rate",
                "N/unit",
            ),
            (
                "{capacity: 5, rate: 2000000000/s}",
                "rate_limit.default.rate",
                "at most",
            ),
            (
                "{capacity: 5, rate: 5/s, rate_per_sec: 5}",
                "rate_limit.default",
                "both given",
            ),
            (
                "{capacity: 5}",
                "rate_limit.default",
                "rate_per_sec (tokens per second) or rate",
            ),
            (
                "{capacity: 4294967295, rate: 1/day}",
                "rate_limit.default",
                "must be at most",
            ),
        ] {
            let p = limits_problem(limits);
            assert_eq!(p.field, field, "{limits}: {p}");
            assert!(p.reason.contains(says), "{limits}: {p}");
        }
    }

    #[test]
    fn ipv6_prefix_is_1_to_128() {
        assert_eq!(Config::parse("").expect("valid").rate_limit.ipv6_prefix, 64);
        for ok in [1, 48, 128] {
            let c = Config::parse(&format!("rate_limit:\n  ipv6_prefix: {ok}\n")).expect("valid");
            assert_eq!(c.rate_limit.ipv6_prefix, ok);
        }
        for bad in ["0", "129", "-1", "1000", "abc"] {
            let problems =
                Config::parse(&format!("rate_limit:\n  ipv6_prefix: {bad}\n")).expect_err(bad);
            assert_eq!(
                problems[0].field, "rate_limit.ipv6_prefix",
                "{bad}: {problems:?}"
            );
        }
        let problems = Config::parse("rate_limit:\n  ipv6_prefix: 129\n").expect_err("129");
        assert!(problems[0].reason.contains("1 to 128"), "{problems:?}");
    }

    #[test]
    fn store_timeout_and_admin_read_timeouts_are_checked() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.store.timeout, Duration::from_secs(5));
        assert_eq!(c.admin.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.admin.body_read_timeout, Duration::from_secs(10));
        let problems = Config::parse(
            "store:\n  timeout: 0s\nadmin:\n  header_read_timeout: 0s\n  body_read_timeout: 0ms\n",
        )
        .expect_err("zero");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "store.timeout",
            "admin.header_read_timeout",
            "admin.body_read_timeout",
        ] {
            assert!(fields.contains(&f), "{f}: {problems:?}");
        }
    }

    #[test]
    fn proxy_protocol_needs_a_trusted_proxy() {
        assert!(!Config::parse("").expect("defaults").server.proxy_protocol);
        let problems =
            Config::parse("server:\n  proxy_protocol: true\n").expect_err("nobody trusted");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "server.proxy_protocol");
        assert!(
            problems[0].reason.contains("trusted_proxies"),
            "{problems:?}"
        );
        let c = Config::parse(
            "server:\n  proxy_protocol: true\nrate_limit:\n  trusted_proxies: [10.0.0.0/8]\n",
        )
        .expect("valid");
        assert!(crate::proxy::server::ServeOptions::from(&c)
            .proxy_protocol
            .is_some());
    }

    #[test]
    fn rules_are_checked_with_their_field_paths() {
        let text = "rate_limit:
  rules:
    - name: search
      match: {path_prefix: /api/search, methods: [GET, post]}
      key: header:X-Tenant
      limits: {capacity: 10, rate: 100/min}
      cost: 2
      dry_run: true
    - name: Bad Name
      match: {path_prefix: api}
      key: cookie:x
      limits: {capacity: 10, rate_per_sec: 1}
      cost: 11
    - name: search
      match: {methods: [\"G T\"]}
      key: header:bad name
      limits: {capacity: 5, rate_per_sec: 1}
      cost: 0
    - name: client
      limits: {capacity: 5, rate_per_sec: 1}
";
        let problems = Config::parse(text).expect_err("rules 1-3 are wrong");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "rate_limit.rules[1].name",
            "rate_limit.rules[1].match.path_prefix",
            "rate_limit.rules[1].key",
            "rate_limit.rules[1].cost",
            "rate_limit.rules[2].name",
            "rate_limit.rules[2].match.methods",
            "rate_limit.rules[2].key",
            "rate_limit.rules[2].cost",
        ] {
            assert!(fields.contains(&field), "{field} not in {problems:?}");
        }
        assert!(
            fields.contains(&"rate_limit.rules[3].name"),
            "reserved: {problems:?}"
        );
        assert!(
            !fields.iter().any(|f| f.starts_with("rate_limit.rules[0]")),
            "{problems:?}"
        );
        // Limits are read as the section is: their problems carry the path.
        let bad_limits = Config::parse(
            "rate_limit:\n  rules:\n    - name: x\n      limits: {capacity: 0, rate_per_sec: 1}\n",
        )
        .expect_err("capacity 0");
        assert_eq!(
            bad_limits[0].field, "rate_limit.rules[0].limits",
            "{bad_limits:?}"
        );

        let ok = Config::parse(
            "rate_limit:
  dry_run: true
  rules:
    - name: search
      match: {path_prefix: /api/search, methods: [GET, post]}
      key: header:X-Tenant
      limits: {capacity: 10, rate: 100/min}
      cost: 2
",
        )
        .expect("valid");
        assert!(ok.rate_limit.dry_run);
        let specs = ok.rate_limit.rule_specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].methods, [http::Method::GET, http::Method::POST]);
        assert_eq!(specs[0].key.to_string(), "header:x-tenant");
        assert_eq!(specs[0].cost.get(), 2);
    }
}
