//! Checkpoint loading is strict: a tensor's dtype is checked as strictly as its shape, and every
//! bad tensor is listed in one error.
use llama::checkpoint::{self, SaveOptions};
use llama::{Config, Llama};
use std::path::Path;
use tch::{Device, Kind};

/// A micro Llama with a 64-token vocabulary, saved as F32 into `dir`.
fn save_micro(dir: &Path) -> Config {
    let cfg = Config { vocab_size: 64, ..Config::micro() };
    let vs = checkpoint::var_store(Device::Cpu, Kind::Float);
    let _model = Llama::new(&vs.root(), &cfg);
    checkpoint::save(&vs, &cfg, dir, &SaveOptions::default()).unwrap();
    cfg
}

/// Rewrites the header of a safetensors file so that the named tensors claim `dtype` (the data
/// bytes are left as they are, so a dtype of the same width keeps the file valid).
fn retype(path: &Path, names: &[&str], dtype: &str) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for name in names {
        header[*name]["dtype"] = serde_json::json!(dtype);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn integer_dtype_over_float_bytes_is_refused_naming_every_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let cfg = save_micro(&dir);
    let bad = ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"];
    retype(&dir.join("model.safetensors"), &bad, "I32");
    let mut vs = checkpoint::var_store(Device::Cpu, Kind::Float);
    let _model = Llama::new(&vs.root(), &cfg);
    let err = checkpoint::load_var_store(&mut vs, &dir).unwrap_err().to_string();
    assert!(err.contains("2 wrong-dtype tensor(s)"), "{err}");
    for name in bad {
        assert!(err.contains(&format!("{name}: found I32, expected F32, BF16 or F16")), "{err}");
    }
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

#[test]
fn wrong_dtype_and_missing_tensors_share_one_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let cfg = save_micro(&dir);
    retype(&dir.join("model.safetensors"), &["model.embed_tokens.weight"], "U32");
    let mut vs = checkpoint::var_store(Device::Cpu, Kind::Float);
    let _model = Llama::new(&vs.root(), &cfg);
    let _extra = (vs.root() / "extra").zeros("weight", &[2]);
    let err = checkpoint::load_var_store(&mut vs, &dir).unwrap_err().to_string();
    assert!(err.contains("1 missing tensor(s): extra.weight"), "{err}");
    assert!(err.contains("model.embed_tokens.weight: found U32"), "{err}");
}

#[test]
fn half_precision_on_disk_loads_into_float_compute() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let cfg = Config { vocab_size: 64, ..Config::micro() };
    let vs = checkpoint::var_store(Device::Cpu, Kind::Float);
    let _model = Llama::new(&vs.root(), &cfg);
    for dtype in [Kind::Half, Kind::BFloat16, Kind::Float] {
        checkpoint::save(&vs, &cfg, &dir, &SaveOptions { dtype, ..Default::default() }).unwrap();
        let (loaded, _) = checkpoint::load_causal_lm(&dir, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(loaded.variables().len(), vs.variables().len(), "{dtype:?}");
    }
}

#[test]
fn dtype_fits_floats_only_for_float_variables() {
    use safetensors::Dtype;
    for d in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        assert!(checkpoint::dtype_fits(d, Kind::Float) && checkpoint::dtype_fits(d, Kind::BFloat16), "{d:?}");
    }
    for d in [Dtype::I32, Dtype::U32, Dtype::I16, Dtype::F64, Dtype::I64, Dtype::U8, Dtype::F8_E4M3] {
        assert!(!checkpoint::dtype_fits(d, Kind::Float), "{d:?}");
    }
    assert!(checkpoint::dtype_fits(Dtype::I64, Kind::Int64));
    assert!(!checkpoint::dtype_fits(Dtype::F32, Kind::Int64));
}
