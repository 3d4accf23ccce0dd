//! The reward model: the Llama trunk plus a scalar regression head `score` (`[1, hidden]`, no
//! bias), read at the last token of prompt + response — the HF `LlamaForSequenceClassification`
//! layout with `num_labels = 1`, so `transformers` loads what we save and computes the same
//! scores. No LM head exists here: reward training and scoring never compute vocabulary logits.
use llama::checkpoint::{self as ck, SaveOptions};
use llama::model::{Linear, Mask};
use llama::{Config, Llama, LlamaError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

pub const ARCHITECTURE: &str = "LlamaForSequenceClassification";

/// The file beside `config.json` that records how a reward model was trained. A file of its own
/// keeps `config.json` exactly the HF config that `transformers` reads.
pub const TRAINING_RECORD: &str = "reward_config.json";

/// How a reward model was trained, as far as scoring it the same way needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The longest prompt + response of training (longer pairs lost their start): scoring with
    /// another length scores other token sequences.
    pub max_seq_len: usize,
}

/// Writes [`TRAINING_RECORD`] into `run_dir` and returns its path, to be copied into every
/// checkpoint (`final/`, `best/`, `checkpoints/*`) with the tokenizer files.
pub fn write_training_record(run_dir: &Path, max_seq_len: usize) -> Result<PathBuf, LlamaError> {
    std::fs::create_dir_all(run_dir).map_err(|e| LlamaError::Io { path: run_dir.into(), source: e })?;
    let path = run_dir.join(TRAINING_RECORD);
    let json = serde_json::to_string_pretty(&TrainingRecord { max_seq_len }).expect("record serialises");
    ck::write_atomic(&path, json.as_bytes())?;
    Ok(path)
}

/// The `max_seq_len` the reward model in `dir` was trained with, from its [`TRAINING_RECORD`];
/// `None` when the model has no record (trained elsewhere, or before the record existed). An
/// unreadable record is warned about and also gives `None`.
pub fn trained_max_seq_len(dir: &Path) -> Option<usize> {
    let path = dir.join(TRAINING_RECORD);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("{}: unreadable ({e}); the training max_seq_len is unknown", path.display());
            return None;
        }
    };
    match serde_json::from_str::<TrainingRecord>(&text) {
        Ok(r) => Some(r.max_seq_len),
        Err(e) => {
            tracing::warn!("{}: invalid ({e}); the training max_seq_len is unknown", path.display());
            None
        }
    }
}

pub struct RewardModel {
    pub trunk: Llama,
    pub score: Linear,
}

impl RewardModel {
    pub fn new(root: &nn::Path, cfg: &Config) -> Self {
        Self::new_with(root, cfg, &mut |_| {})
    }

    /// [`RewardModel::new`] calling `built(i)` as each decoder layer is made
    /// ([`Llama::new_with`]; ZeRO-3 shard-on-load).
    pub fn new_with(root: &nn::Path, cfg: &Config, built: &mut dyn FnMut(usize)) -> Self {
        RewardModel { trunk: Llama::trunk_with(root, cfg, built), score: Linear::new(root / "score", cfg.hidden_size, 1) }
    }

    /// Loads a checkpoint: a reward model, or a causal LM (SFT or chat model, Llama 2 initialises
    /// its RMs from them) whose `lm_head` is ignored and whose `score` head starts at N(0, 0.02).
    pub fn load(dir: &Path, device: Device, kind: Kind, seed: u64) -> Result<(nn::VarStore, RewardModel, bool), LlamaError> {
        let cfg = ck::load_config(dir)?;
        tch::manual_seed(seed as i64);
        let mut vs = ck::var_store(device, kind);
        let rm = RewardModel::new(&vs.root(), &cfg);
        let fresh = ck::load_var_store_with(&mut vs, dir, |n| n == "score.weight")?;
        Ok((vs, rm, !fresh.is_empty()))
    }

    pub fn save(vs: &nn::VarStore, cfg: &Config, dir: &Path, dtype: Kind, extra_files: &[std::path::PathBuf]) -> Result<(), LlamaError> {
        // HF reads the score at the last token that is not `pad_token_id`; <unk> (0) never occurs in text.
        let mut cfg = cfg.clone();
        cfg.pad_token_id.get_or_insert(0);
        let opts = SaveOptions { architecture: ARCHITECTURE.into(), dtype, extra_files: extra_files.to_vec(), ..Default::default() };
        ck::save(vs, &cfg, dir, &opts)
    }

    /// Scores `[B, R]` at the row-local positions `read` `[B, R]` of a forward over `ids`. The
    /// trunk's last layer runs only at the read positions ([`Llama::forward_at`]).
    pub fn scores_at(&self, ids: &Tensor, positions: &Tensor, mask: &Mask, read: &Tensor) -> Tensor {
        let h = self.trunk.forward_at(ids, positions, mask, read);
        self.score.forward(&h).squeeze_dim(-1).to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_max_seq_len_is_recorded_beside_the_model() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("final");
        assert_eq!(trained_max_seq_len(&dir), None, "no record: unknown");
        let path = write_training_record(&dir, 512).unwrap();
        assert_eq!(path, dir.join(TRAINING_RECORD));
        assert_eq!(trained_max_seq_len(&dir), Some(512));
        std::fs::write(&path, "{\"max_seq_len\": \"long\"}").unwrap();
        assert_eq!(trained_max_seq_len(&dir), None, "an invalid record is warned about, not trusted");
    }
}
