//! Rule path prefixes to rules, compiled once per rule set: a byte trie,
//! so a request's candidate rules are found in one walk down its path
//! (stopping at the first byte no prefix continues with) instead of a
//! comparison with every rule's prefix.
//!
//! A rule's `path_prefix` is a byte prefix, not a segment prefix (a rule
//! on `/api` takes `/apix`), so the trie is one of bytes; the route trie
//! ([`crate::routing::trie`]) is one of segments. Rules that ignore case
//! sit in a second trie of lower-cased prefixes, walked with the path's
//! bytes lower-cased as it goes, so nothing is allocated.

/// One trie node: the bytes that continue a prefix, and the rules whose
/// prefix ends here.
#[derive(Debug, Default)]
struct Node {
    /// Next byte → node index, sorted by byte.
    next: Vec<(u8, u32)>,
    /// Rules (by index) whose prefix is the bytes down to here.
    rules: Vec<u32>,
}

/// The rules of one case (as written, or folded to lower case).
#[derive(Debug)]
struct ByteTrie {
    nodes: Vec<Node>,
}

impl Default for ByteTrie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl ByteTrie {
    fn insert(&mut self, rule: u32, prefix: impl Iterator<Item = u8>) {
        let mut at = 0;
        for byte in prefix {
            at = match self.nodes[at].next.binary_search_by_key(&byte, |e| e.0) {
                Ok(i) => self.nodes[at].next[i].1 as usize,
                Err(i) => {
                    let fresh = self.nodes.len();
                    self.nodes.push(Node::default());
                    // Rule sets are bounded far below 2^32 nodes by the
                    // config's size.
                    self.nodes[at].next.insert(i, (byte, fresh as u32));
                    fresh
                }
            };
        }
        self.nodes[at].rules.push(rule);
    }

    fn walk(&self, path: impl Iterator<Item = u8>, found: &mut impl FnMut(u32)) {
        let mut node = &self.nodes[0];
        node.rules.iter().for_each(|&r| found(r));
        for byte in path {
            let Ok(i) = node.next.binary_search_by_key(&byte, |e| e.0) else {
                return;
            };
            node = &self.nodes[node.next[i].1 as usize];
            node.rules.iter().for_each(|&r| found(r));
        }
    }
}

/// Every rule's prefix, in the case it compares in.
#[derive(Debug, Default)]
pub(super) struct RulePaths {
    exact: ByteTrie,
    /// Rules with `ignore_case`; `None` when there are none.
    folded: Option<ByteTrie>,
}

impl RulePaths {
    /// The index of `prefixes`: rule `i`'s prefix and whether it ignores
    /// case.
    pub(super) fn new<'a>(prefixes: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let mut paths = Self::default();
        for (i, (prefix, ignore_case)) in prefixes.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if ignore_case {
                let folded = paths.folded.get_or_insert_with(ByteTrie::default);
                folded.insert(i, prefix.bytes().map(|b| b.to_ascii_lowercase()));
            } else {
                paths.exact.insert(i, prefix.bytes());
            }
        }
        paths
    }

    /// Calls `found` with every rule whose prefix `path` starts with (in
    /// no particular order; nothing is allocated).
    pub(super) fn candidates(&self, path: &str, mut found: impl FnMut(usize)) {
        let mut found = |r: u32| found(r as usize);
        self.exact.walk(path.bytes(), &mut found);
        if let Some(folded) = &self.folded {
            folded.walk(path.bytes().map(|b| b.to_ascii_lowercase()), &mut found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn found(paths: &RulePaths, path: &str) -> Vec<usize> {
        let mut v = Vec::new();
        paths.candidates(path, |i| v.push(i));
        v.sort_unstable();
        v
    }

    #[test]
    fn prefixes_are_byte_prefixes_in_their_case() {
        let paths = RulePaths::new([
            ("/api", false),
            ("/api/", false),
            ("", false),
            ("/API/Search", true),
            ("/", false),
            ("/apix", false),
        ]);
        assert_eq!(found(&paths, "/api"), [0, 2, 4]);
        assert_eq!(found(&paths, "/apix/y"), [0, 2, 4, 5]);
        assert_eq!(found(&paths, "/api/search?q"), [0, 1, 2, 3, 4]);
        assert_eq!(found(&paths, "/Api/SEARCH"), [2, 3, 4]);
        assert_eq!(found(&paths, "/ap"), [2, 4]);
        assert_eq!(found(&paths, ""), [2]);
    }

    proptest! {
        /// The trie finds exactly the rules a comparison with each prefix
        /// finds, on paths over a small alphabet (so prefixes overlap).
        #[test]
        fn the_trie_finds_what_a_scan_finds(
            rules in prop::collection::vec(("[/aAbB]{0,5}", any::<bool>()), 0..12),
            path in "[/aAbB]{0,8}",
        ) {
            let paths = RulePaths::new(rules.iter().map(|(p, c)| (p.as_str(), *c)));
            let scanned: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, (p, ignore_case))| {
                    let (p, path) = (p.as_bytes(), path.as_bytes());
                    path.len() >= p.len()
                        && if *ignore_case {
                            path[..p.len()].eq_ignore_ascii_case(p)
                        } else {
                            path.starts_with(p)
                        }
                })
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(found(&paths, &path), scanned);
        }
    }
}
