//! The PPO trainer: `prepare` (models, prompts, optimizers), `rollout` (sample and score),
//! `optimize` (one pass of clipped policy and value updates over the rollout's mini-batches),
//! `evaluate` (held-out prompts), and [`train`], which hands the trainer to the shared
//! `training::runner` loop (checkpoints of both trained models, exact resume, early stopping on
//! the held-out reward, metrics): to the runner a PPO step is one iteration, a rollout and the
//! optimizer steps over it.
use crate::checkpoint::{PpoState, POLICY, VALUE};
use crate::config::PpoConfig;
use crate::math::{clipped_policy_loss, clipped_value_loss, entropy_from_logits, explained_variance};
use crate::models::{
    logprobs_and_logits_of, response_logprobs_and_logits, response_states, response_values, LayerSink, Policy, ScalarModel, SeqBatch,
};
use crate::rollout::{pad_rows, reference_logprobs, sample, score, values, EncodedPrompt, RewardModels, Rollout};
use demo_world::eval::ground_truth;
use llama::rng::SplitMix64;
use llama::{SamplingParams, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use training::checkpoint::{Part, PartMut};
use training::metrics::MetricsLog;
use training::optim::LayerShards;
use training::runner::{config_hash, Evaluation, RunOptions, Stage};
use training::zero3_frozen::FrozenLayers;
use training::{AdamW, LrSchedule, RunLock, TrainError};

pub type Result<T> = std::result::Result<T, TrainError>;

/// Set to 1, a ZeRO-3 run loads PPO's models whole and then shards them, as before shard-on-load
/// (for comparisons: the weights are the same; tests/ppo_zero3.rs).
pub const LOAD_WHOLE_ENV: &str = "RLHF_ZERO3_LOAD_WHOLE";

/// Seed offset of the held-out evaluation (fixed, independent of the run's generator).
const EVAL_SEED: u64 = 0x00E7_A15E_ED00;

/// Shuffle of `n` items from (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    SplitMix64::permutation(n, seed, epoch)
}

/// Chat-formats prompt records; prompts longer than `max_len` tokens are skipped (and counted).
pub fn encode_prompts(tok: &Tokenizer, records: Vec<datasets::PromptRecord>, max_len: usize) -> Result<(Vec<EncodedPrompt>, usize)> {
    let mut out = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for (i, record) in records.into_iter().enumerate() {
        let ids = llama::chat::encode_prompt(tok, &record.prompt).map_err(|e| TrainError::Config(format!("prompt {}: {e}", i + 1)))?;
        if ids.len() > max_len {
            skipped += 1;
        } else {
            out.push(EncodedPrompt { record, ids });
        }
    }
    Ok((out, skipped))
}

/// Training prompts of the config's files, or an error saying why there are none: files with
/// no prompt record, or every prompt longer than `max_prompt_len`.
pub fn check_prompts(cfg: &PpoConfig, read: usize, kept: usize) -> Result<()> {
    let files = || cfg.train_prompts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    match (read, kept) {
        (0, _) => Err(TrainError::Config(format!("no training prompts: `train_prompts` ({}) hold no prompt record", files()))),
        (n, 0) => Err(TrainError::Config(format!(
            "no training prompts left: all {n} prompts of `train_prompts` ({}) are longer than `max_prompt_len` = {} tokens",
            files(),
            cfg.max_prompt_len
        ))),
        _ => Ok(()),
    }
}

/// What one held-out evaluation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean `LOGIT(Rc)` of the held-out responses (no whitening, no KL): what early stopping follows.
    pub reward: f64,
    /// Mean summed k1 KL of the held-out responses to the reference (when sampled, T > 0).
    pub kl: Option<f64>,
    pub response_length: f64,
    /// Demo-world ground truth (`demo_judge`).
    pub helpful_rate: Option<f64>,
    pub safe_rate: Option<f64>,
    pub false_refusal_rate: Option<f64>,
    pub responses: usize,
}

impl EvalResult {
    fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "eval_reward": self.reward, "eval_kl": self.kl, "eval_response_length": self.response_length,
            "eval_helpful_rate": self.helpful_rate, "eval_safe_rate": self.safe_rate,
            "eval_false_refusal_rate": self.false_refusal_rate,
        })
    }
}

/// A prepared PPO run.
pub struct PpoTrainer<'a> {
    cfg: &'a PpoConfig,
    tok: &'a Tokenizer,
    device: Device,
    pub policy: Policy,
    policy_opt: AdamW,
    pub value: ScalarModel,
    value_opt: AdamW,
    reference: Policy,
    rms: RewardModels,
    prompts: Vec<EncodedPrompt>,
    eval_prompts: Vec<EncodedPrompt>,
    schedule: LrSchedule,
    value_schedule: LrSchedule,
    pub state: PpoState,
    /// The evaluation of the initial policy (not on a resumed run) and the latest one.
    initial_eval: Option<EvalResult>,
    last_eval: Option<EvalResult>,
    /// `samples.jsonl`, opened when the run begins.
    samples_log: Option<MetricsLog>,
    /// The same samples of the latest iteration as markdown, for TensorBoard's text dashboard.
    sample_texts: Vec<(String, String)>,
    /// Start of the current iteration.
    iteration_start: Option<Instant>,
    /// LoRA adapters of the policy and the value model.
    lora: Option<(llama::lora::LoraRun, llama::lora::LoraRun)>,
    /// π_old from a training forward rather than the sampler ([`crate::config::OldLogprobs`]).
    recompute_old: bool,
    /// `offload_frozen` on a GPU without ZeRO-3: the frozen models are parked in host memory and
    /// moved onto the GPU to score.
    park: bool,
    /// ZeRO-3 in a distributed run: every model's decoder layers are sharded over the ranks
    /// (policy and value by their optimizers, the frozen ones by `training::zero3_frozen`), so
    /// every rank must run the same forwards and backward passes.
    zero3: bool,
}

/// Optimizer-side statistics of one iteration.
#[derive(Default)]
struct Accum {
    sums: std::collections::BTreeMap<&'static str, f64>,
    n: f64,
}

impl Accum {
    fn add(&mut self, k: &'static str, v: f64) {
        *self.sums.entry(k).or_default() += v;
    }
    fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.sums.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v / self.n.max(1.0)))).collect())
    }
}

impl<'a> PpoTrainer<'a> {
    /// Loads the policy, the reference, the value model and the reward models.
    pub fn prepare(cfg: &'a PpoConfig, tok: &'a Tokenizer, prompts: Vec<EncodedPrompt>, eval_prompts: Vec<EncodedPrompt>) -> Result<Self> {
        cfg.validate().map_err(TrainError::Config)?;
        if prompts.is_empty() {
            return Err(TrainError::Config("no training prompt (all longer than `max_prompt_len`?)".into()));
        }
        let llama::Compute { device, kind } = cfg.train.compute()?;
        let zero3 = cfg.train.zero_stage == 3 && distributed::world_size() > 1;
        // Offloaded frozen models are parked in host memory as soon as each is loaded, so the
        // GPU never holds more than one of them beside the trained models. Under ZeRO-3 they are
        // sharded instead (and `offload_frozen` keeps their shards in host memory).
        let park = cfg.offload_frozen && device.is_cuda() && !zero3;
        let shard_offload = cfg.offload_frozen && device.is_cuda();
        // ZeRO-3 shard-on-load: each model's decoder layers are sharded as they are read from its
        // checkpoint, so no rank holds a whole model. Not for a PEFT adapter folder (merged whole
        // on load) nor with LoRA (refused at stage 3); RLHF_ZERO3_LOAD_WHOLE=1 loads whole then
        // shards (the path before shard-on-load, kept to compare against: same weights).
        let layerwise = zero3 && cfg.lora.is_none() && std::env::var_os(LOAD_WHOLE_ENV).is_none_or(|v| v.is_empty() || v == "0");
        let layerwise = |dir: &Path| layerwise && !llama::lora::is_adapter_dir(dir);
        let trained_sink = |dir: &Path| {
            layerwise(dir).then(|| LayerShards::for_options(cfg.train.state_options(), device)).flatten().map(LayerSink::Trained)
        };
        let frozen_sink = |dir: &Path| layerwise(dir).then(|| FrozenLayers::new(shard_offload)).flatten().map(LayerSink::Frozen);
        let mut frozen_shard_bytes = 0i64;
        let mut layered = Vec::new();
        let (mut policy, policy_shards) = match trained_sink(&cfg.policy) {
            Some(sink) => {
                let (p, held) = Policy::load_sharded(&cfg.policy, device, kind, sink)?;
                layered.push("policy");
                (p, held.trained)
            }
            None => (Policy::load(&cfg.policy, device, kind)?, None),
        };
        // The whole-load path: a frozen model loaded whole, then sharded under ZeRO-3.
        let shard_frozen = |vs: &tch::nn::VarStore, model: &mut llama::Llama| -> Result<i64> {
            match zero3.then(|| training::zero3_frozen::FrozenShards::shard(vs, shard_offload)).transpose()?.flatten() {
                Some(s) => {
                    let bytes = s.shard_bytes();
                    model.set_shard_hooks(Box::new(s));
                    Ok(bytes)
                }
                None => Ok(0),
            }
        };
        let reference_dir = cfg.reference.as_ref().unwrap_or(&cfg.policy);
        let reference = match frozen_sink(reference_dir) {
            Some(sink) => {
                let (r, held) = Policy::load_sharded(reference_dir, device, kind, sink)?;
                frozen_shard_bytes += held.frozen_shard_bytes;
                layered.push("reference");
                r
            }
            None => {
                let mut r = Policy::load_frozen(reference_dir, device, kind)?;
                if park {
                    r.vs.set_device(Device::Cpu);
                }
                frozen_shard_bytes += shard_frozen(&r.vs, &mut r.model)?;
                r
            }
        };
        // A checkpoint without a score head gets a random one (smoke tests), seeded per model.
        let mut load_rm = |p: &Option<PathBuf>, salt: u64, name: &'static str| -> Result<Option<ScalarModel>> {
            let Some(p) = p else { return Ok(None) };
            let seed = cfg.train.seed ^ salt;
            let (m, fresh) = match frozen_sink(p) {
                Some(sink) => {
                    let (m, fresh, held) = ScalarModel::load_sharded(p, device, kind, seed, sink)?;
                    frozen_shard_bytes += held.frozen_shard_bytes;
                    layered.push(name);
                    (m, fresh)
                }
                None => {
                    let (mut m, fresh) = ScalarModel::load_frozen(p, device, kind, seed)?;
                    if park {
                        m.vs.set_device(Device::Cpu);
                    }
                    frozen_shard_bytes += shard_frozen(&m.vs, &mut m.model.trunk)?;
                    (m, fresh)
                }
            };
            if fresh {
                tracing::warn!("{} has no score head: a random one scores the responses", p.display());
            }
            Ok(Some(m))
        };
        let rms = RewardModels {
            helpfulness: load_rm(&cfg.helpfulness_rm, 0x4E, "helpfulness RM")?,
            safety: load_rm(&cfg.safety_rm, 0x5A, "safety RM")?,
        };
        let value_init = cfg.value_model.as_ref().or(cfg.helpfulness_rm.as_ref()).or(cfg.safety_rm.as_ref()).expect("validated");
        let value_seed = cfg.train.seed ^ 0x7A1;
        let (mut value, fresh, value_shards) = match trained_sink(value_init) {
            Some(sink) => {
                let (v, fresh, held) = ScalarModel::load_sharded(value_init, device, kind, value_seed, sink)?;
                layered.push("value model");
                (v, fresh, held.trained)
            }
            None => {
                let (v, fresh) = ScalarModel::load(value_init, device, kind, value_seed)?;
                (v, fresh, None)
            }
        };
        if !layered.is_empty() {
            tracing::info!("ZeRO-3 shard-on-load: {} loaded layer by layer", layered.join(", "));
        } else if zero3 {
            tracing::info!(
                "ZeRO-3: PPO's models loaded whole (the frozen ones sharded after each load, the trained ones next by their optimizers)"
            );
        }
        let lora = cfg.lora.as_ref().map(|lc| {
            policy.model.add_lora(&policy.vs.root(), lc);
            llama::lora::freeze_base(&policy.vs, |_| false);
            value.model.trunk.add_lora(&value.vs.root(), lc);
            llama::lora::freeze_base(&value.vs, |n| n.starts_with("score."));
            let run = |base: &PathBuf, task_type, modules_to_save: Vec<String>| llama::lora::LoraRun {
                lora: lc.clone(),
                info: llama::lora::AdapterInfo { base: base.clone(), task_type, modules_to_save },
            };
            (run(&cfg.policy, "CAUSAL_LM", vec![]), run(value_init, "SEQ_CLS", vec!["score".into()]))
        });
        if fresh {
            tracing::info!("value head initialised from N(0, 0.02) on top of {}", value_init.display());
        }
        if policy.model.cfg.vocab_size != value.model.trunk.cfg.vocab_size {
            return Err(TrainError::Config("the value model's vocabulary differs from the policy's".into()));
        }
        // ZeRO-3: the trained models gather each layer from their optimizers' shards as it runs.
        let optimizer = |vs: &tch::nn::VarStore, shards: Option<LayerShards>| match shards {
            Some(s) => AdamW::with_layer_shards(vs, cfg.train.adamw(), s),
            None => cfg.train.optimizer_zero3(vs),
        };
        let policy_opt = optimizer(&policy.vs, policy_shards)?;
        let value_opt = optimizer(&value.vs, value_shards)?;
        if let (Some(p), Some(v)) = (policy_opt.shard_hooks(), value_opt.shard_hooks()) {
            policy.model.set_shard_hooks(p);
            value.model.trunk.set_shard_hooks(v);
            tracing::info!(
                "ZeRO-3 over {} ranks: policy and value model sharded with their optimizers; reference and reward models \
                 sharded too ({:.3} GB of their layers on this rank{})",
                distributed::world_size(),
                frozen_shard_bytes as f64 / 1e9,
                if shard_offload { ", in host memory" } else { "" }
            );
        }
        let total = cfg.iterations * cfg.steps_per_iteration();
        let schedule = cfg.train.lr_schedule(total);
        let value_schedule = training::TrainConfig { lr: cfg.value_lr, ..cfg.train.clone() }.lr_schedule(total);
        let state = PpoState { prompt_epoch: 0, prompt_cursor: 0, rng: SplitMix64::new(cfg.train.seed), policy_steps: 0, value_steps: 0 };
        Ok(PpoTrainer {
            cfg,
            tok,
            device,
            policy,
            policy_opt,
            value,
            value_opt,
            reference,
            rms,
            prompts,
            eval_prompts,
            schedule,
            value_schedule,
            state,
            initial_eval: None,
            last_eval: None,
            samples_log: None,
            sample_texts: Vec::new(),
            iteration_start: None,
            lora,
            recompute_old: cfg.old_logprobs.recompute(kind),
            park,
            zero3,
        })
    }

    /// Moves the frozen reference to `device` (`offload_frozen` on a GPU run: onto the GPU to
    /// score, back to host memory after).
    fn place_reference(&mut self, device: Device) {
        if self.park {
            self.reference.vs.set_device(device);
        }
    }

    /// Scores `samples` of the training (or, `eval`, the held-out) prompts with the reward
    /// models ([`score`]). With `offload_frozen` and two reward models, one model at a time: the
    /// helpfulness scores of every sample, then the safety scores (each model on the GPU only for
    /// its pass), combined as [`score`] combines them; the same batches in the same order, so the
    /// same raw scores.
    fn score_samples(&mut self, eval: bool, samples: &mut [crate::rollout::Sample]) -> Result<()> {
        let (cfg, device, park) = (self.cfg, self.device, self.park);
        let all = if eval { &self.eval_prompts } else { &self.prompts };
        let place = |m: Option<&mut ScalarModel>, to: Device| {
            if let (true, Some(m)) = (park, m) {
                m.vs.set_device(to);
            }
        };
        if !(cfg.offload_frozen && self.rms.helpfulness.is_some() && self.rms.safety.is_some()) {
            place(self.rms.helpfulness.as_mut(), device);
            place(self.rms.safety.as_mut(), device);
            let r = score(&self.rms, self.tok, all, samples, cfg, device);
            place(self.rms.helpfulness.as_mut(), Device::Cpu);
            place(self.rms.safety.as_mut(), Device::Cpu);
            return r;
        }
        let mut raws: Vec<Vec<Option<f64>>> = Vec::with_capacity(2);
        for helpfulness in [true, false] {
            let (keep, other) = if helpfulness {
                (&mut self.rms.helpfulness, &mut self.rms.safety)
            } else {
                (&mut self.rms.safety, &mut self.rms.helpfulness)
            };
            let aside = other.take();
            place(keep.as_mut(), device);
            let r = score(&self.rms, self.tok, all, samples, cfg, device);
            let (keep, other) = if helpfulness {
                (&mut self.rms.helpfulness, &mut self.rms.safety)
            } else {
                (&mut self.rms.safety, &mut self.rms.helpfulness)
            };
            place(keep.as_mut(), Device::Cpu);
            *other = aside;
            r?;
            raws.push(samples.iter().map(|s| if helpfulness { s.helpfulness_raw } else { s.safety_raw }).collect());
        }
        for (i, s) in samples.iter_mut().enumerate() {
            s.helpfulness_raw = raws[0][i];
            s.safety_raw = raws[1][i];
            let (l, source) =
                crate::reward::combined_logit(s.safety_raw, s.helpfulness_raw, all[s.prompt].record.is_safety, cfg.safety_threshold);
            s.score = l - if s.finished { 0.0 } else { cfg.missing_eos_penalty.unwrap_or(0.0) };
            s.source = source;
        }
        Ok(())
    }

    /// Replaces the sampler's log-probabilities of `samples` by the training model's, from a
    /// no-grad forward in the training dtype (`old_logprobs`): PPO's ratio then starts at exactly
    /// 1 for the first mini-batch, whatever the sampler's kernels rounded.
    fn recompute_old_logprobs(&self, samples: &mut [crate::rollout::Sample]) -> Result<()> {
        if !self.recompute_old || samples.is_empty() {
            return Ok(());
        }
        let b = self.cfg.generation_batch_size;
        let lp = reference_logprobs(&self.policy, &self.prompts, samples, self.cfg.temperature, b, self.device).to_device(Device::Cpu);
        for (i, s) in samples.iter_mut().enumerate() {
            s.logprobs = Vec::<f32>::try_from(lp.get(i as i64).narrow(0, 0, s.response.len() as i64))?;
        }
        Ok(())
    }

    /// The next `rollout_batch_size` prompts: each epoch walks a fresh shuffle of all prompts.
    fn next_prompts(&mut self) -> Vec<usize> {
        let n = self.prompts.len();
        let mut out = Vec::with_capacity(self.cfg.rollout_batch_size);
        while out.len() < self.cfg.rollout_batch_size {
            let order = epoch_order(n, self.cfg.train.seed, self.state.prompt_epoch);
            while (self.state.prompt_cursor as usize) < n && out.len() < self.cfg.rollout_batch_size {
                out.push(order[self.state.prompt_cursor as usize]);
                self.state.prompt_cursor += 1;
            }
            if self.state.prompt_cursor as usize == n {
                self.state.prompt_epoch += 1;
                self.state.prompt_cursor = 0;
            }
        }
        out
    }

    fn sampling(&self, temperature: f64, num_samples: usize) -> SamplingParams {
        SamplingParams {
            max_new_tokens: self.cfg.max_new_tokens,
            temperature,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop_at_eos: true,
            eos_token_id: self.tok.eos_id() as i64,
            num_samples,
        }
    }

    /// Samples and scores one rollout batch (no gradient anywhere).
    pub fn rollout(&mut self) -> Result<Rollout> {
        let idx = self.next_prompts();
        if distributed::world_size() > 1 {
            return self.rollout_sharded(&idx);
        }
        let t0 = Instant::now();
        let params = self.sampling(self.cfg.temperature, 1);
        let rng = &mut self.state.rng;
        let mut samples = sample(&self.policy, self.tok, &self.prompts, &idx, &params, self.cfg.generation_batch_size, || rng.next_u64())?;
        let generation_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        self.recompute_old_logprobs(&mut samples)?;
        self.score_samples(false, &mut samples)?;
        let (cfg, b) = (self.cfg, self.cfg.generation_batch_size);
        self.place_reference(self.device);
        let ref_lp = reference_logprobs(&self.reference, &self.prompts, &samples, cfg.temperature, b, self.device);
        self.place_reference(Device::Cpu);
        let vals = values(&self.value, &self.prompts, &samples, b, self.device);
        let mut ro = Rollout::new(samples, ref_lp, vals, cfg, self.device);
        ro.generation_seconds = generation_seconds;
        ro.scoring_seconds = t1.elapsed().as_secs_f64();
        Ok(ro)
    }

    /// A distributed rollout: generation batch j (of `generation_batch_size` prompts, with the
    /// j-th seed drawn in the one-process order) is sampled, scored and valued on rank j mod W;
    /// every rank then gathers every batch, so the rollout (and its whitening, over the global
    /// batch) is the one-process rollout. A rank samples all its batches in one engine call
    /// (continuous batching across them, as one process does across all), then scores them batch
    /// by batch. Under ZeRO-3 every model forward is a collective: the engine keeps the ranks in
    /// lockstep while they sample, and a rank with fewer batches scores a one-row placeholder
    /// batch (results dropped) until every rank has scored as many, so each model runs the same
    /// forwards on every rank.
    fn rollout_sharded(&mut self, idx: &[usize]) -> Result<Rollout> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Part {
            chunk: usize,
            samples: Vec<crate::rollout::Sample>,
            ref_lp: Vec<Vec<f32>>,
            values: Vec<Vec<f32>>,
        }
        let (cfg, device) = (self.cfg, self.device);
        let (rank, world) = (distributed::rank() as usize, distributed::world_size() as usize);
        let b = cfg.generation_batch_size.max(1);
        let params = self.sampling(cfg.temperature, 1);
        let chunks: Vec<&[usize]> = idx.chunks(b).collect();
        let seeds: Vec<u64> = chunks.iter().map(|_| self.state.rng.next_u64()).collect();
        let rows = |t: &Tensor, samples: &[crate::rollout::Sample]| -> Result<Vec<Vec<f32>>> {
            samples
                .iter()
                .enumerate()
                .map(|(i, s)| Ok(Vec::<f32>::try_from(t.get(i as i64).narrow(0, 0, s.response.len() as i64))?))
                .collect()
        };
        let my_chunks: Vec<usize> = (0..chunks.len()).filter(|j| j % world == rank).collect();
        // Every chunk but the rollout's last has `b` prompts, and the last is this rank's last:
        // cut into `b`s again by `sample`, its prompts give back the chunks, each with its seed.
        let my_prompts: Vec<usize> = my_chunks.iter().flat_map(|&j| chunks[j].iter().copied()).collect();
        let t0 = Instant::now();
        let mut seed_of = my_chunks.iter().map(|&j| seeds[j]);
        let mut generated = sample(&self.policy, self.tok, &self.prompts, &my_prompts, &params, b, || {
            seed_of.next().expect("one seed per chunk of b prompts")
        })?;
        let generation_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut mine = Vec::with_capacity(my_chunks.len());
        for &j in &my_chunks {
            let mut samples: Vec<crate::rollout::Sample> = generated.drain(..chunks[j].len()).collect();
            let (ref_lp, vals) = self.score_chunk(&mut samples)?;
            mine.push(Part { chunk: j, ref_lp: rows(&ref_lp, &samples)?, values: rows(&vals, &samples)?, samples });
        }
        if self.zero3 {
            for _ in my_chunks.len()..chunks.len().div_ceil(world) {
                let mut placeholder = vec![self.placeholder_sample()];
                let _ = self.score_chunk(&mut placeholder)?;
            }
        }
        let scoring_seconds = t1.elapsed().as_secs_f64();
        let bytes = serde_json::to_vec(&mine).map_err(|e| TrainError::Distributed(format!("rollout: {e}")))?;
        let mut parts: Vec<Part> = Vec::with_capacity(chunks.len());
        for r in training::dist::all_gather_bytes(&bytes)? {
            let got: Vec<Part> =
                serde_json::from_slice(&r).map_err(|e| TrainError::Distributed(format!("rollout from another rank: {e}")))?;
            parts.extend(got);
        }
        parts.sort_by_key(|p| p.chunk);
        let (mut samples, mut ref_rows, mut value_rows) = (Vec::new(), Vec::new(), Vec::new());
        for p in parts {
            samples.extend(p.samples);
            ref_rows.extend(p.ref_lp);
            value_rows.extend(p.values);
        }
        let t = samples.iter().map(|s| s.response.len()).max().unwrap_or(1).max(1);
        let pad = |rows: &[Vec<f32>]| pad_rows(&rows.iter().map(|r| r.as_slice()).collect::<Vec<_>>(), t, device);
        let (ref_lp, vals) = (pad(&ref_rows), pad(&value_rows));
        let mut ro = Rollout::new(samples, ref_lp, vals, cfg, device);
        ro.generation_seconds = generation_seconds;
        ro.scoring_seconds = scoring_seconds;
        Ok(ro)
    }

    /// One generation batch's π_old (when recomputed), scores, reference log-probabilities and
    /// values (the last two on the host, `[n, T]`): one forward of each model.
    fn score_chunk(&mut self, samples: &mut [crate::rollout::Sample]) -> Result<(Tensor, Tensor)> {
        let (cfg, device, b) = (self.cfg, self.device, self.cfg.generation_batch_size.max(1));
        self.recompute_old_logprobs(samples)?;
        self.score_samples(false, samples)?;
        self.place_reference(device);
        let ref_lp = reference_logprobs(&self.reference, &self.prompts, samples, cfg.temperature, b, device).to_device(Device::Cpu);
        self.place_reference(Device::Cpu);
        let vals = values(&self.value, &self.prompts, samples, b, device).to_device(Device::Cpu);
        Ok((ref_lp, vals))
    }

    /// A one-token reply to the first training prompt: what a ZeRO-3 rank with no work of its
    /// own scores so that its models' forwards (collectives) match the other ranks'.
    fn placeholder_sample(&self) -> crate::rollout::Sample {
        crate::rollout::Sample {
            prompt: 0,
            response: vec![self.tok.eos_id()],
            text: String::new(),
            finished: true,
            logprobs: vec![0.0],
            safety_raw: None,
            helpfulness_raw: None,
            score: 0.0,
            source: crate::reward::RewardSource::Helpfulness,
        }
    }

    /// ZeRO-3: the backward passes a rank runs with weight 0 after its own micro-batches of
    /// mini-batch `mb`, so that every rank runs as many as the busiest (each gathers and reduces
    /// every layer with all ranks); none otherwise. Their micro-batch is the mini-batch's first.
    fn idle_passes(&self, ro: &Rollout, mb: &[usize]) -> (usize, Option<SeqBatch>) {
        if !self.zero3 {
            return (0, None);
        }
        let (rank, world) = (distributed::rank() as usize, distributed::world_size() as usize);
        let micro = self.cfg.train.micro_batch_size.max(1);
        let n = mb.len().div_ceil(micro);
        let mine = (0..n).filter(|j| j % world == rank).count();
        let extra = n.div_ceil(world) - mine;
        if extra == 0 {
            return (0, None);
        }
        let rows = &mb[..micro.min(mb.len())];
        let prompts: Vec<&[u32]> = rows.iter().map(|&i| self.prompts[ro.samples[i].prompt].ids.as_slice()).collect();
        let responses: Vec<&[u32]> = rows.iter().map(|&i| ro.samples[i].response.as_slice()).collect();
        (extra, Some(SeqBatch::new(&prompts, &responses, self.device)))
    }

    /// One pass (per PPO epoch) over the rollout in shuffled mini-batches; each mini-batch is one
    /// AdamW step of the policy (clipped surrogate) and one of the value model (clipped value
    /// loss), each loss a token-weighted mean over the whole mini-batch however it is split into
    /// micro-batches.
    pub fn optimize(&mut self, ro: &Rollout) -> Result<serde_json::Value> {
        let cfg = self.cfg;
        let n = ro.samples.len();
        let mut acc = Accum::default();
        let mut max_diff: Option<f64> = None;
        let (mut tokens, t0) = (0usize, Instant::now());
        for epoch in 0..cfg.ppo_epochs {
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, (self.state.rng.next_u64() % (i as u64 + 1)) as usize);
            }
            for (k, mb) in order.chunks(cfg.mini_batch_size()).enumerate() {
                let mb_tokens: usize = mb.iter().map(|&i| ro.samples[i].response.len()).sum::<usize>().max(1);
                let check = epoch == 0 && k == 0;
                let (p, t) = self.policy_step(ro, mb, mb_tokens, check)?;
                if check {
                    max_diff = p.iter().find(|(k, _)| *k == "logprob_max_diff").map(|(_, v)| *v);
                }
                let v = self.value_step(ro, mb, mb_tokens)?;
                tokens += t;
                acc.n += 1.0;
                for (key, val) in p.into_iter().chain(v) {
                    if key != "logprob_max_diff" {
                        acc.add(key, val);
                    }
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut rec = acc.json();
        rec["logprob_max_diff"] = serde_json::json!(max_diff);
        if let Some(d) = max_diff.filter(|d| *d > cfg.logprob_tolerance) {
            tracing::warn!(
                "sampler and training forward disagree on log-probabilities by up to {d:.2e} (tolerance {:.0e})",
                cfg.logprob_tolerance
            );
        }
        rec["explained_variance"] = serde_json::json!(tch::no_grad(|| explained_variance(&ro.values, &ro.returns, &ro.mask)));
        if cfg.train.gradient_checkpointing {
            rec["gradient_checkpointing"] = serde_json::json!(true);
        }
        rec["train_tokens"] = serde_json::json!(tokens);
        rec["train_tokens_per_s"] = serde_json::json!(tokens as f64 / secs.max(1e-9));
        rec["time_training_s"] = serde_json::json!(secs);
        rec["lr"] = serde_json::json!(self.schedule.lr(self.state.policy_steps.saturating_sub(1)));
        rec["value_lr"] = serde_json::json!(self.value_schedule.lr(self.state.value_steps.saturating_sub(1)));
        Ok(rec)
    }

    /// Rows `mb` of the rollout as micro-batches: the batch and the row indices `[m]`. In a
    /// distributed run, rank r gets micro-batches r, r + W, ... (the losses are weighted by the
    /// whole mini-batch's tokens, so the summed gradients are the one-process gradient).
    fn micro_batches(&self, ro: &Rollout, mb: &[usize]) -> Vec<(SeqBatch, Tensor)> {
        let (rank, world) = (distributed::rank() as usize, distributed::world_size() as usize);
        mb.chunks(self.cfg.train.micro_batch_size.max(1))
            .enumerate()
            .filter(|(j, _)| j % world == rank)
            .map(|(_, rows)| {
                let prompts: Vec<&[u32]> = rows.iter().map(|&i| self.prompts[ro.samples[i].prompt].ids.as_slice()).collect();
                let responses: Vec<&[u32]> = rows.iter().map(|&i| ro.samples[i].response.as_slice()).collect();
                let idx: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
                (SeqBatch::new(&prompts, &responses, self.device), Tensor::from_slice(&idx).to_device(self.device))
            })
            .collect()
    }

    fn rows(t: &Tensor, idx: &Tensor, len: i64) -> Tensor {
        t.index_select(0, idx).narrow(1, 0, len)
    }

    fn policy_step(&mut self, ro: &Rollout, mb: &[usize], mb_tokens: usize, check: bool) -> Result<(Vec<(&'static str, f64)>, usize)> {
        let cfg = self.cfg;
        if let Some((l, _)) = &self.lora {
            l.lora.seed_dropout(cfg.train.seed, self.state.policy_steps);
        }
        self.policy_opt.zero_grad();
        let (mut loss_sum, mut clip, mut akl, mut ent, mut diff, mut tokens) = (0.0, 0.0, 0.0, 0.0, 0f64, 0usize);
        let batches = self.micro_batches(ro, mb);
        let several = batches.len() > 1;
        for (b, idx) in batches {
            let t = b.response_len();
            let (old, adv, mask) = (Self::rows(&ro.old_logprobs, &idx, t), Self::rows(&ro.advantages, &idx, t), &b.response_mask);
            let w = f64::try_from(mask.sum(Kind::Float))? / mb_tokens as f64;
            let (lp, logits, pl) = if cfg.train.gradient_checkpointing {
                // Layer-wise recomputation; the LM head and the clipped loss as usual.
                let model = &self.policy.model;
                let mut out = None;
                let _ = model.backward_checkpointed(&b.ids, &b.positions, &b.mask, None, |hidden| {
                    let (lp, logits) = logprobs_and_logits_of(model, &response_states(hidden, &b), &b, cfg.temperature);
                    let pl = clipped_policy_loss(&lp, &old, &adv, mask, cfg.clip_ratio);
                    let loss = &pl.loss * w;
                    out = Some((lp.detach(), logits.detach(), pl));
                    loss
                });
                out.expect("the loss ran")
            } else {
                let (lp, logits) = response_logprobs_and_logits(&self.policy.model, &b, cfg.temperature);
                let pl = clipped_policy_loss(&lp, &old, &adv, mask, cfg.clip_ratio);
                (&pl.loss * w).backward();
                (lp, logits, pl)
            };
            if several {
                self.policy_opt.accumulate();
            }
            loss_sum += f64::try_from(&pl.loss)? * w;
            clip += pl.clip_frac * w;
            akl += pl.approx_kl * w;
            tch::no_grad(|| -> Result<()> {
                ent += f64::try_from(entropy_from_logits(&logits).mean(Kind::Float))? * w;
                if check {
                    let d = ((&lp - &old).abs() * mask).max();
                    diff = diff.max(f64::try_from(d)?);
                }
                Ok(())
            })?;
            tokens += b.num_tokens;
        }
        if let (extra, Some(b)) = self.idle_passes(ro, mb) {
            let model = &self.policy.model;
            for _ in 0..extra {
                let _ = model.backward_checkpointed(&b.ids, &b.positions, &b.mask, None, |hidden| {
                    let (lp, _) = logprobs_and_logits_of(model, &response_states(hidden, &b), &b, cfg.temperature);
                    lp.sum(Kind::Float) * 0.0
                });
                if several {
                    self.policy_opt.accumulate();
                }
            }
        }
        let mut sums = [loss_sum, clip, akl, ent, tokens as f64];
        training::dist::sum_over_ranks(&mut sums)?;
        let [loss_sum, clip, akl, ent, tokens] = sums;
        let tokens = tokens as usize;
        if check {
            let mut d = [diff];
            training::dist::max_over_ranks(&mut d)?;
            diff = d[0];
        }
        let grad_norm = self.policy_opt.clip_grad_norm(cfg.train.grad_clip)?;
        let step = self.state.policy_steps;
        if !loss_sum.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "policy loss or gradient", value: loss_sum + grad_norm });
        }
        self.policy_opt.step(self.schedule.lr(step))?;
        self.state.policy_steps += 1;
        let mut out =
            vec![("policy_loss", loss_sum), ("clip_frac", clip), ("approx_kl", akl), ("entropy", ent), ("policy_grad_norm", grad_norm)];
        if check {
            out.push(("logprob_max_diff", diff));
        }
        Ok((out, tokens))
    }

    fn value_step(&mut self, ro: &Rollout, mb: &[usize], mb_tokens: usize) -> Result<Vec<(&'static str, f64)>> {
        let cfg = self.cfg;
        if let Some((_, l)) = &self.lora {
            l.lora.seed_dropout(cfg.train.seed ^ 0x7A1, self.state.value_steps);
        }
        self.value_opt.zero_grad();
        let (mut loss_sum, mut clip) = (0.0, 0.0);
        let batches = self.micro_batches(ro, mb);
        let several = batches.len() > 1;
        for (b, idx) in batches {
            let t = b.response_len();
            let (old, ret) = (Self::rows(&ro.values, &idx, t), Self::rows(&ro.returns, &idx, t));
            let w = f64::try_from(b.response_mask.sum(Kind::Float))? / mb_tokens as f64;
            let (loss, frac) = if cfg.train.gradient_checkpointing {
                let value = &self.value.model;
                let mut out = None;
                let _ = value.trunk.backward_checkpointed(&b.ids, &b.positions, &b.mask, None, |hidden| {
                    let v = value.score.forward(&response_states(hidden, &b)).squeeze_dim(-1).to_kind(Kind::Float);
                    let (loss, frac) = clipped_value_loss(&v, &old, &ret, &b.response_mask, cfg.clip_value);
                    out = Some((loss.detach(), frac));
                    loss * w
                });
                out.expect("the loss ran")
            } else {
                let v = response_values(&self.value.model, &b);
                let (loss, frac) = clipped_value_loss(&v, &old, &ret, &b.response_mask, cfg.clip_value);
                (&loss * w).backward();
                (loss, frac)
            };
            if several {
                self.value_opt.accumulate();
            }
            loss_sum += f64::try_from(&loss)? * w;
            clip += frac * w;
        }
        if let (extra, Some(b)) = self.idle_passes(ro, mb) {
            let value = &self.value.model;
            for _ in 0..extra {
                let _ = value.trunk.backward_checkpointed(&b.ids, &b.positions, &b.mask, None, |hidden| {
                    value.score.forward(&response_states(hidden, &b)).to_kind(Kind::Float).sum(Kind::Float) * 0.0
                });
                if several {
                    self.value_opt.accumulate();
                }
            }
        }
        let mut sums = [loss_sum, clip];
        training::dist::sum_over_ranks(&mut sums)?;
        let [loss_sum, clip] = sums;
        let grad_norm = self.value_opt.clip_grad_norm(cfg.train.grad_clip)?;
        let step = self.state.value_steps;
        if !loss_sum.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "value loss or gradient", value: loss_sum + grad_norm });
        }
        self.value_opt.step(self.value_schedule.lr(step))?;
        self.state.value_steps += 1;
        Ok(vec![("value_loss", loss_sum), ("value_clip_frac", clip), ("value_grad_norm", grad_norm)])
    }

    /// Held-out evaluation: responses to the eval prompts with a fixed seed, their mean
    /// `LOGIT(Rc)`, their KL to the reference and, on the demo world, the ground truth.
    pub fn evaluate(&mut self) -> Result<Option<EvalResult>> {
        let cfg = self.cfg;
        let n = cfg.eval_max_prompts.unwrap_or(usize::MAX).min(self.eval_prompts.len());
        if n == 0 {
            return Ok(None);
        }
        let idx: Vec<usize> = (0..n).collect();
        let params = self.sampling(cfg.eval_temperature, cfg.eval_samples);
        let mut chunk = 0u64;
        let mut samples = sample(&self.policy, self.tok, &self.eval_prompts, &idx, &params, cfg.generation_batch_size, || {
            chunk += 1;
            SplitMix64::for_step(cfg.train.seed ^ EVAL_SEED, chunk).next_u64()
        })?;
        self.score_samples(true, &mut samples)?;
        let m = samples.len() as f64;
        let kl = if cfg.eval_temperature > 0.0 {
            self.place_reference(self.device);
            let ref_lp = reference_logprobs(
                &self.reference,
                &self.eval_prompts,
                &samples,
                cfg.eval_temperature,
                cfg.generation_batch_size,
                self.device,
            );
            self.place_reference(Device::Cpu);
            let rows: Vec<&[f32]> = samples.iter().map(|s| s.logprobs.as_slice()).collect();
            let lp = pad_rows(&rows, ref_lp.size()[1] as usize, self.device);
            Some(f64::try_from((lp - ref_lp).sum(Kind::Float))? / m)
        } else {
            None
        };
        let (mut helpful, mut safe, mut false_ref) = (None, None, None);
        if cfg.demo_judge {
            let a = ground_truth(samples.iter().map(|s| (self.eval_prompts[s.prompt].record.prompt.as_slice(), s.text.as_str())));
            (helpful, safe, false_ref) = (Some(a.helpful_rate), Some(a.safe_rate), Some(a.false_refusal_rate));
        }
        Ok(Some(EvalResult {
            reward: samples.iter().map(|s| s.score).sum::<f64>() / m,
            kl,
            response_length: samples.iter().map(|s| s.response.len()).sum::<usize>() as f64 / m,
            helpful_rate: helpful,
            safe_rate: safe,
            false_refusal_rate: false_ref,
            responses: samples.len(),
        }))
    }

    /// One iteration: a rollout and the optimizer steps over it; writes its samples.
    fn iteration(&mut self, step: u64) -> Result<serde_json::Value> {
        self.iteration_start = Some(Instant::now());
        let epoch = self.state.prompt_epoch;
        let ro = self.rollout()?;
        let mut rec = self.optimize(&ro)?;
        let it = step + 1;
        for (k, v) in ro.stats().as_object().expect("object") {
            rec[k] = v.clone();
        }
        let gen_tokens = ro.generated_tokens();
        rec["step"] = serde_json::json!(it);
        rec["prompt_epoch"] = serde_json::json!(epoch);
        rec["tokens"] = serde_json::json!(gen_tokens);
        rec["rollout_tokens_per_s"] = serde_json::json!(gen_tokens as f64 / ro.generation_seconds.max(1e-9));
        rec["time_generation_s"] = serde_json::json!(ro.generation_seconds);
        rec["time_scoring_s"] = serde_json::json!(ro.scoring_seconds);
        self.log_samples(&ro, it)?;
        Ok(rec)
    }

    /// The first `log_samples` rollouts of iteration `it` into samples.jsonl (and, as markdown,
    /// into the text summary `ppo/samples`).
    fn log_samples(&mut self, ro: &Rollout, it: u64) -> Result<()> {
        let Some(log) = self.samples_log.as_mut() else { return Ok(()) };
        let mut md = Vec::new();
        for (s, w) in ro.samples.iter().zip(Vec::<f32>::try_from(&ro.scores_whitened)?).take(self.cfg.log_samples) {
            let p = &self.prompts[s.prompt].record;
            let prompt = p.prompt.last().map(|m| m.content.as_str());
            log.write(&serde_json::json!({
                "step": it, "prompt": prompt, "is_safety": p.is_safety,
                "response": s.text, "finished": s.finished, "score": s.score, "score_whitened": w, "rm": s.source,
                "safety_raw": s.safety_raw, "helpfulness_raw": s.helpfulness_raw,
            }))?;
            md.push(format!(
                "**prompt**{}: {}\n\n**response**{}: {}\n\nscore {:.3} (whitened {w:.3}, {:?} RM)",
                if p.is_safety { " (safety)" } else { "" },
                prompt.unwrap_or(""),
                if s.finished { "" } else { " (cut off)" },
                s.text,
                s.score,
                s.source
            ));
        }
        if !md.is_empty() {
            self.sample_texts = vec![("samples".into(), md.join("\n\n---\n\n"))];
        }
        Ok(())
    }

    fn value_config(&self) -> llama::Config {
        let mut vcfg = self.value.model.trunk.cfg.clone();
        vcfg.pad_token_id.get_or_insert(0);
        vcfg
    }
}

/// To the runner a PPO step is an iteration; the policy is the product (`final/`, `best/`), the
/// value model is saved as `final_value/`; early stopping and `best/` follow the held-out reward.
impl Stage for PpoTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.cfg.iterations
    }
    fn step(&mut self, step: u64) -> Result<serde_json::Value> {
        self.iteration(step)
    }
    fn evaluate(&mut self, steps: u64) -> Result<Option<Evaluation>> {
        let Some(e) = PpoTrainer::evaluate(self)? else { return Ok(None) };
        let out = Evaluation { value: e.reward, record: e.record() };
        match steps {
            0 => self.initial_eval = Some(e),
            _ => self.last_eval = Some(e),
        }
        Ok(Some(out))
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn parts(&self) -> Vec<Part<'_>> {
        vec![
            Part {
                name: POLICY,
                vs: &self.policy.vs,
                opt: &self.policy_opt,
                cfg: self.policy.model.cfg.clone(),
                architecture: "LlamaForCausalLM",
                lora: self.lora.as_ref().map(|(p, _)| p),
            },
            Part {
                name: VALUE,
                vs: &self.value.vs,
                opt: &self.value_opt,
                cfg: self.value_config(),
                architecture: reward::model::ARCHITECTURE,
                lora: self.lora.as_ref().map(|(_, v)| v),
            },
        ]
    }
    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        vec![
            PartMut { name: POLICY, vs: &mut self.policy.vs, opt: &mut self.policy_opt, opt_steps: Some(self.state.policy_steps) },
            PartMut { name: VALUE, vs: &mut self.value.vs, opt: &mut self.value_opt, opt_steps: Some(self.state.value_steps) },
        ]
    }
    fn extra_state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("state serialises")
    }
    fn restore_extra(&mut self, extra: &serde_json::Value) -> Result<()> {
        self.state = serde_json::from_value(extra.clone()).map_err(|e| TrainError::Config(format!("PPO state: {e}")))?;
        Ok(())
    }
    fn begin(&mut self, run_dir: &Path, resumed_from: Option<u64>) -> Result<()> {
        if distributed::is_main() {
            self.samples_log = Some(MetricsLog::open(&run_dir.join("samples.jsonl"), resumed_from)?);
        }
        Ok(())
    }
    fn end_step(&mut self, record: &mut serde_json::Value) -> Result<()> {
        let secs = self.iteration_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
        record["iteration_s"] = serde_json::json!(secs);
        Ok(())
    }
    fn texts(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.sample_texts)
    }
    fn progress(&self, rec: &serde_json::Value) -> String {
        format!(
            "reward {:.3} kl {:.3} len {:.1}",
            rec["reward_raw_mean"].as_f64().unwrap_or(f64::NAN),
            rec["kl"].as_f64().unwrap_or(f64::NAN),
            rec["response_length"].as_f64().unwrap_or(f64::NAN)
        )
    }
}

/// What a finished run produced (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PpoOutcome {
    /// The final policy (HF layout).
    pub final_model: PathBuf,
    /// The final value model.
    pub final_value_model: PathBuf,
    /// The policy with the best held-out reward, when it beat the initial policy.
    pub best_model: Option<PathBuf>,
    pub iterations: u64,
    pub early_stopped: bool,
    pub initial_eval: Option<EvalResult>,
    pub final_eval: Option<EvalResult>,
    pub best_eval_reward: Option<f64>,
    pub best_iteration: Option<u64>,
    pub resumed_from: Option<u64>,
    pub skipped_prompts: usize,
    pub seconds: f64,
}

/// Everything `train` needs besides the config.
pub struct RunInputs<'a> {
    pub tokenizer: &'a Tokenizer,
    /// Files copied into every saved model (tokenizer.json, ...).
    pub extra_files: Vec<PathBuf>,
    pub train_prompts: Vec<datasets::PromptRecord>,
    pub eval_prompts: Vec<datasets::PromptRecord>,
}

/// Runs PPO into `run_dir`: `checkpoints/`, `metrics.jsonl` (one line per iteration, plus an
/// evaluation line at step 0), `samples.jsonl`, `final/`, `final_value/`, `best/`, `summary.json`.
/// With `resume`, continues from the newest checkpoint bit-exactly (or returns the stored outcome
/// of a finished run); a run folder with checkpoints is never silently overwritten.
pub fn train(cfg: &PpoConfig, inputs: RunInputs, run_dir: &Path, resume: bool) -> Result<PpoOutcome> {
    let start = Instant::now();
    let _lock = RunLock::acquire_main(run_dir)?;
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    let read = inputs.train_prompts.len();
    let (prompts, skipped) = encode_prompts(inputs.tokenizer, inputs.train_prompts, cfg.max_prompt_len)?;
    check_prompts(cfg, read, prompts.len())?;
    let (eval_prompts, skipped_eval) = encode_prompts(inputs.tokenizer, inputs.eval_prompts, cfg.max_prompt_len)?;
    if skipped + skipped_eval > 0 {
        tracing::warn!("skipped {skipped} training and {skipped_eval} held-out prompts longer than {} tokens", cfg.max_prompt_len);
    }
    let mut tr = PpoTrainer::prepare(cfg, inputs.tokenizer, prompts, eval_prompts)?;
    let opts = RunOptions {
        eval_at_start: true,
        early_stop_patience: cfg.early_stop_patience,
        final_dtype: cfg.save_dtype.kind(),
        extra_files: inputs.extra_files,
        // Reward, KL and the rest per iteration.
        plot_keys: vec![
            "reward_raw_mean",
            "eval_reward",
            "kl",
            "eval_kl",
            "entropy",
            "clip_frac",
            "value_loss",
            "explained_variance",
            "eval_helpful_rate",
            "eval_safe_rate",
            "eval_false_refusal_rate",
            "response_length",
        ],
        ..RunOptions::new("ppo", run_dir, resume, config_hash(&PpoConfig { train: cfg.train.for_fingerprint(), ..cfg.clone() }), &cfg.train)
    };
    training::runner::run(&mut tr, &opts, |tr, r| PpoOutcome {
        final_model: r.final_model,
        final_value_model: run_dir.join(format!("final_{VALUE}")),
        best_model: r.best_model,
        iterations: r.steps,
        early_stopped: r.early_stopped,
        initial_eval: tr.initial_eval.clone(),
        final_eval: tr.last_eval.clone(),
        best_eval_reward: r.best_eval_loss,
        best_iteration: r.best_step,
        resumed_from: r.resumed_from,
        skipped_prompts: skipped,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prompts_names_the_files_and_the_reason() {
        let mut cfg: PpoConfig =
            serde_json::from_value(serde_json::json!({"policy": "p", "helpfulness_rm": "p", "train_prompts": ["a.jsonl", "b.jsonl"]}))
                .unwrap();
        cfg.max_prompt_len = 12;
        let empty = check_prompts(&cfg, 0, 0).unwrap_err().to_string();
        assert!(empty.contains("a.jsonl, b.jsonl") && empty.contains("no prompt record") && !empty.contains("max_prompt_len"), "{empty}");
        let long = check_prompts(&cfg, 5, 0).unwrap_err().to_string();
        assert!(long.contains("a.jsonl, b.jsonl") && long.contains("all 5 prompts") && long.contains("`max_prompt_len` = 12"), "{long}");
        assert!(check_prompts(&cfg, 5, 1).is_ok());
    }
}
