//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tollgate::limiter::Limits;

// ---------------------------------------------------------------------
// Proxy tests: demo backends and a balancer, all in process on port 0.

use std::net::SocketAddr;

use tollgate::app::Running;
use tollgate::balancer::BackendUrl;
use tollgate::config::{BackendConfig, Config, Dur};
use tollgate::shutdown::{self, Trigger};

/// A demo backend running in this process.
pub struct TestBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The name it reports in `X-Backend`.
    pub name: String,
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
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind a test backend");
    let addr = listener.local_addr().expect("local addr");
    let (stop, signal) = shutdown::channel();
    let task = tokio::spawn(tollgate::demo::serve(
        listener,
        name.to_string(),
        signal.wait(),
    ));
    TestBackend {
        addr,
        name: name.to_string(),
        stop,
        task,
    }
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
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.server.drain_timeout = Dur::secs(5);
    c.proxy.request_timeout = Dur::secs(5);
    c.backends = backends
        .iter()
        .map(|a| BackendConfig {
            url: BackendUrl::parse(&format!("http://{a}")).expect("backend url"),
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

/// Polls `cond` every millisecond until it holds, failing after 5 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------
// The real binary, for tests that involve signals and crashes.

/// A `tollgate serve` process and the addresses it logged.
pub struct Process {
    /// The child process.
    pub child: std::process::Child,
    /// Public listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Every JSON log line printed after start-up was read.
    pub logs: std::sync::mpsc::Receiver<serde_json::Value>,
}

/// Writes `yaml` to a temp file and starts `tollgate serve` on it (JSON
/// logs); waits for the listeners to be reported.
pub fn spawn_serve(yaml: &str) -> Process {
    spawn_serve_with_open_files(yaml, None)
}

/// [`spawn_serve`], with the open-file limit (soft and hard) of the
/// process set to `nofile` when given.
pub fn spawn_serve_with_open_files(yaml: &str, nofile: Option<u64>) -> Process {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let mut command = match nofile {
        None => std::process::Command::new(env!("CARGO_BIN_EXE_tollgate")),
        Some(n) => {
            let mut c = std::process::Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_tollgate"));
            c
        }
    };
    let mut child = command
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start tollgate");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                Err(_) => eprintln!("tollgate: {line}"),
            }
        }
    });
    let mut proxy = None;
    let mut admin = None;
    while proxy.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tollgate reports its listeners within 20 s");
        let addr = line["listen"].as_str().and_then(|s| s.parse().ok());
        match line["message"].as_str() {
            Some("proxy listening") => proxy = addr,
            Some("admin API listening") => admin = addr,
            _ => {}
        }
    }
    Process {
        child,
        proxy: proxy.expect("proxy addr"),
        admin: admin.expect("admin addr"),
        logs: rx,
    }
}

/// A config for [`spawn_serve`]: ports 0, JSON logs, the given backends.
pub fn serve_yaml(backends: &[SocketAddr], db: &str, extra: &str) -> String {
    let list: String = backends
        .iter()
        .map(|b| format!("  - url: http://{b}\n"))
        .collect();
    format!(
        "server:\n  listen: 127.0.0.1:0\n  drain_timeout: 10s\nadmin:\n  listen: 127.0.0.1:0\n\
         backends:\n{list}store:\n  url: {db}\nlog:\n  format: json\n{extra}"
    )
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

// ---------------------------------------------------------------------
// PostgreSQL, for the tests of the shared store.

/// A fresh, empty PostgreSQL database for one test.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    server: String,
    name: String,
}

/// Creates a database on the server of `TOLLGATE_TEST_DATABASE_URL`; `None`,
/// with the reason printed, when the variable is not set (CI sets it).
pub async fn pg_database() -> Option<PgDatabase> {
    use sqlx::Connection;
    let Ok(server) = std::env::var("TOLLGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: TOLLGATE_TEST_DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "tollgate_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .expect("TOLLGATE_TEST_DATABASE_URL names a reachable PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .expect("drop a leftover test database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let base = server.split('?').next().unwrap_or(&server);
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database path");
    Some(PgDatabase {
        url: format!("{prefix}/{name}"),
        server,
        name,
    })
}

impl PgDatabase {
    /// Drops the database and creates it again, empty, under the same
    /// name: what an operator restoring from scratch does.
    pub async fn recreate(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.server)
            .await
            .expect("connect to the test server");
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut conn)
            .await
            .expect("drop the test database");
        sqlx::query(&format!("CREATE DATABASE {}", self.name))
            .execute(&mut conn)
            .await
            .expect("create the test database again");
    }

    /// Drops the database (connections still open to it are closed).
    pub async fn drop_db(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.server).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}
