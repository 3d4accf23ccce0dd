//! The reward model on the parity fixture trunk: the shared-prompt pair layout scores exactly as
//! separate encodings, the head reads the last token, and the HF sequence-classification layout
//! round-trips.
use datasets::{PreferenceRecord, Rating};
use llama::{Message, Tokenizer};
use reward::combine::{response_tokens, score_sequences};
use reward::data::encode_pair;
use reward::trainer::pair_scores;
use reward::RewardModel;
use std::path::Path;
use tch::{Device, Kind};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-gqa")
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&llama::tokenizer::default_tokenizer_path().expect("run scripts/setup first")).unwrap()
}

fn record(prompt: &str, chosen: &str, rejected: &str) -> PreferenceRecord {
    PreferenceRecord {
        prompt: vec![Message::user(prompt)],
        chosen: chosen.into(),
        rejected: rejected.into(),
        rating: Some(Rating::Better),
        kind: None,
        chosen_safe: None,
        rejected_safe: None,
        source: None,
    }
}

#[test]
fn shared_prompt_layout_equals_separate_encodings() {
    let tok = tokenizer();
    let (_vs, rm, fresh) = RewardModel::load(&fixture(), Device::Cpu, Kind::Float, 1).unwrap();
    assert!(fresh, "a causal-LM checkpoint has no score head");
    let recs = [
        record("What is the capital of France?", "The capital of France is Paris.", "It is Lyon, I think, but I am not sure."),
        record("How do I kill a python process?", "Use kill with its process id.", "I can't help with that."),
        record("Spell cat backwards.", "tac", "The word cat reversed is tca, or maybe act."),
    ];
    let pairs: Vec<_> = recs.iter().map(|r| encode_pair(&tok, r, 4096).unwrap()).collect();
    let refs: Vec<_> = pairs.iter().collect();
    let _g = tch::no_grad_guard();
    let (c, r, _) = pair_scores(&rm, &refs, Device::Cpu);
    let c: Vec<f32> = Vec::try_from(c).unwrap();
    let r: Vec<f32> = Vec::try_from(r).unwrap();
    let mut seqs = Vec::new();
    for rec in &recs {
        seqs.push(response_tokens(&tok, &rec.prompt, &rec.chosen, 4096).unwrap());
        seqs.push(response_tokens(&tok, &rec.prompt, &rec.rejected, 4096).unwrap());
    }
    let separate = score_sequences(&rm, &seqs, Device::Cpu, 8).unwrap();
    for i in 0..recs.len() {
        // The layout really shares the prompt, and the pieces rebuild both sequences.
        assert!(pairs[i].prefix.len() >= 10);
        assert_eq!([pairs[i].prefix.clone(), pairs[i].chosen.clone()].concat(), seqs[2 * i]);
        assert_eq!([pairs[i].prefix.clone(), pairs[i].rejected.clone()].concat(), seqs[2 * i + 1]);
        assert!((c[i] as f64 - separate[2 * i]).abs() < 1e-4, "chosen {i}: {} vs {}", c[i], separate[2 * i]);
        assert!((r[i] as f64 - separate[2 * i + 1]).abs() < 1e-4, "rejected {i}: {} vs {}", r[i], separate[2 * i + 1]);
    }
    // Different responses get different scores (the head reads the response, not the prompt).
    assert!(c.iter().zip(&r).all(|(a, b)| (a - b).abs() > 1e-6));
}

#[test]
fn saves_in_the_hf_sequence_classification_layout() {
    let (vs, rm, _) = RewardModel::load(&fixture(), Device::Cpu, Kind::Float, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rm");
    RewardModel::save(&vs, &rm.trunk.cfg, &out, Kind::Float, &[]).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(cfg["num_labels"], 1);
    assert_eq!(cfg["pad_token_id"], 0);
    let files = llama::checkpoint::CheckpointFiles::open(&out).unwrap();
    assert_eq!(files.shape("score.weight"), Some(vec![1, rm.trunk.cfg.hidden_size]));
    assert!(!files.contains("lm_head.weight"), "a reward model has no LM head");
    let (vs2, _rm2, fresh) = RewardModel::load(&out, Device::Cpu, Kind::Float, 3).unwrap();
    assert!(!fresh);
    let a = vs.variables();
    let b = vs2.variables();
    for (n, t) in &a {
        assert_eq!(f64::try_from((t - &b[n]).abs().max()).unwrap(), 0.0, "{n}");
    }
}
