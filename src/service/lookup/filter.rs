//! A bitmap that rules out, cheaply, that any keyword occurs inside a query, so the
//! Aho-Corasick search is skipped for most queries that would find nothing.
//!
//! For every keyword the bitmap holds one bit: the hash of its first [`PREFIX`] characters, or
//! of the whole keyword when it is shorter. A keyword inside the query starts somewhere, so
//! the query then holds that prefix (or that short keyword) as a substring: if none of the
//! query's substrings of the lengths that occur hashes to a set bit, no keyword is inside it.
//! A set bit proves nothing (other prefixes share it); then the automaton decides.
//!
//! The bitmap stays small enough to live in the CPU cache (8 bits per keyword, at most
//! 2 MiB), while the automaton walk it saves touches several cache lines of a large index.

/// How many leading characters of a keyword the bitmap remembers.
pub const PREFIX: usize = 4;

/// The bitmap.
#[derive(Debug)]
pub struct StartFilter {
    words: Vec<u64>,
    /// `64 - log2(bit count)`.
    shift: u32,
    /// Bit `n - 1` set: some keyword has exactly `n` characters (`n` < [`PREFIX`]), or, for
    /// `n` = [`PREFIX`], at least that many.
    lengths: u8,
}

/// Hash of a run of one to [`PREFIX`] characters; the length is part of the hash.
fn key(chars: &[char]) -> u64 {
    let mut h = chars.len() as u64;
    for &c in chars {
        h = (h ^ u64::from(c)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    h.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl StartFilter {
    /// The filter for `keywords` (folded; `count` of them, for sizing).
    pub fn build<'a>(keywords: impl Iterator<Item = &'a str>, count: usize) -> StartFilter {
        let bits = (count.saturating_mul(8))
            .next_power_of_two()
            .clamp(1 << 10, 1 << 24);
        let mut filter = StartFilter {
            words: vec![0; bits / 64],
            shift: 64 - bits.trailing_zeros(),
            lengths: 0,
        };
        let mut prefix = ['\0'; PREFIX];
        for k in keywords {
            let mut n = 0;
            for c in k.chars().take(PREFIX) {
                prefix[n] = c;
                n += 1;
            }
            if n > 0 {
                filter.lengths |= 1 << (n - 1);
                filter.set(key(&prefix[..n]));
            }
        }
        filter
    }

    fn bit(&self, key: u64) -> (usize, u64) {
        let i = (key >> self.shift) as usize;
        (i / 64, 1 << (i % 64))
    }

    fn set(&mut self, key: u64) {
        let (word, mask) = self.bit(key);
        self.words[word] |= mask;
    }

    fn test(&self, key: u64) -> bool {
        let (word, mask) = self.bit(key);
        self.words[word] & mask != 0
    }

    /// False when no keyword can occur in `query` (folded); true when one might.
    pub fn may_contain_a_keyword(&self, query: &str) -> bool {
        // The last PREFIX characters, oldest first, in the tail of the window.
        let mut window = ['\0'; PREFIX];
        let mut seen = 0;
        for c in query.chars() {
            window.copy_within(1.., 0);
            window[PREFIX - 1] = c;
            seen = (seen + 1).min(PREFIX);
            // The substrings ending here, of each length some keyword (prefix) has.
            for n in 1..=seen {
                if self.lengths & (1 << (n - 1)) != 0 && self.test(key(&window[PREFIX - n..])) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_rules_out_a_query_holding_a_keyword() {
        let keywords = ["tcp", "handshake", "ip", "端口号", "a", "mtu size"];
        let f = StartFilter::build(keywords.into_iter(), keywords.len());
        for q in [
            "tcp",
            "what is a tcp handshake",
            "xxhandshakexx",
            "zip",
            "我的端口号",
            "a",
            "the mtu sizes",
        ] {
            assert!(f.may_contain_a_keyword(q), "{q}");
        }
    }

    #[test]
    fn rules_out_most_queries_without_one() {
        let keywords: Vec<String> = (0..10_000).map(|i| format!("kw{i:05}x")).collect();
        let f = StartFilter::build(keywords.iter().map(String::as_str), keywords.len());
        let passed = (0..1000)
            .map(|i| format!("query{i}zzz"))
            .filter(|q| f.may_contain_a_keyword(q))
            .count();
        // Every keyword starts "kw0" or "kw1"; the queries never contain "kw".
        assert!(passed < 100, "{passed} of 1000 false positives");
        assert!(f.may_contain_a_keyword("see kw01234x here"));
    }

    #[test]
    fn an_empty_filter_rules_out_everything() {
        let f = StartFilter::build(std::iter::empty(), 0);
        assert!(!f.may_contain_a_keyword("anything"));
        assert!(!f.may_contain_a_keyword(""));
    }
}
