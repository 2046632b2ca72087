//! A small seeded pseudo-random generator (SplitMix64) for connection ids and the simulator.
//!
//! The core never reads OS randomness: whoever builds an [`Endpoint`](super::Endpoint) or a
//! client [`Connection`](super::Connection) passes a seed (a driver takes it from the OS, a test
//! or the simulator from a fixed number, so every run is reproducible).

/// SplitMix64: fast, 64 bits of state, every seed valid. Not cryptographic; the endpoint's
/// cookie key is derived with BLAKE3 from the caller's seed instead.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p` (`p <= 0` never, `p >= 1` always).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.next_f64() < p)
    }

    /// A uniform integer in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range_u64(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + self.next_u64() % (span + 1)
    }

    /// A random non-zero 64-bit connection id.
    pub fn nonzero_u64(&mut self) -> u64 {
        loop {
            let v = self.next_u64();
            if v != 0 {
                return v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            let r = a.range_u64(30, 61);
            assert!((30..=61).contains(&r));
            b.range_u64(30, 61);
            let f = a.next_f64();
            assert!((0.0..1.0).contains(&f));
            b.next_f64();
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert!(!Rng::new(3).chance(0.0));
        assert!(Rng::new(3).chance(1.0));
    }
}
