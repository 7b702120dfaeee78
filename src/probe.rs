//! `tollgate health`: the probe a container health check runs.
//!
//! The runtime image (Debian slim) has neither curl nor wget, and a probe
//! must know what only the config knows: where the admin API listens and
//! its token. So the binary probes a running tollgate itself: `GET
//! /healthz` on the admin listener (an unspecified address such as
//! `0.0.0.0` is asked on loopback, where a process in the same container
//! reaches it) with the bearer token, or any URL it is given (a demo
//! backend's `/health`). A 2xx answer is healthy; anything else, or no
//! answer within the timeout, is not, and says why in one line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long a probe waits for its answer: under the image's health check
/// timeout (5 s), so the probe says why it failed rather than being
/// killed.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why a probe did not find the target healthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not `http://...`.
    #[error("{0:?}: expected http://host:port/path")]
    BadUrl(String),
    /// No answer: nothing listens there, or it did not answer in time.
    #[error("unhealthy: no answer from {url}: {reason}")]
    Unreachable {
        /// Where it was asked.
        url: String,
        /// Why, with every cause (reqwest's own message alone only
        /// repeats the URL).
        reason: String,
    },
    /// It answered, but not with a 2xx.
    #[error("unhealthy: {url} answered {status}: {body}")]
    Unhealthy {
        /// Where it was asked.
        url: String,
        /// The status it answered.
        status: u16,
        /// The start of its body (the admin API's JSON error says why).
        body: String,
    },
}

/// The URL of the admin API's `/healthz` for a listener on `listen`, as
/// seen from the same host: an unspecified address is asked on loopback.
pub fn healthz_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// `GET url` with `token` as a bearer token when given; the status when
/// it answered 2xx within `timeout`.
pub async fn probe(url: &str, token: Option<&str>, timeout: Duration) -> Result<u16, ProbeError> {
    if !url.starts_with("http://") {
        return Err(ProbeError::BadUrl(url.to_owned()));
    }
    let unreachable = |e: reqwest::Error| ProbeError::Unreachable {
        url: url.to_owned(),
        reason: match std::error::Error::source(&e) {
            Some(cause) => crate::error::Chain(cause).to_string(),
            None => e.to_string(),
        },
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .map_err(unreachable)?;
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.map_err(unreachable)?;
    let status = answer.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let body = answer.text().await.unwrap_or_default();
    Err(ProbeError::Unhealthy {
        url: url.to_owned(),
        status: status.as_u16(),
        body: body.chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listener_is_asked_on_loopback() {
        let url = |s: &str| healthz_url(s.parse().expect("addr"));
        assert_eq!(url("0.0.0.0:9090"), "http://127.0.0.1:9090/healthz");
        assert_eq!(url("[::]:9090"), "http://[::1]:9090/healthz");
        assert_eq!(url("127.0.0.1:9191"), "http://127.0.0.1:9191/healthz");
        assert_eq!(url("10.1.2.3:9090"), "http://10.1.2.3:9090/healthz");
    }
}
