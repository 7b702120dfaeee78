//! Operating tollgate: the admin API and its client table, the SQLite and
//! PostgreSQL stores, the command line and the deployment files, and the
//! real binary under signals, crashes and a small open-file limit.

#[path = "../support"]
mod support {
    pub mod db;
    pub use db::*;
    pub mod net;
    pub use net::*;
    pub mod process;
    pub use process::*;
    pub mod tls;
}

mod admin;
mod cli;
mod deploy;
mod durability;
mod fd_limit;
mod reload;
mod shutdown;
mod store;
mod tls_reload;
