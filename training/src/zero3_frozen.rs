//! ZeRO-3 for frozen models (PPO's reference policy and reward models): each decoder layer's
//! weights, in the model's own dtype (bf16 on a GPU), are cut into W equal parts and rank r keeps
//! part r only; the layer is all-gathered just before it runs and freed after, through the same
//! [`llama::model::ShardHooks`] the trained models use ([`crate::optim`]'s ZeRO-3). A frozen model
//! has no gradient and no optimizer state, so this is the whole of its sharding: one all-gather
//! per layer per forward, and `1/W` of the layers' bytes held per rank. The parameters outside
//! the layers (embeddings, final norm, LM or score head) stay whole on every rank, as for the
//! trained models.
//!
//! With `offload` the shards live in host memory and each rank's part is copied to the device
//! as its layer is gathered (PPO's `offload_frozen` under ZeRO-3).
//!
//! Every rank must run the same forwards in the same order (each gather is a collective): the
//! callers make ranks with less work run dummy forwards (the rollout engine's lockstep, PPO's
//! scoring of a placeholder batch).
//!
//! Shard-on-load ([`FrozenLayers`]): the same shards cut one layer at a time while the model is
//! built ([`llama::Llama::new_with`]), each tensor read from the checkpoint alone, so a rank never
//! holds more than the weights kept whole and one decoder layer (the 70B models are 138 GB whole).
use crate::error::{Result, TrainError};
use crate::optim::layer_of;
use tch::{nn, Device, Kind, Tensor};

/// One decoder layer of a frozen model: its variables (emptied between uses) and this rank's
/// part of their concatenation.
struct Layer {
    /// The layer's variables, sorted by name, with their shapes.
    vars: Vec<(Tensor, Vec<i64>)>,
    /// Elements of one rank's part (the concatenation padded to `W · part`).
    part: i64,
    /// This rank's part (on the device, or on the host with `offload`).
    shard: Tensor,
}

/// The frozen-shard hooks of one model ([`FrozenShards::shard`]).
pub struct FrozenShards {
    dist: &'static distributed::Dist,
    layers: Vec<Layer>,
    kind: Kind,
    device: Device,
}

impl FrozenShards {
    /// Shards the decoder layers of `vs` (a frozen model's variables, already loaded) over the
    /// ranks of the distributed run and empties them; `None` in one process (nothing to do).
    /// Give the result to the model with `set_shard_hooks`.
    pub fn shard(vs: &nn::VarStore, offload: bool) -> Result<Option<FrozenShards>> {
        let Some(dist) = distributed::get().filter(|d| d.world_size > 1) else { return Ok(None) };
        let mut by_layer: std::collections::BTreeMap<usize, Vec<(String, Tensor)>> = Default::default();
        for (name, var) in vs.variables() {
            if var.requires_grad() {
                return Err(TrainError::Config(format!("frozen ZeRO-3: {name} requires a gradient (the model is not frozen)")));
            }
            if let Some(l) = layer_of(&name) {
                by_layer.entry(l).or_default().push((name, var));
            }
        }
        let (w, rank) = (dist.world_size, dist.rank);
        let mut layers = Vec::with_capacity(by_layer.len());
        let (mut kind, mut device) = (Kind::Float, vs.device());
        for (i, (l, mut vars)) in by_layer.into_iter().enumerate() {
            if l != i {
                return Err(TrainError::Config(format!("frozen ZeRO-3: the model has no decoder layer {i} (found {l})")));
            }
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            kind = vars[0].1.kind();
            device = vars[0].1.device();
            let n: i64 = vars.iter().map(|(_, v)| v.numel() as i64).sum();
            let part = (n + w - 1) / w;
            let shard = tch::no_grad(|| {
                let flat = Tensor::cat(&vars.iter().map(|(_, v)| v.reshape([-1])).collect::<Vec<_>>(), 0);
                let padded = flat.constant_pad_nd([0, w * part - n]);
                let mine = padded.narrow(0, rank * part, part);
                if offload {
                    mine.to_device(Device::Cpu).copy()
                } else {
                    mine.copy()
                }
            });
            let vars: Vec<(Tensor, Vec<i64>)> = vars.into_iter().map(|(_, v)| (v.shallow_clone(), v.size())).collect();
            layers.push(Layer { vars, part, shard });
        }
        let s = FrozenShards { dist, layers, kind, device };
        for l in 0..s.layers.len() {
            llama::model::ShardHooks::release(&s, l);
        }
        Ok(Some(s))
    }

    /// Whether `name` is a weight this rank holds only its shard of (a decoder layer's).
    pub fn holds(&self, name: &str) -> bool {
        layer_of(name).is_some()
    }

    /// Bytes of layer shards this rank holds (on the device, or on the host when offloaded).
    pub fn shard_bytes(&self) -> i64 {
        self.layers.iter().map(|l| l.part * self.kind.elt_size_in_bytes() as i64).sum()
    }

    fn layer(&self, layer: usize) -> &Layer {
        self.layers.get(layer).unwrap_or_else(|| panic!("frozen ZeRO-3: the model has a layer {layer} the shards do not"))
    }
}

/// Shard-on-load for a frozen model: [`FrozenShards::shard`]'s shards, cut one decoder layer at a
/// time while the model is built. [`llama::Llama::new_with`] calls [`FrozenLayers::take_layer`]
/// as soon as each layer's variables exist; it reads the layer's tensors from the checkpoint one
/// at a time (converted to the model's dtype, as a whole load converts them), copies into this
/// rank's part the elements that fall in it, and empties the layer's variables. The parts are the
/// ones [`FrozenShards::shard`] cuts from the whole loaded model, element for element: the
/// layer's tensors sorted by name, laid end to end, zero-padded to `W · part`.
pub struct FrozenLayers {
    dist: &'static distributed::Dist,
    offload: bool,
    layers: Vec<Layer>,
    kind: Kind,
    device: Device,
    /// The first failure (a tensor missing from the checkpoint, of another shape, ...); later
    /// layers are only emptied, so every rank gets to the same error.
    error: Option<TrainError>,
}

impl FrozenLayers {
    /// For a frozen model on the ranks of a distributed run (`offload`: the shards in host
    /// memory); `None` in one process (build whole).
    pub fn new(offload: bool) -> Option<FrozenLayers> {
        let dist = distributed::get().filter(|d| d.world_size > 1)?;
        Some(FrozenLayers { dist, offload, layers: Vec::new(), kind: Kind::Float, device: Device::Cpu, error: None })
    }

    /// Called as soon as decoder layer `layer` is built in `vs`: keeps this rank's part of its
    /// weights, read from `files` (each tensor must be there with the variable's shape and a float
    /// dtype; an error names the folder, the file and the tensor) or, without files, the
    /// variables' own values; then empties the layer's variables.
    pub fn take_layer(&mut self, vs: &nn::VarStore, layer: usize, files: Option<&llama::checkpoint::CheckpointFiles>) {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| layer_of(n) == Some(layer)).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        if self.error.is_none() {
            match self.cut(&vars, layer, files) {
                Ok(l) => self.layers.push(l),
                Err(e) => self.error = Some(e),
            }
        }
        tch::no_grad(|| {
            for (_, var) in &vars {
                var.shallow_clone().set_data(&Tensor::empty([0], (var.kind(), var.device())));
            }
        });
    }

    fn cut(&mut self, vars: &[(String, Tensor)], layer: usize, files: Option<&llama::checkpoint::CheckpointFiles>) -> Result<Layer> {
        if layer != self.layers.len() || vars.is_empty() {
            return Err(TrainError::Config(format!("frozen ZeRO-3: decoder layer {layer} built out of order or empty")));
        }
        let (w, rank) = (self.dist.world_size, self.dist.rank);
        (self.kind, self.device) = (vars[0].1.kind(), vars[0].1.device());
        let n: i64 = vars.iter().map(|(_, v)| v.numel() as i64).sum();
        let part = (n + w - 1) / w;
        let (lo, hi) = (rank * part, (rank + 1) * part);
        let at = if self.offload { Device::Cpu } else { self.device };
        let shard = Tensor::zeros([part], (self.kind, at));
        let mut off = 0i64;
        for (name, var) in vars {
            let len = var.numel() as i64;
            let t = match files {
                Some(f) => f.tensor_for(name, &var.size(), var.kind())?,
                None => var.shallow_clone(),
            };
            let (a, b) = (off.max(lo), (off + len).min(hi));
            if a < b {
                tch::no_grad(|| shard.narrow(0, a - lo, b - a).copy_(&t.reshape([-1]).narrow(0, a - off, b - a)));
            }
            off += len;
        }
        let vars = vars.iter().map(|(_, v)| (v.shallow_clone(), v.size())).collect();
        Ok(Layer { vars, part, shard })
    }

    /// The shards (give them to the model with `set_shard_hooks`), or the first failure of
    /// [`FrozenLayers::take_layer`].
    pub fn finish(mut self) -> Result<FrozenShards> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok(FrozenShards { dist: self.dist, layers: self.layers, kind: self.kind, device: self.device })
    }
}

impl llama::model::ShardHooks for FrozenShards {
    fn gather(&self, layer: usize) {
        let l = self.layer(layer);
        let w = self.dist.world_size;
        tch::no_grad(|| {
            let flat = Tensor::empty([w * l.part], (self.kind, self.device));
            let outs: Vec<Tensor> = (0..w).map(|r| flat.narrow(0, r * l.part, l.part)).collect();
            let mine = l.shard.to_device(self.device);
            if let Err(e) = self.dist.all_gather(&outs, &mine) {
                panic!("frozen ZeRO-3 all-gather of layer {layer} failed on rank {}: {e}", self.dist.rank);
            }
            let mut off = 0;
            for (var, shape) in &l.vars {
                let n: i64 = shape.iter().product();
                var.shallow_clone().set_data(&flat.narrow(0, off, n).view(shape.as_slice()));
                off += n;
            }
        });
    }

    fn release(&self, layer: usize) {
        for (var, _) in &self.layer(layer).vars {
            var.shallow_clone().set_data(&Tensor::empty([0], (self.kind, self.device)));
        }
    }

    fn reduce(&self, layer: usize) {
        panic!("frozen ZeRO-3: layer {layer} of a frozen model has no gradient to reduce (a frozen model never back-propagates)");
    }
}
