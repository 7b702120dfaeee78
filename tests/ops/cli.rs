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
    std::fs::write(&good, "server: {listen: 127.0.0.1:0}\nlog: {level: warn}\n")
        .expect("write config");
    let out = tollgate()
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run tollgate");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// A file that says neither where to listen nor where to send (empty,
/// only comments, cut down to its `log:` section, `server:` with nothing
/// under it) would run on defaults alone: `check` refuses it and says why
/// (issue 23, item 15).
#[test]
fn check_refuses_a_file_without_the_sections_that_say_where_to_listen_and_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cut.yaml");
    for (text, found) in [
        ("", "the file has no keys"),
        ("# nothing left\n", "the file has no keys"),
        ("log: {level: warn}\n", "it has only log"),
        (
            "server:\nrate_limit: {enabled: false}\n",
            "it has only server, rate_limit",
        ),
    ] {
        std::fs::write(&path, text).expect("write config");
        let out = tollgate()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run tollgate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains("(file): none of server, backends, pools or routes is set"),
            "{text:?}: {err}"
        );
        assert!(err.contains(found), "{text:?}: {err}");
    }
}

#[test]
fn check_refuses_a_short_token_on_a_public_admin_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.yaml");
    let run = |yaml: &str| {
        std::fs::write(&path, yaml).expect("write config");
        let out = tollgate()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run tollgate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // `server` keeps these files from being refused as saying nothing.
    let run = |yaml: &str| run(&format!("server: {{listen: 127.0.0.1:0}}\n{yaml}"));
    let (code, err) = run("admin:\n  listen: 0.0.0.0:9090\n  token: short-token\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin.token") && err.contains("16"), "{err}");
    let (code, err) = run("admin:\n  listen: 0.0.0.0:9090\n  token: 0123456789abcdef\n");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) =
        run("admin:\n  allowed_hosts: [admin.example.com, \"https://admin.example.com/\"]\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin.allowed_hosts[1]"), "{err}");
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

/// What one run of the binary did: exit code, stdout, stderr.
type Ran = (Option<i32>, String, String);

/// `tollgate GROUP --admin URL ARGS...` (`GROUP` is `backends`, `pools`,
/// `routes` or `clients`) with `token` as `TOLLGATE_ADMIN_TOKEN` (unset
/// if `None`).
async fn admin_cli(group: &str, admin: &str, token: Option<&str>, args: &[&str]) -> Ran {
    let mut cmd = tollgate();
    cmd.args([group, "--admin", admin]).args(args);
    match token {
        Some(t) => cmd.env("TOLLGATE_ADMIN_TOKEN", t),
        None => cmd.env_remove("TOLLGATE_ADMIN_TOKEN"),
    };
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run tollgate"))
        .await
        .expect("join");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tollgate backends ...` against the admin API at `admin`, no token.
async fn backends_cli(admin: std::net::SocketAddr, args: &[&str]) -> Ran {
    admin_cli("backends", &format!("http://{admin}"), None, args).await
}

/// `tollgate clients ...` against the admin API at `admin`, no token.
async fn clients_cli(admin: std::net::SocketAddr, args: &[&str]) -> Ran {
    admin_cli("clients", &format!("http://{admin}"), None, args).await
}

/// `GET path` on the admin API, as JSON.
async fn api_json(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    crate::support::client()
        .get(crate::support::url(admin, path))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON")
}

/// The value of `key` in a key/value view (`key   value` lines).
fn field<'a>(view: &'a str, key: &str) -> Option<&'a str> {
    view.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim())
    })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_list_add_get_set_and_delete_from_the_command_line() {
    let bs = crate::support::backends(1).await;
    let lb = crate::support::balancer(&crate::support::config(&[bs[0].addr])).await;
    let admin = lb.admin_addr();

    let (code, out, err) = clients_cli(admin, &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim_end(),
        "CLIENT_ID  CAPACITY  RATE  TOKENS",
        "empty list: the header alone"
    );

    let (code, out, err) = clients_cli(
        admin,
        &["add", "user1", "--capacity", "100", "--rate-per-sec", "10"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "client_id"), Some("user1"), "{out}");
    assert_eq!(field(&out, "capacity"), Some("100"), "{out}");
    assert_eq!(field(&out, "rate_per_sec"), Some("10"), "{out}");
    assert_eq!(field(&out, "tokens"), Some("100"), "{out}");
    let stored = api_json(admin, "/clients/user1").await;
    assert_eq!(stored["capacity"], 100);
    assert_eq!(stored["rate_per_sec"], 10.0);

    // An id that needs percent-encoding as a path segment.
    let (code, _, err) = clients_cli(
        admin,
        &[
            "add",
            "team/a+b@x",
            "--capacity",
            "5",
            "--rate-per-sec",
            "0.5",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = clients_cli(admin, &["get", "team/a+b@x"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "client_id"), Some("team/a+b@x"), "{out}");

    let (code, out, err) = clients_cli(admin, &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("CLIENT_ID   CAPACITY  RATE"),
        "aligned: {out}"
    );
    let row = |id: &str| -> Vec<String> {
        let line = lines.iter().find(|l| l.starts_with(id)).expect("row");
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(row("user1 "), ["user1", "100", "10/s", "100"], "{out}");
    assert_eq!(row("team/"), ["team/a+b@x", "5", "0.5/s", "5"], "{out}");

    let (code, out, err) = clients_cli(admin, &["get", "user1"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "rate"), Some("10/s"), "{out}");

    let (code, out, err) = clients_cli(
        admin,
        &["set", "user1", "--capacity", "20", "--rate-per-sec", "2"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "capacity"), Some("20"), "{out}");
    assert_eq!(field(&out, "rate_per_sec"), Some("2"), "{out}");
    let stored = api_json(admin, "/clients/user1").await;
    assert_eq!(
        (stored["capacity"].clone(), stored["rate_per_sec"].clone()),
        (20.into(), 2.0.into())
    );

    // --json: the API's own JSON, before or after the action.
    let (code, out, err) = clients_cli(admin, &["--json", "get", "user1"]).await;
    assert_eq!(code, Some(0), "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(printed, api_json(admin, "/clients/user1").await);
    let (code, out, err) = clients_cli(admin, &["list", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(printed, api_json(admin, "/clients").await);
    let (code, out, err) = clients_cli(
        admin,
        &[
            "add",
            "user2",
            "--json",
            "--capacity",
            "3",
            "--rate-per-sec",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(printed, api_json(admin, "/clients/user2").await);
    let (code, out, err) = clients_cli(
        admin,
        &[
            "--json",
            "set",
            "user2",
            "--capacity",
            "4",
            "--rate-per-sec",
            "1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(printed["capacity"], 4);
    // DELETE answers 204 without a body: --json prints nothing.
    let (code, out, err) = clients_cli(admin, &["--json", "delete", "user2"]).await;
    assert_eq!((code, out.as_str()), (Some(0), ""), "{err}");

    let (code, out, err) = clients_cli(admin, &["delete", "user1"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted user1"), "{out}");
    let (code, out, err) = clients_cli(admin, &["get", "user1"]).await;
    assert_eq!(code, Some(1), "the API refused: {out}");
    assert!(
        err.contains("404") && err.contains(r#"client "user1" not found"#),
        "{err}"
    );
    let (code, _, err) = clients_cli(admin, &["delete", "user1"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = clients_cli(
        admin,
        &["set", "user1", "--capacity", "1", "--rate-per-sec", "1"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apis_refusals_exit_1_with_its_message_and_write_nothing() {
    let bs = crate::support::backends(1).await;
    let lb = crate::support::balancer(&crate::support::config(&[bs[0].addr])).await;
    let admin = lb.admin_addr();

    let (code, out, err) = clients_cli(
        admin,
        &["add", "user1", "--capacity", "0", "--rate-per-sec", "1"],
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("400") && err.contains("capacity must be an integer >= 1"),
        "{err}"
    );
    let (code, _, err) = clients_cli(
        admin,
        &["add", "user1", "--capacity", "5", "--rate-per-sec", "-1"],
    )
    .await;
    // Judged before sending, with the server's words: a usage error.
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("rate_per_sec must not be negative"), "{err}");
    let (code, _, err) = clients_cli(
        admin,
        &["add", "bad id", "--capacity", "5", "--rate-per-sec", "1"],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("client_id"), "{err}");
    assert_eq!(api_json(admin, "/clients").await, serde_json::json!([]));

    let add = ["add", "user1", "--capacity", "5", "--rate-per-sec", "1"];
    assert_eq!(clients_cli(admin, &add).await.0, Some(0));
    let (code, _, err) = clients_cli(admin, &add).await;
    assert_eq!(code, Some(1), "a second add of the same id");
    assert!(
        err.contains("409") && err.contains("already exists"),
        "{err}"
    );
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_without_asking_the_api() {
    // Nothing listens here: a command that got as far as the API would
    // exit 1 (unreachable), so 2 says it stopped at the arguments.
    let admin = crate::support::closed_port();
    for args in [
        &["add", "u"][..],
        &["add", "u", "--capacity", "5"],
        &["add", "u", "--rate-per-sec", "1"],
        &[
            "add",
            "u",
            "--capacity",
            "5",
            "--rate-per-sec",
            "1",
            "--rate",
            "1/s",
        ],
        &["add", "u", "--capacity", "5", "--rate", "10 per day"],
        &["add", "u", "--capacity", "5", "--rate", "/day"],
        &["add", "u", "--capacity", "5", "--rate", "10/"],
        &["add", "u", "--capacity", "5", "--rate", "ten/s"],
        &["add", "u", "--capacity", "5", "--rate-per-sec", "fast"],
        &["add", "u", "--capacity", "5", "--rate-per-sec", "NaN"],
        &["add", "u", "--capacity", "-1", "--rate-per-sec", "1"],
        &["add", "u", "--capacity", "lots", "--rate-per-sec", "1"],
        &["add", "--capacity", "5", "--rate-per-sec", "1"],
        &["set", "u", "--capacity", "5"],
        &["set", "u", "--rate", "1/s"],
        &["get"],
        &["delete"],
        &["get", "a", "b"],
        &["frobnicate"],
        &[],
    ] {
        let (code, out, err) = clients_cli(admin, args).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(!err.is_empty(), "{args:?}: says why");
    }
    let (code, _, err) = admin_cli("clients", "127.0.0.1:9090", None, &["list"]).await;
    assert_eq!(code, Some(2), "--admin without a scheme");
    assert!(err.contains("--admin"), "{err}");
    let (code, _, err) = admin_cli("backends", "ftp://127.0.0.1", None, &["list"]).await;
    assert_eq!(code, Some(2), "--admin with a scheme other than http(s)");
    assert!(err.contains("--admin"), "{err}");
    let (code, _, _) = backends_cli(admin, &["drain"]).await;
    assert_eq!(code, Some(2), "drain without a name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_admin_api_exits_1_and_says_so() {
    let admin = crate::support::closed_port();
    for (group, args) in [
        ("clients", &["list"][..]),
        (
            "clients",
            &["add", "u", "--capacity", "5", "--rate-per-sec", "1"],
        ),
        ("clients", &["delete", "u"]),
        ("backends", &["list"]),
        ("backends", &["enable", "app-1"]),
    ] {
        let (code, out, err) = admin_cli(group, &format!("http://{admin}"), None, args).await;
        assert_eq!(code, Some(1), "{group} {args:?}: {out}");
        assert!(
            err.contains(&format!("cannot reach the admin API at http://{admin}/")),
            "{err}"
        );
        assert!(
            err.contains("onnection refused"),
            "the cause is shown: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_the_environment() {
    let token = "s3cret-token-0123456789";
    let bs = crate::support::backends(1).await;
    let mut cfg = crate::support::config(&[bs[0].addr]);
    cfg.admin.token = Some(token.into());
    let lb = crate::support::balancer(&cfg).await;
    let admin = format!("http://{}", lb.admin_addr());

    let add = ["add", "user1", "--capacity", "5", "--rate-per-sec", "1"];
    for wrong in [None, Some(""), Some("wrong-token-0123456789")] {
        for (group, args) in [
            ("clients", &["list"][..]),
            ("clients", &add),
            ("backends", &["list"]),
            ("backends", &["drain", &bs[0].addr.to_string()]),
        ] {
            let (code, out, err) = admin_cli(group, &admin, wrong, args).await;
            assert_eq!(code, Some(1), "{wrong:?} {group} {args:?}: {out}");
            assert!(err.contains("401") && err.contains("bearer token"), "{err}");
        }
    }
    assert!(lb.registry().pinned_len() == 0, "nothing was added");
    assert!(
        !lb.pool().backends().iter().any(|b| b.is_draining()),
        "nothing was drained"
    );

    let (code, out, err) = admin_cli("clients", &admin, Some(token), &add).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "client_id"), Some("user1"), "{out}");
    let (code, out, err) = admin_cli("backends", &admin, Some(token), &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("active"), "{out}");
    lb.shutdown().await;
}

/// `--rate N/unit` sends the string as written and the API shows it back
/// (SPEC 11; needs the server's `rate` support in the client bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_add_and_set_with_a_rate_per_unit() {
    let bs = crate::support::backends(1).await;
    let lb = crate::support::balancer(&crate::support::config(&[bs[0].addr])).await;
    let admin = lb.admin_addr();

    let (code, out, err) = clients_cli(
        admin,
        &["add", "daily", "--capacity", "1000", "--rate", "1000/day"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "rate"), Some("1000/day"), "{out}");
    let stored = api_json(admin, "/clients/daily").await;
    assert_eq!(stored["rate"], "1000/day");
    let per_sec = stored["rate_per_sec"].as_f64().expect("rate_per_sec");
    assert!((per_sec - 1000.0 / 86_400.0).abs() < 1e-9, "{per_sec}");

    let (code, out, err) = clients_cli(admin, &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .eq(["daily", "1000", "1000/day", "1000"])),
        "{out}"
    );

    let (code, out, err) = clients_cli(
        admin,
        &[
            "--json",
            "set",
            "daily",
            "--capacity",
            "60",
            "--rate",
            "60/min",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(printed["rate"], "60/min");
    assert_eq!(printed["rate_per_sec"], 1.0);

    // Back to a plain rate: `rate` is null again, shown as rate_per_sec/s.
    let (code, out, err) = clients_cli(
        admin,
        &["set", "daily", "--capacity", "60", "--rate-per-sec", "2"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(field(&out, "rate"), Some("2/s"), "{out}");
    assert_eq!(
        api_json(admin, "/clients/daily").await["rate"],
        serde_json::Value::Null
    );

    // An unknown unit is judged by the parser the server uses: a usage
    // error with its message, nothing sent.
    let (code, _, err) = clients_cli(
        admin,
        &["add", "x", "--capacity", "1", "--rate", "1/fortnight"],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown unit \"fortnight\""), "{err}");
    lb.shutdown().await;
}

/// `tollgate health ARGS...`, with `TOLLGATE_ADMIN_TOKEN` unset.
async fn health_cli(args: Vec<String>) -> Ran {
    let mut cmd = tollgate();
    cmd.arg("health")
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_CONFIG");
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
async fn health_probes_the_admin_api_the_config_names_with_its_token() {
    let bs = crate::support::backends(1).await;
    let mut cfg = crate::support::config(&[bs[0].addr]);
    let token = "health-probe-token-0123456789";
    cfg.admin.token = Some(token.into());
    let lb = crate::support::balancer(&cfg).await;
    let port = lb.admin_addr().port();
    let dir = tempfile::tempdir().expect("tempdir");
    // As in the compose file: the admin API on every address, asked on
    // loopback by the probe in the same container.
    let write = |name: &str, token: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "server: {{listen: '127.0.0.1:0'}}\n\
                 admin: {{listen: '0.0.0.0:{port}', token: {token}}}\n"
            ),
        )
        .expect("write config");
        path.display().to_string()
    };
    let good = write("good.yaml", token);
    let (code, out, err) = health_cli(vec!["--config".into(), good]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{port}/healthz answered 200")),
        "{out}"
    );

    // A token the server does not hold: 401, unhealthy, and it says so.
    let wrong = write("wrong.yaml", "not-the-token-0123456789");
    let (code, out, err) = health_cli(vec!["--config".into(), wrong]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("answered 401"), "{err}");

    // The config from $TOLLGATE_CONFIG, as in the image.
    let mut cmd = tollgate();
    cmd.arg("health")
        .env("TOLLGATE_CONFIG", dir.path().join("good.yaml"))
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    assert!(out.status.success(), "{out:?}");
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_a_url_and_fails_on_errors_and_silence() {
    let bs = crate::support::backends(1).await;
    let at = |path: &str| crate::support::url(bs[0].addr, path);
    let (code, out, err) = health_cli(vec!["--url".into(), at("/health")]).await;
    assert_eq!(code, Some(0), "{out}{err}");

    let (code, _, err) = health_cli(vec!["--url".into(), at("/status/503")]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("answered 503"), "{err}");

    let closed = crate::support::url(crate::support::closed_port(), "/healthz");
    let (code, _, err) = health_cli(vec!["--url".into(), closed]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no answer from"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");

    let (code, _, err) = health_cli(vec!["--url".into(), "localhost:9090".into()]).await;
    assert_eq!(code, Some(2), "{err}");

    // No config to find the admin API in: a config error, not "healthy".
    let (code, _, err) =
        health_cli(vec!["--config".into(), "/nonexistent/tollgate.yaml".into()]).await;
    assert_eq!(code, Some(2), "{err}");
}

/// A server that answers every request with `answer` (whatever it is
/// asked) and counts the connections it accepted.
async fn fixed_server(
    answer: Vec<u8>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                // The client may hang up before all of it is sent.
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_is_cut_at_4_kib() {
    let ten_mb = 10 * 1024 * 1024;
    let raw = [
        format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {ten_mb}\r\n\r\n")
            .into_bytes(),
        vec![b'x'; ten_mb],
    ]
    .concat();
    let message = "y".repeat(ten_mb);
    let json_body = format!("{{\"code\":500,\"message\":\"{message}\"}}");
    let json = [
        format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            json_body.len()
        )
        .into_bytes(),
        json_body.into_bytes(),
    ]
    .concat();
    for (what, answer) in [("plain", raw), ("JSON", json)] {
        let (addr, _) = fixed_server(answer).await;
        let (code, out, err) = clients_cli(addr, &["list"]).await;
        assert_eq!(code, Some(1), "{what}");
        assert!(out.is_empty(), "{what}: {} bytes on stdout", out.len());
        assert!(
            err.len() < 4096 + 256,
            "{what}: {} bytes on stderr",
            err.len()
        );
        assert!(err.contains("500"), "{what}: {err}");
        assert!(err.contains("truncated"), "{what}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_reported_and_not_followed() {
    let (elsewhere, visits) = fixed_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]"
            .to_vec(),
    )
    .await;
    let location = format!("http://{elsewhere}/clients?limit=1000");
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
    ] {
        let (admin, _) = fixed_server(
            format!("HTTP/1.1 {status}\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
                .into_bytes(),
        )
        .await;
        let (code, _, err) = admin_cli(
            "clients",
            &format!("http://{admin}"),
            Some("redirect-test-token-0123456789"),
            &["list"],
        )
        .await;
        assert_eq!(code, Some(1), "{status}: {err}");
        assert!(err.contains(&status[..3]), "{err}");
        assert!(err.contains(&location), "{err}");
        assert!(err.contains("not followed"), "{err}");
    }
    assert_eq!(
        visits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_routes_and_drain_by_pool_from_the_command_line() {
    let two = crate::routes::TwoPools::start().await;
    let admin = two.admin();
    let url = format!("http://{admin}");
    let run = |group: &'static str, args: &'static [&'static str]| {
        let url = url.clone();
        async move { admin_cli(group, &url, None, args).await }
    };

    let (code, out, err) = run("pools", &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["NAME", "STRATEGY", "ACTIVE", "BACKENDS", "CONNECT", "REQUEST", "RETRIES"],
            vec![
                "default",
                "round_robin",
                "2/2",
                "shared,web-2",
                "2s",
                "30s",
                "1",
                "on",
                "connect_failure,reset"
            ],
            vec![
                "api",
                "p2c",
                "2/2",
                "shared,api-2",
                "2s",
                "5s",
                "2",
                "on",
                "connect_failure,503"
            ],
        ],
        "{out}"
    );
    let (code, out, err) = run("pools", &["list", "--json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed, api_json(admin, "/pools").await);

    let c = crate::support::client();
    for _ in 0..2 {
        let status = crate::support::get_status(&c, two.lb.proxy_addr(), "/api/x").await;
        assert_eq!(status, 200);
    }
    let (code, out, err) = run("routes", &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME"), "{out}");
    let api: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        api,
        [
            "api",
            "api",
            "path_prefix=/api",
            "methods=GET,POST",
            "/",
            "2",
            "0"
        ],
        "{out}"
    );
    let canary: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        canary,
        [
            "canary",
            "api",
            "hosts=*.example.com",
            "path_exact=/canary",
            "headers=x-canary:1",
            "-",
            "0",
            "0"
        ],
        "{out}"
    );
    let (code, out, err) = run("routes", &["--json", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed[0]["requests"], 2, "{out}");

    // A name both pools have: refused, with how to say which.
    let (code, _, err) = run("backends", &["drain", "shared"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("409") && err.contains("(default, api)"),
        "{err}"
    );
    assert!(err.contains("--pool"), "{err}");
    let (code, out, err) = run("backends", &["drain", "shared", "--pool", "api"]).await;
    assert_eq!(code, Some(0), "{err}");
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["shared", "api", "draining"], "{out}");
    assert!(two
        .lb
        .pool_named("api")
        .and_then(|p| p.find("shared"))
        .expect("api's shared")
        .is_draining());
    assert!(!two
        .lb
        .pool()
        .find("shared")
        .expect("default's shared")
        .is_draining());
    let (code, out, err) = run("backends", &["list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "POOL", "STATE"],
            vec!["shared", "default", "active"],
            vec!["web-2", "default", "active"],
            vec!["shared", "api", "draining"],
            vec!["api-2", "api", "active"],
        ],
        "{out}"
    );
    let (code, out, err) = run("backends", &["--json", "enable", "shared", "--pool", "api"]).await;
    assert_eq!(code, Some(0), "{err}");
    let item: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (&item["pool"], &item["state"]),
        (&"api".into(), &"active".into())
    );
    let (code, _, err) = run("backends", &["enable", "shared", "--pool", "nope"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("404") && err.contains("no pool named \"nope\""),
        "{err}"
    );
    let (code, _, err) = run("backends", &["drain", "web-2"]).await;
    assert_eq!(code, Some(0), "a name one pool has needs no --pool: {err}");

    // Usage errors: 2, without asking the API.
    for (group, args) in [
        ("routes", &["frobnicate"][..]),
        ("pools", &[][..]),
        ("backends", &["drain", "--pool", "api"]),
        ("backends", &["drain", "shared", "--pool"]),
    ] {
        let (code, out, err) = admin_cli(group, &url, None, args).await;
        assert_eq!(code, Some(2), "{group} {args:?}: {out}{err}");
    }
    let (code, _, err) = admin_cli("pools", "ftp://127.0.0.1", None, &["list"]).await;
    assert_eq!(code, Some(2), "{err}");
    two.stop().await;
    let closed = format!("http://{}", crate::support::closed_port());
    for group in ["pools", "routes"] {
        let (code, _, err) = admin_cli(group, &closed, None, &["list"]).await;
        assert_eq!(code, Some(1), "{group}: {err}");
        assert!(err.contains("cannot reach the admin API"), "{err}");
    }
}

/// The shipped config.yaml as `tollgate demo` runs it, on free ports:
/// its two pools' demo backends are started, and `/api/...`, the
/// `api.localhost` host and everything else land where its three routes
/// say, each demo backend answering with its configured name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_shipped_config_two_pools_behind_three_routes() {
    let mut yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"))
        .expect("config.yaml");
    let mut replace = |from: &str, to: &str| {
        assert!(yaml.contains(from), "config.yaml has no {from:?}");
        yaml = yaml.replace(from, to);
    };
    replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0");
    replace("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0");
    replace(
        "url: sqlite://tollgate.db",
        &format!("url: {}", crate::support::temp_db()),
    );
    replace("format: text", "format: json");
    for port in ["9001", "9002", "9101", "9102"] {
        let free = crate::support::closed_port().to_string();
        replace(&format!("127.0.0.1:{port}"), &free);
    }
    let mut p = crate::support::spawn_demo(&yaml);
    let started: Vec<&str> = p
        .startup
        .iter()
        .filter(|l| l["message"] == "demo backend listening")
        .map(|l| l["name"].as_str().expect("name"))
        .collect();
    assert_eq!(started, ["api-1", "api-2", "web-1", "web-2"]);

    let c = crate::support::client();
    let get = |path: &str, host: Option<&str>| {
        let mut req = c.get(format!("http://{}{path}", p.proxy));
        if let Some(h) = host {
            req = req.header("host", h);
        }
        async move {
            let r = req.send().await.expect("proxied");
            assert_eq!(r.status(), 200);
            let cache = r.headers().get("cache-control").cloned();
            let body: serde_json::Value = r.json().await.expect("the demo backend's JSON");
            (body, cache)
        }
    };
    let (api, cache) = get("/api/x", None).await;
    assert!(
        api["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("api-")),
        "{api}"
    );
    assert_eq!(api["path"], "/x", "rewritten: {api}");
    assert_eq!(cache.as_ref().map(|v| v.as_bytes()), Some(&b"no-store"[..]));
    let (web, _) = get("/", None).await;
    assert!(
        web["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("web-")),
        "{web}"
    );
    let (host, _) = get("/users", Some("api.localhost:8080")).await;
    assert!(
        host["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("api-")),
        "{host}"
    );
    assert_eq!(host["path"], "/users");
    // The empty default pool is no pool the operator configured.
    let pools = api_json(p.admin, "/pools").await;
    let names: Vec<&str> = pools
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["api", "web"]);
    let routes = api_json(p.admin, "/routes").await;
    let counts: Vec<(&str, u64)> = routes
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().expect("name"),
                r["requests"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(counts, [("api", 1), ("api-host", 1), ("web", 1)]);
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// Starts `tollgate backend` on a free port with `extra` arguments and
/// returns it once it says it listens.
fn demo_backend(extra: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let addr = crate::support::closed_port();
    let mut child = tollgate()
        .args(["backend", "--listen", &addr.to_string(), "--name", "cli-b"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let listening = std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("demo backend listening"));
    assert!(listening, "tollgate backend did not start");
    (child, addr)
}

/// `GET /trailers` over h2c with prior knowledge: the response's status
/// and its trailer, or the error.
async fn h2c_trailers(addr: std::net::SocketAddr) -> Result<(u16, Option<String>), String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/trailers"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.map_err(|e| e.to_string())?;
    let trailer = body
        .trailers()
        .and_then(|t| t.get("x-trailer"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, trailer))
}

#[tokio::test]
async fn backend_speaks_h2c_with_the_flag_only() {
    let (mut child, addr) = demo_backend(&["--h2c"]);
    let answered = h2c_trailers(addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, Ok((200, Some("yes".to_owned()))));

    let (mut child, addr) = demo_backend(&[]);
    let answered = h2c_trailers(addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answered.is_err(),
        "HTTP/1.1 only without --h2c: {answered:?}"
    );
}
