//! What the admin API refuses before it looks at a request's purpose:
//! a `Host` it does not serve, a state change a browser sends on behalf
//! of another site, and bearer tokens guessed in a hurry.
//!
//! Without a token (the default on loopback) the admin API trusts
//! whoever can reach it, and a browser on the operator's machine can
//! reach it on behalf of any web page:
//!
//! - A page can send a state-changing request cross-site without a CORS
//!   preflight (`mode: "no-cors"`, or a plain HTML form): it cannot read
//!   the answer, but the drain or reload happens. Browsers say where such
//!   a request comes from (`Origin`, `Sec-Fetch-Site`), so [`front`]
//!   refuses every method but GET, HEAD, OPTIONS and TRACE when `Origin`
//!   is not the admin's own or `Sec-Fetch-Site` says `cross-site` or
//!   `same-site` (403). Command-line clients send neither header.
//! - A page under the attacker's name can re-point that name at 127.0.0.1
//!   (DNS rebinding); the browser then counts the admin API as the page's
//!   own origin and lets it read `GET /clients`. The request still carries
//!   the attacker's name in `Host`, so [`front`] serves only the names in
//!   [`AllowedHosts`] (421).
//!
//! With a token, [`BadTokens`] slows guessing down: a few wrong tokens
//! from one address, then one a second, each logged at WARN with the
//! address (never the token). The table is bounded: past
//! [`MAX_SOURCES`] addresses the rest share one bucket, so a flood of
//! addresses costs no memory, only their own (shared) guesses.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, Method};

use super::AdminState;
use crate::error::AdminError;

/// Host names the admin API answers to besides `admin.allowed_hosts`
/// and its listen address.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The host names (ports ignored) a request's `Host` may carry.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Lower-case names, IP literals in their canonical form, IPv6 in
    /// brackets.
    names: HashSet<String>,
    /// The listener is on every address (`0.0.0.0`, `[::]`): any IP
    /// literal names it. A rebinding page reaches the listener under its
    /// own name, never under an address.
    any_address: bool,
}

impl Default for AllowedHosts {
    /// Loopback names only.
    fn default() -> Self {
        Self {
            names: LOOPBACK_NAMES.iter().map(|n| (*n).to_owned()).collect(),
            any_address: false,
        }
    }
}

impl AllowedHosts {
    /// Loopback names, `listen`'s address and `extra`
    /// (`admin.allowed_hosts`, checked by `tollgate check`; an entry that
    /// is no host name is skipped).
    pub fn new(listen: SocketAddr, extra: &[String]) -> Self {
        let mut hosts = Self::default();
        if listen.ip().is_unspecified() {
            hosts.any_address = true;
        } else {
            hosts.names.insert(ip_name(listen.ip()));
        }
        hosts
            .names
            .extend(extra.iter().filter_map(|e| allowed_host_entry(e).ok()));
        hosts
    }

    /// Whether `host` (a normalised name, see [`host_name`]) is served.
    fn allows(&self, host: &str) -> bool {
        self.names.contains(host) || (self.any_address && is_ip_literal(host))
    }
}

/// An IP address as a `Host` value names it: IPv6 in brackets.
fn ip_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<Ipv4Addr>().is_ok() || host.starts_with('[')
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`) in the
/// form [`AllowedHosts`] compares: lower case, IP literals canonical
/// (`[0:0::1]` is `[::1]`); with its port, if one is given. `None` if it
/// is no authority.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, rest) = v6.split_once(']')?;
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':')?),
        };
        let addr: Ipv6Addr = addr.parse().ok()?;
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        let host = match host.parse::<Ipv4Addr>() {
            Ok(v4) => v4.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// The normalised host name of a `Host` value, port dropped.
pub fn host_name(authority: &str) -> Option<String> {
    split_authority(authority).map(|(host, _)| host)
}

/// An `admin.allowed_hosts` entry as [`AllowedHosts`] keeps it: a host
/// name or IP literal, a port allowed and ignored; the reason if it is
/// none of these.
pub fn allowed_host_entry(entry: &str) -> Result<String, String> {
    if entry.contains("://") || entry.contains('/') {
        return Err(format!(
            "{entry:?}: a host name (admin.example.com, 10.0.0.5, [fd00::5]), \
             without scheme or path"
        ));
    }
    if entry.contains('*') {
        return Err(format!(
            "{entry:?}: wildcards are not supported; list each name"
        ));
    }
    host_name(entry).ok_or_else(|| {
        format!("{entry:?} is not a host name (letters, digits, - . _; or an IP address)")
    })
}

/// Methods that change nothing (RFC 9110 §9.2.1): the only ones a page on
/// another site may send.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The one value of `name`, `Ok(None)` if absent, `Err` if repeated or not
/// text.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    first.to_str().map(Some).map_err(|_| ())
}

/// The request's `Host` (HTTP/2: its `:authority`), as given.
fn request_host(req: &Request) -> Result<String, AdminError> {
    let misdirected = |why: &str| AdminError::MisdirectedHost(why.to_owned());
    if let Some(authority) = req.uri().authority() {
        return Ok(authority.as_str().to_owned());
    }
    match single(req.headers(), header::HOST.as_str()) {
        Ok(Some(host)) => Ok(host.to_owned()),
        Ok(None) => Err(misdirected("the request names no Host")),
        Err(()) => Err(misdirected("the request names more than one Host")),
    }
}

/// Refuses a `Host` not in [`AllowedHosts`] (421), then a state change a
/// browser sends for another site (403). Outermost: nothing else runs for
/// such a request.
pub(super) async fn front(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    match admissible(&state.hosts, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn admissible(hosts: &AllowedHosts, req: &Request) -> Result<(), AdminError> {
    let host = request_host(req)?;
    let Some((name, port)) = split_authority(&host) else {
        return Err(AdminError::MisdirectedHost(format!(
            "Host {:?} is not a host name",
            crate::escape::escaped(&host)
        )));
    };
    if !hosts.allows(&name) {
        return Err(AdminError::MisdirectedHost(format!(
            "this admin API does not serve the host {:?}: add it to admin.allowed_hosts \
             (a name that is not listed may be a DNS-rebinding page's)",
            crate::escape::escaped(&name)
        )));
    }
    if is_safe(req.method()) {
        return Ok(());
    }
    let forbidden = |why: String| Err(AdminError::CrossSite(why));
    match single(req.headers(), "sec-fetch-site") {
        Ok(Some(site))
            if site.eq_ignore_ascii_case("cross-site")
                || site.eq_ignore_ascii_case("same-site") =>
        {
            return forbidden(format!(
                "a browser sent this {} for another site (Sec-Fetch-Site: {site}); \
                 state changes are accepted only from the admin API's own pages and from \
                 clients that are no browser",
                req.method()
            ));
        }
        Ok(_) => {}
        Err(()) => return forbidden("Sec-Fetch-Site is repeated or not text".into()),
    }
    match single(req.headers(), header::ORIGIN.as_str()) {
        Ok(None) => Ok(()),
        Ok(Some(origin)) if same_origin(origin, &name, port) => Ok(()),
        Ok(Some(origin)) => forbidden(format!(
            "a browser sent this {} from the page of another origin ({:?}, this API is \
             {host:?}); state changes are accepted only from the admin API's own pages \
             and from clients that are no browser",
            req.method(),
            crate::escape::escaped(origin)
        )),
        Err(()) => forbidden("Origin is repeated or not text".into()),
    }
}

/// Whether `origin` (`scheme://host[:port]`) is the admin's own as the
/// request reached it: the host and port of its `Host`. Either scheme
/// counts, so that a page served through a TLS proxy in front of the admin
/// listener works; a port left out is the scheme's default on both sides.
fn same_origin(origin: &str, host: &str, port: Option<u16>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    split_authority(authority).is_some_and(|(origin_host, origin_port)| {
        origin_host == host && origin_port.unwrap_or(default) == port.unwrap_or(default)
    })
}

/// Bad tokens a source may present at once before it is throttled.
pub const BURST: f64 = 5.0;
/// Bad tokens a throttled source regains per second.
pub const PER_SECOND: f64 = 1.0;
/// Sources tracked one by one; past this they share one bucket.
pub const MAX_SOURCES: usize = 4096;

/// Where guesses come from: an IPv4 address, or an IPv6 /64 (one
/// subscriber's network; its 2^64 addresses are one source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(Ipv4Addr),
    V6(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// One source's allowance of bad tokens.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
    /// Its throttling was logged (once per episode).
    warned: bool,
}

impl Allowance {
    fn full(now: Instant) -> Self {
        Self {
            tokens: BURST,
            at: now,
            warned: false,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * PER_SECOND).min(BURST);
        self.at = now;
    }

    /// Until one bad token is allowed again, if none is now.
    fn wait(&self) -> Option<Duration> {
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / PER_SECOND))
    }
}

/// What [`BadTokens::judge`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Verdict {
    /// The token is right.
    Pass,
    /// The token is wrong: 401.
    Wrong,
    /// The source guessed too often: 429, whatever the token, so that a
    /// right guess cannot be told from a wrong one while throttled.
    Throttled(Duration),
}

/// Bad-token allowances by source, bounded in memory.
#[derive(Debug)]
pub(super) struct BadTokens {
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    by_source: HashMap<Source, Allowance>,
    /// Shared by the sources that found the table full.
    overflow: Allowance,
}

impl BadTokens {
    pub(super) fn new() -> Self {
        Self {
            table: Mutex::new(Table {
                by_source: HashMap::new(),
                overflow: Allowance::full(Instant::now()),
            }),
        }
    }

    /// Judges a presented token from `peer`, `right` or not, and counts
    /// it if it is wrong. One lock for the whole decision, so concurrent
    /// guesses cannot all pass the check before any is counted.
    pub(super) fn judge(&self, peer: IpAddr, right: bool, now: Instant) -> Verdict {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let source = Source::from(peer);
        let tracked = table.by_source.contains_key(&source);
        if !tracked && right && table.by_source.len() < MAX_SOURCES {
            return Verdict::Pass;
        }
        let allowance = table.allowance(source, now);
        allowance.refill(now);
        if let Some(wait) = allowance.wait() {
            if !allowance.warned {
                allowance.warned = true;
                tracing::warn!(
                    %peer,
                    retry_after_ms = wait.as_millis() as u64,
                    "admin API: too many wrong bearer tokens from this address; its requests \
                     with a token are refused (429) for now"
                );
            }
            return Verdict::Throttled(wait);
        }
        if right {
            return Verdict::Pass;
        }
        allowance.tokens -= 1.0;
        allowance.warned = false;
        tracing::warn!(%peer, "admin API: wrong bearer token");
        Verdict::Wrong
    }

    /// Sources tracked one by one now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_source
            .len()
    }
}

impl Table {
    /// `source`'s allowance: its own, a new one if there is room (after
    /// dropping the sources that have their whole allowance back), else
    /// the shared one.
    fn allowance(&mut self, source: Source, now: Instant) -> &mut Allowance {
        if !self.by_source.contains_key(&source) && self.by_source.len() >= MAX_SOURCES {
            self.by_source.retain(|_, a| {
                let mut a = *a;
                a.refill(now);
                a.tokens < BURST
            });
        }
        if self.by_source.contains_key(&source) || self.by_source.len() < MAX_SOURCES {
            return self
                .by_source
                .entry(source)
                .or_insert_with(|| Allowance::full(now));
        }
        &mut self.overflow
    }
}

/// The peer address [`super::server`] put on the request; unspecified if
/// the router runs without it (then every caller is one source).
pub(super) fn peer(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, host: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = http::Request::builder()
            .method(method)
            .uri("/clients")
            .header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).expect("request")
    }

    fn status(hosts: &AllowedHosts, r: &Request) -> u16 {
        match admissible(hosts, r) {
            Ok(()) => 200,
            Err(e) => e.status().as_u16(),
        }
    }

    #[test]
    fn hosts_are_loopback_the_listen_address_and_the_listed_ones() {
        let listen: SocketAddr = "10.0.0.5:9090".parse().expect("addr");
        let hosts = AllowedHosts::new(listen, &["Admin.Example.com:8443".into()]);
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "127.0.0.1:1",
            "[::1]:9090",
            "[0:0:0:0:0:0:0:1]",
            "10.0.0.5:9090",
            "admin.example.com",
            "admin.example.com:1234",
        ] {
            assert_eq!(status(&hosts, &req(Method::GET, ok, &[])), 200, "{ok}");
        }
        for refused in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.6",
            "127.0.0.2",
            "admin.example.com.",
            "a b",
            "[::1",
            "localhost:x",
        ] {
            assert_eq!(
                status(&hosts, &req(Method::GET, refused, &[])),
                421,
                "{refused}"
            );
        }
        let any = AllowedHosts::new("0.0.0.0:9090".parse().expect("addr"), &[]);
        assert_eq!(
            status(&any, &req(Method::GET, "192.168.1.9:9090", &[])),
            200
        );
        assert_eq!(status(&any, &req(Method::GET, "[fd00::9]:9090", &[])), 200);
        assert_eq!(
            status(&any, &req(Method::GET, "tollgate.lan:9090", &[])),
            421
        );
    }

    #[test]
    fn entries_are_checked() {
        assert_eq!(
            allowed_host_entry("Admin.Example.com"),
            Ok("admin.example.com".into())
        );
        assert_eq!(allowed_host_entry("[FD00::5]:80"), Ok("[fd00::5]".into()));
        for bad in [
            "http://a.example",
            "a.example/x",
            "*.example.com",
            "",
            "a b",
            "[zz]",
        ] {
            assert!(allowed_host_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_changes_from_other_sites_are_refused() {
        let hosts = AllowedHosts::default();
        let h = "127.0.0.1:9090";
        let post = |headers: &[(&str, &str)]| status(&hosts, &req(Method::POST, h, headers));
        assert_eq!(post(&[]), 200, "no browser headers: curl, the CLI");
        assert_eq!(post(&[("origin", "http://127.0.0.1:9090")]), 200);
        assert_eq!(post(&[("origin", "https://127.0.0.1:9090")]), 200);
        assert_eq!(post(&[("sec-fetch-site", "same-origin")]), 200);
        assert_eq!(post(&[("sec-fetch-site", "none")]), 200);
        assert_eq!(post(&[("origin", "http://evil.example")]), 403);
        assert_eq!(post(&[("origin", "http://127.0.0.1:3000")]), 403);
        assert_eq!(post(&[("origin", "http://localhost:9090")]), 403);
        assert_eq!(post(&[("origin", "null")]), 403);
        assert_eq!(post(&[("sec-fetch-site", "cross-site")]), 403);
        assert_eq!(post(&[("sec-fetch-site", "same-site")]), 403);
        assert_eq!(
            post(&[
                ("origin", "http://127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9090")
            ]),
            403
        );
        for m in [Method::PUT, Method::DELETE, Method::PATCH] {
            let r = req(m.clone(), h, &[("origin", "http://evil.example")]);
            assert_eq!(status(&hosts, &r), 403, "{m}");
        }
        // Reading stays allowed from anywhere (the Host check still runs).
        let r = req(
            Method::GET,
            h,
            &[
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        );
        assert_eq!(status(&hosts, &r), 200);
        // Default ports on both sides.
        let r = req(
            Method::POST,
            "localhost",
            &[("origin", "http://localhost:80")],
        );
        assert_eq!(status(&hosts, &r), 200);
    }

    #[test]
    fn wrong_tokens_are_throttled_per_source() {
        let t = BadTokens::new();
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..5 {
            assert_eq!(t.judge(a, false, start), Verdict::Wrong);
        }
        assert!(matches!(t.judge(a, false, start), Verdict::Throttled(_)));
        // Even the right token: a right guess must look like a wrong one.
        assert!(matches!(t.judge(a, true, start), Verdict::Throttled(_)));
        // Another address is not affected.
        assert_eq!(t.judge(b, true, start), Verdict::Pass);
        assert_eq!(t.judge(b, false, start), Verdict::Wrong);
        // One more guess a second.
        let later = start + Duration::from_secs(1);
        assert_eq!(t.judge(a, false, later), Verdict::Wrong);
        assert!(matches!(t.judge(a, false, later), Verdict::Throttled(_)));
        let much_later = start + Duration::from_secs(10);
        assert_eq!(t.judge(a, true, much_later), Verdict::Pass);
        // An IPv6 /64 is one source.
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        for i in 0..5 {
            assert_eq!(
                t.judge(v6(&format!("2001:db8::{i}")), false, start),
                Verdict::Wrong
            );
        }
        assert!(matches!(
            t.judge(v6("2001:db8::ffff:1"), false, start),
            Verdict::Throttled(_)
        ));
    }

    #[test]
    fn a_flood_of_addresses_stays_bounded() {
        let t = BadTokens::new();
        let now = Instant::now();
        let mut throttled = 0;
        for i in 0..(MAX_SOURCES as u32 * 4) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            if matches!(t.judge(ip, false, now), Verdict::Throttled(_)) {
                throttled += 1;
            }
        }
        assert_eq!(t.tracked(), MAX_SOURCES);
        // Past the table's size, all sources share one allowance.
        assert_eq!(throttled, MAX_SOURCES * 3 - BURST as usize);
        // Sources whose allowance is whole again make room.
        let later = now + Duration::from_secs(10);
        let fresh = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(t.judge(fresh, false, later), Verdict::Wrong);
        assert!(t.tracked() <= MAX_SOURCES);
    }
}
