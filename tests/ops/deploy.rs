//! Dockerfile and docker-compose.yml agree with each other and with the
//! config they mount. No Docker engine runs on our machines, so this is
//! the check we can make: parse both, compare ports, names and paths.

use std::collections::BTreeSet;
use std::path::Path;

use tollgate::config::Config;

fn repo(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_stops_with_sigterm() {
    let d = repo("Dockerfile");
    let instr = |name: &str| -> Vec<String> {
        d.lines()
            .map(str::trim)
            .filter(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l[name.len()..].trim().to_string())
            .collect()
    };
    assert_eq!(instr("FROM").len(), 2, "build and runtime stages");
    assert!(instr("FROM")[1].contains("slim"), "small runtime image");
    let user = instr("USER");
    assert_eq!(user.len(), 1);
    assert_ne!(user[0], "root");
    assert_eq!(instr("STOPSIGNAL"), vec!["SIGTERM"]);
    assert_eq!(instr("EXPOSE"), vec!["8080 8443 9090"]);
    assert!(instr("VOLUME")
        .iter()
        .any(|v| v.contains("/var/lib/tollgate")));
    // Every path the build stage copies exists in the repository.
    for copy in instr("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
                "COPY {src}: missing"
            );
        }
    }
    // The runtime stage copies the binary the build stage made: the
    // profile named in `cargo build --profile P` exists in Cargo.toml, and
    // its output directory is the one copied.
    let build = instr("RUN")
        .into_iter()
        .find(|r| r.starts_with("cargo build"))
        .expect("a cargo build step");
    let profile = build
        .split_whitespace()
        .skip_while(|w| *w != "--profile")
        .nth(1)
        .expect("cargo build --profile P");
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
fn compose_services_ports_and_config_agree() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&repo("docker-compose.yml")).expect("compose YAML");
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &serde_yaml::Value| k.as_str().unwrap_or_default().to_string();
    let names: BTreeSet<String> = services.keys().map(name).collect();
    for s in ["tollgate", "backend1", "backend2", "backend3"] {
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

    // Each configured backend is a compose service listening on that port.
    assert_eq!(config.backends.len(), 3);
    for b in &config.backends {
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
        let depends: Vec<&str> = svc["depends_on"]
            .as_sequence()
            .expect("depends_on")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for needed in ["postgres", "redis"] {
            assert!(depends.contains(&needed), "{replica}: {depends:?}");
        }
    }
}
