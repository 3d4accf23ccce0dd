//! Reward against the number of samples, Llama 2 Figure 7: with k samples per prompt, the best
//! one's reward grows with k while the median stays flat — the gain rejection sampling exploits.
//!
//! From the K samples drawn per prompt, the curve for every k <= K is computed exactly, without
//! resampling: the expected j-th smallest of a uniformly random k-subset of K sorted values
//! `x_(1) <= ... <= x_(K)` is
//!
//! `E[x_(j:k)] = sum_i C(i-1, j-1) C(K-i, k-j) / C(K, k) * x_(i)`
//!
//! (the j-th smallest of the subset is `x_(i)` when j-1 of the subset lie below i and k-j above).
//! The max is j = k; the median is j = (k+1)/2 for odd k and the mean of j = k/2 and k/2+1 for
//! even k. These are the unbiased order-statistics estimators of best-of-k and median-of-k
//! rewards, and they average over all C(K, k) subsets instead of drawing a few.
use serde::{Deserialize, Serialize};

/// ln C(n, r) from a table of ln n!.
struct LnBinom {
    ln_fact: Vec<f64>,
}

impl LnBinom {
    fn new(n: usize) -> Self {
        let mut ln_fact = vec![0.0; n + 1];
        for i in 1..=n {
            ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
        }
        LnBinom { ln_fact }
    }
    fn ln(&self, n: usize, r: usize) -> Option<f64> {
        (r <= n).then(|| self.ln_fact[n] - self.ln_fact[r] - self.ln_fact[n - r])
    }
}

/// Expected j-th smallest (1-based) of a random k-subset of `sorted` (ascending, finite).
pub fn expected_order_stat(sorted: &[f64], k: usize, j: usize) -> f64 {
    let n = sorted.len();
    assert!(1 <= j && j <= k && k <= n, "order statistic {j} of {k} out of {n}");
    let b = LnBinom::new(n);
    let denom = b.ln(n, k).unwrap_or(0.0);
    let mut e = 0.0;
    for i in 1..=n {
        if let (Some(below), Some(above)) = (b.ln(i - 1, j - 1), b.ln(n - i, k - j)) {
            e += (below + above - denom).exp() * sorted[i - 1];
        }
    }
    e
}

/// Expected max of k of the samples (best-of-k reward).
pub fn expected_max(sorted: &[f64], k: usize) -> f64 {
    expected_order_stat(sorted, k, k)
}

/// Expected median of k of the samples.
pub fn expected_median(sorted: &[f64], k: usize) -> f64 {
    if k % 2 == 1 {
        expected_order_stat(sorted, k, k.div_ceil(2))
    } else {
        0.5 * (expected_order_stat(sorted, k, k / 2) + expected_order_stat(sorted, k, k / 2 + 1))
    }
}

/// Reward against k, averaged over prompts: `max[k-1]`, `median[k-1]`, `mean[k-1]` for k = 1..=K.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BestOfKCurve {
    pub k: Vec<usize>,
    /// Expected best-of-k reward.
    pub max: Vec<f64>,
    /// Expected median-of-k reward.
    pub median: Vec<f64>,
    /// Expected mean of k samples (the same for every k: the mean reward of a sample).
    pub mean: Vec<f64>,
    /// Prompts averaged over (those with exactly K finite rewards).
    pub prompts: usize,
}

impl BestOfKCurve {
    /// The curve over prompts, each given its K rewards (prompts with fewer samples or a
    /// non-finite reward are left out, so every point averages the same prompts).
    pub fn from_rewards<'a>(per_prompt: impl IntoIterator<Item = &'a [f64]>, big_k: usize) -> Self {
        let mut c =
            BestOfKCurve { k: (1..=big_k).collect(), max: vec![0.0; big_k], median: vec![0.0; big_k], mean: vec![0.0; big_k], prompts: 0 };
        for r in per_prompt {
            if r.len() != big_k || big_k == 0 || r.iter().any(|x| !x.is_finite()) {
                continue;
            }
            let mut sorted = r.to_vec();
            sorted.sort_by(f64::total_cmp);
            let mean = sorted.iter().sum::<f64>() / big_k as f64;
            for k in 1..=big_k {
                c.max[k - 1] += expected_max(&sorted, k);
                c.median[k - 1] += expected_median(&sorted, k);
                c.mean[k - 1] += mean;
            }
            c.prompts += 1;
        }
        if c.prompts > 0 {
            for v in [&mut c.max, &mut c.median, &mut c.mean] {
                v.iter_mut().for_each(|x| *x /= c.prompts as f64);
            }
        }
        c
    }

    /// `(k, value)` points of one of the series, for plotting.
    pub fn points(&self, values: &[f64]) -> Vec<(f64, f64)> {
        self.k.iter().zip(values).map(|(&k, &v)| (k as f64, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn order_statistics_by_hand() {
        // Samples 1, 2, 3, 4. The six pairs' maxima are 2,3,4,3,4,4 (sum 20) and minima
        // 1,1,1,2,2,3 (sum 10): E[max of 2] = 20/6, E[median of 2] = (10/6 + 20/6) / 2 = 2.5.
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!(close(expected_max(&x, 1), 2.5));
        assert!(close(expected_max(&x, 2), 20.0 / 6.0));
        assert!(close(expected_order_stat(&x, 2, 1), 10.0 / 6.0));
        assert!(close(expected_median(&x, 2), 2.5));
        // Triples 123, 124, 134, 234: maxima 3,4,4,4; medians 2,2,3,3.
        assert!(close(expected_max(&x, 3), 15.0 / 4.0));
        assert!(close(expected_median(&x, 3), 2.5));
        assert!(close(expected_max(&x, 4), 4.0));
    }

    #[test]
    fn max_grows_and_median_does_not_on_skewed_rewards() {
        // One prompt with a single good sample among five: best-of-k rises with k, the median stays low.
        let r = [0.1, 0.1, 0.1, 0.1, 0.9];
        let c = BestOfKCurve::from_rewards([&r[..]], 5);
        assert_eq!(c.prompts, 1);
        // E[max of k] = 0.1 + 0.8 * P(the 0.9 is in the subset) = 0.1 + 0.8 k / 5.
        for k in 1..=5 {
            assert!(close(c.max[k - 1], 0.1 + 0.8 * k as f64 / 5.0), "k={k}: {}", c.max[k - 1]);
            assert!(close(c.mean[k - 1], 0.26));
        }
        assert!(close(c.median[0], 0.26)); // one sample: its expected value
        assert!(close(c.median[4], 0.1));
        assert!(c.max.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn averages_over_prompts_and_skips_incomplete_ones() {
        let a = [0.0, 1.0];
        let b = [0.5, 0.5];
        let short = [0.3];
        let nan = [f64::NAN, 1.0];
        let c = BestOfKCurve::from_rewards([&a[..], &b[..], &short[..], &nan[..]], 2);
        assert_eq!(c.prompts, 2);
        assert!(close(c.max[0], 0.5) && close(c.max[1], 0.75));
        assert_eq!(c.points(&c.max), vec![(1.0, 0.5), (2.0, 0.75)]);
    }

    #[test]
    fn large_k_stays_finite() {
        let x: Vec<f64> = (0..200).map(|i| i as f64 / 199.0).collect();
        let m = expected_max(&x, 100);
        assert!(m.is_finite() && m > 0.98 && m <= 1.0);
    }
}
