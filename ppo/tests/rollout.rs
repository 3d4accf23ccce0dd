//! How a rollout assembles the PPO targets (`Rollout::new`), against the same recipe written out
//! in plain f64 Rust: `WHITEN(LOGIT(Rc))` over the batch, the per-token KL penalty `−β·kl_t` plus
//! the whitened score on each response's last token, GAE with zero value past the end, returns
//! `A + V` from the unwhitened advantages, then advantages whitened over the real tokens.
use ppo::reward::RewardSource;
use ppo::rollout::{Rollout, Sample};
use ppo::{KlEstimator, PpoConfig};
use tch::{Device, Tensor};

fn sample(logprobs: &[f32], score: f64) -> Sample {
    Sample {
        prompt: 0,
        response: (0..logprobs.len() as u32).map(|i| 5 + i).collect(),
        text: String::new(),
        finished: true,
        logprobs: logprobs.to_vec(),
        safety_raw: None,
        helpfulness_raw: None,
        score,
        source: RewardSource::Helpfulness,
    }
}

fn config(kl_beta: f64, gamma: f64, lam: f64, whiten_rewards: bool, whiten_advantages: bool, est: KlEstimator) -> PpoConfig {
    let mut c: PpoConfig = serde_json::from_value(serde_json::json!({
        "policy": "policy", "helpfulness_rm": "rm", "train_prompts": ["prompts.jsonl"],
    }))
    .unwrap();
    (c.kl_beta, c.gamma, c.lam, c.whiten_rewards, c.whiten_advantages, c.kl_estimator) =
        (kl_beta, gamma, lam, whiten_rewards, whiten_advantages, est);
    c
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let n = t.size()[0];
    (0..n).map(|i| Vec::<f32>::try_from(t.get(i)).unwrap().into_iter().map(f64::from).collect()).collect()
}

/// Mean and Bessel-corrected variance of `x`, as `masked_whiten` takes them.
fn whiten(x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    x.iter().map(|v| (v - mean) / (var + 1e-8).sqrt()).collect()
}

struct Expected {
    kl: Vec<Vec<f64>>,
    rewards: Vec<Vec<f64>>,
    advantages: Vec<Vec<f64>>,
    returns: Vec<Vec<f64>>,
    scores: Vec<f64>,
}

/// The rollout recipe in plain Rust, one response (row) at a time.
fn expected(lp: &[Vec<f64>], rf: &[Vec<f64>], v: &[Vec<f64>], scores: &[f64], c: &PpoConfig) -> Expected {
    let scores = if c.whiten_rewards { whiten(scores) } else { scores.to_vec() };
    let (mut kl, mut rewards, mut adv, mut ret) = (vec![], vec![], vec![], vec![]);
    for i in 0..lp.len() {
        let k: Vec<f64> = lp[i]
            .iter()
            .zip(&rf[i])
            .map(|(a, b)| match c.kl_estimator {
                KlEstimator::K1 => a - b,
                KlEstimator::K3 => (b - a).exp() - 1.0 - (b - a),
            })
            .collect();
        let mut r: Vec<f64> = k.iter().map(|x| -c.kl_beta * x).collect();
        *r.last_mut().unwrap() += scores[i];
        let n = r.len();
        let mut a = vec![0.0; n];
        let (mut next_a, mut next_v) = (0.0, 0.0);
        for t in (0..n).rev() {
            let delta = r[t] + c.gamma * next_v - v[i][t];
            a[t] = delta + c.gamma * c.lam * next_a;
            (next_a, next_v) = (a[t], v[i][t]);
        }
        ret.push(a.iter().zip(&v[i]).map(|(a, v)| a + v).collect());
        kl.push(k);
        rewards.push(r);
        adv.push(a);
    }
    if c.whiten_advantages {
        let flat: Vec<f64> = adv.iter().flatten().copied().collect();
        let w = whiten(&flat);
        let mut it = w.into_iter();
        for row in adv.iter_mut() {
            for x in row.iter_mut() {
                *x = it.next().unwrap();
            }
        }
    }
    Expected { kl, rewards, advantages: adv, returns: ret, scores }
}

fn pad(rows: &[Vec<f64>], t: usize) -> Tensor {
    let flat: Vec<f32> = rows.iter().flat_map(|r| (0..t).map(|j| r.get(j).copied().unwrap_or(0.0) as f32)).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, t as i64])
}

fn close_rows(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (j, x) in g.iter().enumerate() {
            let y = w.get(j).copied().unwrap_or(0.0); // padding is 0
            assert!((x - y).abs() < 2e-5, "{what}[{i}][{j}]: got {x}, expected {y}\ngot {got:?}\nexpected {want:?}");
        }
    }
}

fn check(c: &PpoConfig) {
    // Three responses of 3, 2 and 1 tokens (T = 3, right-padded).
    let lp = vec![vec![-1.0, -0.5, -2.0], vec![-0.3, -1.2], vec![-0.7]];
    let rf = vec![vec![-1.2, -0.4, -1.5], vec![-0.5, -1.0], vec![-0.9]];
    let v = vec![vec![0.1, 0.2, 0.3], vec![0.4, -0.1], vec![0.25]];
    let scores = [1.5, -0.5, 0.25];
    // The rollout computes in float32: round the inputs as it sees them.
    let f = |r: &Vec<Vec<f64>>| -> Vec<Vec<f64>> { r.iter().map(|x| x.iter().map(|&y| y as f32 as f64).collect()).collect() };
    let (lp, rf, v) = (f(&lp), f(&rf), f(&v));
    let samples: Vec<Sample> = lp.iter().zip(scores).map(|(l, s)| sample(&l.iter().map(|&x| x as f32).collect::<Vec<_>>(), s)).collect();
    let ro = Rollout::new(samples, pad(&rf, 3), pad(&v, 3), c, Device::Cpu);
    let e = expected(&lp, &rf, &v, &scores, c);

    assert_eq!(rows(&ro.mask), vec![vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]]);
    close_rows("old_logprobs", &rows(&ro.old_logprobs), &lp);
    close_rows(
        "scores_whitened",
        &[Vec::<f32>::try_from(&ro.scores_whitened).unwrap().into_iter().map(f64::from).collect()],
        std::slice::from_ref(&e.scores),
    );
    close_rows("advantages", &rows(&ro.advantages), &e.advantages);
    close_rows("returns", &rows(&ro.returns), &e.returns);
    let sums = |r: &[Vec<f64>]| -> Vec<f64> { r.iter().map(|x| x.iter().sum()).collect() };
    let kl: Vec<f64> = Vec::<f32>::try_from(&ro.kl).unwrap().into_iter().map(f64::from).collect();
    close_rows("kl", &[kl], &[sums(&e.kl)]);
    let total: Vec<f64> = Vec::<f32>::try_from(&ro.total_rewards).unwrap().into_iter().map(f64::from).collect();
    close_rows("total_rewards", &[total], &[sums(&e.rewards)]);
}

#[test]
fn rollout_assembles_whitened_scores_kl_and_gae_as_the_recipe() {
    check(&config(0.1, 0.9, 0.8, true, true, KlEstimator::K1));
}

#[test]
fn rollout_without_whitening_and_with_k3() {
    check(&config(0.05, 1.0, 0.95, false, false, KlEstimator::K3));
    check(&config(0.01, 1.0, 0.95, true, false, KlEstimator::K1));
}

/// The numbers of the first case worked out by hand, so the plain-Rust recipe above is itself
/// checked: β 0.1, γ 0.9, λ 0.8, scores (1.5, −0.5, 0.25) → mean 0.41667, Bessel variance
/// (1.17361 + 0.84028 + 0.02778) / 2 = 1.02083, whitened (1.07222, −0.90726, −0.16496).
/// Row 2 (one token): kl 0.2, reward −0.02 − 0.16496 = −0.18496, advantage −0.18496 − 0.25 =
/// −0.43496, return −0.18496.
#[test]
fn the_recipe_by_hand() {
    let c = config(0.1, 0.9, 0.8, true, false, KlEstimator::K1);
    let e = expected(
        &[vec![-1.0, -0.5, -2.0], vec![-0.3, -1.2], vec![-0.7]],
        &[vec![-1.2, -0.4, -1.5], vec![-0.5, -1.0], vec![-0.9]],
        &[vec![0.1, 0.2, 0.3], vec![0.4, -0.1], vec![0.25]],
        &[1.5, -0.5, 0.25],
        &c,
    );
    close_rows("scores", std::slice::from_ref(&e.scores), &[vec![1.07222, -0.90726, -0.16496]]);
    assert!((e.kl[2][0] - 0.2).abs() < 1e-9);
    assert!((e.rewards[2][0] + 0.18496).abs() < 1e-5);
    assert!((e.advantages[2][0] + 0.43496).abs() < 1e-5);
    assert!((e.returns[2][0] + 0.18496).abs() < 1e-5);
    // Row 1 (two tokens): kl (0.2, −0.2); rewards (−0.02, 0.02 − 0.90726 = −0.88726);
    // A_1 = −0.88726 − (−0.1) = −0.78726; A_0 = −0.02 + 0.9·(−0.1) − 0.4 + 0.72·(−0.78726) = −1.07683.
    assert!((e.advantages[1][1] + 0.78726).abs() < 1e-5);
    assert!((e.advantages[1][0] + 1.07683).abs() < 1e-5, "{}", e.advantages[1][0]);
}
