//! A portable, versioned random generator: ChaCha8 (a named, specified stream
//! cipher) and sampling code of our own. `rand`'s distributions may change their
//! output between versions; nothing here may, so the same seed gives the same
//! trials and the same data order on any machine, forever. Changing any output
//! of this module requires a new algorithm tag ([`ALGORITHM`]).

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Tag stored with every sweep that used this module's sampling.
pub const ALGORITHM: &str = "chacha8-v1";

/// The project's random generator.
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// A generator keyed by a domain string and numbers (e.g. ("trial", sweep_seed, index)).
    pub fn keyed(domain: &str, keys: &[u64]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(ALGORITHM.as_bytes());
        h.update(&(domain.len() as u64).to_le_bytes());
        h.update(domain.as_bytes());
        for k in keys {
            h.update(&k.to_le_bytes());
        }
        Rng(ChaCha8Rng::from_seed(*h.finalize().as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn uniform01(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform01()
    }

    /// Uniform integer in [0, n) without modulo bias (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Standard normal by Box-Muller (one value per call, for simplicity of state).
    pub fn normal01(&mut self) -> f64 {
        let mut u1 = self.uniform01();
        while u1 <= f64::MIN_POSITIVE {
            u1 = self.uniform01();
        }
        let u2 = self.uniform01();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang; shape < 1 uses the boost u^(1/shape).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform01().max(f64::MIN_POSITIVE);
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal01();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform01();
            if u < 1.0 - 0.0331 * x.powi(4)
                || u.max(f64::MIN_POSITIVE).ln() < 0.5 * x * x + d * (1.0 - v + v.ln())
            {
                return d * v;
            }
        }
    }

    /// Beta(a, b) as X/(X+Y) with X ~ Gamma(a), Y ~ Gamma(b).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }

    /// A Fisher-Yates permutation of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_pinned() {
        // These values are part of the format: if they change, old sweeps would
        // re-expand differently. Change ALGORITHM instead of these numbers.
        let mut r = Rng::keyed("test", &[42]);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut r2 = Rng::keyed("test", &[42]);
        assert_eq!(got, (0..3).map(|_| r2.next_u64()).collect::<Vec<_>>());
        assert_ne!(got, {
            let mut r3 = Rng::keyed("test", &[43]);
            (0..3).map(|_| r3.next_u64()).collect::<Vec<_>>()
        });
        assert_eq!(got, PINNED.to_vec(), "the generator's output changed");
    }

    const PINNED: [u64; 3] = [
        4308870100000427370,
        15430622619463348985,
        1790433605080046045,
    ];

    #[test]
    fn permutation_is_a_permutation() {
        let mut r = Rng::keyed("perm", &[1]);
        let mut p = r.permutation(1000);
        p.sort();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Rng::keyed("below", &[1]);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }
}
