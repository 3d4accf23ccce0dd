//! The PPO math against numbers computed by hand (each expected value is worked out in the
//! comment above it).
use ppo::math::*;
use ppo::reward::{combined_logit, RewardSource};
use reward::combine::{logit, sigmoid, SAFETY_THRESHOLD};
use tch::{Kind, Tensor};

fn t2(rows: &[&[f32]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
}

fn v(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1])).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

fn scalar(t: &Tensor) -> f64 {
    f64::try_from(t).unwrap()
}

#[test]
fn masked_mean_and_var_ignore_padding() {
    let x = t2(&[&[1.0, 2.0, 100.0], &[3.0, 4.0, -50.0]]);
    let m = t2(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 0.0]]);
    // mean(1, 2, 3, 4) = 2.5; unbiased var = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
    assert!((scalar(&masked_mean(&x, &m)) - 2.5).abs() < 1e-6);
    assert!((scalar(&masked_var(&x, &m)) - 5.0 / 3.0).abs() < 1e-6);
    // A boolean mask works the same.
    assert!((scalar(&masked_mean(&x, &m.to_kind(Kind::Bool))) - 2.5).abs() < 1e-6);
}

#[test]
fn masked_whiten_by_hand() {
    let x = t2(&[&[1.0, 2.0, 9.0], &[3.0, 4.0, 9.0]]);
    let m = t2(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 0.0]]);
    // (x − 2.5) / √(5/3): ±1.161895 for 1 and 4, ±0.387298 for 2 and 3; padding is 0.
    close(&v(&masked_whiten(&x, &m, true)), &[-1.161895, -0.387298, 0.0, 0.387298, 1.161895, 0.0], 1e-5);
    // Without the shift the mean stays: 2.5 added back.
    close(&v(&masked_whiten(&x, &m, false)), &[1.338105, 2.112702, 0.0, 2.887298, 3.661895, 0.0], 1e-5);
}

#[test]
fn logprobs_and_entropy_by_hand() {
    // logits (0, ln 3) → p = (1/4, 3/4).
    let logits = Tensor::from_slice(&[0.0f32, 3f32.ln(), 0.0, 0.0]).view([1, 2, 2]);
    let labels = Tensor::from_slice(&[1i64, 0]).view([1, 2]);
    // ln 0.75 = −0.287682; second position uniform: ln 0.5 = −0.693147.
    close(&v(&logprobs_of(&logits, &labels)), &[0.75f32.ln(), -std::f32::consts::LN_2], 1e-6);
    // H(1/4, 3/4) = −(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335; H(uniform over 2) = ln 2.
    close(&v(&entropy_from_logits(&logits)), &[0.562335, std::f32::consts::LN_2], 1e-6);
}

#[test]
fn kl_estimators_by_hand() {
    let lp = Tensor::from_slice(&[-1.0f32, -2.0]);
    let rf = Tensor::from_slice(&[-1.5f32, -2.0]);
    // k1: logπ − logπ0 = 0.5 and 0.
    close(&v(&kl_penalty(&lp, &rf, KlEstimator::K1)), &[0.5, 0.0], 1e-6);
    // k3 with log r = −0.5: e^−0.5 − 1 + 0.5 = 0.106531; equal log-probs give 0.
    close(&v(&kl_penalty(&lp, &rf, KlEstimator::K3)), &[0.106531, 0.0], 1e-6);
}

#[test]
fn token_rewards_put_the_score_on_the_last_token() {
    let kl = t2(&[&[1.0, 2.0, 3.0], &[0.5, -1.0, 7.0]]);
    let mask = t2(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
    let scores = Tensor::from_slice(&[10.0f32, -4.0]);
    // β = 0.1: row 0 → (−0.1, −0.2, −0.3 + 10); row 1 (length 2) → (−0.05, 0.1 − 4, 0).
    close(&v(&token_rewards(&kl, &scores, &mask, 0.1)), &[-0.1, -0.2, 9.7, -0.05, -3.9, 0.0], 1e-6);
}

#[test]
fn gae_hand_computed() {
    // Row 0, γ = 1, λ = 0.95, r = (0, 0, 1), V = (0.5, 0.6, 0.7):
    //   δ2 = 1 − 0.7 = 0.3                     A2 = 0.3
    //   δ1 = 0 + 0.7 − 0.6 = 0.1               A1 = 0.1 + 0.95·0.3 = 0.385
    //   δ0 = 0 + 0.6 − 0.5 = 0.1               A0 = 0.1 + 0.95·0.385 = 0.46575
    //   returns = A + V = (0.96575, 0.985, 1.0)
    let r = t2(&[&[0.0, 0.0, 1.0]]);
    let vals = t2(&[&[0.5, 0.6, 0.7]]);
    let m = t2(&[&[1.0, 1.0, 1.0]]);
    let (a, ret) = gae(&r, &vals, &m, 1.0, 0.95);
    close(&v(&a), &[0.46575, 0.385, 0.3], 1e-6);
    close(&v(&ret), &[0.96575, 0.985, 1.0], 1e-6);

    // Row of length 2 padded to 3 (padding values 9 and 5 must not leak), γ = 0.9, λ = 0.5:
    //   δ1 = −1 + 0 − 2 = −3                   A1 = −3
    //   δ0 = 0.5 + 0.9·2 − 1 = 1.3             A0 = 1.3 + 0.45·(−3) = −0.05
    //   returns = (0.95, −1, 0)
    let r = t2(&[&[0.5, -1.0, 9.0]]);
    let vals = t2(&[&[1.0, 2.0, 5.0]]);
    let m = t2(&[&[1.0, 1.0, 0.0]]);
    let (a, ret) = gae(&r, &vals, &m, 0.9, 0.5);
    close(&v(&a), &[-0.05, -3.0, 0.0], 1e-6);
    close(&v(&ret), &[0.95, -1.0, 0.0], 1e-6);

    // λ = 1, γ = 1: the advantage is the Monte-Carlo return minus the value.
    let r = t2(&[&[0.1, 0.2, 0.3]]);
    let vals = t2(&[&[0.4, 0.0, -0.2]]);
    let (a, _) = gae(&r, &vals, &t2(&[&[1.0, 1.0, 1.0]]), 1.0, 1.0);
    close(&v(&a), &[0.6 - 0.4, 0.5, 0.5], 1e-6);
}

#[test]
fn clipped_policy_loss_hand_computed() {
    // old log-probs 0, ratios 1.5, 0.5, 1.1; advantages 1, −1, 2; ε = 0.2:
    //   token 0: max(−1.5, −1.2) = −1.2 (clipped)
    //   token 1: max(0.5, 0.8) = 0.8 (clipped)
    //   token 2: max(−2.2, −2.2) = −2.2 (inside the clip range)
    //   loss = (−1.2 + 0.8 − 2.2) / 3 = −0.866667, clip fraction 2/3
    //   approx KL = ½·mean(ln²1.5, ln²0.5, ln²1.1) = ½·(0.164402 + 0.480453 + 0.009084) / 3 = 0.108990
    // A fourth, masked token must not count.
    let lp = Tensor::from_slice(&[1.5f32.ln(), 0.5f32.ln(), 1.1f32.ln(), 5.0]).view([1, 4]).set_requires_grad(true);
    let old = Tensor::zeros([1, 4], (Kind::Float, tch::Device::Cpu));
    let adv = t2(&[&[1.0, -1.0, 2.0, 100.0]]);
    let m = t2(&[&[1.0, 1.0, 1.0, 0.0]]);
    let pl = clipped_policy_loss(&lp, &old, &adv, &m, 0.2);
    assert!((scalar(&pl.loss) + 2.6 / 3.0).abs() < 1e-6, "{}", scalar(&pl.loss));
    assert!((pl.clip_frac - 2.0 / 3.0).abs() < 1e-6);
    assert!((pl.approx_kl - 0.108990).abs() < 1e-5, "{}", pl.approx_kl);
    // Gradient flows only through the unclipped token: d/dlp (−A·ρ)/3 = −2·1.1/3.
    pl.loss.backward();
    close(&v(&lp.grad()), &[0.0, 0.0, -2.2 / 3.0, 0.0], 1e-6);
}

#[test]
fn clipped_value_loss_hand_computed() {
    // old values 1, new 1.5 and 0.9, returns 2 and 0, ε = 0.2:
    //   token 0: max((1.5 − 2)², (1.2 − 2)²) = max(0.25, 0.64) = 0.64 (clipped)
    //   token 1: max(0.81, 0.81) = 0.81
    //   loss = ½·(0.64 + 0.81) / 2 = 0.3625, clip fraction 1/2
    let vals = t2(&[&[1.5, 0.9, 7.0]]);
    let old = t2(&[&[1.0, 1.0, 0.0]]);
    let ret = t2(&[&[2.0, 0.0, 0.0]]);
    let m = t2(&[&[1.0, 1.0, 0.0]]);
    let (loss, frac) = clipped_value_loss(&vals, &old, &ret, &m, 0.2);
    assert!((scalar(&loss) - 0.3625).abs() < 1e-6);
    assert!((frac - 0.5).abs() < 1e-6);
}

#[test]
fn explained_variance_by_hand() {
    let ret = t2(&[&[1.0, 2.0, 3.0, 4.0]]);
    let m = t2(&[&[1.0, 1.0, 1.0, 1.0]]);
    assert!((explained_variance(&ret, &ret, &m) - 1.0).abs() < 1e-9);
    // Constant values: Var(R − V) = Var(R), nothing explained.
    assert!(explained_variance(&Tensor::zeros_like(&ret), &ret, &m).abs() < 1e-6);
    // V = R − (0.5, −0.5, 0.5, −0.5): Var(R − V) = 1/3, Var(R) = 5/3 → 0.8.
    let vals = &ret - t2(&[&[0.5, -0.5, 0.5, -0.5]]);
    assert!((explained_variance(&vals, &ret, &m) - 0.8).abs() < 1e-6);
}

#[test]
fn llama2_reward_combination_threshold_and_logit() {
    let (s_raw, h_raw) = (logit(0.9), logit(0.2));
    // Safety prompt: always R_s, whatever the scores. LOGIT undoes the sigmoid.
    let (r, src) = combined_logit(Some(s_raw), Some(h_raw), true, SAFETY_THRESHOLD);
    assert_eq!(src, RewardSource::Safety);
    assert!((r - logit(0.9)).abs() < 1e-9 && (r - 2.197225).abs() < 1e-6);
    // Not tagged, R_s = 0.5 ≥ 0.15: R_h = 0.2, logit(0.2) = ln(0.25) = −1.386294.
    let (r, src) = combined_logit(Some(0.0), Some(h_raw), false, SAFETY_THRESHOLD);
    assert_eq!(src, RewardSource::Helpfulness);
    assert!((r + 1.386294).abs() < 1e-6);
    // Not tagged but R_s = 0.1 < 0.15: the safety score wins, logit(0.1) = −2.197225.
    let (r, src) = combined_logit(Some(logit(0.1)), Some(logit(0.95)), false, SAFETY_THRESHOLD);
    assert_eq!(src, RewardSource::Safety);
    assert!((r + 2.197225).abs() < 1e-6);
    // Just above the threshold: helpfulness.
    let (_, src) = combined_logit(Some(logit(0.151)), Some(logit(0.95)), false, SAFETY_THRESHOLD);
    assert_eq!(src, RewardSource::Helpfulness);
    // One model only: its score, as is.
    assert!((combined_logit(None, Some(1.25), true, SAFETY_THRESHOLD).0 - 1.25).abs() < 1e-12);
    let (r, src) = combined_logit(Some(-0.5), None, false, SAFETY_THRESHOLD);
    assert!((r + 0.5).abs() < 1e-12 && src == RewardSource::Safety);
    // A saturated score stays finite.
    assert!(combined_logit(None, Some(80.0), false, SAFETY_THRESHOLD).0.is_finite());
    assert!((sigmoid(logit(0.15)) - 0.15).abs() < 1e-12);
}
