//! Demo backends and a balancer, all in this process on port 0, and an
//! HTTP client to talk to them.

use std::net::SocketAddr;
use std::time::Duration;

use tollgate::app::Running;
use tollgate::balancer::BackendUrl;
use tollgate::config::{BackendConfig, Config};
use tollgate::limiter::Limits;
use tollgate::shutdown::{self, Trigger};

/// A demo backend running in this process.
pub struct TestBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Trigger,
    task: tokio::task::JoinHandle<tollgate::proxy::server::Drained>,
}

impl TestBackend {
    /// Stops it and waits until its listener is closed.
    pub async fn stop(self) {
        self.stop.fire();
        let _ = self.task.await;
    }
}

/// Starts a demo backend on 127.0.0.1:0.
pub async fn backend(name: &str) -> TestBackend {
    backend_on("127.0.0.1:0".parse().expect("addr"), name).await
}

/// Starts a demo backend on `addr` (a fixed address only to bring back
/// one that was stopped).
pub async fn backend_on(addr: SocketAddr, name: &str) -> TestBackend {
    start_backend(addr, name, false).await
}

/// Starts a demo backend on 127.0.0.1:0 that speaks h2c as well
/// (`tollgate backend --h2c`).
#[allow(dead_code)] // not every test binary needs one
pub async fn backend_h2c(name: &str) -> TestBackend {
    start_backend("127.0.0.1:0".parse().expect("addr"), name, true).await
}

async fn start_backend(addr: SocketAddr, name: &str, h2c: bool) -> TestBackend {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind a test backend");
    let addr = listener.local_addr().expect("local addr");
    let (stop, signal) = shutdown::channel();
    let task = tokio::spawn(tollgate::demo::serve_with(
        listener,
        name.to_string(),
        h2c,
        signal.wait(),
    ));
    TestBackend { addr, stop, task }
}

/// `n` demo backends named b0, b1, ...
pub async fn backends(n: usize) -> Vec<TestBackend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(backend(&format!("b{i}")).await);
    }
    v
}

/// A config for tests: listeners on port 0, the given backends, short
/// timeouts, generous default limits.
pub fn config(backends: &[SocketAddr]) -> Config {
    let mut c = Config::parse("").expect("defaults are valid");
    c.server.listen = Some("127.0.0.1:0".parse().expect("addr"));
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.server.drain_timeout = Duration::from_secs(5);
    c.proxy.request_timeout = Duration::from_secs(5);
    c.backends = backends
        .iter()
        .map(|a| {
            BackendConfig::new(BackendUrl::parse(&format!("http://{a}")).expect("backend url"))
        })
        .collect();
    c.rate_limit.default = Limits::new(1_000_000, 1_000_000.0).expect("valid");
    c.store.url = temp_db();
    c
}

/// A fresh SQLite file in its own temporary directory.
pub fn temp_db() -> String {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    format!("sqlite://{}", dir.join("tollgate.db").display())
}

/// Starts a balancer with `config`.
pub async fn balancer(config: &Config) -> Running {
    tollgate::app::start(config).await.expect("balancer starts")
}

/// An HTTP client that does not pool connections across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// `http://addr/path`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A port on which nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Status of `GET http://addr/path`.
pub async fn get_status(c: &reqwest::Client, addr: SocketAddr, path: &str) -> u16 {
    c.get(url(addr, path))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}
