//! Reading `config.yaml`: the file (bounded in size and nesting before
//! the YAML parser sees it), each section parsed on its own so that one
//! bad section does not hide problems in another, and every problem
//! reported with its field path and a reason.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::schema::{BackendConfig, Config, CONFIG_ENV};
use crate::balancer::BackendUrl;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field (`rate_limit.default`), or the file.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Everything wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read.
    pub path: PathBuf,
    /// Each problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration {}:", self.path.display())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// Which file to read: `--config`, else `$TOLLGATE_CONFIG`, else `config.yaml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.yaml"))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |field: &str, reason: String| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                field: field.into(),
                reason,
            }],
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(&path.display().to_string(), format!("cannot read: {e}")))?;
        Self::parse_and_check_files(&text).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates config text, returning every problem found.
    /// Files the config names (TLS certificates) are not opened: see
    /// [`Config::parse_and_check_files`].
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        Self::parse_text(text, Files::Skip)
    }

    /// [`Config::parse`], and the files the config names (TLS
    /// certificates and keys) loaded as a start would load them; what
    /// [`Config::load`], and so `tollgate check`, does.
    pub fn parse_and_check_files(text: &str) -> Result<Self, Vec<Problem>> {
        Self::parse_text(text, Files::Check)
    }

    fn parse_text(text: &str, files: Files) -> Result<Self, Vec<Problem>> {
        let map = sections_of(text)?;
        let mut problems = Vec::new();
        if files == Files::Check {
            problems.extend(no_sections(&map));
        }
        // The demo's three backends are the default of a file that names
        // none; one that routes to pools of its own has no default pool
        // unless it lists `backends`.
        let routed = ["pools", "routes"].iter().any(|k| map.contains_key(*k));
        let mut config = Config {
            backends: if routed {
                Vec::new()
            } else {
                default_backends()
            },
            ..Config::default()
        };
        for (key, value) in map {
            let Some(name) = key.as_str() else {
                problems.push(Problem {
                    field: format!("{key:?}"),
                    reason: "section names are strings".into(),
                });
                continue;
            };
            match name {
                "server" => section(name, value, &mut config.server, &mut problems),
                "admin" => section(name, value, &mut config.admin, &mut problems),
                "backends" => section(name, value, &mut config.backends, &mut problems),
                "balancing" => section(name, value, &mut config.balancing, &mut problems),
                "proxy" => section(name, value, &mut config.proxy, &mut problems),
                "health_check" => section(name, value, &mut config.health_check, &mut problems),
                "rate_limit" => section(name, value, &mut config.rate_limit, &mut problems),
                "store" => section(name, value, &mut config.store, &mut problems),
                "log" => section(name, value, &mut config.log, &mut problems),
                "pools" => section(name, value, &mut config.pools, &mut problems),
                "routes" => section(name, value, &mut config.routes, &mut problems),
                "telemetry" => section(name, value, &mut config.telemetry, &mut problems),
                other => problems.push(Problem {
                    field: other.into(),
                    reason: "unknown section (expected server, admin, backends, balancing, \
                             proxy, health_check, rate_limit, store, log, pools, routes or telemetry)"
                        .into(),
                }),
            }
        }
        config.check(&mut problems, files);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

/// The file's top-level mapping, after the guards that keep a hostile
/// file from the YAML parser (size, nesting); an empty file is an empty
/// mapping.
fn sections_of(text: &str) -> Result<serde_yaml::Mapping, Vec<Problem>> {
    let file_problem = |reason: String| {
        vec![Problem {
            field: "(file)".into(),
            reason,
        }]
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(file_problem(format!(
            "{} bytes: a config file is at most {MAX_FILE_BYTES} bytes",
            text.len()
        )));
    }
    if let Some(line) = too_deep(text) {
        return Err(file_problem(format!(
            "line {line}: [ and {{ nested more than {MAX_FLOW_DEPTH} levels deep"
        )));
    }
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml_problem)?;
    match value {
        serde_yaml::Value::Null => Ok(serde_yaml::Mapping::new()),
        serde_yaml::Value::Mapping(m) => Ok(m),
        _ => Err(file_problem(
            "expected a mapping of sections (server:, backends:, ...)".into(),
        )),
    }
}

/// Whether validation opens the files a config names, and judges the
/// text as a file to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Files {
    /// The text alone (tests, configs meant for another machine, the
    /// all-defaults config code starts from).
    Skip,
    /// Load them as a start would, and refuse a file that says nothing
    /// of where to listen or where to send ([`no_sections`]).
    Check,
}

/// The sections that say where tollgate listens and where it sends.
const ESSENTIAL: [&str; 4] = ["server", "backends", "pools", "routes"];

/// A file with none of [`ESSENTIAL`] set (empty, only comments,
/// truncated to its `log:` section, or with everything indented under
/// one key) would run on defaults alone: 0.0.0.0:8080 to the demo's
/// backends on 127.0.0.1:9001-9003, which in production answers every
/// request 503. Such a file is not a config anyone meant to run, so
/// `check`, a start and a reload all refuse it (a reload keeps the
/// running config). An empty section (`server:` and nothing under it)
/// counts as not set.
fn no_sections(map: &serde_yaml::Mapping) -> Option<Problem> {
    let set = |key: &str| map.get(key).is_some_and(|v| !v.is_null());
    if ESSENTIAL.iter().any(|k| set(k)) {
        return None;
    }
    let found: Vec<&str> = map.keys().filter_map(serde_yaml::Value::as_str).collect();
    let found = if found.is_empty() {
        "the file has no keys (empty, or only comments)".to_owned()
    } else {
        format!("it has only {}", found.join(", "))
    };
    Some(Problem {
        field: "(file)".into(),
        reason: format!(
            "none of server, backends, pools or routes is set ({found}): a file that \
             says neither where to listen nor where to send would run on defaults \
             alone (every request 503 without the demo backends); an empty or \
             truncated file is refused, and a reload keeps the running config"
        ),
    })
}

/// Largest config file read.
const MAX_FILE_BYTES: usize = 1 << 20;

/// Deepest nesting of flow collections (`[`, `{`) accepted. The YAML
/// parser's time grows with the square of this depth (100,000 levels took
/// it 30-50 s), and a real config needs three or four.
const MAX_FLOW_DEPTH: usize = 64;

/// The line where `[`/`{` nesting first exceeds [`MAX_FLOW_DEPTH`], found
/// in one pass before the parser sees the text. Quoted scalars and
/// comments are skipped by YAML's rules for where they start (a quote or
/// `#` at the start of a token), so brackets in strings do not count.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut line = 1;
    // Whether the previous byte ends a token, so a quote or `#` here
    // starts a quoted scalar or a comment.
    let mut token_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\n' => line += 1,
            b'#' if token_start => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if token_start => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if b == b'"' => i += 1,
                        b'\n' => line += 1,
                        q if q == b => {
                            // '' inside single quotes is an escaped quote.
                            if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        token_start = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',');
        i += 1;
    }
    None
}

/// A YAML error as a problem. A number too large for any integer type
/// fails in the parser, with the field's path in the message; that one is
/// reported on its field rather than as broken YAML.
fn yaml_problem(e: serde_yaml::Error) -> Vec<Problem> {
    let text = e.to_string();
    if let Some((field, rest)) = text.split_once(": invalid type: integer `") {
        if let Some((number, _)) = rest.split_once('`') {
            let reason = if field.ends_with("capacity") {
                format!(
                    "{number} is too large: capacity must be at most {}",
                    u32::MAX
                )
            } else {
                format!("{number} is too large a number")
            };
            return vec![Problem {
                field: field.to_owned(),
                reason,
            }];
        }
    }
    vec![Problem {
        field: "(file)".into(),
        reason: format!("not valid YAML: {text}"),
    }]
}

fn default_backends() -> Vec<BackendConfig> {
    (9001..=9003)
        .filter_map(|port| BackendUrl::parse(&format!("http://127.0.0.1:{port}")).ok())
        .map(BackendConfig::new)
        .collect()
}

/// Parses one section into `slot`, or records the first problem in it with
/// its full path.
fn section<T: DeserializeOwned>(
    name: &str,
    value: serde_yaml::Value,
    slot: &mut T,
    problems: &mut Vec<Problem>,
) {
    // An empty section (`log:` with nothing under it) keeps the defaults.
    if value.is_null() {
        return;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => *slot = parsed,
        Err(e) => {
            let inner = e.path().to_string();
            let field = if inner == "." || inner.is_empty() {
                name.to_string()
            } else if inner.starts_with('[') {
                format!("{name}{inner}")
            } else {
                format!("{name}.{inner}")
            };
            problems.push(Problem {
                field,
                reason: e.into_inner().to_string(),
            });
        }
    }
}
