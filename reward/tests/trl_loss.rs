//! Our ranking loss against TRL's RewardTrainer on the same scores (tests/fixtures/rm_loss_trl.json,
//! made by tools/rm_reference.py through TRL's own collator and compute_loss).
use reward::loss::ranking_loss;
use tch::Tensor;

#[test]
fn ranking_loss_matches_trl_reward_trainer() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/rm_loss_trl.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let vec = |v: &serde_json::Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    for c in cases {
        let chosen = Tensor::from_slice(&vec(&c["chosen"]));
        let rejected = Tensor::from_slice(&vec(&c["rejected"]));
        let margins = match c["margins"].as_array() {
            Some(_) => Tensor::from_slice(&vec(&c["margins"])),
            None => Tensor::zeros_like(&chosen),
        };
        let coef = c["center_coef"].as_f64().unwrap_or(0.0);
        let ours = f64::try_from(ranking_loss(&chosen, &rejected, &margins, coef)).unwrap();
        let trl = c["loss"].as_f64().unwrap();
        assert!((ours - trl).abs() <= 1e-5 * trl.abs().max(1.0), "{}: ours {ours} vs TRL {trl}", c["name"]);
    }
}
