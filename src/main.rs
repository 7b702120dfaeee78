//! The `tollgate` binary: parses the command line and hands over to the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tollgate::admin::client::{self as admin_client, BackendRef, BackendsCommand, ClientsCommand};

/// mimalloc instead of glibc malloc: allocation was about a tenth of the
/// proxy's CPU profile under load, and mimalloc's thread-local free lists
/// suit the per-thread request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's freed pages whose purge delay has passed
/// (see `tollgate::memory`).
fn collect_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any
    // thread at any time; it only walks this thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

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
        /// Serve HTTP/2 cleartext with prior knowledge as well (for pools
        /// with `protocol: http2`).
        #[arg(long)]
        h2c: bool,
    },
    /// Validate the config and exit 0, or print every problem and exit 2.
    Check,
    /// Probe a running tollgate for a container health check: exit 0 when
    /// its admin API answers /healthz (address and token from the config),
    /// 1 when it does not.
    Health {
        /// Probe this URL instead (e.g. a demo backend's /health); token
        /// from $TOLLGATE_ADMIN_TOKEN.
        #[arg(long)]
        url: Option<String>,
    },
    /// List, drain or enable backends of a running tollgate (admin API;
    /// token from $TOLLGATE_ADMIN_TOKEN). Exit 1 when the API refused.
    Backends {
        #[command(flatten)]
        api: AdminArgs,
        #[command(subcommand)]
        action: BackendsAction,
    },
    /// List the pools of a running tollgate: strategy, backends, timeouts,
    /// retries (admin API; token from $TOLLGATE_ADMIN_TOKEN).
    Pools {
        #[command(flatten)]
        api: AdminArgs,
        #[command(subcommand)]
        action: ListAction,
    },
    /// List the routes of a running tollgate in the order they are tried:
    /// what each matches, its pool, its rewrite, its request and 429
    /// counts (admin API; token from $TOLLGATE_ADMIN_TOKEN).
    Routes {
        #[command(flatten)]
        api: AdminArgs,
        #[command(subcommand)]
        action: ListAction,
    },
    /// List, show, add, change or delete clients of a running tollgate
    /// (admin API; token from $TOLLGATE_ADMIN_TOKEN). Exit 1 when the API
    /// refused.
    Clients {
        #[command(flatten)]
        api: AdminArgs,
        #[command(subcommand)]
        action: ClientsAction,
    },
}

/// Where the admin API is and how to print its answers. Global, so they
/// go before or after the action (`clients --json list`, `clients list
/// --json`).
#[derive(Debug, Args)]
struct AdminArgs {
    /// The admin API.
    #[arg(long, global = true, default_value = admin_client::DEFAULT_ADMIN)]
    admin: String,
    /// Print the API's JSON as it came.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ClientsAction {
    /// Every client: id, capacity, rate, current tokens.
    List,
    /// One client.
    Get {
        /// The client's id (its API key).
        id: String,
    },
    /// A new client with its own limits.
    Add {
        /// The client's id (its API key).
        id: String,
        #[command(flatten)]
        limits: LimitsArgs,
    },
    /// Replace a client's limits (both, as for add).
    Set {
        /// The client's id (its API key).
        id: String,
        #[command(flatten)]
        limits: LimitsArgs,
    },
    /// Remove a client: it gets the default limits again.
    Delete {
        /// The client's id (its API key).
        id: String,
    },
}

/// A client's limits: a capacity and exactly one rate.
#[derive(Debug, Args)]
struct LimitsArgs {
    /// Bucket size (burst), in tokens.
    #[arg(long, value_name = "N")]
    capacity: u64,
    #[command(flatten)]
    rate: RateArgs,
}

/// Exactly one of the two spellings of a rate.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct RateArgs {
    /// Refill rate in tokens per second.
    // Negative numbers are values, not flags: the parser says why -1 is
    // refused, in the words the server would use.
    #[arg(
        long,
        value_name = "R",
        allow_negative_numbers = true,
        value_parser = admin_client::parse_rate_per_sec
    )]
    rate_per_sec: Option<f64>,
    /// Refill rate as N/unit (s, min, hour, day), no spaces.
    // `-0/s` is a value too, judged by the parser like any other.
    #[arg(
        long,
        value_name = "N/UNIT",
        allow_hyphen_values = true,
        value_parser = admin_client::parse_rate
    )]
    rate: Option<String>,
}

impl LimitsArgs {
    fn into_limits(self) -> admin_client::ClientLimits {
        let rate = match (self.rate.rate_per_sec, self.rate.rate) {
            (Some(r), None) => admin_client::Rate::PerSec(r),
            (None, Some(r)) => admin_client::Rate::Unit(r),
            // The group already refuses these; should it ever let one
            // through, it is still a usage error (exit 2), not a panic.
            _ => <Cli as clap::CommandFactory>::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "give exactly one of --rate-per-sec and --rate",
                )
                .exit(),
        };
        admin_client::ClientLimits {
            capacity: self.capacity,
            rate,
        }
    }
}

#[derive(Debug, Subcommand)]
enum BackendsAction {
    /// Every backend of every pool: name, pool, state, health, weight,
    /// load, URL.
    List,
    /// No new requests to NAME; in-flight ones finish.
    Drain {
        /// The backend's name.
        name: String,
        /// Its pool; needed when more than one pool has a backend NAME.
        #[arg(long)]
        pool: Option<String>,
    },
    /// NAME back in rotation.
    Enable {
        /// The backend's name.
        name: String,
        /// Its pool; needed when more than one pool has a backend NAME.
        #[arg(long)]
        pool: Option<String>,
    },
}

/// A read-only group's one action.
#[derive(Debug, Subcommand)]
enum ListAction {
    /// Show them all.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tollgate::memory::on_collect(collect_freed_memory);
    if cli.check_config {
        return tollgate::cli::check(cli.config);
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => tollgate::cli::serve(cli.config),
        Command::Demo => tollgate::cli::demo(cli.config),
        Command::Backend { listen, name, h2c } => tollgate::cli::backend(listen, name, h2c),
        Command::Check => tollgate::cli::check(cli.config),
        Command::Health { url } => tollgate::cli::health(cli.config, url),
        Command::Backends { api, action } => {
            let command = match action {
                BackendsAction::List => BackendsCommand::List,
                BackendsAction::Drain { name, pool } => {
                    BackendsCommand::Drain(BackendRef { name, pool })
                }
                BackendsAction::Enable { name, pool } => {
                    BackendsCommand::Enable(BackendRef { name, pool })
                }
            };
            tollgate::cli::backends(&api.admin, api.json, &command)
        }
        Command::Pools {
            api,
            action: ListAction::List,
        } => tollgate::cli::pools(&api.admin, api.json),
        Command::Routes {
            api,
            action: ListAction::List,
        } => tollgate::cli::routes(&api.admin, api.json),
        Command::Clients { api, action } => {
            let command = match action {
                ClientsAction::List => ClientsCommand::List,
                ClientsAction::Get { id } => ClientsCommand::Get(id),
                ClientsAction::Add { id, limits } => ClientsCommand::Add(id, limits.into_limits()),
                ClientsAction::Set { id, limits } => ClientsCommand::Set(id, limits.into_limits()),
                ClientsAction::Delete { id } => ClientsCommand::Delete(id),
            };
            tollgate::cli::clients(&api.admin, api.json, &command)
        }
    }
}
