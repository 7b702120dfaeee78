//! The command line, run as a real process.

use std::process::Command;

fn tollgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = tollgate()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .output()
        .expect("run tollgate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_prints_every_problem_with_its_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "server:\n  listen: 0.0.0.0:99999\nrate_limit:\n  default: {capacity: 10, rate_per_sec: -1}\nbalancing:\n  strategy: fastest\n",
    )
    .expect("write config");
    let out = tollgate()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["server.listen", "rate_limit.default", "balancing.strategy"] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
    assert!(err.contains("rate_per_sec"), "{err}");

    // The brief's spelling, `--check-config`, does the same.
    let out = tollgate()
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("balancing.strategy"));
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "log: {level: warn}\n").expect("write config");
    let out = tollgate()
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn config_comes_from_the_environment_and_serve_fails_before_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "backends: []\n").expect("write config");
    let out = tollgate()
        .arg("serve")
        .env("TOLLGATE_CONFIG", &path)
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backends: at least one backend is required"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let out = tollgate()
        .args(["check", "--config", "/nonexistent/tollgate.yaml"])
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tollgate.yaml"));
}

#[test]
fn json_log_lines_parse_as_json() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    let db = dir.path().join("t.db");
    // A dead backend, so start-up also logs a warning.
    std::fs::write(
        &path,
        format!(
            "server: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\n\
             backends: [{{url: 'http://127.0.0.1:9'}}]\nstore: {{url: 'sqlite://{}'}}\n\
             log: {{format: json, level: debug}}\n",
            db.display()
        ),
    )
    .expect("write config");
    let mut child = tollgate()
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let done = line.contains("admin API listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.len() >= 4, "{lines:?}");
    let messages = lines.iter().filter(|l| l.contains("\"message\":")).count();
    assert!(
        messages >= 4,
        "tollgate's own lines carry a message: {lines:?}"
    );
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["target"].is_string(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"WARN\"")),
        "the dead backend is warned about"
    );
}

/// `tollgate backends ...` against the admin API at `admin`: exit code,
/// stdout, stderr.
async fn backends_cli(admin: std::net::SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tollgate();
    cmd.args(["backends", "--admin", &format!("http://{admin}")])
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run tollgate"))
        .await
        .expect("join");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_list_drain_and_enable_from_the_command_line() {
    let bs = crate::support::backends(2).await;
    let mut cfg = crate::support::config(&[bs[0].addr, bs[1].addr]);
    cfg.backends[0].name = Some("app-1".into());
    let lb = crate::support::balancer(&cfg).await;
    let admin = lb.admin_addr();

    let (code, out, err) = backends_cli(admin, &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("app-1") && out.contains("active"), "{out}");
    assert!(out.contains(&bs[1].addr.to_string()), "default name: {out}");

    let (code, out, err) = backends_cli(admin, &["drain", "app-1"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("draining"), "{out}");
    assert!(lb.pool().find("app-1").expect("app-1").is_draining());

    let (code, out, err) = backends_cli(admin, &["--json", "enable", "app-1"]).await;
    assert_eq!(code, Some(0), "{err}");
    let item: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(item["state"], "active");

    let (code, _, err) = backends_cli(admin, &["drain", "nope"]).await;
    assert_eq!(code, Some(1), "the API refused");
    assert!(err.contains("no backend named"), "{err}");

    let (code, _, _) = backends_cli(admin, &["frobnicate"]).await;
    assert_eq!(code, Some(2), "usage error");
    lb.shutdown().await;
}
