//! Passwords out of everything tollgate prints: logs, errors, `check`
//! output, `/reload` answers, metrics.
//!
//! `store.url` and `rate_limit.shared.redis_url` may carry a password
//! (`postgres://user:pw@host/db`, `redis://:pw@host`, or
//! `?password=pw` for PostgreSQL). Every place that shows such a URL goes
//! through [`url`], and every error text that a database or Redis client
//! produced, which may quote the URL it was given, through [`text`] (or
//! [`Scrubbed`] where a `Display` is wanted). The password becomes `***`;
//! the rest of the URL stays, since the host, port, user and database are
//! what an operator needs to find the problem.
//!
//! This works on text, not on a parsed URL, on purpose: the URL that most
//! needs redacting is the one that does not parse (`check` quotes it to
//! say why).

use std::borrow::Cow;
use std::fmt;

/// What a password is replaced with.
pub const MASK: &str = "***";

/// `url` with the password of its userinfo, and the value of any
/// `password` query parameter, replaced by [`MASK`].
///
/// `postgres://user:pw@host/db` → `postgres://user:***@host/db`;
/// `redis://:pw@host` → `redis://:***@host`. A URL without a password is
/// returned as it is.
pub fn url(url: &str) -> Cow<'_, str> {
    text(url)
}

/// `text` with every URL in it redacted as [`url`] does. A URL is taken to
/// run from its `scheme://` to the next whitespace or quote.
pub fn text(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(text.len(), |i| start + i);
        for range in secrets(&text[start..end]) {
            out.push_str(&text[copied..start + range.start]);
            out.push_str(MASK);
            copied = start + range.end;
        }
        from = end.max(start);
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// The byte ranges of the secrets in the part of a URL after `://`: the
/// password of the userinfo, then each password query value, in order.
fn secrets(rest: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    // The last `@` before the query ends the userinfo: a password may hold
    // an unencoded `@` or `/`, and such a URL is the one `check` quotes.
    if let Some(at) = rest[..query_at].rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            if colon + 1 < at {
                found.push(colon + 1..at);
            }
        }
    }
    if let Some(query) = rest.get(query_at + 1..).filter(|_| query_at < rest.len()) {
        let base = query_at + 1;
        let mut offset = 0;
        for pair in query.split(['&', '#']) {
            if let Some((key, value)) = pair.split_once('=') {
                if key.to_ascii_lowercase().contains("password") && !value.is_empty() {
                    let start = base + offset + key.len() + 1;
                    found.push(start..start + value.len());
                }
            }
            offset += pair.len() + 1;
        }
    }
    found
}

/// Displays `T` with every URL in its text redacted: for errors of the
/// database and Redis clients, which may quote the URL they were given.
pub struct Scrubbed<T>(pub T);

impl<T: fmt::Display> fmt::Display for Scrubbed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text(&self.0.to_string()))
    }
}

impl<T: fmt::Display> fmt::Debug for Scrubbed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::{text, url};

    #[test]
    fn passwords_in_userinfo_are_masked() {
        for (given, shown) in [
            (
                "postgres://user:s3cr3tPW@db:5432/tollgate",
                "postgres://user:***@db:5432/tollgate",
            ),
            ("redis://:s3cr3tPW@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:s3cr3tPW@h", "redis://u:***@h"),
            // Unencoded `@` and `/` in the password: still all of it.
            ("postgres://u:pa@ss/w0rd@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=s3cr3tPW&sslmode=disable",
                "postgres://u@h/db?password=***&sslmode=disable",
            ),
        ] {
            assert_eq!(url(given), shown);
        }
    }

    #[test]
    fn urls_without_a_password_are_left_alone() {
        for plain in [
            "postgres://postgres@127.0.0.1:5432/test",
            "sqlite://tollgate.db",
            "sqlite::memory:",
            "redis://127.0.0.1:6379",
            "redis://user@h",
            "not a url",
            "",
        ] {
            assert_eq!(url(plain), plain);
        }
    }

    #[test]
    fn every_url_in_a_text_is_masked() {
        assert_eq!(
            text("error connecting to \"postgres://u:s3cr3tPW@h/db\": refused; also redis://:x@r:1 (pw)"),
            "error connecting to \"postgres://u:***@h/db\": refused; also redis://:***@r:1 (pw)"
        );
        assert_eq!(text("a: b@c: d"), "a: b@c: d");
    }
}
