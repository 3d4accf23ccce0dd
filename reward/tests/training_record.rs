//! The reward-model stage stores the `max_seq_len` it trained with beside every saved model
//! (`reward_config.json`, `config.json` stays the HF config), so that `reward eval` and `reward
//! score` score the same token sequences as training did.
use reward::data::PairTokens;
use reward::model::{trained_max_seq_len, TRAINING_RECORD};
use reward::RewardConfig;
use std::path::Path;

fn pair(k: u32) -> PairTokens {
    PairTokens {
        prefix: vec![1, 40 + k, 41, 42],
        chosen: vec![50 + k, 2],
        rejected: vec![60 + k, 61, 2],
        rating: None,
        kind: None,
        source: None,
        chosen_safe: None,
        rejected_safe: None,
        truncated: k == 0,
    }
}

#[test]
fn every_saved_reward_model_records_its_training_max_seq_len() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa");
    let cfg: RewardConfig = serde_json::from_value(serde_json::json!({
        "model": fixture, "train_data": ["unused.jsonl"], "max_seq_len": 48,
        "train": {"lr": 1e-4, "micro_batch_size": 2, "grad_accumulation": 1, "epochs": 1, "max_steps": 2,
                  "save_every": 1, "device": "cpu", "threads": 1},
    }))
    .unwrap();
    let pairs: Vec<PairTokens> = (0..4).map(pair).collect();
    let out = tmp.path().join("rm");
    let r = reward::trainer::train(&cfg, &pairs, &[], &out, false, &[]).unwrap();
    assert_eq!(trained_max_seq_len(&r.final_model), Some(48));
    // Checkpoints too: each saved model folder (one with a config.json) in each step folder.
    let mut models = Vec::new();
    for step in std::fs::read_dir(out.join("checkpoints")).unwrap().flatten() {
        if step.file_name().to_string_lossy().starts_with("step-") {
            let dirs = std::iter::once(step.path()).chain(std::fs::read_dir(step.path()).unwrap().flatten().map(|e| e.path()));
            models.extend(dirs.filter(|d| d.join("config.json").exists()));
        }
    }
    assert!(!models.is_empty());
    for m in models {
        assert_eq!(trained_max_seq_len(&m), Some(48), "{}", m.display());
    }
    // config.json is still the plain HF config.
    let hf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(r.final_model.join("config.json")).unwrap()).unwrap();
    assert!(hf.get("max_seq_len").is_none());
    assert!(r.final_model.join(TRAINING_RECORD).exists());
}
