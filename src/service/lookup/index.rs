//! The search index over one knowledge base: no query scans the entries.
//!
//! Every keyword is case-folded once at load (see [`super::fold`]); queries are folded the same
//! way, so matching is plain substring containment of folded text. Three structures answer the
//! three kinds of match:
//!
//! - **exact**: the search for keywords inside the query (below) reports the keyword equal to
//!   the query as the match that spans all of it; a hash map from folded keyword to entry
//!   serves one-character queries (which skip that search) and finds duplicates while loading;
//! - **keyword contained in the query**: for short queries, [`Inside`]: hashes of the query's
//!   substrings checked against a Bloom filter that fits in the L2 cache and then against a
//!   table of keyword hashes, a few cache lines per query. For long queries (where that would
//!   cost more probes than [`Inside::affordable`] allows), an Aho-Corasick automaton over all
//!   folded keywords, run over the folded query with overlapping matches (in time linear in
//!   the query plus the matches; megabytes in a large knowledge base, so a cache miss per
//!   character). Either reports every keyword occurring anywhere in the query;
//! - **query contained in a keyword**: an n-gram index. Every keyword's character trigrams
//!   (and bigrams, for two-character queries) map to posting lists of the keywords containing
//!   them. A keyword containing the query contains all of its n-grams, so the candidates are
//!   the intersection of the lists of its first and last trigram, and each is verified with a
//!   substring search. Entries are numbered in result order (shortest keyword first, then file
//!   order), so posting lists are plain sorted id arrays in that order and the walk stops as
//!   soon as enough verified matches are found. This search is skipped when the query is
//!   longer than the longest keyword, or a single character, or when [`Within`] (a Bloom
//!   filter of the keywords' five-character substrings) shows that no keyword contains it,
//!   which spares most queries that match nothing the n-gram index's cache misses.
//!
//! Ranking: the exact keyword; then keywords contained in the query, longest first; then
//! keywords containing the query, shortest first; ties in file order. Lengths count
//! characters. Only the first [`RESULTS`] are kept (the best entry and three "see also").

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use memchr::memmem;

use super::fold::fold_into;
use super::grams::{Grams, bigram, trigram};
use super::inside::Inside;
use super::parse::{Entry, Parsed};
use super::within::Within;

/// How many ranked matches a search returns: the best one and up to three more.
pub const RESULTS: usize = 4;

/// What ranking needs of one entry, kept apart from the texts in a dense array: a query looks
/// at a few entries spread over the whole knowledge base, and each look is a cache miss.
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Length of the keyword in characters.
    chars: u32,
    /// Position among the file's distinct keywords (file order, for breaking ties).
    order: u32,
}

/// Strings stored end to end: string `i` is `text[bounds[i]..bounds[i + 1]]`. One allocation
/// instead of one per string, and neighbours share cache lines.
#[derive(Debug, Default)]
struct Arena {
    text: String,
    bounds: Vec<u32>,
}

impl Arena {
    fn get(&self, id: usize) -> &str {
        &self.text[self.bounds[id] as usize..self.bounds[id + 1] as usize]
    }

    /// Keeps the first `n` strings.
    fn truncate(&mut self, n: usize) {
        if let Some(&end) = self.bounds.get(n) {
            self.bounds.truncate(n + 1);
            self.text.truncate(end as usize);
        }
    }

    /// Appends `s`, unless the arena would outgrow `u32` offsets (false then).
    fn push(&mut self, s: &str) -> bool {
        if self.bounds.is_empty() {
            self.bounds.push(0);
        }
        let Ok(end) = u32::try_from(self.text.len() + s.len()) else {
            return false;
        };
        self.text.push_str(s);
        self.bounds.push(end);
        true
    }
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
///
/// Entry ids number the keywords in the order "shortest first, then file order", which is the
/// order of the "keywords containing the query" results.
pub struct Index {
    /// For keyword `i`: string `3i` is the folded keyword (what verification reads), `3i + 1`
    /// the keyword as written and `3i + 2` its answer (what a reply shows). Side by side, so
    /// the cache line a verification brings in usually serves the reply too.
    strings: Arena,
    /// Lengths and file order, by id.
    meta: Vec<Meta>,
    /// `by_length[n]`: the first id whose keyword has at least `n` characters (`n` up to
    /// `longest + 1`).
    by_length: Vec<u32>,
    exact: FxMap<Box<str>, u32>,
    /// Keywords inside short queries (see [`Inside::affordable`]).
    inside: Inside,
    /// Pattern `i` is keyword `i`: keywords inside longer queries. `None` when there are no
    /// keywords.
    automaton: Option<AhoCorasick>,
    /// n-gram → ids of the keywords containing it.
    grams: Grams,
    /// Rules out most queries no keyword contains before `grams` is read.
    within: Within,
    /// The shortest keyword, in characters.
    shortest: usize,
    /// The longest keyword, in characters.
    longest: usize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("keywords", &self.meta.len())
            .field("grams", &self.grams.len())
            .field("postings", &self.grams.postings())
            .field("longest", &self.longest)
            .finish()
    }
}

/// A fast multiplicative hash (the rustc "Fx" scheme) for the index's maps. Their keys come
/// from the operator's knowledge base, never from clients, so the flooding resistance of the
/// default SipHash buys nothing here, while every query pays for several lookups.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

impl Index {
    /// Builds the index from parsed entries. A keyword equal (after folding) to an earlier one
    /// is recorded in `parsed` as a rejected line: the first entry wins.
    pub fn build(parsed: &mut Parsed) -> Index {
        let started = std::time::Instant::now();
        let entries = std::mem::take(&mut parsed.entries);
        // First pass, in file order: fold, drop duplicates. `seen` maps a folded keyword to its
        // file order, and becomes the exact-match map once ids are assigned.
        let mut seen: FxMap<Box<str>, u32> =
            FxMap::with_capacity_and_hasher(entries.len(), Default::default());
        let mut kept: Vec<Entry<'_>> = Vec::with_capacity(entries.len());
        let mut metas: Vec<Meta> = Vec::with_capacity(entries.len());
        let mut lines: Vec<usize> = Vec::with_capacity(entries.len());
        let mut folded_in_file_order = Arena::default();
        let mut folded = String::new();
        for entry in entries {
            fold_into(entry.keyword, &mut folded);
            if let Some(&order) = seen.get(folded.as_str()) {
                parsed.reject(
                    entry.line,
                    format!(
                        "duplicate keyword '{}' (first on line {}); line skipped",
                        entry.keyword, lines[order as usize]
                    ),
                );
                continue;
            }
            let Ok(order) = u32::try_from(kept.len()) else {
                parsed.reject(entry.line, "too many entries (over 4 billion)".into());
                continue;
            };
            if !folded_in_file_order.push(&folded) {
                parsed.reject(entry.line, "knowledge base too large (over 4 GB)".into());
                continue;
            }
            seen.insert(folded.as_str().into(), order);
            lines.push(entry.line);
            metas.push(Meta {
                chars: u32::try_from(folded.chars().count()).unwrap_or(u32::MAX),
                order,
            });
            kept.push(entry);
        }
        // Ids in result order: shortest first, then file order (a stable sort by length).
        let mut meta = metas;
        meta.sort_by_key(|m| m.chars);
        let mut id_of_order = vec![u32::MAX; meta.len()];
        let mut strings = Arena::default();
        for (id, m) in meta.iter().enumerate() {
            id_of_order[m.order as usize] = id as u32;
            let entry = kept[m.order as usize];
            let folded = folded_in_file_order.get(m.order as usize);
            if !(strings.push(folded) && strings.push(entry.keyword) && strings.push(entry.answer))
            {
                // Over 4 GB of text: keep what fits (ids are in length order, so the
                // longest keywords go), and say so.
                tracing::warn!(
                    "knowledge base over 4 GB of text: its {} longest keywords are dropped",
                    meta.len() - id
                );
                meta.truncate(id);
                strings.truncate(3 * id);
                break;
            }
        }
        drop(folded_in_file_order);
        let mut exact = seen;
        for id in exact.values_mut() {
            *id = id_of_order[*id as usize];
        }
        exact.retain(|_, id| (*id as usize) < meta.len());
        let longest = meta.last().map_or(0, |m| m.chars as usize);
        let by_length: Vec<u32> = (0..=longest + 1)
            .map(|n| meta.partition_point(|m| (m.chars as usize) < n) as u32)
            .collect();
        let folded_at = started.elapsed();
        // The automaton takes most of the time for a large knowledge base: build it on a
        // second thread while this one builds the n-gram index.
        let shortest = meta.first().map_or(0, |m| m.chars as usize);
        let build_filters = || {
            let folded = (0..meta.len()).map(|id| strings.get(3 * id));
            (
                Inside::build(folded.clone(), shortest, longest),
                Within::build(folded),
            )
        };
        let (automaton, grams, (inside, within)) = if meta.len() >= PARALLEL_BUILD {
            std::thread::scope(|scope| {
                let worker = std::thread::Builder::new()
                    .name("lookup-index".into())
                    .spawn_scoped(scope, || build_automaton(&strings, meta.len()));
                let grams = build_grams(&strings, meta.len());
                let filters = build_filters();
                let automaton = match worker {
                    Ok(handle) => handle.join().ok().flatten(),
                    Err(_) => build_automaton(&strings, meta.len()),
                };
                (automaton, grams, filters)
            })
        } else {
            (
                build_automaton(&strings, meta.len()),
                build_grams(&strings, meta.len()),
                build_filters(),
            )
        };
        tracing::debug!(
            "indexed {} keywords: folded in {:?}, automaton and {} n-grams in {:?}",
            meta.len(),
            folded_at,
            grams.len(),
            started.elapsed() - folded_at
        );
        Index {
            strings,
            meta,
            by_length,
            exact,
            automaton,
            inside,
            grams,
            within,
            shortest,
            longest,
        }
    }

    /// How many distinct keywords are indexed.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether no keyword is indexed.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Keyword `id` (from [`Ranked::ids`]) as written in the file.
    pub fn keyword(&self, id: u32) -> &str {
        self.strings.get(3 * id as usize + 1)
    }

    /// The answer of keyword `id`.
    pub fn answer(&self, id: u32) -> &str {
        self.strings.get(3 * id as usize + 2)
    }

    /// Folded keyword `id`.
    fn folded(&self, id: usize) -> &str {
        self.strings.get(3 * id)
    }

    /// The ranked matches of `query`, which must already be case-folded and non-empty.
    pub fn search(&self, query: &str) -> Ranked {
        let mut ranked = Ranked::default();
        let chars = query.chars().count();
        // The exact keyword, and the best keywords contained in the query (longest first,
        // ties in file order). Both searches for keywords inside the query report the exact
        // keyword too, as the match spanning the whole query, which spares a hash lookup (a
        // cache miss in a large index); the hash map serves one-character queries.
        let mut exact = None;
        let mut best = [0u32; RESULTS];
        let mut n = 0;
        let mut found = |start: usize, end: usize, id: u32| {
            if start == 0 && end == query.len() {
                exact = Some(id);
                return;
            }
            if best[..n].contains(&id) {
                return;
            }
            let key = |id: u32| {
                let m = self.meta[id as usize];
                (std::cmp::Reverse(m.chars), m.order)
            };
            let mine = key(id);
            let at = best[..n].iter().position(|&o| mine < key(o)).unwrap_or(n);
            if at < RESULTS {
                best.copy_within(at..RESULTS - 1, at + 1);
                best[at] = id;
                n = (n + 1).min(RESULTS);
            }
        };
        if chars < 2 {
            exact = self.exact.get(query).copied();
        } else if chars < self.shortest {
            // Shorter than every keyword: nothing equals it or lies inside it.
        } else if self.inside.affordable(chars) {
            self.inside
                .search(query, |id| self.folded(id as usize), &mut found);
        } else if let Some(ac) = &self.automaton {
            for m in ac.find_overlapping_iter(query) {
                found(m.start(), m.end(), m.pattern().as_u32());
            }
        } else {
            // The automaton could not be built: the exact keyword at least.
            exact = self.exact.get(query).copied();
        }
        if let Some(id) = exact {
            ranked.push(id);
        }
        for &id in &best[..n] {
            ranked.push(id);
        }
        if chars < 2 {
            // A one-character query matches only the one-character keyword equal to it.
            return ranked;
        }
        if ranked.is_full() || chars > self.longest || !self.within.may_contain(query, chars) {
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
    /// contain it, in result order (ascending id), lazily.
    ///
    /// The candidates are the ids in the posting lists of both the query's first and last
    /// trigram: the shorter list is walked and the other searched forward from where the last
    /// search stopped (galloping, so a long second list costs little). Survivors of a query of
    /// four or more characters get a substring check; for two or three characters the one
    /// n-gram *is* the query.
    fn containing<'a>(&'a self, query: &'a str, chars: usize) -> impl Iterator<Item = u32> + 'a {
        // Equal length would mean equal: that is the exact match, already ranked first.
        let floor = self.by_length.get(chars + 1).copied().unwrap_or(u32::MAX);
        let (walk, mut other) = self.shortest_lists(query, chars).unwrap_or((&[], None));
        // Galloping from the front reads the list in order, touching as few cache lines as
        // the skip needs.
        let walk = &walk[gallop(walk, floor)..];
        // Built at the first survivor: most misses have none.
        let mut finder: Option<memmem::Finder<'_>> = None;
        walk.iter().copied().filter(move |&id| {
            if let Some(rest) = &mut other {
                *rest = &rest[gallop(rest, id)..];
                if rest.first() != Some(&id) {
                    return false;
                }
            }
            chars <= 3
                || finder
                    .get_or_insert_with(|| memmem::Finder::new(query.as_bytes()))
                    .find(self.folded(id as usize).as_bytes())
                    .is_some()
        })
    }

    /// The posting lists to intersect, shorter first: the query's bigram for two characters,
    /// otherwise its first and last trigram. `None`: one of them occurs in no keyword, so
    /// nothing contains the query.
    fn shortest_lists(&self, query: &str, chars: usize) -> Option<(&[u32], Option<&[u32]>)> {
        let posting = |key: u64| self.grams.get(key);
        let mut it = query.chars();
        let (a, b) = (it.next()?, it.next()?);
        if chars == 2 {
            return Some((posting(bigram(a, b))?, None));
        }
        // The first and the last trigram. Every lookup is a cache miss or two in a large
        // index, so looking up more of them costs more than the few candidates they would
        // rule out before the substring check.
        let c = it.next()?;
        let head = posting(trigram(a, b, c))?;
        if chars == 3 {
            return Some((head, None));
        }
        let mut tail = query.chars().rev();
        let (z, y, x) = (tail.next()?, tail.next()?, tail.next()?);
        let end = posting(trigram(x, y, z))?;
        Some(if std::ptr::eq(head, end) {
            (head, None)
        } else if end.len() < head.len() {
            (end, Some(head))
        } else {
            (head, Some(end))
        })
    }
}

/// The index of the first element of sorted `list` that is not below `target`: exponential
/// steps from the start, then a binary search within the last step.
fn gallop(list: &[u32], target: u32) -> usize {
    let mut step = 1;
    let mut low = 0;
    while low + step <= list.len() && list[low + step - 1] < target {
        low += step;
        step *= 2;
    }
    let high = (low + step).min(list.len());
    low + list[low..high].partition_point(|&x| x < target)
}

/// From this many keywords on, the automaton is built on a thread of its own.
const PARALLEL_BUILD: usize = 10_000;

/// The Aho-Corasick automaton over the folded keywords (pattern `i` is keyword `i`), or
/// `None` when there are none (or, in theory, too many for the automaton's limits).
fn build_automaton(strings: &Arena, n: usize) -> Option<AhoCorasick> {
    if n == 0 {
        return None;
    }
    AhoCorasick::builder()
        .match_kind(MatchKind::Standard)
        // The contiguous NFA builds fast and stays compact at 100,000 patterns; a DFA would
        // take seconds and hundreds of megabytes to build.
        .kind(Some(AhoCorasickKind::ContiguousNFA))
        // Keywords start with nearly every byte a query holds, so a prefilter would only
        // add work (measured: 10–20% slower queries).
        .prefilter(false)
        .build((0..n).map(|id| strings.get(3 * id)))
        .inspect_err(|e| {
            tracing::warn!(
                "cannot build the keyword automaton ({e}): keywords inside longer queries \
                 will not be found"
            )
        })
        .ok()
}

/// The n-gram index of the folded keywords.
fn build_grams(strings: &Arena, n: usize) -> Grams {
    Grams::build((0..n).map(|id| strings.get(3 * id)), strings.text.len() / 3)
}

/// The reference the index must agree with: every keyword classified by a linear scan.
#[cfg(test)]
pub fn naive_search(index: &Index, query: &str) -> Vec<u32> {
    let chars = query.chars().count();
    let mut hits: Vec<(u8, i64, u32, u32)> = Vec::new();
    for id in 0..index.len() {
        let kw = index.folded(id);
        let m = index.meta[id];
        let id = id as u32;
        let len = i64::from(m.chars);
        if kw == query {
            hits.push((0, 0, m.order, id));
        } else if query.contains(kw) {
            hits.push((1, -len, m.order, id));
        } else if chars >= 2 && kw.contains(query) {
            hits.push((2, len, m.order, id));
        }
    }
    hits.sort();
    hits.iter().take(RESULTS).map(|h| h.3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::lookup::fold::fold;
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
            .map(|&id| index.keyword(id).to_owned())
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
        assert_eq!(ix.answer(0), "first");
    }

    #[test]
    fn queries_longer_than_every_keyword_still_find_keywords_inside_them() {
        let ix = index("mtu\tmax\n");
        let long = format!("{} MTU {}", "x".repeat(5000), "y".repeat(5000));
        assert_eq!(texts(&ix, &long), ["mtu"]);
    }

    #[test]
    fn long_queries_use_the_automaton_and_agree_with_a_linear_scan() {
        let ix = index("mtu\t1\nip\t2\nnat\t3\nip address\t4\nmtu size\t5\n");
        let long = format!(
            "{} what is the MTU size of an IP address {}",
            "x".repeat(3000),
            "y"
        );
        assert!(!ix.inside.affordable(long.chars().count()));
        let folded = fold(&long);
        assert_eq!(ix.search(&folded).ids(), naive_search(&ix, &folded));
        assert_eq!(texts(&ix, &long), ["ip address", "mtu size", "mtu", "ip"]);
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
            keywords in proptest::collection::vec(word(12), 0..40),
            queries in proptest::collection::vec(word(14), 1..20),
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
