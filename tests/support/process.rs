//! The real binary, for tests that involve signals, crashes and
//! process limits.

use std::net::SocketAddr;
use std::time::Duration;

/// A `tollgate serve` process and the addresses it logged.
pub struct Process {
    /// The child process.
    pub child: std::process::Child,
    /// Public listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// TLS listener, if configured (reported before the admin listener).
    pub tls: Option<SocketAddr>,
    /// The JSON log lines up to the listeners' reports.
    pub startup: Vec<serde_json::Value>,
    /// Every JSON log line printed after start-up was read.
    pub logs: std::sync::mpsc::Receiver<serde_json::Value>,
    /// The config file it was started with (a reload re-reads it).
    pub config: std::path::PathBuf,
}

impl Process {
    /// Waits for the log line with `message` (20 s at most), skipping
    /// the lines before it.
    pub fn wait_for_log(&self, message: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .logs
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {message:?} line in the log"));
            if line["message"] == message {
                return line;
            }
        }
    }

    /// Sends it SIGHUP (a reload).
    pub fn hup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

/// Writes `yaml` to a temp file and starts `tollgate serve` on it (JSON
/// logs); waits for the listeners to be reported.
pub fn spawn_serve(yaml: &str) -> Process {
    spawn_serve_with_open_files(yaml, None)
}

/// [`spawn_serve`], with the open-file limit (soft and hard) of the
/// process set to `nofile` when given.
pub fn spawn_serve_with_open_files(yaml: &str, nofile: Option<u64>) -> Process {
    spawn("serve", yaml, nofile)
}

/// Writes `yaml` to a temp file and starts `tollgate demo` on it (a demo
/// backend for each loopback backend, then the balancer; JSON logs);
/// waits for the listeners to be reported.
pub fn spawn_demo(yaml: &str) -> Process {
    spawn("demo", yaml, None)
}

/// `tollgate COMMAND --config FILE` with `yaml` in FILE.
fn spawn(subcommand: &str, yaml: &str, nofile: Option<u64>) -> Process {
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
        .arg(subcommand)
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
    let mut tls = None;
    let mut startup = Vec::new();
    while proxy.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tollgate reports its listeners within 20 s");
        let addr = line["listen"].as_str().and_then(|s| s.parse().ok());
        match line["message"].as_str() {
            Some("proxy listening") => proxy = addr,
            Some("admin API listening") => admin = addr,
            Some("TLS listening") => tls = addr,
            _ => {}
        }
        startup.push(line);
    }
    Process {
        child,
        proxy: proxy.expect("proxy addr"),
        admin: admin.expect("admin addr"),
        tls,
        startup,
        logs: rx,
        config: path,
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
