//! LoRA: a fresh adapter (B = 0) leaves the model unchanged; a merged adapter computes what the
//! adapter computes; a saved PEFT adapter folder loads as a model (merged) and back into a LoRA
//! model (unmerged); only the adapter trains.
use llama::checkpoint::{self as ck, SaveOptions};
use llama::lora::{self, AdapterInfo, LoraConfig, SavedAdapter};
use llama::model::Mask;
use llama::{Config, Llama};
use std::sync::Mutex;
use tch::{nn, Device, Kind, Tensor};

/// torch's generator is one per process and the tests of this file run on parallel threads:
/// each test holds this lock, so no other test draws between a test's seeding and its draws.
static TORCH_RNG: Mutex<()> = Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn base(dir: &std::path::Path) -> (nn::VarStore, Llama) {
    tch::manual_seed(5);
    let vs = ck::var_store(Device::Cpu, Kind::Float);
    let m = Llama::new(&vs.root(), &Config::micro());
    ck::save(&vs, &m.cfg, dir, &SaveOptions::default()).unwrap();
    (vs, m)
}

fn lora_cfg() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, targets: ["q_proj", "v_proj", "o_proj", "down_proj"].map(String::from).to_vec(), ..Default::default() }
}

fn logits(m: &Llama) -> Tensor {
    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&[1i64, 17, 42, 99, 7, 3, 150, 8]).view([1, 8]);
    let pos = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([1, 8]);
    m.lm_logits(&m.forward(&ids, &pos, &Mask::Causal, None))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// Gives every B a random value, as training would.
fn perturb(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (n, t) in vs.variables() {
            if n.contains(".lora_B.") {
                t.shallow_clone().copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.05));
            }
        }
    });
}

#[test]
fn a_fresh_adapter_leaves_the_model_unchanged_and_only_the_adapter_trains() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (vs, mut m) = base(dir.path());
    let before = logits(&m);
    m.add_lora(&vs.root(), &lora_cfg());
    lora::freeze_base(&vs, |_| false);
    let after = logits(&m);
    assert_eq!(max_diff(&before, &after), 0.0, "B = 0: the adapter adds exactly nothing");
    let trainable: Vec<String> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
    let layers = m.cfg.num_hidden_layers as usize;
    assert_eq!(trainable.len(), layers * 4 * 2, "A and B of 4 targets per layer: {trainable:?}");
    assert!(trainable.iter().all(|n| lora::is_lora(n)));
    let counted: i64 = vs.variables().into_iter().filter(|(n, _)| lora::is_lora(n)).map(|(_, t)| t.numel() as i64).sum();
    assert_eq!(counted, lora_cfg().num_parameters(&m.cfg), "the planner's count of adapter parameters");
    // A gradient reaches A only through B, which is zero; B's gradient is non-zero.
    let ids = Tensor::from_slice(&[1i64, 5, 9, 11]).view([1, 4]);
    let pos = Tensor::arange(4, (Kind::Int64, Device::Cpu)).view([1, 4]);
    m.lm_logits(&m.forward(&ids, &pos, &Mask::Causal, None)).square().sum(Kind::Float).backward();
    let vars = vs.variables();
    let gb = vars["model.layers.0.self_attn.q_proj.lora_B.weight"].grad();
    assert!(f64::try_from(gb.abs().max()).unwrap() > 0.0, "B gets a gradient");
    assert!(!vars["model.layers.0.self_attn.q_proj.weight"].grad().defined(), "the frozen base gets none");
}

#[test]
fn merging_equals_the_adapter_and_a_saved_adapter_loads_merged_and_unmerged() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let base_dir = dir.path().join("base");
    let (vs, mut m) = base(&base_dir);
    let lc = lora_cfg();
    m.add_lora(&vs.root(), &lc);
    perturb(&vs);
    let with_adapter = logits(&m);
    let base_logits = {
        let (_v, b) = ck::load_causal_lm(&base_dir, Device::Cpu, Kind::Float).unwrap();
        logits(&b)
    };
    assert!(max_diff(&with_adapter, &base_logits) > 1e-3, "the perturbed adapter changes the outputs");

    // Saved as a PEFT folder: names, config, and no base weights.
    let adapter_dir = dir.path().join("adapter");
    let info = AdapterInfo { base: base_dir.clone(), task_type: "CAUSAL_LM", modules_to_save: vec![] };
    lora::save_adapter(&vs, &lc, &info, &adapter_dir, Kind::Float, &[]).unwrap();
    assert!(lora::is_adapter_dir(&adapter_dir));
    let files = ck::CheckpointFiles::open_file(&adapter_dir.join("adapter_model.safetensors")).unwrap();
    let names: Vec<&str> = files.names().collect();
    assert!(names.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), "{names:?}");
    assert!(names.iter().all(|n| n.contains(".lora_")), "only adapter tensors: {names:?}");
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(conf["peft_type"], "LORA");
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["lora_alpha"], 8.0);
    assert_eq!(conf["target_modules"], serde_json::json!(["q_proj", "v_proj", "o_proj", "down_proj"]));

    // An adapter folder is a model folder: base + merged adapter.
    let (_v2, merged) = ck::load_causal_lm(&adapter_dir, Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&logits(&merged), &with_adapter);
    assert!(d < 1e-4, "merged-on-load differs from the adapter by {d:e}");

    // In place merge, and the merged HF save, compute the same.
    let merged_dir = dir.path().join("merged");
    ck::save_merged(&vs, lc.scale(), &m.cfg, &merged_dir, &SaveOptions::default()).unwrap();
    let (_v3, saved_merged) = ck::load_causal_lm(&merged_dir, Device::Cpu, Kind::Float).unwrap();
    let d = max_diff(&logits(&saved_merged), &with_adapter);
    assert!(d < 1e-4, "save_merged differs from the adapter by {d:e}");
    assert!(!ck::CheckpointFiles::open(&merged_dir).unwrap().names().any(lora::is_lora), "a merged checkpoint has no adapter tensors");
    m.merge_lora();
    let d = max_diff(&logits(&m), &with_adapter);
    assert!(d < 1e-4, "merge_lora differs from the adapter by {d:e}");

    // Unmerged into a fresh LoRA model (resume): bit-identical adapter tensors.
    let (vs4, mut m4) = {
        tch::manual_seed(99);
        let vs = ck::var_store(Device::Cpu, Kind::Float);
        let mut m = Llama::new(&vs.root(), &Config::micro());
        let mut vs = vs;
        ck::load_var_store(&mut vs, &base_dir).unwrap();
        m.add_lora(&vs.root(), &lc);
        (vs, m)
    };
    SavedAdapter::open(&adapter_dir).unwrap().load_unmerged(&vs4).unwrap();
    assert_eq!(max_diff(&logits(&m4), &with_adapter), 0.0, "the unmerged reload is the same model");
    m4.merge_lora();
}

#[test]
fn adapter_settings_and_folders_are_checked() {
    let bad = |f: &dyn Fn(&mut LoraConfig)| {
        let mut c = LoraConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(bad(&|c| c.r = 0).contains("lora.r"));
    assert!(bad(&|c| c.targets = vec!["qkv".into()]).contains("unknown projection \"qkv\""));
    assert!(bad(&|c| c.dropout = 1.0).contains("lora.dropout"));
    let c = LoraConfig { dropout: 0.1, ..Default::default() };
    assert!(c.validate_for_stage(true, true).unwrap_err().contains("gradient_checkpointing"));
    assert!(c.validate_for_stage(false, false).unwrap_err().contains("needs `model`"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16}"#).unwrap();
    let e = ck::load_config(dir.path()).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("base_model_name_or_path"), "{e}");
    std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type": "IA3"}"#).unwrap();
    let e = ck::load_config(dir.path()).unwrap_err().to_string();
    assert!(e.contains("IA3"), "{e}");
}

#[test]
fn dropout_acts_only_in_training_forwards() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (vs, mut m) = base(dir.path());
    m.add_lora(&vs.root(), &LoraConfig { dropout: 0.5, ..lora_cfg() });
    perturb(&vs);
    let a = logits(&m);
    let b = logits(&m);
    assert_eq!(max_diff(&a, &b), 0.0, "no dropout without gradient (generation, scoring)");
    let ids = Tensor::from_slice(&[1i64, 17, 42, 99, 7, 3, 150, 8]).view([1, 8]);
    let pos = Tensor::arange(8, (Kind::Int64, Device::Cpu)).view([1, 8]);
    let train = |seed: i64| {
        tch::manual_seed(seed);
        m.lm_logits(&m.forward(&ids, &pos, &Mask::Causal, None)).detach()
    };
    assert!(max_diff(&train(1), &a) > 1e-4, "dropout changes a training forward");
    assert_eq!(max_diff(&train(2), &train(2)), 0.0, "and is reproducible from the seed");
}
