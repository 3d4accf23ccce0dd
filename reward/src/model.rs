//! The reward model: the Llama trunk plus a scalar regression head `score` (`[1, hidden]`, no
//! bias), read at the last token of prompt + response — the HF `LlamaForSequenceClassification`
//! layout with `num_labels = 1`, so `transformers` loads what we save and computes the same
//! scores. No LM head exists here: reward training and scoring never compute vocabulary logits.
use llama::checkpoint::{self as ck, SaveOptions};
use llama::model::{Linear, Mask};
use llama::{Config, Llama, LlamaError};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

pub const ARCHITECTURE: &str = "LlamaForSequenceClassification";

pub struct RewardModel {
    pub trunk: Llama,
    pub score: Linear,
}

impl RewardModel {
    pub fn new(root: &nn::Path, cfg: &Config) -> Self {
        RewardModel { trunk: Llama::trunk(root, cfg), score: Linear::new(root / "score", cfg.hidden_size, 1) }
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
