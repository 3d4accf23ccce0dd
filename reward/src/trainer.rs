//! Reward-model training: pairs shuffled per epoch from (seed, epoch), the ranking loss averaged
//! over the pairs of an optimizer step (accumulated micro-batches) plus, for a safety RM with
//! `safety_aux_loss_weight > 0`, the auxiliary safe/unsafe term averaged over the step's labelled
//! responses (Table 29), the shared runner loop for checkpoints, resume and metrics.
use crate::config::RewardConfig;
use crate::data::{collate, PairTokens};
use crate::loss::{margin, ranking_loss, safety_aux_loss_sum};
use crate::model::{RewardModel, ARCHITECTURE};
use llama::checkpoint as ck;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};
use training::checkpoint::{Part, PartMut};
use training::optim::LayerShards;
use training::runner::{config_hash, Evaluation, RunOptions, RunResult, Stage};
use training::{AdamW, LrSchedule, RunLock, TrainError};

type Result<T> = std::result::Result<T, TrainError>;

pub struct RewardTrainer<'a> {
    cfg: &'a RewardConfig,
    vs: nn::VarStore,
    pub model: RewardModel,
    opt: AdamW,
    pairs: &'a [PairTokens],
    eval_pairs: &'a [PairTokens],
    device: Device,
    steps_per_epoch: u64,
    total_steps: u64,
    schedule: LrSchedule,
    lora: Option<llama::lora::LoraRun>,
}

/// Scores of a batch's chosen and rejected responses, `[B]` each.
pub fn pair_scores(model: &RewardModel, pairs: &[&PairTokens], device: Device) -> (Tensor, Tensor, usize) {
    let b = collate(pairs, device);
    let s = model.scores_at(&b.ids, &b.positions, &b.mask, &b.read);
    (s.select(1, 0), s.select(1, 1), b.num_tokens)
}

fn margins(cfg: &RewardConfig, pairs: &[&PairTokens], device: Device) -> Tensor {
    let m: Vec<f32> = pairs.iter().map(|p| margin(cfg.margin, p.rating) as f32).collect();
    Tensor::from_slice(&m).to_device(device)
}

/// Safety labels of a batch's responses as `[B, 2]` (chosen, rejected) tensors: `safe` (1 safe,
/// 0 unsafe or unlabelled) and `labelled` (1 where the record has `chosen_safe` / `rejected_safe`).
pub fn safety_labels(pairs: &[&PairTokens], device: Device) -> (Tensor, Tensor) {
    let (mut safe, mut labelled) = (Vec::with_capacity(2 * pairs.len()), Vec::with_capacity(2 * pairs.len()));
    for p in pairs {
        for l in [p.chosen_safe, p.rejected_safe] {
            safe.push(f32::from(u8::from(l == Some(true))));
            labelled.push(f32::from(u8::from(l.is_some())));
        }
    }
    let shape = [pairs.len() as i64, 2];
    (Tensor::from_slice(&safe).view(shape).to_device(device), Tensor::from_slice(&labelled).view(shape).to_device(device))
}

/// Responses with a safety label among `pairs`.
pub fn labelled_responses(pairs: &[&PairTokens]) -> usize {
    pairs.iter().map(|p| p.chosen_safe.is_some() as usize + p.rejected_safe.is_some() as usize).sum()
}

/// The auxiliary term of one micro-batch: its share of the step's mean over labelled responses.
struct AuxShare {
    safe: Tensor,
    labelled: Tensor,
    /// Labelled responses of the whole optimizer step (all micro-batches, all ranks).
    step_labelled: usize,
}

impl AuxShare {
    /// `Σ BCE / step_labelled` over this micro-batch's labelled responses; `scores` is `[B, 2]`.
    fn loss(&self, scores: &Tensor) -> Tensor {
        safety_aux_loss_sum(scores, &self.safe, &self.labelled) / self.step_labelled as f64
    }
}

/// [`RewardModel::load`] for ZeRO-3 shard-on-load: each decoder layer is read from the
/// checkpoint one tensor at a time as it is built and only this rank's shard kept
/// ([`LayerShards`]); the rest (embeddings, final norm, the score head when there is one) is
/// loaded whole. The same RNG draws as [`RewardModel::load`], so a fresh head is the same too.
fn load_sharded(
    dir: &std::path::Path,
    device: Device,
    kind: Kind,
    seed: u64,
    mut shards: LayerShards,
) -> Result<(nn::VarStore, RewardModel, bool, Option<LayerShards>)> {
    let cfg = ck::load_config(dir)?;
    let files = ck::CheckpointFiles::open(dir)?;
    tch::manual_seed(seed as i64);
    let mut vs = ck::var_store(device, kind);
    let model = RewardModel::new_with(&vs.root(), &cfg, &mut |i| shards.take_layer(&vs, i, Some(&files)));
    let shards = shards.finish()?;
    let fresh = ck::load_var_store_except(&mut vs, dir, |n| n == "score.weight", |n| shards.holds(n))?;
    Ok((vs, model, !fresh.is_empty(), Some(shards)))
}

impl<'a> RewardTrainer<'a> {
    pub fn prepare(cfg: &'a RewardConfig, pairs: &'a [PairTokens], eval_pairs: &'a [PairTokens]) -> Result<Self> {
        cfg.validate().map_err(TrainError::Config)?;
        if pairs.is_empty() {
            return Err(TrainError::Config("no training pairs".into()));
        }
        let llama::Compute { device, kind } = cfg.train.compute()?;
        // ZeRO-3 over several ranks: each decoder layer read and sharded as it is built.
        let shards = match cfg.lora {
            None if !llama::lora::is_adapter_dir(&cfg.model) => LayerShards::for_options(cfg.train.state_options(), device),
            _ => None,
        };
        let (vs, mut model, fresh_head, shards) = match shards {
            Some(s) => load_sharded(&cfg.model, device, kind, cfg.train.seed, s)?,
            None => {
                let (vs, model, fresh) = RewardModel::load(&cfg.model, device, kind, cfg.train.seed)?;
                (vs, model, fresh, None)
            }
        };
        let lora = cfg.lora.as_ref().map(|lc| {
            model.trunk.add_lora(&vs.root(), lc);
            llama::lora::freeze_base(&vs, |n| n.starts_with("score."));
            let info = llama::lora::AdapterInfo { base: cfg.model.clone(), task_type: "SEQ_CLS", modules_to_save: vec!["score".into()] };
            llama::lora::LoraRun { lora: lc.clone(), info }
        });
        if fresh_head {
            tracing::info!("reward head initialised from N(0, 0.02) on top of {}", cfg.model.display());
        }
        let per_step = (cfg.train.micro_batch_size * cfg.train.grad_accumulation) as u64;
        let steps_per_epoch = (pairs.len() as u64).div_ceil(per_step);
        let mut total_steps = steps_per_epoch * cfg.train.epochs;
        if let Some(m) = cfg.train.max_steps {
            total_steps = total_steps.min(m);
        }
        let schedule = cfg.train.lr_schedule(total_steps);
        let opt = match shards {
            Some(s) => AdamW::with_layer_shards(&vs, cfg.train.adamw(), s)?,
            None => cfg.train.optimizer_zero3(&vs)?,
        };
        // ZeRO-3: the trunk gathers each layer from the ranks' shards as it runs.
        if let Some(hooks) = opt.shard_hooks() {
            model.trunk.set_shard_hooks(hooks);
        }
        Ok(RewardTrainer { cfg, vs, model, opt, pairs, eval_pairs, device, steps_per_epoch, total_steps, schedule, lora })
    }

    fn step_pairs(&self, step: u64) -> Vec<&'a PairTokens> {
        let order = llama::rng::SplitMix64::permutation(self.pairs.len(), self.cfg.train.seed, step / self.steps_per_epoch);
        let per = self.cfg.train.micro_batch_size * self.cfg.train.grad_accumulation;
        let k = (step % self.steps_per_epoch) as usize;
        order[k * per..((k + 1) * per).min(order.len())].iter().map(|&i| &self.pairs[i]).collect()
    }

    /// Mean ranking loss over the step's pairs, accumulated over micro-batches.
    pub fn step(&mut self, step: u64) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let pairs = self.step_pairs(step);
        let n = pairs.len();
        if let Some(l) = &self.lora {
            l.lora.seed_dropout(self.cfg.train.seed, step);
        }
        self.opt.zero_grad();
        let (mut loss_sum, mut correct, mut tokens, mut gap, mut aux_sum) = (0f64, 0usize, 0usize, 0f64, 0f64);
        // Table 29's auxiliary term, averaged over the labelled responses of the step: every rank
        // sees the step's pairs, so each divides by the same count and the sums add up exactly.
        let w = self.cfg.safety_aux_loss_weight;
        let step_labelled = if w > 0.0 { labelled_responses(&pairs) } else { 0 };
        // Distributed: rank r takes micro-batches r, r + W, ...; the sums are reduced below.
        let (rank, world) = (distributed::rank() as usize, distributed::world_size() as usize);
        // More than one micro-batch here: sum their gradients in fp32 (bf16 models).
        let several = pairs.chunks(self.cfg.train.micro_batch_size).enumerate().filter(|(j, _)| j % world == rank).count() > 1;
        for (j, chunk) in pairs.chunks(self.cfg.train.micro_batch_size).enumerate() {
            if j % world != rank {
                continue;
            }
            let m = margins(self.cfg, chunk, self.device);
            let share = chunk.len() as f64 / n as f64;
            let aux = (step_labelled > 0).then(|| {
                let (safe, labelled) = safety_labels(chunk, self.device);
                AuxShare { safe, labelled, step_labelled }
            });
            // Eq. 2 (its share of the step's mean over pairs) + w · the auxiliary term's share.
            let objective = |s: &Tensor| -> (Tensor, Option<Tensor>) {
                let (c, r) = (s.select(1, 0), s.select(1, 1));
                let rank = ranking_loss(&c, &r, &m, self.cfg.center_coef) * share;
                match &aux {
                    Some(a) => {
                        let t = a.loss(s);
                        (rank + &t * w, Some(t.detach()))
                    }
                    None => (rank, None),
                }
            };
            let (c, r, loss, aux_part) = if self.cfg.train.gradient_checkpointing {
                // Layer-wise recomputation; the last layer, the head and the loss as usual.
                let b = collate(chunk, self.device);
                tokens += b.num_tokens;
                let mut scores = None;
                let loss = self.model.trunk.backward_checkpointed(&b.ids, &b.positions, &b.mask, Some(&b.read), |h| {
                    let s = self.model.score.forward(h).squeeze_dim(-1).to_kind(Kind::Float);
                    let (loss, aux_part) = objective(&s);
                    scores = Some((s.select(1, 0).detach(), s.select(1, 1).detach(), aux_part));
                    loss
                });
                let (c, r, aux_part) = scores.expect("the head ran");
                (c, r, loss, aux_part)
            } else {
                let (c, r, t) = pair_scores(&self.model, chunk, self.device);
                tokens += t;
                let (loss, aux_part) = objective(&Tensor::stack(&[&c, &r], 1));
                loss.backward();
                (c, r, loss, aux_part)
            };
            if let Some(a) = aux_part {
                aux_sum += f64::try_from(&a)?;
            }
            if several {
                self.opt.accumulate();
            }
            loss_sum += f64::try_from(&loss)?;
            let d = (&c - &r).detach();
            correct += i64::try_from(d.gt(0.0).sum(Kind::Int64))? as usize;
            gap += f64::try_from(d.sum(Kind::Float))?;
        }
        if self.model.trunk.is_sharded() {
            // ZeRO-3: each backward gathers and reduces every layer with all ranks, so a rank
            // with fewer micro-batches runs as many backward passes as the busiest, on the
            // step's first micro-batch with weight 0 (gradient exactly zero, nothing counted).
            let mb = self.cfg.train.micro_batch_size;
            let n_chunks = pairs.len().div_ceil(mb);
            let mine = (0..n_chunks).filter(|j| j % world == rank).count();
            for _ in mine..n_chunks.div_ceil(world) {
                let b = collate(&pairs[..mb.min(pairs.len())], self.device);
                let _ = self.model.trunk.backward_checkpointed(&b.ids, &b.positions, &b.mask, Some(&b.read), |h| {
                    self.model.score.forward(h).to_kind(Kind::Float).sum(Kind::Float) * 0.0
                });
                if several {
                    self.opt.accumulate();
                }
            }
        }
        let mut sums = [loss_sum, correct as f64, tokens as f64, gap, aux_sum];
        training::dist::sum_over_ranks(&mut sums)?;
        let [loss_sum, correct, tokens, gap, aux_sum] = sums;
        let (correct, tokens) = (correct as usize, tokens as usize);
        let grad_norm = self.opt.clip_grad_norm(self.cfg.train.grad_clip)?;
        if !loss_sum.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "loss", value: loss_sum });
        }
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "gradient norm", value: grad_norm });
        }
        let lr = self.schedule.lr(step);
        self.opt.step(lr)?;
        let secs = t0.elapsed().as_secs_f64();
        Ok(serde_json::json!({
            "step": step + 1, "loss": loss_sum, "accuracy": correct as f64 / n as f64,
            "mean_gap": gap / n as f64, "lr": lr, "grad_norm": grad_norm, "pairs": n,
            "tokens": tokens, "pairs_per_s": n as f64 / secs, "tokens_per_s": tokens as f64 / secs, "step_seconds": secs,
        }))
        .map(|mut rec| {
            if self.cfg.train.gradient_checkpointing {
                rec["gradient_checkpointing"] = serde_json::json!(true);
            }
            if step_labelled > 0 {
                // `loss` = ranking_loss + w · safety_aux_loss.
                rec["ranking_loss"] = serde_json::json!(loss_sum - w * aux_sum);
                rec["safety_aux_loss"] = serde_json::json!(aux_sum);
                rec["labelled_responses"] = serde_json::json!(step_labelled);
            }
            rec
        })
    }

    /// Mean ranking loss (Eq. 2 alone, comparable across `safety_aux_loss_weight`s) on the held-out pairs.
    pub fn evaluate(&mut self) -> Result<Option<f64>> {
        if self.eval_pairs.is_empty() {
            return Ok(None);
        }
        let _g = tch::no_grad_guard();
        let refs: Vec<&PairTokens> = self.eval_pairs.iter().collect();
        let mut sum = 0f64;
        for chunk in refs.chunks(self.cfg.train.micro_batch_size.max(1)) {
            let (c, r, _) = pair_scores(&self.model, chunk, self.device);
            sum += f64::try_from(ranking_loss(&c, &r, &margins(self.cfg, chunk, self.device), 0.0))? * chunk.len() as f64;
        }
        Ok(Some(sum / refs.len() as f64))
    }
}

impl Stage for RewardTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.total_steps
    }
    fn step(&mut self, step: u64) -> Result<serde_json::Value> {
        RewardTrainer::step(self, step)
    }
    fn evaluate(&mut self, _steps: u64) -> Result<Option<Evaluation>> {
        Ok(RewardTrainer::evaluate(self)?.map(Evaluation::loss))
    }
    fn parts(&self) -> Vec<Part<'_>> {
        let mut cfg = self.model.trunk.cfg.clone();
        cfg.pad_token_id.get_or_insert(0);
        vec![Part { name: "model", vs: &self.vs, opt: &self.opt, cfg, architecture: ARCHITECTURE, lora: self.lora.as_ref() }]
    }
    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        vec![PartMut { name: "model", vs: &mut self.vs, opt: &mut self.opt, opt_steps: None }]
    }
}

/// Trains a reward model into `run_dir` (checkpoints/, metrics.jsonl, final/, best/,
/// summary.json). With `resume`, continues from the newest checkpoint (or returns the stored
/// outcome of a finished run).
pub fn train(
    cfg: &RewardConfig,
    pairs: &[PairTokens],
    eval_pairs: &[PairTokens],
    run_dir: &Path,
    resume: bool,
    extra_files: &[PathBuf],
) -> Result<RunResult> {
    // Before the model is loaded: a folder in use fails at once.
    let _lock = RunLock::acquire_main(run_dir)?;
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    let mut run = RewardTrainer::prepare(cfg, pairs, eval_pairs)?;
    let gaps = crate::data::PairGaps::of(pairs);
    gaps.warn_training("training", cfg.margin, cfg.max_seq_len);
    if cfg.safety_aux_loss_weight > 0.0 && gaps.without_safety_labels == gaps.pairs {
        tracing::warn!("safety_aux_loss_weight = {} but no training pair has a safety label: Eq. 2 alone", cfg.safety_aux_loss_weight);
    }
    // Every saved model records its training max_seq_len (`reward eval` and `score` default to it);
    // staged in a folder of its own, so a refused start never rewrites what a model carries.
    let mut extra_files = extra_files.to_vec();
    extra_files.push(crate::model::write_training_record(&run_dir.join(".record"), cfg.max_seq_len)?);
    let opts = RunOptions {
        final_dtype: cfg.save_dtype.kind(),
        extra_files,
        ..RunOptions::new(
            "reward",
            run_dir,
            resume,
            config_hash(&RewardConfig { train: cfg.train.for_fingerprint(), ..cfg.clone() }),
            &cfg.train,
        )
    };
    training::runner::run(&mut run, &opts, |_, r| r)
}
