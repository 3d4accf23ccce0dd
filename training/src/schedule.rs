//! Learning-rate schedules: cosine with linear warmup decaying to a floor (Llama 2: SFT and RMs
//! decay to 10% of peak, warmup 3% of steps with a minimum of 5 for the RMs) and constant (PPO).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Linear warmup from 0 to `peak` over `warmup_steps`, then cosine decay to
    /// `peak * floor_ratio` at `total_steps`.
    Cosine {
        peak: f64,
        warmup_steps: u64,
        total_steps: u64,
        floor_ratio: f64,
    },
    Constant {
        lr: f64,
    },
}

impl LrSchedule {
    /// The learning rate of optimizer step `step` (0-based: the first update uses `lr(0)`).
    pub fn lr(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Cosine { peak, warmup_steps, total_steps, floor_ratio } => {
                if step < warmup_steps {
                    return peak * (step + 1) as f64 / warmup_steps as f64;
                }
                let decay = total_steps.saturating_sub(warmup_steps).max(1);
                let progress = ((step - warmup_steps) as f64 / decay as f64).min(1.0);
                let floor = peak * floor_ratio;
                floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Llama 2 RM warmup: 3% of the steps, at least 5 (never more than the steps themselves).
pub fn warmup_steps(total_steps: u64, ratio: f64, minimum: u64) -> u64 {
    (((total_steps as f64) * ratio).round() as u64).max(minimum).min(total_steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warmup_then_decay_to_floor() {
        let s = LrSchedule::Cosine { peak: 1.0, warmup_steps: 4, total_steps: 104, floor_ratio: 0.1 };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        // Halfway through the decay: floor + (peak - floor) / 2.
        assert!((s.lr(54) - 0.55).abs() < 1e-12);
        assert!((s.lr(104) - 0.1).abs() < 1e-12);
        assert!((s.lr(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn rm_warmup_rule() {
        assert_eq!(warmup_steps(1000, 0.03, 5), 30);
        assert_eq!(warmup_steps(50, 0.03, 5), 5);
        assert_eq!(warmup_steps(3, 0.03, 5), 3);
    }
}
