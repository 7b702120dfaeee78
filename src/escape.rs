//! Control characters made visible, for text that reaches a terminal or a
//! log line.
//!
//! Client ids and keys come from the client table, which an operator (or
//! anyone with database access) can fill by hand: an id holding an ANSI
//! escape sequence could recolour, clear or retitle the terminal of
//! whoever lists the clients or tails the log, and a NUL or a newline
//! could forge or cut a line. Everything that prints such text goes
//! through [`Escaped`], which shows each C0 or C1 control character, and
//! DEL, as a `\x..` or `\u{..}` escape, and a backslash as `\\` so that
//! an escape cannot be faked by text that already looks like one.

use std::fmt::{self, Write as _};

/// Displays its text with control characters escaped: ESC as `\x1b`, NUL
/// as `\x00`, DEL as `\x7f`, a C1 control such as U+009B as `\u{9b}`, a
/// backslash as `\\`. Anything else, non-ASCII letters included, is
/// shown as it is.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        // Runs of plain text are written whole: the common case has no
        // character to escape at all.
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\\' => f.write_str("\\\\")?,
                c if u32::from(c) < 0x80 => write!(f, "\\x{:02x}", u32::from(c))?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Whether `c` is shown as an escape: a C0 or C1 control, DEL, or the
/// backslash that escapes start with.
fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\'
}

/// `text` with its control characters escaped (see [`Escaped`]).
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = write!(out, "{}", Escaped(text));
    out
}

/// JSON text made safe for a terminal without changing what it means:
/// each control character becomes a `\u00XX` JSON escape. In valid JSON a
/// control character can only stand inside a string (where the escape
/// means the same character) or be whitespace between tokens (tab, line
/// feed, carriage return: kept, they move no cursor anywhere surprising).
/// serde_json writes C1 controls and DEL raw; a terminal may act on them.
pub fn json_for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_as_escapes() {
        assert_eq!(escaped("plain-id_1"), "plain-id_1");
        assert_eq!(escaped("a\u{1b}[31mred"), "a\\x1b[31mred");
        assert_eq!(escaped("nul\0end"), "nul\\x00end");
        assert_eq!(escaped("line\nbreak\r\t"), "line\\x0abreak\\x0d\\x09");
        assert_eq!(escaped("del\u{7f}"), "del\\x7f");
        assert_eq!(escaped("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(escaped("back\\x1b"), "back\\\\x1b");
        assert_eq!(escaped("naïve ☃"), "naïve ☃");
    }

    #[test]
    fn json_keeps_its_meaning() {
        let value = serde_json::json!({"id": "a\u{1b}[2J\u{9b}\u{7f}\0"});
        let text = serde_json::to_string(&value).expect("json");
        let safe = json_for_terminal(&text);
        assert!(!safe.chars().any(char::is_control), "{safe:?}");
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, value);
        let pretty = serde_json::to_string_pretty(&value).expect("json");
        assert_eq!(
            json_for_terminal(&pretty),
            pretty
                .replace('\u{9b}', "\\u009b")
                .replace('\u{7f}', "\\u007f")
        );
    }
}
