//! Operating tollgate: the admin API, its client table and its OpenAPI
//! document, the status page, the SQLite and PostgreSQL stores (replicas
//! sharing one table, `LISTEN`/`NOTIFY`), passwords kept out of every
//! output, the command line, the deployment files, the metrics it exports
//! and the documentation (checked against the config's types), and the
//! real binary under signals, crashes and a small open-file limit.

#[path = "../support"]
mod support {
    pub mod db;
    pub use db::*;
    pub mod fifo;
    pub mod metrics;
    pub mod net;
    pub use net::*;
    pub mod openapi;
    pub mod process;
    pub use process::*;
    pub mod tls;
    pub mod webdriver;
}

mod admin;
mod admin_guard;
mod bad_rows;
mod cli;
mod deploy;
mod docs;
mod durability;
mod fd_limit;
mod metrics;
mod openapi;
mod paging;
mod rates;
mod reload;
mod replicas;
mod routes;
mod secrets;
mod shutdown;
mod status;
mod store;
mod tls_reload;
