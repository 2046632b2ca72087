//! The n-gram index: for every character bigram and trigram of the folded keywords, the sorted
//! list of ids of the keywords containing it.
//!
//! The lists are concatenated in one array, and the n-grams are found through an
//! open-addressing table whose slots hold the key and the list's position together, so a
//! lookup usually costs one cache line: in a large knowledge base every lookup is a cache
//! miss, and a query makes several.

/// A trigram key: three 21-bit code points.
pub fn trigram(a: char, b: char, c: char) -> u64 {
    (u64::from(a) << 42) | (u64::from(b) << 21) | u64::from(c)
}

/// A bigram key, tagged in the top bit so it never equals a trigram key.
pub fn bigram(a: char, b: char) -> u64 {
    (1 << 63) | (u64::from(a) << 21) | u64::from(b)
}

/// Marks an empty slot. No key can equal it: a trigram has its top bit clear, and a bigram
/// has bits 42–62 clear.
const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u64,
    start: u32,
    len: u32,
}

/// n-gram → sorted keyword ids.
#[derive(Debug)]
pub struct Grams {
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: Fibonacci hashing keeps the top bits.
    shift: u32,
    postings: Vec<u32>,
}

impl Grams {
    /// Indexes the bigrams and trigrams of `keywords` (keyword `i` gets id `i`).
    pub fn build<'a>(keywords: impl Iterator<Item = &'a str>, capacity_hint: usize) -> Grams {
        // (gram, id): sorting groups each gram's ids, in ascending order.
        let mut pairs: Vec<(u64, u32)> = Vec::with_capacity(2 * capacity_hint);
        let mut chars: Vec<char> = Vec::new();
        for (id, k) in keywords.enumerate() {
            let Ok(id) = u32::try_from(id) else { break };
            chars.clear();
            chars.extend(k.chars());
            for w in chars.windows(2) {
                pairs.push((bigram(w[0], w[1]), id));
            }
            for w in chars.windows(3) {
                pairs.push((trigram(w[0], w[1], w[2]), id));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let distinct = pairs.chunk_by(|a, b| a.0 == b.0).count();
        // At most half full, so probe sequences stay short.
        let size = (2 * distinct).next_power_of_two().max(2);
        let mut grams = Grams {
            slots: vec![
                Slot {
                    key: EMPTY,
                    start: 0,
                    len: 0
                };
                size
            ],
            shift: 64 - size.trailing_zeros(),
            postings: Vec::with_capacity(pairs.len()),
        };
        for chunk in pairs.chunk_by(|a, b| a.0 == b.0) {
            // More postings than u32 can index would need a knowledge base of many gigabytes.
            let (Ok(start), Ok(len)) = (
                u32::try_from(grams.postings.len()),
                u32::try_from(chunk.len()),
            ) else {
                break;
            };
            grams.postings.extend(chunk.iter().map(|&(_, id)| id));
            let mut i = grams.home(chunk[0].0);
            while grams.slots[i].key != EMPTY {
                i = (i + 1) & (size - 1);
            }
            grams.slots[i] = Slot {
                key: chunk[0].0,
                start,
                len,
            };
        }
        grams
    }

    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The sorted ids of the keywords containing n-gram `key`.
    pub fn get(&self, key: u64) -> Option<&[u32]> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = self.slots[i];
            if slot.key == key {
                let start = slot.start as usize;
                return self.postings.get(start..start + slot.len as usize);
            }
            if slot.key == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// How many distinct n-grams are indexed.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.key != EMPTY).count()
    }

    /// Whether no n-gram is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many ids the lists hold in all.
    pub fn postings(&self) -> usize {
        self.postings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_keywords_of_every_gram_and_nothing_else() {
        let g = Grams::build(["abcd", "bcx", "xab", "端口号"].into_iter(), 4);
        assert_eq!(g.get(trigram('a', 'b', 'c')), Some(&[0][..]));
        assert_eq!(g.get(trigram('b', 'c', 'x')), Some(&[1][..]));
        assert_eq!(g.get(bigram('b', 'c')), Some(&[0, 1][..]));
        assert_eq!(g.get(bigram('a', 'b')), Some(&[0, 2][..]));
        assert_eq!(g.get(trigram('端', '口', '号')), Some(&[3][..]));
        assert_eq!(g.get(trigram('a', 'b', 'x')), None);
        assert_eq!(g.get(bigram('a', 'c')), None);
        // 3 + 2 + 2 + 2 bigrams (ab bc cd, bc cx, xa ab, 端口 口号) of which ab and bc repeat,
        // and 2 + 1 + 1 + 1 trigrams.
        assert_eq!(g.len(), 7 + 5);
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let g = Grams::build(std::iter::empty(), 0);
        assert!(g.is_empty());
        assert_eq!(g.get(bigram('a', 'b')), None);
    }

    #[test]
    fn bigram_and_trigram_keys_never_collide_with_each_other_or_empty() {
        let top = char::MAX;
        assert_ne!(bigram(top, top), EMPTY);
        assert_ne!(trigram(top, top, top), EMPTY);
        assert_ne!(bigram('\0', 'a'), trigram('\0', '\0', 'a'));
    }
}
