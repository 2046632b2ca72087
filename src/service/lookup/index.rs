//! The search index over one knowledge base: no query scans the entries.
//!
//! Every keyword is case-folded once at load (see [`super::fold`]); queries are folded the same
//! way, so matching is plain substring containment of folded text. Three structures answer the
//! three kinds of match:
//!
//! - **exact**: a hash map from folded keyword to entry;
//! - **keyword contained in the query**: an Aho-Corasick automaton over all folded keywords,
//!   run over the folded query with overlapping matches, so every keyword occurring anywhere
//!   in it is reported (in time linear in the query plus the matches);
//! - **query contained in a keyword**: an n-gram index. Every keyword's character trigrams
//!   (and bigrams, for two-character queries) map to posting lists of the keywords containing
//!   them. A query's matches all lie in the posting list of any one of its trigrams, so the
//!   shortest such list is scanned and each candidate verified with a substring search.
//!   Posting lists are sorted in result order (shortest keyword first, then file order), so
//!   the scan stops as soon as enough verified matches are found. This search is skipped when
//!   the query is longer than the longest keyword, or a single character.
//!
//! Ranking: the exact keyword; then keywords contained in the query, longest first; then
//! keywords containing the query, shortest first; ties in file order. Lengths count
//! characters. Only the first [`RESULTS`] are kept (the best entry and three "see also").

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem;

use super::fold::fold;
use super::parse::Parsed;

/// How many ranked matches a search returns: the best one and up to three more.
pub const RESULTS: usize = 4;

/// One searchable entry.
#[derive(Debug)]
pub struct Keyword {
    /// The keyword as written in the file (first occurrence).
    pub text: Box<str>,
    /// The case-folded keyword.
    pub folded: Box<str>,
    /// Length in characters.
    pub chars: u32,
    /// The answer.
    pub answer: Box<str>,
}

/// The ranked matches of one query: entry ids, best first, at most [`RESULTS`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ranked {
    ids: [u32; RESULTS],
    len: usize,
}

impl Ranked {
    /// The ids, best first.
    pub fn ids(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    fn is_full(&self) -> bool {
        self.len == RESULTS
    }

    fn push(&mut self, id: u32) {
        if self.len < RESULTS {
            self.ids[self.len] = id;
            self.len += 1;
        }
    }
}

/// The index over one knowledge base.
pub struct Index {
    keywords: Vec<Keyword>,
    exact: HashMap<Box<str>, u32>,
    /// Pattern `i` is keyword `i`. `None` when there are no keywords.
    automaton: Option<AhoCorasick>,
    /// n-gram → (start, len) in `postings`.
    grams: HashMap<u64, (u32, u32)>,
    /// Concatenated posting lists of keyword ids, each sorted by (length, id).
    postings: Vec<u32>,
    /// The longest keyword, in characters.
    longest: usize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("keywords", &self.keywords.len())
            .field("grams", &self.grams.len())
            .field("postings", &self.postings.len())
            .field("longest", &self.longest)
            .finish()
    }
}

/// A trigram key: three 21-bit code points.
fn trigram(a: char, b: char, c: char) -> u64 {
    (u64::from(a) << 42) | (u64::from(b) << 21) | u64::from(c)
}

/// A bigram key, tagged in the top bit so it never equals a trigram key.
fn bigram(a: char, b: char) -> u64 {
    (1 << 63) | (u64::from(a) << 21) | u64::from(b)
}

impl Index {
    /// Builds the index from parsed entries. A keyword equal (after folding) to an earlier one
    /// is recorded in `parsed` as a rejected line: the first entry wins.
    pub fn build(parsed: &mut Parsed) -> Index {
        let started = std::time::Instant::now();
        let entries = std::mem::take(&mut parsed.entries);
        let mut keywords: Vec<Keyword> = Vec::with_capacity(entries.len());
        let mut exact: HashMap<Box<str>, u32> = HashMap::with_capacity(entries.len());
        let mut first_line: Vec<usize> = Vec::with_capacity(entries.len());
        for entry in entries {
            let folded: Box<str> = fold(&entry.keyword).into();
            if let Some(&id) = exact.get(&folded) {
                parsed.reject(
                    entry.line,
                    format!(
                        "duplicate keyword '{}' (first on line {}); line skipped",
                        entry.keyword, first_line[id as usize]
                    ),
                );
                continue;
            }
            let Ok(id) = u32::try_from(keywords.len()) else {
                parsed.reject(entry.line, "too many entries (over 4 billion)".into());
                continue;
            };
            exact.insert(folded.clone(), id);
            first_line.push(entry.line);
            keywords.push(Keyword {
                chars: u32::try_from(folded.chars().count()).unwrap_or(u32::MAX),
                text: entry.keyword.into(),
                folded,
                answer: entry.answer.into(),
            });
        }
        let folded_at = started.elapsed();
        let longest = keywords.iter().map(|k| k.chars as usize).max().unwrap_or(0);
        // The automaton takes most of the time for a large knowledge base: build it on a
        // second thread while this one builds the n-gram index.
        let (automaton, (grams, postings)) = if keywords.len() >= PARALLEL_BUILD {
            std::thread::scope(|scope| {
                let worker = std::thread::Builder::new()
                    .name("lookup-index".into())
                    .spawn_scoped(scope, || build_automaton(&keywords));
                let grams = build_grams(&keywords);
                let automaton = match worker {
                    Ok(handle) => handle.join().ok().flatten(),
                    Err(_) => build_automaton(&keywords),
                };
                (automaton, grams)
            })
        } else {
            (build_automaton(&keywords), build_grams(&keywords))
        };
        tracing::debug!(
            "indexed {} keywords: folded in {:?}, automaton and {} n-grams in {:?}",
            keywords.len(),
            folded_at,
            grams.len(),
            started.elapsed() - folded_at
        );
        Index {
            keywords,
            exact,
            automaton,
            grams,
            postings,
            longest,
        }
    }

    /// How many distinct keywords are indexed.
    pub fn len(&self) -> usize {
        self.keywords.len()
    }

    /// Whether no keyword is indexed.
    pub fn is_empty(&self) -> bool {
        self.keywords.is_empty()
    }

    /// The entry with id `id` (from [`Ranked::ids`]).
    pub fn keyword(&self, id: u32) -> &Keyword {
        &self.keywords[id as usize]
    }

    /// The ranked matches of `query`, which must already be case-folded and non-empty.
    pub fn search(&self, query: &str) -> Ranked {
        let mut ranked = Ranked::default();
        let exact = self.exact.get(query).copied();
        if let Some(id) = exact {
            ranked.push(id);
        }
        let chars = query.chars().count();
        if chars < 2 {
            // A one-character query matches only the one-character keyword equal to it.
            return ranked;
        }
        // Keywords contained in the query, longest first, ties in file order.
        if let Some(ac) = &self.automaton {
            let mut best = [0u32; RESULTS];
            let mut n = 0;
            for m in ac.find_overlapping_iter(query) {
                let id = m.pattern().as_u32();
                if Some(id) == exact || best[..n].contains(&id) {
                    continue;
                }
                let len = self.keywords[id as usize].chars;
                let outranks = |other: u32| {
                    let other_len = self.keywords[other as usize].chars;
                    len > other_len || (len == other_len && id < other)
                };
                let at = best[..n].iter().position(|&o| outranks(o)).unwrap_or(n);
                if at < RESULTS {
                    best.copy_within(at..RESULTS - 1, at + 1);
                    best[at] = id;
                    n = (n + 1).min(RESULTS);
                }
            }
            for &id in &best[..n] {
                ranked.push(id);
            }
        }
        if ranked.is_full() || chars > self.longest {
            return ranked;
        }
        // Keywords containing the query, shortest first, ties in file order.
        for id in self.containing(query, chars) {
            ranked.push(id);
            if ranked.is_full() {
                break;
            }
        }
        ranked
    }

    /// Keywords strictly longer than `query` (of `chars` characters, at least two) that
    /// contain it, in result order, lazily.
    fn containing<'a>(&'a self, query: &'a str, chars: usize) -> impl Iterator<Item = u32> + 'a {
        let list = self.candidates(query, chars).unwrap_or(&[]);
        // Skip keywords too short to contain the query strictly: equal length means equal.
        let start = list.partition_point(|&id| self.keywords[id as usize].chars as usize <= chars);
        let finder = memmem::Finder::new(query.as_bytes());
        list[start..].iter().copied().filter(move |&id| {
            finder
                .find(self.keywords[id as usize].folded.as_bytes())
                .is_some()
        })
    }

    /// The shortest posting list among the query's n-grams (`None`: some n-gram occurs in no
    /// keyword, so nothing contains the query).
    fn candidates(&self, query: &str, chars: usize) -> Option<&[u32]> {
        let posting = |key: u64| {
            self.grams
                .get(&key)
                .map(|&(start, len)| &self.postings[start as usize..(start + len) as usize])
        };
        let mut it = query.chars();
        let (a, b) = (it.next()?, it.next()?);
        if chars == 2 {
            return posting(bigram(a, b));
        }
        let (mut x, mut y) = (a, b);
        let mut shortest: Option<&[u32]> = None;
        for z in it {
            let list = posting(trigram(x, y, z))?;
            if shortest.is_none_or(|s| list.len() < s.len()) {
                shortest = Some(list);
            }
            (x, y) = (y, z);
        }
        shortest
    }
}

/// From this many keywords on, the automaton is built on a thread of its own.
const PARALLEL_BUILD: usize = 10_000;

/// The Aho-Corasick automaton over the folded keywords (pattern `i` is keyword `i`), or
/// `None` when there are none (or, in theory, too many for the automaton's limits).
fn build_automaton(keywords: &[Keyword]) -> Option<AhoCorasick> {
    if keywords.is_empty() {
        return None;
    }
    AhoCorasick::builder()
        .match_kind(MatchKind::Standard)
        // The contiguous NFA builds fast and stays compact at 100,000 patterns; a DFA would
        // take seconds and hundreds of megabytes to build.
        .kind(Some(AhoCorasickKind::ContiguousNFA))
        .build(keywords.iter().map(|k| k.folded.as_bytes()))
        .inspect_err(|e| {
            tracing::warn!(
                "cannot build the keyword automaton ({e}): keywords inside longer queries \
                 will not be found"
            )
        })
        .ok()
}

/// The n-gram posting lists of `keywords`.
fn build_grams(keywords: &[Keyword]) -> (HashMap<u64, (u32, u32)>, Vec<u32>) {
    let total: usize = keywords.iter().map(|k| 2 * k.chars as usize).sum();
    // (gram, rank) with rank = (length, id): sorting orders every posting list for results.
    let mut pairs: Vec<(u64, u64)> = Vec::with_capacity(total);
    let mut chars: Vec<char> = Vec::new();
    for (id, k) in keywords.iter().enumerate() {
        chars.clear();
        chars.extend(k.folded.chars());
        let rank = (u64::from(k.chars) << 32) | id as u64;
        for w in chars.windows(2) {
            pairs.push((bigram(w[0], w[1]), rank));
        }
        for w in chars.windows(3) {
            pairs.push((trigram(w[0], w[1], w[2]), rank));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut grams: HashMap<u64, (u32, u32)> = HashMap::new();
    let mut postings: Vec<u32> = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunk_by(|a, b| a.0 == b.0) {
        // More postings than u32 can index would need a 16 GB knowledge base.
        let (Ok(start), Ok(len)) = (u32::try_from(postings.len()), u32::try_from(chunk.len()))
        else {
            break;
        };
        grams.insert(chunk[0].0, (start, len));
        postings.extend(chunk.iter().map(|&(_, rank)| rank as u32));
    }
    (grams, postings)
}

/// The reference the index must agree with: every keyword classified by a linear scan.
#[cfg(test)]
pub fn naive_search(index: &Index, query: &str) -> Vec<u32> {
    let chars = query.chars().count();
    let mut hits: Vec<(u8, i64, u32)> = Vec::new();
    for (id, k) in index.keywords.iter().enumerate() {
        let id = id as u32;
        let kw = &*k.folded;
        let len = i64::from(k.chars);
        if kw == query {
            hits.push((0, 0, id));
        } else if query.contains(kw) {
            hits.push((1, -len, id));
        } else if chars >= 2 && kw.contains(query) {
            hits.push((2, len, id));
        }
    }
    hits.sort();
    hits.iter().take(RESULTS).map(|h| h.2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::lookup::parse::parse;
    use proptest::prelude::*;

    fn index(text: &str) -> Index {
        Index::build(&mut parse(text))
    }

    fn texts(index: &Index, query: &str) -> Vec<String> {
        index
            .search(&fold(query))
            .ids()
            .iter()
            .map(|&id| index.keyword(id).text.to_string())
            .collect()
    }

    #[test]
    fn exact_then_contained_longest_first_then_containing_shortest_first() {
        let ix = index(
            "tcp handshake\ta\nshake\tb\nhand\tc\ntcp\td\ntcp handshake steps\te\nhandshake\tf\n",
        );
        assert_eq!(
            texts(&ix, "TCP Handshake"),
            ["tcp handshake", "handshake", "shake", "hand"]
        );
        assert_eq!(
            texts(&ix, "handshake"),
            ["handshake", "shake", "hand", "tcp handshake"]
        );
        // Not exact: contained (longest first) come before containing (shortest first).
        assert_eq!(
            texts(&ix, "andshak"),
            ["handshake", "tcp handshake", "tcp handshake steps"]
        );
    }

    #[test]
    fn ties_are_broken_in_file_order() {
        let ix = index("bbbx\t1\naaax\t2\ncccx\t3\nzz\t4\nyy\t5\n");
        assert_eq!(texts(&ix, "x"), Vec::<String>::new());
        // Containing "x", all four characters long: file order.
        assert_eq!(texts(&ix, "ax"), ["aaax"]);
        assert_eq!(texts(&ix, "zzyy"), ["zz", "yy"]);
        assert_eq!(texts(&ix, "yyzz"), ["zz", "yy"]);
        let ix = index("abcd1\t1\nabcd2\t2\nabcd3\t3\nabcd4\t4\nabcd5\t5\n");
        assert_eq!(texts(&ix, "bcd"), ["abcd1", "abcd2", "abcd3", "abcd4"]);
    }

    #[test]
    fn a_one_character_query_matches_only_a_one_character_keyword() {
        let ix = index("端口\tport\n口\tmouth\na\tletter a\nab\tpair\n");
        assert_eq!(texts(&ix, "口"), ["口"]);
        assert_eq!(texts(&ix, "A"), ["a"]);
        assert_eq!(texts(&ix, "b"), Vec::<String>::new());
        // One-character keywords still match inside longer queries.
        assert_eq!(texts(&ix, "端口号"), ["端口", "口"]);
        assert_eq!(texts(&ix, "b"), Vec::<String>::new());
    }

    #[test]
    fn duplicates_are_rejected_so_see_also_lists_distinct_keywords() {
        let mut parsed = parse("TCP\tfirst\ntcp\tsecond\nTCP\tthird\nTCP/IP\tsuite\n");
        let ix = Index::build(&mut parsed);
        assert_eq!(ix.len(), 2);
        assert_eq!(parsed.malformed_total, 2);
        assert_eq!(
            parsed.malformed[0].why,
            "duplicate keyword 'tcp' (first on line 1); line skipped"
        );
        assert_eq!(texts(&ix, "tcp"), ["TCP", "TCP/IP"]);
        assert_eq!(&*ix.keyword(0).answer, "first");
    }

    #[test]
    fn queries_longer_than_every_keyword_still_find_keywords_inside_them() {
        let ix = index("mtu\tmax\n");
        let long = format!("{} MTU {}", "x".repeat(5000), "y".repeat(5000));
        assert_eq!(texts(&ix, &long), ["mtu"]);
    }

    #[test]
    fn an_empty_index_matches_nothing() {
        let ix = index("# nothing\n");
        assert_eq!(ix.len(), 0);
        assert!(ix.search("tcp").ids().is_empty());
    }

    /// Keywords and queries over a tiny alphabet (with a case pair and a CJK character), so
    /// containment in both directions is common.
    fn word(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop::sample::select(vec!['a', 'b', 'A', 'c', '口']),
            1..=max,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn the_index_agrees_with_a_linear_scan(
            keywords in proptest::collection::vec(word(6), 0..40),
            queries in proptest::collection::vec(word(8), 1..20),
        ) {
            let text: String = keywords
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k}\tanswer {i}\n"))
                .collect();
            let ix = index(&text);
            for q in &queries {
                let folded = fold(q);
                prop_assert_eq!(
                    ix.search(&folded).ids().to_vec(),
                    naive_search(&ix, &folded),
                    "query {:?}", q
                );
            }
        }
    }
}
