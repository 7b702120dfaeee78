//! What each command-line command does; `main.rs` only parses arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config};

/// Exit status for an invalid configuration.
pub const EXIT_CONFIG: u8 = 2;

fn load(path: Option<PathBuf>) -> Result<(Config, PathBuf), ExitCode> {
    let path = config::resolve_path(path);
    match Config::load(&path) {
        Ok(config) => Ok((config, path)),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `tollgate check`: validate, print every problem, exit 0 or 2.
pub fn check(path: Option<PathBuf>) -> ExitCode {
    let path = config::resolve_path(path);
    match Config::load(&path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Loads the config, sets up logging and the runtime: what `serve` and
/// `demo` both need before anything listens. The path is kept for
/// reloads.
fn prepare(path: Option<PathBuf>) -> Result<(Config, PathBuf, tokio::runtime::Runtime), ExitCode> {
    let (config, path) = load(path)?;
    crate::app::init_logging(&config.log);
    Ok((config, path, runtime()?))
}

/// `tollgate serve`: run the balancer until a shutdown signal.
pub fn serve(path: Option<PathBuf>) -> ExitCode {
    match prepare(path) {
        Ok((config, path, rt)) => {
            finish(rt.block_on(crate::app::run_with_file(&config, Some(path))))
        }
        Err(code) => code,
    }
}

/// `tollgate demo`: a demo backend for every loopback backend of every
/// pool, then the balancer, in one process.
pub fn demo(path: Option<PathBuf>) -> ExitCode {
    let (config, path, rt) = match prepare(path) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    rt.block_on(async {
        if let Err(code) = start_demo_backends(&config).await {
            return code;
        }
        finish(crate::app::run_with_file(&config, Some(path)).await)
    })
}

/// Starts one demo backend for each loopback `http://` address of every
/// pool's backends (the top-level `backends` are the pool `default`),
/// named as the config names it, so its answers say which backend, and
/// so which pool, served a request. An address two pools share gets one
/// backend. An `https://` backend is left to run on its own: demo
/// backends speak plain HTTP.
async fn start_demo_backends(config: &Config) -> Result<(), ExitCode> {
    let mut started = std::collections::HashSet::new();
    for pool in config.pool_specs() {
        for backend in pool
            .backends
            .iter()
            .filter(|b| b.url.is_loopback() && b.url.scheme == crate::balancer::Scheme::Http)
        {
            let authority = backend
                .url
                .authority
                .as_str()
                .replace("localhost", "127.0.0.1");
            if !started.insert(authority.clone()) {
                continue;
            }
            let listener = tokio::net::TcpListener::bind(&authority)
                .await
                .map_err(|e| {
                    eprintln!("cannot start demo backend on {authority}: {e}");
                    ExitCode::FAILURE
                })?;
            let name = backend.name.to_string();
            tracing::info!(listen = %authority, %name, pool = %pool.name, "demo backend listening");
            // Both protocols, so `protocol: http2` pools work here too.
            tokio::spawn(crate::demo::serve_with(
                listener,
                name,
                true,
                std::future::pending(),
            ));
        }
    }
    Ok(())
}

/// `tollgate backend`: one demo backend; `h2c`: HTTP/2 with prior
/// knowledge as well as HTTP/1.1.
pub fn backend(listen: SocketAddr, name: Option<String>, h2c: bool) -> ExitCode {
    crate::app::init_logging(&config::LogConfig::default());
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let name = name.unwrap_or_else(|| listen.to_string());
        tracing::info!(%listen, %name, h2c, "demo backend listening");
        crate::demo::serve_with(listener, name, h2c, async {
            let _ = crate::shutdown::os_signal().await;
        })
        .await;
        ExitCode::SUCCESS
    })
}

/// `tollgate backends list | drain NAME [--pool POOL] | enable NAME
/// [--pool POOL]`: exit 0, 1 when the API refused (its message printed)
/// or could not be reached.
pub fn backends(
    admin: &str,
    json: bool,
    command: &crate::admin::client::BackendsCommand,
) -> ExitCode {
    admin_command(crate::admin::client::backends(
        admin,
        admin_token().as_deref(),
        command,
        json,
    ))
}

/// `tollgate pools list`: exit 0, 1 when the API refused (its message
/// printed) or could not be reached, 2 for a bad `--admin`.
pub fn pools(admin: &str, json: bool) -> ExitCode {
    admin_command(crate::admin::client::pools(
        admin,
        admin_token().as_deref(),
        json,
    ))
}

/// `tollgate routes list`: exit 0, 1 when the API refused (its message
/// printed) or could not be reached, 2 for a bad `--admin`.
pub fn routes(admin: &str, json: bool) -> ExitCode {
    admin_command(crate::admin::client::routes(
        admin,
        admin_token().as_deref(),
        json,
    ))
}

/// `tollgate clients list | get ID | add ID | set ID | delete ID`: exit
/// 0, 1 when the API refused (its message printed) or could not be
/// reached, 2 for a bad `--admin`.
pub fn clients(
    admin: &str,
    json: bool,
    command: &crate::admin::client::ClientsCommand,
) -> ExitCode {
    admin_command(crate::admin::client::clients(
        admin,
        admin_token().as_deref(),
        command,
        json,
    ))
}

/// `tollgate health [--url URL]`: exit 0 when a running tollgate's admin
/// API answers `/healthz` (where the config says it listens, with its
/// token), or `url` answers 2xx; 1 when it does not, saying why; 2 for
/// an invalid config or URL.
pub fn health(path: Option<PathBuf>, url: Option<String>) -> ExitCode {
    let (url, token) = match url {
        Some(url) => (url, admin_token()),
        None => match load(path) {
            Ok((config, _)) => (
                crate::probe::healthz_url(config.admin.listen),
                config.admin.token.or_else(admin_token),
            ),
            Err(code) => return code,
        },
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::probe::probe(
        &url,
        token.as_deref(),
        crate::probe::TIMEOUT,
    )) {
        Ok(status) => {
            println!("healthy: {url} answered {status}");
            ExitCode::SUCCESS
        }
        Err(e @ crate::probe::ProbeError::BadUrl(_)) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The admin token from the environment; empty counts as none.
fn admin_token() -> Option<String> {
    std::env::var(crate::admin::client::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}

/// Runs one admin API command: its output on stdout, or its error on
/// stderr with the error's exit status.
fn admin_command(
    command: impl std::future::Future<Output = Result<String, crate::admin::client::AdminClientError>>,
) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(command) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn finish(result: Result<crate::proxy::server::Drained, crate::app::StartError>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
