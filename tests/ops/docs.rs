//! The documentation against the code: `docs/configuration.md` names
//! every key the config accepts and no key it does not, and every
//! ```` ```yaml ```` block in the README and `docs/` is a config that
//! `Config::parse` accepts, as are the tollgate configs the side-by-side
//! benchmark (`benches/compare/`) runs.
//!
//! The key paths come from the config types themselves, not from a list
//! kept here: [`keys_of`] feeds each section's `Deserialize` a
//! deserializer that records the field names every struct declares
//! (serde hands them to `deserialize_struct`), then walks into each
//! field in turn. It reaches keys no default config holds (`server.tls.*`
//! under a `None`, `rate_limit.rules[].*` under an empty list), which
//! walking a serialized default could not.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess};
use serde::de::{Deserializer, Visitor};
use tollgate::config::{
    AdminConfig, BackendConfig, BalancingConfig, Config, HealthCheckConfig, LogConfig, PoolConfig,
    ProxyConfig, RateLimitConfig, RouteConfig, ServerConfig, StoreConfig, TelemetryConfig,
};

fn repo(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Every key path under each top-level section, the sections included.
fn all_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    keys.extend(keys_of::<ServerConfig>("server"));
    keys.extend(keys_of::<AdminConfig>("admin"));
    keys.extend(keys_of::<Vec<BackendConfig>>("backends"));
    keys.extend(keys_of::<BalancingConfig>("balancing"));
    keys.extend(keys_of::<ProxyConfig>("proxy"));
    keys.extend(keys_of::<HealthCheckConfig>("health_check"));
    keys.extend(keys_of::<RateLimitConfig>("rate_limit"));
    keys.extend(keys_of::<StoreConfig>("store"));
    keys.extend(keys_of::<LogConfig>("log"));
    keys.extend(keys_of::<std::collections::BTreeMap<String, PoolConfig>>(
        "pools",
    ));
    keys.extend(keys_of::<Vec<RouteConfig>>("routes"));
    keys.extend(keys_of::<TelemetryConfig>("telemetry"));
    let sections: BTreeSet<String> = top_level_fields(&format!("{:?}", Config::default()));
    for s in &sections {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("{s}.")) || k.starts_with(&format!("{s}[]"))),
            "Config has a section `{s}` that all_keys() does not trace: add it above"
        );
    }
    keys.extend(sections);
    keys
}

/// The field names of the outermost struct in a `{:?}` rendering
/// (`Config { server: ..., admin: ... }`): how a new section added to
/// `Config` is noticed without a second list of sections.
fn top_level_fields(debug: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let mut depth = 0usize;
    let mut word = String::new();
    let mut chars = debug.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth = depth.saturating_sub(1),
            ':' if depth == 1 && chars.peek() == Some(&' ') && !word.is_empty() => {
                fields.insert(word.clone());
            }
            _ => {}
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else if c != ':' {
            word.clear();
        }
    }
    fields
}

/// Why a trace stops: it never builds a value.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("trace stops here")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

/// The walk over one type: which field to enter at each struct depth in
/// the current run, how many fields each struct on that run's way had,
/// and every key seen so far.
#[derive(Default)]
struct Walk {
    plan: Vec<usize>,
    widths: Vec<usize>,
    keys: BTreeSet<String>,
}

/// Every key path of `T` under `prefix`. One run descends into one field
/// per struct (a derived `Deserialize` gives up on the first value that
/// fails, and every leaf fails here, since no value is ever made); runs
/// repeat, depth first, until every field of every struct was entered.
fn keys_of<T: DeserializeOwned>(prefix: &str) -> BTreeSet<String> {
    let walk = RefCell::new(Walk::default());
    loop {
        walk.borrow_mut().widths.clear();
        let _ = T::deserialize(Tracer {
            walk: &walk,
            path: prefix.to_string(),
            depth: 0,
        });
        let mut w = walk.borrow_mut();
        let reached = w.widths.len();
        let next = (0..reached).rev().find(|&d| w.plan[d] + 1 < w.widths[d]);
        match next {
            Some(d) => {
                w.plan.truncate(d + 1);
                w.plan[d] += 1;
            }
            None => break,
        }
    }
    walk.into_inner().keys
}

struct Tracer<'w> {
    walk: &'w RefCell<Walk>,
    path: String,
    depth: usize,
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    /// A map of names (`pools`): one entry, named `NAME`.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_map(OneField(Some((
            "NAME",
            Tracer {
                walk: self.walk,
                path: format!("{}.NAME", self.path),
                depth: self.depth,
            },
        ))))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_seq(OneElement(Some(Tracer {
            walk: self.walk,
            path: format!("{}[]", self.path),
            depth: self.depth,
        })))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let field = {
            let mut w = self.walk.borrow_mut();
            for f in fields {
                w.keys.insert(format!("{}.{f}", self.path));
            }
            if w.plan.len() <= self.depth {
                w.plan.push(0);
            }
            w.widths.push(fields.len());
            *fields.get(w.plan[self.depth]).ok_or(Stop)?
        };
        visitor.visit_map(OneField(Some((
            field,
            Tracer {
                walk: self.walk,
                path: format!("{}.{field}", self.path),
                depth: self.depth + 1,
            },
        ))))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier
        ignored_any
    }
}

/// A list of one element: the element type's keys, under `[]`.
struct OneElement<'w>(Option<Tracer<'w>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Stop> {
        self.0.take().map(|t| seed.deserialize(t)).transpose()
    }
}

/// A map holding only the field this run enters.
struct OneField<'w>(Option<(&'static str, Tracer<'w>)>);

impl<'de> MapAccess<'de> for OneField<'_> {
    type Error = Stop;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match &self.0 {
            Some((field, _)) => seed.deserialize(field.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        let (_, tracer) = self.0.take().ok_or(Stop)?;
        seed.deserialize(tracer)
    }
}

/// The key paths the tables of `configuration.md` describe: the
/// backquoted names in each row's first cell.
fn documented_keys(doc: &str) -> BTreeSet<String> {
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_tracer_finds_keys_under_none_and_empty_lists() {
    let keys = all_keys();
    for k in [
        "server.tls.certificates[].key",
        "rate_limit.rules[].match.path_prefix",
        "rate_limit.rules[].limits.rate",
        "rate_limit.default.rate_per_sec",
        "health_check.passive.ejection_time",
        "backends[].weight",
        "log",
    ] {
        assert!(keys.contains(k), "{k} not traced; traced: {keys:#?}");
    }
    assert!(!keys.iter().any(|k| k.ends_with(".secs")), "{keys:#?}");
}

#[test]
fn configuration_md_lists_every_key_the_config_accepts() {
    let doc = repo("docs/configuration.md");
    let documented = documented_keys(&doc);
    let keys = all_keys();
    let missing: Vec<&String> = keys.iter().filter(|k| !documented.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys the config accepts that docs/configuration.md's tables do not list: {missing:#?}"
    );
    let stale: Vec<&String> = documented.iter().filter(|k| !keys.contains(*k)).collect();
    assert!(
        stale.is_empty(),
        "keys docs/configuration.md's tables list that the config does not accept: {stale:#?}"
    );
}

/// The ```` ```yaml ```` blocks of a Markdown text, with the line each
/// starts on.
fn yaml_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some((i + 1, String::new())),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_yaml_example_in_the_docs_is_a_valid_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files = vec!["README.md".to_string()];
    for entry in std::fs::read_dir(&dir).expect("docs/") {
        let name = entry.expect("docs/ entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    let mut checked = 0;
    for file in &files {
        for (line, block) in yaml_blocks(&repo(file)) {
            if let Err(problems) = Config::parse(&block) {
                panic!("{file}:{line}: the yaml example is not a valid config: {problems:#?}");
            }
            checked += 1;
        }
    }
    // The README's example, the rules, TLS and PROXY protocol examples.
    assert!(checked >= 4, "only {checked} yaml blocks found");
}

/// `benches/compare/run.py` fills only these placeholders: ports, paths
/// and Redis's address, so the committed files are the configs it runs.
const COMPARE_PLACEHOLDERS: [(&str, &str); 10] = [
    ("@PORT@", "18080"),
    ("@TLS_PORT@", "18443"),
    ("@ADMIN_PORT@", "18081"),
    ("@B0@", "19001"),
    ("@B1@", "19002"),
    ("@B2@", "19003"),
    ("@WORK@", "/tmp/tg-compare"),
    ("@CERT@", "/tmp/tg-compare/tls/site.pem"),
    ("@KEY@", "/tmp/tg-compare/tls/site.key"),
    ("@REDIS_URL@", "redis://127.0.0.1:6379"),
];

#[test]
fn the_compare_bench_runs_valid_tollgate_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/compare");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("benches/compare/") {
        let name = entry.expect("benches/compare entry").file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("tollgate") && name.ends_with(".yaml.in")) {
            continue;
        }
        let mut text = repo(&format!("benches/compare/{name}"));
        for (placeholder, value) in COMPARE_PLACEHOLDERS {
            text = text.replace(placeholder, value);
        }
        assert!(
            !text
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains('@')),
            "{name}: a placeholder run.py does not fill"
        );
        if let Err(problems) = Config::parse(&text) {
            panic!("benches/compare/{name} is not a valid config: {problems:#?}");
        }
        checked += 1;
    }
    // Alone, access log, 1 route, 50 routes, lease.
    assert_eq!(checked, 5, "tollgate configs in benches/compare");
}

#[test]
fn a_stale_key_in_a_yaml_example_is_caught() {
    let doc = "text\n```yaml\nrate_limit:\n  defualt: {capacity: 1, rate_per_sec: 1}\n```\n";
    let blocks = yaml_blocks(doc);
    assert_eq!(blocks.len(), 1);
    assert!(Config::parse(&blocks[0].1).is_err());
}

/// The anchors GitHub gives a Markdown file's headings: lower case, spaces
/// to `-`, punctuation but `-` and `_` dropped, a repeated one numbered.
fn anchors(doc: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !fenced) else {
            continue;
        };
        let slug: String = title
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    seen
}

#[test]
fn every_link_between_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let dir = file.parent().expect("in a directory");
        for target in text.split("](").skip(1).filter_map(|t| t.split(')').next()) {
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            checked += 1;
            let Ok(linked_text) = std::fs::read_to_string(&linked) else {
                if !linked.exists() {
                    broken.push(format!("{}: {target}: no such file", file.display()));
                }
                continue;
            };
            if !anchor.is_empty() && !anchors(&linked_text).contains(anchor) {
                broken.push(format!("{}: {target}: no such heading", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(checked > 50, "only {checked} links found");
}

/// Where the limits of persistence are documented, the loss a kill -9
/// between snapshots causes is stated with its measured figure and the
/// command that measured it (issue 23, item 20; the measurement is
/// `durability::kill_9_between_snapshots_hands_back_the_spending_since_the_last_one`).
#[test]
fn the_crash_bound_between_snapshots_is_stated_with_its_figure() {
    let ops = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let (_, section) = ops
        .split_once("**A crash between snapshots.**")
        .expect("the crash bound is documented under Persistence");
    let section = section.split("\n- ").next().unwrap_or(section);
    for needed in [
        "store.snapshot_interval",
        "durability::kill_9_between",
        "20 handed back",
    ] {
        assert!(
            section.contains(needed),
            "{needed:?} missing from: {section}"
        );
    }
}
