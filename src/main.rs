//! The `tollgate` binary: parses the command line and hands over to the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: allocation was about a tenth of the
/// proxy's CPU profile under load, and mimalloc's thread-local free lists
/// suit the per-thread request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Layer-7 HTTP load balancer with per-client rate limiting.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (default: $TOLLGATE_CONFIG, else config.yaml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Validate the config and exit, like `tollgate check` (the spelling
    /// the original brief uses).
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the balancer (the default).
    Serve,
    /// Start a demo backend for every loopback backend, then the balancer.
    Demo,
    /// Run one demo backend.
    Backend {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Name reported in responses (default: the listen address).
        #[arg(long)]
        name: Option<String>,
    },
    /// Validate the config and exit 0, or print every problem and exit 2.
    Check,
    /// List, drain or enable backends of a running tollgate (admin API;
    /// token from $TOLLGATE_ADMIN_TOKEN). Exit 1 when the API refused.
    Backends {
        /// The admin API.
        #[arg(long, default_value = tollgate::admin::client::DEFAULT_ADMIN)]
        admin: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: BackendsAction,
    },
}

#[derive(Debug, Subcommand)]
enum BackendsAction {
    /// Every backend: name, state, health, weight, load, URL.
    List,
    /// No new requests to NAME; in-flight ones finish.
    Drain {
        /// The backend's name.
        name: String,
    },
    /// NAME back in rotation.
    Enable {
        /// The backend's name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check_config {
        return tollgate::cli::check(cli.config);
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => tollgate::cli::serve(cli.config),
        Command::Demo => tollgate::cli::demo(cli.config),
        Command::Backend { listen, name } => tollgate::cli::backend(listen, name),
        Command::Check => tollgate::cli::check(cli.config),
        Command::Backends {
            admin,
            json,
            action,
        } => {
            use tollgate::admin::client::BackendsCommand;
            let command = match action {
                BackendsAction::List => BackendsCommand::List,
                BackendsAction::Drain { name } => BackendsCommand::Drain(name),
                BackendsAction::Enable { name } => BackendsCommand::Enable(name),
            };
            tollgate::cli::backends(&admin, json, &command)
        }
    }
}
