//! Llama 2 Eq. 2: `L = −log σ(r(x, y_c) − r(x, y_r) − m(r))`, with the margin m of Table 27, plus
//! an optional reward-centering term `c · mean((r_c + r_r)²)` (Eisenstein et al. 2023; TRL's
//! `center_rewards_coefficient`), and for the safety RM the auxiliary safe/unsafe term of
//! Table 29 ([`safety_aux_loss_sum`]).
use datasets::Rating;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MarginKind {
    /// Eq. 1: no margin.
    None,
    /// Table 27 "Margin Small": 1, 2/3, 1/3, 0.
    #[default]
    Small,
    /// Table 27 "Margin Large": 3, 2, 1, 0.
    Large,
}

/// m(r) of Table 27 (significantly better, better, slightly better, negligibly better / unsure).
/// A pair without a rating gets no margin.
pub fn margin(kind: MarginKind, rating: Option<Rating>) -> f64 {
    let Some(r) = rating else { return 0.0 };
    let i = match r {
        Rating::SignificantlyBetter => 0,
        Rating::Better => 1,
        Rating::SlightlyBetter => 2,
        Rating::NegligiblyBetter => 3,
    };
    match kind {
        MarginKind::None => 0.0,
        MarginKind::Small => [1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0][i],
        MarginKind::Large => [3.0, 2.0, 1.0, 0.0][i],
    }
}

/// Mean over pairs of `−log σ(r_c − r_r − m) + c·(r_c + r_r)²`; `chosen`, `rejected`, `margins` are `[B]`.
pub fn ranking_loss(chosen: &Tensor, rejected: &Tensor, margins: &Tensor, center_coef: f64) -> Tensor {
    let diff = chosen.to_kind(Kind::Float) - rejected.to_kind(Kind::Float) - margins;
    let mut loss = diff.log_sigmoid().neg().mean(Kind::Float);
    if center_coef != 0.0 {
        loss += (chosen + rejected).square().mean(Kind::Float) * center_coef;
    }
    loss
}

/// The safety RM's auxiliary loss (Llama 2 Table 29, formula not stated): binary cross-entropy of
/// σ(r_θ(x, y)) against the response's safety label (1 safe, 0 unsafe),
/// `−[s·log σ(r) + (1 − s)·log(1 − σ(r))]`, summed over the responses with `labelled = 1`.
/// `scores`, `safe`, `labelled` have the same shape (`[B, 2]`: chosen, rejected). The caller
/// divides by the number of labelled responses of the whole optimizer step, so that the term is
/// their mean however the step is split into micro-batches or ranks.
///
/// Why this form: the safety RM's sigmoid score is read as P(safe) at the 0.5 threshold of
/// Table 29 (unsafe when σ(r) < 0.5); a logistic term on exactly that probability is what raises
/// unsafe-response recall there (73.0 → 90.4 in Table 29), while Eq. 2 alone only orders pairs.
pub fn safety_aux_loss_sum(scores: &Tensor, safe: &Tensor, labelled: &Tensor) -> Tensor {
    let r = scores.to_kind(Kind::Float);
    let s = safe.to_kind(Kind::Float);
    // log(1 − σ(r)) = log σ(−r): both terms through log_sigmoid, finite for any score.
    let unsafe_ = s.ones_like() - &s;
    let nll: Tensor = (&s * r.log_sigmoid() + unsafe_ * r.neg().log_sigmoid()).neg();
    (nll * labelled.to_kind(Kind::Float)).sum(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_27_margins() {
        assert_eq!(margin(MarginKind::Small, Some(Rating::SignificantlyBetter)), 1.0);
        assert!((margin(MarginKind::Small, Some(Rating::SlightlyBetter)) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(margin(MarginKind::Large, Some(Rating::Better)), 2.0);
        assert_eq!(margin(MarginKind::Large, Some(Rating::NegligiblyBetter)), 0.0);
        assert_eq!(margin(MarginKind::None, Some(Rating::SignificantlyBetter)), 0.0);
        assert_eq!(margin(MarginKind::Large, None), 0.0);
    }

    /// Hand-computed: pairs (r_c, r_r, m) = (2, 0.5, 1), (0, 1, 0): diffs 0.5 and −1;
    /// −log σ(0.5) = 0.474077, −log σ(−1) = 1.313262, mean 0.893670.
    /// Centering c = 0.1: mean((2.5)², 1²) = 3.625 → + 0.3625.
    #[test]
    fn ranking_loss_by_hand() {
        let c = Tensor::from_slice(&[2.0f32, 0.0]);
        let r = Tensor::from_slice(&[0.5f32, 1.0]);
        let m = Tensor::from_slice(&[1.0f32, 0.0]);
        let l = f64::try_from(ranking_loss(&c, &r, &m, 0.0)).unwrap();
        assert!((l - 0.893670).abs() < 1e-5, "{l}");
        let l = f64::try_from(ranking_loss(&c, &r, &m, 0.1)).unwrap();
        assert!((l - (0.893670 + 0.3625)).abs() < 1e-5, "{l}");
    }

    /// Hand-computed: responses r = (2, −1 | 0.5, 3) with labels (safe, unsafe | unlabelled, unsafe).
    /// −log σ(2) = 0.126928, −log(1 − σ(−1)) = −log σ(1) = 0.313262, the unlabelled 0.5 counts
    /// nothing, −log(1 − σ(3)) = −log σ(−3) = 3.048587: sum 3.488777 (mean over 3: 1.162926).
    #[test]
    fn safety_aux_loss_by_hand() {
        let scores = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 3.0]).view([2, 2]);
        let safe = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0]).view([2, 2]);
        let labelled = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 1.0]).view([2, 2]);
        let l = f64::try_from(safety_aux_loss_sum(&scores, &safe, &labelled)).unwrap();
        assert!((l - 3.488777).abs() < 1e-5, "{l}");
        // An extreme score stays finite (log_sigmoid, not log of a saturated σ).
        let big = Tensor::from_slice(&[200.0f32, 0.0]).view([1, 2]);
        let l = f64::try_from(safety_aux_loss_sum(
            &big,
            &Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]),
            &Tensor::ones([1, 2], (Kind::Float, tch::Device::Cpu)),
        ))
        .unwrap();
        assert!((l - (200.0 + std::f64::consts::LN_2)).abs() < 1e-3, "{l}");
    }
}
