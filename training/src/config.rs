//! `TrainConfig`: the knobs every trainer shares. Defaults are the Llama 2 SFT recipe
//! (Section 3.1: lr 2e-5 cosine, weight decay 0.1, batch 64, 2 epochs; AdamW 0.9/0.95 eps 1e-5
//! and clip 1.0 from Section 2.2). Stage configs override what differs (RM lr 1e-5, PPO 1e-6 constant).
use crate::optim::AdamWConfig;
use crate::schedule::{warmup_steps, LrSchedule};
use llama::device::{Compute, DeviceSpec, Dtype};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Cosine,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Peak learning rate (Llama 2 SFT: 2e-5).
    pub lr: f64,
    /// `cosine` (warmup then decay to `lr_floor_ratio * lr`) or `constant`.
    pub schedule: ScheduleKind,
    /// Cosine floor as a share of the peak (Llama 2: 10%).
    pub lr_floor_ratio: f64,
    /// Warmup as a share of the total optimizer steps (Llama 2 RMs: 3%).
    pub warmup_ratio: f64,
    /// Minimum warmup steps (Llama 2 RMs: 5).
    pub warmup_min_steps: u64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW eps.
    pub eps: f64,
    /// Decoupled weight decay, not applied to norm gains.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
    /// Sequences (or pairs) per micro-batch.
    pub micro_batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accumulation: usize,
    /// Passes over the training data.
    pub epochs: u64,
    /// Stop after this many optimizer steps (overrides epochs when smaller).
    pub max_steps: Option<u64>,
    /// Seed of data order and initialisation.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// Compute dtype (default: fp32 on CPU, bf16 on CUDA with fp32 master weights).
    pub dtype: Option<Dtype>,
    /// libtorch intra-op threads (default: all cores).
    pub threads: Option<usize>,
    /// Save a checkpoint every N optimizer steps (0: only at the end).
    pub save_every: u64,
    /// Keep the newest N checkpoints (the best by eval loss is kept as well).
    pub keep_last: usize,
    /// Log a metrics line every N optimizer steps.
    pub log_every: u64,
    /// Evaluate on the held-out split every N optimizer steps (0: only at the end).
    pub eval_every: u64,
    /// Distributed runs: 0 replicates the optimizer state on every rank; 1 and 2 shard the fp32
    /// masters and moments over the ranks (ZeRO; 2 reduce-scatters the gradients); 3 also shards
    /// the decoder layers' weights, each gathered just before it runs and freed after (needs
    /// `gradient_checkpointing`; SFT only so far, docs/distributed.md). Not serialised at 0, so
    /// configs and fingerprints without it are unchanged.
    #[serde(skip_serializing_if = "is_zero")]
    pub zero_stage: u8,
    /// Activation checkpointing: layers are recomputed in the backward pass, so a micro-batch
    /// holds one `[B, T, D]` input per layer instead of every layer's activations (SFT, reward
    /// models, PPO's policy and value; gradients equal the plain backward's). Not serialised when
    /// off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// `cpu`: AdamW's fp32 masters and moments live in host memory and are updated there; the
    /// model's weights get the updated values copied back (`none`, the default: on the model's
    /// device). Not serialised at `none`.
    #[serde(skip_serializing_if = "Offload::is_none")]
    pub optimizer_offload: Offload,
    /// Elements per ZeRO collective (default 2^26, 256 MiB of fp32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_bucket: Option<u64>,
}

/// Where AdamW's state lives ([`TrainConfig::optimizer_offload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Offload {
    #[default]
    None,
    Cpu,
}

impl Offload {
    fn is_none(&self) -> bool {
        *self == Offload::None
    }
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 2e-5,
            schedule: ScheduleKind::Cosine,
            lr_floor_ratio: 0.1,
            warmup_ratio: 0.03,
            warmup_min_steps: 5,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-5,
            weight_decay: 0.1,
            grad_clip: 1.0,
            micro_batch_size: 8,
            grad_accumulation: 8,
            epochs: 2,
            max_steps: None,
            seed: 0,
            device: DeviceSpec::Auto,
            dtype: None,
            threads: None,
            save_every: 0,
            keep_last: 2,
            log_every: 1,
            eval_every: 0,
            zero_stage: 0,
            gradient_checkpointing: false,
            optimizer_offload: Offload::None,
            zero_bucket: None,
        }
    }
}

impl TrainConfig {
    /// The device and compute dtype of the run, resolved once. In a distributed run a CUDA
    /// device is the rank's own, `cuda:LOCAL_RANK`.
    pub fn compute(&self) -> Result<Compute, llama::LlamaError> {
        let mut c = self.device.compute(self.dtype)?;
        if let (Some(d), tch::Device::Cuda(_)) = (distributed::get(), c.device) {
            c.device = d.cuda_device();
        }
        Ok(c)
    }

    /// This config with the keys that change how a run executes but not what it computes
    /// (`zero_stage`, `zero_bucket`, `gradient_checkpointing`, `optimizer_offload`) at their
    /// defaults: what a run's fingerprint hashes, so a run can resume with checkpointing turned
    /// on after running out of memory, or on another ZeRO stage.
    pub fn for_fingerprint(&self) -> TrainConfig {
        TrainConfig { zero_stage: 0, zero_bucket: None, gradient_checkpointing: false, optimizer_offload: Offload::None, ..self.clone() }
    }

    /// AdamW over the trainable variables of `vs`, sharded by `zero_stage` in a distributed run.
    /// At ZeRO-3 the trainer must pass the optimizer's [`crate::AdamW::shard_hooks`] to its model
    /// and run the same number of backward passes on every rank (SFT, reward models and PPO do).
    pub fn optimizer_zero3(&self, vs: &tch::nn::VarStore) -> Result<crate::AdamW, crate::TrainError> {
        crate::AdamW::with_options(vs, self.adamw(), |_| true, self.state_options())
    }

    /// How the optimizer keeps its state: ZeRO stage, bucket, offload (also what ZeRO-3's
    /// shard-on-load cuts the layers by, [`crate::optim::LayerShards::for_options`]).
    pub fn state_options(&self) -> crate::optim::StateOptions {
        let bucket = self.zero_bucket.map_or(crate::zero::DEFAULT_BUCKET, |b| b as i64);
        let offload = match self.optimizer_offload {
            Offload::None => None,
            Offload::Cpu => Some(tch::Device::Cpu),
        };
        crate::optim::StateOptions { zero_stage: self.zero_stage, bucket, offload }
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay }
    }

    /// The schedule for a run of `total_steps` optimizer steps.
    pub fn lr_schedule(&self, total_steps: u64) -> LrSchedule {
        match self.schedule {
            ScheduleKind::Constant => LrSchedule::Constant { lr: self.lr },
            ScheduleKind::Cosine => LrSchedule::Cosine {
                peak: self.lr,
                warmup_steps: warmup_steps(total_steps, self.warmup_ratio, self.warmup_min_steps),
                total_steps,
                floor_ratio: self.lr_floor_ratio,
            },
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr > 0.0) {
            return Err(format!("lr must be positive, got {}", self.lr));
        }
        if self.micro_batch_size == 0 || self.grad_accumulation == 0 {
            return Err("micro_batch_size and grad_accumulation must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err("beta1 and beta2 must be in [0, 1)".into());
        }
        if self.zero_bucket == Some(0) {
            return Err("zero_bucket must be at least 1".into());
        }
        if self.zero_stage > 3 {
            return Err(format!("zero_stage must be 0, 1, 2 or 3, got {}", self.zero_stage));
        }
        if self.zero_stage == 3 && !self.gradient_checkpointing {
            return Err("zero_stage 3 frees each decoder layer's weights after it runs, so the backward must recompute it: \
                        set gradient_checkpointing = true"
                .into());
        }
        if !(0.0..=1.0).contains(&self.lr_floor_ratio) {
            return Err("lr_floor_ratio must be in [0, 1]".into());
        }
        Ok(())
    }
}
