//! `config.yaml`: every setting, its default, and its validation.
//!
//! Loading happens before any port is opened. Each section is parsed on
//! its own so that one bad section does not hide problems in another, and
//! every problem is reported with its field path (`rate_limit.default.capacity`)
//! and a reason. Values that have their own rules (limits, durations,
//! backend URLs, CIDRs) are validated while they are parsed, so a loaded
//! [`Config`] holds only usable values.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::limiter::Limits;

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
    /// Address to accept client connections on.
    pub listen: SocketAddr,
    /// How long in-flight requests may run after a shutdown signal.
    pub drain_timeout: Dur,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Dur,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            drain_timeout: Dur::secs(30),
            header_read_timeout: Dur::secs(10),
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
        }
    }
}

/// One entry of `backends`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `http://host:port` of the backend.
    pub url: BackendUrl,
}

/// `balancing`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancingConfig {
    /// How a backend is chosen.
    pub strategy: StrategyName,
}

/// Names of the balancing strategies.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// The healthy backend with the fewest requests in flight.
    LeastConnections,
    /// A healthy backend chosen uniformly at random.
    Random,
}

/// `proxy`: upstream timeouts and what is forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Time allowed to open a TCP connection to a backend.
    pub connect_timeout: Dur,
    /// Time allowed for a backend to answer with response headers.
    pub request_timeout: Dur,
    /// Forward request header names containing `_`; by default they are
    /// dropped (nginx's `underscores_in_headers off`), since backends that
    /// map `_` to `-` would read headers tollgate never looked at.
    pub allow_underscores_in_headers: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Dur::secs(2),
            request_timeout: Dur::secs(30),
            allow_underscores_in_headers: false,
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
    pub interval: Dur,
    /// Time allowed for one check.
    pub timeout: Dur,
    /// Consecutive failures that take a backend out of the pool.
    pub unhealthy_threshold: NonZeroU32,
    /// Consecutive successes that bring it back.
    pub healthy_threshold: NonZeroU32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: Dur::secs(2),
            timeout: Dur::secs(1),
            unhealthy_threshold: NonZeroU32::MIN.saturating_add(1),
            healthy_threshold: NonZeroU32::MIN.saturating_add(1),
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
    /// Limits of clients that are not in the client table.
    #[serde(deserialize_with = "limits")]
    pub default: Limits,
    /// Period of the refill tick.
    pub refill_interval: Dur,
    /// Most clients tracked at once (table clients not counted).
    pub max_clients: NonZeroUsize,
    /// A bucket full for this long is forgotten.
    pub idle_timeout: Dur,
    /// One limit per client across replicas, through Redis.
    pub shared: SharedLimitConfig,
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
    pub timeout: Dur,
    /// Prefix of the Redis keys (several deployments can share a Redis).
    pub key_prefix: String,
}

impl Default for SharedLimitConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            on_failure: OnFailure::Local,
            timeout: Dur::millis(50),
            key_prefix: "tollgate:".into(),
        }
    }
}

/// `rate_limit.shared.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Decide with this replica's own buckets.
    Local,
    /// Answer 503.
    Reject,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            api_key_header: HeaderName(http::HeaderName::from_static("x-api-key")),
            trusted_proxies: Vec::new(),
            default: default_limits(),
            refill_interval: Dur::millis(100),
            max_clients: NonZeroUsize::MIN.saturating_add(999_999),
            idle_timeout: Dur::secs(600),
            shared: SharedLimitConfig::default(),
        }
    }
}

fn default_limits() -> Limits {
    match Limits::new(100, 10.0) {
        Ok(l) => l,
        Err(_) => unreachable!("100 tokens at 10/s are valid limits"),
    }
}

fn limits<'de, D: Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        capacity: u64,
        rate_per_sec: f64,
    }
    let raw = Raw::deserialize(d)?;
    Limits::new(raw.capacity, raw.rate_per_sec).map_err(serde::de::Error::custom)
}

/// `store`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database URL (`sqlite://file.db`, `postgres://...`).
    pub url: String,
    /// Period of bucket-state snapshots.
    pub snapshot_interval: Dur,
    /// PostgreSQL only: how often the client table is re-read to pick up
    /// changes other replicas made.
    pub reload_interval: Dur,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://tollgate.db".into(),
            snapshot_interval: Dur::secs(5),
            reload_interval: Dur::secs(5),
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
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LogLevel(tracing::Level::INFO),
            format: LogFormat::Text,
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

/// A backend's base URL: `http://host:port`, without path or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `host:port` as written.
    pub authority: http::uri::Authority,
}

impl BackendUrl {
    /// Parses and validates a backend URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri = http::Uri::from_str(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "{s:?}: scheme {other:?} is not supported (only http://)"
                ))
            }
            None => return Err(format!("{s:?}: expected http://host:port")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?}: expected http://host:port"))?;
        if authority.port_u16().is_none() {
            return Err(format!("{s:?}: the port is required (http://host:port)"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: a backend URL has no path or query (http://host:port)"
            ));
        }
        Ok(Self { authority })
    }

    /// Whether the host is a loopback address (or `localhost`).
    pub fn is_loopback(&self) -> bool {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
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
        Self::parse(&text).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates config text, returning every problem found.
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            vec![Problem {
                field: "(file)".into(),
                reason: format!("not valid YAML: {e}"),
            }]
        })?;
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
        config.check(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Rules that involve more than one field.
    fn check(&self, problems: &mut Vec<Problem>) {
        let mut add = |field: &str, reason: String| {
            problems.push(Problem {
                field: field.into(),
                reason,
            })
        };
        if self.backends.is_empty() {
            add("backends", "at least one backend is required".into());
        }
        for (i, a) in self.backends.iter().enumerate() {
            if self.backends[..i].contains(a) {
                add(
                    &format!("backends[{i}].url"),
                    format!("{} is listed twice", a.url),
                );
            }
        }
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
        if self.server.listen == self.admin.listen && self.admin.listen.port() != 0 {
            add(
                "admin.listen",
                format!("same address as server.listen ({})", self.server.listen),
            );
        }
        if !self.health_check.path.starts_with('/') {
            add(
                "health_check.path",
                format!("{:?} must start with /", self.health_check.path),
            );
        }
        let zero = |d: Dur| d.0.is_zero();
        for (field, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("proxy.connect_timeout", self.proxy.connect_timeout),
            ("proxy.request_timeout", self.proxy.request_timeout),
            ("health_check.interval", self.health_check.interval),
            ("health_check.timeout", self.health_check.timeout),
            (
                "rate_limit.refill_interval",
                self.rate_limit.refill_interval,
            ),
            ("store.snapshot_interval", self.store.snapshot_interval),
            ("store.reload_interval", self.store.reload_interval),
            ("rate_limit.shared.timeout", self.rate_limit.shared.timeout),
        ] {
            if zero(d) {
                add(field, "must be greater than 0".into());
            }
        }
        if let Some(url) = &self.rate_limit.shared.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                add(
                    "rate_limit.shared.redis_url",
                    format!("{url:?} is not a Redis URL (redis://HOST:PORT[/DB])"),
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
        if self.rate_limit.max_clients.get() > crate::limiter::MAX_CLIENTS {
            add(
                "rate_limit.max_clients",
                format!("must be at most {}", crate::limiter::MAX_CLIENTS),
            );
        }
    }
}

fn default_backends() -> Vec<BackendConfig> {
    (9001..=9003)
        .filter_map(|port| BackendUrl::parse(&format!("http://127.0.0.1:{port}")).ok())
        .map(|url| BackendConfig { url })
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
        assert_eq!(c.rate_limit.refill_interval, Dur::millis(100));
        assert_eq!(c.rate_limit.max_clients.get(), 1_000_000);
        assert_eq!(c.rate_limit.idle_timeout, Dur::secs(600));
        assert_eq!(c.health_check.unhealthy_threshold.get(), 2);
        assert_eq!(c.backends.len(), 3);
        assert_eq!(
            c.proxy.allow_underscores_in_headers,
            d.proxy.allow_underscores_in_headers
        );
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
  - url: https://example.com:443
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
    fn backend_urls() {
        assert!(BackendUrl::parse("http://127.0.0.1:9001").is_ok());
        assert!(BackendUrl::parse("http://[::1]:9001")
            .expect("v6")
            .is_loopback());
        assert!(BackendUrl::parse("http://localhost:9001")
            .expect("ok")
            .is_loopback());
        assert!(!BackendUrl::parse("http://10.0.0.1:80")
            .expect("ok")
            .is_loopback());
        assert!(
            BackendUrl::parse("http://127.0.0.1").is_err(),
            "port required"
        );
        assert!(
            BackendUrl::parse("http://127.0.0.1:1/api").is_err(),
            "no path"
        );
        assert!(BackendUrl::parse("ftp://127.0.0.1:21").is_err());
    }
}
