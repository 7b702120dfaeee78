//! Dockerfile, docker-compose.yml (with its `cluster` profile's HAProxy
//! front) and the Kubernetes manifests agree with each other and with the
//! config they mount. No Docker engine or Kubernetes runs on our
//! machines, so this is the check we can make: parse them, compare ports,
//! names and paths.

use std::collections::BTreeSet;
use std::path::Path;

use tollgate::config::Config;

fn repo(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// One instruction of a Dockerfile: its stage (0 for the first `FROM`),
/// keyword and arguments, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    stage: usize,
    name: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out: Vec<Instruction> = Vec::new();
    let mut stage = None::<usize>;
    let mut pending = String::new();
    for line in dockerfile.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
                continue;
            }
            None => pending.push_str(line),
        }
        let text = std::mem::take(&mut pending);
        let (name, args) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let name = name.to_uppercase();
        if name == "FROM" {
            stage = Some(stage.map_or(0, |s| s + 1));
        }
        out.push(Instruction {
            stage: stage.expect("FROM comes first"),
            name,
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        });
    }
    out
}

/// Whether `.dockerignore` keeps `path` out of the build context: the
/// last pattern matching the path or one of its parent directories
/// decides, `!` taking it back in (Docker's rules for the patterns used
/// there: `*` within one path segment, `**` across segments).
fn docker_ignored(dockerignore: &str, path: &str) -> bool {
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match (pattern.first(), path.first()) {
            (None, None) => true,
            (Some(&"**"), _) => {
                matches(&pattern[1..], path) || (!path.is_empty() && matches(pattern, &path[1..]))
            }
            (Some(p), Some(s)) => glob(p, s) && matches(&pattern[1..], &path[1..]),
            _ => false,
        }
    }
    fn glob(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (head.len()..=s.len()).any(|i| s.is_char_boundary(i) && glob(tail, &s[i..]))
            }
        }
    }
    let segments: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for line in dockerignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keep, pattern) = match line.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, line),
        };
        let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
        if (1..=segments.len()).any(|n| matches(&pattern, &segments[..n])) {
            ignored = !keep;
        }
    }
    ignored
}

#[test]
fn the_dockerignore_matcher_follows_dockers_rules() {
    let rules = "target\n**/*.db\ndeploy/tls\n*.md\n!KEEP.md\n";
    assert!(docker_ignored(rules, "target"));
    assert!(docker_ignored(rules, "target/production/tollgate"));
    assert!(docker_ignored(rules, "a/b/x.db"));
    assert!(docker_ignored(rules, "x.db"));
    assert!(docker_ignored(rules, "deploy/tls/site.key"));
    assert!(docker_ignored(rules, "README.md"));
    assert!(
        !docker_ignored(rules, "docs/x.md"),
        "* stays in one segment"
    );
    assert!(!docker_ignored(rules, "KEEP.md"));
    assert!(!docker_ignored(rules, "deploy/compose-config.yaml"));
    assert!(!docker_ignored(rules, "src/target.rs"));
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_stops_with_sigterm() {
    let all = instructions(&repo("Dockerfile"));
    let froms: Vec<&Instruction> = all.iter().filter(|i| i.name == "FROM").collect();
    let runtime = froms.len() - 1;
    assert!(froms.len() >= 2, "build and runtime stages");
    assert!(froms[0].args.ends_with(" AS build"), "{:?}", froms[0]);
    assert!(froms[runtime].args.contains("slim"), "small runtime image");
    assert!(
        !froms[runtime].args.contains(" AS "),
        "the runtime image is the last stage, what `docker build .` builds"
    );
    let instr = |name: &str| -> Vec<String> {
        all.iter()
            .filter(|i| i.stage == runtime && i.name == name)
            .map(|i| i.args.clone())
            .collect()
    };
    let user = instr("USER");
    assert_eq!(user.len(), 1);
    assert!(
        !["root", "0", "0:0"].contains(&user[0].as_str()),
        "{user:?}"
    );
    assert_eq!(instr("STOPSIGNAL"), vec!["SIGTERM"]);
    assert_eq!(instr("EXPOSE"), vec!["8080 8443 9090"]);
    assert!(instr("VOLUME")
        .iter()
        .any(|v| v.contains("/var/lib/tollgate")));
    // Every path a stage copies from the build context exists, and
    // .dockerignore leaves it in the context.
    let ignore = repo(".dockerignore");
    for copy in all.iter().filter(|i| i.name == "COPY") {
        if copy.args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = copy.args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
                "COPY {src}: missing"
            );
            assert!(
                !docker_ignored(&ignore, src),
                "COPY {src}: .dockerignore leaves it out"
            );
        }
    }
    // The runtime stage copies the binary the build stage made: the
    // profile named in `cargo build --profile P` exists in Cargo.toml, and
    // its output directory is the one copied.
    let builds: Vec<&Instruction> = all
        .iter()
        .filter(|i| i.stage == 0 && i.name == "RUN" && i.args.contains("cargo build"))
        .collect();
    let profile = |run: &Instruction| -> String {
        run.args
            .split_whitespace()
            .skip_while(|w| *w != "--profile")
            .nth(1)
            .expect("cargo build --profile P")
            .to_string()
    };
    let profile = profile(builds.last().expect("a cargo build step"));
    assert!(
        repo("Cargo.toml").contains(&format!("[profile.{profile}]")),
        "profile {profile} not in Cargo.toml"
    );
    assert!(
        instr("COPY")
            .iter()
            .any(|c| c.starts_with("--from=build")
                && c.contains(&format!("/target/{profile}/tollgate"))),
        "the runtime stage does not copy target/{profile}/tollgate"
    );
    // The shipped config's listeners are the exposed ports.
    let c = Config::parse(&repo("config.yaml")).expect("config.yaml");
    assert_eq!(c.server.listen.map(|a| a.port()), Some(8080));
    assert_eq!(c.admin.listen.port(), 9090);
}

#[test]
fn dockerfile_builds_the_dependencies_in_a_layer_before_the_sources() {
    let all = instructions(&repo("Dockerfile"));
    let build: Vec<&Instruction> = all.iter().filter(|i| i.stage == 0).collect();
    let position = |what: &dyn Fn(&Instruction) -> bool| build.iter().position(|i| what(i));
    let copy_src = position(&|i| i.name == "COPY" && i.args.starts_with("src "))
        .expect("COPY src in the build stage");
    let deps = position(&|i| i.name == "RUN" && i.args.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        deps < copy_src,
        "the first cargo build (the dependency layer) must come before COPY src"
    );
    // What the dependency layer sees: the manifest and the lock file,
    // nothing that changes with the code.
    for copy in build[..deps].iter().filter(|i| i.name == "COPY") {
        for src in copy.args.split_whitespace().rev().skip(1) {
            assert!(
                ["Cargo.toml", "Cargo.lock", "build.rs"].contains(&src),
                "the dependency layer copies {src}: a change there rebuilds every dependency"
            );
        }
    }
    let deps_run = &build[deps].args;
    assert!(
        deps_run.contains("--locked"),
        "the lock file decides: {deps_run}"
    );
    // Every [[bench]] of the manifest gets a stub (cargo refuses a
    // manifest whose declared targets are missing): the stub loop reads
    // their names from Cargo.toml rather than listing them.
    assert!(deps_run.contains("benches/"), "{deps_run}");
    // The stubs' fingerprints go before the real build, or cargo may take
    // the stub build for up to date and ship an empty binary.
    let real = build
        .iter()
        .skip(copy_src)
        .find(|i| i.name == "RUN" && i.args.contains("cargo build"))
        .expect("a cargo build after COPY src");
    let profile = real
        .args
        .split_whitespace()
        .skip_while(|w| *w != "--profile")
        .nth(1)
        .expect("--profile");
    let rm = format!("rm -rf target/{profile}/.fingerprint/tollgate-*");
    let rm_at = real
        .args
        .find(&rm)
        .unwrap_or_else(|| panic!("{rm} before the real build"));
    assert!(rm_at < real.args.find("cargo build").expect("cargo build"));
    assert!(
        deps_run.contains(&format!("--profile {profile}")),
        "both builds use one profile, or the dependency layer is not reused"
    );
}

#[test]
fn the_image_checks_its_health_with_the_admin_healthz() {
    let all = instructions(&repo("Dockerfile"));
    let runtime = all.iter().map(|i| i.stage).max().expect("stages");
    let checks: Vec<&Instruction> = all
        .iter()
        .filter(|i| i.stage == runtime && i.name == "HEALTHCHECK")
        .collect();
    assert_eq!(checks.len(), 1, "one HEALTHCHECK in the runtime stage");
    let check = &checks[0].args;
    assert!(
        check.ends_with(r#"CMD ["tollgate", "health"]"#),
        "the image has no curl or wget; `tollgate health` probes /healthz: {check}"
    );
    // Docker kills a probe at --timeout; the probe gives up before that,
    // so the health log says why it failed.
    let timeout = check
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--timeout="))
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse::<u64>().ok())
        .expect("HEALTHCHECK --timeout=Ns");
    assert!(
        std::time::Duration::from_secs(timeout) > tollgate::probe::TIMEOUT,
        "--timeout={timeout}s is not above the probe's own {:?}",
        tollgate::probe::TIMEOUT
    );
    // The probe reads the config the image runs with.
    let env: Vec<&Instruction> = all
        .iter()
        .filter(|i| i.stage == runtime && i.name == "ENV")
        .collect();
    assert!(
        env.iter()
            .any(|e| e.args == "TOLLGATE_CONFIG=/etc/tollgate/config.yaml"),
        "{env:?}"
    );
}

#[test]
fn dockerignore_keeps_build_output_history_and_keys_out() {
    let ignore = repo(".dockerignore");
    for path in [
        "target",
        "target/production/tollgate",
        ".git",
        ".git/HEAD",
        "deploy/tls/site.key",
        "deploy/tls/ca.key",
        "tollgate.db",
        "tollgate.db-wal",
    ] {
        assert!(docker_ignored(&ignore, path), "{path} is sent to the build");
    }
}

#[test]
fn compose_services_ports_and_config_agree() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo("docker-compose.yml")).expect("compose YAML");
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &serde_yaml::Value| k.as_str().unwrap_or_default().to_string();
    let names: BTreeSet<String> = services.keys().map(name).collect();
    for s in ["tollgate", "web1", "web2", "api1", "api2"] {
        assert!(names.contains(s), "service {s} missing");
    }

    let tg = &compose["services"]["tollgate"];
    // The config it runs with is the file it mounts, and it is valid.
    let command: Vec<String> = tg["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let config_path = command
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config in the command");
    let mount = tg["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.split(':').nth(1) == Some(config_path.as_str()))
        .expect("the config file is mounted");
    let host_file = mount
        .split(':')
        .next()
        .expect("host path")
        .trim_start_matches("./");
    let config = Config::parse(&repo(host_file)).expect("mounted config is valid");

    // Published ports are the config's listeners.
    let ports: Vec<String> = tg["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p.as_str().map(String::from))
        .collect();
    let published = |container: u16| ports.iter().any(|p| p.ends_with(&format!(":{container}")));
    let plain = config
        .server
        .listen
        .expect("compose keeps the plain listener");
    assert!(published(plain.port()), "{ports:?}");
    let tls = config
        .server
        .tls
        .as_ref()
        .expect("compose has a TLS listener");
    assert!(published(tls.listen.port()), "{ports:?}");
    // Its certificates come from a read-only mount of a directory.
    let volumes: Vec<&str> = tg["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for pair in &tls.certificates {
        for file in [&pair.cert, &pair.key] {
            assert!(
                volumes.iter().any(|v| {
                    let mut parts = v.split(':');
                    let inside = parts.nth(1).unwrap_or_default();
                    file.starts_with(inside) && v.ends_with(":ro")
                }),
                "{} is not on a read-only mount: {volumes:?}",
                file.display()
            );
        }
    }
    assert!(published(config.admin.listen.port()), "{ports:?}");
    // Admin is published on the host's loopback only.
    assert!(ports
        .iter()
        .any(|p| p.starts_with("127.0.0.1:")
            && p.ends_with(&format!(":{}", config.admin.listen.port()))));

    // Each backend of each pool is a compose service listening on that
    // port, named as the config names it (so its answers say which pool
    // served a request).
    let pools = config.pool_specs();
    let backends: Vec<_> = pools.iter().flat_map(|p| &p.backends).collect();
    assert_eq!(backends.len(), 4);
    assert!(config.is_routed() && config.routes.len() == 3);
    for b in backends {
        let host = b.url.authority.host().to_string();
        let port = b.url.authority.port_u16().expect("port");
        let svc = &compose["services"][host.as_str()];
        let args: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("backend {host} is not a compose service"))
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(args.first(), Some(&"backend"));
        let listen = args
            .iter()
            .skip_while(|a| **a != "--listen")
            .nth(1)
            .expect("--listen");
        assert!(
            listen.ends_with(&format!(":{port}")),
            "{host} listens on {listen}, config says {port}"
        );
        let named = args.iter().skip_while(|a| **a != "--name").nth(1);
        assert_eq!(named, Some(&&*b.name), "{host}");
        assert_eq!(svc["image"], tg["image"], "backends run the same image");
    }

    // The client table lives in the data volume.
    let data = tg["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.starts_with("tollgate-data:"))
        .expect("data volume mounted");
    let data_dir = data.split(':').nth(1).expect("mount point");
    assert!(
        config.store.url.contains(data_dir),
        "{} is outside {data_dir}",
        config.store.url
    );
    assert!(
        compose["volumes"]["tollgate-data"].is_mapping()
            || compose["volumes"]["tollgate-data"].is_null()
    );
}

#[test]
fn compose_scale_replicas_share_the_compose_postgres() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo("docker-compose.yml")).expect("compose YAML");
    let pg = &compose["services"]["postgres"]["environment"];
    let config =
        Config::parse(&repo("deploy/compose-scale-config.yaml")).expect("scale config is valid");
    let want = format!(
        "postgres://{}:{}@postgres:5432/{}",
        pg["POSTGRES_USER"].as_str().expect("user"),
        pg["POSTGRES_PASSWORD"].as_str().expect("password"),
        pg["POSTGRES_DB"].as_str().expect("db"),
    );
    assert_eq!(config.store.url, want);
    // The replicas route as the single tollgate does.
    let single = Config::parse(&repo("deploy/compose-config.yaml")).expect("compose config");
    assert_eq!(config.pools, single.pools);
    assert_eq!(config.routes, single.routes);
    assert_eq!(config.backends, single.backends);
    assert_eq!(
        config.rate_limit.shared.redis_url.as_deref(),
        Some("redis://redis:6379"),
        "limits shared through the compose Redis"
    );
    assert!(compose["services"]["redis"].is_mapping());
    for replica in ["tollgate-a", "tollgate-b"] {
        let svc = &compose["services"][replica];
        assert_eq!(svc["image"], compose["services"]["tollgate"]["image"]);
        let command: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{replica} missing"))
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(
            command,
            [
                "serve",
                "--config",
                "/etc/tollgate/compose-scale-config.yaml"
            ]
        );
        for needed in ["postgres", "redis"] {
            assert_eq!(
                svc["depends_on"][needed]["condition"], "service_healthy",
                "{replica} waits for {needed}"
            );
        }
    }
}

/// The command of a compose service's health check (`test`), without
/// its leading `CMD`.
fn health_command(svc: &serde_yaml::Value) -> Vec<String> {
    let test: Vec<String> = svc["healthcheck"]["test"]
        .as_sequence()
        .map(|t| {
            t.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        test.first().map(String::as_str),
        Some("CMD"),
        "exec form: {test:?}"
    );
    test[1..].to_vec()
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .skip_while(|a| *a != flag)
        .nth(1)
        .map(String::as_str)
}

#[test]
fn compose_services_are_health_checked_and_start_in_order() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo("docker-compose.yml")).expect("compose YAML");
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &serde_yaml::Value| k.as_str().unwrap_or_default().to_string();
    // One-shot services: they run to the end and are waited for with
    // service_completed_successfully; every other service has a health
    // check and is waited for with service_healthy.
    let one_shot = |svc: &serde_yaml::Value| svc["restart"].as_str() == Some("no");
    for (key, svc) in services {
        let me = name(key);
        if one_shot(svc) {
            assert!(
                svc["healthcheck"].is_null(),
                "{me}: a one-shot has no health check"
            );
        } else {
            assert!(!health_command(svc).is_empty(), "{me}: no health check");
        }
        let Some(depends) = svc["depends_on"].as_mapping() else {
            assert!(
                svc["depends_on"].is_null(),
                "{me}: depends_on must name a condition for each service"
            );
            continue;
        };
        for (dep, how) in depends {
            let dep = name(dep);
            let target = &compose["services"][dep.as_str()];
            assert!(target.is_mapping(), "{me} depends on unknown {dep}");
            let want = if one_shot(target) {
                "service_completed_successfully"
            } else {
                "service_healthy"
            };
            assert_eq!(how["condition"], want, "{me} -> {dep}");
        }
    }

    // tollgate's probe reads the config tollgate runs with: the admin
    // address and token come from there.
    for svc in [
        "tollgate",
        "tollgate-a",
        "tollgate-b",
        "tollgate-1",
        "tollgate-2",
        "tollgate-3",
    ] {
        let svc = &compose["services"][svc];
        let serve = strings(&svc["command"]);
        let probe = health_command(svc);
        assert_eq!(probe[..2], ["tollgate", "health"], "{probe:?}");
        assert_eq!(after(&probe, "--config"), after(&serve, "--config"));
    }
    // A demo backend's probe asks its own /health on its own port.
    for b in ["web1", "web2", "api1", "api2"] {
        let svc = &compose["services"][b];
        let listen = after(&strings(&svc["command"]), "--listen")
            .expect("--listen")
            .to_string();
        let port = listen.rsplit(':').next().expect("port");
        let probe = health_command(svc);
        assert_eq!(
            after(&probe, "--url"),
            Some(format!("http://127.0.0.1:{port}/health").as_str()),
            "{b}"
        );
        // The image is built by the tollgate service, never pulled (there
        // is no tollgate image to pull).
        assert_eq!(svc["pull_policy"], "never", "{b}");
    }
    assert!(compose["services"]["tollgate"]["build"].is_string());

    // No step before `docker compose up`: the one-shot writes the TLS
    // directory tollgate mounts, from the Dockerfile stage that has
    // openssl, with the script the docs describe.
    let certs = &compose["services"]["certs"];
    assert!(one_shot(certs));
    assert_eq!(certs["build"]["target"], "devcert");
    let stages: Vec<String> = instructions(&repo("Dockerfile"))
        .into_iter()
        .filter(|i| i.name == "FROM")
        .map(|i| i.args)
        .collect();
    assert!(
        stages.iter().any(|s| s.ends_with(" AS devcert")),
        "{stages:?}"
    );
    let host_dir = |svc: &serde_yaml::Value, inside: &str| -> Option<String> {
        strings(&svc["volumes"]).into_iter().find_map(|v| {
            let mut parts = v.split(':');
            let host = parts.next()?.to_string();
            (parts.next()? == inside).then_some(host)
        })
    };
    let written = host_dir(certs, "/tls").expect("certs mounts /tls");
    let read = host_dir(&compose["services"]["tollgate"], "/etc/tollgate/tls")
        .expect("tollgate mounts its certificates");
    assert_eq!(written, read);
    let command = strings(&certs["command"]).join(" ");
    assert!(
        command.contains("dev-cert.sh /tls"),
        "the one-shot runs scripts/dev-cert.sh: {command}"
    );
    assert!(
        repo(".gitignore")
            .lines()
            .any(|l| l.trim_matches('/') == written.trim_start_matches("./")),
        "{written} (private keys) is not git-ignored"
    );
}

/// `deploy/haproxy.cfg` as sections (`frontend proxy`, `backend
/// replicas`, ...), each with its lines, comments dropped.
fn haproxy_sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let content = line.split('#').next().unwrap_or_default();
        if content.trim().is_empty() {
            continue;
        }
        if !content.starts_with(char::is_whitespace) {
            sections.push((content.trim().to_string(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(content.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    sections
}

fn section<'a>(sections: &'a [(String, Vec<String>)], name: &str) -> &'a [String] {
    &sections
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("haproxy.cfg has no `{name}`"))
        .1
}

/// The port of a `bind :PORT` line.
fn bind_port(lines: &[String]) -> u16 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("bind "))
        .and_then(|b| b.rsplit(':').next()?.parse().ok())
        .expect("bind :PORT")
}

#[test]
fn compose_cluster_profile_puts_three_replicas_behind_one_front() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo("docker-compose.yml")).expect("compose YAML");
    let services = &compose["services"];
    let in_cluster =
        |svc: &serde_yaml::Value| strings(&svc["profiles"]).contains(&"cluster".into());
    let replicas: Vec<String> = services
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, svc)| in_cluster(svc) && svc["image"] == services["tollgate"]["image"])
        .map(|(k, _)| k.as_str().expect("name").to_string())
        .collect();
    assert_eq!(replicas, ["tollgate-1", "tollgate-2", "tollgate-3"]);
    for needed in ["redis", "postgres", "front"] {
        assert!(in_cluster(&services[needed]), "{needed} is in the profile");
    }
    let config_file = "/etc/tollgate/compose-cluster-config.yaml";
    let config = Config::parse(&repo("deploy/compose-cluster-config.yaml")).expect("valid");
    for r in &replicas {
        let svc = &services[r.as_str()];
        assert_eq!(
            after(&strings(&svc["command"]), "--config"),
            Some(config_file)
        );
        assert!(
            strings(&svc["volumes"]).contains(&format!(
                "./deploy/compose-cluster-config.yaml:{config_file}:ro"
            )),
            "{r} mounts its config read-only"
        );
        // Reached through the front only: no port of its own on the host,
        // so no connection without the front's PROXY header.
        assert!(svc["ports"].is_null(), "{r} publishes no port");
        assert!(strings(&svc["networks"]).contains(&"cluster".into()), "{r}");
        for needed in ["postgres", "redis"] {
            assert_eq!(svc["depends_on"][needed]["condition"], "service_healthy");
        }
    }
    // Limits and clients shared through the compose Redis and PostgreSQL.
    let pg = &services["postgres"]["environment"];
    assert_eq!(
        config.store.url,
        format!(
            "postgres://{}:{}@postgres:5432/{}",
            pg["POSTGRES_USER"].as_str().expect("user"),
            pg["POSTGRES_PASSWORD"].as_str().expect("password"),
            pg["POSTGRES_DB"].as_str().expect("db"),
        )
    );
    assert!(config.store.notify);
    assert_eq!(
        config.rate_limit.shared.redis_url.as_deref(),
        Some("redis://redis:6379")
    );

    // The front: the one peer whose PROXY header the replicas believe, at
    // a fixed address of the cluster network.
    let front = &services["front"];
    let address: std::net::IpAddr = front["networks"]["cluster"]["ipv4_address"]
        .as_str()
        .expect("the front's fixed address")
        .parse()
        .expect("an address");
    let subnet: ipnet::IpNet = compose["networks"]["cluster"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("the cluster network's subnet")
        .parse()
        .expect("a subnet");
    assert!(subnet.contains(&address));
    assert!(
        config.server.proxy_protocol,
        "replicas expect the PROXY header"
    );
    assert!(
        config
            .rate_limit
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&address))
            && config
                .rate_limit
                .trusted_proxies
                .iter()
                .all(|n| n.prefix_len() == n.max_prefix_len()),
        "the front's address, and only single addresses, are trusted: {:?}",
        config.rate_limit.trusted_proxies
    );
    for r in &replicas {
        assert_eq!(
            front["depends_on"][r.as_str()]["condition"],
            "service_healthy"
        );
    }

    // HAProxy's config is the file the front mounts; it spreads TCP over
    // exactly the replicas, on the port their config listens on, with the
    // PROXY v2 header, checking their admin /healthz with its token.
    let mount = strings(&front["volumes"])
        .into_iter()
        .find(|v| v.contains(":/usr/local/etc/haproxy/haproxy.cfg"))
        .expect("haproxy.cfg mounted");
    assert!(mount.ends_with(":ro"), "{mount}");
    let host = mount
        .split(':')
        .next()
        .expect("host path")
        .trim_start_matches("./");
    let sections = haproxy_sections(&repo(host));
    assert!(section(&sections, "defaults").contains(&"mode tcp".to_string()));
    let proxy = section(&sections, "frontend proxy");
    let published = strings(&front["ports"]);
    let port = bind_port(proxy);
    assert!(
        published.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "{published:?}"
    );
    assert!(proxy.contains(&"default_backend replicas".to_string()));
    let backend = section(&sections, "backend replicas");
    let listen = config.server.listen.expect("plain listener").port();
    let servers: Vec<String> = backend
        .iter()
        .filter_map(|l| l.strip_prefix("server "))
        .map(String::from)
        .collect();
    let want: Vec<String> = replicas
        .iter()
        .map(|r| format!("{r} {r}:{listen}"))
        .collect();
    assert_eq!(servers, want);
    let defaults = backend
        .iter()
        .find_map(|l| l.strip_prefix("default-server "))
        .expect("default-server")
        .split(' ')
        .collect::<Vec<_>>();
    assert!(defaults.contains(&"send-proxy-v2"), "{defaults:?}");
    let admin_port = config.admin.listen.port().to_string();
    assert!(
        defaults
            .windows(3)
            .any(|w| w == ["check", "port", admin_port.as_str()]),
        "{defaults:?}"
    );
    let token = config
        .admin
        .token
        .as_deref()
        .expect("a token: the admin API is not on loopback");
    let check = backend
        .iter()
        .find(|l| l.starts_with("http-check send "))
        .expect("http-check send");
    assert!(check.contains("uri /healthz"), "{check}");
    assert!(check.contains(&format!("\"Bearer {token}\"")), "{check}");
    // The front's own health: compose asks HAProxy's monitor URI.
    let health = section(&sections, "frontend health");
    let uri = health
        .iter()
        .find_map(|l| l.strip_prefix("monitor-uri "))
        .expect("monitor-uri");
    let probe = health_command(front);
    assert_eq!(
        probe.last().map(String::as_str),
        Some(format!("http://127.0.0.1:{}{uri}", bind_port(health)).as_str())
    );
}

/// Every document of every manifest in `deploy/kubernetes`, by file.
fn kubernetes_manifests() -> Vec<(String, serde_yaml::Value)> {
    use serde::Deserialize;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = repo(&format!("deploy/kubernetes/{file}"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            docs.push((file.clone(), value));
        }
    }
    docs
}

fn kind<'a>(docs: &'a [(String, serde_yaml::Value)], kind: &str) -> &'a serde_yaml::Value {
    let found: Vec<_> = docs.iter().filter(|(_, d)| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    &found[0].1
}

#[test]
fn kubernetes_manifests_agree_with_the_image_and_the_config() {
    let docs = kubernetes_manifests();
    // kustomization.yaml lists every other manifest.
    let kustomization = kind(&docs, "Kustomization");
    let mut listed = strings(&kustomization["resources"]);
    listed.sort();
    let mut files: Vec<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] != "Kustomization")
        .map(|(f, _)| f.clone())
        .collect();
    files.dedup();
    assert_eq!(listed, files);

    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(deployment["spec"]["replicas"].as_u64().expect("replicas") >= 2);
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    let config_path = after(&args, "--config").expect("--config").to_string();

    // The config is the ConfigMap's config.yaml, mounted where --config
    // says, and valid.
    let mount = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap_or("-")))
        .expect("the config's directory is mounted");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let map = kind(&docs, "ConfigMap");
    assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
    let key = Path::new(&config_path)
        .file_name()
        .expect("file")
        .to_string_lossy();
    let config = Config::parse(
        map["data"][&*key]
            .as_str()
            .expect("config.yaml in the ConfigMap"),
    )
    .expect("the ConfigMap's config is valid");
    assert!(
        config.rate_limit.shared.redis_url.is_some(),
        "limits are shared"
    );
    assert!(
        config.store.url.starts_with("postgres://"),
        "one client table"
    );
    // No password in the ConfigMap: PostgreSQL's comes from a Secret.
    assert_eq!(tollgate::redact::url(&config.store.url), config.store.url);
    let env = c["env"].as_sequence().expect("env");
    let pgpassword = env
        .iter()
        .find(|e| e["name"] == "PGPASSWORD")
        .expect("PGPASSWORD");
    assert!(pgpassword["valueFrom"]["secretKeyRef"]["name"].is_string());
    // The admin API stays inside the pod, so it needs no token.
    assert!(config.admin.listen.ip().is_loopback());

    // Ready when `tollgate health` gets an answer from /healthz of this
    // config's admin API.
    for probe in ["readinessProbe", "livenessProbe"] {
        let command = strings(&c[probe]["exec"]["command"]);
        assert_eq!(command[..2], ["tollgate", "health"], "{probe}");
        assert_eq!(
            after(&command, "--config"),
            Some(config_path.as_str()),
            "{probe}"
        );
    }
    let port = c["ports"][0]["containerPort"]
        .as_u64()
        .expect("containerPort");
    assert_eq!(
        Some(port),
        config.server.listen.map(|a| u64::from(a.port()))
    );

    // Drain: the preStop sleep, then SIGTERM and drain_timeout, all within
    // the grace period.
    let sleep = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(sleep[0], "sleep");
    let sleep: u64 = sleep[1].parse().expect("seconds");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    assert!(
        grace > sleep + config.server.drain_timeout.as_secs(),
        "grace {grace} s for a {sleep} s sleep and a {:?} drain",
        config.server.drain_timeout
    );
    for what in ["requests", "limits"] {
        assert!(c["resources"][what]["memory"].is_string(), "{what}.memory");
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());

    // The image's user, as the Dockerfile makes it.
    let uid = instructions(&repo("Dockerfile"))
        .into_iter()
        .find_map(|i| {
            let args = i.args.split(' ').collect::<Vec<_>>();
            (i.name == "RUN" && args[0] == "useradd")
                .then(|| {
                    args.windows(2)
                        .find(|w| w[0] == "--uid")
                        .map(|w| w[1].to_string())
                })
                .flatten()
        })
        .expect("useradd --uid in the Dockerfile");
    assert_eq!(
        pod["spec"]["securityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string()),
        Some(uid)
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);

    // The Service and the PodDisruptionBudget select these pods; the
    // Service sends to the container's port and keeps client addresses.
    let service = kind(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    let target = &service["spec"]["ports"][0]["targetPort"];
    assert!(
        *target == c["ports"][0]["name"] || target.as_u64() == Some(port),
        "{target:?}"
    );
    if service["spec"]["type"] == "LoadBalancer" {
        assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    }
    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(
        pdb["spec"]["maxUnavailable"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "a drain may take a pod"
    );
}
