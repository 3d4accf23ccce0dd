//! LoRA (Hu et al. 2021): a frozen projection `W` plus a trained low-rank update,
//! `y = x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ` with `A` `[r, in]` and `B` `[out, r]`. `B` starts at zero,
//! so a fresh adapter leaves the base model's outputs unchanged; `A` starts as PEFT's
//! `kaiming_uniform_(a=√5)`, i.e. U(−1/√in, 1/√in).
//!
//! The variables are named as PEFT names them inside the model
//! (`model.layers.{i}.self_attn.q_proj.lora_A.weight`), so an adapter is saved in the PEFT layout
//! by prefixing `base_model.model.`: `adapter_config.json` + `adapter_model.safetensors`, which
//! `peft.PeftModel.from_pretrained(base, dir)` loads (tools/check_peft.py). A scalar head trained
//! beside the adapter (the reward model's `score`) is a PEFT `modules_to_save` entry and is
//! saved whole under `base_model.model.score.weight`.
//!
//! An adapter folder is a model folder everywhere in this project: [`crate::checkpoint`] reads
//! its base model's config and weights (from `base_model_name_or_path`) and merges the adapter
//! into them (`W + (α/r)·B·A`), so a stage that trained with LoRA hands the next one its
//! `final/` adapter as it would a full checkpoint. Full fine-tuning stays the paper's default.
use crate::checkpoint::{self as ck, CheckpointFiles};
use crate::error::{LlamaError, Result};
use crate::model::{Linear, Llama};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// The projections of a Llama layer that may carry an adapter (HF module names).
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The prefix PEFT gives every tensor of a saved adapter.
const PEFT_PREFIX: &str = "base_model.model.";

/// `lora = { r, alpha, dropout, targets, merge }` of a stage config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update `B·A`.
    #[serde(default = "default_r")]
    pub r: i64,
    /// Scale numerator: the update is `(alpha / r)·B·A` (PEFT's `lora_alpha`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input in training forwards (PEFT's `lora_dropout`). The masks
    /// are drawn from torch's generator, seeded per optimizer step, so resume stays exact.
    #[serde(default)]
    pub dropout: f64,
    /// Projections that get an adapter, in every layer.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// Also write the adapter merged into the base weights as a full HF checkpoint
    /// (`final_merged/`); `final/` is the PEFT adapter either way.
    #[serde(default)]
    pub merge: bool,
}

fn default_r() -> i64 {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { r: default_r(), alpha: default_alpha(), dropout: 0.0, targets: default_targets(), merge: false }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.r < 1 {
            return Err(format!("lora.r must be at least 1, got {}", self.r));
        }
        if !(self.alpha > 0.0) || !self.alpha.is_finite() {
            return Err(format!("lora.alpha must be positive, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("lora.dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.targets.is_empty() {
            return Err("lora.targets is empty: name at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj".into());
        }
        if let Some(t) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return Err(format!("lora.targets: unknown projection {t:?} (expected one of {})", TARGETS.join(", ")));
        }
        Ok(())
    }

    /// [`LoraConfig::validate`], plus what a stage needs: a base checkpoint for the adapter to
    /// name, and no dropout under activation checkpointing (the recomputed forward would draw
    /// other masks than the first).
    pub fn validate_for_stage(&self, has_base: bool, gradient_checkpointing: bool) -> std::result::Result<(), String> {
        self.validate()?;
        if !has_base {
            return Err("lora needs `model`, a checkpoint for the adapter to be trained on".into());
        }
        if self.dropout > 0.0 && gradient_checkpointing {
            return Err("lora.dropout > 0 cannot be combined with train.gradient_checkpointing (the recomputed forward would draw other dropout masks); set lora.dropout = 0".into());
        }
        Ok(())
    }

    /// Seeds torch's generator for the dropout masks of optimizer step `step`, when there is
    /// dropout: masks depend on (seed, step) alone, so a resumed run draws the same ones.
    pub fn seed_dropout(&self, seed: u64, step: u64) {
        if self.dropout > 0.0 {
            let mixed = crate::rng::SplitMix64::new(seed ^ 0x10DA_D0E5 ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
            tch::manual_seed((mixed >> 1) as i64);
        }
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Trainable adapter parameters on a model of `cfg`.
    pub fn num_parameters(&self, cfg: &crate::Config) -> i64 {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let per_layer: i64 = self
            .targets
            .iter()
            .map(|t| {
                let (inp, out) = match t.as_str() {
                    "q_proj" => (d, q),
                    "k_proj" | "v_proj" => (d, kv),
                    "o_proj" => (q, d),
                    "gate_proj" | "up_proj" => (d, i),
                    _ => (i, d),
                };
                self.r * (inp + out)
            })
            .sum();
        per_layer * cfg.num_hidden_layers
    }
}

/// The trained low-rank update of one [`Linear`].
#[derive(Debug)]
pub struct LoraAdapter {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`, zero at the start.
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
}

/// Whether autograd records the current ops (training forwards) or not (generation, scoring,
/// and the first pass of activation checkpointing).
fn grad_enabled() -> bool {
    Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true).g_mul_scalar(1.0).requires_grad()
}

impl LoraAdapter {
    /// `(α/r)·dropout(x)·Aᵀ·Bᵀ`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.dropout > 0.0 && grad_enabled() { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }
}

impl Llama {
    /// Adds an adapter to every targeted projection of every layer, as new trainable variables
    /// under `root` (the model's VarStore root). Call after the base weights are loaded, then
    /// [`freeze_base`] the rest.
    pub fn add_lora(&mut self, root: &nn::Path, lc: &LoraConfig) {
        let scale = lc.scale();
        let m = root / "model";
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = &m / "layers" / i;
            for t in &lc.targets {
                let (lin, block): (&mut Linear, &str) = match t.as_str() {
                    "q_proj" => (&mut layer.self_attn.q_proj, "self_attn"),
                    "k_proj" => (&mut layer.self_attn.k_proj, "self_attn"),
                    "v_proj" => (&mut layer.self_attn.v_proj, "self_attn"),
                    "o_proj" => (&mut layer.self_attn.o_proj, "self_attn"),
                    "gate_proj" => (&mut layer.mlp.gate_proj, "mlp"),
                    "up_proj" => (&mut layer.mlp.up_proj, "mlp"),
                    "down_proj" => (&mut layer.mlp.down_proj, "mlp"),
                    _ => continue,
                };
                let (out, inp) = lin.weight.size2().expect("linear weights are matrices");
                let lp = &p / block / t.as_str();
                let bound = 1.0 / (inp as f64).sqrt();
                let a = (&lp / "lora_A").var("weight", &[lc.r, inp], nn::Init::Uniform { lo: -bound, up: bound });
                let b = (&lp / "lora_B").var("weight", &[out, lc.r], nn::Init::Const(0.0));
                lin.lora = Some(LoraAdapter { a, b, scale, dropout: lc.dropout });
            }
        }
    }

    /// Folds every adapter into its projection (`W += (α/r)·B·A`, in float32) and removes it:
    /// the model then computes what it computed with the adapter, as a plain Llama.
    pub fn merge_lora(&mut self) {
        tch::no_grad(|| {
            for layer in &mut self.layers {
                let a = &mut layer.self_attn;
                let m = &mut layer.mlp;
                for lin in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj, &mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]
                {
                    if let Some(l) = lin.lora.take() {
                        lin.weight.shallow_clone().copy_(&merged_weight(&lin.weight, &l.a, &l.b, l.scale));
                    }
                }
            }
        });
    }
}

/// A model trained with LoRA: its settings and what its saved adapter says (a stage's `Part`).
#[derive(Debug, Clone)]
pub struct LoraRun {
    pub lora: LoraConfig,
    pub info: AdapterInfo,
}

/// `W + scale·B·A` in float32, returned in `w`'s dtype on `w`'s device: every merge of an
/// adapter into its projection (in place, on save, on load) computes it here.
pub fn merged_weight(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Tensor {
    let (a, b) = (a.to_kind(Kind::Float).to_device(w.device()), b.to_kind(Kind::Float).to_device(w.device()));
    (w.to_kind(Kind::Float) + b.matmul(&a) * scale).to_kind(w.kind())
}

/// Whether `name` is an adapter variable.
pub fn is_lora(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Stops gradients on every variable of `vs` but the adapters and those `keep` names (a scalar
/// head trained beside them): AdamW then holds state for the adapter alone.
pub fn freeze_base(vs: &nn::VarStore, keep: impl Fn(&str) -> bool) {
    for (name, t) in vs.variables() {
        if !is_lora(&name) && !keep(&name) {
            let _ = t.set_requires_grad(false);
        }
    }
}

/// What a saved adapter says about itself beyond [`LoraConfig`].
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    /// The model the adapter was trained on (written absolute as `base_model_name_or_path`).
    pub base: PathBuf,
    /// PEFT's `task_type`: `CAUSAL_LM` (policy) or `SEQ_CLS` (reward and value models).
    pub task_type: &'static str,
    /// Variables trained whole beside the adapter, by module name (`score`).
    pub modules_to_save: Vec<String>,
}

fn in_modules(name: &str, modules: &[String]) -> bool {
    modules.iter().any(|m| name.strip_prefix(m.as_str()).is_some_and(|rest| rest.starts_with('.')))
}

/// Writes the adapter variables of `vs` (and the `modules_to_save`) as a PEFT adapter folder,
/// atomically (temp folder, then rename), with `extra_files` (tokenizer) copied in.
pub fn save_adapter(
    vs: &nn::VarStore,
    lc: &LoraConfig,
    info: &AdapterInfo,
    dir: &Path,
    dtype: Kind,
    extra_files: &[PathBuf],
) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(n, _)| is_lora(n) || in_modules(n, &info.modules_to_save)).collect();
    if !vars.iter().any(|(n, _)| is_lora(n)) {
        return Err(LlamaError::Invalid(format!("{}: the model has no LoRA adapter to save", dir.display())));
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<(String, Tensor)> = tch::no_grad(|| {
        vars.into_iter().map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t.to_kind(dtype).to_device(Device::Cpu).contiguous())).collect()
    });
    let base = std::fs::canonicalize(&info.base).unwrap_or_else(|_| info.base.clone());
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": info.task_type,
        "r": lc.r,
        "lora_alpha": lc.alpha,
        "lora_dropout": lc.dropout,
        "target_modules": lc.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": if info.modules_to_save.is_empty() { serde_json::Value::Null } else { serde_json::json!(info.modules_to_save) },
        "base_model_name_or_path": base.to_string_lossy(),
        "revision": serde_json::Value::Null,
    });
    let tmp = ck::temp_sibling(dir)?;
    ck::write_safetensors(&tmp.join("adapter_model.safetensors"), &tensors)?;
    let text = serde_json::to_string_pretty(&config).expect("adapter config serialises");
    ck::write_atomic(&tmp.join(ADAPTER_CONFIG), text.as_bytes())?;
    for f in extra_files {
        if let Some(name) = f.file_name() {
            std::fs::copy(f, tmp.join(name)).map_err(|e| LlamaError::io(f, e))?;
        }
    }
    ck::replace_dir(&tmp, dir)
}

pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// An adapter folder as read back: its settings and its tensors by in-model name.
pub struct SavedAdapter {
    pub dir: PathBuf,
    pub base: PathBuf,
    pub scale: f64,
    files: CheckpointFiles,
}

/// Whether `dir` holds a PEFT adapter rather than a full model.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).exists() && !dir.join("config.json").exists()
}

impl SavedAdapter {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|e| LlamaError::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LlamaError::Json { path: path.clone(), source: e })?;
        let field = |k: &str| v.get(k).ok_or_else(|| LlamaError::Config { path: path.clone(), msg: format!("missing field {k}") });
        let peft_type = field("peft_type")?.as_str().unwrap_or_default();
        if peft_type != "LORA" {
            return Err(LlamaError::Config { path, msg: format!("peft_type {peft_type:?} is not supported (only LORA)") });
        }
        let r = field("r")?
            .as_f64()
            .filter(|r| *r >= 1.0)
            .ok_or_else(|| LlamaError::Config { path: path.clone(), msg: "r must be a positive number".into() })?;
        let alpha = field("lora_alpha")?
            .as_f64()
            .filter(|a| *a > 0.0)
            .ok_or_else(|| LlamaError::Config { path: path.clone(), msg: "lora_alpha must be a positive number".into() })?;
        if v.get("use_rslora").and_then(|x| x.as_bool()) == Some(true) || v.get("use_dora").and_then(|x| x.as_bool()) == Some(true) {
            return Err(LlamaError::Config { path, msg: "rsLoRA and DoRA adapters are not supported".into() });
        }
        let base = field("base_model_name_or_path")?.as_str().filter(|s| !s.is_empty()).ok_or_else(|| LlamaError::Config {
            path: path.clone(),
            msg: "base_model_name_or_path must name the base model's folder".into(),
        })?;
        let base = PathBuf::from(base);
        let base = if base.is_absolute() { base } else { dir.join(base) };
        let files = CheckpointFiles::open_file(&dir.join("adapter_model.safetensors"))?;
        Ok(SavedAdapter { dir: dir.to_path_buf(), base, scale: alpha / r, files })
    }

    /// The in-model names of the saved tensors (PEFT prefix removed).
    pub fn names(&self) -> Vec<String> {
        self.files.names().map(|n| n.strip_prefix(PEFT_PREFIX).unwrap_or(n).to_string()).collect()
    }

    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        self.files.tensor(&format!("{PEFT_PREFIX}{name}")).or_else(|_| self.files.tensor(name))
    }

    /// Copies the saved adapter (and head) tensors into the same-named variables of `vs`, unmerged:
    /// resuming a LoRA run. Every adapter variable of `vs` must be in the file.
    pub fn load_unmerged(&self, vs: &nn::VarStore) -> Result<()> {
        let vars = vs.variables();
        let names = self.names();
        let missing: Vec<&String> = vars.keys().filter(|n| is_lora(n) && !names.contains(n)).collect();
        if !missing.is_empty() {
            return Err(LlamaError::Checkpoint {
                dir: self.dir.clone(),
                msg: format!("adapter lacks {} tensor(s): {missing:?}", missing.len()),
            });
        }
        tch::no_grad(|| -> Result<()> {
            for n in &names {
                let var = vars.get(n).ok_or_else(|| LlamaError::Checkpoint {
                    dir: self.dir.clone(),
                    msg: format!("adapter tensor {n} has no variable in the model (another LoRA target list or rank?)"),
                })?;
                let src = self.tensor(n)?;
                if src.size() != var.size() {
                    return Err(LlamaError::Checkpoint {
                        dir: self.dir.clone(),
                        msg: format!("{n}: expected {:?}, found {:?}", var.size(), src.size()),
                    });
                }
                var.shallow_clone().f_copy_(&src)?;
            }
            Ok(())
        })
    }

    /// Merges the adapter into the base weights already loaded in `vs` (`W += scale·B·A` in
    /// float32) and copies the saved heads; returns the names it set.
    pub fn merge_into(&self, vs: &nn::VarStore) -> Result<Vec<String>> {
        let vars = vs.variables();
        let names = self.names();
        let mut set = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for n in &names {
                if let Some(stem) = n.strip_suffix(".lora_A.weight") {
                    let target = format!("{stem}.weight");
                    let w = vars.get(&target).ok_or_else(|| LlamaError::Checkpoint {
                        dir: self.dir.clone(),
                        msg: format!("adapter {n} targets {target}, which the model does not have"),
                    })?;
                    let a = self.tensor(n)?;
                    let b = self.tensor(&format!("{stem}.lora_B.weight"))?;
                    let (sa, sb) = (a.size(), b.size());
                    if sa.len() != 2 || sb.len() != 2 || sb[1] != sa[0] || vec![sb[0], sa[1]] != w.size() {
                        return Err(LlamaError::Checkpoint {
                            dir: self.dir.clone(),
                            msg: format!("adapter for {target} has shapes A {sa:?} and B {sb:?}, the weight {:?}", w.size()),
                        });
                    }
                    w.shallow_clone().f_copy_(&merged_weight(w, &a, &b, self.scale))?;
                    set.push(target);
                } else if !is_lora(n) {
                    if let Some(var) = vars.get(n) {
                        var.shallow_clone().f_copy_(&self.tensor(n)?)?;
                        set.push(n.clone());
                    }
                }
            }
            Ok(())
        })?;
        Ok(set)
    }
}
