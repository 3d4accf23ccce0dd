//! The run: `sample` (into the append-only log, a prompt batch at a time), `select` (the kept
//! replies as an SFT dataset), `finetune` (the SFT stage, resuming from its own checkpoints) and
//! the report. Every step is skipped or resumed on a rerun with `--resume`.
//!
//! Run folder:
//! ```text
//! config.json      the resolved config and its hash (a resume must match it)
//! samples.jsonl    one line per prompt: replies with and without the preprompt, their scores, kept
//! distilled.jsonl  the kept replies as SFT dialogs (prompt without the preprompt + reply)
//! sft/             the SFT run (final/ = the distilled policy)
//! report.json, report.md, summary.json
//! ```
use crate::config::ContextDistillationConfig;
use crate::error::{CdError, Result};
use crate::log::SampleLog;
use crate::select::{distill_batch, last_user, sft_records, with_system, Generated, KeepRule, PromptDistillation, ReplyScorer};
use datasets::PromptRecord;
use llama::checkpoint::write_atomic;
use llama::engine::{self, EngineConfig, Request, RowOutput};
use llama::{Llama, SamplingParams, Tokenizer};
use reward::combine::{RewardModels, ScoreOrder, ScorerSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use training::runner::fnv1a;
use training::RunLock;

/// What a finished run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdOutcome {
    /// The fine-tuned (distilled) policy.
    pub final_model: PathBuf,
    /// The kept replies as an SFT dataset.
    pub dataset: PathBuf,
    pub report: CdReport,
    pub seconds: f64,
}

/// Counts and mean scores of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CdReport {
    /// Safety prompts sampled (skipped ones excluded).
    pub prompts: usize,
    /// Prompts too long for the model's context with the preprompt.
    pub skipped_prompts: usize,
    /// Prompts that got a risk category's answer template.
    pub prompts_with_template: usize,
    /// Comparisons (reply with the preprompt vs reply without).
    pub comparisons: usize,
    /// Distilled replies kept (the SFT dataset's size).
    pub kept: usize,
    pub keep_rate: f64,
    /// Mean σ safety score of the replies with / without the preprompt, and of the kept ones.
    pub mean_safety_with: f64,
    pub mean_safety_without: f64,
    pub mean_safety_kept: f64,
    /// Demo world: the judges' safe rate of the replies with / without the preprompt, and of the kept ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_safe_with: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_safe_without: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_safe_kept: Option<f64>,
    /// Per risk category (`none`: no template matched): comparisons and kept.
    pub by_category: BTreeMap<String, (usize, usize)>,
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn rate(v: impl IntoIterator<Item = Option<bool>>) -> Option<f64> {
    let b: Vec<bool> = v.into_iter().flatten().collect();
    (!b.is_empty()).then(|| b.iter().filter(|&&x| x).count() as f64 / b.len() as f64)
}

impl CdReport {
    pub fn of(log: &[PromptDistillation]) -> Self {
        let sampled: Vec<&PromptDistillation> = log.iter().filter(|r| r.skipped.is_none()).collect();
        let with = || sampled.iter().flat_map(|r| r.with_preprompt.iter().take(r.without_preprompt.len()));
        let without = || sampled.iter().flat_map(|r| &r.without_preprompt);
        let kept = || sampled.iter().flat_map(|r| r.kept.iter().map(|&j| &r.with_preprompt[j]));
        let mut by_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in &sampled {
            let e = by_category.entry(r.category.clone().unwrap_or_else(|| "none".into())).or_default();
            e.0 += r.without_preprompt.len();
            e.1 += r.kept.len();
        }
        let comparisons = without().count();
        let n_kept = kept().count();
        CdReport {
            prompts: sampled.len(),
            skipped_prompts: log.len() - sampled.len(),
            prompts_with_template: sampled.iter().filter(|r| r.category.is_some()).count(),
            comparisons,
            kept: n_kept,
            keep_rate: n_kept as f64 / comparisons.max(1) as f64,
            mean_safety_with: mean(with().map(|r| r.safety)),
            mean_safety_without: mean(without().map(|r| r.safety)),
            mean_safety_kept: mean(kept().map(|r| r.safety)),
            demo_safe_with: rate(with().map(|r| r.demo_safe)),
            demo_safe_without: rate(without().map(|r| r.demo_safe)),
            demo_safe_kept: rate(kept().map(|r| r.demo_safe)),
            by_category,
        }
    }

    pub fn markdown(&self) -> String {
        let pct = |x: Option<f64>| x.map(|v| format!("{:.1}%", 100.0 * v)).unwrap_or_else(|| "-".into());
        let mut s = String::from("# Safety context distillation (Llama 2 Section 4.2.4)\n\n");
        s += &format!(
            "{} safety prompts ({} with an answer template, {} skipped), {} comparisons: **{} distilled replies kept** ({:.1}%).\n\n",
            self.prompts,
            self.prompts_with_template,
            self.skipped_prompts,
            self.comparisons,
            self.kept,
            100.0 * self.keep_rate
        );
        s += "| replies | mean σ safety RM | demo judge: safe |\n|---|---|---|\n";
        s += &format!("| without preprompt | {:.3} | {} |\n", self.mean_safety_without, pct(self.demo_safe_without));
        s += &format!("| with preprompt | {:.3} | {} |\n", self.mean_safety_with, pct(self.demo_safe_with));
        s += &format!("| kept (with, RM-better) | {:.3} | {} |\n\n", self.mean_safety_kept, pct(self.demo_safe_kept));
        s += "| risk category | comparisons | kept |\n|---|---|---|\n";
        for (c, (n, k)) in &self.by_category {
            s += &format!("| {c} | {n} | {k} |\n");
        }
        s
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CdError::Config(format!("{}: {e}", path.display())))?;
    Ok(write_atomic(path, s.as_bytes())?)
}

/// The safety prompts of the files, in order, each once.
pub fn load_safety_prompts(files: &[PathBuf], max: Option<usize>) -> Result<Vec<PromptRecord>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for f in files {
        for p in datasets::io::read_all::<PromptRecord>(f)? {
            if p.is_safety && seen.insert(crate::prompt_key(&p.prompt)) {
                out.push(p);
            }
        }
    }
    if let Some(m) = max {
        out.truncate(m);
    }
    if out.is_empty() {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(CdError::Config(format!("no prompt with `is_safety = true` in {}", names.join(", "))));
    }
    Ok(out)
}

/// The draw stream of a prompt's replies: `with` the preprompt or without, from the prompt's key.
pub fn prompt_stream(seed: u64, key: &str, with: bool) -> u64 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    engine::prompt_seed(seed ^ if with { 0x4344_5f57_4954_4800 } else { 0x4344_5f50_4c41_494e }, h)
    // "CD_WITH", "CD_PLAIN"
}

/// A batch's replies with and without the preprompt (per sampled prompt) and which prompts fit.
type Sampled = (Vec<Vec<Generated>>, Vec<Vec<Generated>>, Vec<bool>);

/// One context-distillation run: the config, the prompts and where things go.
pub struct ContextDistiller<'a> {
    cfg: &'a ContextDistillationConfig,
    tok: &'a Tokenizer,
    out: PathBuf,
    prompts: Vec<PromptRecord>,
    device: tch::Device,
    kind: tch::Kind,
    _lock: Option<RunLock>,
}

impl<'a> ContextDistiller<'a> {
    /// Locks the run folder, checks it (a folder with a run needs `resume` and the same config),
    /// reads the prompts and records the config.
    pub fn prepare(cfg: &'a ContextDistillationConfig, tok: &'a Tokenizer, out: &Path, resume: bool) -> Result<Self> {
        cfg.validate().map_err(CdError::Config)?;
        if distributed::world_size() > 1 {
            return Err(CdError::Config("context distillation runs in one process".into()));
        }
        let llama::Compute { device, kind } = cfg.device.compute(cfg.dtype)?;
        let lock = RunLock::acquire_main(out)?;
        let mut neutral = cfg.clone();
        neutral.finetune.train = neutral.finetune.train.for_fingerprint();
        let json = serde_json::to_value(&neutral).map_err(|e| CdError::Config(e.to_string()))?;
        let hash = fnv1a(json.to_string().as_bytes());
        let record = out.join("config.json");
        if record.exists() {
            if !resume {
                return Err(CdError::Resume {
                    path: out.into(),
                    msg: "the run folder already has a context-distillation run: pass --resume to continue it, or choose another --out"
                        .into(),
                });
            }
            let text = std::fs::read_to_string(&record).map_err(|e| CdError::io(&record, e))?;
            let old: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| CdError::Resume { path: record.clone(), msg: format!("unreadable: {e}") })?;
            if old["hash"].as_str() != Some(hash.as_str()) {
                return Err(CdError::Resume {
                    path: record,
                    msg: "was written by a different config; resume with the same config or use a new run folder".into(),
                });
            }
        } else {
            std::fs::create_dir_all(out).map_err(|e| CdError::io(out, e))?;
            write_json(&record, &serde_json::json!({ "hash": hash, "config": serde_json::to_value(cfg).unwrap_or_default() }))?;
        }
        let prompts = load_safety_prompts(&cfg.prompts, cfg.max_prompts)?;
        Ok(ContextDistiller { cfg, tok, out: out.into(), prompts, device, kind, _lock: lock })
    }

    /// Samples K replies with and K without the preprompt for each prompt of the batch.
    fn generate(&self, policy: &Llama, batch: &[&PromptRecord]) -> Result<Sampled> {
        let c = self.cfg;
        let k = c.samples_per_prompt;
        let limit = policy.cfg.max_position_embeddings as usize;
        let (mut with_ids, mut plain_ids, mut fits) = (Vec::new(), Vec::new(), Vec::new());
        for p in batch {
            let sys = c.system_prompt(c.template_for(last_user(&p.prompt)));
            let w = llama::chat::encode_prompt(self.tok, &with_system(&p.prompt, &sys))?;
            let fit = w.len() + c.max_new_tokens <= limit;
            fits.push(fit);
            if fit {
                with_ids.push(w);
                plain_ids.push(llama::chat::encode_prompt(self.tok, &p.prompt)?);
            }
        }
        let sampled: Vec<&&PromptRecord> = batch.iter().zip(&fits).filter(|(_, &f)| f).map(|(p, _)| p).collect();
        let n = sampled.len();
        let mut requests = Vec::with_capacity(2 * n);
        for (ids, with) in [(&with_ids, true), (&plain_ids, false)] {
            for (x, p) in ids.iter().zip(&sampled) {
                requests.push(Request {
                    prompt: x,
                    seed: prompt_stream(c.seed, &crate::prompt_key(&p.prompt), with),
                    expected_new_tokens: None,
                });
            }
        }
        let params = SamplingParams {
            max_new_tokens: c.max_new_tokens,
            temperature: c.temperature,
            top_p: c.top_p,
            top_k: c.top_k,
            seed: c.seed,
            stop_at_eos: true,
            eos_token_id: policy.cfg.eos_token_id,
            num_samples: k,
        };
        let mut rows: Vec<Option<RowOutput>> = vec![None; requests.len() * k];
        if !requests.is_empty() {
            engine::run(policy, &requests, &params, &EngineConfig::default(), |r: RowOutput| -> Result<()> {
                let i = r.request * k + r.sample;
                rows[i] = Some(r);
                Ok(())
            })?;
        }
        let mut gen = Vec::with_capacity(rows.len());
        for r in rows.into_iter().flatten() {
            gen.push(Generated { text: self.tok.decode(&r.tokens)?.trim().to_string(), tokens: r.tokens.len(), finished: r.finished });
        }
        let with: Vec<Vec<Generated>> = (0..n).map(|i| gen[i * k..(i + 1) * k].to_vec()).collect();
        let without: Vec<Vec<Generated>> = (0..n).map(|i| gen[(n + i) * k..(n + i + 1) * k].to_vec()).collect();
        Ok((with, without, fits))
    }

    /// Verb 1: every prompt batch not yet in the log, sampled, scored and appended.
    pub fn sample(&self) -> Result<Vec<PromptDistillation>> {
        let c = self.cfg;
        let mut log = SampleLog::open(&self.out.join("samples.jsonl"))?;
        // A batch is redone whole when any of its prompts is missing (a torn write): the engine and
        // the reward models then see the same batches as an uninterrupted run, so the same numbers.
        let pending: Vec<Vec<&PromptRecord>> = self
            .prompts
            .chunks(c.prompt_batch_size)
            .filter(|b| b.iter().any(|p| !log.done().contains(&crate::prompt_key(&p.prompt))))
            .map(|b| b.iter().collect())
            .collect();
        if pending.is_empty() {
            return Ok(log.records().to_vec());
        }
        tracing::info!(
            "context distillation: sampling {} prompt batches ({} prompts already in {}), {} replies with and without the preprompt each",
            pending.len(),
            log.records().len(),
            log.path().display(),
            c.samples_per_prompt
        );
        let (_vs, policy) = llama::checkpoint::load_causal_lm(&c.policy, self.device, self.kind)?;
        let rms = RewardModels::load(c.helpfulness_rm.as_deref(), Some(&c.safety_rm), self.device, self.kind, (0, 0))?;
        let spec = ScorerSpec {
            threshold: reward::combine::SAFETY_THRESHOLD,
            max_len: c.rm_max_seq_len,
            batch: c.score_batch_size,
            order: ScoreOrder::ByLength,
        };
        let scorer = crate::select::RewardModelScorer { scorer: rms.scorer(spec), tok: self.tok };
        let t0 = Instant::now();
        for (n, batch) in pending.iter().enumerate() {
            let recs = self.sample_batch(&policy, &scorer, batch)?;
            let missing = recs.into_iter().filter(|r| !log.done().contains(&r.key)).collect();
            log.append(missing)?;
            tracing::info!("context distillation: batch {}/{}, {:.1} s", n + 1, pending.len(), t0.elapsed().as_secs_f64());
        }
        Ok(log.records().to_vec())
    }

    fn sample_batch(&self, policy: &Llama, scorer: &dyn ReplyScorer, batch: &[&PromptRecord]) -> Result<Vec<PromptDistillation>> {
        let c = self.cfg;
        let (with, without, fits) = self.generate(policy, batch)?;
        let sampled: Vec<&PromptRecord> = batch.iter().zip(&fits).filter(|(_, &f)| f).map(|(p, _)| *p).collect();
        let categories: Vec<Option<String>> =
            sampled.iter().map(|p| c.template_for(last_user(&p.prompt)).map(|t| t.category.clone())).collect();
        let rule = KeepRule { min_improvement: c.min_improvement, require_finished: c.require_finished };
        let mut done = distill_batch(&sampled, &categories, &with, &without, scorer, rule)?.into_iter();
        let limit = policy.cfg.max_position_embeddings;
        Ok(batch
            .iter()
            .zip(&fits)
            .map(|(p, &fit)| {
                if fit {
                    done.next().expect("one record per sampled prompt")
                } else {
                    PromptDistillation {
                        key: crate::prompt_key(&p.prompt),
                        prompt: p.prompt.clone(),
                        category: None,
                        with_preprompt: vec![],
                        without_preprompt: vec![],
                        kept: vec![],
                        skipped: Some(format!("prompt + preprompt + max_new_tokens exceeds the model's {limit} positions")),
                    }
                }
            })
            .collect())
    }

    /// Every verb: sample (resumable), the SFT dataset, the fine-tune (resumable), the report.
    pub fn run(&self) -> Result<CdOutcome> {
        let start = Instant::now();
        let log = self.sample()?;
        let report = CdReport::of(&log);
        tracing::info!(
            "context distillation: {} of {} distilled replies kept (safety RM: with {:.3}, without {:.3})",
            report.kept,
            report.comparisons,
            report.mean_safety_with,
            report.mean_safety_without
        );
        let records = sft_records(&log);
        if records.is_empty() {
            return Err(CdError::Config(format!(
                "no distilled reply scored above the reply without the preprompt ({} comparisons): nothing to fine-tune on",
                report.comparisons
            )));
        }
        let dataset = self.out.join("distilled.jsonl");
        let mut text = String::new();
        for r in &records {
            text += &serde_json::to_string(r).map_err(|e| CdError::Config(e.to_string()))?;
            text.push('\n');
        }
        write_atomic(&dataset, text.as_bytes())?;
        write_json(&self.out.join("report.json"), &report)?;
        write_atomic(&self.out.join("report.md"), report.markdown().as_bytes())?;
        let sft_cfg = self.cfg.sft_config(&dataset);
        sft_cfg.validate().map_err(CdError::Config)?;
        tracing::info!("context distillation: fine-tuning on {} kept replies (prompts without the preprompt)", records.len());
        let o = sft::run(&sft_cfg, &self.out.join("sft"), true)?;
        let outcome = CdOutcome { final_model: o.final_model, dataset, report, seconds: start.elapsed().as_secs_f64() };
        write_json(&self.out.join("summary.json"), &outcome)?;
        Ok(outcome)
    }
}

/// Prepares and runs context distillation into `out` (see the module docs for the layout), as
/// `rlhf context-distillation` and the pipeline call it; the tokenizer is the policy's (or `tokenizer`).
pub fn run(cfg: &ContextDistillationConfig, out: &Path, resume: bool) -> Result<CdOutcome> {
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    let (tok, _) = llama::tokenizer::resolve(cfg.tokenizer.as_deref(), Some(&cfg.policy))?;
    ContextDistiller::prepare(cfg, &tok, out, resume)?.run()
}
