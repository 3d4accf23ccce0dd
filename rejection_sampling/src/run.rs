//! The iteration loop. Each iteration has four verbs, each resumable on its own:
//! `sample` (best-of-K into the append-only log `samples-iter{N}.jsonl`), `pool` (rebuilt from
//! the logs of iterations 1..=N: the best sample per prompt ever seen), `finetune` (the SFT stage
//! on the pool, resuming from its own checkpoints) and `evaluate`; then `iter{N}/done.json`
//! marks the iteration finished and a rerun skips it.
//!
//! Run folder:
//! ```text
//! config.json                   the resolved config and its hash (a resume must match it)
//! samples-iter{N}.jsonl         one line per prompt: its K samples and scores
//! sweep-iter{N}-t{T}.jsonl      temperature-sweep samples (report only)
//! pool.jsonl                    the latest pool (SFT dataset + score, iteration, temperature)
//! iter{N}/pool.jsonl            the pool iteration N fine-tuned on
//! iter{N}/sft/                  the SFT run (checkpoints/, final/ = the next policy)
//! iter{N}/eval-{before,after}.json, report.json, report.md, best_of_k.png, temperature_sweep.png
//! iter{N}/judged_pairs.jsonl    demo world: the judges' comparisons of the samples (next RM batch)
//! iter{N}/done.json             the iteration is finished
//! report.json, report.md, summary.json
//! events.out.tfevents.*         TensorBoard: each iteration's numbers and samples (step = iteration)
//! ```
use crate::config::{RejectionSamplingConfig, StartFrom};
use crate::curve::BestOfKCurve;
use crate::error::{Result, RsError};
use crate::eval::{evaluate, EvalSpec, RmEval};
use crate::report::{run_markdown, samples_markdown, IterationReport, PoolReport, SampleTruth, SweepPoint, Throughput};
use crate::sampler::{batch_seed, sample_prompts, Job, SampleSpec};
use crate::select::{prompt_key, Pool, PoolUpdate, PromptSamples};
use crate::shard::{merge_rank_logs, pending_batches, rank_log_path, GenJournal, SampleLog};
use datasets::{PromptRecord, SftRecord};
use llama::checkpoint::write_atomic;
use llama::{Llama, Tokenizer};
use reward::combine::{RewardModels, RewardScorer, ScoreOrder, ScorerSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind};
use training::runner::fnv1a;
use training::tensorboard::{EventWriter, Value};
use training::RunLock;

/// What a finished run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RsOutcome {
    /// The last iteration's fine-tuned model.
    pub final_model: PathBuf,
    pub pool: PathBuf,
    pub pool_size: usize,
    pub iterations: usize,
    /// Iterations found finished (`done.json`) and skipped.
    pub skipped_iterations: Vec<usize>,
    pub report: PathBuf,
    pub seconds: f64,
}

/// `iter{N}/done.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneManifest {
    pub iteration: usize,
    pub policy: PathBuf,
    pub model: PathBuf,
    pub pool: PathBuf,
    pub pool_size: usize,
    pub config_hash: String,
}

/// One rejection-sampling run: the config, the prompts and where things go.
pub struct RejectionSampler<'a> {
    cfg: &'a RejectionSamplingConfig,
    tok: &'a Tokenizer,
    out: PathBuf,
    extra_files: Vec<PathBuf>,
    prompts: Vec<PromptRecord>,
    keys: Vec<String>,
    eval_prompts: Vec<PromptRecord>,
    device: Device,
    kind: Kind,
    config_hash: String,
    /// The run folder's lock, held as long as the sampler lives.
    _lock: Option<RunLock>,
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| RsError::Config(format!("{}: {e}", path.display())))?;
    Ok(write_atomic(path, s.as_bytes())?)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| RsError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| RsError::Resume { path: path.into(), msg: format!("unreadable: {e}") })
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| RsError::io(p, e))
}

/// Reads the prompt files in order, keeping the first of prompts with the same messages.
pub fn load_prompts(files: &[PathBuf], max: Option<usize>) -> Result<Vec<PromptRecord>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dup = 0usize;
    for f in files {
        for p in datasets::io::read_all::<PromptRecord>(f)? {
            if seen.insert(prompt_key(&p.prompt)) {
                out.push(p);
            } else {
                dup += 1;
            }
        }
    }
    if dup > 0 {
        tracing::info!("{dup} repeated prompts dropped (each prompt is sampled once)");
    }
    if let Some(m) = max {
        out.truncate(m);
    }
    if out.is_empty() {
        return Err(RsError::Config("no prompts to sample".into()));
    }
    Ok(out)
}

fn load_policy(dir: &Path, device: Device, kind: Kind) -> Result<(nn::VarStore, Llama)> {
    Ok(llama::checkpoint::load_causal_lm(dir, device, kind)?)
}

impl<'a> RejectionSampler<'a> {
    /// Locks the run folder, checks it (a folder with a run in it needs `resume` and the same
    /// config), reads the prompts and records the config.
    pub fn prepare(
        cfg: &'a RejectionSamplingConfig,
        tok: &'a Tokenizer,
        out: &Path,
        resume: bool,
        extra_files: &[PathBuf],
    ) -> Result<Self> {
        cfg.validate().map_err(RsError::Config)?;
        let llama::Compute { mut device, kind } = cfg.device.compute(cfg.dtype)?;
        // Distributed: a CUDA rank samples on its own device.
        if let (Some(d), Device::Cuda(_)) = (distributed::get(), device) {
            device = d.cuda_device();
        }
        let config_json = serde_json::to_value(cfg).map_err(|e| RsError::Config(e.to_string()))?;
        // The fingerprint leaves out how the fine-tune executes (TrainConfig::for_fingerprint).
        let mut neutral = cfg.clone();
        neutral.finetune.train = neutral.finetune.train.for_fingerprint();
        let neutral_json = serde_json::to_value(&neutral).map_err(|e| RsError::Config(e.to_string()))?;
        let config_hash = fnv1a(neutral_json.to_string().as_bytes());
        let prompts = load_prompts(&cfg.prompts, cfg.max_prompts)?;
        let keys = prompts.iter().map(|p| prompt_key(&p.prompt)).collect();
        let eval_prompts = match &cfg.eval_prompts {
            Some(p) => datasets::io::read_all::<PromptRecord>(p)?,
            None => Vec::new(),
        };
        // One run per folder: a second run into `out` fails here, naming the holder's pid and host.
        // Distributed: rank 0 locks and records the config; the others then check it.
        let lock = training::dist::main_first(|| -> Result<Option<RunLock>> {
            let lock = RunLock::acquire_main(out)?;
            Self::check_record(out, resume, &config_hash, &config_json)?;
            Ok(lock)
        })?;
        Ok(RejectionSampler {
            cfg,
            tok,
            out: out.into(),
            extra_files: extra_files.to_vec(),
            prompts,
            keys,
            eval_prompts,
            device,
            kind,
            config_hash,
            _lock: lock,
        })
    }

    /// `config.json`: refuses a folder with a run unless resuming it with the same config;
    /// writes it (rank 0) for a new run.
    fn check_record(out: &Path, resume: bool, config_hash: &str, config_json: &serde_json::Value) -> Result<()> {
        let record = out.join("config.json");
        if record.exists() && (distributed::is_main() || resume) {
            if !resume {
                return Err(RsError::Resume {
                    path: out.into(),
                    msg: "the run folder already has a rejection-sampling run: pass --resume to continue it, or choose another --out"
                        .into(),
                });
            }
            let old: serde_json::Value = read_json(&record)?;
            if old["hash"].as_str() != Some(config_hash) {
                return Err(RsError::Resume {
                    path: record,
                    msg: "was written by a different config; resume with the same config or use a new run folder".into(),
                });
            }
        } else if distributed::is_main() {
            mkdir(out)?;
            write_json(&record, &serde_json::json!({ "hash": config_hash, "config": config_json }))?;
        }
        Ok(())
    }

    fn iter_dir(&self, it: usize) -> PathBuf {
        self.out.join(format!("iter{it}"))
    }

    fn log_path(&self, it: usize) -> PathBuf {
        self.out.join(format!("samples-iter{it}.jsonl"))
    }

    /// The helpfulness and/or safety reward models (a causal LM's random head is drawn from seed 0).
    fn reward_models(&self) -> Result<RewardModels> {
        let c = self.cfg;
        Ok(RewardModels::load(c.helpfulness_rm.as_deref(), c.safety_rm.as_deref(), self.device, self.kind, (0, 0))?)
    }

    /// Scoring as rejection sampling does it: sorted by length within `score_batch_size` batches.
    fn scorer_spec(&self) -> ScorerSpec {
        let c = self.cfg;
        ScorerSpec { threshold: c.safety_threshold, max_len: c.rm_max_seq_len, batch: c.score_batch_size, order: ScoreOrder::ByLength }
    }

    /// Samples each of the first `count` prompts not yet in `log` in one engine run (continuous
    /// across prompt batches), journaling each prompt as it finishes and appending each prompt
    /// batch to the log as soon as it is scored.
    fn sample_into(
        &self,
        log: &mut SampleLog,
        policy: &Llama,
        scorer: &RewardScorer,
        it: usize,
        temperature: f64,
        count: usize,
    ) -> Result<()> {
        if distributed::world_size() > 1 {
            return self.sample_into_sharded(log, policy, scorer, it, temperature, count);
        }
        let keys = &self.keys[..count];
        let batches = pending_batches(keys, self.cfg.prompt_batch_size, log.done());
        let total = count.div_ceil(self.cfg.prompt_batch_size);
        if batches.is_empty() {
            return Ok(());
        }
        let mut journal = GenJournal::open_for(log.path())?;
        if log.records().is_empty() && journal.is_empty() {
            tracing::info!(
                "iteration {it}: sampling K={} at T={temperature} for {count} prompts into {}",
                self.cfg.best_of_k,
                log.path().display()
            );
        } else {
            tracing::info!(
                "iteration {it}: resuming {}: {} prompts logged, {} generated awaiting scoring, {} batches left",
                log.path().display(),
                log.records().len(),
                journal.len().saturating_sub(log.records().len()),
                batches.len()
            );
        }
        let t0 = Instant::now();
        let jobs = self.jobs(&batches, it, temperature);
        let mut n = 0usize;
        sample_prompts(policy, scorer, self.tok, &jobs, &self.sample_spec(it, temperature), &mut journal, |recs| {
            log.append(recs)?;
            n += 1;
            if n.is_multiple_of(10) || n == batches.len() {
                let el = t0.elapsed().as_secs_f64();
                tracing::info!(
                    "iteration {it} T={temperature}: {}/{total} prompt batches logged, {:.1} s, eta {:.0} s",
                    total - batches.len() + n,
                    el,
                    el / n as f64 * (batches.len() - n) as f64
                );
            }
            Ok(())
        })
    }

    /// The prompts of `batches`, each with its batch's seed (fixed by the batch's position).
    fn jobs(&self, batches: &[(usize, Vec<usize>)], it: usize, temperature: f64) -> Vec<Job<'_>> {
        batches
            .iter()
            .flat_map(|(b, idx)| {
                let seed = batch_seed(self.cfg.seed, it, *b, temperature);
                idx.iter().map(move |&i| Job { batch: *b, batch_seed: seed, prompt: &self.prompts[i] })
            })
            .collect()
    }

    /// How to sample at `temperature`: `decode_slots` (default `prompt_batch_size × K`) rows at once.
    fn sample_spec(&self, it: usize, temperature: f64) -> SampleSpec {
        SampleSpec {
            k: self.cfg.best_of_k,
            temperature,
            top_p: self.cfg.top_p,
            top_k: self.cfg.top_k,
            max_new_tokens: self.cfg.max_new_tokens,
            iteration: it,
            require_finished: self.cfg.require_finished,
            slots: self.cfg.decode_slots.unwrap_or(self.cfg.prompt_batch_size * self.cfg.best_of_k),
        }
    }

    /// Distributed [`Self::sample_into`]: prompt batch b is sampled on rank b mod W into the
    /// rank's own log (resumable as the main one); rank 0 then appends every rank's records to
    /// the main log in batch order (the log one process writes) and the others re-read it.
    fn sample_into_sharded(
        &self,
        log: &mut SampleLog,
        policy: &Llama,
        scorer: &RewardScorer,
        it: usize,
        temperature: f64,
        count: usize,
    ) -> Result<()> {
        let (rank, world) = (distributed::rank() as usize, distributed::world_size() as usize);
        let keys = &self.keys[..count];
        let sampled = (|| -> Result<()> {
            let mut own = SampleLog::open(&rank_log_path(log.path(), rank, world))?;
            let mut done = log.done().clone();
            done.extend(own.done().iter().cloned());
            let batches: Vec<(usize, Vec<usize>)> =
                pending_batches(keys, self.cfg.prompt_batch_size, &done).into_iter().filter(|(b, _)| b % world == rank).collect();
            if rank == 0 && !batches.is_empty() {
                tracing::info!("iteration {it}: sampling K={} at T={temperature} for {count} prompts on {world} ranks", self.cfg.best_of_k);
            }
            if batches.is_empty() {
                return Ok(());
            }
            let mut journal = GenJournal::open_for(own.path())?;
            let jobs = self.jobs(&batches, it, temperature);
            sample_prompts(policy, scorer, self.tok, &jobs, &self.sample_spec(it, temperature), &mut journal, |recs| own.append(recs))
        })();
        training::dist::agree(sampled, "sample its prompt batches")?;
        let merged = if rank == 0 { merge_rank_logs(log, &self.keys) } else { Ok(()) };
        training::dist::agree(merged, "merge the sample logs")?;
        if rank != 0 {
            *log = SampleLog::open(log.path())?;
        }
        Ok(())
    }

    /// Verb 1: best-of-K samples of every prompt (and the temperature sweep), plus the
    /// evaluation of the policy sampled from. Returns the iteration's records, sweep, throughput
    /// and the temperature the records were sampled at (with `temperature = "auto"`, the sweep's
    /// choice: the sweep is sampled first).
    fn sample(&self, it: usize, policy_dir: &Path, eval_before: &Path) -> Result<(Vec<PromptSamples>, Vec<SweepPoint>, Throughput, f64)> {
        let cfg = self.cfg;
        let auto = cfg.auto_temperature();
        let mut t = cfg.temperature(it);
        let n_sweep = cfg.sweep_prompts.min(self.prompts.len());
        let mut sweep_temps: Vec<f64> = cfg.temperature_sweep.iter().copied().filter(|&x| auto || x != t).collect();
        sweep_temps.sort_by(f64::total_cmp);
        sweep_temps.dedup();
        // Rank 0 (or the one process) first folds in what ranks of an interrupted distributed
        // run left in their own logs; the other ranks then open the logs.
        let (mut log, mut sweep_logs) = training::dist::main_first(|| -> Result<(SampleLog, Vec<SampleLog>)> {
            let mut log = SampleLog::open(&self.log_path(it))?;
            let mut sweep_logs = sweep_temps
                .iter()
                .map(|x| SampleLog::open(&self.out.join(format!("sweep-iter{it}-t{x}.jsonl"))))
                .collect::<Result<Vec<_>>>()?;
            if distributed::is_main() {
                for l in std::iter::once(&mut log).chain(sweep_logs.iter_mut()) {
                    merge_rank_logs(l, &self.keys)?;
                }
            }
            Ok((log, sweep_logs))
        })?;
        let need_sampling = log.records().len() < self.prompts.len() || sweep_logs.iter().any(|l| l.records().len() < n_sweep);
        let need_eval = !self.eval_prompts.is_empty() && !eval_before.exists() && distributed::is_main();
        let loaded = if need_sampling || need_eval {
            let (vs, policy) = load_policy(policy_dir, self.device, self.kind)?;
            Some((vs, policy, self.reward_models()?))
        } else {
            None
        };
        if let Some((_, policy, rms)) = &loaded {
            let scorer = rms.scorer(self.scorer_spec());
            for (l, &x) in sweep_logs.iter_mut().zip(&sweep_temps) {
                self.sample_into(l, policy, &scorer, it, x, n_sweep)?;
            }
        }
        // Prompt batches are logged as they are scored, which need not be their order: everything
        // downstream (curves, the temperature choice, reports, judged pairs) sees the records in
        // prompt order, so a resumed run sums in the uninterrupted run's order.
        let order: std::collections::HashMap<&str, usize> = self.keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let in_order = |mut v: Vec<PromptSamples>| {
            v.sort_by_key(|r| order.get(r.key.as_str()).copied().unwrap_or(usize::MAX));
            v
        };
        if auto {
            let points: Vec<SweepPoint> = sweep_logs
                .iter()
                .zip(&sweep_temps)
                .map(|(l, &x)| {
                    let rw: Vec<Vec<f64>> = in_order(l.records().to_vec()).iter().map(|r| r.rewards()).collect();
                    SweepPoint { temperature: x, curve: BestOfKCurve::from_rewards(rw.iter().map(Vec::as_slice), cfg.best_of_k) }
                })
                .collect();
            t = choose_temperature(&points, cfg.best_of_k).ok_or_else(|| {
                RsError::Config(format!(
                    "iteration {it}: temperature = \"auto\" found no sweep temperature with a best-of-{} reward",
                    cfg.best_of_k
                ))
            })?;
            let at_k = |p: &SweepPoint| p.curve.max.get(cfg.best_of_k.saturating_sub(1)).copied().unwrap_or(f64::NAN);
            let table: Vec<String> = points.iter().map(|p| format!("T {}: {:.4}", p.temperature, at_k(p))).collect();
            tracing::info!(
                "iteration {it}: temperature = auto chose T = {t} (best-of-{} reward on {n_sweep} prompts: {})",
                cfg.best_of_k,
                table.join(", ")
            );
        }
        if let Some((_, policy, rms)) = &loaded {
            let scorer = rms.scorer(self.scorer_spec());
            self.sample_into(&mut log, policy, &scorer, it, t, self.prompts.len())?;
            if need_eval {
                let e = self.evaluate(policy_dir, policy, &scorer)?;
                write_json(eval_before, &e)?;
            }
        }
        let records = in_order(log.into_records());
        let mut throughput_recs: Vec<&PromptSamples> = records.iter().collect();
        let sweep_sets: Vec<Vec<PromptSamples>> = sweep_logs.into_iter().map(|l| in_order(l.into_records())).collect();
        throughput_recs.extend(sweep_sets.iter().flatten());
        let throughput = Throughput::of(throughput_recs);
        let mut sweep = Vec::new();
        if !cfg.temperature_sweep.is_empty() && !auto {
            let sweep_keys: HashSet<&String> = self.keys[..n_sweep].iter().collect();
            let main_rewards: Vec<Vec<f64>> = records.iter().filter(|r| sweep_keys.contains(&r.key)).map(|r| r.rewards()).collect();
            sweep.push(SweepPoint {
                temperature: t,
                curve: BestOfKCurve::from_rewards(main_rewards.iter().map(Vec::as_slice), cfg.best_of_k),
            });
            for (recs, &x) in sweep_sets.iter().zip(&sweep_temps) {
                let rw: Vec<Vec<f64>> = recs.iter().map(|r| r.rewards()).collect();
                sweep.push(SweepPoint { temperature: x, curve: BestOfKCurve::from_rewards(rw.iter().map(Vec::as_slice), cfg.best_of_k) });
            }
            sweep.sort_by(|a, b| a.temperature.total_cmp(&b.temperature));
        } else if auto {
            for (recs, &x) in sweep_sets.iter().zip(&sweep_temps) {
                let rw: Vec<Vec<f64>> = recs.iter().map(|r| r.rewards()).collect();
                sweep.push(SweepPoint { temperature: x, curve: BestOfKCurve::from_rewards(rw.iter().map(Vec::as_slice), cfg.best_of_k) });
            }
        }
        Ok((records, sweep, throughput, t))
    }

    fn evaluate(&self, dir: &Path, policy: &Llama, scorer: &RewardScorer) -> Result<RmEval> {
        let c = self.cfg;
        let spec = EvalSpec {
            max_new_tokens: c.eval_max_new_tokens.unwrap_or(c.max_new_tokens),
            batch: c.eval_batch_size,
            sampled: c.eval_temperature.map(|t| (t, c.eval_samples, c.eval_top_p)),
            seed: c.seed ^ 0xE7A1,
        };
        let e = evaluate(dir.to_path_buf(), policy, scorer, self.tok, &self.eval_prompts, &spec)?;
        for r in std::iter::once(&e.greedy).chain(&e.sampled) {
            if let Some(d) = &r.demo {
                tracing::info!(
                    "{} (T = {}): helpful {:.3}, safe {:.3}, false refusal {:.3}, mean R_c {:.3}",
                    dir.display(),
                    r.temperature,
                    d.helpful_rate,
                    d.safe_rate,
                    d.false_refusal_rate,
                    r.mean_reward
                );
            }
        }
        Ok(e)
    }

    /// Verb 2: the pool after iteration `it`, rebuilt from the sample logs of iterations
    /// 1..=it (so it needs no state of its own), written as an SFT dataset.
    fn pool(&self, it: usize, current: &[PromptSamples]) -> Result<PoolReport> {
        let mut pool = Pool::new();
        for j in 1..it {
            for r in SampleLog::open(&self.log_path(j))?.records() {
                if let Some(w) = r.winner() {
                    pool.offer(w);
                }
            }
        }
        let mean_reward_before = pool.mean_reward();
        let mut update = PoolUpdate::default();
        let mut winners = Vec::new();
        for r in current {
            match r.winner() {
                Some(w) => {
                    winners.push(w.reward);
                    update.record(pool.offer(w));
                }
                None => update.no_winner += 1,
            }
        }
        if pool.is_empty() {
            return Err(RsError::Config(format!(
                "iteration {it}: no sample could win (all cut off at max_new_tokens? raise it or set require_finished = false)"
            )));
        }
        let text = pool.to_jsonl();
        let path = self.iter_dir(it).join("pool.jsonl");
        // Every rank built the same pool; rank 0 writes it, and every rank reads it to fine-tune.
        let written = if distributed::is_main() {
            write_atomic(&path, text.as_bytes())
                .and_then(|_| write_atomic(&self.out.join("pool.jsonl"), text.as_bytes()))
                .map_err(RsError::from)
        } else {
            Ok(())
        };
        training::dist::agree(written, "write the pool")?;
        let mean_winner_reward = (!winners.is_empty()).then(|| winners.iter().sum::<f64>() / winners.len() as f64);
        Ok(PoolReport { path, size: pool.len(), update, mean_reward_before, mean_reward: pool.mean_reward(), mean_winner_reward })
    }

    /// Verb 3: the SFT stage on the pool, from the configured start checkpoint (or the model
    /// sampled from); resumes from the SFT run's own checkpoints.
    fn finetune(&self, it: usize, policy_dir: &Path, pool: &Path) -> Result<sft::SftOutcome> {
        let start = match self.cfg.finetune.start_from {
            StartFrom::Start => self.cfg.finetune.start.clone().unwrap_or_else(|| self.cfg.policy.clone()),
            StartFrom::Previous => policy_dir.to_path_buf(),
        };
        let sft_cfg = self.cfg.sft_config(&start, pool);
        sft_cfg.validate().map_err(RsError::Config)?;
        let dialogs: Vec<Vec<llama::Message>> = datasets::io::read_all::<SftRecord>(pool)?.into_iter().map(|r| r.messages).collect();
        let examples = sft::trainer::examples_from_dialogs(self.tok, &dialogs, sft_cfg.train_on)?;
        // A seeded held-out share of the pool for the evaluation loss, as `rlhf sft` does.
        let (train, eval) = sft::data::held_out_split(examples, sft_cfg.eval_fraction, sft_cfg.train.seed);
        tracing::info!("iteration {it}: fine-tuning {} on {} pooled samples ({} held out)", start.display(), train.len(), eval.len());
        Ok(sft::train(&sft_cfg, &train, &eval, &self.iter_dir(it).join("sft"), true, &self.extra_files)?)
    }

    /// One iteration: sample, pool, fine-tune, evaluate, report. Returns the report and a few of
    /// the samples as markdown (TensorBoard text).
    fn iteration(&self, it: usize, policy_dir: &Path, prev_eval_after: Option<&Path>) -> Result<(IterationReport, String)> {
        let dir = self.iter_dir(it);
        mkdir(&dir)?;
        let eval_before = dir.join("eval-before.json");
        if let Some(p) = prev_eval_after.filter(|p| p.exists() && !eval_before.exists() && distributed::is_main()) {
            std::fs::copy(p, &eval_before).map_err(|e| RsError::io(&eval_before, e))?;
        }
        let (records, sweep, throughput, temperature) = self.sample(it, policy_dir, &eval_before)?;
        let pool = self.pool(it, &records)?;
        let outcome = self.finetune(it, policy_dir, &pool.path)?;
        let eval_after = dir.join("eval-after.json");
        let main = distributed::is_main();
        if !self.eval_prompts.is_empty() && !eval_after.exists() && main {
            let (_vs, policy) = load_policy(&outcome.final_model, self.device, self.kind)?;
            let e = self.evaluate(&outcome.final_model, &policy, &self.reward_models()?.scorer(self.scorer_spec()))?;
            write_json(&eval_after, &e)?;
        }
        let sampled: Vec<&PromptSamples> = records.iter().filter(|r| r.skipped.is_none()).collect();
        let n_samples: usize = sampled.iter().map(|r| r.samples.len()).sum();
        let unfinished = sampled.iter().flat_map(|r| &r.samples).filter(|s| !s.finished).count();
        let rewards: Vec<Vec<f64>> = sampled.iter().map(|r| r.rewards()).collect();
        let read_eval = |p: &Path| -> Result<Option<RmEval>> {
            if p.exists() {
                read_json(p).map(Some)
            } else {
                Ok(None)
            }
        };
        let report = IterationReport {
            iteration: it,
            policy: policy_dir.to_path_buf(),
            temperature,
            best_of_k: self.cfg.best_of_k,
            prompts: sampled.len(),
            skipped_prompts: records.len() - sampled.len(),
            unfinished_share: unfinished as f64 / n_samples.max(1) as f64,
            curve: BestOfKCurve::from_rewards(rewards.iter().map(Vec::as_slice), self.cfg.best_of_k),
            sweep,
            pool,
            sample_truth: SampleTruth::of(&records),
            throughput,
            model: outcome.final_model.clone(),
            finetune: serde_json::to_value(&outcome).unwrap_or_default(),
            eval_before: read_eval(&eval_before)?,
            eval_after: read_eval(&eval_after)?,
        };
        // Rank 0 writes the iteration's files; the others wait for it (and stop with it).
        let written = if main { self.write_iteration(it, policy_dir, &records, &report) } else { Ok(()) };
        training::dist::agree(written, "write the iteration's report")?;
        Ok((report, samples_markdown(&records, 4)))
    }

    /// TensorBoard event files in the run folder (rank 0 only), keeping the events of the
    /// iterations already done (a resumed run writes each iteration once).
    fn open_events(&self) -> Result<Option<EventWriter>> {
        if !distributed::is_main() {
            return Ok(None);
        }
        let done = (1..=self.cfg.iterations).take_while(|&it| self.iter_dir(it).join("done.json").exists()).count();
        Ok(Some(EventWriter::open(&self.out, Some(done as u64))?))
    }

    /// Iteration `report.iteration`'s scalars and samples as one event, unless the file has it.
    fn write_events(w: &mut EventWriter, report: &IterationReport, samples: Option<&str>) -> Result<()> {
        let step = report.iteration as u64;
        if w.last_step().is_some_and(|s| s >= step) {
            return Ok(());
        }
        let mut values: Vec<Value> = report.scalars().into_iter().map(|(t, v)| Value::scalar(t, v)).collect();
        values.extend(samples.filter(|s| !s.is_empty()).map(|s| Value::text("rs/samples", s)));
        values.extend(report.eval_samples_markdown().map(|s| Value::text("rs/eval_samples", s)));
        w.write(step, values)?;
        Ok(w.sync()?)
    }

    /// The judged pairs, `report.json`/`.md`, the plots and `done.json` of iteration `it`.
    fn write_iteration(&self, it: usize, policy_dir: &Path, records: &[PromptSamples], report: &IterationReport) -> Result<()> {
        let dir = self.iter_dir(it);
        if self.cfg.judged_pairs_per_prompt > 0 {
            let pairs = crate::annotate::judged_pairs(records, self.cfg.judged_pairs_per_prompt, &format!("onpolicy_iter{it}"));
            if !pairs.is_empty() {
                datasets::io::write_all(&dir.join("judged_pairs.jsonl"), &pairs)?;
            }
        }
        write_json(&dir.join("report.json"), report)?;
        write_atomic(&dir.join("report.md"), report.markdown().as_bytes())?;
        if let Err(e) = report.plots(&dir) {
            tracing::warn!("iteration {it}: plots not drawn: {e}");
        }
        let done = DoneManifest {
            iteration: it,
            policy: policy_dir.to_path_buf(),
            model: report.model.clone(),
            pool: report.pool.path.clone(),
            pool_size: report.pool.size,
            config_hash: self.config_hash.clone(),
        };
        write_json(&dir.join("done.json"), &done)
    }

    /// Every iteration; finished ones (`done.json`) are read back, not redone.
    pub fn run(&self) -> Result<RsOutcome> {
        let start = Instant::now();
        let mut reports: Vec<IterationReport> = Vec::new();
        let mut skipped = Vec::new();
        let mut policy = self.cfg.policy.clone();
        let mut events = self.open_events()?;
        for it in 1..=self.cfg.iterations {
            let dir = self.iter_dir(it);
            let (report, samples) = if dir.join("done.json").exists() {
                tracing::info!("iteration {it}: already done ({}), skipped", dir.join("done.json").display());
                skipped.push(it);
                (read_json::<IterationReport>(&dir.join("report.json"))?, None)
            } else {
                let prev = (it > 1).then(|| self.iter_dir(it - 1).join("eval-after.json"));
                let (report, samples) = self.iteration(it, &policy, prev.as_deref())?;
                (report, Some(samples))
            };
            if let Some(w) = &mut events {
                Self::write_events(w, &report, samples.as_deref())?;
            }
            policy = report.model.clone();
            reports.push(report);
        }
        let last = reports.last().expect("at least one iteration");
        let outcome = RsOutcome {
            final_model: last.model.clone(),
            pool: self.out.join("pool.jsonl"),
            pool_size: last.pool.size,
            iterations: reports.len(),
            skipped_iterations: skipped,
            report: self.out.join("report.md"),
            seconds: start.elapsed().as_secs_f64(),
        };
        if distributed::is_main() {
            write_json(&self.out.join("report.json"), &serde_json::json!({ "iterations": reports }))?;
            write_atomic(&self.out.join("report.md"), run_markdown(&reports).as_bytes())?;
            // The top-level pool is the last iteration's.
            let text = std::fs::read(&last.pool.path).map_err(|e| RsError::io(&last.pool.path, e))?;
            write_atomic(&self.out.join("pool.jsonl"), &text)?;
            write_json(&self.out.join("summary.json"), &outcome)?;
        }
        Ok(outcome)
    }
}

/// `temperature = "auto"`: the sweep temperature whose best-of-K curve is highest at K = `k`
/// (Figure 8 read at the configured K: the mean over prompts of the expected max reward of k
/// samples); ties go to the lower temperature (less likely to drift from the policy). `None`
/// when no point has a finite value at k (e.g. fewer than k samples per prompt).
pub fn choose_temperature(points: &[SweepPoint], k: usize) -> Option<f64> {
    let mut sorted: Vec<&SweepPoint> = points.iter().collect();
    sorted.sort_by(|a, b| a.temperature.total_cmp(&b.temperature));
    let mut best: Option<(f64, f64)> = None;
    for p in sorted {
        let Some(&v) = p.curve.k.iter().position(|&x| x == k).and_then(|i| p.curve.max.get(i)) else { continue };
        if p.curve.prompts > 0 && v.is_finite() && best.is_none_or(|(_, b)| v > b) {
            best = Some((p.temperature, v));
        }
    }
    best.map(|(t, _)| t)
}

/// Prepares and runs rejection sampling into `out` (see the module docs for the layout), as
/// `rlhf rejection-sampling` and the pipeline call it; the tokenizer is the policy's (or `tokenizer`).
pub fn run(cfg: &RejectionSamplingConfig, out: &Path, resume: bool) -> Result<RsOutcome> {
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    let (tok, tok_path) = llama::tokenizer::resolve(cfg.tokenizer.as_deref(), Some(&cfg.policy))?;
    RejectionSampler::prepare(cfg, &tok, out, resume, &training::stage::tokenizer_files(&tok_path))?.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, rewards: &[&[f64]]) -> SweepPoint {
        SweepPoint { temperature: t, curve: BestOfKCurve::from_rewards(rewards.iter().copied(), rewards[0].len()) }
    }

    /// The choice is the best best-of-K reward at the configured K, not at k = 1 (where a low
    /// temperature usually wins), and ties go to the lower temperature whatever the listing order.
    #[test]
    fn auto_temperature_is_the_best_at_k_and_ties_go_low() {
        // T 0.7: steady samples (mean 0.5, best-of-2 0.55); T 1.2: spread ones (mean 0.45, best-of-2 0.8).
        let low = point(0.7, &[&[0.5, 0.6], &[0.4, 0.5]]);
        let high = point(1.2, &[&[0.1, 0.9], &[0.1, 0.7]]);
        assert!(low.curve.max[0] > high.curve.max[0], "k = 1 favours the low temperature");
        assert_eq!(choose_temperature(&[low, high], 2), Some(1.2));
        let a = point(1.3, &[&[0.2, 0.6]]);
        let b = point(0.9, &[&[0.6, 0.2]]);
        assert_eq!(choose_temperature(&[a, b], 2), Some(0.9), "a tie goes to the lower temperature");
        // A point without a full set of K samples cannot be chosen; none at all is None.
        let empty = SweepPoint { temperature: 0.5, curve: BestOfKCurve::from_rewards(std::iter::empty(), 2) };
        assert_eq!(choose_temperature(&[empty.clone(), point(1.0, &[&[0.1, 0.2]])], 2), Some(1.0));
        assert_eq!(choose_temperature(&[empty], 2), None);
        assert_eq!(choose_temperature(&[], 2), None);
    }
}
