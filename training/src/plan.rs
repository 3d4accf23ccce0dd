//! The memory planner: bytes per device of a training stage, before it runs (`rlhf plan`).
//!
//! Per trained model: weights, gradients (full size in the model's dtype: the reduction runs after
//! the backward, docs/distributed.md), the fp32 gradient sums of a step with several
//! micro-batches (non-fp32 models), AdamW's fp32 state (masters when the model is not fp32 or the
//! state is offloaded, and both moments; divided by the world size under ZeRO, plus the fp32
//! gradient shard; in host memory when offloaded), the activations of one micro-batch (with or
//! without activation checkpointing) and the LM head's float32 logits at the loss positions. Per
//! frozen model: its weights. Generation: the KV cache. Under ZeRO-3 (`zero_stage = 3`) the
//! decoder layers' weights are divided by the world size too, plus one gathered layer in flight
//! (its weights, its gradients and the fp32 reduce-scatter bucket); embeddings and heads stay whole.
//! PPO's frozen models under ZeRO-3 ([`frozen_in_stage`]): their layers' shards (1/W of them, in
//! the compute dtype, on the host with `offload_frozen`), the rest whole, and one gathered layer
//! while the model runs (in the working set, [`ModelBytes::in_flight`]).
//!
//! The peak is the steady state's; loading is not planned separately. Under ZeRO-3 every stage
//! shards on load (SFT, reward models, PPO's five models: each decoder layer read and sharded as
//! it is built), so while loading a device holds the static bytes counted here less the trained
//! models' gathered layers, plus the one layer being built: within the planned peak. A model
//! loaded whole first (a PEFT adapter folder as a start) needs its whole weights on each device
//! at load, which this plan does not show.
//!
//! The activation and logits terms are a model of this implementation, calibrated on CPU against
//! peak RSS of the 20M bench model (docs/benchmarks.md, docs/memory.md): per layer and token,
//! `10·D + 4·I` saved elements (norm inputs and outputs, q/k/v and their rotated copies, the
//! attention output, the residual, the MLP's gate, up, activation and product) and no `T²` term
//! (the attention kernels keep no probabilities); 3.5 float32 copies of the logits (logits,
//! log-softmax, its gradient, the logits' gradient, one of which the allocator mostly reuses:
//! measured since AdamW releases the gradients after each update); a fixed runtime overhead.
use llama::Config;

/// Bytes of the runtime itself (libtorch and its allocator; the CUDA context on a GPU).
pub const RUNTIME_OVERHEAD: f64 = 0.4e9;

/// Parameters of the causal LM `cfg` (with its LM head unless tied).
pub fn causal_lm_params(cfg: &Config) -> i64 {
    cfg.num_parameters()
}

/// Parameters of one decoder layer: q, k, v, o, the MLP's three matrices and two norm gains.
pub fn layer_params(cfg: &Config) -> i64 {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    d * q + 2 * d * kv + q * d + 3 * d * i + 2 * d
}

/// Parameters of the trunk (`model.*`): the causal LM without its own LM head.
pub fn trunk_params(cfg: &Config) -> i64 {
    cfg.num_parameters() - if cfg.tie_word_embeddings { 0 } else { cfg.vocab_size * cfg.hidden_size }
}

/// How one trained model of a stage runs.
#[derive(Debug, Clone)]
pub struct Training {
    /// Bytes per element of the compute dtype (2 for bf16, 4 for fp32).
    pub dtype_bytes: f64,
    pub micro_batch: i64,
    /// Tokens per row of a micro-batch.
    pub seq_len: i64,
    /// Positions per row where the LM head runs (0 for a scalar head).
    pub head_positions: i64,
    /// Micro-batches a rank runs per optimizer step.
    pub micro_batches_per_rank: i64,
    pub gradient_checkpointing: bool,
    pub zero_stage: u8,
    pub world_size: i64,
    pub offload: bool,
    /// LoRA: the trainable (adapter) parameters; gradients and optimizer state are theirs only,
    /// the base weights stay (frozen) on the device.
    pub lora_params: Option<i64>,
}

/// Bytes of one model of a stage, by kind; `host` is what lives off the device (offload).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelBytes {
    pub role: String,
    pub params: i64,
    pub weights: f64,
    pub gradients: f64,
    pub fp32_gradient_sums: f64,
    pub optimizer: f64,
    pub activations: f64,
    pub activations_without_checkpointing: f64,
    pub logits: f64,
    pub host: f64,
    /// A frozen model kept in host memory and brought to the device only to score a rollout,
    /// together with the other models of the same group (PPO: 1 the reference, 2 the reward models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parked: Option<u8>,
    /// A frozen model sharded under ZeRO-3: one decoder layer gathered while it runs (on the
    /// device only then, like a trained model's gradients).
    #[serde(skip_serializing_if = "is_zero")]
    pub in_flight: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl ModelBytes {
    /// Bytes on the device.
    pub fn device_total(&self) -> f64 {
        self.static_bytes() + self.training_bytes()
    }

    /// Bytes held on the device for the whole stage (a parked model's weights are not;
    /// gradients live only from a backward to the update, [`ModelBytes::training_bytes`]).
    pub fn static_bytes(&self) -> f64 {
        let weights = if self.parked.is_some() { 0.0 } else { self.weights };
        weights + self.optimizer
    }

    /// What the model adds while it trains: gradients, their fp32 sums, activations and logits.
    pub fn training_bytes(&self) -> f64 {
        self.gradients + self.fp32_gradient_sums + self.activations + self.logits
    }
}

/// The bytes of a model trained as `t`; `params` from [`causal_lm_params`] or [`trunk_params`]
/// (+ a head).
pub fn trained(role: &str, cfg: &Config, params: i64, vocab_head: bool, t: &Training) -> ModelBytes {
    let base = params as f64;
    let p = t.lora_params.unwrap_or(params) as f64;
    let (d, i, l) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.num_hidden_layers as f64);
    let tokens = (t.micro_batch * t.seq_len) as f64;
    let sharded = t.zero_stage > 0 && t.world_size > 1;
    let w = if sharded { t.world_size as f64 } else { 1.0 };
    // ZeRO-3 (full fine-tuning): the decoder layers' weights are sharded too, one layer gathered
    // at a time (its weights, then its gradients until they are reduce-scattered through an fp32
    // bucket); the embeddings, final norm and head stay whole on every rank.
    let zero3 = sharded && t.zero_stage == 3 && t.lora_params.is_none();
    let layer = layer_params(cfg) as f64;
    let whole_p = if zero3 { p - l * layer } else { p };
    let in_flight_weights = if zero3 { layer * t.dtype_bytes } else { 0.0 };
    let reduce_buffer = layer.min(crate::zero::DEFAULT_BUCKET as f64) * 4.0 * (1.0 + 1.0 / w);
    let in_flight_grads = if zero3 { layer * t.dtype_bytes + reduce_buffer } else { 0.0 };
    // A ZeRO shard always has its own fp32 masters (ZeRO-3 gathers the layers from them).
    let masters = if t.dtype_bytes != 4.0 || t.offload || sharded { 4.0 } else { 0.0 };
    let state = (masters + 8.0) * p / w + if sharded { 4.0 * p / w } else { 0.0 };
    let sums = t.dtype_bytes != 4.0 && t.micro_batches_per_rank > 1;
    let per_layer = tokens * (10.0 * d + 4.0 * i) * t.dtype_bytes;
    let plain = l * per_layer;
    let checkpointed = l * tokens * d * t.dtype_bytes + per_layer;
    let logits = if vocab_head { 3.5 * (t.micro_batch * t.head_positions) as f64 * cfg.vocab_size as f64 * 4.0 } else { 0.0 };
    ModelBytes {
        role: role.into(),
        params,
        // ZeRO-3 holds no shard of the weights in the model's dtype: a layer is gathered from the
        // ranks' fp32 masters (in `optimizer`, or on the host when offloaded).
        weights: if zero3 {
            whole_p * t.dtype_bytes + in_flight_weights
        } else {
            (base + if t.lora_params.is_some() { p } else { 0.0 }) * t.dtype_bytes
        },
        gradients: whole_p * t.dtype_bytes + in_flight_grads,
        // With an offloaded optimizer in one process the sums live in host memory too. ZeRO-3
        // sums the layers' gradients into the fp32 shard as each layer's backward ends.
        fp32_gradient_sums: if sums && !(t.offload && t.world_size == 1) { 4.0 * whole_p } else { 0.0 },
        optimizer: if t.offload { 0.0 } else { state },
        activations: if t.gradient_checkpointing { checkpointed } else { plain },
        activations_without_checkpointing: plain,
        logits,
        host: if t.offload { state + if sums && t.world_size == 1 { 4.0 * p } else { 0.0 } } else { 0.0 },
        parked: None,
        in_flight: 0.0,
    }
}

/// A frozen model: its weights only.
pub fn frozen(role: &str, params: i64, dtype_bytes: f64) -> ModelBytes {
    ModelBytes { role: role.into(), params, weights: params as f64 * dtype_bytes, ..Default::default() }
}

/// A frozen model parked in host memory between uses (PPO's `offload_frozen`), brought to the
/// device with the other models of its `group`.
pub fn parked(role: &str, params: i64, dtype_bytes: f64, group: u8) -> ModelBytes {
    let w = params as f64 * dtype_bytes;
    ModelBytes { role: role.into(), params, weights: w, host: w, parked: Some(group), ..Default::default() }
}

/// A frozen model sharded over `world` ranks (ZeRO-3, training::zero3_frozen): each rank keeps
/// 1/`world` of the decoder layers in the compute dtype (in host memory with `offload`) and the
/// other parameters (`params` minus the layers: embeddings, norm, head) whole on the device; one
/// layer is gathered at a time while it runs.
pub fn frozen_sharded(role: &str, cfg: &Config, params: i64, dtype_bytes: f64, world: i64, offload: bool) -> ModelBytes {
    let layer = layer_params(cfg) as f64;
    let layers = cfg.num_hidden_layers as f64 * layer;
    let whole = params as f64 - layers;
    let shards = layers * dtype_bytes / world.max(1) as f64;
    ModelBytes {
        role: role.into(),
        params,
        weights: whole * dtype_bytes + if offload { 0.0 } else { shards },
        host: if offload { shards } else { 0.0 },
        in_flight: layer * dtype_bytes,
        ..Default::default()
    }
}

/// How PPO holds a frozen model (reference, reward models) of a stage trained as `t`: sharded
/// under ZeRO-3 in a distributed run (its shards on the host with `offload_frozen`), else parked
/// in host memory between uses (`offload_frozen`, brought in with `group`), else whole.
pub fn frozen_in_stage(role: &str, cfg: &Config, params: i64, t: &Training, offload_frozen: bool, group: u8) -> ModelBytes {
    if t.zero_stage == 3 && t.world_size > 1 {
        frozen_sharded(role, cfg, params, t.dtype_bytes, t.world_size, offload_frozen)
    } else if offload_frozen {
        parked(role, params, t.dtype_bytes, group)
    } else {
        frozen(role, params, t.dtype_bytes)
    }
}

/// Bytes of a KV cache for `batch` sequences of `len` tokens.
pub fn kv_cache(cfg: &Config, batch: i64, len: i64, dtype_bytes: f64) -> f64 {
    2.0 * (cfg.num_hidden_layers * batch * len * cfg.num_key_value_heads * cfg.head_dim) as f64 * dtype_bytes
}

/// A stage's plan: its models and the peak on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StagePlan {
    pub models: Vec<ModelBytes>,
    /// KV cache of generation (PPO rollouts), not held while training.
    pub kv_cache: f64,
    pub runtime: f64,
    pub device_peak: f64,
    pub host: f64,
}

impl StagePlan {
    /// The peak: every model's static bytes (weights, optimizer state on the device), plus the
    /// largest of: one trained model's gradients, fp32 sums, activations and logits (one model
    /// trains at a time and AdamW releases its gradients after the update), the generation KV
    /// cache, the largest group of parked frozen models (on the device together while they
    /// score a rollout), and the largest gathered layer of a sharded frozen model (ZeRO-3; a
    /// trained model's gathered layer is counted in its weights, so two trained models under
    /// ZeRO-3 count one layer more than is ever gathered at once).
    pub fn new(models: Vec<ModelBytes>, kv_cache: f64) -> StagePlan {
        let static_bytes: f64 = models.iter().map(ModelBytes::static_bytes).sum();
        let group = |g: u8| models.iter().filter(|m| m.parked == Some(g)).map(|m| m.weights).sum::<f64>();
        let scoring = (0..=u8::MAX).map(group).fold(0.0, f64::max);
        let gathered = models.iter().map(|m| m.in_flight).fold(0.0, f64::max);
        let working = models.iter().map(ModelBytes::training_bytes).fold(0.0, f64::max).max(kv_cache).max(scoring).max(gathered);
        let host = models.iter().map(|m| m.host).sum();
        StagePlan { models, kv_cache, runtime: RUNTIME_OVERHEAD, device_peak: static_bytes + working + RUNTIME_OVERHEAD, host }
    }
}

/// The largest micro-batch (up to `max`) whose plan fits `budget` bytes, by `plan_for(micro_batch)`.
pub fn largest_fitting(budget: f64, max: i64, plan_for: impl Fn(i64) -> StagePlan) -> Option<i64> {
    if plan_for(1).device_peak > budget {
        return None;
    }
    let (mut lo, mut hi) = (1, max.max(1));
    while lo < hi {
        let mid = (lo + hi + 1) / 2;
        if plan_for(mid).device_peak <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// "80GiB", "80 GB", "512MiB", "1.5e10" (bytes) as bytes.
pub fn parse_bytes(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 80GiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, GB, GiB, ...)")),
    };
    Ok(v * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(batch: i64, seq: i64, ck: bool) -> Training {
        Training {
            dtype_bytes: 4.0,
            micro_batch: batch,
            seq_len: seq,
            head_positions: seq / 2,
            micro_batches_per_rank: 1,
            gradient_checkpointing: ck,
            zero_stage: 0,
            world_size: 1,
            offload: false,
            lora_params: None,
        }
    }

    #[test]
    fn llama2_parameter_counts() {
        let b = |c: &Config| causal_lm_params(c) as f64 / 1e9;
        assert!((b(&Config::llama2_7b()) - 6.738).abs() < 0.001, "{}", b(&Config::llama2_7b()));
        assert!((b(&Config::llama2_13b()) - 13.016).abs() < 0.001, "{}", b(&Config::llama2_13b()));
        assert!((b(&Config::llama2_70b()) - 68.977).abs() < 0.001, "{}", b(&Config::llama2_70b()));
    }

    /// Peak RSS of `rlhf bench sft --preset bench-20m --device cpu` (docs/benchmarks.md): the plan
    /// is within 15% of each of the four measurements.
    #[test]
    fn the_plan_is_within_15_percent_of_measured_peak_rss_on_cpu() {
        let cfg = Config::bench_20m();
        for (batch, seq, ck, measured) in
            // Re-measured after AdamW began releasing gradients after the update (2026-12-02).
            [(8, 512, false, 1.960e9), (8, 512, true, 1.742e9), (16, 1024, false, 5.852e9), (16, 1024, true, 4.576e9)]
        {
            let plan = StagePlan::new(vec![trained("policy", &cfg, causal_lm_params(&cfg), true, &t(batch, seq, ck))], 0.0);
            let err = plan.device_peak / measured - 1.0;
            assert!(
                err.abs() <= 0.15,
                "{batch}x{seq} checkpointing {ck}: plan {:.2e} vs measured {measured:.2e} ({:+.0}%)",
                plan.device_peak,
                err * 100.0
            );
        }
    }

    #[test]
    fn zero_and_offload_move_the_optimizer_state() {
        let cfg = Config::llama2_7b();
        let p = causal_lm_params(&cfg);
        let base = Training { dtype_bytes: 2.0, ..t(1, 4096, true) };
        let one = trained("policy", &cfg, p, true, &base);
        assert_eq!(one.optimizer, 12.0 * p as f64, "bf16: fp32 masters + two moments");
        let z2 = trained("policy", &cfg, p, true, &Training { zero_stage: 2, world_size: 8, ..base.clone() });
        assert_eq!(z2.optimizer, 16.0 * p as f64 / 8.0, "a shard of the state and of the fp32 gradient");
        let off = trained("policy", &cfg, p, true, &Training { offload: true, ..base.clone() });
        assert_eq!((off.optimizer, off.host), (0.0, 12.0 * p as f64));
        let acc = trained("policy", &cfg, p, true, &Training { micro_batches_per_rank: 4, ..base.clone() });
        assert_eq!(acc.fp32_gradient_sums, 4.0 * p as f64);
        let off_acc = trained("policy", &cfg, p, true, &Training { micro_batches_per_rank: 4, offload: true, ..base.clone() });
        assert_eq!((off_acc.fp32_gradient_sums, off_acc.host), (0.0, 16.0 * p as f64), "offloaded: the sums live on the host too");
    }

    #[test]
    fn zero3_shards_the_layers_weights_and_keeps_one_layer_in_flight() {
        let cfg = Config::llama2_70b();
        let p = causal_lm_params(&cfg);
        let layer = layer_params(&cfg);
        let whole = p - cfg.num_hidden_layers * layer;
        assert_eq!(whole, 2 * 32000 * 8192 + 8192, "embeddings, LM head and the final norm");
        let base = Training { dtype_bytes: 2.0, zero_stage: 3, world_size: 64, ..t(1, 4096, true) };
        let z3 = trained("policy", &cfg, p, true, &base);
        let sharded = (p - whole) as f64;
        assert_eq!(z3.weights, whole as f64 * 2.0 + layer as f64 * 2.0, "the whole parameters and one gathered layer");
        assert!(sharded > 0.98 * p as f64);
        assert_eq!(z3.optimizer, 16.0 * p as f64 / 64.0, "fp32 masters, moments and gradient shard");
        let reduce = (layer as f64).min(crate::zero::DEFAULT_BUCKET as f64) * 4.0 * (1.0 + 1.0 / 64.0);
        assert_eq!(z3.gradients, whole as f64 * 2.0 + layer as f64 * 2.0 + reduce);
        let z2 = trained("policy", &cfg, p, true, &Training { zero_stage: 2, ..base.clone() });
        assert!(z3.device_total() < z2.device_total() / 4.0, "{} vs {}", z3.device_total(), z2.device_total());
        // In one process the stage changes nothing.
        let one = Training { world_size: 1, ..base };
        assert_eq!(trained("p", &cfg, p, true, &one).weights, p as f64 * 2.0);
    }

    /// PPO's frozen models under ZeRO-3: 1/W of the layers in the compute dtype (on the host with
    /// `offload_frozen`), the rest whole, one layer in the working set; parked or whole otherwise.
    #[test]
    fn zero3_shards_the_frozen_models_and_counts_one_gathered_layer() {
        let cfg = Config::llama2_70b();
        let p = causal_lm_params(&cfg);
        let (layer, layers) = (layer_params(&cfg) as f64, (cfg.num_hidden_layers * layer_params(&cfg)) as f64);
        let whole = p as f64 - layers;
        let z3 = Training { dtype_bytes: 2.0, zero_stage: 3, world_size: 16, ..t(1, 4096, true) };
        let r = frozen_in_stage("reference", &cfg, p, &z3, false, 1);
        assert_eq!((r.weights, r.host, r.in_flight), (2.0 * whole + 2.0 * layers / 16.0, 0.0, 2.0 * layer));
        let off = frozen_in_stage("reference", &cfg, p, &z3, true, 1);
        assert_eq!((off.weights, off.host, off.parked), (2.0 * whole, 2.0 * layers / 16.0, None));
        // The gathered layer is in the working set, not in the static bytes.
        let plan = StagePlan::new(vec![r.clone()], 0.0);
        assert_eq!(plan.device_peak, r.weights + 2.0 * layer + RUNTIME_OVERHEAD);
        // Without ZeRO-3 (or in one process): parked with offload_frozen, else whole.
        let z2 = Training { zero_stage: 2, ..z3.clone() };
        assert_eq!(frozen_in_stage("reference", &cfg, p, &z2, true, 1).parked, Some(1));
        assert_eq!(frozen_in_stage("reference", &cfg, p, &Training { world_size: 1, ..z3 }, false, 1).weights, 2.0 * p as f64);
    }

    #[test]
    fn sizes_parse_and_the_largest_micro_batch_is_found() {
        assert_eq!(parse_bytes("80GiB").unwrap(), 80.0 * 1024f64.powi(3));
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1.5e9);
        assert!(parse_bytes("80 furlongs").is_err() && parse_bytes("lots").is_err());
        let cfg = Config::bench_20m();
        let plan = |b: i64| StagePlan::new(vec![trained("p", &cfg, causal_lm_params(&cfg), true, &t(b, 512, false))], 0.0);
        let budget = plan(6).device_peak + 1.0;
        assert_eq!(largest_fitting(budget, 1024, plan), Some(6));
        assert_eq!(largest_fitting(1.0, 1024, plan), None);
    }

    #[test]
    fn lora_keeps_the_base_weights_and_trains_only_the_adapter_and_parked_models_leave_the_device() {
        let cfg = Config::preset("7b").unwrap();
        let p = causal_lm_params(&cfg);
        let q = 4_000_000;
        let tr = Training { dtype_bytes: 2.0, lora_params: Some(q), ..t(1, 4096, true) };
        let m = trained("policy", &cfg, p, true, &tr);
        assert_eq!(m.weights, 2.0 * (p + q) as f64, "frozen base plus the adapter, in bf16");
        assert_eq!(m.gradients, 2.0 * q as f64);
        assert_eq!(m.optimizer, 12.0 * q as f64, "fp32 masters and moments of the adapter only");
        let frozen_ref = frozen("reference", p, 2.0);
        let parked_ref = parked("reference", p, 2.0, 1);
        let on = StagePlan::new(vec![m.clone(), frozen_ref], 0.0);
        let off = StagePlan::new(vec![m, parked_ref], 0.0);
        assert!(off.device_peak < on.device_peak, "parked weights are not held while training");
        assert_eq!(off.host, 2.0 * p as f64);
    }
}
