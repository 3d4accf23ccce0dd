//! AdamW over plain tensors, with the Llama 2 settings as defaults (β = (0.9, 0.95), eps 1e-5,
//! weight decay 0.1 not applied to norms), global-norm gradient clipping, and mixed precision:
//! when the model computes in bf16 the optimizer keeps fp32 master weights and moments and
//! copies the updated masters back into the model after each step.
//!
//! The update is torch.optim.AdamW's (decoupled decay, bias-corrected moments):
//! `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
//! `p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)`.
//! Every piece of state is a named tensor, so a checkpoint holds it exactly.
//!
//! In a distributed run (torchrun) [`AdamW::clip_grad_norm`] first sums the gradients over the
//! ranks; with ZeRO (`zero_stage` 1 or 2) each rank keeps and updates only its shard of the fp32
//! state ([`crate::zero`]) and the updated weights are all-gathered.
use crate::error::{Result, TrainError};
use crate::zero::{Piece, ZeroLayout};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// Llama 2 Section 2.2 / 3.1: AdamW(0.9, 0.95), eps 1e-5, weight decay 0.1.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay: 0.1 }
    }
}

struct Param {
    name: String,
    var: Tensor,
    /// The variable's shape (under ZeRO-3 a decoder layer's variable is empty between uses).
    shape: Vec<i64>,
    decay: bool,
    /// Per-parameter state; `None` when a ZeRO shard holds it.
    local: Option<Local>,
    /// The gradient summed in fp32 over the step's micro-batches, for a parameter not in fp32
    /// ([`AdamW::accumulate`]); `None` until the first micro-batch of a step.
    acc: Option<Tensor>,
}

impl Param {
    /// The step's gradient: the fp32 sum when there is one, else the variable's own.
    fn grad(&self) -> Tensor {
        match &self.acc {
            Some(a) => a.shallow_clone(),
            None => self.var.grad(),
        }
    }
}

/// How [`AdamW`] keeps its state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateOptions {
    /// 0: replicated; 1, 2: sharded over the ranks of a distributed run (ZeRO).
    pub zero_stage: u8,
    /// Elements per ZeRO collective.
    pub bucket: i64,
    /// Keep the fp32 masters and moments on this device (`Some(Cpu)`: optimizer offload) and
    /// update them there; the model's weights get the updated values copied back.
    pub offload: Option<Device>,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions { zero_stage: 0, bucket: crate::zero::DEFAULT_BUCKET, offload: None }
    }
}

/// ZeRO-3 shard-on-load: the decoder layers' weights as this rank's fp32 shard only, cut one
/// layer at a time while the model is built ([`llama::Llama::new_with`] calls
/// [`LayerShards::take_layer`] as each layer's variables are made), their variables then left
/// empty; [`AdamW::with_layer_shards`] takes it as the masters. A rank so never holds more than
/// the weights kept whole (embeddings, heads, final norm) and one decoder layer.
pub struct LayerShards {
    options: StateOptions,
    world: i64,
    rank: i64,
    /// Where the fp32 state lives.
    device: Device,
    /// Every sharded parameter's full shape.
    shapes: std::collections::HashMap<String, Vec<i64>>,
    /// Each layer's part of this rank's shard ([`crate::zero::group_shard`]).
    parts: std::collections::BTreeMap<usize, Tensor>,
    /// The first failure (a layer's tensor missing from the checkpoint, ...); later layers are
    /// only emptied.
    error: Option<TrainError>,
}

impl LayerShards {
    /// For an optimizer with options `o` of a model on `device`: `Some` when the weights will be
    /// sharded (ZeRO-3 in a distributed run of more than one rank), else `None` (build whole).
    pub fn for_options(o: StateOptions, device: Device) -> Option<LayerShards> {
        let d = distributed::get().filter(|d| d.world_size > 1)?;
        (o.zero_stage == 3).then(|| LayerShards {
            options: o,
            world: d.world_size,
            rank: d.rank,
            device: o.offload.unwrap_or(device),
            shapes: Default::default(),
            parts: Default::default(),
            error: None,
        })
    }

    /// Called as soon as decoder layer `layer` is built in `vs`: keeps this rank's part of its
    /// weights, read from `files` one tensor at a time (a checkpoint; each must be there with the
    /// variable's shape) or, without files, the variables' fresh initialisation; then empties
    /// the layer's variables. The masters are the weights in the model's dtype, as fp32: what
    /// building the whole model, loading it and sharding it gives.
    pub fn take_layer(&mut self, vs: &nn::VarStore, layer: usize, files: Option<&llama::checkpoint::CheckpointFiles>) {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| layer_of(n) == Some(layer)).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if self.error.is_none() {
            let sizes: Vec<i64> = vars.iter().map(|(_, v)| v.numel() as i64).collect();
            let (world, rank, bucket) = (self.world, self.rank, self.options.bucket);
            let part = crate::zero::group_shard(&sizes, world, rank, bucket, self.device, |i| -> Result<Tensor> {
                let (name, var) = &vars[i];
                let w = match files {
                    Some(f) => f.tensor_for(name, &var.size(), var.kind())?,
                    None => var.shallow_clone(),
                };
                Ok(tch::no_grad(|| w.to_kind(Kind::Float)))
            });
            match part {
                Ok(part) => {
                    self.parts.insert(layer, part);
                    self.shapes.extend(vars.iter().map(|(n, v)| (n.clone(), v.size())));
                }
                Err(e) => self.error = Some(e),
            }
        }
        tch::no_grad(|| {
            for (_, var) in &vars {
                var.shallow_clone().set_data(&Tensor::empty([0], (var.kind(), var.device())));
            }
        });
    }

    /// Whether `name` is a weight held here as a shard (its variable is empty).
    pub fn holds(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// The shards, or the first failure of [`LayerShards::take_layer`].
    pub fn finish(mut self) -> Result<LayerShards> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

struct Local {
    /// fp32 master copy when the model variable is not fp32.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

/// ZeRO-1/2: this rank's shard of the fp32 masters and moments ([`crate::zero`]).
struct Sharded {
    dist: &'static distributed::Dist,
    stage: u8,
    layout: ZeroLayout,
    pieces: Vec<Piece>,
    master: Tensor,
    m: Tensor,
    v: Tensor,
    /// The summed gradient of this shard (filled by the reduction).
    grad: Tensor,
    /// Which parameters had a gradient in this step (the others are not updated).
    has_grad: Vec<bool>,
    /// ZeRO-3: the decoder layers' weights, gathered and freed around their use.
    zero3: Option<Zero3>,
}

/// The decoder layer a parameter belongs to (`...layers.{i}....`), if any.
pub fn layer_of(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// The groups of the ZeRO layout of parameters `names` (sorted): their ends and each one's
/// decoder layer. One group at stages 1 and 2; at stage 3 each run of parameters of one decoder
/// layer is a group (gathered and reduced together), and the runs between are groups of
/// parameters kept whole on every rank (embeddings, final norm, LM or scalar head).
pub fn groups_of(names: &[&str], zero_stage: u8) -> (Vec<usize>, Vec<Option<usize>>) {
    if zero_stage < 3 || names.is_empty() {
        return (vec![names.len()], vec![None]);
    }
    let (mut ends, mut keys) = (Vec::new(), vec![layer_of(names[0])]);
    for (i, n) in names.iter().enumerate().skip(1) {
        let k = layer_of(n);
        if k != *keys.last().expect("one key per group") {
            ends.push(i);
            keys.push(k);
        }
    }
    ends.push(names.len());
    (ends, keys)
}

/// ZeRO-3 (the ZeRO paper's stage 3, PyTorch FSDP's full sharding): each rank keeps the fp32
/// masters, moments and gradient of its shard only, and every decoder layer's weights are
/// all-gathered from the ranks' shards (cast to the model's dtype) just before the layer runs,
/// and freed after; its gradients are reduce-scattered into the ranks' fp32 gradient shards as
/// soon as its backward is done ([`llama::Llama::backward_checkpointed`]), and freed. Parameters
/// outside the layers stay whole on every rank and are reduced and gathered as in ZeRO-2.
/// The tensors here share storage with [`Sharded`]'s (shallow clones): the updates are seen.
struct Zero3 {
    dist: &'static distributed::Dist,
    layout: ZeroLayout,
    /// The layout group of each decoder layer.
    layer_group: Vec<usize>,
    /// Each group's parameters (`params[range]`).
    group_params: Vec<std::ops::Range<usize>>,
    /// Every parameter's variable (shared with the model) and shape.
    vars: Vec<(Tensor, Vec<i64>)>,
    master: Tensor,
    grad: Tensor,
    kind: Kind,
    /// The model's device (the fp32 state may be offloaded elsewhere).
    device: Device,
    /// Layer backward passes reduced since the last update (shared by every handle).
    reduced: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Zero3 {
    fn new(dist: &'static distributed::Dist, layout: &ZeroLayout, params: &[Param], master: &Tensor, grad: &Tensor) -> Zero3 {
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        let (ends, keys) = groups_of(&names, 3);
        let mut group_params = Vec::new();
        let mut start = 0;
        for &e in &ends {
            group_params.push(start..e);
            start = e;
        }
        let layers = keys.iter().flatten().max().map_or(0, |m| m + 1);
        let mut layer_group = vec![usize::MAX; layers];
        for (g, k) in keys.iter().enumerate() {
            if let Some(l) = k {
                layer_group[*l] = g;
            }
        }
        Zero3 {
            dist,
            layout: layout.clone(),
            layer_group,
            group_params,
            vars: params.iter().map(|p| (p.var.shallow_clone(), p.shape.clone())).collect(),
            master: master.shallow_clone(),
            grad: grad.shallow_clone(),
            kind: params.first().map_or(Kind::Float, |p| p.var.kind()),
            device: params.first().map_or(Device::Cpu, |p| p.var.device()),
            reduced: Default::default(),
        }
    }

    /// Another handle on the same state (for the model).
    fn handle(&self) -> Zero3 {
        Zero3 {
            dist: self.dist,
            layout: self.layout.clone(),
            layer_group: self.layer_group.clone(),
            group_params: self.group_params.clone(),
            vars: self.vars.iter().map(|(v, s)| (v.shallow_clone(), s.clone())).collect(),
            master: self.master.shallow_clone(),
            grad: self.grad.shallow_clone(),
            kind: self.kind,
            device: self.device,
            reduced: self.reduced.clone(),
        }
    }

    /// Whether parameter `i` lives in a decoder layer (sharded between uses).
    fn is_layer_param(&self, i: usize) -> bool {
        self.layer_group.iter().any(|&g| self.group_params[g].contains(&i))
    }

    fn group(&self, layer: usize) -> usize {
        *self.layer_group.get(layer).unwrap_or_else(|| panic!("ZeRO-3: the model has a layer {layer} the optimizer does not"))
    }

    fn fail(&self, what: &str, e: distributed::DistError) -> ! {
        panic!("ZeRO-3 {what} failed on rank {}: {e}", self.dist.rank)
    }
}

impl Sharded {
    /// The buckets of parameters every rank keeps whole: all of them below ZeRO-3.
    fn whole_buckets(&self) -> Vec<crate::zero::Bucket> {
        match &self.zero3 {
            None => self.layout.buckets.clone(),
            Some(z) => self
                .layout
                .group_buckets
                .iter()
                .enumerate()
                .filter(|(g, _)| !z.layer_group.contains(g))
                .flat_map(|(_, r)| self.layout.buckets[r.clone()].to_vec())
                .collect(),
        }
    }

    /// ZeRO-3: a new step's gradient shard starts at zero (layer backward passes add to it).
    fn clear_zero3_grad(&mut self) {
        if let Some(z) = &self.zero3 {
            let _ = tch::no_grad(|| self.grad.zero_());
            z.reduced.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl llama::model::ShardHooks for Zero3 {
    fn gather(&self, layer: usize) {
        let g = self.group(layer);
        let buckets = &self.layout.buckets[self.layout.group_buckets[g].clone()];
        let (Some(first), Some(_)) = (buckets.first(), buckets.last()) else { return };
        let w = self.dist.world_size;
        let len: i64 = buckets.iter().map(|b| b.padded).sum();
        tch::no_grad(|| {
            // Only a group's last bucket is padded, so its parameters lie end to end in `flat`.
            let flat = Tensor::empty([len], (self.kind, self.device));
            for b in buckets {
                let part = b.padded / w;
                let outs: Vec<Tensor> = (0..w).map(|r| flat.narrow(0, b.start - first.start + r * part, part)).collect();
                let mine = self.master.narrow(0, b.shard_off, part).to_device(self.device).to_kind(self.kind).contiguous();
                if let Err(e) = self.dist.all_gather(&outs, &mine) {
                    self.fail("all-gather", e);
                }
            }
            let offsets = self.layout.offsets();
            for i in self.group_params[g].clone() {
                let (var, shape) = &self.vars[i];
                let n: i64 = shape.iter().product();
                var.shallow_clone().set_data(&flat.narrow(0, offsets[i] - first.start, n).view(shape.as_slice()));
            }
        });
    }

    fn release(&self, layer: usize) {
        let g = self.group(layer);
        for i in self.group_params[g].clone() {
            let var = &self.vars[i].0;
            let _ = distributed::kernels::release_grad(var);
            var.shallow_clone().set_data(&Tensor::empty([0], (self.kind, self.device)));
        }
    }

    fn reduce(&self, layer: usize) {
        let g = self.group(layer);
        let w = self.dist.world_size;
        let device = self.device;
        tch::no_grad(|| {
            for b in &self.layout.buckets[self.layout.group_buckets[g].clone()] {
                let flat = Tensor::zeros([b.padded], (Kind::Float, device));
                for (param, param_off, off, len) in self.layout.overlapping(b.start, b.start + b.len) {
                    let gr = self.vars[param].0.grad();
                    if gr.defined() {
                        flat.narrow(0, off, len).copy_(&gr.reshape([-1]).narrow(0, param_off, len));
                    }
                }
                let part = b.padded / w;
                let inputs: Vec<Tensor> = (0..w).map(|r| flat.narrow(0, r * part, part)).collect();
                let tmp = Tensor::zeros([part], (Kind::Float, device));
                if let Err(e) = self.dist.reduce_scatter(&tmp, &inputs) {
                    self.fail("reduce-scatter", e);
                }
                let _ = self.grad.narrow(0, b.shard_off, part).g_add_(&tmp.to_device(self.grad.device()));
            }
        });
        for i in self.group_params[g].clone() {
            let _ = distributed::kernels::release_grad(&self.vars[i].0);
        }
        self.reduced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    params: Vec<Param>,
    /// Number of updates applied so far.
    pub step: u64,
    sharded: Option<Sharded>,
    /// Sum gradients over the ranks of a distributed run before clipping (data parallelism).
    dist: Option<&'static distributed::Dist>,
    /// A backward may have left gradients since the last [`AdamW::flush`] (it is a no-op otherwise:
    /// clipping and the update both flush).
    unflushed: bool,
    /// Where the fp32 gradient sums of a step with several micro-batches live: host memory with
    /// an offloaded optimizer in one process (they are the optimizer's input there), else beside
    /// the weights.
    sums_on: Option<Device>,
}

/// Weight decay applies to matrices, not to norm gains (or any 1-D tensor).
pub fn decays(name: &str, t: &Tensor) -> bool {
    decays_shape(name, &t.size())
}

fn decays_shape(name: &str, shape: &[i64]) -> bool {
    shape.len() >= 2 && !name.contains("norm")
}

fn dist_err(e: distributed::DistError) -> TrainError {
    TrainError::Distributed(e.to_string())
}

/// torch.optim.AdamW's update of `w` (in place) from gradient `g`, with bias corrections
/// `bc1 = 1−β1ᵗ` and `bc2_sqrt = √(1−β2ᵗ)`. Element-wise only, so a shard's update equals the
/// same elements' update of the whole tensor, bit for bit.
#[allow(clippy::too_many_arguments)]
fn adamw_update(
    cfg: &AdamWConfig,
    w: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    decay: bool,
    lr: f64,
    bc1: f64,
    bc2_sqrt: f64,
) {
    let AdamWConfig { beta1, beta2, eps, weight_decay } = *cfg;
    if decay && weight_decay != 0.0 {
        let _ = w.g_mul_scalar_(1.0 - lr * weight_decay);
    }
    // In place, one temporary per tensor: this loop streams every parameter, so its memory
    // traffic is what costs on a CPU.
    let _ = m.lerp_(g, 1.0 - beta1);
    let _ = v.g_mul_scalar_(beta2);
    let mut g2 = g.square();
    let _ = g2.g_mul_scalar_(1.0 - beta2);
    let _ = v.g_add_(&g2);
    // denom = -(√v/√(1−β2ᵗ) + eps)·(1−β1ᵗ)/lr, so w + m/denom is the AdamW step.
    let mut denom = v.sqrt();
    let _ = denom.g_div_scalar_(bc2_sqrt);
    let _ = denom.g_add_scalar_(eps);
    let _ = denom.g_mul_scalar_(-bc1 / lr);
    let _ = w.addcdiv_(m, &denom);
}

impl AdamW {
    /// Optimizes every trainable variable of `vs` whose name passes `filter`. In a distributed
    /// run (torchrun) the gradients are summed over the ranks before clipping; the state is
    /// replicated on every rank (ZeRO stage 0).
    pub fn new(vs: &nn::VarStore, cfg: AdamWConfig, filter: impl Fn(&str) -> bool) -> Self {
        Self::with_options(vs, cfg, filter, StateOptions::default()).expect("replicated state has no collective to fail")
    }

    /// As [`AdamW::new`], with the fp32 masters and moments sharded over the ranks of a
    /// distributed run when `zero_stage` is 1 or 2 (in one process the stage changes nothing),
    /// and/or offloaded to another device.
    pub fn with_options(vs: &nn::VarStore, cfg: AdamWConfig, filter: impl Fn(&str) -> bool, o: StateOptions) -> Result<Self> {
        Self::build(vs, cfg, &filter, o, None)
    }

    /// ZeRO-3 with the decoder layers already sharded while the model was built
    /// ([`LayerShards`]): their variables in `vs` are empty and each rank's fp32 masters of them
    /// come from `shards`, so no rank ever holds the whole model. The state equals
    /// [`AdamW::with_options`]'s over the same weights whole, bit for bit.
    pub fn with_layer_shards(vs: &nn::VarStore, cfg: AdamWConfig, shards: LayerShards) -> Result<Self> {
        let o = shards.options;
        Self::build(vs, cfg, &|_| true, o, Some(shards))
    }

    fn build(
        vs: &nn::VarStore,
        cfg: AdamWConfig,
        filter: &dyn Fn(&str) -> bool,
        o: StateOptions,
        shards: Option<LayerShards>,
    ) -> Result<Self> {
        let StateOptions { zero_stage, bucket, offload } = o;
        if zero_stage > 3 {
            return Err(TrainError::Config(format!("zero_stage must be 0, 1, 2 or 3, got {zero_stage}")));
        }
        let dist = distributed::get().filter(|d| d.world_size > 1);
        let shard = zero_stage > 0 && dist.is_some();
        // Frozen variables (`VarStore::freeze`) do not require gradients.
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, t)| filter(n) && t.requires_grad()).collect();
        if zero_stage == 3 && shard && vars.len() != vs.variables().len() {
            return Err(TrainError::Config(
                "zero_stage 3 shards every weight of the model; frozen weights (LoRA's base, a partly trained model) are not supported: use zero_stage 2".into(),
            ));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(sh) = &shards {
            let (world, rank) = dist.map_or((1, 0), |d| (d.world_size, d.rank));
            if zero_stage != 3 || !shard || (sh.world, sh.rank) != (world, rank) {
                return Err(TrainError::Config(format!(
                    "layer shards of rank {} of {} given to an optimizer at ZeRO stage {zero_stage} on rank {rank} of {world}",
                    sh.rank, sh.world
                )));
            }
            let names: std::collections::HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
            let stray: Vec<&String> = sh.shapes.keys().filter(|n| !names.contains(n.as_str())).collect();
            let unsharded: Vec<&str> = names.iter().copied().filter(|n| layer_of(n).is_some() && !sh.shapes.contains_key(*n)).collect();
            if !stray.is_empty() || !unsharded.is_empty() {
                return Err(TrainError::Config(format!(
                    "layer shards do not match the model: sharded but not trained {stray:?}, decoder-layer weights not sharded {unsharded:?}"
                )));
            }
        }
        let params: Vec<Param> = tch::no_grad(|| {
            vars.into_iter()
                .map(|(name, var)| {
                    // Offloaded state always has its own master, on the state's device.
                    let at = offload.unwrap_or(var.device());
                    let local = (!shard).then(|| Local {
                        master: (var.kind() != Kind::Float || offload.is_some()).then(|| var.to_kind(Kind::Float).to_device(at).detach()),
                        m: Tensor::zeros(var.size(), (Kind::Float, at)),
                        v: Tensor::zeros(var.size(), (Kind::Float, at)),
                    });
                    // A layer sharded on load has an empty variable: its shape is the recorded one.
                    let shape = shards.as_ref().and_then(|s| s.shapes.get(&name).cloned()).unwrap_or_else(|| var.size());
                    let decay = decays_shape(&name, &shape);
                    Param { name, var, shape, decay, local, acc: None }
                })
                .collect()
        });
        let sharded = match dist {
            Some(d) if shard => {
                let sizes: Vec<i64> = params.iter().map(|p| p.shape.iter().product()).collect();
                let (ends, keys) = groups_of(&params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), zero_stage);
                let layout = ZeroLayout::grouped(&sizes, &ends, d.world_size, d.rank, bucket);
                let pieces = layout.pieces();
                let device = offload.or(params.first().map(|p| p.var.device())).unwrap_or(Device::Cpu);
                let zeros = || Tensor::zeros([layout.shard_len], (Kind::Float, device));
                let master = zeros();
                tch::no_grad(|| -> Result<()> {
                    let presharded = |i: usize| shards.as_ref().is_some_and(|s| s.shapes.contains_key(&params[i].name));
                    for pc in pieces.iter().filter(|pc| !presharded(pc.param)) {
                        let src = params[pc.param].var.reshape([-1]).narrow(0, pc.param_off, pc.len);
                        master.narrow(0, pc.shard_off, pc.len).copy_(&src);
                    }
                    // Shard-on-load: each layer's part, already cut, into its place.
                    let Some(sh) = &shards else { return Ok(()) };
                    for (g, key) in keys.iter().enumerate() {
                        let Some(layer) = key else { continue };
                        let bs = &layout.buckets[layout.group_buckets[g].clone()];
                        let (Some(first), len) = (bs.first(), bs.iter().map(|b| b.padded / d.world_size).sum::<i64>()) else { continue };
                        match sh.parts.get(layer) {
                            Some(part) if part.size() == [len] => master.narrow(0, first.shard_off, len).copy_(part),
                            other => {
                                return Err(TrainError::Config(format!(
                                    "layer {layer}'s shard has {:?} elements, the layout {len}",
                                    other.map(|p| p.size())
                                )))
                            }
                        }
                    }
                    Ok(())
                })?;
                let has_grad = vec![false; params.len()];
                let grad = zeros();
                let zero3 = (zero_stage == 3).then(|| Zero3::new(d, &layout, &params, &master, &grad));
                Some(Sharded { dist: d, stage: zero_stage, pieces, master, m: zeros(), v: zeros(), grad, has_grad, layout, zero3 })
            }
            _ => None,
        };
        let sums_on = if dist.is_none() { offload } else { None };
        let opt = AdamW { cfg, params, step: 0, sharded, dist, unflushed: true, sums_on };
        // ZeRO-3: from here on each rank holds its shard of the decoder layers only.
        opt.release_weights();
        Ok(opt)
    }

    pub fn num_parameters(&self) -> i64 {
        self.params.iter().map(|p| p.shape.iter().product::<i64>()).sum()
    }

    /// ZeRO-3: the hooks that gather, free and reduce the decoder layers' weights, for
    /// [`llama::Llama::set_shard_hooks`] (`None` at other stages and in one process).
    pub fn shard_hooks(&self) -> Option<Box<dyn llama::model::ShardHooks>> {
        let z = self.sharded.as_ref()?.zero3.as_ref()?;
        Some(Box::new(z.handle()))
    }

    /// Whether the decoder layers' weights are sharded (ZeRO-3 over several ranks).
    pub fn is_zero3(&self) -> bool {
        self.sharded.as_ref().is_some_and(|s| s.zero3.is_some())
    }

    /// Whether `name` is a weight this rank holds only its shard of (ZeRO-3: a decoder layer's);
    /// its variable is empty between uses.
    pub fn is_sharded_weight(&self, name: &str) -> bool {
        self.is_zero3() && layer_of(name).is_some()
    }

    /// Every variable of `vs` named in `order`, one at a time as `f(name, weights)`, for a
    /// streamed save (`order`: [`llama::checkpoint::write_order`]). Under ZeRO-3 this is a
    /// collective (every rank calls it with the same order): each decoder layer is gathered
    /// when its first tensor comes and freed after its last, so no rank holds more than one
    /// layer whole beside the weights kept whole. After `f` fails the remaining layers are
    /// still gathered (the other ranks are waiting for them); the first error is returned.
    pub fn stream_weights(&self, vs: &nn::VarStore, order: &[String], mut f: impl FnMut(&str, &Tensor) -> Result<()>) -> Result<()> {
        let vars = vs.variables();
        let z = self.sharded.as_ref().and_then(|s| s.zero3.as_ref());
        let (mut held, mut first_err) = (None, None);
        for name in order {
            let var = vars.get(name).ok_or_else(|| TrainError::Config(format!("streamed save: the model has no variable {name}")))?;
            if let Some(z) = z {
                let layer = layer_of(name);
                if let Some(next) = layer.filter(|_| layer != held) {
                    if let Some(l) = held.take() {
                        llama::model::ShardHooks::release(z, l);
                    }
                    llama::model::ShardHooks::gather(z, next);
                    held = layer;
                }
            }
            if first_err.is_none() {
                first_err = f(name, var).err();
            }
        }
        if let (Some(z), Some(l)) = (z, held) {
            llama::model::ShardHooks::release(z, l);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// ZeRO-3: every decoder layer's full weights gathered into the model (a collective: every
    /// rank calls it), to save or evaluate the whole model; [`AdamW::release_weights`] frees them.
    /// (Saving streams one layer at a time instead: [`AdamW::stream_weights`].)
    pub fn gather_weights(&self) {
        if let Some(z) = self.sharded.as_ref().and_then(|s| s.zero3.as_ref()) {
            for g in 0..z.layer_group.len() {
                llama::model::ShardHooks::gather(z, g);
            }
        }
    }

    /// ZeRO-3: every decoder layer's variables at full size, zero-filled, on this rank alone
    /// (no collective): a checkpoint's weights are then loaded into them.
    pub fn allocate_weights(&self) {
        if let Some(z) = self.sharded.as_ref().and_then(|s| s.zero3.as_ref()) {
            tch::no_grad(|| {
                for (var, shape) in &z.vars {
                    let mut v = var.shallow_clone();
                    if v.size() != *shape {
                        v.set_data(&Tensor::zeros(shape.as_slice(), (var.kind(), var.device())));
                    }
                }
            });
        }
    }

    /// ZeRO-3: frees every decoder layer's full weights (each rank keeps its shard).
    pub fn release_weights(&self) {
        if let Some(z) = self.sharded.as_ref().and_then(|s| s.zero3.as_ref()) {
            for g in 0..z.layer_group.len() {
                llama::model::ShardHooks::release(z, g);
            }
        }
    }

    /// The ZeRO stage in effect (0 when the state is replicated, or in one process).
    pub fn zero_stage(&self) -> u8 {
        self.sharded.as_ref().map_or(0, |s| s.stage)
    }

    /// Bytes of optimizer state (fp32 masters and moments) this rank holds, per parameter of the
    /// model: 12 (8 for an fp32 model, whose weights are the masters) replicated, 12/W sharded.
    pub fn state_bytes_per_param(&self) -> f64 {
        let n = self.num_parameters().max(1) as f64;
        let bytes: i64 = match &self.sharded {
            Some(s) => 12 * s.layout.shard_len,
            None => self
                .params
                .iter()
                .filter_map(|p| p.local.as_ref().map(|l| (8 + if l.master.is_some() { 4 } else { 0 }) * p.var.numel() as i64))
                .sum(),
        };
        bytes as f64 / n
    }

    /// Parameter names and shapes, in the optimizer's order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<i64>)> {
        self.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
            p.acc = None;
        }
        if let Some(s) = &mut self.sharded {
            s.clear_zero3_grad();
        }
        self.unflushed = true;
    }

    /// Adds the gradients of the micro-batch just back-propagated to the step's fp32 sums (for
    /// parameters not in fp32: a bf16 model would otherwise sum 16-64 micro-batches in bf16) and
    /// zeroes them for the next. Call it after each micro-batch's backward when a step has more
    /// than one (a single micro-batch's gradient needs no fp32 copy); the reduction, the clipping
    /// and the update add the last one to sums already begun. Nothing to do for fp32 parameters.
    pub fn accumulate(&mut self) {
        self.add_to_sums(true);
        self.unflushed = true;
    }

    /// Adds the pending gradients to the sums already begun (the step's last micro-batch), once.
    fn flush(&mut self) {
        if std::mem::take(&mut self.unflushed) {
            self.add_to_sums(false);
        }
    }

    /// [`AdamW::accumulate`] (`begin`: start a sum where there is none) or [`AdamW::flush`].
    fn add_to_sums(&mut self, begin: bool) {
        tch::no_grad(|| {
            for p in &mut self.params {
                if p.var.kind() == Kind::Float || (!begin && p.acc.is_none()) {
                    continue;
                }
                let mut g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                let at = self.sums_on.unwrap_or(g.device());
                match &mut p.acc {
                    Some(a) => {
                        let _ = a.g_add_(&g.to_kind(Kind::Float).to_device(at));
                    }
                    None => p.acc = Some(g.to_kind(Kind::Float).to_device(at)),
                }
                let _ = g.zero_();
            }
        });
    }

    /// Sums the gradients over the ranks of a distributed run: in place (stage 0), or into this
    /// rank's shard (ZeRO), bucket by bucket. Nothing to do in one process.
    fn reduce_gradients(&mut self) -> Result<()> {
        self.flush();
        let Some(d) = self.dist else { return Ok(()) };
        // Which parameters have a gradient on any rank: a rank that had no micro-batch in this
        // step, or a parameter its batch did not reach, still joins the sum with zeros.
        let local: Vec<f32> = self.params.iter().map(|p| if p.grad().defined() { 1.0 } else { 0.0 }).collect();
        let flags = Tensor::from_slice(&local);
        d.all_reduce(&flags, distributed::ReduceOp::Max).map_err(dist_err)?;
        let has_grad: Vec<bool> = Vec::<f32>::try_from(&flags)?.into_iter().map(|f| f > 0.0).collect();
        let missing: Vec<Tensor> = self
            .params
            .iter()
            .zip(&has_grad)
            .filter(|(p, &any)| any && !p.grad().defined())
            .map(|(p, _)| p.var.sum(Kind::Float) * 0.0)
            .collect();
        if !missing.is_empty() {
            // Zeros in the variable's own gradient (no fp32 sum was begun for it).
            Tensor::stack(&missing, 0).sum(Kind::Float).backward();
        }
        tch::no_grad(|| -> Result<()> {
            if let Some(s) = &mut self.sharded {
                s.has_grad = has_grad;
                if let Some(z) = &s.zero3 {
                    // The layers' gradients were reduced as each layer's backward ended.
                    let any = z.reduced.load(std::sync::atomic::Ordering::Relaxed) > 0;
                    for (i, h) in s.has_grad.iter_mut().enumerate() {
                        if z.is_layer_param(i) {
                            *h = any;
                        }
                    }
                }
                let device = s.grad.device();
                for b in s.whole_buckets() {
                    let flat = Tensor::zeros([b.padded], (Kind::Float, device));
                    for (param, param_off, off, len) in s.layout.overlapping(b.start, b.start + b.len) {
                        let g = self.params[param].grad();
                        if g.defined() {
                            flat.narrow(0, off, len).copy_(&g.reshape([-1]).narrow(0, param_off, len));
                        }
                    }
                    let part = b.padded / d.world_size;
                    let mut out = s.grad.narrow(0, b.shard_off, part);
                    if s.stage == 1 {
                        d.all_reduce(&flat, distributed::ReduceOp::Sum).map_err(dist_err)?;
                        out.copy_(&flat.narrow(0, d.rank * part, part));
                    } else {
                        let inputs: Vec<Tensor> = (0..d.world_size).map(|r| flat.narrow(0, r * part, part)).collect();
                        let tmp = Tensor::zeros([part], (Kind::Float, device));
                        d.reduce_scatter(&tmp, &inputs).map_err(dist_err)?;
                        out.copy_(&tmp);
                    }
                }
                return Ok(());
            }
            // Stage 0: one all-reduce per bucket of whole gradients, in their own dtype.
            let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
            let mut start = 0;
            while start < grads.len() {
                let kind = grads[start].kind();
                let (mut end, mut n) = (start, 0i64);
                while end < grads.len()
                    && grads[end].kind() == kind
                    && (n == 0 || n + grads[end].numel() as i64 <= crate::zero::DEFAULT_BUCKET)
                {
                    n += grads[end].numel() as i64;
                    end += 1;
                }
                let flat = Tensor::cat(&grads[start..end].iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(), 0);
                d.all_reduce(&flat, distributed::ReduceOp::Sum).map_err(dist_err)?;
                let mut off = 0;
                for g in &grads[start..end] {
                    let k = g.numel() as i64;
                    g.reshape([-1]).copy_(&flat.narrow(0, off, k));
                    off += k;
                }
                start = end;
            }
            Ok(())
        })
    }

    /// Sums the gradients over the ranks (distributed runs), then clips their global L2 norm to
    /// `max_norm` in place when above it (as `torch.nn.utils.clip_grad_norm_`). Returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        self.reduce_gradients()?;
        if let Some(s) = &mut self.sharded {
            let norm = tch::no_grad(|| f64::try_from(s.grad.norm_scalaropt_dtype(2.0, Kind::Double)));
            let mut sq = [norm.map_or(f64::NAN, |n| n * n)];
            s.dist.all_reduce_f64(&mut sq).map_err(dist_err)?;
            let total = sq[0].sqrt();
            if max_norm > 0.0 && total.is_finite() {
                let coef = max_norm / (total + 1e-6);
                if coef < 1.0 {
                    let _ = tch::no_grad(|| s.grad.g_mul_scalar_(coef));
                }
            }
            return Ok(total);
        }
        Ok(tch::no_grad(|| {
            let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
            if grads.is_empty() {
                return 0.0;
            }
            // Per-tensor L2 norms, then the norm of those (as torch), accumulated in float64: one
            // pass, no temporaries. (torch's float32 norm of a 2M-element gradient is off by ~1e-4
            // relative, enough for a sharded norm of the same gradients to clip differently.)
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm_scalaropt_dtype(2.0, Kind::Double)).collect();
            let total = f64::try_from(Tensor::stack(&norms, 0).norm()).unwrap_or(f64::NAN);
            if max_norm > 0.0 && total.is_finite() {
                let coef = max_norm / (total + 1e-6);
                if coef < 1.0 {
                    for mut g in grads {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
            total
        }))
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are left alone.
    /// (Call [`AdamW::clip_grad_norm`] first: in a distributed run it sums the gradients.)
    /// Afterwards the gradients and their fp32 sums are released (PyTorch's
    /// `zero_grad(set_to_none=True)`): they take memory only from a backward to the update, not
    /// while a stage generates, scores or evaluates.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let r = self.update(lr);
        self.release_grads()?;
        r
    }

    /// Drops every parameter's gradient and fp32 sum; the next backward allocates them anew.
    pub fn release_grads(&mut self) -> Result<()> {
        for p in &mut self.params {
            p.acc = None;
            distributed::kernels::release_grad(&p.var).map_err(TrainError::Config)?;
        }
        if let Some(s) = &mut self.sharded {
            s.clear_zero3_grad();
        }
        Ok(())
    }

    fn update(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.cfg.beta2.powi(t)).sqrt();
        let cfg = self.cfg;
        if let Some(s) = &mut self.sharded {
            let params = &self.params;
            return tch::no_grad(|| -> Result<()> {
                for pc in &s.pieces {
                    if !s.has_grad[pc.param] {
                        continue;
                    }
                    let mut w = s.master.narrow(0, pc.shard_off, pc.len);
                    let g = s.grad.narrow(0, pc.shard_off, pc.len);
                    let mut m = s.m.narrow(0, pc.shard_off, pc.len);
                    let mut v = s.v.narrow(0, pc.shard_off, pc.len);
                    adamw_update(&cfg, &mut w, &g, &mut m, &mut v, params[pc.param].decay, lr, bc1, bc2_sqrt);
                }
                // Every rank's updated masters, bucket by bucket, into the model's weights
                // (ZeRO-3: those kept whole; the layers are gathered when they run).
                let d = s.dist;
                for b in &s.whole_buckets() {
                    let part = b.padded / d.world_size;
                    let flat = Tensor::zeros([b.padded], (Kind::Float, s.master.device()));
                    let outs: Vec<Tensor> = (0..d.world_size).map(|r| flat.narrow(0, r * part, part)).collect();
                    let mine = s.master.narrow(0, b.shard_off, part).contiguous();
                    d.all_gather(&outs, &mine).map_err(dist_err)?;
                    for (param, param_off, off, len) in s.layout.overlapping(b.start, b.start + b.len) {
                        if s.has_grad[param] {
                            params[param].var.reshape([-1]).narrow(0, param_off, len).copy_(&flat.narrow(0, off, len));
                        }
                    }
                }
                Ok(())
            });
        }
        self.flush();
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.grad();
                let Some(l) = &mut p.local else { continue };
                if !grad.defined() {
                    continue;
                }
                let g = grad.to_kind(Kind::Float).to_device(l.m.device());
                let mut w = match &l.master {
                    Some(m) => m.shallow_clone(),
                    None => p.var.shallow_clone(),
                };
                adamw_update(&cfg, &mut w, &g, &mut l.m, &mut l.v, p.decay, lr, bc1, bc2_sqrt);
                if l.master.is_some() {
                    p.var.copy_(&w);
                }
            }
        });
        Ok(())
    }

    /// Every piece of optimizer state as named tensors: `m.<param>`, `v.<param>`,
    /// `master.<param>` (replicated), or this rank's shard `zero.m`, `zero.v`, `zero.master` with
    /// `zero.layout` = [world, rank, bucket, parameters] (ZeRO).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        if let Some(s) = &self.sharded {
            let layout = Tensor::from_slice(&self.zero_layout().expect("sharded"));
            return vec![
                ("zero.layout".into(), layout),
                ("zero.m".into(), s.m.shallow_clone()),
                ("zero.v".into(), s.v.shallow_clone()),
                ("zero.master".into(), s.master.shallow_clone()),
            ];
        }
        let mut out = Vec::new();
        for p in &self.params {
            let Some(l) = &p.local else { continue };
            out.push((format!("m.{}", p.name), l.m.shallow_clone()));
            out.push((format!("v.{}", p.name), l.v.shallow_clone()));
            if let Some(m) = &l.master {
                out.push((format!("master.{}", p.name), m.shallow_clone()));
            }
        }
        out
    }

    /// `zero.layout` of this rank's shard (ZeRO), to match a saved shard against: [world, rank,
    /// bucket, parameters], and a fifth entry 3 under ZeRO-3 (whose buckets end at each decoder
    /// layer's end, [`groups_of`]).
    pub fn zero_layout(&self) -> Option<Vec<i64>> {
        self.sharded.as_ref().map(|s| {
            let mut l = vec![s.layout.world, s.layout.rank, s.layout.bucket, self.num_parameters()];
            if s.zero3.is_some() {
                l.push(3);
            }
            l
        })
    }

    /// The ends of the groups of the ZeRO layout at `zero_stage` over this optimizer's
    /// parameters ([`groups_of`]), to reassemble saved shards.
    pub fn zero_group_ends(&self, zero_stage: u8) -> Vec<usize> {
        groups_of(&self.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), zero_stage).0
    }

    /// Restores this rank's shard saved under the same layout (`zero.*` of [`AdamW::state_tensors`]).
    pub fn load_zero_shard(&mut self, step: u64, master: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
        let Some(s) = &mut self.sharded else { return Err(TrainError::Config("this optimizer is not sharded".into())) };
        tch::no_grad(|| -> Result<()> {
            for (dst, src, what) in [(&mut s.master, master, "master"), (&mut s.m, m, "m"), (&mut s.v, v, "v")] {
                if src.size() != dst.size() {
                    return Err(TrainError::Config(format!(
                        "ZeRO shard zero.{what} has shape {:?}, this rank's {:?}",
                        src.size(),
                        dst.size()
                    )));
                }
                dst.f_copy_(src)?;
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }

    /// Restores the state from whole per-parameter tensors (`m.<param>`, `v.<param>`, and
    /// `master.<param>` for a model not in fp32) returned by `get`; a sharded optimizer keeps its
    /// part of each.
    pub fn load_state(&mut self, step: u64, get: impl FnMut(&str) -> Result<Tensor>) -> Result<()> {
        self.load_state_with(step, get, |n| Err(TrainError::Config(format!("ZeRO-3: no weights given for {n}, whose variable is sharded"))))
    }

    /// As [`AdamW::load_state`]; `weights(name)` gives the saved weights of a ZeRO-3 decoder-layer
    /// parameter in an fp32 model (its variable is empty; the weights are its masters), read one
    /// tensor at a time from the checkpoint's model files.
    pub fn load_state_with(
        &mut self,
        step: u64,
        mut get: impl FnMut(&str) -> Result<Tensor>,
        mut weights: impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        let check = |name: &str, src: &Tensor, want: &[i64]| -> Result<()> {
            if src.size() != want {
                return Err(TrainError::Config(format!("optimizer state {name} has shape {:?}, the model {:?}", src.size(), want)));
            }
            Ok(())
        };
        tch::no_grad(|| -> Result<()> {
            if let Some(s) = &mut self.sharded {
                let mut cached: Option<(usize, [Tensor; 3])> = None;
                for pc in &s.pieces {
                    let p = &self.params[pc.param];
                    if cached.as_ref().is_none_or(|c| c.0 != pc.param) {
                        let m = get(&format!("m.{}", p.name))?;
                        let v = get(&format!("v.{}", p.name))?;
                        check(&format!("m.{}", p.name), &m, &p.shape)?;
                        check(&format!("v.{}", p.name), &v, &p.shape)?;
                        let master = match p.var.kind() {
                            Kind::Float if p.var.size() == p.shape => p.var.shallow_clone(),
                            Kind::Float => weights(&p.name)?,
                            _ => get(&format!("master.{}", p.name))?,
                        };
                        check(&format!("master.{}", p.name), &master, &p.shape)?;
                        cached = Some((pc.param, [master.reshape([-1]), m.reshape([-1]), v.reshape([-1])]));
                    }
                    let [master, m, v] = &cached.as_ref().expect("cached above").1;
                    for (dst, src) in [(&s.master, master), (&s.m, m), (&s.v, v)] {
                        dst.narrow(0, pc.shard_off, pc.len).f_copy_(&src.narrow(0, pc.param_off, pc.len))?;
                    }
                }
                return Ok(());
            }
            for p in &mut self.params {
                let Some(l) = &mut p.local else { continue };
                for (prefix, dst) in [("m", &mut l.m), ("v", &mut l.v)] {
                    let name = format!("{prefix}.{}", p.name);
                    let src = get(&name)?;
                    check(&name, &src, &dst.size())?;
                    dst.f_copy_(&src)?;
                }
                if let Some(master) = &mut l.master {
                    if p.var.kind() == Kind::Float {
                        // An fp32 model's weights are its masters (an offloaded optimizer keeps a
                        // copy): taken from the loaded weights, so any checkpoint resumes into it.
                        master.f_copy_(&p.var)?;
                    } else {
                        master.f_copy_(&get(&format!("master.{}", p.name))?)?;
                        p.var.f_copy_(master)?;
                    }
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ZeRO-3's groups over sorted names: one per decoder layer (`layers.1.` before `layers.10.`),
    /// and the runs between kept whole; stages 1 and 2 have a single group.
    #[test]
    fn zero3_groups_are_the_layers_and_the_runs_between() {
        let mut names = vec!["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight", "score.weight"];
        for i in [0, 1, 2, 10, 11] {
            for p in ["input_layernorm.weight", "mlp.up_proj.weight", "self_attn.q_proj.weight"] {
                names.push(Box::leak(format!("model.layers.{i}.{p}").into_boxed_str()));
            }
        }
        names.sort();
        let (ends, keys) = groups_of(&names, 3);
        assert_eq!(keys, [None, Some(0), Some(1), Some(10), Some(11), Some(2), None]);
        assert_eq!(ends, [2, 5, 8, 11, 14, 17, 19]);
        assert_eq!(groups_of(&names, 2), (vec![names.len()], vec![None]));
        assert_eq!(layer_of("model.layers.7.mlp.down_proj.lora_A.weight"), Some(7));
        assert_eq!(layer_of("model.norm.weight"), None);
    }
}
