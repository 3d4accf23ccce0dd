//! HF-layout checkpoint I/O: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`, read by tensor name straight into a VarStore and written back
//! in the same layout (sharded above a size limit) so that `transformers` reads what we save.
//!
//! Loading converts fp16/bf16/fp32 on disk to the VarStore's compute dtype, ignores unknown extra
//! tensors (`rotary_emb.inv_freq` of older exports) and reports every missing, mis-shaped or
//! wrong-dtype tensor (an integer header over float bytes) in one error. Saving is atomic: everything is written into a sibling temp folder which then
//! replaces the target, so an interrupted save leaves the previous checkpoint intact.
use crate::config::Config;
use crate::device::kind_name;
use crate::error::{LlamaError, Result};
use crate::model::Llama;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// HF's default `max_shard_size` is 5 GB; we use the same.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// The memory-mapped safetensors files of a checkpoint folder and where each tensor lives.
pub struct CheckpointFiles {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    location: HashMap<String, usize>,
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> LlamaError {
    LlamaError::Safetensors { path: path.to_path_buf(), msg: e.to_string() }
}

impl CheckpointFiles {
    /// Opens `model.safetensors` or the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let names: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| LlamaError::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LlamaError::Json { path: index.clone(), source: e })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LlamaError::Config { path: index.clone(), msg: "missing object field weight_map".into() })?;
            let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(LlamaError::Checkpoint {
                dir: dir.to_path_buf(),
                msg: "no model.safetensors or model.safetensors.index.json".into(),
            });
        };
        Self::open_files(dir, names)
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::open_files(&dir, vec![path.to_path_buf()])
    }

    fn open_files(dir: &Path, names: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for (i, path) in names.into_iter().enumerate() {
            let f = File::open(&path).map_err(|e| LlamaError::io(&path, e))?;
            // Safety: the file is opened read-only; a checkpoint is not modified while we read it.
            // The workspace denies unsafe code; memory maps are the allowed exception.
            #[allow(unsafe_code)]
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| LlamaError::io(&path, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(&path, format!("{e:?}")))?;
            for name in st.names() {
                location.insert(name.to_string(), i);
            }
            files.push((path, mmap));
        }
        Ok(CheckpointFiles { dir: dir.to_path_buf(), files, location })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// Reads one tensor (on the CPU, in its on-disk dtype).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let &i = self
            .location
            .get(name)
            .ok_or_else(|| LlamaError::Checkpoint { dir: self.dir.clone(), msg: format!("missing tensor {name}") })?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| st_err(path, format!("{e:?}")))?;
        let view = st.tensor(name).map_err(|e| st_err(path, format!("{e:?}")))?;
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            other => return Err(st_err(path, format!("tensor {name}: unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
    }

    /// Shape of a tensor without reading its data.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.shape_and_dtype(name).map(|(s, _)| s)
    }

    /// On-disk dtype of a tensor without reading its data.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.shape_and_dtype(name).map(|(_, d)| d)
    }

    fn shape_and_dtype(&self, name: &str) -> Option<(Vec<i64>, Dtype)> {
        let &i = self.location.get(name)?;
        let st = SafeTensors::deserialize(&self.files[i].1).ok()?;
        let view = st.tensor(name).ok()?;
        Some((view.shape().iter().map(|&d| d as i64).collect(), view.dtype()))
    }
}

/// On-disk dtypes a floating-point variable may be loaded from (converted to the compute dtype).
pub const FLOAT_DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::BF16, Dtype::F16];

/// Whether a tensor stored as `found` may fill a variable of kind `expected`: any of
/// [`FLOAT_DTYPES`] for a floating-point variable, the same dtype otherwise. Bytes of another
/// kind (an `I32` header over what were `F32` weights) would load as garbage, so they are refused.
pub fn dtype_fits(found: Dtype, expected: Kind) -> bool {
    if is_float(expected) {
        return FLOAT_DTYPES.contains(&found);
    }
    safetensors_dtype(expected) == Some(found)
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double)
}

/// The safetensors dtype of a libtorch kind, where there is one.
fn safetensors_dtype(k: Kind) -> Option<Dtype> {
    Some(match k {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// What a variable of kind `k` may be stored as, for error messages.
fn expected_dtypes(k: Kind) -> String {
    if is_float(k) {
        return "F32, BF16 or F16".into();
    }
    safetensors_dtype(k).map(|d| format!("{d:?}")).unwrap_or_else(|| format!("{k:?}"))
}

/// Copies every variable of `vs` from the checkpoint in `dir`, converting dtype and device.
/// Tensors in the files that the model does not use are ignored; missing and mis-shaped ones are
/// all listed in one error.
pub fn load_var_store(vs: &mut nn::VarStore, dir: &Path) -> Result<()> {
    load_var_store_with(vs, dir, |_| false).map(|_| ())
}

/// As [`load_var_store`], but variables for which `optional` holds may be absent from the
/// checkpoint (they keep their initialisation): a reward or value head on top of a causal-LM
/// checkpoint. Returns the names of the variables left as initialised.
///
/// A PEFT adapter folder ([`crate::lora`]) loads as its base model with the adapter merged in.
pub fn load_var_store_with(vs: &mut nn::VarStore, dir: &Path, optional: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    load_dyn(vs, dir, &optional)
}

fn load_dyn(vs: &mut nn::VarStore, dir: &Path, optional: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
    if crate::lora::is_adapter_dir(dir) {
        let adapter = crate::lora::SavedAdapter::open(dir)?;
        let saved = adapter.names();
        let mut skipped = load_dyn(vs, &adapter.base, &|n: &str| optional(n) || saved.iter().any(|s| s == n))?;
        let set = adapter.merge_into(vs)?;
        skipped.retain(|n| !set.contains(n));
        return Ok(skipped);
    }
    let files = CheckpointFiles::open(dir)?;
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut mistyped = Vec::new();
    let mut skipped = Vec::new();
    for name in &names {
        let var = &vars[*name];
        match files.shape_and_dtype(name) {
            None if optional(name) => skipped.push(name.to_string()),
            None => missing.push(name.to_string()),
            Some((s, dtype)) => {
                if s != var.size() {
                    misshaped.push(format!("{name}: expected {:?}, found {:?}", var.size(), s));
                }
                if !dtype_fits(dtype, var.kind()) {
                    mistyped.push(format!("{name}: found {dtype:?}, expected {}", expected_dtypes(var.kind())));
                }
            }
        }
    }
    let problems: Vec<String> = [
        (missing.len(), "missing", missing.join(", ")),
        (misshaped.len(), "mis-shaped", misshaped.join("; ")),
        (mistyped.len(), "wrong-dtype", mistyped.join("; ")),
    ]
    .into_iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, what, list)| format!("{n} {what} tensor(s): {list}"))
    .collect();
    if !problems.is_empty() {
        return Err(LlamaError::Checkpoint { dir: dir.to_path_buf(), msg: problems.join("; ") });
    }
    tch::no_grad(|| -> Result<()> {
        for name in names.into_iter().filter(|n| !skipped.contains(n)) {
            let src = files.tensor(name)?;
            vars[name].shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    })?;
    let unused = files.names().filter(|n| !vars.contains_key(*n)).count();
    if unused > 0 {
        tracing::debug!(dir = %dir.display(), unused, "ignored tensors not used by the model");
    }
    Ok(skipped)
}

/// Loads `config.json` of a checkpoint folder.
/// For a PEFT adapter folder, its base model's config.
pub fn load_config(dir: &Path) -> Result<Config> {
    if crate::lora::is_adapter_dir(dir) {
        return load_config(&crate::lora::SavedAdapter::open(dir)?.base);
    }
    Config::from_file(&dir.join("config.json"))
}

/// A fresh VarStore on `device` whose new variables are created in `kind`.
pub fn var_store(device: Device, kind: Kind) -> nn::VarStore {
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    vs
}

/// Loads a `LlamaForCausalLM` checkpoint for compute in `kind` on `device`.
pub fn load_causal_lm(dir: &Path, device: Device, kind: Kind) -> Result<(nn::VarStore, Llama)> {
    let cfg = load_config(dir)?;
    let mut vs = var_store(device, kind);
    let model = Llama::new(&vs.root(), &cfg);
    load_var_store(&mut vs, dir)?;
    Ok((vs, model))
}

/// How to save a checkpoint.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// `LlamaForCausalLM` or `LlamaForSequenceClassification`.
    pub architecture: String,
    /// On-disk dtype.
    pub dtype: Kind,
    /// Shard above this many bytes (HF layout: `model-0000k-of-0000N.safetensors` + index).
    pub max_shard_bytes: u64,
    /// Extra files copied into the checkpoint (tokenizer.json, tokenizer_config.json, ...).
    pub extra_files: Vec<PathBuf>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            architecture: "LlamaForCausalLM".into(),
            dtype: Kind::Float,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            extra_files: Vec::new(),
        }
    }
}

/// Orders tensor names as a model's state dict: layer indices numerically.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}

fn dtype_name(k: Kind) -> Result<&'static str> {
    Ok(match k {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        other => return Err(LlamaError::Invalid(format!("cannot save dtype {other:?}"))),
    })
}

/// Writes tensors (any device, any layout) as one safetensors file, in their own dtypes.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_streamed(path, tensors, None)
}

/// Writes tensors as one safetensors file, floating-point ones converted to `dtype` when given.
/// Each tensor is converted and copied to the host only when its bytes are written, and that
/// copy is dropped before the next one: the host holds one tensor's copy at a time, however
/// large the model or optimizer state (streamed checkpoints).
pub fn write_streamed(path: &Path, tensors: &[(String, Tensor)], dtype: Option<Kind>) -> Result<()> {
    let kind_of = |t: &Tensor| match dtype {
        Some(k) if t.is_floating_point() => k,
        _ => t.kind(),
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in tensors {
        let k = kind_of(t);
        let bytes = t.numel() * k.elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype_name(k)?, "shape": t.size(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| LlamaError::Invalid(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let f = File::create(path).map_err(|e| LlamaError::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
    let io = |e| LlamaError::io(path, e);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    let mut buf = Vec::new();
    for (_, t) in tensors {
        let host = tch::no_grad(|| t.to_kind(kind_of(t)).to_device(Device::Cpu).contiguous());
        buf.resize(host.numel() * host.kind().elt_size_in_bytes(), 0);
        host.f_copy_data_u8(&mut buf, host.numel())?;
        w.write_all(&buf).map_err(io)?;
    }
    let f = w.into_inner().map_err(|e| LlamaError::io(path, e.into_error()))?;
    f.sync_all().map_err(io)?;
    Ok(())
}

/// Writes `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| LlamaError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| LlamaError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LlamaError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LlamaError::io(path, e))
}

/// Saves every variable of `vs` plus `config.json` into `dir` in the HF layout, atomically:
/// the files go into a sibling temp folder that then replaces `dir`.
/// LoRA adapter variables are not part of an HF checkpoint and are left out (see
/// [`crate::lora::save_adapter`] and [`save_merged`]).
pub fn save(vs: &nn::VarStore, cfg: &Config, dir: &Path, opts: &SaveOptions) -> Result<()> {
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, _)| !crate::lora::is_lora(n)).collect();
    save_tensors(vars, cfg, dir, opts)
}

/// As [`save`], with every LoRA adapter of `vs` merged into its projection (`W + scale·B·A`,
/// in float32): the full HF checkpoint of what the model computes. `vs` is unchanged.
pub fn save_merged(vs: &nn::VarStore, scale: f64, cfg: &Config, dir: &Path, opts: &SaveOptions) -> Result<()> {
    let all = vs.variables();
    let vars: Vec<(String, Tensor)> = tch::no_grad(|| {
        all.iter()
            .filter(|(n, _)| !crate::lora::is_lora(n))
            .map(|(n, w)| {
                let stem = n.strip_suffix(".weight").unwrap_or(n);
                let t = match (all.get(&format!("{stem}.lora_A.weight")), all.get(&format!("{stem}.lora_B.weight"))) {
                    (Some(a), Some(b)) => crate::lora::merged_weight(w, a, b, scale),
                    _ => w.shallow_clone(),
                };
                (n.clone(), t)
            })
            .collect()
    });
    save_tensors(vars, cfg, dir, opts)
}

/// A fresh, empty temp folder beside `dir` (`.<name>.tmp-<pid>`), to be put in place with
/// [`replace_dir`].
pub fn temp_sibling(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| LlamaError::io(parent, e))?;
    let base = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "checkpoint".into());
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| LlamaError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| LlamaError::io(&tmp, e))?;
    Ok(tmp)
}

/// Saves named tensors (any device and dtype) plus `config.json` into `dir` in the HF layout,
/// atomically. Tensors are copied to the host one shard at a time, as each shard is written,
/// so the host never holds more than one shard's copy (streamed checkpoints).
pub fn save_tensors(mut vars: Vec<(String, Tensor)>, cfg: &Config, dir: &Path, opts: &SaveOptions) -> Result<()> {
    let tmp = temp_sibling(dir)?;
    vars.sort_by_key(|(n, _)| natural_key(n));
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    let mut total = 0u64;
    for (n, t) in vars {
        let kind = if t.is_floating_point() { opts.dtype } else { t.kind() };
        let b = (t.numel() * kind.elt_size_in_bytes()) as u64;
        if shard_bytes > 0 && shard_bytes + b > opts.max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += b;
        total += b;
        shards.last_mut().expect("at least one shard").push((n, t));
    }
    let dtype = Some(opts.dtype);
    if shards.len() == 1 {
        write_streamed(&tmp.join("model.safetensors"), &shards[0], dtype)?;
    } else {
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            write_streamed(&tmp.join(&fname), shard, dtype)?;
            for (name, _) in shard {
                weight_map.insert(name.clone(), fname.clone());
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).expect("index serialises");
        write_atomic(&tmp.join("model.safetensors.index.json"), text.as_bytes())?;
    }
    let config = cfg.to_hf_json(&opts.architecture, kind_name(opts.dtype));
    let text = serde_json::to_string_pretty(&config).expect("config serialises");
    write_atomic(&tmp.join("config.json"), text.as_bytes())?;
    for f in &opts.extra_files {
        if let Some(name) = f.file_name() {
            std::fs::copy(f, tmp.join(name)).map_err(|e| LlamaError::io(f, e))?;
        }
    }
    replace_dir(&tmp, dir)
}

/// Replaces `dir` by `tmp` so that at every moment one complete copy exists on disk.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let old = dir.with_file_name(format!(
            ".{}.old-{}",
            dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(dir, &old).map_err(|e| LlamaError::io(dir, e))?;
        std::fs::rename(tmp, dir).map_err(|e| LlamaError::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| LlamaError::io(&old, e))?;
    } else {
        std::fs::rename(tmp, dir).map_err(|e| LlamaError::io(dir, e))?;
    }
    Ok(())
}
