//! Operating tollgate: the admin API, its client table and its OpenAPI
//! document, the status page, the SQLite and PostgreSQL stores (replicas
//! sharing one table, `LISTEN`/`NOTIFY`), passwords kept out of every
//! output, the command line and the deployment files, and the real binary
//! under signals, crashes and a small open-file limit.

#[path = "../support"]
mod support {
    pub mod db;
    pub use db::*;
    pub mod net;
    pub use net::*;
    pub mod openapi;
    pub mod process;
    pub use process::*;
    pub mod tls;
    pub mod webdriver;
}

mod admin;
mod cli;
mod deploy;
mod durability;
mod fd_limit;
mod openapi;
mod reload;
mod replicas;
mod secrets;
mod shutdown;
mod status;
mod store;
mod tls_reload;
