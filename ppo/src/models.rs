//! The models of a PPO run and the one forward they share.
//!
//! Four kinds of model take part (Llama 2 Section 3.2.3): the policy π_θ (trainable), the frozen
//! reference π_0, the value model (a separate scalar-head model initialised from a reward model,
//! trainable) and the frozen reward models. Policy, reference and value model all read the same
//! rows — prompt left-padded, response right-padded — so one collation serves all three:
//! `[pad.. prompt][response ..pad]`. The hidden state at position `Lp − 1 + t` is the state before
//! response token `t`: the LM head there predicts token `t`, the value head there is `V(s_t)`.
use crate::math::logprobs_of;
use llama::checkpoint as ck;
use llama::model::{positions_from_mask, Mask};
use llama::{Llama, LlamaError};
use reward::RewardModel;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};
use training::optim::LayerShards;
use training::zero3_frozen::{FrozenLayers, FrozenShards};
use training::TrainError;

/// Prompt + response rows for one forward.
pub struct SeqBatch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub mask: Mask,
    /// Length of the (left-padded) prompt block.
    pub prompt_len: i64,
    /// Response tokens `[B, T]` (int64, right-padded with 0).
    pub response: Tensor,
    /// 1.0 on real response tokens, `[B, T]` float32.
    pub response_mask: Tensor,
    /// Flat indices into `[B·T]` of the real response tokens (the LM head runs only there).
    pub response_at: Tensor,
    /// Real (non-pad) tokens in the batch.
    pub num_tokens: usize,
}

impl SeqBatch {
    pub fn new(prompts: &[&[u32]], responses: &[&[u32]], device: Device) -> SeqBatch {
        let b = prompts.len();
        let lp = prompts.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
        let t = responses.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let l = lp + t;
        let mut ids = vec![0i64; b * l];
        let mut valid = vec![false; b * l];
        let mut resp = vec![0i64; b * t];
        let mut rmask = vec![0f32; b * t];
        let mut at = Vec::new();
        let mut num_tokens = 0;
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            let off = i * l + (lp - p.len());
            for (j, &x) in p.iter().enumerate() {
                (ids[off + j], valid[off + j]) = (x as i64, true);
            }
            for (j, &x) in r.iter().enumerate() {
                (ids[i * l + lp + j], valid[i * l + lp + j]) = (x as i64, true);
                (resp[i * t + j], rmask[i * t + j]) = (x as i64, 1.0);
                at.push((i * t + j) as i64);
            }
            num_tokens += p.len() + r.len();
        }
        let (bl, bt) = ([b as i64, l as i64], [b as i64, t as i64]);
        let valid = Tensor::from_slice(&valid).view(bl).to_device(device);
        let padded = prompts.iter().any(|p| p.len() != lp) || responses.iter().any(|r| r.len() != t);
        SeqBatch {
            ids: Tensor::from_slice(&ids).view(bl).to_device(device),
            positions: positions_from_mask(&valid),
            mask: if padded { Mask::padded_causal(&valid, 0, l as i64) } else { Mask::Causal },
            prompt_len: lp as i64,
            response: Tensor::from_slice(&resp).view(bt).to_device(device),
            response_mask: Tensor::from_slice(&rmask).view(bt).to_device(device),
            response_at: Tensor::from_slice(&at).to_device(device),
            num_tokens,
        }
    }

    pub fn response_len(&self) -> i64 {
        self.response.size()[1]
    }
}

/// Hidden states `[B, T, D]` at the positions that predict each response token.
pub fn response_hidden(trunk: &Llama, b: &SeqBatch) -> Tensor {
    response_states(&trunk.forward(&b.ids, &b.positions, &b.mask, None), b)
}

/// Log-probabilities `[B, T]` of the response tokens under `model` at `temperature` (0 on
/// padding), and the temperature-scaled logits `[n, V]` (float32) of the `n` real response tokens
/// in row-major order. The logits are the sampler's `logits / T`, so their log-softmax is the
/// distribution the rollout was drawn from; the LM head runs at real tokens only.
pub fn response_logprobs_and_logits(model: &Llama, b: &SeqBatch, temperature: f64) -> (Tensor, Tensor) {
    logprobs_and_logits_of(model, &response_hidden(model, b), b, temperature)
}

/// The response states `[B, T, D]` of the trunk's final hidden states `hidden` `[B, S, D]`.
pub fn response_states(hidden: &Tensor, b: &SeqBatch) -> Tensor {
    hidden.narrow(1, b.prompt_len - 1, b.response_len())
}

/// [`response_logprobs_and_logits`] from the response states `h` (`[B, T, D]`).
pub fn logprobs_and_logits_of(model: &Llama, h: &Tensor, b: &SeqBatch, temperature: f64) -> (Tensor, Tensor) {
    let d = h.size()[2];
    let h = h.reshape([-1, d]).index_select(0, &b.response_at);
    let logits = model.lm_logits(&h) / temperature;
    let lp = logprobs_of(&logits, &b.response.reshape([-1]).index_select(0, &b.response_at));
    let shape = b.response.size();
    let full = Tensor::zeros([shape[0] * shape[1]], (Kind::Float, lp.device())).index_add(0, &b.response_at, &lp);
    (full.view([shape[0], shape[1]]), logits)
}

/// Log-probabilities `[B, T]` of the response tokens under `model` at `temperature`.
pub fn response_logprobs(model: &Llama, b: &SeqBatch, temperature: f64) -> Tensor {
    response_logprobs_and_logits(model, b, temperature).0
}

/// Per-token values `[B, T]` (float32): the scalar head applied to every state `s_t`.
pub fn response_values(value: &RewardModel, b: &SeqBatch) -> Tensor {
    value.score.forward(&response_hidden(&value.trunk, b)).squeeze_dim(-1).to_kind(Kind::Float)
}

/// Where ZeRO-3's shard-on-load puts each decoder layer of a model as it is built: the trained
/// models' fp32 optimizer shards ([`LayerShards`], as SFT and reward-model training do) or a
/// frozen model's shards in its own dtype ([`FrozenLayers`]).
pub enum LayerSink {
    Trained(LayerShards),
    Frozen(FrozenLayers),
}

/// A model's decoder layers, sharded on load ([`LayerSink`]).
enum Sharded {
    Trained(Box<LayerShards>),
    Frozen(FrozenShards),
}

/// What a model loaded with shard-on-load leaves to its caller: a trained model's shards, for
/// `AdamW::with_layer_shards` (a frozen model's shards are already its shard hooks), and the
/// bytes of layer shards a frozen model holds on this rank (0 for a trained one).
pub struct Held {
    pub trained: Option<LayerShards>,
    pub frozen_shard_bytes: i64,
}

impl LayerSink {
    fn take(&mut self, vs: &nn::VarStore, layer: usize, files: &ck::CheckpointFiles) {
        match self {
            LayerSink::Trained(s) => s.take_layer(vs, layer, Some(files)),
            LayerSink::Frozen(s) => s.take_layer(vs, layer, Some(files)),
        }
    }

    fn finish(self) -> Result<Sharded, TrainError> {
        Ok(match self {
            LayerSink::Trained(s) => Sharded::Trained(Box::new(s.finish()?)),
            LayerSink::Frozen(s) => Sharded::Frozen(s.finish()?),
        })
    }
}

/// ZeRO-3 shard-on-load of a model in the HF checkpoint `dir`: `make` builds it in a fresh
/// VarStore, calling back as each decoder layer's variables exist; `sink` then keeps this rank's
/// shard of the layer, read from the checkpoint one tensor at a time, and empties the layer; the
/// rest (embeddings, final norm, heads) is loaded whole after, those for which `optional` holds
/// may be absent (a fresh score head). `seed`, when given, seeds torch's generator before the
/// build, as the whole loads do: the same variables are made from the same draws, so the
/// weights, a fresh head and the generator's state after are those of a whole load. A rank so
/// never holds more than the weights kept whole and one decoder layer. Returns the variables, the
/// model, its shards and the variables left as initialised. Not for PEFT adapter folders.
fn load_layerwise<M>(
    dir: &Path,
    device: Device,
    kind: Kind,
    seed: Option<u64>,
    mut sink: LayerSink,
    make: impl FnOnce(&nn::Path, &llama::Config, &mut dyn FnMut(usize)) -> M,
    optional: impl Fn(&str) -> bool,
) -> Result<(nn::VarStore, M, Sharded, Vec<String>), TrainError> {
    let cfg = ck::load_config(dir)?;
    let files = ck::CheckpointFiles::open(dir)?;
    if let Some(seed) = seed {
        tch::manual_seed(seed as i64);
    }
    let mut vs = ck::var_store(device, kind);
    let model = make(&vs.root(), &cfg, &mut |i| sink.take(&vs, i, &files));
    let sharded = sink.finish()?;
    let left = ck::load_var_store_except(&mut vs, dir, optional, |n| training::optim::layer_of(n).is_some())?;
    Ok((vs, model, sharded, left))
}

/// A frozen model's shards become its shard hooks (and its variables stop requiring gradients);
/// a trained model's are held for its optimizer.
fn hold(sharded: Sharded, vs: &mut nn::VarStore, trunk: &mut Llama) -> Held {
    match sharded {
        Sharded::Trained(s) => Held { trained: Some(*s), frozen_shard_bytes: 0 },
        Sharded::Frozen(s) => {
            vs.freeze();
            let shard_bytes = s.shard_bytes();
            trunk.set_shard_hooks(Box::new(s));
            Held { trained: None, frozen_shard_bytes: shard_bytes }
        }
    }
}

/// A trainable causal LM with its variables.
pub struct Policy {
    pub vs: nn::VarStore,
    pub model: Llama,
}

impl Policy {
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Policy, LlamaError> {
        let (vs, model) = ck::load_causal_lm(dir, device, kind)?;
        Ok(Policy { vs, model })
    }

    /// Loads a model that never trains (the reference): no variable requires a gradient.
    pub fn load_frozen(dir: &Path, device: Device, kind: Kind) -> Result<Policy, LlamaError> {
        let mut p = Policy::load(dir, device, kind)?;
        p.vs.freeze();
        Ok(p)
    }

    /// [`Policy::load`] (with a [`LayerSink::Frozen`] sink, [`Policy::load_frozen`]) under ZeRO-3,
    /// sharding each decoder layer as it is read ([`load_layerwise`]). Frozen shards are handed
    /// to the model; trained shards are returned for the optimizer.
    pub fn load_sharded(dir: &Path, device: Device, kind: Kind, sink: LayerSink) -> Result<(Policy, Held), TrainError> {
        let (mut vs, mut model, sharded, _) = load_layerwise(dir, device, kind, None, sink, Llama::new_with, |_| false)?;
        let held = hold(sharded, &mut vs, &mut model);
        Ok((Policy { vs, model }, held))
    }
}

/// A scalar-head model (reward or value) with its variables.
pub struct ScalarModel {
    pub vs: nn::VarStore,
    pub model: RewardModel,
}

impl ScalarModel {
    /// Loads a reward model; a causal-LM checkpoint gets a fresh N(0, 0.02) score head (seeded).
    pub fn load(dir: &Path, device: Device, kind: Kind, seed: u64) -> Result<(ScalarModel, bool), LlamaError> {
        let (vs, model, fresh) = RewardModel::load(dir, device, kind, seed)?;
        Ok((ScalarModel { vs, model }, fresh))
    }

    pub fn load_frozen(dir: &Path, device: Device, kind: Kind, seed: u64) -> Result<(ScalarModel, bool), LlamaError> {
        let (mut m, fresh) = ScalarModel::load(dir, device, kind, seed)?;
        m.vs.freeze();
        Ok((m, fresh))
    }

    /// [`ScalarModel::load`] (frozen with a [`LayerSink::Frozen`] sink) under ZeRO-3, sharding
    /// each decoder layer as it is read ([`load_layerwise`]); the same seeded draws, so a fresh
    /// score head is the same. Also returns whether the head is fresh.
    pub fn load_sharded(
        dir: &Path,
        device: Device,
        kind: Kind,
        seed: u64,
        sink: LayerSink,
    ) -> Result<(ScalarModel, bool, Held), TrainError> {
        let (mut vs, mut model, sharded, left) =
            load_layerwise(dir, device, kind, Some(seed), sink, RewardModel::new_with, |n| n == "score.weight")?;
        let held = hold(sharded, &mut vs, &mut model.trunk);
        Ok((ScalarModel { vs, model }, !left.is_empty(), held))
    }
}
