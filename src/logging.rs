//! The process's log output, and switching its level and format while it
//! runs (config reload).
//!
//! The subscriber is built once, with the level filter and the line
//! formatter each behind a `tracing_subscriber::reload` layer, so a reload
//! swaps them without losing a line. The handles live in a process-wide
//! cell: there is one subscriber per process, and the reload step must
//! reach it from wherever the reload was asked for.

use std::sync::OnceLock;

use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// The filter layer, directly on the registry.
type FilterLayer = reload::Layer<EnvFilter, Registry>;
/// What the format layer sits on.
type Filtered = tracing_subscriber::layer::Layered<FilterLayer, Registry>;
/// A text or JSON line formatter, boxed so either fits one reload slot.
type FormatLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// Handles to the installed subscriber's swappable parts.
struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<FormatLayer, Filtered>,
    /// `RUST_LOG` was set at start: it keeps overriding `log.level`.
    env_override: bool,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Why the log settings could not be switched.
#[derive(Debug, thiserror::Error)]
pub enum LogReloadError {
    /// [`init`] did not install the subscriber (an embedding program, or
    /// a test, installed its own).
    #[error("the log output was not set up by tollgate; log settings cannot change")]
    NotInstalled,
    /// The subscriber is gone (the process is exiting).
    #[error("log settings not switched: {0}")]
    Reload(#[source] reload::Error),
}

/// Whether a level change was applied or `RUST_LOG` keeps precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelSource {
    /// `log.level` is in effect.
    Config,
    /// `RUST_LOG` was set at start and still decides.
    Environment,
}

fn filter_for(log: &LogConfig) -> EnvFilter {
    EnvFilter::new(log.level.0.as_str().to_ascii_lowercase())
}

fn format_for(format: LogFormat) -> FormatLayer {
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json().flatten_event(true)),
    }
}

/// Sets up `tracing` output: `log.level` unless `RUST_LOG` says otherwise,
/// text or JSON lines on stderr. A second call, or a subscriber installed
/// by someone else, leaves the first one in place.
pub fn init(log: &LogConfig) {
    let env = EnvFilter::try_from_default_env().ok();
    let env_override = env.is_some();
    let (filter, filter_handle) = reload::Layer::new(env.unwrap_or_else(|| filter_for(log)));
    let (format, format_handle) = reload::Layer::new(format_for(log.format));
    if tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
        .is_ok()
    {
        let _ = HANDLES.set(Handles {
            filter: filter_handle,
            format: format_handle,
            env_override,
        });
    }
}

/// Switches to `log`'s level and format; lines logged from now on follow
/// them.
pub fn apply(log: &LogConfig) -> Result<LevelSource, LogReloadError> {
    let handles = HANDLES.get().ok_or(LogReloadError::NotInstalled)?;
    handles
        .format
        .reload(format_for(log.format))
        .map_err(LogReloadError::Reload)?;
    if handles.env_override {
        return Ok(LevelSource::Environment);
    }
    handles
        .filter
        .reload(filter_for(log))
        .map_err(LogReloadError::Reload)?;
    Ok(LevelSource::Config)
}
