//! Checks real answers of the admin API against the OpenAPI document the
//! server serves, so a document that drifts from the handlers fails a test.
//!
//! The schema checker covers the part of JSON Schema that utoipa emits
//! for tollgate's types (`type`, `properties`, `required`,
//! `additionalProperties`, `items`, `$ref`, `enum`, `oneOf`/`anyOf`/
//! `allOf`, numeric and length bounds, `pattern`, integer formats) and
//! refuses any other keyword, so a schema it cannot judge fails instead
//! of passing unread. One rule is stricter than JSON Schema: an object
//! whose schema says `type: object` and lists `properties` may carry no
//! others unless `additionalProperties` allows them, so a field sent but
//! not documented fails too. (A `oneOf` branch that only constrains some
//! properties is open, as JSON Schema has it; an `allOf` of partial
//! object schemas would need their union: utoipa emits none for
//! tollgate's types, and one would fail loudly, not pass.)
//!
//! Not the `jsonschema` crate (0.61): 26 more packages, itself included,
//! without its default features (a regex engine, big-number fractions,
//! URI parsing), 44 with them (aws-lc-sys's C build and a second reqwest
//! among them), for one local document.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

/// One documented answer: path template, method (lower case), status.
pub type Answer = (String, String, u16);

/// The document and the answers checked against it so far.
pub struct Spec {
    doc: Value,
    seen: BTreeSet<Answer>,
}

impl Spec {
    /// Over `doc`, a parsed OpenAPI 3.1 document.
    pub fn new(doc: Value) -> Self {
        Self {
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Every (path, method, status) the document lists.
    pub fn documented(&self) -> BTreeSet<Answer> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                for status in op["responses"]
                    .as_object()
                    .into_iter()
                    .flat_map(|r| r.keys())
                {
                    let status = status
                        .parse()
                        .unwrap_or_else(|_| panic!("{method} {path}: status {status:?}"));
                    all.insert((path.clone(), method.clone(), status));
                }
            }
        }
        all
    }

    /// The documented (path, method) pairs.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        self.documented()
            .into_iter()
            .map(|(path, method, _)| (path, method))
            .collect()
    }

    /// Checks an answer to `method path` (`path` as the document writes
    /// it, `{id}` and all): its status is documented for that operation,
    /// its content type is one the status lists (none for an answer
    /// without content) and its body is valid under that content's
    /// schema. Records it as exercised.
    pub fn check(
        &mut self,
        path: &str,
        method: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        let method = method.to_ascii_lowercase();
        let what = format!("{} {path} -> {status}", method.to_uppercase());
        let op = self.doc["paths"]
            .get(path)
            .and_then(|item| item.get(&method))
            .ok_or_else(|| format!("{what}: operation not documented"))?;
        let response = op["responses"]
            .get(status.to_string())
            .ok_or_else(|| format!("{what}: status not documented"))?;
        let response = resolve(&self.doc, response)?;
        self.seen.insert((path.to_owned(), method.clone(), status));
        let content = match response.get("content").and_then(Value::as_object) {
            Some(c) if !c.is_empty() => c,
            _ => {
                return if body.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{what}: documented without content, answered {:?}",
                        String::from_utf8_lossy(body)
                    ))
                };
            }
        };
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(str::trim)
            .ok_or_else(|| format!("{what}: no Content-Type"))?;
        let Some(media_type) = content.get(media) else {
            return Err(format!(
                "{what}: Content-Type {media} is not one of {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        let text =
            std::str::from_utf8(body).map_err(|e| format!("{what}: body is not UTF-8: {e}"))?;
        let value = if media == "application/json" {
            serde_json::from_str(text).map_err(|e| format!("{what}: body is not JSON: {e}"))?
        } else {
            Value::String(text.to_owned())
        };
        let schema = media_type
            .get("schema")
            .ok_or_else(|| format!("{what}: {media} without a schema"))?;
        validate(&self.doc, schema, &value, "$").map_err(|e| format!("{what}: {e}\nbody: {text}"))
    }

    /// Checks a request body the server is expected to accept: it must
    /// be valid under the operation's JSON request body schema, or the
    /// document refuses what the server takes.
    pub fn check_request(&self, path: &str, method: &str, body: &Value) -> Result<(), String> {
        let method = method.to_ascii_lowercase();
        let what = format!("{} {path} request", method.to_uppercase());
        let schema = self.doc["paths"]
            .get(path)
            .and_then(|item| item.get(&method))
            .and_then(|op| op.pointer("/requestBody/content/application~1json/schema"))
            .ok_or_else(|| format!("{what}: no JSON request body documented"))?;
        validate(&self.doc, schema, body, "$").map_err(|e| format!("{what}: {e}\nbody: {body}"))
    }

    /// The documented answers not checked yet, leaving out `skip`.
    pub fn unexercised(&self, skip: &[(&str, &str, u16)]) -> Vec<Answer> {
        let skip: BTreeSet<Answer> = skip
            .iter()
            .map(|(p, m, s)| ((*p).to_owned(), (*m).to_owned(), *s))
            .collect();
        self.documented()
            .difference(&self.seen)
            .filter(|a| !skip.contains(*a))
            .cloned()
            .collect()
    }
}

/// `value`, or what its `$ref` names.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Result<&'a Value, String> {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => pointer(doc, r),
        None => Ok(value),
    }
}

/// The target of a local `$ref` (`#/components/...`).
fn pointer<'a>(doc: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let path = reference
        .strip_prefix('#')
        .ok_or_else(|| format!("$ref {reference:?} is not local"))?;
    doc.pointer(path)
        .ok_or_else(|| format!("$ref {reference:?} names nothing"))
}

/// Keywords that say nothing about validity.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "example",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Checks `value` (at `at`, a JSON path for messages) against `schema`,
/// a schema of `doc`.
pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{at}: no value is allowed here")),
        Value::Object(s) => s,
        other => return Err(format!("{at}: schema {other} is not an object")),
    };
    if let Value::Object(object) = value {
        check_object(doc, schema, object, at)?;
    }
    for (keyword, arg) in schema {
        match keyword.as_str() {
            "$ref" => {
                let reference = arg.as_str().ok_or(format!("{at}: $ref {arg}"))?;
                validate(doc, pointer(doc, reference)?, value, at)?;
            }
            "type" => check_type(arg, value, at)?,
            "enum" => {
                let options = arg.as_array().ok_or(format!("{at}: enum {arg}"))?;
                if !options.contains(value) {
                    return Err(format!("{at}: {value} is not one of {arg}"));
                }
            }
            "const" => {
                if arg != value {
                    return Err(format!("{at}: {value} is not {arg}"));
                }
            }
            // Checked together, before this loop.
            "properties" | "required" | "additionalProperties" => {}
            "items" => {
                if let Value::Array(items) = value {
                    for (i, item) in items.iter().enumerate() {
                        validate(doc, arg, item, &format!("{at}[{i}]"))?;
                    }
                }
            }
            "propertyNames" => {
                if let Value::Object(object) = value {
                    for key in object.keys() {
                        let name = Value::String(key.clone());
                        validate(doc, arg, &name, &format!("{at}.{key} (the name)"))?;
                    }
                }
            }
            "minItems" | "maxItems" => {
                if let Value::Array(items) = value {
                    let bound = arg.as_u64().ok_or(format!("{at}: {keyword} {arg}"))?;
                    let n = items.len() as u64;
                    if (keyword == "minItems" && n < bound) || (keyword == "maxItems" && n > bound)
                    {
                        return Err(format!("{at}: {n} items, {keyword} is {bound}"));
                    }
                }
            }
            "allOf" | "anyOf" | "oneOf" => {
                let options = arg.as_array().ok_or(format!("{at}: {keyword} {arg}"))?;
                let results: Vec<Result<(), String>> = options
                    .iter()
                    .map(|s| validate(doc, s, value, at))
                    .collect();
                let passed = results.iter().filter(|r| r.is_ok()).count();
                let ok = match keyword.as_str() {
                    "allOf" => passed == options.len(),
                    "anyOf" => passed >= 1,
                    _ => passed == 1,
                };
                if !ok {
                    let why: Vec<String> = results.into_iter().filter_map(Result::err).collect();
                    return Err(format!(
                        "{at}: {keyword}: {passed} of {} schemas match ({})",
                        options.len(),
                        why.join("; ")
                    ));
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                if let Some(n) = value.as_f64() {
                    let bound = arg.as_f64().ok_or(format!("{at}: {keyword} {arg}"))?;
                    let ok = match keyword.as_str() {
                        "minimum" => n >= bound,
                        "maximum" => n <= bound,
                        "exclusiveMinimum" => n > bound,
                        _ => n < bound,
                    };
                    if !ok {
                        return Err(format!("{at}: {value} is outside {keyword} {arg}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let Value::String(s) = value {
                    let bound = arg.as_u64().ok_or(format!("{at}: {keyword} {arg}"))?;
                    let n = s.chars().count() as u64;
                    if (keyword == "minLength" && n < bound)
                        || (keyword == "maxLength" && n > bound)
                    {
                        return Err(format!("{at}: {n} characters, {keyword} is {bound}"));
                    }
                }
            }
            "pattern" => {
                if let Value::String(s) = value {
                    // The document's patterns are ECMA-262; the ones it
                    // has (character classes, anchors, alternation) mean
                    // the same to the regex crate.
                    let pattern = arg.as_str().ok_or(format!("{at}: pattern {arg}"))?;
                    let re = regex::Regex::new(pattern)
                        .map_err(|e| format!("{at}: pattern {pattern:?}: {e}"))?;
                    if !re.is_match(s) {
                        return Err(format!("{at}: {value} does not match {pattern:?}"));
                    }
                }
            }
            "format" => check_format(arg, value, at)?,
            k if ANNOTATIONS.contains(&k) => {}
            other => {
                return Err(format!(
                    "{at}: the checker does not know the keyword {other:?}: teach it, \
                     or it would pass what it cannot judge"
                ))
            }
        }
    }
    Ok(())
}

fn check_type(arg: &Value, value: &Value, at: &str) -> Result<(), String> {
    let names: Vec<&str> = match arg {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => return Err(format!("{at}: type {arg}")),
    };
    let matches = |name: &str| match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "number" => value.is_number(),
        // JSON Schema: a number without a fraction, 3.0 included.
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    };
    if names.iter().any(|n| matches(n)) {
        Ok(())
    } else {
        Err(format!("{at}: {value} is not of type {arg}"))
    }
}

/// The formats utoipa gives Rust numbers; any other fails (see the module
/// documentation).
fn check_format(arg: &Value, value: &Value, at: &str) -> Result<(), String> {
    let range = match arg.as_str() {
        Some("int32") => Some((i64::from(i32::MIN) as f64, i64::from(i32::MAX) as f64)),
        Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
        Some("double" | "float") => None,
        _ => return Err(format!("{at}: the checker does not know the format {arg}")),
    };
    if let (Some((lo, hi)), Some(n)) = (range, value.as_f64()) {
        if n < lo || n > hi {
            return Err(format!("{at}: {value} does not fit format {arg}"));
        }
    }
    Ok(())
}

fn check_object(
    doc: &Value,
    schema: &Map<String, Value>,
    object: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let empty = Map::new();
    let properties = match schema.get("properties") {
        Some(p) => p.as_object().ok_or(format!("{at}: properties {p}"))?,
        None => &empty,
    };
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().ok_or(format!("{at}: required {name}"))?;
        if !object.contains_key(name) {
            return Err(format!("{at}: the required property {name:?} is missing"));
        }
    }
    for (name, v) in object {
        let here = format!("{at}.{name}");
        match (properties.get(name), schema.get("additionalProperties")) {
            (Some(s), _) => validate(doc, s, v, &here)?,
            (None, Some(extra)) => validate(doc, extra, v, &here)
                .map_err(|e| format!("{e} (an undocumented property)"))?,
            // Stricter than JSON Schema, which allows any other property
            // unless told otherwise: an answer sends only what the
            // document lists. utoipa's response schemas do not say
            // `additionalProperties`. Only for a whole object's schema
            // (`type: object`), not for a `oneOf` branch that constrains
            // a few of its properties.
            (None, None)
                if !properties.is_empty() && schema.get("type") == Some(&json!("object")) =>
            {
                return Err(format!("{here}: an undocumented property"));
            }
            (None, None) => {}
        }
    }
    Ok(())
}
