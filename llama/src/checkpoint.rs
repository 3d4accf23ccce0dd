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

    /// The file that holds tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.location.get(name).map(|&i| self.files[i].0.as_path())
    }

    /// Reads tensor `name` to fill a variable of `shape` and `kind`, converted to `kind` (on the
    /// CPU). A missing tensor, another shape or a non-float dtype is an error that names the
    /// checkpoint folder, the file and the tensor. One tensor at a time: ZeRO-3's shard-on-load
    /// reads each decoder-layer tensor this way and keeps only its rank's part.
    pub fn tensor_for(&self, name: &str, shape: &[i64], kind: Kind) -> Result<Tensor> {
        let Some((found, dtype)) = self.shape_and_dtype(name) else {
            let files: Vec<String> =
                self.files.iter().map(|(p, _)| p.file_name().unwrap_or_default().to_string_lossy().to_string()).collect();
            let within = match files.len() {
                1..=3 => files.join(", "),
                n => format!("any of its {n} files"),
            };
            return Err(LlamaError::Checkpoint { dir: self.dir.clone(), msg: format!("missing tensor {name} (not in {within})") });
        };
        let file = self.file_of(name).map(|p| p.display().to_string()).unwrap_or_default();
        if found != shape {
            return Err(LlamaError::Checkpoint {
                dir: self.dir.clone(),
                msg: format!("{file}: tensor {name} has shape {found:?}, the model expects {shape:?}"),
            });
        }
        if !dtype_fits(dtype, kind) {
            return Err(LlamaError::Checkpoint {
                dir: self.dir.clone(),
                msg: format!("{file}: tensor {name} is {dtype:?}, expected {}", expected_dtypes(kind)),
            });
        }
        Ok(self.tensor(name)?.f_to_kind(kind)?)
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
    load_dyn(vs, dir, &optional, &|_| false)
}

/// As [`load_var_store_with`], leaving the variables for which `skip` holds untouched and
/// unchecked: ZeRO-3's shard-on-load reads the decoder layers itself, one tensor at a time
/// ([`CheckpointFiles::tensor_for`]), and loads only the rest whole here. Not for PEFT adapter
/// folders (their merge needs the whole base weights).
pub fn load_var_store_except(
    vs: &mut nn::VarStore,
    dir: &Path,
    optional: impl Fn(&str) -> bool,
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    if crate::lora::is_adapter_dir(dir) {
        return Err(LlamaError::Checkpoint {
            dir: dir.to_path_buf(),
            msg: "a PEFT adapter folder cannot be loaded in part (ZeRO-3 shard-on-load): merge it first".into(),
        });
    }
    load_dyn(vs, dir, &optional, &skip)
}

fn load_dyn(vs: &mut nn::VarStore, dir: &Path, optional: &dyn Fn(&str) -> bool, skip: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
    if crate::lora::is_adapter_dir(dir) {
        let adapter = crate::lora::SavedAdapter::open(dir)?;
        let saved = adapter.names();
        let mut skipped = load_dyn(vs, &adapter.base, &|n: &str| optional(n) || saved.iter().any(|s| s == n), skip)?;
        let set = adapter.merge_into(vs)?;
        skipped.retain(|n| !set.contains(n));
        return Ok(skipped);
    }
    let files = CheckpointFiles::open(dir)?;
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|n| !skip(n)).collect();
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
    let entries: Vec<Entry> = tensors.iter().map(|(n, t)| Entry { name: n.clone(), shape: t.size(), kind: kind_of(t) }).collect();
    let mut w = open_safetensors(path, &entries)?;
    for (_, t) in tensors {
        write_tensor(path, &mut w, t, kind_of(t))?;
    }
    close_safetensors(path, w)
}

/// One tensor of a safetensors file: its name, shape and on-disk kind.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    shape: Vec<i64>,
    kind: Kind,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<i64>() as usize * self.kind.elt_size_in_bytes()
    }
}

/// Creates `path` and writes the safetensors header of `entries` (their data to follow in order).
fn open_safetensors(path: &Path, entries: &[Entry]) -> Result<std::io::BufWriter<File>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for e in entries {
        let bytes = e.bytes();
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": dtype_name(e.kind)?, "shape": e.shape, "data_offsets": [offset, offset + bytes]}),
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
    Ok(w)
}

/// Appends `t`'s bytes as `kind`: converted and copied to the host here, the copy dropped after.
fn write_tensor(path: &Path, w: &mut std::io::BufWriter<File>, t: &Tensor, kind: Kind) -> Result<()> {
    let host = tch::no_grad(|| t.to_kind(kind).to_device(Device::Cpu).contiguous());
    let mut buf = vec![0u8; host.numel() * host.kind().elt_size_in_bytes()];
    host.f_copy_data_u8(&mut buf, host.numel())?;
    w.write_all(&buf).map_err(|e| LlamaError::io(path, e))
}

fn close_safetensors(path: &Path, w: std::io::BufWriter<File>) -> Result<()> {
    let f = w.into_inner().map_err(|e| LlamaError::io(path, e.into_error()))?;
    f.sync_all().map_err(|e| LlamaError::io(path, e))
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
/// atomically. Each tensor is copied to the host only as it is written, and that copy dropped
/// before the next (streamed checkpoints; [`StreamedSave`] does the writing).
pub fn save_tensors(vars: Vec<(String, Tensor)>, cfg: &Config, dir: &Path, opts: &SaveOptions) -> Result<()> {
    let specs = vars.iter().map(|(n, t)| (n.clone(), t.size(), t.kind())).collect();
    let mut save = StreamedSave::begin(specs, cfg, dir, opts)?;
    let mut by_name: HashMap<String, Tensor> = vars.into_iter().collect();
    for name in save.order() {
        let t = by_name.remove(&name).expect("one tensor per planned name");
        save.push(&name, &t)?;
    }
    save.finish()
}

/// Sorts tensor names into the order a checkpoint holds them (a model's state dict: layer
/// indices numerically), the order [`StreamedSave::push`] takes them in.
pub fn write_order(names: &mut [String]) {
    names.sort_by_key(|n| natural_key(n));
}

/// An HF checkpoint written tensor by tensor as the values arrive: every tensor's name, shape
/// and kind are known up front (so the safetensors headers and the sharding into files are
/// planned before any data exists), then [`StreamedSave::push`] writes each one, in
/// [`write_order`], and the caller may free it. ZeRO-3 gathers one decoder layer at a time to
/// save a model no rank holds whole. The files are the ones [`save_tensors`] writes (it uses
/// this), into a temp folder that [`StreamedSave::finish`] puts in place of `dir`.
pub struct StreamedSave {
    dir: PathBuf,
    tmp: PathBuf,
    /// Each file's name and tensors.
    files: Vec<(String, Vec<Entry>)>,
    /// The next tensor: (file, entry).
    next: (usize, usize),
    writer: Option<std::io::BufWriter<File>>,
    total: u64,
    config: String,
    extra_files: Vec<PathBuf>,
}

impl StreamedSave {
    /// Plans the files of tensors `specs` (name, shape, kind in memory; floating-point ones are
    /// written as `opts.dtype`), sharded above `opts.max_shard_bytes`, and creates the temp
    /// folder beside `dir`.
    pub fn begin(mut specs: Vec<(String, Vec<i64>, Kind)>, cfg: &Config, dir: &Path, opts: &SaveOptions) -> Result<Self> {
        specs.sort_by_key(|(n, _, _)| natural_key(n));
        let mut shards: Vec<Vec<Entry>> = vec![Vec::new()];
        let (mut shard_bytes, mut total) = (0u64, 0u64);
        for (name, shape, kind) in specs {
            let kind = if is_float(kind) { opts.dtype } else { kind };
            dtype_name(kind)?;
            let e = Entry { name, shape, kind };
            let b = e.bytes() as u64;
            if shard_bytes > 0 && shard_bytes + b > opts.max_shard_bytes {
                shards.push(Vec::new());
                shard_bytes = 0;
            }
            shard_bytes += b;
            total += b;
            shards.last_mut().expect("at least one shard").push(e);
        }
        let n = shards.len();
        let files = shards
            .into_iter()
            .enumerate()
            .map(|(i, s)| (if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, n) }, s))
            .collect();
        let config = cfg.to_hf_json(&opts.architecture, kind_name(opts.dtype));
        let config = serde_json::to_string_pretty(&config).expect("config serialises");
        let tmp = temp_sibling(dir)?;
        Ok(StreamedSave {
            dir: dir.to_path_buf(),
            tmp,
            files,
            next: (0, 0),
            writer: None,
            total,
            config,
            extra_files: opts.extra_files.clone(),
        })
    }

    /// The tensor names in the order [`StreamedSave::push`] takes them.
    pub fn order(&self) -> Vec<String> {
        self.files.iter().flat_map(|(_, es)| es.iter().map(|e| e.name.clone())).collect()
    }

    /// Writes the next tensor (it must be `name`, of the planned shape); its host copy is freed
    /// when this returns.
    pub fn push(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let (f, i) = self.next;
        let Some((fname, entries)) = self.files.get(f) else {
            return Err(LlamaError::Invalid(format!("streamed save of {}: {name} is one tensor too many", self.dir.display())));
        };
        let e = &entries[i];
        if e.name != name || t.size() != e.shape {
            return Err(LlamaError::Invalid(format!(
                "streamed save of {}: got {name} {:?}, expected {} {:?}",
                self.dir.display(),
                t.size(),
                e.name,
                e.shape
            )));
        }
        let path = self.tmp.join(fname);
        if self.writer.is_none() {
            self.writer = Some(open_safetensors(&path, entries)?);
        }
        write_tensor(&path, self.writer.as_mut().expect("opened above"), t, e.kind)?;
        self.next = if i + 1 == entries.len() {
            close_safetensors(&path, self.writer.take().expect("open"))?;
            (f + 1, 0)
        } else {
            (f, i + 1)
        };
        Ok(())
    }

    /// After the last tensor: the index (sharded), `config.json` and the extra files, then the
    /// temp folder replaces `dir`.
    pub fn finish(mut self) -> Result<()> {
        while let Some((fname, entries)) = self.files.get(self.next.0) {
            if let Some(e) = entries.get(self.next.1) {
                return Err(LlamaError::Invalid(format!("streamed save of {}: {} was never written", self.dir.display(), e.name)));
            }
            // A model without tensors still gets its (empty) file.
            let path = self.tmp.join(fname);
            close_safetensors(&path, open_safetensors(&path, entries)?)?;
            self.next = (self.next.0 + 1, 0);
        }
        if self.files.len() > 1 {
            let mut weight_map = BTreeMap::new();
            for (fname, entries) in &self.files {
                for e in entries {
                    weight_map.insert(e.name.clone(), fname.clone());
                }
            }
            let index = serde_json::json!({"metadata": {"total_size": self.total}, "weight_map": weight_map});
            let text = serde_json::to_string_pretty(&index).expect("index serialises");
            write_atomic(&self.tmp.join("model.safetensors.index.json"), text.as_bytes())?;
        }
        write_atomic(&self.tmp.join("config.json"), self.config.as_bytes())?;
        for f in &self.extra_files {
            if let Some(name) = f.file_name() {
                std::fs::copy(f, self.tmp.join(name)).map_err(|e| LlamaError::io(f, e))?;
            }
        }
        replace_dir(&self.tmp, &self.dir)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn le_f32(xs: &[f32]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// The streamed writer's files byte by byte: an 8-byte header length, the JSON header
    /// (metadata, then each tensor's dtype, shape and data offsets) padded with spaces to a
    /// multiple of 8, then the data in state-dict order (`layers.2` before `layers.10`); above
    /// the shard limit, HF's numbered files and index. Tensors come one at a time, in order only.
    #[test]
    fn a_streamed_save_writes_safetensors_in_state_dict_order_and_shards_by_size() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::micro();
        let specs = vec![
            ("model.layers.10.w".to_string(), vec![2], Kind::Float),
            ("model.layers.2.w".to_string(), vec![1], Kind::Float),
            ("lm_head.weight".to_string(), vec![1], Kind::Float),
        ];
        let vals = [("lm_head.weight", vec![1.5f32]), ("model.layers.2.w", vec![-2.0]), ("model.layers.10.w", vec![0.25, 4.0])];
        let dir = tmp.path().join("one");
        let mut s = StreamedSave::begin(specs.clone(), &cfg, &dir, &SaveOptions::default()).unwrap();
        assert_eq!(s.order(), ["lm_head.weight", "model.layers.2.w", "model.layers.10.w"]);
        let err = s.push("model.layers.2.w", &Tensor::from_slice(&[0f32])).unwrap_err();
        assert!(err.to_string().contains("expected lm_head.weight"), "{err}");
        for (n, v) in &vals {
            s.push(n, &Tensor::from_slice(v)).unwrap();
        }
        s.finish().unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let mut header = br#"{"__metadata__":{"format":"pt"},"lm_head.weight":{"data_offsets":[0,4],"dtype":"F32","shape":[1]},"model.layers.10.w":{"data_offsets":[8,16],"dtype":"F32","shape":[2]},"model.layers.2.w":{"data_offsets":[4,8],"dtype":"F32","shape":[1]}}"#.to_vec();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut want = (header.len() as u64).to_le_bytes().to_vec();
        want.extend(&header);
        want.extend(le_f32(&[1.5, -2.0, 0.25, 4.0]));
        assert_eq!(bytes, want);
        assert!(dir.join("config.json").exists());

        // 8-byte shards: lm_head and layers.2 (4 + 4 bytes), then layers.10.
        let dir = tmp.path().join("sharded");
        let opts = SaveOptions { max_shard_bytes: 8, ..Default::default() };
        let mut s = StreamedSave::begin(specs.clone(), &cfg, &dir, &opts).unwrap();
        for (n, v) in &vals[..2] {
            s.push(n, &Tensor::from_slice(v)).unwrap();
        }
        let tmp_dir = s.tmp.clone();
        assert!(tmp_dir.join("model-00001-of-00002.safetensors").exists(), "a finished file is closed before the next starts");
        let cut = StreamedSave {
            dir: s.dir.clone(),
            tmp: tmp_dir.clone(),
            files: s.files.clone(),
            next: s.next,
            writer: None,
            total: 0,
            config: String::new(),
            extra_files: vec![],
        };
        let err = cut.finish().unwrap_err();
        assert!(err.to_string().contains("model.layers.10.w was never written"), "{err}");
        assert!(!dir.exists(), "an incomplete save is never put in place");
        s.push("model.layers.10.w", &Tensor::from_slice(&vals[2].1)).unwrap();
        s.finish().unwrap();
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 16);
        assert_eq!(index["weight_map"]["model.layers.10.w"], "model-00002-of-00002.safetensors");
        assert_eq!(index["weight_map"]["model.layers.2.w"], "model-00001-of-00002.safetensors");
        let files = CheckpointFiles::open(&dir).unwrap();
        assert_eq!(Vec::<f32>::try_from(files.tensor("model.layers.10.w").unwrap()).unwrap(), [0.25, 4.0]);
        let err = files.tensor_for("model.layers.2.w", &[2], Kind::Float).unwrap_err().to_string();
        assert!(err.contains("model-00001-of-00002.safetensors: tensor model.layers.2.w has shape [1], the model expects [2]"), "{err}");
        let err = files.tensor_for("model.layers.3.w", &[1], Kind::Float).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor model.layers.3.w (not in model-00001-of-00002.safetensors, model-00002-of-00002.safetensors)"),
            "{err}"
        );
    }
}
