//! AdamW over plain tensors, with the Llama 2 settings as defaults (β = (0.9, 0.95), eps 1e-5,
//! weight decay 0.1 not applied to norms), global-norm gradient clipping, and mixed precision:
//! when the model computes in bf16 the optimizer keeps fp32 master weights and moments and
//! copies the updated masters back into the model after each step.
//!
//! The update is torch.optim.AdamW's (decoupled decay, bias-corrected moments):
//! `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
//! `p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)`.
//! Every piece of state is a named tensor, so a checkpoint holds it exactly.
use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// Llama 2 Section 2.2 / 3.1: AdamW(0.9, 0.95), eps 1e-5, weight decay 0.1.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay: 0.1 }
    }
}

struct Param {
    name: String,
    var: Tensor,
    /// fp32 master copy when the model variable is not fp32.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    params: Vec<Param>,
    /// Number of updates applied so far.
    pub step: u64,
}

/// Weight decay applies to matrices, not to norm gains (or any 1-D tensor).
pub fn decays(name: &str, t: &Tensor) -> bool {
    t.dim() >= 2 && !name.contains("norm")
}

impl AdamW {
    /// Optimizes every trainable variable of `vs` whose name passes `filter`.
    pub fn new(vs: &nn::VarStore, cfg: AdamWConfig, filter: impl Fn(&str) -> bool) -> Self {
        // Frozen variables (`VarStore::freeze`) do not require gradients.
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, t)| filter(n) && t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = tch::no_grad(|| {
            vars.into_iter()
                .map(|(name, var)| {
                    let master = (var.kind() != Kind::Float).then(|| var.to_kind(Kind::Float).detach());
                    let m = Tensor::zeros_like(&var).to_kind(Kind::Float);
                    let v = Tensor::zeros_like(&var).to_kind(Kind::Float);
                    let decay = decays(&name, &var);
                    Param { name, var, master, m, v, decay }
                })
                .collect()
        });
        AdamW { cfg, params, step: 0 }
    }

    pub fn num_parameters(&self) -> i64 {
        self.params.iter().map(|p| p.var.numel() as i64).sum()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// Global L2 norm of the gradients, clipped to `max_norm` in place when above it (as
    /// `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|p| p.var.grad()).filter(|g| g.defined()).collect();
            if grads.is_empty() {
                return 0.0;
            }
            // Per-tensor L2 norms, then the norm of those (as torch): one pass, no temporaries.
            // (`to_kind` of a float32 gradient returns it as is, no copy.)
            let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
            let total = f64::try_from(Tensor::stack(&norms, 0).norm()).unwrap_or(f64::NAN);
            if max_norm > 0.0 && total.is_finite() {
                let coef = max_norm / (total + 1e-6);
                if coef < 1.0 {
                    for mut g in grads {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
            total
        })
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let t = self.step as i32;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                let g = grad.to_kind(Kind::Float);
                let mut w = match &p.master {
                    Some(m) => m.shallow_clone(),
                    None => p.var.shallow_clone(),
                };
                if p.decay && weight_decay != 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                // In place, one temporary per tensor: this loop streams every parameter, so
                // its memory traffic is what costs on a CPU.
                let _ = p.m.lerp_(&g, 1.0 - beta1);
                let _ = p.v.g_mul_scalar_(beta2);
                let mut g2 = g.square();
                let _ = g2.g_mul_scalar_(1.0 - beta2);
                let _ = p.v.g_add_(&g2);
                // denom = -(√v/√(1−β2ᵗ) + eps)·(1−β1ᵗ)/lr, so w + m/denom is the AdamW step.
                let mut denom = p.v.sqrt();
                let _ = denom.g_div_scalar_(bc2_sqrt);
                let _ = denom.g_add_scalar_(eps);
                let _ = denom.g_mul_scalar_(-bc1 / lr);
                let _ = w.addcdiv_(&p.m, &denom);
                if p.master.is_some() {
                    p.var.copy_(&w);
                }
            }
        });
    }

    /// Every piece of optimizer state as named tensors (`m.<param>`, `v.<param>`, `master.<param>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
            if let Some(m) = &p.master {
                out.push((format!("master.{}", p.name), m.shallow_clone()));
            }
        }
        out
    }

    /// Restores the state written by [`AdamW::state_tensors`]; `get` returns a saved tensor by name.
    pub fn load_state(&mut self, step: u64, mut get: impl FnMut(&str) -> Result<Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                for (prefix, dst) in [("m", &mut p.m), ("v", &mut p.v)] {
                    let src = get(&format!("{prefix}.{}", p.name))?;
                    if src.size() != dst.size() {
                        return Err(TrainError::Config(format!(
                            "optimizer state {prefix}.{} has shape {:?}, the model {:?}",
                            p.name,
                            src.size(),
                            dst.size()
                        )));
                    }
                    dst.f_copy_(&src)?;
                }
                if let Some(master) = &mut p.master {
                    master.f_copy_(&get(&format!("master.{}", p.name))?)?;
                    p.var.f_copy_(master)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}
