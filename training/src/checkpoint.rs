//! Trainer checkpoints: `<run>/checkpoints/step-00000042/` holds each trained model of the stage
//! in the HF layout (fp32, so that resuming is exact) in a folder named after it, its optimizer
//! state, and `trainer_state.json` (step, best eval, the stage's data cursor and RNG in `extra`).
//! SFT and reward models train one model, `model/` with `optimizer.safetensors`; PPO trains two,
//! `policy/` + `policy_optimizer.safetensors` and `value/` + `value_optimizer.safetensors`.
//!
//! A checkpoint is built in a temp folder and renamed into place, then `latest` is rewritten
//! atomically: a crash at any moment leaves the previous checkpoint valid and `latest` pointing to
//! a complete one. Keep-last-N pruning never removes the best checkpoint. What a crash leaves
//! behind (temp folders, half-replaced folders) is tidied by [`remove_stale_temps`] at the next
//! start, under the run-folder lock.
use crate::dist::agree;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use llama::checkpoint::{self as ck, CheckpointFiles, SaveOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn;

/// Where a stage stands; stages put their own resumable state (data cursor, RNG) in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done (PPO: iterations).
    pub step: u64,
    pub epoch: u64,
    /// Micro-batches consumed in the current epoch.
    pub cursor: u64,
    pub best_eval: Option<f64>,
    pub best_step: Option<u64>,
    /// Evaluations since the best one (early stopping).
    #[serde(default)]
    pub evals_since_best: u64,
    /// Hash of the config that produced the run (resuming with another config is refused).
    pub config_hash: String,
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// One trained model of a stage and its optimizer, as a checkpoint saves it.
pub struct Part<'a> {
    /// Its folder inside a checkpoint (`model`, `policy`, `value`).
    pub name: &'static str,
    pub vs: &'a nn::VarStore,
    pub opt: &'a AdamW,
    /// The config written with it.
    pub cfg: llama::Config,
    /// `LlamaForCausalLM` or `LlamaForSequenceClassification`.
    pub architecture: &'static str,
    /// Trained with LoRA: checkpoints and `final/` hold the PEFT adapter (and the heads trained
    /// beside it) rather than the whole model.
    pub lora: Option<&'a llama::lora::LoraRun>,
}

impl Part<'_> {
    /// Writes the part's weights into `dir`: the whole model in the HF layout, or its adapter.
    pub fn save_weights(&self, dir: &Path, dtype: tch::Kind, extra_files: &[PathBuf]) -> Result<()> {
        match self.lora {
            Some(l) => llama::lora::save_adapter(self.vs, &l.lora, &l.info, dir, dtype, extra_files)?,
            None => {
                let opts =
                    SaveOptions { architecture: self.architecture.into(), dtype, extra_files: extra_files.to_vec(), ..Default::default() };
                ck::save(self.vs, &self.cfg, dir, &opts)?
            }
        }
        Ok(())
    }
}

impl Part<'_> {
    /// [`Part::save_weights`] called on every rank of a distributed run (in one process, the
    /// same): rank 0 writes. Under ZeRO-3 the decoder layers are gathered one at a time (a
    /// collective) and streamed into the files by rank 0 ([`AdamW::stream_weights`],
    /// [`ck::StreamedSave`]), so no rank holds the whole model; the files are the ones
    /// [`Part::save_weights`] writes from whole weights, byte for byte.
    pub fn save_weights_everywhere(&self, dir: &Path, dtype: tch::Kind, extra_files: &[PathBuf]) -> Result<()> {
        let main = distributed::is_main();
        if !self.opt.is_zero3() || self.lora.is_some() {
            return if main { self.save_weights(dir, dtype, extra_files) } else { Ok(()) };
        }
        let shapes: std::collections::HashMap<String, Vec<i64>> = self.opt.param_shapes().into_iter().collect();
        let specs: Vec<(String, Vec<i64>, tch::Kind)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(n, _)| !llama::lora::is_lora(n))
            .map(|(n, v)| {
                let shape = shapes.get(&n).cloned().unwrap_or_else(|| v.size());
                (n, shape, v.kind())
            })
            .collect();
        let mut order: Vec<String> = specs.iter().map(|(n, _, _)| n.clone()).collect();
        ck::write_order(&mut order);
        // Rank 0 writes; a failure there still lets every gather happen (the others wait on them).
        let mut save = main.then(|| {
            let opts =
                SaveOptions { architecture: self.architecture.into(), dtype, extra_files: extra_files.to_vec(), ..Default::default() };
            ck::StreamedSave::begin(specs, &self.cfg, dir, &opts)
        });
        let streamed = self.opt.stream_weights(self.vs, &order, |name, t| match &mut save {
            Some(Ok(s)) => Ok(s.push(name, t)?),
            _ => Ok(()),
        });
        match save {
            Some(Ok(s)) => {
                streamed?;
                s.finish()?
            }
            Some(Err(e)) => return Err(e.into()),
            None => streamed?,
        }
        Ok(())
    }
}

/// One trained model of a stage and its optimizer, to load a checkpoint into.
pub struct PartMut<'a> {
    pub name: &'static str,
    pub vs: &'a mut nn::VarStore,
    pub opt: &'a mut AdamW,
    /// Updates the optimizer had applied at the checkpoint, when they are not the checkpoint's
    /// step (PPO takes several per iteration; the stage reads them from its restored `extra`).
    pub opt_steps: Option<u64>,
}

/// The optimizer file of a part: `optimizer.safetensors` for a stage's single `model`,
/// `<name>_optimizer.safetensors` otherwise.
pub fn optimizer_file(part: &str) -> String {
    if part == "model" {
        "optimizer.safetensors".into()
    } else {
        format!("{part}_optimizer.safetensors")
    }
}

/// The file of rank `rank`'s ZeRO shard of a part's optimizer state in a run of `world` ranks.
pub fn zero_file(part: &str, rank: i64, world: i64) -> String {
    let stem = optimizer_file(part);
    let stem = stem.trim_end_matches(".safetensors");
    format!("{stem}.zero-rank{rank:05}-of-{world:05}.safetensors")
}

pub struct CheckpointManager {
    pub dir: PathBuf,
    pub keep_last: usize,
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

impl CheckpointManager {
    pub fn new(run_dir: &Path, keep_last: usize) -> Self {
        CheckpointManager { dir: run_dir.join("checkpoints"), keep_last: keep_last.max(1) }
    }

    /// Saves every part (weights fp32, optimizer state) and `state` as checkpoint `state.step`;
    /// returns its folder. In a distributed run every rank calls it: rank 0 writes the models,
    /// the state and a replicated optimizer, each rank its own ZeRO shard, into one temp folder
    /// that rank 0 renames into place once every rank has written (complete or absent).
    pub fn save(&self, parts: &[Part], extra_files: &[PathBuf], state: &TrainerState) -> Result<PathBuf> {
        let main = distributed::is_main();
        let name = step_name(state.step);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", crate::dist::leader_pid()));
        let made = if main {
            (|| -> Result<()> {
                std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
                if tmp.exists() {
                    std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
                }
                std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))
            })()
        } else {
            Ok(())
        };
        agree(made, "create the checkpoint folder")?;
        let written = (|| -> Result<()> {
            // Every rank: under ZeRO-3 the layers are gathered one at a time for rank 0, for every
            // part even after one failed (the other ranks wait on those gathers).
            let weights: Vec<Result<()>> =
                parts.iter().map(|p| p.save_weights_everywhere(&tmp.join(p.name), tch::Kind::Float, extra_files)).collect();
            weights.into_iter().collect::<Result<()>>()?;
            for p in parts {
                let file = match p.opt.zero_layout() {
                    Some(l) => zero_file(p.name, l[1], l[0]),
                    None if main => optimizer_file(p.name),
                    None => continue,
                };
                // Streamed: each tensor reaches the host only as it is written.
                ck::write_safetensors(&tmp.join(file), &p.opt.state_tensors())?;
            }
            if main {
                let json = serde_json::to_string_pretty(state).expect("state serialises");
                ck::write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
            }
            Ok(())
        })();
        agree(written, "write its part of the checkpoint")?;
        let dst = self.path_of(state.step);
        let placed = if main {
            (|| -> Result<()> {
                ck::replace_dir(&tmp, &dst)?;
                ck::write_atomic(&self.dir.join("latest"), name.as_bytes())?;
                self.prune(state)
            })()
        } else {
            Ok(())
        };
        agree(placed, "put the checkpoint in place")?;
        Ok(dst)
    }

    fn prune(&self, state: &TrainerState) -> Result<()> {
        let mut steps = self.list()?;
        steps.sort();
        let keep_from = steps.len().saturating_sub(self.keep_last);
        for (i, s) in steps.iter().enumerate() {
            if i < keep_from && Some(*s) != state.best_step {
                let p = self.path_of(*s);
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
        Ok(())
    }

    /// Steps of the complete checkpoints on disk.
    pub fn list(&self) -> Result<Vec<u64>> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Ok(vec![]) };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(s) = n.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
                if e.path().join("trainer_state.json").exists() {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// The complete checkpoints, newest first: the ones a resume tries in turn.
    pub fn newest_first(&self) -> Result<Vec<PathBuf>> {
        let mut steps = self.list()?;
        steps.sort_unstable_by(|a, b| b.cmp(a));
        Ok(steps.into_iter().map(|s| self.path_of(s)).collect())
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let pointer = self.dir.join("latest");
        if let Ok(name) = std::fs::read_to_string(&pointer) {
            let p = self.dir.join(name.trim());
            if p.join("trainer_state.json").exists() {
                return Ok(Some(p));
            }
        }
        Ok(self.list()?.into_iter().max().map(|s| self.path_of(s)))
    }

    /// The checkpoint of a given step.
    pub fn path_of(&self, step: u64) -> PathBuf {
        self.dir.join(step_name(step))
    }
}

/// Reads the trainer state of a checkpoint.
pub fn read_state(path: &Path) -> Result<TrainerState> {
    let state_path = path.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Json { path: state_path, source: e })
}

/// Loads one part's weights and optimizer state (`opt_steps` updates done) from a checkpoint.
/// The optimizer state may be replicated (`optimizer.safetensors`) or ZeRO shards of any world
/// size; either loads into a replicated or a sharded optimizer (re-sharded as needed).
///
/// A LoRA part's folder is its adapter: the adapter (and heads) load unmerged into `vs`, whose
/// frozen base weights are already those of the base model.
pub fn load_part(path: &Path, name: &str, vs: &mut nn::VarStore, opt: &mut AdamW, opt_steps: u64) -> Result<()> {
    let dir = path.join(name);
    if llama::lora::is_adapter_dir(&dir) {
        llama::lora::SavedAdapter::open(&dir)?.load_unmerged(vs)?;
    } else if opt.is_zero3() {
        // ZeRO-3: only the weights kept whole are loaded whole; the layers' masters come from the
        // optimizer state below (or, re-sharding, from the model files one tensor at a time).
        ck::load_var_store_except(vs, &dir, |_| false, |n| opt.is_sharded_weight(n))?;
    } else {
        ck::load_var_store(vs, &dir)?;
    }
    let device = vs.device();
    let replicated = path.join(optimizer_file(name));
    if let Some(layout) = opt.zero_layout() {
        let own = path.join(zero_file(name, layout[1], layout[0]));
        if own.exists() {
            let files = CheckpointFiles::open_file(&own)?;
            let saved = Vec::<i64>::try_from(files.tensor("zero.layout")?)?;
            if saved == layout {
                let get = |n: &str| -> Result<tch::Tensor> { Ok(files.tensor(n)?.to_device(device)) };
                return opt.load_zero_shard(opt_steps, &get("zero.master")?, &get("zero.m")?, &get("zero.v")?);
            }
        }
    }
    // ZeRO-3 re-sharding an fp32 model: a layer's masters are its saved weights, read one tensor
    // at a time.
    let model_files = if opt.is_zero3() { Some(CheckpointFiles::open(&dir)?) } else { None };
    let shapes: std::collections::HashMap<String, Vec<i64>> = opt.param_shapes().into_iter().collect();
    let weights = |n: &str| -> Result<tch::Tensor> {
        let files = model_files.as_ref().ok_or_else(|| TrainError::Config(format!("no model weights for {n}")))?;
        let shape = shapes.get(n).map_or(&[][..], |s| s.as_slice());
        Ok(files.tensor_for(n, shape, tch::Kind::Float)?.to_device(device))
    };
    if replicated.exists() {
        let files = CheckpointFiles::open_file(&replicated)?;
        return opt.load_state_with(opt_steps, |n| Ok(files.tensor(n)?.to_device(device)), weights);
    }
    let whole = unshard_files(path, name, opt)?;
    opt.load_state_with(
        opt_steps,
        |n| {
            whole
                .get(n)
                .map(|t| t.to_device(device))
                .ok_or_else(|| TrainError::Checkpoint { path: path.to_path_buf(), msg: format!("no optimizer state {n}") })
        },
        weights,
    )
}

/// The whole per-parameter optimizer state of part `name` from the ZeRO shards in checkpoint
/// `path` (written by any number of ranks).
fn unshard_files(path: &Path, name: &str, opt: &AdamW) -> Result<std::collections::HashMap<String, tch::Tensor>> {
    let bad = |msg: String| TrainError::Checkpoint { path: path.to_path_buf(), msg };
    let stem = zero_file(name, 0, 0);
    let prefix = stem.split(".zero-rank").next().unwrap_or_default().to_string() + ".zero-rank00000-of-";
    let world = std::fs::read_dir(path)
        .map_err(|e| TrainError::io(path, e))?
        .flatten()
        .find_map(|e| e.file_name().to_string_lossy().strip_prefix(&prefix)?.strip_suffix(".safetensors")?.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("no optimizer state for {name}: neither {} nor ZeRO shards", optimizer_file(name))))?;
    let mut bucket = None;
    let mut shards: [Vec<tch::Tensor>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..world {
        let file = path.join(zero_file(name, r, world));
        if !file.exists() {
            return Err(bad(format!("has ZeRO shards of {world} ranks but {} is missing", file.display())));
        }
        let files = CheckpointFiles::open_file(&file)?;
        let layout = Vec::<i64>::try_from(files.tensor("zero.layout")?)?;
        // A fifth entry 3: ZeRO-3's layout, whose buckets end at each decoder layer's end.
        let stage3 = layout.len() == 5 && layout[4] == 3;
        if !(layout.len() == 4 || stage3) || layout[0] != world || layout[1] != r || layout[3] != opt.num_parameters() {
            return Err(bad(format!(
                "{}: zero.layout {layout:?} does not fit rank {r} of {world} and {} parameters",
                file.display(),
                opt.num_parameters()
            )));
        }
        bucket = Some((layout[2], if stage3 { 3 } else { 2 }));
        for (i, key) in ["zero.master", "zero.m", "zero.v"].iter().enumerate() {
            shards[i].push(files.tensor(key)?.to_kind(tch::Kind::Float));
        }
    }
    let shapes = opt.param_shapes();
    let sizes: Vec<i64> = shapes.iter().map(|(_, s)| s.iter().product()).collect();
    let mut out = std::collections::HashMap::new();
    for (i, what) in ["master", "m", "v"].iter().enumerate() {
        let (b, stage) = bucket.unwrap_or((crate::zero::DEFAULT_BUCKET, 2));
        let flat = crate::zero::unshard_grouped(&sizes, &opt.zero_group_ends(stage), b, &shards[i]);
        let mut off = 0;
        for ((pname, shape), &n) in shapes.iter().zip(&sizes) {
            out.insert(format!("{what}.{pname}"), flat.narrow(0, off, n).reshape(shape.as_slice()));
            off += n;
        }
    }
    Ok(out)
}

/// Loads a single-model checkpoint (`model/`, `optimizer.safetensors`); returns its state.
pub fn load(path: &Path, vs: &mut nn::VarStore, opt: &mut AdamW) -> Result<TrainerState> {
    let state = read_state(path)?;
    load_part(path, "model", vs, opt, state.step)?;
    Ok(state)
}

/// `name` without a crash leftover's suffix: `.<base>.tmp-<pid>` and `<stem>.tmp-<pid>` (temp
/// folders and files of `llama::checkpoint::{save, replace_dir, write_atomic}`) give
/// `Temp`; `.<base>.old-<pid>` (a folder `replace_dir` had moved aside) gives `Old(base)`.
#[derive(Debug, PartialEq, Eq)]
enum Leftover {
    Temp,
    Old(String),
}

fn leftover(name: &str) -> Option<Leftover> {
    let pid_suffix = |marker: &str| -> Option<String> {
        let (head, pid) = name.rsplit_once(marker)?;
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !head.is_empty()).then(|| head.to_string())
    };
    if pid_suffix(".tmp-").is_some() {
        return Some(Leftover::Temp);
    }
    let base = pid_suffix(".old-")?.strip_prefix('.')?.to_string();
    (!base.is_empty()).then_some(Leftover::Old(base))
}

/// Tidies what an interrupted run (SIGKILL, full disk) left in `run_dir` and its `checkpoints/`,
/// whatever process made it: temp folders and files are removed; a folder `replace_dir` had moved
/// aside is put back when its replacement never arrived (it is complete), else removed. Only safe
/// while holding the run-folder lock. Returns what was removed or restored.
pub fn remove_stale_temps(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    for dir in [run_dir.to_path_buf(), run_dir.join("checkpoints")] {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<(PathBuf, Leftover)> =
            rd.flatten().filter_map(|e| leftover(&e.file_name().to_string_lossy()).map(|l| (e.path(), l))).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, kind) in entries {
            match kind {
                Leftover::Old(base) if !dir.join(&base).exists() => {
                    let dst = dir.join(&base);
                    std::fs::rename(&path, &dst).map_err(|e| TrainError::io(&dst, e))?;
                }
                _ => {
                    let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                    r.map_err(|e| TrainError::io(&path, e))?;
                }
            }
            done.push(path);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_recognised_by_name() {
        assert_eq!(leftover(".step-00000004.tmp-123"), Some(Leftover::Temp));
        assert_eq!(leftover(".final.tmp-9"), Some(Leftover::Temp));
        assert_eq!(leftover("latest.tmp-77"), Some(Leftover::Temp));
        assert_eq!(leftover("summary.tmp-77"), Some(Leftover::Temp));
        assert_eq!(leftover(".final.old-12"), Some(Leftover::Old("final".into())));
        assert_eq!(leftover(".step-00000002.old-5"), Some(Leftover::Old("step-00000002".into())));
        for keep in ["final", "step-00000004", "latest", "metrics.jsonl", ".lock", ".x.tmp-", ".x.tmp-12a", "notes.tmp-old", "a.old-3"] {
            assert_eq!(leftover(keep), None, "{keep}");
        }
    }

    #[test]
    fn stale_temps_of_any_process_are_removed_and_moved_aside_folders_restored() {
        let run = tempfile::tempdir().unwrap();
        let r = run.path();
        let ckd = r.join("checkpoints");
        for d in [ckd.join(".step-00000006.tmp-4242"), ckd.join("step-00000004"), r.join(".best.tmp-1"), r.join("final")] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("model.safetensors"), b"x").unwrap();
        }
        // A kill inside replace_dir: `best` moved aside, its replacement not yet renamed in.
        std::fs::create_dir_all(r.join(".best.old-7")).unwrap();
        std::fs::write(r.join(".best.old-7/model.safetensors"), b"complete").unwrap();
        // The same with the replacement in place: the old copy is garbage.
        std::fs::create_dir_all(r.join(".final.old-7")).unwrap();
        std::fs::write(ckd.join("latest.tmp-99"), b"step-00000006").unwrap();
        std::fs::write(r.join("metrics.tmp-3"), b"").unwrap();
        let removed = remove_stale_temps(r).unwrap();
        assert_eq!(removed.len(), 6, "{removed:?}");
        let mut left: Vec<String> = std::fs::read_dir(r).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        left.sort();
        assert_eq!(left, ["best", "checkpoints", "final"]);
        assert_eq!(std::fs::read(r.join("best/model.safetensors")).unwrap(), b"complete");
        let ck: Vec<String> = std::fs::read_dir(&ckd).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        assert_eq!(ck, ["step-00000004"]);
    }
}
