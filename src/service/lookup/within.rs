//! A filter that rules out most queries no keyword contains before the n-gram index is read.
//!
//! The n-gram search of a query costs a handful of cache misses in a large knowledge base (two
//! table slots and the start of two posting lists), and for a query that matches nothing all
//! of them are wasted. This Bloom filter holds every keyword substring of [`LEN`] characters.
//! A keyword containing a query contains the query's first and last [`LEN`] characters, so
//! when the filter lacks either, no keyword contains the query; otherwise the n-gram search
//! decides. One or two filter words answer, instead of several lines spread over megabytes.
//!
//! Why five: shorter substrings are too common to rule much out (a fifth of all four-letter
//! strings occur in 100,000 random keywords), and holding several lengths would make the
//! filter bigger (one entry per length and position) and so more often out of the cache
//! (measured: holding lengths 4 to 8 made hits slower). Queries shorter than five characters
//! skip the filter.
//!
//! The filter is a blocked Bloom filter: two bits in the 64-bit word its hash picks. Its size
//! is capped at 4 MiB; a knowledge base of very long keywords saturates it, which only
//! makes it pass everything (the n-gram search still answers exactly).

use super::inside::{mix, step};

/// The length of the substrings held, in characters; shorter queries skip the filter.
pub const LEN: usize = 5;
/// Bits of filter per substring held; a power of two.
const BITS_PER_ENTRY: usize = 8;
/// The largest filter, in bytes.
const MAX_BYTES: usize = 4 << 20;

/// Keyword substrings of [`LEN`] characters; see the module documentation.
#[derive(Debug)]
pub struct Within {
    words: Vec<u64>,
    /// `64 - log2(words.len())`.
    shift: u32,
}

/// The two bits of mixed hash `m` within its word.
#[inline]
fn bits(m: u64) -> u64 {
    (1 << (m & 63)) | (1 << ((m >> 6) & 63))
}

impl Within {
    /// Holds the substrings of `keywords` (folded).
    pub fn build<'a>(keywords: impl Iterator<Item = &'a str> + Clone) -> Within {
        let entries: usize = keywords
            .clone()
            .map(|k| (k.chars().count() + 1).saturating_sub(LEN))
            .sum();
        let words = (entries * BITS_PER_ENTRY / 64)
            .next_power_of_two()
            .clamp(2, MAX_BYTES / 8);
        let mut within = Within {
            words: vec![0; words],
            shift: 64 - words.trailing_zeros(),
        };
        let mut chars = Vec::new();
        for k in keywords {
            chars.clear();
            chars.extend(k.chars());
            for window in chars.windows(LEN) {
                let m = mix(window.iter().copied().fold(0, step));
                let word = within.word(m);
                within.words[word] |= bits(m);
            }
        }
        within
    }

    fn word(&self, m: u64) -> usize {
        (m >> self.shift) as usize
    }

    fn holds(&self, text: impl Iterator<Item = char>) -> bool {
        let m = mix(text.fold(0, step));
        let b = bits(m);
        self.words[self.word(m)] & b == b
    }

    /// Whether some keyword may contain `query` (folded, of `chars` characters). `false` is
    /// certain; `true` for every query shorter than [`LEN`].
    pub fn may_contain(&self, query: &str, chars: usize) -> bool {
        if chars < LEN {
            return true;
        }
        if chars == LEN {
            return self.holds(query.chars());
        }
        let last = query
            .char_indices()
            .rev()
            .nth(LEN - 1)
            .map_or(0, |(at, _)| at);
        self.holds(query.chars().take(LEN)) && self.holds(query[last..].chars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_substring_of_a_keyword_passes() {
        let keywords = ["three-way handshake", "端口号码很长的关键词", "abcd"];
        let within = Within::build(keywords.into_iter());
        for k in keywords {
            let chars: Vec<char> = k.chars().collect();
            for start in 0..chars.len() {
                for end in start + 1..=chars.len() {
                    let q: String = chars[start..end].iter().collect();
                    assert!(within.may_contain(&q, end - start), "{q:?} in {k:?}");
                }
            }
        }
    }

    #[test]
    fn most_other_queries_are_ruled_out() {
        let keywords: Vec<String> = (0..1000).map(|i| format!("kw{i:05}x")).collect();
        let within = Within::build(keywords.iter().map(String::as_str));
        let passed = (0..1000)
            .filter(|i| within.may_contain(&format!("zq{i:04}"), 6))
            .count();
        assert!(passed < 100, "{passed} of 1000 passed");
        // Longer queries are checked by their first and last five characters.
        assert!(within.may_contain("kw00017x", 8));
        assert!(!within.may_contain("kw00017x-and-then-more", 22));
        assert!(!within.may_contain("and-then-kw00017x", 17));
    }
}
