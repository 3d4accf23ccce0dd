//! The PPO trainer: `prepare` (models, prompts, optimizers), `rollout` (sample and score),
//! `optimize` (one pass of clipped policy and value updates over the rollout's mini-batches),
//! `evaluate` (held-out prompts) and [`train`], the loop with checkpoints, exact resume, early
//! stopping and metrics.
//!
//! The shared `training::runner` fits one model and one optimizer; PPO trains two and its step is
//! an iteration (rollout + several optimizer steps), so the loop lives here and reuses the
//! runner's pieces: `CheckpointManager` (newest checkpoint, pruning rules), `MetricsLog`,
//! `Progress` and the config hash.
use crate::checkpoint::{self as pck, Part, PpoState};
use crate::config::PpoConfig;
use crate::math::{clipped_policy_loss, clipped_value_loss, entropy_from_logits, explained_variance};
use crate::models::{response_logprobs_and_logits, response_values, Policy, ScalarModel, SeqBatch};
use crate::rollout::{pad_rows, reference_logprobs, sample, score, values, EncodedPrompt, RewardModels, Rollout};
use demo_world::eval::ground_truth;
use llama::rng::SplitMix64;
use llama::{SamplingParams, Tokenizer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use training::checkpoint::{CheckpointManager, TrainerState};
use training::metrics::{MetricsLog, Progress};
use training::runner::fnv1a;
use training::{AdamW, LrSchedule, TrainError};

pub type Result<T> = std::result::Result<T, TrainError>;

/// Seed offset of the held-out evaluation (fixed, independent of the run's generator).
const EVAL_SEED: u64 = 0x00E7_A15E_ED00;

/// Shuffle of `n` items from (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = SplitMix64::for_step(seed, epoch);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        idx.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    idx
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

/// What one held-out evaluation measured.
#[derive(Debug, Clone, Serialize)]
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
        let device = llama::device::parse_device(&cfg.train.device)?;
        let kind = match &cfg.train.dtype {
            Some(s) => llama::device::parse_kind(s)?,
            None => llama::device::default_kind(device),
        };
        let policy = Policy::load(&cfg.policy, device, kind)?;
        let reference = Policy::load_frozen(cfg.reference.as_ref().unwrap_or(&cfg.policy), device, kind)?;
        // A checkpoint without a score head gets a random one (smoke tests), seeded per model.
        let load_rm = |p: &Option<PathBuf>, salt: u64| -> Result<Option<ScalarModel>> {
            let Some(p) = p else { return Ok(None) };
            let (m, fresh) = ScalarModel::load_frozen(p, device, kind, cfg.train.seed ^ salt)?;
            if fresh {
                tracing::warn!("{} has no score head: a random one scores the responses", p.display());
            }
            Ok(Some(m))
        };
        let rms = RewardModels { helpfulness: load_rm(&cfg.helpfulness_rm, 0x4E)?, safety: load_rm(&cfg.safety_rm, 0x5A)? };
        let value_init = cfg.value_model.as_ref().or(cfg.helpfulness_rm.as_ref()).or(cfg.safety_rm.as_ref()).expect("validated");
        let (value, fresh) = ScalarModel::load(value_init, device, kind, cfg.train.seed ^ 0x7A1)?;
        if fresh {
            tracing::info!("value head initialised from N(0, 0.02) on top of {}", value_init.display());
        }
        if policy.model.cfg.vocab_size != value.model.trunk.cfg.vocab_size {
            return Err(TrainError::Config("the value model's vocabulary differs from the policy's".into()));
        }
        let policy_opt = AdamW::new(&policy.vs, cfg.train.adamw(), |_| true);
        let value_opt = AdamW::new(&value.vs, cfg.train.adamw(), |_| true);
        let total = cfg.iterations * cfg.steps_per_iteration();
        let schedule = cfg.train.lr_schedule(total);
        let value_schedule = training::TrainConfig { lr: cfg.value_lr, ..cfg.train.clone() }.lr_schedule(total);
        let state = PpoState {
            prompt_epoch: 0,
            prompt_cursor: 0,
            rng: SplitMix64::new(cfg.train.seed),
            policy_steps: 0,
            value_steps: 0,
            evals_since_best: 0,
        };
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
        })
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
        let t0 = Instant::now();
        let params = self.sampling(self.cfg.temperature, 1);
        let rng = &mut self.state.rng;
        let mut samples = sample(&self.policy, self.tok, &self.prompts, &idx, &params, self.cfg.generation_batch_size, || rng.next_u64())?;
        let generation_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        score(&self.rms, self.tok, &self.prompts, &mut samples, self.cfg, self.device)?;
        let (cfg, b) = (self.cfg, self.cfg.generation_batch_size);
        let ref_lp = reference_logprobs(&self.reference, &self.prompts, &samples, cfg.temperature, b, self.device);
        let vals = values(&self.value, &self.prompts, &samples, b, self.device);
        let mut ro = Rollout::new(samples, ref_lp, vals, cfg, self.device);
        ro.generation_seconds = generation_seconds;
        ro.scoring_seconds = t1.elapsed().as_secs_f64();
        Ok(ro)
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
        rec["train_tokens"] = serde_json::json!(tokens);
        rec["train_tokens_per_s"] = serde_json::json!(tokens as f64 / secs.max(1e-9));
        rec["time_training_s"] = serde_json::json!(secs);
        rec["lr"] = serde_json::json!(self.schedule.lr(self.state.policy_steps.saturating_sub(1)));
        rec["value_lr"] = serde_json::json!(self.value_schedule.lr(self.state.value_steps.saturating_sub(1)));
        Ok(rec)
    }

    /// Rows `mb` of the rollout as micro-batches: the batch and the row indices `[m]`.
    fn micro_batches(&self, ro: &Rollout, mb: &[usize]) -> Vec<(SeqBatch, Tensor)> {
        mb.chunks(self.cfg.train.micro_batch_size.max(1))
            .map(|rows| {
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
        self.policy_opt.zero_grad();
        let (mut loss_sum, mut clip, mut akl, mut ent, mut diff, mut tokens) = (0.0, 0.0, 0.0, 0.0, 0f64, 0usize);
        for (b, idx) in self.micro_batches(ro, mb) {
            let t = b.response_len();
            let (old, adv, mask) = (Self::rows(&ro.old_logprobs, &idx, t), Self::rows(&ro.advantages, &idx, t), &b.response_mask);
            let (lp, logits) = response_logprobs_and_logits(&self.policy.model, &b, cfg.temperature);
            let pl = clipped_policy_loss(&lp, &old, &adv, mask, cfg.clip_ratio);
            let w = f64::try_from(mask.sum(Kind::Float))? / mb_tokens as f64;
            (&pl.loss * w).backward();
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
        let grad_norm = self.policy_opt.clip_grad_norm(cfg.train.grad_clip);
        let step = self.state.policy_steps;
        if !loss_sum.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "policy loss or gradient", value: loss_sum + grad_norm });
        }
        self.policy_opt.step(self.schedule.lr(step));
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
        self.value_opt.zero_grad();
        let (mut loss_sum, mut clip) = (0.0, 0.0);
        for (b, idx) in self.micro_batches(ro, mb) {
            let t = b.response_len();
            let (old, ret) = (Self::rows(&ro.values, &idx, t), Self::rows(&ro.returns, &idx, t));
            let v = response_values(&self.value.model, &b);
            let (loss, frac) = clipped_value_loss(&v, &old, &ret, &b.response_mask, cfg.clip_value);
            let w = f64::try_from(b.response_mask.sum(Kind::Float))? / mb_tokens as f64;
            (&loss * w).backward();
            loss_sum += f64::try_from(&loss)? * w;
            clip += frac * w;
        }
        let grad_norm = self.value_opt.clip_grad_norm(cfg.train.grad_clip);
        let step = self.state.value_steps;
        if !loss_sum.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "value loss or gradient", value: loss_sum + grad_norm });
        }
        self.value_opt.step(self.value_schedule.lr(step));
        self.state.value_steps += 1;
        Ok(vec![("value_loss", loss_sum), ("value_clip_frac", clip), ("value_grad_norm", grad_norm)])
    }

    /// Held-out evaluation: responses to the eval prompts with a fixed seed, their mean
    /// `LOGIT(Rc)`, their KL to the reference and, on the demo world, the ground truth.
    pub fn evaluate(&self) -> Result<Option<EvalResult>> {
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
        score(&self.rms, self.tok, &self.eval_prompts, &mut samples, cfg, self.device)?;
        let m = samples.len() as f64;
        let kl = if cfg.eval_temperature > 0.0 {
            let ref_lp = reference_logprobs(
                &self.reference,
                &self.eval_prompts,
                &samples,
                cfg.eval_temperature,
                cfg.generation_batch_size,
                self.device,
            );
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

    fn parts(&self) -> [Part<'_>; 2] {
        let mut vcfg = self.value.model.trunk.cfg.clone();
        vcfg.pad_token_id.get_or_insert(0);
        [
            Part {
                name: "policy",
                vs: &self.policy.vs,
                cfg: self.policy.model.cfg.clone(),
                architecture: "LlamaForCausalLM",
                opt: &self.policy_opt,
            },
            Part { name: "value", vs: &self.value.vs, cfg: vcfg, architecture: reward::model::ARCHITECTURE, opt: &self.value_opt },
        ]
    }

    /// Restores weights, optimizers and the PPO state from a checkpoint.
    fn load(&mut self, path: &Path) -> Result<TrainerState> {
        let ts = pck::read_state(path)?;
        let st: PpoState = serde_json::from_value(ts.extra.clone())
            .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), msg: format!("trainer_state.json extra: {e}") })?;
        pck::load_part(path, "policy", &mut self.policy.vs, &mut self.policy_opt, st.policy_steps)?;
        pck::load_part(path, "value", &mut self.value.vs, &mut self.value_opt, st.value_steps)?;
        self.state = st;
        Ok(ts)
    }
}

/// What a finished run produced (`summary.json`).
#[derive(Debug, Clone, Serialize)]
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
/// With `resume`, continues from the newest checkpoint bit-exactly; a run folder with
/// checkpoints is never silently overwritten.
pub fn train(cfg: &PpoConfig, inputs: RunInputs, run_dir: &Path, resume: bool) -> Result<PpoOutcome> {
    let start = Instant::now();
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    let (prompts, skipped) = encode_prompts(inputs.tokenizer, inputs.train_prompts, cfg.max_prompt_len)?;
    let (eval_prompts, skipped_eval) = encode_prompts(inputs.tokenizer, inputs.eval_prompts, cfg.max_prompt_len)?;
    if skipped + skipped_eval > 0 {
        tracing::warn!("skipped {skipped} training and {skipped_eval} held-out prompts longer than {} tokens", cfg.max_prompt_len);
    }
    let mut tr = PpoTrainer::prepare(cfg, inputs.tokenizer, prompts, eval_prompts)?;
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let ckman = CheckpointManager::new(run_dir, cfg.train.keep_last);
    let config_hash = fnv1a(serde_json::to_string(cfg).expect("config serialises").as_bytes());
    let mut ts = TrainerState { config_hash: config_hash.clone(), ..Default::default() };
    let mut resumed_from = None;
    match ckman.latest()? {
        Some(path) if resume => {
            ts = tr.load(&path)?;
            if ts.config_hash != config_hash {
                return Err(TrainError::Checkpoint {
                    path,
                    msg: "was written by a different config; resume with the same config or use a new run folder".into(),
                });
            }
            resumed_from = Some(ts.step);
            tracing::info!(iteration = ts.step, "ppo: resumed from {}", path.display());
        }
        Some(path) => {
            return Err(TrainError::Checkpoint {
                path,
                msg: "the run folder already has checkpoints: pass --resume to continue, or choose another --out".into(),
            })
        }
        None => {}
    }
    let mut metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), resumed_from)?;
    let mut samples_log = MetricsLog::open(&run_dir.join("samples.jsonl"), resumed_from)?;
    let initial_eval = match resumed_from {
        None => {
            let e = tr.evaluate()?;
            if let Some(e) = &e {
                let mut rec = e.record();
                rec["step"] = serde_json::json!(0);
                metrics.write(&rec)?;
                ts.best_eval = Some(e.reward);
                ts.best_step = Some(0);
            }
            e
        }
        Some(_) => None,
    };
    let progress = Progress::new("ppo", ts.step, cfg.iterations, cfg.train.log_every);
    let (mut last_eval, mut early_stopped) = (None, false);
    while ts.step < cfg.iterations && !early_stopped {
        let t_iter = Instant::now();
        let epoch = tr.state.prompt_epoch;
        let ro = tr.rollout()?;
        let mut rec = tr.optimize(&ro)?;
        ts.step += 1;
        let it = ts.step;
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
        let last = it == cfg.iterations;
        let mut save_now = (cfg.train.save_every > 0 && it % cfg.train.save_every == 0) || last;
        if (cfg.train.eval_every > 0 && it % cfg.train.eval_every == 0) || last {
            if let Some(e) = tr.evaluate()? {
                for (k, v) in e.record().as_object().expect("object") {
                    rec[k] = v.clone();
                }
                if ts.best_eval.is_none_or(|b| e.reward > b) {
                    ts.best_eval = Some(e.reward);
                    ts.best_step = Some(it);
                    tr.state.evals_since_best = 0;
                    save_now = true;
                } else {
                    tr.state.evals_since_best += 1;
                    if cfg.early_stop_patience > 0 && tr.state.evals_since_best >= cfg.early_stop_patience {
                        early_stopped = true;
                        save_now = true;
                        tracing::info!("ppo: held-out reward has not improved for {} evaluations; stopping", tr.state.evals_since_best);
                    }
                }
                last_eval = Some(e);
            }
        }
        rec["iteration_s"] = serde_json::json!(t_iter.elapsed().as_secs_f64());
        metrics.write(&rec)?;
        for (s, w) in ro.samples.iter().zip(Vec::<f32>::try_from(&ro.scores_whitened)?).take(cfg.log_samples) {
            let p = &tr.prompts[s.prompt].record;
            samples_log.write(&serde_json::json!({
                "step": it, "prompt": p.prompt.last().map(|m| m.content.as_str()), "is_safety": p.is_safety,
                "response": s.text, "finished": s.finished, "score": s.score, "score_whitened": w, "rm": s.source,
                "safety_raw": s.safety_raw, "helpfulness_raw": s.helpfulness_raw,
            }))?;
        }
        progress.update(
            it,
            &format!(
                "reward {:.3} kl {:.3} len {:.1}",
                rec["reward_raw_mean"].as_f64().unwrap_or(f64::NAN),
                rec["kl"].as_f64().unwrap_or(f64::NAN),
                rec["response_length"].as_f64().unwrap_or(f64::NAN)
            ),
        );
        if save_now {
            ts.extra = serde_json::to_value(&tr.state).expect("state serialises");
            pck::save(&ckman, &tr.parts(), &inputs.extra_files, &ts)?;
        }
    }
    let final_dtype = llama::device::parse_kind(&cfg.save_dtype)?;
    let [policy, value] = tr.parts();
    let save = |p: &Part, dir: &Path| {
        let opts = llama::checkpoint::SaveOptions {
            architecture: p.architecture.into(),
            dtype: final_dtype,
            extra_files: inputs.extra_files.clone(),
            ..Default::default()
        };
        llama::checkpoint::save(p.vs, &p.cfg, dir, &opts)
    };
    let final_model = run_dir.join("final");
    let final_value_model = run_dir.join("final_value");
    save(&policy, &final_model)?;
    save(&value, &final_value_model)?;
    let best_model = match ts.best_step {
        Some(s) if s > 0 && ckman.path_of(s).exists() => {
            let dst = run_dir.join("best");
            let src = ckman.path_of(s).join("policy");
            let tmp = run_dir.join(format!(".best.tmp-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
            for e in std::fs::read_dir(&src).map_err(|e| TrainError::io(&src, e))?.flatten() {
                std::fs::copy(e.path(), tmp.join(e.file_name())).map_err(|err| TrainError::io(e.path(), err))?;
            }
            llama::checkpoint::replace_dir(&tmp, &dst)?;
            Some(dst)
        }
        _ => None,
    };
    let outcome = PpoOutcome {
        final_model,
        final_value_model,
        best_model,
        iterations: ts.step,
        early_stopped,
        initial_eval,
        final_eval: last_eval,
        best_eval_reward: ts.best_eval,
        best_iteration: ts.best_step,
        resumed_from,
        skipped_prompts: skipped,
        seconds: start.elapsed().as_secs_f64(),
    };
    let summary = serde_json::to_string_pretty(&outcome).expect("outcome serialises");
    llama::checkpoint::write_atomic(&run_dir.join("summary.json"), summary.as_bytes())?;
    // Reward, KL and the rest per iteration as a PNG; a plotting failure costs the picture only.
    let keys = [
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
    ];
    if let Err(e) = training::plot::metrics_grid(&run_dir.join("metrics.jsonl"), &run_dir.join("curves.png"), &keys, "ppo") {
        tracing::warn!("ppo: could not draw curves.png: {e}");
    }
    Ok(outcome)
}
