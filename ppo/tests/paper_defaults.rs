//! PPO's paper values (Llama 2 Section 3.2.3) pinned in the config defaults and in the shipped
//! configs: AdamW (0.9, 0.95) eps 1e-5, weight decay 0.1, gradient clip 1.0, constant lr 1e-6,
//! 512 prompts per iteration in mini-batches of 64 with one gradient step each, PPO clip 0.2, the
//! 0.15 safety threshold, `WHITEN(LOGIT(Rc))`, KL β 0.01 for 7B/13B and 0.005 for 34B/70B,
//! 200-400 iterations.
use ppo::PpoConfig;
use std::path::{Path, PathBuf};
use training::config::ScheduleKind;

fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn assert_paper(c: &PpoConfig, kl_beta: f64, what: &str) {
    let t = &c.train;
    assert_eq!((t.lr, t.schedule), (1e-6, ScheduleKind::Constant), "{what}: constant lr 1e-6");
    assert_eq!((t.beta1, t.beta2, t.eps), (0.9, 0.95, 1e-5), "{what}: AdamW betas and eps");
    assert_eq!((t.weight_decay, t.grad_clip), (0.1, 1.0), "{what}: weight decay, gradient clip");
    assert_eq!(c.rollout_batch_size, 512, "{what}: batch 512");
    assert_eq!(t.micro_batch_size * t.grad_accumulation, 64, "{what}: mini-batch 64");
    assert_eq!((c.ppo_epochs, c.steps_per_iteration()), (1, 8), "{what}: one gradient step per mini-batch");
    assert_eq!(c.clip_ratio, 0.2, "{what}: PPO clip");
    assert_eq!(c.kl_beta, kl_beta, "{what}: KL beta");
    assert_eq!(c.safety_threshold, 0.15, "{what}: Rs < 0.15 sends a response to the safety RM");
    assert!(c.whiten_rewards, "{what}: WHITEN(LOGIT(Rc))");
    assert!((200..=400).contains(&c.iterations), "{what}: 200-400 iterations, not {}", c.iterations);
}

#[test]
fn defaults_are_the_llama2_ppo_recipe() {
    let c: PpoConfig =
        serde_json::from_value(serde_json::json!({"policy": "p", "helpfulness_rm": "h", "train_prompts": ["x.jsonl"]})).unwrap();
    assert_paper(&c, 0.01, "defaults");
    assert_eq!(c.train, ppo::config::ppo_train_defaults());
}

fn read_toml(path: &Path) -> toml::Table {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).parse().unwrap()
}

/// The `config` table of the pipeline stage of `kind` (exactly one).
fn stage(pipeline: &toml::Table, kind: &str) -> toml::Value {
    let stages: Vec<&toml::Value> = pipeline["stages"].as_array().unwrap().iter().filter(|s| s["kind"].as_str() == Some(kind)).collect();
    assert_eq!(stages.len(), 1, "one {kind} stage");
    stages[0]["config"].clone()
}

#[test]
fn shipped_configs_are_the_llama2_ppo_recipe() {
    let c: PpoConfig = toml::Value::Table(read_toml(&configs().join("ppo-llama2-7b.toml"))).try_into().unwrap();
    assert_paper(&c, 0.01, "ppo-llama2-7b.toml");
    for (file, beta) in [("pipeline-llama2-7b.toml", 0.01), ("pipeline-llama2-13b.toml", 0.01), ("pipeline-llama2-70b.toml", 0.005)] {
        let c: PpoConfig = stage(&read_toml(&configs().join(file)), "ppo").try_into().unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_paper(&c, beta, file);
    }
}
