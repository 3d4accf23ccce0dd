//! The SFT trainer: `prepare` (model, data, optimizer, resume), `step` (one optimizer step over
//! accumulated micro-batches), `evaluate`, and `train` (the loop, checkpoints and metrics).
use crate::config::SftConfig;
use crate::data::{collate, epoch_order, pack, Example, PackedRow};
use crate::loss::{sft_backward_checkpointed, sft_loss_sum};
use llama::checkpoint as ck;
use llama::{Config, Llama, Tokenizer};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind};
use training::checkpoint::{Part, PartMut};
use training::optim::LayerShards;
use training::runner::{config_hash, Evaluation, RunOptions};
use training::{AdamW, LrSchedule, RunLock, TrainError};

pub type Result<T> = std::result::Result<T, TrainError>;

/// What a finished run produced (`summary.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SftOutcome {
    /// The final model (HF layout).
    pub final_model: PathBuf,
    /// The model with the lowest eval loss (HF layout), when evaluation ran.
    pub best_model: Option<PathBuf>,
    pub steps: u64,
    pub train_rows: usize,
    pub train_targets: usize,
    pub truncated_examples: usize,
    pub final_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub resumed_from: Option<u64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// Chat-formats SFT dialogs into examples with the assistant-token loss mask.
pub fn examples_from_dialogs(tok: &Tokenizer, dialogs: &[Vec<llama::Message>], mask: llama::AssistantMask) -> Result<Vec<Example>> {
    dialogs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let enc = llama::encode_dialog(tok, d, mask).map_err(|e| TrainError::Config(format!("SFT example {}: {e}", i + 1)))?;
            Ok(Example { ids: enc.ids, loss_mask: enc.assistant_mask })
        })
        .collect()
}

/// A prepared SFT run: model, packed rows, optimizer and schedule.
pub struct SftTrainer<'a> {
    cfg: &'a SftConfig,
    vs: nn::VarStore,
    model: Llama,
    opt: AdamW,
    rows: Vec<PackedRow>,
    eval_rows: Vec<PackedRow>,
    device: Device,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    schedule: LrSchedule,
    lora: Option<llama::lora::LoraRun>,
}

/// The model, its LoRA run, and under ZeRO-3 over several ranks the decoder layers' shards: each
/// layer is sharded as it is built (from the checkpoint, one tensor at a time, or from its fresh
/// initialisation in the same RNG order as a whole build), so no rank holds the whole model.
#[allow(clippy::type_complexity)]
fn build_model(
    cfg: &SftConfig,
    device: Device,
    kind: Kind,
) -> Result<(nn::VarStore, Llama, Option<llama::lora::LoraRun>, Option<LayerShards>)> {
    let model_cfg = match (&cfg.model, &cfg.init_preset) {
        (Some(dir), _) => ck::load_config(dir)?,
        (None, Some(p)) => Config::preset(p)?,
        (None, None) => return Err(TrainError::Config("set `model` or `init_preset`".into())),
    };
    let shards = match (&cfg.lora, &cfg.model) {
        (None, Some(dir)) if llama::lora::is_adapter_dir(dir) => None,
        (None, _) => LayerShards::for_options(cfg.train.state_options(), device),
        _ => None,
    };
    let files = match (&shards, &cfg.model) {
        (Some(_), Some(dir)) => Some(ck::CheckpointFiles::open(dir)?),
        _ => None,
    };
    tch::manual_seed(cfg.train.seed as i64);
    let mut vs = ck::var_store(device, kind);
    let (mut model, shards) = match shards {
        Some(mut s) => {
            let model = Llama::new_with(&vs.root(), &model_cfg, &mut |i| s.take_layer(&vs, i, files.as_ref()));
            (model, Some(s.finish()?))
        }
        None => (Llama::new(&vs.root(), &model_cfg), None),
    };
    if let Some(dir) = &cfg.model {
        match &shards {
            Some(s) => {
                ck::load_var_store_except(&mut vs, dir, |_| false, |n| s.holds(n))?;
            }
            None => ck::load_var_store(&mut vs, dir)?,
        }
    }
    let lora = match (&cfg.lora, &cfg.model) {
        (Some(lc), Some(base)) => {
            model.add_lora(&vs.root(), lc);
            llama::lora::freeze_base(&vs, |_| false);
            let info = llama::lora::AdapterInfo { base: base.clone(), task_type: "CAUSAL_LM", modules_to_save: vec![] };
            Some(llama::lora::LoraRun { lora: lc.clone(), info })
        }
        _ => None,
    };
    Ok((vs, model, lora, shards))
}

impl<'a> SftTrainer<'a> {
    /// Builds the model, packs the data and creates the optimizer; returns the run and the number
    /// of truncated (over-long) examples.
    pub fn prepare(cfg: &'a SftConfig, train: &[Example], eval: &[Example]) -> Result<(Self, usize)> {
        cfg.validate().map_err(TrainError::Config)?;
        let llama::Compute { device, kind } = cfg.train.compute()?;
        let (vs, mut model, lora, shards) = build_model(cfg, device, kind)?;
        let truncated = train.iter().filter(|e| e.len() > cfg.max_seq_len).count();
        // Pack once in a seeded order; epochs then shuffle whole rows.
        let order = epoch_order(train.len(), cfg.train.seed, u64::MAX);
        let shuffled: Vec<Example> = order.into_iter().map(|i| train[i].clone()).collect();
        let rows = pack(&shuffled, cfg.max_seq_len, cfg.packing);
        if rows.is_empty() {
            return Err(TrainError::Config("no SFT example with at least 2 tokens".into()));
        }
        let eval_rows = pack(eval, cfg.max_seq_len, cfg.packing);
        let per_step = (cfg.train.micro_batch_size * cfg.train.grad_accumulation) as u64;
        let steps_per_epoch = (rows.len() as u64).div_ceil(per_step);
        let mut total_steps = steps_per_epoch * cfg.train.epochs;
        if let Some(m) = cfg.train.max_steps {
            total_steps = total_steps.min(m);
        }
        let schedule = cfg.train.lr_schedule(total_steps);
        let opt = match shards {
            Some(s) => AdamW::with_layer_shards(&vs, cfg.train.adamw(), s)?,
            None => cfg.train.optimizer_zero3(&vs)?,
        };
        // ZeRO-3: the model gathers each layer from the ranks' shards as it runs.
        if let Some(hooks) = opt.shard_hooks() {
            model.set_shard_hooks(hooks);
        }
        Ok((SftTrainer { cfg, vs, model, opt, rows, eval_rows, device, steps_per_epoch, total_steps, schedule, lora }, truncated))
    }

    /// Rows of optimizer step `step`: a slice of the epoch's shuffled order.
    fn step_rows(&self, step: u64) -> Vec<usize> {
        let epoch = step / self.steps_per_epoch;
        let k = (step % self.steps_per_epoch) as usize;
        let order = epoch_order(self.rows.len(), self.cfg.train.seed, epoch);
        let per_step = self.cfg.train.micro_batch_size * self.cfg.train.grad_accumulation;
        let end = ((k + 1) * per_step).min(order.len());
        order[k * per_step..end].to_vec()
    }

    /// One optimizer step: the loss is the token-weighted mean over every target of the step's
    /// micro-batches, so accumulation and packing do not change it.
    pub fn step(&mut self, step: u64) -> Result<serde_json::Value> {
        let t0 = Instant::now();
        let idx = self.step_rows(step);
        let rows: Vec<&PackedRow> = idx.iter().map(|&i| &self.rows[i]).collect();
        let n_targets: usize = rows.iter().map(|r| r.num_targets()).sum::<usize>().max(1);
        if let Some(l) = &self.lora {
            l.lora.seed_dropout(self.cfg.train.seed, step);
        }
        self.opt.zero_grad();
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        // Distributed: rank r takes micro-batches r, r + W, ...; each is the same batch it is in
        // one process, and the gradients (already divided by the step's target count) are summed.
        let (rank, world) = (distributed::rank() as usize, distributed::world_size() as usize);
        // More than one micro-batch here: sum their gradients in fp32 (bf16 models).
        let several = rows.chunks(self.cfg.train.micro_batch_size).enumerate().filter(|(j, _)| j % world == rank).count() > 1;
        for (j, chunk) in rows.chunks(self.cfg.train.micro_batch_size).enumerate() {
            if j % world != rank {
                continue;
            }
            let batch = collate(chunk, self.device);
            tokens += batch.num_tokens;
            let nll = if self.cfg.train.gradient_checkpointing {
                sft_backward_checkpointed(&self.model, &batch, n_targets as f64).0
            } else {
                let (nll, _) = sft_loss_sum(&self.model, &batch);
                (&nll / n_targets as f64).backward();
                nll
            };
            if several {
                self.opt.accumulate();
            }
            loss_sum += f64::try_from(&nll)?;
        }
        if self.model.is_sharded() {
            // ZeRO-3: each backward gathers and reduces every layer with all ranks, so a rank
            // with fewer micro-batches (the step's count is not a multiple of the ranks) runs
            // as many backward passes as the busiest, on the step's first micro-batch with
            // weight 0 (gradient exactly zero, loss not counted).
            let n_chunks = rows.len().div_ceil(self.cfg.train.micro_batch_size);
            let mine = (0..n_chunks).filter(|j| j % world == rank).count();
            let first: Vec<&PackedRow> = rows.iter().take(self.cfg.train.micro_batch_size).copied().collect();
            for _ in mine..n_chunks.div_ceil(world) {
                let _ = sft_backward_checkpointed(&self.model, &collate(&first, self.device), f64::INFINITY);
                if several {
                    self.opt.accumulate();
                }
            }
        }
        let mut sums = [loss_sum, tokens as f64];
        training::dist::sum_over_ranks(&mut sums)?;
        let [loss_sum, tokens] = sums;
        let tokens = tokens as usize;
        let loss = loss_sum / n_targets as f64;
        let grad_norm = self.opt.clip_grad_norm(self.cfg.train.grad_clip)?;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "loss", value: loss });
        }
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite { step: step + 1, what: "gradient norm", value: grad_norm });
        }
        let lr = self.schedule.lr(step);
        self.opt.step(lr)?;
        let secs = t0.elapsed().as_secs_f64();
        Ok(serde_json::json!({
            "step": step + 1,
            "epoch": step / self.steps_per_epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "targets": n_targets,
            "tokens_per_s": tokens as f64 / secs.max(1e-9),
            "step_seconds": secs,
        }))
        .map(|mut rec| {
            if self.cfg.train.gradient_checkpointing {
                rec["gradient_checkpointing"] = serde_json::json!(true);
            }
            rec
        })
    }

    /// Mean NLL per target token on the held-out rows.
    pub fn evaluate(&self) -> Result<Option<f64>> {
        if self.eval_rows.is_empty() {
            return Ok(None);
        }
        let _g = tch::no_grad_guard();
        let (mut sum, mut n) = (0f64, 0i64);
        let refs: Vec<&PackedRow> = self.eval_rows.iter().collect();
        for chunk in refs.chunks(self.cfg.train.micro_batch_size) {
            let (nll, k) = sft_loss_sum(&self.model, &collate(chunk, self.device));
            sum += f64::try_from(&nll)?;
            n += k;
        }
        Ok((n > 0).then(|| sum / n as f64))
    }
}

impl training::runner::Stage for SftTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.total_steps
    }
    fn step(&mut self, step: u64) -> Result<serde_json::Value> {
        SftTrainer::step(self, step)
    }
    fn evaluate(&mut self, _steps: u64) -> Result<Option<Evaluation>> {
        Ok(SftTrainer::evaluate(self)?.map(Evaluation::loss))
    }
    fn parts(&self) -> Vec<Part<'_>> {
        vec![Part {
            name: "model",
            vs: &self.vs,
            opt: &self.opt,
            cfg: self.model.cfg.clone(),
            architecture: "LlamaForCausalLM",
            lora: self.lora.as_ref(),
        }]
    }
    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        vec![PartMut { name: "model", vs: &mut self.vs, opt: &mut self.opt, opt_steps: None }]
    }
}

/// Trains, checkpointing into `run_dir/checkpoints`; writes `run_dir/final` (and `run_dir/best`)
/// and `run_dir/summary.json`. With `resume`, continues from the newest checkpoint (or returns the
/// stored outcome of a finished run); a run folder with checkpoints is never silently overwritten.
pub fn train(
    cfg: &SftConfig,
    train: &[Example],
    eval: &[Example],
    run_dir: &Path,
    resume: bool,
    extra_files: &[PathBuf],
) -> Result<SftOutcome> {
    // Before the model is built: a folder in use fails at once.
    let _lock = RunLock::acquire_main(run_dir)?;
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    let (mut run, truncated) = SftTrainer::prepare(cfg, train, eval)?;
    let opts = RunOptions {
        final_dtype: cfg.save_dtype.kind(),
        extra_files: extra_files.to_vec(),
        ..RunOptions::new("sft", run_dir, resume, config_hash(&SftConfig { train: cfg.train.for_fingerprint(), ..cfg.clone() }), &cfg.train)
    };
    training::runner::run(&mut run, &opts, |run, r| SftOutcome {
        final_model: r.final_model,
        best_model: r.best_model,
        steps: r.steps,
        train_rows: run.rows.len(),
        train_targets: run.rows.iter().map(|r| r.num_targets()).sum(),
        truncated_examples: truncated,
        final_eval_loss: r.final_eval_loss,
        best_eval_loss: r.best_eval_loss,
        resumed_from: r.resumed_from,
        seconds: r.seconds,
        tokens_per_s: r.tokens_per_s,
    })
}

/// Mean NLL per target token of `examples` under `model` (for tests and reports).
pub fn mean_target_nll(model: &Llama, examples: &[Example], max_len: usize, packing: bool) -> f64 {
    let rows = pack(examples, max_len, packing);
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let _g = tch::no_grad_guard();
    let batch = collate(&refs, model.device());
    let (nll, n) = sft_loss_sum(model, &batch);
    f64::try_from(nll).unwrap_or(f64::NAN) / n.max(1) as f64
}

/// Summed NLL of one batch of rows (exposed for the packing-equivalence test).
pub fn rows_nll_sum(model: &Llama, rows: &[PackedRow]) -> (f64, i64) {
    let refs: Vec<&PackedRow> = rows.iter().collect();
    let _g = tch::no_grad_guard();
    let (nll, n) = sft_loss_sum(model, &collate(&refs, model.device()));
    (f64::try_from(nll).unwrap_or(f64::NAN), n)
}
