//! The Llama 2 values of SFT (Section 3.1), the reward models (Section 3.2.2) and rejection
//! sampling (Section 3.2.3) pinned in the shipped configs, standalone and as pipeline stages.
//! (Each crate's config tests pin its defaults; PPO's shipped configs are checked in `ppo`.)
use rejection_sampling::RejectionSamplingConfig;
use reward::RewardConfig;
use sft::SftConfig;
use std::path::{Path, PathBuf};
use training::config::ScheduleKind;
use training::TrainConfig;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn read_toml(name: &str) -> toml::Value {
    let path = configs().join(name);
    toml::Value::Table(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).parse().unwrap())
}

/// The `config` tables of the pipeline stages of `kind`, by stage name.
fn stages(pipeline: &toml::Value, kind: &str) -> Vec<(String, toml::Value)> {
    pipeline["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"].as_str() == Some(kind))
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["config"].clone()))
        .collect()
}

const PIPELINES: [&str; 3] = ["pipeline-llama2-7b.toml", "pipeline-llama2-13b.toml", "pipeline-llama2-70b.toml"];

/// AdamW as Llama 2 pretraining (Section 2.2): (0.9, 0.95), eps 1e-5, weight decay 0.1, clip 1.0.
fn assert_adamw(t: &TrainConfig, what: &str) {
    assert_eq!((t.beta1, t.beta2, t.eps, t.weight_decay, t.grad_clip), (0.9, 0.95, 1e-5, 0.1, 1.0), "{what}: AdamW");
}

/// Section 3.1: cosine lr 2e-5 (to 10%), weight decay 0.1, batch 64, 2 epochs.
fn assert_sft(t: &TrainConfig, what: &str) {
    assert_eq!((t.lr, t.schedule, t.lr_floor_ratio), (2e-5, ScheduleKind::Cosine, 0.1), "{what}: cosine lr 2e-5");
    assert_eq!(t.micro_batch_size * t.grad_accumulation, 64, "{what}: batch 64");
    assert_eq!(t.epochs, 2, "{what}: 2 epochs");
    assert_adamw(t, what);
}

#[test]
fn shipped_sft_configs_are_the_llama2_recipe() {
    let c: SftConfig = read_toml("sft-llama2-7b.toml").try_into().unwrap();
    assert_sft(&c.train, "sft-llama2-7b.toml");
    assert_eq!((c.max_seq_len, c.packing), (4096, true));
    for file in PIPELINES {
        let sft = stages(&read_toml(file), "sft");
        assert!(!sft.is_empty(), "{file}: no sft stage");
        for (name, v) in sft {
            let c: SftConfig = v.try_into().unwrap_or_else(|e| panic!("{file} {name}: {e}"));
            assert_sft(&c.train, &format!("{file} {name}"));
        }
    }
}

/// Section 3.2.2: 1 epoch, max lr 1e-5 (5e-6 for 70B), cosine to 10%, warmup 3% (min 5), 512 pairs.
fn assert_rm(c: &RewardConfig, lr: f64, what: &str) {
    let t = &c.train;
    assert_eq!(t.lr, lr, "{what}: max lr");
    assert_eq!(t.epochs, 1, "{what}: one epoch");
    assert_eq!((t.schedule, t.lr_floor_ratio), (ScheduleKind::Cosine, 0.1), "{what}: cosine to 10%");
    assert_eq!((t.warmup_ratio, t.warmup_min_steps), (0.03, 5), "{what}: warmup 3%, at least 5 steps");
    assert_eq!(t.micro_batch_size * t.grad_accumulation, 512, "{what}: 512 pairs per step");
    assert_adamw(t, what);
}

#[test]
fn shipped_reward_configs_are_the_llama2_recipe() {
    for file in ["reward-llama2-7b-helpfulness.toml", "reward-llama2-7b-safety.toml"] {
        let c: RewardConfig = read_toml(file).try_into().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_rm(&c, 1e-5, file);
    }
    for (file, lr) in [(PIPELINES[0], 1e-5), (PIPELINES[1], 1e-5), (PIPELINES[2], 5e-6)] {
        let rms = stages(&read_toml(file), "reward");
        assert_eq!(rms.len(), 2, "{file}: a helpfulness and a safety RM");
        for (name, v) in rms {
            let c: RewardConfig = v.try_into().unwrap_or_else(|e| panic!("{file} {name}: {e}"));
            assert_rm(&c, lr, &format!("{file} {name}"));
        }
    }
}

/// Section 3.2.3: the 0.15 threshold, T in [1.2, 1.3] for 10-100 samples, an SFT-like fine-tune.
fn assert_rs(c: &RejectionSamplingConfig, what: &str) {
    assert_eq!(c.safety_threshold, 0.15, "{what}: safety threshold");
    assert!((10..=100).contains(&c.best_of_k), "{what}: K = {} outside the 10-100 of Figure 8", c.best_of_k);
    assert!(c.temperatures.iter().all(|t| (1.2..=1.3).contains(t)), "{what}: temperatures {:?} outside [1.2, 1.3]", c.temperatures);
    assert_sft(&c.finetune.train, &format!("{what} finetune"));
}

#[test]
fn shipped_rejection_sampling_configs_are_the_llama2_recipe() {
    let c: RejectionSamplingConfig = read_toml("rs-llama2-70b.toml").try_into().unwrap();
    assert_rs(&c, "rs-llama2-70b.toml");
    assert_eq!(c.iterations, 4, "RLHF-V1..V4");
    let d: RejectionSamplingConfig =
        serde_json::from_value(serde_json::json!({"policy": "p", "helpfulness_rm": "h", "prompts": ["x.jsonl"]})).unwrap();
    assert_eq!(d.safety_threshold, 0.15, "default safety threshold");
    assert_eq!(d.temperatures, [1.2], "default temperature");
    assert_sft(&d.finetune.train, "default finetune");
    // Only the 70B samples (the smaller models distil its pool).
    let rs = stages(&read_toml(PIPELINES[2]), "rejection_sampling");
    assert_eq!(rs.len(), 1);
    for (name, v) in rs {
        let c: RejectionSamplingConfig = v.try_into().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_rs(&c, &format!("{} {name}", PIPELINES[2]));
    }
}
