//! A small, seedable, checkpointable random number generator (SplitMix64, Steele et al. 2014).
//!
//! libtorch's generator is global to the process (tch has no per-generator state), so two
//! samplers in one process would disturb each other's streams. Sampling draws its uniforms here
//! instead: the whole state is one `u64`, so a stage can save it and resume bit-exactly.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for step `step` of a run seeded with `seed`, independent of other steps.
    pub fn for_step(seed: u64, step: u64) -> Self {
        let mut g = SplitMix64::new(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(step.wrapping_add(1)));
        g.next_u64();
        g
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A permutation of `0..n` for `epoch` of a run seeded with `seed` (Fisher-Yates): data order
    /// derived from (seed, epoch) needs no saved state to resume.
    pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = SplitMix64::for_step(seed, epoch);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            idx.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        idx
    }

    /// `n` uniforms in [0, 1).
    pub fn uniforms(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next_f64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // First outputs of SplitMix64 seeded with 0 (the reference C implementation).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn uniforms_in_range_and_mean_half() {
        let mut g = SplitMix64::new(42);
        let u = g.uniforms(10000);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.01);
    }
}
