//! The loop every trainer shares (SFT, reward models, PPO): lock the run folder, tidy what a
//! crash left, resume from the newest loadable checkpoint, step, log metrics, evaluate, keep the
//! best, stop early, checkpoint every N steps and at the end, export the final and best models
//! and write `summary.json`. A stage supplies its trained models, its step and its evaluation
//! ([`Stage`]); everything resumable lives in the models, their optimizers, the step count and the
//! stage's `extra` state, so a resumed run continues bit-exactly. The stage drivers are named
//! one way, `<Stage>Trainer`: `sft::SftTrainer`, `reward::trainer::RewardTrainer`,
//! `ppo::PpoTrainer`.
use crate::checkpoint::{self as tck, CheckpointManager, Part, PartMut, TrainerState};
use crate::error::{Result, TrainError};
use crate::lock::RunLock;
use crate::metrics::{MetricsLog, Progress};
use llama::checkpoint::{self as ck, SaveOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Kind;

/// A held-out evaluation: the figure that picks `best/` (and early stopping) and the fields it
/// adds to the step's metrics record.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub value: f64,
    pub record: serde_json::Value,
}

impl Evaluation {
    /// A held-out loss (lower is better), logged as `eval_loss`.
    pub fn loss(loss: f64) -> Self {
        Evaluation { value: loss, record: serde_json::json!({ "eval_loss": loss }) }
    }
}

/// One training stage as the runner drives it. A "step" is what one metrics line and one
/// checkpoint count: an optimizer step for SFT and reward models, an iteration for PPO.
pub trait Stage {
    /// Steps of the whole run.
    fn total_steps(&self) -> u64;
    /// Step `step` (0-based); returns its metrics record (with a numeric "tokens").
    fn step(&mut self, step: u64) -> Result<serde_json::Value>;
    /// Held-out evaluation after `steps` steps (0: before training), if the stage has one.
    fn evaluate(&mut self, steps: u64) -> Result<Option<Evaluation>>;
    /// Whether a higher evaluation is better (PPO's reward) rather than a lower one (a loss).
    fn higher_is_better(&self) -> bool {
        false
    }
    /// The trained models, the stage's product first (saved as `final/`, copied to `best/`;
    /// the others are saved as `final_<name>/`).
    fn parts(&self) -> Vec<Part<'_>>;
    /// The same, to load a checkpoint into.
    fn parts_mut(&mut self) -> Vec<PartMut<'_>>;
    /// Resumable state beyond the models and optimizers (`TrainerState.extra`).
    fn extra_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores [`Stage::extra_state`] from a checkpoint (before its parts are loaded).
    fn restore_extra(&mut self, _extra: &serde_json::Value) -> Result<()> {
        Ok(())
    }
    /// Called once before the first step, with the step resumed from (stages with logs of
    /// their own open them here).
    fn begin(&mut self, _run_dir: &Path, _resumed_from: Option<u64>) -> Result<()> {
        Ok(())
    }
    /// Completes a step's record after its evaluation, before it is written.
    fn end_step(&mut self, _record: &mut serde_json::Value) -> Result<()> {
        Ok(())
    }
    /// Text summaries `(tag, markdown)` of the step just taken (sample generations), written as
    /// TensorBoard text `<name>/<tag>` beside its metrics; called once after every step.
    fn texts(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The progress line's summary of a record.
    fn progress(&self, record: &serde_json::Value) -> String {
        format!("loss {:.4}", record["loss"].as_f64().unwrap_or(f64::NAN))
    }
}

pub struct RunOptions {
    pub name: String,
    pub run_dir: PathBuf,
    pub resume: bool,
    pub config_hash: String,
    pub keep_last: usize,
    pub save_every: u64,
    pub eval_every: u64,
    pub log_every: u64,
    /// Evaluate before the first step too (logged as step 0; `best/` must then beat it).
    pub eval_at_start: bool,
    /// Stop when the evaluation has not improved for this many evaluations (0: never).
    pub early_stop_patience: u64,
    /// On-disk dtype of `final/` (checkpoints are always fp32, for exact resume).
    pub final_dtype: Kind,
    /// Files copied into every saved model (tokenizer.json, ...).
    pub extra_files: Vec<PathBuf>,
    /// The metrics drawn in `curves.png`.
    pub plot_keys: Vec<&'static str>,
}

impl RunOptions {
    /// Options with the shared defaults: no evaluation at start, no early stopping, the loss
    /// curves.
    pub fn new(name: &str, run_dir: &Path, resume: bool, config_hash: String, train: &crate::TrainConfig) -> Self {
        RunOptions {
            name: name.into(),
            run_dir: run_dir.to_path_buf(),
            resume,
            config_hash,
            keep_last: train.keep_last,
            save_every: train.save_every,
            eval_every: train.eval_every,
            log_every: train.log_every,
            eval_at_start: false,
            early_stop_patience: 0,
            final_dtype: Kind::Float,
            extra_files: Vec::new(),
            plot_keys: vec!["loss", "eval_loss", "accuracy", "lr", "grad_norm", "tokens_per_s"],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub final_model: PathBuf,
    pub best_model: Option<PathBuf>,
    pub steps: u64,
    pub final_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub resumed_from: Option<u64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The step of the best evaluation (0: the model before training).
    #[serde(default)]
    pub best_step: Option<u64>,
    /// Stopped by `early_stop_patience` before `total_steps`.
    #[serde(default)]
    pub early_stopped: bool,
}

/// A stable 64-bit FNV-1a hash (config and input fingerprints).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The hash of a config as `RunOptions::config_hash` wants it.
pub fn config_hash(cfg: &impl Serialize) -> String {
    fnv1a(serde_json::to_string(cfg).expect("config serialises").as_bytes())
}

fn copy_dir_atomic(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_file_name(format!(
        ".{}.tmp-{}",
        dst.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    for e in std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))?.flatten() {
        std::fs::copy(e.path(), tmp.join(e.file_name())).map_err(|err| TrainError::io(e.path(), err))?;
    }
    ck::replace_dir(&tmp, dst)?;
    Ok(())
}

/// Loads checkpoint `path` into the stage; refuses one of another config.
fn load_checkpoint(stage: &mut impl Stage, path: &Path, config_hash: &str) -> Result<TrainerState> {
    let state = tck::read_state(path)?;
    if state.config_hash != config_hash {
        return Err(TrainError::OtherConfig { path: path.to_path_buf() });
    }
    stage
        .restore_extra(&state.extra)
        .map_err(|e| TrainError::Checkpoint { path: path.to_path_buf(), msg: format!("trainer_state.json extra: {e}") })?;
    for p in stage.parts_mut() {
        // ZeRO-3: the layers stay sharded; their masters come from the shards (or the model files,
        // one tensor at a time, when re-sharding).
        tck::load_part(path, p.name, p.vs, p.opt, p.opt_steps.unwrap_or(state.step))?;
    }
    Ok(state)
}

/// Resumes from the newest checkpoint that loads: one with a cut or corrupt file is skipped with
/// a warning naming it (the one before it is complete: keep_last >= 2). A checkpoint of another
/// config stops the resume. Returns the state and its folder. In a distributed run every rank
/// loads it, and a checkpoint any rank cannot load is skipped by all.
fn resume_newest(stage: &mut impl Stage, ckman: &CheckpointManager, o: &RunOptions) -> Result<Option<(TrainerState, PathBuf)>> {
    let mut bad = Vec::new();
    for path in ckman.newest_first()? {
        let loaded = load_checkpoint(stage, &path, &o.config_hash);
        let everywhere = crate::dist::all_ok(loaded.is_ok())?;
        match loaded {
            Ok(state) if everywhere => return Ok(Some((state, path))),
            Ok(_) => {
                tracing::warn!(
                    "{}: checkpoint {} cannot be loaded on another rank; falling back to the one before it",
                    o.name,
                    path.display()
                );
                bad.push(format!("{}: not loadable on every rank", path.display()));
            }
            Err(e @ TrainError::OtherConfig { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!("{}: checkpoint {} cannot be loaded ({e}); falling back to the one before it", o.name, path.display());
                bad.push(format!("{}: {e}", path.display()));
            }
        }
    }
    if bad.is_empty() {
        return Ok(None);
    }
    Err(TrainError::Checkpoint { path: ckman.dir.clone(), msg: format!("no checkpoint can be loaded: {}", bad.join("; ")) })
}

/// The stored outcome of a finished run in `run_dir` (its `summary.json`, written last), when the
/// newest checkpoint was made by this config.
fn finished<T: DeserializeOwned>(ckman: &CheckpointManager, o: &RunOptions) -> Result<Option<T>> {
    let summary = o.run_dir.join("summary.json");
    if !summary.exists() {
        return Ok(None);
    }
    let Some(state) = ckman.newest_first()?.into_iter().find_map(|p| tck::read_state(&p).ok().map(|s| (s, p))) else {
        return Ok(None);
    };
    if state.0.config_hash != o.config_hash {
        return Err(TrainError::OtherConfig { path: state.1 });
    }
    let read = std::fs::read_to_string(&summary).map_err(|e| e.to_string());
    match read.and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string())) {
        Ok(outcome) => Ok(Some(outcome)),
        Err(e) => {
            tracing::warn!("{}: {} cannot be read ({e}); resuming instead", o.name, summary.display());
            Ok(None)
        }
    }
}

/// Runs (or resumes) `stage` into `o.run_dir`; `outcome` turns the run's result into what
/// `summary.json` stores and the caller gets. Resuming a finished run returns its stored outcome.
pub fn run<S: Stage, T: Serialize + DeserializeOwned>(
    stage: &mut S,
    o: &RunOptions,
    outcome: impl FnOnce(&S, RunResult) -> T,
) -> Result<T> {
    let start = Instant::now();
    // Distributed: rank 0 locks and tidies the folder; the others wait for it, and all fail
    // together when it cannot.
    let main = distributed::is_main();
    let prepared = RunLock::acquire_main(&o.run_dir).and_then(|lock| {
        if main {
            for p in tck::remove_stale_temps(&o.run_dir)? {
                tracing::info!("{}: removed {}, left by an interrupted run", o.name, p.display());
            }
        }
        Ok(lock)
    });
    if !crate::dist::all_ok(prepared.is_ok())? {
        prepared?;
        return Err(TrainError::Distributed(format!("rank 0 could not lock and prepare {}", o.run_dir.display())));
    }
    let _lock = prepared?;
    let ckman = CheckpointManager::new(&o.run_dir, o.keep_last);
    let mut state = TrainerState { config_hash: o.config_hash.clone(), ..Default::default() };
    let mut resumed_from = None;
    if o.resume {
        if let Some(done) = finished(&ckman, o)? {
            tracing::info!("{}: the run in {} is complete; nothing to resume", o.name, o.run_dir.display());
            return Ok(done);
        }
        if let Some((s, path)) = resume_newest(stage, &ckman, o)? {
            tracing::info!(step = s.step, "{}: resumed from {}", o.name, path.display());
            resumed_from = Some(s.step);
            state = s;
        }
    } else if let Some(path) = ckman.latest()? {
        return Err(TrainError::Checkpoint {
            path,
            msg: "the run folder already has checkpoints: pass --resume to continue, or choose another --out".into(),
        });
    }
    if distributed::get().is_some() && main {
        for p in stage.parts() {
            tracing::info!(
                "{}: {} data-parallel over {} ranks ({}), ZeRO-{}: {:.2} bytes of optimizer state per parameter on each rank",
                o.name,
                p.name,
                distributed::world_size(),
                distributed::get().map_or("gloo", |d| d.backend(p.vs.device())),
                p.opt.zero_stage(),
                p.opt.state_bytes_per_param()
            );
        }
    }
    // metrics.jsonl and the TensorBoard event files beside it, both cut back to the resumed step.
    let mut metrics = if main {
        Some(MetricsLog::open(&o.run_dir.join("metrics.jsonl"), resumed_from)?.with_events(&o.run_dir, &o.name, resumed_from)?)
    } else {
        None
    };
    stage.begin(&o.run_dir, resumed_from)?;
    let better = |stage: &S, v: f64, best: Option<f64>| best.is_none_or(|b| if stage.higher_is_better() { v > b } else { v < b });
    if o.eval_at_start && resumed_from.is_none() {
        if let Some(e) = stage.evaluate(0)? {
            let mut rec = e.record;
            rec["step"] = serde_json::json!(0);
            if let Some(m) = &mut metrics {
                m.write(&rec)?;
            }
            (state.best_eval, state.best_step) = (Some(e.value), Some(0));
        }
    }
    let total = stage.total_steps();
    let progress = Progress::new(&o.name, state.step, total, o.log_every);
    let (mut tokens, t_loop) = (0f64, Instant::now());
    let (mut last_eval, mut early_stopped) = (None, false);
    while state.step < total && !early_stopped {
        let mut rec = stage.step(state.step)?;
        state.step += 1;
        tokens += rec["tokens"].as_f64().unwrap_or(0.0);
        let last = state.step == total;
        let mut save_now = (o.save_every > 0 && state.step.is_multiple_of(o.save_every)) || last;
        if (o.eval_every > 0 && state.step.is_multiple_of(o.eval_every)) || last {
            if let Some(e) = stage.evaluate(state.step)? {
                for (k, v) in e.record.as_object().into_iter().flatten() {
                    rec[k] = v.clone();
                }
                last_eval = Some(e.value);
                if better(stage, e.value, state.best_eval) {
                    (state.best_eval, state.best_step, state.evals_since_best) = (Some(e.value), Some(state.step), 0);
                    save_now = true;
                } else {
                    state.evals_since_best += 1;
                    if o.early_stop_patience > 0 && state.evals_since_best >= o.early_stop_patience {
                        (early_stopped, save_now) = (true, true);
                        tracing::info!(
                            "{}: the held-out evaluation has not improved for {} evaluations; stopping",
                            o.name,
                            state.evals_since_best
                        );
                    }
                }
            }
        }
        stage.end_step(&mut rec)?;
        let texts = stage.texts();
        if let Some(m) = &mut metrics {
            m.write(&rec)?;
            m.write_texts(state.step, &texts)?;
        }
        progress.update(state.step, &stage.progress(&rec));
        if save_now {
            if let Some(m) = &mut metrics {
                m.sync()?;
            }
            state.extra = stage.extra_state();
            ckman.save(&stage.parts(), &o.extra_files, &state)?;
        }
    }
    // Every rank holds the same weights: rank 0 writes the models, the others wait (and fail
    // with it); under ZeRO-3 they take part in gathering the layers one at a time.
    let final_model = o.run_dir.join("final");
    let best_model = state.best_step.filter(|&s| ckman.path_of(s).exists()).map(|_| o.run_dir.join("best"));
    let written = write_outputs(&*stage, o, &ckman, state.best_step);
    if !crate::dist::all_ok(written.is_ok())? {
        written?;
        return Err(TrainError::Distributed(format!("rank 0 could not write the final models into {}", o.run_dir.display())));
    }
    let secs = t_loop.elapsed().as_secs_f64();
    let result = RunResult {
        final_model,
        best_model,
        steps: state.step,
        final_eval_loss: last_eval,
        best_eval_loss: state.best_eval,
        resumed_from,
        seconds: start.elapsed().as_secs_f64(),
        tokens_per_s: tokens / secs.max(1e-9),
        best_step: state.best_step,
        early_stopped,
    };
    let out = outcome(stage, result);
    if main {
        let summary = serde_json::to_string_pretty(&out).expect("outcome serialises");
        ck::write_atomic(&o.run_dir.join("summary.json"), summary.as_bytes())?;
    }
    Ok(out)
}

/// `final/` (and `final_<name>/`), `best/` and `curves.png`. Called on every rank: rank 0
/// writes (ZeRO-3 parts are gathered for it a layer at a time, with every rank).
fn write_outputs(stage: &impl Stage, o: &RunOptions, ckman: &CheckpointManager, best_step: Option<u64>) -> Result<()> {
    save_final(stage, o)?;
    if !distributed::is_main() {
        return Ok(());
    }
    if let Some(s) = best_step.filter(|&s| ckman.path_of(s).exists()) {
        copy_dir_atomic(&ckman.path_of(s).join(stage.parts()[0].name), &o.run_dir.join("best"))?;
    }
    // The curves as a PNG; a plotting failure costs the picture, never the run.
    if let Err(e) = crate::plot::metrics_grid(&o.run_dir.join("metrics.jsonl"), &o.run_dir.join("curves.png"), &o.plot_keys, &o.name) {
        tracing::warn!("{}: could not draw curves.png: {e}", o.name);
    }
    Ok(())
}

/// Saves every part in `o.final_dtype`: the first as `final/`, the others as `final_<name>/`.
/// Every rank calls it (rank 0 writes); each part is saved even after one fails, so the ranks
/// run the same ZeRO-3 gathers, and the first failure is returned.
fn save_final(stage: &impl Stage, o: &RunOptions) -> Result<PathBuf> {
    let parts = stage.parts();
    let mut first_err = None;
    for (i, p) in parts.iter().enumerate() {
        let dir = match i {
            0 => o.run_dir.join("final"),
            _ => o.run_dir.join(format!("final_{}", p.name)),
        };
        if let Err(e) = p.save_weights_everywhere(&dir, o.final_dtype, &o.extra_files) {
            first_err.get_or_insert(e);
            continue;
        }
        if !distributed::is_main() {
            continue;
        }
        if let Some(l) = p.lora.filter(|l| l.lora.merge) {
            let opts = SaveOptions {
                architecture: p.architecture.into(),
                dtype: o.final_dtype,
                extra_files: o.extra_files.clone(),
                ..Default::default()
            };
            let merged =
                dir.with_file_name(format!("{}_merged", dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()));
            if let Err(e) = ck::save_merged(p.vs, l.lora.scale(), &p.cfg, &merged, &opts) {
                first_err.get_or_insert(e.into());
            }
        }
    }
    first_err.map_or(Ok(o.run_dir.join("final")), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, AdamWConfig};
    use tch::{nn, Device};

    /// A toy stage: each part one 2x2 matrix pulled toward 1 by AdamW; its evaluation is scripted
    /// per step (or absent), and its `extra` state counts the steps taken.
    struct Toy {
        names: Vec<&'static str>,
        models: Vec<(nn::VarStore, AdamW)>,
        total: u64,
        fail_at: Option<u64>,
        evals: Vec<f64>,
        higher: bool,
        taken: u64,
    }

    fn toy(names: &[&'static str], total: u64) -> Toy {
        let models = names
            .iter()
            .map(|_| {
                let vs = nn::VarStore::new(Device::Cpu);
                let _ = vs.root().var("w", &[2, 2], nn::Init::Const(0.0));
                let opt = AdamW::new(&vs, AdamWConfig::default(), |_| true);
                (vs, opt)
            })
            .collect();
        Toy { names: names.to_vec(), models, total, fail_at: None, evals: vec![], higher: false, taken: 0 }
    }

    impl Stage for Toy {
        fn total_steps(&self) -> u64 {
            self.total
        }
        fn step(&mut self, step: u64) -> Result<serde_json::Value> {
            if self.fail_at == Some(step) {
                return Err(TrainError::Config(format!("stopped at step {step}")));
            }
            let mut loss = 0.0;
            for (vs, opt) in &mut self.models {
                opt.zero_grad();
                let l = (vs.root().get("w").unwrap() - 1.0).square().sum(Kind::Float);
                l.backward();
                loss += f64::try_from(&l)?;
                opt.step(0.1).unwrap();
            }
            self.taken += 1;
            Ok(serde_json::json!({ "step": step + 1, "loss": loss, "tokens": 4 }))
        }
        fn evaluate(&mut self, steps: u64) -> Result<Option<Evaluation>> {
            Ok(self.evals.get(steps as usize).map(|&v| Evaluation { value: v, record: serde_json::json!({ "eval_score": v }) }))
        }
        fn higher_is_better(&self) -> bool {
            self.higher
        }
        fn parts(&self) -> Vec<Part<'_>> {
            let cfg = llama::Config::micro();
            self.names
                .iter()
                .zip(&self.models)
                .map(|(&name, (vs, opt))| Part { name, vs, opt, cfg: cfg.clone(), architecture: "LlamaForCausalLM", lora: None })
                .collect()
        }
        fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
            self.names.iter().zip(&mut self.models).map(|(&name, (vs, opt))| PartMut { name, vs, opt, opt_steps: None }).collect()
        }
        fn extra_state(&self) -> serde_json::Value {
            serde_json::json!({ "taken": self.taken })
        }
        fn restore_extra(&mut self, extra: &serde_json::Value) -> Result<()> {
            self.taken = extra["taken"].as_u64().ok_or_else(|| TrainError::Config("no `taken`".into()))?;
            Ok(())
        }
    }

    fn options(dir: &Path, resume: bool) -> RunOptions {
        let train = crate::TrainConfig { save_every: 2, keep_last: 2, eval_every: 0, ..Default::default() };
        RunOptions::new("toy", dir, resume, "hash-a".into(), &train)
    }

    #[test]
    fn a_resume_skips_a_corrupt_newest_checkpoint_and_ends_bit_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let full = tmp.path().join("full");
        run(&mut toy(&["model"], 8), &options(&full, false), |_, r| r).unwrap();

        let cut = tmp.path().join("cut");
        let mut first = toy(&["model"], 8);
        first.fail_at = Some(7);
        assert!(run(&mut first, &options(&cut, false), |_, r| r).is_err());
        let ckd = cut.join("checkpoints");
        assert!(ckd.join("step-00000006").exists() && ckd.join("step-00000004").exists());
        std::fs::write(ckd.join("step-00000006/trainer_state.json"), "{\"step\": 6, \"epo").unwrap();
        std::fs::create_dir_all(ckd.join(".step-00000008.tmp-1")).unwrap();

        // Another config is refused, not skipped.
        let other = RunOptions { config_hash: "hash-b".into(), ..options(&cut, true) };
        let err = run(&mut toy(&["model"], 8), &other, |_, r| r).unwrap_err();
        assert!(matches!(err, TrainError::OtherConfig { .. }), "{err}");

        let mut resumed = toy(&["model"], 8);
        let r = run(&mut resumed, &options(&cut, true), |_, r| r).unwrap();
        assert_eq!(r.resumed_from, Some(4), "the resume did not fall back to step 4");
        assert_eq!(resumed.taken, 8, "the stage's extra state was not restored");
        assert!(!ckd.join(".step-00000008.tmp-1").exists());
        let a = std::fs::read(full.join("final/model.safetensors")).unwrap();
        let b = std::fs::read(cut.join("final/model.safetensors")).unwrap();
        assert!(a == b, "resumed weights differ");
        let steps: Vec<u64> =
            crate::metrics::read_metrics(&cut.join("metrics.jsonl")).unwrap().iter().map(|m| m["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=8).collect::<Vec<_>>());
        // One event file: the kept steps 1..=4 of the cut run, then the resumed 5..=8, each once.
        let files = crate::tensorboard::event_files(&cut).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let events = crate::tensorboard::read_events(&files[0]).unwrap();
        let loss_steps: Vec<i64> = events.iter().filter(|e| e.values.iter().any(|v| v.tag == "toy/loss")).map(|e| e.step).collect();
        assert_eq!(loss_steps, (1..=8).collect::<Vec<_>>());
    }

    #[test]
    fn resuming_a_finished_run_returns_its_stored_outcome() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let done = run(&mut toy(&["model"], 4), &options(&dir, false), |_, r| r).unwrap();
        let summary = std::fs::read(dir.join("summary.json")).unwrap();
        let mut again = toy(&["model"], 4);
        again.fail_at = Some(0); // any step taken would fail
        let r = run(&mut again, &options(&dir, true), |_, r| r).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), serde_json::to_value(&done).unwrap());
        assert_eq!(std::fs::read(dir.join("summary.json")).unwrap(), summary);
    }

    #[test]
    fn two_parts_with_early_stopping_on_a_higher_is_better_evaluation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut stage = toy(&["policy", "value"], 10);
        (stage.evals, stage.higher) = (vec![0.5, 0.7, 0.6, 0.65, 0.9], true);
        let o = RunOptions { eval_at_start: true, early_stop_patience: 2, eval_every: 1, save_every: 0, ..options(&dir, false) };
        let r = run(&mut stage, &o, |_, r| r).unwrap();
        assert!(r.early_stopped);
        assert_eq!((r.steps, r.best_step, r.best_eval_loss), (3, Some(1), Some(0.7)));
        let ck1 = dir.join("checkpoints/step-00000001");
        for f in ["policy/model.safetensors", "value/model.safetensors", "policy_optimizer.safetensors", "value_optimizer.safetensors"] {
            assert!(ck1.join(f).exists(), "{f}");
        }
        assert_eq!(
            std::fs::read(ck1.join("policy/model.safetensors")).unwrap(),
            std::fs::read(dir.join("best/model.safetensors")).unwrap()
        );
        assert!(dir.join("final/model.safetensors").exists() && dir.join("final_value/model.safetensors").exists());
        let m = crate::metrics::read_metrics(&dir.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = m.iter().map(|m| m["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [0, 1, 2, 3]);
        assert_eq!(m[0]["eval_score"], 0.5);
    }
}
