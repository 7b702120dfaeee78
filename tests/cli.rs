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
