//! Parity with `transformers` on the tiny random checkpoints of `tests/fixtures/` (made by
//! `tools/make_fixtures.py`): fp16 on disk, computed here in fp32, GQA and non-GQA, sharded and
//! single-file, tied and untied, a non-default rope_theta and an ignored `rotary_emb.inv_freq`.
use llama::checkpoint::{self, CheckpointFiles, SaveOptions};
use llama::model::{positions_from_mask, Mask};
use llama::{generate, SamplingParams};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn expected(name: &str, key: &str) -> Tensor {
    let f = CheckpointFiles::open_file(&fixture(name).join("expected.safetensors")).unwrap();
    f.tensor(key).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn check_logits(name: &str) {
    let (_vs, model) = checkpoint::load_causal_lm(&fixture(name), Device::Cpu, Kind::Float).unwrap();
    let _g = tch::no_grad_guard();
    // Unpadded single sequence, plain causal attention.
    let ids = expected(name, "single_ids");
    let t = ids.size()[1];
    let pos = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0);
    let logits = model.lm_logits(&model.forward(&ids, &pos, &Mask::Causal, None));
    let d = max_abs_diff(&logits, &expected(name, "single_logits"));
    assert!(d < 1e-4, "{name}: single-sequence logits differ by {d}");

    // Left-padded batch: compare at the real (non-pad) positions.
    let ids = expected(name, "input_ids");
    let am = expected(name, "attention_mask");
    let valid = am.to_kind(Kind::Bool);
    let pos = positions_from_mask(&valid);
    assert_eq!(
        Vec::<i64>::try_from(pos.reshape([-1])).unwrap(),
        Vec::<i64>::try_from(expected(name, "position_ids").reshape([-1])).unwrap()
    );
    let t = ids.size()[1];
    let logits = model.lm_logits(&model.forward(&ids, &pos, &Mask::padded_causal(&valid, 0, t), None));
    let want = expected(name, "logits");
    let sel = valid.unsqueeze(-1).expand_as(&logits);
    let d = max_abs_diff(&logits.masked_select(&sel), &want.masked_select(&sel));
    assert!(d < 1e-4, "{name}: left-padded batch logits differ by {d}");
}

fn prompts_from(ids: &Tensor, mask: Option<&Tensor>) -> Vec<Vec<u32>> {
    let (b, t) = ids.size2().unwrap();
    let ids: Vec<i64> = Vec::try_from(ids.reshape([-1])).unwrap();
    let mask: Vec<i64> = match mask {
        Some(m) => Vec::try_from(m.reshape([-1])).unwrap(),
        None => vec![1; ids.len()],
    };
    (0..b as usize)
        .map(|r| (0..t as usize).filter(|&c| mask[r * t as usize + c] == 1).map(|c| ids[r * t as usize + c] as u32).collect())
        .collect()
}

fn check_greedy(name: &str) {
    let (_vs, model) = checkpoint::load_causal_lm(&fixture(name), Device::Cpu, Kind::Float).unwrap();
    let params = SamplingParams { max_new_tokens: 16, temperature: 0.0, top_p: 1.0, stop_at_eos: false, ..Default::default() };
    for (ids_key, mask_key, want_key) in
        [("input_ids", Some("attention_mask"), "greedy_new_ids"), ("single_ids", None, "single_greedy_new_ids")]
    {
        let ids = expected(name, ids_key);
        let mask = mask_key.map(|k| expected(name, k));
        let prompts = prompts_from(&ids, mask.as_ref());
        let out = generate(&model, &prompts, &params).unwrap();
        let want = prompts_from(&expected(name, want_key), None);
        assert_eq!(out.tokens, want, "{name}: greedy continuation of {ids_key} differs from transformers");
    }
}

#[test]
fn gqa_sharded_logits_match_transformers() {
    check_logits("tiny-gqa");
}

#[test]
fn mha_tied_logits_match_transformers() {
    check_logits("tiny-mha");
}

#[test]
fn gqa_greedy_matches_transformers() {
    check_greedy("tiny-gqa");
}

#[test]
fn mha_greedy_matches_transformers() {
    check_greedy("tiny-mha");
}

/// Save (single file and sharded, fp32 and fp16) and load back: identical weights.
#[test]
fn save_load_round_trip() {
    let src = fixture("tiny-gqa");
    let (vs, model) = checkpoint::load_causal_lm(&src, Device::Cpu, Kind::Float).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (sub, dtype, shard) in [("single", Kind::Float, u64::MAX), ("sharded", Kind::Half, 600_000)] {
        let out = tmp.path().join(sub);
        let opts = SaveOptions { dtype, max_shard_bytes: shard, ..Default::default() };
        checkpoint::save(&vs, &model.cfg, &out, &opts).unwrap();
        assert_eq!(out.join("model.safetensors.index.json").exists(), sub == "sharded");
        // Saving twice replaces the folder atomically and leaves no temp folders behind.
        checkpoint::save(&vs, &model.cfg, &out, &opts).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temp folders left: {leftovers:?}");
        let (vs2, model2) = checkpoint::load_causal_lm(&out, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(model2.cfg, model.cfg);
        let a = vs.variables();
        let b = vs2.variables();
        assert_eq!(a.len(), b.len());
        for (n, t) in &a {
            // The fixture weights are fp16 values, so an fp16 save is exact too.
            assert_eq!(max_abs_diff(t, &b[n]), 0.0, "{sub}: {n} changed in the round trip");
        }
    }
}
