//! `config.yaml`: every setting, its default, and its validation.
//!
//! Loading happens before any port is opened, and a loaded [`Config`]
//! holds only usable values. One file per job:
//!
//! - [`schema`]: the serde types of every section, their defaults, and the
//!   parsers of values with their own syntax (durations, limits).
//! - [`load`]: reading the file, section by section, collecting every
//!   problem with its field path (`rate_limit.default.capacity`).
//! - [`validate`]: rules across fields, one function per section.
//! - [`convert`]: the running parts' settings made from a valid config.

mod convert;
mod load;
mod schema;
mod validate;

pub use load::{resolve_path, ConfigError, Problem};
pub use schema::*;
pub use validate::{MAX_BACKEND_NAME, MAX_HEADER_BYTES_RANGE};

#[cfg(test)]
mod tests;
