//! One GAtt round into a folder, resumable: `config.json`, `gatt.jsonl` (the records) and
//! `gatt_dialogs.jsonl` (the sampled dialogs), `eval-before.json`, the fine-tune in `sft/`
//! (`sft::run`, resuming from its checkpoints), `eval-after.json`, `summary.json`. A finished
//! file is never redone; a changed config in the same folder is an error.
use crate::config::GattConfig;
use crate::data::{read_dialogs, read_instructions, write_jsonl};
use crate::error::{GattError, Result};
use crate::eval::{evaluate, GattEval};
use crate::sample::{records, sample_dialogs, SampleSpec, SampledDialog};
use datasets::SftRecord;
use demo_world::{default_instructions, Instruction};
use llama::rng::SplitMix64;
use llama::{Llama, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a GAtt round produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GattOutcome {
    pub final_model: PathBuf,
    pub records: PathBuf,
    pub dialogs: usize,
    /// Dialogs sampled to their last turn.
    pub complete_dialogs: usize,
    /// SFT records (one per kept turn).
    pub train_records: usize,
    pub before: Option<GattEval>,
    pub after: Option<GattEval>,
    pub finetune: sft::SftOutcome,
    pub seconds: f64,
}

/// What [`build_data`] made.
pub struct GattData {
    pub dialogs: Vec<SampledDialog>,
    pub records: Vec<SftRecord>,
}

/// The instruction of dialog `i` of those that carry none: drawn from `list` by its own stream.
pub fn draw_instruction(list: &[Instruction], seed: u64, i: usize) -> &Instruction {
    let mut rng = SplitMix64::for_step(seed ^ 0x4741_5454, i as u64); // "GATT"
    &list[(rng.next_u64() % list.len() as u64) as usize]
}

/// The instruction list: a user file or the built-in one.
pub fn instruction_list(file: Option<&Path>) -> Result<Vec<Instruction>> {
    match file {
        Some(p) => read_instructions(p),
        None => Ok(default_instructions()),
    }
}

/// Samples the GAtt dialogs of `dialog_files` with `model` and builds their records.
pub fn build_data(model: &Llama, tok: &Tokenizer, dialog_files: &[PathBuf], list: &[Instruction], spec: &SampleSpec) -> Result<GattData> {
    if list.is_empty() {
        return Err(GattError::Invalid("the instruction list is empty".into()));
    }
    let mut dialogs = Vec::new();
    for f in dialog_files {
        for d in read_dialogs(f, false)? {
            let i = dialogs.len();
            dialogs.push((d.instruction.unwrap_or_else(|| draw_instruction(list, spec.seed, i).clone()), d.turns));
        }
    }
    let sampled = sample_dialogs(model, tok, &dialogs, spec)?;
    let records = records(&sampled);
    if records.is_empty() {
        return Err(GattError::Invalid(format!(
            "no dialog kept a single turn: no {}sample of {} obeyed its instruction at turn 1",
            if spec.require_finished { "finished " } else { "" },
            spec.best_of_k
        )));
    }
    Ok(GattData { dialogs: sampled, records })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read(path).map_err(|e| GattError::io(path, e))?;
    Ok(Some(serde_json::from_slice(&text).map_err(|e| GattError::File { path: path.to_path_buf(), msg: e.to_string() })?))
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v)?;
    bytes.push(b'\n');
    Ok(llama::checkpoint::write_atomic(path, &bytes)?)
}

/// Adherence of `model_dir` on the evaluation dialogs, cached in `path`.
fn eval_once(cfg: &GattConfig, tok: &Tokenizer, model_dir: &Path, path: &Path) -> Result<Option<GattEval>> {
    let Some(file) = &cfg.eval_dialogs else { return Ok(None) };
    if let Some(e) = read_json(path)? {
        return Ok(Some(e));
    }
    let dialogs = read_dialogs(file, true)?;
    let c = cfg.device.compute(cfg.dtype)?;
    let (_vs, model) = llama::checkpoint::load_causal_lm(model_dir, c.device, c.kind)?;
    let params = demo_world::greedy(cfg.max_new_tokens, model.cfg.eos_token_id);
    let e = evaluate(&model, tok, &dialogs, cfg.eval_turns, &params)?;
    tracing::info!("GAtt adherence of {}: turns 2+ {:.3}, turns 5-10 {:?}", model_dir.display(), e.after_first, e.turns_5_10);
    write_json(path, &e)?;
    Ok(Some(e))
}

/// Runs one GAtt round into `out` (see the module docs); `resume` continues a folder with the same config.
pub fn run(cfg: &GattConfig, out: &Path, resume: bool) -> Result<GattOutcome> {
    cfg.validate().map_err(GattError::Config)?;
    let start = Instant::now();
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    std::fs::create_dir_all(out).map_err(|e| GattError::io(out, e))?;
    let cfg_path = out.join("config.json");
    match read_json::<GattConfig>(&cfg_path)? {
        Some(_) if !resume => {
            return Err(GattError::Config(format!("{} holds a GAtt run: resume it or use a new folder", out.display())));
        }
        Some(old) if old != *cfg => {
            return Err(GattError::Config(format!("{} holds a GAtt run with another config: use a new folder", out.display())))
        }
        Some(_) => {}
        None => write_json(&cfg_path, cfg)?,
    }
    let (tok, _) = llama::tokenizer::resolve(cfg.tokenizer.as_deref(), Some(&cfg.policy))?;
    let before = eval_once(cfg, &tok, &cfg.policy, &out.join("eval-before.json"))?;

    let records_path = out.join("gatt.jsonl");
    let dialogs_path = out.join("gatt_dialogs.jsonl");
    let (n_dialogs, complete) = match read_json::<(usize, usize)>(&out.join("data.json"))? {
        Some(counts) if records_path.exists() => counts,
        _ => {
            let c = cfg.device.compute(cfg.dtype)?;
            let (_vs, model) = llama::checkpoint::load_causal_lm(&cfg.policy, c.device, c.kind)?;
            let list = instruction_list(cfg.instructions.as_deref())?;
            let spec = SampleSpec {
                best_of_k: cfg.best_of_k,
                temperature: cfg.temperature,
                top_p: cfg.top_p,
                max_new_tokens: cfg.max_new_tokens,
                seed: cfg.seed,
                require_finished: cfg.require_finished,
            };
            let data = build_data(&model, &tok, &cfg.dialogs, &list, &spec)?;
            write_jsonl(&dialogs_path, &data.dialogs)?;
            write_jsonl(&records_path, &data.records)?;
            let counts = (data.dialogs.len(), data.dialogs.iter().filter(|d| d.stopped.is_none()).count());
            write_json(&out.join("data.json"), &counts)?;
            counts
        }
    };
    let train_records = datasets::io::read_all::<SftRecord>(&records_path).map_err(|e| GattError::Invalid(e.to_string()))?.len();
    tracing::info!("GAtt: {train_records} records from {n_dialogs} dialogs ({complete} sampled to their last turn)");

    let sft_cfg = cfg.sft_config(records_path.clone());
    sft_cfg.validate().map_err(GattError::Config)?;
    let finetune = sft::run(&sft_cfg, &out.join("sft"), true)?;
    let after = eval_once(cfg, &tok, &finetune.final_model, &out.join("eval-after.json"))?;
    let outcome = GattOutcome {
        final_model: finetune.final_model.clone(),
        records: records_path,
        dialogs: n_dialogs,
        complete_dialogs: complete,
        train_records,
        before,
        after,
        finetune,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_json(&out.join("summary.json"), &outcome)?;
    if let Some(a) = &outcome.after {
        llama::checkpoint::write_atomic(&out.join("report.md"), crate::eval::markdown(outcome.before.as_ref(), a).as_bytes())?;
    }
    Ok(outcome)
}
