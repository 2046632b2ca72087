//! Keywords inside a query, found by hashing the query's substrings: a compact alternative to
//! the Aho-Corasick automaton for short queries.
//!
//! The automaton of a large knowledge base is megabytes, and each character of a query is a
//! step to a far-away state, so in a busy server almost every step misses the cache. This
//! structure answers the same question from a bitmap that fits in the L2 cache, touching the
//! big table only for substrings that are (almost certainly) keywords:
//!
//! - a **filter**: a blocked Bloom filter of 64-bit words. For every keyword, each of its
//!   prefixes at least as long as the shortest keyword sets a *prefix* bit, and the whole
//!   keyword sets two *keyword* bits, all in the word its hash picks;
//! - a **table**: open addressing from the keyword's hash to its id, with a 32-bit fingerprint
//!   in each slot.
//!
//! A search extends a rolling hash from every start position of the query one character at a
//! time. From the shortest keyword's length on, it reads the filter word: the keyword bits send
//! it to the table, where a candidate's text is compared with the substring (so hash
//! collisions never produce a false match), and a clear prefix bit means no keyword starts with
//! this substring, which ends the extension. The filter has no false negatives, so every
//! keyword inside the query is found. The work is bounded by the query's length times the
//! spread of keyword lengths; [`Inside::affordable`] says when that bound is small enough.

/// Bits of filter per filter entry (entries: prefix and keyword marks); a power of two.
const BITS_PER_ENTRY: usize = 8;

/// Marks an empty table slot (no id reaches `u32::MAX`: ids are below the keyword count).
const EMPTY: u32 = u32::MAX;

/// The probes a search may make (query characters times the spread of keyword lengths) for
/// [`Inside::affordable`] to accept it.
const MAX_PROBES: usize = 4096;

/// Hashed keywords and their prefixes; see the module documentation.
#[derive(Debug, Default)]
pub struct Inside {
    /// The blocked Bloom filter.
    filter: Vec<u64>,
    /// `64 - log2(filter.len())`.
    filter_shift: u32,
    /// Slot: fingerprint (low 32 bits of the hash) in the high half, id in the low half.
    table: Vec<u64>,
    /// `64 - log2(table.len())`.
    table_shift: u32,
    /// The shortest and the longest keyword, in characters.
    shortest: usize,
    longest: usize,
}

/// One step of the rolling hash: the hash of a string extended by `c`.
#[inline]
pub(super) fn step(h: u64, c: char) -> u64 {
    (h.rotate_left(5) ^ u64::from(c)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

/// The final mix of a rolling hash, so all its bits depend on every character.
#[inline]
pub(super) fn mix(h: u64) -> u64 {
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The prefix mark (one bit) and the keyword mark (two bits, so that a false keyword mark,
/// which costs a table probe, is rare) of mixed hash `m` within its filter word.
#[inline]
fn marks(m: u64) -> (u64, u64) {
    (
        1 << (m & 63),
        (1 << ((m >> 6) & 63)) | (1 << ((m >> 12) & 63)),
    )
}

impl Inside {
    /// Indexes `keywords` (folded; keyword `i` gets id `i`). `shortest` and `longest` are their
    /// extreme lengths in characters.
    pub fn build<'a>(
        keywords: impl Iterator<Item = &'a str> + Clone,
        shortest: usize,
        longest: usize,
    ) -> Inside {
        let (mut count, mut entries) = (0usize, 0usize);
        for k in keywords.clone() {
            count += 1;
            entries += k.chars().count().saturating_sub(shortest) + 2;
        }
        if count == 0 {
            return Inside::default();
        }
        let words = (entries * BITS_PER_ENTRY / 64).next_power_of_two().max(2);
        let slots = (2 * count).next_power_of_two();
        let mut inside = Inside {
            filter: vec![0; words],
            filter_shift: 64 - words.trailing_zeros(),
            table: vec![u64::from(EMPTY); slots],
            table_shift: 64 - slots.trailing_zeros(),
            shortest,
            longest,
        };
        for (id, k) in keywords.enumerate() {
            let Ok(id) = u32::try_from(id) else { break };
            let mut h = 0;
            let mut m = 0;
            for (n, c) in k.chars().enumerate() {
                h = step(h, c);
                if n + 1 >= shortest {
                    m = mix(h);
                    let word = inside.word(m);
                    inside.filter[word] |= marks(m).0;
                }
            }
            let word = inside.word(m);
            inside.filter[word] |= marks(m).1;
            let mask = slots - 1;
            let mut i = inside.home(m);
            while inside.table[i] as u32 != EMPTY {
                i = (i + 1) & mask;
            }
            inside.table[i] = (m << 32) | u64::from(id);
        }
        inside
    }

    fn word(&self, m: u64) -> usize {
        // The top bits pick the word, the low 18 bits the marks within it.
        (m >> self.filter_shift) as usize
    }

    fn home(&self, m: u64) -> usize {
        // The high bits pick the slot; the low 32 bits are the fingerprint.
        (m >> self.table_shift) as usize
    }

    /// Whether searching `query` of `chars` characters stays within a bounded number of
    /// probes; otherwise the caller should use a search linear in the query (the automaton).
    pub fn affordable(&self, chars: usize) -> bool {
        chars.saturating_mul(self.longest + 1 - self.shortest.min(self.longest)) <= MAX_PROBES
    }

    /// Calls `found(start, end, id)` for every occurrence of a keyword in `query` (byte
    /// offsets), with `folded(id)` giving keyword `id`'s folded text for verification.
    pub fn search<'k>(
        &self,
        query: &str,
        folded: impl Fn(u32) -> &'k str,
        mut found: impl FnMut(usize, usize, u32),
    ) {
        if self.filter.is_empty() {
            return;
        }
        let mask = self.table.len() - 1;
        for (start, _) in query.char_indices() {
            let mut h = 0;
            for (n, (offset, c)) in query[start..].char_indices().enumerate() {
                if n == self.longest {
                    break;
                }
                h = step(h, c);
                if n + 1 < self.shortest {
                    continue;
                }
                let m = mix(h);
                let bits = self.filter[self.word(m)];
                let (prefix, keyword) = marks(m);
                if bits & keyword == keyword {
                    let end = start + offset + c.len_utf8();
                    let text = &query[start..end];
                    let mut i = self.home(m);
                    loop {
                        let slot = self.table[i];
                        let id = slot as u32;
                        if id == EMPTY {
                            break;
                        }
                        if slot >> 32 == m & 0xFFFF_FFFF && folded(id) == text {
                            found(start, end, id);
                            break;
                        }
                        i = (i + 1) & mask;
                    }
                }
                if bits & prefix == 0 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(keywords: &[&str], query: &str) -> Vec<(usize, usize, u32)> {
        let shortest = keywords
            .iter()
            .map(|k| k.chars().count())
            .min()
            .unwrap_or(0);
        let longest = keywords
            .iter()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0);
        search(
            &Inside::build(keywords.iter().copied(), shortest, longest),
            keywords,
            query,
        )
    }

    fn search(inside: &Inside, keywords: &[&str], query: &str) -> Vec<(usize, usize, u32)> {
        let mut hits = Vec::new();
        inside.search(
            query,
            |id| keywords[id as usize],
            |s, e, id| hits.push((s, e, id)),
        );
        hits.sort();
        hits
    }

    #[test]
    fn finds_every_occurrence_of_every_keyword() {
        let kws = ["ab", "abc", "bca", "口", "端口"];
        assert_eq!(
            all(&kws, "abcab端口"),
            [
                (0, 2, 0),
                (0, 3, 1),
                (1, 4, 2),
                (3, 5, 0),
                (5, 11, 4),
                (8, 11, 3)
            ]
        );
        assert_eq!(all(&kws, "xyz"), []);
        assert_eq!(all(&[], "abc"), []);
    }

    #[test]
    fn a_hash_collision_is_never_reported_as_a_match() {
        // A saturated filter sends every substring to the table, where fingerprints of
        // 2000 keywords sharing prefixes must not be taken for matches: the text decides.
        let kws: Vec<String> = (0..2000).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = kws.iter().map(String::as_str).collect();
        let mut inside = Inside::build(refs.iter().copied(), 2, 5);
        inside.filter.iter_mut().for_each(|w| *w = u64::MAX);
        let hits = search(&inside, &refs, "xk17yk1999z");
        let found: Vec<&str> = hits.iter().map(|&(_, _, id)| refs[id as usize]).collect();
        assert_eq!(found, ["k1", "k17", "k1", "k19", "k199", "k1999"]);
    }

    #[test]
    fn work_is_bounded_by_length_times_the_spread_of_keyword_lengths() {
        let inside = Inside::build(["abcd", "abcdefgh"].into_iter(), 4, 8);
        assert!(inside.affordable(MAX_PROBES / 5));
        assert!(!inside.affordable(MAX_PROBES / 5 + 1));
        assert!(!inside.affordable(usize::MAX));
    }
}
