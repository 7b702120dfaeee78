//! Paths to routes, compiled once per config: a trie of path segments, so
//! a request's candidate routes are found in one walk down its path
//! whatever the number of routes, instead of a scan of every prefix.

use std::collections::HashMap;

/// How a route's path condition is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    /// Every path.
    Any,
    /// This path and those below it, on segment boundaries: `/api` takes
    /// `/api`, `/api/` and `/api/x`, not `/apix`; `/api/` takes `/api/`
    /// and below, not `/api`.
    Prefix(String),
    /// This path only.
    Exact(String),
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Routes whose prefix ends here: this node and below.
    prefix: Vec<usize>,
    /// Routes whose prefix ends here with a `/`: strictly below.
    below: Vec<usize>,
    /// Routes for exactly this path, with whether it ends in `/`.
    exact: Vec<(usize, bool)>,
}

/// The routes of one case (as written, or folded to lower case).
#[derive(Debug, Default)]
pub struct Trie {
    root: Node,
}

/// A path's segments after the leading `/`, and whether it ends in `/`.
fn segments(path: &str) -> (impl Iterator<Item = &str>, bool) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trailing = trimmed.ends_with('/');
    let inner = trimmed.strip_suffix('/').unwrap_or(trimmed);
    (inner.split('/').filter(|s| !s.is_empty()), trailing)
}

impl Trie {
    /// Adds route `index` for `rule` (already in the case this trie
    /// compares in).
    pub fn insert(&mut self, index: usize, rule: &PathRule) {
        let (path, kind) = match rule {
            PathRule::Any => {
                self.root.prefix.push(index);
                return;
            }
            PathRule::Prefix(p) => (p, 0),
            PathRule::Exact(p) => (p, 1),
        };
        let (segs, trailing) = segments(path);
        let mut node = &mut self.root;
        let mut depth = 0;
        for s in segs {
            node = node.children.entry(s.into()).or_default();
            depth += 1;
        }
        match (kind, trailing) {
            (0, false) => node.prefix.push(index),
            // `/` alone is every path.
            (0, true) if depth == 0 => node.prefix.push(index),
            (0, true) => node.below.push(index),
            _ => node.exact.push((index, trailing)),
        }
    }

    /// Calls `found` with every route whose path condition `path` meets
    /// (in no particular order; nothing is allocated).
    pub fn candidates(&self, path: &str, mut found: impl FnMut(usize)) {
        let (segs, trailing) = segments(path);
        let mut node = &self.root;
        node.prefix.iter().for_each(|&i| found(i));
        let mut segs = segs.peekable();
        while let Some(s) = segs.next() {
            let Some(next) = node.children.get(s) else {
                return;
            };
            node = next;
            node.prefix.iter().for_each(|&i| found(i));
            if segs.peek().is_some() || trailing {
                node.below.iter().for_each(|&i| found(i));
            }
        }
        node.exact
            .iter()
            .filter(|(_, t)| *t == trailing)
            .for_each(|&(i, _)| found(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(t: &Trie, path: &str) -> Vec<usize> {
        let mut v = Vec::new();
        t.candidates(path, |i| v.push(i));
        v.sort_unstable();
        v
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let mut t = Trie::default();
        t.insert(0, &PathRule::Prefix("/api".into()));
        t.insert(1, &PathRule::Prefix("/api/".into()));
        t.insert(2, &PathRule::Exact("/login".into()));
        t.insert(3, &PathRule::Any);
        t.insert(4, &PathRule::Prefix("/".into()));
        t.insert(5, &PathRule::Prefix("/api/v1".into()));
        assert_eq!(found(&t, "/api"), [0, 3, 4]);
        assert_eq!(found(&t, "/api/"), [0, 1, 3, 4]);
        assert_eq!(found(&t, "/api/x"), [0, 1, 3, 4]);
        assert_eq!(found(&t, "/api/v1/users"), [0, 1, 3, 4, 5]);
        assert_eq!(found(&t, "/apix"), [3, 4]);
        assert_eq!(found(&t, "/login"), [2, 3, 4]);
        assert_eq!(found(&t, "/login/"), [3, 4]);
        assert_eq!(found(&t, "/login/x"), [3, 4]);
        assert_eq!(found(&t, "/"), [3, 4]);
    }
}
